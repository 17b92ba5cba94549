//! Configuration of the SQLite backend.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the SQLite store is opened. Every field has a default, so an empty TOML table is a
/// valid (in-memory) configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    /// The database file, created if missing. `None` (the default) keeps everything in memory:
    /// the data is lost when the store is dropped.
    pub path: Option<PathBuf>,
    /// When a commit counts as durable. Default: `full`.
    pub durability: Durability,
    /// Page cache per connection, in KiB. Default: 65536 (64 MiB).
    pub cache_size_kib: u32,
    /// How long a connection waits for a lock held by another process before failing, in
    /// milliseconds. Default: 5000.
    pub busy_timeout_ms: u64,
    /// Read-only connections used by concurrent reads and searches (file databases only; an
    /// in-memory database has a single connection). Default: 4.
    pub read_connections: usize,
    /// The most commits grouped into one transaction (one fsync). Default: 512.
    pub max_batch_commits: usize,
    /// Memory-mapped I/O window for reads, in MiB (0 disables it). Default: 256.
    pub mmap_size_mib: u32,
    /// WAL size, in 4 KiB pages, after which the writer itself copies the WAL back into the
    /// database file inside a commit. A checkpoint thread (file databases) copies it in the
    /// background shortly after writes; the WAL file can only restart from its beginning once
    /// the writer has checkpointed, so this also bounds the WAL file's size. Larger values
    /// make the writer stall (for the rest of the copy and an fsync) less often. Default:
    /// 32768 (128 MiB).
    pub wal_autocheckpoint_pages: u32,
    /// A default-ordered search whose best index lookup yields more candidates than this first
    /// walks the resources in id order, stopping when the page is full, instead of collecting
    /// and sorting every candidate. The walk is fast when matches are common and spread out;
    /// when it has visited 4 x max(this, page end) resources without filling the page
    /// (matches rare, or bunched late in the id order) the search sorts the candidates after
    /// all. Default: 2000.
    pub search_scan_threshold: usize,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            path: None,
            durability: Durability::Full,
            cache_size_kib: 65_536,
            busy_timeout_ms: 5_000,
            read_connections: 4,
            max_batch_commits: 512,
            mmap_size_mib: 256,
            wal_autocheckpoint_pages: 32_768,
            search_scan_threshold: 2_000,
        }
    }
}

impl SqliteConfig {
    /// A file-backed configuration with every other setting at its default.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            path: Some(path.into()),
            ..Self::default()
        }
    }

    /// An in-memory configuration (the default).
    pub fn in_memory() -> Self {
        Self::default()
    }
}

/// The SQLite `synchronous` setting, in WAL mode.
///
/// `full` is the default because a commit also stores the outbox messages that become log
/// events: with `normal`, WAL mode skips the fsync at commit, so after a power loss or OS crash
/// the last commits can vanish from the store while their events were already relayed to the
/// log (and clients were told "201 Created"). Group commit makes `full` cheap: one fsync per
/// batch of commits, not per commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync the WAL at every transaction commit: nothing acknowledged is ever lost.
    #[default]
    Full,
    /// fsync only at checkpoints: survives an application crash, not a power loss.
    Normal,
    /// No fsync at all: for throwaway data and tests.
    Off,
}

impl Durability {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
            Durability::Off => "OFF",
        }
    }
}
