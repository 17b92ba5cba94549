//! SubscriptionTopics: what triggers a notification, which filters a subscriber may add, and
//! which resources a notification carries.
//!
//! Topics are parsed from the R4B/R5 `SubscriptionTopic` JSON shape. In R4 there is no
//! `SubscriptionTopic` resource; [`Topic::from_json`] also accepts the Backport IG's wrapping
//! in a `Basic` resource: `Basic.code` = `http://hl7.org/fhir/fhir-types|SubscriptionTopic`
//! and the R5 elements carried in one extension
//! `http://flare.dev/fhir/StructureDefinition/subscription-topic-json` whose `valueString` is
//! the R5 `SubscriptionTopic` JSON. (The IG's per-element cross-version extensions are not
//! read: the JSON form keeps a topic in one piece and round-trips without loss.)

use std::collections::BTreeMap;
use std::sync::Arc;

use flare_fhir::{Issue, IssueCode};
use flare_fhirpath::Expression;
use flare_search::{Clause, Registry};
use serde_json::{Value, json};

use crate::criteria::parse_search_criteria;

/// Canonical URL prefix of the built-in topics.
pub const BUILTIN_TOPIC_BASE: &str = "http://flare.dev/fhir/SubscriptionTopic/";
/// The code system of Flare's non-REST trigger events (`eventTrigger.event`).
pub const FLARE_EVENT_SYSTEM: &str = "http://flare.dev/fhir/CodeSystem/trigger-event";
/// The extension that carries a topic's R5 JSON inside an R4 `Basic`.
pub const TOPIC_JSON_EXTENSION: &str =
    "http://flare.dev/fhir/StructureDefinition/subscription-topic-json";
/// `Basic.code` of a wrapped topic.
pub const FHIR_TYPES_SYSTEM: &str = "http://hl7.org/fhir/fhir-types";

/// A REST interaction a resource trigger reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interaction {
    Create,
    Update,
    Delete,
}

impl Interaction {
    pub fn code(self) -> &'static str {
        match self {
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "create" => Some(Interaction::Create),
            "update" => Some(Interaction::Update),
            "delete" => Some(Interaction::Delete),
            _ => None,
        }
    }
}

/// `queryCriteria.resultForCreate` / `resultForDelete`: how the missing side of a create
/// (no previous version) or delete (no current version) is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingResult {
    TestPasses,
    TestFails,
}

impl MissingResult {
    fn passes(self) -> bool {
        self == MissingResult::TestPasses
    }

    fn code(self) -> &'static str {
        match self {
            MissingResult::TestPasses => "test-passes",
            MissingResult::TestFails => "test-fails",
        }
    }
}

/// A search test on the resource, compiled once.
#[derive(Debug, Clone)]
pub struct SearchTest {
    /// As written, e.g. `status=in-progress`.
    pub text: String,
    pub clauses: Vec<Clause>,
}

/// `resourceTrigger.queryCriteria`.
#[derive(Debug, Clone)]
pub struct QueryCriteria {
    pub previous: Option<SearchTest>,
    pub current: Option<SearchTest>,
    /// Defaults to `test-fails` when absent (a create has no previous version to pass a test).
    pub result_for_create: MissingResult,
    /// Defaults to `test-fails` when absent.
    pub result_for_delete: MissingResult,
    /// Both tests must pass (`true`) or either (`false`, the default).
    pub require_both: bool,
}

/// `resourceTrigger.fhirPathCriteria`: evaluated with `%previous` and `%current` (an empty
/// collection for the missing side); the trigger fires when it yields `true`.
#[derive(Clone)]
pub struct FhirPathCriteria {
    pub text: String,
    pub expression: Arc<Expression>,
}

impl std::fmt::Debug for FhirPathCriteria {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FhirPathCriteria").field(&self.text).finish()
    }
}

/// `SubscriptionTopic.resourceTrigger`.
#[derive(Debug, Clone)]
pub struct ResourceTrigger {
    pub description: Option<String>,
    pub resource_type: String,
    /// Empty in the JSON means all three.
    pub interactions: Vec<Interaction>,
    pub query_criteria: Option<QueryCriteria>,
    pub fhirpath_criteria: Option<FhirPathCriteria>,
}

/// `SubscriptionTopic.eventTrigger`: a non-REST event (such as a stream processor's alert)
/// identified by a code; the event's focus is a resource of `resource_type`.
#[derive(Debug, Clone)]
pub struct EventTrigger {
    pub description: Option<String>,
    pub system: Option<String>,
    pub code: String,
    pub resource_type: String,
}

/// `SubscriptionTopic.canFilterBy`: a filter parameter a subscriber may use.
#[derive(Debug, Clone)]
pub struct CanFilterBy {
    pub description: Option<String>,
    /// `None` = the topic's (single) resource type.
    pub resource_type: Option<String>,
    pub filter_parameter: String,
    /// Allowed modifiers (`missing`, `not`, `exact`, `contains`, `text`, `in`…), without the
    /// colon. Empty = none: only plain values.
    pub modifiers: Vec<String>,
    /// Allowed comparators (`eq`, `gt`, …). Empty = equality only.
    pub comparators: Vec<String>,
}

/// `SubscriptionTopic.notificationShape`.
#[derive(Debug, Clone)]
pub struct NotificationShape {
    pub resource_type: String,
    /// `_include` values, e.g. `Encounter:patient`.
    pub include: Vec<String>,
    pub rev_include: Vec<String>,
}

/// A parsed SubscriptionTopic.
#[derive(Debug, Clone)]
pub struct Topic {
    pub url: String,
    pub title: Option<String>,
    pub description: Option<String>,
    /// `draft | active | retired | unknown`.
    pub status: String,
    pub resource_triggers: Vec<ResourceTrigger>,
    pub event_triggers: Vec<EventTrigger>,
    pub can_filter_by: Vec<CanFilterBy>,
    pub notification_shapes: Vec<NotificationShape>,
    /// The R5 JSON, for `GET SubscriptionTopic` and `Basic` reads.
    pub json: Value,
}

impl Topic {
    /// Parses an R4B/R5 `SubscriptionTopic` or a `Basic`-wrapped one (see the module docs).
    /// The issues name every element Flare cannot evaluate.
    pub fn from_json(resource: &Value, registry: &Registry) -> Result<Topic, Vec<Issue>> {
        let mut issues = Vec::new();
        let topic = match resource.get("resourceType").and_then(Value::as_str) {
            Some("SubscriptionTopic") => resource.clone(),
            Some("Basic") => match unwrap_basic(resource) {
                Ok(topic) => topic,
                Err(issue) => return Err(vec![issue]),
            },
            other => {
                return Err(vec![Issue::error(
                    IssueCode::Invalid,
                    format!(
                        "expected a SubscriptionTopic or a Basic-wrapped SubscriptionTopic, found {}",
                        other.unwrap_or("no resourceType")
                    ),
                    "resourceType",
                )]);
            }
        };
        let url = match topic.get("url").and_then(Value::as_str) {
            Some(url) if !url.trim().is_empty() => url.trim().to_owned(),
            _ => {
                issues.push(Issue::error(
                    IssueCode::Required,
                    "SubscriptionTopic.url is required: it is the canonical subscribers name in Subscription.criteria",
                    "SubscriptionTopic.url",
                ));
                String::new()
            }
        };
        let resource_triggers = array(&topic, "resourceTrigger")
            .enumerate()
            .filter_map(|(index, trigger)| {
                parse_resource_trigger(trigger, index, registry, &mut issues)
            })
            .collect::<Vec<_>>();
        let event_triggers = array(&topic, "eventTrigger")
            .enumerate()
            .filter_map(|(index, trigger)| {
                parse_event_trigger(trigger, index, registry, &mut issues)
            })
            .collect::<Vec<_>>();
        if resource_triggers.is_empty() && event_triggers.is_empty() && issues.is_empty() {
            issues.push(Issue::error(
                IssueCode::Required,
                "a SubscriptionTopic needs at least one resourceTrigger or eventTrigger",
                "SubscriptionTopic",
            ));
        }
        let can_filter_by = array(&topic, "canFilterBy")
            .enumerate()
            .filter_map(|(index, filter)| parse_can_filter_by(filter, index, registry, &mut issues))
            .collect();
        let notification_shapes = array(&topic, "notificationShape")
            .filter_map(|shape| {
                Some(NotificationShape {
                    resource_type: shape.get("resource")?.as_str()?.to_owned(),
                    include: strings(shape, "include"),
                    rev_include: strings(shape, "revInclude"),
                })
            })
            .collect();
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Topic {
            url,
            title: string(&topic, "title"),
            description: string(&topic, "description"),
            status: string(&topic, "status").unwrap_or_else(|| "active".into()),
            resource_triggers,
            event_triggers,
            can_filter_by,
            notification_shapes,
            json: topic,
        })
    }

    /// The resource types this topic can notify about (triggers and event triggers).
    pub fn resource_types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self
            .resource_triggers
            .iter()
            .map(|trigger| trigger.resource_type.as_str())
            .chain(
                self.event_triggers
                    .iter()
                    .map(|trigger| trigger.resource_type.as_str()),
            )
            .collect();
        types.sort_unstable();
        types.dedup();
        types
    }

    /// The references to include with a notification about `resource`
    /// (`notificationShape.include`, e.g. `Encounter:patient` gives `Patient/123`), for the
    /// runtime to read and pass as `additional-context`. Only relative `Type/id` references
    /// are returned; `revInclude` needs a search and is left to the caller.
    pub fn include_references(&self, registry: &Registry, resource: &Value) -> Vec<String> {
        let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
            return Vec::new();
        };
        let mut wanted: Vec<(&str, Option<&str>)> = Vec::new();
        for shape in &self.notification_shapes {
            if shape.resource_type != resource_type {
                continue;
            }
            for include in &shape.include {
                let mut parts = include.split(':');
                let (Some(source), Some(param)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if source == resource_type {
                    wanted.push((param, parts.next()));
                }
            }
        }
        if wanted.is_empty() {
            return Vec::new();
        }
        let mut references = Vec::new();
        for entry in registry.extract(resource) {
            let flare_search::IndexValue::Reference {
                target_type: Some(target_type),
                target_id: Some(target_id),
                ..
            } = &entry.value
            else {
                continue;
            };
            let included = wanted.iter().any(|(param, target)| {
                *param == entry.param && target.is_none_or(|target| target == target_type)
            });
            let reference = format!("{target_type}/{target_id}");
            if included && !references.contains(&reference) {
                references.push(reference);
            }
        }
        references
    }

    /// The topic as an R4 `Basic` resource (the form R4 clients can read).
    pub fn to_basic(&self, id: &str) -> Value {
        json!({
            "resourceType": "Basic",
            "id": id,
            "extension": [{"url": TOPIC_JSON_EXTENSION, "valueString": self.json.to_string()}],
            "code": {"coding": [{"system": FHIR_TYPES_SYSTEM, "code": "SubscriptionTopic"}]},
        })
    }
}

fn unwrap_basic(resource: &Value) -> Result<Value, Issue> {
    let is_topic = resource
        .pointer("/code/coding")
        .and_then(Value::as_array)
        .is_some_and(|codings| {
            codings.iter().any(|coding| {
                coding.get("system").and_then(Value::as_str) == Some(FHIR_TYPES_SYSTEM)
                    && coding.get("code").and_then(Value::as_str) == Some("SubscriptionTopic")
            })
        });
    if !is_topic {
        return Err(Issue::error(
            IssueCode::Invalid,
            format!(
                "a Basic resource is a topic only with code {FHIR_TYPES_SYSTEM}|SubscriptionTopic"
            ),
            "Basic.code",
        ));
    }
    let text = array(resource, "extension")
        .find(|extension| {
            extension.get("url").and_then(Value::as_str) == Some(TOPIC_JSON_EXTENSION)
        })
        .and_then(|extension| extension.get("valueString"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Issue::error(
                IssueCode::NotSupported,
                format!(
                    "a Basic-wrapped topic must carry the R5 SubscriptionTopic JSON in the extension {TOPIC_JSON_EXTENSION} (valueString); the per-element cross-version extensions are not supported"
                ),
                "Basic.extension",
            )
        })?;
    let topic: Value = serde_json::from_str(text).map_err(|error| {
        Issue::error(
            IssueCode::Invalid,
            format!("the wrapped SubscriptionTopic is not JSON: {error}"),
            "Basic.extension.valueString",
        )
    })?;
    if topic.get("resourceType").and_then(Value::as_str) != Some("SubscriptionTopic") {
        return Err(Issue::error(
            IssueCode::Invalid,
            "the wrapped JSON must be a SubscriptionTopic",
            "Basic.extension.valueString",
        ));
    }
    Ok(topic)
}

fn parse_resource_trigger(
    trigger: &Value,
    index: usize,
    registry: &Registry,
    issues: &mut Vec<Issue>,
) -> Option<ResourceTrigger> {
    let location = format!("SubscriptionTopic.resourceTrigger[{index}]");
    let resource_type = resource_type_of(trigger, &location, registry, issues)?;
    let mut interactions = Vec::new();
    for code in strings(trigger, "supportedInteraction") {
        match Interaction::from_code(&code) {
            Some(interaction) => interactions.push(interaction),
            None => issues.push(Issue::error(
                IssueCode::CodeInvalid,
                format!("unknown supportedInteraction '{code}': expected create, update or delete"),
                format!("{location}.supportedInteraction"),
            )),
        }
    }
    if interactions.is_empty() {
        interactions = vec![
            Interaction::Create,
            Interaction::Update,
            Interaction::Delete,
        ];
    }
    let query_criteria = trigger.get("queryCriteria").map(|criteria| {
        let mut test = |name: &str| {
            let text = criteria.get(name)?.as_str()?;
            match parse_search_criteria(registry, &resource_type, text) {
                Ok(clauses) => Some(SearchTest {
                    text: text.to_owned(),
                    clauses,
                }),
                Err(message) => {
                    issues.push(Issue::error(
                        IssueCode::NotSupported,
                        message,
                        format!("{location}.queryCriteria.{name}"),
                    ));
                    None
                }
            }
        };
        let previous = test("previous");
        let current = test("current");
        let missing = |name: &str| match criteria.get(name).and_then(Value::as_str) {
            Some("test-passes") => MissingResult::TestPasses,
            _ => MissingResult::TestFails,
        };
        QueryCriteria {
            previous,
            current,
            result_for_create: missing("resultForCreate"),
            result_for_delete: missing("resultForDelete"),
            require_both: criteria
                .get("requireBoth")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    });
    let fhirpath_criteria = match trigger.get("fhirPathCriteria").and_then(Value::as_str) {
        Some(text) => match Expression::parse(text) {
            Ok(expression) => Some(FhirPathCriteria {
                text: text.to_owned(),
                expression: Arc::new(expression),
            }),
            Err(error) => {
                issues.push(Issue::error(
                    IssueCode::Invalid,
                    format!("fhirPathCriteria does not parse: {error}"),
                    format!("{location}.fhirPathCriteria"),
                ));
                None
            }
        },
        None => None,
    };
    Some(ResourceTrigger {
        description: string(trigger, "description"),
        resource_type,
        interactions,
        query_criteria,
        fhirpath_criteria,
    })
}

fn parse_event_trigger(
    trigger: &Value,
    index: usize,
    registry: &Registry,
    issues: &mut Vec<Issue>,
) -> Option<EventTrigger> {
    let location = format!("SubscriptionTopic.eventTrigger[{index}]");
    let resource_type = resource_type_of(trigger, &location, registry, issues)?;
    let coding = trigger
        .pointer("/event/coding")
        .and_then(Value::as_array)
        .and_then(|codings| codings.first());
    let Some(code) = coding
        .and_then(|coding| coding.get("code"))
        .and_then(Value::as_str)
    else {
        issues.push(Issue::error(
            IssueCode::Required,
            "eventTrigger.event needs a coding with a code",
            format!("{location}.event"),
        ));
        return None;
    };
    Some(EventTrigger {
        description: string(trigger, "description"),
        system: coding
            .and_then(|coding| coding.get("system"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        code: code.to_owned(),
        resource_type,
    })
}

fn parse_can_filter_by(
    filter: &Value,
    index: usize,
    registry: &Registry,
    issues: &mut Vec<Issue>,
) -> Option<CanFilterBy> {
    let location = format!("SubscriptionTopic.canFilterBy[{index}]");
    let resource_type = match filter.get("resource").and_then(Value::as_str) {
        Some(_) => Some(resource_type_of(filter, &location, registry, issues)?),
        None => None,
    };
    let Some(parameter) = string(filter, "filterParameter") else {
        issues.push(Issue::error(
            IssueCode::Required,
            "canFilterBy.filterParameter is required",
            format!("{location}.filterParameter"),
        ));
        return None;
    };
    if let Some(resource_type) = &resource_type
        && registry.lookup(Some(resource_type), &parameter).is_none()
    {
        issues.push(Issue::error(
            IssueCode::NotSupported,
            format!("{resource_type} has no search parameter '{parameter}'"),
            format!("{location}.filterParameter"),
        ));
        return None;
    }
    Some(CanFilterBy {
        description: string(filter, "description"),
        resource_type,
        filter_parameter: parameter,
        modifiers: strings(filter, "modifier"),
        comparators: strings(filter, "comparator"),
    })
}

fn resource_type_of(
    element: &Value,
    location: &str,
    registry: &Registry,
    issues: &mut Vec<Issue>,
) -> Option<String> {
    let Some(resource) = element.get("resource").and_then(Value::as_str) else {
        issues.push(Issue::error(
            IssueCode::Required,
            "resource is required",
            format!("{location}.resource"),
        ));
        return None;
    };
    // R5 allows a StructureDefinition URL; the core ones end in the type name.
    let resource_type = resource
        .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
        .unwrap_or(resource);
    if !registry.knows_type(resource_type) {
        issues.push(Issue::error(
            IssueCode::NotSupported,
            format!("'{resource}' is not an R4 resource type"),
            format!("{location}.resource"),
        ));
        return None;
    }
    Some(resource_type.to_owned())
}

pub(crate) fn array<'a>(value: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(name)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

pub(crate) fn string(value: &Value, name: &str) -> Option<String> {
    value.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn strings(value: &Value, name: &str) -> Vec<String> {
    array(value, name)
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// The topics a server knows, by canonical URL.
#[derive(Debug, Clone, Default)]
pub struct TopicRegistry {
    topics: BTreeMap<String, Arc<Topic>>,
}

impl TopicRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in topics (see [`builtin_topics`]).
    pub fn with_builtins(registry: &Registry) -> Self {
        let mut topics = Self::new();
        for topic in builtin_topics(registry) {
            topics.insert(topic);
        }
        topics
    }

    /// Adds or replaces a topic (by URL); returns the topic it replaced.
    pub fn insert(&mut self, topic: Topic) -> Option<Arc<Topic>> {
        self.topics.insert(topic.url.clone(), Arc::new(topic))
    }

    pub fn remove(&mut self, url: &str) -> Option<Arc<Topic>> {
        self.topics.remove(url)
    }

    /// The topic with this canonical; a `|version` suffix is ignored (topics are not
    /// versioned here).
    pub fn get(&self, url: &str) -> Option<&Arc<Topic>> {
        let url = url.split('|').next().unwrap_or(url);
        self.topics.get(url)
    }

    /// Every topic, by URL (for CapabilityStatement discovery and `GET SubscriptionTopic`).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Topic>> {
        self.topics.values()
    }

    /// The canonical URLs, sorted.
    pub fn urls(&self) -> Vec<&str> {
        self.topics.keys().map(String::as_str).collect()
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

/// The built-in topics, with canonical URLs under [`BUILTIN_TOPIC_BASE`]:
///
/// | id | trigger | filters |
/// |---|---|---|
/// | `observation-created` | Observation create | code, patient, subject, category, status |
/// | `observation-changed` | Observation create or update | code, patient, subject, category, status |
/// | `encounter-admission` | Encounter create/update whose `status` becomes `in-progress` | patient, subject, class, location, service-provider |
/// | `encounter-discharge` | Encounter create/update whose `status` becomes `finished` | patient, subject, class, location, service-provider |
/// | `immunization-new` | Immunization create | patient, vaccine-code, status |
/// | `patient-changed` | Patient create or update | identifier, organization, general-practitioner, _id |
/// | `sepsis-alert` | RiskAssessment create, and the event `trigger-event#sepsis-alert` | patient, subject |
pub fn builtin_topics(registry: &Registry) -> Vec<Topic> {
    builtin_topic_json()
        .iter()
        .filter_map(|json| Topic::from_json(json, registry).ok())
        .collect()
}

fn filters(resource: &str, params: &[&str]) -> Vec<Value> {
    params
        .iter()
        .map(|param| {
            let modifiers: &[&str] = match *param {
                "code" | "category" | "class" | "vaccine-code" | "identifier" | "status" => {
                    &["not", "missing", "text"]
                }
                _ => &["missing"],
            };
            json!({"resource": resource, "filterParameter": param, "modifier": modifiers})
        })
        .collect()
}

fn builtin_topic_json() -> Vec<Value> {
    let topic = |id: &str, title: &str, triggers: Value, can_filter: Vec<Value>, shape: Value| {
        json!({
            "resourceType": "SubscriptionTopic",
            "id": id,
            "url": format!("{BUILTIN_TOPIC_BASE}{id}"),
            "title": title,
            "status": "active",
            "description": title,
            "resourceTrigger": triggers,
            "canFilterBy": can_filter,
            "notificationShape": shape,
        })
    };
    let observation_filters = filters(
        "Observation",
        &["code", "patient", "subject", "category", "status"],
    );
    let encounter_filters = filters(
        "Encounter",
        &[
            "patient",
            "subject",
            "class",
            "location",
            "service-provider",
        ],
    );
    let encounter_status = |status: &str, action: &str| {
        json!([{
            "description": format!("An Encounter {action}: its status becomes {status}"),
            "resource": "Encounter",
            "supportedInteraction": ["create", "update"],
            "queryCriteria": {
                "previous": format!("status:not={status}"),
                "resultForCreate": "test-passes",
                "current": format!("status={status}"),
                "resultForDelete": "test-fails",
                "requireBoth": true,
            },
        }])
    };
    let mut sepsis = topic(
        "sepsis-alert",
        "A sepsis (qSOFA) risk alert was raised",
        json!([{
            "description": "A RiskAssessment was created by the qSOFA stream processor",
            "resource": "RiskAssessment",
            "supportedInteraction": ["create"],
        }]),
        filters("RiskAssessment", &["patient", "subject"]),
        json!([{"resource": "RiskAssessment", "include": ["RiskAssessment:subject"]}]),
    );
    sepsis["eventTrigger"] = json!([{
        "description": "The stream processor's qSOFA alert",
        "event": {"coding": [{"system": FLARE_EVENT_SYSTEM, "code": "sepsis-alert"}]},
        "resource": "RiskAssessment",
    }]);
    vec![
        topic(
            "observation-created",
            "An Observation was created",
            json!([{"resource": "Observation", "supportedInteraction": ["create"]}]),
            observation_filters.clone(),
            json!([{"resource": "Observation", "include": ["Observation:patient"]}]),
        ),
        topic(
            "observation-changed",
            "An Observation was created or updated",
            json!([{"resource": "Observation", "supportedInteraction": ["create", "update"]}]),
            observation_filters,
            json!([{"resource": "Observation", "include": ["Observation:patient"]}]),
        ),
        topic(
            "encounter-admission",
            "A patient was admitted: an Encounter became in-progress",
            encounter_status("in-progress", "started"),
            encounter_filters.clone(),
            json!([{"resource": "Encounter", "include": ["Encounter:patient"]}]),
        ),
        topic(
            "encounter-discharge",
            "A patient was discharged: an Encounter became finished",
            encounter_status("finished", "finished"),
            encounter_filters,
            json!([{"resource": "Encounter", "include": ["Encounter:patient"]}]),
        ),
        topic(
            "immunization-new",
            "An Immunization was recorded",
            json!([{"resource": "Immunization", "supportedInteraction": ["create"]}]),
            filters("Immunization", &["patient", "vaccine-code", "status"]),
            json!([{"resource": "Immunization", "include": ["Immunization:patient"]}]),
        ),
        topic(
            "patient-changed",
            "A Patient was created or updated",
            json!([{"resource": "Patient", "supportedInteraction": ["create", "update"]}]),
            filters(
                "Patient",
                &["identifier", "organization", "general-practitioner", "_id"],
            ),
            json!([{"resource": "Patient"}]),
        ),
        sepsis,
    ]
}

/// How a missing side of a query test is judged, as its code (for tests and rendering).
pub fn missing_result_code(result: MissingResult) -> &'static str {
    result.code()
}

impl QueryCriteria {
    /// Evaluates the criteria given the results of the previous and current tests (`None`
    /// for the side that does not exist: previous on create, current on delete).
    pub fn evaluate(&self, previous: Option<bool>, current: Option<bool>) -> bool {
        let previous_ok = match (&self.previous, previous) {
            (None, _) => None,
            (Some(_), Some(result)) => Some(result),
            (Some(_), None) => Some(self.result_for_create.passes()),
        };
        let current_ok = match (&self.current, current) {
            (None, _) => None,
            (Some(_), Some(result)) => Some(result),
            (Some(_), None) => Some(self.result_for_delete.passes()),
        };
        match (previous_ok, current_ok) {
            (None, None) => true,
            (Some(one), None) | (None, Some(one)) => one,
            (Some(previous), Some(current)) => {
                if self.require_both {
                    previous && current
                } else {
                    previous || current
                }
            }
        }
    }
}
