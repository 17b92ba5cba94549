//! One worker per active rest-hook subscription: handshake, then notifications in event-number
//! order with retries, heartbeats when idle.

use std::{sync::Arc, time::Duration};

use flare_events::ChangeEvent;
use flare_service::RequestContext;
use serde_json::Value;
use tokio::{sync::Notify, task::JoinHandle, time::Instant};

use super::{
    Shared,
    cursor::EventRow,
    notify::{self, NotificationEvent, NotificationType, StatusFacts},
    retry_delay,
    settings::{ChannelSettings, Content},
    transport::OutboundRequest,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Send the handshake first, then turn `active` (or `error`).
    Handshake,
    /// Already `active`: deliver what is pending.
    Deliver,
}

/// A running worker. Stopping aborts it at once, including a retry it is sleeping on.
pub(crate) struct WorkerHandle {
    task: JoinHandle<()>,
    wake: Arc<Notify>,
}

impl WorkerHandle {
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn stop(self) {
        self.task.abort();
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

pub(super) fn spawn(shared: Arc<Shared>, id: String, mode: Mode) -> WorkerHandle {
    let wake = Arc::new(Notify::new());
    let task = tokio::spawn(run(shared, id, mode, wake.clone()));
    WorkerHandle { task, wake }
}

pub(crate) fn now_instant() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    flare_service::format_instant(ms)
}

fn settings_of(shared: &Shared, id: &str) -> Option<(ChannelSettings, String, u64)> {
    let live = shared.live.lock().get(id).cloned()?;
    Some((
        ChannelSettings::from_resource(&live.resource),
        live.status().to_owned(),
        live.events_since_start,
    ))
}

fn timeout_of(shared: &Shared, settings: &ChannelSettings) -> Duration {
    settings
        .timeout
        .unwrap_or(Duration::from_millis(shared.config.default_timeout_ms))
}

fn bundle_request(shared: &Shared, settings: &ChannelSettings, bundle: &Value) -> OutboundRequest {
    let mut headers = vec![(
        "Content-Type".to_owned(),
        settings.content_type().to_owned(),
    )];
    headers.extend(settings.headers.iter().cloned());
    OutboundRequest {
        method: "POST",
        url: settings.endpoint.clone(),
        headers,
        body: serde_json::to_vec(bundle).unwrap_or_default(),
        timeout: timeout_of(shared, settings),
        secret: settings.secret.clone(),
    }
}

/// One attempt; `Err` says why it failed.
async fn attempt(shared: &Shared, request: OutboundRequest) -> Result<(), String> {
    match shared.transport.send(request).await {
        Ok(status) if (200..300).contains(&status) => Ok(()),
        Ok(status) => Err(format!("the endpoint answered HTTP {status}")),
        Err(e) => Err(e.to_string()),
    }
}

async fn run(shared: Arc<Shared>, id: String, mode: Mode, wake: Arc<Notify>) {
    if mode == Mode::Handshake {
        let Some((settings, _, _)) = settings_of(&shared, &id) else {
            return;
        };
        if settings.topic.is_some() {
            let facts = StatusFacts {
                base_url: &shared.config.base_url,
                subscription_id: &id,
                topic: settings.topic.as_deref(),
                status: "requested",
                kind: NotificationType::Handshake,
                events_since_start: 0,
                error: None,
            };
            let bundle = notify::notification_bundle(&facts, &[], settings.content, &now_instant());
            if let Err(reason) = attempt(&shared, bundle_request(&shared, &settings, &bundle)).await
            {
                tracing::warn!(subscription = %id, %reason, "handshake failed");
                write_status(
                    &shared,
                    &id,
                    "error",
                    Some(&format!("handshake failed: {reason}")),
                )
                .await;
                return;
            }
        }
        if !write_status(&shared, &id, "active", None).await {
            return;
        }
    }
    deliver(&shared, &id, &wake).await;
}

async fn deliver(shared: &Arc<Shared>, id: &str, wake: &Notify) {
    let mut last_sent = Instant::now();
    loop {
        let Some((settings, status, events_since_start)) = settings_of(shared, id) else {
            return;
        };
        let next = match shared.cursor.delivered_through(id).await {
            Ok(n) => n + 1,
            Err(e) => {
                tracing::error!(subscription = %id, error = %e, "cannot read the cursor");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let limit = if settings.topic.is_some() {
            settings.max_count
        } else {
            1
        };
        let rows = match shared.cursor.events(id, next, u64::MAX, limit).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(subscription = %id, error = %e, "cannot read the cursor");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if rows.is_empty() {
            match (settings.heartbeat, settings.topic.as_deref()) {
                (Some(period), Some(topic)) => {
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep_until(last_sent + period) => {
                            let facts = StatusFacts {
                                base_url: &shared.config.base_url,
                                subscription_id: id,
                                topic: Some(topic),
                                status: &status,
                                kind: NotificationType::Heartbeat,
                                events_since_start,
                                error: None,
                            };
                            let bundle = notify::notification_bundle(
                                &facts, &[], settings.content, &now_instant());
                            if let Err(reason) =
                                attempt(shared, bundle_request(shared, &settings, &bundle)).await
                            {
                                tracing::info!(subscription = %id, %reason, "heartbeat failed");
                            }
                            last_sent = Instant::now();
                        }
                    }
                }
                _ => wake.notified().await,
            }
            continue;
        }
        let last_number = rows.last().map(|r| r.number).unwrap_or(next);
        let request =
            match build_request(shared, id, &settings, &status, events_since_start, rows).await {
                Some(request) => request,
                None => {
                    // Nothing left to send for this event (e.g. retention removed the resource a
                    // classic PUT needs): skip it rather than block every later event.
                    let _ = shared
                        .cursor
                        .mark_delivered(id, next - 1, last_number)
                        .await;
                    continue;
                }
            };
        let mut attempts = 0;
        loop {
            attempts += 1;
            match attempt(shared, request.clone()).await {
                Ok(()) => {
                    if let Err(e) = shared
                        .cursor
                        .mark_delivered(id, next - 1, last_number)
                        .await
                    {
                        tracing::error!(subscription = %id, error = %e, "cannot record delivery");
                    }
                    tracing::debug!(subscription = %id, through = last_number, "delivered");
                    last_sent = Instant::now();
                    break;
                }
                Err(reason) if attempts >= shared.config.max_attempts.max(1) => {
                    tracing::warn!(subscription = %id, %reason, attempts, "delivery failed; subscription turns error");
                    write_status(
                        shared,
                        id,
                        "error",
                        Some(&format!(
                            "delivery of event {last_number} failed {attempts} times: {reason}"
                        )),
                    )
                    .await;
                    return;
                }
                Err(reason) => {
                    tracing::info!(subscription = %id, %reason, attempts, "delivery failed; retrying");
                    tokio::time::sleep(retry_delay(&shared.config, attempts)).await;
                }
            }
        }
    }
}

async fn build_request(
    shared: &Shared,
    id: &str,
    settings: &ChannelSettings,
    status: &str,
    events_since_start: u64,
    rows: Vec<EventRow>,
) -> Option<OutboundRequest> {
    if settings.topic.is_some() {
        let last = rows.last().map(|r| r.number).unwrap_or(0);
        let events = load_events(shared, rows, settings.content).await;
        let facts = StatusFacts {
            base_url: &shared.config.base_url,
            subscription_id: id,
            topic: settings.topic.as_deref(),
            status,
            kind: NotificationType::EventNotification,
            events_since_start: events_since_start.max(last),
            error: None,
        };
        let bundle = notify::notification_bundle(&facts, &events, settings.content, &now_instant());
        return Some(bundle_request(shared, settings, &bundle));
    }
    // R4 classic: an empty POST, or a PUT of the resource when `payload` is set.
    let row = rows.into_iter().next()?;
    let timeout = timeout_of(shared, settings);
    let mut headers = settings.headers.clone();
    let Some(mime) = &settings.payload else {
        return Some(OutboundRequest {
            method: "POST",
            url: settings.endpoint.clone(),
            headers,
            body: Vec::new(),
            timeout,
            secret: settings.secret.clone(),
        });
    };
    let resource = load_resource(shared, &row).await?;
    headers.insert(0, ("Content-Type".to_owned(), mime.clone()));
    Some(OutboundRequest {
        method: "PUT",
        url: format!("{}/{}", settings.endpoint.trim_end_matches('/'), row.focus),
        headers,
        body: serde_json::to_vec(&resource).unwrap_or_default(),
        timeout,
        secret: settings.secret.clone(),
    })
}

/// The events with their resources where the content level needs them.
pub(crate) async fn load_events(
    shared: &Shared,
    rows: Vec<EventRow>,
    content: Content,
) -> Vec<NotificationEvent> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let resource = if content == Content::FullResource && row.action != "deleted" {
            load_resource(shared, &row).await
        } else {
            None
        };
        events.push(NotificationEvent { row, resource });
    }
    events
}

/// The resource version an event announced, read back from the log (or from the store when it
/// travelled by reference). `None` once retention removed it.
async fn load_resource(shared: &Shared, row: &EventRow) -> Option<Value> {
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
        .vread(
            &event.metadata.resource_type,
            &event.metadata.resource_id,
            &event.metadata.version_id,
        )
        .await
        .ok()?;
    serde_json::from_str(version.body.as_deref()?).ok()
}

/// Writes a server-side status change back through the FHIR service, so that it is visible on
/// read and travels the log. Returns whether it was written. `active` is only written over
/// `requested`, and nothing is written over a client's `off`.
pub(crate) async fn write_status(
    shared: &Shared,
    id: &str,
    status: &str,
    reason: Option<&str>,
) -> bool {
    for _ in 0..5 {
        let current = match shared.fhir.read("Subscription", id).await {
            Ok(current) => current,
            Err(_) => return false,
        };
        let Some(mut body) = current
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<Value>(b).ok())
        else {
            return false;
        };
        let now = body.get("status").and_then(Value::as_str).unwrap_or("");
        if (status == "active" && now != "requested") || now == "off" {
            return false;
        }
        body["status"] = Value::String(status.to_owned());
        match (reason, body.as_object_mut()) {
            (Some(reason), _) => body["error"] = Value::String(reason.to_owned()),
            (None, Some(object)) => {
                object.remove("error");
            }
            (None, None) => {}
        }
        let ctx = RequestContext::new(shared.config.base_url.clone());
        match shared
            .fhir
            .update(
                &ctx,
                "Subscription",
                id,
                body.clone(),
                Some(current.version_id),
            )
            .await
        {
            Ok(_) => {
                // `$status` answers from memory: show the new status now rather than when the
                // manager reads the update back from the log.
                if let Some(live) = shared.live.lock().get_mut(id) {
                    live.resource = Arc::new(body);
                }
                return true;
            }
            Err(e) if e.status == 412 || e.status == 409 => continue,
            Err(e) => {
                tracing::warn!(subscription = %id, error = %e, "cannot write the subscription status");
                return false;
            }
        }
    }
    false
}
