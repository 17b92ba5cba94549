//! The log conformance suite of `flare-log`, unchanged, against a real Kafka-protocol broker
//! (one `nisshi` per test binary; topic and group names are unique per test).

use std::sync::Arc;

use flare_kafka::{KafkaLog, test_broker};
use flare_log::{EventLog, LogError, NewRecord, conformance};

/// A log on the shared broker, or `None` when Kafka tests are skipped (`FLARE_SKIP_KAFKA=1`).
async fn fresh_log() -> Option<Arc<dyn EventLog>> {
    let broker = test_broker::shared()?;
    let log = KafkaLog::connect(broker.config())
        .await
        .unwrap_or_else(|err| panic!("{err}; broker log:\n{}", broker.log_text()));
    Some(Arc::new(log))
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if let Some(log) = fresh_log().await {
                conformance::$name(log).await;
            }
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
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_on_append() {
    if let Some(log) = fresh_log().await {
        let worst = conformance::wake_on_append(log).await;
        eprintln!("worst wake-up latency after an acks=all append: {worst:?}");
    }
}

/// ListOffsets by timestamp is standard Kafka (0.10.1+) and the conformance case runs in full
/// where the broker has it. The test broker (nisshi 0.8) does not implement it yet: there the
/// case is skipped, and what is checked instead is that the lookup fails with the typed error,
/// never with a wrong offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_to_time() {
    let Some(log) = fresh_log().await else { return };
    let probe = conformance::unique("time-probe");
    log.ensure_topic(&probe, 1).await.unwrap();
    let stamped = |ms| NewRecord {
        timestamp_ms: Some(ms),
        ..NewRecord::default()
    };
    log.append(&probe, vec![stamped(1_000), stamped(2_000)])
        .await
        .unwrap();
    match log.offset_for_time(&probe, 0, 1_500).await {
        Ok(offset) => {
            assert_eq!(offset, 1, "the first record at or after the timestamp");
            conformance::seek_to_time(log).await;
        }
        Err(LogError::Backend(message)) if message.contains("look up offsets by timestamp") => {
            eprintln!("the broker lacks ListOffsets by timestamp; skipped: {message}");
        }
        Err(other) => panic!("unexpected error from a timestamp lookup: {other:?}"),
    }
}
