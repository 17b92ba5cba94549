//! STU3 transaction bundles from the sample-patients generator: each entry
//! resource is either valid R4 or rejected with issues that name the
//! offending element.

use std::path::PathBuf;

use flare_fhir::{parse_json, validate_all};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/sample-patients/stu3-json")
}

#[test]
fn stu3_entries_are_accepted_or_rejected_by_element() {
    let dir = fixtures_dir();
    let Ok(listing) = std::fs::read_dir(&dir) else {
        eprintln!("skipped: {} not found", dir.display());
        return;
    };
    let mut files: Vec<PathBuf> = listing.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.retain(|path| path.extension().is_some_and(|ext| ext == "json"));
    files.sort();
    assert!(!files.is_empty());
    let (mut accepted, mut rejected) = (0usize, 0usize);
    let mut rejected_immunization = false;
    for file in &files {
        let bundle = parse_json(&std::fs::read(file).unwrap()).unwrap();
        let entries = bundle["entry"]
            .as_array()
            .expect("transaction bundles have entries");
        for (index, entry) in entries.iter().enumerate() {
            let resource = &entry["resource"];
            let resource_type = resource["resourceType"].as_str().unwrap();
            let issues: Vec<_> = validate_all(resource)
                .into_iter()
                .filter(|issue| issue.severity.is_failure())
                .collect();
            if issues.is_empty() {
                accepted += 1;
                continue;
            }
            rejected += 1;
            for issue in &issues {
                // Every rejection points into the resource at a named element.
                assert!(
                    issue.location.starts_with(&format!("{resource_type}.")),
                    "{} entry {index}: issue without element location: {issue}",
                    file.display()
                );
                let element = issue.location.rsplit('.').next().unwrap();
                let element = element.split('[').next().unwrap();
                assert!(
                    issue.message.contains(element),
                    "{} entry {index}: message does not name {element}: {issue}",
                    file.display()
                );
            }
            if resource_type == "Immunization" {
                let locations: Vec<&str> = issues.iter().map(|i| i.location.as_str()).collect();
                assert!(
                    locations.contains(&"Immunization.date")
                        || locations.contains(&"Immunization.notGiven"),
                    "{locations:?}"
                );
                rejected_immunization = true;
            }
        }
    }
    eprintln!("STU3 fixtures: {accepted} entries valid R4, {rejected} rejected");
    assert!(
        rejected_immunization,
        "STU3 Immunizations (date/notGiven) must be rejected"
    );
    assert!(
        accepted > 0,
        "STU3 Patient/Practitioner entries are valid R4"
    );
}
