//! Which subscriptions a change event notifies.
//!
//! The index keeps subscriptions by resource type and, inside a type, under one **anchor**
//! clause each: a clause whose every value is an exact key (a token code, with or without its
//! system, a token system, a reference target or URL, an `:exact` string, a plain uri). Of a
//! subscription's anchorable clauses the most selective is chosen when it is inserted: the one
//! whose keys already hold the fewest subscriptions, so that posting lists stay short even
//! when every subscription's criteria differ (`code=X&patient=P` lands under whichever of `X`
//! and `P` is rarer). An event looks up the keys its own index entries produce; a subscription
//! found under its anchor satisfies the anchor clause by construction (the keys compare exactly
//! what the matcher compares), so only its other clauses are checked: other exact-key
//! clauses against the keys the event carries (a `:not` clause of exact keys holds when the
//! event carries none of them), the rest with `flare_search::matcher::matches` (the store's
//! own semantics). Subscriptions without an anchorable clause are evaluated for every event
//! of their type.
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
use flare_search::{Clause, IndexEntry, IndexValue, Predicate, Registry, StringMatch};
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

/// One exact value an index entry can carry. Each variant compares exactly what
/// `flare_search::matcher` compares for the predicate it comes from, so a key hit is a match
/// of that predicate and nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyValue {
    /// A token code in any system (`code=x`).
    Code(String),
    /// A token code without a system (`code=|x`).
    CodeWithoutSystem(String),
    /// `code=system|x`.
    SystemCode(String, String),
    /// `code=system|`: any code of the system.
    System(String),
    /// A reference's target id, any type (`subject=123` when the parameter has several
    /// target types).
    TargetId(String),
    /// A reference's target type and id (`subject=Patient/123`).
    Target(String, String),
    /// A reference as written (absolute and canonical references).
    ReferenceUrl(String),
    /// A string compared with `:exact`.
    ExactString(String),
    /// A uri compared exactly.
    Uri(String),
}

/// An index key: a parameter and a value that an event's entry must carry exactly.
type Key = (Arc<str>, KeyValue);

/// A bucket's number for a key: keys are hashed once per event, then compared as numbers.
type KeyId = u32;

/// A group found under a key: its slot and which of its placements (one per resource type)
/// put it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Posting {
    slot: u32,
    placement: u32,
    /// Up to two single-key clauses of the group besides the anchor ([`NO_KEY`] when
    /// unused): checked against the event's keys straight from the posting list, so that
    /// most candidates that fail are dropped without reading the group (at 100k
    /// subscriptions, reading a group is a cache miss or several).
    required: [KeyId; 2],
}

/// An unused [`Posting::required`] entry.
const NO_KEY: KeyId = KeyId::MAX;

impl Posting {
    fn may_match(&self, event_keys: &[KeyId]) -> bool {
        self.required
            .iter()
            .all(|key| *key == NO_KEY || event_keys.contains(key))
    }
}

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
        /// Filters by resource type, sorted by type (a handful at most: a scan beats hashing).
        filters: Vec<(String, Vec<Clause>)>,
    },
}

/// The filters of `resource_type`, if any.
fn filters_of<'a>(
    filters: &'a [(String, Vec<Clause>)],
    resource_type: &str,
) -> Option<&'a [Clause]> {
    filters
        .iter()
        .find(|(filtered, _)| filtered == resource_type)
        .map(|(_, clauses)| clauses.as_slice())
}

impl EntryKind {
    /// The clauses an event of `resource_type` must satisfy (topic filters of that type).
    fn clauses_for(&self, resource_type: &str) -> &[Clause] {
        match self {
            EntryKind::Classic { clauses } => clauses,
            EntryKind::Topic { filters, .. } => filters_of(filters, resource_type).unwrap_or(&[]),
        }
    }
}

/// One interned key: the groups anchored on it, and how many clauses of the bucket's groups
/// name it (anchored or not); freed when that drops to zero.
#[derive(Default)]
struct KeySlot {
    key: Option<Key>,
    uses: usize,
    postings: Vec<Posting>,
}

struct TypeBucket {
    key_ids: HashMap<Key, KeyId>,
    /// Indexed by [`KeyId`].
    keys: Vec<KeySlot>,
    free_keys: Vec<KeyId>,
    unkeyed: Vec<Posting>,
    /// Parameters of the interned keys, with how many distinct keys each has.
    key_params: HashMap<Arc<str>, usize>,
    /// Groups anchored on a clause with several keys (`code=a,b`): only these can be found
    /// twice by one event, so only with them must candidates be de-duplicated.
    multi_key_anchors: usize,
    /// Extracts only the parameters this type's groups use (extraction of every parameter
    /// of a resource costs more than the matching itself).
    extractor: Arc<Registry>,
    /// The parameters `extractor` knows; `None` when it is the full registry.
    extracted: Option<Vec<String>>,
}

/// How one group is indexed and evaluated for one resource type.
struct Placement {
    resource_type: String,
    /// The keys of the anchor clause, which the group is posted under (empty: unkeyed).
    posted: Vec<KeyId>,
    /// The keys of each other exact-key clause: satisfied when the event carries one of them.
    residual_keys: Vec<Vec<KeyId>>,
    /// Positions of the clauses only the matcher can judge.
    residual_clauses: Vec<usize>,
    /// Keys of the `:not` clauses: the event must carry none of them.
    forbidden: Vec<KeyId>,
    /// Every key this placement uses (with repeats), to release them on removal.
    interned: Vec<KeyId>,
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
    /// Off only in tests, where an index that evaluates every subscription in full is the
    /// reference the keyed one is compared with.
    use_keys: bool,
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
            use_keys: true,
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
                let mut by_type: Vec<(String, Vec<Clause>)> = Vec::new();
                for filter in filters {
                    let position = match by_type
                        .iter()
                        .position(|(filtered, _)| *filtered == filter.resource_type)
                    {
                        Some(position) => position,
                        None => {
                            by_type.push((filter.resource_type.clone(), Vec::new()));
                            by_type.len() - 1
                        }
                    };
                    by_type[position].1.extend(filter.clauses.iter().cloned());
                }
                by_type.sort_by(|a, b| a.0.cmp(&b.0));
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
            let clauses = kind.clauses_for(&resource_type);
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
            if self.use_keys {
                bucket.extract_also(registry, &resource_type, &params);
            } else {
                bucket.extractor = registry.clone();
                bucket.extracted = None;
            }
            let placement = u32::try_from(placements.len()).unwrap_or(u32::MAX);
            placements.push(bucket.place(slot, placement, resource_type, clauses, self.use_keys));
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
            if let Some(bucket) = self.by_type.get_mut(&placement.resource_type) {
                bucket.unplace(slot, placement);
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
        let (candidates, event_keys) = bucket.candidates(&mut context);
        let mut topic_results: Vec<(*const Topic, bool)> = Vec::new();
        let mut matched = Vec::new();
        for Posting {
            slot, placement, ..
        } in candidates
        {
            let Some(Some(group)) = self.slots.get(slot as usize) else {
                continue;
            };
            let Some(placement) = group.placements.get(placement as usize) else {
                continue;
            };
            let rest = Residual {
                placement,
                event_keys: &event_keys,
            };
            let hit = match &group.kind {
                EntryKind::Classic { clauses } => context.classic_matches(clauses, &rest),
                EntryKind::Topic { topic, filters } => {
                    let key = Arc::as_ptr(topic);
                    let fired = match topic_results.iter().find(|(known, _)| *known == key) {
                        Some((_, fired)) => *fired,
                        None => {
                            let fired = context.topic_fires(topic);
                            topic_results.push((key, fired));
                            fired
                        }
                    };
                    fired
                        && filters_of(filters, event.resource_type)
                            .is_none_or(|clauses| context.focus_matches(clauses, &rest))
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
        EntryKind::Topic { topic, filters } => format!("topic {} {filters:?}", topic.url),
    }
}

impl TypeBucket {
    fn new(resource_type: &str) -> Self {
        let extracted = Vec::new();
        Self {
            key_ids: HashMap::new(),
            keys: Vec::new(),
            free_keys: Vec::new(),
            unkeyed: Vec::new(),
            key_params: HashMap::new(),
            multi_key_anchors: 0,
            extractor: Arc::new(narrow_registry(resource_type, &extracted).unwrap_or_default()),
            extracted: Some(extracted),
        }
    }

    /// Indexes group `slot` for this type: picks its anchor among the exact-key clauses,
    /// posts it under the anchor's keys and notes how the other clauses are checked.
    fn place(
        &mut self,
        slot: u32,
        placement: u32,
        resource_type: String,
        clauses: &[Clause],
        use_keys: bool,
    ) -> Placement {
        let mut negated = vec![false; clauses.len()];
        let keyed: Vec<Option<Vec<Key>>> = clauses
            .iter()
            .zip(negated.iter_mut())
            .map(|(clause, negated)| {
                let (not, values) = clause_keys(clause).filter(|_| use_keys)?;
                *negated = not;
                let param = self.param_name(&clause.param);
                Some(
                    values
                        .into_iter()
                        .map(|value| (param.clone(), value))
                        .collect(),
                )
            })
            .collect();
        // A `:not` clause cannot anchor: the events it accepts are those without its keys.
        let anchorable: Vec<Option<Vec<Key>>> = keyed
            .iter()
            .zip(&negated)
            .map(|(keys, negated)| keys.clone().filter(|_| !negated))
            .collect();
        let anchor = self.choose_anchor(&anchorable);
        let mut placed = Placement {
            resource_type,
            posted: Vec::new(),
            residual_keys: Vec::new(),
            residual_clauses: Vec::new(),
            forbidden: Vec::new(),
            interned: Vec::new(),
        };
        for (position, keys) in keyed.into_iter().enumerate() {
            let Some(keys) = keys else {
                placed.residual_clauses.push(position);
                continue;
            };
            let ids: Vec<KeyId> = keys.into_iter().map(|key| self.intern(key)).collect();
            placed.interned.extend_from_slice(&ids);
            if negated.get(position).copied().unwrap_or(false) {
                placed.forbidden.extend_from_slice(&ids);
            } else if anchor == Some(position) {
                placed.posted = ids;
            } else {
                placed.residual_keys.push(ids);
            }
        }
        let mut required = [NO_KEY; 2];
        for (place, keys) in required.iter_mut().zip(
            placed
                .residual_keys
                .iter()
                .filter(|keys| keys.len() == 1)
                .filter_map(|keys| keys.first()),
        ) {
            *place = *keys;
        }
        let posting = Posting {
            slot,
            placement,
            required,
        };
        if placed.posted.is_empty() {
            self.unkeyed.push(posting);
        } else {
            for &id in &placed.posted {
                if let Some(key) = self.keys.get_mut(id as usize) {
                    key.postings.push(posting);
                }
            }
            if placed.posted.len() > 1 {
                self.multi_key_anchors += 1;
            }
        }
        placed
    }

    /// Undoes [`TypeBucket::place`].
    fn unplace(&mut self, slot: u32, placement: Placement) {
        if placement.posted.is_empty() {
            self.unkeyed.retain(|posting| posting.slot != slot);
        }
        if placement.posted.len() > 1 {
            self.multi_key_anchors = self.multi_key_anchors.saturating_sub(1);
        }
        for &id in &placement.posted {
            if let Some(key) = self.keys.get_mut(id as usize) {
                key.postings.retain(|posting| posting.slot != slot);
            }
        }
        for id in placement.interned {
            self.release(id);
        }
    }

    /// The bucket's shared copy of a parameter name.
    fn param_name(&self, param: &str) -> Arc<str> {
        match self.key_params.get_key_value(param) {
            Some((name, _)) => name.clone(),
            None => Arc::from(param),
        }
    }

    fn intern(&mut self, key: Key) -> KeyId {
        if let Some(&id) = self.key_ids.get(&key)
            && let Some(slot) = self.keys.get_mut(id as usize)
        {
            slot.uses += 1;
            return id;
        }
        *self.key_params.entry(key.0.clone()).or_default() += 1;
        let id = match self.free_keys.pop() {
            Some(id) => id,
            None => {
                self.keys.push(KeySlot::default());
                KeyId::try_from(self.keys.len() - 1).unwrap_or(KeyId::MAX)
            }
        };
        if let Some(slot) = self.keys.get_mut(id as usize) {
            *slot = KeySlot {
                key: Some(key.clone()),
                uses: 1,
                postings: Vec::new(),
            };
        }
        self.key_ids.insert(key, id);
        id
    }

    fn release(&mut self, id: KeyId) {
        let Some(slot) = self.keys.get_mut(id as usize) else {
            return;
        };
        slot.uses = slot.uses.saturating_sub(1);
        if slot.uses > 0 {
            return;
        }
        let Some(key) = slot.key.take() else {
            return;
        };
        slot.postings = Vec::new();
        self.key_ids.remove(&key);
        if let Some(count) = self.key_params.get_mut(&key.0) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.key_params.remove(&key.0);
            }
        }
        self.free_keys.push(id);
    }

    /// The position of the most selective exact-key clause: the one whose keys hold the
    /// fewest groups now; on a tie, the one whose parameter has more distinct keys (it is
    /// likely rarer among events too), then the first.
    fn choose_anchor(&self, keyed: &[Option<Vec<Key>>]) -> Option<usize> {
        let mut best: Option<(usize, (usize, std::cmp::Reverse<usize>))> = None;
        for (position, keys) in keyed.iter().enumerate() {
            let Some(keys) = keys else { continue };
            let load: usize = keys
                .iter()
                .map(|key| {
                    self.key_ids
                        .get(key)
                        .and_then(|&id| self.keys.get(id as usize))
                        .map_or(0, |slot| slot.postings.len())
                        + 1
                })
                .sum();
            let distinct = keys
                .first()
                .and_then(|key| self.key_params.get(&key.0))
                .copied()
                .unwrap_or(0);
            let cost = (load, std::cmp::Reverse(distinct));
            if best.as_ref().is_none_or(|(_, best_cost)| cost < *best_cost) {
                best = Some((position, cost));
            }
        }
        best.map(|(position, _)| position)
    }

    /// The groups an event may notify, each once (the unkeyed ones and those posted under a
    /// key of the event's focus), and the ids of the keys the focus carries.
    fn candidates(&self, context: &mut EventContext<'_>) -> (Vec<Posting>, Vec<KeyId>) {
        let mut candidates = self.unkeyed.clone();
        let mut event_keys: Vec<KeyId> = Vec::new();
        if self.key_ids.is_empty() {
            return (candidates, event_keys);
        }
        let Some(entries) = context.focus() else {
            return (candidates, event_keys);
        };
        for entry in entries {
            let Some((param, _)) = self.key_params.get_key_value(entry.param.as_str()) else {
                continue;
            };
            for value in entry_keys(&entry.value) {
                // Each distinct key once: two entries with the same code must not find a
                // group twice.
                if let Some(&id) = self.key_ids.get(&(param.clone(), value))
                    && !event_keys.contains(&id)
                {
                    event_keys.push(id);
                }
            }
        }
        let mut lists = 0;
        for &id in &event_keys {
            if let Some(slot) = self.keys.get(id as usize)
                && !slot.postings.is_empty()
            {
                candidates.extend(
                    slot.postings
                        .iter()
                        .filter(|posting| posting.may_match(&event_keys)),
                );
                lists += 1;
            }
        }
        // A group sits under each key of its anchor clause: when an event carries two of
        // them it is found twice.
        if lists > 1 && self.multi_key_anchors > 0 {
            candidates.sort_unstable_by_key(|posting| posting.slot);
            candidates.dedup_by_key(|posting| posting.slot);
        }
        (candidates, event_keys)
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

/// The keys of a clause whose every value is an exact key, or `None`. A plain clause is
/// satisfied exactly when the event carries one of its keys under its parameter; a `:not`
/// clause (`negated`, all its values negated tokens, as the matcher requires) exactly when
/// it carries none of them.
fn clause_keys(clause: &Clause) -> Option<(bool, Vec<KeyValue>)> {
    if clause.chain.is_some() || clause.predicates.is_empty() {
        return None;
    }
    let negated = clause
        .predicates
        .iter()
        .all(|predicate| matches!(predicate, Predicate::Token { negate: true, .. }));
    let mut keys: Vec<KeyValue> = Vec::with_capacity(clause.predicates.len());
    for predicate in &clause.predicates {
        let key = match predicate {
            // A negated value compares like a plain one; the clause negates the result.
            Predicate::Token {
                negate: true,
                system,
                code,
            } if negated => predicate_key(&Predicate::Token {
                negate: false,
                system: system.clone(),
                code: code.clone(),
            })?,
            _ => predicate_key(predicate)?,
        };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    Some((negated, keys))
}

/// The key a predicate is satisfied by, when it compares one exact value. `:not` (clause-wide
/// negation), `:missing`, `:text`, ranges, prefixes and partial strings have none.
fn predicate_key(predicate: &Predicate) -> Option<KeyValue> {
    match predicate {
        Predicate::Token {
            negate: false,
            system,
            code,
        } => match (system, code) {
            (None, Some(code)) => Some(KeyValue::Code(code.clone())),
            (Some(None), Some(code)) => Some(KeyValue::CodeWithoutSystem(code.clone())),
            (Some(Some(system)), Some(code)) => {
                Some(KeyValue::SystemCode(system.clone(), code.clone()))
            }
            (Some(Some(system)), None) => Some(KeyValue::System(system.clone())),
            // Any token at all, or any token without a system: not one value.
            (None | Some(None), None) => None,
        },
        Predicate::Reference { url: Some(url), .. } => Some(KeyValue::ReferenceUrl(url.clone())),
        Predicate::Reference {
            target_type,
            target_id: Some(id),
            url: None,
        } => Some(match target_type {
            Some(target_type) => KeyValue::Target(target_type.clone(), id.clone()),
            None => KeyValue::TargetId(id.clone()),
        }),
        Predicate::String {
            mode: StringMatch::Exact,
            value,
        } => Some(KeyValue::ExactString(value.clone())),
        Predicate::Uri {
            value,
            below: false,
            above: false,
        } => Some(KeyValue::Uri(value.clone())),
        _ => None,
    }
}

/// Every key an entry satisfies: the keys of all predicates that match it.
fn entry_keys(value: &IndexValue) -> Vec<KeyValue> {
    match value {
        IndexValue::Token { system, code, .. } => {
            let mut keys = Vec::with_capacity(3);
            if let Some(code) = code {
                keys.push(KeyValue::Code(code.clone()));
                keys.push(match system {
                    Some(system) => KeyValue::SystemCode(system.clone(), code.clone()),
                    None => KeyValue::CodeWithoutSystem(code.clone()),
                });
            }
            if let Some(system) = system {
                keys.push(KeyValue::System(system.clone()));
            }
            keys
        }
        IndexValue::Reference {
            target_type,
            target_id,
            url,
        } => {
            let mut keys = vec![KeyValue::ReferenceUrl(url.clone())];
            if let Some(id) = target_id {
                keys.push(KeyValue::TargetId(id.clone()));
                if let Some(target_type) = target_type {
                    keys.push(KeyValue::Target(target_type.clone(), id.clone()));
                }
            }
            keys
        }
        IndexValue::String { exact, .. } => vec![KeyValue::ExactString(exact.clone())],
        IndexValue::Uri(uri) => vec![KeyValue::Uri(uri.clone())],
        IndexValue::Date { .. } | IndexValue::Number { .. } | IndexValue::Quantity { .. } => {
            Vec::new()
        }
    }
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
    fn focus(&mut self) -> Option<&[IndexEntry]> {
        if self.event.current.is_some() {
            self.current()
        } else {
            self.previous()
        }
    }

    /// Whether the focus satisfies `clauses` (the anchor's already known to hold).
    fn focus_matches(&mut self, clauses: &[Clause], rest: &Residual<'_>) -> bool {
        if clauses.is_empty() {
            return true;
        }
        self.focus()
            .is_some_and(|entries| rest.matches(clauses, entries))
    }

    fn classic_matches(&mut self, clauses: &[Clause], rest: &Residual<'_>) -> bool {
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
            .is_some_and(|entries| rest.matches(clauses, entries))
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

/// What is left to check of a candidate once the index found it: its other exact-key
/// clauses against the keys the event carries, the rest with `flare_search::matches`.
struct Residual<'a> {
    placement: &'a Placement,
    /// Keys of the event's focus (the version the clauses are evaluated on).
    event_keys: &'a [KeyId],
}

impl Residual<'_> {
    fn matches(&self, clauses: &[Clause], entries: &[IndexEntry]) -> bool {
        self.placement
            .residual_keys
            .iter()
            .all(|keys| keys.iter().any(|key| self.event_keys.contains(key)))
            && !self
                .placement
                .forbidden
                .iter()
                .any(|key| self.event_keys.contains(key))
            && self.placement.residual_clauses.iter().all(|&position| {
                clauses.get(position).is_some_and(|clause| {
                    flare_search::matches(std::slice::from_ref(clause), entries)
                })
            })
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

#[cfg(test)]
mod tests {
    //! The keyed index against the reference: every subscription evaluated in full, on every
    //! parameter of the resource, by `flare_search::matcher`.

    use std::sync::OnceLock;

    use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
    use serde_json::json;

    use super::*;
    use crate::parse_subscription;

    const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
    const TOPICS: &str = "http://flare.dev/fhir/SubscriptionTopic/";

    fn registry() -> Arc<Registry> {
        static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
        REGISTRY.get_or_init(|| Arc::new(Registry::r4())).clone()
    }

    fn topics() -> TopicRegistry {
        TopicRegistry::with_builtins(&registry())
    }

    /// The reference: no keys, full extraction, every clause through the matcher.
    fn reference_index() -> SubscriptionIndex {
        let mut index = SubscriptionIndex::new(registry(), topics());
        index.use_keys = false;
        index
    }

    fn classic(criteria: &str) -> Value {
        json!({"resourceType": "Subscription", "status": "active", "reason": "test",
               "criteria": criteria,
               "channel": {"type": "rest-hook", "endpoint": "https://client.example.org/hook"}})
    }

    fn topic(topic: &str, filters: &[String]) -> Value {
        let filters: Vec<Value> = filters
            .iter()
            .map(|filter| {
                json!({"url": format!("{BACKPORT}backport-filter-criteria"),
                                 "valueString": filter})
            })
            .collect();
        json!({"resourceType": "Subscription", "status": "active", "reason": "test",
               "criteria": format!("{TOPICS}{topic}"),
               "_criteria": {"extension": filters},
               "channel": {"type": "rest-hook", "endpoint": "https://client.example.org/hook",
                   "payload": "application/fhir+json",
                   "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"),
                       "valueCode": "id-only"}]}}})
    }

    /// Observation criteria pieces: exact keys, OR-ed keys, and everything that is not a key
    /// (`:not`, `:missing`, `:text`, ranges, system-less and system-only tokens).
    const OBSERVATION_PIECES: &[&str] = &[
        "code=a",
        "code=b",
        "code=http://s.org|a",
        "code=http://t.org|c",
        "code=|a",
        "code=http://s.org|",
        "code=a,http://t.org|c",
        "code=|a,b",
        "code:not=a",
        "code:not=http://s.org|b",
        "code:missing=true",
        "code:missing=false",
        "code:text=heart",
        "subject=Patient/p",
        "subject=p",
        "subject=Group/p",
        "subject=http://ext.org/fhir/Patient/p",
        "subject:missing=true",
        "patient=p",
        "patient=Patient/q,Patient/p",
        "status=final",
        "status=final,amended",
        "status:not=final",
        "category=vital-signs",
        "value-quantity=gt50",
        "value-quantity=le20",
        "date=ge2026-01-02",
        "_id=o1",
        "_id=o1,o2",
    ];

    /// Filters the built-in Observation topics allow (their `canFilterBy`).
    const OBSERVATION_FILTERS: &[&str] = &[
        "code=a",
        "code=http://s.org|a",
        "code=|a",
        "code=a,http://t.org|c",
        "code:not=a",
        "code:missing=true",
        "code:text=heart",
        "patient=Patient/p",
        "patient=q",
        "subject=Patient/q,Patient/p",
        "subject=http://ext.org/fhir/Patient/p",
        "subject:missing=true",
        "status=final",
        "status:not=final",
        "category=vital-signs",
    ];

    const PATIENT_PIECES: &[&str] = &[
        "family:exact=Smith",
        "family:exact=smith,Jones",
        "family=smi",
        "family:contains=on",
        "given:exact=Ann",
        "gender=female",
        "gender:not=male",
        "identifier=http://mrn.org|1",
        "identifier=1",
        "organization=Organization/o1",
        "organization:missing=true",
        "_id=x1",
    ];

    const PATIENT_FILTERS: &[&str] = &[
        "identifier=http://mrn.org|1",
        "identifier=2,http://mrn.org|1",
        "identifier:missing=true",
        "organization=Organization/o1",
        "organization=o2",
        "_id=x1",
    ];

    const QUESTIONNAIRE_PIECES: &[&str] = &[
        "url=http://q.org/1",
        "url=http://q.org/1,http://q.org/2",
        "url:below=http://q.org/1",
        "status=active",
    ];

    fn pick_pieces(rng: &mut StdRng, pieces: &[&str], at_most: usize) -> Vec<String> {
        let count = rng.random_range(1..=at_most);
        (0..count)
            .filter_map(|_| pieces.choose(rng).map(|piece| (*piece).to_owned()))
            .collect()
    }

    fn random_subscription(rng: &mut StdRng) -> Value {
        match rng.random_range(0..6) {
            0 | 1 => classic(&format!(
                "Observation?{}",
                pick_pieces(rng, OBSERVATION_PIECES, 3).join("&")
            )),
            2 => topic(
                if rng.random_bool(0.5) {
                    "observation-created"
                } else {
                    "observation-changed"
                },
                &pick_pieces(rng, OBSERVATION_FILTERS, 3),
            ),
            3 => classic(&format!(
                "Patient?{}",
                pick_pieces(rng, PATIENT_PIECES, 3).join("&")
            )),
            4 => topic("patient-changed", &pick_pieces(rng, PATIENT_FILTERS, 2)),
            _ => classic(&format!(
                "Questionnaire?{}",
                pick_pieces(rng, QUESTIONNAIRE_PIECES, 2).join("&")
            )),
        }
    }

    fn maybe<T>(rng: &mut StdRng, value: T) -> Option<T> {
        rng.random_bool(0.7).then_some(value)
    }

    fn random_resource(rng: &mut StdRng, resource_type: &str) -> Value {
        let mut resource = match resource_type {
            "Observation" => {
                let codings = [
                    json!({"system": "http://s.org", "code": "a"}),
                    json!({"system": "http://s.org", "code": "b"}),
                    json!({"code": "a"}),
                    json!({"system": "http://t.org", "code": "c"}),
                    json!({"system": "http://s.org"}),
                ];
                let coding: Vec<Value> = (0..rng.random_range(0..3))
                    .filter_map(|_| codings.choose(rng).cloned())
                    .collect();
                let mut observation = json!({
                    "resourceType": "Observation",
                    "id": format!("o{}", rng.random_range(0..3)),
                    "code": {"coding": coding},
                    "valueQuantity": {"value": rng.random_range(0..100), "unit": "/min",
                        "system": "http://unitsofmeasure.org", "code": "/min"},
                    "effectiveDateTime": format!("2026-01-0{}", rng.random_range(1..4)),
                });
                if rng.random_bool(0.3) {
                    observation["code"]["text"] = json!("Heart rate");
                }
                if let Some(status) = maybe(rng, ["final", "amended", "preliminary"]) {
                    observation["status"] = json!(status.choose(rng));
                }
                let subjects = [
                    "Patient/p",
                    "Patient/q",
                    "Group/p",
                    "http://ext.org/fhir/Patient/p",
                ];
                if let Some(subjects) = maybe(rng, subjects) {
                    observation["subject"] = json!({"reference": subjects.choose(rng)});
                }
                if rng.random_bool(0.5) {
                    observation["category"] = json!([{"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs"}]}]);
                }
                observation
            }
            "Patient" => {
                let family = ["Smith", "smith", "Smíth", "Jones", "Tonson"].choose(rng);
                let given = ["Ann", "ann", "Bob"].choose(rng);
                let mut patient = json!({
                    "resourceType": "Patient",
                    "id": format!("x{}", rng.random_range(0..3)),
                    "name": [{"family": family, "given": [given]}],
                });
                if let Some(genders) = maybe(rng, ["female", "male", "other"]) {
                    patient["gender"] = json!(genders.choose(rng));
                }
                let identifiers = [
                    json!({"system": "http://mrn.org", "value": "1"}),
                    json!({"system": "http://other.org", "value": "1"}),
                    json!({"value": "2"}),
                ];
                if let Some(identifiers) = maybe(rng, identifiers) {
                    patient["identifier"] = json!([identifiers.choose(rng)]);
                }
                let organizations = ["Organization/o1", "Organization/o2"];
                if let Some(organizations) = maybe(rng, organizations) {
                    patient["managingOrganization"] =
                        json!({"reference": organizations.choose(rng)});
                }
                patient
            }
            _ => {
                let status = ["active", "draft"].choose(rng);
                let url = ["http://q.org/1", "http://q.org/1/a", "http://q.org/2"].choose(rng);
                json!({
                    "resourceType": "Questionnaire",
                    "id": format!("y{}", rng.random_range(0..3)),
                    "status": status,
                    "url": url,
                })
            }
        };
        resource["meta"] = json!({"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"});
        resource
    }

    fn sorted(ids: Vec<Arc<str>>) -> Vec<String> {
        let mut ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        ids.sort();
        ids
    }

    /// The classic judge straight from the matcher: every clause on every parameter.
    fn classic_expected(
        specs: &HashMap<String, SubscriptionSpec>,
        event: &MatchEvent,
    ) -> Vec<String> {
        let mut expected = Vec::new();
        let (Some(current), Interaction::Create | Interaction::Update) =
            (event.current, event.interaction)
        else {
            return expected;
        };
        if event.interaction == Interaction::Update
            && event
                .previous
                .is_some_and(|previous| equal_without_meta(current, previous))
        {
            return expected;
        }
        let entries = extract_with_meta(&registry(), current);
        for (id, spec) in specs {
            if let Trigger::Criteria(criteria) = &spec.trigger
                && criteria.resource_type == event.resource_type
                && flare_search::matches(&criteria.clauses, &entries)
            {
                expected.push(id.clone());
            }
        }
        expected.sort();
        expected
    }

    #[test]
    fn keyed_index_notifies_exactly_whom_full_evaluation_notifies() {
        for seed in [1u64, 2, 3] {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut keyed = SubscriptionIndex::new(registry(), topics());
            let mut reference = reference_index();
            let mut specs: HashMap<String, SubscriptionSpec> = HashMap::new();
            let mut next_id = 0;
            let mut notified = 0;
            for round in 0..8 {
                // Churn: new subscriptions, and some removed, so postings come and go.
                for _ in 0..80 {
                    let subscription = random_subscription(&mut rng);
                    let spec = parse_subscription(&subscription, &registry(), keyed.topics())
                        .unwrap_or_else(|issues| panic!("{subscription}: {issues:?}"));
                    let id = format!("s{next_id}");
                    next_id += 1;
                    keyed.insert_with_id(&id, &spec).unwrap();
                    reference.insert_with_id(&id, &spec).unwrap();
                    specs.insert(id, spec);
                }
                let mut ids: Vec<String> = specs.keys().cloned().collect();
                ids.sort();
                for id in ids {
                    if rng.random_bool(0.15) {
                        assert!(keyed.remove(&id));
                        assert!(reference.remove(&id));
                        specs.remove(&id);
                    }
                }
                assert_eq!(keyed.len(), specs.len());
                for _ in 0..120 {
                    let resource_type = *["Observation", "Patient", "Questionnaire"]
                        .choose(&mut rng)
                        .unwrap();
                    let current = random_resource(&mut rng, resource_type);
                    let previous = if rng.random_bool(0.2) {
                        // A meta-only change.
                        let mut previous = current.clone();
                        previous["meta"]["versionId"] = json!("0");
                        previous
                    } else {
                        random_resource(&mut rng, resource_type)
                    };
                    let (interaction, current, previous) = match rng.random_range(0..3) {
                        0 => (Interaction::Create, Some(&current), None),
                        1 => (Interaction::Update, Some(&current), Some(&previous)),
                        _ => (Interaction::Delete, None, Some(&previous)),
                    };
                    let event = MatchEvent {
                        resource_type,
                        interaction,
                        current,
                        previous,
                        trigger_event: None,
                    };
                    let got = sorted(keyed.matching(&event));
                    let want = sorted(reference.matching(&event));
                    assert_eq!(
                        got, want,
                        "seed {seed} round {round}: {event:?}\nkeyed {got:?}\nreference {want:?}"
                    );
                    let classic_got: Vec<String> = got
                        .iter()
                        .filter(|id| matches!(specs[*id].trigger, Trigger::Criteria(_)))
                        .cloned()
                        .collect();
                    assert_eq!(classic_got, classic_expected(&specs, &event), "{event:?}");
                    notified += got.len();
                }
            }
            // The comparison means something only if events notify some and not all.
            assert!(notified > 100, "seed {seed}: only {notified} notifications");
        }
    }

    fn observation(code: &str, patient: &str) -> Value {
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
               "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
               "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
               "subject": {"reference": format!("Patient/{patient}")}})
    }

    fn candidates_for(index: &SubscriptionIndex, resource: &Value) -> usize {
        let event = MatchEvent {
            resource_type: "Observation",
            interaction: Interaction::Create,
            current: Some(resource),
            previous: None,
            trigger_event: None,
        };
        let bucket = &index.by_type["Observation"];
        let mut context = EventContext::new(&bucket.extractor, &event);
        bucket.candidates(&mut context).0.len()
    }

    fn classic_index(criteria: impl Iterator<Item = (String, String)>) -> SubscriptionIndex {
        let mut index = SubscriptionIndex::new(registry(), topics());
        for (id, criteria) in criteria {
            let spec = parse_subscription(&classic(&criteria), &registry(), index.topics())
                .unwrap_or_else(|issues| panic!("{criteria}: {issues:?}"));
            index.insert_with_id(&id, &spec).unwrap();
        }
        index
    }

    fn notified(index: &SubscriptionIndex, resource: &Value) -> Vec<String> {
        sorted(index.matching(&MatchEvent {
            resource_type: "Observation",
            interaction: Interaction::Create,
            current: Some(resource),
            previous: None,
            trigger_event: None,
        }))
    }

    #[test]
    fn a_key_every_subscription_shares_is_not_chosen_as_anchor() {
        // Many clients watch one code, each for its own patient: the patient is the anchor.
        let index = classic_index((0..5000).map(|patient| {
            (
                format!("s{patient}"),
                format!("Observation?code=http://loinc.org|8867-4&subject=Patient/p{patient}"),
            )
        }));
        let event = observation("8867-4", "p7");
        assert_eq!(notified(&index, &event), vec!["s7".to_owned()]);
        // Anchored on the code (the first clause), it would meet all 5,000.
        let candidates = candidates_for(&index, &event);
        assert!(candidates <= 2, "{candidates} candidates");
    }

    #[test]
    fn distinct_criteria_spread_over_all_their_keys() {
        // 100 codes x 100 patients, every pair once, all with `status=final` first; inserted
        // code by code, so whichever key comes first would collect them.
        let index = classic_index((0..100).flat_map(|code| {
            (0..100).map(move |patient| {
                (
                    format!("s{code}-{patient}"),
                    format!(
                        "Observation?status=final&code=http://loinc.org|c{code}&subject=Patient/p{patient}"
                    ),
                )
            })
        }));
        let event = observation("c42", "p7");
        assert_eq!(notified(&index, &event), vec!["s42-7".to_owned()]);
        // One anchor per subscription over 201 keys: about 50 per code and per patient (the
        // greedy choice depends on insertion order, hence the slack), so an event reads a
        // hundred or so postings of the 10,000 and keeps those whose other keys it carries,
        // where anchoring on the first clause (`status=final`) would make it meet all.
        let candidates = candidates_for(&index, &event);
        assert!(candidates <= 200, "{candidates} candidates");
    }

    #[test]
    fn removing_subscriptions_empties_their_postings() {
        let mut index = classic_index((0..50).map(|number| {
            let criteria = match number % 3 {
                0 => format!("Observation?code=c{number},d{number}"),
                1 => format!("Observation?code=c{number}&subject=Patient/p{number}&status:not=x"),
                _ => format!("Observation?value-quantity=gt{number}"),
            };
            (format!("s{number}"), criteria)
        }));
        let bucket = &index.by_type["Observation"];
        assert_eq!((bucket.multi_key_anchors, bucket.unkeyed.len()), (17, 16));
        assert!(candidates_for(&index, &observation("c1", "p1")) > 16);
        for number in 0..50 {
            assert!(index.remove(&format!("s{number}")));
        }
        let bucket = &index.by_type["Observation"];
        assert!(bucket.key_ids.is_empty() && bucket.key_params.is_empty());
        assert!(
            bucket
                .keys
                .iter()
                .all(|slot| slot.key.is_none() && slot.postings.is_empty())
        );
        assert_eq!(bucket.multi_key_anchors, 0);
        assert!(bucket.unkeyed.is_empty());
        assert_eq!(candidates_for(&index, &observation("c1", "p1")), 0);
    }
}
