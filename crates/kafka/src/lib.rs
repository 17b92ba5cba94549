//! The event log on Apache Kafka or any Kafka-protocol broker (Redpanda, MSK, Confluent
//! Cloud), through librdkafka: [`KafkaLog`] implements [`flare_log::EventLog`] and passes the
//! same conformance suite as the embedded log.
//!
//! - [`KafkaConfig`]: brokers, topic defaults, SASL/TLS and raw librdkafka properties (the
//!   `[kafka]` section of Flare's config).
//! - [`KafkaLog`]: idempotent producer, admin-created topics, range reads, timestamp lookups.
//! - [`KafkaConsumer`]: a consumer-group member with manual commits.
//! - `test_broker` (cargo feature `test-broker`): starts a throwaway local broker for tests.
//!
//! Flare never uses Kafka transactions: the outbox relay and idempotent consumers (events carry
//! their id and outbox sequence number) give at-least-once delivery without duplicated effects.

mod config;
mod consumer;
mod error;
mod log;
#[cfg(feature = "test-broker")]
pub mod test_broker;

pub use config::{KafkaConfig, KafkaSecurity, SaslMechanism, SecurityProtocol, brokers_from_url};
pub use consumer::KafkaConsumer;
pub use error::KafkaError;
pub use log::KafkaLog;
