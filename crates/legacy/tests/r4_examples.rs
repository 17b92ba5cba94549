//! No official R4 example is taken for legacy input: `auto` must leave R4 alone.

#[test]
fn every_official_r4_example_is_detected_as_r4() {
    let Some(examples) = std::env::var_os("FLARE_R4_EXAMPLES") else {
        eprintln!(
            "skipped: set FLARE_R4_EXAMPLES to the hl7.fhir.r4.examples package folder (scripts/test.sh does)"
        );
        return;
    };
    let mut checked = 0;
    let mut misread = Vec::new();
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") || path.ends_with("package.json") {
            continue;
        }
        let Ok(value) = serde_json::from_slice(&std::fs::read(&path).unwrap()) else {
            continue;
        };
        checked += 1;
        let version = flare_legacy::detect(&value);
        if version != flare_legacy::FhirVersion::R4 {
            misread.push(format!("{}: {version:?}", path.display()));
        }
    }
    assert!(checked > 5000, "only {checked} examples");
    assert!(misread.is_empty(), "{misread:#?}");
}
