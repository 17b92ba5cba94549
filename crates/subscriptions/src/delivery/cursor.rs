//! The durable cursors: per-subscription event numbers and the manager's input offsets, in one
//! SQLite file.
//!
//! Assigning event numbers to matched change events and advancing the offsets of the log
//! partitions they came from happen in one SQLite transaction ([`CursorStore::apply`]), so a
//! crash at any point either keeps both or neither: numbers stay gap-free and no change event
//! is numbered twice. An event row names the log record it came from (topic, partition,
//! offset), so a notification can be rebuilt, identically, for as long as the log retains it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};

use super::DeliveryError;

/// One numbered notification event of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub subscription_id: String,
    /// 1, 2, 3, … per subscription, without gaps.
    pub number: u64,
    /// The change event's id: stable across re-deliveries, usable for de-duplication.
    pub event_id: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// The version's `meta.lastUpdated` (RFC 3339).
    pub timestamp: String,
    /// `Type/id` of the resource that triggered the event.
    pub focus: String,
    /// `created`, `updated` or `deleted`.
    pub action: String,
}

/// What the cursor store remembers of a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSubscription {
    pub id: String,
    /// The Subscription resource as last seen on the log.
    pub resource: serde_json::Value,
    /// Outbox sequence number of the event that created it: only later changes match.
    pub since_seq: u64,
    /// `events-since-subscription-start`: the highest event number assigned.
    pub events_since_start: u64,
    /// The highest event number delivered (acknowledged by the endpoint).
    pub delivered_through: u64,
}

/// A change to the subscription table, applied in the same transaction as new events.
#[derive(Debug, Clone)]
pub enum SubscriptionChange {
    Upsert {
        id: String,
        resource: serde_json::Value,
        since_seq: u64,
    },
    Delete {
        id: String,
    },
}

/// The SQLite file holding cursors. Cheap to clone.
#[derive(Clone)]
pub struct CursorStore {
    connection: Arc<Mutex<Connection>>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subscription (
    id TEXT PRIMARY KEY,
    resource TEXT NOT NULL,
    since_seq INTEGER NOT NULL,
    events_since_start INTEGER NOT NULL DEFAULT 0,
    delivered_through INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS event (
    subscription_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    log_offset INTEGER NOT NULL,
    timestamp TEXT NOT NULL,
    focus TEXT NOT NULL,
    action TEXT NOT NULL,
    PRIMARY KEY (subscription_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS input_offset (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
";

fn sql_error(path: &Path) -> impl Fn(rusqlite::Error) -> DeliveryError + '_ {
    move |source| DeliveryError::Cursor {
        path: path.display().to_string(),
        source,
    }
}

impl CursorStore {
    /// Opens (creating if needed) the cursor file. Writes are synced before they return
    /// (`synchronous=FULL`), so a number once handed out survives SIGKILL and power loss.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, DeliveryError> {
        let path = path.into();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| DeliveryError::Io {
                path: parent.display().to_string(),
                source,
            })?;
        }
        let connection = Connection::open(&path).map_err(sql_error(&path))?;
        connection
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
            .map_err(sql_error(&path))?;
        connection.execute_batch(SCHEMA).map_err(sql_error(&path))?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DeliveryError> {
        let connection = self.connection.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = connection.lock();
            work(&mut guard).map_err(sql_error(&path))
        })
        .await
        .map_err(|e| DeliveryError::Task(e.to_string()))?
    }

    /// Every subscription remembered, sorted by id.
    pub async fn subscriptions(&self) -> Result<Vec<StoredSubscription>, DeliveryError> {
        self.run(|c| {
            let mut statement = c.prepare(
                "SELECT id, resource, since_seq, events_since_start, delivered_through \
                 FROM subscription ORDER BY id",
            )?;
            let rows = statement.query_map([], |row| {
                let text: String = row.get(1)?;
                Ok(StoredSubscription {
                    id: row.get(0)?,
                    resource: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
                    since_seq: row.get::<_, i64>(2)? as u64,
                    events_since_start: row.get::<_, i64>(3)? as u64,
                    delivered_through: row.get::<_, i64>(4)? as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// One subscription's counters, if it is known.
    pub async fn subscription(
        &self,
        id: &str,
    ) -> Result<Option<StoredSubscription>, DeliveryError> {
        let id = id.to_owned();
        Ok(self.subscriptions().await?.into_iter().find(|s| s.id == id))
    }

    /// The offsets the manager reads next, per (topic, partition).
    pub async fn input_offsets(&self) -> Result<HashMap<(String, u32), u64>, DeliveryError> {
        self.run(|c| {
            let mut statement =
                c.prepare("SELECT topic, partition, next_offset FROM input_offset")?;
            let rows = statement.query_map([], |row| {
                Ok((
                    (row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u32),
                    row.get::<_, i64>(2)? as u64,
                ))
            })?;
            rows.collect()
        })
        .await
    }

    /// Applies subscription changes, appends numbered events (each subscription's counter is
    /// raised to its highest new number) and advances input offsets: all or nothing.
    pub async fn apply(
        &self,
        changes: Vec<SubscriptionChange>,
        events: Vec<EventRow>,
        offsets: Vec<((String, u32), u64)>,
    ) -> Result<(), DeliveryError> {
        self.run(move |c| {
            let tx = c.transaction()?;
            for change in &changes {
                match change {
                    SubscriptionChange::Upsert {
                        id,
                        resource,
                        since_seq,
                    } => {
                        tx.execute(
                            "INSERT INTO subscription (id, resource, since_seq) VALUES (?1, ?2, ?3) \
                             ON CONFLICT(id) DO UPDATE SET resource = excluded.resource",
                            params![id, resource.to_string(), *since_seq as i64],
                        )?;
                    }
                    SubscriptionChange::Delete { id } => {
                        tx.execute("DELETE FROM subscription WHERE id = ?1", params![id])?;
                        tx.execute("DELETE FROM event WHERE subscription_id = ?1", params![id])?;
                    }
                }
            }
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO event (subscription_id, number, event_id, topic, partition, \
                     log_offset, timestamp, focus, action) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )?;
                let mut raise = tx.prepare_cached(
                    "UPDATE subscription SET events_since_start = max(events_since_start, ?2) \
                     WHERE id = ?1",
                )?;
                for e in &events {
                    insert.execute(params![
                        e.subscription_id,
                        e.number as i64,
                        e.event_id,
                        e.topic,
                        e.partition as i64,
                        e.offset as i64,
                        e.timestamp,
                        e.focus,
                        e.action
                    ])?;
                    raise.execute(params![e.subscription_id, e.number as i64])?;
                }
            }
            for ((topic, partition), next) in &offsets {
                tx.execute(
                    "INSERT INTO input_offset (topic, partition, next_offset) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(topic, partition) DO UPDATE SET next_offset = \
                     max(next_offset, excluded.next_offset)",
                    params![topic, *partition as i64, *next as i64],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// Events of a subscription with `since <= number <= until`, in number order, at most
    /// `limit`.
    pub async fn events(
        &self,
        subscription_id: &str,
        since: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<EventRow>, DeliveryError> {
        let id = subscription_id.to_owned();
        self.run(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT number, event_id, topic, partition, log_offset, timestamp, focus, action \
                 FROM event WHERE subscription_id = ?1 AND number >= ?2 AND number <= ?3 \
                 ORDER BY number LIMIT ?4",
            )?;
            let rows = statement.query_map(
                params![
                    id,
                    since as i64,
                    until.min(i64::MAX as u64) as i64,
                    limit.min(i64::MAX as usize) as i64
                ],
                |row| {
                    Ok(EventRow {
                        subscription_id: id.clone(),
                        number: row.get::<_, i64>(0)? as u64,
                        event_id: row.get(1)?,
                        topic: row.get(2)?,
                        partition: row.get::<_, i64>(3)? as u32,
                        offset: row.get::<_, i64>(4)? as u64,
                        timestamp: row.get(5)?,
                        focus: row.get(6)?,
                        action: row.get(7)?,
                    })
                },
            )?;
            rows.collect()
        })
        .await
    }

    /// Records that events after `previous` up to `number` reached the endpoint. A
    /// compare-and-set: when `$resend` moved the position meanwhile, the move wins.
    pub async fn mark_delivered(
        &self,
        subscription_id: &str,
        previous: u64,
        number: u64,
    ) -> Result<(), DeliveryError> {
        let id = subscription_id.to_owned();
        self.run(move |c| {
            c.execute(
                "UPDATE subscription SET delivered_through = ?2 \
                 WHERE id = ?1 AND delivered_through = ?3",
                params![id, number as i64, previous as i64],
            )
            .map(|_| ())
        })
        .await
    }

    /// Moves the delivery position back so that events from `from` on are sent again
    /// (`$resend`).
    pub async fn rewind(&self, subscription_id: &str, from: u64) -> Result<bool, DeliveryError> {
        let id = subscription_id.to_owned();
        self.run(move |c| {
            let changed = c.execute(
                "UPDATE subscription SET delivered_through = min(delivered_through, ?2) \
                 WHERE id = ?1",
                params![id, from.saturating_sub(1) as i64],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    /// The delivery position of one subscription.
    pub async fn delivered_through(&self, subscription_id: &str) -> Result<u64, DeliveryError> {
        let id = subscription_id.to_owned();
        self.run(move |c| {
            c.query_row(
                "SELECT delivered_through FROM subscription WHERE id = ?1",
                params![id],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|n| n.unwrap_or(0) as u64)
        })
        .await
    }
}
