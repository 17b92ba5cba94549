//! Reads by key, history and the outbox.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use super::writer::decode_headers;
use crate::{
    HistoryPage, HistoryQuery, HistoryScope, OutboxEntry, OutboxMessage, ResourceKey, StoreError,
    StoredVersion,
};

/// Builds a version from a row `(type, id, version, last_updated, body)` starting at column 0.
pub(crate) fn version_from_row(row: &Row<'_>) -> rusqlite::Result<StoredVersion> {
    let version: i64 = row.get(2)?;
    Ok(StoredVersion {
        key: ResourceKey {
            resource_type: row.get(0)?,
            id: row.get(1)?,
        },
        version_id: version as u64,
        last_updated_ms: row.get(3)?,
        body: row.get(4)?,
    })
}

pub(crate) fn current(
    conn: &Connection,
    key: &ResourceKey,
) -> Result<Option<StoredVersion>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT c.type, c.id, v.version, v.last_updated, v.body FROM resource c \
             JOIN resource_version v ON v.rid = c.rid AND v.version = c.version \
             WHERE c.type = ?1 AND c.id = ?2",
        )?
        .query_row(params![key.resource_type, key.id], version_from_row)
        .optional()?)
}

pub(crate) fn version(
    conn: &Connection,
    key: &ResourceKey,
    version_id: u64,
) -> Result<Option<StoredVersion>, StoreError> {
    let Ok(version_id) = i64::try_from(version_id) else {
        return Ok(None);
    };
    Ok(conn
        .prepare_cached(
            "SELECT c.type, c.id, v.version, v.last_updated, v.body FROM resource c \
             JOIN resource_version v ON v.rid = c.rid \
             WHERE c.type = ?1 AND c.id = ?2 AND v.version = ?3",
        )?
        .query_row(
            params![key.resource_type, key.id, version_id],
            version_from_row,
        )
        .optional()?)
}

pub(crate) fn history(conn: &Connection, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
    let mut conditions: Vec<&str> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    match &query.scope {
        HistoryScope::System => {}
        HistoryScope::Type(resource_type) => {
            conditions.push("c.type = ?");
            values.push(Value::Text(resource_type.clone()));
        }
        HistoryScope::Instance(key) => {
            conditions.push("c.type = ? AND c.id = ?");
            values.push(Value::Text(key.resource_type.clone()));
            values.push(Value::Text(key.id.clone()));
        }
    }
    if let Some(since) = query.since_ms {
        conditions.push("v.last_updated >= ?");
        values.push(Value::Integer(since));
    }
    if let Some(before) = query.before_ms {
        conditions.push("v.last_updated < ?");
        values.push(Value::Integer(before));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let from = "FROM resource_version v JOIN resource c ON c.rid = v.rid";

    let total: i64 = conn
        .prepare_cached(&format!("SELECT count(*) {from} {filter}"))?
        .query_row(params_from_iter(&values), |row| row.get(0))?;
    let mut versions = Vec::new();
    if query.count > 0 {
        let mut page_values = values.clone();
        page_values.push(Value::Integer(to_limit(query.count)));
        page_values.push(Value::Integer(to_limit(query.offset)));
        // Newest first; versions written in the same millisecond keep their write order.
        let sql = format!(
            "SELECT c.type, c.id, v.version, v.last_updated, v.body {from} {filter} \
             ORDER BY v.last_updated DESC, v.vid DESC LIMIT ? OFFSET ?"
        );
        let mut statement = conn.prepare_cached(&sql)?;
        let rows = statement.query_map(params_from_iter(&page_values), version_from_row)?;
        for row in rows {
            versions.push(row?);
        }
    }
    Ok(HistoryPage {
        versions,
        total: total as u64,
    })
}

pub(crate) fn outbox_after(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let Ok(after) = i64::try_from(after) else {
        return Ok(Vec::new());
    };
    let mut statement = conn.prepare_cached(
        "SELECT seq, topic, key, headers, payload, timestamp_ms FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = statement.query_map(params![after, to_limit(limit)], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, Option<Vec<u8>>>(2)?,
            row.get::<_, Vec<u8>>(3)?,
            row.get::<_, Vec<u8>>(4)?,
            row.get::<_, i64>(5)?,
        ))
    })?;
    let mut entries = Vec::new();
    for row in rows {
        let (seq, topic, key, headers, payload, timestamp_ms) = row?;
        let headers = decode_headers(&headers).ok_or_else(|| {
            StoreError::Database(format!("outbox entry {seq} has corrupt headers"))
        })?;
        entries.push(OutboxEntry {
            seq: seq as u64,
            message: OutboxMessage {
                topic,
                key,
                headers,
                payload,
                timestamp_ms,
            },
        });
    }
    Ok(entries)
}

/// A `usize` count or offset as an SQL integer (saturating: nobody pages past i64::MAX rows).
pub(crate) fn to_limit(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
