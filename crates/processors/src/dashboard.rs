//! The dashboard's live feed: what the processors produce, as one numbered stream.
//!
//! A client first gets a `snapshot` (immunization counts by vaccine and per day, the sepsis
//! alerts) carrying the sequence number it reflects, then `delta`s numbered one by one. Deltas
//! carry absolute values (a vaccine's new count, an alert's new state), so applying one twice
//! changes nothing; a client that reconnects with `since=<last seq>` gets the deltas it missed
//! from a bounded buffer, or a new snapshot when they are gone. `web/src/protocol.ts` is the
//! other side of this contract.
//!
//! Inputs: the immunization processor's count changes ([`ImmunizationView::subscribe`]) and the
//! alert messages the qSOFA processor publishes on [`ALERTS_TOPIC`], read from the log from the
//! beginning at start (the log, not the store, is where changes are learnt).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use flare_clinical::{
    Timestamp,
    alerts::ALERTS_TOPIC,
    immunizations::{Bucket, CountDelta, CountScope},
};
use flare_log::{EventLog, LogError, StartFrom};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::builtin::immunizations::ImmunizationView;

/// Deltas kept for clients that reconnect.
const REPLAY_BUFFER: usize = 10_000;
/// Days of the per-day series sent in a snapshot.
const SNAPSHOT_DAYS: i64 = 90;

/// The feed: shared state plus a broadcast of numbered deltas.
pub struct DashboardFeed {
    state: Mutex<FeedState>,
    updates: broadcast::Sender<Arc<str>>,
}

impl std::fmt::Debug for DashboardFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardFeed")
            .field("seq", &self.state.lock().seq)
            .finish()
    }
}

#[derive(Default)]
struct FeedState {
    seq: u64,
    vaccines: BTreeMap<String, Vaccine>,
    /// Count per (vaccine, day start), to turn per-vaccine day counts into day totals.
    vaccine_days: HashMap<(String, Timestamp), u64>,
    days: BTreeMap<Timestamp, u64>,
    alerts: BTreeMap<String, Value>,
    recent: VecDeque<(u64, Arc<str>)>,
}

/// What one record changed for one vaccine: its new total, its day's new total.
#[derive(Default)]
struct VaccineChange {
    total: Option<u64>,
    day: Option<(Timestamp, u64)>,
}

#[derive(Clone)]
struct Vaccine {
    display: String,
    count: u64,
}

/// What a connecting client receives first, and the stream to follow.
#[derive(Debug)]
pub struct Connection {
    /// Frames to send before anything from `updates`: a snapshot, or the missed deltas.
    pub initial: Vec<Arc<str>>,
    /// Every delta after `initial`, in order. A receiver that lags must reconnect.
    pub updates: broadcast::Receiver<Arc<str>>,
}

impl Default for DashboardFeed {
    fn default() -> Self {
        Self {
            state: Mutex::new(FeedState::default()),
            updates: broadcast::channel(4096).0,
        }
    }
}

impl DashboardFeed {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The current sequence number.
    pub fn seq(&self) -> u64 {
        self.state.lock().seq
    }

    /// Starts a client: the snapshot (or, when `since` is recent enough, only what came after
    /// it) and the live stream, taken under one lock so nothing falls between them.
    pub fn connect(&self, since: Option<u64>) -> Connection {
        let state = self.state.lock();
        let updates = self.updates.subscribe();
        let missed = since.and_then(|since| state.deltas_after(since));
        let initial = missed.unwrap_or_else(|| vec![Arc::from(state.snapshot().to_string())]);
        Connection { initial, updates }
    }

    /// The alerts, newest first (for `GET /api/sepsis/alerts`).
    pub fn alerts(&self, active_only: bool) -> Vec<Value> {
        let state = self.state.lock();
        let mut alerts: Vec<Value> = state
            .alerts
            .values()
            .filter(|alert| !active_only || alert["status"] == "active")
            .cloned()
            .collect();
        alerts.sort_by(|a, b| {
            b["updatedAt"]
                .as_str()
                .unwrap_or_default()
                .cmp(a["updatedAt"].as_str().unwrap_or_default())
        });
        alerts
    }

    /// Starts from the immunization processor's current counts.
    pub fn seed_immunizations(&self, view: &ImmunizationView) {
        let mut state = self.state.lock();
        for total in view.totals() {
            let display = total.display.unwrap_or_else(|| total.vaccine.clone());
            state.vaccines.insert(
                total.vaccine,
                Vaccine {
                    display,
                    count: total.count,
                },
            );
        }
        let everything = (
            Timestamp::from_millis(i64::MIN / 2),
            Timestamp::from_millis(i64::MAX / 2),
        );
        for point in view.series(everything.0, everything.1, Bucket::Day) {
            state
                .vaccine_days
                .insert((point.vaccine, point.start), point.count);
            *state.days.entry(point.start).or_default() += point.count;
        }
    }

    /// Applies the count changes of one processed record.
    pub fn apply_immunization_deltas(&self, deltas: &[CountDelta], view: &ImmunizationView) {
        let mut state = self.state.lock();
        // One delta message per vaccine: its new total, and its day's new total.
        let mut by_vaccine: BTreeMap<&str, VaccineChange> = BTreeMap::new();
        for delta in deltas {
            let entry = by_vaccine.entry(delta.vaccine.as_str()).or_default();
            match delta.scope {
                CountScope::Total => entry.total = Some(delta.count),
                CountScope::Day(day) => {
                    let previous = state
                        .vaccine_days
                        .insert((delta.vaccine.clone(), day), delta.count)
                        .unwrap_or(0);
                    let total = state.days.entry(day).or_default();
                    *total = (*total + delta.count).saturating_sub(previous);
                    entry.day = Some((day, *total));
                }
                CountScope::Hour(_) => {}
            }
        }
        for (code, VaccineChange { total: count, day }) in by_vaccine {
            let vaccine = match count {
                Some(count) => {
                    let display = state
                        .vaccines
                        .get(code)
                        .map(|v| v.display.clone())
                        .or_else(|| display_of(view, code))
                        .unwrap_or_else(|| code.to_string());
                    if count == 0 {
                        state.vaccines.remove(code);
                    } else {
                        state.vaccines.insert(
                            code.to_string(),
                            Vaccine {
                                display: display.clone(),
                                count,
                            },
                        );
                    }
                    json!({"code": code, "display": display, "count": count})
                }
                None => match state.vaccines.get(code) {
                    Some(v) => json!({"code": code, "display": v.display, "count": v.count}),
                    None => json!({"code": code, "display": code, "count": 0}),
                },
            };
            let mut immunization = json!({ "vaccine": vaccine });
            if let Some((day, count)) = day {
                immunization["day"] = json!({"day": day_text(day), "count": count});
            }
            self.push(&mut state, json!({ "immunization": immunization }));
        }
    }

    /// Applies one message from the alerts topic (see `flare_clinical::alerts::alert_message`).
    pub fn apply_alert_message(&self, message: &Value, received_at: Timestamp) {
        let Some(id) = message["episodeId"].as_str() else {
            return;
        };
        let mut state = self.state.lock();
        let raised_at = state
            .alerts
            .get(id)
            .and_then(|a| a["raisedAt"].as_str().map(str::to_owned))
            .unwrap_or_else(|| received_at.to_rfc3339());
        let mut criteria: Vec<&str> = message["basis"]
            .as_array()
            .map(|basis| {
                basis
                    .iter()
                    .filter_map(|b| b["criterion"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        criteria.sort_unstable();
        criteria.dedup();
        let alert = json!({
            "id": id,
            "patient": message["patient"],
            "score": message["score"],
            "criteria": criteria,
            "status": if message["active"] == true { "active" } else { "resolved" },
            "raisedAt": raised_at,
            "updatedAt": received_at.to_rfc3339(),
            "windowStart": message["onset"],
            "windowEnd": message["end"],
            "riskAssessment": message["riskAssessment"],
        });
        state.alerts.insert(id.to_string(), alert.clone());
        self.push(&mut state, json!({ "alert": alert }));
    }

    fn push(&self, state: &mut FeedState, mut delta: Value) {
        state.seq += 1;
        delta["type"] = json!("delta");
        delta["seq"] = json!(state.seq);
        let frame: Arc<str> = Arc::from(delta.to_string());
        if state.recent.len() == REPLAY_BUFFER {
            state.recent.pop_front();
        }
        state.recent.push_back((state.seq, frame.clone()));
        // No receivers is normal: no dashboard is open.
        let _ = self.updates.send(frame);
    }
}

impl FeedState {
    fn snapshot(&self) -> Value {
        let cutoff = self
            .days
            .keys()
            .next_back()
            .map(|last| last.saturating_sub_millis(SNAPSHOT_DAYS * 86_400_000));
        json!({
            "type": "snapshot",
            "seq": self.seq,
            "immunizations": {
                "byVaccine": self.vaccines.iter().map(|(code, v)| json!({"code": code, "display": v.display, "count": v.count})).collect::<Vec<_>>(),
                "daily": self.days.iter()
                    .filter(|(day, _)| cutoff.is_none_or(|cutoff| **day >= cutoff))
                    .map(|(day, count)| json!({"day": day_text(*day), "count": count}))
                    .collect::<Vec<_>>(),
            },
            "alerts": self.alerts.values().collect::<Vec<_>>(),
        })
    }

    /// The deltas after `since`, if the buffer still holds all of them.
    fn deltas_after(&self, since: u64) -> Option<Vec<Arc<str>>> {
        if since > self.seq {
            return None; // from another server run: start over
        }
        if since == self.seq {
            return Some(Vec::new());
        }
        let oldest = self.recent.front().map(|(seq, _)| *seq)?;
        if since + 1 < oldest {
            return None;
        }
        Some(
            self.recent
                .iter()
                .filter(|(seq, _)| *seq > since)
                .map(|(_, frame)| frame.clone())
                .collect(),
        )
    }
}

fn display_of(view: &ImmunizationView, code: &str) -> Option<String> {
    view.totals()
        .into_iter()
        .find(|total| total.vaccine == code)
        .and_then(|total| total.display)
}

fn day_text(day: Timestamp) -> String {
    day.to_rfc3339().chars().take(10).collect()
}

/// Keeps `feed` current until `stop` turns true: count changes from `immunizations` (when that
/// processor runs) and alerts read from the log's alerts topic from its beginning.
pub async fn run_feed(
    feed: Arc<DashboardFeed>,
    log: Arc<dyn EventLog>,
    immunizations: Option<Arc<ImmunizationView>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), LogError> {
    if let Some(view) = &immunizations {
        feed.seed_immunizations(view);
        let mut counts = view.subscribe();
        let feed = feed.clone();
        let view = view.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    received = counts.recv() => match received {
                        Ok(deltas) => feed.apply_immunization_deltas(&deltas, &view),
                        // Missed changes: the totals are absolute, so re-seeding catches up.
                        Err(broadcast::error::RecvError::Lagged(_)) => feed.seed_immunizations(&view),
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
    }
    log.ensure_topic(ALERTS_TOPIC, 1).await?;
    // A private reader: the dashboard rebuilds its alert list from the topic at every start,
    // so it needs no committed offsets.
    let group = format!("flare-dashboard-{}", uuid::Uuid::new_v4());
    let mut consumer = log
        .consumer(&group, &[ALERTS_TOPIC.to_string()], StartFrom::Earliest)
        .await?;
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            polled = consumer.poll(256, Duration::from_secs(1)) => {
                for record in polled? {
                    if let Ok(message) = serde_json::from_slice::<Value>(&record.payload) {
                        feed.apply_alert_message(&message, Timestamp::from_millis(record.timestamp_ms));
                    }
                }
            }
        }
    }
}
