//! The request ids already executed, in a SQLite file, so that a redelivered or resent
//! command runs once, also across restarts.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use rusqlite::{Connection, OptionalExtension, params};

use crate::CommandsError;

/// What became of an executed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    pub command_type: String,
    /// `Patient/123/_history/1`, or `rejected: <reason>`.
    pub outcome: String,
    pub executed_at_ms: i64,
}

/// Executed request ids; cheap to clone.
#[derive(Clone)]
pub struct ExecutedRequests {
    connection: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for ExecutedRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutedRequests").finish_non_exhaustive()
    }
}

impl ExecutedRequests {
    /// Opens (or creates) the file; `None` keeps them in memory only (tests, `sqlite::memory:`).
    pub fn open(path: Option<&Path>) -> Result<Self, CommandsError> {
        let connection = match path {
            Some(path) => Connection::open(path),
            None => Connection::open_in_memory(),
        }
        .map_err(database)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 CREATE TABLE IF NOT EXISTS executed_request (
                     request_id TEXT PRIMARY KEY,
                     command_type TEXT NOT NULL,
                     outcome TEXT NOT NULL,
                     executed_at_ms INTEGER NOT NULL
                 );",
            )
            .map_err(database)?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// What became of `request_id`, if it was executed.
    pub async fn get(&self, request_id: &str) -> Result<Option<Executed>, CommandsError> {
        let request_id = request_id.to_owned();
        self.with_connection(move |conn| {
            conn.query_row(
                "SELECT command_type, outcome, executed_at_ms FROM executed_request WHERE request_id = ?1",
                params![request_id],
                |row| {
                    Ok(Executed {
                        command_type: row.get(0)?,
                        outcome: row.get(1)?,
                        executed_at_ms: row.get(2)?,
                    })
                },
            )
            .optional()
        })
        .await
    }

    /// Records `request_id` as executed (durably: `synchronous = FULL`). A second record of
    /// the same id keeps the first.
    pub async fn record(&self, request_id: &str, executed: Executed) -> Result<(), CommandsError> {
        let request_id = request_id.to_owned();
        self.with_connection(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO executed_request (request_id, command_type, outcome, executed_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![
                    request_id,
                    executed.command_type,
                    executed.outcome,
                    executed.executed_at_ms
                ],
            )
            .map(|_| ())
        })
        .await
    }

    async fn with_connection<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, CommandsError> {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let conn = connection.lock().unwrap_or_else(|e| e.into_inner());
            work(&conn).map_err(database)
        })
        .await
        .map_err(|err| CommandsError::Database(format!("a database task failed: {err}")))?
    }
}

fn database(err: rusqlite::Error) -> CommandsError {
    CommandsError::Database(err.to_string())
}
