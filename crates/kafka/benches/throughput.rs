//! Produce and consume throughput of 1 KB events: `KafkaLog` against a local nisshi broker,
//! beside a raw librdkafka producer/consumer on the same broker (the client-side ceiling) and
//! the embedded log. Run once: `cargo bench -p flare-kafka --bench throughput`
//! (`FLARE_BENCH_EVENTS` sets the event count, default 20,000).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use flare_kafka::{KafkaLog, test_broker::TestBroker};
use flare_log::{
    EmbeddedLog, EmbeddedLogConfig, EventLog, Header, NewRecord, StartFrom, conformance::unique,
};
use rdkafka::{
    ClientConfig, Message,
    consumer::{BaseConsumer, Consumer},
    producer::{FutureProducer, FutureRecord},
};

const PAYLOAD_BYTES: usize = 1024;
const BATCH: usize = 500;

fn event(i: usize) -> NewRecord {
    let mut payload = format!("{{\"resourceType\":\"Observation\",\"id\":\"{i}\",\"note\":\"");
    payload.push_str(&"x".repeat(PAYLOAD_BYTES - payload.len() - 2));
    payload.push_str("\"}");
    NewRecord {
        key: Some(format!("Patient/{}", i % 100).into_bytes()),
        headers: vec![Header::new("eventId", format!("e-{i}"))],
        payload: payload.into_bytes(),
        timestamp_ms: None,
    }
}

fn report(what: &str, events: usize, elapsed: Duration) {
    let per_second = events as f64 / elapsed.as_secs_f64();
    println!(
        "{what:<34} {events:>7} events in {:>7.2} s: {per_second:>9.0} events/s, {:>6.1} MB/s",
        elapsed.as_secs_f64(),
        per_second * PAYLOAD_BYTES as f64 / 1e6
    );
}

async fn through_event_log(name: &str, log: Arc<dyn EventLog>, events: usize) {
    let topic = unique("bench");
    log.ensure_topic(&topic, 4).await.unwrap();
    let started = Instant::now();
    let mut i = 0;
    while i < events {
        let batch: Vec<NewRecord> = (i..(i + BATCH).min(events)).map(event).collect();
        i += batch.len();
        log.append(&topic, batch).await.unwrap();
    }
    report(&format!("{name} produce"), events, started.elapsed());
    let mut consumer = log
        .consumer(&unique("bench-group"), &[topic], StartFrom::Earliest)
        .await
        .unwrap();
    let started = Instant::now();
    let mut seen = 0;
    while seen < events {
        let records = consumer.poll(BATCH, Duration::from_secs(10)).await.unwrap();
        assert!(!records.is_empty(), "consumer stalled at {seen}");
        seen += records.len();
    }
    report(&format!("{name} consume"), events, started.elapsed());
}

async fn raw_librdkafka(address: &str, events: usize) {
    let topic = unique("bench-raw");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let records: Vec<NewRecord> = (0..events).map(event).collect();
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(events);
    for record in &records {
        let key = record.key.as_deref().unwrap_or_default();
        let message = FutureRecord::to(&topic).key(key).payload(&record.payload);
        deliveries.push(producer.send_result(message).map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    report("raw librdkafka produce", events, started.elapsed());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("group.id", unique("bench-raw-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let started = Instant::now();
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = 0;
        while seen < events {
            if let Some(Ok(message)) = consumer.poll(Duration::from_secs(10)) {
                std::hint::black_box(message.payload());
                seen += 1;
            }
        }
        seen
    })
    .await
    .unwrap();
    report("raw librdkafka consume", seen, started.elapsed());
}

#[tokio::main]
async fn main() {
    let events: usize = std::env::var("FLARE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let Some(broker) = TestBroker::start() else {
        return;
    };
    println!("{events} events of {PAYLOAD_BYTES} bytes, appends of {BATCH}, 4 partitions");
    let kafka = KafkaLog::connect(broker.config()).await.unwrap();
    through_event_log("KafkaLog (nisshi, memory)", Arc::new(kafka), events).await;
    raw_librdkafka(&broker.address(), events).await;
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedLog::open(EmbeddedLogConfig::in_dir(dir.path()))
        .await
        .unwrap();
    through_event_log("embedded log (fsync)", Arc::new(embedded), events).await;
}
