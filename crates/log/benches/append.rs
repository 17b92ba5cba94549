//! Append throughput of the embedded log: 1 KB events, one sync per append versus group commit
//! with N concurrent appenders, beside the disk's own sync ceiling (4 KB write + fdatasync in a
//! loop). Run with `cargo bench -p flare-log --bench append`; prints a table, takes ~50 s.

use std::{
    fs::OpenOptions,
    io::Write,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use flare_log::{Durability, EmbeddedLog, EmbeddedLogConfig, EventLog, NewRecord, StartFrom};

const EVENT_BYTES: usize = 1024;
const RUN_FOR: Duration = Duration::from_secs(3);

fn sync_ceiling(dir: &Path) -> f64 {
    let path = dir.join("sync-ceiling");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let block = vec![0x5Au8; 4096];
    let started = Instant::now();
    let mut syncs = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        syncs += 1;
    }
    let rate = syncs as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    rate
}

struct Outcome {
    events: u64,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    records_per_batch: f64,
}

async fn run(
    dir: &Path,
    durability: Durability,
    partitions: u32,
    appenders: usize,
    per_append: usize,
) -> Outcome {
    let _ = std::fs::remove_dir_all(dir);
    let config = EmbeddedLogConfig {
        durability,
        ..EmbeddedLogConfig::in_dir(dir)
    };
    let log = Arc::new(EmbeddedLog::open(config).await.unwrap());
    log.ensure_topic("bench", partitions).await.unwrap();
    let started = Instant::now();
    let deadline = started + RUN_FOR;
    let mut tasks = Vec::new();
    for appender in 0..appenders {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("Patient/{appender}").into_bytes();
            let mut latencies = Vec::new();
            let mut events = 0u64;
            while Instant::now() < deadline {
                let records = (0..per_append)
                    .map(|_| NewRecord {
                        key: Some(key.clone()),
                        payload: vec![b'x'; EVENT_BYTES],
                        ..NewRecord::default()
                    })
                    .collect();
                let sent = Instant::now();
                log.append("bench", records).await.unwrap();
                latencies.push(sent.elapsed());
                events += per_append as u64;
            }
            (events, latencies)
        }));
    }
    let mut events = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (n, l) = task.await.unwrap();
        events += n;
        latencies.extend(l);
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = log.stats();
    log.close().await.unwrap();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    Outcome {
        events,
        seconds,
        p50: at(0.5),
        p99: at(0.99),
        records_per_batch: stats.records as f64 / stats.batches.max(1) as f64,
    }
}

fn main() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("append-bench");
    std::fs::create_dir_all(&base).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ceiling = sync_ceiling(&base);
    println!("disk sync ceiling (4 KB write + fdatasync, one thread): {ceiling:.0} syncs/s\n");
    println!(
        "| {:<34} | {:>9} | {:>11} | {:>7} | {:>9} | {:>9} | {:>9} |",
        "case (1 KB events)", "appenders", "events/s", "MB/s", "p50 ack", "p99 ack", "rec/batch"
    );
    let dashes = |n: usize| "-".repeat(n);
    println!(
        "|{}|{}|{}|{}|{}|{}|{}|",
        dashes(36),
        dashes(11),
        dashes(13),
        dashes(9),
        dashes(11),
        dashes(11),
        dashes(11)
    );
    let cases: [(&str, Durability, u32, usize, usize); 10] = [
        (
            "fsync, one sync per append, 4 part.",
            Durability::Fsync,
            4,
            1,
            1,
        ),
        (
            "fsync, group commit, 4 partitions",
            Durability::Fsync,
            4,
            8,
            1,
        ),
        (
            "fsync, group commit, 4 partitions",
            Durability::Fsync,
            4,
            64,
            1,
        ),
        (
            "fsync, group commit, 4 partitions",
            Durability::Fsync,
            4,
            256,
            1,
        ),
        (
            "fsync, group commit, 4 partitions",
            Durability::Fsync,
            4,
            1024,
            1,
        ),
        (
            "fsync, group commit, 1 partition",
            Durability::Fsync,
            1,
            256,
            1,
        ),
        (
            "fsync, group commit, 1 partition",
            Durability::Fsync,
            1,
            1024,
            1,
        ),
        (
            "fsync, 100 records/append, 4 part.",
            Durability::Fsync,
            4,
            8,
            100,
        ),
        (
            "interval 10 ms, 4 partitions",
            Durability::IntervalMs(10),
            4,
            64,
            1,
        ),
        ("none, 4 partitions", Durability::None, 4, 64, 1),
    ];
    for (name, durability, partitions, appenders, per_append) in cases {
        let dir = base.join("log");
        let outcome = runtime.block_on(run(&dir, durability, partitions, appenders, per_append));
        let rate = outcome.events as f64 / outcome.seconds;
        println!(
            "| {:<34} | {:>9} | {:>11.0} | {:>7.1} | {:>9.2?} | {:>9.2?} | {:>9.1} |",
            name,
            appenders,
            rate,
            rate * EVENT_BYTES as f64 / 1e6,
            outcome.p50,
            outcome.p99,
            outcome.records_per_batch
        );
    }
    println!();
    runtime.block_on(open_times(&base.join("large")));
    let _ = std::fs::remove_dir_all(&base);
}

/// Opening a large log: after a clean stop (index files for every segment) and as after a
/// crash (active segments without index files are scanned). The data is in the page cache.
async fn open_times(dir: &Path) {
    const TOTAL_BYTES: usize = 512 * 1024 * 1024;
    let _ = std::fs::remove_dir_all(dir);
    let config = EmbeddedLogConfig {
        durability: Durability::None,
        ..EmbeddedLogConfig::in_dir(dir)
    };
    let log = EmbeddedLog::open(config.clone()).await.unwrap();
    log.ensure_topic("large", 4).await.unwrap();
    let batch = 256;
    for call in 0..TOTAL_BYTES / EVENT_BYTES / batch {
        let records = (0..batch)
            .map(|i| NewRecord {
                key: Some(format!("Patient/{}", call * batch + i).into_bytes()),
                payload: vec![b'x'; EVENT_BYTES],
                ..NewRecord::default()
            })
            .collect();
        log.append("large", records).await.unwrap();
    }
    log.close().await.unwrap();
    drop(log);
    let started = Instant::now();
    let log = EmbeddedLog::open(config.clone()).await.unwrap();
    let clean = started.elapsed();
    drop(log);
    let mut scanned = 0;
    for partition in 0..4 {
        let partition_dir = dir.join("topics/large").join(partition.to_string());
        let mut segments: Vec<_> = std::fs::read_dir(&partition_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        segments.sort();
        let active = segments.pop().unwrap();
        scanned += active.metadata().unwrap().len();
        std::fs::remove_file(active.with_extension("index")).unwrap();
    }
    let started = Instant::now();
    let log = EmbeddedLog::open(config).await.unwrap();
    let crashed = started.elapsed();

    let started = Instant::now();
    let topics = ["large".to_string()];
    let mut consumer = log
        .consumer("bench", &topics, StartFrom::Earliest)
        .await
        .unwrap();
    let mut consumed = 0usize;
    loop {
        let records = consumer
            .poll(1000, Duration::from_millis(200))
            .await
            .unwrap();
        if records.is_empty() {
            break;
        }
        consumed += records.len();
    }
    let reading = started.elapsed().as_secs_f64();
    println!(
        "consume it with one consumer (4 partitions, polls of 1000): {:.0} events/s, {:.0} MB/s",
        consumed as f64 / reading,
        (consumed * EVENT_BYTES) as f64 / reading / 1e6
    );
    drop(log);
    println!(
        "open a {} MB log (4 partitions, 64 MB segments): {clean:.2?} after a clean stop, \
         {crashed:.2?} as after a crash ({} MB of active segments scanned)",
        TOTAL_BYTES >> 20,
        scanned >> 20
    );
}
