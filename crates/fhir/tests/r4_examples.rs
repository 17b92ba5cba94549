//! The official R4 examples (npm `hl7.fhir.r4.examples`) must validate.
//! Runs when `FLARE_R4_EXAMPLES` points at the package folder holding the
//! `*.json` files (`node_modules/hl7.fhir.r4.examples` or its `package/`).

mod common;

use common::{example_files, examples_dir};
use std::path::PathBuf;

use flare_fhir::{ParseLimits, parse_json_with, validate};

/// Examples that are wrong in the published package itself.
/// Examples that are wrong in the published package itself (each breaks an
/// R4 rule this crate enforces).
/// Official examples that break R4's own rules, shared with the ingest round-trip test.
fn known_broken() -> Vec<(String, String)> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/known-invalid-r4-examples.tsv");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('\t'))
        .map(|(file, reason)| (file.to_owned(), reason.to_owned()))
        .collect()
}

#[test]
fn official_r4_examples_validate() {
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
    let known_broken_list = known_broken();
    let mut failures = Vec::new();
    let mut valid = 0usize;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let known_broken = known_broken_list.iter().any(|(broken, _)| *broken == name);
        let bytes = std::fs::read(file).unwrap();
        // Bundle-resources.json (all StructureDefinitions) is 35 MB.
        let limits = ParseLimits {
            max_bytes: 64 * 1024 * 1024,
            ..ParseLimits::default()
        };
        let resource = match parse_json_with(&bytes, limits) {
            Ok(resource) => resource,
            Err(error) => {
                failures.push(format!("{name}: {error}"));
                continue;
            }
        };
        match validate(&resource) {
            Ok(()) if known_broken => {
                failures.push(format!(
                    "{name}: now valid, remove it from tests/known-invalid-r4-examples.tsv"
                ));
            }
            Ok(()) => valid += 1,
            Err(_) if known_broken => {}
            Err(issues) => {
                for issue in issues.iter().take(3) {
                    failures.push(format!("{name}: {issue}"));
                }
            }
        }
    }
    eprintln!(
        "R4 examples: {valid} of {} valid, {} known broken",
        files.len(),
        known_broken_list.len()
    );
    assert!(
        failures.is_empty(),
        "{} issues:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
