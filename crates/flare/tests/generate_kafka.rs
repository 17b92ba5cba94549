//! `flare generate --kafka` against a real Kafka-protocol broker, end to end: the population
//! is published one message per resource keyed by patient, `flare ingest kafka` loads the
//! topic into a running server, and the server holds exactly what the generator produced, in
//! JSON and in XML.

#![cfg(feature = "kafka")]

use std::collections::{BTreeMap, BTreeSet};

use flare_generator::{Generator, GeneratorConfig};
use flare_kafka::{KafkaLog, test_broker::TestBroker};
mod common;
use common::{Served, flare};

const PATIENTS: u64 = 6;

/// What `flare generate --seed SEED --patients 6` produces with its other settings at their
/// defaults: the messages (one per resource version) and the distinct resources by type.
fn expected(seed: u64) -> (u64, BTreeMap<String, BTreeSet<String>>) {
    let generator = Generator::new(GeneratorConfig {
        seed,
        patients: Some(PATIENTS),
        ..GeneratorConfig::default()
    })
    .unwrap();
    let mut messages = 0;
    let mut resources: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for item in generator {
        messages += 1;
        resources
            .entry(item.resource_type().to_owned())
            .or_default()
            .insert(item.resource["id"].as_str().unwrap().to_owned());
    }
    (messages, resources)
}

fn generate_to_kafka(broker: &TestBroker, topic: &str, format: &str, seed: u64) {
    let output = flare()
        .args(["generate", "--patients", &PATIENTS.to_string(), "--seed"])
        .arg(seed.to_string())
        .args([
            "--kafka",
            &broker.address(),
            "--topic",
            topic,
            "--format",
            format,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn ingest_into(broker: &TestBroker, topic: &str, served: &Served) {
    let output = flare()
        .args([
            "ingest",
            "kafka",
            "--brokers",
            &broker.address(),
            "--topic",
            topic,
        ])
        .args(["--group", &format!("{topic}-ingest"), "--until-idle", "5"])
        .args(["--url", &served.base])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" 0 dead-lettered"), "{stdout}");
}

fn check_round_trip(
    runtime: &tokio::runtime::Runtime,
    log: &KafkaLog,
    broker: &TestBroker,
    format: &str,
    seed: u64,
) {
    let topic = format!("generated-{format}");
    generate_to_kafka(broker, &topic, format, seed);
    let (messages, resources) = expected(seed);

    let records = runtime.block_on(common::read_all(log, &topic));
    assert_eq!(
        records.len() as u64,
        messages,
        "one message per resource version"
    );
    let content_type = format!("application/fhir+{format}");
    let mut partitions_of_patient: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for record in &records {
        assert_eq!(
            record.header_str("content-type"),
            Some(content_type.as_str())
        );
        let key = String::from_utf8(record.key.clone().expect("keyed")).unwrap();
        assert!(key.starts_with("Patient/"), "keyed by patient: {key}");
        let starts_like_format = match format {
            "xml" => record.payload.starts_with(b"<?xml"),
            _ => record.payload.starts_with(b"{"),
        };
        assert!(starts_like_format, "{format} payload");
        partitions_of_patient
            .entry(key)
            .or_default()
            .insert(record.partition);
    }
    assert_eq!(partitions_of_patient.len() as u64, PATIENTS);
    assert!(
        partitions_of_patient.values().all(|p| p.len() == 1),
        "each patient's messages stay in one partition: {partitions_of_patient:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let served = Served::api_only(dir.path());
    ingest_into(broker, &topic, &served);
    for (resource_type, ids) in &resources {
        assert_eq!(
            served.count(resource_type),
            ids.len() as u64,
            "{resource_type} from {format} messages"
        );
    }
    // Encounters were published twice (admission, discharge): the later version won.
    let encounters = served.all("Encounter?_count=100");
    assert!(!encounters.is_empty());
    assert!(
        encounters
            .iter()
            .all(|e| e["status"] == "finished" && e["meta"]["versionId"] == "2"),
        "{encounters:?}"
    );
}

#[test]
fn a_generated_population_goes_through_kafka_into_a_server_in_json_and_xml() {
    let Some(broker) = TestBroker::start() else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let log = runtime
        .block_on(KafkaLog::connect(broker.config()))
        .unwrap();
    check_round_trip(&runtime, &log, &broker, "json", 31);
    check_round_trip(&runtime, &log, &broker, "xml", 32);
}

#[test]
fn an_unreachable_broker_is_reported_with_its_address() {
    // A short request timeout, through the config file's [kafka] section.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flare.toml");
    std::fs::write(&config, "[kafka]\nrequest_timeout_ms = 2000\n").unwrap();
    let output = flare()
        .args([
            "generate",
            "--patients",
            "1",
            "--kafka",
            "127.0.0.1:1",
            "--topic",
            "t",
        ])
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}
