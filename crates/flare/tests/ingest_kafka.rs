//! `flare ingest kafka` against a real Kafka-protocol broker: the DSTU2 XML sample-patient
//! bundles published one message per file load with the fixture README's counts (the same
//! expectations as `ingest_legacy.rs`), a malformed message lands in `<topic>.dlq` with its
//! reason while the rest loads, and committed offsets keep a second run from loading anything
//! again.

#![cfg(feature = "kafka")]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use flare_kafka::{KafkaLog, test_broker::TestBroker};
use flare_log::{EventLog, Header, NewRecord, Position};
mod common;
use common::{Served, flare, sample_patients};

fn dstu2_fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/sample-patients/dstu2-xml");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    files
}

fn ingest_kafka(broker: &TestBroker, topic: &str, data_dir: &Path) -> Output {
    flare()
        .args(["ingest", "kafka", "--brokers"])
        .arg(broker.address())
        .args([
            "--topic",
            topic,
            "--group",
            "ingest-test",
            "--until-idle",
            "5",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

const MALFORMED: &str =
    "<Bundle xmlns=\"http://hl7.org/fhir\">\n<type value=\"transaction\"/>\n<entry>\n</Bundle>\n";

#[test]
fn dstu2_xml_messages_load_with_the_readme_counts_and_a_malformed_one_is_dead_lettered() {
    let Some(broker) = TestBroker::start() else {
        return;
    };
    let topic = "sample-patients-dstu2";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let log = runtime
        .block_on(KafkaLog::connect(broker.config()))
        .unwrap();
    let files = dstu2_fixtures();
    assert_eq!(files.len(), 10);
    let malformed_at: Position = runtime.block_on(async {
        log.ensure_topic(topic, 2).await.unwrap();
        for file in &files {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            log.append(
                topic,
                vec![NewRecord {
                    key: Some(name.into_bytes()),
                    headers: Vec::new(),
                    payload: std::fs::read(file).unwrap(),
                    timestamp_ms: None,
                }],
            )
            .await
            .unwrap();
        }
        log.append(
            topic,
            vec![NewRecord {
                key: Some(b"broken".to_vec()),
                headers: vec![Header::new("sender", "ward-7")],
                payload: MALFORMED.as_bytes().to_vec(),
                timestamp_ms: None,
            }],
        )
        .await
        .unwrap()
        .remove(0)
    });

    let dir = tempfile::tempdir().unwrap();
    let output = ingest_kafka(&broker, topic, dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The summary, with its timing, for `--nocapture` runs.
    eprintln!("{stdout}");
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("11 messages, 10 loaded, 1 dead-lettered to sample-patients-dstu2.dlq"),
        "{stdout}\n{stderr}"
    );
    // The same unmapped legacy types as the file ingest: reported, not dead-lettered.
    assert!(
        stdout.contains("not loaded, no R4 mapping: List 6, MedicationDispense 113, Procedure 9"),
        "{stdout}\n{stderr}"
    );
    let refusals: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("failed ") && !line.contains("no R4 mapping"))
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert!(refusals[0].contains("not well-formed"), "{refusals:#?}");

    // The dead letter: the original message with the reason and where it came from.
    let dead_letters = runtime.block_on(common::read_all(&log, "sample-patients-dstu2.dlq"));
    assert_eq!(dead_letters.len(), 1, "{dead_letters:#?}");
    let letter = &dead_letters[0];
    assert_eq!(letter.payload, MALFORMED.as_bytes());
    assert_eq!(letter.key.as_deref(), Some(&b"broken"[..]));
    assert_eq!(letter.header_str("sender"), Some("ward-7"));
    assert!(
        letter
            .header_str("error")
            .is_some_and(|reason| reason.contains("not well-formed")),
        "{letter:#?}"
    );
    let failed_at = letter.header_str("failedAt").unwrap_or_default();
    assert!(
        time::OffsetDateTime::parse(failed_at, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "failedAt {failed_at:?}"
    );
    assert_eq!(letter.header_str("retryCount"), Some("0"));
    assert_eq!(letter.header_str("flare-original-topic"), Some(topic));
    assert_eq!(
        letter.header_str("flare-original-partition"),
        Some(malformed_at.partition.to_string().as_str())
    );
    assert_eq!(
        letter.header_str("flare-original-offset"),
        Some(malformed_at.offset.to_string().as_str())
    );

    // Offsets were committed: the same group finds nothing new.
    let again = ingest_kafka(&broker, topic, dir.path());
    let again_stdout = String::from_utf8_lossy(&again.stdout);
    assert_eq!(again.status.code(), Some(0), "{again_stdout}");
    assert!(
        again_stdout.contains(": 0 messages, 0 loaded, 0 dead-lettered"),
        "{again_stdout}"
    );
    drop(log);
    drop(runtime);

    let served = Served::start(dir.path());
    sample_patients::assert_dstu2_readme_counts(&served);
}

#[test]
fn messages_go_to_a_running_server_and_its_refusals_are_dead_lettered() {
    let Some(broker) = TestBroker::start() else {
        return;
    };
    let topic = "fhir-to-server";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let log = runtime
        .block_on(KafkaLog::connect(broker.config()))
        .unwrap();
    let stu3_practitioner = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/sample-patients/stu3-json")
            .join("0-practitioner-72004454.fhir-bundle.json"),
    )
    .unwrap();
    let messages: Vec<Vec<u8>> = vec![
        br#"{"resourceType":"Patient","id":"kafka-r4","birthDate":"1970-01-01"}"#.to_vec(),
        stu3_practitioner,
        // Parses and maps, but the server refuses it (400): not worth a retry.
        br#"{"resourceType":"Patient","id":"kafka-bad","birthDate":"not-a-date"}"#.to_vec(),
    ];
    runtime.block_on(async {
        // One partition: the messages are consumed in the order written.
        log.ensure_topic(topic, 1).await.unwrap();
        for payload in messages {
            log.append(
                topic,
                vec![NewRecord {
                    key: None,
                    headers: Vec::new(),
                    payload,
                    timestamp_ms: None,
                }],
            )
            .await
            .unwrap();
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path());
    let output = flare()
        .args(["ingest", "kafka", "--brokers"])
        .arg(broker.address())
        .args(["--topic", topic, "--until-idle", "5", "--url"])
        .arg(&served.base)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("3 messages, 2 loaded, 1 dead-lettered to fhir-to-server.dlq"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(served.count("Patient?_id=kafka-r4"), 1);
    assert_eq!(served.count("Patient?_id=kafka-bad"), 0);
    assert_eq!(
        served.count("Practitioner?_id=smart-Practitioner-72004454"),
        1
    );

    let dead_letters = runtime.block_on(common::read_all(&log, "fhir-to-server.dlq"));
    assert_eq!(dead_letters.len(), 1, "{dead_letters:#?}");
    let letter = &dead_letters[0];
    assert!(
        letter
            .header_str("error")
            .is_some_and(|reason| reason.contains("HTTP 400") && reason.contains("birthDate")),
        "{letter:#?}"
    );
    assert_eq!(letter.header_str("retryCount"), Some("0"));
    assert_eq!(letter.header_str("flare-original-offset"), Some("2"));
}

#[test]
fn an_unreachable_server_stops_the_ingest_without_dead_letters_or_commits() {
    let Some(broker) = TestBroker::start() else {
        return;
    };
    let topic = "fhir-server-down";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let log = runtime
        .block_on(KafkaLog::connect(broker.config()))
        .unwrap();
    runtime.block_on(async {
        log.ensure_topic(topic, 1).await.unwrap();
        log.append(
            topic,
            vec![NewRecord {
                key: None,
                headers: Vec::new(),
                payload: br#"{"resourceType":"Patient","id":"kafka-later"}"#.to_vec(),
                timestamp_ms: None,
            }],
        )
        .await
        .unwrap();
    });
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}/fhir", closed.local_addr().unwrap());
    drop(closed);
    let ingest = |url: &str| {
        flare()
            .args(["ingest", "kafka", "--brokers"])
            .arg(broker.address())
            .args(["--topic", topic, "--until-idle", "5", "--retries", "0"])
            .args(["--url", url])
            .output()
            .unwrap()
    };
    let down = ingest(&nowhere);
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not committed"), "{stderr}");
    let dead_letter_topic_exists = runtime
        .block_on(log.topics())
        .unwrap()
        .iter()
        .any(|info| info.name == "fhir-server-down.dlq");
    assert!(!dead_letter_topic_exists);

    // The message was not committed: the next run, with the server up, loads it.
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path());
    let up = ingest(&served.base);
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert_eq!(up.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("1 messages, 1 loaded"), "{stdout}");
    assert_eq!(served.count("Patient?_id=kafka-later"), 1);
}

#[test]
fn ctrl_c_stops_a_running_ingest_with_its_summary() {
    let Some(broker) = TestBroker::start() else {
        return;
    };
    let topic = "fhir-until-interrupted";
    let group = "interrupted-ingest";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let log = runtime
        .block_on(KafkaLog::connect(broker.config()))
        .unwrap();
    runtime.block_on(async {
        log.ensure_topic(topic, 1).await.unwrap();
        log.append(
            topic,
            vec![NewRecord {
                key: None,
                headers: Vec::new(),
                payload: br#"{"resourceType":"Patient","id":"kafka-interrupted"}"#.to_vec(),
                timestamp_ms: None,
            }],
        )
        .await
        .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let child = flare()
        .args(["ingest", "kafka", "--brokers"])
        .arg(broker.address())
        .args(["--topic", topic, "--group", group, "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Without --until-idle it keeps waiting for messages once the one message is committed.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while runtime
        .block_on(log.committed(group, topic, 0))
        .unwrap()
        .is_none()
    {
        assert!(std::time::Instant::now() < deadline, "never committed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 messages, 1 loaded, 0 dead-lettered"),
        "{stdout}"
    );
    assert!(stdout.contains("resources: 1 created"), "{stdout}");
}
