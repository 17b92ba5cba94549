//! The configured share of sepsis courses becomes qSOFA alerts downstream: a seeded population
//! is written to a running server, and once its processors have caught up, the patients on the
//! dashboard's alert list are those the generator's own plan says must (and may) be alerted.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use flare_generator::{Generator, GeneratorConfig, PatientPlan, SepsisPlan};
use serde_json::Value;
mod common;
use common::{Served, flare};

const SEED: u64 = 21;
const PATIENTS: u64 = 24;
const SEPSIS_SHARE: f64 = 0.5;

/// The plans of `flare generate --seed SEED --patients PATIENTS --sepsis-share SEPSIS_SHARE`
/// (every other setting at the command's defaults, which are the generator's).
fn plans() -> (GeneratorConfig, Vec<PatientPlan>) {
    let mut generator = Generator::new(GeneratorConfig {
        seed: SEED,
        patients: Some(PATIENTS),
        sepsis_share: SEPSIS_SHARE,
        ..GeneratorConfig::default()
    })
    .unwrap()
    .keep_plans();
    generator.by_ref().for_each(drop);
    let config = generator.config().clone();
    (config, generator.take_plans())
}

/// Patients whose course reaches, in hospital, the point where every set of vital signs meets
/// two criteria: the screen must alert on them.
fn must_alert(config: &GeneratorConfig, plans: &[PatientPlan]) -> BTreeSet<String> {
    plans
        .iter()
        .filter(|plan| {
            plan.sepsis.is_some_and(|course| {
                plan.vitals_times(config)
                    .any(|at| course.progress(at) >= SepsisPlan::TWO_CRITERIA_CERTAIN)
            })
        })
        .map(|plan| plan.patient.clone())
        .collect()
}

/// Patients measured after their course began: the only ones the screen may alert on (normal
/// vital signs, and a normal patient's isolated high respiratory rate, never meet two).
fn may_alert(config: &GeneratorConfig, plans: &[PatientPlan]) -> BTreeSet<String> {
    plans
        .iter()
        .filter(|plan| {
            plan.sepsis.is_some_and(|course| {
                plan.vitals_times(config)
                    .any(|at| course.progress(at) > 0.0)
            })
        })
        .map(|plan| plan.patient.clone())
        .collect()
}

fn dashboard_get(served: &Served, path: &str) -> Value {
    let root = served.base.trim_end_matches("/fhir");
    served
        .http
        .get(format!("{root}{path}"))
        .send()
        .and_then(|response| response.json())
        .unwrap_or_default()
}

fn alerted_patients(served: &Served) -> BTreeSet<String> {
    dashboard_get(served, "/api/sepsis/alerts?status=all")["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|alert| alert["patient"].as_str().map(str::to_owned))
        .collect()
}

fn processors_caught_up(served: &Served) -> bool {
    let pipeline = dashboard_get(served, "/api/pipeline");
    pipeline["processors"]
        .as_array()
        .is_some_and(|all| !all.is_empty() && all.iter().all(|p| p["lag"] == 0))
}

#[test]
fn the_share_of_sepsis_courses_gives_the_planned_qsofa_alerts() {
    let (config, plans) = plans();
    assert_eq!(plans.len() as u64, PATIENTS);
    let must = must_alert(&config, &plans);
    let may = may_alert(&config, &plans);
    assert!(
        !must.is_empty(),
        "the seed gives courses that reach their worst in hospital"
    );

    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path());
    let output = flare()
        .args(["generate", "--seed", &SEED.to_string()])
        .args(["--patients", &PATIENTS.to_string()])
        .args(["--sepsis-share", &SEPSIS_SHARE.to_string()])
        .args(["--url", &served.base])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Caught up: every planned alert is there and the processors have nothing left to read;
    // then one more sampling period for the feed to take the last alert messages.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut alerted = alerted_patients(&served);
    while !(must.is_subset(&alerted) && processors_caught_up(&served)) {
        assert!(
            Instant::now() < deadline,
            "timed out: alerted {alerted:?}, expected at least {must:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
        alerted = alerted_patients(&served);
    }
    std::thread::sleep(Duration::from_secs(3));
    alerted = alerted_patients(&served);

    eprintln!(
        "{} patients, {} on a sepsis course; alerts for {} (plan: at least {}, at most {})",
        plans.len(),
        plans.iter().filter(|p| p.sepsis.is_some()).count(),
        alerted.len(),
        must.len(),
        may.len()
    );
    assert!(
        alerted.is_subset(&may),
        "alerts for patients who never deteriorated: {:?}",
        alerted.difference(&may).collect::<Vec<_>>()
    );
    assert!(must.is_subset(&alerted));
    // One alert per episode, and one episode per course: vital signs stay bad until discharge.
    let alerts = dashboard_get(&served, "/api/sepsis/alerts?status=all")["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(alerts.len(), alerted.len(), "{alerts:?}");
}
