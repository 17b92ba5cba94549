//! Consumer-group rebalancing between two `KafkaConsumer`s of one group on a real broker:
//! partitions are shared while both run and move to the survivor when one leaves; with commits
//! after processing, no record is lost or handed out twice.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use flare_kafka::{KafkaLog, test_broker};
use flare_log::{Consumer, EventLog, NewRecord, StartFrom, conformance::unique};
use parking_lot::Mutex;

type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Polls and commits in a loop, noting (member, payload) of every record, until `stop`.
fn run_member(
    name: &'static str,
    mut consumer: Box<dyn Consumer>,
    seen: Seen,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let records = consumer
                .poll(100, Duration::from_millis(100))
                .await
                .unwrap();
            for record in records {
                seen.lock().push((name.to_owned(), record.payload.clone()));
                // A commit can fail for a partition revoked meanwhile; its new owner then
                // starts from the last committed offset, which is what is checked below.
                let _ = consumer.commit(&record).await;
            }
        }
    })
}

async fn wait_for(seen: &Seen, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().len() < count {
        assert!(
            Instant::now() < deadline,
            "only {} of {count} records arrived",
            seen.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn batch(range: std::ops::Range<u32>) -> Vec<NewRecord> {
    range
        .map(|i| NewRecord {
            key: Some(format!("Patient/{i}").into_bytes()),
            payload: i.to_string().into_bytes(),
            ..NewRecord::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_the_partitions_and_the_survivor_takes_over() {
    let Some(broker) = test_broker::shared() else {
        return;
    };
    let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(broker.config()).await.unwrap());
    let topic = unique("rebalance");
    log.ensure_topic(&topic, 4).await.unwrap();
    let group = unique("rebalance-group");
    let topics = vec![topic.clone()];
    let seen: Seen = Arc::default();

    let first = log
        .consumer(&group, &topics, StartFrom::Earliest)
        .await
        .unwrap();
    let stop_first = Arc::new(AtomicBool::new(false));
    let first = run_member("first", first, seen.clone(), stop_first.clone());
    // The first member keeps polling, so it takes part in the rebalance the second causes.
    let second = log
        .consumer(&group, &topics, StartFrom::Earliest)
        .await
        .unwrap();
    let stop_second = Arc::new(AtomicBool::new(false));
    let second = run_member("second", second, seen.clone(), stop_second.clone());

    log.append(&topic, batch(0..40)).await.unwrap();
    wait_for(&seen, 40).await;
    let members: HashMap<String, usize> =
        seen.lock()
            .iter()
            .fold(HashMap::new(), |mut counts, (member, _)| {
                *counts.entry(member.clone()).or_default() += 1;
                counts
            });
    assert_eq!(members.len(), 2, "both members got partitions: {members:?}");

    // The second member leaves; the first takes over its partitions.
    stop_second.store(true, Ordering::Relaxed);
    second.await.unwrap();
    log.append(&topic, batch(40..60)).await.unwrap();
    wait_for(&seen, 60).await;
    stop_first.store(true, Ordering::Relaxed);
    first.await.unwrap();

    let seen = seen.lock();
    let mut payloads: Vec<u32> = seen
        .iter()
        .map(|(_, p)| String::from_utf8_lossy(p).parse().unwrap())
        .collect();
    payloads.sort_unstable();
    assert_eq!(payloads, (0..60).collect::<Vec<_>>(), "each record once");
    assert!(
        seen[40..].iter().all(|(member, _)| member == "first"),
        "after the second left, the first got everything"
    );
}
