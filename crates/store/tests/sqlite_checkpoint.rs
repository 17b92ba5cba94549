//! The WAL is copied back into the database file by the checkpoint thread, without waiting for
//! the writer's automatic checkpoint (which needs `wal_autocheckpoint_pages` of WAL).

use std::time::{Duration, Instant};

use flare_store::{
    Commit, Expected, ResourceKey, SqliteConfig, SqliteStore, Store, StoredVersion, VersionWrite,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_pages_reach_the_database_file_soon_after_a_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("flare.db");
    let store = SqliteStore::open(SqliteConfig::file(&path)).expect("open");
    let empty_size = std::fs::metadata(&path).expect("db file").len();
    let body = format!(
        r#"{{"resourceType":"Basic","text":"{}"}}"#,
        "x".repeat(2_000)
    );
    let writes = (0..200)
        .map(|n| VersionWrite {
            version: StoredVersion {
                key: ResourceKey::new("Basic", format!("b{n}")),
                version_id: 1,
                last_updated_ms: 0,
                body: Some(body.clone()),
            },
            expected: Expected::Absent,
            index: Vec::new(),
        })
        .collect();
    store
        .commit(Commit {
            writes,
            outbox: Vec::new(),
        })
        .await
        .expect("commit");
    // About 100 pages of WAL: far below the writer's automatic checkpoint.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let size = std::fs::metadata(&path).expect("db file").len();
        if size > empty_size + 200 * 2_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the database file stayed at {size} bytes (empty: {empty_size})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
