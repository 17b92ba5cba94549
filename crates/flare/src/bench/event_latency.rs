//! Measurement 5: from the start of a write request to its change event seen by a consumer in
//! another process. Writes go out at a fixed rate (open loop: a slow answer does not delay the
//! next write); a consumer reads the topic through a read-only view of the server's log
//! directory and matches records to writes by their `correlationId` header.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use flare_log::{EmbeddedLog, EventLog, StartFrom};
use parking_lot::Mutex;
use tokio::time::MissedTickBehavior;

use super::{
    data,
    report::{Latencies, Table, grouped, met, millis},
};

pub const TARGET_P99: Duration = Duration::from_millis(5);
pub const WRITES_PER_SECOND: u64 = 1_000;
/// Patient writes land on this topic under the default (resource) naming strategy.
const TOPIC: &str = "fhir.Patient";
const CORRELATION_HEADER: &str = "correlationId";

#[derive(Debug)]
pub struct LatencyOutcome {
    pub writes: u64,
    pub failures: u64,
    pub elapsed: Duration,
    /// Request start → HTTP answer.
    pub acknowledged: Latencies,
    /// Request start → record returned by the consumer's poll.
    pub visible: Latencies,
    pub never_seen: u64,
}

impl LatencyOutcome {
    pub fn meets_target(&self) -> bool {
        self.visible.count() > 0
            && self.never_seen == 0
            && self.failures == 0
            && self.visible.quantile(0.99) < TARGET_P99
    }
}

/// Writes Patients at [`WRITES_PER_SECOND`] for `duration` while consuming their events.
pub async fn run(
    client: &reqwest::Client,
    fhir_base: &str,
    log_dir: &Path,
    duration: Duration,
) -> anyhow::Result<LatencyOutcome> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    // The topic exists once a first Patient has been relayed.
    post_patient(client, fhir_base, &format!("{run_id}-warmup"), 0).await?;
    let reader = EmbeddedLog::open_reader(log_dir)
        .await
        .context("cannot open the server's log read-only")?;
    let waited = Instant::now();
    while !reader
        .topics()
        .await?
        .iter()
        .any(|topic| topic.name == TOPIC)
    {
        if waited.elapsed() > Duration::from_secs(10) {
            bail!(
                "topic {TOPIC} did not appear in {} within 10 s of a Patient write",
                log_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut consumer = reader
        .consumer(
            &format!("bench-{run_id}"),
            &[TOPIC.to_owned()],
            StartFrom::Latest,
        )
        .await?;

    let pending: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let visible = Arc::new(Mutex::new(Latencies::new()));
    let writing = Arc::new(AtomicBool::new(true));
    let watcher = {
        let pending = pending.clone();
        let visible = visible.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut drained_since: Option<Instant> = None;
            loop {
                let records = consumer.poll(1024, Duration::from_millis(20)).await?;
                let seen = Instant::now();
                for record in &records {
                    let sent = record
                        .header_str(CORRELATION_HEADER)
                        .and_then(|id| pending.lock().remove(id));
                    if let Some(sent) = sent {
                        visible.lock().record(seen - sent);
                    }
                }
                if writing.load(Ordering::Relaxed) {
                    continue;
                }
                // After the last write: stop when everything arrived or 5 s passed.
                let since = *drained_since.get_or_insert(seen);
                if pending.lock().is_empty() || since.elapsed() > Duration::from_secs(5) {
                    return anyhow::Ok(());
                }
            }
        })
    };

    let acknowledged = Arc::new(Mutex::new(Latencies::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / WRITES_PER_SECOND));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut writes = 0u64;
    let mut requests = Vec::new();
    while started.elapsed() < duration {
        ticks.tick().await;
        writes += 1;
        let correlation_id = format!("{run_id}-{writes}");
        let client = client.clone();
        let fhir_base = fhir_base.to_owned();
        let pending = pending.clone();
        let acknowledged = acknowledged.clone();
        let failures = failures.clone();
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            pending.lock().insert(correlation_id.clone(), sent);
            match post_patient(&client, &fhir_base, &correlation_id, writes as usize).await {
                Ok(()) => acknowledged.lock().record(sent.elapsed()),
                Err(_) => {
                    pending.lock().remove(&correlation_id);
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let elapsed = started.elapsed();
    for request in requests {
        let _ = request.await;
    }
    writing.store(false, Ordering::Relaxed);
    watcher.await.context("the consumer task failed")??;
    let never_seen = pending.lock().len() as u64;
    let acknowledged = acknowledged.lock().clone();
    let visible = visible.lock().clone();
    Ok(LatencyOutcome {
        writes,
        failures: failures.load(Ordering::Relaxed),
        elapsed,
        acknowledged,
        visible,
        never_seen,
    })
}

async fn post_patient(
    client: &reqwest::Client,
    fhir_base: &str,
    correlation_id: &str,
    number: usize,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&data::patient(number))?;
    let response = client
        .post(format!("{fhir_base}/Patient"))
        .header("content-type", "application/fhir+json")
        .header("x-correlation-id", correlation_id)
        .header("prefer", "return=minimal")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    response.bytes().await?;
    if status.as_u16() != 201 {
        bail!("creating a Patient answered {status}");
    }
    Ok(())
}

pub fn table(outcomes: &[(&str, &LatencyOutcome)]) -> Table {
    let mut table = Table::new(
        format!(
            "Write -> event visible to a consumer in another process ({} Patient creates/s over HTTP, consumer on {TOPIC} via EmbeddedLog::open_reader); target p99 < {}",
            grouped(WRITES_PER_SECOND),
            millis(TARGET_P99)
        ),
        &[
            "durability",
            "measure",
            "writes",
            "achieved/s",
            "p50",
            "p99",
            "max",
            "errors",
            "never seen",
            "target met",
        ],
    )
    .with_text_columns(2);
    for (policy, outcome) in outcomes {
        let achieved = format!(
            "{:.0}",
            outcome.writes as f64 / outcome.elapsed.as_secs_f64().max(1e-9)
        );
        table.row(vec![
            (*policy).to_owned(),
            "request start -> HTTP 201".into(),
            grouped(outcome.writes),
            achieved.clone(),
            outcome.acknowledged.p50(),
            outcome.acknowledged.p99(),
            outcome.acknowledged.max(),
            grouped(outcome.failures),
            "-".into(),
            "-".into(),
        ]);
        table.row(vec![
            (*policy).to_owned(),
            "request start -> event polled".into(),
            grouped(outcome.writes),
            achieved,
            outcome.visible.p50(),
            outcome.visible.p99(),
            outcome.visible.max(),
            grouped(outcome.failures),
            grouped(outcome.never_seen),
            met(outcome.meets_target()),
        ]);
    }
    table
}
