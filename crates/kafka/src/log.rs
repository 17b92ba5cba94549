//! [`KafkaLog`]: the [`EventLog`] contract on a Kafka-protocol broker.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use flare_log::{
    Consumer, EventLog, Header, LogError, NewRecord, Position, Record, StartFrom, TopicInfo,
    partitioner::partition_for_key, validate_topic_name,
};
use parking_lot::{Mutex, RwLock};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication},
    client::DefaultClientContext,
    config::FromClientConfig,
    consumer::{BaseConsumer, CommitMode, Consumer as _},
    error::{KafkaError as RdError, RDKafkaErrorCode},
    message::{BorrowedMessage, Headers, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode as Code,
};

use crate::{KafkaConfig, KafkaError, consumer::KafkaConsumer, error::backend};

/// Room Kafka's record-batch framing takes beyond key, headers and payload (batch header 61
/// bytes, record varints): the producer and created topics allow this much on top of
/// `max_record_bytes`.
pub(crate) const BATCH_OVERHEAD_BYTES: usize = 1024;

/// The event log on Apache Kafka (or any Kafka-protocol broker), through librdkafka.
///
/// Appends go through one idempotent producer (`acks=all`, `enable.idempotence=true`), so a
/// retried send never duplicates or reorders records of a partition. Keyed records are placed
/// with Kafka's murmur2 partitioner computed here, so a key lands in the same partition as with
/// the Java client and the embedded log, whatever `partitioner` librdkafka is configured with.
/// Consumer groups use Kafka's group protocol with manual commits only.
#[derive(Clone)]
pub struct KafkaLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.inner.config.brokers)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    pub(crate) timeout: Duration,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Metadata, watermarks and timestamp lookups; no group.
    meta: BaseConsumer,
    /// Range reads: assigned to one partition at a time, so reads take turns.
    reader: Mutex<BaseConsumer>,
    /// One group-bound client per group for `committed`/`commit` outside a consumer.
    group_clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    /// Partition counts of topics known to exist (a topic's count never shrinks).
    partitions: RwLock<HashMap<String, u32>>,
    /// Round-robin placement of keyless records.
    next_keyless: AtomicU32,
}

impl KafkaLog {
    /// Connects to the brokers (failing if none answers within `request_timeout_ms`) and
    /// checks `max_record_bytes` against the broker's `message.max.bytes` where the broker
    /// reports it.
    pub async fn connect(config: KafkaConfig) -> Result<Self, KafkaError> {
        config.validate()?;
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let base = config.client_config();
        let message_max = (config.max_record_bytes + BATCH_OVERHEAD_BYTES).to_string();

        let mut producer_config = base.clone();
        producer_config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.max.bytes", &message_max)
            .set("linger.ms", "1")
            .set("message.timeout.ms", "300000");
        // Raw properties win over Flare's defaults, but idempotence stays: it is what keeps
        // retries from duplicating or reordering events.
        for (key, value) in &config.properties {
            producer_config.set(key, value);
        }
        producer_config
            .set("acks", "all")
            .set("enable.idempotence", "true");
        let producer: FutureProducer = producer_config.create().map_err(KafkaError::Client)?;
        let admin = AdminClient::from_config(&base).map_err(KafkaError::Client)?;

        let mut meta_config = base.clone();
        meta_config.set("allow.auto.create.topics", "false");
        let meta: BaseConsumer = meta_config.create().map_err(KafkaError::Client)?;
        let mut reader_config = meta_config.clone();
        // librdkafka assigns partitions only in a consumer with a group id; the reader never
        // subscribes nor commits, so the group stays empty.
        reader_config
            .set("group.id", format!("{}-range-reader", config.client_id))
            .set("enable.partition.eof", "true")
            .set("fetch.max.bytes", message_max.as_str())
            .set("enable.auto.commit", "false");
        let reader: BaseConsumer = reader_config.create().map_err(KafkaError::Client)?;

        let log = Self {
            inner: Arc::new(Inner {
                config,
                timeout,
                producer,
                admin,
                meta,
                reader: Mutex::new(reader),
                group_clients: Mutex::new(HashMap::new()),
                partitions: RwLock::new(HashMap::new()),
                next_keyless: AtomicU32::new(0),
            }),
        };
        let inner = log.inner.clone();
        blocking(move || inner.meta.fetch_metadata(None, inner.timeout).map(|_| ()))
            .await
            .map_err(|source| KafkaError::Unreachable {
                brokers: log.inner.config.brokers.join(","),
                source,
            })?;
        log.check_broker_record_limit().await?;
        Ok(log)
    }

    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Largest record (key, headers, payload) this log appends.
    pub fn max_record_bytes(&self) -> usize {
        self.inner.config.max_record_bytes
    }

    /// Refuses a `max_record_bytes` above what the broker accepts. Brokers without
    /// DescribeConfigs cannot tell; then records too large for them fail at append time.
    async fn check_broker_record_limit(&self) -> Result<(), KafkaError> {
        let inner = self.inner.clone();
        let broker_ids: Vec<i32> = blocking(move || {
            inner
                .meta
                .fetch_metadata(None, inner.timeout)
                .map(|m| m.brokers().iter().map(|b| b.id()).collect())
        })
        .await
        .map_err(KafkaError::Request)?;
        let Some(broker_id) = broker_ids.first().copied() else {
            return Ok(());
        };
        let options = AdminOptions::new().request_timeout(Some(self.inner.timeout));
        let described = self
            .inner
            .admin
            .describe_configs([&ResourceSpecifier::Broker(broker_id)], &options)
            .await;
        let limit = match described {
            Ok(results) => results.into_iter().find_map(|result| {
                result
                    .ok()?
                    .get("message.max.bytes")?
                    .value
                    .as_deref()?
                    .parse::<usize>()
                    .ok()
            }),
            Err(_) => None,
        };
        match limit {
            Some(broker) if self.inner.config.max_record_bytes + 100 > broker => {
                Err(KafkaError::RecordLimitAboveBroker {
                    configured: self.inner.config.max_record_bytes,
                    broker,
                })
            }
            Some(_) => Ok(()),
            None => {
                tracing::debug!(
                    "the broker did not report message.max.bytes; records too large for it \
                     will fail at append time"
                );
                Ok(())
            }
        }
    }

    /// The partition count of `topic`, or `None` if the broker does not know it.
    pub(crate) async fn partition_count(&self, topic: &str) -> Result<Option<u32>, LogError> {
        if let Some(&count) = self.inner.partitions.read().get(topic) {
            return Ok(Some(count));
        }
        let inner = self.inner.clone();
        let name = topic.to_owned();
        blocking(move || inner.fetch_partition_count(&name)).await
    }

    async fn existing_partition_count(&self, topic: &str) -> Result<u32, LogError> {
        self.partition_count(topic)
            .await?
            .ok_or_else(|| LogError::UnknownTopic(topic.to_owned()))
    }

    async fn check_partition(&self, topic: &str, partition: u32) -> Result<(), LogError> {
        validate_topic_name(topic)?;
        let count = self.existing_partition_count(topic).await?;
        if partition >= count {
            return Err(LogError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            });
        }
        Ok(())
    }

    /// Creates the topic if it is missing and waits until every partition has a leader.
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<u32, LogError> {
        let max_message = (self.inner.config.max_record_bytes + BATCH_OVERHEAD_BYTES).to_string();
        let new_topic = NewTopic::new(
            topic,
            partitions as i32,
            TopicReplication::Fixed(i32::from(self.inner.config.replication_factor)),
        )
        .set("max.message.bytes", &max_message);
        let options = AdminOptions::new().operation_timeout(Some(self.inner.timeout));
        let results = self
            .inner
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(backend)?;
        for result in results {
            match result {
                Ok(_) | Err((_, Code::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::Backend(format!(
                        "creating topic {name} failed: {code}"
                    )));
                }
            }
        }
        // Creation is asynchronous on the brokers: wait until metadata shows the topic.
        let deadline = Instant::now() + self.inner.timeout;
        loop {
            if let Some(count) = self.partition_count(topic).await? {
                return Ok(count);
            }
            if Instant::now() >= deadline {
                return Err(LogError::Backend(format!(
                    "topic {topic} was created but did not appear in the brokers' metadata \
                     within {:?}",
                    self.inner.timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client bound to `group`, for offset reads and commits outside a group member.
    fn group_client(&self, group: &str) -> Result<Arc<BaseConsumer>, LogError> {
        let mut clients = self.inner.group_clients.lock();
        if let Some(client) = clients.get(group) {
            return Ok(client.clone());
        }
        let mut config = self.inner.config.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("allow.auto.create.topics", "false");
        let client: BaseConsumer = config.create().map_err(backend)?;
        let client = Arc::new(client);
        clients.insert(group.to_owned(), client.clone());
        Ok(client)
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Inner {
    /// Asks the brokers for a topic's partition count (blocking). `None` if it does not exist;
    /// a topic whose partitions have no leader yet counts as not existing yet.
    fn fetch_partition_count(&self, topic: &str) -> Result<Option<u32>, LogError> {
        let metadata = self
            .meta
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(backend)?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        if found.error().is_some()
            || found.partitions().is_empty()
            || found
                .partitions()
                .iter()
                .any(|p| p.error().is_some() || p.leader() < 0)
        {
            return Ok(None);
        }
        let count = found.partitions().len() as u32;
        self.partitions.write().insert(topic.to_owned(), count);
        Ok(Some(count))
    }

    pub(crate) fn watermarks(&self, topic: &str, partition: u32) -> Result<(u64, u64), LogError> {
        let (low, high) = self
            .meta
            .fetch_watermarks(topic, partition as i32, self.timeout)
            .map_err(backend)?;
        Ok((low.max(0) as u64, high.max(0) as u64))
    }

    /// The first offset at or after `timestamp_ms` (ListOffsets by timestamp), or the end.
    pub(crate) fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, KafkaError> {
        let mut query = TopicPartitionList::new();
        query
            .add_partition_offset(topic, partition as i32, Offset::Offset(timestamp_ms.max(0)))
            .map_err(KafkaError::Request)?;
        let unsupported = |code| KafkaError::TimestampLookup {
            topic: topic.to_owned(),
            partition,
            code,
        };
        let answer = self
            .meta
            .offsets_for_times(query, self.timeout)
            .map_err(|err| match err.rdkafka_error_code() {
                Some(code) => unsupported(code),
                None => KafkaError::Request(err),
            })?;
        let element = answer
            .find_partition(topic, partition as i32)
            .ok_or_else(|| unsupported(RDKafkaErrorCode::UnknownTopicOrPartition))?;
        if let Err(err) = element.error() {
            return Err(unsupported(
                err.rdkafka_error_code()
                    .unwrap_or(RDKafkaErrorCode::Unknown),
            ));
        }
        match element.offset() {
            Offset::Offset(offset) if offset >= 0 => Ok(offset as u64),
            // No record at or after the timestamp: Kafka answers -1, the trait wants the end.
            _ => self
                .meta
                .fetch_watermarks(topic, partition as i32, self.timeout)
                .map(|(_, high)| high.max(0) as u64)
                .map_err(KafkaError::Request),
        }
    }
}

/// Runs blocking librdkafka calls off the async threads.
pub(crate) async fn blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: Send + 'static + From<JoinFailure>,
{
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| Err(E::from(JoinFailure(err.to_string()))))
}

/// A blocking task that panicked or was cancelled.
#[derive(Debug)]
pub(crate) struct JoinFailure(String);

impl From<JoinFailure> for LogError {
    fn from(err: JoinFailure) -> Self {
        LogError::Backend(format!("a Kafka client task failed: {}", err.0))
    }
}

impl From<JoinFailure> for RdError {
    fn from(_: JoinFailure) -> Self {
        RdError::Canceled
    }
}

impl From<JoinFailure> for KafkaError {
    fn from(_: JoinFailure) -> Self {
        KafkaError::Request(RdError::Canceled)
    }
}

/// Key, headers and payload: what `max_record_bytes` limits.
fn record_size(record: &NewRecord) -> usize {
    record.key.as_ref().map_or(0, Vec::len)
        + record.payload.len()
        + record
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>()
}

/// A fetched message as a log record.
pub(crate) fn to_record(message: &BorrowedMessage<'_>) -> Record {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| Header::new(h.key, h.value.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Record {
        topic: message.topic().to_owned(),
        partition: message.partition().max(0) as u32,
        offset: message.offset().max(0) as u64,
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        key: message.key().map(<[u8]>::to_vec),
        headers,
        payload: message.payload().unwrap_or_default().to_vec(),
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        validate_topic_name(topic)?;
        if self.partition_count(topic).await?.is_none() {
            self.create_topic(topic, partitions.max(1)).await?;
        }
        Ok(())
    }

    async fn topics(&self) -> Result<Vec<TopicInfo>, LogError> {
        let inner = self.inner.clone();
        blocking(move || {
            let metadata = inner
                .meta
                .fetch_metadata(None, inner.timeout)
                .map_err(backend)?;
            let mut topics = Vec::new();
            // Names starting with `__` are the brokers' own (offsets, transactions, schemas).
            for topic in metadata
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.name().starts_with("__"))
            {
                let partitions = topic.partitions().len() as u32;
                let mut info = TopicInfo {
                    name: topic.name().to_owned(),
                    partitions,
                    start_offsets: Vec::with_capacity(partitions as usize),
                    end_offsets: Vec::with_capacity(partitions as usize),
                };
                for partition in 0..partitions {
                    let (low, high) = inner.watermarks(topic.name(), partition)?;
                    info.start_offsets.push(low);
                    info.end_offsets.push(high);
                }
                inner
                    .partitions
                    .write()
                    .insert(info.name.clone(), partitions);
                topics.push(info);
            }
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(topics)
        })
        .await
    }

    async fn append(
        &self,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Position>, LogError> {
        validate_topic_name(topic)?;
        let max = self.inner.config.max_record_bytes;
        if let Some(size) = records.iter().map(record_size).find(|&size| size > max) {
            return Err(LogError::RecordTooLarge { size, max });
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let partitions = match self.partition_count(topic).await? {
            Some(count) => count,
            None => {
                self.create_topic(topic, self.inner.config.partitions)
                    .await?
            }
        };
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let partition = match &record.key {
                Some(key) => partition_for_key(key, partitions),
                None => self.inner.next_keyless.fetch_add(1, Ordering::Relaxed) % partitions,
            };
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for header in &record.headers {
                headers = headers.insert(rdkafka::message::Header {
                    key: &header.key,
                    value: Some(&header.value),
                });
            }
            let mut message = FutureRecord::to(topic)
                .partition(partition as i32)
                .payload(&record.payload)
                .headers(headers);
            if let Some(key) = &record.key {
                message = message.key(key);
            }
            if let Some(timestamp) = record.timestamp_ms {
                message = message.timestamp(timestamp);
            }
            // Enqueue strictly in the given order; when librdkafka's queue is full, wait for
            // room rather than letting a later record overtake this one.
            loop {
                match self.inner.producer.send_result(message) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((RdError::MessageProduction(Code::QueueFull), returned)) => {
                        message = returned;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((err, _)) => return Err(produce_error(err, record_size(record), max)),
                }
            }
        }
        let mut positions = Vec::with_capacity(deliveries.len());
        for (delivery, record) in deliveries.into_iter().zip(&records) {
            match delivery.await {
                Ok(Ok(delivered)) => positions.push(Position {
                    partition: delivered.partition.max(0) as u32,
                    offset: delivered.offset.max(0) as u64,
                }),
                Ok(Err((err, _))) => return Err(produce_error(err, record_size(record), max)),
                Err(_) => return Err(LogError::Closed),
            }
        }
        Ok(positions)
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Record>, LogError> {
        self.check_partition(topic, partition).await?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        blocking(move || inner.read_range(&topic, partition, offset, max)).await
    }

    async fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<u64, LogError> {
        self.check_partition(topic, partition).await?;
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        blocking(move || {
            inner
                .offset_for_time(&topic, partition, timestamp_ms)
                .map_err(LogError::from)
        })
        .await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, LogError> {
        validate_topic_name(topic)?;
        let client = self.group_client(group)?;
        let timeout = self.inner.timeout;
        let topic = topic.to_owned();
        blocking(move || {
            let mut query = TopicPartitionList::new();
            query.add_partition(&topic, partition as i32);
            let answer = client.committed_offsets(query, timeout).map_err(backend)?;
            Ok(answer
                .find_partition(&topic, partition as i32)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) if offset >= 0 => Some(offset as u64),
                    _ => None,
                }))
        })
        .await
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        next_offset: u64,
    ) -> Result<(), LogError> {
        validate_topic_name(topic)?;
        let client = self.group_client(group)?;
        let topic = topic.to_owned();
        blocking(move || {
            let mut offsets = TopicPartitionList::new();
            offsets
                .add_partition_offset(&topic, partition as i32, Offset::Offset(next_offset as i64))
                .map_err(backend)?;
            client.commit(&offsets, CommitMode::Sync).map_err(backend)
        })
        .await
    }

    async fn consumer(
        &self,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Box<dyn Consumer>, LogError> {
        for topic in topics {
            self.ensure_topic(topic, self.inner.config.partitions)
                .await?;
        }
        let consumer = KafkaConsumer::join(self.clone(), group, topics, start).await?;
        Ok(Box::new(consumer))
    }
}

impl Inner {
    /// Reads `[offset, offset + max)` of one partition, clamped to what the broker retains,
    /// without waiting for records that do not exist yet.
    fn read_range(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<Record>, LogError> {
        let (low, high) = self.watermarks(topic, partition)?;
        let start = offset.max(low);
        if start >= high {
            return Ok(Vec::new());
        }
        let end = high.min(start.saturating_add(max as u64));
        let reader = self.reader.lock();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition as i32, Offset::Offset(start as i64))
            .map_err(backend)?;
        reader.assign(&assignment).map_err(backend)?;
        let mut records = Vec::with_capacity((end - start) as usize);
        let deadline = Instant::now() + self.timeout;
        let result = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break Err(LogError::Backend(format!(
                    "reading {topic}/{partition} from offset {start} timed out after {:?}",
                    self.timeout
                )));
            }
            match reader.poll(remaining.min(Duration::from_millis(200))) {
                Some(Ok(message)) => {
                    let in_range = message.topic() == topic
                        && message.partition() == partition as i32
                        && (start as i64..end as i64).contains(&message.offset());
                    if in_range {
                        records.push(to_record(&message));
                    }
                    if message.offset() + 1 >= end as i64 && in_range {
                        break Ok(());
                    }
                }
                // The end of the partition as of this fetch: offsets below `end` that never
                // came were not records (transaction markers, compacted away).
                Some(Err(RdError::PartitionEOF(p))) if p == partition as i32 => break Ok(()),
                Some(Err(err)) => {
                    tracing::debug!(error = %err, topic, partition, "transient error while reading")
                }
                None => {}
            }
        };
        if let Err(err) = reader.unassign() {
            tracing::warn!(error = %err, "unassigning the range reader failed");
        }
        result.map(|()| records)
    }
}

/// A produce failure as a log error; size refusals keep their meaning.
fn produce_error(err: RdError, size: usize, max: usize) -> LogError {
    match err.rdkafka_error_code() {
        Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize) => {
            LogError::RecordTooLarge { size, max }
        }
        Some(Code::UnknownTopicOrPartition) => LogError::Backend(format!(
            "the broker does not know the topic or partition: {err}"
        )),
        _ => backend(err),
    }
}
