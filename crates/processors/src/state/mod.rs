//! Where processors keep per-key state together with the log offsets it reflects.
//!
//! A [`Checkpoint`] is written all or nothing: the states it changes and the offsets they
//! reflect land together, so after a crash a processor resumes from a consistent pair and
//! replays exactly the records after those offsets. The state store's offsets are the truth;
//! the log's committed group offsets follow them (for lag monitoring and other tools).
//!
//! - [`embedded::SqliteStateStore`]: a SQLite file in the data dir, one transaction per
//!   checkpoint.
//! - [`redis::RedisStateStore`]: one hash per processor for states and one for offsets,
//!   written in one `MULTI`/`EXEC`.

pub mod embedded;
pub mod redis;

use std::{path::Path, sync::Arc};

use async_trait::async_trait;

/// Errors of a state backend.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("SQLite state store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("Redis state store: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("invalid state store `{0}`: use `embedded` or `redis://host:port/db`")]
    InvalidUrl(String),
    #[error("corrupt offset entry `{0}` in the state store")]
    CorruptOffset(String),
    #[error("state store task failed: {0}")]
    Task(String),
}

/// The next offset to process in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: u32,
    /// The offset after the last record the state reflects.
    pub next_offset: u64,
}

/// One atomic write: changed states (`None` deletes the key) and the offsets they reflect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub states: Vec<(String, Option<Vec<u8>>)>,
    pub offsets: Vec<PartitionOffset>,
}

/// A state backend. `group` is the processor's name; groups never see each other's data.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The stored state of one key, if any.
    async fn load(&self, group: &str, key: &str) -> Result<Option<Vec<u8>>, StateError>;

    /// Every partition offset checkpointed for the group, sorted by topic and partition.
    async fn offsets(&self, group: &str) -> Result<Vec<PartitionOffset>, StateError>;

    /// Writes the checkpoint atomically: all of it or none of it.
    async fn checkpoint(&self, group: &str, checkpoint: &Checkpoint) -> Result<(), StateError>;

    /// Every state of the group, sorted by key (inspection and tests; not for hot paths).
    async fn all_states(&self, group: &str) -> Result<Vec<(String, Vec<u8>)>, StateError>;

    /// Forgets the group's states and offsets, so it reprocesses the log from the start.
    async fn reset(&self, group: &str) -> Result<(), StateError>;
}

/// Opens the backend named by the config's `state` setting: `embedded` (the file
/// `processors.db` in `data_dir`), `sqlite:///abs/path.db`, or a `redis://` URL.
pub async fn open(url: &str, data_dir: &Path) -> Result<Arc<dyn StateStore>, StateError> {
    match url {
        "embedded" | "embedded://" => Ok(Arc::new(
            embedded::SqliteStateStore::open(&data_dir.join("processors.db")).await?,
        )),
        url if url.starts_with("sqlite://") => Ok(Arc::new(
            embedded::SqliteStateStore::open(Path::new(&url["sqlite://".len()..])).await?,
        )),
        url if url.starts_with("redis://") || url.starts_with("rediss://") => {
            Ok(Arc::new(redis::RedisStateStore::connect(url).await?))
        }
        other => Err(StateError::InvalidUrl(other.to_owned())),
    }
}
