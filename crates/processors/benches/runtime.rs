//! Throughput of the runtime: a counting processor over the embedded log, with the embedded
//! (SQLite) and the Redis state store; checkpoints every 1,000 records or second.
//!
//! `cargo bench -p flare-processors --bench runtime` (needs `redis-server` for the second row).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{sync::Arc, time::Instant};

use common::*;
use flare_processors::{RuntimeOptions, StateStore, spawn};

const RECORDS: u64 = 200_000;
const KEYS: u64 = 10_000;

async fn measure(label: &str, store: Arc<dyn StateStore>) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 4).await;
    append_numbers(&log, "numbers", 0..RECORDS, KEYS).await;
    let started = Instant::now();
    let handle = spawn(
        Counter::new("count", "numbers"),
        log.clone(),
        store.clone(),
        RuntimeOptions::default(),
    );
    wait_checkpointed(&store, "count", "numbers", RECORDS).await;
    let elapsed = started.elapsed();
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();
    let latency = metrics.latency();
    println!(
        "{label:<10} {RECORDS} records, {KEYS} keys: {:>9.0} records/s, {} checkpoints, process p50 {} us p99 {} us",
        RECORDS as f64 / elapsed.as_secs_f64(),
        metrics
            .checkpoints
            .load(std::sync::atomic::Ordering::Relaxed),
        latency.p50_us,
        latency.p99_us,
    );
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (store, _guard) = embedded_store().await.unwrap();
        measure("embedded", store).await;
        if let Some((store, _guard)) = redis_store().await {
            measure("redis", store).await;
        }
    });
}
