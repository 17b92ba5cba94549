//! The `qsofa` processor end to end through the embedded log, with state checkpointing: how
//! fast it catches up on a backlog, and how long an alert takes at a steady 1,000
//! observations per second. `cargo bench -p flare-processors --bench qsofa_e2e` prints a table.
//!
//! Input is vital-sign change events as the relay appends them (`fhir.observation.vitals`,
//! keyed by patient, the `ObservationCreated` envelope with the resource inline), on the
//! embedded log with its default durability (fsync per append). The processor is the built-in
//! one (`spawn_builtin("qsofa")`) with the default checkpoint policy (every 1,000 records or
//! second) on the embedded SQLite state store; its alerts are written through the commit path
//! (a SQLite store file with `synchronous=FULL`, and the relay) and published on
//! `fhir.alerts.sepsis`.
//!
//! - *Backlog*: all observations are appended before the processor starts; the rate is
//!   observations over the time until its checkpoint covers all of them.
//! - *Paced*: observations are appended at 1,000/s (what is due each millisecond, in one
//!   append, as the relay's group commit does); a reader of `fhir.alerts.sepsis` stamps each
//!   `raised` alert on arrival. Latency runs from the moment the append of the observation that
//!   completed the episode's evidence began to that arrival: the log append, the processor,
//!   the RiskAssessment and Flag writes and the alert's own durable append are all inside it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use common::{checkpointed, vital};
use flare_events::{Action, ChangeEvent, EventMetadata, partition_key};
use flare_log::{EmbeddedLog, EmbeddedLogConfig, EventLog, NewRecord, StartFrom};
use flare_processors::{
    RuntimeOptions, StateStore,
    builtin::{BuiltinDeps, spawn_builtin},
    state::embedded::SqliteStateStore,
};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::Value;

const TOPIC: &str = "fhir.observation.vitals";
const ALERTS: &str = "fhir.alerts.sepsis";
const QUARTER_HOUR_MS: i64 = 15 * 60_000;
const START_MS: i64 = 1_773_446_400_000; // 2026-03-14T00:00:00Z

/// One set of vitals (RR, SBP, GCS) for `patient` at `at_ms`, abnormal when `septic`.
fn vital_set(patient: usize, set: usize, at_ms: i64, septic: bool) -> [Value; 3] {
    let (rr, sbp, gcs) = if septic { (26, 92, 13) } else { (16, 122, 15) };
    let at = flare_clinical::Timestamp::from_millis(at_ms).to_rfc3339();
    let patient = format!("pt-{patient:06}");
    let id = |kind: &str| format!("{kind}-{patient}-{set:04}");
    [
        vital(&id("rr"), &patient, "9279-1", rr, "/min", &at),
        vital(&id("sbp"), &patient, "8480-6", sbp, "mm[Hg]", &at),
        vital(&id("gcs"), &patient, "9269-2", gcs, "{score}", &at),
    ]
}

/// `sets` sets for each of `patients` patients, interleaved in time order as a partition
/// delivers them; `septic_from(patient)` is the set from which a patient is septic, if ever.
fn population(
    patients: usize,
    sets: usize,
    septic_from: impl Fn(usize) -> Option<usize>,
) -> Vec<Value> {
    let mut observations = Vec::with_capacity(patients * sets * 3);
    for set in 0..sets {
        for patient in 0..patients {
            let septic = septic_from(patient).is_some_and(|from| set >= from);
            let at = START_MS + set as i64 * QUARTER_HOUR_MS;
            observations.extend(vital_set(patient, set, at, septic));
        }
    }
    observations
}

/// The change event the relay would append for a new Observation.
fn change_event(mut observation: Value, sequence: usize) -> NewRecord {
    let id = observation["id"].as_str().unwrap_or_default().to_owned();
    observation["meta"] =
        serde_json::json!({"versionId": "1", "lastUpdated": "2026-03-14T00:00:00Z"});
    let key = partition_key("Observation", &id, Some(&observation));
    let event = ChangeEvent::new(
        EventMetadata {
            event_id: format!("bench-{sequence}"),
            timestamp: "2026-03-14T00:00:00Z".into(),
            source: "flare".into(),
            correlation_id: format!("bench-{sequence}"),
            resource_type: "Observation".into(),
            resource_id: id,
            version_id: "1".into(),
            action: Action::Created,
        },
        Some(observation),
    );
    NewRecord {
        key: Some(key.into_bytes()),
        headers: event
            .headers(None)
            .into_iter()
            .map(|(key, value)| flare_log::Header::new(&key, value))
            .collect(),
        payload: event.to_json_bytes(),
        timestamp_ms: None,
    }
}

/// The log, state store, commit path and processor of one measurement.
struct Pipeline {
    log: Arc<dyn EventLog>,
    state: Arc<dyn StateStore>,
    stop_relay: tokio::sync::watch::Sender<bool>,
    relay: tokio::task::JoinHandle<()>,
    fhir: flare_service::Fhir,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    async fn open() -> Self {
        use flare_store::{
            Store,
            sqlite::{SqliteConfig, SqliteStore},
        };
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn EventLog> = Arc::new(
            EmbeddedLog::open(EmbeddedLogConfig::in_dir(dir.path().join("log")))
                .await
                .unwrap(),
        );
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(SqliteConfig::file(dir.path().join("flare.db"))).unwrap());
        let fhir = flare_service::Fhir::new(
            store.clone(),
            Arc::new(flare_search::Registry::r4()),
            flare_service::FhirConfig::default(),
        );
        let relay = flare_events::Relay::new(store, log.clone());
        let (stop_relay, stopped) = tokio::sync::watch::channel(false);
        let relay = tokio::spawn(relay.run(stopped));
        let state: Arc<dyn StateStore> = Arc::new(
            SqliteStateStore::open(&dir.path().join("processors.db"))
                .await
                .unwrap(),
        );
        Self {
            log,
            state,
            stop_relay,
            relay,
            fhir,
            _dir: dir,
        }
    }

    async fn spawn_qsofa(&self) -> flare_processors::ProcessorHandle {
        let deps = BuiltinDeps {
            fhir: self.fhir.clone(),
            log: self.log.clone(),
            state: self.state.clone(),
            options: RuntimeOptions::default(),
        };
        spawn_builtin("qsofa", &deps).await.unwrap().handle
    }

    async fn close(self) {
        let _ = self.stop_relay.send(true);
        let _ = self.relay.await;
    }
}

struct BacklogResult {
    observations: usize,
    per_second: f64,
    checkpoints: u64,
    alerts_out: u64,
    process_p99_us: u64,
}

async fn backlog(patients: usize, sets: usize) -> BacklogResult {
    let pipeline = Pipeline::open().await;
    let septic_from = |patient: usize| patient.is_multiple_of(10).then_some(sets / 3);
    let records: Vec<NewRecord> = population(patients, sets, septic_from)
        .into_iter()
        .enumerate()
        .map(|(sequence, observation)| change_event(observation, sequence))
        .collect();
    let observations = records.len();
    for chunk in records.chunks(2_000) {
        pipeline.log.append(TOPIC, chunk.to_vec()).await.unwrap();
    }
    let started = Instant::now();
    let handle = pipeline.spawn_qsofa().await;
    while checkpointed(&pipeline.state, "qsofa", TOPIC).await < observations as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();
    pipeline.close().await;
    BacklogResult {
        observations,
        per_second: observations as f64 / elapsed.as_secs_f64(),
        checkpoints: metrics.checkpoints.load(Ordering::Relaxed),
        alerts_out: metrics.records_out.load(Ordering::Relaxed),
        process_p99_us: metrics.latency().p99_us,
    }
}

struct PacedResult {
    observations: usize,
    achieved_per_second: f64,
    alerts: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn paced(
    patients: usize,
    sets: usize,
    rate: f64,
    septic_from: impl Fn(usize) -> Option<usize>,
) -> PacedResult {
    let pipeline = Pipeline::open().await;
    let observations = population(patients, sets, septic_from);
    let total = observations.len();
    let handle = pipeline.spawn_qsofa().await;
    // When the append carrying each observation began, by Observation id.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let latencies = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));

    let mut alerts_consumer = pipeline
        .log
        .consumer("bench-alerts", &[ALERTS.to_owned()], StartFrom::Earliest)
        .await
        .unwrap();
    let (done, mut finished) = tokio::sync::watch::channel(false);
    let reader = {
        let (sent, latencies) = (sent.clone(), latencies.clone());
        tokio::spawn(async move {
            loop {
                let records = tokio::select! {
                    polled = alerts_consumer.poll(500, Duration::from_millis(100)) => polled.unwrap(),
                    _ = finished.changed() => break,
                };
                let arrived = Instant::now();
                for record in records {
                    let Ok(alert) = serde_json::from_slice::<Value>(&record.payload) else {
                        continue;
                    };
                    if alert["action"] != "raised" {
                        continue;
                    }
                    let sent = sent.lock();
                    let trigger = alert["basis"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|basis| basis["reference"].as_str())
                        .filter_map(|reference| {
                            sent.get(reference.trim_start_matches("Observation/"))
                        })
                        .max();
                    if let Some(trigger) = trigger {
                        let micros = arrived.duration_since(*trigger).as_micros();
                        latencies
                            .lock()
                            .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX).max(1));
                    }
                }
            }
        })
    };

    let mut pending = observations.into_iter().enumerate().peekable();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut appended = 0;
    while pending.peek().is_some() {
        ticks.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
        if due <= appended {
            continue;
        }
        let now = Instant::now();
        let mut batch = Vec::with_capacity(due - appended);
        {
            let mut sent = sent.lock();
            for (sequence, observation) in pending.by_ref().take(due - appended) {
                if let Some(id) = observation["id"].as_str() {
                    sent.insert(id.to_owned(), now);
                }
                batch.push(change_event(observation, sequence));
            }
        }
        appended += batch.len();
        // As the relay does: the store's commit already made the events durable.
        pipeline.log.append_unsynced(TOPIC, batch).await.unwrap();
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    while checkpointed(&pipeline.state, "qsofa", TOPIC).await < total as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the reader see the last alerts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = done.send(true);
    let _ = reader.await;
    handle.shutdown().await.unwrap();
    pipeline.close().await;
    let histogram = latencies.lock();
    let ms = |micros: u64| micros as f64 / 1000.0;
    PacedResult {
        observations: total,
        achieved_per_second: achieved,
        alerts: histogram.len(),
        p50_ms: ms(histogram.value_at_quantile(0.5)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // 2,000 patients x 34 sets x 3 vitals; 10% septic for the last two thirds.
        let backlog = backlog(2_000, 34).await;
        // 1,000 patients x 7 sets x 3 vitals at 1,000/s (a set every 3 s): 10% turn septic,
        // spread over sets 1 to 6; then a burst, every second patient turning septic in set 2
        // (500 episodes in 3 s, each raised and then updated from score 2 to 3).
        let spread = paced(1_000, 7, 1_000.0, |patient| {
            patient.is_multiple_of(10).then_some(1 + (patient / 10) % 6)
        })
        .await;
        let burst = paced(1_000, 7, 1_000.0, |patient| patient.is_multiple_of(2).then_some(2)).await;
        println!(
            "qsofa processor end to end (embedded log with fsync, SQLite state and store, default checkpoints)"
        );
        println!("{:<52} {:>14}", "measure", "value");
        let rows = [
            (
                format!("backlog of {} observations, observations/s", backlog.observations),
                format!("{:.0}", backlog.per_second),
            ),
            (
                "backlog: checkpoints / alert messages".to_owned(),
                format!("{} / {}", backlog.checkpoints, backlog.alerts_out),
            ),
            (
                "backlog: time in process() per record, p99".to_owned(),
                format!("{} us", backlog.process_p99_us),
            ),
            (
                format!(
                    "paced 1,000/s: {} observations, achieved/s",
                    spread.observations
                ),
                format!(
                    "{:.0} / {:.0}",
                    spread.achieved_per_second, burst.achieved_per_second
                ),
            ),
        ];
        let mut rows = rows.to_vec();
        for (label, result) in [("10% septic, spread", &spread), ("burst, 50% at once", &burst)] {
            rows.push((
                format!("{label}: raised alerts measured"),
                result.alerts.to_string(),
            ));
            rows.push((
                format!("{label}: event -> alert p50 / p99 / max"),
                format!(
                    "{:.1} / {:.1} / {:.1} ms",
                    result.p50_ms, result.p99_ms, result.max_ms
                ),
            ));
        }
        for (measure, value) in rows {
            println!("{measure:<52} {value:>14}");
        }
    });
}
