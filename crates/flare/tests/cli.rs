//! The `flare` binary end to end: `serve`, `events tail` beside it, and `ingest` of the
//! official R4 examples read back through the API.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};

mod common;
use common::{Served, client, flare};

#[test]
fn events_tail_follows_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path());
    let http = client();
    for family in ["One", "Two", "Three"] {
        let response = http
            .post(format!("{}/Patient", served.base))
            .header("content-type", "application/fhir+json")
            .header("x-correlation-id", format!("tail-{family}"))
            .body(json!({"resourceType": "Patient", "name": [{"family": family}]}).to_string())
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }
    let tail = |extra: &[&str]| -> Vec<Value> {
        let output = flare()
            .args([
                "events",
                "tail",
                "fhir.Patient",
                "--idle-exit-ms",
                "1500",
                "--data-dir",
            ])
            .arg(dir.path())
            .args(extra)
            .output()
            .expect("flare events tail runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let all = tail(&["--from-beginning"]);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(all[0]["value"]["type"], "PatientCreated");
    assert!(
        all.iter()
            .any(|r| r["headers"]["correlationId"] == "tail-Two")
    );

    // A group resumes where it stopped.
    let first = tail(&["--from-beginning", "--group", "g1", "--max", "2"]);
    assert_eq!(first.len(), 2);
    let rest = tail(&["--from-beginning", "--group", "g1"]);
    assert_eq!(rest.len(), 1);
    let seen: Vec<&Value> = first
        .iter()
        .chain(&rest)
        .map(|r| &r["value"]["metadata"]["eventId"])
        .collect();
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3);
}

#[test]
fn a_killed_server_loses_no_event_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut served = Served::start(dir.path());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (base, stop, written) = (served.base.clone(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let http = client();
                let mut acknowledged = Vec::new();
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let body = json!({"resourceType": "Patient", "id": format!("w{w}-{i}"), "gender": "other"});
                    match http.put(format!("{base}/Patient/w{w}-{i}")).header("content-type", "application/fhir+json").body(body.to_string()).send() {
                        Ok(r) if r.status().as_u16() == 201 => {
                            acknowledged.push(format!("w{w}-{i}"));
                            written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(r) => panic!("unexpected {}", r.status()),
                        Err(_) => break, // the server is gone
                    }
                }
                acknowledged
            })
        })
        .collect();
    // Kill once writes are flowing, however slow the machine is (a fixed sleep
    // saw no write at all on a loaded CI machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while written.load(std::sync::atomic::Ordering::Relaxed) < 200
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL while writes are in flight.
    served.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        acknowledged.len() > 50,
        "only {} writes before the kill",
        acknowledged.len()
    );

    let served = Served::start(dir.path());
    let http = client();
    for id in &acknowledged {
        assert_eq!(
            http.get(format!("{}/Patient/{id}", served.base))
                .send()
                .unwrap()
                .status()
                .as_u16(),
            200,
            "acknowledged Patient/{id} was lost"
        );
    }
    let history: Value = http
        .get(format!("{}/Patient/_history?_count=1", served.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let versions = history["total"].as_u64().unwrap();
    let output = flare()
        .args([
            "events",
            "tail",
            "fhir.Patient",
            "--from-beginning",
            "--idle-exit-ms",
            "2000",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut versions_seen: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{}@{}",
                e["value"]["metadata"]["resourceId"], e["value"]["metadata"]["versionId"]
            )
        })
        .collect();
    versions_seen.sort();
    versions_seen.dedup();
    assert_eq!(
        events.len() as u64,
        versions,
        "one event per stored version after the crash"
    );
    assert_eq!(versions_seen.len(), events.len(), "no event appears twice");
}

/// Removes what the server maintains, so stored and original resources compare.
fn without_server_meta(mut resource: Value) -> Value {
    if let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            resource.as_object_mut().unwrap().remove("meta");
        }
    }
    resource
}

/// Official examples that break R4's own rules (shared with crates/fhir's tests).
fn known_invalid() -> Vec<String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/known-invalid-r4-examples.tsv");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split('\t').next().map(str::to_owned))
        .collect()
}

fn examples_dir() -> Option<PathBuf> {
    std::env::var_os("FLARE_R4_EXAMPLES").map(PathBuf::from)
}

#[test]
fn official_r4_examples_ingest_and_read_back_identical() {
    let Some(examples) = examples_dir() else {
        eprintln!(
            "skipped: set FLARE_R4_EXAMPLES to the hl7.fhir.r4.examples package folder (scripts/test.sh does)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let output = flare()
        .arg("ingest")
        .arg(&examples)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("ingested in"),
        "no summary: {stdout}\n{stderr}"
    );

    // What was stored, by type/id; files whose type/id repeats are compared by the last one.
    let mut expected: HashMap<(String, String), Value> = HashMap::new();
    let mut executed_bundles = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json") && !f.ends_with("package.json"))
    {
        let Ok(resource) = serde_json::from_slice::<Value>(&std::fs::read(file).unwrap()) else {
            continue;
        };
        let (Some(t), Some(id)) = (resource["resourceType"].as_str(), resource["id"].as_str())
        else {
            continue;
        };
        if t == "Bundle" && matches!(resource["type"].as_str(), Some("transaction" | "batch")) {
            executed_bundles.push(file.file_name().unwrap().to_string_lossy().into_owned());
            continue;
        }
        expected.insert((t.to_owned(), id.to_owned()), resource);
    }
    let known_invalid = known_invalid();
    // Failures may only come from executing transaction/batch examples (they reference
    // resources and operations that do not exist here) and from the examples that break R4's
    // own rules.
    for line in stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.starts_with("failed "))
    {
        let is_known = known_invalid
            .iter()
            .any(|file| line.contains(file.as_str()));
        assert!(
            is_known || executed_bundles.iter().any(|b| line.contains(b.as_str())),
            "an example resource was refused: {line}"
        );
    }
    for file in &known_invalid {
        let stem = file.trim_end_matches(".json");
        expected.retain(|(t, id), _| format!("{t}-{id}") != stem);
    }

    let served = Served::api_only(dir.path());
    let http = client();
    let mut compared = 0;
    for ((t, id), original) in &expected {
        let response = http
            .get(format!("{}/{t}/{id}", served.base))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{t}/{id} was not stored");
        let stored: Value = response.json().unwrap();
        assert_eq!(
            without_server_meta(stored),
            without_server_meta(original.clone()),
            "{t}/{id} differs after the round trip"
        );
        compared += 1;
    }
    eprintln!(
        "{compared} official examples read back identical; {} transaction/batch examples executed",
        executed_bundles.len()
    );
    assert!(compared > 5000, "only {compared} examples compared");
}

#[test]
fn dstu2_xml_and_stu3_json_fixtures_are_refused_with_reasons_or_accepted() {
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/sample-patients");
    let dir = tempfile::tempdir().unwrap();
    let output = flare()
        .arg("ingest")
        .arg(fixtures.join("stu3-json"))
        .arg(fixtures.join("dstu2-xml"))
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "some fixtures are not R4, so ingest reports failures: {stdout}{stderr}"
    );
    let failures: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.starts_with("failed "))
        .collect();
    assert!(
        failures.iter().any(|l| l.contains("dstu2-xml")),
        "DSTU2 XML is refused: {failures:?}"
    );
    // Each refusal says where the offending element is.
    for failure in &failures {
        assert!(
            failure.contains("Bundle") || failure.contains("XML"),
            "refusal without a location: {failure}"
        );
    }
    assert!(stdout.contains("created"), "{stdout}");
}
