//! The `Subscription` resource (R4 classic and R4 + Backport IG) parsed into a typed
//! [`SubscriptionSpec`], with every problem Flare cannot honour reported as an [`Issue`].

use flare_fhir::{Issue, IssueCode};
use flare_search::{Clause, Registry};
use serde_json::Value;

use crate::criteria::{ClassicCriteria, parse_classic_criteria, parse_pairs, split_filter};
use crate::topic::{Topic, TopicRegistry, array};

/// Prefix of every Backport IG extension URL.
pub const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
pub const EXT_FILTER_CRITERIA: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
pub const EXT_CHANNEL_TYPE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-channel-type";
pub const EXT_PAYLOAD_CONTENT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
pub const EXT_HEARTBEAT_PERIOD: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
pub const EXT_TIMEOUT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout";
pub const EXT_MAX_COUNT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count";
/// The profile of a topic-based R4 Subscription.
pub const BACKPORT_SUBSCRIPTION_PROFILE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";
/// `Subscription.channel.extension`: the secret of the `X-Hub-Signature: sha256=…` HMAC.
pub const EXT_HMAC_SECRET: &str =
    "http://flare.dev/fhir/StructureDefinition/subscription-hmac-secret";
/// Medplum's name for the same secret, accepted as an alias.
pub const EXT_MEDPLUM_SECRET: &str =
    "https://www.medplum.com/fhir/StructureDefinition/subscription-secret";
/// System of the standard channel type codes (`backport-channel-type`).
pub const CHANNEL_TYPE_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/subscription-channel-type";
/// System of Flare's custom channel types (`kafka`).
pub const FLARE_CHANNEL_TYPE_SYSTEM: &str =
    "http://flare.dev/fhir/CodeSystem/subscription-channel-type";
/// What [`redact_for_read`] puts in place of a secret.
pub const REDACTED: &str = "[redacted]";

/// `Subscription.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    Requested,
    Active,
    Error,
    Off,
    /// R5 only; accepted on input.
    EnteredInError,
}

impl SubscriptionStatus {
    pub fn code(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Active => "active",
            Self::Error => "error",
            Self::Off => "off",
            Self::EnteredInError => "entered-in-error",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "requested" => Self::Requested,
            "active" => Self::Active,
            "error" => Self::Error,
            "off" => Self::Off,
            "entered-in-error" => Self::EnteredInError,
            _ => return None,
        })
    }
}

/// The delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelType {
    RestHook,
    Websocket,
    Email,
    Message,
    /// Flare's custom channel (`backport-channel-type` = `http://flare.dev/fhir/CodeSystem/subscription-channel-type#kafka`):
    /// the endpoint names a Kafka topic (`kafka:<topic>` or the bare name).
    Kafka,
}

impl ChannelType {
    pub fn code(self) -> &'static str {
        match self {
            Self::RestHook => "rest-hook",
            Self::Websocket => "websocket",
            Self::Email => "email",
            Self::Message => "message",
            Self::Kafka => "kafka",
        }
    }
}

/// What a notification carries (`backport-payload-content`, R5 `content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ContentLevel {
    Empty,
    IdOnly,
    FullResource,
}

impl ContentLevel {
    pub fn code(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::IdOnly => "id-only",
            Self::FullResource => "full-resource",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "empty" => Self::Empty,
            "id-only" => Self::IdOnly,
            "full-resource" => Self::FullResource,
            _ => return None,
        })
    }
}

/// The FHIR version of the notification body, from the MIME `fhirVersion` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationVersion {
    /// `4.0` (default): history Bundle, status as a `Parameters`.
    R4,
    /// `4.3`: history Bundle, status as a `SubscriptionStatus`.
    R4B,
    /// `5.0`: `subscription-notification` Bundle, status as a `SubscriptionStatus`.
    R5,
}

/// The body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyFormat {
    Json,
    Xml,
    /// `text/plain` or `text/html` (email bodies); `attach` says what is attached.
    Text,
}

/// `channel.payload`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// As written: the `Content-Type` of deliveries.
    pub mime: String,
    pub format: BodyFormat,
    pub version: NotificationVersion,
    /// Email: the `attach` parameter's MIME type (the notification Bundle as an attachment),
    /// e.g. `application/fhir+json`.
    pub attach: Option<String>,
}

/// One `channel.header` (`Name: value`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// The channel, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub channel_type: ChannelType,
    /// `None` only for websocket (clients connect to the server).
    pub endpoint: Option<String>,
    /// `None` for classic subscriptions without a payload (empty-body POST).
    pub payload: Option<Payload>,
    pub headers: Vec<Header>,
    /// Seconds; `None` = no heartbeats.
    pub heartbeat_period: Option<u32>,
    /// Seconds an attempt may take; `None` = the server's default.
    pub timeout: Option<u32>,
    /// Most triggering events per notification; `None` = no limit chosen by the client.
    pub max_count: Option<u32>,
    pub content: ContentLevel,
    /// The secret for `X-Hub-Signature: sha256=<hmac of the body>`.
    pub hmac_secret: Option<String>,
}

/// One Backport filter, checked against the topic and compiled.
#[derive(Debug, Clone)]
pub struct TopicFilter {
    /// As written.
    pub text: String,
    pub resource_type: String,
    pub clauses: Vec<Clause>,
}

/// What triggers notifications.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// R4 classic: a search on the new version of created and updated resources.
    Criteria(ClassicCriteria),
    /// Backport: a topic and AND-ed filters.
    Topic {
        url: String,
        filters: Vec<TopicFilter>,
    },
}

/// A validated Subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionSpec {
    pub id: Option<String>,
    pub status: SubscriptionStatus,
    /// `end` as written (an R4 instant).
    pub end: Option<String>,
    pub reason: Option<String>,
    pub trigger: Trigger,
    pub channel: Channel,
}

impl SubscriptionSpec {
    /// The topic canonical, for topic-based subscriptions.
    pub fn topic_url(&self) -> Option<&str> {
        match &self.trigger {
            Trigger::Topic { url, .. } => Some(url),
            Trigger::Criteria(_) => None,
        }
    }

    /// Whether this is an R4 classic (criteria-based) subscription.
    pub fn is_classic(&self) -> bool {
        matches!(self.trigger, Trigger::Criteria(_))
    }
}

/// Parses and validates an R4 `Subscription`. Topic-based when `criteria` is a canonical URL
/// (it has a scheme), classic otherwise. Defaults: content `empty` when a topic-based
/// subscription names none (nothing beyond what the client asked for leaves the server);
/// payload `application/fhir+json` for topic-based subscriptions without one.
pub fn parse_subscription(
    resource: &Value,
    registry: &Registry,
    topics: &TopicRegistry,
) -> Result<SubscriptionSpec, Vec<Issue>> {
    let mut issues = Vec::new();
    if resource.get("resourceType").and_then(Value::as_str) != Some("Subscription") {
        return Err(vec![Issue::error(
            IssueCode::Invalid,
            "expected a Subscription resource",
            "resourceType",
        )]);
    }
    let status = match resource.get("status").and_then(Value::as_str) {
        Some(code) => match SubscriptionStatus::from_code(code) {
            Some(status) => status,
            None => {
                issues.push(Issue::error(
                    IssueCode::CodeInvalid,
                    format!("unknown status '{code}': expected requested, active, error or off"),
                    "Subscription.status",
                ));
                SubscriptionStatus::Requested
            }
        },
        None => {
            issues.push(Issue::error(
                IssueCode::Required,
                "Subscription.status is required (send 'requested')",
                "Subscription.status",
            ));
            SubscriptionStatus::Requested
        }
    };
    let end = resource
        .get("end")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(end) = &end
        && !flare_fhir::validate::is_valid_primitive_text("instant", end)
    {
        issues.push(Issue::error(
            IssueCode::Value,
            format!("end '{end}' is not an instant such as 2030-12-31T12:00:00Z"),
            "Subscription.end",
        ));
    }
    let criteria = resource
        .get("criteria")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or("");
    // A canonical has a scheme and no query; `Observation?code=http://loinc.org|1` is a search.
    let topic_based =
        !criteria.contains('?') && (criteria.contains("://") || criteria.starts_with("urn:"));
    let trigger = if criteria.is_empty() {
        issues.push(Issue::error(
            IssueCode::Required,
            "Subscription.criteria is required: a search such as Observation?code=1234-5, or a topic canonical URL",
            "Subscription.criteria",
        ));
        None
    } else if topic_based {
        parse_topic_trigger(resource, criteria, registry, topics, &mut issues)
    } else {
        if resource.pointer("/_criteria/extension").is_some() {
            issues.push(Issue::error(
                IssueCode::NotSupported,
                "filter extensions on criteria apply to topic-based subscriptions only; put the parameters in the criteria search",
                "Subscription.criteria",
            ));
        }
        match parse_classic_criteria(registry, criteria) {
            Ok(criteria) => Some(Trigger::Criteria(criteria)),
            Err(message) => {
                issues.push(Issue::error(
                    IssueCode::NotSupported,
                    message,
                    "Subscription.criteria",
                ));
                None
            }
        }
    };
    let channel = parse_channel(resource, topic_based, &mut issues);
    match (trigger, channel) {
        (Some(trigger), Some(channel)) if issues.is_empty() => Ok(SubscriptionSpec {
            id: resource
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            status,
            end,
            reason: resource
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_owned),
            trigger,
            channel,
        }),
        _ => Err(issues),
    }
}

fn parse_topic_trigger(
    resource: &Value,
    criteria: &str,
    registry: &Registry,
    topics: &TopicRegistry,
    issues: &mut Vec<Issue>,
) -> Option<Trigger> {
    let Some(topic) = topics.get(criteria) else {
        issues.push(Issue::error(
            IssueCode::NotSupported,
            format!(
                "unknown topic '{criteria}': this server supports {}",
                topics.urls().join(", ")
            ),
            "Subscription.criteria",
        ));
        return None;
    };
    let mut filters = Vec::new();
    for (index, extension) in array(&resource["_criteria"], "extension").enumerate() {
        let location = format!("Subscription._criteria.extension[{index}]");
        let url = extension.get("url").and_then(Value::as_str).unwrap_or("");
        if url != EXT_FILTER_CRITERIA {
            issues.push(Issue::error(
                IssueCode::NotSupported,
                format!(
                    "unsupported extension '{url}' on criteria: filters go in {EXT_FILTER_CRITERIA}"
                ),
                location,
            ));
            continue;
        }
        let Some(text) = extension.get("valueString").and_then(Value::as_str) else {
            issues.push(Issue::error(
                IssueCode::Required,
                "backport-filter-criteria needs a valueString",
                location,
            ));
            continue;
        };
        match parse_topic_filter(topic, text, registry) {
            Ok(mut parsed) => filters.append(&mut parsed),
            Err(message) => issues.push(Issue::error(IssueCode::NotSupported, message, location)),
        }
    }
    Some(Trigger::Topic {
        url: topic.url.clone(),
        filters,
    })
}

/// Checks one filter string against the topic's `canFilterBy` and compiles it (a search URL
/// form gives one filter per parameter).
pub fn parse_topic_filter(
    topic: &Topic,
    text: &str,
    registry: &Registry,
) -> Result<Vec<TopicFilter>, String> {
    let parts = split_filter(text)?;
    let topic_types = topic.resource_types();
    let resource_type = match &parts.resource_type {
        Some(resource_type) if topic_types.contains(&resource_type.as_str()) => {
            resource_type.clone()
        }
        Some(resource_type) => {
            return Err(format!(
                "filter '{text}': topic {} is not about {resource_type} (it is about {})",
                topic.url,
                topic_types.join(", ")
            ));
        }
        None => match topic_types.as_slice() {
            [only] => (*only).to_owned(),
            _ => {
                return Err(format!(
                    "filter '{text}': topic {} covers {}; name the type, as in Type.param=value",
                    topic.url,
                    topic_types.join(", ")
                ));
            }
        },
    };
    let mut filters = Vec::new();
    for (name, value) in &parts.params {
        let (parameter, modifier) = match name.split_once(':') {
            Some((parameter, modifier)) => (parameter, Some(modifier)),
            None => (name.as_str(), None),
        };
        let allowed = topic.can_filter_by.iter().find(|filter| {
            filter.filter_parameter == parameter
                && filter
                    .resource_type
                    .as_deref()
                    .is_none_or(|filter_type| filter_type == resource_type)
        });
        let Some(allowed) = allowed else {
            let names: Vec<&str> = topic
                .can_filter_by
                .iter()
                .map(|filter| filter.filter_parameter.as_str())
                .collect();
            return Err(format!(
                "filter parameter '{parameter}' is not supported by topic {}; it accepts {}",
                topic.url,
                if names.is_empty() {
                    "no filters".to_owned()
                } else {
                    names.join(", ")
                }
            ));
        };
        if let Some(modifier) = modifier
            && !allowed.modifiers.iter().any(|allowed| allowed == modifier)
        {
            return Err(format!(
                "modifier ':{modifier}' is not supported on filter parameter '{parameter}' of topic {}{}",
                topic.url,
                if allowed.modifiers.is_empty() {
                    String::new()
                } else {
                    format!(" (allowed: {})", allowed.modifiers.join(", "))
                }
            ));
        }
        if let Some(comparator) = comparator_of(registry, &resource_type, parameter, value)
            && !allowed
                .comparators
                .iter()
                .any(|allowed| allowed == comparator)
        {
            return Err(format!(
                "comparator '{comparator}' is not supported on filter parameter '{parameter}' of topic {}",
                topic.url
            ));
        }
        let clauses = parse_pairs(registry, &resource_type, &[(name.clone(), value.clone())])
            .map_err(|message| format!("filter '{text}': {message}"))?;
        filters.push(TopicFilter {
            text: format!("{name}={value}"),
            resource_type: resource_type.clone(),
            clauses,
        });
    }
    Ok(filters)
}

/// The comparator prefix of a value of an ordered parameter (number, date, quantity), when
/// one other than the implicit `eq` is written.
fn comparator_of<'a>(
    registry: &Registry,
    resource_type: &str,
    parameter: &str,
    value: &'a str,
) -> Option<&'a str> {
    use flare_search::SearchParamKind as Kind;
    let param = registry.lookup(Some(resource_type), parameter)?;
    if !matches!(param.kind, Kind::Number | Kind::Date | Kind::Quantity) {
        return None;
    }
    let prefix = value.get(..2)?;
    ["ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]
        .contains(&prefix)
        .then_some(prefix)
}

fn parse_channel(resource: &Value, topic_based: bool, issues: &mut Vec<Issue>) -> Option<Channel> {
    let Some(channel) = resource
        .get("channel")
        .filter(|channel| channel.is_object())
    else {
        issues.push(Issue::error(
            IssueCode::Required,
            "Subscription.channel is required",
            "Subscription.channel",
        ));
        return None;
    };
    let channel_type = channel_type(channel, issues)?;
    let endpoint = channel
        .get("endpoint")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty())
        .map(str::to_owned);
    check_endpoint(channel_type, endpoint.as_deref(), issues);
    let payload = match channel.get("payload").and_then(Value::as_str) {
        Some(mime) => parse_payload(mime, channel_type, topic_based, issues),
        None if topic_based => Some(Payload {
            mime: "application/fhir+json".into(),
            format: BodyFormat::Json,
            version: NotificationVersion::R4,
            attach: None,
        }),
        None => None,
    };
    let content = if topic_based {
        let mut content = ContentLevel::Empty;
        for extension in array(&channel["_payload"], "extension") {
            let url = extension.get("url").and_then(Value::as_str).unwrap_or("");
            if url != EXT_PAYLOAD_CONTENT {
                issues.push(Issue::error(
                    IssueCode::NotSupported,
                    format!("unsupported extension '{url}' on channel.payload: the content level goes in {EXT_PAYLOAD_CONTENT}"),
                    "Subscription.channel._payload.extension",
                ));
                continue;
            }
            let code = extension
                .get("valueCode")
                .and_then(Value::as_str)
                .unwrap_or("");
            match ContentLevel::from_code(code) {
                Some(level) => content = level,
                None => issues.push(Issue::error(
                    IssueCode::NotSupported,
                    format!("unsupported content level '{code}': expected empty, id-only or full-resource"),
                    "Subscription.channel._payload.extension",
                )),
            }
        }
        content
    } else if payload.is_some() {
        ContentLevel::FullResource
    } else {
        ContentLevel::Empty
    };
    let mut headers = Vec::new();
    for (index, header) in array(channel, "header").enumerate() {
        let text = header.as_str().unwrap_or("");
        match parse_header(text) {
            Ok(header) => headers.push(header),
            Err(message) => issues.push(Issue::error(
                IssueCode::Value,
                message,
                format!("Subscription.channel.header[{index}]"),
            )),
        }
    }
    let mut heartbeat_period = None;
    let mut timeout = None;
    let mut max_count = None;
    let mut hmac_secret = None;
    for extension in array(channel, "extension") {
        let url = extension.get("url").and_then(Value::as_str).unwrap_or("");
        let number = || {
            extension
                .get("valueUnsignedInt")
                .or_else(|| extension.get("valuePositiveInt"))
                .and_then(Value::as_u64)
                .and_then(|value| u32::try_from(value).ok())
        };
        let target = match url {
            EXT_HEARTBEAT_PERIOD => &mut heartbeat_period,
            EXT_TIMEOUT => &mut timeout,
            EXT_MAX_COUNT => &mut max_count,
            EXT_HMAC_SECRET | EXT_MEDPLUM_SECRET => {
                match extension.get("valueString").and_then(Value::as_str) {
                    Some(secret) if !secret.is_empty() => hmac_secret = Some(secret.to_owned()),
                    _ => issues.push(Issue::error(
                        IssueCode::Value,
                        "the signature secret needs a non-empty valueString",
                        "Subscription.channel.extension",
                    )),
                }
                continue;
            }
            _ => continue,
        };
        match number() {
            Some(value) if url == EXT_MAX_COUNT && value == 0 => issues.push(Issue::error(
                IssueCode::Value,
                "backport-max-count must be at least 1",
                "Subscription.channel.extension",
            )),
            Some(value) => *target = Some(value),
            None => issues.push(Issue::error(
                IssueCode::Value,
                format!("{url} needs a non-negative integer value"),
                "Subscription.channel.extension",
            )),
        }
    }
    Some(Channel {
        channel_type,
        endpoint,
        payload,
        headers,
        heartbeat_period,
        timeout,
        max_count,
        content,
        hmac_secret,
    })
}

fn channel_type(channel: &Value, issues: &mut Vec<Issue>) -> Option<ChannelType> {
    let code = channel.get("type").and_then(Value::as_str).unwrap_or("");
    let custom = array(&channel["_type"], "extension")
        .find(|extension| extension.get("url").and_then(Value::as_str) == Some(EXT_CHANNEL_TYPE));
    if let Some(custom) = custom {
        let system = custom
            .pointer("/valueCoding/system")
            .and_then(Value::as_str)
            .unwrap_or("");
        let custom_code = custom
            .pointer("/valueCoding/code")
            .and_then(Value::as_str)
            .unwrap_or("");
        return match (system, custom_code) {
            (FLARE_CHANNEL_TYPE_SYSTEM, "kafka") => Some(ChannelType::Kafka),
            (CHANNEL_TYPE_SYSTEM, code) | ("", code) if standard_channel(code).is_some() => {
                standard_channel(code)
            }
            _ => {
                issues.push(Issue::error(
                    IssueCode::NotSupported,
                    format!(
                        "unsupported channel type '{system}|{custom_code}': this server delivers over rest-hook, websocket, email, message and {FLARE_CHANNEL_TYPE_SYSTEM}|kafka"
                    ),
                    "Subscription.channel._type",
                ));
                None
            }
        };
    }
    match standard_channel(code) {
        Some(channel_type) => Some(channel_type),
        None => {
            issues.push(Issue::error(
                IssueCode::NotSupported,
                format!(
                    "unsupported channel type '{code}': expected rest-hook, websocket, email or message"
                ),
                "Subscription.channel.type",
            ));
            None
        }
    }
}

fn standard_channel(code: &str) -> Option<ChannelType> {
    Some(match code {
        "rest-hook" => ChannelType::RestHook,
        "websocket" => ChannelType::Websocket,
        "email" => ChannelType::Email,
        "message" => ChannelType::Message,
        _ => return None,
    })
}

/// Syntactic endpoint checks; which hosts may be reached is the outbound guard's decision.
fn check_endpoint(channel_type: ChannelType, endpoint: Option<&str>, issues: &mut Vec<Issue>) {
    let location = "Subscription.channel.endpoint";
    let Some(endpoint) = endpoint else {
        if channel_type != ChannelType::Websocket {
            issues.push(Issue::error(
                IssueCode::Required,
                format!("a {} channel needs an endpoint", channel_type.code()),
                location,
            ));
        }
        return;
    };
    let problem = match channel_type {
        ChannelType::RestHook | ChannelType::Message => match url::Url::parse(endpoint) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => None,
            Ok(url) => Some(format!(
                "endpoint '{endpoint}' must be an http(s) URL with a host, not {}",
                url.scheme()
            )),
            Err(error) => Some(format!("endpoint '{endpoint}' is not a URL: {error}")),
        },
        ChannelType::Websocket => match url::Url::parse(endpoint) {
            Ok(url) if matches!(url.scheme(), "ws" | "wss") => None,
            _ => Some(format!(
                "a websocket endpoint, when given, must be a ws:// or wss:// URL, not '{endpoint}'"
            )),
        },
        ChannelType::Email => {
            let address = endpoint.strip_prefix("mailto:").unwrap_or("");
            let valid = address.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && domain.contains('.')
                    && !address.contains(|c: char| c.is_whitespace() || c == ',' || c == '?')
            });
            (!valid).then(|| {
                format!("an email endpoint must be one mailto: address, as in mailto:team@example.org, not '{endpoint}'")
            })
        }
        ChannelType::Kafka => {
            let topic = endpoint.strip_prefix("kafka:").unwrap_or(endpoint);
            let valid = !topic.is_empty()
                && topic.len() <= 249
                && topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            (!valid).then(|| {
                format!("a kafka endpoint names a topic (letters, digits, '.', '_', '-'), as in kafka:fhir-notifications, not '{endpoint}'")
            })
        }
    };
    if let Some(message) = problem {
        issues.push(Issue::error(IssueCode::Value, message, location));
    }
}

fn parse_payload(
    mime: &str,
    channel_type: ChannelType,
    topic_based: bool,
    issues: &mut Vec<Issue>,
) -> Option<Payload> {
    let location = "Subscription.channel.payload";
    let mut parts = mime.split(';').map(str::trim);
    let base = parts.next().unwrap_or("").to_ascii_lowercase();
    let format = match base.as_str() {
        "application/fhir+json" | "application/json" | "json" => BodyFormat::Json,
        "application/fhir+xml" | "application/xml" | "xml" => BodyFormat::Xml,
        "text/plain" | "text/html" if channel_type == ChannelType::Email => BodyFormat::Text,
        _ => {
            issues.push(Issue::error(
                IssueCode::NotSupported,
                format!(
                    "unsupported payload MIME type '{mime}': expected application/fhir+json or application/fhir+xml{}",
                    if channel_type == ChannelType::Email {
                        ", or text/plain / text/html for email"
                    } else {
                        ""
                    }
                ),
                location,
            ));
            return None;
        }
    };
    let mut version = NotificationVersion::R4;
    let mut attach = None;
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim_matches('"');
        match name.trim().to_ascii_lowercase().as_str() {
            "fhirversion" => {
                version = match value {
                    "4.0" | "4.0.1" => NotificationVersion::R4,
                    "4.3" | "4.3.0" if topic_based => NotificationVersion::R4B,
                    "5.0" | "5.0.0" if topic_based => NotificationVersion::R5,
                    _ => {
                        issues.push(Issue::error(
                            IssueCode::NotSupported,
                            format!(
                                "unsupported fhirVersion '{value}': expected 4.0{}",
                                if topic_based {
                                    ", 4.3 or 5.0"
                                } else {
                                    " for a classic subscription"
                                }
                            ),
                            location,
                        ));
                        return None;
                    }
                }
            }
            "attach" if format == BodyFormat::Text => match value {
                "application/fhir+json" | "application/fhir+xml" => attach = Some(value.to_owned()),
                _ => {
                    issues.push(Issue::error(
                        IssueCode::NotSupported,
                        format!("unsupported attachment type '{value}': expected application/fhir+json or application/fhir+xml"),
                        location,
                    ));
                    return None;
                }
            },
            "charset" => {}
            _ => {
                issues.push(Issue::error(
                    IssueCode::NotSupported,
                    format!("unsupported MIME parameter '{parameter}' in payload '{mime}'"),
                    location,
                ));
                return None;
            }
        }
    }
    Some(Payload {
        mime: mime.trim().to_owned(),
        format,
        version,
        attach,
    })
}

/// Parses `Name: value`; names are HTTP tokens and values carry no line breaks, so a header
/// cannot smuggle another one.
fn parse_header(text: &str) -> Result<Header, String> {
    let Some((name, value)) = text.split_once(':') else {
        return Err(format!("header '{text}' is not of the form 'Name: value'"));
    };
    let name = name.trim();
    let is_token = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
    if !is_token {
        return Err(format!(
            "header name '{name}' is not a valid HTTP header name"
        ));
    }
    if value.contains(['\r', '\n', '\0']) {
        return Err(format!(
            "the value of header '{name}' contains a line break"
        ));
    }
    Ok(Header {
        name: name.to_owned(),
        value: value.trim().to_owned(),
    })
}

/// Header names whose values are secrets.
fn is_secret_header(name: &str) -> bool {
    [
        "authorization",
        "proxy-authorization",
        "x-hub-secret",
        "x-api-key",
        "cookie",
    ]
    .contains(&name.to_ascii_lowercase().as_str())
}

/// A copy of a stored Subscription with its secrets masked, for reads, searches and history:
/// the values of `Authorization`-like headers and the signature secret extensions become
/// [`REDACTED`].
pub fn redact_for_read(resource: &Value) -> Value {
    let mut copy = resource.clone();
    let Some(channel) = copy.get_mut("channel") else {
        return copy;
    };
    if let Some(headers) = channel.get_mut("header").and_then(Value::as_array_mut) {
        for header in headers {
            if let Some(text) = header.as_str()
                && let Some((name, _)) = text.split_once(':')
                && is_secret_header(name.trim())
            {
                *header = Value::String(format!("{}: {REDACTED}", name.trim()));
            }
        }
    }
    if let Some(extensions) = channel.get_mut("extension").and_then(Value::as_array_mut) {
        for extension in extensions {
            let url = extension.get("url").and_then(Value::as_str).unwrap_or("");
            if (url == EXT_HMAC_SECRET || url == EXT_MEDPLUM_SECRET)
                && extension.get("valueString").is_some()
            {
                extension["valueString"] = Value::String(REDACTED.into());
            }
        }
    }
    copy
}

/// For an update of a subscription read with [`redact_for_read`]: puts the previous secrets
/// back where the client sent the [`REDACTED`] placeholder unchanged (same header name, or the
/// same secret extension), so a read-modify-write does not overwrite a secret with the mask.
pub fn restore_redacted(updated: &mut Value, previous: &Value) {
    let previous_headers: Vec<&str> = array(&previous["channel"], "header")
        .filter_map(Value::as_str)
        .collect();
    let previous_secret = array(&previous["channel"], "extension")
        .find(|extension| {
            matches!(
                extension.get("url").and_then(Value::as_str),
                Some(EXT_HMAC_SECRET | EXT_MEDPLUM_SECRET)
            )
        })
        .and_then(|extension| extension.get("valueString"))
        .cloned();
    let Some(channel) = updated.get_mut("channel") else {
        return;
    };
    if let Some(headers) = channel.get_mut("header").and_then(Value::as_array_mut) {
        for header in headers {
            let Some((name, value)) = header.as_str().and_then(|text| text.split_once(':')) else {
                continue;
            };
            if value.trim() != REDACTED {
                continue;
            }
            let name = name.trim().to_ascii_lowercase();
            let original = previous_headers.iter().find(|text| {
                text.split_once(':').is_some_and(|(previous_name, _)| {
                    previous_name.trim().eq_ignore_ascii_case(&name)
                })
            });
            if let Some(original) = original {
                *header = Value::String((*original).to_owned());
            }
        }
    }
    if let Some(extensions) = channel.get_mut("extension").and_then(Value::as_array_mut) {
        for extension in extensions {
            let url = extension.get("url").and_then(Value::as_str).unwrap_or("");
            if (url == EXT_HMAC_SECRET || url == EXT_MEDPLUM_SECRET)
                && extension.get("valueString").and_then(Value::as_str) == Some(REDACTED)
                && let Some(secret) = &previous_secret
            {
                extension["valueString"] = secret.clone();
            }
        }
    }
}
