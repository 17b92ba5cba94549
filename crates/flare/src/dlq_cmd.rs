//! `flare dlq`: inspect, replay and purge dead letters (records processors gave up on).

use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use flare_log::{EmbeddedLog, EventLog, LogError};
use flare_processors::{DeadLetter, DeadLetterId, DeadLetters};

use crate::config::{CommonArgs, log_config};

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters (after the last purge), oldest first per partition.
    ///
    /// Examples:
    ///   flare dlq list
    ///   flare dlq list fhir.Observation.dlq --limit 20
    List {
        /// One dead-letter topic (`<topic>.dlq`); all of them when left out.
        topic: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Print one dead letter as JSON: headers, error, and the original record.
    ///
    /// Example: flare dlq show fhir.Observation.dlq/0/12
    Show {
        /// `<topic>.dlq/<partition>/<offset>`, as `flare dlq list` prints it.
        id: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Hand a dead letter back to the processor that parked it (via `<topic>.retry`).
    ///
    /// On the embedded log, appending needs the log's writer: stop `flare serve` /
    /// `flare process` on this data directory first; the processor takes the replay when it
    /// starts again. On Kafka (`--log kafka://...`) replay while they run.
    ///
    /// Example: flare dlq replay fhir.Observation.dlq/0/12
    Replay {
        /// Dead letters to replay, `<topic>.dlq/<partition>/<offset>`.
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Hide every dead letter listed so far (the log is append-only: retention deletes them).
    ///
    /// Examples:
    ///   flare dlq purge fhir.Observation.dlq
    ///   flare dlq purge --all
    Purge {
        /// The dead-letter topic to purge.
        #[arg(required_unless_present = "all")]
        topic: Option<String>,
        /// Purge every dead-letter topic.
        #[arg(long, conflicts_with = "topic")]
        all: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
}

async fn open(common: &CommonArgs, write: bool) -> anyhow::Result<Arc<dyn EventLog>> {
    let config = common.load()?;
    // On Kafka every client may append: a replay needs no stopped writer.
    #[cfg(feature = "kafka")]
    if let Some(kafka) = crate::config::kafka_config(&config)? {
        let brokers = kafka.brokers.join(",");
        let log = flare_kafka::KafkaLog::connect(kafka)
            .await
            .with_context(|| format!("cannot reach the Kafka brokers {brokers}"))?;
        return Ok(Arc::new(log));
    }
    let log_config = log_config(&config)?;
    let dir = log_config.data_dir.clone();
    if write {
        return match EmbeddedLog::open(log_config).await {
            Ok(log) => Ok(Arc::new(log)),
            Err(LogError::Locked { holder, .. }) => anyhow::bail!(
                "the event log in {} is in use by {holder}: a replay appends to the log, which \
                 only its writer can do. Stop that process, replay, and start it again (the \
                 processor then takes the replay)",
                dir.display()
            ),
            Err(e) => {
                Err(e).with_context(|| format!("cannot open the event log in {}", dir.display()))
            }
        };
    }
    let log = EmbeddedLog::open_reader(dir.clone())
        .await
        .with_context(|| {
            format!(
                "cannot read the event log in {} (wrong --data-dir?)",
                dir.display()
            )
        })?;
    Ok(Arc::new(log))
}

fn parse_id(id: &str) -> anyhow::Result<DeadLetterId> {
    Ok(id.parse()?)
}

fn to_json(letter: &DeadLetter) -> serde_json::Value {
    let record = &letter.record;
    let payload: serde_json::Value = serde_json::from_slice(&record.payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&record.payload).into_owned())
    });
    let headers: serde_json::Map<String, serde_json::Value> = record
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(&h.value).into_owned();
            (h.key.clone(), serde_json::Value::String(value))
        })
        .collect();
    serde_json::json!({
        "id": letter.id.to_string(),
        "processor": letter.processor,
        "original": {
            "topic": letter.original_topic,
            "partition": letter.original_partition,
            "offset": letter.original_offset,
        },
        "retryCount": letter.retry_count,
        "error": letter.error,
        "failedAt": letter.failed_at,
        "key": record.key.as_deref().map(String::from_utf8_lossy),
        "headers": headers,
        "value": payload,
    })
}

pub async fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List {
            topic,
            limit,
            common,
        } => {
            let dlq = DeadLetters::new(open(&common, false).await?);
            let letters = dlq.list(topic.as_deref(), limit).await?;
            if letters.is_empty() {
                println!("no dead letters");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<36} {:<16} {:<28} {:>7}  {:<25} ERROR",
                "ID", "PROCESSOR", "ORIGINAL", "RETRIES", "FAILED AT"
            );
            for letter in letters {
                let original = format!(
                    "{}/{}/{}",
                    letter.original_topic.as_deref().unwrap_or("?"),
                    letter
                        .original_partition
                        .map_or("?".into(), |p| p.to_string()),
                    letter.original_offset.map_or("?".into(), |o| o.to_string()),
                );
                let error: String = letter
                    .error
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect();
                println!(
                    "{:<36} {:<16} {:<28} {:>7}  {:<25} {error}",
                    letter.id.to_string(),
                    letter.processor.as_deref().unwrap_or("?"),
                    original,
                    letter.retry_count.map_or("?".into(), |c| c.to_string()),
                    letter.failed_at.as_deref().unwrap_or("?"),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, common } => {
            let id = parse_id(&id)?;
            let dlq = DeadLetters::new(open(&common, false).await?);
            match dlq.show(&id).await? {
                Some(letter) => {
                    println!("{}", serde_json::to_string_pretty(&to_json(&letter))?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("no dead letter {id} (see `flare dlq list`)");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        DlqCommand::Replay { ids, common } => {
            let ids = ids
                .iter()
                .map(|id| parse_id(id))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let log = open(&common, true).await?;
            let dlq = DeadLetters::new(log.clone());
            let mut missing = false;
            for id in ids {
                match dlq.replay(&id).await? {
                    Some(position) => println!(
                        "replayed {id} -> partition {} offset {} of its retry topic",
                        position.partition, position.offset
                    ),
                    None => {
                        eprintln!("no dead letter {id} (see `flare dlq list`)");
                        missing = true;
                    }
                }
            }
            Ok(if missing {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        DlqCommand::Purge { topic, all, common } => {
            let dlq = DeadLetters::new(open(&common, false).await?);
            let topic = if all { None } else { topic };
            let purged = dlq.purge(topic.as_deref()).await?;
            println!("purged {purged} dead letter(s)");
            Ok(ExitCode::SUCCESS)
        }
    }
}
