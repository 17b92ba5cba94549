//! From numbered cursor rows to the core's notification bodies ([`crate::notification`]), and
//! from a body to the bytes of the subscription's payload MIME type.

use flare_events::ChangeEvent;
use serde_json::Value;

use super::{Live, Shared, cursor::EventRow};
use crate::{
    notification::{self, NotificationEvent, NotificationType, ResourceRef},
    spec::{BodyFormat, Channel, ContentLevel, NotificationVersion},
    topic::Interaction,
};

/// The subscription-level facts of a status resource.
pub(crate) fn status_info(
    shared: &Shared,
    id: &str,
    live: &Live,
    status: &str,
    events_since_start: u64,
) -> notification::StatusInfo {
    notification::StatusInfo {
        base_url: shared.config.base_url.clone(),
        subscription_id: id.to_owned(),
        topic_url: live.topic_url().map(str::to_owned),
        status: crate::SubscriptionStatus::from_code(status)
            .unwrap_or(crate::SubscriptionStatus::Requested),
        events_since_subscription_start: events_since_start,
        errors: live.error().map(str::to_owned).into_iter().collect(),
    }
}

/// A notification Bundle (handshake, heartbeat, event notification, `$events`) for `live` at
/// `content`, in the FHIR version its payload asks for.
pub(crate) fn bundle(
    shared: &Shared,
    id: &str,
    live: &Live,
    kind: NotificationType,
    events: &[NotificationEvent],
    content: ContentLevel,
) -> Value {
    let events_since_start = events
        .last()
        .map(|event| event.event_number)
        .unwrap_or(0)
        .max(live.events_since_start);
    // A rest-hook handshake precedes activation: counter 0, status `requested`. A websocket
    // bind's handshake reports the subscription as it is.
    let (status, counter) = match (kind, live.status()) {
        (NotificationType::Handshake, "requested") => ("requested", 0),
        (_, status) => (status, events_since_start),
    };
    notification::notification_bundle(
        &status_info(shared, id, live, status, counter),
        kind,
        events,
        content,
        version(live.channel()),
        &now_instant(),
    )
}

/// The notification version the payload's `fhirVersion` asks for (R4 by default).
pub(crate) fn version(channel: Option<&Channel>) -> NotificationVersion {
    channel
        .and_then(|channel| channel.payload.as_ref())
        .map(|payload| payload.version)
        .unwrap_or(NotificationVersion::R4)
}

/// The `Content-Type` of notification bodies: the payload as written (with its `fhirVersion`
/// parameter), `application/fhir+json` when there is none.
pub(crate) fn content_type(channel: Option<&Channel>) -> String {
    channel
        .and_then(|channel| channel.payload.as_ref())
        .filter(|payload| payload.format != BodyFormat::Text)
        .map(|payload| payload.mime.clone())
        .unwrap_or_else(|| "application/fhir+json".to_owned())
}

/// A resource or Bundle as the bytes of the payload's format (JSON unless XML is asked for).
pub(crate) fn encode(channel: Option<&Channel>, resource: &Value) -> Result<Vec<u8>, String> {
    let xml = channel
        .and_then(|channel| channel.payload.as_ref())
        .is_some_and(|payload| payload.format == BodyFormat::Xml);
    if xml {
        flare_fhir::xml::from_json(resource)
            .map(String::into_bytes)
            .map_err(|e| format!("cannot render the notification as XML: {e}"))
    } else {
        serde_json::to_vec(resource).map_err(|e| e.to_string())
    }
}

pub(crate) fn now_instant() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    flare_service::format_instant(ms)
}

fn interaction(action: &str) -> Interaction {
    match action {
        "created" => Interaction::Create,
        "deleted" => Interaction::Delete,
        _ => Interaction::Update,
    }
}

/// The core's events for cursor rows, with each focus resource read back where `content`
/// needs it (`full-resource`; a deleted or no longer retained resource has none, and its
/// entry keeps `request`/`response` only, as the IG asks).
pub(crate) async fn load_events(
    shared: &Shared,
    rows: Vec<EventRow>,
    content: ContentLevel,
) -> Vec<NotificationEvent> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let resource = if content == ContentLevel::FullResource && row.action != "deleted" {
            load_resource(shared, &row).await
        } else {
            None
        };
        let (resource_type, id) = row.focus.split_once('/').unwrap_or((&row.focus, ""));
        events.push(NotificationEvent {
            event_number: row.number,
            event_id: row.event_id.clone(),
            timestamp: row.timestamp.clone(),
            focus: ResourceRef {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
                interaction: interaction(&row.action),
                resource,
            },
            additional_context: Vec::new(),
        });
    }
    events
}

/// The resource version an event announced, read back from the log (or from the store when it
/// travelled by reference). `None` once retention removed it.
pub(crate) async fn load_resource(shared: &Shared, row: &EventRow) -> Option<Value> {
    let records = shared
        .log
        .read(&row.topic, row.partition, row.offset, 1)
        .await
        .ok()?;
    let record = records.into_iter().find(|r| r.offset == row.offset)?;
    let event = ChangeEvent::from_json_bytes(&record.payload).ok()?;
    if let Some(data) = event.data {
        return Some(data);
    }
    let version = shared
        .fhir
        .vread_stored(
            &event.metadata.resource_type,
            &event.metadata.resource_id,
            &event.metadata.version_id,
        )
        .await
        .ok()?;
    serde_json::from_str(version.body.as_deref()?).ok()
}
