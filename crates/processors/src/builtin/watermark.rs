//! The idle-patient watermark clock of `qsofa`.
//!
//! The qSOFA engine moves a patient's watermark only with that patient's own evidence, so an
//! episode of a patient who gets no more vitals would stay active for ever. The clock follows
//! the alerts topic to know the active episodes and, every [`IdleResolution::every_ms`],
//! appends a watermark record (`{"to": "<instant>"}`, keyed by the patient) to
//! [`WATERMARK_TOPIC`] for each active episode whose end lies before the idle watermark:
//!
//! - `event-time`: the newest effective time the processor has seen for *any* patient, minus
//!   the allowed lateness; it follows the data, so replays of old data resolve as they went;
//! - `wall-clock`: now minus the allowed lateness, for live feeds where some wards go quiet.
//!
//! The `qsofa` processor applies the record like evidence, in partition order, through
//! `PatientQsofa::advance_watermark`; the instant is in the record, so a replay after a crash
//! resolves exactly as the first run did.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use flare_clinical::{Timestamp, alerts};
use flare_log::{EventLog, LogError, NewRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Where the clock appends watermark records for `qsofa`.
pub const WATERMARK_TOPIC: &str = "fhir.qsofa.watermark";

/// No effective time seen yet.
pub const NOTHING_SEEN: i64 = i64::MIN;

/// Which clock resolves the episodes of idle patients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleClock {
    /// Episodes resolve only with the patient's own newer evidence.
    #[default]
    Off,
    /// The newest effective time seen for any patient, minus the allowed lateness.
    EventTime,
    /// The wall clock minus the allowed lateness.
    WallClock,
}

/// `[processors.qsofa.idle]`.
///
/// ```toml
/// [processors.qsofa.idle]
/// clock = "event-time"    # "off" (default), "event-time" or "wall-clock"
/// every_ms = 60000        # default 1 min
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdleResolution {
    /// Default `off`: episodes of historic data loaded into a live server would otherwise
    /// resolve at once under the wall clock, so the clock is chosen on purpose.
    pub clock: IdleClock,
    /// How often the clock looks for elapsed episodes. Default 60000 ms.
    pub every_ms: u64,
}

impl Default for IdleResolution {
    fn default() -> Self {
        Self {
            clock: IdleClock::Off,
            every_ms: 60_000,
        }
    }
}

/// The watermark record's payload.
pub fn watermark_payload(to: Timestamp) -> Vec<u8> {
    json!({"to": to.to_rfc3339()}).to_string().into_bytes()
}

/// Reads a watermark record's payload.
pub fn parse_watermark(payload: &[u8]) -> Option<Timestamp> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    Timestamp::parse_fhir(value.get("to")?.as_str()?)
}

/// An active episode as the clock knows it from the alerts topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ActiveEpisode {
    patient_key: String,
    end_ms: i64,
    /// The idle watermark last sent for it, so each elapsed episode is nudged once.
    sent: bool,
}

/// The clock's view: active episodes from the alerts topic, read incrementally.
pub struct WatermarkClock {
    log: Arc<dyn EventLog>,
    settings: IdleResolution,
    lateness_ms: i64,
    latest_effective_ms: Arc<AtomicI64>,
    positions: Vec<u64>,
    active: HashMap<String, ActiveEpisode>,
}

impl WatermarkClock {
    /// `latest_effective_ms` is shared with the processor, which raises it with every
    /// measurement it applies ([`NOTHING_SEEN`] before the first).
    pub fn new(
        log: Arc<dyn EventLog>,
        settings: IdleResolution,
        allowed_lateness: Duration,
        latest_effective_ms: Arc<AtomicI64>,
    ) -> Self {
        Self {
            log,
            settings,
            lateness_ms: i64::try_from(allowed_lateness.as_millis()).unwrap_or(i64::MAX),
            latest_effective_ms,
            positions: Vec::new(),
            active: HashMap::new(),
        }
    }

    /// The idle watermark now, if the clock has one.
    fn idle_watermark(&self) -> Option<Timestamp> {
        let base = match self.settings.clock {
            IdleClock::Off => return None,
            IdleClock::EventTime => {
                let seen = self.latest_effective_ms.load(Ordering::Relaxed);
                if seen == NOTHING_SEEN {
                    return None;
                }
                seen
            }
            IdleClock::WallClock => {
                let now = time::OffsetDateTime::now_utc();
                i64::try_from(now.unix_timestamp_nanos() / 1_000_000).ok()?
            }
        };
        Some(Timestamp::from_millis(
            base.saturating_sub(self.lateness_ms),
        ))
    }

    /// Reads the alert messages appended since the last call.
    async fn follow_alerts(&mut self) -> Result<(), LogError> {
        let topics = self.log.topics().await?;
        let Some(info) = topics.iter().find(|t| t.name == alerts::ALERTS_TOPIC) else {
            return Ok(());
        };
        let partitions = usize::try_from(info.partitions).unwrap_or(0);
        if self.positions.len() < partitions {
            self.positions.resize(partitions, 0);
        }
        for (partition, position) in self.positions.iter_mut().enumerate() {
            let partition = u32::try_from(partition).unwrap_or(u32::MAX);
            loop {
                let records = self
                    .log
                    .read(alerts::ALERTS_TOPIC, partition, *position, 1000)
                    .await?;
                let Some(last) = records.last() else { break };
                *position = last.offset + 1;
                for record in &records {
                    let Ok(message) = serde_json::from_slice::<Value>(&record.payload) else {
                        continue;
                    };
                    track(&mut self.active, &message);
                }
            }
        }
        Ok(())
    }

    /// One round: follows the alerts, then appends a watermark record for every active
    /// episode that ended before the idle watermark. Returns how many were appended.
    pub async fn tick(&mut self) -> Result<usize, LogError> {
        self.follow_alerts().await?;
        let Some(watermark) = self.idle_watermark() else {
            return Ok(0);
        };
        let mut records = Vec::new();
        for episode in self.active.values_mut() {
            if episode.sent || episode.end_ms >= watermark.as_millis() {
                continue;
            }
            episode.sent = true;
            records.push(NewRecord {
                key: Some(episode.patient_key.clone().into_bytes()),
                headers: Vec::new(),
                payload: watermark_payload(watermark),
                timestamp_ms: None,
            });
        }
        let appended = records.len();
        if appended > 0 {
            self.log.append(WATERMARK_TOPIC, records).await?;
        }
        Ok(appended)
    }

    /// Ticks every `every_ms` until `stop` says so (or its sender is gone).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if self.settings.clock == IdleClock::Off {
            return;
        }
        let mut interval =
            tokio::time::interval(Duration::from_millis(self.settings.every_ms.max(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {
                    if let Err(error) = self.tick().await {
                        tracing::warn!("the qsofa watermark clock could not tick: {error}");
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

/// Applies one alert message to the set of active episodes.
fn track(active: &mut HashMap<String, ActiveEpisode>, message: &Value) {
    let (Some(episode), Some(patient)) = (
        message.get("episodeId").and_then(Value::as_str),
        message.get("patient").and_then(Value::as_str),
    ) else {
        return;
    };
    let still_active = message.get("active").and_then(Value::as_bool) == Some(true);
    let end_ms = message
        .get("end")
        .and_then(Value::as_str)
        .and_then(Timestamp::parse_fhir)
        .map(Timestamp::as_millis);
    match (still_active, end_ms) {
        (true, Some(end_ms)) => {
            let entry = ActiveEpisode {
                patient_key: patient.to_owned(),
                end_ms,
                sent: false,
            };
            // A newer end (more evidence) may need another nudge later.
            let keep_sent = active
                .get(episode)
                .is_some_and(|known| known.sent && known.end_ms == end_ms);
            active.insert(
                episode.to_owned(),
                ActiveEpisode {
                    sent: keep_sent,
                    ..entry
                },
            );
        }
        _ => {
            active.remove(episode);
        }
    }
}
