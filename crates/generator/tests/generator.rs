//! The population generator: reproducible, valid R4, in emission order, with the promised mix.

use std::collections::{BTreeMap, HashSet};

use flare_generator::{Action, Generator, GeneratorConfig};

fn config(seed: u64, patients: u64) -> GeneratorConfig {
    GeneratorConfig {
        seed,
        patients: Some(patients),
        ..GeneratorConfig::default()
    }
}

fn serialised(config: GeneratorConfig) -> Vec<u8> {
    let mut out = Vec::new();
    for item in Generator::new(config).unwrap() {
        serde_json::to_writer(&mut out, &item.resource).unwrap();
        out.push(b'\n');
    }
    out
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_does_not() {
    let first = serialised(config(7, 15));
    assert_eq!(first, serialised(config(7, 15)));
    assert_ne!(first, serialised(config(8, 15)));
}

#[test]
fn every_resource_is_valid_r4_and_references_what_came_before() {
    let mut seen = HashSet::new();
    let mut last = None;
    for item in Generator::new(config(3, 60)).unwrap() {
        if let Err(issues) = flare_fhir::validate(&item.resource) {
            panic!("invalid {}: {issues:?}", item.resource);
        }
        if let Some(last) = last {
            assert!(item.at >= last, "emitted out of order");
        }
        last = Some(item.at);
        let key = format!(
            "{}/{}",
            item.resource_type(),
            item.resource["id"].as_str().unwrap()
        );
        match item.action {
            Action::Create => assert!(seen.insert(key.clone()), "{key} created twice"),
            Action::Update => assert!(seen.contains(&key), "{key} updated before it was created"),
        }
        for field in ["subject", "patient", "encounter"] {
            if let Some(reference) = item.resource[field]["reference"].as_str() {
                assert!(
                    seen.contains(reference),
                    "{key} refers to {reference} before it exists"
                );
            }
        }
    }
}

#[test]
fn the_mix_follows_the_configuration() {
    let mut generator = Generator::new(GeneratorConfig {
        sepsis_share: 0.5,
        inpatient_share: 1.0,
        ..config(11, 80)
    })
    .unwrap();
    let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut vaccines = HashSet::new();
    let mut low_systolic = 0;
    let mut updates = 0;
    for item in generator.by_ref() {
        if item.action == Action::Update {
            updates += 1;
            continue;
        }
        *by_type.entry(item.resource_type().to_string()).or_default() += 1;
        if item.resource_type() == "Immunization" {
            vaccines.insert(
                item.resource["vaccineCode"]["coding"][0]["code"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        if let Some(components) = item.resource["component"].as_array()
            && components[0]["valueQuantity"]["value"].as_f64().unwrap() <= 100.0
        {
            low_systolic += 1;
        }
    }
    let tally = generator.tally();
    assert_eq!(tally.patients, 80);
    // 80 inpatients at a 50 % share: outside 20..60 only if the share were ignored.
    assert!((20..=60).contains(&tally.septic_patients), "{tally:?}");
    assert_eq!(by_type["Patient"], 80);
    assert_eq!(by_type["Encounter"], 80);
    assert_eq!(updates, 80, "every encounter finishes");
    // Stays last at least 12 h with a set of 6 vitals every 15 min.
    assert!(by_type["Observation"] >= 80 * 11 * 4 * 6, "{by_type:?}");
    assert!(by_type["MedicationRequest"] > 0);
    assert!(
        vaccines.len() >= 10,
        "schedule covers many vaccines: {vaccines:?}"
    );
    assert!(low_systolic > 0, "septic courses reach SBP <= 100");
}

#[test]
fn normal_patients_never_meet_two_qsofa_criteria_at_once() {
    let generator = Generator::new(GeneratorConfig {
        sepsis_share: 0.0,
        inpatient_share: 1.0,
        ..config(5, 60)
    })
    .unwrap();
    for item in generator {
        let code = item.resource["code"]["coding"][0]["code"]
            .as_str()
            .unwrap_or_default();
        let value = item.resource["valueQuantity"]["value"].as_f64();
        match (code, value) {
            ("9269-2", Some(gcs)) => assert_eq!(gcs, 15.0),
            ("85354-9", _) => {
                let systolic = item.resource["component"][0]["valueQuantity"]["value"]
                    .as_f64()
                    .unwrap();
                assert!(systolic > 100.0);
            }
            _ => {}
        }
    }
}

#[test]
fn bad_configurations_are_refused_with_the_reason() {
    let error = Generator::new(GeneratorConfig {
        sepsis_share: 1.5,
        ..GeneratorConfig::default()
    })
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "sepsis_share must be between 0 and 1, got 1.5"
    );
    assert!(
        Generator::new(GeneratorConfig {
            admissions_per_hour: 0.0,
            ..GeneratorConfig::default()
        })
        .is_err()
    );
}

#[test]
fn an_endless_population_keeps_admitting() {
    let generator = Generator::new(GeneratorConfig {
        patients: None,
        ..GeneratorConfig::default()
    })
    .unwrap();
    let patients = generator
        .take(20_000)
        .filter(|item| item.resource_type() == "Patient")
        .count();
    assert!(patients > 10, "{patients}");
}

#[test]
fn the_plan_predicts_the_vital_signs_that_meet_two_qsofa_criteria() {
    let mut generator = Generator::new(GeneratorConfig {
        sepsis_share: 0.5,
        inpatient_share: 1.0,
        ..config(13, 40)
    })
    .unwrap()
    .keep_plans();
    // (patient, effective time) -> (systolic, gcs) of every inpatient set of vital signs.
    let mut sets: BTreeMap<(String, String), (Option<f64>, Option<f64>)> = BTreeMap::new();
    for item in generator.by_ref() {
        let resource = &item.resource;
        let (Some(patient), Some(effective), "vital-signs") = (
            resource["subject"]["reference"].as_str(),
            resource["effectiveDateTime"].as_str(),
            resource["category"][0]["coding"][0]["code"]
                .as_str()
                .unwrap_or_default(),
        ) else {
            continue;
        };
        let set = sets
            .entry((patient.to_string(), effective.to_string()))
            .or_default();
        match resource["code"]["coding"][0]["code"].as_str() {
            Some("85354-9") => set.0 = resource["component"][0]["valueQuantity"]["value"].as_f64(),
            Some("9269-2") => set.1 = resource["valueQuantity"]["value"].as_f64(),
            _ => {}
        }
    }
    let config = generator.config().clone();
    let plans = generator.take_plans();
    assert_eq!(plans.len(), 40);
    let mut certain_sets = 0;
    for plan in &plans {
        let times: Vec<_> = plan.vitals_times(&config).collect();
        assert!(!times.is_empty(), "inpatients have vital signs");
        for at in times {
            let key = (
                plan.patient.clone(),
                // Resources carry effective times to the second.
                at.replace_nanosecond(0)
                    .unwrap()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap(),
            );
            let (Some(systolic), Some(gcs)) = sets.get(&key).copied().unwrap_or_default() else {
                panic!("no full set of vital signs at {key:?}");
            };
            match plan.sepsis {
                Some(course)
                    if course.progress(at) >= flare_generator::SepsisPlan::TWO_CRITERIA_CERTAIN =>
                {
                    certain_sets += 1;
                    assert!(systolic <= 100.0 && gcs < 15.0, "{key:?}: {systolic} {gcs}");
                }
                None => assert!(systolic > 100.0 && gcs == 15.0, "{key:?}"),
                Some(_) => {}
            }
        }
    }
    assert!(
        certain_sets > 0,
        "some courses reach their worst in hospital"
    );
    assert_eq!(
        sets.len(),
        plans
            .iter()
            .map(|plan| plan.vitals_times(&config).count())
            .sum::<usize>(),
        "every set of vital signs is in the plan"
    );
}
