//! The embedded state backend: a SQLite file, one transaction per checkpoint.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Checkpoint, PartitionOffset, StateError, StateStore};

/// State and offsets in two tables of one SQLite file.
///
/// `synchronous = NORMAL` in WAL mode: a power loss may drop the newest checkpoints, but
/// never splits one, so the processor resumes from an older consistent pair and replays
/// (effects are idempotent). That keeps a checkpoint to one write without an fsync.
pub struct SqliteStateStore {
    connection: Arc<Mutex<Connection>>,
    path: String,
}

impl SqliteStateStore {
    pub async fn open(path: &Path) -> Result<Self, StateError> {
        let display = path.display().to_string();
        if let Some(parent) = path.parent() {
            // A missing folder shows up as SQLite's "unable to open" below.
            let _ = std::fs::create_dir_all(parent);
        }
        let path = path.to_owned();
        let sqlite_error = {
            let display = display.clone();
            move |source| StateError::Sqlite {
                path: display.clone(),
                source,
            }
        };
        let connection = tokio::task::spawn_blocking(move || {
            let connection = Connection::open(&path).map_err(sqlite_error.clone())?;
            connection
                .execute_batch(
                    "PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = NORMAL;
                     PRAGMA busy_timeout = 5000;
                     CREATE TABLE IF NOT EXISTS processor_state (
                         grp TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                         PRIMARY KEY (grp, key)) WITHOUT ROWID;
                     CREATE TABLE IF NOT EXISTS processor_offset (
                         grp TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
                         next_offset INTEGER NOT NULL,
                         PRIMARY KEY (grp, topic, partition)) WITHOUT ROWID;",
                )
                .map_err(sqlite_error)?;
            Ok::<_, StateError>(connection)
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))??;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            path: display,
        })
    }

    async fn with_connection<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StateError> {
        let connection = self.connection.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            work(&mut connection.lock()).map_err(|source| StateError::Sqlite { path, source })
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))?
    }
}

#[async_trait]
impl StateStore for SqliteStateStore {
    async fn load(&self, group: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let (group, key) = (group.to_owned(), key.to_owned());
        self.with_connection(move |c| {
            c.prepare_cached("SELECT value FROM processor_state WHERE grp = ?1 AND key = ?2")?
                .query_row(params![group, key], |row| row.get(0))
                .optional()
        })
        .await
    }

    async fn offsets(&self, group: &str) -> Result<Vec<PartitionOffset>, StateError> {
        let group = group.to_owned();
        self.with_connection(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT topic, partition, next_offset FROM processor_offset WHERE grp = ?1
                 ORDER BY topic, partition",
            )?;
            let rows = statement.query_map(params![group], |row| {
                Ok(PartitionOffset {
                    topic: row.get(0)?,
                    partition: row.get(1)?,
                    next_offset: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn checkpoint(&self, group: &str, checkpoint: &Checkpoint) -> Result<(), StateError> {
        let group = group.to_owned();
        let checkpoint = checkpoint.clone();
        self.with_connection(move |c| {
            let transaction = c.transaction()?;
            {
                let mut upsert = transaction.prepare_cached(
                    "INSERT INTO processor_state (grp, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (grp, key) DO UPDATE SET value = excluded.value",
                )?;
                let mut delete = transaction
                    .prepare_cached("DELETE FROM processor_state WHERE grp = ?1 AND key = ?2")?;
                for (key, value) in &checkpoint.states {
                    match value {
                        Some(value) => upsert.execute(params![group, key, value])?,
                        None => delete.execute(params![group, key])?,
                    };
                }
                let mut offset = transaction.prepare_cached(
                    "INSERT INTO processor_offset (grp, topic, partition, next_offset)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (grp, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                )?;
                for o in &checkpoint.offsets {
                    let next = i64::try_from(o.next_offset).unwrap_or(i64::MAX);
                    offset.execute(params![group, o.topic, o.partition, next])?;
                }
            }
            transaction.commit()
        })
        .await
    }

    async fn all_states(&self, group: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let group = group.to_owned();
        self.with_connection(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT key, value FROM processor_state WHERE grp = ?1 ORDER BY key",
            )?;
            let rows = statement.query_map(params![group], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn reset(&self, group: &str) -> Result<(), StateError> {
        let group = group.to_owned();
        self.with_connection(move |c| {
            let transaction = c.transaction()?;
            transaction.execute("DELETE FROM processor_state WHERE grp = ?1", params![group])?;
            transaction.execute(
                "DELETE FROM processor_offset WHERE grp = ?1",
                params![group],
            )?;
            transaction.commit()
        })
        .await
    }
}
