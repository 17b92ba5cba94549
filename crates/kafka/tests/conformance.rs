//! The log conformance suite of `flare-log`, unchanged, against a real Kafka-protocol broker
//! (one `nisshi` per test binary; topic and group names are unique per test).

use std::sync::Arc;

use flare_kafka::{KafkaLog, test_broker};
use flare_log::{EventLog, conformance};

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
    seek_to_time,
);

/// `run_all` is what a backend calls; it runs here unchanged too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_conformance_suite_runs_through_run_all() {
    if test_broker::shared().is_some() {
        conformance::run_all(|| async { fresh_log().await.unwrap() }).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_on_append() {
    if let Some(log) = fresh_log().await {
        let worst = conformance::wake_on_append(log).await;
        eprintln!("worst wake-up latency after an acks=all append: {worst:?}");
    }
}
