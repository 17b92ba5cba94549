//! `flare ingest` of the legacy sample-patient fixtures (DSTU2 XML, STU3 JSON): loaded into a
//! fresh data directory, then counted by searching the store through `flare serve`. The
//! expected numbers are the fixture README's table.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

mod common;
use common::{Served, flare, sample_patients};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/sample-patients")
}

fn ingest(paths: &[PathBuf], data_dir: &Path) -> Output {
    flare()
        .arg("ingest")
        .args(paths)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

const CVX: &str = "http://hl7.org/fhir/sid/cvx";

#[test]
fn dstu2_xml_fixtures_load_with_the_readme_counts() {
    let dir = tempfile::tempdir().unwrap();
    let output = ingest(&[fixtures().join("dstu2-xml")], dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // MedicationDispense, Procedure and List have no mapping: reported per file and in sum.
    assert!(
        stdout.contains("not loaded, no R4 mapping: List 6, MedicationDispense 113, Procedure 9"),
        "{stdout}\n{stderr}"
    );
    // What had no R4 place is summed up (empty `<code value=""/>` in the generator's output).
    assert!(
        stdout.contains("legacy elements with no R4 place, dropped:")
            && stdout.contains("Observation.valueQuantity.code"),
        "{stdout}"
    );
    // Everything else loads.
    let refusals: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("failed ") && !line.contains("no R4 mapping"))
        .collect();
    assert!(refusals.is_empty(), "{refusals:#?}");

    let served = Served::start(dir.path());
    sample_patients::assert_dstu2_readme_counts(&served);
}

#[test]
fn stu3_json_fixtures_load_with_the_readme_counts() {
    let dir = tempfile::tempdir().unwrap();
    let output = ingest(&[fixtures().join("stu3-json")], dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("not loaded, no R4 mapping: MedicationDispense 11"),
        "{stdout}\n{stderr}"
    );
    let served = Served::start(dir.path());
    assert_eq!(served.count("Patient"), 2);
    assert_eq!(served.count("Practitioner"), 2);
    // The patients point at the Practitioner bundles' ids.
    assert_eq!(
        served.count("Patient?general-practitioner=Practitioner/smart-Practitioner-71614502"),
        1
    );
    for (code, expected) in [("110", 1), ("89", 2), ("116", 1), ("03", 2)] {
        assert_eq!(
            served.count(&format!("Immunization?vaccine-code={CVX}|{code}")),
            expected,
            "CVX {code}"
        );
    }
    assert_eq!(served.count("Immunization?status=completed"), 6);
    assert_eq!(served.count("Observation"), 3);
    assert_eq!(served.count("MedicationRequest"), 8);
}

#[test]
fn a_malformed_file_and_an_unmapped_type_fail_alone() {
    let input = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("dstu2-xml/patient-7321938.fhir-bundle.xml"),
        input.path().join("good.xml"),
    )
    .unwrap();
    std::fs::write(
        input.path().join("broken.xml"),
        "<Bundle xmlns=\"http://hl7.org/fhir\">\n<type value=\"transaction\"/>\n<entry>\n</Bundle>\n",
    )
    .unwrap();
    // `Order` exists in DSTU2 only.
    std::fs::write(
        input.path().join("order.xml"),
        "<Order xmlns=\"http://hl7.org/fhir\"><id value=\"o1\"/><date value=\"2015\"/></Order>",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = ingest(&[input.path().to_owned()], dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    let failure = |file: &str| {
        stderr
            .lines()
            .find(|line| line.starts_with("failed ") && line.contains(file))
            .unwrap_or_else(|| panic!("no failure for {file}: {stderr}"))
            .to_owned()
    };
    assert!(failure("broken.xml").contains("not well-formed"));
    let order = failure("order.xml");
    assert!(
        order.contains("Order") && order.contains("no R4 mapping"),
        "{order}"
    );
    assert!(
        stdout.contains("not loaded, no R4 mapping: Order 1"),
        "{stdout}"
    );
    assert!(!stderr.contains("good.xml"), "{stderr}");

    let served = Served::start(dir.path());
    assert_eq!(served.count("Patient"), 1);
    assert_eq!(served.count("Observation?subject=Patient/7321938"), 7);
}
