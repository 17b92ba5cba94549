//! The database schema and its version check.

use rusqlite::Connection;

use crate::StoreError;

/// Bumped whenever the schema below changes incompatibly (stored as `PRAGMA user_version`).
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// Tables:
/// - `resource`: one row per resource identity with its current version (`rid` is the compact
///   key the index tables point at; tombstones keep their row with `deleted = 1`).
///   `_id` and `_lastUpdated` are searched here, not in index rows: they are columns of every
///   resource, and an `_id` index row per resource would land at a random place of its index.
/// - `resource_version`: every version ever written (`body` NULL for a tombstone).
/// - `search_param`: each (resource type, parameter code) seen, numbered: index rows carry the
///   small `pid` instead of two strings, which keeps rows and b-tree keys short. Every type
///   written has an `_id` row, so a system-level search knows which types exist.
/// - `idx_*`: search index rows of the *current* version of live resources only, replaced on
///   every write. Each is clustered by `(rid, pid, n)` (`n` = position in the version's entry
///   list) so "does resource X have a value of param P matching ..." is one b-tree probe, and has
///   one value index led by `pid` for finding candidates.
/// - `idx_reference.lookup_url`: the url only when it is not `target_type/target_id` (absolute
///   and canonical references); a relative reference is found by its target columns. Most
///   references are relative, and their url entries would land at random places of an index.
/// - `outbox`: messages committed with the writes; AUTOINCREMENT keeps `seq` gap-free and
///   monotonic even after every row was acknowledged and deleted, and rolled-back savepoints
///   give their numbers back.
const SCHEMA: &str = "
CREATE TABLE resource (
    rid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL
);
CREATE UNIQUE INDEX resource_by_type_id ON resource(type, id);
CREATE INDEX resource_by_type_time ON resource(type, last_updated);

CREATE TABLE resource_version (
    vid INTEGER PRIMARY KEY,
    rid INTEGER NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    body TEXT
);
CREATE UNIQUE INDEX resource_version_by_rid ON resource_version(rid, version);
CREATE INDEX resource_version_by_time ON resource_version(last_updated);

CREATE TABLE search_param (
    pid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    param TEXT NOT NULL
);
CREATE UNIQUE INDEX search_param_by_name ON search_param(type, param);
CREATE INDEX search_param_by_param ON search_param(param);

CREATE TABLE idx_string (
    rid INTEGER NOT NULL, pid INTEGER NOT NULL, n INTEGER NOT NULL,
    norm TEXT NOT NULL, exact TEXT NOT NULL,
    PRIMARY KEY (rid, pid, n)
) WITHOUT ROWID;
CREATE INDEX idx_string_value ON idx_string(pid, norm);

CREATE TABLE idx_token (
    rid INTEGER NOT NULL, pid INTEGER NOT NULL, n INTEGER NOT NULL,
    system TEXT, code TEXT, text TEXT,
    PRIMARY KEY (rid, pid, n)
) WITHOUT ROWID;
CREATE INDEX idx_token_value ON idx_token(pid, code, system);

CREATE TABLE idx_reference (
    rid INTEGER NOT NULL, pid INTEGER NOT NULL, n INTEGER NOT NULL,
    target_type TEXT, target_id TEXT, url TEXT NOT NULL, lookup_url TEXT,
    PRIMARY KEY (rid, pid, n)
) WITHOUT ROWID;
CREATE INDEX idx_reference_target ON idx_reference(pid, target_id, target_type);
CREATE INDEX idx_reference_url ON idx_reference(pid, lookup_url) WHERE lookup_url IS NOT NULL;

CREATE TABLE idx_date (
    rid INTEGER NOT NULL, pid INTEGER NOT NULL, n INTEGER NOT NULL,
    low INTEGER NOT NULL, high INTEGER NOT NULL,
    PRIMARY KEY (rid, pid, n)
) WITHOUT ROWID;
CREATE INDEX idx_date_value ON idx_date(pid, high, low);

CREATE TABLE idx_number (
    rid INTEGER NOT NULL, pid INTEGER NOT NULL, n INTEGER NOT NULL,
    value REAL, low REAL, high REAL,
    PRIMARY KEY (rid, pid, n)
) WITHOUT ROWID;
CREATE INDEX idx_number_value ON idx_number(pid, value);

CREATE TABLE idx_quantity (
    rid INTEGER NOT NULL, pid INTEGER NOT NULL, n INTEGER NOT NULL,
    value REAL, low REAL, high REAL, system TEXT, code TEXT, unit TEXT,
    PRIMARY KEY (rid, pid, n)
) WITHOUT ROWID;
CREATE INDEX idx_quantity_value ON idx_quantity(pid, value);

CREATE TABLE idx_uri (
    rid INTEGER NOT NULL, pid INTEGER NOT NULL, n INTEGER NOT NULL,
    uri TEXT NOT NULL,
    PRIMARY KEY (rid, pid, n)
) WITHOUT ROWID;
CREATE INDEX idx_uri_value ON idx_uri(pid, uri);

CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB,
    headers BLOB NOT NULL,
    payload BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL
);
";

/// Every index table, for clearing a resource's rows and for `:missing`.
pub(crate) const INDEX_TABLES: [&str; 7] = [
    "idx_string",
    "idx_token",
    "idx_reference",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_uri",
];

/// Creates the schema in an empty database, or checks that an existing one has the version
/// this code understands.
pub(crate) fn ensure(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    if found != 0 {
        return Err(StoreError::Database(format!(
            "the database has schema version {found}, this build of Flare understands version \
             {SCHEMA_VERSION}; open it with a matching Flare version or point the store at a new file"
        )));
    }
    let has_tables: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%')",
        [],
        |row| row.get(0),
    )?;
    if has_tables {
        return Err(StoreError::Database(
            "the database file already holds tables that are not a Flare store; point the store at a \
             new file"
                .to_owned(),
        ));
    }
    let tx = conn.transaction()?;
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}
