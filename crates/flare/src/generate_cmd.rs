//! `flare generate`: a seeded synthetic population, written to a Flare server, a Kafka topic,
//! NDJSON files or stdout, as fast as possible or paced (`--rate`, `--speed`).

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
    time::{Duration as StdDuration, Instant},
};

use anyhow::{Context, bail};
use flare_generator::{Generated, Generator, GeneratorConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Patients to admit; without it the population grows until Ctrl-C.
    #[arg(long, value_name = "N")]
    pub patients: Option<u64>,
    /// Seed: the same seed and start give the same data, byte for byte.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Simulated time of the first admission: RFC 3339 or `now`.
    #[arg(long, default_value = "2026-01-01T00:00:00Z", value_name = "TIME")]
    pub start: String,
    /// Share of inpatients who follow a sepsis course (0 to 1).
    #[arg(long, default_value_t = 0.1, value_name = "SHARE")]
    pub sepsis_share: f64,
    /// Admissions per simulated hour.
    #[arg(long, default_value_t = 60.0, value_name = "N")]
    pub admissions_per_hour: f64,
    /// At most this many resources per second of wall-clock time, e.g. `200/s` or `200`.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Run simulated time this many times faster than the clock, e.g. `60x`; without it (and
    /// without --rate) resources are written as fast as the sink takes them.
    #[arg(long, value_name = "Nx", value_parser = parse_speed)]
    pub speed: Option<f64>,
    /// Write to this Flare server (its FHIR base URL) as transaction Bundles of PUTs.
    #[arg(long, value_name = "URL", conflicts_with_all = ["out", "stdout", "kafka"])]
    pub url: Option<String>,
    /// Entries per transaction Bundle when writing to a server; records per append when
    /// writing to Kafka.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub batch: usize,
    /// Publish to Kafka: these brokers (comma-separated), one message per resource keyed by
    /// its patient (`Patient/<id>`), so one patient's resources stay in order. SASL/TLS and
    /// other client settings come from the `[kafka]` section of `--config`.
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',', requires = "topic", conflicts_with_all = ["out", "stdout"])]
    pub kafka: Option<Vec<String>>,
    /// The Kafka topic to publish to (created with the `[kafka]` default partitions if missing).
    #[arg(long, value_name = "TOPIC", requires = "kafka")]
    pub topic: Option<String>,
    /// Encoding of Kafka messages: FHIR JSON, or FHIR XML as older generators wrote.
    #[arg(long, value_enum, default_value = "json", requires = "kafka")]
    pub format: KafkaFormat,
    /// A TOML config file; only its `[kafka]` section is read (see `flare config-example`).
    #[arg(long, short = 'c', value_name = "FILE", requires = "kafka")]
    pub config: Option<PathBuf>,
    /// Write NDJSON files, one per resource type, into this folder.
    #[arg(long, value_name = "DIR", conflicts_with = "stdout")]
    pub out: Option<PathBuf>,
    /// Write NDJSON to standard output.
    #[arg(long)]
    pub stdout: bool,
}

/// How a resource is encoded in a Kafka message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KafkaFormat {
    Json,
    Xml,
}

pub fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches("/s");
    match number.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate: write resources per second, e.g. 200/s"
        )),
    }
}

pub fn parse_speed(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches(['x', 'X']);
    match number.parse::<f64>() {
        Ok(speed) if speed > 0.0 && speed.is_finite() => Ok(speed),
        _ => Err(format!("`{text}` is not a speed: write a factor, e.g. 60x")),
    }
}

impl GenerateArgs {
    pub fn generator_config(&self) -> anyhow::Result<GeneratorConfig> {
        let start = if self.start == "now" {
            OffsetDateTime::now_utc()
        } else {
            OffsetDateTime::parse(&self.start, &Rfc3339).with_context(|| {
                format!(
                    "--start {} is not an RFC 3339 time (e.g. 2026-01-01T00:00:00Z) or `now`",
                    self.start
                )
            })?
        };
        let config = GeneratorConfig {
            seed: self.seed,
            patients: self.patients,
            start,
            sepsis_share: self.sepsis_share,
            admissions_per_hour: self.admissions_per_hour,
            ..GeneratorConfig::default()
        };
        config
            .validate()
            .context("cannot generate with these settings")?;
        Ok(config)
    }
}

pub async fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let config = args.generator_config()?;
    let mut sink = if let Some(url) = &args.url {
        Sink::server(url, args.batch)?
    } else if let Some(brokers) = &args.kafka {
        let topic = args
            .topic
            .as_deref()
            .context("--kafka needs --topic to say where to publish")?;
        kafka_sink(&args, brokers, topic).await?
    } else if let Some(dir) = &args.out {
        Sink::files(dir.clone())?
    } else if args.stdout {
        Sink::Stdout(BufWriter::new(std::io::stdout()))
    } else {
        bail!(
            "say where to write: --url http://127.0.0.1:8080/fhir, --kafka HOST:PORT --topic T, --out DIR or --stdout"
        );
    };
    let pace = Pace::new(config.start, args.rate, args.speed);
    let progress = if args.stdout {
        ProgressBar::hidden()
    } else {
        progress_bar(args.patients)
    };
    let outcome = generate(
        Generator::new(config)?,
        &mut sink,
        pace,
        &progress,
        shutdown(),
    )
    .await;
    progress.finish_and_clear();
    // `flare generate --stdout | head` ends when the reader does: not an error.
    let summary = match outcome {
        Err(error) if args.stdout && is_broken_pipe(&error) => return Ok(ExitCode::SUCCESS),
        outcome => outcome?,
    };
    match sink.finish().await {
        Err(error) if args.stdout && is_broken_pipe(&error) => return Ok(ExitCode::SUCCESS),
        finished => finished?,
    }
    if !args.stdout {
        eprintln!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether writing failed because the reading end of a pipe went away.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(BrokenPipe)
    })
}

/// What was written, for the closing summary.
#[derive(Debug, Default)]
pub struct Summary {
    pub patients: u64,
    pub septic_patients: u64,
    pub by_type: BTreeMap<String, u64>,
    pub elapsed: StdDuration,
    pub interrupted: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u64 = self.by_type.values().sum();
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "{} {} resources for {} patients ({} on a sepsis course) in {:.1} s ({:.0} resources/s)",
            if self.interrupted {
                "Stopped after writing"
            } else {
                "Wrote"
            },
            total,
            self.patients,
            self.septic_patients,
            seconds,
            total as f64 / seconds
        )?;
        for (resource_type, count) in &self.by_type {
            writeln!(f, "  {resource_type:<18} {count:>10}")?;
        }
        Ok(())
    }
}

#[cfg(feature = "kafka")]
async fn kafka_sink(args: &GenerateArgs, brokers: &[String], topic: &str) -> anyhow::Result<Sink> {
    let file_config = crate::config::CommonArgs {
        config: args.config.clone(),
        data_dir: None,
        store: None,
        log: None,
    }
    .load()?
    .kafka;
    let config = flare_kafka::KafkaConfig {
        brokers: brokers.to_vec(),
        ..file_config
    };
    Sink::kafka(config, topic, args.format, args.batch).await
}

#[cfg(not(feature = "kafka"))]
async fn kafka_sink(_: &GenerateArgs, _: &[String], _: &str) -> anyhow::Result<Sink> {
    bail!("this flare was built without the `kafka` feature")
}

/// Writes the population into `sink` until it ends or `stop` resolves.
pub async fn generate(
    mut generator: Generator,
    sink: &mut Sink,
    mut pace: Pace,
    progress: &ProgressBar,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut summary = Summary::default();
    tokio::pin!(stop);
    loop {
        let Some(item) = generator.next() else { break };
        let wait = pace.wait_before(item.at);
        if !wait.is_zero() {
            sink.flush().await?;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stop => { summary.interrupted = true; break; }
            }
        }
        *summary
            .by_type
            .entry(item.resource_type().to_string())
            .or_default() += 1;
        sink.write(item).await?;
        progress.set_position(generator.tally().patients);
        progress.set_message(format!("{} resources", generator.tally().resources));
        if futures::FutureExt::now_or_never(&mut stop).is_some() {
            summary.interrupted = true;
            break;
        }
    }
    sink.flush().await?;
    summary.patients = generator.tally().patients;
    summary.septic_patients = generator.tally().septic_patients;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Pacing against the wall clock: at most `rate` resources per second, and simulated time at
/// most `speed` times faster than real time.
#[derive(Debug)]
pub struct Pace {
    started: Instant,
    simulated_start: OffsetDateTime,
    rate: Option<f64>,
    speed: Option<f64>,
    written: u64,
}

impl Pace {
    pub fn new(simulated_start: OffsetDateTime, rate: Option<f64>, speed: Option<f64>) -> Self {
        Self {
            started: Instant::now(),
            simulated_start,
            rate,
            speed,
            written: 0,
        }
    }

    /// How long to wait before writing a resource due at simulated time `at`.
    fn wait_before(&mut self, at: OffsetDateTime) -> StdDuration {
        let mut due = StdDuration::ZERO;
        if let Some(rate) = self.rate {
            due = due.max(StdDuration::from_secs_f64(self.written as f64 / rate));
        }
        if let Some(speed) = self.speed {
            let simulated = (at - self.simulated_start).as_seconds_f64().max(0.0);
            due = due.max(StdDuration::from_secs_f64(simulated / speed));
        }
        self.written += 1;
        due.saturating_sub(self.started.elapsed())
    }
}

/// Where generated resources go.
pub enum Sink {
    Server {
        client: reqwest::Client,
        base: String,
        batch: usize,
        pending: Vec<Value>,
    },
    Files {
        dir: PathBuf,
        writers: BTreeMap<String, BufWriter<File>>,
    },
    Stdout(BufWriter<std::io::Stdout>),
    #[cfg(feature = "kafka")]
    Kafka {
        log: flare_kafka::KafkaLog,
        topic: String,
        format: KafkaFormat,
        batch: usize,
        pending: Vec<flare_log::NewRecord>,
    },
}

impl Sink {
    pub fn server(url: &str, batch: usize) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        reqwest::Url::parse(&base).with_context(|| {
            format!("--url {url} is not a URL (e.g. http://127.0.0.1:8080/fhir)")
        })?;
        Ok(Self::Server {
            client: reqwest::Client::new(),
            base,
            batch: batch.clamp(1, 1000),
            pending: Vec::new(),
        })
    }

    /// Publishes to `topic` (created if missing), `batch` records per append.
    #[cfg(feature = "kafka")]
    pub async fn kafka(
        config: flare_kafka::KafkaConfig,
        topic: &str,
        format: KafkaFormat,
        batch: usize,
    ) -> anyhow::Result<Self> {
        use flare_log::EventLog;
        flare_log::validate_topic_name(topic)?;
        let brokers = config.brokers.join(",");
        let partitions = config.partitions;
        let log = flare_kafka::KafkaLog::connect(config)
            .await
            .with_context(|| format!("cannot connect to the Kafka brokers {brokers}"))?;
        log.ensure_topic(topic, partitions)
            .await
            .with_context(|| format!("cannot create the topic {topic} on {brokers}"))?;
        Ok(Self::Kafka {
            log,
            topic: topic.to_owned(),
            format,
            batch: batch.clamp(1, 10_000),
            pending: Vec::new(),
        })
    }

    pub fn files(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the output folder {}", dir.display()))?;
        Ok(Self::Files {
            dir,
            writers: BTreeMap::new(),
        })
    }

    async fn write(&mut self, item: Generated) -> anyhow::Result<()> {
        match self {
            Self::Server { batch, pending, .. } => {
                pending.push(transaction_entry(&item));
                if pending.len() >= *batch {
                    self.flush().await?;
                }
            }
            Self::Files { dir, writers } => {
                let resource_type = item.resource_type().to_string();
                let writer = match writers.get_mut(&resource_type) {
                    Some(writer) => writer,
                    None => {
                        let path = dir.join(format!("{resource_type}.ndjson"));
                        let file = File::create(&path)
                            .with_context(|| format!("cannot create {}", path.display()))?;
                        writers.entry(resource_type).or_insert(BufWriter::new(file))
                    }
                };
                serde_json::to_writer(&mut *writer, &item.resource)?;
                writer.write_all(b"\n")?;
            }
            Self::Stdout(out) => {
                serde_json::to_writer(&mut *out, &item.resource)?;
                out.write_all(b"\n")?;
            }
            #[cfg(feature = "kafka")]
            Self::Kafka {
                format,
                batch,
                pending,
                ..
            } => {
                pending.push(kafka_record(&item, *format)?);
                if pending.len() >= *batch {
                    self.flush().await?;
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Server {
                client,
                base,
                pending,
                ..
            } => {
                if pending.is_empty() {
                    return Ok(());
                }
                let bundle = json!({
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": std::mem::take(pending),
                });
                post_bundle(client, base, &bundle).await
            }
            Self::Files { writers, .. } => {
                for writer in writers.values_mut() {
                    writer.flush()?;
                }
                Ok(())
            }
            Self::Stdout(out) => Ok(out.flush()?),
            #[cfg(feature = "kafka")]
            Self::Kafka {
                log,
                topic,
                pending,
                ..
            } => {
                use flare_log::EventLog;
                if pending.is_empty() {
                    return Ok(());
                }
                let count = pending.len();
                log.append(topic, std::mem::take(pending))
                    .await
                    .with_context(|| format!("cannot publish {count} messages to {topic}"))?;
                Ok(())
            }
        }
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        self.flush().await
    }
}

/// One Kafka message: the resource in the chosen encoding, keyed by its patient compartment
/// (the same key Flare's own change events use), with a content type header.
#[cfg(feature = "kafka")]
fn kafka_record(item: &Generated, format: KafkaFormat) -> anyhow::Result<flare_log::NewRecord> {
    let resource_type = item.resource_type();
    let id = item.resource["id"].as_str().unwrap_or_default();
    let key = flare_events::routing::partition_key(resource_type, id, Some(&item.resource));
    let (content_type, payload) = match format {
        KafkaFormat::Json => ("application/fhir+json", serde_json::to_vec(&item.resource)?),
        KafkaFormat::Xml => (
            "application/fhir+xml",
            flare_fhir::xml::from_json(&item.resource)
                .with_context(|| format!("cannot write {resource_type}/{id} as XML"))?
                .into_bytes(),
        ),
    };
    Ok(flare_log::NewRecord {
        key: Some(key.into_bytes()),
        headers: vec![flare_log::Header::new("content-type", content_type)],
        payload,
        timestamp_ms: None,
    })
}

/// Every resource (first versions and updates alike) is written with PUT at its generated id,
/// so references hold and a re-run with the same seed overwrites instead of duplicating.
fn transaction_entry(item: &Generated) -> Value {
    let resource_type = item.resource_type();
    let id = item.resource["id"].as_str().unwrap_or_default();
    json!({
        "fullUrl": format!("{resource_type}/{id}"),
        "resource": item.resource,
        "request": {"method": "PUT", "url": format!("{resource_type}/{id}")},
    })
}

async fn post_bundle(client: &reqwest::Client, base: &str, bundle: &Value) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 5;
    let mut delay = StdDuration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let response = client
            .post(base)
            .header("content-type", "application/fhir+json")
            .header("prefer", "return=minimal")
            .json(bundle)
            .send()
            .await;
        match response {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) if response.status().is_server_error() && attempt < ATTEMPTS => {}
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                bail!(
                    "the server refused a transaction Bundle ({status}): {}",
                    truncate(&body, 600)
                );
            }
            Err(error) if attempt < ATTEMPTS => {
                tracing::warn!("cannot reach {base} ({error}); retrying");
            }
            Err(error) => {
                bail!(
                    "cannot reach the Flare server at {base}: {error} (is `flare serve` running there?)"
                )
            }
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

fn progress_bar(patients: Option<u64>) -> ProgressBar {
    let bar = match patients {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} patients, {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template(
                "{spinner} {pos} patients, {msg} ({elapsed}; Ctrl-C stops)",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.enable_steady_tick(StdDuration::from_millis(200));
    bar
}

async fn shutdown() {
    let _ = tokio::signal::ctrl_c().await;
}
