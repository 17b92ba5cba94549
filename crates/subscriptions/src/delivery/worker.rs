//! One worker per active push subscription (rest-hook, message, email, kafka): handshake, then
//! notifications in event-number order with retries, heartbeats when idle. What a
//! notification becomes on the wire is [`super::channels`]'s business.

use std::{sync::Arc, time::Duration};

use flare_service::RequestContext;
use serde_json::Value;
use tokio::{sync::Notify, task::JoinHandle, time::Instant};

use super::{
    Live, Shared,
    channels::{self, Outgoing},
    cursor::EventRow,
    notify, retry_delay,
};
use crate::{ChannelType, notification::NotificationType};

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

fn live_of(shared: &Shared, id: &str) -> Option<Live> {
    shared.live.lock().get(id).cloned()
}

/// R4 classic rest-hook: one bare request per event, no handshake, no heartbeat. Every other
/// push channel carries notification Bundles.
fn is_classic_rest_hook(live: &Live) -> bool {
    !live.is_topic_based()
        && live
            .channel()
            .is_some_and(|channel| channel.channel_type == ChannelType::RestHook)
}

/// A handshake or heartbeat: a notification without events.
fn status_notification(
    shared: &Shared,
    id: &str,
    live: &Live,
    kind: NotificationType,
) -> Result<Outgoing, String> {
    let bundle = notify::bundle(shared, id, live, kind, &[], live.content());
    channels::for_bundle(shared, id, live, kind, &[], &bundle)
}

async fn run(shared: Arc<Shared>, id: String, mode: Mode, wake: Arc<Notify>) {
    if mode == Mode::Handshake {
        let Some(live) = live_of(&shared, &id) else {
            return;
        };
        if !is_classic_rest_hook(&live) {
            let sent = match status_notification(&shared, &id, &live, NotificationType::Handshake) {
                Ok(outgoing) => channels::send(&shared, outgoing).await,
                Err(reason) => Err(reason),
            };
            if let Err(reason) = sent {
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
        let Some(live) = live_of(shared, id) else {
            return;
        };
        let Some(channel) = live.channel().cloned() else {
            return;
        };
        let classic = is_classic_rest_hook(&live);
        let next = match shared.cursor.delivered_through(id).await {
            Ok(n) => n + 1,
            Err(e) => {
                tracing::error!(subscription = %id, error = %e, "cannot read the cursor");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // One event per notification unless the subscription asks for batches (`maxCount`).
        let limit = if classic {
            1
        } else {
            channel.max_count.unwrap_or(1).clamp(1, 1000) as usize
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
            match channel.heartbeat_period.filter(|_| !classic) {
                Some(period) => {
                    let period = Duration::from_secs(u64::from(period.max(1)));
                    tokio::select! {
                        _ = wake.notified() => {}
                        _ = tokio::time::sleep_until(last_sent + period) => {
                            let sent = match status_notification(
                                shared, id, &live, NotificationType::Heartbeat)
                            {
                                Ok(outgoing) => channels::send(shared, outgoing).await,
                                Err(reason) => Err(reason),
                            };
                            if let Err(reason) = sent {
                                tracing::info!(subscription = %id, %reason, "heartbeat failed");
                            }
                            last_sent = Instant::now();
                        }
                    }
                }
                None => wake.notified().await,
            }
            continue;
        }
        let last_number = rows.last().map(|r| r.number).unwrap_or(next);
        let outgoing = match build(shared, id, &live, classic, rows).await {
            Some(Ok(outgoing)) => outgoing,
            Some(Err(reason)) => {
                // Nothing the endpoint does can change this (e.g. XML rendering failed).
                fail(shared, id, last_number, 1, &reason).await;
                return;
            }
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
            match channels::send(shared, outgoing.clone()).await {
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
                    fail(shared, id, last_number, attempts, &reason).await;
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

async fn fail(shared: &Shared, id: &str, last_number: u64, attempts: u32, reason: &str) {
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
}

/// The notification for `rows`. `None`: nothing can be sent for them any more.
async fn build(
    shared: &Shared,
    id: &str,
    live: &Live,
    classic: bool,
    rows: Vec<EventRow>,
) -> Option<Result<Outgoing, String>> {
    if classic {
        let channel = live.channel()?;
        let row = rows.into_iter().next()?;
        // Without a payload the POST carries nothing, so the resource is not needed.
        let resource = if channel.payload.is_some() {
            notify::load_resource(shared, &row).await?
        } else {
            Value::Null
        };
        return Some(channels::classic(shared, channel, &resource));
    }
    let content = live.content();
    let events = notify::load_events(shared, rows, content).await;
    let bundle = notify::bundle(
        shared,
        id,
        live,
        NotificationType::EventNotification,
        &events,
        content,
    );
    Some(channels::for_bundle(
        shared,
        id,
        live,
        NotificationType::EventNotification,
        &events,
        &bundle,
    ))
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
        // As stored: the runtime keeps using the channel's secrets.
        let current = match shared.fhir.read_stored("Subscription", id).await {
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
