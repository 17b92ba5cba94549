//! Measurement 4: appending 1 KB events to the embedded log through the `EventLog` trait, in
//! this process, beside the disk's own sync ceiling. Same method as flare-log's `append`
//! benchmark: one appender (one sync per append) against many concurrent appenders sharing
//! each sync (group commit).

use std::{
    fs::OpenOptions,
    io::Write,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use flare_log::{Durability, EmbeddedLog, EmbeddedLogConfig, EventLog, NewRecord};

use super::report::{Latencies, Table, grouped, met, rate};

pub const EVENT_BYTES: usize = 1024;
pub const TARGET_EVENTS_PER_SECOND: f64 = 100_000.0;

/// One configuration of the log and its load.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub durability: Durability,
    pub appenders: usize,
    pub group_commit: bool,
}

pub const CASES: [Case; 6] = [
    Case {
        name: "fsync, one sync per append",
        durability: Durability::Fsync,
        appenders: 1,
        group_commit: false,
    },
    Case {
        name: "fsync, group commit",
        durability: Durability::Fsync,
        appenders: 64,
        group_commit: true,
    },
    Case {
        name: "fsync, group commit",
        durability: Durability::Fsync,
        appenders: 256,
        group_commit: true,
    },
    Case {
        name: "fsync, group commit",
        durability: Durability::Fsync,
        appenders: 1024,
        group_commit: true,
    },
    Case {
        name: "interval 10 ms (not durable on ack)",
        durability: Durability::IntervalMs(10),
        appenders: 256,
        group_commit: true,
    },
    Case {
        name: "none (not durable on ack)",
        durability: Durability::None,
        appenders: 256,
        group_commit: true,
    },
];

#[derive(Debug)]
pub struct AppendOutcome {
    pub case: Case,
    pub events: u64,
    pub elapsed: Duration,
    pub latency: Latencies,
    pub records_per_sync: f64,
}

impl AppendOutcome {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// 4 KB `write` + `fdatasync` in a loop for `duration`: what one thread gets from this disk.
pub fn sync_ceiling(dir: &Path, duration: Duration) -> anyhow::Result<f64> {
    let path = dir.join("sync-ceiling");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let block = vec![0x5Au8; 4096];
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < duration {
        file.write_all(&block).context("write failed")?;
        file.sync_data().context("fdatasync failed")?;
        syncs += 1;
    }
    let per_second = syncs as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    Ok(per_second)
}

/// Runs one case on a fresh log in `dir` for `duration`.
pub async fn run(dir: &Path, case: Case, duration: Duration) -> anyhow::Result<AppendOutcome> {
    let _ = std::fs::remove_dir_all(dir);
    let config = EmbeddedLogConfig {
        durability: case.durability,
        ..EmbeddedLogConfig::in_dir(dir)
    };
    let log = Arc::new(
        EmbeddedLog::open(config)
            .await
            .context("cannot open the embedded log")?,
    );
    let events_log: Arc<dyn EventLog> = log.clone();
    events_log.ensure_topic("bench", 4).await?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for appender in 0..case.appenders {
        let log = events_log.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("Patient/{appender}").into_bytes();
            let mut latency = Latencies::new();
            let mut events = 0u64;
            while Instant::now() < deadline {
                let record = NewRecord {
                    key: Some(key.clone()),
                    payload: vec![b'x'; EVENT_BYTES],
                    ..NewRecord::default()
                };
                let sent = Instant::now();
                log.append("bench", vec![record]).await?;
                latency.record(sent.elapsed());
                events += 1;
            }
            anyhow::Ok((events, latency))
        }));
    }
    let mut events = 0;
    let mut latency = Latencies::new();
    for task in tasks {
        let (appended, part) = task.await.context("an appender task failed")??;
        events += appended;
        latency.merge(&part);
    }
    let elapsed = started.elapsed();
    let stats = log.stats();
    log.close().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(AppendOutcome {
        case,
        events,
        elapsed,
        latency,
        records_per_sync: stats.records as f64 / stats.syncs.max(1) as f64,
    })
}

pub fn table(outcomes: &[AppendOutcome], ceiling: f64) -> Table {
    let mut table = Table::new(
        format!(
            "Embedded log append, 1 KB events, 4 partitions, in process (EmbeddedLog via EventLog); disk sync ceiling {} syncs/s; target >= {} events/s with group commit",
            rate(ceiling),
            grouped(TARGET_EVENTS_PER_SECOND as u64)
        ),
        &[
            "durability, mode",
            "appenders",
            "events/s",
            "MB/s",
            "ack p50",
            "ack p99",
            "events/sync",
            "target met",
        ],
    );
    for outcome in outcomes {
        let durable = outcome.case.durability == Durability::Fsync;
        let target = if durable && outcome.case.group_commit {
            met(outcome.events_per_second() >= TARGET_EVENTS_PER_SECOND)
        } else {
            "-".into()
        };
        table.row(vec![
            outcome.case.name.to_owned(),
            outcome.case.appenders.to_string(),
            rate(outcome.events_per_second()),
            format!(
                "{:.1}",
                outcome.events_per_second() * EVENT_BYTES as f64 / 1e6
            ),
            outcome.latency.p50(),
            outcome.latency.p99(),
            if durable {
                format!("{:.1}", outcome.records_per_sync)
            } else {
                "-".into()
            },
            target,
        ]);
    }
    table
}
