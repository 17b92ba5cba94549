//! The embedded consumer: every partition of its topics, woken on append.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio::{sync::watch, time::Instant};

use super::{EmbeddedLog, Partition};
use crate::{Consumer, EventLog, LogError, Record, StartFrom};

struct Assignment {
    partition: Arc<Partition>,
    /// The next offset this consumer reads.
    position: u64,
}

pub(crate) struct EmbeddedConsumer {
    log: EmbeddedLog,
    group: String,
    assignments: Vec<Assignment>,
    /// Where the next poll starts, so that one busy partition cannot starve the others.
    next_assignment: usize,
    appended: watch::Receiver<u64>,
}

impl EmbeddedConsumer {
    pub async fn new(
        log: EmbeddedLog,
        group: &str,
        topics: &[String],
        start: StartFrom,
    ) -> Result<Self, LogError> {
        let shared = log.inner.shared.clone();
        // Subscribe before reading positions so that no append can slip between the two.
        let appended = shared.generation.subscribe();
        let mut assignments = Vec::new();
        for name in topics {
            let topic = match shared.topic(name) {
                Some(topic) => topic,
                None if shared.read_only => shared.existing_topic(name)?,
                None => {
                    log.ensure_topic(name, shared.config.default_partitions)
                        .await?;
                    shared.existing_topic(name)?
                }
            };
            for partition in &topic.partitions {
                let committed = log.committed(group, name, partition.id).await?;
                let (start_offset, end_offset) = partition.offsets();
                let position = committed.unwrap_or(match start {
                    StartFrom::Earliest => start_offset,
                    StartFrom::Latest => end_offset,
                });
                assignments.push(Assignment {
                    partition: partition.clone(),
                    position,
                });
            }
        }
        Ok(Self {
            log,
            group: group.to_owned(),
            assignments,
            next_assignment: 0,
            appended,
        })
    }

    fn assignment(&mut self, topic: &str, partition: u32) -> Result<&mut Assignment, LogError> {
        if !self.assignments.iter().any(|a| a.partition.topic == topic) {
            return Err(LogError::UnknownTopic(topic.to_owned()));
        }
        self.assignments
            .iter_mut()
            .find(|a| a.partition.topic == topic && a.partition.id == partition)
            .ok_or_else(|| LogError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
            })
    }

    /// Reads what is available now, round-robin over partitions, without waiting.
    async fn read_available(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        let mut records = Vec::new();
        let count = self.assignments.len();
        for step in 0..count {
            if records.len() >= max {
                break;
            }
            let index = (self.next_assignment + step) % count;
            let assignment = &mut self.assignments[index];
            let (start, end) = assignment.partition.offsets();
            if assignment.position < start {
                tracing::warn!(
                    group = %self.group,
                    topic = %assignment.partition.topic,
                    partition = assignment.partition.id,
                    position = assignment.position,
                    start,
                    skipped = start - assignment.position,
                    "records before the consumer's position were deleted by retention; \
                     continuing from the oldest retained record"
                );
                assignment.position = start;
            }
            if assignment.position >= end {
                continue;
            }
            let partition = assignment.partition.clone();
            let (position, wanted) = (assignment.position, max - records.len());
            let batch = tokio::task::spawn_blocking(move || partition.read(position, wanted))
                .await
                .map_err(|e| LogError::Backend(format!("read task failed: {e}")))??;
            if let Some(last) = batch.last() {
                assignment.position = last.offset + 1;
            }
            records.extend(batch);
        }
        if count > 0 {
            self.next_assignment = (self.next_assignment + 1) % count;
        }
        Ok(records)
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<Record>, LogError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + timeout;
        loop {
            // Mark the current generation seen *before* reading: an append published after the
            // read then still wakes the wait below.
            self.appended.borrow_and_update();
            let records = self.read_available(max).await?;
            if !records.is_empty() {
                return Ok(records);
            }
            match tokio::time::timeout_at(deadline, self.appended.changed()).await {
                Err(_elapsed) => return Ok(Vec::new()),
                Ok(Err(_closed)) => return Err(LogError::Closed),
                Ok(Ok(())) => {}
            }
        }
    }

    async fn commit(&mut self, record: &Record) -> Result<(), LogError> {
        self.log
            .commit(
                &self.group,
                &record.topic,
                record.partition,
                record.offset + 1,
            )
            .await
    }

    async fn seek(&mut self, topic: &str, partition: u32, offset: u64) -> Result<(), LogError> {
        self.assignment(topic, partition)?.position = offset;
        Ok(())
    }

    async fn seek_to_time(&mut self, timestamp_ms: i64) -> Result<(), LogError> {
        for assignment in &mut self.assignments {
            let partition = assignment.partition.clone();
            assignment.position =
                tokio::task::spawn_blocking(move || partition.offset_for_time(timestamp_ms))
                    .await
                    .map_err(|e| LogError::Backend(format!("seek task failed: {e}")))??;
        }
        Ok(())
    }
}
