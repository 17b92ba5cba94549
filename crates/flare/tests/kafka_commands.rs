//! Commands through `flare serve --log kafka://...`: published to `fhir.commands` by another
//! Kafka client, answered by a correlated change event, and executed once even when the same
//! request comes again after the server was killed and restarted.

#![cfg(feature = "kafka")]

use std::time::{Duration, Instant};

use flare_kafka::{KafkaLog, test_broker::TestBroker};
use flare_log::{EventLog, NewRecord, Record};
use serde_json::{Value, json};

mod common;
use common::{Served, flare};

/// The blocking HTTP client of `Served`, from this async test.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

async fn send(log: &KafkaLog, command: &Value) {
    let request_id = command["metadata"]["requestId"].as_str().unwrap();
    log.append(
        "fhir.commands",
        vec![NewRecord {
            key: Some(request_id.as_bytes().to_vec()),
            payload: command.to_string().into_bytes(),
            ..NewRecord::default()
        }],
    )
    .await
    .unwrap();
}

/// Records of `topic` whose correlation id is `request_id`.
async fn correlated(log: &KafkaLog, topic: &str, request_id: &str) -> Vec<Record> {
    let mut found = Vec::new();
    let Ok(topics) = log.topics().await else {
        return found;
    };
    let Some(info) = topics.into_iter().find(|t| t.name == topic) else {
        return found;
    };
    for partition in 0..info.partitions {
        let end = info.end_offsets[partition as usize];
        let mut offset = info.start_offsets[partition as usize];
        while offset < end {
            let records = log.read(topic, partition, offset, 500).await.unwrap();
            let Some(last) = records.last() else { break };
            offset = last.offset + 1;
            found.extend(
                records
                    .into_iter()
                    .filter(|r| r.header_str("correlationId") == Some(request_id)),
            );
        }
    }
    found
}

async fn wait_for(log: &KafkaLog, topic: &str, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(record) = correlated(log, topic, request_id).await.first() {
            return serde_json::from_slice(&record.payload).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no event on {topic} for request {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_kafka_is_answered_once_across_a_restart() {
    let Some(broker) = TestBroker::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let mut served = Served::on_kafka(&broker.url(), &data_dir, &[]).await;
    let producer = KafkaLog::connect(broker.config()).await.unwrap();

    let create = json!({
        "type": "CreatePatient",
        "data": {"resourceType": "Patient", "name": [{"family": "ViaKafka"}]},
        "metadata": {"requestId": "req-create-1", "source": "kafka-test", "timestamp": "2026-01-01T00:00:00Z"}
    });
    send(&producer, &create).await;
    let event = wait_for(&producer, "fhir.Patient", "req-create-1").await;
    assert_eq!(event["type"], "PatientCreated");
    assert_eq!(event["metadata"]["correlationId"], "req-create-1");
    let id = event["metadata"]["resourceId"].as_str().unwrap().to_owned();
    let status = blocking(|| {
        served
            .http
            .get(format!("{}/Patient/{id}", served.base))
            .send()
            .unwrap()
            .status()
    });
    assert_eq!(status.as_u16(), 200, "the commanded patient is served");

    let rejected = json!({
        "type": "UpdateObservation",
        "data": {"resourceType": "Observation", "status": "final"},
        "metadata": {"requestId": "req-bad-1", "source": "kafka-test"}
    });
    send(&producer, &rejected).await;
    let event = wait_for(&producer, "fhir.commands.rejected", "req-bad-1").await;
    assert_eq!(event["type"], "CommandRejected");
    assert_eq!(event["data"]["resourceType"], "OperationOutcome");

    // A crash, a restart on the same data directory, and the same request again.
    served.kill();
    let served = Served::on_kafka(&broker.url(), &data_dir, &[]).await;
    send(&producer, &create).await;
    let marker = json!({
        "type": "CreatePatient",
        "data": {"resourceType": "Patient", "name": [{"family": "AfterRestart"}]},
        "metadata": {"requestId": "req-after-restart", "source": "kafka-test"}
    });
    send(&producer, &marker).await;
    // Commands run in partition order only per key: wait for the marker, then for the
    // resend's turn to have passed through the runner (its metric).
    wait_for(&producer, "fhir.Patient", "req-after-restart").await;
    let root = served.base.trim_end_matches("/fhir").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = blocking(|| {
            served
                .http
                .get(format!("{root}/metrics"))
                .send()
                .unwrap()
                .text()
                .unwrap()
        });
        let duplicates: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("flare_commands_total{outcome=\"duplicate\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if duplicates >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resend was never skipped:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        correlated(&producer, "fhir.Patient", "req-create-1")
            .await
            .len(),
        1,
        "the resent command changed nothing"
    );
    let found = blocking(|| served.count("Patient?family=ViaKafka"));
    assert_eq!(found, 1);
    drop(served);

    // The console tools read the same brokers.
    let url = broker.url();
    let tail = blocking(|| {
        flare()
            .args([
                "events",
                "tail",
                "fhir.commands.rejected",
                "--from-beginning",
            ])
            .args(["--max", "1", "--idle-exit-ms", "20000", "--log", &url])
            .output()
            .unwrap()
    });
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let line: Value = serde_json::from_slice(&tail.stdout).unwrap();
    assert_eq!(line["value"]["type"], "CommandRejected");
    assert_eq!(line["headers"]["correlationId"], "req-bad-1");
    let topics = blocking(|| {
        flare()
            .args(["events", "topics", "--log", &url])
            .output()
            .unwrap()
    });
    let listed = String::from_utf8_lossy(&topics.stdout);
    assert!(listed.contains("fhir.commands "), "{listed}");
    let dlq = blocking(|| {
        flare()
            .args(["dlq", "list", "--log", &url])
            .output()
            .unwrap()
    });
    assert!(
        dlq.status.success(),
        "{}",
        String::from_utf8_lossy(&dlq.stderr)
    );
    assert!(String::from_utf8_lossy(&dlq.stdout).contains("no dead letters"));
}
