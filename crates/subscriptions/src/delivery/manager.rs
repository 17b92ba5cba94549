//! The manager: one consumer over every resource topic; keeps the subscription set current
//! from the log, numbers matches, and starts and stops workers.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use flare_events::{Action, ChangeEvent, header};
use flare_log::{Consumer, Record, StartFrom};
use serde_json::Value;
use tokio::sync::watch;

use super::{
    DeliveryError, Live, Shared,
    cursor::{EventRow, SubscriptionChange},
    worker::{self, Mode},
};
use crate::{ChannelType, Interaction, MatchEvent, SubscriptionIndex, SubscriptionSpec};

/// Consumer group name; the manager keeps its own offsets in the cursor file and never
/// commits through the group.
const GROUP: &str = "flare-subscriptions";

/// What to do with a subscription's worker after a batch is committed.
enum Lifecycle {
    Handshake(String),
    Deliver(String),
    Stop(String),
    Fail(String, String),
    /// A websocket subscription: `active` without a handshake (the IG's rule); clients bind.
    Activate(String),
}

/// Loads the remembered subscriptions and restarts their workers.
pub(super) async fn resume(shared: &Arc<Shared>) -> Result<(), DeliveryError> {
    let stored = shared.cursor.subscriptions().await?;
    let mut actions = Vec::new();
    {
        let mut live = shared.live.lock();
        let mut index = shared.index.lock();
        for s in stored {
            let (spec, indexed) = index_subscription(shared, &mut index, &s.id, &s.resource);
            let entry = Live {
                resource: Arc::new(s.resource),
                spec,
                since_seq: s.since_seq,
                events_since_start: s.events_since_start,
                indexed: indexed.is_ok(),
            };
            let kind = entry.channel().map(|channel| channel.channel_type);
            match (entry.status(), kind) {
                (_, None) => {}
                ("requested", Some(ChannelType::Websocket)) => {
                    actions.push(Lifecycle::Activate(s.id.clone()))
                }
                (_, Some(ChannelType::Websocket)) => {}
                ("requested", _) => actions.push(Lifecycle::Handshake(s.id.clone())),
                ("active", _) => actions.push(Lifecycle::Deliver(s.id.clone())),
                _ => {}
            }
            live.insert(s.id, entry);
        }
    }
    for action in actions {
        apply_lifecycle(shared, action).await;
    }
    Ok(())
}

/// Whether a topic can carry change events under the routing config: a routed topic, or one
/// the naming strategies make (`fhir.Patient`, `fhir.created`, `fhir.Patient.created`). Other
/// topics under the prefix (the processors' `fhir.alerts.sepsis`, retry and dead-letter
/// topics) carry other messages.
pub(super) fn is_input_topic(shared: &Shared, topic: &str) -> bool {
    if shared.routing.routes.iter().any(|r| r.topic == topic) {
        return true;
    }
    let Some(rest) = topic
        .strip_prefix(shared.routing.prefix.as_str())
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return false;
    };
    let is_action = |name: &str| {
        [Action::Created, Action::Updated, Action::Deleted]
            .iter()
            .any(|action| action.as_str() == name)
    };
    match rest.split_once('.') {
        None => flare_fhir::model::is_resource_type(rest) || is_action(rest),
        Some((resource_type, action)) => {
            flare_fhir::model::is_resource_type(resource_type) && is_action(action)
        }
    }
}

pub(super) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if let Err(e) = consume(&shared, &mut stop).await {
        // The in-memory state may be ahead of the cursor file; a restart resumes from the file.
        tracing::error!(error = %e, "subscription manager stopped; restart to resume");
    }
}

async fn consume(
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), DeliveryError> {
    let mut offsets = shared.cursor.input_offsets().await?;
    let mut topics: BTreeSet<String> = BTreeSet::new();
    let mut consumer: Option<Box<dyn Consumer>> = None;
    let refresh = Duration::from_millis(shared.config.topic_refresh_ms.max(10));
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let current: BTreeSet<String> = shared
            .log
            .topics()
            .await?
            .into_iter()
            .map(|t| t.name)
            .filter(|name| is_input_topic(shared, name))
            .collect();
        if current != topics || consumer.is_none() {
            topics = current;
            let names: Vec<String> = topics.iter().cloned().collect();
            let mut fresh = shared
                .log
                .consumer(GROUP, &names, StartFrom::Earliest)
                .await?;
            for ((topic, partition), next) in &offsets {
                if topics.contains(topic) {
                    fresh.seek(topic, *partition, *next).await?;
                }
            }
            consumer = Some(fresh);
        }
        let Some(active) = consumer.as_mut() else {
            continue;
        };
        let records = tokio::select! {
            records = active.poll(shared.config.batch_size.max(1), refresh) => records?,
            _ = stop.changed() => return Ok(()),
        };
        if records.is_empty() {
            continue;
        }
        process(shared, records, &mut offsets).await?;
    }
}

fn outbox_seq(record: &Record) -> Option<u64> {
    record.header_str(header::OUTBOX_SEQ)?.parse().ok()
}

async fn process(
    shared: &Arc<Shared>,
    mut records: Vec<Record>,
    offsets: &mut HashMap<(String, u32), u64>,
) -> Result<(), DeliveryError> {
    // Commit order across topics and partitions, as far as the records say.
    records.sort_by_key(|r| (outbox_seq(r).unwrap_or(u64::MAX), r.offset));
    let events: Vec<Option<ChangeEvent>> = records
        .iter()
        .map(
            |record| match ChangeEvent::from_json_bytes(&record.payload) {
                Ok(event) => Some(event),
                Err(e) => {
                    tracing::warn!(topic = %record.topic, offset = record.offset, error = %e,
                    "skipping a record that is not a change event");
                    None
                }
            },
        )
        .collect();
    let previous = previous_versions(shared, &events).await;
    let mut changes = Vec::new();
    let mut rows = Vec::new();
    let mut actions = Vec::new();
    let mut advanced: HashMap<(String, u32), u64> = HashMap::new();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    {
        let mut live = shared.live.lock();
        let mut index = shared.index.lock();
        for (position, record) in records.iter().enumerate() {
            let key = (record.topic.clone(), record.partition);
            if offsets.get(&key).is_some_and(|next| record.offset < *next) {
                continue;
            }
            let next = advanced.entry(key).or_insert(0);
            *next = (*next).max(record.offset + 1);
            let Some(event) = &events[position] else {
                continue;
            };
            let seq = outbox_seq(record).unwrap_or(0);
            if event.metadata.resource_type == "Subscription" {
                subscription_event(
                    shared,
                    &mut live,
                    &mut index,
                    event,
                    seq,
                    &mut changes,
                    &mut actions,
                );
                continue;
            }
            let input = MatchEvent {
                resource_type: &event.metadata.resource_type,
                interaction: interaction(event.metadata.action),
                current: event.data.as_ref(),
                previous: previous.get(&position),
                trigger_event: None,
            };
            let focus = format!(
                "{}/{}",
                event.metadata.resource_type, event.metadata.resource_id
            );
            for matched in index.matching(&input) {
                let id: &str = &matched;
                let Some(sub) = live.get_mut(id) else {
                    continue;
                };
                if !sub.counts() || (seq != 0 && seq <= sub.since_seq) {
                    continue;
                }
                let id = id.to_owned();
                sub.events_since_start += 1;
                touched.insert(id.clone());
                rows.push(EventRow {
                    subscription_id: id.clone(),
                    number: sub.events_since_start,
                    event_id: event.metadata.event_id.clone(),
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                    timestamp: event.metadata.timestamp.clone(),
                    focus: focus.clone(),
                    action: event.metadata.action.as_str().to_owned(),
                });
            }
        }
    }
    let advanced: Vec<((String, u32), u64)> = advanced.into_iter().collect();
    shared.cursor.apply(changes, rows, advanced.clone()).await?;
    for (key, next) in advanced {
        let entry = offsets.entry(key).or_insert(0);
        *entry = (*entry).max(next);
    }
    for action in actions {
        apply_lifecycle(shared, action).await;
    }
    if !touched.is_empty() {
        shared.committed.send_modify(|generation| *generation += 1);
    }
    let workers = shared.workers.lock();
    for id in touched {
        if let Some(handle) = workers.get(&id) {
            handle.wake();
        }
    }
    Ok(())
}

fn subscription_event(
    shared: &Shared,
    live: &mut HashMap<String, Live>,
    index: &mut SubscriptionIndex,
    event: &ChangeEvent,
    seq: u64,
    changes: &mut Vec<SubscriptionChange>,
    actions: &mut Vec<Lifecycle>,
) {
    let id = event.metadata.resource_id.clone();
    if event.metadata.action == Action::Deleted {
        live.remove(&id);
        index.remove(&id);
        changes.push(SubscriptionChange::Delete { id: id.clone() });
        actions.push(Lifecycle::Stop(id));
        return;
    }
    let Some(resource) = event.data.clone() else {
        tracing::warn!(subscription = %id, "Subscription event without inline data; ignored");
        return;
    };
    let previous = live.get(&id);
    // Changes committed while a subscription was not counting (e.g. `off`) stay unnumbered
    // even when the log hands them over after the change that turns it back on.
    let since_seq = match previous {
        Some(p) if p.counts() => p.since_seq,
        _ => seq,
    };
    let events_since_start = previous.map(|p| p.events_since_start).unwrap_or(0);
    let (spec, compiled) = index_subscription(shared, index, &id, &resource);
    let compiled = compiled.and_then(|()| match spec.as_deref() {
        Some(spec) => deliverable(shared, spec),
        None => Ok(()),
    });
    let entry = Live {
        resource: Arc::new(resource.clone()),
        spec,
        since_seq,
        events_since_start,
        indexed: compiled.is_ok(),
    };
    let status = entry.status().to_owned();
    let kind = entry.channel().map(|channel| channel.channel_type);
    changes.push(SubscriptionChange::Upsert {
        id: id.clone(),
        resource,
        since_seq,
    });
    live.insert(id.clone(), entry);
    let action = match (status.as_str(), compiled, kind) {
        ("requested" | "active", Err(reason), _) => Lifecycle::Fail(id, reason),
        ("requested", Ok(_), Some(ChannelType::Websocket)) => Lifecycle::Activate(id),
        ("active", Ok(_), Some(ChannelType::Websocket)) => Lifecycle::Stop(id),
        ("requested", Ok(_), Some(_)) => Lifecycle::Handshake(id),
        ("active", Ok(_), Some(_)) => Lifecycle::Deliver(id),
        _ => Lifecycle::Stop(id),
    };
    actions.push(action);
}

/// What the runtime itself must refuse beyond what parsing checks: a channel it has no
/// sender for, and a Kafka channel writing to a topic the manager reads (a notification would
/// come back as input).
fn deliverable(shared: &Shared, spec: &SubscriptionSpec) -> Result<(), String> {
    let channel = &spec.channel;
    match channel.channel_type {
        ChannelType::Email if shared.mailer.is_none() => Err(
            "email notifications need an SMTP server: configure [subscriptions.smtp]".to_owned(),
        ),
        ChannelType::Kafka => {
            let topic = super::channels::kafka_topic(channel.endpoint.as_deref().unwrap_or(""));
            if is_input_topic(shared, topic) {
                Err(format!(
                    "the kafka topic {topic} carries change events; name another topic for notifications"
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Parses a Subscription and (re)places it in the matching index. The spec is `None` when
/// the resource does not parse; `Err` is the reason it cannot be honoured. Subscriptions that
/// are `off` leave the index.
fn index_subscription(
    shared: &Shared,
    index: &mut SubscriptionIndex,
    id: &str,
    resource: &Value,
) -> (Option<Arc<SubscriptionSpec>>, Result<(), String>) {
    index.remove(id);
    let spec = match crate::parse_subscription(resource, shared.fhir.registry(), index.topics()) {
        Ok(spec) => Arc::new(spec),
        Err(issues) => {
            let reason = issues
                .iter()
                .map(|issue| issue.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            return (None, Err(reason));
        }
    };
    let status = resource.get("status").and_then(Value::as_str).unwrap_or("");
    if !matches!(status, "requested" | "active" | "error") {
        return (Some(spec), Err(format!("status {status}")));
    }
    let indexed = index.insert_with_id(id, &spec).map_err(|e| e.to_string());
    (Some(spec), indexed)
}

fn interaction(action: Action) -> Interaction {
    match action {
        Action::Created => Interaction::Create,
        Action::Updated => Interaction::Update,
        Action::Deleted => Interaction::Delete,
    }
}

/// The versions before updates and deletes, where matching needs them: deletes always (their
/// filters are evaluated on what was deleted), updates when a topic on the type compares
/// previous and current, and classic criteria (a meta-only update notifies nobody).
async fn previous_versions(
    shared: &Shared,
    events: &[Option<ChangeEvent>],
) -> HashMap<usize, Value> {
    let wanted: Vec<(usize, String, String, u64)> = {
        let index = shared.index.lock();
        events
            .iter()
            .enumerate()
            .filter_map(|(position, event)| {
                let event = event.as_ref()?;
                let m = &event.metadata;
                let version: u64 = m.version_id.parse().ok()?;
                let needed = match m.action {
                    Action::Created => false,
                    Action::Deleted => true,
                    Action::Updated => !index.is_empty(),
                };
                (needed && version > 1 && m.resource_type != "Subscription").then(|| {
                    (
                        position,
                        m.resource_type.clone(),
                        m.resource_id.clone(),
                        version - 1,
                    )
                })
            })
            .collect()
    };
    let mut found = HashMap::new();
    for (position, resource_type, id, version) in wanted {
        if let Ok(stored) = shared
            .fhir
            .vread_stored(&resource_type, &id, &version.to_string())
            .await
            && let Some(body) = stored.body.as_deref()
            && let Ok(value) = serde_json::from_str(body)
        {
            found.insert(position, value);
        }
    }
    found
}

async fn apply_lifecycle(shared: &Arc<Shared>, action: Lifecycle) {
    match action {
        Lifecycle::Stop(id) => {
            if let Some(handle) = shared.workers.lock().remove(&id) {
                handle.stop();
            }
        }
        Lifecycle::Handshake(id) => {
            let handle = worker::spawn(shared.clone(), id.clone(), Mode::Handshake);
            if let Some(old) = shared.workers.lock().insert(id, handle) {
                old.stop();
            }
        }
        Lifecycle::Deliver(id) => {
            let mut workers = shared.workers.lock();
            match workers.get(&id) {
                Some(existing) if !existing.is_finished() => existing.wake(),
                _ => {
                    let handle = worker::spawn(shared.clone(), id.clone(), Mode::Deliver);
                    workers.insert(id, handle);
                }
            }
        }
        Lifecycle::Activate(id) => {
            let shared = shared.clone();
            tokio::spawn(async move { worker::write_status(&shared, &id, "active", None).await });
        }
        Lifecycle::Fail(id, reason) => {
            if let Some(handle) = shared.workers.lock().remove(&id) {
                handle.stop();
            }
            let shared = shared.clone();
            tokio::spawn(async move {
                worker::write_status(&shared, &id, "error", Some(&reason)).await
            });
        }
    }
}
