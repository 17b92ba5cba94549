//! Extraction speed: µs per resource for a typical Patient and Observation (the store must
//! ingest 20,000 resources/s on one core, so extraction must stay well under 50 µs), and
//! throughput over the official examples when `FLARE_R4_EXAMPLES` is set.
//!
//! Run: `cargo bench -p flare-search --bench extract`.

use std::hint::black_box;
use std::time::Instant;

use flare_search::Registry;
use serde_json::{Value, json};

fn per_resource_micros(registry: &Registry, resource: &Value, rounds: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(registry.extract(black_box(resource)));
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

fn main() {
    let started = Instant::now();
    let registry = Registry::r4();
    println!(
        "registry built in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "expressions outside the compiled subset (parameters not indexed): {}",
        registry.compile_failures().len()
    );

    let patient = json!({
        "resourceType": "Patient", "id": "example",
        "meta": {"lastUpdated": "2020-05-06T07:08:09Z"},
        "identifier": [{"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                        "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
        "active": true,
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}, {"use": "usual", "given": ["Jim"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work"}, {"system": "email", "value": "p@example.org"}],
        "gender": "male", "birthDate": "1974-12-25",
        "address": [{"use": "home", "line": ["534 Erewhon St"], "city": "PleasantVille", "state": "Vic", "postalCode": "3999"}],
        "generalPractitioner": [{"reference": "Practitioner/gp"}],
        "managingOrganization": {"reference": "Organization/1"}
    });
    let observation = json!({
        "resourceType": "Observation", "id": "bp",
        "meta": {"lastUpdated": "2020-05-06T07:08:09Z"},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1", "display": "Respiratory rate"}]},
        "subject": {"reference": "Patient/example"},
        "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2020-03-04T10:00:00Z",
        "performer": [{"reference": "Practitioner/gp"}],
        "valueQuantity": {"value": 26, "unit": "breaths/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    });
    for (name, resource) in [("Patient", &patient), ("Observation", &observation)] {
        per_resource_micros(&registry, resource, 2_000);
        let micros = per_resource_micros(&registry, resource, 50_000);
        let entries = registry.extract(resource).len();
        println!("{name}: {micros:.2} µs/resource, {entries} index entries");
    }

    if let Some(folder) = std::env::var_os("FLARE_R4_EXAMPLES") {
        let resources: Vec<Value> = std::fs::read_dir(folder)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|file| {
                file.path()
                    .extension()
                    .is_some_and(|extension| extension == "json")
            })
            .filter_map(|file| std::fs::read_to_string(file.path()).ok())
            .filter_map(|text| serde_json::from_str::<Value>(&text).ok())
            .filter(|resource| resource.get("resourceType").is_some())
            .collect();
        let started = Instant::now();
        let entries: usize = resources
            .iter()
            .map(|resource| registry.extract(resource).len())
            .sum();
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "official examples: {} resources, {entries} entries, {:.1} µs/resource average",
            resources.len(),
            seconds * 1e6 / resources.len().max(1) as f64
        );
    }
}
