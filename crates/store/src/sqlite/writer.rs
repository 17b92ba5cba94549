//! The single writer thread: group commit of queued commits, each in its own savepoint.

use std::collections::HashMap;
use std::sync::Arc;

use flare_search::{IndexEntry, IndexValue};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot};

use super::schema::INDEX_TABLES;
use crate::{Commit, Expected, OutboxMessage, ResourceKey, StoreError, VersionWrite};

/// Work for the writer thread.
pub(crate) enum WriteJob {
    Commit {
        commit: Commit,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    AckOutbox {
        up_to_seq: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// `PRAGMA optimize`, run between batches (it may run ANALYZE).
    Optimize {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl WriteJob {
    fn answer(self, result: Result<(), StoreError>) {
        let reply = match self {
            WriteJob::Commit { reply, .. }
            | WriteJob::AckOutbox { reply, .. }
            | WriteJob::Optimize { reply } => reply,
        };
        // The caller may have given up waiting (its future was dropped): nothing to tell it.
        let _ = reply.send(result);
    }
}

pub(crate) struct Writer {
    pub(crate) conn: Arc<Mutex<Connection>>,
    pub(crate) param_ids: ParamIds,
    pub(crate) jobs: mpsc::Receiver<WriteJob>,
    pub(crate) max_batch: usize,
    pub(crate) outbox_changed: Arc<Notify>,
    /// Tells the checkpoint thread (file databases) that a batch was written.
    pub(crate) wrote: Option<std::sync::mpsc::SyncSender<()>>,
}

impl Writer {
    /// Runs until every sender is dropped.
    pub(crate) fn run(mut self) {
        let mut batch: Vec<WriteJob> = Vec::with_capacity(self.max_batch);
        while let Some(first) = self.jobs.blocking_recv() {
            // Maintenance runs between batches, never inside one.
            let mut maintenance = None;
            match first {
                WriteJob::Optimize { .. } => maintenance = Some(first),
                job => batch.push(job),
            }
            while maintenance.is_none() && batch.len() < self.max_batch {
                match self.jobs.try_recv() {
                    Ok(job @ WriteJob::Optimize { .. }) => maintenance = Some(job),
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                let mut conn = self.conn.lock();
                let (results, outbox_added) = run_batch(&mut conn, &mut self.param_ids, &batch);
                drop(conn);
                // Wake the relay before answering: by the time a caller sees its commit
                // succeed, the relay is already on its way to pick up the messages.
                if let Some(wrote) = &self.wrote {
                    // Full means a wakeup is already pending.
                    let _ = wrote.try_send(());
                }
                if outbox_added {
                    self.outbox_changed.notify_one();
                }
                for (job, result) in batch.drain(..).zip(results) {
                    job.answer(result);
                }
            }
            if let Some(job) = maintenance {
                // analysis_limit bounds ANALYZE to a sample per index: a full ANALYZE of a
                // multi-GB database takes tens of seconds and blocks every commit meanwhile.
                let result = self
                    .conn
                    .lock()
                    .execute_batch("PRAGMA analysis_limit=1000; PRAGMA optimize=0x10002")
                    .map_err(StoreError::from);
                job.answer(result);
            }
        }
    }
}

/// Runs a batch in one transaction; returns each job's result and whether outbox rows were
/// added by a successful job.
fn run_batch(
    conn: &mut Connection,
    param_ids: &mut ParamIds,
    batch: &[WriteJob],
) -> (Vec<Result<(), StoreError>>, bool) {
    let all_failed = |err: StoreError| {
        let message = err.to_string();
        batch
            .iter()
            .map(|_| Err(StoreError::Database(message.clone())))
            .collect()
    };
    if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
        return (all_failed(err.into()), false);
    }
    let results = match run_checked(conn, param_ids, batch) {
        Ok(results) => results,
        Err(_) => {
            // A job failed after it had written something, and only a savepoint could undo
            // that part alone: start the batch over with one savepoint per job.
            param_ids.forget();
            // Some errors end the transaction themselves; then there is nothing to roll back.
            let _ = conn.execute_batch("ROLLBACK");
            if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
                return (all_failed(err.into()), false);
            }
            batch
                .iter()
                .map(|job| run_in_savepoint(conn, param_ids, job))
                .collect()
        }
    };
    let outbox_added = batch.iter().zip(&results).any(|(job, result)| {
        result.is_ok()
            && matches!(job, WriteJob::Commit { commit, .. } if !commit.outbox.is_empty())
    });
    if let Err(err) = conn.execute_batch("COMMIT") {
        param_ids.forget();
        // The transaction is still open after a failed COMMIT; undo it so the next batch starts
        // clean. Nothing of this batch was written.
        let _ = conn.execute_batch("ROLLBACK");
        return (all_failed(err.into()), false);
    }
    (results, outbox_added)
}

/// Runs the jobs without savepoints (each costs a copy of every page it touches): a commit's
/// expectations are checked before it writes anything, so a conflict leaves nothing to undo.
/// `Err` means some job failed half-way; the transaction must then be rolled back.
fn run_checked(
    conn: &Connection,
    param_ids: &mut ParamIds,
    batch: &[WriteJob],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let result = match job {
            WriteJob::Commit { commit, .. } => {
                // A single write checks its expectation before writing anything itself.
                let conflict = if commit.writes.len() > 1 {
                    find_conflict(conn, commit)?
                } else {
                    None
                };
                match conflict {
                    Some(conflict) => Err(conflict),
                    None => match apply_commit(conn, param_ids, commit) {
                        Ok(()) => Ok(()),
                        Err(conflict @ StoreError::Conflict { .. }) if commit.writes.len() == 1 => {
                            Err(conflict)
                        }
                        Err(err) => return Err(err),
                    },
                }
            }
            // One statement: it fails whole or not at all.
            WriteJob::AckOutbox { up_to_seq, .. } => ack_outbox(conn, *up_to_seq),
            WriteJob::Optimize { .. } => Err(StoreError::Database(
                "internal error: optimize inside a batch".to_owned(),
            )),
        };
        results.push(result);
    }
    Ok(results)
}

/// The first write of `commit` whose expectation does not hold, given the writes before it in
/// the same commit, as a conflict.
fn find_conflict(conn: &Connection, commit: &Commit) -> Result<Option<StoreError>, StoreError> {
    let mut written: HashMap<&ResourceKey, u64> = HashMap::new();
    for write in &commit.writes {
        let key = &write.version.key;
        let current = match written.get(key) {
            Some(version) => Some(*version),
            None => current_version(conn, key)?,
        };
        if !expectation_holds(write.expected, current) {
            return Ok(Some(StoreError::Conflict {
                key: key.clone(),
                expected: write.expected,
                actual: current,
            }));
        }
        written.insert(key, write.version.version_id);
    }
    Ok(None)
}

fn current_version(conn: &Connection, key: &ResourceKey) -> Result<Option<u64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT version FROM resource WHERE type = ?1 AND id = ?2")?
        .query_row(params![key.resource_type, key.id], |row| {
            row.get::<_, i64>(0)
        })
        .optional()?
        .map(|version| version as u64))
}

fn expectation_holds(expected: Expected, current: Option<u64>) -> bool {
    match expected {
        Expected::Absent => current.is_none(),
        Expected::Version(expected) => current == Some(expected),
    }
}

fn run_in_savepoint(
    conn: &Connection,
    param_ids: &mut ParamIds,
    job: &WriteJob,
) -> Result<(), StoreError> {
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    let result = match job {
        WriteJob::Commit { commit, .. } => apply_commit(conn, param_ids, commit),
        WriteJob::AckOutbox { up_to_seq, .. } => ack_outbox(conn, *up_to_seq),
        WriteJob::Optimize { .. } => Err(StoreError::Database(
            "internal error: optimize inside a batch".to_owned(),
        )),
    };
    match result {
        Ok(()) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(())
        }
        Err(err) => {
            // Numbers handed out inside the savepoint are gone with it.
            param_ids.forget();
            conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
            Err(err)
        }
    }
}

fn apply_commit(
    conn: &Connection,
    param_ids: &mut ParamIds,
    commit: &Commit,
) -> Result<(), StoreError> {
    // Writes apply in order, each checked against the state left by the ones before it, so a
    // commit that writes the same resource twice must expect its own first write.
    for write in &commit.writes {
        apply_write(conn, param_ids, write)?;
    }
    for message in &commit.outbox {
        insert_outbox(conn, message)?;
    }
    Ok(())
}

fn apply_write(
    conn: &Connection,
    param_ids: &mut ParamIds,
    write: &VersionWrite,
) -> Result<(), StoreError> {
    let version = &write.version;
    let key = &version.key;
    let version_id = to_sql_int(version.version_id, "version id")?;
    let deleted = version.body.is_none();
    let conflict = |actual: Option<u64>| StoreError::Conflict {
        key: key.clone(),
        expected: write.expected,
        actual,
    };
    // The statement that moves the resource row also checks the expectation: no read first.
    let rid = match write.expected {
        Expected::Absent => {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO resource (type, id, version, last_updated, deleted) \
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    key.resource_type,
                    key.id,
                    version_id,
                    version.last_updated_ms,
                    deleted
                ]);
            match inserted {
                Ok(_) => conn.last_insert_rowid(),
                Err(err)
                    if err.sqlite_error_code()
                        == Some(rusqlite::ErrorCode::ConstraintViolation) =>
                {
                    return Err(conflict(current_version(conn, key)?));
                }
                Err(err) => return Err(err.into()),
            }
        }
        Expected::Version(expected) => {
            // A version beyond i64 was never stored.
            let Ok(expected) = i64::try_from(expected) else {
                return Err(conflict(current_version(conn, key)?));
            };
            let updated: Option<i64> = conn
                .prepare_cached(
                    "UPDATE resource SET version = ?4, last_updated = ?5, deleted = ?6 \
                     WHERE type = ?1 AND id = ?2 AND version = ?3 RETURNING rid",
                )?
                .query_row(
                    params![
                        key.resource_type,
                        key.id,
                        expected,
                        version_id,
                        version.last_updated_ms,
                        deleted
                    ],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(rid) = updated else {
                return Err(conflict(current_version(conn, key)?));
            };
            for table in INDEX_TABLES {
                conn.prepare_cached(&format!("DELETE FROM {table} WHERE rid = ?1"))?
                    .execute([rid])?;
            }
            rid
        }
    };
    conn.prepare_cached(
        "INSERT INTO resource_version (rid, version, last_updated, body) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        rid,
        version_id,
        version.last_updated_ms,
        version.body
    ])?;
    // Registers the type for system-level searches of the resource columns.
    param_ids.get(conn, &key.resource_type, RESOURCE_ID_PARAM)?;
    if !deleted {
        for (n, entry) in write.index.iter().enumerate() {
            if is_resource_column(&entry.param) {
                continue;
            }
            insert_index_entry(conn, param_ids, rid, n as i64, &key.resource_type, entry)?;
        }
    }
    Ok(())
}

/// The search parameter every resource has (its id), searched on the `resource` table.
pub(crate) const RESOURCE_ID_PARAM: &str = "_id";
/// The search parameter of the version's time, searched on the `resource` table.
pub(crate) const LAST_UPDATED_PARAM: &str = "_lastUpdated";

/// Parameters served by columns of the `resource` table: their index entries are not stored
/// (the values are the resource's own id and `last_updated`).
pub(crate) fn is_resource_column(param: &str) -> bool {
    param == RESOURCE_ID_PARAM || param == LAST_UPDATED_PARAM
}

/// The numbers of (resource type, search parameter) pairs, as stored in `search_param`.
#[derive(Default)]
pub(crate) struct ParamIds {
    by_type: HashMap<String, HashMap<String, i64>>,
}

impl ParamIds {
    fn get(
        &mut self,
        conn: &Connection,
        resource_type: &str,
        param: &str,
    ) -> Result<i64, StoreError> {
        if let Some(pid) = self
            .by_type
            .get(resource_type)
            .and_then(|params| params.get(param))
        {
            return Ok(*pid);
        }
        let existing: Option<i64> = conn
            .prepare_cached("SELECT pid FROM search_param WHERE type = ?1 AND param = ?2")?
            .query_row(params![resource_type, param], |row| row.get(0))
            .optional()?;
        let pid = match existing {
            Some(pid) => pid,
            None => {
                conn.prepare_cached("INSERT INTO search_param (type, param) VALUES (?1, ?2)")?
                    .execute(params![resource_type, param])?;
                conn.last_insert_rowid()
            }
        };
        self.by_type
            .entry(resource_type.to_owned())
            .or_default()
            .insert(param.to_owned(), pid);
        Ok(pid)
    }

    /// Drops every remembered number (after a rollback, some may no longer exist).
    fn forget(&mut self) {
        self.by_type.clear();
    }
}

fn insert_index_entry(
    conn: &Connection,
    param_ids: &mut ParamIds,
    rid: i64,
    n: i64,
    resource_type: &str,
    entry: &IndexEntry,
) -> Result<(), StoreError> {
    let pid = param_ids.get(conn, resource_type, &entry.param)?;
    match &entry.value {
        IndexValue::String { normalized, exact } => conn
            .prepare_cached("INSERT INTO idx_string (rid, pid, n, norm, exact) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![rid, pid, n, normalized, exact])?,
        IndexValue::Token { system, code, text } => conn
            .prepare_cached(
                "INSERT INTO idx_token (rid, pid, n, system, code, text) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![rid, pid, n, system, code, text])?,
        IndexValue::Reference { target_type, target_id, url } => {
            let lookup_url = (!is_relative_url(url, target_type.as_deref(), target_id.as_deref()))
                .then_some(url);
            conn.prepare_cached(
                "INSERT INTO idx_reference (rid, pid, n, target_type, target_id, url, lookup_url) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![rid, pid, n, target_type, target_id, url, lookup_url])?
        }
        IndexValue::Date { low_ms, high_ms } => conn
            .prepare_cached("INSERT INTO idx_date (rid, pid, n, low, high) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![rid, pid, n, low_ms, high_ms])?,
        IndexValue::Number { value, low, high } => conn
            .prepare_cached(
                "INSERT INTO idx_number (rid, pid, n, value, low, high) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![rid, pid, n, value, low, high])?,
        IndexValue::Quantity { value, low, high, system, code, unit } => conn
            .prepare_cached(
                "INSERT INTO idx_quantity (rid, pid, n, value, low, high, system, code, unit) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![rid, pid, n, value, low, high, system, code, unit])?,
        IndexValue::Uri(uri) => conn
            .prepare_cached("INSERT INTO idx_uri (rid, pid, n, uri) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![rid, pid, n, uri])?,
    };
    Ok(())
}

/// Whether `url` is exactly `target_type/target_id` with a type free of `/`, so that a url
/// search can find it by splitting the searched url at its first `/`.
pub(crate) fn is_relative_url(
    url: &str,
    target_type: Option<&str>,
    target_id: Option<&str>,
) -> bool {
    let (Some(target_type), Some(target_id)) = (target_type, target_id) else {
        return false;
    };
    // Splitting at the first `/` gives back the type only if the type has no `/`.
    url.split_once('/') == Some((target_type, target_id))
}

fn insert_outbox(conn: &Connection, message: &OutboxMessage) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO outbox (topic, key, headers, payload, timestamp_ms) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![
            message.topic,
            message.key,
            encode_headers(&message.headers),
            message.payload,
            message.timestamp_ms
        ])?;
    Ok(())
}

fn ack_outbox(conn: &Connection, up_to_seq: u64) -> Result<(), StoreError> {
    // Anything above i64::MAX cannot be a stored seq: acknowledging it acknowledges everything.
    let up_to = i64::try_from(up_to_seq).unwrap_or(i64::MAX);
    conn.prepare_cached("DELETE FROM outbox WHERE seq <= ?1")?
        .execute([up_to])?;
    Ok(())
}

fn to_sql_int(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| {
        StoreError::Database(format!(
            "{what} {value} does not fit in a signed 64-bit integer"
        ))
    })
}

/// Headers as one blob: for each header, u32 name length, name bytes, u32 value length, value.
pub(crate) fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.iter().map(|(k, v)| 8 + k.len() + v.len()).sum());
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The inverse of [`encode_headers`]; `None` if the blob is not one it wrote.
pub(crate) fn decode_headers(mut blob: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    fn take<'a>(blob: &mut &'a [u8]) -> Option<&'a [u8]> {
        let (len, rest) = blob.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        let (value, rest) = rest.split_at(len);
        *blob = rest;
        Some(value)
    }
    let mut headers = Vec::new();
    while !blob.is_empty() {
        let name = String::from_utf8(take(&mut blob)?.to_vec()).ok()?;
        let value = take(&mut blob)?.to_vec();
        headers.push((name, value));
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_including_empty_and_binary_values() {
        let headers = vec![
            ("content-type".to_owned(), b"application/fhir+json".to_vec()),
            ("empty".to_owned(), Vec::new()),
            ("bin".to_owned(), vec![0, 255, 7]),
        ];
        assert_eq!(decode_headers(&encode_headers(&headers)), Some(headers));
        assert_eq!(decode_headers(&encode_headers(&[])), Some(Vec::new()));
    }

    fn commit_job(writes: Vec<(&str, u64)>) -> WriteJob {
        let writes = writes
            .into_iter()
            .map(|(id, version_id)| VersionWrite {
                version: crate::StoredVersion {
                    key: ResourceKey::new("Patient", id),
                    version_id,
                    last_updated_ms: 0,
                    body: Some("{}".to_owned()),
                },
                expected: Expected::Absent,
                index: Vec::new(),
            })
            .collect();
        WriteJob::Commit {
            commit: Commit {
                writes,
                outbox: Vec::new(),
            },
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_commit_failing_half_way_rolls_back_alone() -> Result<(), StoreError> {
        let mut conn = Connection::open_in_memory()?;
        super::super::schema::ensure(&mut conn)?;
        let batch = [
            commit_job(vec![("a", 1)]),
            // Passes its expectations, then fails on its second write: the version id does
            // not fit in SQLite's integer.
            commit_job(vec![("b", 1), ("c", u64::MAX)]),
            commit_job(vec![("d", 1)]),
        ];
        let (results, _) = run_batch(&mut conn, &mut ParamIds::default(), &batch);
        assert!(results[0].is_ok(), "{:?}", results[0]);
        assert!(
            matches!(results[1], Err(StoreError::Database(_))),
            "{:?}",
            results[1]
        );
        assert!(results[2].is_ok(), "{:?}", results[2]);
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM resource ORDER BY id")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        assert_eq!(ids, ["a", "d"]);
        Ok(())
    }

    #[test]
    fn only_plain_type_slash_id_urls_count_as_relative() {
        assert!(is_relative_url("Patient/1", Some("Patient"), Some("1")));
        assert!(!is_relative_url(
            "Patient/1/_history/2",
            Some("Patient"),
            Some("1")
        ));
        assert!(!is_relative_url(
            "http://x.org/fhir/Patient/1",
            Some("Patient"),
            Some("1")
        ));
        assert!(!is_relative_url("a/b/c", Some("a/b"), Some("c")));
        assert!(!is_relative_url("Patient/1", None, None));
    }

    #[test]
    fn truncated_header_blob_is_rejected() {
        let blob = encode_headers(&[("a".to_owned(), b"value".to_vec())]);
        assert_eq!(decode_headers(&blob[..blob.len() - 1]), None);
    }
}
