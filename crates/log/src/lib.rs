//! The durable event log behind Flare: topics split into partitions, records with key, headers,
//! timestamp and payload, offsets that only grow, and consumer groups with committed offsets.
//!
//! [`EventLog`] is the contract every backend meets (embedded here; Kafka later). Callers hold an
//! `Arc<dyn EventLog>` and never learn which backend they talk to.
//!
//! - [`embedded::EmbeddedLog`]: segment files in a local directory, group commit under an
//!   `fsync` policy, crash recovery, retention, read-only views from other processes.
//! - [`partitioner`]: Kafka's murmur2 key partitioner, so keys land where a broker puts them.
//! - `conformance` (cargo feature `conformance`): the behaviour every backend must show, as
//!   reusable async test functions.

use std::{fmt, time::Duration};

use async_trait::async_trait;

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
pub mod partitioner;

pub use embedded::{Durability, EmbeddedLog, EmbeddedLogConfig, WriterStats};

/// A header on a record. Values are bytes because Kafka headers are bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, String::from_utf8_lossy(&self.value))
    }
}

/// A record to append. The partition is chosen from the key (same key, same partition).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    pub key: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    pub payload: Vec<u8>,
    /// Milliseconds since the Unix epoch; `None` means "now" at append time.
    pub timestamp_ms: Option<i64>,
}

/// A record as stored, with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<Header>,
    pub payload: Vec<u8>,
}

impl Record {
    /// The first header with this key, as UTF-8 if it is.
    pub fn header_str(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .and_then(|h| std::str::from_utf8(&h.value).ok())
    }
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// What a topic looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    /// Per partition: the offset of the oldest record still retained.
    pub start_offsets: Vec<u64>,
    /// Per partition: the offset the next record will get.
    pub end_offsets: Vec<u64>,
}

/// Where a consumer group starts reading a partition it has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    #[default]
    Earliest,
    Latest,
}

/// Errors of the log. Expected conditions (no records yet, unknown group) are values, not errors.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("topic `{0}` does not exist")]
    UnknownTopic(String),
    #[error("topic `{topic}` has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("invalid topic name `{0}`: use 1-249 characters from [a-zA-Z0-9._-]")]
    InvalidTopicName(String),
    #[error("record of {size} bytes exceeds the maximum of {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    #[error("log data is corrupt in {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("the log is closed")]
    Closed,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("backend error: {0}")]
    Backend(String),
    #[error(
        "the log in {path} is locked by another writer ({holder}); stop it, or open the log \
         read-only"
    )]
    Locked { path: String, holder: String },
    #[error("the log is open read-only: appends and topic creation need the writer process")]
    ReadOnly,
}

/// Checks a topic name against the rules Kafka applies: 1-249 characters from `[a-zA-Z0-9._-]`,
/// and neither `.` nor `..` (they would be directory names on disk).
pub fn validate_topic_name(topic: &str) -> Result<(), LogError> {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(LogError::InvalidTopicName(topic.to_owned()))
    }
}

/// The event log contract. Implementations are cheap to share behind `Arc<dyn EventLog>`.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Creates the topic with `partitions` partitions if it does not exist (an existing topic
    /// keeps its partition count).
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError>;

    /// All topics, sorted by name.
    async fn topics(&self) -> Result<Vec<TopicInfo>, LogError>;

    /// Appends records to one topic (created with the default partition count if missing).
    /// Records with the same key land in the same partition, in the order given. Returns once
    /// the records are durable under the backend's durability policy.
    async fn append(&self, topic: &str, records: Vec<NewRecord>)
    -> Result<Vec<Position>, LogError>;

    /// Appends like [`append`](Self::append), but may acknowledge before the records are
    /// durable: they are readable at once, and durable after the next [`sync`](Self::sync).
    /// For a writer that keeps its own durable copy of the records until `sync` returns (the
    /// outbox relay: the store's commit already made each event durable), so one sync covers
    /// many appends and the records reach consumers without waiting for it. Default: `append`.
    async fn append_unsynced(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Position>, LogError> {
        self.append(topic, records).await
    }

    /// Makes every record acknowledged so far durable under the backend's durability policy
    /// (see [`append_unsynced`](Self::append_unsynced)). Default: nothing to do, appends are
    /// durable when acknowledged.
    async fn sync(&self) -> Result<(), LogError> {
        Ok(())
    }

    /// Reads up to `max` records of one partition starting at `offset` (clamped to the oldest
    /// retained record). Returns an empty vector at the end of the partition; never waits.
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Record>, LogError>;

    /// The first offset whose record timestamp is `>= timestamp_ms`, or the end offset.
    async fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, LogError>;

    /// The offset committed by `group` for a partition: the next offset it will read.
    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, LogError>;

    /// Commits `next_offset` (the offset after the last processed record) for a group.
    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        next_offset: u64,
    ) -> Result<(), LogError>;

    /// A consumer in `group` over `topics`, starting at the group's committed offsets (or
    /// `start` where it has none).
    async fn consumer(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Box<dyn Consumer>, LogError>;
}

/// A member of a consumer group. Records come in partition order; offsets are committed only
/// when the caller says so.
#[async_trait]
pub trait Consumer: Send {
    /// Waits up to `timeout` for records (woken on append, no polling interval) and returns up
    /// to `max` of them; an empty vector means the timeout passed with nothing new.
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, LogError>;

    /// Commits the offset after `record` for this consumer's group.
    async fn commit(&mut self, record: &Record) -> Result<(), LogError>;

    /// Moves this consumer's read position (not the committed offset) in one partition.
    async fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError>;

    /// Moves every assigned partition to the first record at or after `timestamp_ms`.
    async fn seek_to_time(&mut self, timestamp_ms: i64) -> Result<(), LogError>;
}
