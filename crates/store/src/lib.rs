//! Versioned FHIR resources: every write is a new version (a delete is a tombstone version),
//! with history, search indexes and an outbox, behind the [`Store`] trait.
//!
//! The store knows resource types, ids, versions and index values; it does not know HTTP, the
//! event log, or what an outbox message means (it keeps the bytes and hands them back in
//! commit order).

use async_trait::async_trait;
use flare_search::{IndexEntry, SearchQuery};

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteConfig, SqliteStore};

/// A resource's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub resource_type: String,
    pub id: String,
}

impl ResourceKey {
    pub fn new(resource_type: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            resource_type: resource_type.into(),
            id: id.into(),
        }
    }
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.resource_type, self.id)
    }
}

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVersion {
    pub key: ResourceKey,
    pub version_id: u64,
    /// Milliseconds since the Unix epoch (the version's `meta.lastUpdated`).
    pub last_updated_ms: i64,
    /// The resource JSON text (with `meta` as written), `None` for a delete tombstone.
    pub body: Option<String>,
}

impl StoredVersion {
    pub fn is_deleted(&self) -> bool {
        self.body.is_none()
    }
}

/// What the current version must be for a write to apply (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The resource must never have existed.
    Absent,
    /// The current version (live or tombstone) must be exactly this one.
    Version(u64),
}

/// A message stored in the same transaction as the writes, relayed to the log afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
    pub timestamp_ms: i64,
}

/// A committed outbox message with its sequence number (gap-free, in commit order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub seq: u64,
    pub message: OutboxMessage,
}

/// One new version to write.
#[derive(Debug, Clone)]
pub struct VersionWrite {
    pub version: StoredVersion,
    pub expected: Expected,
    /// Search index values of this version (ignored for tombstones, which clear the index).
    pub index: Vec<IndexEntry>,
}

/// An atomic unit of writes: all versions and outbox messages commit together or not at all.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub writes: Vec<VersionWrite>,
    pub outbox: Vec<OutboxMessage>,
}

/// The scope of a history query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(ResourceKey),
}

/// A history query: newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// Only versions with `last_updated_ms >= since_ms`.
    pub since_ms: Option<i64>,
    /// Only versions with `last_updated_ms < before_ms` (pins a page set while paging).
    pub before_ms: Option<i64>,
    pub count: usize,
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    pub versions: Vec<StoredVersion>,
    pub total: u64,
}

/// The result of a search: current (non-deleted) versions of matches, plus included ones.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    pub matches: Vec<StoredVersion>,
    /// Resources pulled in by `_include` / `_revinclude`, without duplicates of `matches`.
    pub included: Vec<StoredVersion>,
    /// Total number of matches, when the query asked for it.
    pub total: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("version conflict on {key}: expected {expected:?}, found version {actual:?}")]
    Conflict {
        key: ResourceKey,
        expected: Expected,
        actual: Option<u64>,
    },
    #[error("search is not supported: {0}")]
    UnsupportedSearch(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("the store is closed")]
    Closed,
}

/// The store contract, met by the SQLite backend (and a PostgreSQL backend later).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current version, tombstones included.
    async fn current(&self, key: &ResourceKey) -> Result<Option<StoredVersion>, StoreError>;
    /// One version; `None` if the resource or version never existed.
    async fn version(
        &self,
        key: &ResourceKey,
        version_id: u64,
    ) -> Result<Option<StoredVersion>, StoreError>;
    /// Applies a commit atomically; on any conflict nothing is written.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;
    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError>;
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError>;
    /// Outbox entries with `seq > after`, oldest first, at most `limit`.
    async fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Forgets outbox entries up to and including `seq` (they are safely in the log).
    async fn outbox_ack(&self, seq: u64) -> Result<(), StoreError>;
    /// Resolves after the next commit that added outbox entries (or immediately if one
    /// happened since the last call); lets the relay sleep without a polling interval.
    async fn outbox_changed(&self);
}
