//! How to deliver a Subscription's notifications, read from the resource as the log carries it
//! (validation and matching belong to [`crate::spec`] and [`crate::matching`]).

use std::time::Duration;

use serde_json::Value;

use crate::spec::{EXT_HMAC_SECRET, EXT_MEDPLUM_SECRET};

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

/// Whether `criteria` is a topic canonical (backport) rather than a search string (classic).
pub fn is_topic_canonical(criteria: &str) -> bool {
    criteria.starts_with("http://")
        || criteria.starts_with("https://")
        || criteria.starts_with("urn:")
}

/// How much of the resource a notification carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Empty,
    IdOnly,
    FullResource,
}

/// The channel, as far as delivery cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelKind {
    RestHook,
    Websocket,
    Email,
    Message,
    Other(String),
}

/// Delivery settings read from a Subscription resource.
#[derive(Debug, Clone)]
pub struct ChannelSettings {
    pub kind: ChannelKind,
    pub endpoint: String,
    /// `channel.header`, split at the first `:`.
    pub headers: Vec<(String, String)>,
    /// `channel.payload`; `None` for a classic subscription without payload.
    pub payload: Option<String>,
    pub content: Content,
    /// Backport (topic-based) subscriptions get notification Bundles; classic ones get the
    /// R4 empty POST or a PUT of the resource.
    pub topic: Option<String>,
    pub heartbeat: Option<Duration>,
    pub timeout: Option<Duration>,
    pub max_count: usize,
    /// Secret for the `X-Hub-Signature` HMAC.
    pub secret: Option<String>,
}

/// Extension carrying the per-subscription HMAC secret (never echoed on read).
pub const SECRET_EXTENSION: &str =
    "https://flare.example.invalid/fhir/StructureDefinition/subscription-secret";

impl ChannelSettings {
    pub fn from_resource(subscription: &Value) -> Self {
        let channel = subscription.get("channel").unwrap_or(&Value::Null);
        let channel_ext = |id: &str| channel_ext_url(channel, &format!("{BACKPORT}{id}"));
        let kind = match channel.get("type").and_then(Value::as_str) {
            Some("rest-hook") => ChannelKind::RestHook,
            Some("websocket") => ChannelKind::Websocket,
            Some("email") => ChannelKind::Email,
            Some("message") => ChannelKind::Message,
            other => ChannelKind::Other(other.unwrap_or_default().to_owned()),
        };
        let headers = channel
            .get("header")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|h| h.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let content = channel
            .pointer("/_payload/extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| {
                e.get("url").and_then(Value::as_str)
                    == Some(&format!("{BACKPORT}backport-payload-content"))
            })
            .and_then(|e| e.get("valueCode").and_then(Value::as_str))
            .map(|code| match code {
                "empty" => Content::Empty,
                "full-resource" => Content::FullResource,
                _ => Content::IdOnly,
            })
            .unwrap_or(Content::IdOnly);
        let seconds = |id: &str| {
            channel_ext(id)
                .and_then(|e| e.get("valueUnsignedInt").and_then(Value::as_u64))
                .filter(|s| *s > 0)
                .map(Duration::from_secs)
        };
        let topic = subscription
            .get("criteria")
            .and_then(Value::as_str)
            .filter(|c| is_topic_canonical(c))
            .map(str::to_owned);
        let secret = [EXT_HMAC_SECRET, EXT_MEDPLUM_SECRET]
            .iter()
            .find_map(|url| channel_ext_url(channel, url))
            .and_then(|e| e.get("valueString").and_then(Value::as_str))
            .map(str::to_owned);
        Self {
            kind,
            endpoint: channel
                .get("endpoint")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            headers,
            payload: channel
                .get("payload")
                .and_then(Value::as_str)
                .map(str::to_owned),
            content,
            topic,
            heartbeat: seconds("backport-heartbeat-period"),
            timeout: seconds("backport-timeout"),
            max_count: channel_ext("backport-max-count")
                .and_then(|e| e.get("valuePositiveInt").and_then(Value::as_u64))
                .map(|n| n.clamp(1, 1000) as usize)
                .unwrap_or(1),
            secret,
        }
    }

    /// The MIME type of notification bodies.
    pub fn content_type(&self) -> &str {
        self.payload.as_deref().unwrap_or("application/fhir+json")
    }
}

fn channel_ext_url<'a>(channel: &'a Value, url: &str) -> Option<&'a Value> {
    channel
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url))
}
