//! `[fhircast]` settings.

use serde::{Deserialize, Serialize};

/// How closely the hub follows IHE IRA (Integrated Reporting Applications) on top of FHIRcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// IHE IRA Hub actor rules: `hub.channel.type` and `subscriber.name` required, publishing
    /// to a topic nobody opened is 400, acknowledgements need a `status`, version conflicts
    /// are 400.
    Ira,
    /// Accepts the habits of deployed peers: `endpoint` for `hub.channel.endpoint` on
    /// unsubscribe, acknowledgements without `status` (taken as 200), missing
    /// `hub.channel.type` (websocket), publishing that creates the topic, a missing event
    /// `id` or `timestamp` (the hub assigns one).
    #[default]
    Lenient,
}

/// Where the hub's state (topics, subscriptions, contexts, versions) is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FanOut {
    /// In this process only: one node serves the hub.
    #[default]
    Local,
    /// Through the event log: every node appends the changes it accepts (subscribe,
    /// unsubscribe, context changes, the SyncErrors and subscription ends it decides) to
    /// `log_topic`, and applies everything it reads from it in log order. Several nodes then
    /// serve one hub, and a restarted node rebuilds its state from the log.
    Log,
}

/// The FHIRcast hub: `[fhircast]` in the config file. Every field has a default.
///
/// ```toml
/// [fhircast]
/// enabled = true             # default
/// path = "/fhircast"
/// profile = "lenient"          # lenient | ira
/// fan_out = "local"            # local | log (several nodes on one log)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Serve the hub at `path` on the Flare server and advertise it in the CapabilityStatement.
    /// Default `true` (the hub holds nothing until a client subscribes or publishes).
    pub enabled: bool,
    /// The hub's path on the Flare server (`hub.url` is this under the public base URL).
    /// Default `/fhircast`.
    pub path: String,
    /// The public base URL (`https://hub.example.com`) used to build `hub.url` and the
    /// WebSocket endpoints when the hub sits behind a proxy. Default: derived from each
    /// request's `Host` header (`ws://` on plain HTTP).
    pub public_url: Option<String>,
    /// IHE IRA strict or lenient. Default `lenient`.
    pub profile: Profile,
    /// Lease granted when a subscriber asks for none, in seconds. Default 7200.
    pub default_lease_seconds: u64,
    /// Longest lease granted, in seconds; longer requests are cut to this. Default 86400.
    pub max_lease_seconds: u64,
    /// How long a subscriber has to acknowledge an event before the hub reports it with a
    /// SyncError, in milliseconds. Default 10000 (the spec's 10 s).
    pub ack_timeout_ms: u64,
    /// Consecutive unanswered events after which an unresponsive subscriber is
    /// unsubscribed (denial, then close). Default 3; at least 1.
    pub max_unacknowledged: u32,
    /// How often the server pings each subscriber socket, in milliseconds; a socket that
    /// answers none of two pings in a row is treated as dropped (SyncError, unsubscribed).
    /// 0 turns pings off. Default 30000.
    pub ping_interval_ms: u64,
    /// Every this many seconds, send each connected subscriber the legacy `heartbeat` event
    /// (drafted in the 2022/2024 ballots, removed from STU3; some peers still expect it).
    /// It needs no acknowledgement. 0 turns it off. Default 0 (pings keep sockets alive).
    pub heartbeat_seconds: u64,
    /// Frames queued for one subscriber socket and not yet written to it. A subscriber that
    /// stops reading fills its queue; it is then treated as unresponsive (a SyncError to the
    /// others, unsubscribed, socket closed), so a stuck client cannot grow the hub's memory.
    /// Default 256.
    pub max_queued_frames: usize,
    /// Largest number of entries in a `*-update` Bundle; larger ones get 413. Default 100.
    pub max_update_entries: usize,
    /// Accept `*-update` for an open context that is not the current one (advertised as
    /// `supportsNonCurrentContextUpdates`). Default `false`.
    pub non_current_context_updates: bool,
    /// `local` (default) or `log`: see [`FanOut`].
    pub fan_out: FanOut,
    /// The log topic of a clustered hub (`fan_out = "log"`). Default `fhircast.hub`.
    pub log_topic: String,
    /// Accept the legacy STU1/STU2 webhook channel (`hub.callback` + `hub.secret`,
    /// intent verification, signed POSTs). Needs the crate feature `webhook`. Default `false`.
    pub webhook: bool,
    /// Networks whose callbacks the webhook channel may call although not public, and over
    /// plain `http` (SSRF guard of `flare-outbound`, checked after DNS and on redirects),
    /// e.g. `["127.0.0.0/8"]`. Default: none (public `https` callbacks only).
    pub webhook_allow: Vec<String>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/fhircast".into(),
            public_url: None,
            profile: Profile::default(),
            default_lease_seconds: 7200,
            max_lease_seconds: 86_400,
            ack_timeout_ms: 10_000,
            max_unacknowledged: 3,
            ping_interval_ms: 30_000,
            max_queued_frames: 256,
            heartbeat_seconds: 0,
            max_update_entries: 100,
            non_current_context_updates: false,
            fan_out: FanOut::Local,
            log_topic: "fhircast.hub".into(),
            webhook: false,
            webhook_allow: Vec::new(),
        }
    }
}

impl HubConfig {
    pub fn is_ira(&self) -> bool {
        self.profile == Profile::Ira
    }
}
