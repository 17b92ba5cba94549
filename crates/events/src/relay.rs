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
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use flare_log::{EventLog, Header, LogError, NewRecord};
use flare_store::{OutboxEntry, Store, StoreError};
use tokio::sync::watch;

use crate::header;

/// How many outbox entries the relay moves per round.
const BATCH: usize = 2_000;

/// Shortest time between two syncs of the log (and acknowledgements of the outbox) while the
/// relay runs: each is an fsync of the log's files and a store commit, competing for the disk
/// with the writes; the outbox keeps what waits meanwhile, so nothing depends on it but the
/// outbox's size.
const ACK_INTERVAL: Duration = Duration::from_millis(50);

/// How often the backlog is measured while a round is stuck (a broker outage, say).
const LAG_PROBE_INTERVAL: Duration = Duration::from_secs(1);

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
    /// The highest outbox sequence number known to be committed (lags behind commits while
    /// the relay keeps up; measured while a round is stuck).
    committed_seq: AtomicU64,
    /// Commit time (ms since the epoch) of the oldest entry not yet in the log; 0 when none.
    oldest_pending_ms: AtomicI64,
}

/// How far the log is behind the store's commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayLag {
    /// Committed outbox entries not yet in the log.
    pub pending: u64,
    /// How long the oldest of them has been waiting, in milliseconds (0 when none).
    pub oldest_age_ms: u64,
}

impl RelayStats {
    /// The lag as of `now_ms` (ms since the epoch).
    pub fn lag(&self, now_ms: i64) -> RelayLag {
        let relayed = self.last_seq.load(Ordering::Acquire);
        let committed = self.committed_seq.load(Ordering::Acquire);
        let pending = committed.saturating_sub(relayed);
        let oldest = self.oldest_pending_ms.load(Ordering::Acquire);
        let oldest_age_ms = if pending == 0 || oldest == 0 {
            0
        } else {
            u64::try_from(now_ms.saturating_sub(oldest)).unwrap_or(0)
        };
        RelayLag {
            pending,
            oldest_age_ms,
        }
    }

    /// The relay's counters and lag in the Prometheus text format, for `/metrics`.
    pub fn render_prometheus(&self, now_ms: i64) -> String {
        let lag = self.lag(now_ms);
        format!(
            "# HELP flare_outbox_pending Committed change events not yet appended to the log.\n\
             # TYPE flare_outbox_pending gauge\n\
             flare_outbox_pending {}\n\
             # HELP flare_outbox_oldest_pending_age_seconds How long the oldest change event not yet in the log has waited.\n\
             # TYPE flare_outbox_oldest_pending_age_seconds gauge\n\
             flare_outbox_oldest_pending_age_seconds {:.3}\n\
             # HELP flare_outbox_recovered_duplicates_total Outbox entries found already in the log after a restart or failed round (not appended twice).\n\
             # TYPE flare_outbox_recovered_duplicates_total counter\n\
             flare_outbox_recovered_duplicates_total {}\n",
            lag.pending,
            lag.oldest_age_ms as f64 / 1000.0,
            self.recovered_duplicates.load(Ordering::Relaxed),
        )
    }

    /// Records a batch read from the outbox: everything up to `last` is committed, and
    /// `oldest_ms` is when the first entry not yet in the log was committed.
    fn saw_pending(&self, last: u64, oldest_ms: i64) {
        self.committed_seq.fetch_max(last, Ordering::AcqRel);
        // Keep an older value: the first entry of a later batch is not the oldest pending.
        let _ = self.oldest_pending_ms.compare_exchange(
            0,
            oldest_ms.max(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Records that everything up to `seq` is in the log.
    fn relayed_up_to(&self, seq: u64) {
        self.last_seq.store(seq, Ordering::Release);
        self.committed_seq.fetch_max(seq, Ordering::AcqRel);
        self.oldest_pending_ms.store(0, Ordering::Release);
    }
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

    /// Moves everything pending now, makes it durable in the log and forgets it in the outbox;
    /// returns how many entries were appended. Before the first round after a start, call
    /// [`Relay::recover`].
    pub async fn relay_pending(&self) -> Result<usize, RelayError> {
        let moved = self.append_pending().await?;
        if moved > 0 {
            self.sync_and_ack(self.stats.last_seq.load(Ordering::Acquire))
                .await?;
        }
        Ok(moved)
    }

    /// Appends everything pending now, without waiting for the log to sync it and without
    /// acknowledging it in the outbox (see [`Relay::sync_and_ack`]).
    async fn append_pending(&self) -> Result<usize, RelayError> {
        let mut moved = 0;
        loop {
            let after = self.stats.last_seq.load(Ordering::Acquire);
            let entries = self.store.outbox_after(after, BATCH).await?;
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                return Ok(moved);
            };
            let last = last.seq;
            self.stats.saw_pending(last, first.message.timestamp_ms);
            moved += self.append(entries).await?;
            self.stats.relayed_up_to(last);
        }
    }

    /// Makes everything appended so far durable in the log, then forgets the outbox entries up
    /// to `seq`. Until then the outbox keeps them (durable since their commit), so the log's
    /// appends need not each wait for a sync: after a crash, [`Relay::recover`] appends again
    /// whatever the log lost.
    async fn sync_and_ack(&self, seq: u64) -> Result<(), RelayError> {
        self.log.sync().await?;
        self.store.outbox_ack(seq).await?;
        Ok(())
    }

    /// Finds pending outbox entries that already reached the log (a crash after the append and
    /// before the acknowledgement), acknowledges them without appending them again, and
    /// appends the rest.
    pub async fn recover(&self) -> Result<usize, RelayError> {
        let pending = self.store.outbox_after(0, usize::MAX).await?;
        let (Some(first), Some(last)) = (pending.first(), pending.last()) else {
            return Ok(0);
        };
        let last = last.seq;
        self.stats.saw_pending(last, first.message.timestamp_ms);
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
        self.sync_and_ack(last).await?;
        self.stats.relayed_up_to(last);
        Ok(moved)
    }

    /// Runs until `shutdown` turns true: recovers, then relays every commit as it happens
    /// (woken by the store, no polling interval). A failed round (the log unreachable, say) is
    /// retried with backoff, through [`Relay::recover`]: part of the batch may have reached the
    /// log before the failure, and must not be appended twice. Meanwhile writes keep
    /// committing to the outbox, and the backlog is measured for [`RelayStats::lag`].
    ///
    /// Appends reach consumers without waiting for a log sync; syncing the log and
    /// acknowledging the outbox run alongside, at most every 50 ms, one sync covering every
    /// round appended meanwhile.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let (relayed, relayed_seen) = watch::channel(0);
        tokio::join!(
            self.relay_rounds(shutdown, relayed),
            self.ack_rounds(relayed_seen)
        );
    }

    /// Syncs the log and acknowledges the outbox up to each sequence number the relay rounds
    /// announce; after they stop, once more for the last one.
    async fn ack_rounds(&self, mut relayed: watch::Receiver<u64>) {
        let mut acked = 0;
        loop {
            let seq = *relayed.borrow_and_update();
            if seq > acked {
                match self.sync_and_ack(seq).await {
                    Ok(()) => {
                        acked = seq;
                        tokio::time::sleep(ACK_INTERVAL).await;
                    }
                    Err(err) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %err, "syncing the log or acknowledging the outbox failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                continue;
            }
            if relayed.changed().await.is_err() {
                let seq = *relayed.borrow();
                if seq > acked
                    && let Err(err) = self.sync_and_ack(seq).await
                {
                    tracing::warn!(error = %err, "the last outbox acknowledgement failed; the next start relays those entries again (not twice)");
                }
                return;
            }
        }
    }

    async fn relay_rounds(&self, mut shutdown: watch::Receiver<bool>, relayed: watch::Sender<u64>) {
        let mut backoff = Duration::from_millis(50);
        let mut needs_recovery = true;
        loop {
            let round = async {
                if needs_recovery {
                    self.recover().await
                } else {
                    self.append_pending().await
                }
            };
            match self.measuring_backlog(round).await {
                Ok(_) => {
                    backoff = Duration::from_millis(50);
                    needs_recovery = false;
                    relayed.send_replace(self.stats.last_seq.load(Ordering::Acquire));
                }
                Err(err) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %err, "outbox relay round failed; retrying");
                    needs_recovery = true;
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
                    // Drain what was committed before the shutdown request; dropping
                    // `relayed` lets the acknowledgements finish with it.
                    if !needs_recovery && self.append_pending().await.is_ok() {
                        relayed.send_replace(self.stats.last_seq.load(Ordering::Acquire));
                    }
                    return;
                }
            }
        }
    }

    /// Runs `round`, measuring meanwhile how many entries were committed behind it.
    async fn measuring_backlog<T>(&self, round: impl Future<Output = T>) -> T {
        tokio::pin!(round);
        let mut probe = tokio::time::interval(LAG_PROBE_INTERVAL);
        // The first tick is immediate: a round that finishes at once needs no probe.
        probe.tick().await;
        loop {
            tokio::select! {
                result = &mut round => return result,
                _ = probe.tick() => self.probe_backlog().await,
            }
        }
    }

    /// Reads forward from the highest sequence number known to be committed, to learn the
    /// newest one; each entry is read once by the probe, however long the outage.
    async fn probe_backlog(&self) {
        loop {
            let after = self
                .stats
                .committed_seq
                .load(Ordering::Acquire)
                .max(self.stats.last_seq.load(Ordering::Acquire));
            match self.store.outbox_after(after, BATCH).await {
                Ok(entries) => {
                    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                        return;
                    };
                    self.stats.saw_pending(last.seq, first.message.timestamp_ms);
                    if entries.len() < BATCH {
                        return;
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "measuring the outbox backlog failed");
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
            self.log.append_unsynced(&topic, records).await?;
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
