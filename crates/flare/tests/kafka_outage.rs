//! A Kafka outage under sustained writes: `flare serve --log kafka://...` keeps accepting
//! writes while the broker is down (they wait in the store's outbox), reports the backlog in
//! `/metrics`, and catches up when the broker returns: every write becomes exactly one event.
//!
//! The broker runs on nisshi's SQLite engine, so that its topics survive the restart on the
//! same port (the memory engine starts empty again, as a new cluster would).

#![cfg(feature = "kafka")]

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use flare_kafka::{
    KafkaLog,
    test_broker::{StorageEngine, TestBroker},
};
use flare_log::EventLog;
use serde_json::{Value, json};

mod common;
use common::{Served, client};

/// The broker is down this long while writes go on.
const OUTAGE: Duration = Duration::from_secs(20);

fn metric(base: &str, name: &str) -> Option<f64> {
    let root = base.trim_end_matches("/fhir");
    let text = client()
        .get(format!("{root}/metrics"))
        .send()
        .ok()?
        .text()
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Resource id -> event ids of every `PatientCreated` event on `fhir.Patient`.
async fn events_by_patient(log: &KafkaLog) -> BTreeMap<String, Vec<String>> {
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(topics) = log.topics().await else {
        return found;
    };
    let Some(info) = topics.into_iter().find(|t| t.name == "fhir.Patient") else {
        return found;
    };
    for partition in 0..info.partitions {
        let mut offset = info.start_offsets[partition as usize];
        let end = info.end_offsets[partition as usize];
        while offset < end {
            let Ok(records) = log.read("fhir.Patient", partition, offset, 500).await else {
                break;
            };
            let Some(last) = records.last() else { break };
            offset = last.offset + 1;
            for record in records {
                let event: Value = serde_json::from_slice(&record.payload).unwrap();
                let id = event["metadata"]["resourceId"].as_str().unwrap().to_owned();
                let event_id = event["metadata"]["eventId"].as_str().unwrap().to_owned();
                found.entry(id).or_default().push(event_id);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_through_a_broker_outage_and_every_event_arrives_once() {
    let Some(mut broker) = TestBroker::start_on(StorageEngine::Sqlite) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // Short request timeouts so that /metrics (which lists topics) answers during the outage.
    let config = dir.path().join("flare.toml");
    std::fs::write(&config, "[kafka]\nrequest_timeout_ms = 2000\n").unwrap();
    let served = Served::on_kafka(
        &broker.url(),
        dir.path().to_str().unwrap(),
        &["--config", config.to_str().unwrap()],
    )
    .await;
    let base = served.base.clone();

    // Sustained writes from another thread, ~50 per second, each of which must succeed.
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = {
        let (base, stop) = (base.clone(), stop_writing.clone());
        std::thread::spawn(move || {
            let http = client();
            let mut created = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let response = http
                    .post(format!("{base}/Patient"))
                    .header("content-type", "application/fhir+json")
                    .body(
                        json!({"resourceType": "Patient", "name": [{"family": format!("Outage{n}")}]})
                            .to_string(),
                    )
                    .send()
                    .unwrap();
                assert_eq!(response.status().as_u16(), 201, "write {n} was refused");
                let body: Value = response.json().unwrap();
                created.push(body["id"].as_str().unwrap().to_owned());
                std::thread::sleep(Duration::from_millis(20));
            }
            created
        })
    };

    let witness = KafkaLog::connect(broker.config()).await.unwrap();
    // Events flow before the outage.
    let deadline = Instant::now() + Duration::from_secs(30);
    while events_by_patient(&witness).await.len() < 10 {
        assert!(Instant::now() < deadline, "no events before the outage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(witness);

    let base_for_metrics = base.clone();
    let backlog_during_outage = tokio::task::spawn_blocking(move || {
        broker.stop();
        let started = Instant::now();
        let mut highest_pending = 0.0_f64;
        let mut highest_age = 0.0_f64;
        while started.elapsed() < OUTAGE {
            std::thread::sleep(Duration::from_secs(2));
            if let Some(pending) = metric(&base_for_metrics, "flare_outbox_pending") {
                highest_pending = highest_pending.max(pending);
            }
            if let Some(age) = metric(&base_for_metrics, "flare_outbox_oldest_pending_age_seconds")
            {
                highest_age = highest_age.max(age);
            }
        }
        broker.restart().unwrap();
        (broker, highest_pending, highest_age)
    });
    let (broker, highest_pending, highest_age) = backlog_during_outage.await.unwrap();
    eprintln!(
        "during the outage: up to {highest_pending} events waited in the outbox, the oldest for up to {highest_age} s"
    );
    assert!(
        highest_pending >= 100.0,
        "the backlog shows in /metrics during the outage (saw at most {highest_pending})"
    );
    assert!(
        highest_age >= 5.0,
        "the oldest waiting event's age grows during the outage (saw at most {highest_age} s)"
    );

    // A few more writes after the broker is back, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_writing.store(true, Ordering::Release);
    let created = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    assert!(
        created.len() > 500,
        "writes went on during the outage ({} in all)",
        created.len()
    );

    let caught_up = Instant::now();
    let witness = KafkaLog::connect(broker.config()).await.unwrap();
    let wanted: BTreeSet<String> = created.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let events = loop {
        let events = events_by_patient(&witness).await;
        let arrived: BTreeSet<String> = events.keys().cloned().collect();
        if wanted.is_subset(&arrived) {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} writes never became events; broker log tail:\n{}",
            wanted.difference(&arrived).count(),
            wanted.len(),
            broker
                .log_text()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "{} writes in all; every one on Kafka {:.1} s after the writes stopped",
        wanted.len(),
        caught_up.elapsed().as_secs_f64()
    );
    assert_eq!(
        events.len(),
        wanted.len(),
        "no event for a write that did not happen"
    );
    let duplicated: Vec<_> = events.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        duplicated.is_empty(),
        "one event per write: {} patients have several ({:?})",
        duplicated.len(),
        duplicated.first()
    );
    let pending = tokio::task::spawn_blocking(move || metric(&base, "flare_outbox_pending"))
        .await
        .unwrap();
    assert_eq!(pending, Some(0.0), "the backlog is gone");
    drop(served);
}
