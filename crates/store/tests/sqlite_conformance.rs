//! The conformance suite against the SQLite backend, in memory and on disk.

use std::sync::Arc;

use flare_store::{SqliteConfig, SqliteStore, Store};

async fn memory_store() -> (Arc<dyn Store>, ()) {
    let store = SqliteStore::open(SqliteConfig::in_memory()).expect("open in-memory store");
    (Arc::new(store), ())
}

async fn file_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(SqliteConfig::file(dir.path().join("flare.db")))
        .expect("open file store");
    (Arc::new(store), dir)
}

mod memory {
    flare_store::conformance_tests!(super::memory_store);
}

/// A low scan threshold: the id-order walk gives up sooner, so the conformance data exercises
/// its hand-over to the sorted plan too.
async fn memory_store_walking() -> (Arc<dyn Store>, ()) {
    let config = SqliteConfig {
        search_scan_threshold: 500,
        ..SqliteConfig::in_memory()
    };
    let store = SqliteStore::open(config).expect("open in-memory store");
    (Arc::new(store), ())
}

mod memory_walking {
    flare_store::conformance_tests!(super::memory_store_walking);
}

mod file {
    flare_store::conformance_tests!(super::file_store);
}
