//! The hub on tokio: one lock around the state machine, a channel per open socket, a queue
//! per webhook subscriber, and a timer task for leases and acknowledgement deadlines.
//!
//! Outputs are dispatched while the lock is held, so every socket and every webhook queue
//! receives work in the order the hub produced it (hub-acceptance order).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

#[cfg(feature = "webhook")]
use flare_outbound::Deliverer;
use parking_lot::Mutex;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};

use crate::config::HubConfig;
use crate::hub::{
    ConnectRefused, ConnectionId, ContextShape, HttpReply, Hub, Output, WebhookIntent,
};

/// What the web layer must do on one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketCommand {
    Text(String),
    /// Send a close frame and stop.
    Close {
        code: u16,
        reason: String,
    },
}

/// An accepted WebSocket: report its frames with its `connection` id, send what arrives on
/// `commands`.
#[derive(Debug)]
pub struct SocketSession {
    pub connection: ConnectionId,
    pub commands: mpsc::UnboundedReceiver<SocketCommand>,
}

/// One webhook call, made in order by the subscriber's queue.
#[cfg_attr(not(feature = "webhook"), allow(dead_code))]
enum WebhookJob {
    Verify {
        callback: String,
        intent: WebhookIntent,
    },
    Post {
        callback: String,
        secret: String,
        body: String,
        event_id: String,
        event_name: String,
    },
    Deny {
        callback: String,
        intent: WebhookIntent,
    },
}

struct Shared {
    hub: Hub,
    sockets: HashMap<ConnectionId, mpsc::UnboundedSender<SocketCommand>>,
    webhook_queues: HashMap<String, mpsc::UnboundedSender<WebhookJob>>,
}

/// Wall-clock time that follows tokio's clock, so paused-time tests move it.
#[derive(Clone, Copy)]
struct Clock {
    wall_origin: OffsetDateTime,
    origin: tokio::time::Instant,
}

impl Clock {
    fn now(&self) -> OffsetDateTime {
        let elapsed = tokio::time::Instant::now() - self.origin;
        self.wall_origin + elapsed
    }
}

struct Core {
    shared: Mutex<Shared>,
    clock: Clock,
    wake: Arc<Notify>,
    /// `None` when the webhook channel is off (or its HTTP client could not be built).
    #[cfg_attr(not(feature = "webhook"), allow(dead_code))]
    deliverer: Option<Caller>,
}

impl Core {
    fn dispatch(self: &Arc<Self>, shared: &mut Shared, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { connection, text } => {
                    if let Some(socket) = shared.sockets.get(&connection) {
                        // A socket whose task ended is reported closed separately.
                        let _ = socket.send(SocketCommand::Text(text));
                    }
                }
                Output::Close {
                    connection,
                    code,
                    reason,
                } => {
                    if let Some(socket) = shared.sockets.remove(&connection) {
                        let _ = socket.send(SocketCommand::Close { code, reason });
                    }
                }
                Output::VerifyIntent {
                    subscription,
                    callback,
                    intent,
                } => self.queue(
                    shared,
                    subscription,
                    WebhookJob::Verify { callback, intent },
                ),
                Output::WebhookPost {
                    subscription,
                    callback,
                    secret,
                    body,
                    event_id,
                    event_name,
                } => self.queue(
                    shared,
                    subscription,
                    WebhookJob::Post {
                        callback,
                        secret,
                        body,
                        event_id,
                        event_name,
                    },
                ),
                Output::WebhookDenied {
                    subscription,
                    callback,
                    intent,
                } => {
                    self.queue(
                        shared,
                        subscription.clone(),
                        WebhookJob::Deny { callback, intent },
                    );
                    // The worker ends once the queue is drained.
                    shared.webhook_queues.remove(&subscription);
                }
            }
        }
    }

    fn queue(self: &Arc<Self>, shared: &mut Shared, subscription: String, job: WebhookJob) {
        let sender = shared
            .webhook_queues
            .entry(subscription.clone())
            .or_insert_with(|| {
                let (sender, receiver) = mpsc::unbounded_channel();
                tokio::spawn(run_webhook_queue(
                    Arc::downgrade(self),
                    subscription,
                    receiver,
                ));
                sender
            });
        let _ = sender.send(job);
    }

    fn run<T>(
        self: &Arc<Self>,
        step: impl FnOnce(&mut Hub, OffsetDateTime) -> (T, Vec<Output>),
    ) -> T {
        let mut shared = self.shared.lock();
        let (value, outputs) = step(&mut shared.hub, self.clock.now());
        self.dispatch(&mut shared, outputs);
        drop(shared);
        // Deadlines may have moved.
        self.wake.notify_one();
        value
    }
}

/// A running hub, cheap to clone.
#[derive(Clone)]
pub struct HubHandle {
    core: Arc<Core>,
}

impl std::fmt::Debug for HubHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubHandle").finish_non_exhaustive()
    }
}

impl HubHandle {
    /// Starts the hub and its timer task; call from within a tokio runtime. With
    /// `webhook = true` callbacks are called through `flare-outbound`'s endpoint policy.
    pub fn start(mut config: HubConfig) -> Self {
        let deliverer = webhook_caller(&config);
        if deliverer.is_none() {
            // Advertise and accept the channel only when callbacks can be made.
            config.webhook = false;
        }
        Self::start_with(Hub::new(config), deliverer)
    }

    fn start_with(hub: Hub, deliverer: Option<Caller>) -> Self {
        let core = Arc::new(Core {
            shared: Mutex::new(Shared {
                hub,
                sockets: HashMap::new(),
                webhook_queues: HashMap::new(),
            }),
            clock: Clock {
                wall_origin: OffsetDateTime::now_utc(),
                origin: tokio::time::Instant::now(),
            },
            wake: Arc::new(Notify::new()),
            deliverer,
        });
        tokio::spawn(run_timer(Arc::downgrade(&core), core.wake.clone()));
        Self { core }
    }

    pub fn config(&self) -> HubConfig {
        self.core.shared.lock().hub.config().clone()
    }

    pub fn discovery(&self) -> Value {
        self.core.shared.lock().hub.discovery()
    }

    /// A subscribe/unsubscribe form; endpoints are `{endpoint_base}/{id}`.
    pub fn subscribe(&self, form: &[u8], endpoint_base: &str) -> HttpReply {
        self.core.run(|hub, now| {
            let response = hub.subscribe(form, endpoint_base, now);
            (response.reply, response.outputs)
        })
    }

    /// A context change request; `path_topic` when it came to `{hub}/{topic}`.
    pub fn publish(&self, path_topic: Option<&str>, body: &[u8]) -> HttpReply {
        self.core.run(|hub, now| {
            let response = hub.publish(path_topic, body, now);
            (response.reply, response.outputs)
        })
    }

    pub fn current_context(&self, topic: &str, shape: ContextShape) -> HttpReply {
        self.core.shared.lock().hub.current_context(topic, shape)
    }

    pub fn endpoint_is_live(&self, endpoint: &str) -> bool {
        self.core
            .shared
            .lock()
            .hub
            .endpoint_is_live(endpoint, self.core.clock.now())
    }

    /// Accepts a socket for `endpoint`; its confirmation and replay are already queued.
    pub fn connect(&self, endpoint: &str) -> Result<SocketSession, ConnectRefused> {
        let (sender, commands) = mpsc::unbounded_channel();
        let core = &self.core;
        let mut shared = core.shared.lock();
        let (connection, outputs) = shared.hub.socket_opened(endpoint, core.clock.now())?;
        // Registered before dispatching so the confirmation reaches this socket.
        shared.sockets.insert(connection, sender);
        core.dispatch(&mut shared, outputs);
        drop(shared);
        core.wake.notify_one();
        Ok(SocketSession {
            connection,
            commands,
        })
    }

    /// A text frame arrived on a socket.
    pub fn message(&self, connection: ConnectionId, text: &str) {
        self.core
            .run(|hub, now| ((), hub.socket_message(connection, text, now)));
    }

    /// A socket ended; `code` is `None` when it dropped without a close frame.
    pub fn closed(&self, connection: ConnectionId, code: Option<u16>) {
        self.core
            .run(|hub, now| ((), hub.socket_closed(connection, code, now)));
        self.core.shared.lock().sockets.remove(&connection);
    }
}

#[cfg(feature = "webhook")]
type Caller = Deliverer;
/// Without the `webhook` feature there is nothing to call callbacks with.
#[cfg(not(feature = "webhook"))]
type Caller = std::convert::Infallible;

#[cfg(feature = "webhook")]
fn webhook_caller(config: &HubConfig) -> Option<Caller> {
    use flare_outbound::{AllowList, DeliveryConfig, EndpointPolicy};
    if !config.webhook {
        return None;
    }
    let allow = match config.webhook_allow.join(",").parse::<AllowList>() {
        Ok(allow) => allow,
        Err(error) => {
            tracing::error!(%error, "FHIRcast webhook channel off: invalid webhook_allow");
            return None;
        }
    };
    match Deliverer::new(EndpointPolicy::new(allow), DeliveryConfig::default()) {
        Ok(deliverer) => Some(deliverer),
        Err(error) => {
            tracing::error!(%error, "FHIRcast webhook channel off: no HTTP client");
            None
        }
    }
}

#[cfg(not(feature = "webhook"))]
fn webhook_caller(config: &HubConfig) -> Option<Caller> {
    if config.webhook {
        tracing::warn!("FHIRcast webhook channel off: built without the `webhook` feature");
    }
    None
}

#[cfg(not(feature = "webhook"))]
async fn run_webhook_queue(
    _core: Weak<Core>,
    _subscription: String,
    _jobs: mpsc::UnboundedReceiver<WebhookJob>,
) {
    // Unreachable in practice: without a caller the hub refuses webhook subscriptions.
}

#[cfg(feature = "webhook")]
async fn run_webhook_queue(
    core: Weak<Core>,
    subscription: String,
    mut jobs: mpsc::UnboundedReceiver<WebhookJob>,
) {
    use flare_outbound::{IntentResult, Post, Secret};
    while let Some(job) = jobs.recv().await {
        let Some(deliverer) = core.upgrade().and_then(|core| core.deliverer.clone()) else {
            return;
        };
        match job {
            WebhookJob::Verify { callback, intent } => {
                let result = deliverer
                    .verify_intent(&callback, &verification(intent))
                    .await;
                let confirmed = result == IntentResult::Confirmed;
                if let Some(core) = core.upgrade() {
                    core.run(|hub, now| {
                        hub.intent_verified(&subscription, confirmed, now);
                        ((), Vec::new())
                    });
                }
                if !confirmed {
                    return;
                }
            }
            WebhookJob::Post {
                callback,
                secret,
                body,
                event_id,
                event_name,
            } => {
                let post = Post::new(callback, "application/json", bytes::Bytes::from(body))
                    .signed_with(Secret::from(secret.as_str()));
                let delivery = deliverer.post(&post).await;
                let status = delivery.outcome.status();
                if let Some(core) = core.upgrade() {
                    core.run(|hub, now| {
                        (
                            (),
                            hub.webhook_delivered(
                                &subscription,
                                &event_id,
                                &event_name,
                                status,
                                now,
                            ),
                        )
                    });
                }
            }
            WebhookJob::Deny { callback, intent } => {
                let intent = verification(intent);
                let mut query = vec![
                    ("hub.mode", intent.mode.as_str()),
                    ("hub.topic", intent.topic.as_str()),
                    ("hub.events", intent.events.as_str()),
                ];
                if let Some(reason) = &intent.reason {
                    query.push(("hub.reason", reason));
                }
                deliverer.get(&callback, &query).await;
                return;
            }
        }
    }
}

#[cfg(feature = "webhook")]
fn verification(intent: WebhookIntent) -> flare_outbound::IntentVerification {
    flare_outbound::IntentVerification {
        mode: intent.mode,
        topic: intent.topic,
        events: intent.events,
        challenge: intent.challenge,
        lease_seconds: intent.lease_seconds,
        reason: intent.reason,
    }
}

async fn run_timer(core: Weak<Core>, wake: Arc<Notify>) {
    loop {
        // Only a weak reference while waiting, so a dropped hub stops the task.
        let (deadline, clock) = match core.upgrade() {
            Some(core) => (core.shared.lock().hub.next_deadline(), core.clock),
            None => return,
        };
        match deadline {
            Some(deadline) => {
                let wait =
                    std::time::Duration::try_from(deadline - clock.now()).unwrap_or_default();
                if !wait.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = wake.notified() => continue,
                    }
                }
            }
            None => {
                wake.notified().await;
                continue;
            }
        }
        let Some(core) = core.upgrade() else {
            return;
        };
        core.run(|hub, now| ((), hub.tick(now)));
    }
}
