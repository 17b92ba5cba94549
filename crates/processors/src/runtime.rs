//! The consumer loop every processor runs in.
//!
//! # Contract
//!
//! - A processor is a consumer group named [`Processor::name`] over [`Processor::topics`] (and
//!   their `<topic>.retry` topics, where replayed dead letters arrive). Records come in
//!   partition order and each is handed to [`Processor::process`] with the state of its key
//!   (by default the record key, i.e. the patient compartment).
//! - State changes and the offsets they reflect are checkpointed together, atomically, every
//!   [`CheckpointPolicy::every_records`] records or [`CheckpointPolicy::every_ms`], and on
//!   shutdown; the log's group offsets are committed after that. On start the runtime seeks
//!   every partition to the state store's offset (the truth) and skips records below it, so a
//!   restart after a crash replays exactly the records after the last checkpoint, from the
//!   state as it was then: nothing is lost and nothing counted twice *in the state*.
//! - **Effects must be idempotent by construction**, because records after the last checkpoint
//!   are processed again after a crash. Writes through the commit path use ids derived from the
//!   input (e.g. `RiskAssessment/qsofa-<patient>-<episode>`, PUT, so a replay rewrites the same
//!   resource); records published with [`Context::publish`] carry a caller-chosen, deterministic
//!   `eventId` header so consumers can drop duplicates. Effects run inside `process`, before
//!   the checkpoint that covers their record, so an effect is never lost.
//! - Published records are readable at once but made durable by one log sync just before the
//!   next checkpoint ([`EventLog::append_unsynced`]), not one sync each: until that checkpoint
//!   the input record is the durable copy, and a replay after a power loss publishes the same
//!   records (same `eventId`s) again. This keeps an alert's latency to its store writes.
//! - A failing attempt leaves the state untouched (the runtime restores a copy, see
//!   [`Processor::ROLLBACK`]). It is retried in place with exponential backoff ([`RetryPolicy`]); a non-retryable error, or the last
//!   attempt, parks the record in `<topic>.dlq` (see [`crate::dlq`]) and processing continues.
//!   In-place retries hold this processor's other partitions too, for at most the sum of the
//!   backoff delays (1.5 s with the defaults): keeping one loop keeps the checkpoint simple
//!   (every partition's offset is contiguous), and records that need longer go to the DLQ.
//!   Other processors are independent tasks and keep going.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use flare_log::{EventLog, Header, LogError, NewRecord, Record, StartFrom};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use crate::{
    config::{CheckpointPolicy, ProcessorsConfig, QsofaSettings, RetryPolicy},
    dlq,
    metrics::ProcessorMetrics,
    state::{Checkpoint, PartitionOffset, StateError, StateStore},
};

/// What a successful `process` did to the key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The state changed and must be checkpointed.
    Updated,
    /// Nothing changed (e.g. an irrelevant record).
    Unchanged,
    /// The key's state is no longer needed: remove it from the store.
    Remove,
}

/// A failed attempt. Retryable errors are retried with backoff; the others go to the
/// dead-letter topic at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProcessError {
    pub message: String,
    pub retryable: bool,
}

impl ProcessError {
    /// A failure that may pass on a later attempt (a store conflict, an unreachable service).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure no retry can fix (a malformed record): parked right away.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<LogError> for ProcessError {
    fn from(error: LogError) -> Self {
        Self::retryable(error.to_string())
    }
}

/// Errors that stop a processor (it resumes from its last checkpoint when started again).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("processor `{processor}`: event log: {source}")]
    Log {
        processor: String,
        #[source]
        source: LogError,
    },
    #[error("processor `{processor}`: state store: {source}")]
    State {
        processor: String,
        #[source]
        source: StateError,
    },
    #[error("processor `{processor}`: cannot encode the state of key `{key}`: {source}")]
    EncodeState {
        processor: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("processor `{processor}` task failed: {reason}")]
    Task { processor: String, reason: String },
}

/// A stream processor. See the module documentation for the contract.
#[async_trait]
pub trait Processor: Send + Sync + 'static {
    /// Per-key state, stored as JSON between checkpoints.
    type State: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static;

    /// The processor's name, also its consumer group and state namespace.
    fn name(&self) -> &str;

    /// The topics it consumes.
    fn topics(&self) -> Vec<String>;

    /// The state key of a record: the record key (the patient compartment for change events),
    /// or the partition for keyless records.
    fn state_key(&self, record: &Record) -> String {
        match &record.key {
            Some(key) => String::from_utf8_lossy(key).into_owned(),
            None => format!("{}/{}", record.topic, record.partition),
        }
    }

    /// Whether the runtime keeps a copy of the state to restore when an attempt fails. A
    /// processor that changes the state only once nothing can fail any more (no fallible
    /// effect after the change) may set it to `false` and save the copy of a large state.
    const ROLLBACK: bool = true;

    /// Handles one record. With [`ROLLBACK`](Self::ROLLBACK), changes to `state` are kept
    /// only when this returns `Ok`.
    async fn process(
        &self,
        key: &str,
        state: &mut Self::State,
        record: &Record,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ProcessError>;
}

/// What `process` may use besides its state.
pub struct Context<'a> {
    log: &'a Arc<dyn EventLog>,
    metrics: &'a ProcessorMetrics,
    attempt: u32,
    allowed_lateness: Duration,
    /// Whether this attempt appended records the next checkpoint must sync.
    published: bool,
}

impl Context<'_> {
    /// Appends `record` to `topic` now (durable before the record's checkpoint), with the
    /// `eventId` header set to `event_id`. Derive `event_id` from the input so that a replay
    /// publishes the same id again.
    pub async fn publish(
        &mut self,
        topic: &str,
        event_id: &str,
        mut record: NewRecord,
    ) -> Result<(), ProcessError> {
        record.headers.retain(|h| h.key != dlq::header::EVENT_ID);
        record
            .headers
            .push(Header::new(dlq::header::EVENT_ID, event_id.as_bytes()));
        self.published = true;
        self.log.append_unsynced(topic, vec![record]).await?;
        ProcessorMetrics::add(&self.metrics.records_out, 1);
        Ok(())
    }

    /// 1 on the first attempt, 2 on the first retry, …
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How far behind the newest event time a record may be and still count.
    pub fn allowed_lateness(&self) -> Duration {
        self.allowed_lateness
    }
}

/// How the runtime runs a processor.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeOptions {
    pub checkpoint: CheckpointPolicy,
    pub retry: RetryPolicy,
    pub allowed_lateness: Duration,
    /// Records fetched per poll. Default 500.
    pub poll_max: usize,
    /// States kept in memory between checkpoints; above it, the cache is dropped after a
    /// checkpoint (states are reloaded from the store as keys come back). Default 100,000.
    pub max_cached_keys: usize,
    /// `[processors.qsofa]`, for the built-in processors that read it.
    pub qsofa: QsofaSettings,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self::from_config(&ProcessorsConfig::default())
    }
}

impl RuntimeOptions {
    pub fn from_config(config: &ProcessorsConfig) -> Self {
        Self {
            checkpoint: config.checkpoint,
            retry: config.retry,
            allowed_lateness: Duration::from_millis(config.allowed_lateness_ms),
            poll_max: 500,
            max_cached_keys: 100_000,
            qsofa: config.qsofa.clone(),
        }
    }
}

/// A running processor. Dropping the handle stops it as [`shutdown`](Self::shutdown) does
/// (with a final checkpoint), without waiting.
pub struct ProcessorHandle {
    name: String,
    metrics: Arc<ProcessorMetrics>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), RuntimeError>>,
}

impl ProcessorHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Turns `true` (or closes) when the processor is asked to stop, for tasks that live as
    /// long as it does.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn metrics(&self) -> Arc<ProcessorMetrics> {
        self.metrics.clone()
    }

    /// True once the processor stopped (after `shutdown`, or on an error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops after the current record, writes a final checkpoint, and returns how it ended.
    pub async fn shutdown(self) -> Result<(), RuntimeError> {
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Stops at once, without the final checkpoint, as a crash would: the next start replays
    /// from the last checkpoint.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Waits for the processor to stop on its own (it only does on an error).
    pub async fn join(self) -> Result<(), RuntimeError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(RuntimeError::Task {
                processor: self.name,
                reason: e.to_string(),
            }),
        }
    }
}

/// Starts `processor` on a task of its own.
pub fn spawn<P: Processor>(
    processor: P,
    log: Arc<dyn EventLog>,
    store: Arc<dyn StateStore>,
    options: RuntimeOptions,
) -> ProcessorHandle {
    let name = processor.name().to_owned();
    let metrics = Arc::new(ProcessorMetrics::new(&name));
    let (stop, stopped) = watch::channel(false);
    let runner = Runner {
        group: name.clone(),
        processor,
        log,
        store,
        options,
        metrics: metrics.clone(),
        stop: stopped,
        cache: HashMap::new(),
        dirty: HashMap::new(),
        positions: BTreeMap::new(),
        checkpointed: BTreeMap::new(),
        inputs: Vec::new(),
        unsynced: false,
        group_offsets: watch::channel(BTreeMap::new()).0,
    };
    let task = tokio::spawn(runner.run());
    ProcessorHandle {
        name,
        metrics,
        stop,
        task,
    }
}

type PartitionId = (String, u32);

struct Runner<P: Processor> {
    group: String,
    processor: P,
    log: Arc<dyn EventLog>,
    store: Arc<dyn StateStore>,
    options: RuntimeOptions,
    metrics: Arc<ProcessorMetrics>,
    stop: watch::Receiver<bool>,
    /// States read or written since the cache was last dropped.
    cache: HashMap<String, P::State>,
    /// Keys changed since the last checkpoint: `true` when the state was removed.
    dirty: HashMap<String, bool>,
    /// The next offset to process, per partition.
    positions: BTreeMap<PartitionId, u64>,
    /// The offsets of the last checkpoint.
    checkpointed: BTreeMap<PartitionId, u64>,
    /// Every consumed topic (inputs and their retry topics).
    inputs: Vec<String>,
    /// Records were published since the last log sync.
    unsynced: bool,
    /// The checkpointed offsets, for the task that commits them as the log's group offsets.
    group_offsets: watch::Sender<BTreeMap<PartitionId, u64>>,
}

/// How one record ended.
enum Handled {
    Done,
    /// Asked to stop while waiting to retry: the record stays unprocessed.
    Interrupted,
}

impl<P: Processor> Runner<P> {
    fn log_error(&self, source: LogError) -> RuntimeError {
        RuntimeError::Log {
            processor: self.group.clone(),
            source,
        }
    }

    fn state_error(&self, source: StateError) -> RuntimeError {
        RuntimeError::State {
            processor: self.group.clone(),
            source,
        }
    }

    async fn run(mut self) -> Result<(), RuntimeError> {
        let mut consumer = self.start().await?;
        let committer = tokio::spawn(commit_group_offsets(
            self.log.clone(),
            self.group.clone(),
            self.group_offsets.subscribe(),
        ));
        let result = self.consume(consumer.as_mut()).await;
        // Closing the channel lets the committer write the last offsets and stop.
        drop(self);
        let _ = committer.await;
        result
    }

    async fn consume(
        &mut self,
        consumer: &mut dyn flare_log::Consumer,
    ) -> Result<(), RuntimeError> {
        let interval = self.options.checkpoint.interval();
        let mut deadline = Instant::now() + interval;
        let mut pending: u64 = 0;
        loop {
            if *self.stop.borrow() {
                break;
            }
            let timeout = deadline.saturating_duration_since(Instant::now());
            let records = tokio::select! {
                polled = consumer.poll(self.options.poll_max, timeout) => {
                    polled.map_err(|e| self.log_error(e))?
                }
                _ = self.stop.changed() => break,
            };
            let mut interrupted = false;
            for record in records {
                let id = (record.topic.clone(), record.partition);
                let next = self.positions.get(&id).copied().unwrap_or(0);
                if record.offset < next {
                    continue; // already reflected in the checkpointed state
                }
                match self.handle(&record).await? {
                    Handled::Done => {}
                    Handled::Interrupted => {
                        interrupted = true;
                        break;
                    }
                }
                self.positions.insert(id, record.offset + 1);
                pending += 1;
                if pending >= self.options.checkpoint.every_records {
                    self.checkpoint().await?;
                    pending = 0;
                    deadline = Instant::now() + interval;
                }
            }
            if interrupted {
                break;
            }
            if Instant::now() >= deadline {
                if pending > 0 || !self.dirty.is_empty() {
                    self.checkpoint().await?;
                    pending = 0;
                }
                deadline = Instant::now() + interval;
            }
        }
        self.checkpoint().await
    }

    /// Resolves the input topics and seeks every partition to the state store's offset.
    async fn start(&mut self) -> Result<Box<dyn flare_log::Consumer>, RuntimeError> {
        let declared = self.processor.topics();
        let mut existing = self.log.topics().await.map_err(|e| self.log_error(e))?;
        if declared
            .iter()
            .any(|topic| !existing.iter().any(|t| &t.name == topic))
        {
            // A consumer creates missing inputs with the backend's default partition count,
            // which their retry topics should share.
            drop(
                self.log
                    .consumer(&self.group, &declared, StartFrom::Earliest)
                    .await
                    .map_err(|e| self.log_error(e))?,
            );
            existing = self.log.topics().await.map_err(|e| self.log_error(e))?;
        }
        let mut inputs = Vec::new();
        for topic in &declared {
            inputs.push(topic.clone());
            let retry = dlq::retry_topic(topic);
            let partitions = existing
                .iter()
                .find(|t| &t.name == topic)
                .map(|t| t.partitions);
            let retry_exists = existing.iter().any(|t| t.name == retry);
            if !retry_exists {
                // A read-only log cannot create it; replays then need the writer process.
                match self.log.ensure_topic(&retry, partitions.unwrap_or(1)).await {
                    Ok(()) => inputs.push(retry),
                    Err(LogError::ReadOnly) => {}
                    Err(e) => return Err(self.log_error(e)),
                }
            } else {
                inputs.push(retry);
            }
        }
        let mut consumer = self
            .log
            .consumer(&self.group, &inputs, StartFrom::Earliest)
            .await
            .map_err(|e| self.log_error(e))?;
        let stored: HashMap<PartitionId, u64> = self
            .store
            .offsets(&self.group)
            .await
            .map_err(|e| self.state_error(e))?
            .into_iter()
            .map(|o| ((o.topic, o.partition), o.next_offset))
            .collect();
        let topics = self.log.topics().await.map_err(|e| self.log_error(e))?;
        for topic in topics.iter().filter(|t| inputs.contains(&t.name)) {
            for partition in 0..topic.partitions {
                let id = (topic.name.clone(), partition);
                // No checkpoint means nothing processed: start from the oldest record.
                let next = stored.get(&id).copied().unwrap_or(0);
                consumer
                    .seek(&topic.name, partition, next)
                    .await
                    .map_err(|e| self.log_error(e))?;
                self.positions.insert(id.clone(), next);
                self.checkpointed.insert(id, next);
            }
        }
        self.inputs = inputs;
        tracing::info!(processor = %self.group, topics = ?self.inputs, "processor started");
        Ok(consumer)
    }

    async fn handle(&mut self, record: &Record) -> Result<Handled, RuntimeError> {
        let input = if dlq::is_retry_topic(&record.topic) {
            match dlq::replayed_original(record, &self.group) {
                Some(original) => original,
                None => return Ok(Handled::Done), // a replay addressed to another processor
            }
        } else {
            record.clone()
        };
        ProcessorMetrics::add(&self.metrics.records_in, 1);
        let key = self.processor.state_key(&input);
        let mut state = match self.take_state(&key).await? {
            Ok(state) => state,
            Err(error) => {
                self.dead_letter(&input, &error, 1).await?;
                return Ok(Handled::Done);
            }
        };
        let retry = self.options.retry;
        let mut attempt = 1;
        loop {
            let backup = P::ROLLBACK.then(|| state.clone());
            let mut ctx = Context {
                log: &self.log,
                metrics: &self.metrics,
                attempt,
                allowed_lateness: self.options.allowed_lateness,
                published: false,
            };
            let started = std::time::Instant::now();
            let result = self
                .processor
                .process(&key, &mut state, &input, &mut ctx)
                .await;
            // Even a failed attempt may have published before failing.
            self.unsynced |= ctx.published;
            let error = match result {
                Ok(outcome) => {
                    self.metrics.record_latency(started.elapsed());
                    match outcome {
                        Outcome::Unchanged => {
                            self.cache.insert(key, state);
                        }
                        Outcome::Updated => {
                            self.cache.insert(key.clone(), state);
                            self.dirty.insert(key, false);
                        }
                        Outcome::Remove => {
                            self.cache.insert(key.clone(), P::State::default());
                            self.dirty.insert(key, true);
                        }
                    }
                    return Ok(Handled::Done);
                }
                Err(error) => error,
            };
            if let Some(backup) = backup {
                state = backup;
            }
            ProcessorMetrics::add(&self.metrics.failed, 1);
            if !error.retryable || attempt >= retry.max_attempts.max(1) {
                // Every path puts the state back: a dirty key must stay cached until the
                // checkpoint writes it.
                self.cache.insert(key, state);
                self.dead_letter(&input, &error, attempt).await?;
                return Ok(Handled::Done);
            }
            tracing::debug!(processor = %self.group, topic = %input.topic,
                partition = input.partition, offset = input.offset, attempt,
                error = %error.message, "processing failed; retrying");
            let delay = retry.delay_after(attempt);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.changed() => {
                    self.cache.insert(key, state);
                    return Ok(Handled::Interrupted);
                }
            }
            ProcessorMetrics::add(&self.metrics.retried, 1);
            attempt += 1;
        }
    }

    /// The key's state, taken out of the cache (the caller puts it back) or loaded from the
    /// store; a state that cannot be decoded is a failure of the record (it goes to the
    /// dead-letter topic), not of the processor.
    async fn take_state(
        &mut self,
        key: &str,
    ) -> Result<Result<P::State, ProcessError>, RuntimeError> {
        if let Some(state) = self.cache.remove(key) {
            return Ok(Ok(state));
        }
        let stored = self
            .store
            .load(&self.group, key)
            .await
            .map_err(|e| self.state_error(e))?;
        let state = match stored {
            None => P::State::default(),
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(state) => state,
                Err(e) => {
                    return Ok(Err(ProcessError::permanent(format!(
                        "the stored state of key `{key}` cannot be decoded: {e}"
                    ))));
                }
            },
        };
        Ok(Ok(state))
    }

    async fn dead_letter(
        &self,
        input: &Record,
        error: &ProcessError,
        attempts: u32,
    ) -> Result<(), RuntimeError> {
        let letter = dlq::dead_letter_record(input, &self.group, &error.message, attempts);
        let topic = dlq::dlq_topic(&input.topic);
        tracing::warn!(processor = %self.group, topic = %input.topic, partition = input.partition,
            offset = input.offset, attempts, error = %error.message, dlq = %topic,
            "record parked in the dead-letter topic");
        self.log
            .append(&topic, vec![letter])
            .await
            .map_err(|e| self.log_error(e))?;
        ProcessorMetrics::add(&self.metrics.dead_lettered, 1);
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), RuntimeError> {
        let mut checkpoint = Checkpoint::default();
        for (key, removed) in &self.dirty {
            let value = if *removed {
                None
            } else {
                match self.cache.get(key) {
                    Some(state) => Some(serde_json::to_vec(state).map_err(|source| {
                        RuntimeError::EncodeState {
                            processor: self.group.clone(),
                            key: key.clone(),
                            source,
                        }
                    })?),
                    None => continue,
                }
            };
            checkpoint.states.push((key.clone(), value));
        }
        for ((topic, partition), next) in &self.positions {
            if self.checkpointed.get(&(topic.clone(), *partition)) != Some(next) {
                checkpoint.offsets.push(PartitionOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    next_offset: *next,
                });
            }
        }
        if checkpoint.states.is_empty() && checkpoint.offsets.is_empty() {
            return Ok(());
        }
        // What the checkpoint's records published must be durable before they count as done.
        if self.unsynced {
            self.log.sync().await.map_err(|e| self.log_error(e))?;
            self.unsynced = false;
        }
        self.store
            .checkpoint(&self.group, &checkpoint)
            .await
            .map_err(|e| self.state_error(e))?;
        ProcessorMetrics::add(&self.metrics.checkpoints, 1);
        self.dirty.clear();
        for offset in &checkpoint.offsets {
            self.checkpointed
                .insert((offset.topic.clone(), offset.partition), offset.next_offset);
        }
        // The store holds the truth; the group offsets only inform lag tools. Committing them
        // costs the embedded log two fsyncs per partition, so a task of their own does it,
        // coalescing checkpoints that come faster than that.
        self.group_offsets.send_replace(self.checkpointed.clone());
        if self.cache.len() > self.options.max_cached_keys {
            self.cache.clear();
        }
        self.update_lag().await;
        Ok(())
    }

    async fn update_lag(&self) {
        let Ok(topics) = self.log.topics().await else {
            return;
        };
        let lag: u64 = topics
            .iter()
            .filter(|t| self.inputs.contains(&t.name))
            .flat_map(|t| {
                t.end_offsets.iter().enumerate().map(|(p, end)| {
                    let partition = u32::try_from(p).unwrap_or(u32::MAX);
                    let next = self
                        .positions
                        .get(&(t.name.clone(), partition))
                        .copied()
                        .unwrap_or(0);
                    end.saturating_sub(next)
                })
            })
            .sum();
        self.metrics
            .lag
            .store(lag, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Commits the checkpointed offsets as the log's group offsets, the latest each time, until
/// the runner closes the channel (after its final checkpoint).
async fn commit_group_offsets(
    log: Arc<dyn EventLog>,
    group: String,
    mut offsets: watch::Receiver<BTreeMap<PartitionId, u64>>,
) {
    let mut committed: BTreeMap<PartitionId, u64> = BTreeMap::new();
    loop {
        let closed = offsets.changed().await.is_err();
        let latest = offsets.borrow_and_update().clone();
        for (id, next) in latest {
            if committed.get(&id) == Some(&next) {
                continue;
            }
            match log.commit(&group, &id.0, id.1, next).await {
                Ok(()) => {
                    committed.insert(id, next);
                }
                // Retried with the next checkpoint's offsets.
                Err(e) => {
                    tracing::warn!(processor = %group, error = %e, "cannot commit the group offset")
                }
            }
        }
        if closed {
            return;
        }
    }
}
