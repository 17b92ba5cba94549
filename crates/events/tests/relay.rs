//! The relay against the real SQLite store and embedded log.

use std::{sync::Arc, time::Duration};

use flare_events::{Relay, header};
use flare_log::{EmbeddedLog, EmbeddedLogConfig, EventLog, Header, NewRecord};
use flare_store::{
    Commit, OutboxMessage, Store,
    sqlite::{SqliteConfig, SqliteStore},
};

fn message(n: u8) -> OutboxMessage {
    OutboxMessage {
        topic: "fhir.Test".into(),
        key: Some(b"Patient/1".to_vec()),
        headers: vec![("eventId".into(), vec![b'e', b'0' + n])],
        payload: vec![n],
        timestamp_ms: 1_000 + i64::from(n),
    }
}

async fn open(dir: &std::path::Path) -> (Arc<dyn Store>, Arc<dyn EventLog>) {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(SqliteConfig::file(dir.join("flare.db"))).unwrap());
    let log: Arc<dyn EventLog> = Arc::new(
        EmbeddedLog::open(EmbeddedLogConfig::in_dir(dir.join("log")))
            .await
            .unwrap(),
    );
    (store, log)
}

async fn payloads(log: &Arc<dyn EventLog>) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    for info in log.topics().await.unwrap() {
        for partition in 0..info.partitions {
            for record in log.read(&info.name, partition, 0, 1000).await.unwrap() {
                out.push((
                    record.payload[0],
                    record.header_str(header::OUTBOX_SEQ).unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn entries_already_in_the_log_after_a_crash_are_not_appended_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (store, log) = open(dir.path()).await;
    store
        .commit(Commit {
            writes: vec![],
            outbox: vec![message(1), message(2), message(3)],
        })
        .await
        .unwrap();
    // The state a crash leaves after the relay appended the first two entries and before it
    // acknowledged them in the store.
    let pending = store.outbox_after(0, 10).await.unwrap();
    let appended: Vec<NewRecord> = pending[..2]
        .iter()
        .map(|e| NewRecord {
            key: e.message.key.clone(),
            headers: vec![Header::new(header::OUTBOX_SEQ, e.seq.to_string())],
            payload: e.message.payload.clone(),
            timestamp_ms: Some(e.message.timestamp_ms),
        })
        .collect();
    log.append("fhir.Test", appended).await.unwrap();

    let relay = Relay::new(store.clone(), log.clone());
    assert_eq!(
        relay.recover().await.unwrap(),
        1,
        "only the entry missing from the log is appended"
    );
    let seen = payloads(&log).await;
    assert_eq!(
        seen.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        [1, 2, 3],
        "in commit order, once each"
    );
    assert!(
        store.outbox_after(0, 10).await.unwrap().is_empty(),
        "the outbox is acknowledged"
    );
    assert_eq!(
        relay
            .stats()
            .recovered_duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn the_relay_moves_commits_as_they_happen_and_drains_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (store, log) = open(dir.path()).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = Relay::new(store.clone(), log.clone());
    let task = tokio::spawn(relay.run(stopped));
    store
        .commit(Commit {
            writes: vec![],
            outbox: vec![message(1)],
        })
        .await
        .unwrap();
    let mut consumer = log
        .consumer(
            "g",
            &["fhir.Test".to_owned()],
            flare_log::StartFrom::Earliest,
        )
        .await;
    while consumer.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        consumer = log
            .consumer(
                "g",
                &["fhir.Test".to_owned()],
                flare_log::StartFrom::Earliest,
            )
            .await;
    }
    let records = consumer
        .unwrap()
        .poll(10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        records.len(),
        1,
        "woken by the commit, no polling interval to wait for"
    );
    store
        .commit(Commit {
            writes: vec![],
            outbox: vec![message(2), message(3)],
        })
        .await
        .unwrap();
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        payloads(&log).await.len(),
        3,
        "what was committed before shutdown is relayed"
    );
    assert!(
        store.outbox_after(0, 10).await.unwrap().is_empty(),
        "the outbox is acknowledged once the log synced, before the relay stops"
    );
}
