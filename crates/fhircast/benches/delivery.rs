//! Publish -> delivery latency of the FHIRcast hub, with real WebSocket clients over loopback
//! against the real axum routes (`flare_server::fhircast_routes`).
//!
//! The hub runs in a child process (this binary, re-executed with `FHIRCAST_BENCH_ROLE=server`)
//! so its resident memory can be read alone and client and server each have their own file
//! descriptor limit. Run: `cargo bench -p flare-fhircast --bench delivery` (add `-- --quick`
//! for a short run). Prints one table per measurement.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

const ROLE_VARIABLE: &str = "FHIRCAST_BENCH_ROLE";
/// Guards a run against a hub that stops delivering; never part of a measurement.
const WAIT_GUARD: Duration = Duration::from_secs(60);

fn main() {
    if std::env::var(ROLE_VARIABLE).as_deref() == Ok("server") {
        run_server();
        return;
    }
    let quick = std::env::args().any(|argument| argument == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run_client(quick));
}

/// The hub alone: prints its address, serves until stdin closes (the parent ended).
fn run_server() {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let config = flare_fhircast::HubConfig {
            // Clients acknowledge every event; a late acknowledgement must not turn into
            // SyncErrors that would be measured as deliveries.
            ack_timeout_ms: 120_000,
            ping_interval_ms: 0,
            ..flare_fhircast::HubConfig::default()
        };
        let app = flare_server::fhircast_routes(flare_fhircast::HubHandle::start(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address = listener.local_addr().expect("a bound address");
        println!("listening {address}");
        tokio::spawn(async move { axum::serve(listener, app).await });
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .ok();
    });
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().expect("the bench binary"))
            .env(ROLE_VARIABLE, "server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the hub process");
        let stdout = child.stdout.take().expect("the hub's stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the hub's address");
        let address = line.trim().trim_start_matches("listening ").to_string();
        Self {
            child,
            url: format!("http://{address}/fhircast"),
        }
    }

    /// Resident memory of the hub process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Receive times of one run: `arrivals[event]` holds when each subscriber got that event.
struct Deliveries {
    counts: Vec<AtomicUsize>,
    expected: usize,
    all_arrived: Notify,
    arrivals: parking_lot::Mutex<Vec<(usize, Instant)>>,
}

impl Deliveries {
    fn new(events: usize, expected: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: (0..events).map(|_| AtomicUsize::new(0)).collect(),
            expected,
            all_arrived: Notify::new(),
            arrivals: parking_lot::Mutex::new(Vec::new()),
        })
    }

    fn record(&self, event: usize, at: Instant) {
        self.arrivals.lock().push((event, at));
        if let Some(count) = self.counts.get(event)
            && count.fetch_add(1, Ordering::AcqRel) + 1 == self.expected
        {
            self.all_arrived.notify_waiters();
        }
    }

    fn complete(&self, event: usize) -> bool {
        self.counts
            .get(event)
            .is_some_and(|count| count.load(Ordering::Acquire) >= self.expected)
    }
}

/// Event ids look like `bench-<run>-<n>`: unique per hub, findable without parsing JSON.
fn event_number(frame: &str, run: &str) -> Option<usize> {
    let marker = format!("\"bench-{run}-");
    let start = frame.find(&marker)? + marker.len();
    let digits: String = frame[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

async fn subscribe(client: &reqwest::Client, url: &str, topic: &str, name: usize) -> String {
    let form = format!(
        "hub.channel.type=websocket&hub.mode=subscribe&hub.topic={topic}&hub.events=Patient-open,Patient-close&subscriber.name=bench-{name}"
    );
    let response = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("subscribe");
    assert_eq!(response.status(), 202, "subscribe");
    let body: serde_json::Value = response.json().await.expect("a subscribe answer");
    body["hub.channel.endpoint"]
        .as_str()
        .expect("an endpoint")
        .to_string()
}

/// Subscribes `per_topic` subscribers to each topic, connects them, and starts a task per
/// socket that records and acknowledges every event of this run.
async fn connect_subscribers(
    client: &reqwest::Client,
    url: &str,
    topics: &[String],
    per_topic: usize,
    run: &str,
    deliveries: &Arc<Deliveries>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let wanted: Vec<(usize, String)> = topics
        .iter()
        .flat_map(|topic| std::iter::repeat_n(topic.clone(), per_topic))
        .enumerate()
        .collect();
    let endpoints: Vec<String> = futures::stream::iter(wanted)
        .map(|(name, topic)| async move { subscribe(client, url, &topic, name).await })
        .buffer_unordered(32)
        .collect()
        .await;
    let sockets: Vec<_> = futures::stream::iter(endpoints)
        .map(|endpoint| async move {
            let (mut socket, _) = tokio_tungstenite::connect_async(&endpoint)
                .await
                .expect("a subscriber socket");
            // The confirmation.
            match socket.next().await {
                Some(Ok(Message::Text(_))) => {}
                other => panic!("expected the confirmation, got {other:?}"),
            }
            socket
        })
        .buffer_unordered(64)
        .collect()
        .await;
    sockets
        .into_iter()
        .map(|socket| {
            let (deliveries, run) = (deliveries.clone(), run.to_string());
            tokio::spawn(async move {
                let (mut sink, mut stream) = socket.split();
                while let Some(Ok(frame)) = stream.next().await {
                    let Message::Text(text) = frame else {
                        continue;
                    };
                    let at = Instant::now();
                    let Some(event) = event_number(text.as_str(), &run) else {
                        continue;
                    };
                    deliveries.record(event, at);
                    let ack = format!(r#"{{"id":"bench-{run}-{event}","status":200}}"#);
                    if sink.send(Message::Text(ack.into())).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect()
}

fn patient_open(topic: &str, run: &str, event: usize) -> String {
    serde_json::json!({
        "timestamp": "2025-01-01T10:00:00Z",
        "id": format!("bench-{run}-{event}"),
        "event": {"hub.topic": topic, "hub.event": "Patient-open", "context": [
            {"key": "patient", "resource": {"resourceType": "Patient", "id": format!("patient-{}", event % 50),
                "identifier": [{"system": "urn:oid:1.2.3", "value": format!("{}", 185_000 + event)}]}}]}
    })
    .to_string()
}

async fn publish(client: &reqwest::Client, url: &str, body: String) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("publish");
    assert_eq!(response.status(), 202, "publish");
}

struct Row {
    scenario: String,
    subscribers: usize,
    events: usize,
    deliveries: usize,
    latencies_ms: Vec<f64>,
    events_per_second: f64,
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn latencies(deliveries: &Deliveries, published_at: &[Instant]) -> Vec<f64> {
    let mut latencies: Vec<f64> = deliveries
        .arrivals
        .lock()
        .iter()
        .filter_map(|(event, at)| {
            published_at
                .get(*event)
                .map(|sent| at.duration_since(*sent).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// Events one at a time on one topic: each is published once the previous one reached every
/// subscriber, so the latency is the fan-out's and not a queue's.
async fn one_topic(
    client: &reqwest::Client,
    server: &Server,
    subscribers: usize,
    events: usize,
    memory: &mut Vec<String>,
) -> Row {
    let run = format!("one{subscribers}");
    let topic = format!("topic-{run}");
    let deliveries = Deliveries::new(events, subscribers);
    let rss_before = server.rss_kib();
    let tasks = connect_subscribers(
        client,
        &server.url,
        std::slice::from_ref(&topic),
        subscribers,
        &run,
        &deliveries,
    )
    .await;
    let rss_connected = server.rss_kib();
    let mut published_at = Vec::with_capacity(events);
    let started = Instant::now();
    for event in 0..events {
        published_at.push(Instant::now());
        publish(client, &server.url, patient_open(&topic, &run, event)).await;
        let guard = tokio::time::sleep(WAIT_GUARD);
        tokio::pin!(guard);
        while !deliveries.complete(event) {
            tokio::select! {
                () = deliveries.all_arrived.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
                () = &mut guard => break,
            }
        }
    }
    let elapsed = started.elapsed();
    let rss_after = server.rss_kib();
    memory.push(format!(
        "| {subscribers} | {rss_before} | {rss_connected} | {:.1} | {rss_after} |",
        (rss_connected.saturating_sub(rss_before)) as f64 / subscribers as f64
    ));
    for task in tasks {
        task.abort();
    }
    let latencies_ms = latencies(&deliveries, &published_at);
    Row {
        scenario: format!("1 topic, {subscribers} subscribers, one event at a time"),
        subscribers,
        events,
        deliveries: latencies_ms.len(),
        latencies_ms,
        events_per_second: events as f64 / elapsed.as_secs_f64(),
    }
}

/// Events published with `in_flight` requests outstanding, round-robin over the topics; the
/// rate is events accepted and delivered everywhere per second.
async fn sustained(
    client: &reqwest::Client,
    server: &Server,
    topics: usize,
    per_topic: usize,
    events: usize,
    in_flight: usize,
) -> Row {
    let run = format!("rate{topics}x{per_topic}");
    let topic_names: Vec<String> = (0..topics).map(|n| format!("topic-{run}-{n}")).collect();
    let deliveries = Deliveries::new(events, per_topic);
    let tasks = connect_subscribers(
        client,
        &server.url,
        &topic_names,
        per_topic,
        &run,
        &deliveries,
    )
    .await;
    let published_at: Arc<Vec<parking_lot::Mutex<Option<Instant>>>> =
        Arc::new((0..events).map(|_| parking_lot::Mutex::new(None)).collect());
    let started = Instant::now();
    futures::stream::iter(0..events)
        .map(|event| {
            let (topic, run, published_at) = (
                topic_names[event % topics].clone(),
                run.clone(),
                published_at.clone(),
            );
            async move {
                let body = patient_open(&topic, &run, event);
                *published_at[event].lock() = Some(Instant::now());
                publish(client, &server.url, body).await;
            }
        })
        .buffer_unordered(in_flight)
        .collect::<Vec<()>>()
        .await;
    let guard = Instant::now();
    while !(0..events).all(|event| deliveries.complete(event)) && guard.elapsed() < WAIT_GUARD {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    for task in tasks {
        task.abort();
    }
    let published_at: Vec<Instant> = published_at
        .iter()
        .map(|sent| sent.lock().unwrap_or(started))
        .collect();
    let latencies_ms = latencies(&deliveries, &published_at);
    Row {
        scenario: format!(
            "{topics} topic(s) x {per_topic} subscribers, {in_flight} publishes in flight"
        ),
        subscribers: topics * per_topic,
        events,
        deliveries: latencies_ms.len(),
        latencies_ms,
        events_per_second: events as f64 / elapsed.as_secs_f64(),
    }
}

/// A subscriber that connects and never reads again: the hub must close it once its queue is
/// full, and its memory must not keep growing with every event.
async fn stalled_subscriber(client: &reqwest::Client, server: &Server, events: usize) -> String {
    let topic = "topic-stalled";
    let endpoint = subscribe(client, &server.url, topic, 0).await;
    let (socket, _) = tokio_tungstenite::connect_async(&endpoint)
        .await
        .expect("a subscriber socket");
    let rss_before = server.rss_kib();
    // Large events fill the socket buffers quickly.
    let filler = "x".repeat(16 * 1024);
    let mut closed_after = None;
    for event in 0..events {
        let mut body: serde_json::Value =
            serde_json::from_str(&patient_open(topic, "stalled", event)).expect("json");
        body["event"]["context"][0]["resource"]["text"] =
            serde_json::json!({"status": "generated", "div": filler});
        publish(client, &server.url, body.to_string()).await;
        if closed_after.is_none() && !still_subscribed(client, &server.url, topic, &endpoint).await
        {
            closed_after = Some(event + 1);
        }
    }
    let rss_after = server.rss_kib();
    drop(socket);
    format!(
        "| {events} events of ~16 KiB to a subscriber that never reads | {} | {} KiB |",
        closed_after.map_or("not closed".to_string(), |n| format!("after {n} events")),
        rss_after as i64 - rss_before as i64
    )
}

/// Re-subscribing with the endpoint answers 202 while the subscription lives, 400 after.
async fn still_subscribed(
    client: &reqwest::Client,
    url: &str,
    topic: &str,
    endpoint: &str,
) -> bool {
    let form = format!(
        "hub.channel.type=websocket&hub.mode=subscribe&hub.topic={topic}&hub.events=Patient-open&hub.channel.endpoint={endpoint}"
    );
    client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .is_ok_and(|response| response.status() == 202)
}

async fn run_client(quick: bool) {
    let server = Server::start();
    let client = reqwest::Client::new();
    let scale = if quick { 10 } else { 1 };
    let mut memory = Vec::new();
    let mut rows = Vec::new();
    rows.push(one_topic(&client, &server, 1, 1000 / scale, &mut memory).await);
    rows.push(one_topic(&client, &server, 100, 300 / scale, &mut memory).await);
    rows.push(
        one_topic(
            &client,
            &server,
            10_000 / scale,
            (30 / scale).max(5),
            &mut memory,
        )
        .await,
    );
    rows.push(sustained(&client, &server, 1000 / scale, 3, 3000 / scale, 16).await);
    rows.push(sustained(&client, &server, 1, 100, 3000 / scale, 16).await);
    let stalled = stalled_subscriber(&client, &server, 2000 / scale).await;

    println!(
        "FHIRcast hub: publish -> delivery over loopback WebSockets (axum routes, hub in a child process)"
    );
    println!();
    println!(
        "| scenario | subscribers | events | deliveries | p50 ms | p95 ms | p99 ms | max ms | events/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let sorted = &row.latencies_ms;
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            row.scenario,
            row.subscribers,
            row.events,
            row.deliveries,
            percentile(sorted, 0.50),
            percentile(sorted, 0.95),
            percentile(sorted, 0.99),
            sorted.last().copied().unwrap_or(f64::NAN),
            row.events_per_second,
        );
    }
    println!();
    println!("Hub process memory (VmRSS, KiB) around connecting the subscribers of one topic:");
    println!();
    println!("| subscribers | before | connected | KiB per connection | after the events |");
    println!("|---:|---:|---:|---:|---:|");
    for line in &memory {
        println!("{line}");
    }
    println!();
    println!("| stalled subscriber | closed by the hub | hub RSS change |");
    println!("|---|---|---:|");
    println!("{stalled}");
}
