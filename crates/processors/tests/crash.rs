//! SIGKILL a processor process mid-run, several times, then let it finish: the state must equal
//! an uninterrupted run's, and every published effect must be there (duplicates carry the same
//! event id), for both state backends.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
};

use common::*;
use flare_log::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use flare_processors::{RuntimeOptions, StateStore, spawn, state};

const DIR_ENV: &str = "FLARE_PROCESSORS_CRASH_DIR";
const STATE_ENV: &str = "FLARE_PROCESSORS_CRASH_STATE";
const TOTAL: u64 = 20_000;
const KEYS: u64 = 97;

fn log_config(dir: &Path) -> EmbeddedLogConfig {
    let mut config = EmbeddedLogConfig::in_dir(dir.join("log"));
    config.default_partitions = 4;
    config
}

fn options() -> RuntimeOptions {
    let mut options = RuntimeOptions::default();
    options.checkpoint.every_records = 61;
    options.checkpoint.every_ms = 50;
    options.poll_max = 100;
    options
}

fn counter() -> Counter {
    let mut counter = Counter::new("count", "numbers");
    counter.publish_to = Some("counted".into());
    counter
}

/// The child: runs the counter until it is killed.
#[test]
fn crash_processor_child() {
    let (Ok(dir), Ok(state_url)) = (std::env::var(DIR_ENV), std::env::var(STATE_ENV)) else {
        return;
    };
    let dir = PathBuf::from(dir);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(log_config(&dir)).await.unwrap());
        let store = state::open(&state_url, &dir).await.unwrap();
        let handle = spawn(counter(), log, store, options());
        let result = handle.join().await;
        panic!("the processor stopped: {result:?}");
    });
}

async fn sigkill_mid_run_then_finish(state_url: &str, dir: &Path, store: Arc<dyn StateStore>) {
    {
        let writer = EmbeddedLog::open(log_config(dir)).await.unwrap();
        let log: Arc<dyn EventLog> = Arc::new(writer.clone());
        log.ensure_topic("counted", 4).await.unwrap();
        append_numbers(&log, "numbers", 0..TOTAL, KEYS).await;
        writer.close().await.unwrap();
    }
    // Kill at successively later points, the last one after everything was processed.
    for kill_after in [1_000, 7_000, 13_000, TOTAL] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_processor_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir)
            .env(STATE_ENV, state_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_checkpointed(&store, "count", "numbers", kill_after).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let crashed = tallies(&store, "count").await;

    // The same input, uninterrupted, in this process on a fresh state store.
    let (fresh, _guard) = embedded_store().await.unwrap();
    let writer = EmbeddedLog::open(log_config(dir)).await.unwrap();
    let log: Arc<dyn EventLog> = Arc::new(writer.clone());
    let mut uninterrupted = counter();
    uninterrupted.name = "count-uninterrupted".into();
    uninterrupted.publish_to = None;
    let handle = spawn(uninterrupted, log.clone(), fresh.clone(), options());
    wait_checkpointed(&fresh, "count-uninterrupted", "numbers", TOTAL).await;
    handle.shutdown().await.unwrap();

    assert_eq!(crashed, tallies(&fresh, "count-uninterrupted").await);
    assert_eq!(crashed, expected_counts(0..TOTAL, KEYS));

    // Every input produced its effect at least once; replays repeated some under the same id.
    let mut event_ids = BTreeSet::new();
    let mut published = 0;
    for partition in 0..4 {
        let mut offset = 0;
        loop {
            let records = log.read("counted", partition, offset, 1000).await.unwrap();
            let Some(last) = records.last() else { break };
            offset = last.offset + 1;
            published += records.len();
            event_ids.extend(
                records
                    .iter()
                    .map(|r| r.header_str("eventId").unwrap().to_owned()),
            );
        }
    }
    assert_eq!(event_ids.len() as u64, TOTAL);
    assert!(published as u64 >= TOTAL);
    writer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_embedded_state() {
    if std::env::var(DIR_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let url = format!("sqlite://{}", path.display());
    let store = state::open(&url, dir.path()).await.unwrap();
    sigkill_mid_run_then_finish(&url, dir.path(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_redis_state() {
    if std::env::var(DIR_ENV).is_ok() {
        return;
    }
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = state::open(&server.url, dir.path()).await.unwrap();
    sigkill_mid_run_then_finish(&server.url, dir.path(), store).await;
}
