//! Measurement 1: the CRUD mix over HTTP. Each simulated client has its own keep-alive
//! connection and repeats create → read → update → delete, cycling through Patient,
//! Encounter and Observation, as fast as the server answers (closed loop).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{
    data,
    report::{Latencies, Table, grouped, met, millis, rate},
    server::http_client,
};

pub const TARGET_OPS_PER_SECOND: f64 = 5_000.0;
pub const TARGET_P99: Duration = Duration::from_millis(10);
/// The target applies at this many clients.
pub const TARGET_CLIENTS: usize = 8;

#[derive(Debug)]
pub struct CrudOutcome {
    pub clients: usize,
    pub elapsed: Duration,
    pub failures: u64,
    pub all: Latencies,
    /// Create, read, update, delete.
    pub by_operation: [Latencies; 4],
}

impl CrudOutcome {
    pub fn ops_per_second(&self) -> f64 {
        self.all.count() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn meets_target(&self) -> bool {
        self.ops_per_second() >= TARGET_OPS_PER_SECOND
            && self.all.quantile(0.99) < TARGET_P99
            && self.failures == 0
    }
}

struct ClientTally {
    failures: u64,
    by_operation: [Latencies; 4],
}

/// Runs `clients` concurrent clients for `duration`.
pub async fn run(
    fhir_base: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<CrudOutcome> {
    // Every client gets its subject Patient before the clock starts.
    let mut prepared = Vec::new();
    for client_number in 0..clients {
        let client = http_client()?;
        let (_, subject) = send(
            &client,
            Method::POST,
            &format!("{fhir_base}/Patient"),
            Some(&data::patient(client_number)),
        )
        .await
        .context("creating a client's Patient failed")?;
        let Some(subject) = subject else {
            bail!("the server did not return a Location for a created Patient")
        };
        prepared.push((client, format!("Patient/{subject}")));
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for (client_number, (client, subject)) in prepared.into_iter().enumerate() {
        let fhir_base = fhir_base.to_owned();
        tasks.push(tokio::spawn(async move {
            client_loop(client, fhir_base, subject, client_number, deadline).await
        }));
    }
    let mut outcome = CrudOutcome {
        clients,
        elapsed: Duration::ZERO,
        failures: 0,
        all: Latencies::new(),
        by_operation: Default::default(),
    };
    for task in tasks {
        let tally = task.await.context("a client task failed")??;
        outcome.failures += tally.failures;
        for (total, part) in outcome.by_operation.iter_mut().zip(&tally.by_operation) {
            total.merge(part);
            outcome.all.merge(part);
        }
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

async fn client_loop(
    client: reqwest::Client,
    fhir_base: String,
    subject: String,
    client_number: usize,
    deadline: Instant,
) -> anyhow::Result<ClientTally> {
    let mut tally = ClientTally {
        failures: 0,
        by_operation: Default::default(),
    };
    let mut cycle = 0usize;
    while Instant::now() < deadline {
        let (resource_type, mut resource) = match cycle % 3 {
            0 => ("Patient", data::patient(client_number * 1_000_000 + cycle)),
            1 => ("Encounter", data::encounter(&subject, (cycle % 700) as u64)),
            _ => (
                "Observation",
                data::observation(&subject, None, cycle, (cycle % 700) as u64, cycle as u64),
            ),
        };
        cycle += 1;
        let type_url = format!("{fhir_base}/{resource_type}");
        let sent = Instant::now();
        let (status, id) = send(&client, Method::POST, &type_url, Some(&resource)).await?;
        tally.by_operation[0].record(sent.elapsed());
        let Some(id) = id.filter(|_| status == StatusCode::CREATED) else {
            tally.failures += 1;
            continue;
        };
        let instance_url = format!("{type_url}/{id}");
        resource["id"] = json!(id);
        // The update changes something, so it makes a new version and an event.
        resource["meta"] = json!({"tag": [{"system": "urn:flare-bench", "code": "updated"}]});
        let steps: [(usize, Method, Option<&Value>, &[StatusCode]); 3] = [
            (1, Method::GET, None, &[StatusCode::OK]),
            (2, Method::PUT, Some(&resource), &[StatusCode::OK]),
            (
                3,
                Method::DELETE,
                None,
                &[StatusCode::OK, StatusCode::NO_CONTENT],
            ),
        ];
        for (operation, method, body, expected) in steps {
            let sent = Instant::now();
            let (status, _) = send(&client, method, &instance_url, body).await?;
            tally.by_operation[operation].record(sent.elapsed());
            if !expected.contains(&status) {
                tally.failures += 1;
            }
        }
    }
    Ok(tally)
}

/// Sends one request, reads the whole answer; returns the status and the id from `Location`.
async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<&Value>,
) -> anyhow::Result<(StatusCode, Option<String>)> {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/fhir+json")
            .body(serde_json::to_vec(body)?);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("request to {url} failed"))?;
    let status = response.status();
    // `Location: <base>/<Type>/<id>/_history/<version>`.
    let id = response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .and_then(|location| location.split("/_history/").next())
        .and_then(|path| path.rsplit('/').next())
        .map(str::to_owned);
    response
        .bytes()
        .await
        .context("reading a response failed")?;
    Ok((status, id))
}

pub fn table(outcomes: &[(&str, &CrudOutcome)], stored_resources: usize) -> Table {
    let mut table = Table::new(
        format!(
            "CRUD mix over HTTP (create, read, update, delete of Patient/Encounter/Observation; {} resources already stored); target >= {} ops/s with p99 < {} at {} clients",
            grouped(stored_resources as u64),
            grouped(TARGET_OPS_PER_SECOND as u64),
            millis(TARGET_P99),
            TARGET_CLIENTS
        ),
        &[
            "durability",
            "clients",
            "ops/s",
            "p50",
            "p99",
            "p99 create",
            "p99 read",
            "p99 update",
            "p99 delete",
            "errors",
            "target met",
        ],
    );
    for (policy, outcome) in outcomes {
        let target = if outcome.clients == TARGET_CLIENTS {
            met(outcome.meets_target())
        } else {
            "-".into()
        };
        let mut row = vec![
            (*policy).to_owned(),
            outcome.clients.to_string(),
            rate(outcome.ops_per_second()),
            outcome.all.p50(),
            outcome.all.p99(),
        ];
        row.extend(outcome.by_operation.iter().map(Latencies::p99));
        row.push(grouped(outcome.failures));
        row.push(target);
        table.row(row);
    }
    table
}
