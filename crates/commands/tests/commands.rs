//! Commands end to end, on both logs: published to the command topic, executed through the
//! commit path, answered by change events (or `CommandRejected`) that carry the request id as
//! correlation id; a request id runs once, across restarts too.
//!
//! Every test runs twice: on the embedded log and on a real Kafka-protocol broker (nisshi).

use std::{
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use flare_commands::{
    CommandExecutor, CommandOutcome, CommandRunner, CommandsConfig, ExecutedRequests,
};
use flare_events::Relay;
use flare_kafka::{KafkaLog, test_broker};
use flare_log::{EmbeddedLog, EventLog, NewRecord, Record, embedded::EmbeddedLogConfig};
use flare_search::Registry;
use flare_service::{Fhir, FhirConfig, WriteKind};
use flare_store::{
    Store,
    sqlite::{SqliteConfig, SqliteStore},
};
use serde_json::{Value, json};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Embedded,
    Kafka,
}

/// A node: store, log, relay and command runner over one data directory.
struct Node {
    fhir: Fhir,
    log: Arc<dyn EventLog>,
    config: CommandsConfig,
    runner: CommandRunner,
    stop_relay: watch::Sender<bool>,
    relay: tokio::task::JoinHandle<()>,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn open_log(backend: Backend, dir: &Path) -> Option<Arc<dyn EventLog>> {
    Some(match backend {
        Backend::Embedded => Arc::new(
            EmbeddedLog::open(EmbeddedLogConfig::in_dir(dir.join("log")))
                .await
                .unwrap(),
        ),
        Backend::Kafka => {
            let broker = test_broker::shared()?;
            Arc::new(KafkaLog::connect(broker.config()).await.unwrap())
        }
    })
}

impl Node {
    async fn start(
        log: Arc<dyn EventLog>,
        dir: &Path,
        config: CommandsConfig,
        executed: ExecutedRequests,
    ) -> Self {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(SqliteConfig::file(dir.join("flare.db"))).unwrap());
        let fhir = Fhir::new(
            store.clone(),
            Arc::new(Registry::r4()),
            FhirConfig::default(),
        );
        let (stop_relay, stopped) = watch::channel(false);
        let relay = tokio::spawn(Relay::new(store, log.clone()).run(stopped));
        let executor = CommandExecutor::new(fhir.clone(), executed, config.clone());
        let runner = CommandRunner::spawn(executor, log.clone());
        Self {
            fhir,
            log,
            config,
            runner,
            stop_relay,
            relay,
        }
    }

    async fn stop(self) {
        self.runner.shutdown().await;
        let _ = self.stop_relay.send(true);
        let _ = self.relay.await;
    }

    async fn send(&self, command: Value) {
        let request_id = command["metadata"]["requestId"].as_str().unwrap_or("none");
        self.log
            .append(
                &self.config.topic,
                vec![NewRecord {
                    key: Some(request_id.as_bytes().to_vec()),
                    payload: command.to_string().into_bytes(),
                    ..NewRecord::default()
                }],
            )
            .await
            .unwrap();
    }

    async fn send_raw(&self, payload: &[u8]) {
        self.log
            .append(
                &self.config.topic,
                vec![NewRecord {
                    payload: payload.to_vec(),
                    ..NewRecord::default()
                }],
            )
            .await
            .unwrap();
    }
}

fn config() -> CommandsConfig {
    CommandsConfig {
        topic: unique("fhir.commands"),
        rejected_topic: unique("fhir.commands.rejected"),
        group: unique("commands"),
        ..CommandsConfig::default()
    }
}

fn command(command_type: &str, request_id: &str, data: Value) -> Value {
    json!({
        "type": command_type,
        "data": data,
        "metadata": {"requestId": request_id, "source": "test-suite", "timestamp": "2026-01-01T00:00:00Z"}
    })
}

/// Every record on the log whose `correlationId` header is `correlation_id`.
async fn correlated(log: &Arc<dyn EventLog>, correlation_id: &str) -> Vec<Record> {
    let mut found = Vec::new();
    for topic in log.topics().await.unwrap() {
        for partition in 0..topic.partitions {
            let (start, end) = (
                topic.start_offsets[partition as usize],
                topic.end_offsets[partition as usize],
            );
            let mut offset = start;
            while offset < end {
                let records = log
                    .read(&topic.name, partition, offset, 1000)
                    .await
                    .unwrap();
                let Some(last) = records.last() else { break };
                offset = last.offset + 1;
                found.extend(
                    records
                        .into_iter()
                        .filter(|r| r.header_str("correlationId") == Some(correlation_id)),
                );
            }
        }
    }
    found
}

/// Waits for the first event correlated with `request_id`, and returns its JSON.
async fn event_for(log: &Arc<dyn EventLog>, request_id: &str) -> (Record, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(record) = correlated(log, request_id).await.into_iter().next() {
            let event = serde_json::from_slice(&record.payload).unwrap();
            return (record, event);
        }
        assert!(
            Instant::now() < deadline,
            "no event correlated with {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_update_delete_answer_with_correlated_events(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(log) = open_log(backend, dir.path()).await else {
        return;
    };
    let node = Node::start(
        log.clone(),
        dir.path(),
        config(),
        ExecutedRequests::open(None).unwrap(),
    )
    .await;

    let create_patient = unique("create-patient");
    node.send(command(
        "CreatePatient",
        &create_patient,
        json!({"resourceType": "Patient", "name": [{"family": "Commanded"}]}),
    ))
    .await;
    let (record, event) = event_for(&log, &create_patient).await;
    assert_eq!(record.topic, "fhir.Patient");
    assert_eq!(event["type"], "PatientCreated");
    assert_eq!(event["metadata"]["correlationId"], create_patient.as_str());
    assert_eq!(event["data"]["name"][0]["family"], "Commanded");
    let patient_id = event["metadata"]["resourceId"].as_str().unwrap().to_owned();
    let stored = node.fhir.read("Patient", &patient_id).await.unwrap();
    assert!(
        format!("{stored:?}").contains("Commanded"),
        "the patient is stored"
    );

    // Data without resourceType takes it from the command type.
    let create_encounter = unique("create-encounter");
    node.send(command(
        "CreateEncounter",
        &create_encounter,
        json!({"status": "in-progress", "class": {"code": "IMP"}, "subject": {"reference": format!("Patient/{patient_id}")}}),
    ))
    .await;
    let (_, event) = event_for(&log, &create_encounter).await;
    assert_eq!(event["type"], "EncounterCreated");
    let encounter_id = event["metadata"]["resourceId"].as_str().unwrap().to_owned();

    let create_observation = unique("create-observation");
    node.send(command(
        "CreateObservation",
        &create_observation,
        json!({"resourceType": "Observation", "status": "preliminary", "code": {"text": "heart rate"},
               "subject": {"reference": format!("Patient/{patient_id}")}}),
    ))
    .await;
    let (_, event) = event_for(&log, &create_observation).await;
    let observation_id = event["metadata"]["resourceId"].as_str().unwrap().to_owned();

    let update_observation = unique("update-observation");
    node.send(command(
        "UpdateObservation",
        &update_observation,
        json!({"resourceType": "Observation", "id": observation_id, "status": "final", "code": {"text": "heart rate"},
               "subject": {"reference": format!("Patient/{patient_id}")}}),
    ))
    .await;
    let (record, event) = event_for(&log, &update_observation).await;
    assert_eq!(event["type"], "ObservationUpdated");
    assert_eq!(event["metadata"]["versionId"], "2");
    assert_eq!(event["data"]["status"], "final");
    assert_eq!(
        record.key.as_deref(),
        Some(format!("Patient/{patient_id}").as_bytes()),
        "partitioned by the patient compartment like every change event"
    );

    let delete_encounter = unique("delete-encounter");
    node.send(command(
        "DeleteEncounter",
        &delete_encounter,
        json!({"id": encounter_id}),
    ))
    .await;
    let (_, event) = event_for(&log, &delete_encounter).await;
    assert_eq!(event["type"], "EncounterDeleted");
    assert_eq!(event["metadata"]["resourceId"], encounter_id.as_str());
    let stats = node.runner.stats();
    assert_eq!(stats.executed.load(Ordering::Relaxed), 5);
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 0);
    node.stop().await;
}

async fn failures_are_rejected_with_an_operation_outcome(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(log) = open_log(backend, dir.path()).await else {
        return;
    };
    let config = config();
    let node = Node::start(
        log.clone(),
        dir.path(),
        config.clone(),
        ExecutedRequests::open(None).unwrap(),
    )
    .await;

    let invalid = unique("invalid-patient");
    node.send(command(
        "CreatePatient",
        &invalid,
        json!({"resourceType": "Patient", "birthDate": "not a date"}),
    ))
    .await;
    let (record, event) = event_for(&log, &invalid).await;
    assert_eq!(record.topic, config.rejected_topic);
    assert_eq!(record.header_str("eventType"), Some("CommandRejected"));
    assert_eq!(event["type"], "CommandRejected");
    assert_eq!(event["data"]["resourceType"], "OperationOutcome");
    assert_eq!(event["metadata"]["commandType"], "CreatePatient");
    assert_eq!(event["metadata"]["correlationId"], invalid.as_str());
    assert_eq!(event["metadata"]["status"], 400);
    assert!(
        event["data"]["issue"].to_string().contains("birthDate"),
        "the outcome names the bad element: {}",
        event["data"]
    );
    assert_eq!(
        record.header_str("eventId"),
        event["metadata"]["eventId"].as_str()
    );

    let missing_id = unique("update-without-id");
    node.send(command(
        "UpdateObservation",
        &missing_id,
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
    ))
    .await;
    let (_, event) = event_for(&log, &missing_id).await;
    assert!(
        event["data"].to_string().contains("data.id"),
        "{}",
        event["data"]
    );

    let unknown_type = unique("unknown-type");
    node.send(command("CreateUnicorn", &unknown_type, json!({"horn": 1})))
        .await;
    let (_, event) = event_for(&log, &unknown_type).await;
    assert_eq!(event["type"], "CommandRejected");

    let gone = unique("delete-nothing");
    node.send(command(
        "DeleteEncounter",
        &gone,
        json!({"id": "never-existed"}),
    ))
    .await;
    let (_, event) = event_for(&log, &gone).await;
    assert_eq!(event["type"], "CommandRejected");
    assert_eq!(event["metadata"]["status"], 404, "as DELETE would answer");

    // Not JSON at all: rejected (with a fresh correlation id), and the runner goes on.
    node.send_raw(b"{\"type\": \"CreatePatient\", ").await;
    let after = unique("after-garbage");
    node.send(command(
        "CreatePatient",
        &after,
        json!({"resourceType": "Patient"}),
    ))
    .await;
    let (_, event) = event_for(&log, &after).await;
    assert_eq!(event["type"], "PatientCreated");
    let stats = node.runner.stats();
    assert_eq!(
        stats.rejected.load(Ordering::Relaxed),
        5,
        "invalid, missing id, unknown type, nothing to delete, garbage"
    );
    assert_eq!(stats.executed.load(Ordering::Relaxed), 1);
    node.stop().await;
}

async fn a_request_id_runs_once_across_restarts(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(log) = open_log(backend, dir.path()).await else {
        return;
    };
    let executed_file = dir.path().join("commands.sqlite");
    let config = config();
    let node = Node::start(
        log.clone(),
        dir.path(),
        config.clone(),
        ExecutedRequests::open(Some(&executed_file)).unwrap(),
    )
    .await;
    let request = unique("once");
    let create = command(
        "CreatePatient",
        &request,
        json!({"resourceType": "Patient", "name": [{"family": "Once"}]}),
    );
    node.send(create.clone()).await;
    node.send(create.clone()).await;
    let stats = node.runner.stats();
    wait_until("the resend to be skipped", || {
        stats.duplicates.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(stats.executed.load(Ordering::Relaxed), 1);
    node.stop().await;

    // A restart, reading the topic from its start again (a new group: every command is
    // redelivered), plus one more resend.
    let mut restarted_config = config.clone();
    restarted_config.group = unique("commands-restarted");
    let node = Node::start(
        log.clone(),
        dir.path(),
        restarted_config,
        ExecutedRequests::open(Some(&executed_file)).unwrap(),
    )
    .await;
    node.send(create.clone()).await;
    let stats = node.runner.stats();
    wait_until("the three deliveries to be skipped", || {
        stats.duplicates.load(Ordering::Relaxed) == 3
    })
    .await;
    assert_eq!(stats.executed.load(Ordering::Relaxed), 0);
    // Let the relay drain anything a mistaken re-execution would have committed.
    node.stop().await;
    let events = correlated(&log, &request).await;
    assert_eq!(
        events.len(),
        1,
        "one event for the request, however often it came"
    );
}

/// The window between the store commit and the executed-request record: a create that runs
/// again (its record lost) finds its own resource and changes nothing.
async fn a_create_run_again_without_its_record_changes_nothing(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(log) = open_log(backend, dir.path()).await else {
        return;
    };
    let config = config();
    let node = Node::start(
        log.clone(),
        dir.path(),
        config.clone(),
        ExecutedRequests::open(None).unwrap(),
    )
    .await;
    let request = unique("crash-window");
    node.send(command(
        "CreatePatient",
        &request,
        json!({"resourceType": "Patient", "name": [{"family": "Window"}]}),
    ))
    .await;
    event_for(&log, &request).await;
    let fhir = node.fhir.clone();
    let record = correlated(&log, &request).await.remove(0);
    node.stop().await;

    let command_record = {
        let mut found = None;
        for partition in 0..4 {
            if let Ok(records) = log.read(&config.topic, partition, 0, 10).await
                && let Some(record) = records.into_iter().next()
            {
                found = Some(record);
            }
        }
        found.expect("the command is on its topic")
    };
    let forgetful = CommandExecutor::new(fhir, ExecutedRequests::open(None).unwrap(), config);
    let outcome = forgetful.execute(&command_record).await.unwrap();
    assert!(
        matches!(
            outcome,
            CommandOutcome::Executed {
                kind: WriteKind::Unchanged,
                ..
            }
        ),
        "{outcome:?}"
    );
    let event: Value = serde_json::from_slice(&record.payload).unwrap();
    assert_eq!(event["metadata"]["versionId"], "1");
}

macro_rules! on_both_logs {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Embedded).await;
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Kafka).await;
                }
            )*
        }
    };
}

on_both_logs!(
    create_update_delete_answer_with_correlated_events,
    failures_are_rejected_with_an_operation_outcome,
    a_request_id_runs_once_across_restarts,
    a_create_run_again_without_its_record_changes_nothing,
);
