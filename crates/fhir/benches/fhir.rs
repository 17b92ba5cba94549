//! Throughput of parsing, validation and XML conversion on a generated
//! transaction-sized Bundle (1,000 Patients and 1,000 Observations).
//! Run: `cargo bench -p flare-fhir` (release profile).

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn sample_bundle(count: usize) -> Value {
    let mut entries = Vec::with_capacity(count * 2);
    for index in 0..count {
        entries.push(json!({"fullUrl": format!("urn:uuid:p{index}"), "resource": {
            "resourceType": "Patient", "id": format!("p{index}"),
            "meta": {"lastUpdated": "2024-03-01T10:00:00Z"},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Patient</p></div>"},
            "identifier": [{"system": "http://example.org/mrn", "value": format!("MRN{index}")}],
            "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
            "gender": "male", "birthDate": "1974-12-25",
            "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}]
        }}));
        entries.push(json!({"fullUrl": format!("urn:uuid:o{index}"), "resource": {
            "resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1", "display": "Respiratory rate"}]},
            "subject": {"reference": format!("urn:uuid:p{index}")},
            "effectiveDateTime": "2024-03-01T09:30:00+01:00",
            "valueQuantity": {"value": 22, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
        }}));
    }
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries})
}

fn measure(label: &str, bytes: usize, mut run: impl FnMut()) {
    run(); // warm-up, also builds the definition tables
    let mut rounds = 0u32;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        run();
        rounds += 1;
    }
    let per_round = started.elapsed() / rounds;
    let megabytes_per_second = bytes as f64 / per_round.as_secs_f64() / 1e6;
    println!("{label:<28} {per_round:>10.2?} per bundle  {megabytes_per_second:>7.1} MB/s");
}

fn main() {
    let bundle = sample_bundle(1_000);
    let json_text = serde_json::to_string(&bundle).unwrap();
    let xml_text = flare_fhir::xml::from_json(&bundle).unwrap();
    println!(
        "bundle: 2,000 resources, JSON {} KB, XML {} KB",
        json_text.len() / 1024,
        xml_text.len() / 1024
    );
    measure("parse_json", json_text.len(), || {
        black_box(flare_fhir::parse_json(json_text.as_bytes()).unwrap());
    });
    measure("validate", json_text.len(), || {
        assert!(flare_fhir::validate(black_box(&bundle)).is_ok());
    });
    measure("xml::from_json", json_text.len(), || {
        black_box(flare_fhir::xml::from_json(&bundle).unwrap());
    });
    measure("xml::to_json", xml_text.len(), || {
        black_box(flare_fhir::xml::to_json(&xml_text).unwrap());
    });
}
