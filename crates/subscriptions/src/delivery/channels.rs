//! What one notification becomes on each channel, and sending it.
//!
//! - **rest-hook**: `POST` of the notification Bundle with `Content-Type` = the payload MIME
//!   type and every `channel.header`. R4 classic: an empty-body `POST`, or
//!   `PUT [endpoint]/[type]/[id]` with the resource when `payload` is set.
//! - **message**: a FHIR message (`Bundle.type = message`) whose `MessageHeader` names the
//!   notification type as its event and focuses on the notification Bundle, its second entry;
//!   `POST`ed to the endpoint like a rest-hook (headers, signature, timeout).
//! - **email**: one mail to the `mailto:` address. The text names the subscription, the event
//!   numbers and, from `id-only` on, the focus references: never more than the content level,
//!   and never resource contents. The notification Bundle is attached when the payload asks
//!   for it (`text/plain;attach=application/fhir+json`, or a FHIR MIME type as payload).
//! - **kafka** (Flare's custom channel type
//!   `http://flare.dev/fhir/CodeSystem/subscription-channel-type#kafka`): the notification
//!   Bundle appended to the topic the endpoint names (`kafka:<topic>` or the bare name) on
//!   the configured event log, keyed by subscription id so one subscription's notifications
//!   stay in order; headers `content-type`, `subscription`, `notification-type`.

use std::time::Duration;

use flare_log::{Header, NewRecord};
use serde_json::{Value, json};

use super::{
    Live, Shared, notify,
    transport::{OutboundMail, OutboundRequest},
};
use crate::{
    Channel, ChannelType, ContentLevel, classic_rest_hook,
    notification::{NotificationEvent, NotificationType},
    spec::BodyFormat,
};

/// One notification ready to leave.
#[derive(Debug, Clone)]
pub(super) enum Outgoing {
    Http(OutboundRequest),
    Mail(OutboundMail),
    Log { topic: String, record: NewRecord },
}

/// The topic a kafka endpoint names.
pub(crate) fn kafka_topic(endpoint: &str) -> &str {
    endpoint.strip_prefix("kafka:").unwrap_or(endpoint)
}

fn timeout(shared: &Shared, channel: &Channel) -> Duration {
    channel
        .timeout
        .map(|seconds| Duration::from_secs(u64::from(seconds.max(1))))
        .unwrap_or(Duration::from_millis(shared.config.default_timeout_ms))
}

fn http(
    shared: &Shared,
    channel: &Channel,
    method: &'static str,
    url: String,
    content_type: Option<String>,
    body: Vec<u8>,
) -> OutboundRequest {
    let mut headers: Vec<(String, String)> = content_type
        .map(|value| ("Content-Type".to_owned(), value))
        .into_iter()
        .collect();
    headers.extend(
        channel
            .headers
            .iter()
            .map(|header| (header.name.clone(), header.value.clone())),
    );
    OutboundRequest {
        method,
        url,
        headers,
        body,
        timeout: timeout(shared, channel),
        secret: channel.hmac_secret.clone(),
    }
}

/// A notification Bundle on the subscription's channel.
pub(super) fn for_bundle(
    shared: &Shared,
    id: &str,
    live: &Live,
    kind: NotificationType,
    events: &[NotificationEvent],
    bundle: &Value,
) -> Result<Outgoing, String> {
    let channel = live
        .channel()
        .ok_or_else(|| "the subscription no longer parses".to_owned())?;
    let endpoint = channel.endpoint.clone().unwrap_or_default();
    match channel.channel_type {
        ChannelType::RestHook | ChannelType::Websocket => Ok(Outgoing::Http(http(
            shared,
            channel,
            "POST",
            endpoint,
            Some(notify::content_type(Some(channel))),
            notify::encode(Some(channel), bundle)?,
        ))),
        ChannelType::Message => {
            let message = message_bundle(shared, &endpoint, kind, bundle);
            Ok(Outgoing::Http(http(
                shared,
                channel,
                "POST",
                endpoint,
                Some(notify::content_type(Some(channel))),
                notify::encode(Some(channel), &message)?,
            )))
        }
        ChannelType::Email => Ok(Outgoing::Mail(mail(
            shared, id, live, kind, events, bundle,
        )?)),
        ChannelType::Kafka => {
            let content_type = notify::content_type(Some(channel));
            Ok(Outgoing::Log {
                topic: kafka_topic(&endpoint).to_owned(),
                record: NewRecord {
                    key: Some(id.as_bytes().to_vec()),
                    headers: vec![
                        Header::new("content-type", content_type),
                        Header::new("subscription", format!("Subscription/{id}")),
                        Header::new("notification-type", kind.code()),
                    ],
                    payload: notify::encode(Some(channel), bundle)?,
                    timestamp_ms: None,
                },
            })
        }
    }
}

/// The R4 classic rest-hook request for one event: `resource` is its version (needed only
/// with a payload).
pub(super) fn classic(
    shared: &Shared,
    channel: &Channel,
    resource: &Value,
) -> Result<Outgoing, String> {
    let endpoint = channel.endpoint.as_deref().unwrap_or_default();
    let request = classic_rest_hook(endpoint, channel.payload.is_some(), resource);
    let (content_type, body) = match &request.body {
        Some(body) => (
            Some(notify::content_type(Some(channel))),
            notify::encode(Some(channel), body)?,
        ),
        None => (None, Vec::new()),
    };
    Ok(Outgoing::Http(http(
        shared,
        channel,
        request.method,
        request.url,
        content_type,
        body,
    )))
}

/// The FHIR message wrapping a notification Bundle: a `MessageHeader` (event = the
/// notification type, focus = the notification) then the notification itself.
pub(crate) fn message_bundle(
    shared: &Shared,
    destination: &str,
    kind: NotificationType,
    notification: &Value,
) -> Value {
    let notification_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let header_id = uuid::Uuid::new_v4().to_string();
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "message",
        "timestamp": notify::now_instant(),
        "entry": [
            {
                "fullUrl": format!("urn:uuid:{header_id}"),
                "resource": {
                    "resourceType": "MessageHeader",
                    "id": header_id,
                    "eventCoding": {
                        "system": "http://hl7.org/fhir/subscription-notification-type",
                        "code": kind.code(),
                    },
                    "destination": [{"endpoint": destination}],
                    "source": {"name": "Flare", "endpoint": shared.config.base_url},
                    "focus": [{"reference": notification_url}],
                },
            },
            {"fullUrl": notification_url, "resource": notification},
        ],
    })
}

/// The e-mail for a notification: a text that stays within the content level, and the Bundle
/// attached when the payload asks for it.
fn mail(
    shared: &Shared,
    id: &str,
    live: &Live,
    kind: NotificationType,
    events: &[NotificationEvent],
    bundle: &Value,
) -> Result<OutboundMail, String> {
    let channel = live
        .channel()
        .ok_or_else(|| "the subscription no longer parses".to_owned())?;
    let base = shared.config.base_url.trim_end_matches('/');
    let subscription = format!("{base}/Subscription/{id}");
    let (subject, mut text) = match kind {
        NotificationType::Handshake => (
            format!("FHIR Subscription {id} will notify this address"),
            format!(
                "The FHIR Subscription {subscription} sends its notifications to this address.\n\
                 To stop them, set the subscription's status to off or delete it.\n"
            ),
        ),
        NotificationType::Heartbeat => (
            format!("FHIR Subscription {id}: no new events"),
            format!(
                "The FHIR Subscription {subscription} is {} and had no new events since its last \
                 notification ({} events since it started).\n",
                live.status(),
                live.events_since_start
            ),
        ),
        _ => {
            let first = events.first().map(|e| e.event_number).unwrap_or(0);
            let last = events.last().map(|e| e.event_number).unwrap_or(0);
            let numbers = if first == last {
                format!("event {first}")
            } else {
                format!("events {first} to {last}")
            };
            (
                format!("FHIR Subscription {id}: {numbers}"),
                format!(
                    "The FHIR Subscription {subscription} has new {numbers}.\n\
                     Read them with {subscription}/$events?eventsSinceNumber={first}&eventsUntilNumber={last}\n"
                ),
            )
        }
    };
    // Beyond `empty`, which resources changed; never what they contain.
    if channel.content != ContentLevel::Empty {
        for event in events {
            let focus = &event.focus;
            text.push_str(&format!(
                "\nEvent {}: {base}/{}/{} ({}) at {}",
                event.event_number,
                focus.resource_type,
                focus.id,
                focus.interaction.code(),
                event.timestamp
            ));
        }
        if !events.is_empty() {
            text.push('\n');
        }
    }
    let attachment = match channel.payload.as_ref() {
        Some(payload) => match (payload.format, payload.attach.as_deref()) {
            (BodyFormat::Text, None) => None,
            (BodyFormat::Text, Some(mime)) => {
                Some((mime.to_owned(), attachment_body(mime, bundle)?))
            }
            (BodyFormat::Json, _) => Some((
                "application/fhir+json".to_owned(),
                attachment_body("application/fhir+json", bundle)?,
            )),
            (BodyFormat::Xml, _) => Some((
                "application/fhir+xml".to_owned(),
                attachment_body("application/fhir+xml", bundle)?,
            )),
        },
        None => None,
    };
    Ok(OutboundMail {
        to: channel.endpoint.clone().unwrap_or_default(),
        subject,
        text,
        attachment,
    })
}

fn attachment_body(mime: &str, bundle: &Value) -> Result<Vec<u8>, String> {
    if mime.contains("xml") {
        flare_fhir::xml::from_json(bundle)
            .map(String::into_bytes)
            .map_err(|e| format!("cannot render the notification as XML: {e}"))
    } else {
        serde_json::to_vec_pretty(bundle).map_err(|e| e.to_string())
    }
}

/// Sends one notification; `Err` says why it failed.
pub(super) async fn send(shared: &Shared, outgoing: Outgoing) -> Result<(), String> {
    match outgoing {
        Outgoing::Http(request) => match shared.transport.send(request).await {
            Ok(status) if (200..300).contains(&status) => Ok(()),
            Ok(status) => Err(format!("the endpoint answered HTTP {status}")),
            Err(e) => Err(e.to_string()),
        },
        Outgoing::Mail(mail) => match &shared.mailer {
            Some(mailer) => mailer.send_mail(mail).await.map_err(|e| e.to_string()),
            None => Err(
                "email notifications need an SMTP server: configure [subscriptions.smtp]"
                    .to_owned(),
            ),
        },
        Outgoing::Log { topic, record } => shared
            .log
            .append(&topic, vec![record])
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot append to topic {topic}: {e}")),
    }
}
