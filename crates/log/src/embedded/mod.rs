//! The embedded backend: an append-only log in local files, for one machine.
//!
//! # Layout
//!
//! ```text
//! <data_dir>/LOCK                                   single-writer lock (holds the writer's pid)
//! <data_dir>/topics/<topic>/topic.json              {"partitions": N}
//! <data_dir>/topics/<topic>/<partition>/<base>.log  segment files, named by first offset
//! <data_dir>/topics/<topic>/<partition>/<base>.index  sparse index of a closed segment
//! <data_dir>/groups/<group>.json                    committed offsets of a consumer group
//! ```
//!
//! # Writing
//!
//! One writer process per data directory ([`EmbeddedLog::open`]); a second one gets
//! [`LogError::Locked`] naming the holder. Inside it, one writer thread owns the files: it takes
//! every append waiting in its queue (across topics and callers), writes each touched segment
//! once, syncs each touched file once (in parallel), publishes the new records to readers and
//! only then acknowledges the callers (group commit). See [`Durability`] for when
//! acknowledgement happens under each policy.
//!
//! # Opening
//!
//! Closed segments are not scanned: their `.index` file (written when the segment is closed,
//! checked by CRC and against the segment's size) is loaded instead, so opening a large log
//! costs one small read per closed segment. After a clean stop the active segments have a
//! matching index file too. Otherwise (after a crash) the active segment of each partition is
//! scanned frame by frame (at most `segment_bytes` per partition); a torn or corrupt tail (partial frame, bad CRC) is truncated to the
//! last valid record with a warning. A closed segment without a usable index is scanned; a
//! damaged frame inside it is a [`LogError::Corrupt`] naming the file.
//!
//! # Reading
//!
//! In-process consumers are woken by a `tokio::sync::watch` channel bumped on every publish.
//! Other processes use [`EmbeddedLog::open_reader`]: a read-only view that watches the files
//! (inotify through `notify`, or a 100 ms poll if watching is impossible), reads only complete
//! CRC-valid frames, and may commit consumer-group offsets.
//!
//! # Consumer groups
//!
//! A consumer of a group gets every partition of its topics: the embedded backend does no
//! rebalancing, so run one consumer per group at a time. Committed offsets are per group and
//! durable (see `groups.rs`).

mod config;
mod consumer;
mod groups;
mod lock;
mod refresh;
mod segment;
mod writer;

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

pub use self::config::{Durability, EmbeddedLogConfig};
use self::{
    groups::{GroupStore, sync_dir},
    lock::{DirLock, lock_data_dir},
    segment::{ReadEnd, Segment, frame_len, io_error, list_segments, segment_file_name},
    writer::{AppendRequest, Command},
};
use crate::{
    Consumer, EventLog, LogError, NewRecord, Position, Record, StartFrom, TopicInfo,
    partitioner::partition_for_key, validate_topic_name,
};

/// The source of "now" in milliseconds since the Unix epoch: record timestamps left empty and
/// retention by age use it. Tests inject their own.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct TopicMeta {
    partitions: u32,
}

pub(crate) struct Partition {
    pub topic: String,
    pub id: u32,
    pub dir: PathBuf,
    pub state: RwLock<PartitionState>,
}

/// Published segments of a partition, oldest first; the last one is the active one.
pub(crate) struct PartitionState {
    pub segments: Vec<Segment>,
}

impl PartitionState {
    pub fn start_offset(&self) -> u64 {
        self.segments.first().map_or(0, |s| s.base_offset)
    }

    pub fn end_offset(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.next_offset)
    }
}

impl Partition {
    pub fn offsets(&self) -> (u64, u64) {
        let state = self.state.read();
        (state.start_offset(), state.end_offset())
    }

    /// Reads up to `max` records from `offset` (clamped to the start). Blocking file I/O.
    pub fn read(&self, offset: u64, max: usize) -> Result<Vec<Record>, LogError> {
        let (from, slices) = {
            let state = self.state.read();
            let from = offset.max(state.start_offset());
            let slices: Vec<_> = state
                .segments
                .iter()
                .filter(|s| s.next_offset > from)
                .map(|s| s.slice_from(from))
                .collect();
            (from, slices)
        };
        let mut records = Vec::new();
        for slice in slices {
            if records.len() >= max {
                break;
            }
            slice.read(from, max, &self.topic, self.id, |_| false, &mut records)?;
        }
        Ok(records)
    }

    /// The first offset with a timestamp `>= timestamp_ms`, or the end offset. Blocking I/O.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<u64, LogError> {
        let (candidates, end) = {
            let state = self.state.read();
            let candidates: Vec<_> = state
                .segments
                .iter()
                .filter_map(|s| s.slice_for_time(timestamp_ms))
                .collect();
            (candidates, state.end_offset())
        };
        for (slice, from) in candidates {
            let mut sink = Vec::new();
            let found = slice.read(
                from,
                usize::MAX,
                &self.topic,
                self.id,
                |meta| meta.timestamp_ms >= timestamp_ms,
                &mut sink,
            )?;
            if let ReadEnd::Stopped(offset) = found {
                return Ok(offset);
            }
        }
        Ok(end)
    }
}

pub(crate) struct Topic {
    pub name: String,
    pub partitions: Vec<Arc<Partition>>,
    /// Keyless records go to one partition per append call, rotating between calls.
    next_keyless: AtomicU32,
}

impl Topic {
    fn info(&self) -> TopicInfo {
        let (start_offsets, end_offsets) = self.partitions.iter().map(|p| p.offsets()).unzip();
        TopicInfo {
            name: self.name.clone(),
            partitions: self.partitions.len() as u32,
            start_offsets,
            end_offsets,
        }
    }

    fn partition(&self, partition: u32) -> Result<&Arc<Partition>, LogError> {
        self.partitions
            .get(partition as usize)
            .ok_or_else(|| LogError::UnknownPartition {
                topic: self.name.clone(),
                partition,
            })
    }
}

/// What the writer has done since the log was opened (for metrics, and to see group commit at
/// work: `records / batches` is the mean batch size).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Append calls acknowledged.
    pub appends: u64,
    /// Records acknowledged.
    pub records: u64,
    /// Group-commit batches written (each: one write per touched segment, then the syncs).
    pub batches: u64,
    /// `fdatasync` calls on segment files.
    pub syncs: u64,
    /// Bytes written to segment files.
    pub bytes: u64,
}

#[derive(Default)]
pub(crate) struct WriterCounters {
    pub appends: AtomicU64,
    pub records: AtomicU64,
    pub batches: AtomicU64,
    pub syncs: AtomicU64,
    pub bytes: AtomicU64,
}

/// State shared by the API, the writer thread, the refresher thread and consumers.
pub(crate) struct Shared {
    pub config: EmbeddedLogConfig,
    pub topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Bumped after every publish; consumers wait on it.
    pub generation: watch::Sender<u64>,
    pub stats: WriterCounters,
    pub clock: Clock,
    pub groups: GroupStore,
    pub read_only: bool,
    create_lock: Mutex<()>,
}

impl Shared {
    fn topics_dir(&self) -> PathBuf {
        self.config.data_dir.join("topics")
    }

    fn syncs(&self) -> bool {
        self.config.durability != Durability::None
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    fn existing_topic(&self, name: &str) -> Result<Arc<Topic>, LogError> {
        validate_topic_name(name)?;
        self.topic(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_owned()))
    }

    /// Returns the topic, creating it on disk if it does not exist (writer only).
    fn ensure_topic(&self, name: &str, partitions: u32) -> Result<Arc<Topic>, LogError> {
        validate_topic_name(name)?;
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        if self.read_only {
            return Err(LogError::ReadOnly);
        }
        if partitions == 0 {
            return Err(LogError::Backend(format!(
                "topic `{name}` needs at least one partition"
            )));
        }
        let _creating = self.create_lock.lock();
        if let Some(topic) = self.topic(name) {
            return Ok(topic);
        }
        let dir = self.topics_dir().join(name);
        for id in 0..partitions {
            let partition_dir = dir.join(id.to_string());
            std::fs::create_dir_all(&partition_dir).map_err(|e| io_error(&partition_dir, e))?;
            let path = partition_dir.join(segment_file_name(0));
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| io_error(&path, e))?;
            if self.syncs() {
                sync_dir(&partition_dir)?;
            }
        }
        // The metadata file comes last: a topic is visible (also to readers) only when complete.
        let meta_path = dir.join("topic.json");
        let temporary = dir.join("topic.json.tmp");
        let meta = serde_json::to_vec(&TopicMeta { partitions })
            .map_err(|e| LogError::Backend(e.to_string()))?;
        std::fs::write(&temporary, meta).map_err(|e| io_error(&temporary, e))?;
        std::fs::rename(&temporary, &meta_path).map_err(|e| io_error(&meta_path, e))?;
        if self.syncs() {
            sync_dir(&dir)?;
            sync_dir(&self.topics_dir())?;
        }
        let topic = Arc::new(load_topic(&self.config, name, OpenMode::Writer)?);
        self.topics.write().insert(name.to_owned(), topic.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Truncates torn tails, writes missing index files, fails on corruption.
    Writer,
    /// Touches nothing: stops at the first incomplete frame.
    Reader,
}

fn load_topic(config: &EmbeddedLogConfig, name: &str, mode: OpenMode) -> Result<Topic, LogError> {
    let dir = config.data_dir.join("topics").join(name);
    let meta_path = dir.join("topic.json");
    let bytes = std::fs::read(&meta_path).map_err(|e| io_error(&meta_path, e))?;
    let meta: TopicMeta = serde_json::from_slice(&bytes).map_err(|e| LogError::Corrupt {
        path: meta_path.display().to_string(),
        reason: e.to_string(),
    })?;
    if meta.partitions == 0 {
        return Err(LogError::Corrupt {
            path: meta_path.display().to_string(),
            reason: "a topic must have at least one partition".into(),
        });
    }
    let mut partitions = Vec::with_capacity(meta.partitions as usize);
    for id in 0..meta.partitions {
        let partition_dir = dir.join(id.to_string());
        let segments = load_segments(config, &partition_dir, mode)?;
        partitions.push(Arc::new(Partition {
            topic: name.to_owned(),
            id,
            dir: partition_dir,
            state: RwLock::new(PartitionState { segments }),
        }));
    }
    Ok(Topic {
        name: name.to_owned(),
        partitions,
        next_keyless: AtomicU32::new(0),
    })
}

pub(crate) fn open_segment(
    dir: &Path,
    base_offset: u64,
    writable: bool,
) -> Result<Segment, LogError> {
    let path = dir.join(segment_file_name(base_offset));
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    Ok(Segment::new_empty(base_offset, path, file))
}

fn load_segments(
    config: &EmbeddedLogConfig,
    dir: &Path,
    mode: OpenMode,
) -> Result<Vec<Segment>, LogError> {
    struct Loaded {
        segment: Segment,
        has_index_file: bool,
        /// Where and why scanning stopped before the end of the file.
        invalid_tail: Option<(u64, String)>,
    }
    let writable = mode == OpenMode::Writer;
    let bases = list_segments(dir)?;
    let mut loaded = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        let mut segment = open_segment(dir, base, writable)?;
        let is_last = i + 1 == bases.len();
        // The last segment has a matching index file only after a clean stop; a reader skips
        // it anyway, since the writer may be appending.
        let has_index_file = (!is_last || writable) && segment.load_index_file().is_some();
        let invalid_tail = if has_index_file {
            None
        } else {
            segment.scan_forward(config.index_interval_bytes)?
        };
        loaded.push(Loaded {
            segment,
            has_index_file,
            invalid_tail,
        });
    }
    if !writable {
        // A reader sees the complete frames and waits for the writer to recover the rest.
        return Ok(loaded.into_iter().map(|l| l.segment).collect());
    }

    // The first segment that is damaged (invalid tail) or does not connect to the next one.
    let damaged = (0..loaded.len()).find(|&i| {
        loaded[i].invalid_tail.is_some()
            || loaded
                .get(i + 1)
                .is_some_and(|next| next.segment.base_offset != loaded[i].segment.next_offset)
    });
    if let Some(i) = damaged
        && i + 1 < loaded.len()
    {
        // A segment gets its index file once the batch that closed it is durable. Damage in a
        // segment without one, followed only by segments without one, is a roll cut short by a
        // crash: none of those bytes were acknowledged. Anything else is corruption.
        let path = loaded[i].segment.path.display().to_string();
        let reason = match &loaded[i].invalid_tail {
            Some((position, reason)) => format!("{reason} at byte {position} of a closed segment"),
            None => format!(
                "the segment ends at offset {} but the next one starts at {}",
                loaded[i].segment.next_offset,
                loaded[i + 1].segment.base_offset
            ),
        };
        if loaded[i..].iter().any(|l| l.has_index_file) {
            return Err(LogError::Corrupt { path, reason });
        }
        for later in loaded.drain(i + 1..) {
            tracing::warn!(
                file = %later.segment.path.display(),
                damaged = %path,
                reason,
                "deleting a segment created by a roll that a crash cut short"
            );
            later.segment.delete_files()?;
        }
    }
    if let Some(last) = loaded.last_mut()
        && let Some((position, reason)) = last.invalid_tail.take()
    {
        let segment = &last.segment;
        let file_len = segment
            .file
            .metadata()
            .map_err(|e| io_error(&segment.path, e))?
            .len();
        tracing::warn!(
            file = %segment.path.display(),
            valid_bytes = position,
            dropped_bytes = file_len - position,
            reason,
            "truncating the torn tail of a segment to its last valid record"
        );
        segment
            .file
            .set_len(position)
            .and_then(|()| segment.file.sync_all())
            .map_err(|e| io_error(&segment.path, e))?;
    }
    let closed = loaded.len().saturating_sub(1);
    for entry in loaded.iter().take(closed).filter(|l| !l.has_index_file) {
        entry.segment.write_index_file()?;
    }
    let mut segments: Vec<Segment> = loaded.into_iter().map(|l| l.segment).collect();
    if segments.is_empty() && writable {
        let path = dir.join(segment_file_name(0));
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(&path, e))?;
        segments.push(Segment::new_empty(0, path, file));
    }
    Ok(segments)
}

fn load_all_topics(
    config: &EmbeddedLogConfig,
    mode: OpenMode,
) -> Result<BTreeMap<String, Arc<Topic>>, LogError> {
    let dir = config.data_dir.join("topics");
    let mut topics = BTreeMap::new();
    for name in list_topic_names(&dir)? {
        let topic = load_topic(config, &name, mode)?;
        topics.insert(name, Arc::new(topic));
    }
    Ok(topics)
}

/// Topic directories that are complete (have their `topic.json`).
pub(crate) fn list_topic_names(dir: &Path) -> Result<Vec<String>, LogError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        if let Some(name) = entry.file_name().to_str()
            && validate_topic_name(name).is_ok()
            && entry.path().join("topic.json").exists()
        {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// What keeps the background threads of one open log alive; dropping it stops them.
struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Option<writer::WriterHandle>>,
    refresher: Mutex<Option<refresh::RefresherHandle>>,
    _lock: Option<DirLock>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.get_mut().take() {
            writer.stop();
        }
        if let Some(refresher) = self.refresher.get_mut().take() {
            refresher.stop();
        }
    }
}

/// The embedded event log. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log in `config.data_dir` as its single writer.
    pub async fn open(config: EmbeddedLogConfig) -> Result<Self, LogError> {
        Self::open_with_clock(config, system_clock()).await
    }

    /// [`open`](Self::open) with an injected clock.
    pub async fn open_with_clock(
        config: EmbeddedLogConfig,
        clock: Clock,
    ) -> Result<Self, LogError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config, clock))
            .await
            .map_err(|e| LogError::Backend(format!("opening the log failed: {e}")))?
    }

    fn open_blocking(config: EmbeddedLogConfig, clock: Clock) -> Result<Self, LogError> {
        if config.default_partitions == 0 {
            return Err(LogError::Backend(
                "default_partitions must be at least 1".into(),
            ));
        }
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir.join("topics")).map_err(|e| io_error(dir, e))?;
        let lock = lock_data_dir(dir)?;
        let topics = load_all_topics(&config, OpenMode::Writer)?;
        let shared = Arc::new(Shared {
            groups: GroupStore::new(dir.join("groups"), config.durability != Durability::None),
            topics: RwLock::new(topics),
            generation: watch::Sender::new(0),
            clock,
            read_only: false,
            create_lock: Mutex::new(()),
            stats: WriterCounters::default(),
            config,
        });
        let writer = writer::start(shared.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                writer: Mutex::new(Some(writer)),
                refresher: Mutex::new(None),
                _lock: Some(lock),
            }),
        })
    }

    /// Opens the log in `data_dir` read-only, while a writer (possibly another process) keeps
    /// appending. Appends are seen as the files change; consumer groups can commit.
    pub async fn open_reader(data_dir: impl Into<PathBuf>) -> Result<Self, LogError> {
        let config = EmbeddedLogConfig::in_dir(data_dir);
        tokio::task::spawn_blocking(move || {
            let dir = &config.data_dir;
            if !dir.join("topics").is_dir() {
                return Err(LogError::Io {
                    path: dir.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no event log here (no `topics` directory); start the writer first",
                    ),
                });
            }
            let topics = load_all_topics(&config, OpenMode::Reader)?;
            let shared = Arc::new(Shared {
                groups: GroupStore::new(dir.join("groups"), true),
                topics: RwLock::new(topics),
                generation: watch::Sender::new(0),
                clock: system_clock(),
                read_only: true,
                create_lock: Mutex::new(()),
                stats: WriterCounters::default(),
                config,
            });
            let refresher = refresh::start(shared.clone())?;
            Ok(Self {
                inner: Arc::new(Inner {
                    shared,
                    writer: Mutex::new(None),
                    refresher: Mutex::new(Some(refresher)),
                    _lock: None,
                }),
            })
        })
        .await
        .map_err(|e| LogError::Backend(format!("opening the log failed: {e}")))?
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.shared.config.data_dir
    }

    /// Counters of the writer (all zero for a read-only log).
    pub fn stats(&self) -> WriterStats {
        let counters = &self.inner.shared.stats;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WriterStats {
            appends: get(&counters.appends),
            records: get(&counters.records),
            batches: get(&counters.batches),
            syncs: get(&counters.syncs),
            bytes: get(&counters.bytes),
        }
    }

    /// True for a log opened with [`open_reader`](Self::open_reader).
    pub fn is_read_only(&self) -> bool {
        self.inner.shared.read_only
    }

    /// Finishes queued appends, syncs, and stops the writer; later appends fail with
    /// [`LogError::Closed`]. The directory lock is released when the last clone (and consumer)
    /// is dropped.
    pub async fn close(&self) -> Result<(), LogError> {
        let writer = self.inner.writer.lock().take();
        if let Some(writer) = writer {
            tokio::task::spawn_blocking(move || writer.stop())
                .await
                .map_err(|e| LogError::Backend(format!("stopping the writer failed: {e}")))?;
        }
        Ok(())
    }

    /// Applies retention now (it also runs every `retention_check_interval_ms`).
    pub async fn enforce_retention(&self) -> Result<(), LogError> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Retention(reply))?;
        done.await.map_err(|_| LogError::Closed)?
    }

    fn send(&self, command: Command) -> Result<(), LogError> {
        if self.inner.shared.read_only {
            return Err(LogError::ReadOnly);
        }
        let writer = self.inner.writer.lock();
        let writer = writer.as_ref().ok_or(LogError::Closed)?;
        writer.send(command)
    }

    /// An append; `sync`: acknowledged only once durable under the durability policy
    /// (otherwise once written, and durable after the next [`EventLog::sync`]).
    async fn append_with(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
        sync: bool,
    ) -> Result<Vec<Position>, LogError> {
        let shared = &self.inner.shared;

        if shared.read_only {
            return Err(LogError::ReadOnly);
        }
        validate_topic_name(topic)?;
        let max = shared.config.max_record_bytes;
        if let Some(size) = records.iter().map(frame_len).find(|&size| size > max) {
            return Err(LogError::RecordTooLarge { size, max });
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let topic = match shared.topic(topic) {
            Some(topic) => topic,
            None => {
                let name = topic.to_owned();
                let partitions = shared.config.default_partitions;
                self.blocking(move |shared| shared.ensure_topic(&name, partitions))
                    .await?
            }
        };
        let partitions = topic.partitions.len() as u32;
        let keyless = topic.next_keyless.fetch_add(1, Ordering::Relaxed) % partitions;
        let now = (shared.clock)();
        let records = records
            .into_iter()
            .map(|mut record| {
                let partition = record
                    .key
                    .as_deref()
                    .map_or(keyless, |key| partition_for_key(key, partitions));
                record.timestamp_ms = Some(record.timestamp_ms.unwrap_or(now));
                (partition, record)
            })
            .collect();
        let (reply, acknowledged) = oneshot::channel();
        self.send(Command::Append(AppendRequest {
            topic,
            records,
            sync,
            reply,
        }))?;
        acknowledged.await.map_err(|_| LogError::Closed)?
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Shared) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || work(&shared))
            .await
            .map_err(|e| LogError::Backend(format!("log task failed: {e}")))?
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        let topic = topic.to_owned();
        self.blocking(move |shared| shared.ensure_topic(&topic, partitions).map(drop))
            .await
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, LogError> {
        Ok(self
            .inner
            .shared
            .topics
            .read()
            .values()
            .map(|t| t.info())
            .collect())
    }

    async fn append(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Position>, LogError> {
        self.append_with(topic, records, true).await
    }

    async fn append_unsynced(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Position>, LogError> {
        self.append_with(topic, records, false).await
    }

    async fn sync(&self) -> Result<(), LogError> {
        if !self.inner.shared.syncs() {
            return Ok(());
        }
        let (reply, taken) = oneshot::channel();
        self.send(Command::TakeUnsynced(reply))?;
        let files = taken.await.map_err(|_| LogError::Closed)??;
        if files.is_empty() {
            return Ok(());
        }
        let count = files.len() as u64;
        let synced = tokio::task::spawn_blocking(move || writer::sync_files(&files))
            .await
            .map_err(|e| LogError::Backend(format!("log sync task failed: {e}")))
            .and_then(|result| result);
        match synced {
            Ok(()) => {
                self.inner
                    .shared
                    .stats
                    .syncs
                    .fetch_add(count, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                let _ = self.send(Command::SyncFailed(error.to_string()));
                Err(error)
            }
        }
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Record>, LogError> {
        let partition = self
            .inner
            .shared
            .existing_topic(topic)?
            .partition(partition)?
            .clone();
        if max == 0 || offset >= partition.offsets().1 {
            return Ok(Vec::new());
        }
        self.blocking(move |_| partition.read(offset, max)).await
    }

    async fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, LogError> {
        let partition = self
            .inner
            .shared
            .existing_topic(topic)?
            .partition(partition)?
            .clone();
        self.blocking(move |_| partition.offset_for_time(timestamp_ms))
            .await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, LogError> {
        validate_topic_name(topic)?;
        let (group, topic) = (group.to_owned(), topic.to_owned());
        self.blocking(move |shared| shared.groups.committed(&group, &topic, partition))
            .await
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        next_offset: u64,
    ) -> Result<(), LogError> {
        validate_topic_name(topic)?;
        let (group, topic) = (group.to_owned(), topic.to_owned());
        self.blocking(move |shared| shared.groups.commit(&group, &topic, partition, next_offset))
            .await
    }

    async fn consumer(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Box<dyn Consumer>, LogError> {
        let consumer = consumer::EmbeddedConsumer::new(self.clone(), group, topics, start).await?;
        Ok(Box::new(consumer))
    }
}
