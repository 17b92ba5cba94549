//! The `[processors]` config section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::builtin::{pager::PagerConfig, watermark::IdleResolution};

/// Which processors run and how.
///
/// ```toml
/// [processors]
/// enabled = ["qsofa", "immunizations"]
/// state = "embedded"                 # or "redis://127.0.0.1:6379/0"
/// allowed_lateness_ms = 7200000      # 2 h
///
/// [processors.checkpoint]
/// every_records = 1000
/// every_ms = 1000
///
/// [processors.retry]
/// base_ms = 100
/// factor = 2.0
/// max_delay_ms = 5000
/// max_attempts = 5
///
/// [processors.qsofa.idle]            # see `builtin::watermark::IdleResolution`
/// clock = "event-time"               # default "off"
///
/// [processors.qsofa.pager]           # optional, see `builtin::pager::PagerConfig`
/// routing_key = "R0UTINGKEY"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorsConfig {
    /// Processors to run, by name (see `builtin::BUILTIN_PROCESSORS`). Default `["qsofa", "immunizations"]`.
    pub enabled: Vec<String>,
    /// The state backend: `embedded` (a SQLite file `processors.db` in the data dir), or a
    /// `redis://host:port/db` URL. Default `embedded`.
    pub state: String,
    /// How far behind the newest event time seen (per patient, for qSOFA) an out-of-order
    /// record is still applied, in milliseconds. Default 2 hours.
    pub allowed_lateness_ms: u64,
    pub checkpoint: CheckpointPolicy,
    pub retry: RetryPolicy,
    /// Settings of the `qsofa` processor and its companions.
    pub qsofa: QsofaSettings,
}

/// `[processors.qsofa]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QsofaSettings {
    /// The pager webhook the `qsofa-pager` processor sends alerts to. Default: none (the
    /// `qsofa-pager` processor refuses to start without it).
    pub pager: Option<PagerConfig>,
    /// How episodes of patients without newer evidence resolve. Default: `clock = "off"`.
    pub idle: IdleResolution,
}

impl Default for ProcessorsConfig {
    fn default() -> Self {
        Self {
            enabled: vec!["qsofa".into(), "immunizations".into()],
            state: "embedded".into(),
            allowed_lateness_ms: 2 * 60 * 60 * 1000,
            checkpoint: CheckpointPolicy::default(),
            retry: RetryPolicy::default(),
            qsofa: QsofaSettings::default(),
        }
    }
}

/// When state and offsets are checkpointed: after `every_records` records or `every_ms`
/// milliseconds, whichever comes first (and on shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointPolicy {
    /// Default 1000.
    pub every_records: u64,
    /// Default 1000 ms.
    pub every_ms: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every_records: 1000,
            every_ms: 1000,
        }
    }
}

impl CheckpointPolicy {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.every_ms.max(1))
    }
}

/// Exponential backoff for a failing record: attempt `n` (1-based) waits
/// `min(base_ms * factor^(n-1), max_delay_ms)` before the next try; after `max_attempts`
/// attempts the record is parked in the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Default 100 ms.
    pub base_ms: u64,
    /// Default 2.0.
    pub factor: f64,
    /// Default 5000 ms.
    pub max_delay_ms: u64,
    /// Attempts in all, the first included. Default 5.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_ms: 100,
            factor: 2.0,
            max_delay_ms: 5000,
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let millis = (self.base_ms as f64) * factor.powi(exponent);
        let capped = millis.min(self.max_delay_ms as f64).max(0.0);
        Duration::from_millis(capped as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_the_factor_up_to_the_cap() {
        let policy = RetryPolicy {
            base_ms: 100,
            factor: 3.0,
            max_delay_ms: 1000,
            max_attempts: 10,
        };
        let delays: Vec<u128> = (1..=5).map(|n| policy.delay_after(n).as_millis()).collect();
        assert_eq!(delays, [100, 300, 900, 1000, 1000]);
    }

    #[test]
    fn the_section_parses_and_refuses_unknown_keys() {
        let parsed: ProcessorsConfig =
            toml::from_str("state = \"redis://127.0.0.1:6379/0\"\n[retry]\nmax_attempts = 2\n")
                .unwrap();
        assert_eq!(parsed.retry.max_attempts, 2);
        assert_eq!(parsed.retry.base_ms, 100);
        assert!(toml::from_str::<ProcessorsConfig>("retries = 3").is_err());
        assert_eq!(parsed.qsofa.pager, None);
        let paged: ProcessorsConfig = toml::from_str(
            "[qsofa.pager]\nrouting_key = \"K\"\nendpoints.allow = [\"127.0.0.0/8\"]\n",
        )
        .unwrap();
        let pager = paged.qsofa.pager.unwrap();
        assert_eq!(pager.routing_key, "K");
        assert!(!pager.endpoints.allow.is_empty());
        assert_eq!(
            paged.qsofa.idle.clock,
            crate::builtin::watermark::IdleClock::Off
        );
        let idle: ProcessorsConfig =
            toml::from_str("[qsofa.idle]\nclock = \"wall-clock\"\nevery_ms = 5000\n").unwrap();
        assert_eq!(
            idle.qsofa.idle.clock,
            crate::builtin::watermark::IdleClock::WallClock
        );
        assert_eq!(idle.qsofa.idle.every_ms, 5000);
        assert!(toml::from_str::<ProcessorsConfig>("[qsofa.idle]\nclock = \"sundial\"\n").is_err());
    }
}
