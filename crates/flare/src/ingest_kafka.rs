//! `flare ingest kafka`: load FHIR messages from an external Kafka topic through the commit
//! path. A message that cannot be parsed, mapped or stored goes to `<topic>.dlq` on the same
//! broker and the consumer moves on; offsets are committed only once a message is stored or
//! dead-lettered, so nothing is lost when the ingest stops.

use flare_legacy::DeclaredVersion;

use crate::config::CommonArgs;

fn parse_version(text: &str) -> Result<DeclaredVersion, String> {
    text.parse()
}

fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    std::time::Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("`{text}` is not a number of seconds from 0 up"))
}

#[derive(Debug, clap::Args)]
pub struct KafkaIngestArgs {
    /// Kafka brokers, comma-separated. Other client settings (SASL/TLS, `max_record_bytes`,
    /// raw librdkafka properties) come from the `[kafka]` section of `--config`.
    #[arg(long, required = true, value_delimiter = ',', value_name = "HOST:PORT")]
    pub brokers: Vec<String>,
    /// The topic to consume; dead letters go to `<TOPIC>.dlq`.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// Encoding of the messages: `auto` takes a body starting with `<` for XML, any other for
    /// JSON.
    #[arg(long, value_enum, default_value = "auto")]
    pub format: MessageFormat,
    /// FHIR version of the messages: `auto` detects it per message (DSTU2 and STU3 are mapped
    /// to R4), or `dstu2`, `stu3`, `r4`.
    #[arg(long, default_value = "auto", value_name = "VERSION", value_parser = parse_version)]
    pub from: DeclaredVersion,
    /// Consumer group: its committed offsets say where a restarted ingest resumes. A new group
    /// starts at the oldest message.
    #[arg(long, default_value = "flare-ingest", value_name = "GROUP")]
    pub group: String,
    /// Send to a running server's FHIR base instead of writing the data directory, e.g.
    /// `http://127.0.0.1:8080/fhir`.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Stop once no message arrived for this long (otherwise run until Ctrl-C).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub until_idle: Option<std::time::Duration>,
    /// Attempts after the first for a write that failed for a reason that may pass (server
    /// unreachable, HTTP 5xx or 429), with doubling pauses from 200 ms.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub retries: u32,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    Json,
    Xml,
    Auto,
}

#[cfg(not(feature = "kafka"))]
pub async fn run(_args: KafkaIngestArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("this flare was built without the `kafka` feature")
}

#[cfg(feature = "kafka")]
pub use with_kafka::run;

#[cfg(feature = "kafka")]
mod with_kafka {
    use std::{
        collections::BTreeMap,
        process::ExitCode,
        sync::atomic::{AtomicU64, Ordering},
        time::Duration,
    };

    use anyhow::Context;
    use flare_kafka::{KafkaConfig, KafkaLog};
    use flare_log::{EventLog, Header, NewRecord, Record, StartFrom, validate_topic_name};
    use flare_processors::dlq::header;
    use indicatif::{ProgressBar, ProgressStyle};
    use time::{OffsetDateTime, format_description::well_known::Rfc3339};
    use tokio::time::Instant;

    use super::{KafkaIngestArgs, MessageFormat};
    use crate::ingest::{self, BodyFormat, Tally, Target};

    /// Messages taken per poll; offsets are committed after each batch.
    const BATCH: usize = 64;
    /// Longest single wait for messages, so that `--until-idle` and progress stay responsive.
    const POLL_WAIT: Duration = Duration::from_millis(500);
    /// Names the ingest as the producer of its dead letters (header `flare-processor`).
    const DEAD_LETTER_SOURCE: &str = "flare-ingest-kafka";
    /// Longest `error` header: reasons of huge Bundles are cut, the message itself is kept.
    const MAX_REASON_BYTES: usize = 4096;

    /// What became of one message.
    enum Outcome {
        Loaded,
        Failed {
            reason: String,
            retries: u32,
        },
        /// The server stayed unreachable through the retries: not the message's fault, so it
        /// is neither dead-lettered nor committed, and the ingest stops.
        TargetUnreachable {
            reason: String,
        },
    }

    #[derive(Default)]
    struct MessageCounts {
        consumed: AtomicU64,
        loaded: AtomicU64,
        dead_lettered: AtomicU64,
    }

    pub async fn run(args: KafkaIngestArgs) -> anyhow::Result<ExitCode> {
        let dead_letter_topic = format!("{}.dlq", args.topic);
        validate_topic_name(&args.topic)?;
        validate_topic_name(&dead_letter_topic)?;
        // Security, record size and raw librdkafka properties come from the config file's
        // `[kafka]` section, if any; the brokers from the command line.
        let kafka_config = KafkaConfig {
            brokers: args.brokers.clone(),
            ..args.common.load()?.kafka
        };
        let log = KafkaLog::connect(kafka_config)
            .await
            .with_context(|| format!("cannot connect to {}", args.brokers.join(",")))?;
        let (target, app) = ingest::open_target(args.url.as_deref(), &args.common).await?;
        let mut consumer = log
            .consumer(
                &args.group,
                std::slice::from_ref(&args.topic),
                StartFrom::Earliest,
            )
            .await
            .with_context(|| format!("cannot join group {} on {}", args.group, args.topic))?;

        let progress = ProgressBar::new_spinner();
        progress.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let tally = Tally::default();
        let counts = MessageCounts::default();
        let idle_limit = args.until_idle;
        let started = Instant::now();
        let mut last_message = Instant::now();
        let shutdown = tokio::signal::ctrl_c();
        tokio::pin!(shutdown);
        let result: anyhow::Result<()> = async {
            loop {
                let wait = match idle_limit {
                    Some(limit) => {
                        let idle = last_message.elapsed();
                        if idle >= limit {
                            break;
                        }
                        (limit - idle).min(POLL_WAIT)
                    }
                    None => POLL_WAIT,
                };
                let records = tokio::select! {
                    _ = &mut shutdown => break,
                    polled = consumer.poll(BATCH, wait) => polled.context("cannot read the topic")?,
                };
                if records.is_empty() {
                    continue;
                }
                let mut last_of_partition: BTreeMap<u32, &Record> = BTreeMap::new();
                let batch: anyhow::Result<()> = async {
                    for record in &records {
                        counts.consumed.fetch_add(1, Ordering::Relaxed);
                        match load_message(&args, &target, &tally, record, &progress).await {
                            Outcome::Loaded => {
                                counts.loaded.fetch_add(1, Ordering::Relaxed);
                            }
                            Outcome::Failed { reason, retries } => {
                                progress.suspend(|| {
                                    eprintln!("failed {}: {reason}", source_of(record));
                                });
                                // Not committed unless the dead letter is durable: the
                                // message comes again on the next run.
                                log.append(
                                    &dead_letter_topic,
                                    vec![dead_letter(record, &reason, retries)],
                                )
                                .await
                                .with_context(|| {
                                    format!("cannot write the dead letter to {dead_letter_topic}")
                                })?;
                                counts.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            }
                            Outcome::TargetUnreachable { reason } => {
                                anyhow::bail!(
                                    "stopped at {}, not committed: {reason}",
                                    source_of(record)
                                );
                            }
                        }
                        last_of_partition.insert(record.partition, record);
                    }
                    Ok(())
                }
                .await;
                // What was stored before a failure is committed, so that a restart does not
                // write it again.
                for record in last_of_partition.values() {
                    consumer
                        .commit(record)
                        .await
                        .context("cannot commit the consumer offset")?;
                }
                batch?;
                last_message = Instant::now();
                progress.set_message(progress_line(&counts, &tally));
                progress.tick();
            }
            Ok(())
        }
        .await;
        progress.finish_and_clear();
        drop(consumer);
        if let Some(app) = app {
            app.shutdown().await;
        }
        print_summary(&counts, &tally, started.elapsed(), &dead_letter_topic);
        result?;
        Ok(if counts.dead_lettered.load(Ordering::Relaxed) == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        })
    }

    /// Parses, maps and writes one message. Legacy resources without an R4 mapping inside a
    /// message that otherwise loads are reported and counted, not dead-lettered: sending the
    /// message again could not load them either.
    async fn load_message(
        args: &KafkaIngestArgs,
        target: &Target,
        tally: &Tally,
        record: &Record,
        progress: &ProgressBar,
    ) -> Outcome {
        let source = source_of(record);
        let format = body_format(args.format, &record.payload);
        let message =
            match ingest::items_from_bytes(&record.payload, source.clone(), format, args.from) {
                Ok(message) => message,
                Err(reason) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    return Outcome::Failed { reason, retries: 0 };
                }
            };
        {
            let mut all_dropped = tally.dropped.lock();
            for (path, count) in message.dropped {
                *all_dropped.entry(path).or_default() += count;
            }
        }
        let nothing_loadable = message.items.is_empty();
        let unmapped = ingest::report_unmapped(&message.unmapped, nothing_loadable, tally);
        if nothing_loadable {
            let reason = if unmapped.is_empty() {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                "no FHIR resource in the message".to_owned()
            } else {
                unmapped.join("; ")
            };
            return Outcome::Failed { reason, retries: 0 };
        }
        for line in unmapped {
            progress.suspend(|| eprintln!("failed {source}: {line}"));
        }
        for item in &message.items {
            let mut retries = 0;
            loop {
                match ingest::write_item(target, item, tally).await {
                    Ok(entry_failures) => {
                        for line in entry_failures {
                            progress.suspend(|| eprintln!("failed {source}: {line}"));
                        }
                        break;
                    }
                    Err(reason) if retries < args.retries && may_pass(&reason) => {
                        tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(retries.min(8)))
                            .await;
                        retries += 1;
                    }
                    Err(reason) if reason.starts_with("cannot reach ") => {
                        return Outcome::TargetUnreachable { reason };
                    }
                    Err(reason) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        return Outcome::Failed { reason, retries };
                    }
                }
            }
        }
        Outcome::Loaded
    }

    /// `topic/partition@offset`: names a message in failures and dead letters.
    fn source_of(record: &Record) -> String {
        format!("{}/{}@{}", record.topic, record.partition, record.offset)
    }

    fn body_format(format: MessageFormat, payload: &[u8]) -> BodyFormat {
        match format {
            MessageFormat::Json => BodyFormat::Json,
            MessageFormat::Xml => BodyFormat::Xml,
            MessageFormat::Auto => {
                let first = payload.iter().find(|b| !b.is_ascii_whitespace());
                // A UTF-8 byte order mark before `<` is still XML.
                let after_bom = payload
                    .strip_prefix(b"\xEF\xBB\xBF")
                    .and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace()));
                if first == Some(&b'<') || after_bom == Some(&b'<') {
                    BodyFormat::Xml
                } else {
                    BodyFormat::Json
                }
            }
        }
    }

    /// Failures worth another attempt: the server was unreachable, overloaded or failed
    /// internally. Anything else (a 4xx refusal) fails the same way again.
    fn may_pass(reason: &str) -> bool {
        reason.starts_with("cannot reach ")
            || reason.starts_with("HTTP 5")
            || reason.starts_with("HTTP 429")
    }

    /// The dead letter of `record`: its key, payload and headers, with the reason, the time,
    /// the retries spent and where it came from. Header names are those of the processors'
    /// dead letters, so the same tools read both.
    fn dead_letter(record: &Record, reason: &str, retries: u32) -> NewRecord {
        const OWN: [&str; 7] = [
            header::RETRY_COUNT,
            header::ERROR,
            header::FAILED_AT,
            header::PROCESSOR,
            header::ORIGINAL_TOPIC,
            header::ORIGINAL_PARTITION,
            header::ORIGINAL_OFFSET,
        ];
        // A message replayed from a dead-letter topic keeps counting its earlier retries.
        let earlier_retries: u32 = record
            .header_str(header::RETRY_COUNT)
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        let failed_at = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let mut headers: Vec<Header> = record
            .headers
            .iter()
            .filter(|h| !OWN.contains(&h.key.as_str()))
            .cloned()
            .collect();
        headers.extend([
            Header::new(header::ERROR, cut(reason, MAX_REASON_BYTES)),
            Header::new(header::FAILED_AT, failed_at),
            Header::new(
                header::RETRY_COUNT,
                earlier_retries.saturating_add(retries).to_string(),
            ),
            Header::new(header::PROCESSOR, DEAD_LETTER_SOURCE),
            Header::new(header::ORIGINAL_TOPIC, record.topic.as_str()),
            Header::new(header::ORIGINAL_PARTITION, record.partition.to_string()),
            Header::new(header::ORIGINAL_OFFSET, record.offset.to_string()),
        ]);
        NewRecord {
            key: record.key.clone(),
            headers,
            payload: record.payload.clone(),
            timestamp_ms: Some(record.timestamp_ms),
        }
    }

    fn cut(text: &str, max_bytes: usize) -> &str {
        let mut end = text.len().min(max_bytes);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    }

    fn progress_line(counts: &MessageCounts, tally: &Tally) -> String {
        format!(
            "{} messages: {} loaded, {} dead-lettered; resources: {} created, {} updated, {} failed",
            counts.consumed.load(Ordering::Relaxed),
            counts.loaded.load(Ordering::Relaxed),
            counts.dead_lettered.load(Ordering::Relaxed),
            tally.created.load(Ordering::Relaxed),
            tally.updated.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
        )
    }

    fn print_summary(
        counts: &MessageCounts,
        tally: &Tally,
        elapsed: Duration,
        dead_letter_topic: &str,
    ) {
        println!(
            "ingested in {:.1}s: {} messages, {} loaded, {} dead-lettered to {dead_letter_topic}",
            elapsed.as_secs_f64(),
            counts.consumed.load(Ordering::Relaxed),
            counts.loaded.load(Ordering::Relaxed),
            counts.dead_lettered.load(Ordering::Relaxed),
        );
        println!(
            "resources: {} created, {} updated, {} unchanged, {} failed",
            tally.created.load(Ordering::Relaxed),
            tally.updated.load(Ordering::Relaxed),
            tally.unchanged.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
        );
        let unmapped = tally.unmapped.lock();
        if !unmapped.is_empty() {
            let by_type: Vec<String> = unmapped
                .iter()
                .map(|(resource_type, count)| format!("{resource_type} {count}"))
                .collect();
            println!("not loaded, no R4 mapping: {}", by_type.join(", "));
        }
    }
}
