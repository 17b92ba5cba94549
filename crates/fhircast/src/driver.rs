//! The hub on tokio: one lock around the state machine, a bounded queue per open socket, a
//! queue per webhook subscriber, and a timer task for leases and acknowledgement deadlines.
//!
//! Outputs are dispatched while the lock is held, so every socket and every webhook queue
//! receives work in the order the hub produced it (hub-acceptance order). A socket whose
//! queue is full (its subscriber stopped reading) is reported to the hub, which treats it as
//! unresponsive: memory per subscriber stays bounded.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use flare_log::{EventLog, LogError, NewRecord, Record, StartFrom};
#[cfg(feature = "webhook")]
use flare_outbound::Deliverer;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::config::{FanOut, HubConfig};
use crate::hub::{
    ConnectRefused, ConnectionId, ContextShape, HttpReply, Hub, Output, Replicated,
    SubscriberFrame, WebhookIntent, parse_subscriber_frame, random_id,
};

/// Why a hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the FHIRcast hub cannot use its log topic: {0}")]
    Log(#[from] LogError),
}

/// How long a request waits for its own record to come back from the log and be applied.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a starting node reads the hub's history before serving anyway.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);
/// How long a clustered node may wait to learn of a subscription before refusing its socket.
const CONNECT_CATCH_UP: Duration = Duration::from_secs(5);

/// What the web layer must do on one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketCommand {
    /// One text frame; a broadcast's frames share one serialised text.
    Text(Arc<str>),
    /// Send a close frame and stop.
    Close { code: u16, reason: String },
}

/// An accepted WebSocket: report its frames with its `connection` id, send what
/// [`next`](Self::next) hands out.
#[derive(Debug)]
pub struct SocketSession {
    pub connection: ConnectionId,
    commands: mpsc::Receiver<SocketCommand>,
    /// A close that could not wait behind a full queue.
    abort: oneshot::Receiver<SocketCommand>,
    abort_seen: bool,
}

impl SocketSession {
    /// The next command for the socket; `None` once the hub has dropped it.
    pub async fn next(&mut self) -> Option<SocketCommand> {
        tokio::select! {
            biased;
            close = &mut self.abort, if !self.abort_seen => {
                self.abort_seen = true;
                match close {
                    Ok(close) => Some(close),
                    // No abort will come; the queue says what remains.
                    Err(_) => self.commands.recv().await,
                }
            }
            command = self.commands.recv() => command,
        }
    }

    /// A command already waiting, if any (to write several frames before one flush).
    pub fn try_next(&mut self) -> Option<SocketCommand> {
        if !self.abort_seen {
            match self.abort.try_recv() {
                Ok(close) => {
                    self.abort_seen = true;
                    return Some(close);
                }
                Err(oneshot::error::TryRecvError::Closed) => self.abort_seen = true,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
        self.commands.try_recv().ok()
    }
}

/// The hub's side of one socket.
struct SocketSender {
    queue: mpsc::Sender<SocketCommand>,
    abort: Option<oneshot::Sender<SocketCommand>>,
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
    sockets: HashMap<ConnectionId, SocketSender>,
    webhook_queues: HashMap<String, mpsc::UnboundedSender<WebhookJob>>,
    /// The deadline the timer task sleeps until (`None`: until woken), so only an earlier
    /// one needs to wake it.
    timer_at: Option<OffsetDateTime>,
    /// Clustered hub: requests of this node waiting for their record to be applied.
    waiting: HashMap<String, oneshot::Sender<HttpReply>>,
}

impl Shared {
    /// Whether the timer must recompute its sleep.
    fn timer_is_late(&self) -> bool {
        match (self.hub.next_deadline(), self.timer_at) {
            (Some(next), Some(sleeping_until)) => next < sleeping_until,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
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
    /// `Some` when the hub's state goes through the event log (`fan_out = "log"`).
    cluster: Option<Cluster>,
}

/// A node of a hub whose state goes through the log.
struct Cluster {
    log: Arc<dyn EventLog>,
    topic: String,
    /// This node's name in the records it appends (random per start).
    node: String,
    /// Changes decided on this node ([`Output::Replicate`]), appended in order by one task.
    replicate: mpsc::UnboundedSender<Replicated>,
    /// The next offset to apply, per partition of the hub topic: what `catch_up` waits on.
    applied: watch::Sender<HashMap<u32, u64>>,
}

/// One record of the hub's log topic.
#[derive(Debug, Serialize, Deserialize)]
struct LogRecord {
    node: String,
    /// Set when a request on `node` waits for this record's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<String>,
    /// The time on `node` when it accepted the change: every node applies it at this time.
    at_unix_ns: i64,
    /// Identifiers assigned while applying derive from this (hex), the same on every node.
    seed: String,
    #[serde(flatten)]
    change: LogChange,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum LogChange {
    Subscribe {
        form: String,
        endpoint_base: String,
    },
    Publish {
        path_topic: Option<String>,
        body: String,
    },
    SyncError {
        topic: String,
        notification: String,
        except: Option<String>,
    },
    Ended {
        endpoint: String,
        #[serde(default)]
        topic: String,
        reason: String,
    },
}

impl From<Replicated> for LogChange {
    fn from(change: Replicated) -> Self {
        match change {
            Replicated::SyncError {
                topic,
                notification,
                except,
            } => Self::SyncError {
                topic,
                notification,
                except,
            },
            Replicated::Ended {
                endpoint,
                topic,
                reason,
            } => Self::Ended {
                endpoint,
                topic,
                reason,
            },
        }
    }
}

impl LogChange {
    /// The FHIRcast topic, as the record key: one topic's changes stay in one partition.
    fn hub_topic(&self) -> Option<String> {
        match self {
            Self::Subscribe { form, .. } => url::form_urlencoded::parse(form.as_bytes())
                .find(|(name, _)| name == "hub.topic")
                .map(|(_, topic)| topic.trim().to_string()),
            Self::Publish { path_topic, body } => path_topic.clone().or_else(|| {
                serde_json::from_str::<Value>(body)
                    .ok()
                    .and_then(|event| event["event"]["hub.topic"].as_str().map(str::to_string))
            }),
            Self::SyncError { topic, .. } | Self::Ended { topic, .. } => Some(topic.clone()),
        }
    }
}

/// A change as a record of the hub's log topic, keyed by its FHIRcast topic.
fn encode_record(
    node: &str,
    request: Option<String>,
    at: OffsetDateTime,
    change: LogChange,
) -> NewRecord {
    let key = change.hub_topic().map(String::into_bytes);
    let record = LogRecord {
        node: node.to_string(),
        request,
        at_unix_ns: i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX),
        seed: format!("{:032x}", rand::random::<u128>()),
        change,
    };
    NewRecord {
        key,
        headers: vec![flare_log::Header::new("content-type", "application/json")],
        payload: serde_json::to_vec(&record).unwrap_or_default(),
        timestamp_ms: None,
    }
}

impl Core {
    fn dispatch(self: &Arc<Self>, shared: &mut Shared, outputs: Vec<Output>, now: OffsetDateTime) {
        let mut overflowed: Vec<ConnectionId> = Vec::new();
        for output in outputs {
            match output {
                Output::Send { connection, text } => {
                    if let Some(socket) = shared.sockets.get(&connection) {
                        match socket.queue.try_send(SocketCommand::Text(text)) {
                            Err(mpsc::error::TrySendError::Full(_))
                                if !overflowed.contains(&connection) =>
                            {
                                overflowed.push(connection);
                            }
                            // A socket whose task ended is reported closed separately.
                            _ => {}
                        }
                    }
                }
                Output::Close {
                    connection,
                    code,
                    reason,
                } => {
                    if let Some(mut socket) = shared.sockets.remove(&connection) {
                        let close = SocketCommand::Close { code, reason };
                        if let Err(mpsc::error::TrySendError::Full(close)) =
                            socket.queue.try_send(close)
                            && let Some(abort) = socket.abort.take()
                        {
                            let _ = abort.send(close);
                        }
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
                Output::Replicate(change) => {
                    if let Some(cluster) = &self.cluster {
                        let _ = cluster.replicate.send(change);
                    }
                }
            }
        }
        for connection in overflowed {
            let outputs = shared.hub.socket_overflowed(connection, now);
            self.dispatch(shared, outputs, now);
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

    /// A subscribe or publish on a clustered hub: appended to the log, answered with the
    /// outcome of applying it here in log order (the same outcome every node reaches).
    async fn request(self: &Arc<Self>, cluster: &Cluster, change: LogChange) -> HttpReply {
        let request = random_id();
        let (answer, answered) = oneshot::channel();
        self.shared.lock().waiting.insert(request.clone(), answer);
        let record = encode_record(
            &cluster.node,
            Some(request.clone()),
            self.clock.now(),
            change,
        );
        if let Err(error) = cluster.log.append(&cluster.topic, vec![record]).await {
            self.shared.lock().waiting.remove(&request);
            tracing::error!(%error, "FHIRcast hub: the log refused a change");
            return HttpReply::text(503, "the hub's event log is unavailable; try again");
        }
        match tokio::time::timeout(APPLY_TIMEOUT, answered).await {
            Ok(Ok(reply)) => reply,
            _ => {
                self.shared.lock().waiting.remove(&request);
                HttpReply::text(
                    503,
                    "the hub has not applied the request yet; read the current context before retrying",
                )
            }
        }
    }

    /// A record of the hub's log topic, from any node (this one included).
    /// Applies a record of the hub topic and notes that this node has read up to it.
    fn apply_and_mark(self: &Arc<Self>, record: &Record) {
        self.apply_log_record(record);
        if let Some(cluster) = &self.cluster {
            cluster.applied.send_modify(|applied| {
                let next = applied.entry(record.partition).or_default();
                *next = (*next).max(record.offset + 1);
            });
        }
    }

    fn apply_log_record(self: &Arc<Self>, record: &Record) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let entry: LogRecord = match serde_json::from_slice(&record.payload) {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(offset = record.offset, %error, "FHIRcast hub: skipped an unreadable log record");
                return;
            }
        };
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(entry.at_unix_ns))
            .unwrap_or_else(|_| self.clock.now());
        let seed = u128::from_str_radix(&entry.seed, 16).unwrap_or_default();
        let own = entry.node == cluster.node;
        let mut shared = self.shared.lock();
        let (reply, mut outputs) = shared.hub.with_seeded_ids(seed, |hub| match &entry.change {
            LogChange::Subscribe {
                form,
                endpoint_base,
            } => {
                let response = hub.subscribe(form.as_bytes(), endpoint_base, at);
                (Some(response.reply), response.outputs)
            }
            LogChange::Publish { path_topic, body } => {
                let response = hub.publish(path_topic.as_deref(), body.as_bytes(), at);
                (Some(response.reply), response.outputs)
            }
            LogChange::SyncError {
                topic,
                notification,
                except,
            } => (
                None,
                hub.apply_sync_error(topic, notification, except.as_deref(), at),
            ),
            // This node ended it already.
            LogChange::Ended { .. } if own => (None, Vec::new()),
            LogChange::Ended {
                endpoint, reason, ..
            } => (None, hub.apply_ended(endpoint, reason)),
        });
        if !own {
            // Webhook subscribers are called by the node that accepted them.
            outputs.retain(|output| {
                !matches!(
                    output,
                    Output::VerifyIntent { .. }
                        | Output::WebhookPost { .. }
                        | Output::WebhookDenied { .. }
                )
            });
        }
        let now = self.clock.now();
        self.dispatch(&mut shared, outputs, now);
        let waiter = entry
            .request
            .as_ref()
            .filter(|_| own)
            .and_then(|request| shared.waiting.remove(request));
        let wake = shared.timer_is_late();
        drop(shared);
        if let (Some(waiter), Some(reply)) = (waiter, reply) {
            let _ = waiter.send(reply);
        }
        if wake {
            self.wake.notify_one();
        }
    }

    fn run<T>(
        self: &Arc<Self>,
        step: impl FnOnce(&mut Hub, OffsetDateTime) -> (T, Vec<Output>),
    ) -> T {
        let mut shared = self.shared.lock();
        let now = self.clock.now();
        let (value, outputs) = step(&mut shared.hub, now);
        self.dispatch(&mut shared, outputs, now);
        let wake = shared.timer_is_late();
        drop(shared);
        if wake {
            self.wake.notify_one();
        }
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
    ///
    /// The state stays in this process: `fan_out = "log"` needs [`start_on_log`]
    /// (Self::start_on_log); here it falls back to `local`.
    pub fn start(mut config: HubConfig) -> Self {
        let deliverer = webhook_caller(&config);
        if deliverer.is_none() {
            // Advertise and accept the channel only when callbacks can be made.
            config.webhook = false;
        }
        if config.fan_out == FanOut::Log {
            tracing::warn!("FHIRcast hub started without a log: its state stays on this node");
            config.fan_out = FanOut::Local;
        }
        Self::start_with(Hub::new(config), deliverer, None)
    }

    /// Starts a node of a hub whose state goes through `log` (topic `config.log_topic`):
    /// reads the topic's history first (so subscriptions and contexts accepted by any node,
    /// before this one started, are known), then serves. Several nodes on one log serve
    /// one hub; see the crate README for the consistency rules.
    pub async fn start_on_log(
        mut config: HubConfig,
        log: Arc<dyn EventLog>,
    ) -> Result<Self, HubError> {
        let deliverer = webhook_caller(&config);
        if deliverer.is_none() {
            config.webhook = false;
        }
        config.fan_out = FanOut::Log;
        let topic = config.log_topic.clone();
        log.ensure_topic(&topic, 1).await?;
        let node = random_id();
        let mut consumer = log
            .consumer(
                &format!("fhircast-hub-{node}"),
                std::slice::from_ref(&topic),
                StartFrom::Earliest,
            )
            .await?;
        let mut behind: HashMap<u32, u64> = log
            .topics()
            .await?
            .into_iter()
            .filter(|info| info.name == topic)
            .flat_map(|info| {
                info.start_offsets
                    .into_iter()
                    .zip(info.end_offsets)
                    .enumerate()
                    .filter(|(_, (start, end))| end > start)
                    .map(|(partition, (_, end))| (partition as u32, end))
                    .collect::<Vec<_>>()
            })
            .collect();
        let (replicate, changes) = mpsc::unbounded_channel();
        let handle = Self::start_with(
            Hub::new(config),
            deliverer,
            Some(Cluster {
                log: log.clone(),
                topic: topic.clone(),
                node: node.clone(),
                replicate,
                applied: watch::Sender::new(HashMap::new()),
            }),
        );
        let caught_up_by = tokio::time::Instant::now() + CATCH_UP_LIMIT;
        while !behind.is_empty() && tokio::time::Instant::now() < caught_up_by {
            for record in consumer.poll(512, Duration::from_millis(200)).await? {
                if behind
                    .get(&record.partition)
                    .is_some_and(|end| record.offset + 1 >= *end)
                {
                    behind.remove(&record.partition);
                }
                handle.core.apply_and_mark(&record);
            }
        }
        if !behind.is_empty() {
            tracing::warn!("FHIRcast hub: serving before it read the whole history of {topic}");
        }
        tokio::spawn(run_appender(log, topic, node, handle.core.clock, changes));
        tokio::spawn(run_applier(Arc::downgrade(&handle.core), consumer));
        Ok(handle)
    }

    fn start_with(hub: Hub, deliverer: Option<Caller>, cluster: Option<Cluster>) -> Self {
        let core = Arc::new(Core {
            shared: Mutex::new(Shared {
                hub,
                sockets: HashMap::new(),
                webhook_queues: HashMap::new(),
                timer_at: None,
                waiting: HashMap::new(),
            }),
            clock: Clock {
                wall_origin: OffsetDateTime::now_utc(),
                origin: tokio::time::Instant::now(),
            },
            wake: Arc::new(Notify::new()),
            deliverer,
            cluster,
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
    pub async fn subscribe(&self, form: &[u8], endpoint_base: &str) -> HttpReply {
        if let Some(cluster) = &self.core.cluster {
            let change = LogChange::Subscribe {
                form: String::from_utf8_lossy(form).into_owned(),
                endpoint_base: endpoint_base.to_string(),
            };
            return self.core.request(cluster, change).await;
        }
        self.core.run(|hub, now| {
            let response = hub.subscribe(form, endpoint_base, now);
            (response.reply, response.outputs)
        })
    }

    /// A context change request; `path_topic` when it came to `{hub}/{topic}`.
    pub async fn publish(&self, path_topic: Option<&str>, body: &[u8]) -> HttpReply {
        if let Some(cluster) = &self.core.cluster {
            let Ok(body) = std::str::from_utf8(body) else {
                return HttpReply::text(400, "the body is not valid JSON: it is not UTF-8");
            };
            let change = LogChange::Publish {
                path_topic: path_topic.map(str::to_string),
                body: body.to_string(),
            };
            return self.core.request(cluster, change).await;
        }
        self.core.run(|hub, now| {
            let response = hub.publish(path_topic, body, now);
            (response.reply, response.outputs)
        })
    }

    pub fn current_context(&self, topic: &str, shape: ContextShape) -> HttpReply {
        self.core.shared.lock().hub.current_context(topic, shape)
    }

    /// On a clustered hub, waits (at most `CONNECT_CATCH_UP`) until this node has applied
    /// everything the hub topic held when called: a subscription accepted by another node
    /// a moment ago is then known here. Returns at once on a single node.
    pub async fn catch_up(&self) {
        let Some(cluster) = &self.core.cluster else {
            return;
        };
        let Ok(topics) = cluster.log.topics().await else {
            return;
        };
        let ends: Vec<(u32, u64)> = topics
            .into_iter()
            .filter(|info| info.name == cluster.topic)
            .flat_map(|info| {
                info.end_offsets
                    .into_iter()
                    .enumerate()
                    .map(|(partition, end)| (partition as u32, end))
            })
            .filter(|(_, end)| *end > 0)
            .collect();
        let mut applied = cluster.applied.subscribe();
        let caught_up = applied.wait_for(|applied| {
            ends.iter()
                .all(|(partition, end)| applied.get(partition).is_some_and(|next| next >= end))
        });
        // A node that cannot catch up in time answers from what it has.
        let _ = tokio::time::timeout(CONNECT_CATCH_UP, caught_up).await;
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
        let core = &self.core;
        let mut shared = core.shared.lock();
        let capacity = shared.hub.config().max_queued_frames.max(1);
        let (queue, commands) = mpsc::channel(capacity);
        let (abort_sender, abort) = oneshot::channel();
        let now = core.clock.now();
        let (connection, outputs) = shared.hub.socket_opened(endpoint, now)?;
        // Registered before dispatching so the confirmation reaches this socket.
        shared.sockets.insert(
            connection,
            SocketSender {
                queue,
                abort: Some(abort_sender),
            },
        );
        core.dispatch(&mut shared, outputs, now);
        let wake = shared.timer_is_late();
        drop(shared);
        if wake {
            core.wake.notify_one();
        }
        Ok(SocketSession {
            connection,
            commands,
            abort,
            abort_seen: false,
        })
    }

    /// A text frame arrived on a socket.
    pub fn message(&self, connection: ConnectionId, text: &str) {
        // Parsed before taking the lock: thousands of acknowledgements per event.
        if let SubscriberFrame::Ack { id, status } = parse_subscriber_frame(text) {
            self.core
                .run(|hub, now| ((), hub.acknowledge(connection, &id, status, now)));
        }
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
                    core.run(|hub, now| ((), hub.intent_verified(&subscription, confirmed, now)));
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

/// Appends the changes this node decided on its own, in the order it decided them.
async fn run_appender(
    log: Arc<dyn EventLog>,
    topic: String,
    node: String,
    clock: Clock,
    mut changes: mpsc::UnboundedReceiver<Replicated>,
) {
    while let Some(change) = changes.recv().await {
        let record = encode_record(&node, None, clock.now(), change.into());
        if let Err(error) = log.append(&topic, vec![record]).await {
            tracing::error!(%error, "FHIRcast hub: a change could not reach the other nodes");
        }
    }
}

/// Applies the hub's log topic, every node's records, in log order.
async fn run_applier(core: Weak<Core>, mut consumer: Box<dyn flare_log::Consumer>) {
    loop {
        // A bounded wait, so a dropped hub ends this task.
        let records = consumer.poll(512, Duration::from_millis(500)).await;
        let Some(core) = core.upgrade() else {
            return;
        };
        match records {
            Ok(records) => {
                for record in &records {
                    core.apply_and_mark(record);
                }
            }
            Err(error) => {
                tracing::error!(%error, "FHIRcast hub: cannot read its log topic; retrying");
                drop(core);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn run_timer(core: Weak<Core>, wake: Arc<Notify>) {
    loop {
        // Only a weak reference while waiting, so a dropped hub stops the task.
        let (deadline, clock) = match core.upgrade() {
            Some(core) => {
                let mut shared = core.shared.lock();
                let deadline = shared.hub.next_deadline();
                shared.timer_at = deadline;
                (deadline, core.clock)
            }
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
