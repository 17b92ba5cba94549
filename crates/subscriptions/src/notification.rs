//! Notification bodies, exactly as the wire formats prescribe.
//!
//! - R4 + Backport (`fhirVersion=4.0`, the default): `Bundle.type = history`, entry[0] a
//!   `Parameters` with profile `backport-subscription-status-r4`.
//! - R4B (`4.3`): `history`, entry[0] a `SubscriptionStatus`.
//! - R5 (`5.0`): `subscription-notification`, entry[0] a `SubscriptionStatus`.
//!
//! Entry[0] has a `urn:uuid` `fullUrl`, `request` = `GET [base]/Subscription/[id]/$status` and
//! `response` 200. Content levels follow the IG: `empty` carries neither `topic` nor `focus`
//! nor further entries; `id-only` adds `focus`/`additional-context` references and one entry
//! per referenced resource with `fullUrl`, `request` and `response` but no `resource`;
//! `full-resource` adds the `resource` to those entries (a deleted resource has none).
//!
//! Every `notification-event` carries the log's event id in the extension
//! [`EXT_EVENT_ID`], identical across re-deliveries, so receivers can de-duplicate.
//!
//! Builders take the time as an argument: they are pure.

use serde_json::{Map, Value, json};

use crate::spec::{ContentLevel, NotificationVersion, SubscriptionStatus};
use crate::topic::Interaction;

/// `notification-event.extension`: the log's event id (the de-duplication key).
pub const EXT_EVENT_ID: &str = "http://flare.dev/fhir/StructureDefinition/notification-event-id";
/// Profile of the R4 status `Parameters`.
pub const STATUS_PROFILE_R4: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";

/// `SubscriptionStatus.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
            Self::Handshake => "handshake",
            Self::Heartbeat => "heartbeat",
            Self::EventNotification => "event-notification",
            Self::QueryStatus => "query-status",
            Self::QueryEvent => "query-event",
        }
    }
}

/// The subscription-level part of a status.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusInfo {
    /// The server's FHIR base, e.g. `https://srv/fhir` (a trailing `/` is ignored).
    pub base_url: String,
    pub subscription_id: String,
    /// `None` for classic subscriptions.
    pub topic_url: Option<String>,
    pub status: SubscriptionStatus,
    /// Every event generated for the subscription so far, delivered or not.
    pub events_since_subscription_start: u64,
    /// Error descriptions (`error` as `CodeableConcept.text`), e.g. after failed deliveries.
    pub errors: Vec<String>,
}

/// A resource a notification refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRef {
    pub resource_type: String,
    pub id: String,
    /// What happened to it (decides the history entry's `request`/`response`).
    pub interaction: Interaction,
    /// The version to include at `full-resource` (`None` for a delete or when it could not
    /// be read: then the entry keeps `request`/`response` only).
    pub resource: Option<Value>,
}

/// One triggering event.
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationEvent {
    /// Gap-free per subscription, from 1.
    pub event_number: u64,
    /// The log's event id.
    pub event_id: String,
    /// An instant, e.g. the version's `meta.lastUpdated`.
    pub timestamp: String,
    pub focus: ResourceRef,
    pub additional_context: Vec<ResourceRef>,
}

fn base(status: &StatusInfo) -> &str {
    status.base_url.trim_end_matches('/')
}

fn subscription_url(status: &StatusInfo) -> String {
    format!("{}/Subscription/{}", base(status), status.subscription_id)
}

fn resource_url(status: &StatusInfo, reference: &ResourceRef) -> String {
    format!(
        "{}/{}/{}",
        base(status),
        reference.resource_type,
        reference.id
    )
}

/// The status resource (R4 `Parameters` or R4B/R5 `SubscriptionStatus`) for a notification
/// of `kind` carrying `events` at `content`.
pub fn status_resource(
    status: &StatusInfo,
    kind: NotificationType,
    events: &[NotificationEvent],
    content: ContentLevel,
    version: NotificationVersion,
) -> Value {
    let with_topic = content != ContentLevel::Empty;
    let with_focus = content != ContentLevel::Empty;
    match version {
        NotificationVersion::R4 => {
            let mut parameters = vec![
                json!({"name": "subscription", "valueReference": {"reference": subscription_url(status)}}),
            ];
            if with_topic && let Some(topic) = &status.topic_url {
                parameters.push(json!({"name": "topic", "valueCanonical": topic}));
            }
            parameters.push(json!({"name": "status", "valueCode": status.status.code()}));
            parameters.push(json!({"name": "type", "valueCode": kind.code()}));
            parameters.push(json!({
                "name": "events-since-subscription-start",
                "valueString": status.events_since_subscription_start.to_string(),
            }));
            for event in events {
                let mut parts = vec![
                    json!({"name": "event-number", "valueString": event.event_number.to_string()}),
                    json!({"name": "timestamp", "valueInstant": event.timestamp}),
                ];
                if with_focus {
                    parts.push(json!({"name": "focus", "valueReference": {"reference": resource_url(status, &event.focus)}}));
                    for context in &event.additional_context {
                        parts.push(json!({"name": "additional-context", "valueReference": {"reference": resource_url(status, context)}}));
                    }
                }
                parameters.push(json!({
                    "extension": [{"url": EXT_EVENT_ID, "valueString": event.event_id}],
                    "name": "notification-event",
                    "part": parts,
                }));
            }
            for error in &status.errors {
                parameters.push(json!({"name": "error", "valueCodeableConcept": {"text": error}}));
            }
            json!({
                "resourceType": "Parameters",
                "meta": {"profile": [STATUS_PROFILE_R4]},
                "parameter": parameters,
            })
        }
        NotificationVersion::R4B | NotificationVersion::R5 => {
            let mut resource = Map::new();
            resource.insert("resourceType".into(), "SubscriptionStatus".into());
            resource.insert("status".into(), status.status.code().into());
            resource.insert("type".into(), kind.code().into());
            resource.insert(
                "eventsSinceSubscriptionStart".into(),
                status.events_since_subscription_start.to_string().into(),
            );
            if !events.is_empty() {
                let events: Vec<Value> = events
                    .iter()
                    .map(|event| {
                        let mut entry = Map::new();
                        entry.insert(
                            "extension".into(),
                            json!([{"url": EXT_EVENT_ID, "valueString": event.event_id}]),
                        );
                        entry.insert("eventNumber".into(), event.event_number.to_string().into());
                        entry.insert("timestamp".into(), event.timestamp.clone().into());
                        if with_focus {
                            entry.insert(
                                "focus".into(),
                                json!({"reference": resource_url(status, &event.focus)}),
                            );
                            if !event.additional_context.is_empty() {
                                let contexts: Vec<Value> = event
                                    .additional_context
                                    .iter()
                                    .map(|context| json!({"reference": resource_url(status, context)}))
                                    .collect();
                                entry.insert("additionalContext".into(), contexts.into());
                            }
                        }
                        Value::Object(entry)
                    })
                    .collect();
                resource.insert("notificationEvent".into(), events.into());
            }
            resource.insert(
                "subscription".into(),
                json!({"reference": subscription_url(status)}),
            );
            if with_topic && let Some(topic) = &status.topic_url {
                resource.insert("topic".into(), topic.clone().into());
            }
            if !status.errors.is_empty() {
                let errors: Vec<Value> = status
                    .errors
                    .iter()
                    .map(|error| json!({"text": error}))
                    .collect();
                resource.insert("error".into(), errors.into());
            }
            Value::Object(resource)
        }
    }
}

fn status_entry(status: &StatusInfo, resource: Value) -> Value {
    json!({
        "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "resource": resource,
        "request": {"method": "GET", "url": format!("{}/$status", subscription_url(status))},
        "response": {"status": "200"},
    })
}

fn resource_entry(status: &StatusInfo, reference: &ResourceRef, content: ContentLevel) -> Value {
    let (method, url, code) = match reference.interaction {
        Interaction::Create => ("POST", reference.resource_type.clone(), "201"),
        Interaction::Update => (
            "PUT",
            format!("{}/{}", reference.resource_type, reference.id),
            "200",
        ),
        Interaction::Delete => (
            "DELETE",
            format!("{}/{}", reference.resource_type, reference.id),
            "204",
        ),
    };
    let mut entry = Map::new();
    entry.insert("fullUrl".into(), resource_url(status, reference).into());
    if content == ContentLevel::FullResource
        && let Some(resource) = &reference.resource
    {
        entry.insert("resource".into(), resource.clone());
    }
    entry.insert("request".into(), json!({"method": method, "url": url}));
    entry.insert("response".into(), json!({"status": code}));
    Value::Object(entry)
}

/// A notification Bundle: handshake and heartbeat (no events), event notifications and
/// `$events` results (`QueryEvent`). `timestamp` is the Bundle's instant. Callers split
/// events by `maxCount` first (see [`batches`]).
pub fn notification_bundle(
    status: &StatusInfo,
    kind: NotificationType,
    events: &[NotificationEvent],
    content: ContentLevel,
    version: NotificationVersion,
    timestamp: &str,
) -> Value {
    let mut entries = vec![status_entry(
        status,
        status_resource(status, kind, events, content, version),
    )];
    if content != ContentLevel::Empty {
        for event in events {
            entries.push(resource_entry(status, &event.focus, content));
            for context in &event.additional_context {
                entries.push(resource_entry(status, context, content));
            }
        }
    }
    let bundle_type = match version {
        NotificationVersion::R5 => "subscription-notification",
        NotificationVersion::R4 | NotificationVersion::R4B => "history",
    };
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": bundle_type,
        "timestamp": timestamp,
        "entry": entries,
    })
}

/// Splits events into notifications of at most `max_count` triggering events each (`None`
/// or 0: one notification with all of them).
pub fn batches(
    events: &[NotificationEvent],
    max_count: Option<u32>,
) -> impl Iterator<Item = &[NotificationEvent]> {
    let size = match max_count {
        Some(count) if count > 0 => count as usize,
        _ => events.len().max(1),
    };
    events.chunks(size)
}

/// The `$status` result: a `searchset` Bundle of status resources (built with
/// [`status_resource`] and [`NotificationType::QueryStatus`]).
pub fn status_search_bundle(statuses: &[Value], timestamp: &str) -> Value {
    let entries: Vec<Value> = statuses
        .iter()
        .map(|resource| {
            json!({
                "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
                "resource": resource,
                "search": {"mode": "match"},
            })
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "searchset",
        "timestamp": timestamp,
        "total": statuses.len(),
        "entry": entries,
    })
}

/// An R4 classic rest-hook request.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassicRequest {
    /// `POST` (no payload) or `PUT` (payload).
    pub method: &'static str,
    pub url: String,
    /// The resource, for `PUT`; `None` = empty body.
    pub body: Option<Value>,
}

/// The classic R4 rest-hook delivery: without a payload an empty-body `POST` to the
/// endpoint; with one, the resource as a FHIR update `PUT [endpoint]/[type]/[id]` (the
/// version's `meta` untouched, so `versionId`, `lastUpdated` and `source` are the stored
/// ones).
pub fn classic_rest_hook(endpoint: &str, with_payload: bool, resource: &Value) -> ClassicRequest {
    let resource_type = resource.get("resourceType").and_then(Value::as_str);
    let id = resource.get("id").and_then(Value::as_str);
    match (with_payload, resource_type, id) {
        (true, Some(resource_type), Some(id)) => ClassicRequest {
            method: "PUT",
            url: format!("{}/{resource_type}/{id}", endpoint.trim_end_matches('/')),
            body: Some(resource.clone()),
        },
        _ => ClassicRequest {
            method: "POST",
            url: endpoint.to_owned(),
            body: None,
        },
    }
}
