//! Errors of the Kafka backend. Through the [`EventLog`](flare_log::EventLog) trait they surface
//! as [`LogError`]; the typed form is for callers that hold a [`KafkaLog`](crate::KafkaLog).

use flare_log::LogError;
use rdkafka::error::RDKafkaErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("invalid Kafka configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot create a Kafka client: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    #[error("cannot reach the Kafka brokers {brokers}: {source}")]
    Unreachable {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "kafka.max_record_bytes ({configured}) is larger than the broker's message.max.bytes \
         ({broker}) minus batch framing: records that size would be refused"
    )]
    RecordLimitAboveBroker { configured: usize, broker: usize },
    /// ListOffsets by timestamp (Kafka 0.10.1+) failed; some Kafka-protocol brokers lack it.
    #[error(
        "the broker cannot look up offsets by timestamp in {topic}/{partition} ({code}); \
         seek by offset instead"
    )]
    TimestampLookup {
        topic: String,
        partition: u32,
        code: RDKafkaErrorCode,
    },
    #[error("Kafka request failed: {0}")]
    Request(#[source] rdkafka::error::KafkaError),
}

impl From<KafkaError> for LogError {
    fn from(err: KafkaError) -> Self {
        LogError::Backend(err.to_string())
    }
}

/// A librdkafka failure as a log error.
pub(crate) fn backend(err: rdkafka::error::KafkaError) -> LogError {
    LogError::Backend(err.to_string())
}
