//! Dead letters: records a processor gave up on, parked in `<topic>.dlq`.
//!
//! A dead letter is the original record (key, payload, headers) plus the headers `retryCount`
//! (retries made after the first attempt), `error`, `failedAt` (RFC 3339), and where it came
//! from: `flare-processor`, `flare-original-topic`, `-partition`, `-offset`.
//!
//! **Replay** appends the record to `<topic>.retry`, addressed to the processor that parked it
//! (`flare-processor`); every processor consumes the retry topics of its inputs and takes only
//! the records addressed to it, handing them to `process` as the original record (original
//! topic, partition and offset). Re-appending to the original topic was rejected: every other
//! consumer of that topic (subscriptions, other processors) would see the change twice.
//!
//! **Purge** cannot delete from an append-only log: it moves a watermark (the committed offset
//! of the group `flare-dlq-purged`) to the end of the dead-letter topic, and listings start
//! there. Retention removes the records themselves.
//!
//! After a crash, a record parked just before it may be parked again on replay (the DLQ append
//! is not part of the checkpoint); the two dead letters then share the same original
//! topic/partition/offset.

use std::{fmt, str::FromStr, sync::Arc};

use flare_log::{EventLog, Header, LogError, NewRecord, Position, Record};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Header names on dead letters and replays.
pub mod header {
    pub const RETRY_COUNT: &str = "retryCount";
    pub const ERROR: &str = "error";
    pub const FAILED_AT: &str = "failedAt";
    pub const PROCESSOR: &str = "flare-processor";
    pub const ORIGINAL_TOPIC: &str = "flare-original-topic";
    pub const ORIGINAL_PARTITION: &str = "flare-original-partition";
    pub const ORIGINAL_OFFSET: &str = "flare-original-offset";
    pub const REPLAY_OF: &str = "flare-replay-of";
    pub const EVENT_ID: &str = "eventId";

    /// Headers the runtime sets; copied headers with these names are replaced.
    pub(crate) const OWN: [&str; 8] = [
        RETRY_COUNT,
        ERROR,
        FAILED_AT,
        PROCESSOR,
        ORIGINAL_TOPIC,
        ORIGINAL_PARTITION,
        ORIGINAL_OFFSET,
        REPLAY_OF,
    ];
}

/// The consumer group whose committed offsets are the purge watermarks.
pub const PURGE_GROUP: &str = "flare-dlq-purged";

/// Longest `error` header kept; longer messages are cut.
const MAX_ERROR_BYTES: usize = 4096;

pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

pub fn retry_topic(topic: &str) -> String {
    format!("{topic}.retry")
}

pub fn is_dlq_topic(topic: &str) -> bool {
    topic.ends_with(".dlq")
}

pub fn is_retry_topic(topic: &str) -> bool {
    topic.ends_with(".retry")
}

fn original_headers(record: &Record) -> impl Iterator<Item = &Header> {
    record
        .headers
        .iter()
        .filter(|h| !header::OWN.contains(&h.key.as_str()))
}

fn cut(message: &str) -> &str {
    if message.len() <= MAX_ERROR_BYTES {
        return message;
    }
    let mut end = MAX_ERROR_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// The dead letter for `input` (already carrying its original topic/partition/offset).
pub(crate) fn dead_letter_record(
    input: &Record,
    processor: &str,
    error: &str,
    attempts: u32,
) -> NewRecord {
    let failed_at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let mut headers: Vec<Header> = original_headers(input).cloned().collect();
    headers.extend([
        Header::new(header::RETRY_COUNT, attempts.saturating_sub(1).to_string()),
        Header::new(header::ERROR, cut(error)),
        Header::new(header::FAILED_AT, failed_at),
        Header::new(header::PROCESSOR, processor),
        Header::new(header::ORIGINAL_TOPIC, input.topic.as_str()),
        Header::new(header::ORIGINAL_PARTITION, input.partition.to_string()),
        Header::new(header::ORIGINAL_OFFSET, input.offset.to_string()),
    ]);
    NewRecord {
        key: input.key.clone(),
        headers,
        payload: input.payload.clone(),
        timestamp_ms: Some(input.timestamp_ms),
    }
}

/// The original record behind a replay on a retry topic, if it is addressed to `processor`.
pub(crate) fn replayed_original(record: &Record, processor: &str) -> Option<Record> {
    if record.header_str(header::PROCESSOR) != Some(processor) {
        return None;
    }
    let fallback_topic = record.topic.strip_suffix(".retry").unwrap_or(&record.topic);
    Some(Record {
        topic: record
            .header_str(header::ORIGINAL_TOPIC)
            .unwrap_or(fallback_topic)
            .to_owned(),
        partition: record
            .header_str(header::ORIGINAL_PARTITION)
            .and_then(|p| p.parse().ok())
            .unwrap_or(record.partition),
        offset: record
            .header_str(header::ORIGINAL_OFFSET)
            .and_then(|o| o.parse().ok())
            .unwrap_or(record.offset),
        timestamp_ms: record.timestamp_ms,
        key: record.key.clone(),
        headers: original_headers(record).cloned().collect(),
        payload: record.payload.clone(),
    })
}

/// Names one dead letter: `<dlq topic>/<partition>/<offset>`, e.g. `fhir.Observation.dlq/0/12`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeadLetterId {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

impl fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

impl FromStr for DeadLetterId {
    type Err = DlqError;

    fn from_str(s: &str) -> Result<Self, DlqError> {
        let invalid = || DlqError::InvalidId(s.to_owned());
        let (rest, offset) = s.rsplit_once('/').ok_or_else(invalid)?;
        let (topic, partition) = rest.rsplit_once('/').ok_or_else(invalid)?;
        if !is_dlq_topic(topic) {
            return Err(invalid());
        }
        Ok(Self {
            topic: topic.to_owned(),
            partition: partition.parse().map_err(|_| invalid())?,
            offset: offset.parse().map_err(|_| invalid())?,
        })
    }
}

/// One parked record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: DeadLetterId,
    pub processor: Option<String>,
    pub original_topic: Option<String>,
    pub original_partition: Option<u32>,
    pub original_offset: Option<u64>,
    pub retry_count: Option<u32>,
    pub error: Option<String>,
    pub failed_at: Option<String>,
    /// The record as stored in the dead-letter topic.
    pub record: Record,
}

impl DeadLetter {
    fn from_record(record: Record) -> Self {
        let text = |name| record.header_str(name).map(str::to_owned);
        Self {
            id: DeadLetterId {
                topic: record.topic.clone(),
                partition: record.partition,
                offset: record.offset,
            },
            processor: text(header::PROCESSOR),
            original_topic: text(header::ORIGINAL_TOPIC),
            original_partition: text(header::ORIGINAL_PARTITION).and_then(|p| p.parse().ok()),
            original_offset: text(header::ORIGINAL_OFFSET).and_then(|o| o.parse().ok()),
            retry_count: text(header::RETRY_COUNT).and_then(|c| c.parse().ok()),
            error: text(header::ERROR),
            failed_at: text(header::FAILED_AT),
            record,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("`{0}` is not a dead-letter id: use <topic>.dlq/<partition>/<offset>")]
    InvalidId(String),
    #[error("`{0}` is not a dead-letter topic (its name ends in `.dlq`)")]
    NotADlqTopic(String),
    #[error(
        "dead letter {0} has no `flare-processor` header, so no processor would take its replay"
    )]
    NoProcessor(DeadLetterId),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Inspects, replays and purges dead letters on any [`EventLog`].
#[derive(Clone)]
pub struct DeadLetters {
    log: Arc<dyn EventLog>,
}

/// Records read per call while scanning a dead-letter partition.
const SCAN_BATCH: usize = 500;

impl DeadLetters {
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        Self { log }
    }

    /// The dead-letter topics with the number of records after the purge watermark.
    pub async fn topics(&self) -> Result<Vec<(String, u64)>, DlqError> {
        let mut out = Vec::new();
        for topic in self.log.topics().await? {
            if !is_dlq_topic(&topic.name) {
                continue;
            }
            let mut count = 0;
            for (partition, end) in topic.end_offsets.iter().enumerate() {
                let partition = u32::try_from(partition).unwrap_or(u32::MAX);
                let start = self.watermark(&topic.name, partition).await?;
                let retained = topic.start_offsets.get(partition as usize).copied();
                count += end.saturating_sub(start.max(retained.unwrap_or(0)));
            }
            out.push((topic.name, count));
        }
        Ok(out)
    }

    async fn watermark(&self, topic: &str, partition: u32) -> Result<u64, DlqError> {
        Ok(self
            .log
            .committed(PURGE_GROUP, topic, partition)
            .await?
            .unwrap_or(0))
    }

    /// Up to `limit` dead letters after the purge watermark, of one topic or of all, oldest
    /// first per partition.
    pub async fn list(
        &self,
        topic: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        if let Some(topic) = topic
            && !is_dlq_topic(topic)
        {
            return Err(DlqError::NotADlqTopic(topic.to_owned()));
        }
        let mut out = Vec::new();
        for info in self.log.topics().await? {
            if !is_dlq_topic(&info.name) || topic.is_some_and(|t| t != info.name) {
                continue;
            }
            for partition in 0..info.partitions {
                let mut offset = self.watermark(&info.name, partition).await?;
                while out.len() < limit {
                    let batch = self
                        .log
                        .read(
                            &info.name,
                            partition,
                            offset,
                            SCAN_BATCH.min(limit - out.len()),
                        )
                        .await?;
                    let Some(last) = batch.last() else { break };
                    offset = last.offset + 1;
                    out.extend(batch.into_iter().map(DeadLetter::from_record));
                }
            }
        }
        Ok(out)
    }

    /// One dead letter, if it is still retained.
    pub async fn show(&self, id: &DeadLetterId) -> Result<Option<DeadLetter>, DlqError> {
        let records = self.log.read(&id.topic, id.partition, id.offset, 1).await?;
        Ok(records
            .into_iter()
            .find(|r| r.offset == id.offset)
            .map(DeadLetter::from_record))
    }

    /// Appends the dead letter to `<original topic>.retry`, addressed to the processor that
    /// parked it, which then processes it again. Returns where the replay landed, or `None`
    /// when the dead letter is no longer retained.
    pub async fn replay(&self, id: &DeadLetterId) -> Result<Option<Position>, DlqError> {
        let Some(letter) = self.show(id).await? else {
            return Ok(None);
        };
        let processor = letter
            .processor
            .clone()
            .ok_or_else(|| DlqError::NoProcessor(id.clone()))?;
        let original_topic = letter.original_topic.clone().unwrap_or_else(|| {
            id.topic
                .strip_suffix(".dlq")
                .unwrap_or(&id.topic)
                .to_owned()
        });
        let record = &letter.record;
        let mut headers: Vec<Header> = original_headers(record).cloned().collect();
        headers.extend([
            Header::new(header::PROCESSOR, processor),
            Header::new(header::ORIGINAL_TOPIC, original_topic.as_str()),
            Header::new(
                header::ORIGINAL_PARTITION,
                letter
                    .original_partition
                    .unwrap_or(record.partition)
                    .to_string(),
            ),
            Header::new(
                header::ORIGINAL_OFFSET,
                letter.original_offset.unwrap_or(record.offset).to_string(),
            ),
            Header::new(header::REPLAY_OF, id.to_string()),
        ]);
        let replay = NewRecord {
            key: record.key.clone(),
            headers,
            payload: record.payload.clone(),
            timestamp_ms: Some(record.timestamp_ms),
        };
        let positions = self
            .log
            .append(&retry_topic(&original_topic), vec![replay])
            .await?;
        Ok(positions.into_iter().next())
    }

    /// Moves the purge watermark of `topic` (or of every dead-letter topic) to its end;
    /// returns how many dead letters it hid.
    pub async fn purge(&self, topic: Option<&str>) -> Result<u64, DlqError> {
        if let Some(topic) = topic
            && !is_dlq_topic(topic)
        {
            return Err(DlqError::NotADlqTopic(topic.to_owned()));
        }
        let mut purged = 0;
        for info in self.log.topics().await? {
            if !is_dlq_topic(&info.name) || topic.is_some_and(|t| t != info.name) {
                continue;
            }
            for (partition, end) in info.end_offsets.iter().enumerate() {
                let partition = u32::try_from(partition).unwrap_or(u32::MAX);
                let start = self.watermark(&info.name, partition).await?;
                purged += end.saturating_sub(start);
                self.log
                    .commit(PURGE_GROUP, &info.name, partition, *end)
                    .await?;
            }
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_refuse_other_topics() {
        let id: DeadLetterId = "fhir.Observation.dlq/2/17".parse().unwrap();
        assert_eq!(id.topic, "fhir.Observation.dlq");
        assert_eq!((id.partition, id.offset), (2, 17));
        assert_eq!(id.to_string(), "fhir.Observation.dlq/2/17");
        assert!("fhir.Observation/2/17".parse::<DeadLetterId>().is_err());
        assert!("fhir.Observation.dlq/x/17".parse::<DeadLetterId>().is_err());
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let message = "é".repeat(MAX_ERROR_BYTES);
        let cut = cut(&message);
        assert!(cut.len() <= MAX_ERROR_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
