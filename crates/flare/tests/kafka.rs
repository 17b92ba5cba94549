//! `flare serve --log kafka://...` end to end: a write through the HTTP API becomes an event on
//! a real Kafka-protocol broker, read back by a separate Kafka client.

#![cfg(feature = "kafka")]

use std::time::{Duration, Instant};

use flare_kafka::{KafkaLog, test_broker::TestBroker};
use flare_log::{EventLog, StartFrom};
use serde_json::{Value, json};

mod common;
use common::Served;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_patient_is_an_event_on_the_kafka_broker() {
    let Some(broker) = TestBroker::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let served = tokio::task::spawn_blocking(move || {
        Served::start_args(&["--log", &url, "--data-dir", &data_dir])
    })
    .await
    .unwrap();

    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/Patient", served.base))
        .header("content-type", "application/fhir+json")
        .header("x-correlation-id", "kafka-e2e")
        .body(json!({"resourceType": "Patient", "name": [{"family": "Kafka"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();

    // A second client of the same broker, in its own consumer group.
    let witness = KafkaLog::connect(broker.config()).await.unwrap();
    let mut consumer = witness
        .consumer(
            "e2e-witness",
            &["fhir.Patient".to_owned()],
            StartFrom::Earliest,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut records = Vec::new();
    while records.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no event reached the broker; broker log:\n{}",
            broker.log_text()
        );
        records = consumer.poll(10, Duration::from_millis(500)).await.unwrap();
    }
    assert_eq!(records.len(), 1, "one write, one event");
    let record = &records[0];
    assert_eq!(
        record.key.as_deref(),
        Some(format!("Patient/{id}").as_bytes())
    );
    assert_eq!(record.header_str("correlationId"), Some("kafka-e2e"));
    let event: Value = serde_json::from_slice(&record.payload).unwrap();
    assert_eq!(event["type"], "PatientCreated");
    assert_eq!(
        record.header_str("eventId"),
        event["metadata"]["eventId"].as_str(),
        "the event id travels in a header too, for consumers that skip duplicates"
    );
    let topics = witness.topics().await.unwrap();
    assert!(topics.iter().any(|t| t.name == "fhir.Patient"));
    drop(served);
}
