//! The sample-patient fixtures (../shared/fixtures/sample-patients, DSTU2 XML) loaded with
//! `flare ingest`, then read by a `flare serve` running the processors: the immunization counts
//! and the dates with both qSOFA vital criteria must be the README table's.
//!
//! The generator writes each patient's history as one bundle with every blood pressure first
//! and every respiratory rate after (each in date order), so the respiratory rates reach the
//! qSOFA processor years behind the patient's newest vital. With the default allowed lateness
//! (2 h) they are too late and no alert is raised; a historical load needs a lateness that
//! covers the history, which is what this test configures.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

mod common;
use common::{Served, flare};
use serde_json::Value;

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn fixtures_give_the_readme_immunization_counts_and_qsofa_dates() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/sample-patients/dstu2-xml");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flare.toml");
    // 50 years of lateness: the whole history counts however the bundle orders it.
    std::fs::write(
        &config,
        "[processors]\nallowed_lateness_ms = 1576800000000\n",
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    let output = flare()
        .arg("ingest")
        .arg(&fixtures)
        .arg("--data-dir")
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success() || !output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let served = Served::start_with(
        &data_dir,
        &["--config", config.to_str().unwrap(), "--no-subscriptions"],
    );
    let root = served.base.trim_end_matches("/fhir").to_owned();
    let get = |path: &str| -> Value {
        served
            .http
            .get(format!("{root}{path}"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };

    // Immunizations by CVX code, as the README table lists them per file, except CVX 21: the
    // README counts Immunization records, and patient 1134281's varicella record is
    // `wasNotGiven` (refused: documented immunity), R4 `status = not-done`, which the
    // immunization counts leave out as the clinical rules ask.
    let expected: BTreeMap<String, u64> = [
        ("110", 1),
        ("89", 2),
        ("116", 1),
        ("104", 1),
        ("03", 2),
        ("141", 1),
        ("115", 1),
        ("33", 1),
        ("121", 1),
    ]
    .into_iter()
    .map(|(code, count)| (code.to_owned(), count))
    .collect();
    let mut totals = BTreeMap::new();
    wait_for("the immunization counts", || {
        totals = get("/api/stats/immunizations?from=1900-01-01&to=2100-01-01")["totals"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|total| {
                (
                    total["vaccine"].as_str().unwrap_or_default().to_owned(),
                    total["count"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        totals == expected
    });

    // qSOFA: one episode on each date with RR >= 22 and SBP <= 100 (two per patient), each with
    // a RiskAssessment whose occurrence is that date and whose basis names the evidence.
    wait_for("four sepsis alerts", || {
        get("/api/sepsis/alerts?status=all")["alerts"]
            .as_array()
            .is_some_and(|alerts| alerts.len() >= 4)
    });
    let alerts = get("/api/sepsis/alerts?status=all")["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(alerts.len(), 4, "{alerts:#?}");
    let expected_dates: BTreeMap<&str, Vec<&str>> = [
        ("1288992", vec!["2005-02-10", "2005-02-23"]),
        ("1869612", vec!["2006-10-11", "2006-10-19"]),
    ]
    .into_iter()
    .collect();
    let mut found: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for patient in ["1288992", "1869612", "629528", "981968", "8888801"] {
        let assessments = served.all(&format!("RiskAssessment?subject=Patient/{patient}"));
        for assessment in &assessments {
            let basis: Vec<&str> = assessment["basis"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b["reference"].as_str())
                .collect();
            assert!(basis.len() >= 2, "{assessment}");
            found.entry(patient).or_default().push(
                assessment["occurrenceDateTime"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(10)
                    .collect(),
            );
        }
    }
    for dates in found.values_mut() {
        dates.sort();
    }
    let expected_dates: BTreeMap<&str, Vec<String>> = expected_dates
        .into_iter()
        .map(|(patient, dates)| (patient, dates.into_iter().map(str::to_owned).collect()))
        .collect();
    assert_eq!(found, expected_dates);
}
