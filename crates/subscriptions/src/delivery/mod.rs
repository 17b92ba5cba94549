//! The delivery runtime: a subscription is a durable cursor over the event log.
//!
//! ```text
//! log (resource topics) ──► manager ──► cursor file (event rows + input offsets, one txn)
//!                                            │
//!                               per-subscription worker ──► rest-hook, message, email, kafka
//!                                            │
//!                  per-connection, per-binding task ──► websocket client ([`websocket`])
//! ```
//!
//! - The **manager** ([`manager`]) is one consumer over every resource topic the routing
//!   config can produce. It keeps the set of subscriptions current from the Subscription
//!   change events on the log itself, matches every other change event, and numbers each match
//!   per subscription. Numbers and input offsets are committed in one SQLite transaction
//!   ([`cursor`]), so after SIGKILL the manager resumes exactly where the file says: no gap,
//!   no double number. The subscription set is persisted in the same file, so a restart needs
//!   neither a store search nor a replay.
//! - One **worker** per active push subscription ([`worker`]: rest-hook, message, email,
//!   Kafka) reads its numbered events from the cursor file in order, builds the notification
//!   with the core's [`crate::notification`] builders in the version the payload asks for
//!   (reading the change event back from the log for `full-resource`), turns it into what the
//!   channel carries ([`channels`]), sends it with a timeout and retries with exponential
//!   backoff and jitter, and records the delivery position. A hanging or dead endpoint holds
//!   only its own worker. Status changes (`active`, `error`) are written back through
//!   [`flare_service::Fhir`], so they are visible on read and travel the log like any change.
//! - **Websocket** subscriptions turn `active` without a handshake; a client binds them on a
//!   connection (with a `$get-ws-binding-token` token, or by id in the R4 dialect) and each
//!   binding reads the numbered events from the cursor file from the connection's own position,
//!   which lets a client resume from the last event number it saw ([`websocket`]).
//!
//! Known limit: the manager orders a batch by outbox sequence, but a change committed just
//! after a Subscription create can, in rare interleavings across partitions, be read before
//! the create and is then not matched.

mod channels;
mod check;
pub mod cursor;
mod manager;
mod notify;
pub mod transport;
pub mod websocket;
mod worker;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use flare_events::RoutingConfig;
use flare_log::EventLog;
use flare_service::Fhir;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    Channel, ContentLevel, SubscriptionIndex, SubscriptionSpec, TopicRegistry, Trigger,
    notification::{self, NotificationType},
};

pub use check::{SubscriptionCheck, SubscriptionRedaction};
pub use cursor::{CursorStore, EventRow};
/// The guarded client's crate, for callers that build a [`flare_outbound::Deliverer`].
#[cfg(feature = "outbound")]
pub use flare_outbound as outbound;
pub use transport::{MailTransport, OutboundMail, OutboundRequest, Transport, TransportError};
pub use websocket::{WsBindingToken, WsSession, WsTokenError};

/// Errors of the delivery runtime. Endpoint failures are not errors: they are retried and end
/// in the subscription's `error` status.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("cursor file {path}: {source}")]
    Cursor {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("event log: {0}")]
    Log(#[from] flare_log::LogError),
    #[error("background task failed: {0}")]
    Task(String),
}

/// Settings of the delivery runtime: `[subscriptions.delivery]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// The SQLite file holding event numbers and input offsets. Default:
    /// `data/subscriptions.sqlite`.
    pub cursor_file: PathBuf,
    /// Records read from the log per step. Default: 500.
    pub batch_size: usize,
    /// Attempts per notification before the subscription turns `error`. Default: 5.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled per attempt, with up to 50% jitter. Default:
    /// 1,000 ms.
    pub retry_base_ms: u64,
    /// Upper bound of the retry delay. Default: 60,000 ms.
    pub retry_max_ms: u64,
    /// Request timeout when the subscription sets none (`backport-timeout`). Default:
    /// 10,000 ms.
    pub default_timeout_ms: u64,
    /// How often the manager looks for new topics (a topic appears with the first write of a
    /// resource type). Default: 1,000 ms.
    pub topic_refresh_ms: u64,
    /// The FHIR base URL used in notifications. Default: `http://localhost:8080/fhir`.
    pub base_url: String,
    /// How long a `$get-ws-binding-token` token binds. Default: 300,000 ms (5 min).
    pub ws_token_ttl_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            cursor_file: PathBuf::from("data/subscriptions.sqlite"),
            batch_size: 500,
            max_attempts: 5,
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
            default_timeout_ms: 10_000,
            topic_refresh_ms: 1000,
            base_url: "http://localhost:8080/fhir".into(),
            ws_token_ttl_ms: 300_000,
        }
    }
}

/// A subscription as the runtime knows it now.
#[derive(Clone)]
pub(crate) struct Live {
    pub resource: Arc<Value>,
    /// The resource parsed by [`crate::parse_subscription`]; `None` when it does not parse
    /// (then nothing is delivered).
    pub spec: Option<Arc<SubscriptionSpec>>,
    pub since_seq: u64,
    pub events_since_start: u64,
    /// Whether the resource parsed and sits in the matching index (otherwise it is never
    /// matched).
    pub indexed: bool,
}

impl Live {
    pub fn status(&self) -> &str {
        self.resource
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("requested")
    }

    /// Whether new changes are numbered for it: while `requested`, `active` and `error`
    /// (the IG asks to keep counting while failing).
    pub fn counts(&self) -> bool {
        matches!(self.status(), "requested" | "active" | "error") && self.indexed
    }

    pub fn channel(&self) -> Option<&Channel> {
        self.spec.as_deref().map(|spec| &spec.channel)
    }

    pub fn topic_url(&self) -> Option<&str> {
        self.spec.as_deref().and_then(SubscriptionSpec::topic_url)
    }

    /// The content level of its notifications (`empty` when unknown: nothing beyond what
    /// was asked for leaves the server).
    pub fn content(&self) -> ContentLevel {
        self.channel()
            .map(|channel| channel.content)
            .unwrap_or(ContentLevel::Empty)
    }

    /// The reason of its last `error` status, as written back by the runtime.
    pub fn error(&self) -> Option<&str> {
        self.resource.get("error").and_then(Value::as_str)
    }

    /// Whether it is topic-based (notification Bundles) rather than R4 classic.
    pub fn is_topic_based(&self) -> bool {
        matches!(
            self.spec.as_deref().map(|spec| &spec.trigger),
            Some(Trigger::Topic { .. })
        )
    }
}

pub(crate) struct Shared {
    pub fhir: Fhir,
    pub log: Arc<dyn EventLog>,
    pub cursor: CursorStore,
    pub transport: Arc<dyn Transport>,
    pub mailer: Option<Arc<dyn MailTransport>>,
    pub routing: RoutingConfig,
    pub index: Mutex<SubscriptionIndex>,
    pub config: DeliveryConfig,
    pub live: Mutex<HashMap<String, Live>>,
    pub workers: Mutex<HashMap<String, worker::WorkerHandle>>,
    /// Websocket binding tokens.
    pub ws_tokens: websocket::Tokens,
    /// Bumped after every batch that numbered events; websocket sessions wait on it.
    pub committed: watch::Sender<u64>,
}

/// What the runtime needs from the rest of Flare.
pub struct Dependencies {
    pub fhir: Fhir,
    pub log: Arc<dyn EventLog>,
    /// The topics subscriptions may name (e.g. [`TopicRegistry::with_builtins`]).
    pub topics: TopicRegistry,
    pub transport: Arc<dyn Transport>,
}

/// The running delivery runtime; dropping it does not stop it, [`Self::shutdown`] does.
#[derive(Clone)]
pub struct SubscriptionRuntime {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    manager: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// A subscription's state for `$status`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusInfo {
    pub id: String,
    pub status: String,
    pub topic: Option<String>,
    pub events_since_start: u64,
    pub delivered_through: u64,
    pub error: Option<String>,
}

impl SubscriptionRuntime {
    /// Opens the cursor file, resumes the workers of known subscriptions and starts the
    /// manager.
    pub async fn start(deps: Dependencies, config: DeliveryConfig) -> Result<Self, DeliveryError> {
        Self::start_with_mailer(deps, config, None).await
    }

    /// [`Self::start`] with a sender for `email` channel notifications; without one, email
    /// subscriptions turn `error` with a reason naming the missing SMTP settings.
    pub async fn start_with_mailer(
        deps: Dependencies,
        config: DeliveryConfig,
        mailer: Option<Arc<dyn MailTransport>>,
    ) -> Result<Self, DeliveryError> {
        let cursor = CursorStore::open(&config.cursor_file)?;
        let shared = Arc::new(Shared {
            routing: deps.fhir.config().events.clone(),
            index: Mutex::new(SubscriptionIndex::new(
                deps.fhir.registry().clone(),
                deps.topics,
            )),
            fhir: deps.fhir,
            log: deps.log,
            cursor,
            transport: deps.transport,
            mailer,
            config,
            live: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            ws_tokens: websocket::Tokens::default(),
            committed: watch::channel(0).0,
        });
        manager::resume(&shared).await?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(manager::run(shared.clone(), stopped));
        Ok(Self {
            shared,
            stop,
            manager: Arc::new(Mutex::new(Some(task))),
        })
    }

    /// Stops the manager and every worker. Undelivered events stay in the cursor file.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.manager.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        for (_, handle) in self.shared.workers.lock().drain() {
            handle.stop();
        }
    }

    /// The state of one subscription, if the runtime has seen it.
    pub async fn status(&self, id: &str) -> Result<Option<StatusInfo>, DeliveryError> {
        let live = self.shared.live.lock().get(id).cloned();
        let Some(live) = live else { return Ok(None) };
        let delivered_through = self.shared.cursor.delivered_through(id).await?;
        Ok(Some(StatusInfo {
            id: id.to_owned(),
            status: live.status().to_owned(),
            topic: live.topic_url().map(str::to_owned),
            events_since_start: live.events_since_start,
            delivered_through,
            error: live.error().map(str::to_owned),
        }))
    }

    /// Ids of every subscription the runtime knows, sorted.
    pub fn subscription_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.shared.live.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The `$status` resource of one subscription (`Parameters` for R4, `SubscriptionStatus`
    /// when its payload asks for R4B or R5).
    pub async fn status_resource(&self, id: &str) -> Result<Option<Value>, DeliveryError> {
        let live = self.shared.live.lock().get(id).cloned();
        let Some(live) = live else { return Ok(None) };
        let info = notify::status_info(
            &self.shared,
            id,
            &live,
            live.status(),
            live.events_since_start,
        );
        Ok(Some(notification::status_resource(
            &info,
            NotificationType::QueryStatus,
            &[],
            live.content(),
            notify::version(live.channel()),
        )))
    }

    /// The `$events` Bundle: events `since..=until` still retained by the log, in the
    /// subscription's content level unless `content` overrides it. `None`: unknown id.
    pub async fn events_bundle(
        &self,
        id: &str,
        since: u64,
        until: u64,
        content: Option<ContentLevel>,
    ) -> Result<Option<Value>, DeliveryError> {
        let live = self.shared.live.lock().get(id).cloned();
        let Some(live) = live else { return Ok(None) };
        let content = content.unwrap_or(live.content());
        // Bounded per call; a client pages with eventsSinceNumber.
        let rows = self
            .shared
            .cursor
            .events(id, since.max(1), until, 1000)
            .await?;
        let events = notify::load_events(&self.shared, rows, content).await;
        Ok(Some(notify::bundle(
            &self.shared,
            id,
            &live,
            NotificationType::QueryEvent,
            &events,
            content,
        )))
    }

    /// `$resend`: delivers events from `since` on again, in order. `false`: unknown id.
    pub async fn resend(&self, id: &str, since: u64) -> Result<bool, DeliveryError> {
        if !self.shared.live.lock().contains_key(id) {
            return Ok(false);
        }
        let rewound = self.shared.cursor.rewind(id, since.max(1)).await?;
        if let Some(handle) = self.shared.workers.lock().get(id) {
            handle.wake();
        }
        Ok(rewound)
    }

    /// `$get-ws-binding-token`: a token binding the given websocket subscriptions, valid for
    /// [`DeliveryConfig::ws_token_ttl_ms`].
    pub fn issue_ws_token(&self, ids: &[String]) -> Result<WsBindingToken, WsTokenError> {
        websocket::issue_token(&self.shared, ids)
    }

    /// A new websocket connection's session and the queue of frames to write to the client.
    pub fn open_ws_session(&self) -> (WsSession, tokio::sync::mpsc::Receiver<String>) {
        WsSession::new(self.shared.clone())
    }

    /// The FHIR base URL of notifications ([`DeliveryConfig::base_url`]).
    pub fn base_url(&self) -> &str {
        &self.shared.config.base_url
    }

    /// The cursor file's location.
    pub fn cursor_file(&self) -> PathBuf {
        self.shared.cursor.path().to_path_buf()
    }
}

pub(crate) fn retry_delay(config: &DeliveryConfig, attempt: u32) -> Duration {
    let base = config
        .retry_base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let capped = base.min(config.retry_max_ms);
    let jitter = rand::random_range(0..=capped / 2);
    Duration::from_millis(capped / 2 + jitter)
}
