//! The embedded backend: the shared conformance suite, then what only a file-based log has
//! (recovery, locking, cross-process readers, retention).

use std::{
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use flare_log::{
    Durability, EmbeddedLog, EmbeddedLogConfig, EventLog, LogError, NewRecord, StartFrom,
    conformance::{self, poll_n},
};

fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(conformance::unique(name));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn open(config: EmbeddedLogConfig) -> EmbeddedLog {
    EmbeddedLog::open(config).await.unwrap()
}

async fn fresh_log(name: &str) -> Arc<dyn EventLog> {
    Arc::new(open(EmbeddedLogConfig::in_dir(fresh_dir(name))).await)
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            conformance::$name(fresh_log(stringify!($name)).await).await;
        }
    )*};
}

conformance_tests!(
    ordering_per_partition,
    same_key_same_partition,
    offsets_monotonic_and_gap_free,
    records_round_trip,
    topic_names_validated,
    topic_info_reports_offsets,
    consumer_groups_are_independent,
    commit_and_resume,
    seek_to_offset,
    seek_to_time,
);

/// `run_all` is what a new backend calls; keep it working as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_conformance_suite_runs_through_run_all() {
    conformance::run_all(|| fresh_log("run-all")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_on_append() {
    let worst = conformance::wake_on_append(fresh_log("wake").await).await;
    eprintln!("worst wake-up latency after an fsync'd append: {worst:?}");
}

fn record(key: &str, payload: &str) -> NewRecord {
    NewRecord {
        key: Some(key.as_bytes().to_vec()),
        payload: payload.as_bytes().to_vec(),
        ..NewRecord::default()
    }
}

fn small_segments(dir: &Path) -> EmbeddedLogConfig {
    EmbeddedLogConfig {
        segment_bytes: 512,
        index_interval_bytes: 128,
        retention_ms: None,
        ..EmbeddedLogConfig::in_dir(dir)
    }
}

fn payloads(records: &[flare_log::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}

fn segment_files(dir: &Path, topic: &str, partition: u32) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir.join("topics").join(topic).join(partition.to_string()))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
    files.sort();
    files
}

#[tokio::test]
async fn reopen_after_clean_close_keeps_records_and_offsets() {
    // (A clean stop leaves an index file for every segment, so this open scans nothing.)
    let dir = fresh_dir("reopen");
    let log = open(small_segments(&dir)).await;
    log.ensure_topic("t", 1).await.unwrap();
    for i in 0..50 {
        log.append("t", vec![record("k", &format!("record-{i:03}"))])
            .await
            .unwrap();
    }
    log.commit("g", "t", 0, 20).await.unwrap();
    log.close().await.unwrap();
    assert!(matches!(
        log.append("t", vec![record("k", "late")]).await,
        Err(LogError::Closed)
    ));
    drop(log);
    assert!(segment_files(&dir, "t", 0).len() > 3, "small segments roll");

    let log = open(small_segments(&dir)).await;
    let records = log.read("t", 0, 0, 1000).await.unwrap();
    assert_eq!(
        payloads(&records),
        (0..50)
            .map(|i| format!("record-{i:03}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(log.committed("g", "t", 0).await.unwrap(), Some(20));
    let next = log.append("t", vec![record("k", "after")]).await.unwrap();
    assert_eq!(next[0].offset, 50);
    // Reading from the middle uses the loaded indexes of closed segments.
    let middle = log.read("t", 0, 33, 2).await.unwrap();
    assert_eq!(
        middle.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![33, 34]
    );
}

async fn write_ten(dir: &Path) -> PathBuf {
    let log = open(EmbeddedLogConfig::in_dir(dir)).await;
    log.ensure_topic("t", 1).await.unwrap();
    for i in 0..10 {
        log.append("t", vec![record("k", &format!("r{i}"))])
            .await
            .unwrap();
    }
    log.close().await.unwrap();
    let active = segment_files(dir, "t", 0).pop().unwrap();
    // A writer that dies leaves no index file for its active segment (a clean stop does).
    std::fs::remove_file(active.with_extension("index")).unwrap();
    active
}

async fn assert_recovers_ten(dir: &Path) {
    let log = open(EmbeddedLogConfig::in_dir(dir)).await;
    let records = log.read("t", 0, 0, 100).await.unwrap();
    assert_eq!(
        payloads(&records),
        (0..10).map(|i| format!("r{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        log.append("t", vec![record("k", "r10")]).await.unwrap()[0].offset,
        10
    );
    drop(log);
    let log = open(EmbeddedLogConfig::in_dir(dir)).await;
    assert_eq!(log.read("t", 0, 0, 100).await.unwrap().len(), 11);
}

#[tokio::test]
async fn torn_tail_partial_frame_is_truncated() {
    let dir = fresh_dir("torn-partial");
    let segment = write_ten(&dir).await;
    let bytes = std::fs::read(&segment).unwrap();
    let frame_len = bytes.len() / 10;
    // Half of a copy of the last frame, as if the process died mid-write.
    let half = bytes[bytes.len() - frame_len..bytes.len() - frame_len / 2].to_vec();
    OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&half)
        .unwrap();
    assert_recovers_ten(&dir).await;
}

#[tokio::test]
async fn torn_tail_bad_crc_and_garbage_are_truncated() {
    for (name, tail) in [
        ("garbage", vec![0xAB; 37]),
        ("zeros", vec![0; 4096]),
        ("header-only", vec![40, 0, 0, 0]),
    ] {
        let dir = fresh_dir(name);
        let segment = write_ten(&dir).await;
        OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap()
            .write_all(&tail)
            .unwrap();
        assert_recovers_ten(&dir).await;
    }
    // A complete last frame whose body was damaged: its CRC no longer matches.
    let dir = fresh_dir("bad-crc");
    let segment = write_ten(&dir).await;
    let mut bytes = std::fs::read(&segment).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0xFF;
    std::fs::write(&segment, &bytes).unwrap();
    let log = open(EmbeddedLogConfig::in_dir(&dir)).await;
    let records = log.read("t", 0, 0, 100).await.unwrap();
    assert_eq!(
        payloads(&records),
        (0..9).map(|i| format!("r{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        log.append("t", vec![record("k", "again")]).await.unwrap()[0].offset,
        9
    );
}

#[tokio::test]
async fn corruption_inside_a_closed_segment_names_the_file() {
    let dir = fresh_dir("corrupt-closed");
    let log = open(small_segments(&dir)).await;
    log.ensure_topic("t", 1).await.unwrap();
    for i in 0..40 {
        log.append("t", vec![record("k", &format!("record-{i:03}"))])
            .await
            .unwrap();
    }
    log.close().await.unwrap();
    drop(log);
    let first = segment_files(&dir, "t", 0).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&first, &bytes).unwrap();

    // With its index file, the segment is not scanned on open: the damage shows on read.
    let log = open(small_segments(&dir)).await;
    match log.read("t", 0, 0, 1000).await {
        Err(LogError::Corrupt { path, .. }) => assert!(path.ends_with("00000000000000000000.log")),
        other => panic!("expected a corruption error, got {other:?}"),
    }
    drop(log);

    // Without it, opening scans the segment and refuses to go on.
    std::fs::remove_file(first.with_extension("index")).unwrap();
    match EmbeddedLog::open(small_segments(&dir)).await {
        Err(LogError::Corrupt { path, reason }) => {
            assert!(path.ends_with("00000000000000000000.log"), "{path}");
            assert!(reason.contains("closed segment"), "{reason}");
        }
        Err(other) => panic!("expected a corruption error, got {other}"),
        Ok(_) => panic!("opening a log with a corrupt closed segment succeeded"),
    }
}

#[tokio::test]
async fn a_second_writer_is_refused_with_the_holder() {
    let dir = fresh_dir("second-writer");
    let first = open(EmbeddedLogConfig::in_dir(&dir)).await;
    match EmbeddedLog::open(EmbeddedLogConfig::in_dir(&dir)).await {
        Err(error @ LogError::Locked { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains(&std::process::id().to_string()),
                "{message}"
            );
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second writer opened the same directory"),
    }
    drop(first);
    open(EmbeddedLogConfig::in_dir(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_sees_appends_of_the_writer_through_the_files() {
    let dir = fresh_dir("reader");
    let writer = open(EmbeddedLogConfig::in_dir(&dir)).await;
    writer.ensure_topic("events", 2).await.unwrap();
    writer
        .append("events", vec![record("a", "before")])
        .await
        .unwrap();

    let reader = EmbeddedLog::open_reader(&dir).await.unwrap();
    assert!(matches!(
        reader.append("events", vec![record("a", "x")]).await,
        Err(LogError::ReadOnly)
    ));
    let mut consumer = reader
        .consumer("tail", &["events".to_string()], StartFrom::Earliest)
        .await
        .unwrap();
    assert_eq!(
        payloads(&poll_n(consumer.as_mut(), 1).await),
        vec!["before"]
    );

    for round in 0..3 {
        let payload = format!("live-{round}");
        let appended_at = Instant::now();
        let position = writer
            .append("events", vec![record("a", &payload)])
            .await
            .unwrap()[0];
        let records = consumer.poll(10, Duration::from_secs(10)).await.unwrap();
        let latency = appended_at.elapsed();
        assert_eq!(payloads(&records), vec![payload]);
        assert_eq!(records[0].offset, position.offset);
        assert!(
            latency < Duration::from_secs(2),
            "reader woke after {latency:?}"
        );
        consumer.commit(&records[0]).await.unwrap();
    }
    // The read-only process committed; the writer sees the group's offset.
    assert_eq!(
        writer
            .committed("tail", "events", 1)
            .await
            .unwrap()
            .or(writer.committed("tail", "events", 0).await.unwrap()),
        Some(4)
    );

    // A topic created after the reader opened appears too.
    writer
        .append("later", vec![record("b", "new topic")])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reader
        .topics()
        .await
        .unwrap()
        .iter()
        .any(|t| t.name == "later" && t.end_offsets.iter().sum::<u64>() == 1)
    {
        assert!(
            Instant::now() < deadline,
            "the reader never saw the new topic"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn records_too_large_are_refused_and_nothing_is_written() {
    let dir = fresh_dir("too-large");
    let config = EmbeddedLogConfig {
        max_record_bytes: 1000,
        ..EmbeddedLogConfig::in_dir(&dir)
    };
    let log = open(config).await;
    let big = NewRecord {
        payload: vec![7; 2000],
        ..NewRecord::default()
    };
    let result = log.append("t", vec![record("k", "small"), big]).await;
    assert!(
        matches!(result, Err(LogError::RecordTooLarge { max: 1000, .. })),
        "{result:?}"
    );
    assert!(
        log.topics()
            .await
            .unwrap()
            .iter()
            .all(|t| t.end_offsets.iter().all(|&e| e == 0))
    );
}

#[tokio::test]
async fn interval_and_none_policies_append_and_survive_reopen() {
    for durability in [Durability::IntervalMs(20), Durability::None] {
        let dir = fresh_dir("policies");
        let config = EmbeddedLogConfig {
            durability,
            ..EmbeddedLogConfig::in_dir(&dir)
        };
        let log = open(config.clone()).await;
        for i in 0..20 {
            log.append("t", vec![record("k", &i.to_string())])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let syncs = log.stats().syncs;
        match durability {
            // Acknowledged after write(2); the timer synced the files since.
            Durability::IntervalMs(_) => assert!(syncs >= 1, "no periodic sync happened"),
            _ => assert_eq!(syncs, 0),
        }
        drop(log);
        let log = open(config).await;
        let total: u64 = log
            .topics()
            .await
            .unwrap()
            .iter()
            .flat_map(|t| t.end_offsets.clone())
            .sum();
        assert_eq!(total, 20, "{durability:?}");
    }
}

struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn new(now: i64) -> (Self, flare_log::embedded::Clock) {
        let now = Arc::new(AtomicI64::new(now));
        let reader = now.clone();
        (Self(now), Arc::new(move || reader.load(Ordering::SeqCst)))
    }

    fn set(&self, now: i64) {
        self.0.store(now, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn retention_by_age_deletes_old_closed_segments_and_moves_consumers() {
    let dir = fresh_dir("retention-age");
    let start = 1_700_000_000_000;
    let (clock, clock_fn) = TestClock::new(start);
    let config = EmbeddedLogConfig {
        retention_ms: Some(60_000),
        retention_check_interval_ms: 3_600_000,
        ..small_segments(&dir)
    };
    let log = EmbeddedLog::open_with_clock(config, clock_fn)
        .await
        .unwrap();
    log.ensure_topic("t", 1).await.unwrap();
    for i in 0..30 {
        log.append("t", vec![record("k", &format!("old-{i:02}"))])
            .await
            .unwrap();
    }
    clock.set(start + 50_000);
    for i in 0..30 {
        log.append("t", vec![record("k", &format!("new-{i:02}"))])
            .await
            .unwrap();
    }
    let mut consumer = log
        .consumer("slow", &["t".to_string()], StartFrom::Earliest)
        .await
        .unwrap();

    log.enforce_retention().await.unwrap();
    assert_eq!(
        log.topics().await.unwrap()[0].start_offsets,
        vec![0],
        "nothing expired yet"
    );

    clock.set(start + 61_000);
    log.enforce_retention().await.unwrap();
    let info = log.topics().await.unwrap().remove(0);
    let new_start = info.start_offsets[0];
    assert!(
        new_start > 0 && new_start <= 30,
        "old segments are gone: start {new_start}"
    );
    assert_eq!(info.end_offsets[0], 60);
    let files = segment_files(&dir, "t", 0);
    assert_eq!(
        files[0].file_name().unwrap().to_str().unwrap(),
        format!("{new_start:020}.log")
    );

    // The consumer was at offset 0: it continues at the new start.
    let records = poll_n(consumer.as_mut(), 1).await;
    assert_eq!(records[0].offset, new_start);
    // Reading below the start is clamped too.
    assert_eq!(log.read("t", 0, 0, 1).await.unwrap()[0].offset, new_start);

    // Everything old expires, but the active segment is never deleted.
    clock.set(start + 1_000_000);
    log.enforce_retention().await.unwrap();
    let info = log.topics().await.unwrap().remove(0);
    assert_eq!(segment_files(&dir, "t", 0).len(), 1);
    assert!(info.start_offsets[0] < 60 && info.end_offsets[0] == 60);
}

#[tokio::test]
async fn retention_by_size_keeps_partitions_under_the_limit() {
    let dir = fresh_dir("retention-size");
    let config = EmbeddedLogConfig {
        retention_bytes: Some(3 * 1024),
        retention_check_interval_ms: 3_600_000,
        ..small_segments(&dir)
    };
    let log = open(config).await;
    log.ensure_topic("t", 1).await.unwrap();
    for i in 0..200 {
        log.append("t", vec![record("k", &format!("record-{i:04}"))])
            .await
            .unwrap();
    }
    log.enforce_retention().await.unwrap();
    let total: u64 = segment_files(&dir, "t", 0)
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(total <= 3 * 1024, "{total} bytes remain");
    let info = log.topics().await.unwrap().remove(0);
    let remaining = log.read("t", 0, 0, 1000).await.unwrap();
    assert_eq!(remaining.first().unwrap().offset, info.start_offsets[0]);
    assert_eq!(remaining.last().unwrap().offset, 199);
    assert_eq!(remaining.len() as u64, 200 - info.start_offsets[0]);
}

#[tokio::test]
async fn seek_to_time_across_rolled_segments() {
    let dir = fresh_dir("time-segments");
    let log = open(small_segments(&dir)).await;
    log.ensure_topic("t", 1).await.unwrap();
    let base = 1_000_000;
    for i in 0..100i64 {
        let r = NewRecord {
            timestamp_ms: Some(base + i * 10),
            ..record("k", &i.to_string())
        };
        log.append("t", vec![r]).await.unwrap();
    }
    assert!(segment_files(&dir, "t", 0).len() > 5);
    for (target, expected) in [(0, 0), (base + 5, 1), (base + 500, 50), (base + 991, 100)] {
        assert_eq!(
            log.offset_for_time("t", 0, target).await.unwrap(),
            expected,
            "{target}"
        );
    }
    drop(log);
    let log = open(small_segments(&dir)).await;
    assert_eq!(log.offset_for_time("t", 0, base + 735).await.unwrap(), 74);
}

#[tokio::test]
async fn a_roll_cut_short_by_a_crash_is_recovered() {
    let dir = fresh_dir("cut-roll");
    let log = open(small_segments(&dir)).await;
    log.ensure_topic("t", 1).await.unwrap();
    for i in 0..40 {
        log.append("t", vec![record("k", &format!("record-{i:03}"))])
            .await
            .unwrap();
    }
    log.close().await.unwrap();
    drop(log);
    let files = segment_files(&dir, "t", 0);
    let closing = &files[files.len() - 2];
    // Everything before the last segment survives: the records up to its base offset.
    let last_name = files.last().unwrap().file_stem().unwrap().to_str().unwrap();
    let survivors: u64 = last_name.parse().unwrap();
    // As if the process died while the batch that rolled was being written: the closing
    // segment has a torn tail and no index file; the new segment exists.
    std::fs::remove_file(closing.with_extension("index")).unwrap();
    std::fs::remove_file(files.last().unwrap().with_extension("index")).unwrap();
    OpenOptions::new()
        .append(true)
        .open(closing)
        .unwrap()
        .write_all(&[9, 0, 0, 0, 1])
        .unwrap();

    let log = open(small_segments(&dir)).await;
    let records = log.read("t", 0, 0, 1000).await.unwrap();
    assert_eq!(records.len() as u64, survivors);
    assert!(
        !files.last().unwrap().exists(),
        "the segment the roll created is gone"
    );
    let next = log.append("t", vec![record("k", "after")]).await.unwrap()[0];
    assert_eq!(next.offset, survivors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fsync_appends_share_batches_and_syncs() {
    let dir = fresh_dir("group-commit");
    let log = open(EmbeddedLogConfig::in_dir(&dir)).await;
    log.ensure_topic("t", 1).await.unwrap();
    let mut tasks = Vec::new();
    for appender in 0..64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                log.append("t", vec![record("k", &format!("{appender}-{i}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = log.stats();
    assert_eq!((stats.appends, stats.records), (640, 640));
    // One partition: one sync per batch. 64 callers waiting at once must share batches.
    assert_eq!(stats.syncs, stats.batches);
    assert!(
        stats.batches < 640 / 4,
        "group commit batched too little: {stats:?}"
    );
    eprintln!("{stats:?}");
}

/// An unsynced append is readable (and wakes consumers) before any sync; `sync` then syncs
/// what it wrote, once for many appends, and the records survive a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsynced_appends_are_readable_at_once_and_durable_after_sync() {
    let dir = fresh_dir("unsynced");
    let log = open(EmbeddedLogConfig::in_dir(&dir)).await;
    log.ensure_topic("t", 1).await.unwrap();
    let mut consumer = log
        .consumer("g", &["t".to_owned()], StartFrom::Earliest)
        .await
        .unwrap();
    for n in 0..10u8 {
        let record = NewRecord {
            payload: vec![n],
            ..NewRecord::default()
        };
        log.append_unsynced("t", vec![record]).await.unwrap();
    }
    assert_eq!(log.stats().syncs, 0, "no append waited for a sync");
    let seen = poll_n(consumer.as_mut(), 10).await;
    let payloads: Vec<u8> = seen.iter().map(|r| r.payload[0]).collect();
    assert_eq!(payloads, (0..10).collect::<Vec<u8>>());

    log.sync().await.unwrap();
    let after_first = log.stats().syncs;
    assert!(after_first >= 1, "sync synced the written segment");
    log.sync().await.unwrap();
    assert_eq!(log.stats().syncs, after_first, "nothing new to sync");
    // A plain append still waits for its own sync.
    log.append("t", vec![NewRecord::default()]).await.unwrap();
    assert!(log.stats().syncs > after_first);
    drop(consumer);
    log.close().await.unwrap();
    drop(log);

    let reopened = open(EmbeddedLogConfig::in_dir(&dir)).await;
    assert_eq!(reopened.read("t", 0, 0, 100).await.unwrap().len(), 11);
}
