//! The outbox relay of `flare-events` over Kafka: commit order, recovery after a crash between
//! "appended" and "acknowledged", and live relaying.

use std::{sync::Arc, time::Duration};

use flare_events::{Relay, header};
use flare_kafka::{KafkaLog, test_broker};
use flare_log::{EventLog, Header, NewRecord, StartFrom, conformance};
use flare_store::{
    Commit, OutboxMessage, Store,
    sqlite::{SqliteConfig, SqliteStore},
};

fn message(topic: &str, n: u8) -> OutboxMessage {
    OutboxMessage {
        topic: topic.into(),
        key: Some(b"Patient/1".to_vec()),
        headers: vec![("eventId".into(), format!("event-{n}").into_bytes())],
        payload: vec![n],
        timestamp_ms: 1_000 + i64::from(n),
    }
}

async fn open(dir: &std::path::Path) -> Option<(Arc<dyn Store>, Arc<dyn EventLog>)> {
    let broker = test_broker::shared()?;
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(SqliteConfig::file(dir.join("flare.db"))).unwrap());
    let log: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(broker.config()).await.unwrap());
    Some((store, log))
}

/// (payload, eventId, outbox seq) of every record of `topic`, partition by partition.
async fn relayed(log: &Arc<dyn EventLog>, topic: &str) -> Vec<(u8, String, String)> {
    let info = log
        .topics()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.name == topic)
        .unwrap();
    let mut out = Vec::new();
    for partition in 0..info.partitions {
        for record in log.read(topic, partition, 0, 1000).await.unwrap() {
            out.push((
                record.payload[0],
                record.header_str("eventId").unwrap_or_default().to_owned(),
                record.header_str(header::OUTBOX_SEQ).unwrap().to_owned(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_append_and_acknowledgement_loses_nothing_and_appends_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, log)) = open(dir.path()).await else {
        return;
    };
    let topic = conformance::unique("fhir.Patient");
    store
        .commit(Commit {
            writes: vec![],
            outbox: (1..=3).map(|n| message(&topic, n)).collect(),
        })
        .await
        .unwrap();
    // What a crash leaves when the relay appended the first two entries to Kafka and died
    // before acknowledging them in the store.
    let pending = store.outbox_after(0, 10).await.unwrap();
    let appended: Vec<NewRecord> = pending[..2]
        .iter()
        .map(|e| NewRecord {
            key: e.message.key.clone(),
            headers: e
                .message
                .headers
                .iter()
                .map(|(k, v)| Header::new(k.clone(), v.clone()))
                .chain([Header::new(header::OUTBOX_SEQ, e.seq.to_string())])
                .collect(),
            payload: e.message.payload.clone(),
            timestamp_ms: Some(e.message.timestamp_ms),
        })
        .collect();
    log.append(&topic, appended).await.unwrap();

    let relay = Relay::new(store.clone(), log.clone());
    assert_eq!(relay.recover().await.unwrap(), 1, "only the missing entry");
    let seen = relayed(&log, &topic).await;
    let events: Vec<(u8, &str)> = seen.iter().map(|(p, e, _)| (*p, e.as_str())).collect();
    assert_eq!(
        events,
        [(1, "event-1"), (2, "event-2"), (3, "event-3")],
        "every event once, in commit order"
    );
    assert!(store.outbox_after(0, 10).await.unwrap().is_empty());
    let stats = relay.stats();
    assert_eq!(
        stats
            .recovered_duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_reach_a_kafka_consumer_in_commit_order_and_drain_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let Some((store, log)) = open(dir.path()).await else {
        return;
    };
    let topic = conformance::unique("fhir.Observation");
    log.ensure_topic(&topic, 3).await.unwrap();
    let mut consumer = log
        .consumer(
            &conformance::unique("relay-group"),
            std::slice::from_ref(&topic),
            StartFrom::Earliest,
        )
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(Relay::new(store.clone(), log.clone()).run(stopped));
    for n in 1..=20 {
        store
            .commit(Commit {
                writes: vec![],
                outbox: vec![message(&topic, n)],
            })
            .await
            .unwrap();
    }
    let records = conformance::poll_n(consumer.as_mut(), 20).await;
    let payloads: Vec<u8> = records.iter().map(|r| r.payload[0]).collect();
    assert_eq!(
        payloads,
        (1..=20).collect::<Vec<u8>>(),
        "one key, one partition: commit order"
    );
    store
        .commit(Commit {
            writes: vec![],
            outbox: vec![message(&topic, 21), message(&topic, 22)],
        })
        .await
        .unwrap();
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(relayed(&log, &topic).await.len(), 22);
    assert!(store.outbox_after(0, 100).await.unwrap().is_empty());
}
