//! The writer thread: group commit of appends, segment rolling, syncing and retention.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::{Arc, atomic::Ordering, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::{
    Durability, Partition, Shared, Topic,
    groups::sync_dir,
    segment::{
        FrameMeta, IndexEntry, Segment, encode_frame, frame_len, io_error, segment_file_name,
    },
};
use crate::{LogError, NewRecord, Position};

/// Appends waiting longer than this many bytes are left for the next batch, bounding memory.
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Files synced concurrently at most (one thread each) when a batch touched several.
const MAX_SYNC_THREADS: usize = 8;

/// A file written to, with the path its errors name.
pub(crate) type OpenFile = (PathBuf, Arc<File>);

pub(crate) struct AppendRequest {
    pub topic: Arc<Topic>,
    /// Partition chosen and timestamp filled in by the caller.
    pub records: Vec<(u32, NewRecord)>,
    /// Acknowledge only once durable under the policy; otherwise once written (the files are
    /// synced right after the batch, or at the policy's interval, or by a `Sync` command).
    pub sync: bool,
    pub reply: oneshot::Sender<Result<Vec<Position>, LogError>>,
}

pub(crate) enum Command {
    Append(AppendRequest),
    Retention(oneshot::Sender<Result<(), LogError>>),
    /// Hands over the files written since their last sync (after appending what is queued),
    /// for the caller to sync them off this thread: appends go on meanwhile.
    TakeUnsynced(oneshot::Sender<Result<Vec<OpenFile>, LogError>>),
    /// A sync of taken files failed: the page cache may no longer match what was
    /// acknowledged, so the writer stops accepting appends.
    SyncFailed(String),
    Shutdown,
}

pub(crate) struct WriterHandle {
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl WriterHandle {
    pub fn send(&self, command: Command) -> Result<(), LogError> {
        self.commands.send(command).map_err(|_| LogError::Closed)
    }

    /// Lets queued appends finish, syncs, and waits for the thread to end.
    pub fn stop(mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(crate) fn start(shared: Arc<Shared>) -> Result<WriterHandle, LogError> {
    let (commands, receiver) = mpsc::channel();
    let now = Instant::now();
    let writer = Writer {
        retention_every: Duration::from_millis(shared.config.retention_check_interval_ms.max(1)),
        next_retention: now,
        next_sync: now,
        shared,
        unsynced: HashMap::new(),
        failure: None,
        acker: start_acker(),
    };
    let thread = std::thread::Builder::new()
        .name("flare-log-writer".into())
        .spawn(move || writer.run(receiver))
        .map_err(|e| LogError::Backend(format!("cannot start the log writer thread: {e}")))?;
    Ok(WriterHandle {
        commands,
        thread: Some(thread),
    })
}

struct Writer {
    shared: Arc<Shared>,
    /// Files written but not yet synced (interval policy).
    unsynced: HashMap<PathBuf, Arc<File>>,
    next_sync: Instant,
    next_retention: Instant,
    retention_every: Duration,
    /// Delivers acknowledgements from inside the runtime (see [`start_acker`]).
    acker: Option<tokio::sync::mpsc::UnboundedSender<Acks>>,
    /// Set after a failed write or sync: the page cache may no longer match what was
    /// acknowledged, so nothing more is accepted until the log is reopened (and recovered).
    failure: Option<String>,
}

/// The bytes appended to one segment in one batch, and what they change in its metadata.
struct Chunk {
    base_offset: u64,
    path: PathBuf,
    file: Arc<File>,
    /// True for a segment created by this batch (rolled to).
    created: bool,
    write_position: u64,
    buffer: Vec<u8>,
    size: u64,
    next_offset: u64,
    max_timestamp_ms: Option<i64>,
    last_index_position: Option<u64>,
    /// New max timestamp of the segment's last pre-existing index entry.
    last_entry_max_timestamp: Option<i64>,
    new_entries: Vec<IndexEntry>,
}

impl Chunk {
    fn of_active(segment: &Segment) -> Self {
        Self {
            base_offset: segment.base_offset,
            path: segment.path.clone(),
            file: segment.file.clone(),
            created: false,
            write_position: segment.size,
            buffer: Vec::new(),
            size: segment.size,
            next_offset: segment.next_offset,
            max_timestamp_ms: segment.max_timestamp_ms,
            last_index_position: segment.index.last().map(|e| e.position),
            last_entry_max_timestamp: None,
            new_entries: Vec::new(),
        }
    }

    fn add(&mut self, record: &NewRecord, timestamp_ms: i64, interval: u64) -> u64 {
        let offset = self.next_offset;
        let position = self.size;
        encode_frame(&mut self.buffer, offset, timestamp_ms, record);
        let meta = FrameMeta {
            offset,
            timestamp_ms,
        };
        let due = self
            .last_index_position
            .is_none_or(|last| position - last >= interval);
        if due {
            self.new_entries.push(IndexEntry {
                offset,
                position,
                max_timestamp_ms: timestamp_ms,
            });
            self.last_index_position = Some(position);
        } else if let Some(entry) = self.new_entries.last_mut() {
            entry.max_timestamp_ms = entry.max_timestamp_ms.max(meta.timestamp_ms);
        } else {
            let current = self.last_entry_max_timestamp.unwrap_or(i64::MIN);
            self.last_entry_max_timestamp = Some(current.max(timestamp_ms));
        }
        self.size = self.write_position + self.buffer.len() as u64;
        self.next_offset = offset + 1;
        self.max_timestamp_ms = Some(
            self.max_timestamp_ms
                .map_or(timestamp_ms, |t| t.max(timestamp_ms)),
        );
        offset
    }

    /// Applies this chunk to the published segment it extends.
    fn publish_into(self, segment: &mut Segment) {
        segment.size = self.size;
        segment.next_offset = self.next_offset;
        segment.max_timestamp_ms = self.max_timestamp_ms;
        if let (Some(ts), Some(last)) = (self.last_entry_max_timestamp, segment.index.last_mut()) {
            last.max_timestamp_ms = last.max_timestamp_ms.max(ts);
        }
        segment.index.extend(self.new_entries);
    }

    fn into_segment(self) -> Segment {
        Segment {
            base_offset: self.base_offset,
            path: self.path,
            file: self.file,
            size: self.size,
            next_offset: self.next_offset,
            max_timestamp_ms: self.max_timestamp_ms,
            index: self.new_entries,
        }
    }
}

/// Everything one batch appends to one partition.
struct PartitionBatch {
    partition: Arc<Partition>,
    /// The first chunk extends the active segment; later ones are segments rolled to.
    chunks: Vec<Chunk>,
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            let command = match commands.recv_timeout(self.time_to_next_timer()) {
                Ok(command) => command,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.run_timers();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut appends = Vec::new();
            let mut bytes = 0;
            let mut next = Some(command);
            let mut stop = false;
            while let Some(command) = next.take() {
                match command {
                    Command::Append(request) => {
                        bytes += request
                            .records
                            .iter()
                            .map(|(_, r)| frame_len(r))
                            .sum::<usize>();
                        appends.push(request);
                    }
                    Command::Retention(reply) => {
                        self.append_batch(std::mem::take(&mut appends));
                        let _ = reply.send(self.enforce_retention());
                    }
                    Command::TakeUnsynced(reply) => {
                        self.append_batch(std::mem::take(&mut appends));
                        let result = match &self.failure {
                            Some(failure) => Err(LogError::Backend(format!(
                                "the log stopped accepting appends after an I/O failure \
                                 ({failure}); reopen it to recover"
                            ))),
                            None => Ok(self.unsynced.drain().collect()),
                        };
                        let _ = reply.send(result);
                    }
                    Command::SyncFailed(error) => {
                        tracing::error!(%error, "sync failed; the log stops accepting appends");
                        self.failure.get_or_insert(error);
                    }
                    Command::Shutdown => {
                        stop = true;
                        break;
                    }
                }
                if bytes < MAX_BATCH_BYTES {
                    next = commands.try_recv().ok();
                }
            }
            self.append_batch(appends);
            if stop {
                break;
            }
            self.run_timers();
        }
        self.sync_unsynced();
        if self.failure.is_none() {
            self.write_active_indexes();
        }
    }

    /// On a clean stop, the active segments get index files too, so the next open scans
    /// nothing (a file that grew after this, e.g. before a crash, no longer matches its index
    /// and is scanned as usual).
    fn write_active_indexes(&self) {
        let topics: Vec<_> = self.shared.topics.read().values().cloned().collect();
        for partition in topics.iter().flat_map(|t| t.partitions.iter()) {
            let active = partition.state.read().segments.last().cloned();
            if let Some(active) = active
                && let Err(error) = active.write_index_file()
            {
                tracing::warn!(%error, "could not write a segment index; the next open will scan");
            }
        }
    }

    /// Whether files written by unsynced appends are synced on a timer (the interval policy);
    /// under `fsync` they wait for [`Command::TakeUnsynced`] (or the stop).
    fn syncs_on_timer(&self) -> bool {
        matches!(self.shared.config.durability, Durability::IntervalMs(_))
    }

    fn time_to_next_timer(&self) -> Duration {
        let mut next = self.next_retention;
        if !self.unsynced.is_empty() && self.syncs_on_timer() {
            next = next.min(self.next_sync);
        }
        next.saturating_duration_since(Instant::now())
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        if !self.unsynced.is_empty() && self.syncs_on_timer() && now >= self.next_sync {
            self.sync_unsynced();
        }
        if now >= self.next_retention {
            if let Err(error) = self.enforce_retention() {
                tracing::warn!(%error, "retention failed; retrying at the next check");
            }
            self.next_retention = now + self.retention_every;
        }
    }

    fn sync_unsynced(&mut self) {
        let files: Vec<_> = self.unsynced.drain().collect();
        self.shared
            .stats
            .syncs
            .fetch_add(files.len() as u64, Ordering::Relaxed);
        if let Err(error) = sync_files(&files) {
            tracing::error!(%error, "periodic sync failed; the log stops accepting appends");
            self.failure = Some(error.to_string());
        }
        if let Durability::IntervalMs(ms) = self.shared.config.durability {
            self.next_sync = Instant::now() + Duration::from_millis(ms);
        }
    }

    fn append_batch(&mut self, requests: Vec<AppendRequest>) {
        if requests.is_empty() {
            return;
        }
        if let Some(failure) = &self.failure {
            let message = format!(
                "the log stopped accepting appends after an I/O failure ({failure}); reopen it \
                 to recover"
            );
            for request in requests {
                let _ = request.reply.send(Err(LogError::Backend(message.clone())));
            }
            return;
        }
        match self.write_batch(&requests) {
            Ok(positions) => {
                let stats = &self.shared.stats;
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats
                    .appends
                    .fetch_add(positions.len() as u64, Ordering::Relaxed);
                let records = positions.iter().map(|p| p.len() as u64).sum();
                stats.records.fetch_add(records, Ordering::Relaxed);
                let acks: Acks = requests
                    .into_iter()
                    .map(|r| r.reply)
                    .zip(positions)
                    .collect();
                match &self.acker {
                    Some(acker) => {
                        if let Err(unsent) = acker.send(acks) {
                            deliver(unsent.0);
                        }
                    }
                    None => deliver(acks),
                }
                self.shared
                    .generation
                    .send_modify(|g| *g = g.wrapping_add(1));
            }
            Err(error) => {
                tracing::error!(%error, "append failed; the log stops accepting appends");
                self.failure = Some(error.to_string());
                let message = error.to_string();
                for request in requests {
                    let _ = request.reply.send(Err(LogError::Backend(message.clone())));
                }
            }
        }
    }

    /// Encodes, writes, syncs (per policy) and publishes one batch; returns the positions of
    /// each request's records. Nothing is published unless everything succeeded.
    fn write_batch(&mut self, requests: &[AppendRequest]) -> Result<Vec<Vec<Position>>, LogError> {
        let config = &self.shared.config;
        let mut batches: Vec<PartitionBatch> = Vec::new();
        let mut batch_of: HashMap<*const Partition, usize> = HashMap::new();
        let mut positions = Vec::with_capacity(requests.len());
        for request in requests {
            let mut request_positions = Vec::with_capacity(request.records.len());
            for (partition_id, record) in &request.records {
                let partition = request.topic.partition(*partition_id)?;
                let index = *batch_of.entry(Arc::as_ptr(partition)).or_insert_with(|| {
                    let state = partition.state.read();
                    let chunks = state
                        .segments
                        .last()
                        .map(Chunk::of_active)
                        .into_iter()
                        .collect();
                    batches.push(PartitionBatch {
                        partition: partition.clone(),
                        chunks,
                    });
                    batches.len() - 1
                });
                let batch = &mut batches[index];
                let frame = frame_len(record) as u64;
                let needs_roll = match batch.chunks.last() {
                    None => true,
                    Some(chunk) => chunk.size > 0 && chunk.size + frame > config.segment_bytes,
                };
                if needs_roll {
                    let base = batch.chunks.last().map_or(0, |c| c.next_offset);
                    batch.chunks.push(create_segment(&batch.partition, base)?);
                }
                let Some(chunk) = batch.chunks.last_mut() else {
                    return Err(LogError::Backend("no active segment".into()));
                };
                let timestamp_ms = record.timestamp_ms.unwrap_or_else(|| (self.shared.clock)());
                let offset = chunk.add(record, timestamp_ms, config.index_interval_bytes);
                request_positions.push(Position {
                    partition: *partition_id,
                    offset,
                });
            }
            positions.push(request_positions);
        }

        let mut to_sync: Vec<(PathBuf, Arc<File>)> = Vec::new();
        let mut dirs_to_sync = Vec::new();
        for batch in &batches {
            for chunk in &batch.chunks {
                if !chunk.buffer.is_empty() {
                    chunk
                        .file
                        .write_all_at(&chunk.buffer, chunk.write_position)
                        .map_err(|e| io_error(&chunk.path, e))?;
                    to_sync.push((chunk.path.clone(), chunk.file.clone()));
                    self.shared
                        .stats
                        .bytes
                        .fetch_add(chunk.buffer.len() as u64, Ordering::Relaxed);
                }
            }
            if batch.chunks.iter().any(|c| c.created) {
                dirs_to_sync.push(batch.partition.dir.clone());
            }
        }
        let must_sync = requests.iter().any(|request| request.sync);
        match config.durability {
            Durability::Fsync if must_sync => {
                sync_files(&to_sync)?;
                self.shared
                    .stats
                    .syncs
                    .fetch_add(to_sync.len() as u64, Ordering::Relaxed);
                for dir in &dirs_to_sync {
                    sync_dir(dir)?;
                }
            }
            // Unsynced appends under `fsync` wait for `TakeUnsynced`.
            Durability::Fsync | Durability::IntervalMs(_) => {
                if let (Durability::IntervalMs(ms), true) =
                    (config.durability, self.unsynced.is_empty())
                {
                    self.next_sync = Instant::now() + Duration::from_millis(ms);
                }
                self.unsynced.extend(to_sync);
                for dir in dirs_to_sync {
                    if let Ok(file) = File::open(&dir) {
                        self.unsynced.insert(dir, Arc::new(file));
                    }
                }
            }
            Durability::None => {}
        }

        let mut closed = Vec::new();
        for batch in batches {
            let mut state = batch.partition.state.write();
            for chunk in batch.chunks {
                if chunk.created {
                    if let Some(previous) = state.segments.last() {
                        closed.push(previous.clone());
                    }
                    state.segments.push(chunk.into_segment());
                } else if let Some(active) = state.segments.last_mut() {
                    chunk.publish_into(active);
                }
            }
        }
        // Index files of closed segments only speed up the next open; a failure is not fatal.
        for segment in closed {
            if let Err(error) = segment.write_index_file() {
                tracing::warn!(%error, "could not write a segment index; the next open will scan");
            }
        }
        Ok(positions)
    }

    /// Deletes closed segments past the retention limits, oldest first.
    fn enforce_retention(&mut self) -> Result<(), LogError> {
        let config = &self.shared.config;
        if config.retention_ms.is_none() && config.retention_bytes.is_none() {
            return Ok(());
        }
        let now = (self.shared.clock)();
        let cutoff = config
            .retention_ms
            .map(|ms| now.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)));
        let topics: Vec<_> = self.shared.topics.read().values().cloned().collect();
        for topic in topics {
            for partition in &topic.partitions {
                let mut deleted = Vec::new();
                {
                    let mut state = partition.state.write();
                    let mut total: u64 = state.segments.iter().map(|s| s.size).sum();
                    while state.segments.len() > 1 {
                        let oldest = &state.segments[0];
                        let expired = cutoff.is_some_and(|cutoff| {
                            oldest.max_timestamp_ms.is_none_or(|t| t < cutoff)
                        });
                        let oversized = config.retention_bytes.is_some_and(|limit| total > limit);
                        if !(expired || oversized) {
                            break;
                        }
                        total -= oldest.size;
                        deleted.push(state.segments.remove(0));
                    }
                }
                if let Some(last) = deleted.last() {
                    tracing::info!(
                        topic = %topic.name,
                        partition = partition.id,
                        segments = deleted.len(),
                        new_start_offset = last.next_offset,
                        "retention deleted old segments"
                    );
                }
                for segment in deleted {
                    segment.delete_files()?;
                }
            }
        }
        Ok(())
    }
}

type Acks = Vec<(
    oneshot::Sender<Result<Vec<Position>, LogError>>,
    Vec<Position>,
)>;

fn deliver(acks: Acks) {
    for (reply, positions) in acks {
        let _ = reply.send(Ok(positions));
    }
}

/// A task in the opening runtime that completes the callers' acknowledgements. Waking a task
/// from a thread outside the runtime costs a futex wake-up each; from inside a worker, the
/// hundreds of wake-ups of one batch are queued locally (in benches/append.rs, 64 appenders
/// without syncs went from ~96k to ~159k events/s). Without a runtime, the writer thread
/// delivers them itself.
fn start_acker() -> Option<tokio::sync::mpsc::UnboundedSender<Acks>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (acker, mut batches) = tokio::sync::mpsc::unbounded_channel::<Acks>();
    runtime.spawn(async move {
        while let Some(acks) = batches.recv().await {
            deliver(acks);
        }
    });
    Some(acker)
}

fn create_segment(partition: &Partition, base_offset: u64) -> Result<Chunk, LogError> {
    let path = partition.dir.join(segment_file_name(base_offset));
    // A file of this name can only be left over from a batch that failed before publishing.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    let mut chunk = Chunk::of_active(&Segment::new_empty(base_offset, path, file));
    chunk.created = true;
    Ok(chunk)
}

/// `fdatasync`s the files, concurrently when there are several (each sync is mostly waiting
/// for the device, and a device can serve several at once).
pub(crate) fn sync_files(files: &[(PathBuf, Arc<File>)]) -> Result<(), LogError> {
    match files {
        [] => Ok(()),
        [(path, file)] => file.sync_data().map_err(|e| io_error(path, e)),
        _ => {
            let threads = files.len().min(MAX_SYNC_THREADS);
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|worker| {
                        scope.spawn(move || {
                            files.iter().skip(worker).step_by(threads).try_for_each(
                                |(path, file)| file.sync_data().map_err(|e| io_error(path, e)),
                            )
                        })
                    })
                    .collect();
                workers.into_iter().try_for_each(|worker| {
                    worker
                        .join()
                        .map_err(|_| LogError::Backend("a sync thread panicked".into()))?
                })
            })
        }
    }
}
