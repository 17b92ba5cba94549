//! R4 backport notification Bundles (`history` Bundles whose first entry is the
//! `backport-subscription-status-r4` Parameters): handshake, heartbeat, event notification and
//! the `$status` / `$events` answers.

use serde_json::{Value, json};

use super::{cursor::EventRow, settings::Content};

const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
/// Extension on a `notification-event` naming the change event's id, stable across
/// re-deliveries, for de-duplication.
pub const EVENT_ID_EXTENSION: &str =
    "https://flare.example.invalid/fhir/StructureDefinition/notification-event-id";

/// The kind of status resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationType {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl NotificationType {
    pub fn code(self) -> &'static str {
        match self {
            NotificationType::Handshake => "handshake",
            NotificationType::Heartbeat => "heartbeat",
            NotificationType::EventNotification => "event-notification",
            NotificationType::QueryStatus => "query-status",
            NotificationType::QueryEvent => "query-event",
        }
    }
}

/// An event ready for a notification: its row and, for full-resource, the resource.
#[derive(Debug, Clone)]
pub struct NotificationEvent {
    pub row: EventRow,
    pub resource: Option<Value>,
}

/// Everything a status resource states.
#[derive(Debug, Clone)]
pub struct StatusFacts<'a> {
    pub base_url: &'a str,
    pub subscription_id: &'a str,
    pub topic: Option<&'a str>,
    pub status: &'a str,
    pub kind: NotificationType,
    pub events_since_start: u64,
    pub error: Option<&'a str>,
}

/// The `backport-subscription-status-r4` Parameters.
pub fn status_parameters(
    facts: &StatusFacts<'_>,
    events: &[NotificationEvent],
    content: Content,
) -> Value {
    let mut parameter = vec![json!({"name": "subscription", "valueReference": {
        "reference": format!("{}/Subscription/{}", facts.base_url, facts.subscription_id)}})];
    if let Some(topic) = facts.topic
        && content != Content::Empty
    {
        parameter.push(json!({"name": "topic", "valueCanonical": topic}));
    }
    parameter.push(json!({"name": "status", "valueCode": facts.status}));
    parameter.push(json!({"name": "type", "valueCode": facts.kind.code()}));
    parameter.push(json!({"name": "events-since-subscription-start",
        "valueString": facts.events_since_start.to_string()}));
    for event in events {
        let mut part = vec![
            json!({"name": "event-number", "valueString": event.row.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": event.row.timestamp}),
        ];
        if content != Content::Empty {
            part.push(json!({"name": "focus", "valueReference": {
                "reference": format!("{}/{}", facts.base_url, event.row.focus)}}));
        }
        parameter.push(json!({"name": "notification-event",
            "extension": [{"url": EVENT_ID_EXTENSION, "valueString": event.row.event_id}],
            "part": part}));
    }
    if let Some(error) = facts.error {
        parameter.push(json!({"name": "error", "valueCodeableConcept": {"text": error}}));
    }
    json!({"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]},
           "parameter": parameter})
}

/// A notification Bundle (`history`): the status first, then one entry per event for
/// `id-only` and `full-resource`.
pub fn notification_bundle(
    facts: &StatusFacts<'_>,
    events: &[NotificationEvent],
    content: Content,
    timestamp: &str,
) -> Value {
    let status = status_parameters(facts, events, content);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "resource": status,
        "request": {"method": "GET",
            "url": format!("{}/Subscription/{}/$status", facts.base_url, facts.subscription_id)},
        "response": {"status": "200"}
    })];
    if content != Content::Empty {
        for event in events {
            let (type_name, id) = event.row.focus.split_once('/').unwrap_or(("", ""));
            let (method, url, status) = match event.row.action.as_str() {
                "created" => ("POST", type_name.to_owned(), "201"),
                "deleted" => ("DELETE", event.row.focus.clone(), "204"),
                _ => ("PUT", format!("{type_name}/{id}"), "200"),
            };
            let mut entry = json!({
                "fullUrl": format!("{}/{}", facts.base_url, event.row.focus),
                "request": {"method": method, "url": url},
                "response": {"status": status}
            });
            if content == Content::FullResource
                && let Some(resource) = &event.resource
            {
                entry["resource"] = resource.clone();
            }
            entries.push(entry);
        }
    }
    json!({"resourceType": "Bundle", "id": uuid::Uuid::new_v4().to_string(),
           "type": "history", "timestamp": timestamp, "entry": entries})
}
