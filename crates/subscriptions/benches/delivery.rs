//! Delivery through the real runtime, in one process: a SQLite store file and an embedded log
//! with their default durability (fsync), the outbox relay, the subscription runtime with its
//! cursor file, and the guarded HTTP client posting to a receiver on 127.0.0.1.
//!
//! Three tables:
//! - **rest-hook latency**: `SUBSCRIPTIONS` (default 10,000) active topic subscriptions
//!   (`observation-created`, id-only, a `patient=` filter); Observations are created at a
//!   fixed rate for `DELIVERY_SECONDS` (default 10), each for a patient that
//!   `MATCHES_PER_WRITE` subscriptions filter on. Latency runs from the moment the create
//!   returned (committed) to the notification's arrival at the receiver. Rows are
//!   `RESTHOOK_ROWS` = `writes/s:matches per write,...` (default `1000:1,1000:100`:
//!   0.01 % and 1 % of the subscriptions match each write).
//! - **websocket fan-out**: `SUBSCRIPTIONS` websocket subscriptions with the same filter, bound
//!   on 100 sessions of 100 (the runtime's sessions without the HTTP upgrade: frames are read
//!   from each session's outgoing queue); `WS_WRITES` (default 20) matching writes at 10/s.
//! - **memory**: resident memory before and after the subscriptions were created and turned
//!   active, per subscription (runtime state, index, worker or binding task, cursor cache).
//!
//! `cargo bench -p flare-subscriptions --bench delivery` (set `DELIVERY_SECTIONS` to
//! `resthook`, `websocket` or both, comma-separated).

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use flare_events::Relay;
use flare_log::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use flare_search::Registry;
use flare_service::{Fhir, FhirConfig, RequestContext};
use flare_store::{
    Store,
    sqlite::{SqliteConfig, SqliteStore},
};
use flare_subscriptions::{
    TopicRegistry,
    delivery::{
        DeliveryConfig, Dependencies, SubscriptionCheck, SubscriptionRuntime,
        outbound::{AllowList, Deliverer, EndpointPolicy},
    },
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
const TOPIC: &str = "http://flare.dev/fhir/SubscriptionTopic/observation-created";
const BASE_URL: &str = "http://localhost:8080/fhir";

fn registry() -> Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Arc::new(Registry::r4())).clone()
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Resident memory in bytes (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Focus ids (`Observation/<id>` → `<id>`) of the events a notification Bundle carries.
fn focus_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|parameter| parameter["name"] == "notification-event")
        .filter_map(|event| {
            let reference = event["part"]
                .as_array()?
                .iter()
                .find(|part| part["name"] == "focus")?["valueReference"]["reference"]
                .as_str()?;
            reference
                .rsplit_once("/Observation/")
                .map(|(_, id)| id.to_owned())
        })
        .collect()
}

/// Arrivals: `(focus id, when)`, one per delivered event.
type Arrivals = Arc<Mutex<Vec<(String, Instant)>>>;

async fn receive(State(arrivals): State<Arrivals>, body: Bytes) -> StatusCode {
    let now = Instant::now();
    if let Ok(bundle) = serde_json::from_slice::<Value>(&body) {
        let ids = focus_ids(&bundle);
        if !ids.is_empty() {
            arrivals.lock().extend(ids.into_iter().map(|id| (id, now)));
        }
    }
    StatusCode::OK
}

/// A rest-hook receiver on 127.0.0.1 that timestamps every event on arrival.
async fn start_receiver() -> (String, Arrivals) {
    let arrivals: Arrivals = Arc::default();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/hook"), arrivals)
}

struct Stack {
    fhir: Fhir,
    runtime: SubscriptionRuntime,
    _stop_relay: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(SqliteConfig::file(dir.path().join("flare.sqlite"))).unwrap(),
        );
        let log: Arc<dyn EventLog> = Arc::new(
            EmbeddedLog::open(EmbeddedLogConfig::in_dir(dir.path().join("log")))
                .await
                .unwrap(),
        );
        let fhir = Fhir::new(store.clone(), registry(), FhirConfig::default());
        let topics = TopicRegistry::with_builtins(&registry());
        fhir.add_write_check(
            "Subscription",
            Arc::new(SubscriptionCheck::new(registry(), topics.clone())),
        );
        let relay = Relay::new(store, log.clone());
        let (stop_relay, stopped) = watch::channel(false);
        tokio::spawn(relay.run(stopped));
        let allow: AllowList = "127.0.0.0/8".parse().unwrap();
        let deliverer = Deliverer::new(
            EndpointPolicy::new(allow),
            flare_subscriptions::delivery::outbound::DeliveryConfig::default(),
        )
        .unwrap();
        let config = DeliveryConfig {
            cursor_file: dir.path().join("subscriptions.sqlite"),
            base_url: BASE_URL.into(),
            ..DeliveryConfig::default()
        };
        let runtime = SubscriptionRuntime::start(
            Dependencies {
                fhir: fhir.clone(),
                log,
                topics,
                transport: Arc::new(deliverer),
            },
            config,
        )
        .await
        .unwrap();
        Self {
            fhir,
            runtime,
            _stop_relay: stop_relay,
            _dir: dir,
        }
    }

    async fn create(&self, resource: Value) -> String {
        let resource_type = resource["resourceType"].as_str().unwrap().to_owned();
        let outcome = self
            .fhir
            .create(
                &RequestContext::new(BASE_URL),
                &resource_type,
                resource,
                None,
            )
            .await
            .unwrap();
        outcome.version.unwrap().key.id.clone()
    }

    /// Creates `count` subscriptions (64 at a time) and waits until the runtime has them all
    /// `active`; returns their ids.
    async fn subscribe(
        self: &Arc<Self>,
        count: usize,
        make: impl Fn(usize) -> Value,
    ) -> Vec<String> {
        let permits = Arc::new(Semaphore::new(64));
        let mut tasks = Vec::with_capacity(count);
        for number in 0..count {
            let permit = permits.clone().acquire_owned().await.unwrap();
            let stack = self.clone();
            let subscription = make(number);
            tasks.push(tokio::spawn(async move {
                let id = stack.create(subscription).await;
                drop(permit);
                id
            }));
        }
        let mut ids = Vec::with_capacity(count);
        for task in tasks {
            ids.push(task.await.unwrap());
        }
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let mut active = 0;
            for id in &ids {
                if let Ok(Some(status)) = self.runtime.status(id).await
                    && status.status == "active"
                {
                    active += 1;
                }
            }
            if active == ids.len() {
                return ids;
            }
            assert!(
                Instant::now() < deadline,
                "only {active} of {count} subscriptions turned active"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn subscription(channel: Value, patient: usize) -> Value {
    json!({
        "resourceType": "Subscription", "status": "requested", "reason": "bench",
        "criteria": TOPIC,
        "_criteria": {"extension": [{"url": format!("{BACKPORT}backport-filter-criteria"),
            "valueString": format!("patient=Patient/p{patient}")}]},
        "channel": channel,
    })
}

fn content(kind: &str, endpoint: Option<&str>) -> Value {
    let mut channel = json!({"type": kind, "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"),
            "valueCode": "id-only"}]}});
    if let Some(endpoint) = endpoint {
        channel["endpoint"] = json!(endpoint);
    }
    channel
}

fn observation(patient: usize, number: usize) -> Value {
    json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/p{patient}")},
        "valueQuantity": {"value": number % 200, "unit": "/min",
            "system": "http://unitsofmeasure.org", "code": "/min"},
    })
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1000.0)
}

/// Writes at `rate`/s for `seconds`, each for one of `patients` patients in turn; returns the
/// commit instant of every Observation id.
async fn write_at_rate(
    stack: &Arc<Stack>,
    rate: usize,
    seconds: usize,
    patients: usize,
) -> HashMap<String, Instant> {
    let total = rate * seconds;
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    for number in 0..total {
        ticker.tick().await;
        let stack = stack.clone();
        let committed = committed.clone();
        tasks.push(tokio::spawn(async move {
            let id = stack.create(observation(number % patients, number)).await;
            committed.lock().insert(id, Instant::now());
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    committed.lock().clone()
}

/// Latencies of the arrivals, until `expected` events arrived or `patience` passed.
async fn wait_arrivals(
    arrivals: &Arrivals,
    committed: &HashMap<String, Instant>,
    expected: usize,
    patience: Duration,
) -> (Vec<Duration>, Instant) {
    let deadline = Instant::now() + patience;
    while arrivals.lock().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let arrivals = arrivals.lock().clone();
    let last = arrivals
        .iter()
        .map(|(_, at)| *at)
        .max()
        .unwrap_or_else(Instant::now);
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(id, at)| Some(at.saturating_duration_since(*committed.get(id)?)))
        .collect();
    latencies.sort_unstable();
    (latencies, last)
}

async fn resthook(subscriptions: usize, seconds: usize, memory: &mut Vec<String>) {
    let rows: Vec<(usize, usize)> = std::env::var("RESTHOOK_ROWS")
        .unwrap_or_else(|_| "1000:1,1000:100".into())
        .split(',')
        .filter_map(|row| {
            let (rate, matches) = row.split_once(':')?;
            Some((rate.trim().parse().ok()?, matches.trim().parse().ok()?))
        })
        .collect();
    println!("\n### rest-hook: commit -> arrival ({subscriptions} active subscriptions)\n");
    println!(
        "| writes/s | matches/write | writes | events expected | events arrived | deliveries/s | p50 ms | p99 ms | max ms | load |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (rate, matches) in rows {
        let matches = matches.clamp(1, subscriptions);
        // Subscription i filters on patient i % patients: each patient has `matches` of them.
        let patients = subscriptions / matches;
        let (endpoint, arrivals) = start_receiver().await;
        let stack = Arc::new(Stack::start().await);
        let before = resident_bytes();
        let started = Instant::now();
        stack
            .subscribe(subscriptions, |number| {
                subscription(content("rest-hook", Some(&endpoint)), number % patients)
            })
            .await;
        if let (Some(before), Some(after)) = (before, resident_bytes()) {
            memory.push(format!(
                "| rest-hook | {subscriptions} | {:.0} | {} | {:.1} |",
                started.elapsed().as_secs_f64(),
                after.saturating_sub(before) / subscriptions as u64,
                (after.saturating_sub(before)) as f64 / 1e6,
            ));
        }
        let committed = write_at_rate(&stack, rate, seconds, patients).await;
        let writes = committed.len();
        let expected = writes * matches;
        let (latencies, last) = wait_arrivals(
            &arrivals,
            &committed,
            expected,
            Duration::from_secs((seconds as u64 * 6).max(60)),
        )
        .await;
        let first = committed.values().min().copied().unwrap_or(last);
        let span = last
            .saturating_duration_since(first)
            .as_secs_f64()
            .max(1e-3);
        println!(
            "| {rate} | {matches} | {writes} | {expected} | {} | {:.0} | {} | {} | {} | {} |",
            latencies.len(),
            latencies.len() as f64 / span,
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies.last().copied().unwrap_or_default()),
            load_average(),
        );
        stack.runtime.shutdown().await;
    }
}

async fn websocket(subscriptions: usize, memory: &mut Vec<String>) {
    let writes = env_number("WS_WRITES", 20);
    let stack = Arc::new(Stack::start().await);
    let before = resident_bytes();
    let started = Instant::now();
    let ids = stack
        .subscribe(subscriptions, |_| {
            subscription(content("websocket", None), 0)
        })
        .await;
    let arrivals: Arrivals = Arc::default();
    let mut sessions = Vec::new();
    for chunk in ids.chunks(100) {
        let token = stack.runtime.issue_ws_token(chunk).unwrap();
        let (mut session, mut frames) = stack.runtime.open_ws_session();
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                let now = Instant::now();
                if let Ok(bundle) = serde_json::from_str::<Value>(&frame) {
                    let ids = focus_ids(&bundle);
                    if !ids.is_empty() {
                        arrivals.lock().extend(ids.into_iter().map(|id| (id, now)));
                    }
                }
            }
        });
        session
            .handle_text(&format!("bind-with-token {}", token.token))
            .await;
        sessions.push(session);
    }
    if let (Some(before), Some(after)) = (before, resident_bytes()) {
        memory.push(format!(
            "| websocket (bound) | {subscriptions} | {:.0} | {} | {:.1} |",
            started.elapsed().as_secs_f64(),
            after.saturating_sub(before) / subscriptions as u64,
            (after.saturating_sub(before)) as f64 / 1e6,
        ));
    }
    let committed = write_at_rate(&stack, 10, writes.div_ceil(10), 1).await;
    let expected = committed.len() * subscriptions;
    let (latencies, last) =
        wait_arrivals(&arrivals, &committed, expected, Duration::from_secs(600)).await;
    let first = committed.values().min().copied().unwrap_or(last);
    let span = last
        .saturating_duration_since(first)
        .as_secs_f64()
        .max(1e-3);
    println!("\n### websocket fan-out ({subscriptions} bound subscriptions, 100 per session)\n");
    println!(
        "| writes | events expected | events arrived | deliveries/s | p50 ms | p99 ms | max ms | load |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    println!(
        "| {} | {expected} | {} | {:.0} | {} | {} | {} | {} |",
        committed.len(),
        latencies.len(),
        latencies.len() as f64 / span,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        load_average(),
    );
    drop(sessions);
    stack.runtime.shutdown().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let subscriptions = env_number("SUBSCRIPTIONS", 10_000);
    let seconds = env_number("DELIVERY_SECONDS", 10);
    let sections =
        std::env::var("DELIVERY_SECTIONS").unwrap_or_else(|_| "resthook,websocket".into());
    let mut memory = Vec::new();
    runtime.block_on(async {
        if sections.contains("resthook") {
            resthook(subscriptions, seconds, &mut memory).await;
        }
        if sections.contains("websocket") {
            websocket(subscriptions, &mut memory).await;
        }
    });
    println!("\n### memory per active subscription (resident set delta)\n");
    println!("| channel | subscriptions | setup s | bytes/subscription | total MB |");
    println!("|---|---:|---:|---:|---:|");
    for row in memory {
        println!("{row}");
    }
}
