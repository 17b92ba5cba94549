//! Write -> event on Kafka through the outbox relay: Patient creates through the commit path
//! (`flare-service` on a SQLite store, fsync on) at a fixed rate, relayed to a local nisshi
//! broker, and seen by a Kafka consumer in its own group; p50/p99 of "create called" -> "record
//! polled". No HTTP in the loop: `flare bench --only latency` measures the HTTP share.
//!
//! Run once: `cargo bench -p flare-kafka --bench relay_latency`
//! (`FLARE_BENCH_SECONDS` sets the duration, default 20; `FLARE_BENCH_RATE` the writes per
//! second, default 1,000; `FLARE_BENCH_FETCH_WAIT_MS` the consumer's `fetch.wait.max.ms`).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use flare_events::Relay;
use flare_kafka::{KafkaLog, test_broker::TestBroker};
use flare_log::{EventLog, StartFrom, conformance::unique};
use flare_search::Registry;
use flare_service::{Fhir, FhirConfig, RequestContext};
use flare_store::{
    Store,
    sqlite::{SqliteConfig, SqliteStore},
};
use parking_lot::Mutex;
use serde_json::json;
use tokio::time::MissedTickBehavior;

const TARGET_P99: Duration = Duration::from_millis(50);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let seconds = env_number("FLARE_BENCH_SECONDS", 20);
    let rate = env_number("FLARE_BENCH_RATE", 1_000).max(1);
    let Some(broker) = TestBroker::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(SqliteConfig::file(dir.path().join("flare.db"))).unwrap());
    let mut fhir_config = FhirConfig::default();
    // A topic of this run's own, so that earlier runs' events do not count.
    fhir_config.events.prefix = unique("bench");
    let topic = format!("{}.Patient", fhir_config.events.prefix);
    let fhir = Fhir::new(store.clone(), Arc::new(Registry::r4()), fhir_config);
    let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(broker.config()).await.unwrap());
    log.ensure_topic(&topic, 4).await.unwrap();
    let (stop_relay, relay_stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(Relay::new(store, log.clone()).run(relay_stopped));

    // The consumer's fetch.wait.max.ms (Flare's default 100): how long the broker may hold a
    // fetch that finds nothing new. A broker that answers only when it expires adds up to this
    // much to every event's latency.
    let mut witness_config = broker.config();
    if let Ok(wait) = std::env::var("FLARE_BENCH_FETCH_WAIT_MS") {
        witness_config
            .properties
            .insert("fetch.wait.max.ms".into(), wait);
    }
    let fetch_wait = witness_config
        .properties
        .get("fetch.wait.max.ms")
        .cloned()
        .unwrap_or_else(|| "100".into());
    let witness = KafkaLog::connect(witness_config).await.unwrap();
    let mut consumer = witness
        .consumer(
            &unique("latency"),
            std::slice::from_ref(&topic),
            StartFrom::Latest,
        )
        .await
        .unwrap();

    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let writing = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (sent, seen, writing) = (sent.clone(), seen.clone(), writing.clone());
        tokio::spawn(async move {
            let mut drained_since: Option<Instant> = None;
            loop {
                let records = consumer
                    .poll(1024, Duration::from_millis(20))
                    .await
                    .unwrap();
                let now = Instant::now();
                for record in &records {
                    if let Some(started) = record
                        .header_str("correlationId")
                        .and_then(|id| sent.lock().remove(id))
                    {
                        seen.lock().push(now - started);
                    }
                }
                if writing.load(Ordering::Acquire) {
                    continue;
                }
                let since = *drained_since.get_or_insert(now);
                if sent.lock().is_empty() || since.elapsed() > Duration::from_secs(10) {
                    return;
                }
            }
        })
    };

    let failures = Arc::new(AtomicU64::new(0));
    let acknowledged: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut writes = 0u64;
    let mut tasks = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        writes += 1;
        let (fhir, sent, failures, acknowledged) = (
            fhir.clone(),
            sent.clone(),
            failures.clone(),
            acknowledged.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut ctx = RequestContext::new("http://bench/fhir");
            ctx.correlation_id = format!("w{writes}");
            let started = Instant::now();
            sent.lock().insert(ctx.correlation_id.clone(), started);
            let patient = json!({"resourceType": "Patient", "name": [{"family": format!("Bench{writes}")}], "gender": "female", "birthDate": "1970-01-01"});
            if fhir.create(&ctx, "Patient", patient, None).await.is_err() {
                sent.lock().remove(&ctx.correlation_id);
                failures.fetch_add(1, Ordering::Relaxed);
            } else {
                acknowledged.lock().push(started.elapsed());
            }
        }));
    }
    let elapsed = started.elapsed();
    for task in tasks {
        let _ = task.await;
    }
    writing.store(false, Ordering::Release);
    watcher.await.unwrap();
    let _ = stop_relay.send(true);
    let _ = relay.await;

    let mut latencies = seen.lock().clone();
    latencies.sort();
    let mut commits = acknowledged.lock().clone();
    commits.sort();
    let never_seen = sent.lock().len();
    let p99 = quantile(&latencies, 0.99);
    println!(
        "write -> event on Kafka through the outbox relay ({rate} Patient creates/s for {seconds} s, SQLite store fsync on, nisshi memory engine, consumer in its own group, fetch.wait.max.ms {fetch_wait})"
    );
    println!(
        "{:<28} {:>8} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "measure", "writes", "achieved/s", "p50", "p90", "p99", "max", "failures", "never seen"
    );
    let achieved = writes as f64 / elapsed.as_secs_f64();
    for (measure, sorted, never) in [
        ("create called -> committed", &commits, "-".to_owned()),
        (
            "create called -> on Kafka",
            &latencies,
            never_seen.to_string(),
        ),
    ] {
        println!(
            "{:<28} {:>8} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
            measure,
            writes,
            achieved,
            ms(quantile(sorted, 0.50)),
            ms(quantile(sorted, 0.90)),
            ms(quantile(sorted, 0.99)),
            ms(sorted.last().copied().unwrap_or_default()),
            failures.load(Ordering::Relaxed),
            never
        );
    }
    println!(
        "target p99 < {}: {}",
        ms(TARGET_P99),
        if p99 < TARGET_P99 && never_seen == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
