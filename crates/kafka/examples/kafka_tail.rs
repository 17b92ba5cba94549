//! Prints the records of Kafka topics as JSON lines, read through `KafkaLog` (a Flare consumer
//! group member). Used by the interop test that produces with another Kafka client.
//!
//! `cargo run -p flare-kafka --example kafka_tail -- BROKERS GROUP COUNT TOPIC...`
//! stops after COUNT records (or 30 s without a new one) and commits what it printed.

use std::time::Duration;

use flare_kafka::{KafkaConfig, KafkaLog};
use flare_log::{EventLog, StartFrom};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, group, count, topics @ ..] = args.as_slice() else {
        return Err("usage: kafka_tail BROKERS GROUP COUNT TOPIC...".into());
    };
    let count: usize = count.parse()?;
    let config = KafkaConfig {
        brokers: brokers.split(',').map(str::to_owned).collect(),
        ..KafkaConfig::default()
    };
    let log = KafkaLog::connect(config).await?;
    let mut consumer = log.consumer(group, topics, StartFrom::Earliest).await?;
    let mut printed = 0;
    while printed < count {
        let records = consumer
            .poll(count - printed, Duration::from_secs(30))
            .await?;
        if records.is_empty() {
            break;
        }
        for record in &records {
            let headers: Vec<_> = record
                .headers
                .iter()
                .map(|h| json!([h.key, String::from_utf8_lossy(&h.value)]))
                .collect();
            let line = json!({
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "timestamp": record.timestamp_ms,
                "key": record.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                "headers": headers,
                "value": String::from_utf8_lossy(&record.payload),
            });
            println!("{line}");
            consumer.commit(record).await?;
        }
        printed += records.len();
    }
    Ok(())
}
