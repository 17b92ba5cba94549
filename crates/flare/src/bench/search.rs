//! Measurement 3: search latency on the loaded dataset, one client, one query after another,
//! each with a value that was loaded.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use super::{
    data::{self, MRN_SYSTEM, OBSERVATION_DAYS, VITALS, mix},
    report::{Latencies, Table, grouped, met, millis},
};

pub const TARGET_P50: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub struct SearchOutcome {
    pub query: &'static str,
    pub example: String,
    pub requests: u64,
    pub failures: u64,
    /// Requests whose page had no entry (a loaded value not found would be a bug).
    pub empty_pages: u64,
    pub entries: u64,
    pub latency: Latencies,
}

/// The query kinds; each builds its URL (after the FHIR base) from a pseudo-random number.
const QUERIES: [&str; 4] = [
    "Patient?family=…",
    "Patient?identifier=…",
    "Observation?patient=…&code=…",
    "Observation?date=ge…&_count=50",
];

fn url(
    kind: usize,
    pick: u64,
    patient_ids: &[Option<String>],
    families: &[String],
) -> Option<String> {
    let patients = patient_ids.len().max(1) as u64;
    match kind {
        0 => Some(format!(
            "Patient?family={}",
            families[(pick % families.len() as u64) as usize]
        )),
        1 => Some(format!(
            "Patient?identifier={MRN_SYSTEM}|{}",
            data::mrn((pick % patients) as usize)
        )),
        2 => {
            let id = patient_ids.get((pick % patients) as usize)?.as_ref()?;
            let code = VITALS[((pick >> 32) % VITALS.len() as u64) as usize].0;
            Some(format!(
                "Observation?patient={id}&code=http://loinc.org|{code}"
            ))
        }
        _ => Some(format!(
            "Observation?date=ge{}&_count=50",
            data::date_after_2024(pick % OBSERVATION_DAYS)
        )),
    }
}

/// Runs each query kind for `duration`.
pub async fn run(
    client: &reqwest::Client,
    fhir_base: &str,
    patient_ids: &[Option<String>],
    duration: Duration,
) -> anyhow::Result<Vec<SearchOutcome>> {
    if patient_ids.is_empty() {
        anyhow::bail!("no Patient was loaded, so there is nothing to search; raise --patients");
    }
    // Only names that were given to a loaded patient, so every family search has hits.
    let mut families: Vec<String> = (0..patient_ids.len()).map(data::family_name).collect();
    families.sort_unstable();
    families.dedup();
    let mut outcomes = Vec::new();
    for (kind, query) in QUERIES.iter().enumerate() {
        eprintln!("search: {query} for {} s", duration.as_secs());
        let mut outcome = SearchOutcome {
            query,
            example: String::new(),
            requests: 0,
            failures: 0,
            empty_pages: 0,
            entries: 0,
            latency: Latencies::new(),
        };
        // Two warm-up requests, not counted: connection set-up and first-use caches.
        for warmup in 0..2u64 {
            if let Some(path) = url(kind, mix(warmup ^ 0xFEED), patient_ids, &families) {
                let _ = client
                    .get(format!("{fhir_base}/{path}"))
                    .send()
                    .await?
                    .bytes()
                    .await;
            }
        }
        let started = Instant::now();
        let mut draw = 0u64;
        while started.elapsed() < duration {
            draw += 1;
            let Some(path) = url(
                kind,
                mix(draw ^ ((kind as u64) << 40)),
                patient_ids,
                &families,
            ) else {
                continue;
            };
            if outcome.example.is_empty() {
                outcome.example = path.clone();
            }
            let sent = Instant::now();
            let response = client
                .get(format!("{fhir_base}/{path}"))
                .send()
                .await
                .context("search request failed")?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .context("reading a search response failed")?;
            outcome.latency.record(sent.elapsed());
            outcome.requests += 1;
            if !status.is_success() {
                outcome.failures += 1;
                continue;
            }
            let bundle: Value = serde_json::from_slice(&body).unwrap_or_default();
            let entries = bundle["entry"].as_array().map_or(0, |entries| {
                entries
                    .iter()
                    .filter(|e| e["search"]["mode"].as_str() != Some("outcome"))
                    .count()
            });
            outcome.entries += entries as u64;
            if entries == 0 {
                outcome.empty_pages += 1;
            }
        }
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

pub fn table(outcomes: &[SearchOutcome], patients: usize, observations: usize) -> Table {
    let mut table = Table::new(
        format!(
            "Search latency, 1 client, {} Patients / {} Observations loaded; target p50 < {}",
            grouped(patients as u64),
            grouped(observations as u64),
            millis(TARGET_P50)
        ),
        &[
            "query",
            "requests",
            "p50",
            "p99",
            "max",
            "entries/page",
            "empty pages",
            "errors",
            "target met",
        ],
    );
    for outcome in outcomes {
        let p50 = outcome.latency.quantile(0.5);
        table.row(vec![
            outcome.query.to_owned(),
            grouped(outcome.requests),
            outcome.latency.p50(),
            outcome.latency.p99(),
            outcome.latency.max(),
            format!(
                "{:.1}",
                outcome.entries as f64 / outcome.requests.max(1) as f64
            ),
            grouped(outcome.empty_pages),
            grouped(outcome.failures),
            met(outcome.requests > 0 && outcome.failures == 0 && p50 < TARGET_P50),
        ]);
    }
    table
}
