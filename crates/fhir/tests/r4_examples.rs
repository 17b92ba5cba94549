//! The official R4 examples (npm `hl7.fhir.r4.examples`) must validate.
//! Runs when `FLARE_R4_EXAMPLES` points at the package folder holding the
//! `*.json` files (`node_modules/hl7.fhir.r4.examples` or its `package/`).

use std::path::{Path, PathBuf};

use flare_fhir::{ParseLimits, parse_json_with, validate};

/// Examples that are wrong in the published package itself.
/// Examples that are wrong in the published package itself (each breaks an
/// R4 rule this crate enforces).
const KNOWN_BROKEN: &[(&str, &str)] = &[
    (
        "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
        "its id has 68 characters; R4 ids have at most 64",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-author.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-effective.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-end.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-keyword.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-codesystem-extensions-CodeSystem-workflow.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-author.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-effective.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-end.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-keyword.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "SearchParameter-valueset-extensions-ValueSet-workflow.json",
        "SearchParameter.base (1..*) is missing",
    ),
    (
        "ImplementationGuide-fhir.json",
        "ImplementationGuide.name and .status (1..1) are missing",
    ),
    (
        "ig-r4.json",
        "ImplementationGuide.name and .status (1..1) are missing",
    ),
    (
        "Questionnaire-qs1.json",
        "nested items lack Questionnaire.item.linkId (1..1)",
    ),
];

fn examples_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("FLARE_R4_EXAMPLES")?);
    let nested = dir.join("package");
    Some(if nested.is_dir() { nested } else { dir })
}

fn example_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("FLARE_R4_EXAMPLES is readable")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.extension().is_some_and(|ext| ext == "json")
                && path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name != "package.json" && !name.starts_with('.'))
        })
        .collect();
    files.sort();
    files
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
    let mut failures = Vec::new();
    let mut valid = 0usize;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let known_broken = KNOWN_BROKEN.iter().any(|(broken, _)| *broken == name);
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
                failures.push(format!("{name}: now valid, remove it from KNOWN_BROKEN"));
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
        KNOWN_BROKEN.len()
    );
    assert!(
        failures.is_empty(),
        "{} issues:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
