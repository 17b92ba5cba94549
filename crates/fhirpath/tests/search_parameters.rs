//! Every R4 SearchParameter expression parses and evaluates without error on the resource types
//! it applies to. `FHIRPATH_EXAMPLES_DIR` (a directory of R4 JSON examples, such as the
//! `hl7.fhir.r4.examples` package) additionally runs them over every example.

use std::collections::BTreeMap;

use flare_fhir::search_params;
use flare_fhirpath::{Env, Expression, ExpressionCache, ItemValue};
use serde_json::{Value as Json, json};

fn expressions() -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    for def in search_params::all() {
        if let Some(expression) = &def.expression {
            out.push((def.url.as_str(), expression.as_str()));
        }
        for component in &def.components {
            out.push((def.url.as_str(), component.expression.as_str()));
        }
    }
    out
}

#[test]
fn every_search_parameter_expression_parses() {
    let all = expressions();
    assert!(all.len() > 1000, "only {} expressions", all.len());
    let failures: Vec<String> = all
        .iter()
        .filter_map(|(url, text)| {
            Expression::parse(text)
                .err()
                .map(|e| format!("{url}: `{text}`: {e}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} expressions do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn search_parameter_expressions_evaluate_on_minimal_resources_of_their_base_types() {
    let cache = ExpressionCache::new();
    let mut failures = Vec::new();
    for def in search_params::all() {
        let Some(text) = &def.expression else {
            continue;
        };
        let expr = cache.get(text).expect("parses");
        for base in &def.base {
            let resource = json!({"resourceType": base, "id": "x"});
            if let Err(e) = expr.evaluate(&resource, &Env::new()) {
                failures.push(format!("{} on {base}: {e}", def.url));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn typical_search_expressions_extract_the_expected_values() {
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]},
        "subject": {"reference": "Patient/123"},
        "effectiveDateTime": "2024-03-01T10:00:00Z",
        "valueQuantity": {"value": 24, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        "component": [
            {"code": {"coding": [{"code": "8480-6"}]}, "valueQuantity": {"value": 95, "code": "mm[Hg]"}},
            {"code": {"coding": [{"code": "8462-4"}]}, "valueQuantity": {"value": 60, "code": "mm[Hg]"}}
        ]
    });
    let env = Env::new();
    let eval = |text: &str| {
        Expression::parse(text)
            .unwrap()
            .evaluate(&observation, &env)
            .map(|items| items.len())
    };

    let expr = Expression::parse("Observation.subject.where(resolve() is Patient)").unwrap();
    let subjects = expr.evaluate(&observation, &env).unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        subjects[0].as_json().and_then(|j| j.get("reference")),
        Some(&json!("Patient/123"))
    );
    assert_eq!(
        eval("Observation.subject.where(resolve() is Group)").unwrap(),
        0
    );

    let expr = Expression::parse("(Observation.value as Quantity)").unwrap();
    let values = expr.evaluate(&observation, &env).unwrap();
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].type_name, "Quantity");
    assert_eq!(
        eval("(Observation.value as CodeableConcept).text").unwrap(),
        0
    );
    assert_eq!(
        eval("Observation.component.value.ofType(Quantity)").unwrap(),
        2
    );
    assert_eq!(
        eval("Observation.code | Observation.component.code").unwrap(),
        3
    );

    let expr = Expression::parse("Observation.effective").unwrap();
    let effective = expr.evaluate(&observation, &env).unwrap();
    assert_eq!(effective[0].type_name, "dateTime");
    assert!(matches!(effective[0].value, ItemValue::Temporal(_)));
}

#[test]
fn user_variables_and_resolver_are_visible_to_expressions() {
    let previous = json!({"resourceType": "Encounter", "status": "planned"});
    let current = json!({"resourceType": "Encounter", "status": "in-progress", "subject": {"reference": "Patient/p1"}});
    let env = Env::new()
        .with_resource("previous", &previous)
        .with_resource("current", &current);
    let expr =
        Expression::parse("%previous.status = 'planned' and %current.status = 'in-progress'")
            .unwrap();
    assert_eq!(expr.evaluate_bool(&current, &env).unwrap(), Some(true));

    let unknown = Expression::parse("%missing.status").unwrap();
    assert!(unknown.evaluate(&current, &Env::new()).is_err());

    let patient = json!({"resourceType": "Patient", "id": "p1", "gender": "female"});
    let env = Env::new()
        .with_resolver(move |reference| (reference == "Patient/p1").then(|| patient.clone()));
    let expr = Expression::parse("subject.resolve().gender").unwrap();
    let genders = expr.evaluate(&current, &env).unwrap();
    assert_eq!(genders.len(), 1);
    assert_eq!(genders[0].as_str(), Some("female"));
}

/// Optional: all SearchParameter expressions over a directory of R4 examples; reports errors by
/// expression. Not asserted beyond parse-ability, as examples may legitimately contain odd data.
#[test]
fn search_parameters_over_example_directory() {
    let Some(dir) = std::env::var_os("FHIRPATH_EXAMPLES_DIR") else {
        return;
    };
    let cache = ExpressionCache::new();
    let mut errors: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let (mut resources, mut evaluations, mut values) = (0usize, 0usize, 0usize);
    let started = std::time::Instant::now();
    for entry in std::fs::read_dir(dir)
        .expect("readable directory")
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Ok(resource) = serde_json::from_str::<Json>(&text) else {
            continue;
        };
        let Some(resource_type) = resource.get("resourceType").and_then(Json::as_str) else {
            continue;
        };
        resources += 1;
        for def in search_params::for_type(resource_type) {
            let Some(text) = &def.expression else {
                continue;
            };
            let expr = cache.get(text).expect("parses");
            evaluations += 1;
            match expr.evaluate(&resource, &Env::new()) {
                Ok(items) => values += items.len(),
                Err(e) => {
                    let entry = errors
                        .entry(format!("{}: {text}", def.url))
                        .or_insert((0, e.to_string()));
                    entry.0 += 1;
                }
            }
        }
    }
    println!(
        "{resources} resources, {evaluations} evaluations, {values} values, {} failing expressions, {:?}",
        errors.len(),
        started.elapsed()
    );
    for (expr, (count, error)) in &errors {
        println!("{count:>5} {expr}\n      {error}");
    }
}
