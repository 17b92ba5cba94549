//! XML ⇄ JSON against real content: every official R4 JSON example
//! round-trips JSON → XML → JSON unchanged (`FLARE_R4_EXAMPLES`), and the
//! FHIRPath suite's XML resources convert to valid JSON.

mod common;

use common::{example_files, examples_dir};
use std::path::PathBuf;

use flare_fhir::{ParseLimits, parse_json_with, validate, xml};

/// Where two JSON values first differ, for a readable failure.
fn first_difference(left: &serde_json::Value, right: &serde_json::Value, path: &str) -> String {
    use serde_json::Value;
    match (left, right) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(other) if other == value => {}
                    Some(other) => return first_difference(value, other, &format!("{path}.{key}")),
                    None => return format!("{path}.{key} missing after round trip"),
                }
            }
            for key in b.keys() {
                if !a.contains_key(key) {
                    return format!("{path}.{key} added by round trip");
                }
            }
            format!("{path}: objects differ")
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (index, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    return first_difference(x, y, &format!("{path}[{index}]"));
                }
            }
            format!("{path}: arrays differ")
        }
        _ => format!("{path}: {left} became {right}"),
    }
}

#[test]
fn official_examples_round_trip_through_xml() {
    let Some(dir) = examples_dir() else {
        eprintln!("skipped: set FLARE_R4_EXAMPLES to the hl7.fhir.r4.examples package folder");
        return;
    };
    let files = example_files(&dir);
    assert!(
        files.len() > 1000,
        "expected the R4 examples in {}",
        dir.display()
    );
    let limits = ParseLimits {
        max_bytes: 64 * 1024 * 1024,
        ..ParseLimits::default()
    };
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let original = parse_json_with(&std::fs::read(file).unwrap(), limits).unwrap();
        let result = xml::from_json(&original).and_then(|text| xml::to_json(&text));
        match result {
            Ok(back) if back == original => {}
            Ok(back) => failures.push(format!(
                "{name}: {}",
                first_difference(&original, &back, "")
            )),
            Err(error) => failures.push(format!("{name}: {error}")),
        }
    }
    eprintln!(
        "R4 examples JSON → XML → JSON: {} of {} unchanged",
        files.len() - failures.len(),
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fhirpath_suite_xml_resources_convert_to_valid_json() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/fhirpath-r4");
    let Ok(listing) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: {} not found", dir.display());
        return;
    };
    let mut files: Vec<PathBuf> = listing.filter_map(|e| e.ok().map(|e| e.path())).collect();
    // tests-fhir-r4.xml is the test list itself, not a resource.
    files.retain(|path| {
        path.extension().is_some_and(|ext| ext == "xml") && !path.ends_with("tests-fhir-r4.xml")
    });
    files.sort();
    assert!(files.len() >= 5);
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let json =
            xml::to_json(&text).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        if let Err(issues) = validate(&json) {
            panic!("{}: {issues:#?}", file.display());
        }
        // And back: the XML we write reads to the same JSON.
        let again = xml::to_json(&xml::from_json(&json).unwrap()).unwrap();
        assert_eq!(again, json, "{}", file.display());
    }
    eprintln!(
        "FHIRPath suite: {} XML resources converted and valid",
        files.len()
    );
}
