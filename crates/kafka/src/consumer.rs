//! [`KafkaConsumer`]: a member of a Kafka consumer group behind the [`Consumer`] trait.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use flare_log::{Consumer, LogError, Record, StartFrom};
use parking_lot::Mutex;
use rdkafka::{
    ClientContext, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, RebalanceProtocol},
    types::RDKafkaRespErr,
};

use crate::{
    KafkaLog,
    error::backend,
    log::{blocking, to_record},
};

/// How long one blocking `poll` of librdkafka may last while draining what is ready.
const DRAIN_STEP: Duration = Duration::from_millis(0);

/// Callbacks of a group member: positions on assignment, and the member's fetched records.
pub(crate) struct GroupContext {
    start: StartFrom,
    timeout: Duration,
    /// Records fetched but not yet handed out. Kept here so that a cancelled `poll` loses
    /// nothing, and so that a revocation can drop records of partitions this member lost.
    buffer: Mutex<VecDeque<Record>>,
    /// Assignments and revocations seen; `join` waits for the first.
    rebalances: AtomicU64,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    // Assigns explicit positions instead of leaving them to librdkafka: with `Latest`,
    // librdkafka would resolve "the end" only when fetching starts, and a record appended in
    // between would be skipped although the member was already in the group.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let positioned = self.start_positions(consumer, partitions);
                if cooperative {
                    consumer.incremental_assign(&positioned)
                } else {
                    consumer.assign(&positioned)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Records of lost partitions go to their new owner from the committed offset.
                let revoked: Vec<(String, i32)> = partitions
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                self.buffer.lock().retain(|record| {
                    !revoked
                        .iter()
                        .any(|(t, p)| *t == record.topic && *p == record.partition as i32)
                });
                if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "consumer group rebalance failed");
                consumer.unassign()
            }
        };
        if let Err(err) = result {
            tracing::error!(error = %err, "applying a consumer group assignment failed");
        }
        self.rebalances.fetch_add(1, Ordering::Release);
    }
}

impl GroupContext {
    /// The committed offset of each assigned partition, else the start the member asked for.
    fn start_positions(
        &self,
        consumer: &BaseConsumer<Self>,
        assigned: &TopicPartitionList,
    ) -> TopicPartitionList {
        let committed = match consumer.committed_offsets(assigned.clone(), self.timeout) {
            Ok(committed) => committed,
            Err(err) => {
                tracing::warn!(error = %err, "reading committed offsets on assignment failed; librdkafka positions the partitions");
                return assigned.clone();
            }
        };
        let mut positioned = TopicPartitionList::with_capacity(assigned.count());
        for element in committed.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let offset = match (element.offset(), self.start) {
                (Offset::Offset(offset), _) if offset >= 0 => Offset::Offset(offset),
                (_, StartFrom::Earliest) => Offset::Beginning,
                (_, StartFrom::Latest) => {
                    match consumer.fetch_watermarks(topic, partition, self.timeout) {
                        Ok((_, high)) => Offset::Offset(high),
                        Err(_) => Offset::End,
                    }
                }
            };
            if let Err(err) = positioned.add_partition_offset(topic, partition, offset) {
                tracing::warn!(error = %err, topic, partition, "cannot position a partition");
            }
        }
        positioned
    }
}

/// A member of a Kafka consumer group with manual commits.
pub struct KafkaConsumer {
    /// `None` only while dropping: closing is handed to a blocking thread.
    member: Option<Arc<BaseConsumer<GroupContext>>>,
    /// Serialises librdkafka polls, so that a cancelled poll still running cannot interleave
    /// its records with the next poll's.
    poll_lock: Arc<Mutex<()>>,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer").finish_non_exhaustive()
    }
}

impl KafkaConsumer {
    /// Joins `group`, subscribed to `topics`, and returns once the group assigned this member
    /// its partitions (possibly none, if other members hold them all).
    pub(crate) async fn join(
        log: KafkaLog,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Self, LogError> {
        let inner = log.inner().clone();
        let mut config = inner.config.client_config();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set("allow.auto.create.topics", "false")
            // Return a fetch as soon as records exist; idle members wait at most this long.
            .set("fetch.wait.max.ms", "100")
            .set(
                "fetch.message.max.bytes",
                (inner.config.max_record_bytes + crate::log::BATCH_OVERHEAD_BYTES).to_string(),
            );
        for (key, value) in &inner.config.properties {
            config.set(key, value);
        }
        let context = GroupContext {
            start,
            timeout: inner.timeout,
            buffer: Mutex::new(VecDeque::new()),
            rebalances: AtomicU64::new(0),
        };
        let consumer: BaseConsumer<GroupContext> =
            config.create_with_context(context).map_err(backend)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(backend)?;
        let consumer = Arc::new(consumer);
        let member = Self {
            member: Some(consumer.clone()),
            poll_lock: Arc::new(Mutex::new(())),
            timeout: inner.timeout,
        };
        // Joining happens inside polls; records that arrive meanwhile wait in the buffer.
        let deadline = Instant::now() + inner.timeout * 2;
        let poll_lock = member.poll_lock.clone();
        blocking(move || {
            let _polling = poll_lock.lock();
            while consumer.context().rebalances.load(Ordering::Acquire) == 0 {
                if Instant::now() >= deadline {
                    return Err(LogError::Backend(
                        "timed out joining the consumer group".into(),
                    ));
                }
                fetch_into_buffer(&consumer, Duration::from_millis(100), 1);
            }
            Ok(())
        })
        .await?;
        Ok(member)
    }

    fn client(&self) -> Result<Arc<BaseConsumer<GroupContext>>, LogError> {
        self.member.clone().ok_or(LogError::Closed)
    }

    fn buffered(&self, max: usize) -> Vec<Record> {
        let Some(member) = &self.member else {
            return Vec::new();
        };
        let mut buffer = member.context().buffer.lock();
        let take = max.min(buffer.len());
        buffer.drain(..take).collect()
    }

    async fn assigned(&self, topic: &str, partition: u32) -> Result<bool, LogError> {
        let consumer = self.client()?;
        let topic = topic.to_owned();
        blocking(move || {
            let assignment = consumer.assignment().map_err(backend)?;
            Ok(assignment
                .find_partition(&topic, partition as i32)
                .is_some())
        })
        .await
    }
}

/// Polls librdkafka into the buffer: waits up to `wait` for a first record, then takes what
/// is ready, up to `max` records.
fn fetch_into_buffer(consumer: &BaseConsumer<GroupContext>, wait: Duration, max: usize) {
    let mut fetched = 0;
    let mut step = wait;
    while fetched < max {
        match consumer.poll(step) {
            Some(Ok(message)) => {
                consumer
                    .context()
                    .buffer
                    .lock()
                    .push_back(to_record(&message));
                fetched += 1;
            }
            Some(Err(err)) => {
                // librdkafka retries broker and network failures itself; they are reported
                // here for information.
                tracing::warn!(error = %err, "Kafka consumer error");
            }
            None => break,
        }
        step = DRAIN_STEP;
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, LogError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let ready = self.buffered(max);
        if !ready.is_empty() {
            return Ok(ready);
        }
        let consumer = self.client()?;
        let poll_lock = self.poll_lock.clone();
        blocking(move || {
            let _polling = poll_lock.lock();
            if consumer.context().buffer.lock().is_empty() {
                fetch_into_buffer(&consumer, timeout, max);
            }
            Ok::<_, LogError>(())
        })
        .await?;
        Ok(self.buffered(max))
    }

    async fn commit(&mut self, record: &Record) -> Result<(), LogError> {
        let consumer = self.client()?;
        let (topic, partition, next) = (
            record.topic.clone(),
            record.partition as i32,
            record.offset as i64 + 1,
        );
        blocking(move || {
            let mut offsets = TopicPartitionList::new();
            offsets
                .add_partition_offset(&topic, partition, Offset::Offset(next))
                .map_err(backend)?;
            consumer.commit(&offsets, CommitMode::Sync).map_err(backend)
        })
        .await
    }

    async fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        if !self.assigned(topic, partition).await? {
            return Err(LogError::Backend(format!(
                "{topic}/{partition} is not assigned to this consumer"
            )));
        }
        let consumer = self.client()?;
        let poll_lock = self.poll_lock.clone();
        let timeout = self.timeout;
        let topic = topic.to_owned();
        blocking(move || {
            let _polling = poll_lock.lock();
            consumer
                .seek(
                    &topic,
                    partition as i32,
                    Offset::Offset(offset as i64),
                    timeout,
                )
                .map_err(backend)?;
            consumer
                .context()
                .buffer
                .lock()
                .retain(|r| !(r.topic == topic && r.partition == partition));
            Ok(())
        })
        .await
    }

    async fn seek_to_time(&mut self, timestamp_ms: i64) -> Result<(), LogError> {
        let consumer = self.client()?;
        let assignment = blocking(move || consumer.assignment().map_err(backend)).await?;
        let mut targets = Vec::new();
        for element in assignment.elements() {
            let (topic, partition) = (element.topic().to_owned(), element.partition() as u32);
            targets.push((topic, partition));
        }
        for (topic, partition) in targets {
            let consumer = self.client()?;
            let timeout = self.timeout;
            let found = blocking(move || {
                let mut query = TopicPartitionList::new();
                query
                    .add_partition_offset(
                        &topic,
                        partition as i32,
                        Offset::Offset(timestamp_ms.max(0)),
                    )
                    .map_err(backend)?;
                let answer = consumer
                    .offsets_for_times(query, timeout)
                    .map_err(|err| timestamp_error(&topic, partition, &err))?;
                let offset = match answer.find_partition(&topic, partition as i32) {
                    Some(element) => {
                        if let Err(err) = element.error() {
                            return Err(timestamp_error(&topic, partition, &err));
                        }
                        element.offset()
                    }
                    None => Offset::End,
                };
                Ok((topic, partition, offset))
            })
            .await?;
            let (topic, partition, offset) = found;
            let offset = match offset {
                Offset::Offset(offset) if offset >= 0 => offset as u64,
                // No record at or after the timestamp: continue from the end.
                _ => {
                    let consumer = self.client()?;
                    let (topic, timeout) = (topic.clone(), self.timeout);
                    blocking(move || {
                        consumer
                            .fetch_watermarks(&topic, partition as i32, timeout)
                            .map(|(_, high)| high.max(0) as u64)
                            .map_err(backend)
                    })
                    .await?
                }
            };
            self.seek(&topic, partition, offset).await?;
        }
        Ok(())
    }
}

fn timestamp_error(topic: &str, partition: u32, err: &rdkafka::error::KafkaError) -> LogError {
    crate::KafkaError::TimestampLookup {
        topic: topic.to_owned(),
        partition,
        code: err
            .rdkafka_error_code()
            .unwrap_or(rdkafka::error::RDKafkaErrorCode::Unknown),
    }
    .into()
}

impl Drop for KafkaConsumer {
    // Closing leaves the group (a network round trip): do it off the async threads.
    fn drop(&mut self) {
        if let (Some(member), Ok(runtime)) =
            (self.member.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn_blocking(move || drop(member));
        }
    }
}
