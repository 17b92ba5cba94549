//! The outbox relay: moves outbox messages from the store onto the event log.
//!
//! The store commits each resource version together with its change event (an outbox row) in
//! one transaction; the relay then appends outbox rows to the log in commit order and forgets
//! them. Every record carries its outbox sequence number in a header, so after a crash between
//! "appended" and "forgotten" the relay finds what already reached the log and does not append
//! it twice: with a single writer (the embedded log, or Kafka with one relay) the log receives
//! each event exactly once.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use flare_log::{EventLog, Header, LogError, NewRecord};
use flare_store::{OutboxEntry, Store, StoreError};
use tokio::sync::watch;

use crate::header;

/// How many outbox entries the relay moves per round.
const BATCH: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading the outbox failed: {0}")]
    Store(#[from] StoreError),
    #[error("appending to the event log failed: {0}")]
    Log(#[from] LogError),
}

/// Counters the relay keeps, for `/metrics`.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Events appended to the log.
    pub relayed: AtomicU64,
    /// Outbox entries found already in the log during recovery (skipped, not re-appended).
    pub recovered_duplicates: AtomicU64,
    /// The highest outbox sequence number known to be in the log.
    pub last_seq: AtomicU64,
    /// Failed rounds (retried).
    pub errors: AtomicU64,
}

pub struct Relay {
    store: Arc<dyn Store>,
    log: Arc<dyn EventLog>,
    stats: Arc<RelayStats>,
}

impl Relay {
    pub fn new(store: Arc<dyn Store>, log: Arc<dyn EventLog>) -> Self {
        Self {
            store,
            log,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Moves everything pending now; returns how many entries were appended. Before the first
    /// round after a start, call [`Relay::recover`].
    pub async fn relay_pending(&self) -> Result<usize, RelayError> {
        let mut moved = 0;
        loop {
            let after = self.stats.last_seq.load(Ordering::Acquire);
            let entries = self.store.outbox_after(after, BATCH).await?;
            let Some(last) = entries.last().map(|e| e.seq) else {
                return Ok(moved);
            };
            moved += self.append(entries).await?;
            self.store.outbox_ack(last).await?;
            self.stats.last_seq.store(last, Ordering::Release);
        }
    }

    /// Finds pending outbox entries that already reached the log (a crash after the append and
    /// before the acknowledgement), acknowledges them without appending them again, and
    /// appends the rest.
    pub async fn recover(&self) -> Result<usize, RelayError> {
        let pending = self.store.outbox_after(0, usize::MAX).await?;
        let Some(last) = pending.last().map(|e| e.seq) else {
            return Ok(0);
        };
        let in_log = self.seqs_already_in_log(&pending).await?;
        let (done, todo): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|e| in_log.contains(&e.seq));
        if !done.is_empty() {
            tracing::warn!(
                count = done.len(),
                "outbox entries were already in the log after a restart; not appending them twice"
            );
            self.stats
                .recovered_duplicates
                .fetch_add(done.len() as u64, Ordering::Relaxed);
        }
        let moved = self.append(todo).await?;
        self.store.outbox_ack(last).await?;
        self.stats.last_seq.store(last, Ordering::Release);
        Ok(moved)
    }

    /// Runs until `shutdown` turns true: recovers, then relays every commit as it happens
    /// (woken by the store, no polling interval). Failed rounds are retried with backoff.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        while let Err(err) = self.recover().await {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %err, "outbox relay recovery failed; retrying");
            if sleep_or_shutdown(&mut shutdown, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        loop {
            match self.relay_pending().await {
                Ok(_) => backoff = Duration::from_millis(50),
                Err(err) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %err, "outbox relay round failed; retrying");
                    if sleep_or_shutdown(&mut shutdown, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                _ = self.store.outbox_changed() => {}
                _ = shutdown.changed() => {
                    // Drain what was committed before the shutdown request.
                    let _ = self.relay_pending().await;
                    return;
                }
            }
        }
    }

    /// Appends entries topic by topic, keeping commit order within each topic (and so within
    /// each key).
    async fn append(&self, entries: Vec<OutboxEntry>) -> Result<usize, RelayError> {
        let count = entries.len();
        let mut by_topic: BTreeMap<String, Vec<NewRecord>> = BTreeMap::new();
        for OutboxEntry { seq, message } in entries {
            let mut headers: Vec<Header> = message
                .headers
                .into_iter()
                .map(|(k, v)| Header::new(k, v))
                .collect();
            headers.push(Header::new(header::OUTBOX_SEQ, seq.to_string()));
            by_topic.entry(message.topic).or_default().push(NewRecord {
                key: message.key,
                headers,
                payload: message.payload,
                timestamp_ms: Some(message.timestamp_ms),
            });
        }
        for (topic, records) in by_topic {
            self.log.append(&topic, records).await?;
        }
        self.stats
            .relayed
            .fetch_add(count as u64, Ordering::Relaxed);
        Ok(count)
    }

    /// The outbox sequence numbers among `pending` that are already in the log. Only the tail
    /// of each partition can hold them, since the relay is the log's only writer of change
    /// events and appends in sequence order.
    async fn seqs_already_in_log(
        &self,
        pending: &[OutboxEntry],
    ) -> Result<HashSet<u64>, RelayError> {
        let topics: HashSet<&str> = pending.iter().map(|e| e.message.topic.as_str()).collect();
        let lowest = pending.first().map_or(0, |e| e.seq);
        let mut found = HashSet::new();
        for info in self.log.topics().await? {
            if !topics.contains(info.name.as_str()) {
                continue;
            }
            for (partition, (&start, &end)) in
                info.start_offsets.iter().zip(&info.end_offsets).enumerate()
            {
                let tail = (pending.len() as u64).min(end - start);
                let records = self
                    .log
                    .read(&info.name, partition as u32, end - tail, tail as usize)
                    .await?;
                found.extend(
                    records
                        .iter()
                        .filter_map(|r| r.header_str(header::OUTBOX_SEQ)?.parse::<u64>().ok())
                        .filter(|seq| *seq >= lowest),
                );
            }
        }
        Ok(found)
    }
}

/// Sleeps for `delay`; returns true if shutdown was requested meanwhile.
async fn sleep_or_shutdown(shutdown: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
