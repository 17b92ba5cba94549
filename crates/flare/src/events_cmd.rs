//! `flare events`: read the log like a console consumer.

use std::{io::Write, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use flare_log::{EmbeddedLog, EventLog, LogError, StartFrom};

use crate::config::{CommonArgs, log_config};

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Follow a topic: print each record as one JSON line (Ctrl-C stops). Reads the embedded
    /// log of the data directory, or Kafka with `--log kafka://host:port`.
    ///
    /// Without `--group` nothing is committed; with it, the group's committed offsets are
    /// used and advanced, so a second run continues where the first stopped.
    ///
    /// Examples:
    ///   flare events tail fhir.Patient --from-beginning
    ///   flare events tail fhir.observation.vitals --group audit
    Tail {
        /// The topic, e.g. `fhir.Patient` (see `flare events topics`).
        topic: String,
        /// Start at the oldest retained record instead of the end (for a new group).
        #[arg(long)]
        from_beginning: bool,
        /// A consumer group whose committed offsets to use and advance.
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Stop after this many records.
        #[arg(long, value_name = "N")]
        max: Option<u64>,
        /// Stop when no record arrives for this many milliseconds.
        #[arg(long, value_name = "MS")]
        idle_exit_ms: Option<u64>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// List topics with their partitions and offsets.
    Topics {
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// The log the config names, for reading: a read-only view of the embedded log (works while
/// `flare serve` writes it), or a client of the Kafka brokers. Also says where it is.
async fn open_reader(common: &CommonArgs) -> anyhow::Result<(Arc<dyn EventLog>, String)> {
    let config = common.load()?;
    #[cfg(feature = "kafka")]
    if let Some(kafka) = crate::config::kafka_config(&config)? {
        let brokers = kafka.brokers.join(",");
        let log = flare_kafka::KafkaLog::connect(kafka)
            .await
            .with_context(|| format!("cannot reach the Kafka brokers {brokers}"))?;
        return Ok((Arc::new(log), format!("the Kafka brokers {brokers}")));
    }
    let dir = log_config(&config)?.data_dir;
    let log = EmbeddedLog::open_reader(dir.clone())
        .await
        .with_context(|| {
            format!(
                "cannot read the event log in {} (wrong --data-dir?)",
                dir.display()
            )
        })?;
    Ok((Arc::new(log), dir.display().to_string()))
}

/// Whether `topic` exists, without creating it (a Kafka consumer would).
async fn topic_exists(log: &dyn EventLog, topic: &str) -> anyhow::Result<bool> {
    Ok(log.topics().await?.iter().any(|t| t.name == topic))
}

pub async fn run(command: EventsCommand) -> anyhow::Result<ExitCode> {
    match command {
        EventsCommand::Topics { common } => {
            let (log, location) = open_reader(&common).await?;
            let topics = log.topics().await?;
            if topics.is_empty() {
                println!("no topics yet in {location}");
            }
            for topic in topics {
                let records: u64 = topic
                    .end_offsets
                    .iter()
                    .zip(&topic.start_offsets)
                    .map(|(e, s)| e - s)
                    .sum();
                println!(
                    "{:<40} partitions={:<3} records={records:<10} end_offsets={:?}",
                    topic.name, topic.partitions, topic.end_offsets
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Tail {
            topic,
            from_beginning,
            group,
            max,
            idle_exit_ms,
            common,
        } => {
            let (log, _) = open_reader(&common).await?;
            let start = if from_beginning {
                StartFrom::Earliest
            } else {
                StartFrom::Latest
            };
            let commit = group.is_some();
            let group = group.unwrap_or_else(|| format!("flare-tail-{}", std::process::id()));
            let idle = idle_exit_ms.map(Duration::from_millis);
            // Like a console consumer, wait for a topic that does not exist yet.
            let waiting_since = std::time::Instant::now();
            let mut consumer = loop {
                let opened = if topic_exists(log.as_ref(), &topic).await? {
                    log.consumer(&group, std::slice::from_ref(&topic), start)
                        .await
                } else {
                    Err(LogError::UnknownTopic(topic.clone()))
                };
                match opened {
                    Ok(consumer) => break consumer,
                    Err(LogError::UnknownTopic(_)) => {
                        if idle.is_some_and(|idle| waiting_since.elapsed() >= idle) {
                            eprintln!("topic `{topic}` does not exist (see `flare events topics`)");
                            return Ok(ExitCode::SUCCESS);
                        }
                        if waiting_since.elapsed() < Duration::from_millis(150) {
                            eprintln!("waiting for topic `{topic}` to appear…");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(err) => return Err(err.into()),
                }
            };
            let mut printed = 0u64;
            let stdout = std::io::stdout();
            loop {
                let wait = idle.unwrap_or(Duration::from_secs(3600));
                let records = tokio::select! {
                    records = consumer.poll(500, wait) => records?,
                    _ = tokio::signal::ctrl_c() => break,
                };
                if records.is_empty() && idle.is_some() {
                    break;
                }
                let mut out = stdout.lock();
                for record in &records {
                    let payload: serde_json::Value = serde_json::from_slice(&record.payload)
                        .unwrap_or_else(|_| {
                            serde_json::Value::String(
                                String::from_utf8_lossy(&record.payload).into_owned(),
                            )
                        });
                    let headers: serde_json::Map<String, serde_json::Value> = record
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.key.clone(),
                                serde_json::Value::String(
                                    String::from_utf8_lossy(&h.value).into_owned(),
                                ),
                            )
                        })
                        .collect();
                    let line = serde_json::json!({
                        "topic": record.topic,
                        "partition": record.partition,
                        "offset": record.offset,
                        "timestamp": record.timestamp_ms,
                        "key": record.key.as_deref().map(String::from_utf8_lossy),
                        "headers": headers,
                        "value": payload,
                    });
                    writeln!(out, "{line}")?;
                    if commit {
                        consumer.commit(record).await?;
                    }
                    printed += 1;
                    if max.is_some_and(|m| printed >= m) {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                out.flush()?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
