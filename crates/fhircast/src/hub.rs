//! The hub as a state machine without I/O.
//!
//! Inputs are method calls (a subscribe form, a publish body, a socket opened / sent a frame /
//! closed, a clock tick) with the current time passed in; outputs are the HTTP reply and the
//! frames to send and sockets to close. The async shell in [`crate::driver`] and the axum
//! routes only move bytes, so every protocol rule is testable here without a runtime.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::{Map, Value, json};
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

use crate::catalog::{ANCHORS, Anchor, EventKind, EventName, parse_event_name, supported_events};
use crate::config::{FanOut, HubConfig};

/// Identifies one WebSocket connection (a reconnect to the same endpoint gets a new one).
pub type ConnectionId = u64;

/// An HTTP answer for the shell to send as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    /// `None` for an empty body.
    pub content_type: Option<&'static str>,
    pub body: String,
}

impl HttpReply {
    pub(crate) fn text(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            content_type: Some("text/plain; charset=utf-8"),
            body: message.into(),
        }
    }

    fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            content_type: Some("application/json"),
            body: value.to_string(),
        }
    }
}

/// Something the shell must do on a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send one text frame. A broadcast serialises its event once; every subscriber's
    /// frame shares that text.
    Send {
        connection: ConnectionId,
        text: Arc<str>,
    },
    /// Close the socket (after the frames queued before this).
    Close {
        connection: ConnectionId,
        code: u16,
        reason: String,
    },
    /// Webhook channel: `GET callback?hub.mode=..&hub.challenge=..`; report the answer with
    /// [`Hub::intent_verified`].
    VerifyIntent {
        subscription: String,
        callback: String,
        intent: WebhookIntent,
    },
    /// Webhook channel: POST `body` signed with `secret`; report the answer with
    /// [`Hub::webhook_delivered`].
    WebhookPost {
        subscription: String,
        callback: String,
        secret: String,
        body: String,
        event_id: String,
        event_name: String,
    },
    /// Webhook channel: the denial `GET` (`intent.mode` is `denied`); the subscription is gone.
    WebhookDenied {
        subscription: String,
        callback: String,
        intent: WebhookIntent,
    },
    /// Clustered hub only (`fan_out = "log"`): a change this node decided on its own (from a
    /// socket or a deadline) that every node must apply, through the log.
    Replicate(Replicated),
}

/// A change made on one node that the other nodes of a clustered hub apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replicated {
    /// A hub-generated SyncError: every node sends it to its SyncError subscribers of the
    /// topic but `except` (the subscriber it is about).
    SyncError {
        topic: String,
        notification: String,
        except: Option<String>,
    },
    /// A subscription ended on the node holding its socket (closed, unresponsive).
    Ended {
        endpoint: String,
        /// The subscription's topic, so the record stays in order with the topic's others.
        topic: String,
        reason: String,
    },
}

/// The query of a webhook intent verification or denial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookIntent {
    pub mode: String,
    pub topic: String,
    pub events: String,
    pub challenge: String,
    pub lease_seconds: Option<u64>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Channel {
    WebSocket,
    Webhook {
        callback: String,
        secret: String,
        /// Intent verified: events flow.
        active: bool,
    },
}

/// The result of an HTTP interaction: the reply and the socket work it causes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub reply: HttpReply,
    pub outputs: Vec<Output>,
}

impl Response {
    fn reply(reply: HttpReply) -> Self {
        Self {
            reply,
            outputs: Vec::new(),
        }
    }
}

/// Why a WebSocket upgrade is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefused {
    #[error("no live subscription has this endpoint")]
    UnknownEndpoint,
}

/// Shape of a Get Current Context answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextShape {
    /// STU3: `{"context.type", "context.versionId", "context"}`.
    Stu3,
    /// STU2-era hubs: the bare context array.
    BareArray,
}

const SYNCERROR_EVENT_ID: &str = "https://fhircast.hl7.org/events/syncerror/eventid";
const SYNCERROR_EVENT_NAME: &str = "https://fhircast.hl7.org/events/syncerror/eventname";
const SYNCERROR_SUBSCRIBER: &str = "https://fhircast.hl7.org/events/syncerror/subscribername";

/// Close codes after which a subscriber is gone on purpose (no SyncError).
const NORMAL_CLOSE_CODES: [u16; 2] = [1000, 1001];
/// Close code the hub uses when it ends a subscription (denial, lease expiry).
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code for a connection replaced by a newer one to the same endpoint.
pub const CLOSE_REPLACED: u16 = 4000;

struct PendingAck {
    event_id: Arc<str>,
    event_name: Arc<str>,
    deadline: OffsetDateTime,
}

struct Subscription {
    topic: String,
    channel: Channel,
    events: Vec<EventName>,
    lease_seconds: u64,
    expires_at: OffsetDateTime,
    name: Option<String>,
    connection: Option<ConnectionId>,
    pending: Vec<PendingAck>,
    /// Consecutive events the subscriber let time out.
    unanswered: u32,
    /// The last event sent, named in a SyncError about an abnormal close.
    last_event: Option<(Arc<str>, Arc<str>)>,
}

impl Subscription {
    fn wants(&self, event_key: &str) -> bool {
        self.events.iter().any(|event| event.key == event_key)
    }

    fn events_list(&self) -> String {
        self.events
            .iter()
            .map(|event| event.canonical.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| "unnamed subscriber".into())
    }
}

/// An anchor resource opened on a topic and not closed yet.
struct OpenContext {
    anchor: &'static Anchor,
    anchor_id: String,
    /// The open notification as broadcast (replayed to new subscribers).
    notification: Value,
    version_id: String,
    /// Shared content by `Type/id`, in the order it was added.
    content: IndexMap<String, Value>,
}

impl OpenContext {
    fn context(&self) -> Value {
        self.notification["event"]["context"].clone()
    }
}

#[derive(Default)]
struct Topic {
    /// Endpoints of the topic's subscriptions, in subscription order.
    subscribers: Vec<String>,
    /// Open contexts, least recently opened first.
    open: Vec<OpenContext>,
    /// `(resource type, id)` of the current context, if any.
    current: Option<(&'static str, String)>,
    /// Timestamp of the last broadcast: later events never carry an earlier one.
    last_timestamp: Option<OffsetDateTime>,
}

impl Topic {
    fn find_open(&self, anchor: &Anchor, id: &str) -> Option<usize> {
        self.open.iter().position(|open| {
            open.anchor.resource_type == anchor.resource_type && open.anchor_id == id
        })
    }

    fn is_current(&self, anchor: &Anchor, id: &str) -> bool {
        self.current
            .as_ref()
            .is_some_and(|(kind, current)| *kind == anchor.resource_type && current == id)
    }
}

/// Source of unguessable identifiers (endpoints, version ids, hub event ids).
pub type IdSource = Box<dyn FnMut() -> String + Send>;

/// 128 bits from the operating system-seeded CSPRNG, as 32 hex digits.
pub fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The FHIRcast hub state: topics, subscriptions, contexts, pending acknowledgements.
pub struct Hub {
    config: HubConfig,
    topics: HashMap<String, Topic>,
    subscriptions: HashMap<String, Subscription>,
    connections: HashMap<ConnectionId, String>,
    next_connection: ConnectionId,
    new_id: IdSource,
    /// When [`Hub::tick`] has something to do (leases, acknowledgement deadlines), rounded up
    /// to [`TICK_GRANULARITY_MS`] so thousands of deliveries share one wake-up. Entries may
    /// be stale (an acknowledged event); a tick at a stale time finds nothing due.
    deadlines: BTreeSet<OffsetDateTime>,
    /// Clustered (`fan_out = "log"`): SyncErrors and subscription ends decided here are
    /// handed out as [`Output::Replicate`] instead of applied.
    clustered: bool,
    /// When the next legacy heartbeat goes out (`heartbeat_seconds` > 0, sockets open).
    next_heartbeat: Option<OffsetDateTime>,
}

/// Deadlines are grouped by this many milliseconds: a broadcast to 10,000 subscribers sets
/// one timer, not 10,000, and acknowledgement timeouts fire at most this late.
pub const TICK_GRANULARITY_MS: i64 = 100;

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("topics", &self.topics.len())
            .field("subscriptions", &self.subscriptions.len())
            .field("connections", &self.connections.len())
            .finish()
    }
}

type Rejection = HttpReply;

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Self::with_id_source(config, Box::new(random_id))
    }

    /// A hub whose identifiers come from `new_id` (tests use a counter).
    pub fn with_id_source(config: HubConfig, new_id: IdSource) -> Self {
        Self {
            clustered: config.fan_out == FanOut::Log,
            next_heartbeat: None,
            config,
            topics: HashMap::new(),
            subscriptions: HashMap::new(),
            connections: HashMap::new(),
            next_connection: 1,
            new_id,
            deadlines: BTreeSet::new(),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Runs `step` with identifiers derived from `seed` instead of fresh random ones, so every
    /// node of a clustered hub that applies the same change with the same seed assigns the
    /// same endpoints, version ids and event ids.
    pub fn with_seeded_ids<T>(&mut self, seed: u128, step: impl FnOnce(&mut Self) -> T) -> T {
        let mut counter = 0u64;
        let seeded: IdSource = Box::new(move || {
            counter += 1;
            derived_id(seed, counter)
        });
        let previous = std::mem::replace(&mut self.new_id, seeded);
        let value = step(self);
        self.new_id = previous;
        value
    }

    /// A SyncError another node generated ([`Replicated::SyncError`]).
    pub fn apply_sync_error(
        &mut self,
        topic: &str,
        notification: &str,
        except: Option<&str>,
        now: OffsetDateTime,
    ) -> Vec<Output> {
        match serde_json::from_str::<Value>(notification) {
            Ok(notification) => self.broadcast(topic, "syncerror", &notification, except, now),
            Err(_) => Vec::new(),
        }
    }

    /// A subscription another node ended ([`Replicated::Ended`]); a socket to it here (a
    /// subscriber that reconnected to this node) is denied and closed.
    pub fn apply_ended(&mut self, endpoint: &str, reason: &str) -> Vec<Output> {
        self.end_subscription(endpoint, reason)
    }

    /// In a clustered hub, tells the other nodes that a subscription ended here.
    fn replicate_end(&self, endpoint: &str, topic: &str, reason: &str) -> Option<Output> {
        self.clustered.then(|| {
            Output::Replicate(Replicated::Ended {
                endpoint: endpoint.to_string(),
                topic: topic.to_string(),
                reason: reason.to_string(),
            })
        })
    }

    /// Remembers that [`tick`](Self::tick) must run at (or just after) `at`.
    fn schedule(&mut self, at: OffsetDateTime) {
        let granularity = i128::from(TICK_GRANULARITY_MS) * 1_000_000;
        let nanos = at.unix_timestamp_nanos();
        let rounded = nanos.div_euclid(granularity) * granularity;
        let rounded = if rounded < nanos {
            rounded + granularity
        } else {
            rounded
        };
        self.deadlines
            .insert(OffsetDateTime::from_unix_timestamp_nanos(rounded).unwrap_or(at));
    }

    /// The `.well-known/fhircast-configuration` document, consistent with what this hub does.
    pub fn discovery(&self) -> Value {
        json!({
            "eventsSupported": supported_events(),
            "websocketSupport": true,
            "webhookSupport": self.config.webhook,
            "fhircastVersion": "3.0.0",
            "getCurrentSupport": true,
            "capabilities": {
                "supportsGetCurrentContext": true,
                "supportsNonCurrentContextUpdates": self.config.non_current_context_updates,
            },
            "fhirVersion": "R4",
        })
    }

    /// Whether an upgrade to `endpoint` would be accepted.
    pub fn endpoint_is_live(&self, endpoint: &str, now: OffsetDateTime) -> bool {
        self.subscriptions
            .get(endpoint)
            .is_some_and(|subscription| {
                subscription.channel == Channel::WebSocket && subscription.expires_at > now
            })
    }

    /// A subscribe or unsubscribe form (`application/x-www-form-urlencoded` body).
    /// `endpoint_base` is the WebSocket URL prefix the endpoint id is appended to.
    pub fn subscribe(&mut self, form: &[u8], endpoint_base: &str, now: OffsetDateTime) -> Response {
        match self.try_subscribe(form, endpoint_base, now) {
            Ok(response) => response,
            Err(reply) => Response::reply(reply),
        }
    }

    fn try_subscribe(
        &mut self,
        form: &[u8],
        endpoint_base: &str,
        now: OffsetDateTime,
    ) -> Result<Response, Rejection> {
        let lenient = !self.config.is_ira();
        let mut params: HashMap<String, String> = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(form) {
            let name = match name.as_ref() {
                "hub.lease" => "hub.lease_seconds",
                "endpoint" if lenient => "hub.channel.endpoint",
                other => other,
            };
            if params
                .insert(name.to_string(), value.into_owned())
                .is_some()
            {
                return Err(bad_request(format!(
                    "the parameter {name} is given more than once"
                )));
            }
        }
        let param = |name: &str| {
            params
                .get(name)
                .map(|value| value.trim())
                .filter(|v| !v.is_empty())
        };

        match param("hub.channel.type") {
            Some(channel) if channel.eq_ignore_ascii_case("websocket") => {}
            Some(channel) if channel.eq_ignore_ascii_case("webhook") && self.config.webhook => {
                return self.webhook_subscribe(&params, now);
            }
            // STU1 had no channel type: a callback means a webhook.
            None if self.config.webhook && param("hub.callback").is_some() => {
                return self.webhook_subscribe(&params, now);
            }
            Some(channel) => {
                return Err(bad_request(format!(
                    "hub.channel.type `{channel}` is not supported: this hub offers websocket"
                )));
            }
            None if lenient => {}
            None => return Err(bad_request("hub.channel.type is required (websocket)")),
        }
        let topic = param("hub.topic")
            .ok_or_else(|| bad_request("hub.topic is required"))?
            .to_string();
        let endpoint = param("hub.channel.endpoint").map(endpoint_id);
        match param("hub.mode") {
            Some("subscribe") => {}
            Some("unsubscribe") => return self.unsubscribe(&topic, endpoint, endpoint_base),
            Some(other) => {
                return Err(bad_request(format!(
                    "hub.mode `{other}` is invalid: use subscribe or unsubscribe"
                )));
            }
            None => return Err(bad_request("hub.mode is required")),
        }

        let events = parse_event_list(param("hub.events"))?;
        let name = param("subscriber.name").map(str::to_string);
        if name.is_none() && self.config.is_ira() {
            return Err(bad_request("subscriber.name is required"));
        }
        let lease_seconds = match param("hub.lease_seconds") {
            None => self.config.default_lease_seconds,
            Some(text) => match text.parse::<u64>() {
                Ok(seconds) if seconds > 0 => seconds,
                _ => {
                    return Err(bad_request(
                        "hub.lease_seconds must be a positive whole number",
                    ));
                }
            },
        }
        .min(self.config.max_lease_seconds);
        let expires_at = now + Duration::seconds(lease_seconds.min(i64::MAX as u64) as i64);
        self.schedule(expires_at);

        let mut outputs = Vec::new();
        let endpoint = match endpoint {
            Some(endpoint) => {
                // Re-subscription replaces the event set and renews the lease.
                let subscription = self
                    .subscriptions
                    .get_mut(&endpoint)
                    .filter(|subscription| subscription.topic == topic)
                    .ok_or_else(|| {
                        bad_request("hub.channel.endpoint names no subscription of this topic")
                    })?;
                subscription.events = events;
                subscription.lease_seconds = lease_seconds;
                subscription.expires_at = expires_at;
                if name.is_some() {
                    subscription.name = name;
                }
                if let Some(connection) = subscription.connection {
                    // The spec leaves this open (fhircast-docs#319): a fresh confirmation
                    // tells the open socket what it now receives.
                    outputs.push(Output::Send {
                        connection,
                        text: confirmation(&topic, subscription).to_string().into(),
                    });
                }
                endpoint
            }
            None => {
                let endpoint = (self.new_id)();
                self.subscriptions.insert(
                    endpoint.clone(),
                    Subscription {
                        topic: topic.clone(),
                        channel: Channel::WebSocket,
                        events,
                        lease_seconds,
                        expires_at,
                        name,
                        connection: None,
                        pending: Vec::new(),
                        unanswered: 0,
                        last_event: None,
                    },
                );
                self.topics
                    .entry(topic)
                    .or_default()
                    .subscribers
                    .push(endpoint.clone());
                endpoint
            }
        };
        Ok(Response {
            reply: HttpReply::json(
                202,
                &json!({ "hub.channel.endpoint": format!("{endpoint_base}/{endpoint}") }),
            ),
            outputs,
        })
    }

    fn unsubscribe(
        &mut self,
        topic: &str,
        endpoint: Option<String>,
        endpoint_base: &str,
    ) -> Result<Response, Rejection> {
        let endpoint = endpoint
            .ok_or_else(|| bad_request("hub.channel.endpoint is required to unsubscribe"))?;
        if self
            .subscriptions
            .get(&endpoint)
            .is_none_or(|subscription| subscription.topic != topic)
        {
            return Err(bad_request(
                "hub.channel.endpoint names no subscription of this topic",
            ));
        }
        let outputs = self.end_subscription(&endpoint, "unsubscribed");
        Ok(Response {
            reply: HttpReply::json(
                202,
                &json!({ "hub.channel.endpoint": format!("{endpoint_base}/{endpoint}") }),
            ),
            outputs,
        })
    }

    /// Removes a subscription; if its socket is open, sends a denial and closes it.
    fn end_subscription(&mut self, endpoint: &str, reason: &str) -> Vec<Output> {
        let Some(subscription) = self.subscriptions.remove(endpoint) else {
            return Vec::new();
        };
        if let Some(topic) = self.topics.get_mut(&subscription.topic) {
            topic.subscribers.retain(|other| other != endpoint);
        }
        if let Channel::Webhook {
            callback,
            active: true,
            ..
        } = &subscription.channel
        {
            return vec![Output::WebhookDenied {
                subscription: endpoint.to_string(),
                callback: callback.clone(),
                intent: WebhookIntent {
                    mode: "denied".into(),
                    topic: subscription.topic.clone(),
                    events: subscription.events_list(),
                    challenge: String::new(),
                    lease_seconds: None,
                    reason: Some(reason.into()),
                },
            }];
        }
        let Some(connection) = subscription.connection else {
            return Vec::new();
        };
        self.connections.remove(&connection);
        let denial = json!({
            "hub.mode": "denied",
            "hub.topic": subscription.topic,
            "hub.events": subscription.events_list(),
            "hub.reason": reason,
        });
        vec![
            Output::Send {
                connection,
                text: denial.to_string().into(),
            },
            Output::Close {
                connection,
                code: CLOSE_NORMAL,
                reason: reason.into(),
            },
        ]
    }

    /// A subscriber opened the WebSocket of `endpoint`: the confirmation, then the replay of
    /// the open contexts it subscribed to. A second connection replaces the first.
    pub fn socket_opened(
        &mut self,
        endpoint: &str,
        now: OffsetDateTime,
    ) -> Result<(ConnectionId, Vec<Output>), ConnectRefused> {
        if !self.endpoint_is_live(endpoint, now) {
            return Err(ConnectRefused::UnknownEndpoint);
        }
        let connection = self.next_connection;
        self.next_connection += 1;
        let mut outputs = Vec::new();
        let ack_timeout = self.ack_timeout();
        let Some(subscription) = self.subscriptions.get_mut(endpoint) else {
            return Err(ConnectRefused::UnknownEndpoint);
        };
        if let Some(previous) = subscription.connection.replace(connection) {
            self.connections.remove(&previous);
            outputs.push(Output::Close {
                connection: previous,
                code: CLOSE_REPLACED,
                reason: "replaced by a newer connection".into(),
            });
        }
        self.connections.insert(connection, endpoint.to_string());
        subscription.pending.clear();
        // The lease counts from the confirmation.
        subscription.expires_at =
            now + Duration::seconds(subscription.lease_seconds.min(i64::MAX as u64) as i64);
        let expires_at = subscription.expires_at;
        outputs.push(Output::Send {
            connection,
            text: confirmation(&subscription.topic, subscription)
                .to_string()
                .into(),
        });
        if let Some(topic) = self.topics.get(&subscription.topic) {
            // Per anchor type, the most recent open that is still open, oldest first so
            // the current context arrives last.
            let mut seen_types = HashSet::new();
            let mut replay: Vec<&OpenContext> = topic
                .open
                .iter()
                .rev()
                .filter(|open| seen_types.insert(open.anchor.resource_type))
                .collect();
            replay.reverse();
            for open in replay {
                let event_key = format!("{}-open", open.anchor.resource_type).to_ascii_lowercase();
                if subscription.wants(&event_key) {
                    deliver(
                        subscription,
                        connection,
                        &Frame::of(&open.notification),
                        now + ack_timeout,
                        &mut outputs,
                    );
                }
            }
        }
        self.schedule(expires_at);
        self.schedule(now + ack_timeout);
        if self.config.heartbeat_seconds > 0 && self.next_heartbeat.is_none() {
            let at = now + self.heartbeat_period();
            self.next_heartbeat = Some(at);
            self.schedule(at);
        }
        Ok((connection, outputs))
    }

    /// A text frame from a subscriber: acknowledgements are correlated, everything else
    /// (endpoint echoes, heartbeats) is ignored.
    pub fn socket_message(
        &mut self,
        connection: ConnectionId,
        text: &str,
        now: OffsetDateTime,
    ) -> Vec<Output> {
        match parse_subscriber_frame(text) {
            SubscriberFrame::Ack { id, status } => self.acknowledge(connection, &id, status, now),
            SubscriberFrame::Ignored => Vec::new(),
        }
    }

    /// An acknowledgement from a subscriber (see [`parse_subscriber_frame`], which callers
    /// run before taking a lock around the hub).
    pub fn acknowledge(
        &mut self,
        connection: ConnectionId,
        id: &str,
        status: AckStatus,
        now: OffsetDateTime,
    ) -> Vec<Output> {
        let status = match status {
            AckStatus::Code(code) => code,
            AckStatus::Missing if !self.config.is_ira() => 200,
            AckStatus::Missing | AckStatus::Invalid => return Vec::new(),
        };
        let Some(endpoint) = self.connections.get(&connection).cloned() else {
            return Vec::new();
        };
        let Some(subscription) = self.subscriptions.get_mut(&endpoint) else {
            return Vec::new();
        };
        let Some(position) = subscription
            .pending
            .iter()
            .position(|pending| &*pending.event_id == id)
        else {
            return Vec::new();
        };
        let pending = subscription.pending.remove(position);
        self.answered(
            &endpoint,
            &pending.event_id,
            &pending.event_name,
            status,
            now,
        )
    }

    /// A subscriber answered `event_id` with `status`: anything but 2xx is reported to the
    /// topic's other SyncError subscribers.
    fn answered(
        &mut self,
        endpoint: &str,
        event_id: &str,
        event_name: &str,
        status: u64,
        now: OffsetDateTime,
    ) -> Vec<Output> {
        let Some(subscription) = self.subscriptions.get_mut(endpoint) else {
            return Vec::new();
        };
        subscription.unanswered = 0;
        if (200..300).contains(&status) {
            return Vec::new();
        }
        let diagnostics = format!(
            "{} refused event {event_id} ({event_name}) with status {status}",
            subscription.display_name(),
        );
        let topic = subscription.topic.clone();
        let name = subscription.display_name();
        self.sync_error(
            &topic,
            event_id,
            event_name,
            &name,
            &diagnostics,
            Some(endpoint),
            now,
        )
    }

    fn webhook_subscribe(
        &mut self,
        params: &HashMap<String, String>,
        now: OffsetDateTime,
    ) -> Result<Response, Rejection> {
        let param = |name: &str| {
            params
                .get(name)
                .map(|value| value.trim())
                .filter(|v| !v.is_empty())
        };
        let topic = param("hub.topic")
            .ok_or_else(|| bad_request("hub.topic is required"))?
            .to_string();
        let callback = param("hub.callback")
            .ok_or_else(|| bad_request("hub.callback is required on the webhook channel"))?
            .to_string();
        let existing: Vec<String> = self
            .subscriptions
            .iter()
            .filter(|(_, subscription)| {
                subscription.topic == topic
                    && matches!(&subscription.channel, Channel::Webhook { callback: known, .. } if *known == callback)
            })
            .map(|(key, _)| key.clone())
            .collect();
        match param("hub.mode") {
            Some("subscribe") => {}
            Some("unsubscribe") => {
                if existing.is_empty() {
                    return Err(bad_request(
                        "no webhook subscription of this topic has this callback",
                    ));
                }
                // STU2: unsubscribing is neither verified nor denied.
                for key in existing {
                    self.forget(&key);
                }
                return Ok(Response::reply(HttpReply {
                    status: 202,
                    content_type: None,
                    body: String::new(),
                }));
            }
            Some(other) => {
                return Err(bad_request(format!(
                    "hub.mode `{other}` is invalid: use subscribe or unsubscribe"
                )));
            }
            None => return Err(bad_request("hub.mode is required")),
        }
        let secret = param("hub.secret")
            .ok_or_else(|| bad_request("hub.secret is required on the webhook channel"))?
            .to_string();
        if secret.len() >= 200 {
            return Err(bad_request("hub.secret must be shorter than 200 bytes"));
        }
        let events = parse_event_list(param("hub.events"))?;
        let lease_seconds = match param("hub.lease_seconds") {
            None => self.config.default_lease_seconds,
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|seconds| *seconds > 0)
                .ok_or_else(|| bad_request("hub.lease_seconds must be a positive whole number"))?,
        }
        .min(self.config.max_lease_seconds);
        let expires_at = now + Duration::seconds(lease_seconds.min(i64::MAX as u64) as i64);
        self.schedule(expires_at);
        // Subscribing again with the same callback replaces the previous subscription.
        for key in existing {
            self.forget(&key);
        }
        let key = (self.new_id)();
        let subscription = Subscription {
            topic: topic.clone(),
            channel: Channel::Webhook {
                callback: callback.clone(),
                secret,
                active: false,
            },
            events,
            lease_seconds,
            expires_at,
            name: param("subscriber.name").map(str::to_string),
            connection: None,
            pending: Vec::new(),
            unanswered: 0,
            last_event: None,
        };
        let intent = WebhookIntent {
            mode: "subscribe".into(),
            topic: topic.clone(),
            events: subscription.events_list(),
            challenge: (self.new_id)(),
            lease_seconds: Some(lease_seconds),
            reason: None,
        };
        self.subscriptions.insert(key.clone(), subscription);
        self.topics
            .entry(topic)
            .or_default()
            .subscribers
            .push(key.clone());
        Ok(Response {
            reply: HttpReply {
                status: 202,
                content_type: None,
                body: String::new(),
            },
            outputs: vec![Output::VerifyIntent {
                subscription: key,
                callback,
                intent,
            }],
        })
    }

    /// Drops a subscription without telling its subscriber.
    fn forget(&mut self, key: &str) {
        if let Some(removed) = self.subscriptions.remove(key)
            && let Some(topic) = self.topics.get_mut(&removed.topic)
        {
            topic.subscribers.retain(|other| other != key);
        }
    }

    /// The outcome of a webhook intent verification: confirmed subscriptions start
    /// receiving events (the lease counts from now), the others are dropped.
    pub fn intent_verified(
        &mut self,
        subscription: &str,
        confirmed: bool,
        now: OffsetDateTime,
    ) -> Vec<Output> {
        if !confirmed {
            let topic = self
                .subscriptions
                .get(subscription)
                .map(|found| found.topic.clone())
                .unwrap_or_default();
            self.forget(subscription);
            return self
                .replicate_end(subscription, &topic, "intent not verified")
                .into_iter()
                .collect();
        }
        if let Some(found) = self.subscriptions.get_mut(subscription)
            && let Channel::Webhook { active, .. } = &mut found.channel
        {
            *active = true;
            found.expires_at =
                now + Duration::seconds(found.lease_seconds.min(i64::MAX as u64) as i64);
            let expires_at = found.expires_at;
            self.schedule(expires_at);
        }
        Vec::new()
    }

    /// The answer to a webhook notification: the HTTP status, or `None` when the call
    /// failed (refused by the endpoint policy, unreachable, timed out).
    pub fn webhook_delivered(
        &mut self,
        subscription: &str,
        event_id: &str,
        event_name: &str,
        status: Option<u16>,
        now: OffsetDateTime,
    ) -> Vec<Output> {
        if let Some(status) = status {
            return self.answered(subscription, event_id, event_name, u64::from(status), now);
        }
        let Some(found) = self.subscriptions.get_mut(subscription) else {
            return Vec::new();
        };
        found.unanswered += 1;
        let unresponsive = found.unanswered >= self.config.max_unacknowledged.max(1);
        let topic = found.topic.clone();
        let name = found.display_name();
        let diagnostics =
            format!("{name} could not be reached for event {event_id} ({event_name})");
        let mut outputs = self.sync_error(
            &topic,
            event_id,
            event_name,
            &name,
            &diagnostics,
            Some(subscription),
            now,
        );
        if unresponsive {
            outputs.extend(self.end_subscription(subscription, "subscriber unresponsive"));
            outputs.extend(self.replicate_end(subscription, &topic, "subscriber unresponsive"));
        }
        outputs
    }

    /// The socket closed (`code` is `None` when the connection dropped without a close
    /// frame). The subscription ends; an abnormal close is reported with a SyncError.
    pub fn socket_closed(
        &mut self,
        connection: ConnectionId,
        code: Option<u16>,
        now: OffsetDateTime,
    ) -> Vec<Output> {
        let Some(endpoint) = self.connections.remove(&connection) else {
            return Vec::new();
        };
        let Some(mut subscription) = self.subscriptions.remove(&endpoint) else {
            return Vec::new();
        };
        subscription.connection = None;
        if let Some(topic) = self.topics.get_mut(&subscription.topic) {
            topic.subscribers.retain(|other| *other != endpoint);
        }
        let ended = self.replicate_end(&endpoint, &subscription.topic, "connection closed");
        if code.is_some_and(|code| NORMAL_CLOSE_CODES.contains(&code)) {
            return ended.into_iter().collect();
        }
        let (event_id, event_name) = subscription
            .last_event
            .clone()
            .unwrap_or_else(|| ("".into(), "".into()));
        let code_text = code.map_or("without a close frame".to_string(), |code| {
            format!("with code {code}")
        });
        let diagnostics = format!(
            "{}'s connection closed abnormally ({code_text})",
            subscription.display_name()
        );
        let mut outputs = self.sync_error(
            &subscription.topic,
            &event_id,
            &event_name,
            &subscription.display_name(),
            &diagnostics,
            None,
            now,
        );
        outputs.extend(ended);
        outputs
    }

    /// The subscriber stopped reading: its queue of frames not yet written to the socket is
    /// full. It is unresponsive: a SyncError about the last event queued for it goes to the
    /// other SyncError subscribers, and it is unsubscribed (the socket is closed; a denial
    /// would not get through).
    pub fn socket_overflowed(
        &mut self,
        connection: ConnectionId,
        now: OffsetDateTime,
    ) -> Vec<Output> {
        let Some(endpoint) = self.connections.get(&connection).cloned() else {
            return Vec::new();
        };
        let Some(subscription) = self.subscriptions.get(&endpoint) else {
            return Vec::new();
        };
        let (event_id, event_name) = subscription
            .last_event
            .clone()
            .unwrap_or_else(|| ("".into(), "".into()));
        let topic = subscription.topic.clone();
        let name = subscription.display_name();
        let diagnostics = format!(
            "{name} stopped reading its WebSocket: more frames waited for it than the hub queues"
        );
        let mut outputs = self.sync_error(
            &topic,
            &event_id,
            &event_name,
            &name,
            &diagnostics,
            Some(&endpoint),
            now,
        );
        let reason = "subscriber unresponsive: send queue full";
        outputs.extend(self.end_subscription(&endpoint, reason));
        outputs.extend(self.replicate_end(&endpoint, &topic, reason));
        outputs
    }

    fn heartbeat_period(&self) -> Duration {
        Duration::seconds(self.config.heartbeat_seconds.min(i64::MAX as u64) as i64)
    }

    /// The legacy `heartbeat` event to every connected WebSocket subscriber, when due; one
    /// frame per topic, not tracked for acknowledgement.
    fn heartbeats(&mut self, now: OffsetDateTime) -> Vec<Output> {
        if self.next_heartbeat.is_none_or(|due| due > now) {
            return Vec::new();
        }
        let mut outputs = Vec::new();
        let period = self.config.heartbeat_seconds.to_string();
        let topics: Vec<String> = self.topics.keys().cloned().collect();
        for topic_name in topics {
            let notification = json!({
                "timestamp": format_timestamp(now),
                "id": (self.new_id)(),
                "event": {
                    "hub.topic": topic_name,
                    "hub.event": "heartbeat",
                    "context": [{"key": "period", "decimal": period}],
                },
            });
            let text: Arc<str> = notification.to_string().into();
            let Some(topic) = self.topics.get(&topic_name) else {
                continue;
            };
            for endpoint in &topic.subscribers {
                if let Some(connection) = self
                    .subscriptions
                    .get(endpoint)
                    .and_then(|subscription| subscription.connection)
                {
                    outputs.push(Output::Send {
                        connection,
                        text: text.clone(),
                    });
                }
            }
        }
        if self.connections.is_empty() {
            // Restarted by the next socket that opens.
            self.next_heartbeat = None;
        } else {
            let next = now + self.heartbeat_period();
            self.next_heartbeat = Some(next);
            self.schedule(next);
        }
        outputs
    }

    /// When [`tick`](Self::tick) next has something to do.
    pub fn next_deadline(&self) -> Option<OffsetDateTime> {
        self.deadlines.first().copied()
    }

    /// Time passed: expire leases and report acknowledgements that did not come.
    pub fn tick(&mut self, now: OffsetDateTime) -> Vec<Output> {
        while self.deadlines.first().is_some_and(|first| *first <= now) {
            self.deadlines.pop_first();
        }
        let mut outputs = self.heartbeats(now);
        let mut endpoints: Vec<String> = self.subscriptions.keys().cloned().collect();
        endpoints.sort();
        for endpoint in endpoints {
            let Some(subscription) = self.subscriptions.get_mut(&endpoint) else {
                continue;
            };
            if subscription.expires_at <= now {
                outputs.extend(self.end_subscription(&endpoint, "lease expired"));
                continue;
            }
            let (overdue, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut subscription.pending)
                .into_iter()
                .partition(|pending| pending.deadline <= now);
            subscription.pending = waiting;
            if overdue.is_empty() {
                continue;
            }
            subscription.unanswered += overdue.len() as u32;
            let unresponsive = subscription.unanswered >= self.config.max_unacknowledged.max(1);
            let topic = subscription.topic.clone();
            let name = subscription.display_name();
            for pending in overdue {
                let diagnostics = format!(
                    "{name} did not acknowledge event {} ({}) in time",
                    pending.event_id, pending.event_name
                );
                outputs.extend(self.sync_error(
                    &topic,
                    &pending.event_id,
                    &pending.event_name,
                    &name,
                    &diagnostics,
                    Some(&endpoint),
                    now,
                ));
            }
            if unresponsive {
                outputs.extend(self.end_subscription(&endpoint, "subscriber unresponsive"));
                outputs.extend(self.replicate_end(&endpoint, &topic, "subscriber unresponsive"));
            }
        }
        outputs
    }

    /// Get Current Context for `topic`.
    pub fn current_context(&self, topic: &str, shape: ContextShape) -> HttpReply {
        let topic = match self.topics.get(topic) {
            Some(topic) => topic,
            None if self.config.is_ira() => return HttpReply::text(404, "unknown topic"),
            None => &Topic::default(),
        };
        let current = topic.current.as_ref().and_then(|(kind, id)| {
            topic
                .open
                .iter()
                .find(|open| open.anchor.resource_type == *kind && open.anchor_id == *id)
        });
        let Some(open) = current else {
            return match shape {
                ContextShape::Stu3 => {
                    HttpReply::json(200, &json!({"context.type": "", "context": []}))
                }
                ContextShape::BareArray => HttpReply::json(200, &json!([])),
            };
        };
        let mut context = match open.context() {
            Value::Array(entries) => entries,
            _ => Vec::new(),
        };
        if open.anchor.shares_content {
            // Updates live in `content`, never merged into the open event's context.
            context.retain(|entry| entry["key"] != "content");
            let entries: Vec<Value> = open
                .content
                .iter()
                .map(|(url, resource)| json!({"fullUrl": url, "resource": resource}))
                .collect();
            context.push(json!({
                "key": "content",
                "resource": {"resourceType": "Bundle", "id": open.version_id, "type": "collection", "entry": entries},
            }));
        }
        match shape {
            ContextShape::Stu3 => HttpReply::json(
                200,
                &json!({
                    "context.type": open.anchor.resource_type,
                    "context.versionId": open.version_id,
                    "context": context,
                }),
            ),
            ContextShape::BareArray => HttpReply::json(200, &Value::Array(context)),
        }
    }

    /// A context change request (`POST {hub}` or `POST {hub}/{topic}` with `path_topic`).
    pub fn publish(
        &mut self,
        path_topic: Option<&str>,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Response {
        match self.try_publish(path_topic, body, now) {
            Ok(outputs) => Response {
                reply: HttpReply::json(202, &json!({"success": true})),
                outputs,
            },
            Err(reply) => Response::reply(reply),
        }
    }

    fn try_publish(
        &mut self,
        path_topic: Option<&str>,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<Vec<Output>, Rejection> {
        let ira = self.config.is_ira();
        let mut notification: Map<String, Value> = match serde_json::from_slice(body) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err(bad_request("the body must be a JSON object")),
            Err(error) => return Err(bad_request(format!("the body is not valid JSON: {error}"))),
        };
        let id = match notification.get("id") {
            Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
            None if !ira => (self.new_id)(),
            _ => return Err(bad_request("id is required (a non-empty string)")),
        };
        let requested_time = match notification.get("timestamp") {
            Some(Value::String(text)) => match parse_timestamp(text) {
                Some(time) => time,
                None if !ira => now,
                None => return Err(bad_request("timestamp is not an ISO 8601 date-time")),
            },
            None if !ira => now,
            _ => return Err(bad_request("timestamp is required")),
        };
        let Some(Value::Object(event)) = notification.get_mut("event") else {
            return Err(bad_request("event is required (an object)"));
        };
        let topic_name = match event.get("hub.topic") {
            Some(Value::String(topic)) if !topic.trim().is_empty() => topic.clone(),
            _ => return Err(bad_request("event.hub.topic is required")),
        };
        if let Some(path_topic) = path_topic
            && path_topic != topic_name
        {
            return Err(bad_request(
                "the topic in the path differs from event.hub.topic",
            ));
        }
        let Some(Value::String(event_name)) = event.get("hub.event") else {
            return Err(bad_request("event.hub.event is required"));
        };
        let name = parse_event_name(event_name)
            .ok_or_else(|| bad_request(format!("`{event_name}` is not a FHIRcast event")))?;
        event.insert("hub.event".into(), Value::String(name.canonical.clone()));
        // A copy: the event is amended (versions, canonical name) while the context is read.
        let Some(Value::Array(context_entries)) = event.get("context").cloned() else {
            return Err(bad_request("event.context is required (an array)"));
        };
        let context = Context::index(&context_entries)?;
        if !self.topics.contains_key(&topic_name) && ira {
            return Err(bad_request("unknown topic: nobody subscribed to it"));
        }

        let max_update_entries = self.config.max_update_entries;
        let non_current_updates = self.config.non_current_context_updates;
        let topic = self.topics.entry(topic_name.clone()).or_default();
        match name.kind {
            EventKind::Open(anchor) => {
                context.require(anchor.required_keys)?;
                let anchor_id = context.anchor_id(anchor)?;
                let version_id = match topic.find_open(anchor, &anchor_id) {
                    // Re-opening a still-open anchor restores its content and version.
                    Some(index) => topic.open[index].version_id.clone(),
                    None => (self.new_id)(),
                };
                event.insert("context.versionId".into(), Value::String(version_id));
            }
            EventKind::Close(anchor) => {
                context.require(&[anchor.key])?;
                let anchor_id = context.anchor_id(anchor)?;
                if topic.find_open(anchor, &anchor_id).is_none() && ira {
                    return Err(HttpReply::text(
                        409,
                        format!("no {} {anchor_id} is open", anchor.resource_type),
                    ));
                }
            }
            EventKind::Update(anchor) => {
                context.require(&[anchor.key, "updates"])?;
                let anchor_id = context.anchor_id(anchor)?;
                let Some(index) = topic.find_open(anchor, &anchor_id) else {
                    return Err(HttpReply::text(
                        409,
                        format!("no {} {anchor_id} is open", anchor.resource_type),
                    ));
                };
                if !topic.is_current(anchor, &anchor_id) && !non_current_updates {
                    return Err(HttpReply::text(
                        409,
                        format!(
                            "{} {anchor_id} is not the current context",
                            anchor.resource_type
                        ),
                    ));
                }
                let open = &topic.open[index];
                let given_version = event
                    .get("context.versionId")
                    .or_else(|| event.get("versionId"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad_request("context.versionId is required on updates"))?;
                if given_version != open.version_id {
                    let status = if ira { 400 } else { 409 };
                    return Err(HttpReply::text(
                        status,
                        "context.versionId is not the current version of this context",
                    ));
                }
                let changes = validate_updates(&context, max_update_entries, open, ira)?;
                let prior = open.version_id.clone();
                let new_version = (self.new_id)();
                event.insert(
                    "context.versionId".into(),
                    Value::String(new_version.clone()),
                );
                event.insert("context.priorVersionId".into(), Value::String(prior));
                event.remove("versionId");
                let open = &mut topic.open[index];
                for change in changes {
                    match change {
                        ContentChange::Put(key, resource) => {
                            open.content.insert(key, resource);
                        }
                        ContentChange::Delete(key) => {
                            open.content.shift_remove(&key);
                        }
                    }
                }
                open.version_id = new_version;
            }
            EventKind::Select(anchor) => {
                context.require(&[anchor.key])?;
                let anchor_id = context.anchor_id(anchor)?;
                if !topic.is_current(anchor, &anchor_id) {
                    return Err(HttpReply::text(
                        409,
                        format!(
                            "{} {anchor_id} is not the current context",
                            anchor.resource_type
                        ),
                    ));
                }
            }
            EventKind::SyncError => {
                let outcome = context
                    .entry("operationoutcome")
                    .and_then(|entry| entry.get("resource"));
                if outcome.and_then(|resource| resource.get("resourceType"))
                    != Some(&json!("OperationOutcome"))
                {
                    return Err(bad_request(
                        "SyncError needs an operationoutcome OperationOutcome",
                    ));
                }
            }
            EventKind::UserLogout | EventKind::UserHibernate if ira => {
                context.require(&["parameters"])?;
            }
            EventKind::UserLogout
            | EventKind::UserHibernate
            | EventKind::HomeOpen
            | EventKind::Custom => {}
        }

        // Apply the open/close to the topic's state now that the request is valid.
        match name.kind {
            EventKind::Open(anchor) => {
                let anchor_id = context.anchor_id(anchor)?;
                let (content, version_id) = match topic.find_open(anchor, &anchor_id) {
                    Some(index) => {
                        let previous = topic.open.remove(index);
                        (previous.content, previous.version_id)
                    }
                    None => (
                        IndexMap::new(),
                        event["context.versionId"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    ),
                };
                topic.current = Some((anchor.resource_type, anchor_id.clone()));
                topic.open.push(OpenContext {
                    anchor,
                    anchor_id,
                    notification: Value::Null,
                    version_id,
                    content,
                });
            }
            EventKind::Close(anchor) => {
                let anchor_id = context.anchor_id(anchor)?;
                if let Some(index) = topic.find_open(anchor, &anchor_id) {
                    topic.open.remove(index);
                }
                if topic.is_current(anchor, &anchor_id) {
                    topic.current = None;
                }
            }
            _ => {}
        }

        // Acceptance order is delivery order: timestamps never go backwards on a topic.
        let timestamp = match topic.last_timestamp {
            Some(last) if last > requested_time => last,
            _ => requested_time,
        };
        topic.last_timestamp = Some(timestamp);
        notification.insert(
            "timestamp".into(),
            Value::String(format_timestamp(timestamp)),
        );
        notification.insert("id".into(), Value::String(id));
        let notification = Value::Object(notification);
        if let EventKind::Open(_) = name.kind
            && let Some(open) = topic.open.last_mut()
        {
            open.notification = notification.clone();
        }
        let mut outputs = self.broadcast(&topic_name, &name.key, &notification, None, now);
        if let EventKind::Open(anchor) = name.kind
            && anchor.resource_type != "Patient"
        {
            outputs.extend(self.derived_patient_open(&topic_name, &name.key, &notification, now));
        }
        Ok(outputs)
    }

    /// Derived opens (STU3, experimental): an `Encounter-open`, `ImagingStudy-open` or
    /// `DiagnosticReport-open` with a patient implies a `Patient-open`. Subscribers of
    /// `Patient-open` that did not subscribe to the published event receive it, only when
    /// the patient changes; the patient is then open on the topic (not current: the
    /// published anchor is), so it is replayed and closed like any other.
    fn derived_patient_open(
        &mut self,
        topic_name: &str,
        published_key: &str,
        notification: &Value,
        now: OffsetDateTime,
    ) -> Vec<Output> {
        let Some(patient_anchor) = ANCHORS
            .iter()
            .find(|anchor| anchor.resource_type == "Patient")
        else {
            return Vec::new();
        };
        let Some(patient) = notification["event"]["context"]
            .as_array()
            .and_then(|entries| entries.iter().find(|entry| entry["key"] == "patient"))
            .cloned()
        else {
            return Vec::new();
        };
        let Some((kind, patient_id)) = patient.as_object().and_then(resource_key) else {
            return Vec::new();
        };
        if !(kind.is_empty() || kind == "Patient") {
            return Vec::new();
        }
        let Some(topic) = self.topics.get(topic_name) else {
            return Vec::new();
        };
        let unchanged = topic
            .open
            .iter()
            .rev()
            .find(|open| open.anchor.resource_type == "Patient")
            .is_some_and(|open| open.anchor_id == patient_id);
        if unchanged {
            return Vec::new();
        }
        let (id, version_id) = ((self.new_id)(), (self.new_id)());
        let derived = json!({
            "timestamp": notification["timestamp"],
            "id": id,
            "event": {
                "hub.topic": topic_name,
                "hub.event": "Patient-open",
                "context": [patient],
                "context.versionId": version_id,
            },
        });
        let Some(topic) = self.topics.get_mut(topic_name) else {
            return Vec::new();
        };
        if let Some(index) = topic.find_open(patient_anchor, &patient_id) {
            topic.open.remove(index);
        }
        // Before the published anchor, which stays the most recent (and current) one.
        let position = topic.open.len().saturating_sub(1);
        topic.open.insert(
            position,
            OpenContext {
                anchor: patient_anchor,
                anchor_id: patient_id,
                notification: derived.clone(),
                version_id,
                content: IndexMap::new(),
            },
        );
        self.broadcast_where(topic_name, &derived, None, now, |subscription| {
            subscription.wants("patient-open") && !subscription.wants(published_key)
        })
    }

    fn ack_timeout(&self) -> Duration {
        Duration::milliseconds(self.config.ack_timeout_ms.min(i64::MAX as u64) as i64)
    }

    /// Sends `notification` to every connected subscriber of the topic that wants the event.
    fn broadcast(
        &mut self,
        topic: &str,
        event_key: &str,
        notification: &Value,
        except: Option<&str>,
        now: OffsetDateTime,
    ) -> Vec<Output> {
        self.broadcast_where(topic, notification, except, now, |subscription| {
            subscription.wants(event_key)
        })
    }

    /// Sends `notification` to every connected subscriber of the topic that `wanted` picks.
    fn broadcast_where(
        &mut self,
        topic: &str,
        notification: &Value,
        except: Option<&str>,
        now: OffsetDateTime,
        wanted: impl Fn(&Subscription) -> bool,
    ) -> Vec<Output> {
        let mut outputs = Vec::new();
        let deadline = now + self.ack_timeout();
        let Some(topic) = self.topics.get(topic) else {
            return outputs;
        };
        let frame = Frame::of(notification);
        let mut awaiting_acks = false;
        for endpoint in &topic.subscribers {
            if except == Some(endpoint.as_str()) {
                continue;
            }
            let Some(subscription) = self.subscriptions.get_mut(endpoint) else {
                continue;
            };
            if !wanted(subscription) {
                continue;
            }
            if let Channel::Webhook {
                callback,
                secret,
                active: true,
            } = &subscription.channel
            {
                outputs.push(Output::WebhookPost {
                    subscription: endpoint.clone(),
                    callback: callback.clone(),
                    secret: secret.clone(),
                    body: frame.text.to_string(),
                    event_id: frame.event_id.to_string(),
                    event_name: frame.event_name.to_string(),
                });
                continue;
            }
            let Some(connection) = subscription.connection else {
                continue;
            };
            deliver(subscription, connection, &frame, deadline, &mut outputs);
            awaiting_acks |= frame.tracked;
        }
        if awaiting_acks {
            self.schedule(deadline);
        }
        outputs
    }

    /// A hub-generated SyncError to the topic's SyncError subscribers (but `except`).
    #[allow(clippy::too_many_arguments)]
    fn sync_error(
        &mut self,
        topic: &str,
        event_id: &str,
        event_name: &str,
        subscriber_name: &str,
        diagnostics: &str,
        except: Option<&str>,
        now: OffsetDateTime,
    ) -> Vec<Output> {
        let notification = json!({
            "timestamp": format_timestamp(now),
            "id": (self.new_id)(),
            "event": {
                "hub.topic": topic,
                "hub.event": "SyncError",
                "context": [{
                    "key": "operationoutcome",
                    "resource": {
                        "resourceType": "OperationOutcome",
                        "issue": [{
                            "severity": "warning",
                            "code": "processing",
                            "diagnostics": diagnostics,
                            "details": {"coding": [
                                {"system": SYNCERROR_EVENT_ID, "code": event_id},
                                {"system": SYNCERROR_EVENT_NAME, "code": event_name},
                                {"system": SYNCERROR_SUBSCRIBER, "code": subscriber_name},
                            ]},
                        }],
                    },
                }],
            },
        });
        if self.clustered {
            return vec![Output::Replicate(Replicated::SyncError {
                topic: topic.to_string(),
                notification: notification.to_string(),
                except: except.map(str::to_string),
            })];
        }
        self.broadcast(topic, "syncerror", &notification, except, now)
    }
}

/// 128 bits derived from a seed and a counter (splitmix64 on each half): unguessable as long
/// as the seed is.
fn derived_id(seed: u128, counter: u64) -> String {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let high = mix((seed >> 64) as u64 ^ mix(counter));
    let low = mix(seed as u64 ^ mix(counter.rotate_left(32) ^ high));
    format!("{high:016x}{low:016x}")
}

/// A notification serialised once for all the subscribers it goes to.
struct Frame {
    text: Arc<str>,
    event_id: Arc<str>,
    event_name: Arc<str>,
    /// SyncErrors are not tracked: a SyncError about a SyncError would feed on itself.
    tracked: bool,
}

impl Frame {
    fn of(notification: &Value) -> Self {
        let event_name = notification["event"]["hub.event"]
            .as_str()
            .unwrap_or_default();
        Self {
            text: notification.to_string().into(),
            event_id: notification["id"].as_str().unwrap_or_default().into(),
            tracked: !event_name.eq_ignore_ascii_case("syncerror"),
            event_name: event_name.into(),
        }
    }
}

/// Queues a frame on a connection and expects its acknowledgement.
fn deliver(
    subscription: &mut Subscription,
    connection: ConnectionId,
    frame: &Frame,
    deadline: OffsetDateTime,
    outputs: &mut Vec<Output>,
) {
    if frame.tracked {
        subscription.pending.push(PendingAck {
            event_id: frame.event_id.clone(),
            event_name: frame.event_name.clone(),
            deadline,
        });
        subscription.last_event = Some((frame.event_id.clone(), frame.event_name.clone()));
    }
    outputs.push(Output::Send {
        connection,
        text: frame.text.clone(),
    });
}

/// The `status` of an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// A number, or a string holding one (the spec's example sends `"200"`).
    Code(u64),
    /// No `status` (Medplum sends `{id, timestamp}`): 200 in the lenient profile.
    Missing,
    Invalid,
}

/// What a text frame from a subscriber is to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriberFrame {
    Ack {
        id: String,
        status: AckStatus,
    },
    /// Endpoint echoes, heartbeats, events, anything that is not JSON.
    Ignored,
}

/// Reads a subscriber's frame; pure, so the driver parses outside its lock.
pub fn parse_subscriber_frame(text: &str) -> SubscriberFrame {
    let Ok(Value::Object(frame)) = serde_json::from_str::<Value>(text) else {
        return SubscriberFrame::Ignored;
    };
    if frame.contains_key("event") {
        return SubscriberFrame::Ignored;
    }
    let Some(id) = frame.get("id").and_then(Value::as_str) else {
        return SubscriberFrame::Ignored;
    };
    let status = match frame.get("status") {
        Some(Value::Number(number)) => number.as_u64().map_or(AckStatus::Invalid, AckStatus::Code),
        Some(Value::String(text)) => text
            .trim()
            .parse::<u64>()
            .map_or(AckStatus::Invalid, AckStatus::Code),
        None => AckStatus::Missing,
        Some(_) => AckStatus::Invalid,
    };
    SubscriberFrame::Ack {
        id: id.to_string(),
        status,
    }
}

fn confirmation(topic: &str, subscription: &Subscription) -> Value {
    json!({
        "hub.mode": "subscribe",
        "hub.topic": topic,
        "hub.events": subscription.events_list(),
        "hub.lease_seconds": subscription.lease_seconds,
    })
}

fn bad_request(message: impl Into<String>) -> HttpReply {
    HttpReply::text(400, message)
}

/// The endpoint id from a full endpoint URL, trimming whitespace (the spec's own example
/// URL-encodes a trailing newline).
fn endpoint_id(url: &str) -> String {
    let url = url.trim();
    let url = url.split(['?', '#']).next().unwrap_or(url);
    url.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(url)
        .to_string()
}

fn parse_event_list(list: Option<&str>) -> Result<Vec<EventName>, Rejection> {
    let list = list.ok_or_else(|| bad_request("hub.events is required to subscribe"))?;
    let mut events: Vec<EventName> = Vec::new();
    for name in list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        let event = parse_event_name(name).ok_or_else(|| {
            bad_request(format!("`{name}` in hub.events is not a FHIRcast event"))
        })?;
        if !events.iter().any(|known| known.key == event.key) {
            events.push(event);
        }
    }
    if events.is_empty() {
        return Err(bad_request("hub.events is required to subscribe"));
    }
    Ok(events)
}

/// ISO 8601, leniently: RFC 3339, or without an offset (taken as UTC).
fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    let text = text.trim();
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(time);
    }
    let local = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    time::PrimitiveDateTime::parse(text, &local)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

fn format_timestamp(time: OffsetDateTime) -> String {
    time.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// A publish request's context entries by key.
struct Context<'a> {
    entries: Vec<(&'a str, &'a Map<String, Value>)>,
}

impl<'a> Context<'a> {
    fn index(context: &'a [Value]) -> Result<Self, Rejection> {
        let mut entries = Vec::new();
        for entry in context {
            let Value::Object(entry) = entry else {
                return Err(bad_request("every event.context entry must be an object"));
            };
            let Some(Value::String(key)) = entry.get("key") else {
                return Err(bad_request("every event.context entry needs a key"));
            };
            entries.push((key.as_str(), entry));
        }
        Ok(Self { entries })
    }

    fn entry(&self, key: &str) -> Option<&'a Map<String, Value>> {
        self.entries
            .iter()
            .find(|(entry_key, _)| *entry_key == key)
            .map(|(_, entry)| *entry)
    }

    fn require(&self, keys: &[&str]) -> Result<(), Rejection> {
        for key in keys {
            let entry = self
                .entry(key)
                .ok_or_else(|| bad_request(format!("event.context needs the key `{key}`")))?;
            if !entry.contains_key("resource") && !entry.contains_key("reference") {
                return Err(bad_request(format!(
                    "event.context `{key}` needs a resource or a reference"
                )));
            }
        }
        Ok(())
    }

    /// The id of the anchor resource, from its `resource.id` or `reference.reference`.
    fn anchor_id(&self, anchor: &Anchor) -> Result<String, Rejection> {
        let entry = self
            .entry(anchor.key)
            .ok_or_else(|| bad_request(format!("event.context needs the key `{}`", anchor.key)))?;
        let id = resource_key(entry)
            .and_then(|(kind, id)| (kind.is_empty() || kind == anchor.resource_type).then_some(id));
        id.ok_or_else(|| {
            bad_request(format!(
                "event.context `{}` must be a {} with an id",
                anchor.key, anchor.resource_type
            ))
        })
    }
}

/// `(resource type, id)` of a context entry's resource or reference (type empty when a
/// reference has none).
fn resource_key(entry: &Map<String, Value>) -> Option<(String, String)> {
    if let Some(resource) = entry.get("resource") {
        let kind = resource.get("resourceType")?.as_str()?;
        let id = resource.get("id")?.as_str()?;
        return Some((kind.to_string(), id.to_string()));
    }
    let reference = entry.get("reference")?.get("reference")?.as_str()?;
    reference_key(reference)
}

fn reference_key(reference: &str) -> Option<(String, String)> {
    let reference = reference.trim().trim_end_matches('/');
    let mut segments = reference.rsplit('/');
    let id = segments.next().filter(|id| !id.is_empty())?;
    let kind = segments.next().unwrap_or_default();
    Some((kind.to_string(), id.to_string()))
}

enum ContentChange {
    Put(String, Value),
    Delete(String),
}

/// Checks an update's transaction Bundle as a whole; nothing is applied unless all is valid.
fn validate_updates(
    context: &Context<'_>,
    max_entries: usize,
    open: &OpenContext,
    ira: bool,
) -> Result<Vec<ContentChange>, Rejection> {
    let bundle = context
        .entry("updates")
        .and_then(|entry| entry.get("resource"))
        .filter(|bundle| bundle["resourceType"] == "Bundle")
        .ok_or_else(|| bad_request("event.context `updates` must be a Bundle resource"))?;
    if bundle["type"] != "transaction" {
        return Err(bad_request("the updates Bundle must have type transaction"));
    }
    let empty = Vec::new();
    let entries = match bundle.get("entry") {
        None => &empty,
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(bad_request("Bundle.entry must be an array")),
    };
    if entries.len() > max_entries {
        return Err(HttpReply::text(
            413,
            format!(
                "the updates Bundle has {} entries; at most {max_entries} are accepted",
                entries.len()
            ),
        ));
    }
    // Resources the open context is about may not be deleted or swapped (IHE IRA).
    let protected: Vec<(String, String)> = match open.context() {
        Value::Array(entries) => entries
            .iter()
            .filter(|entry| matches!(entry["key"].as_str(), Some("patient" | "study" | "report")))
            .filter_map(|entry| entry.as_object().and_then(resource_key))
            .collect(),
        _ => Vec::new(),
    };
    // The context's resources as opened, whose study UID and accession updates may not change.
    let context_resources: HashMap<String, Value> = match open.context() {
        Value::Array(entries) => entries
            .iter()
            .filter(|entry| matches!(entry["key"].as_str(), Some("patient" | "study" | "report")))
            .filter_map(|entry| {
                let (kind, id) = entry.as_object().and_then(resource_key)?;
                Some((format!("{kind}/{id}"), entry.get("resource")?.clone()))
            })
            .collect(),
        _ => HashMap::new(),
    };
    let mut seen = HashSet::new();
    let mut changes = Vec::new();
    for (position, entry) in entries.iter().enumerate() {
        let method = entry["request"]["method"].as_str().unwrap_or_default();
        let change = if method.eq_ignore_ascii_case("PUT") {
            let resource = entry
                .get("resource")
                .filter(|resource| resource.is_object());
            let key = resource.and_then(|resource| {
                Some(format!(
                    "{}/{}",
                    resource.get("resourceType")?.as_str()?,
                    resource.get("id")?.as_str()?
                ))
            });
            match (resource, key) {
                (Some(resource), Some(key)) => ContentChange::Put(key, resource.clone()),
                _ => {
                    return Err(bad_request(format!(
                        "entry {position}: PUT needs a resource with resourceType and id"
                    )));
                }
            }
        } else if method.eq_ignore_ascii_case("DELETE") {
            let url = entry["fullUrl"]
                .as_str()
                .or_else(|| entry["request"]["url"].as_str())
                .and_then(reference_key)
                .filter(|(kind, _)| !kind.is_empty());
            match url {
                Some((kind, id)) => ContentChange::Delete(format!("{kind}/{id}")),
                None => {
                    return Err(bad_request(format!(
                        "entry {position}: DELETE needs a fullUrl naming the resource"
                    )));
                }
            }
        } else {
            return Err(bad_request(format!(
                "entry {position}: request.method must be PUT or DELETE"
            )));
        };
        let key = match &change {
            ContentChange::Put(key, _) | ContentChange::Delete(key) => key.clone(),
        };
        if !seen.insert(key.clone()) {
            return Err(bad_request(format!(
                "{key} appears more than once in the Bundle"
            )));
        }
        if ira {
            let (kind, id) = key.split_once('/').unwrap_or_default();
            for (protected_kind, protected_id) in &protected {
                if kind == protected_kind {
                    let deletes = matches!(change, ContentChange::Delete(_)) && id == protected_id;
                    let swaps = kind != "DiagnosticReport" && id != protected_id;
                    if deletes || swaps {
                        return Err(bad_request(format!(
                            "entry {position}: updates may not remove or replace the context's {kind}"
                        )));
                    }
                }
            }
        }
        if ira
            && let ContentChange::Put(key, resource) = &change
            && let Some(opened) = context_resources.get(key)
        {
            for (label, kind) in [
                ("study instance UID", IdentifierKind::DicomUid),
                ("accession number", IdentifierKind::Accession),
            ] {
                let before = identifier_values(opened, kind);
                if !before.is_empty() && before != identifier_values(resource, kind) {
                    return Err(bad_request(format!(
                        "entry {position}: updates may not change the {label} of the context's {key}"
                    )));
                }
            }
        }
        changes.push(change);
    }
    Ok(changes)
}

#[derive(Clone, Copy)]
enum IdentifierKind {
    /// `system` `urn:dicom:uid` (an ImagingStudy's study instance UID).
    DicomUid,
    /// `type` coded `ACSN` (v2-0203 accession number).
    Accession,
}

/// The values of a resource's identifiers of one kind.
fn identifier_values(resource: &Value, kind: IdentifierKind) -> std::collections::BTreeSet<String> {
    resource["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|identifier| match kind {
            IdentifierKind::DicomUid => identifier["system"] == "urn:dicom:uid",
            IdentifierKind::Accession => identifier["type"]["coding"]
                .as_array()
                .is_some_and(|codings| codings.iter().any(|coding| coding["code"] == "ACSN")),
        })
        .filter_map(|identifier| identifier["value"].as_str().map(str::to_string))
        .collect()
}
