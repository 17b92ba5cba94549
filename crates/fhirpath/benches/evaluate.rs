//! Parse and evaluation speed of the R4 SearchParameter expressions and a subscription criterion.
//! Run with `cargo bench -p flare-fhirpath`; prints nanoseconds per operation.

use std::hint::black_box;
use std::time::Instant;

use flare_fhir::search_params;
use flare_fhirpath::{Env, Expression};
use serde_json::json;

fn per_op(label: &str, ops: usize, run: impl FnOnce()) {
    let started = Instant::now();
    run();
    let elapsed = started.elapsed();
    println!(
        "{label:<58} {:>10.0} ns/op  ({ops} ops in {elapsed:.2?})",
        elapsed.as_nanos() as f64 / ops as f64
    );
}

fn main() {
    let observation = json!({
        "resourceType": "Observation", "id": "rr-1", "status": "final",
        "meta": {"lastUpdated": "2024-03-01T10:00:00Z", "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1", "display": "Respiratory rate"}], "text": "Respiratory rate"},
        "subject": {"reference": "Patient/123"}, "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2024-03-01T09:58:00Z", "issued": "2024-03-01T10:00:00.000Z",
        "performer": [{"reference": "Practitioner/p1"}],
        "valueQuantity": {"value": 24, "unit": "breaths/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 95, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 60, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]
    });
    let patient = json!({
        "resourceType": "Patient", "id": "123", "active": true, "gender": "female", "birthDate": "1974-12-25",
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}, {"use": "usual", "given": ["Jim"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work"}],
        "address": [{"use": "home", "line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999", "country": "AU"}],
        "managingOrganization": {"reference": "Organization/1"}
    });

    let all: Vec<&str> = search_params::all()
        .iter()
        .filter_map(|d| d.expression.as_deref())
        .collect();
    let rounds = 20;
    per_op(
        "parse every R4 SearchParameter expression",
        all.len() * rounds,
        || {
            for _ in 0..rounds {
                for text in &all {
                    black_box(Expression::parse(text).expect("parses"));
                }
            }
        },
    );

    let env = Env::new();
    for resource in [&observation, &patient] {
        let resource_type = resource["resourceType"].as_str().unwrap_or_default();
        let parsed: Vec<Expression> = search_params::for_type(resource_type)
            .filter_map(|d| d.expression.as_deref())
            .map(|text| Expression::parse(text).expect("parses"))
            .collect();
        let rounds = 2000;
        let mut values = 0;
        per_op(
            &format!(
                "evaluate {} {resource_type} search expressions",
                parsed.len()
            ),
            parsed.len() * rounds,
            || {
                for _ in 0..rounds {
                    for expr in &parsed {
                        values += expr.evaluate(resource, &env).expect("evaluates").len();
                    }
                }
            },
        );
        black_box(values);
    }

    let criterion = Expression::parse(
        "Observation.code.coding.where(system = 'http://loinc.org' and code = '9279-1').exists() \
         and (Observation.value as Quantity).value >= 22",
    )
    .expect("parses");
    let rounds = 200_000;
    per_op(
        "evaluate a respiratory-rate subscription criterion",
        rounds,
        || {
            for _ in 0..rounds {
                black_box(
                    criterion
                        .evaluate_bool(&observation, &env)
                        .expect("evaluates"),
                );
            }
        },
    );
}
