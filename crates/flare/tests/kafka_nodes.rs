//! Two `flare serve --log kafka://...` nodes share the command topic through their consumer
//! group; when one is killed, the other takes over its partitions and nothing is lost.
//!
//! Each node has its own store (the topology `crates/kafka/README.md` documents): the commands
//! a node executes land in its store, and their events on the shared topics.

#![cfg(feature = "kafka")]

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use flare_kafka::{KafkaLog, test_broker::TestBroker};
use flare_log::{EventLog, NewRecord};
use serde_json::{Value, json};

mod common;
use common::Served;

/// Commands this node executed, from its `/metrics`.
async fn executed_by(served: &Served) -> u64 {
    let url = format!("{}/metrics", served.base.trim_end_matches("/fhir"));
    let http = served.http.clone();
    tokio::task::spawn_blocking(move || {
        http.get(url)
            .send()
            .ok()?
            .text()
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("flare_commands_total{outcome=\"executed\"} "))?
            .parse()
            .ok()
    })
    .await
    .unwrap()
    .unwrap_or(0)
}

async fn send_creates(log: &KafkaLog, prefix: &str, count: usize) {
    let records = (0..count)
        .map(|n| {
            let request_id = format!("{prefix}-{n}");
            NewRecord {
                key: Some(request_id.clone().into_bytes()),
                payload: json!({
                    "type": "CreatePatient",
                    "data": {"resourceType": "Patient", "name": [{"family": request_id}]},
                    "metadata": {"requestId": request_id, "source": "nodes-test"}
                })
                .to_string()
                .into_bytes(),
                ..NewRecord::default()
            }
        })
        .collect();
    log.append("fhir.commands", records).await.unwrap();
}

/// Correlation id -> number of `PatientCreated` events, for ids starting with `prefix`.
async fn events_by_request(log: &KafkaLog, prefix: &str) -> BTreeMap<String, usize> {
    let mut found = BTreeMap::new();
    let Ok(topics) = log.topics().await else {
        return found;
    };
    let Some(info) = topics.into_iter().find(|t| t.name == "fhir.Patient") else {
        return found;
    };
    for partition in 0..info.partitions {
        let end = info.end_offsets[partition as usize];
        let mut offset = info.start_offsets[partition as usize];
        while offset < end {
            let records = log
                .read("fhir.Patient", partition, offset, 500)
                .await
                .unwrap();
            let Some(last) = records.last() else { break };
            offset = last.offset + 1;
            for record in records {
                let event: Value = serde_json::from_slice(&record.payload).unwrap();
                if let Some(id) = event["metadata"]["correlationId"].as_str()
                    && id.starts_with(prefix)
                {
                    *found.entry(id.to_owned()).or_default() += 1;
                }
            }
        }
    }
    found
}

async fn wait_for_all(log: &KafkaLog, prefix: &str, count: usize) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let events = events_by_request(log, prefix).await;
        if events.len() == count {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} `{prefix}` commands answered",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_command_partitions_move_to_the_other_and_nothing_is_lost() {
    let Some(broker) = TestBroker::start() else {
        return;
    };
    let producer = KafkaLog::connect(broker.config()).await.unwrap();
    producer.ensure_topic("fhir.commands", 4).await.unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut node_a = Served::on_kafka(&broker.url(), dir_a.path().to_str().unwrap(), &[]).await;
    let node_b = Served::on_kafka(&broker.url(), dir_b.path().to_str().unwrap(), &[]).await;

    // Both nodes join the group `flare-commands`: once the group has rebalanced, the 4
    // partitions are split between them. Commands go out in rounds until both took part.
    const BATCH: usize = 40;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    let (by_a, by_b) = loop {
        send_creates(&producer, &format!("before{rounds}"), BATCH).await;
        wait_for_all(&producer, &format!("before{rounds}"), BATCH).await;
        rounds += 1;
        let (by_a, by_b) = (executed_by(&node_a).await, executed_by(&node_b).await);
        if by_a > 0 && by_b > 0 {
            break (by_a, by_b);
        }
        assert!(
            Instant::now() < deadline,
            "the second node never got a command partition ({by_a} and {by_b} commands)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(by_a + by_b, (rounds * BATCH) as u64);
    let before = events_by_request(&producer, "before").await;
    assert_eq!(before.len(), rounds * BATCH);
    assert!(
        before.values().all(|&n| n == 1),
        "each command executed once: {before:?}"
    );

    // Let node A commit what it executed, then kill it like a crash.
    tokio::time::sleep(Duration::from_secs(1)).await;
    tokio::task::block_in_place(|| node_a.kill());
    send_creates(&producer, "after", BATCH).await;
    let after = wait_for_all(&producer, "after", BATCH).await;
    assert!(
        after.values().all(|&n| n == 1),
        "each command executed once: {after:?}"
    );
    assert_eq!(
        executed_by(&node_b).await,
        by_b + BATCH as u64,
        "the survivor executed every command sent after the kill, on all partitions"
    );
    assert_eq!(
        events_by_request(&producer, "before").await,
        before,
        "the takeover re-ran nothing node A had committed"
    );
    drop(node_b);
}
