//! Which subscriptions a change event notifies.
//!
//! The index keeps subscriptions by resource type and, inside a type, by one equality clause
//! each (a token code or a reference target, e.g. `code=8867-4` or `patient=Patient/1`): an
//! event looks up the keys its own index entries produce and checks only those candidates,
//! plus the type's subscriptions without such a clause. Candidates are confirmed with
//! `flare_search::matcher::matches` (the store's own semantics), so the keys only narrow.
//!
//! Semantics:
//! - **Classic** criteria: create and update only, evaluated on the new version; an update
//!   whose resource equals the previous version apart from `meta` notifies nobody.
//! - **Topic** subscriptions: a resource trigger fires when the interaction is supported and
//!   its `queryCriteria` and `fhirPathCriteria` pass; an event trigger fires for a
//!   [`MatchEvent::trigger_event`] with its code. Filters are then evaluated on the focus: the
//!   current version, or the previous one for a delete.

use std::collections::HashMap;
use std::sync::Arc;

use flare_fhirpath::Env;
use flare_search::{Clause, IndexEntry, IndexValue, Predicate, Registry};
use serde_json::Value;

use crate::spec::{SubscriptionSpec, Trigger};
use crate::topic::{Interaction, ResourceTrigger, Topic, TopicRegistry};

/// A change to match: what happened to which resource.
#[derive(Debug, Clone, Copy)]
pub struct MatchEvent<'a> {
    pub resource_type: &'a str,
    pub interaction: Interaction,
    /// The new version; `None` for a delete.
    pub current: Option<&'a Value>,
    /// The version before the change, when there was one. Needed for updates of types whose
    /// topics test the previous version (see [`SubscriptionIndex::needs_previous`]) and for
    /// the no-op check of classic criteria (without it an update is never a no-op); the
    /// only source of filter values for a delete.
    pub previous: Option<&'a Value>,
    /// A non-REST event (`eventTrigger`): `(system, code)`.
    pub trigger_event: Option<(&'a str, &'a str)>,
}

/// Why a subscription cannot go into the index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("subscription has no id")]
    MissingId,
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
}

/// An index key: a parameter and a value that an event's entry must carry exactly.
type Key = (Arc<str>, String);

/// Subscriptions with identical criteria share one group: it is evaluated once per event and
/// notifies all its members (many clients subscribe to the same topic and filters).
struct Group {
    kind: EntryKind,
    members: Vec<Arc<str>>,
    signature: String,
    placements: Vec<Placement>,
}

enum EntryKind {
    Classic {
        clauses: Vec<Clause>,
    },
    Topic {
        topic: Arc<Topic>,
        /// Filters by resource type.
        filters: HashMap<String, Vec<Clause>>,
    },
}

struct TypeBucket {
    keyed: HashMap<Key, Vec<u32>>,
    unkeyed: Vec<u32>,
    /// Parameters that appear in `keyed`, with how many keys use them.
    key_params: HashMap<Arc<str>, usize>,
    /// Extracts only the parameters this type's groups use (extraction of every parameter
    /// of a resource costs more than the matching itself).
    extractor: Arc<Registry>,
    /// The parameters `extractor` knows; `None` when it is the full registry.
    extracted: Option<Vec<String>>,
}

/// Where one group was put, to take it out again.
struct Placement {
    resource_type: String,
    keys: Vec<Key>,
}

/// Active subscriptions, indexed for matching. Not thread-safe by itself: share it behind a
/// lock or rebuild and swap it.
pub struct SubscriptionIndex {
    registry: Arc<Registry>,
    topics: TopicRegistry,
    slots: Vec<Option<Group>>,
    free: Vec<u32>,
    by_id: HashMap<Arc<str>, u32>,
    by_signature: HashMap<String, u32>,
    by_type: HashMap<String, TypeBucket>,
}

impl std::fmt::Debug for SubscriptionIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionIndex")
            .field("subscriptions", &self.by_id.len())
            .finish()
    }
}

impl SubscriptionIndex {
    pub fn new(registry: Arc<Registry>, topics: TopicRegistry) -> Self {
        Self {
            registry,
            topics,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            by_signature: HashMap::new(),
            by_type: HashMap::new(),
        }
    }

    /// The topics the index resolves topic subscriptions with.
    pub fn topics(&self) -> &TopicRegistry {
        &self.topics
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Adds (or replaces) a subscription under `spec.id`. Only call it for subscriptions that
    /// should be matched (requested/active/error: events still count while in error).
    pub fn insert(&mut self, spec: &SubscriptionSpec) -> Result<(), IndexError> {
        let id = spec.id.as_deref().ok_or(IndexError::MissingId)?;
        self.insert_with_id(id, spec)
    }

    /// [`SubscriptionIndex::insert`] under an explicit id.
    pub fn insert_with_id(&mut self, id: &str, spec: &SubscriptionSpec) -> Result<(), IndexError> {
        let (kind, types) = match &spec.trigger {
            Trigger::Criteria(criteria) => (
                EntryKind::Classic {
                    clauses: criteria.clauses.clone(),
                },
                vec![criteria.resource_type.clone()],
            ),
            Trigger::Topic { url, filters } => {
                let topic = self
                    .topics
                    .get(url)
                    .cloned()
                    .ok_or_else(|| IndexError::UnknownTopic(url.clone()))?;
                let mut by_type: HashMap<String, Vec<Clause>> = HashMap::new();
                for filter in filters {
                    by_type
                        .entry(filter.resource_type.clone())
                        .or_default()
                        .extend(filter.clauses.iter().cloned());
                }
                let types = topic
                    .resource_types()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                (
                    EntryKind::Topic {
                        topic,
                        filters: by_type,
                    },
                    types,
                )
            }
        };
        self.remove(id);
        let id: Arc<str> = Arc::from(id);
        let signature = signature(&kind);
        if let Some(&slot) = self.by_signature.get(&signature)
            && let Some(Some(group)) = self.slots.get_mut(slot as usize)
        {
            group.members.push(id.clone());
            self.by_id.insert(id, slot);
            return Ok(());
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let mut placements = Vec::new();
        for resource_type in types {
            let clauses: &[Clause] = match &kind {
                EntryKind::Classic { clauses } => clauses,
                EntryKind::Topic { filters, .. } => filters
                    .get(&resource_type)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
            };
            let keys = index_keys(clauses);
            let mut params: Vec<&str> =
                clauses.iter().map(|clause| clause.param.as_str()).collect();
            if let EntryKind::Topic { topic, .. } = &kind {
                for trigger in &topic.resource_triggers {
                    if trigger.resource_type != resource_type {
                        continue;
                    }
                    if let Some(criteria) = &trigger.query_criteria {
                        for test in [&criteria.previous, &criteria.current]
                            .into_iter()
                            .flatten()
                        {
                            params.extend(test.clauses.iter().map(|clause| clause.param.as_str()));
                        }
                    }
                }
            }
            let registry = &self.registry;
            let bucket = self
                .by_type
                .entry(resource_type.clone())
                .or_insert_with(|| TypeBucket::new(&resource_type));
            bucket.extract_also(registry, &resource_type, &params);
            if keys.is_empty() {
                bucket.unkeyed.push(slot);
            } else {
                for key in &keys {
                    bucket.keyed.entry(key.clone()).or_default().push(slot);
                    *bucket.key_params.entry(key.0.clone()).or_default() += 1;
                }
            }
            placements.push(Placement {
                resource_type,
                keys,
            });
        }
        if let Some(place) = self.slots.get_mut(slot as usize) {
            *place = Some(Group {
                kind,
                members: vec![id.clone()],
                signature: signature.clone(),
                placements,
            });
        }
        self.by_signature.insert(signature, slot);
        self.by_id.insert(id, slot);
        Ok(())
    }

    /// Removes a subscription; whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(slot) = self.by_id.remove(id) else {
            return false;
        };
        let Some(Some(group)) = self.slots.get_mut(slot as usize) else {
            return false;
        };
        if let Some(position) = group.members.iter().position(|member| &**member == id) {
            group.members.swap_remove(position);
        }
        if !group.members.is_empty() {
            return true;
        }
        let Some(group) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return true;
        };
        self.by_signature.remove(&group.signature);
        for placement in group.placements {
            let Some(bucket) = self.by_type.get_mut(&placement.resource_type) else {
                continue;
            };
            if placement.keys.is_empty() {
                bucket.unkeyed.retain(|&other| other != slot);
            }
            for key in placement.keys {
                if let Some(slots) = bucket.keyed.get_mut(&key) {
                    slots.retain(|&other| other != slot);
                    if slots.is_empty() {
                        bucket.keyed.remove(&key);
                    }
                }
                if let Some(count) = bucket.key_params.get_mut(&key.0) {
                    *count -= 1;
                    if *count == 0 {
                        bucket.key_params.remove(&key.0);
                    }
                }
            }
        }
        self.free.push(slot);
        true
    }

    /// Whether some topic subscription on `resource_type` tests the previous version of an
    /// update (so the caller must fetch it for [`MatchEvent::previous`]).
    pub fn needs_previous(&self, resource_type: &str) -> bool {
        self.topics.iter().any(|topic| {
            topic.resource_triggers.iter().any(|trigger| {
                trigger.resource_type == resource_type
                    && (trigger
                        .query_criteria
                        .as_ref()
                        .is_some_and(|criteria| criteria.previous.is_some())
                        || trigger.fhirpath_criteria.is_some())
            })
        })
    }

    /// The ids of the subscriptions this event notifies, in no particular order, each once.
    pub fn matching(&self, event: &MatchEvent<'_>) -> Vec<Arc<str>> {
        let Some(bucket) = self.by_type.get(event.resource_type) else {
            return Vec::new();
        };
        let mut context = EventContext::new(&bucket.extractor, event);
        let mut candidates: Vec<u32> = bucket.unkeyed.clone();
        if !bucket.keyed.is_empty() {
            let entries = context.focus_entries();
            for entry in entries.iter() {
                let Some((param, _)) = bucket.key_params.get_key_value(entry.param.as_str()) else {
                    continue;
                };
                for value in entry_keys(&entry.value) {
                    if let Some(slots) = bucket.keyed.get(&(param.clone(), value)) {
                        candidates.extend_from_slice(slots);
                    }
                }
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let mut topic_results: HashMap<*const Topic, bool> = HashMap::new();
        let mut matched = Vec::new();
        for slot in candidates {
            let Some(Some(group)) = self.slots.get(slot as usize) else {
                continue;
            };
            let hit = match &group.kind {
                EntryKind::Classic { clauses } => context.classic_matches(clauses),
                EntryKind::Topic { topic, filters } => {
                    let key = Arc::as_ptr(topic);
                    let fired = match topic_results.get(&key) {
                        Some(fired) => *fired,
                        None => {
                            let fired = context.topic_fires(topic);
                            topic_results.insert(key, fired);
                            fired
                        }
                    };
                    fired
                        && filters
                            .get(event.resource_type)
                            .is_none_or(|clauses| context.focus_matches(clauses))
                }
            };
            if hit {
                matched.extend(group.members.iter().cloned());
            }
        }
        matched
    }
}

/// Identical criteria give identical signatures (the clauses' debug form is exact: it lists
/// every predicate with its values).
fn signature(kind: &EntryKind) -> String {
    match kind {
        EntryKind::Classic { clauses } => format!("classic {clauses:?}"),
        EntryKind::Topic { topic, filters } => {
            let mut filters: Vec<_> = filters.iter().collect();
            filters.sort_by(|a, b| a.0.cmp(b.0));
            format!("topic {} {filters:?}", topic.url)
        }
    }
}

impl TypeBucket {
    fn new(resource_type: &str) -> Self {
        let extracted = Vec::new();
        Self {
            keyed: HashMap::new(),
            unkeyed: Vec::new(),
            key_params: HashMap::new(),
            extractor: Arc::new(narrow_registry(resource_type, &extracted).unwrap_or_default()),
            extracted: Some(extracted),
        }
    }

    /// Makes the extractor cover `params` too (rebuilt only when one is new).
    fn extract_also(&mut self, full: &Arc<Registry>, resource_type: &str, params: &[&str]) {
        let Some(extracted) = &mut self.extracted else {
            return;
        };
        let mut changed = false;
        for param in params {
            if !extracted.iter().any(|known| known == param) {
                extracted.push((*param).to_owned());
                changed = true;
            }
        }
        if !changed {
            return;
        }
        match narrow_registry(resource_type, extracted) {
            Some(registry) => self.extractor = Arc::new(registry),
            None => {
                // A parameter that is not a core one (a custom SearchParameter): extract
                // everything with the registry the criteria were parsed with.
                self.extractor = full.clone();
                self.extracted = None;
            }
        }
    }
}

/// A registry of only `params` of `resource_type`, or `None` when one is not a core R4
/// parameter.
fn narrow_registry(resource_type: &str, params: &[String]) -> Option<Registry> {
    let mut definitions = Vec::new();
    for param in params {
        definitions.push(flare_fhir::search_params::find(resource_type, param)?);
    }
    Some(Registry::from_definitions(definitions))
}

/// The keys of the first clause whose every value is an exact token code or reference.
fn index_keys(clauses: &[Clause]) -> Vec<Key> {
    for clause in clauses {
        if clause.chain.is_some() || clause.predicates.is_empty() {
            continue;
        }
        let keys: Option<Vec<String>> = clause.predicates.iter().map(predicate_key).collect();
        if let Some(keys) = keys {
            let param: Arc<str> = Arc::from(clause.param.as_str());
            return keys.into_iter().map(|key| (param.clone(), key)).collect();
        }
    }
    Vec::new()
}

fn predicate_key(predicate: &Predicate) -> Option<String> {
    match predicate {
        Predicate::Token {
            code: Some(code),
            negate: false,
            ..
        } => Some(format!("t:{code}")),
        Predicate::Reference { url: Some(url), .. } => Some(format!("u:{url}")),
        Predicate::Reference {
            target_id: Some(id),
            url: None,
            ..
        } => Some(format!("r:{id}")),
        _ => None,
    }
}

fn entry_keys(value: &IndexValue) -> impl Iterator<Item = String> {
    let (first, second) = match value {
        IndexValue::Token {
            code: Some(code), ..
        } => (Some(format!("t:{code}")), None),
        IndexValue::Reference { target_id, url, .. } => (
            target_id.as_ref().map(|id| format!("r:{id}")),
            Some(format!("u:{url}")),
        ),
        _ => (None, None),
    };
    first.into_iter().chain(second)
}

/// Per-event state: index entries of each version, extracted once and only when needed.
struct EventContext<'a> {
    registry: &'a Registry,
    event: &'a MatchEvent<'a>,
    current_entries: Option<Vec<IndexEntry>>,
    previous_entries: Option<Vec<IndexEntry>>,
    is_noop: Option<bool>,
}

impl<'a> EventContext<'a> {
    fn new(registry: &'a Registry, event: &'a MatchEvent<'a>) -> Self {
        Self {
            registry,
            event,
            current_entries: None,
            previous_entries: None,
            is_noop: None,
        }
    }

    fn current(&mut self) -> Option<&[IndexEntry]> {
        let resource = self.event.current?;
        Some(
            self.current_entries
                .get_or_insert_with(|| extract_with_meta(self.registry, resource)),
        )
    }

    fn previous(&mut self) -> Option<&[IndexEntry]> {
        let resource = self.event.previous?;
        Some(
            self.previous_entries
                .get_or_insert_with(|| extract_with_meta(self.registry, resource)),
        )
    }

    /// The entries filters are evaluated on: the current version, or the previous for a delete.
    fn focus_entries(&mut self) -> Vec<IndexEntry> {
        // Cloned so that the caller can hold them while the context extracts other versions;
        // only called once per event.
        if self.event.current.is_some() {
            self.current()
                .map(<[IndexEntry]>::to_vec)
                .unwrap_or_default()
        } else {
            self.previous()
                .map(<[IndexEntry]>::to_vec)
                .unwrap_or_default()
        }
    }

    fn focus_matches(&mut self, clauses: &[Clause]) -> bool {
        if clauses.is_empty() {
            return true;
        }
        let entries = if self.event.current.is_some() {
            self.current()
        } else {
            self.previous()
        };
        entries.is_some_and(|entries| flare_search::matches(clauses, entries))
    }

    fn classic_matches(&mut self, clauses: &[Clause]) -> bool {
        if !matches!(
            self.event.interaction,
            Interaction::Create | Interaction::Update
        ) || self.event.trigger_event.is_some()
        {
            return false;
        }
        if self.event.interaction == Interaction::Update && self.noop() {
            return false;
        }
        self.current()
            .is_some_and(|entries| flare_search::matches(clauses, entries))
    }

    fn noop(&mut self) -> bool {
        *self
            .is_noop
            .get_or_insert_with(|| match (self.event.current, self.event.previous) {
                (Some(current), Some(previous)) => equal_without_meta(current, previous),
                _ => false,
            })
    }

    fn topic_fires(&mut self, topic: &Topic) -> bool {
        if let Some((system, code)) = self.event.trigger_event {
            return topic.event_triggers.iter().any(|trigger| {
                trigger.code == code
                    && trigger
                        .system
                        .as_deref()
                        .is_none_or(|wanted| wanted == system)
                    && trigger.resource_type == self.event.resource_type
            });
        }
        topic
            .resource_triggers
            .iter()
            .any(|trigger| self.resource_trigger_fires(trigger))
    }

    fn resource_trigger_fires(&mut self, trigger: &ResourceTrigger) -> bool {
        if trigger.resource_type != self.event.resource_type
            || !trigger.interactions.contains(&self.event.interaction)
        {
            return false;
        }
        if let Some(criteria) = &trigger.query_criteria {
            let previous = match &criteria.previous {
                Some(test) => self
                    .previous()
                    .map(|entries| flare_search::matches(&test.clauses, entries)),
                None => None,
            };
            let current = match &criteria.current {
                Some(test) => self
                    .current()
                    .map(|entries| flare_search::matches(&test.clauses, entries)),
                None => None,
            };
            if !criteria.evaluate(previous, current) {
                return false;
            }
        }
        if let Some(criteria) = &trigger.fhirpath_criteria {
            let empty = Value::Null;
            let mut env = Env::new();
            env = match self.event.previous {
                Some(previous) => env.with_resource("previous", previous),
                None => env.with_items("previous", Vec::new()),
            };
            env = match self.event.current {
                Some(current) => env.with_resource("current", current),
                None => env.with_items("current", Vec::new()),
            };
            let context = self.event.current.or(self.event.previous).unwrap_or(&empty);
            match criteria.expression.evaluate_bool(context, &env) {
                Ok(Some(true)) => {}
                _ => return false,
            }
        }
        true
    }
}

/// Index entries plus `_id` and `_lastUpdated`, which the store serves from its resource
/// table rather than from index rows.
fn extract_with_meta(registry: &Registry, resource: &Value) -> Vec<IndexEntry> {
    let mut entries = registry.extract(resource);
    let has = |entries: &[IndexEntry], name: &str| entries.iter().any(|entry| entry.param == name);
    if !has(&entries, "_id")
        && let Some(id) = resource.get("id").and_then(Value::as_str)
    {
        entries.push(IndexEntry {
            param: "_id".into(),
            value: IndexValue::Token {
                system: None,
                code: Some(id.to_owned()),
                text: None,
            },
        });
    }
    if !has(&entries, "_lastUpdated")
        && let Some(updated) = resource
            .pointer("/meta/lastUpdated")
            .and_then(Value::as_str)
        && let Some((low_ms, high_ms)) = flare_search::parse_date_range(updated)
    {
        entries.push(IndexEntry {
            param: "_lastUpdated".into(),
            value: IndexValue::Date { low_ms, high_ms },
        });
    }
    entries
}

/// Whether two versions differ only in `meta` (a no-op or meta-only update).
pub fn equal_without_meta(current: &Value, previous: &Value) -> bool {
    match (current.as_object(), previous.as_object()) {
        (Some(current), Some(previous)) => {
            let without_meta = |object: &serde_json::Map<String, Value>| {
                object
                    .iter()
                    .filter(|(name, _)| name.as_str() != "meta")
                    .count()
            };
            without_meta(current) == without_meta(previous)
                && current
                    .iter()
                    .filter(|(name, _)| name.as_str() != "meta")
                    .all(|(name, value)| previous.get(name) == Some(value))
        }
        _ => current == previous,
    }
}
