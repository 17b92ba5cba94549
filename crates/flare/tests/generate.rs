//! `flare generate` through the real binary.

use std::{collections::BTreeMap, process::Command};

fn flare() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flare"))
}

fn ndjson_files(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_same_seed_writes_the_same_files_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b", "c"] {
        let seed = if name == "c" { "8" } else { "7" };
        let status = flare()
            .args(["generate", "--patients", "6", "--seed", seed, "--out"])
            .arg(dir.path().join(name))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let a = ndjson_files(&dir.path().join("a"));
    assert_eq!(
        a.keys().cloned().collect::<Vec<_>>(),
        [
            "Encounter.ndjson",
            "Immunization.ndjson",
            "Observation.ndjson",
            "Patient.ndjson"
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(
            a.contains_key("MedicationRequest.ndjson")
                .then(|| "MedicationRequest.ndjson".to_string())
        )
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    let patients = String::from_utf8(a["Patient.ndjson"].clone()).unwrap();
    assert_eq!(patients.lines().count(), 6);
    assert_eq!(a, ndjson_files(&dir.path().join("b")));
    assert_ne!(a, ndjson_files(&dir.path().join("c")));
}

#[test]
fn stdout_is_one_resource_per_line() {
    let output = flare()
        .args(["generate", "--patients", "2", "--stdout"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let mut types = BTreeMap::<String, usize>::new();
    for line in text.lines() {
        let resource: serde_json::Value = serde_json::from_str(line).unwrap();
        *types
            .entry(resource["resourceType"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(types["Patient"], 2);
    assert!(types["Observation"] > 0);
}

#[test]
fn bad_settings_are_refused_with_the_fix() {
    let output = flare()
        .args([
            "generate",
            "--patients",
            "2",
            "--sepsis-share",
            "2",
            "--stdout",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sepsis_share must be between 0 and 1"),
        "{stderr}"
    );
    let output = flare()
        .args(["generate", "--patients", "2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--url"));
}

#[test]
fn an_endless_population_on_stdout_stops_quietly_when_the_reader_goes_away() {
    use std::io::{BufRead, BufReader};
    let mut child = flare()
        .args(["generate", "--stdout"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first: Vec<String> = BufReader::new(stdout)
        .lines()
        .take(5)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first.len(), 5);
    // The reader is gone (like `| head -5`): the generator ends successfully, saying nothing.
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}
