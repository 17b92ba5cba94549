//! What the delivery runtime needs to know of a Subscription resource: which changes it wants
//! ([`Criteria`], behind the [`Interpreter`] trait so the topic engine can take over) and how to
//! deliver them ([`ChannelSettings`]).

use std::{sync::Arc, time::Duration};

use flare_events::Action;
use flare_search::{Clause, Registry, matcher};
use serde_json::Value;

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

/// A change event as the matcher sees it.
#[derive(Debug, Clone, Copy)]
pub struct MatchInput<'a> {
    pub resource_type: &'a str,
    pub action: Action,
    /// The new version; `None` for a delete (or a resource that travelled by reference).
    pub resource: Option<&'a Value>,
}

/// A compiled subscription filter.
pub trait Criteria: Send + Sync {
    fn matches(&self, input: &MatchInput<'_>) -> bool;
}

/// Turns a Subscription resource into [`Criteria`]; `Err` carries the reason, in words a
/// client can act on.
pub trait Interpreter: Send + Sync {
    fn compile(&self, subscription: &Value) -> Result<Arc<dyn Criteria>, String>;
}

/// The interpreter used until topic definitions are available: R4 classic criteria
/// (`Observation?code=…`, evaluated on created and updated versions), and backport topic
/// subscriptions whose `backport-filter-criteria` name the resource type
/// (`Encounter?patient=Patient/1`, matched on every interaction). Chained parameters are
/// rejected because they cannot be evaluated on the event alone.
pub struct SearchInterpreter {
    registry: Arc<Registry>,
}

impl SearchInterpreter {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    fn parse_search(&self, text: &str) -> Result<(String, Vec<Clause>), String> {
        let (resource_type, query) = text.split_once('?').unwrap_or((text, ""));
        let resource_type = resource_type.trim_start_matches('/').to_owned();
        if !self.registry.knows_type(&resource_type) {
            return Err(format!(
                "criteria `{text}`: `{resource_type}` is not an R4 resource type"
            ));
        }
        let params = flare_service::parse_query_string(query);
        let parsed = self
            .registry
            .parse(Some(&resource_type), &params)
            .map_err(|e| format!("criteria `{text}`: {e}"))?;
        if let Some((param, reason)) = parsed.ignored.first() {
            return Err(format!(
                "criteria `{text}`: `{param}` cannot be evaluated ({reason})"
            ));
        }
        if matcher::has_chain(&parsed.query.clauses) {
            return Err(format!(
                "criteria `{text}`: chained parameters cannot be evaluated on a notification"
            ));
        }
        Ok((resource_type, parsed.query.clauses))
    }
}

struct SearchCriteria {
    registry: Arc<Registry>,
    resource_type: String,
    clauses: Vec<Clause>,
    /// Classic criteria apply to created and updated versions only (R4 text).
    classic: bool,
}

impl Criteria for SearchCriteria {
    fn matches(&self, input: &MatchInput<'_>) -> bool {
        if input.resource_type != self.resource_type {
            return false;
        }
        match (input.action, input.resource) {
            (Action::Deleted, _) => !self.classic && self.clauses.is_empty(),
            (_, None) => false,
            (_, Some(resource)) => {
                self.clauses.is_empty()
                    || matcher::matches(&self.clauses, &self.registry.extract(resource))
            }
        }
    }
}

impl Interpreter for SearchInterpreter {
    fn compile(&self, subscription: &Value) -> Result<Arc<dyn Criteria>, String> {
        let criteria = subscription
            .get("criteria")
            .and_then(Value::as_str)
            .ok_or("the Subscription has no `criteria`")?;
        if !is_topic_canonical(criteria) {
            let (resource_type, clauses) = self.parse_search(criteria)?;
            return Ok(Arc::new(SearchCriteria {
                registry: self.registry.clone(),
                resource_type,
                clauses,
                classic: true,
            }));
        }
        let filters = filter_criteria(subscription);
        let [filter] = filters.as_slice() else {
            return Err(format!(
                "topic `{criteria}`: name the resource with exactly one backport-filter-criteria \
                 such as `Encounter?patient=Patient/1`"
            ));
        };
        let (resource_type, clauses) = self.parse_search(filter)?;
        Ok(Arc::new(SearchCriteria {
            registry: self.registry.clone(),
            resource_type,
            clauses,
            classic: false,
        }))
    }
}

/// Whether `criteria` is a topic canonical (backport) rather than a search string (classic).
pub fn is_topic_canonical(criteria: &str) -> bool {
    criteria.starts_with("http://")
        || criteria.starts_with("https://")
        || criteria.starts_with("urn:")
}

fn filter_criteria(subscription: &Value) -> Vec<String> {
    subscription
        .pointer("/_criteria/extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.get("url").and_then(Value::as_str)
                == Some(&format!("{BACKPORT}backport-filter-criteria"))
        })
        .filter_map(|e| e.get("valueString").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
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
        let channel_ext = |id: &str| {
            channel
                .get("extension")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|e| e.get("url").and_then(Value::as_str) == Some(&format!("{BACKPORT}{id}")))
        };
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
        let secret = subscription
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| e.get("url").and_then(Value::as_str) == Some(SECRET_EXTENSION))
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
