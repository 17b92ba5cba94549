//! Matching cost as the number of subscriptions grows: events/s on one thread and memory per
//! subscription, at 1, 1k, 10k and 100k subscriptions of which ~1% match each event.
//!
//! Half of the subscriptions are classic (`Observation?code=…&status=final`), half use the
//! built-in topic `observation-created` with a `patient=` filter; 100 distinct codes and
//! patients, so an event matches ~0.5% + ~0.5% of them.
//!
//! Two tables: **shared** criteria (many subscriptions with the same criteria, which the
//! index evaluates once per event) and **distinct** criteria (every subscription adds its own
//! `status:not=x<i>` clause, so each matching one is evaluated on its own: the worst case).
//!
//! `cargo bench -p flare-subscriptions --bench matching` (set `MATCHING_EVENTS` to change the
//! number of events per row, default 20000).

use std::sync::Arc;
use std::time::Instant;

use flare_search::Registry;
use flare_subscriptions::{
    Interaction, MatchEvent, SubscriptionIndex, TopicRegistry, parse_subscription,
};
use serde_json::{Value, json};

const KEYS: usize = 100;

fn subscription(index: usize, distinct: bool) -> Value {
    let key = index % KEYS;
    let status = if distinct {
        format!("status:not=x{index}")
    } else {
        "status=final".to_owned()
    };
    let mut filters = vec![json!({
        "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
        "valueString": format!("patient=Patient/p{key}")})];
    if distinct {
        filters.push(json!({
            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
            "valueString": status.clone()}));
    }
    if index.is_multiple_of(2) {
        json!({
            "resourceType": "Subscription", "status": "active", "reason": "bench",
            "criteria": format!("Observation?code=http://loinc.org|c{key}&{status}"),
            "channel": {"type": "rest-hook", "endpoint": "https://client.example.org/hook"},
        })
    } else {
        json!({
            "resourceType": "Subscription", "status": "active", "reason": "bench",
            "criteria": "http://flare.dev/fhir/SubscriptionTopic/observation-created",
            "_criteria": {"extension": filters},
            "channel": {"type": "rest-hook", "endpoint": "https://client.example.org/hook",
                "payload": "application/fhir+json",
                "_payload": {"extension": [{
                    "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content",
                    "valueCode": "id-only"}]}},
        })
    }
}

fn observation(index: usize) -> Value {
    json!({
        "resourceType": "Observation",
        "id": format!("o{index}"),
        "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": format!("c{}", index % KEYS)}], "text": "Heart rate"},
        "subject": {"reference": format!("Patient/p{}", (index * 7) % KEYS)},
        "effectiveDateTime": "2026-01-01T00:00:00Z",
        "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
    })
}

/// Resident memory in bytes (Linux), for the memory-per-subscription column.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn main() {
    let events_per_row: usize = std::env::var("MATCHING_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20_000);
    let registry = Arc::new(Registry::r4());
    let topics = TopicRegistry::with_builtins(&registry);
    let events: Vec<Value> = (0..1000).map(observation).collect();
    println!(
        "| criteria | subscriptions | build (s) | memory/sub (bytes) | events | matches/event | events/s (1 thread) | µs/event |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (distinct, count) in [false, true]
        .into_iter()
        .flat_map(|distinct| [1usize, 1_000, 10_000, 100_000].map(|count| (distinct, count)))
    {
        let before = resident_bytes();
        let started = Instant::now();
        let mut index = SubscriptionIndex::new(registry.clone(), topics.clone());
        for number in 0..count {
            let spec = parse_subscription(&subscription(number, distinct), &registry, &topics)
                .unwrap_or_else(|issues| panic!("{issues:?}"));
            if let Err(error) = index.insert_with_id(&format!("s{number}"), &spec) {
                panic!("{error}");
            }
        }
        let build = started.elapsed();
        let memory = match (before, resident_bytes()) {
            (Some(before), Some(after)) => {
                format!("{}", after.saturating_sub(before) / count as u64)
            }
            _ => "n/a".into(),
        };
        let started = Instant::now();
        let mut matches = 0usize;
        for number in 0..events_per_row {
            let event = MatchEvent {
                resource_type: "Observation",
                interaction: Interaction::Create,
                current: Some(&events[number % events.len()]),
                previous: None,
                trigger_event: None,
            };
            matches += index.matching(&event).len();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "| {} | {count} | {:.2} | {memory} | {events_per_row} | {:.1} | {:.0} | {:.1} |",
            if distinct { "distinct" } else { "shared" },
            build.as_secs_f64(),
            matches as f64 / events_per_row as f64,
            events_per_row as f64 / elapsed,
            elapsed * 1e6 / events_per_row as f64,
        );
        drop(index);
    }
}
