//! The behaviour every [`EventLog`] backend must show, as reusable async tests.
//!
//! Each function takes a fresh log and panics (like a test assertion) when the backend
//! misbehaves. Topic and group names carry a random suffix, so the functions can run against a
//! shared broker. A backend's integration tests call them, or [`run_all`]:
//!
//! ```ignore
//! #[tokio::test]
//! async fn ordering() { flare_log::conformance::ordering_per_partition(my_log().await).await }
//! ```

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{EventLog, Header, LogError, NewRecord, StartFrom};

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn keyed(key: &str, payload: &str) -> NewRecord {
    NewRecord {
        key: Some(key.as_bytes().to_vec()),
        payload: payload.as_bytes().to_vec(),
        ..NewRecord::default()
    }
}

/// Runs every backend-independent check, each on a fresh log from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn EventLog>>,
{
    ordering_per_partition(make().await).await;
    same_key_same_partition(make().await).await;
    offsets_monotonic_and_gap_free(make().await).await;
    records_round_trip(make().await).await;
    topic_names_validated(make().await).await;
    topic_info_reports_offsets(make().await).await;
    consumer_groups_are_independent(make().await).await;
    commit_and_resume(make().await).await;
    seek_to_offset(make().await).await;
    seek_to_time(make().await).await;
    wake_on_append(make().await).await;
}

/// Records of one key come back in append order, across several appends.
pub async fn ordering_per_partition(log: Arc<dyn EventLog>) {
    let topic = unique("order");
    log.ensure_topic(&topic, 3).await.unwrap();
    let mut partition = None;
    for batch in 0..5 {
        let records = (0..20)
            .map(|i| keyed("Patient/7", &format!("{}", batch * 20 + i)))
            .collect();
        let positions = log.append(&topic, records).await.unwrap();
        partition.get_or_insert(positions[0].partition);
        assert!(positions.iter().all(|p| Some(p.partition) == partition));
    }
    let partition = partition.unwrap();
    let records = log.read(&topic, partition, 0, 1000).await.unwrap();
    let payloads: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect();
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
}

/// The same key always lands in the same partition, with Kafka's murmur2 partitioner.
pub async fn same_key_same_partition(log: Arc<dyn EventLog>) {
    let topic = unique("keys");
    log.ensure_topic(&topic, 4).await.unwrap();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut used = HashSet::new();
    for round in 0..3 {
        for patient in 0..40 {
            let key = format!("Patient/{patient}");
            let position = log
                .append(&topic, vec![keyed(&key, &round.to_string())])
                .await
                .unwrap()[0];
            let expected = crate::partitioner::partition_for_key(key.as_bytes(), 4);
            assert_eq!(position.partition, expected, "key {key}");
            assert_eq!(
                *seen.entry(key).or_insert(position.partition),
                position.partition
            );
            used.insert(position.partition);
        }
    }
    assert!(
        used.len() > 1,
        "40 keys should spread over more than one of 4 partitions"
    );
}

/// Offsets in a partition start at 0 and grow by one per record, with no gap or repeat, also
/// under concurrent appends.
pub async fn offsets_monotonic_and_gap_free(log: Arc<dyn EventLog>) {
    let topic = unique("offsets");
    log.ensure_topic(&topic, 2).await.unwrap();
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let (log, topic) = (log.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in 0..25 {
                let key = format!("writer-{writer}");
                positions.extend(
                    log.append(&topic, vec![keyed(&key, &i.to_string())])
                        .await
                        .unwrap(),
                );
            }
            positions
        }));
    }
    let mut by_partition: HashMap<u32, Vec<u64>> = HashMap::new();
    for task in tasks {
        let positions = task.await.unwrap();
        assert!(
            positions.windows(2).all(|w| w[0].offset < w[1].offset),
            "one writer's offsets grow"
        );
        for p in positions {
            by_partition.entry(p.partition).or_default().push(p.offset);
        }
    }
    let info = log
        .topics()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == topic)
        .unwrap();
    for (partition, mut offsets) in by_partition {
        offsets.sort_unstable();
        let expected: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, expected, "partition {partition}");
        assert_eq!(info.end_offsets[partition as usize], offsets.len() as u64);
        let read = log.read(&topic, partition, 0, 10_000).await.unwrap();
        let read_offsets: Vec<u64> = read.iter().map(|r| r.offset).collect();
        assert_eq!(read_offsets, expected);
    }
}

/// Keys, headers (bytes, repeated keys, order), timestamps and payloads come back unchanged.
pub async fn records_round_trip(log: Arc<dyn EventLog>) {
    let topic = unique("roundtrip");
    log.ensure_topic(&topic, 1).await.unwrap();
    let with_everything = NewRecord {
        key: Some(b"Patient/1".to_vec()),
        headers: vec![
            Header::new("content-type", "application/fhir+json"),
            Header::new("binary", vec![0u8, 255, 10, 13]),
            Header::new("binary", Vec::new()),
        ],
        payload: br#"{"resourceType":"Patient","id":"1"}"#.to_vec(),
        timestamp_ms: Some(1_600_000_000_123),
    };
    let empty = NewRecord::default();
    let before = now_ms();
    let positions = log
        .append(&topic, vec![with_everything.clone(), empty])
        .await
        .unwrap();
    let after = now_ms();
    let records = log.read(&topic, 0, positions[0].offset, 10).await.unwrap();
    assert_eq!(records.len(), 2);
    let (first, second) = (&records[0], &records[1]);
    assert_eq!((first.topic.as_str(), first.partition), (topic.as_str(), 0));
    assert_eq!(first.key, with_everything.key);
    assert_eq!(first.headers, with_everything.headers);
    assert_eq!(first.payload, with_everything.payload);
    assert_eq!(first.timestamp_ms, 1_600_000_000_123);
    assert_eq!(
        first.header_str("content-type"),
        Some("application/fhir+json")
    );
    assert_eq!(second.key, None);
    assert!(second.headers.is_empty() && second.payload.is_empty());
    assert!(
        (before - 1000..=after + 1000).contains(&second.timestamp_ms),
        "a missing timestamp becomes the append time"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Bad topic names are refused with `InvalidTopicName`; unknown topics are errors on read.
pub async fn topic_names_validated(log: Arc<dyn EventLog>) {
    for bad in ["", ".", "..", "a/b", "with space", "ü", &"x".repeat(250)] {
        let result = log.append(bad, vec![NewRecord::default()]).await;
        assert!(
            matches!(result, Err(LogError::InvalidTopicName(_))),
            "{bad:?}: {result:?}"
        );
        let result = log.ensure_topic(bad, 1).await;
        assert!(
            matches!(result, Err(LogError::InvalidTopicName(_))),
            "{bad:?}: {result:?}"
        );
    }
    let missing = unique("missing");
    assert!(matches!(
        log.read(&missing, 0, 0, 1).await,
        Err(LogError::UnknownTopic(_))
    ));
    let topic = unique("fhir.Patient_created-v1");
    log.ensure_topic(&topic, 2).await.unwrap();
    assert!(matches!(
        log.read(&topic, 2, 0, 1).await,
        Err(LogError::UnknownPartition { partition: 2, .. })
    ));
}

/// `topics()` lists topics sorted, with their partition count and start/end offsets; an
/// existing topic keeps its partition count.
pub async fn topic_info_reports_offsets(log: Arc<dyn EventLog>) {
    let (a, b) = (unique("info-a"), unique("info-b"));
    log.ensure_topic(&b, 2).await.unwrap();
    log.ensure_topic(&a, 3).await.unwrap();
    log.ensure_topic(&a, 5).await.unwrap();
    let positions = log
        .append(&a, vec![keyed("k", "1"), keyed("k", "2"), keyed("k", "3")])
        .await
        .unwrap();
    let topics = log.topics().await.unwrap();
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    let info = topics.iter().find(|t| t.name == a).unwrap();
    assert_eq!(info.partitions, 3);
    let mut expected_end = vec![0; 3];
    expected_end[positions[0].partition as usize] = 3;
    assert_eq!(info.end_offsets, expected_end);
    assert_eq!(info.start_offsets, vec![0; 3]);
    let info_b = topics.iter().find(|t| t.name == b).unwrap();
    assert_eq!(
        (info_b.partitions, info_b.end_offsets.clone()),
        (2, vec![0, 0])
    );
}

/// Two groups read the same records independently; committing in one does not move the other.
pub async fn consumer_groups_are_independent(log: Arc<dyn EventLog>) {
    let topic = unique("groups");
    log.ensure_topic(&topic, 2).await.unwrap();
    let records = (0..10)
        .map(|i| keyed(&format!("k{i}"), &i.to_string()))
        .collect();
    log.append(&topic, records).await.unwrap();
    let (first, second) = (unique("g1"), unique("g2"));
    let topics = vec![topic.clone()];
    let mut one = log
        .consumer(&first, &topics, StartFrom::Earliest)
        .await
        .unwrap();
    let got_one = poll_n(one.as_mut(), 10).await;
    for record in &got_one {
        one.commit(record).await.unwrap();
    }
    let mut two = log
        .consumer(&second, &topics, StartFrom::Earliest)
        .await
        .unwrap();
    let got_two = poll_n(two.as_mut(), 10).await;
    assert_eq!(payload_set(&got_one), payload_set(&got_two));
    assert_eq!(payload_set(&got_one).len(), 10);
    for partition in 0..2 {
        assert_eq!(
            log.committed(&second, &topic, partition).await.unwrap(),
            None
        );
    }
    // Group one committed every record: its offsets are the partitions' end offsets.
    for partition in 0..2 {
        let read = got_one.iter().filter(|r| r.partition == partition).count() as u64;
        let expected = (read > 0).then_some(read);
        assert_eq!(
            log.committed(&first, &topic, partition).await.unwrap(),
            expected
        );
    }
}

fn payload_set(records: &[crate::Record]) -> HashSet<Vec<u8>> {
    records.iter().map(|r| r.payload.clone()).collect()
}

/// Polls until `n` records arrived (or panics after 10 s).
pub async fn poll_n(consumer: &mut dyn crate::Consumer, n: usize) -> Vec<crate::Record> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut records = Vec::new();
    while records.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records arrived",
            records.len()
        );
        records.extend(
            consumer
                .poll(n - records.len(), Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    records
}

/// A new consumer of a group resumes after the last committed record; `Latest` skips history.
pub async fn commit_and_resume(log: Arc<dyn EventLog>) {
    let topic = unique("resume");
    log.ensure_topic(&topic, 1).await.unwrap();
    log.append(&topic, (0..6).map(|i| keyed("k", &i.to_string())).collect())
        .await
        .unwrap();
    let group = unique("resume-group");
    let topics = vec![topic.clone()];
    let mut consumer = log
        .consumer(&group, &topics, StartFrom::Earliest)
        .await
        .unwrap();
    let first = poll_n(consumer.as_mut(), 6).await;
    consumer.commit(&first[3]).await.unwrap();
    drop(consumer);
    assert_eq!(log.committed(&group, &topic, 0).await.unwrap(), Some(4));
    let mut resumed = log
        .consumer(&group, &topics, StartFrom::Latest)
        .await
        .unwrap();
    let rest = poll_n(resumed.as_mut(), 2).await;
    assert_eq!(
        rest.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![4, 5]
    );

    let fresh = unique("latest-group");
    let mut latest = log
        .consumer(&fresh, &topics, StartFrom::Latest)
        .await
        .unwrap();
    assert!(
        latest
            .poll(10, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
    log.append(&topic, vec![keyed("k", "new")]).await.unwrap();
    let new = poll_n(latest.as_mut(), 1).await;
    assert_eq!(new[0].payload, b"new");
}

/// `seek` moves the read position (not the committed offset) to any retained offset.
pub async fn seek_to_offset(log: Arc<dyn EventLog>) {
    let topic = unique("seek");
    log.ensure_topic(&topic, 1).await.unwrap();
    log.append(
        &topic,
        (0..10).map(|i| keyed("k", &i.to_string())).collect(),
    )
    .await
    .unwrap();
    let group = unique("seek-group");
    let mut consumer = log
        .consumer(&group, std::slice::from_ref(&topic), StartFrom::Earliest)
        .await
        .unwrap();
    let all = poll_n(consumer.as_mut(), 10).await;
    consumer.commit(&all[9]).await.unwrap();
    consumer.seek(&topic, 0, 7).await.unwrap();
    let again = poll_n(consumer.as_mut(), 3).await;
    assert_eq!(
        again.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![7, 8, 9]
    );
    assert_eq!(log.committed(&group, &topic, 0).await.unwrap(), Some(10));
    assert!(
        consumer.seek(&topic, 3, 0).await.is_err(),
        "seeking an unassigned partition fails"
    );
}

/// `offset_for_time` and `seek_to_time` find the first record at or after a timestamp, also
/// when timestamps are out of order.
pub async fn seek_to_time(log: Arc<dyn EventLog>) {
    let topic = unique("time");
    log.ensure_topic(&topic, 1).await.unwrap();
    let base = 1_700_000_000_000i64;
    // Offsets 0..=5 with timestamps base+0, +10, +20, +5 (late), +30, +40.
    let stamps = [0, 10, 20, 5, 30, 40];
    let records = stamps
        .iter()
        .map(|&s| NewRecord {
            timestamp_ms: Some(base + s),
            ..keyed("k", &s.to_string())
        })
        .collect();
    log.append(&topic, records).await.unwrap();
    for (target, expected) in [
        (-1, 0),
        (0, 0),
        (1, 1),
        (10, 1),
        (11, 2),
        (25, 4),
        (40, 5),
        (41, 6),
    ] {
        let offset = log.offset_for_time(&topic, 0, base + target).await.unwrap();
        assert_eq!(offset, expected, "first offset at or after base+{target}");
    }
    let mut consumer = log
        .consumer(
            &unique("time-group"),
            std::slice::from_ref(&topic),
            StartFrom::Earliest,
        )
        .await
        .unwrap();
    consumer.seek_to_time(base + 25).await.unwrap();
    let records = poll_n(consumer.as_mut(), 2).await;
    assert_eq!(
        records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![4, 5]
    );
}

/// A consumer waiting in `poll` is woken by an append at once, not at its timeout or a polling
/// tick. Returns the worst wake-up latency seen.
pub async fn wake_on_append(log: Arc<dyn EventLog>) -> Duration {
    let topic = unique("wake");
    log.ensure_topic(&topic, 2).await.unwrap();
    let mut consumer = log
        .consumer(
            &unique("wake-group"),
            std::slice::from_ref(&topic),
            StartFrom::Latest,
        )
        .await
        .unwrap();
    let mut worst = Duration::ZERO;
    for round in 0..5 {
        let appender = {
            let (log, topic) = (log.clone(), topic.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                log.append(&topic, vec![keyed("k", &round.to_string())])
                    .await
                    .unwrap();
                Instant::now()
            })
        };
        let records = consumer.poll(10, Duration::from_secs(20)).await.unwrap();
        let woken = Instant::now();
        let appended = appender.await.unwrap();
        assert_eq!(records.len(), 1, "round {round}");
        worst = worst.max(woken.saturating_duration_since(appended));
    }
    assert!(
        worst < Duration::from_secs(1),
        "woken {worst:?} after the append; the timeout was 20 s"
    );
    worst
}
