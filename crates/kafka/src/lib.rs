//! Apache Kafka backend of the event log (rdkafka).
