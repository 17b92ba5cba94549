//! One suite, run against every state backend: the store's atomic checkpoints, exactly-once
//! state over restarts and crashes, retries, dead letters and their replay.

mod common;

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use common::*;
use flare_log::EventLog;
use flare_processors::{
    Checkpoint, DeadLetters, PartitionOffset, RetryPolicy, RuntimeOptions, StateStore, spawn,
};

type MakeStore = Option<(Arc<dyn StateStore>, Guard)>;

macro_rules! suite {
    ($make:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let made: super::MakeStore = $make().await;
                let Some((store, _guard)) = made else { return };
                super::$check(store).await;
            }
        )*
    };
}

macro_rules! state_backend_suite {
    ($make:path) => {
        suite!($make;
            checkpoint_is_all_or_nothing_per_group,
            counts_once_across_clean_restarts,
            counts_once_after_aborts_mid_run,
            a_failed_attempt_leaves_no_trace_in_the_state,
            poison_record_goes_to_the_dlq_and_the_partition_moves_on,
            replay_reprocesses_a_dead_letter_after_the_fix,
        );
    };
}

mod embedded {
    state_backend_suite!(crate::common::embedded_store);
}

mod redis {
    state_backend_suite!(crate::common::redis_store);
}

fn fast_options() -> RuntimeOptions {
    let mut options = RuntimeOptions::default();
    options.checkpoint.every_records = 50;
    options.checkpoint.every_ms = 20;
    options.retry = RetryPolicy {
        base_ms: 1,
        factor: 2.0,
        max_delay_ms: 4,
        max_attempts: 3,
    };
    options
}

fn offset(topic: &str, partition: u32, next_offset: u64) -> PartitionOffset {
    PartitionOffset {
        topic: topic.into(),
        partition,
        next_offset,
    }
}

async fn checkpoint_is_all_or_nothing_per_group(store: Arc<dyn StateStore>) {
    assert_eq!(store.load("g", "a").await.unwrap(), None);
    assert!(store.offsets("g").await.unwrap().is_empty());
    store
        .checkpoint(
            "g",
            &Checkpoint {
                states: vec![
                    ("a".into(), Some(b"1".to_vec())),
                    ("b".into(), Some(b"2".to_vec())),
                ],
                offsets: vec![offset("t", 1, 7), offset("t", 0, 3)],
            },
        )
        .await
        .unwrap();
    store
        .checkpoint(
            "g",
            &Checkpoint {
                states: vec![("a".into(), None), ("c".into(), Some(vec![0, 255]))],
                offsets: vec![offset("t", 0, 9)],
            },
        )
        .await
        .unwrap();
    assert_eq!(store.load("g", "a").await.unwrap(), None);
    assert_eq!(store.load("g", "c").await.unwrap(), Some(vec![0, 255]));
    assert_eq!(
        store.all_states("g").await.unwrap(),
        vec![
            ("b".to_string(), b"2".to_vec()),
            ("c".to_string(), vec![0, 255])
        ]
    );
    assert_eq!(
        store.offsets("g").await.unwrap(),
        vec![offset("t", 0, 9), offset("t", 1, 7)]
    );
    // Groups are separate namespaces; a reset forgets one group only.
    assert_eq!(store.load("other", "b").await.unwrap(), None);
    store
        .checkpoint(
            "other",
            &Checkpoint {
                states: vec![("b".into(), Some(b"x".to_vec()))],
                offsets: vec![offset("t", 0, 1)],
            },
        )
        .await
        .unwrap();
    store.reset("g").await.unwrap();
    assert!(store.all_states("g").await.unwrap().is_empty());
    assert!(store.offsets("g").await.unwrap().is_empty());
    assert_eq!(store.load("other", "b").await.unwrap(), Some(b"x".to_vec()));
}

async fn counts_once_across_clean_restarts(store: Arc<dyn StateStore>) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 3).await;
    let keys = 17;
    append_numbers(&log, "numbers", 0..1000, keys).await;
    let handle = spawn(
        Counter::new("count", "numbers"),
        log.clone(),
        store.clone(),
        fast_options(),
    );
    wait_checkpointed(&store, "count", "numbers", 1000).await;
    handle.shutdown().await.unwrap();
    append_numbers(&log, "numbers", 1000..1500, keys).await;
    let handle = spawn(
        Counter::new("count", "numbers"),
        log.clone(),
        store.clone(),
        fast_options(),
    );
    wait_checkpointed(&store, "count", "numbers", 1500).await;
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();
    assert_eq!(
        tallies(&store, "count").await,
        expected_counts(0..1500, keys)
    );
    // The second run resumed at the checkpoint: it saw only the new records.
    assert_eq!(metrics.records_in.load(Ordering::Relaxed), 500);
    assert_eq!(metrics.lag.load(Ordering::Relaxed), 0);
    // The log's group offsets follow the checkpoint.
    let mut committed = 0;
    for partition in 0..3 {
        committed += log
            .committed("count", "numbers", partition)
            .await
            .unwrap()
            .unwrap_or(0);
    }
    assert_eq!(committed, 1500);
}

async fn counts_once_after_aborts_mid_run(store: Arc<dyn StateStore>) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 4).await;
    let (keys, total) = (23, 6000);
    append_numbers(&log, "numbers", 0..total, keys).await;
    let mut options = fast_options();
    options.checkpoint.every_records = 37;
    options.poll_max = 64;
    // Abort (no final checkpoint, as a crash) at successively later points.
    for stop_at in [500, 2500, 4500] {
        let handle = spawn(
            Counter::new("count", "numbers"),
            log.clone(),
            store.clone(),
            options.clone(),
        );
        wait_checkpointed(&store, "count", "numbers", stop_at).await;
        handle.abort().await;
    }
    let handle = spawn(
        Counter::new("count", "numbers"),
        log.clone(),
        store.clone(),
        options,
    );
    wait_checkpointed(&store, "count", "numbers", total).await;
    handle.shutdown().await.unwrap();
    assert_eq!(
        tallies(&store, "count").await,
        expected_counts(0..total, keys)
    );
}

async fn a_failed_attempt_leaves_no_trace_in_the_state(store: Arc<dyn StateStore>) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 2).await;
    append_numbers(&log, "numbers", 0..300, 5).await;
    let mut counter = Counter::new("flaky", "numbers");
    counter.flaky_every = Some(7);
    let handle = spawn(counter, log.clone(), store.clone(), fast_options());
    wait_checkpointed(&store, "flaky", "numbers", 300).await;
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();
    assert_eq!(tallies(&store, "flaky").await, expected_counts(0..300, 5));
    let flaky = (0..300).filter(|i| i % 7 == 0).count() as u64;
    assert_eq!(metrics.retried.load(Ordering::Relaxed), flaky);
    assert_eq!(metrics.failed.load(Ordering::Relaxed), flaky);
    assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 0);
}

async fn append_with_poison(log: &Arc<dyn EventLog>) {
    append_numbers(log, "numbers", 0..100, 4).await;
    log.append(
        "numbers",
        vec![flare_log::NewRecord {
            key: Some(b"Patient/1".to_vec()),
            payload: b"seventeen".to_vec(),
            ..Default::default()
        }],
    )
    .await
    .unwrap();
    append_numbers(log, "numbers", 100..200, 4).await;
}

async fn poison_record_goes_to_the_dlq_and_the_partition_moves_on(store: Arc<dyn StateStore>) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 2).await;
    append_with_poison(&log).await;
    let handle = spawn(
        Counter::new("count", "numbers"),
        log.clone(),
        store.clone(),
        fast_options(),
    );
    wait_checkpointed(&store, "count", "numbers", 201).await;
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();
    // Everything after the poison record was processed, in the poison record's partition too.
    assert_eq!(tallies(&store, "count").await, expected_counts(0..200, 4));
    assert_eq!(metrics.failed.load(Ordering::Relaxed), 3);
    assert_eq!(metrics.retried.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 1);

    let dlq = DeadLetters::new(log.clone());
    let letters = dlq.list(None, 100).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.id.topic, "numbers.dlq");
    assert_eq!(letter.retry_count, Some(2));
    assert_eq!(letter.error.as_deref(), Some("not a number: seventeen"));
    assert_eq!(letter.processor.as_deref(), Some("count"));
    assert_eq!(letter.original_topic.as_deref(), Some("numbers"));
    assert_eq!(letter.record.payload, b"seventeen");
    assert_eq!(letter.record.key.as_deref(), Some(&b"Patient/1"[..]));
    let failed_at = letter.failed_at.as_deref().unwrap();
    assert!(
        time::OffsetDateTime::parse(failed_at, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{failed_at}"
    );
    let original = log
        .read(
            "numbers",
            letter.original_partition.unwrap(),
            letter.original_offset.unwrap(),
            1,
        )
        .await
        .unwrap();
    assert_eq!(original[0].payload, b"seventeen");
    assert_eq!(dlq.show(&letter.id).await.unwrap().as_ref(), Some(letter));

    // Purge hides it from listings.
    assert_eq!(dlq.purge(Some("numbers.dlq")).await.unwrap(), 1);
    assert!(dlq.list(None, 100).await.unwrap().is_empty());
    assert_eq!(
        dlq.topics().await.unwrap(),
        vec![("numbers.dlq".to_string(), 0)]
    );
}

async fn replay_reprocesses_a_dead_letter_after_the_fix(store: Arc<dyn StateStore>) {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 2).await;
    append_with_poison(&log).await;
    let counter = Counter::new("count", "numbers");
    let fixed = counter.accept_text.clone();
    // A second processor on the same topic must not take the other one's replays.
    let bystander = spawn(
        Counter::new("bystander", "numbers"),
        log.clone(),
        store.clone(),
        fast_options(),
    );
    let handle = spawn(counter, log.clone(), store.clone(), fast_options());
    wait_checkpointed(&store, "count", "numbers", 201).await;
    wait_checkpointed(&store, "bystander", "numbers", 201).await;
    let dlq = DeadLetters::new(log.clone());
    let letters = dlq.list(Some("numbers.dlq"), 10).await.unwrap();
    let ours: Vec<_> = letters
        .iter()
        .filter(|l| l.processor.as_deref() == Some("count"))
        .collect();
    assert_eq!(ours.len(), 1);
    fixed.store(true, Ordering::SeqCst);
    dlq.replay(&ours[0].id).await.unwrap().unwrap();
    wait_checkpointed(&store, "count", "numbers.retry", 1).await;
    wait_checkpointed(&store, "bystander", "numbers.retry", 1).await;
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();
    let bystander_metrics = bystander.metrics();
    bystander.shutdown().await.unwrap();
    let mut expected = expected_counts(0..200, 4);
    // The replayed record counts once, as 0, for its key.
    let patient_1 = expected.iter_mut().find(|(k, _)| k == "Patient/1").unwrap();
    patient_1.1.count += 1;
    assert_eq!(tallies(&store, "count").await, expected);
    // Parked once before the fix; the replay went through.
    assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.records_in.load(Ordering::Relaxed), 202);
    assert_eq!(
        tallies(&store, "bystander").await,
        expected_counts(0..200, 4)
    );
    assert_eq!(bystander_metrics.records_in.load(Ordering::Relaxed), 201);
}

#[tokio::test(start_paused = true)]
async fn retries_wait_with_exponential_backoff() {
    let (store, _guard) = embedded_store().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 1).await;
    append_with_poison(&log).await;
    let mut options = fast_options();
    options.retry = RetryPolicy {
        base_ms: 1000,
        factor: 3.0,
        max_delay_ms: 5000,
        max_attempts: 4,
    };
    let started = tokio::time::Instant::now();
    let handle = spawn(
        Counter::new("count", "numbers"),
        log.clone(),
        store.clone(),
        options,
    );
    wait_checkpointed(&store, "count", "numbers", 201).await;
    let waited = started.elapsed();
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();
    // 1 s + 3 s + 5 s (capped) of backoff in virtual time before parking.
    assert!(waited >= Duration::from_secs(9), "{waited:?}");
    assert!(waited < Duration::from_secs(12), "{waited:?}");
    assert_eq!(metrics.retried.load(Ordering::Relaxed), 3);
    let letters = DeadLetters::new(log).list(None, 10).await.unwrap();
    assert_eq!(letters[0].retry_count, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_skip_the_retries() {
    let (store, _guard) = embedded_store().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 1).await;
    append_with_poison(&log).await;
    let mut counter = Counter::new("count", "numbers");
    counter.retryable_text = false;
    let handle = spawn(counter, log.clone(), store.clone(), fast_options());
    wait_checkpointed(&store, "count", "numbers", 201).await;
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();
    assert_eq!(metrics.retried.load(Ordering::Relaxed), 0);
    assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 1);
    let letters = DeadLetters::new(log).list(None, 10).await.unwrap();
    assert_eq!(letters[0].retry_count, Some(0));
}
