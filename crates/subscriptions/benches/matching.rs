//! Matching cost as the number of subscriptions grows: events/s on one thread and memory per
//! subscription, at 1, 1k, 10k and 100k subscriptions.
//!
//! Half of the subscriptions are classic (`Observation?code=…&status=final`), half use the
//! built-in topic `observation-created` with a `patient=` filter; in the shared and distinct
//! workloads 100 distinct codes and patients, so an event matches ~0.5% + ~0.5% of them.
//!
//! Three workloads: **shared** criteria (many subscriptions with the same criteria, which the
//! index evaluates once per event); **distinct** criteria (every subscription adds its own
//! `status:not=x<i>` clause, so each of the ~1% that match is evaluated on its own: the cost
//! is the number of notifications); **pairs**: every subscription wants its own pair of code
//! and patient (`code=c<i % 100>` and patient `p<i / 100>`), so each event notifies about one
//! subscription and the index must find it among 100k without visiting the others.
//!
//! `cargo bench -p flare-subscriptions --bench matching` (set `MATCHING_EVENTS` to change the
//! number of events per row, default 20000; `MATCHING_ONLY=pairs` or `pairs:10000` to run
//! one workload or one row).

use std::sync::Arc;
use std::time::Instant;

use flare_search::Registry;
use flare_subscriptions::{
    Interaction, MatchEvent, SubscriptionIndex, TopicRegistry, parse_subscription,
};
use serde_json::{Value, json};

const KEYS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Shared,
    Distinct,
    Pairs,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Shared => "shared",
            Workload::Distinct => "distinct",
            Workload::Pairs => "pairs",
        }
    }
}

fn filter(text: String) -> Value {
    json!({
        "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria",
        "valueString": text})
}

fn subscription(index: usize, workload: Workload) -> Value {
    let (code, patient, extra) = match workload {
        Workload::Shared => (index % KEYS, index % KEYS, "status=final".to_owned()),
        Workload::Distinct => (index % KEYS, index % KEYS, format!("status:not=x{index}")),
        Workload::Pairs => (index % KEYS, index / KEYS, "status=final".to_owned()),
    };
    let mut filters = vec![filter(format!("patient=Patient/p{patient}"))];
    match workload {
        Workload::Shared => {}
        Workload::Distinct => filters.push(filter(extra.clone())),
        Workload::Pairs => filters.push(filter(format!("code=http://loinc.org|c{code}"))),
    }
    if index.is_multiple_of(2) {
        let criteria = match workload {
            Workload::Pairs => format!(
                "Observation?{extra}&code=http://loinc.org|c{code}&subject=Patient/p{patient}"
            ),
            _ => format!("Observation?code=http://loinc.org|c{code}&{extra}"),
        };
        json!({
            "resourceType": "Subscription", "status": "active", "reason": "bench",
            "criteria": criteria,
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

/// Event `index` of a row with `patients` patients: code `c<index % 100>`, patient
/// `p<(index * 7) % patients>`.
fn observation(index: usize, patients: usize) -> Value {
    json!({
        "resourceType": "Observation",
        "id": format!("o{index}"),
        "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": format!("c{}", index % KEYS)}], "text": "Heart rate"},
        "subject": {"reference": format!("Patient/p{}", (index * 7) % patients.max(1))},
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
    let only = std::env::var("MATCHING_ONLY").ok();
    let registry = Arc::new(Registry::r4());
    let topics = TopicRegistry::with_builtins(&registry);
    println!(
        "| criteria | subscriptions | build (s) | memory/sub (bytes) | events | matches/event | events/s (1 thread) | µs/event |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (workload, count) in [Workload::Shared, Workload::Distinct, Workload::Pairs]
        .into_iter()
        .flat_map(|workload| [1usize, 1_000, 10_000, 100_000].map(|count| (workload, count)))
        .filter(|(workload, count)| {
            only.as_deref().is_none_or(|only| {
                let (name, rows) = only.split_once(':').unwrap_or((only, ""));
                name == workload.name() && (rows.is_empty() || rows == count.to_string())
            })
        })
    {
        // Pairs: as many patients as the subscriptions name, so events find their pair.
        let patients = match workload {
            Workload::Pairs => count.div_ceil(KEYS),
            _ => KEYS,
        };
        let events: Vec<Value> = (0..1000)
            .map(|index| observation(index, patients))
            .collect();
        let before = resident_bytes();
        let started = Instant::now();
        let mut index = SubscriptionIndex::new(registry.clone(), topics.clone());
        for number in 0..count {
            let spec = parse_subscription(&subscription(number, workload), &registry, &topics)
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
            workload.name(),
            build.as_secs_f64(),
            matches as f64 / events_per_row as f64,
            events_per_row as f64 / elapsed,
            elapsed * 1e6 / events_per_row as f64,
        );
        drop(index);
    }
}
