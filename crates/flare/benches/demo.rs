//! Benchmarks of the demo path, printed as tables:
//!
//! - `generate`: `flare generate` throughput (resources/s) into each sink: stdout, NDJSON
//!   files, a `flare serve` over HTTP, a Kafka topic (on the `nisshi` test broker).
//! - `fanout`: the dashboard's live WebSocket (`/api/live`) with 1,000, 5,000 and 10,000
//!   clients over loopback: deliveries/s, publish -> receive latency (p50/p95/p99/max) and the
//!   server's memory per connection. The server runs in a child process (this binary again),
//!   so that server and clients each have their own open-file limit.
//! - `demo`: `flare demo` start -> dashboard URL printed, first immunization count, first
//!   sepsis alert over HTTP (seconds).
//!
//! `cargo bench -p flare --bench demo` runs them all; name sections to pick some
//! (`cargo bench -p flare --bench demo -- fanout`), and `--clients 1000,5000`,
//! `--rate 2` (fan-out deltas per second, default 10) or `--patients N` to change sizes.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Set in the child process that serves the dashboard routes for `fanout`.
const ROLE_ENV: &str = "FLARE_BENCH_ROLE";
const FANOUT_SERVER: &str = "fanout-server";
/// Deltas published per fan-out round.
const DELTAS: usize = 30;

fn main() -> anyhow::Result<()> {
    if std::env::var(ROLE_ENV).as_deref() == Ok(FANOUT_SERVER) {
        return fanout_server();
    }
    let mut sections = Vec::new();
    let mut clients = vec![1_000, 5_000, 10_000];
    let mut patients = 200;
    let mut deltas_per_second = 10.0_f64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => {}
            "--clients" => {
                let list = args
                    .next()
                    .context("--clients needs a list, e.g. 1000,5000")?;
                clients = list
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--clients {list}: not a list of numbers"))?;
            }
            "--rate" => {
                let rate = args.next().context("--rate needs deltas per second")?;
                deltas_per_second = rate
                    .parse()
                    .ok()
                    .filter(|r: &f64| *r > 0.0 && *r <= 1000.0)
                    .with_context(|| format!("--rate {rate}: deltas per second, 0 to 1000"))?;
            }
            "--patients" => {
                let count = args.next().context("--patients needs a number")?;
                patients = count
                    .parse()
                    .with_context(|| format!("--patients {count}: not a number"))?;
            }
            "generate" | "fanout" | "demo" => sections.push(arg),
            other => {
                bail!(
                    "unknown argument {other}: use generate, fanout, demo, --clients, --rate, --patients"
                )
            }
        }
    }
    if sections.is_empty() {
        sections = vec!["generate".into(), "fanout".into(), "demo".into()];
    }
    println!("machine: {}", machine());
    let runtime = tokio::runtime::Runtime::new()?;
    for section in sections {
        match section.as_str() {
            "generate" => runtime.block_on(generate_bench(patients))?,
            "fanout" => runtime.block_on(fanout_bench(
                &clients,
                Duration::from_secs_f64(1.0 / deltas_per_second),
            ))?,
            "demo" => runtime.block_on(demo_bench())?,
            _ => unreachable!("sections are checked above"),
        }
    }
    Ok(())
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cores} cores, load average {}", load.join(" "))
}

fn flare() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flare"));
    command.env("FLARE_LOG_LEVEL", "warn");
    command
}

/// A `flare serve` child on a free port, killed on drop.
struct Server {
    child: Child,
    root: String,
}

impl Server {
    fn start(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let mut child = flare()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let root = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                line.split("listening on ")
                    .nth(1)
                    .map(|u| u.trim().to_owned())
            })
            .context("flare serve did not say where it listens")?;
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, root })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ generate

async fn generate_bench(patients: u64) -> anyhow::Result<()> {
    let resources = flare_generator::Generator::new(flare_generator::GeneratorConfig {
        patients: Some(patients),
        ..Default::default()
    })?
    .count();
    println!();
    println!(
        "## flare generate: {patients} patients (seed 42), {resources} resources, release build"
    );
    println!();
    println!("| sink | seconds | resources/s |");
    println!("|---|---:|---:|");
    let scratch = tempfile::tempdir()?;
    let base_args = ["generate", "--patients", &patients.to_string()].map(str::to_owned);

    let mut runs: Vec<(String, Vec<String>)> = vec![
        (
            "stdout (NDJSON, to /dev/null)".into(),
            vec!["--stdout".into()],
        ),
        (
            "NDJSON files".into(),
            vec![
                "--out".into(),
                scratch.path().join("ndjson").display().to_string(),
            ],
        ),
    ];
    let served = Server::start(
        &scratch.path().join("served"),
        &["--processors", "none", "--no-subscriptions"],
    )?;
    runs.push((
        "HTTP: flare serve, transaction Bundles of 100 (API only)".into(),
        vec!["--url".into(), format!("{}/fhir", served.root)],
    ));
    let broker = flare_kafka::test_broker::TestBroker::start();
    if let Some(broker) = &broker {
        for format in ["json", "xml"] {
            runs.push((
                format!("Kafka (nisshi, memory engine), {format}"),
                vec![
                    "--kafka".into(),
                    broker.address(),
                    "--topic".into(),
                    format!("bench-{format}"),
                    "--format".into(),
                    format.into(),
                ],
            ));
        }
    }
    for (name, args) in runs {
        let started = Instant::now();
        let status = flare()
            .args(&base_args)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.success() {
            println!("| {name} | failed ({status}) | |");
            continue;
        }
        println!(
            "| {name} | {seconds:.2} | {:.0} |",
            resources as f64 / seconds
        );
    }
    if broker.is_none() {
        println!("| Kafka | skipped: no nisshi broker installed | |");
    }
    Ok(())
}

// ------------------------------------------------------------------ fan-out

/// The child process: the dashboard routes over an empty feed, driven through stdin
/// (`rss`, `publish N`), answering on stdout.
fn fanout_server() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let log = flare_log::EmbeddedLog::open(flare_log::EmbeddedLogConfig::in_dir(dir.path()))
            .await?;
        let feed = flare_processors::dashboard::DashboardFeed::new();
        let routes = flare_server::dashboard_routes(flare_server::DashboardState {
            feed: feed.clone(),
            immunizations: None,
            processors: Vec::new(),
            log: Arc::new(log),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, routes).await });
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            tokio::io::stdin(),
        ));
        while let Some(line) = lines.next_line().await? {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["rss"] => println!("rss {}", rss_kib(std::process::id())),
                ["publish", count, every_us] => {
                    let count: usize = count.parse()?;
                    let every = Duration::from_micros(every_us.parse()?);
                    let mut ticker = tokio::time::interval(every);
                    for _ in 0..count {
                        ticker.tick().await;
                        // The alert id carries the publish time, so clients measure latency
                        // from the frame alone.
                        let message = json!({
                            "episodeId": format!("bench-{}", unix_nanos()),
                            "patient": "Patient/bench",
                            "score": 2,
                            "basis": [{"criterion": "respiratory-rate"}, {"criterion": "systolic-bp"}],
                            "active": true,
                        });
                        feed.apply_alert_message(
                            &message,
                            flare_clinical::Timestamp::from_millis(
                                (unix_nanos() / 1_000_000) as i64,
                            ),
                        );
                    }
                    println!("published");
                }
                _ => println!("unknown command {line}"),
            }
            std::io::stdout().flush()?;
        }
        anyhow::Ok(())
    })
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Resident memory of a process, KiB (Linux).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_file_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .map(|line| {
            line.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}

struct FanoutServer {
    child: Child,
    input: std::process::ChildStdin,
    output: std::io::Lines<BufReader<std::process::ChildStdout>>,
    address: String,
}

impl FanoutServer {
    fn start() -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(ROLE_ENV, FANOUT_SERVER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let input = child.stdin.take().context("no stdin")?;
        let mut output = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let first = output.next().context("the fan-out server said nothing")??;
        let address = first
            .strip_prefix("listening ")
            .context("the fan-out server did not say where it listens")?
            .to_owned();
        Ok(Self {
            child,
            input,
            output,
            address,
        })
    }

    fn ask(&mut self, command: &str) -> anyhow::Result<String> {
        writeln!(self.input, "{command}")?;
        self.input.flush()?;
        Ok(self.output.next().context("the fan-out server stopped")??)
    }
}

impl Drop for FanoutServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one client saw: publish -> receive latencies (µs) of the bench deltas, and when it
/// received the last one.
struct ClientReport {
    latencies_us: Vec<u64>,
    last_receive: Option<Instant>,
}

async fn fanout_bench(clients: &[usize], every: Duration) -> anyhow::Result<()> {
    println!();
    println!(
        "## Dashboard WebSocket fan-out: {DELTAS} alert deltas at {} ms intervals to every client, loopback; open files {}",
        every.as_millis(),
        open_file_limit()
    );
    println!();
    println!(
        "| clients | connect s | deliveries | lost | deliveries/s | p50 ms | p95 ms | p99 ms | max ms | server RSS/connection KiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &count in clients {
        match fanout_round(count, every).await {
            Ok(row) => println!("{row}"),
            Err(error) => println!("| {count} | failed: {error:#} | | | | | | | | |"),
        }
    }
    Ok(())
}

async fn fanout_round(count: usize, every: Duration) -> anyhow::Result<String> {
    let mut server = tokio::task::block_in_place(FanoutServer::start)?;
    let url = format!("ws://{}/api/live", server.address);
    let rss_before: u64 = tokio::task::block_in_place(|| server.ask("rss"))?
        .trim_start_matches("rss ")
        .parse()?;

    let connecting = Instant::now();
    let limit = Arc::new(Semaphore::new(256));
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel::<()>(count);
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let url = url.clone();
        let limit = limit.clone();
        let connected = connected_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut socket = {
                let _permit = limit.acquire().await.ok();
                let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
                // The snapshot comes first: once it is in, the client is subscribed.
                socket
                    .next()
                    .await
                    .context("closed before the snapshot")??;
                socket
            };
            let _ = connected.send(()).await;
            let mut report = ClientReport {
                latencies_us: Vec::with_capacity(DELTAS),
                last_receive: None,
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while report.latencies_us.len() < DELTAS {
                let frame = match tokio::time::timeout_at(deadline, socket.next()).await {
                    Ok(Some(Ok(frame))) => frame,
                    _ => break,
                };
                let received = unix_nanos();
                let Ok(text) = frame.to_text() else { continue };
                if let Some(published) = text
                    .split("\"id\":\"bench-")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .and_then(|nanos| nanos.parse::<u128>().ok())
                {
                    report
                        .latencies_us
                        .push((received.saturating_sub(published) / 1000) as u64);
                    report.last_receive = Some(Instant::now());
                }
            }
            let _ = socket.close(None).await;
            anyhow::Ok(report)
        }));
    }
    drop(connected_tx);
    let mut connected = 0;
    while connected < count {
        match tokio::time::timeout(Duration::from_secs(120), connected_rx.recv()).await {
            Ok(Some(())) => connected += 1,
            _ => break,
        }
    }
    let connect_seconds = connecting.elapsed().as_secs_f64();
    if connected < count {
        bail!("only {connected} of {count} clients connected");
    }
    let rss_after: u64 = tokio::task::block_in_place(|| server.ask("rss"))?
        .trim_start_matches("rss ")
        .parse()?;

    let publishing = Instant::now();
    tokio::task::block_in_place(|| server.ask(&format!("publish {DELTAS} {}", every.as_micros())))?;
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut deliveries = 0u64;
    let mut last = publishing;
    for task in tasks {
        if let Ok(Ok(report)) = task.await {
            deliveries += report.latencies_us.len() as u64;
            for latency in report.latencies_us {
                histogram.record(latency.max(1))?;
            }
            if let Some(at) = report.last_receive {
                last = last.max(at);
            }
        }
    }
    let expected = (count * DELTAS) as u64;
    let span = last.duration_since(publishing).as_secs_f64().max(1e-3);
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(format!(
        "| {count} | {connect_seconds:.1} | {deliveries} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        expected - deliveries.min(expected),
        deliveries as f64 / span,
        ms(0.5),
        ms(0.95),
        ms(0.99),
        histogram.max() as f64 / 1000.0,
        rss_after.saturating_sub(rss_before) as f64 / count as f64,
    ))
}

// ------------------------------------------------------------------ demo

async fn demo_bench() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mut child = flare()
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (url_tx, url_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let url = lines.by_ref().map_while(Result::ok).find_map(|line| {
            line.strip_prefix("Open the dashboard: ")
                .map(|url| url.trim().trim_end_matches('/').to_owned())
        });
        let _ = url_tx.send(url);
        for _ in lines {}
    });
    let root = url_rx
        .await?
        .context("the demo did not print the dashboard URL")?;
    let listening = started.elapsed();
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let request = http.get(format!("{root}{path}")).send();
        async move {
            match request.await {
                Ok(response) => response.json::<Value>().await.unwrap_or_default(),
                Err(_) => Value::Null,
            }
        }
    };
    let mut first_immunization = None;
    let mut first_alert = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while (first_immunization.is_none() || first_alert.is_none()) && Instant::now() < deadline {
        if first_immunization.is_none()
            && get("/api/stats/immunizations").await["totals"]
                .as_array()
                .is_some_and(|totals| !totals.is_empty())
        {
            first_immunization = Some(started.elapsed());
        }
        if first_alert.is_none()
            && get("/api/sepsis/alerts?status=all").await["alerts"]
                .as_array()
                .is_some_and(|alerts| !alerts.is_empty())
        {
            first_alert = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let seconds = |d: Option<Duration>| {
        d.map_or("not within 600 s".to_owned(), |d| {
            format!("{:.1}", d.as_secs_f64())
        })
    };
    println!();
    println!("## flare demo (defaults: 600x, 500/s, sepsis share 0.15), seconds from start");
    println!();
    println!("| dashboard URL printed | first immunization count | first sepsis alert |");
    println!("|---:|---:|---:|");
    println!(
        "| {:.1} | {} | {} |",
        listening.as_secs_f64(),
        seconds(first_immunization),
        seconds(first_alert)
    );
    Ok(())
}
