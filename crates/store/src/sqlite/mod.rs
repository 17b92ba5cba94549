//! The embedded backend: SQLite in WAL mode, one writer thread with group commit, a small pool
//! of read-only connections.
//!
//! - **Writes** queue on a channel to one thread. It takes everything queued (up to
//!   [`SqliteConfig::max_batch_commits`]) and runs it in one transaction: a commit whose
//!   expectations fail writes nothing and gets [`StoreError::Conflict`] (they are checked before
//!   it writes), the others go through, and the whole batch costs one fsync. Only when a commit
//!   fails half-way (a database error) is the batch rerun with a savepoint per commit, so that
//!   commit rolls back alone. Callers are answered after the transaction commits.
//! - **Checkpoints** (file databases) run on a thread of their own shortly after writes, so
//!   commits rarely wait for the WAL to be copied into the database file (`checkpoint.rs`).
//! - **Reads** run on `spawn_blocking` threads, each with a read-only connection from a pool
//!   (WAL lets them read a consistent snapshot while the writer writes). An in-memory database
//!   has one connection, shared by the writer and the reads.
//! - **Search** is translated to SQL over per-kind index tables (see `search.rs` for the plans).
//!
//! All SQL and connection handling of the crate lives under this module.

mod checkpoint;
mod config;
mod read;
mod schema;
mod search;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use flare_search::SearchQuery;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

pub use config::{Durability, SqliteConfig};

use crate::{
    Commit, HistoryPage, HistoryQuery, OutboxEntry, ResourceKey, SearchPage, Store, StoreError,
    StoredVersion,
};
use search::ParamKindCache;
use writer::{ParamIds, WriteJob, Writer};

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        StoreError::Database(err.to_string())
    }
}

/// How many commits may wait for the writer before `commit` callers wait to enqueue.
const WRITE_QUEUE_DEPTH: usize = 4096;
/// Prepared statements kept per connection (search SQL varies with the query's shape).
const STATEMENT_CACHE_CAPACITY: usize = 128;

/// The SQLite store. Cheap to share behind an `Arc`; dropping it stops the writer thread after
/// the commits already queued.
pub struct SqliteStore {
    jobs: Option<mpsc::Sender<WriteJob>>,
    writer_thread: Option<JoinHandle<()>>,
    checkpoint_thread: Option<JoinHandle<()>>,
    readers: Arc<Readers>,
    outbox_changed: Arc<Notify>,
    kinds: Arc<ParamKindCache>,
    search_scan_threshold: usize,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// Where reads run.
enum Readers {
    /// File databases: read-only connections, at most `permits` in use at once.
    Pool {
        pool: Arc<ReaderPool>,
        permits: Semaphore,
    },
    /// In-memory databases: the writer's own connection (another connection would see another
    /// database), taken between write batches.
    Shared(Arc<Mutex<Connection>>),
}

/// Idle read-only connections of a file database, opened on first need.
struct ReaderPool {
    config: SqliteConfig,
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn run<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle_conn = self.idle.lock().pop();
        let conn = match idle_conn {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                configure(&conn, &self.config, true)?;
                conn
            }
        };
        let result = work(&conn);
        self.idle.lock().push(conn);
        result
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database and starts the writer thread. Blocking: call it
    /// at startup or from `spawn_blocking`.
    pub fn open(config: SqliteConfig) -> Result<Self, StoreError> {
        let mut conn = match &config.path {
            Some(path) => Connection::open(path)?,
            None => Connection::open_in_memory()?,
        };
        configure(&conn, &config, false)?;
        schema::ensure(&mut conn)?;
        let conn = Arc::new(Mutex::new(conn));
        let readers = match &config.path {
            Some(path) => Readers::Pool {
                permits: Semaphore::new(config.read_connections.max(1)),
                pool: Arc::new(ReaderPool {
                    config: config.clone(),
                    path: path.clone(),
                    idle: Mutex::new(Vec::new()),
                }),
            },
            None => Readers::Shared(conn.clone()),
        };
        let (wrote, checkpoint_thread) = match &config.path {
            Some(path) => {
                let (wrote, wakeups) = std::sync::mpsc::sync_channel(1);
                let checkpointer = checkpoint::Checkpointer::open(path, &config, wakeups)?;
                let thread = std::thread::Builder::new()
                    .name("flare-store-checkpoint".to_owned())
                    .spawn(move || checkpointer.run())
                    .map_err(|err| {
                        StoreError::Database(format!("cannot start the checkpoint thread: {err}"))
                    })?;
                (Some(wrote), Some(thread))
            }
            None => (None, None),
        };
        let (sender, receiver) = mpsc::channel(WRITE_QUEUE_DEPTH);
        let outbox_changed = Arc::new(Notify::new());
        let writer = Writer {
            conn,
            param_ids: ParamIds::default(),
            jobs: receiver,
            max_batch: config.max_batch_commits.max(1),
            outbox_changed: outbox_changed.clone(),
            wrote,
        };
        let writer_thread = std::thread::Builder::new()
            .name("flare-store-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|err| {
                StoreError::Database(format!("cannot start the writer thread: {err}"))
            })?;
        Ok(Self {
            jobs: Some(sender),
            writer_thread: Some(writer_thread),
            checkpoint_thread,
            readers: Arc::new(readers),
            outbox_changed,
            kinds: Arc::new(ParamKindCache::default()),
            search_scan_threshold: config.search_scan_threshold,
        })
    }

    /// Refreshes the query planner's statistics (`PRAGMA optimize`); worth calling after a bulk
    /// load and now and then (e.g. hourly). Runs on the writer, between commits.
    pub async fn optimize(&self) -> Result<(), StoreError> {
        self.write(|reply| WriteJob::Optimize { reply }).await
    }

    async fn write(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<(), StoreError>>) -> WriteJob,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(StoreError::Closed)?;
        jobs.send(job(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `work` on a read connection, off the async runtime.
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let task = match &*self.readers {
            Readers::Shared(conn) => {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || work(&conn.lock()))
            }
            Readers::Pool { pool, permits } => {
                let _permit = permits.acquire().await.map_err(|_| StoreError::Closed)?;
                let pool = pool.clone();
                // Awaited before the permit is released, so at most `permits` tasks hold a
                // connection.
                return tokio::task::spawn_blocking(move || pool.run(work))
                    .await
                    .map_err(|err| StoreError::Database(format!("a read task failed: {err}")))?;
            }
        };
        task.await
            .map_err(|err| StoreError::Database(format!("a read task failed: {err}")))?
    }
}

pub(crate) fn configure(
    conn: &Connection,
    config: &SqliteConfig,
    read_only: bool,
) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_millis(config.busy_timeout_ms))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    // The bundled SQLite is built with STAT4, under which a cached statement is re-prepared
    // whenever its bound values change (a new plan might suit them): measured as a third of
    // search time. The query-planner stability guarantee keeps one plan per statement.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    // Negative cache_size is in KiB.
    conn.pragma_update(None, "cache_size", -i64::from(config.cache_size_kib))?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    if config.path.is_some() {
        conn.pragma_update(
            None,
            "mmap_size",
            i64::from(config.mmap_size_mib) * 1024 * 1024,
        )?;
    }
    if !read_only {
        if config.path.is_some() {
            // WAL lets the read connections work while the writer writes.
            let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Database(format!(
                    "the database could not switch to WAL mode (it stays in {mode} mode); is it on a \
                     network file system?"
                )));
            }
        }
        conn.pragma_update(None, "synchronous", config.durability.pragma_value())?;
        conn.pragma_update(None, "wal_autocheckpoint", config.wal_autocheckpoint_pages)?;
    }
    Ok(())
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and stop; joining makes sure
        // the database file is closed when the store is gone (so it can be reopened at once).
        self.jobs.take();
        if let Some(handle) = self.writer_thread.take() {
            let _ = handle.join();
        }
        // The writer held the checkpoint thread's wakeup channel: that thread stops now too.
        if let Some(handle) = self.checkpoint_thread.take() {
            let _ = handle.join();
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn current(&self, key: &ResourceKey) -> Result<Option<StoredVersion>, StoreError> {
        let key = key.clone();
        self.read(move |conn| read::current(conn, &key)).await
    }

    async fn version(
        &self,
        key: &ResourceKey,
        version_id: u64,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let key = key.clone();
        self.read(move |conn| read::version(conn, &key, version_id))
            .await
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        if commit.writes.is_empty() && commit.outbox.is_empty() {
            return Ok(());
        }
        self.write(|reply| WriteJob::Commit { commit, reply }).await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let query = query.clone();
        self.read(move |conn| read::history(conn, &query)).await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let query = query.clone();
        let kinds = self.kinds.clone();
        let scan_threshold = self.search_scan_threshold;
        self.read(move |conn| search::search(conn, &kinds, &query, scan_threshold))
            .await
    }

    async fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read(move |conn| read::outbox_after(conn, after, limit))
            .await
    }

    async fn outbox_ack(&self, seq: u64) -> Result<(), StoreError> {
        self.write(|reply| WriteJob::AckOutbox {
            up_to_seq: seq,
            reply,
        })
        .await
    }

    async fn outbox_changed(&self) {
        self.outbox_changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::StatementStatus;

    use super::*;

    /// The statement `read::current` runs, with the store's own schema and connection setup.
    #[test]
    fn cached_statements_keep_their_plan_when_bindings_change() {
        let dir = tempfile::tempdir().unwrap();
        let config = SqliteConfig::file(dir.path().join("plan.db"));
        let mut conn = Connection::open(dir.path().join("plan.db")).unwrap();
        configure(&conn, &config, false).unwrap();
        schema::ensure(&mut conn).unwrap();
        for id in ["a", "b", "c", "d"] {
            let key = ResourceKey::new("Patient", id);
            read::current(&conn, &key).unwrap();
        }
        let statement = conn
            .prepare_cached(
                "SELECT c.type, c.id, v.version, v.last_updated, v.body FROM resource c \
                 JOIN resource_version v ON v.rid = c.rid AND v.version = c.version \
                 WHERE c.type = ?1 AND c.id = ?2",
            )
            .unwrap();
        assert_eq!(statement.get_status(StatementStatus::RePrepare), 0);
    }
}
