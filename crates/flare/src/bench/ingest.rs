//! Measurement 2: transaction-Bundle ingest. Loading the search dataset is the measurement:
//! Bundles of whole patients (Patient, Encounters, Observations linked by `urn:uuid`), several
//! in flight.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::{
    data::{self, Shape},
    report::{Latencies, Table, grouped, met, rate},
};

pub const TARGET_RESOURCES_PER_SECOND: f64 = 20_000.0;

/// What loading produced: the server ids of the Patients, by patient number.
#[derive(Debug)]
pub struct Loaded {
    pub patient_ids: Vec<Option<String>>,
    pub observations: usize,
    pub outcome: IngestOutcome,
}

#[derive(Debug)]
pub struct IngestOutcome {
    pub in_flight: usize,
    pub bundles: usize,
    pub resources: usize,
    pub entries_per_bundle: (usize, usize),
    pub elapsed: Duration,
    pub bundle_latency: Latencies,
    /// Whether the time budget ran out before the whole dataset was sent.
    pub cut_short: bool,
}

impl IngestOutcome {
    pub fn resources_per_second(&self) -> f64 {
        self.resources as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What the ingest client asks back for each entry (`Prefer: return=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// No `Prefer` header: every created resource comes back in the response.
    Representation,
    /// `Prefer: return=minimal`, as bulk loaders send it: status, location and etag only.
    Minimal,
}

/// Loads the dataset of `shape` through `POST /fhir` transactions, `in_flight` at a time. No
/// Bundle is started after `budget`: the patients loaded are then a prefix of the dataset.
pub async fn load(
    client: &reqwest::Client,
    fhir_base: &str,
    shape: Shape,
    in_flight: usize,
    budget: Duration,
    wanted: Return,
) -> anyhow::Result<Loaded> {
    let progress = ProgressBar::new(shape.resources() as u64);
    progress.set_style(
        ProgressStyle::with_template("loading {pos}/{len} resources ({per_sec}) {wide_bar} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut patient_ids = vec![None; shape.patients];
    let mut latencies = Latencies::new();
    let mut smallest = usize::MAX;
    let mut largest = 0;
    let mut resources = 0;
    let started = Instant::now();
    let mut last_report = started;
    let mut issued = 0;
    let mut responses = futures::stream::iter(0..shape.bundles())
        .take_while(|_| futures::future::ready(started.elapsed() < budget))
        .inspect(|_| issued += 1)
        .map(|bundle| {
            let (body, patients) = data::transaction(&shape, bundle);
            let entries = body["entry"].as_array().map_or(0, Vec::len);
            async move {
                let body = serde_json::to_vec(&body)?;
                let sent = Instant::now();
                let mut request = client
                    .post(fhir_base)
                    .header("content-type", "application/fhir+json");
                if wanted == Return::Minimal {
                    request = request.header("prefer", "return=minimal");
                }
                let response = request
                    .body(body)
                    .send()
                    .await
                    .context("transaction request failed")?;
                let status = response.status();
                let bytes = response
                    .bytes()
                    .await
                    .context("reading the transaction response failed")?;
                let latency = sent.elapsed();
                if !status.is_success() {
                    bail!(
                        "transaction {bundle} answered {status}: {}",
                        String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
                    );
                }
                let reply: Value = serde_json::from_slice(&bytes)
                    .context("the transaction response is not JSON")?;
                anyhow::Ok((reply, patients, entries, latency))
            }
        })
        .buffer_unordered(in_flight.max(1));
    while let Some(result) = responses.next().await {
        let (reply, patients, entries, latency) = result?;
        latencies.record(latency);
        smallest = smallest.min(entries);
        largest = largest.max(entries);
        resources += entries;
        let reply_entries = reply["entry"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (number, index) in patients {
            // `response.location` is `Patient/<id>/_history/<version>`.
            let id = reply_entries
                .get(index)
                .and_then(|entry| entry["response"]["location"].as_str())
                .and_then(|location| location.split('/').nth(1))
                .map(str::to_owned);
            if let Some(slot) = patient_ids.get_mut(number) {
                *slot = id;
            }
        }
        progress.inc(entries as u64);
        // Without a terminal the bar is hidden: say how far loading got every 10 s instead.
        if progress.is_hidden() && last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "loaded {resources} of {} resources ({:.0}/s)",
                shape.resources(),
                resources as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let elapsed = started.elapsed();
    drop(responses);
    progress.finish_and_clear();
    let loaded_patients = if issued == 0 {
        0
    } else {
        shape.patients_in(issued - 1).end
    };
    patient_ids.truncate(loaded_patients);
    let observations = (0..loaded_patients)
        .map(|patient| shape.observations_of(patient))
        .sum();
    let outcome = IngestOutcome {
        in_flight,
        bundles: issued,
        resources,
        entries_per_bundle: (smallest.min(largest), largest),
        elapsed,
        bundle_latency: latencies,
        cut_short: issued < shape.bundles(),
    };
    Ok(Loaded {
        patient_ids,
        observations,
        outcome,
    })
}

pub fn table(outcomes: &[(String, &IngestOutcome)]) -> Table {
    let mut table = Table::new(
        format!(
            "Transaction-Bundle ingest over HTTP (Patient + Encounters + Observations, urn:uuid references); target >= {} resources/s",
            grouped(TARGET_RESOURCES_PER_SECOND as u64)
        ),
        &[
            "run",
            "in flight",
            "bundles",
            "entries/bundle",
            "resources",
            "seconds",
            "resources/s",
            "bundle p50",
            "bundle p99",
            "target met",
        ],
    );
    for (name, outcome) in outcomes {
        let (smallest, largest) = outcome.entries_per_bundle;
        table.row(vec![
            name.clone(),
            outcome.in_flight.to_string(),
            grouped(outcome.bundles as u64),
            if smallest == largest {
                smallest.to_string()
            } else {
                format!("{smallest}-{largest}")
            },
            grouped(outcome.resources as u64),
            format!("{:.1}", outcome.elapsed.as_secs_f64()),
            rate(outcome.resources_per_second()),
            outcome.bundle_latency.p50(),
            outcome.bundle_latency.p99(),
            met(outcome.resources_per_second() >= TARGET_RESOURCES_PER_SECOND),
        ]);
    }
    table
}
