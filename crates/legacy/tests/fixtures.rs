//! Every sample-patient fixture (DSTU2 XML, STU3 JSON) maps to valid R4, and
//! what the fixture README counts survives the mapping.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flare_legacy::{Converted, DeclaredVersion, FhirVersion, InputFormat, convert};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/sample-patients")
}

fn files(folder: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join(folder))
        .unwrap()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("xml" | "json")
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {folder}");
    files
}

fn load(path: &Path, declared: DeclaredVersion) -> Converted {
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("xml") => InputFormat::Xml,
        _ => InputFormat::Json,
    };
    let bytes = std::fs::read(path).unwrap();
    convert(&bytes, format, declared).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn entries(bundle: &Value) -> Vec<&Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| entries.iter().map(|entry| &entry["resource"]).collect())
        .unwrap_or_default()
}

#[test]
fn every_dstu2_fixture_maps_to_valid_r4_with_auto_detection() {
    let mut unmapped: BTreeMap<String, usize> = BTreeMap::new();
    for path in files("dstu2-xml") {
        let converted = load(&path, DeclaredVersion::Auto);
        // A file of only Patient and Observations shows no DSTU2-only element, only
        // pre-R4 terminology URLs; both older versions map those types alike.
        assert_ne!(converted.version, FhirVersion::R4, "{}", path.display());
        assert_eq!(converted.resources.len(), 1);
        let bundle = &converted.resources[0];
        // `convert` validates; check again so the test does not depend on it.
        assert!(flare_fhir::validate(bundle).is_ok(), "{}", path.display());
        for resource in entries(bundle) {
            assert_ne!(resource["resourceType"], "MedicationOrder");
        }
        for item in converted.unmapped {
            *unmapped.entry(item.resource_type).or_default() += 1;
        }
    }
    // What the mapping leaves out, by type, as counted from the files.
    let expected: BTreeMap<String, usize> =
        [("List", 6), ("MedicationDispense", 113), ("Procedure", 9)]
            .into_iter()
            .map(|(t, n)| (t.to_owned(), n))
            .collect();
    assert_eq!(unmapped, expected);
}

#[test]
fn every_stu3_fixture_maps_to_valid_r4_when_declared() {
    for path in files("stu3-json") {
        let converted = load(&path, DeclaredVersion::Exactly(FhirVersion::Stu3));
        assert_eq!(converted.resources.len(), 1);
        assert!(
            flare_fhir::validate(&converted.resources[0]).is_ok(),
            "{}",
            path.display()
        );
        assert!(
            converted
                .unmapped
                .iter()
                .all(|item| item.resource_type == "MedicationDispense"),
            "{:?}",
            converted.unmapped
        );
    }
}

/// Immunization CVX codes in entry order, and the Patient birthDate, per file:
/// the README table's columns.
fn readme_row(bundle: &Value) -> (Option<String>, Vec<String>, usize) {
    let mut birth_date = None;
    let mut vaccines = Vec::new();
    let mut observations = 0;
    for resource in entries(bundle) {
        match resource["resourceType"].as_str() {
            Some("Patient") => birth_date = resource["birthDate"].as_str().map(str::to_owned),
            Some("Immunization") => {
                let coding = &resource["vaccineCode"]["coding"][0];
                assert_eq!(coding["system"], "http://hl7.org/fhir/sid/cvx");
                assert!(resource["occurrenceDateTime"].is_string());
                vaccines.push(coding["code"].as_str().unwrap_or_default().to_owned());
            }
            Some("Observation") => observations += 1,
            _ => {}
        }
    }
    (birth_date, vaccines, observations)
}

#[test]
fn dstu2_content_matches_the_fixture_readme() {
    let expected: &[(&str, &str, &[&str], usize)] = &[
        (
            "patient-1032702",
            "2007-03-20",
            &["110", "89", "89", "116"],
            1,
        ),
        ("patient-1134281", "2004-10-15", &["21", "104"], 69),
        ("patient-1288992", "1925-12-23", &[], 317),
        ("patient-1614502", "2006-11-22", &["03", "03"], 2),
        ("patient-1869612", "1950-07-31", &[], 242),
        ("patient-4444001", "1932-06-15", &[], 0),
        ("patient-629528", "1981-10-27", &[], 181),
        ("patient-7321938", "2010-12-16", &[], 7),
        (
            "patient-8888801",
            "1953-03-17",
            &["141", "115", "33", "121"],
            318,
        ),
        ("patient-981968", "1956-03-23", &[], 151),
    ];
    for (stem, birth_date, vaccines, observations) in expected {
        let path = fixtures().join(format!("dstu2-xml/{stem}.fhir-bundle.xml"));
        let converted = load(&path, DeclaredVersion::Auto);
        let (found_birth, found_vaccines, found_observations) = readme_row(&converted.resources[0]);
        assert_eq!(found_birth.as_deref(), Some(*birth_date), "{stem}");
        assert_eq!(found_vaccines, *vaccines, "{stem}");
        assert_eq!(found_observations, *observations, "{stem}");
    }
}

#[test]
fn stu3_content_matches_the_fixture_readme() {
    for (stem, vaccines, observations) in [
        ("patient-1032702", vec!["110", "89", "89", "116"], 1),
        ("patient-1614502", vec!["03", "03"], 2),
    ] {
        let path = fixtures().join(format!("stu3-json/{stem}.fhir-bundle.json"));
        let converted = load(&path, DeclaredVersion::Auto);
        assert_eq!(converted.version, FhirVersion::Stu3);
        let (_, found_vaccines, found_observations) = readme_row(&converted.resources[0]);
        assert_eq!(found_vaccines, vaccines, "{stem}");
        assert_eq!(found_observations, observations, "{stem}");
    }
}
