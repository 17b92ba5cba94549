//! Executing commands: one at a time through the commit path, consumed from the log in a
//! consumer group with commits after execution (at-least-once delivery, run-once effects).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use flare_events::header;
use flare_log::{EventLog, Record, StartFrom};
use flare_service::{Fhir, FhirError, RequestContext, WriteKind, format_instant};
use flare_store::{Commit, OutboxMessage};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    COMMAND_REJECTED, Command, CommandsConfig, CommandsError, Executed, ExecutedRequests, Verb,
};

/// How many commands one poll takes.
const POLL_BATCH: usize = 100;

/// What became of one command message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Written: `Type/id/_history/n` (the version now current; for a delete, the tombstone).
    Executed {
        location: Option<String>,
        kind: WriteKind,
    },
    /// Refused; a `CommandRejected` event says why.
    Rejected { reason: String },
    /// The request id was executed before: nothing done.
    Duplicate,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CommandStats {
    pub executed: AtomicU64,
    pub rejected: AtomicU64,
    pub duplicates: AtomicU64,
    /// Failed attempts to reach the log or the databases (retried).
    pub errors: AtomicU64,
}

impl CommandStats {
    /// The counters in the Prometheus text format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::from(
            "# HELP flare_commands_total Commands consumed from the command topic, by outcome.\n\
             # TYPE flare_commands_total counter\n",
        );
        for (outcome, counter) in [
            ("executed", &self.executed),
            ("rejected", &self.rejected),
            ("duplicate", &self.duplicates),
        ] {
            out.push_str(&format!(
                "flare_commands_total{{outcome=\"{outcome}\"}} {}\n",
                counter.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP flare_commands_errors_total Failed attempts to read or execute commands (retried).\n\
             # TYPE flare_commands_errors_total counter\n\
             flare_commands_errors_total {}\n",
            self.errors.load(Ordering::Relaxed)
        ));
        out
    }
}

/// Executes command messages; cheap to clone.
#[derive(Clone)]
pub struct CommandExecutor {
    fhir: Fhir,
    executed: ExecutedRequests,
    config: Arc<CommandsConfig>,
    stats: Arc<CommandStats>,
}

impl std::fmt::Debug for CommandExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandExecutor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CommandExecutor {
    pub fn new(fhir: Fhir, executed: ExecutedRequests, config: CommandsConfig) -> Self {
        Self {
            fhir,
            executed,
            config: Arc::new(config),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<CommandStats> {
        self.stats.clone()
    }

    pub fn config(&self) -> &CommandsConfig {
        &self.config
    }

    /// Executes one command message. `Err` only when the store or the executed-requests
    /// database failed: then nothing is known to be done, and the caller retries.
    pub async fn execute(&self, record: &Record) -> Result<CommandOutcome, CommandsError> {
        let traceparent = record.header_str(header::TRACEPARENT).map(str::to_owned);
        let command = match Command::parse(&record.payload) {
            Ok(command) => command,
            Err(malformed) => {
                let request_id = malformed.request_id.clone();
                if let Some(id) = &request_id
                    && self.executed.get(id).await?.is_some()
                {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    return Ok(CommandOutcome::Duplicate);
                }
                let error = FhirError::bad_request(malformed.reason.clone());
                return self
                    .reject(
                        request_id.as_deref(),
                        malformed.command_type.as_deref(),
                        &error,
                        traceparent,
                    )
                    .await;
            }
        };
        if self.executed.get(&command.request_id).await?.is_some() {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(CommandOutcome::Duplicate);
        }
        let mut attempt = 1;
        let result = loop {
            match self.write(&command, traceparent.clone()).await {
                // A failure on the server's side may pass (a busy or restarting store).
                Err(error) if error.status >= 500 && attempt < self.config.max_attempts => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        request_id = %command.request_id,
                        attempt,
                        "a command's write failed on the server side; retrying: {:?}",
                        error.issues
                    );
                    tokio::time::sleep(Duration::from_millis(100) * 2u32.pow(attempt.min(6))).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        match result {
            Ok((kind, location)) => {
                self.executed
                    .record(
                        &command.request_id,
                        Executed {
                            command_type: command.command_type.clone(),
                            outcome: location.clone().unwrap_or_else(|| kind_name(kind).into()),
                            executed_at_ms: now_ms(),
                        },
                    )
                    .await?;
                self.stats.executed.fetch_add(1, Ordering::Relaxed);
                Ok(CommandOutcome::Executed { location, kind })
            }
            Err(error) => {
                self.reject(
                    Some(&command.request_id),
                    Some(&command.command_type),
                    &error,
                    traceparent,
                )
                .await
            }
        }
    }

    /// The write a command asks for, through the commit path.
    async fn write(
        &self,
        command: &Command,
        traceparent: Option<String>,
    ) -> Result<(WriteKind, Option<String>), FhirError> {
        let mut ctx = RequestContext::new("urn:flare:commands");
        ctx.correlation_id = command.request_id.clone();
        ctx.traceparent = traceparent;
        let resource_type = command.resource_type.as_str();
        let mut data = command.data.clone();
        if let Some(object) = data.as_object_mut() {
            object
                .entry("resourceType")
                .or_insert_with(|| json!(resource_type));
        }
        let outcome = match command.verb {
            Verb::Create => {
                // An id derived from the request id: executing the same create again (after a
                // crash before the request was recorded) finds its own resource, unchanged.
                let id = derived_id("create", &command.request_id);
                data["id"] = json!(id);
                self.fhir
                    .update(&ctx, resource_type, &id, data, None)
                    .await?
            }
            Verb::Update => {
                let Some(id) = command.data_id().map(str::to_owned) else {
                    return Err(FhirError::bad_request(format!(
                        "{}: `data.id` is missing: name the {resource_type} to update",
                        command.command_type
                    )));
                };
                self.fhir
                    .update(&ctx, resource_type, &id, data, None)
                    .await?
            }
            Verb::Delete => {
                let Some(id) = command.data_id() else {
                    return Err(FhirError::bad_request(format!(
                        "{}: `data.id` is missing: name the {resource_type} to delete",
                        command.command_type
                    )));
                };
                self.fhir.delete(&ctx, resource_type, id, None).await?
            }
        };
        Ok((outcome.kind, outcome.location()))
    }

    /// Commits a `CommandRejected` event through the outbox and records the request id.
    async fn reject(
        &self,
        request_id: Option<&str>,
        command_type: Option<&str>,
        error: &FhirError,
        traceparent: Option<String>,
    ) -> Result<CommandOutcome, CommandsError> {
        let reason = error
            .issues
            .iter()
            .map(|issue| issue.message.clone())
            .collect::<Vec<_>>()
            .join("; ");
        // Without a request id the rejection cannot be tied to a resend: a fresh id each time.
        let correlation_id = request_id
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let event_id = match request_id {
            Some(id) => derived_id("rejected", id),
            None => uuid::Uuid::now_v7().to_string(),
        };
        let now = now_ms();
        let event = json!({
            "type": COMMAND_REJECTED,
            "data": error.outcome(),
            "metadata": {
                "eventId": event_id,
                "timestamp": format_instant(now),
                "source": self.fhir.config().source,
                "correlationId": correlation_id,
                "requestId": request_id,
                "commandType": command_type,
                "status": error.status,
            }
        });
        let mut headers = vec![
            (
                header::CONTENT_TYPE.to_owned(),
                b"application/json".to_vec(),
            ),
            (header::EVENT_ID.to_owned(), event_id.into_bytes()),
            (
                header::CORRELATION_ID.to_owned(),
                correlation_id.clone().into_bytes(),
            ),
            (header::EVENT_TYPE.to_owned(), COMMAND_REJECTED.into()),
        ];
        if let Some(traceparent) = traceparent {
            headers.push((header::TRACEPARENT.to_owned(), traceparent.into_bytes()));
        }
        self.fhir
            .store()
            .commit(Commit {
                writes: Vec::new(),
                outbox: vec![OutboxMessage {
                    topic: self.config.rejected_topic.clone(),
                    key: Some(correlation_id.into_bytes()),
                    headers,
                    payload: event.to_string().into_bytes(),
                    timestamp_ms: now,
                }],
            })
            .await?;
        if let Some(id) = request_id {
            self.executed
                .record(
                    id,
                    Executed {
                        command_type: command_type.unwrap_or_default().to_owned(),
                        outcome: format!("rejected: {reason}"),
                        executed_at_ms: now,
                    },
                )
                .await?;
        }
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::info!(request_id, "command rejected: {reason}");
        Ok(CommandOutcome::Rejected { reason })
    }
}

fn kind_name(kind: WriteKind) -> &'static str {
    match kind {
        WriteKind::Created => "created",
        WriteKind::Updated => "updated",
        WriteKind::Unchanged => "unchanged",
        WriteKind::Existing => "existing",
        WriteKind::Deleted => "deleted",
        WriteKind::NothingToDelete => "nothing to delete",
    }
}

/// A UUID-shaped id derived from a request id (a valid FHIR id, the same on every node).
fn derived_id(purpose: &str, request_id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"flare-command:")
        .chain_update(purpose.as_bytes())
        .chain_update(b":")
        .chain_update(request_id.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The consumer loop over the command topic.
pub struct CommandRunner {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    stats: Arc<CommandStats>,
}

impl std::fmt::Debug for CommandRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandRunner").finish_non_exhaustive()
    }
}

impl CommandRunner {
    /// Starts consuming the command topic in the configured group.
    pub fn spawn(executor: CommandExecutor, log: Arc<dyn EventLog>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let stats = executor.stats();
        let task = tokio::spawn(run(executor, log, stopped));
        Self { task, stop, stats }
    }

    pub fn stats(&self) -> Arc<CommandStats> {
        self.stats.clone()
    }

    /// Stops after the command in progress; its offset is committed if it finished.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    executor: CommandExecutor,
    log: Arc<dyn EventLog>,
    mut stopped: watch::Receiver<bool>,
) {
    let config = executor.config().clone();
    let stats = executor.stats();
    let mut backoff = Duration::from_millis(100);
    'connect: loop {
        let consumer = tokio::select! {
            consumer = log.consumer(&config.group, std::slice::from_ref(&config.topic), StartFrom::Earliest) => consumer,
            _ = stopped.changed() => return,
        };
        let mut consumer = match consumer {
            Ok(consumer) => consumer,
            Err(err) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %err, topic = %config.topic, "cannot consume the command topic; retrying");
                if pause(&mut stopped, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let records = tokio::select! {
                records = consumer.poll(POLL_BATCH, Duration::from_millis(500)) => records,
                _ = stopped.changed() => return,
            };
            let records = match records {
                Ok(records) => records,
                Err(err) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %err, "reading commands failed; reconnecting");
                    if pause(&mut stopped, &mut backoff).await {
                        return;
                    }
                    continue 'connect;
                }
            };
            // The last record executed per partition: committed once the batch is done.
            let mut done: BTreeMap<u32, &Record> = BTreeMap::new();
            for record in &records {
                loop {
                    match executor.execute(record).await {
                        Ok(_) => break,
                        Err(err) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %err, "executing a command failed; retrying");
                            if pause(&mut stopped, &mut backoff).await {
                                commit_done(consumer.as_mut(), &done).await;
                                return;
                            }
                        }
                    }
                }
                backoff = Duration::from_millis(100);
                done.insert(record.partition, record);
                if *stopped.borrow() {
                    break;
                }
            }
            commit_done(consumer.as_mut(), &done).await;
            if *stopped.borrow() {
                return;
            }
        }
    }
}

/// Commits the offsets after the executed records. A failed commit only means a redelivery,
/// which the executed-requests record turns into a no-op.
async fn commit_done(consumer: &mut dyn flare_log::Consumer, done: &BTreeMap<u32, &Record>) {
    for record in done.values() {
        if let Err(err) = consumer.commit(record).await {
            tracing::warn!(error = %err, "committing the command offset failed; the command may be redelivered (and skipped)");
        }
    }
}

/// Sleeps for the backoff (doubling it, up to 5 s); true when stopping was asked meanwhile.
async fn pause(stopped: &mut watch::Receiver<bool>, backoff: &mut Duration) -> bool {
    let delay = *backoff;
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
    tokio::select! {
        _ = tokio::time::sleep(delay) => *stopped.borrow(),
        _ = stopped.changed() => true,
    }
}
