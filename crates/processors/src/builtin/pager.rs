//! `qsofa-pager`: pages on-call staff for qSOFA alert episodes through a PagerDuty Events API
//! v2 webhook.
//!
//! A consumer group of its own over [`alerts::ALERTS_TOPIC`] rather than a call inside the
//! `qsofa` processor: a slow or failing pager never holds sepsis screening up, and the
//! group's offsets make delivery restart-safe (an alert published before a crash is paged
//! after the restart). Raised and updated episodes send `trigger`, resolved ones `resolve`,
//! all with the episode id as `dedup_key`, so a trigger sent again after a crash (the runtime
//! delivers at least once) folds into the same PagerDuty incident instead of paging twice.
//!
//! Failures are outcomes of the runtime: a retryable answer (5xx, 408, 429, timeouts,
//! transport errors) is retried with the pager's own backoff ([`PagerConfig::retry`]) and then
//! dead-lettered; a refusal (another 4xx, an endpoint the policy forbids) is logged and
//! dead-lettered at once. `flare dlq replay` sends parked pages again once the cause is fixed.

use async_trait::async_trait;
use flare_clinical::{
    AlertEvent, Criterion, Timestamp, alerts,
    qsofa::{Episode, EvidenceRef, ResolveReason},
};
use flare_log::Record;
use flare_outbound::{
    BuildError, Deliverer, DeliveryConfig, EndpointPolicy, EndpointPolicyConfig, Post,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Context, Outcome, ProcessError, Processor, RetryPolicy};

/// The processor's name (its consumer group).
pub const NAME: &str = "qsofa-pager";

/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// `[processors.qsofa.pager]`: where qSOFA alerts are paged. Absent by default (no paging).
///
/// ```toml
/// [processors.qsofa.pager]
/// routing_key = "R0UTINGKEY"                          # required
/// url = "https://events.pagerduty.com/v2/enqueue"     # default
/// source = "flare"                                    # default
/// endpoints.allow = ["127.0.0.0/8"]                   # default: public https only
///
/// [processors.qsofa.pager.retry]                      # defaults shown
/// base_ms = 1000
/// factor = 2.0
/// max_delay_ms = 30000
/// max_attempts = 8
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerConfig {
    /// The Events API v2 URL. Default [`PAGERDUTY_EVENTS_URL`].
    #[serde(default = "default_url")]
    pub url: String,
    /// The integration (routing) key of the PagerDuty service.
    pub routing_key: String,
    /// `payload.source` of every event: the system that raised it. Default `flare`.
    #[serde(default = "default_source")]
    pub source: String,
    /// Which non-public or plain-http endpoints may be called. Default: public https only.
    #[serde(default)]
    pub endpoints: EndpointPolicyConfig,
    /// Timeouts and limits of each call. Default: `DeliveryConfig::default()` (10 s).
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Backoff for retryable failures before a page is dead-lettered. The pager has its own
    /// policy, longer than the processors' default, because an outage of the paging service
    /// lasts longer than a store conflict. Default 1 s, ×2, at most 30 s, 8 attempts (about
    /// 1 min 40 s in all).
    #[serde(default = "default_retry")]
    pub retry: RetryPolicy,
}

fn default_url() -> String {
    PAGERDUTY_EVENTS_URL.to_owned()
}

fn default_source() -> String {
    "flare".to_owned()
}

fn default_retry() -> RetryPolicy {
    RetryPolicy {
        base_ms: 1000,
        factor: 2.0,
        max_delay_ms: 30_000,
        max_attempts: 8,
    }
}

/// Sends the alert messages of [`alerts::ALERTS_TOPIC`] to the pager.
pub struct PagerProcessor {
    deliverer: Deliverer,
    config: PagerConfig,
}

impl PagerProcessor {
    pub fn new(config: PagerConfig) -> Result<Self, BuildError> {
        let policy = EndpointPolicy::from_config(&config.endpoints);
        let deliverer = Deliverer::new(policy, config.delivery.clone())?;
        Ok(Self { deliverer, config })
    }
}

#[async_trait]
impl Processor for PagerProcessor {
    /// Stateless: PagerDuty keeps the incident per `dedup_key`.
    type State = ();

    const ROLLBACK: bool = false;

    fn name(&self) -> &str {
        NAME
    }

    fn topics(&self) -> Vec<String> {
        vec![alerts::ALERTS_TOPIC.to_owned()]
    }

    async fn process(
        &self,
        _key: &str,
        _state: &mut (),
        record: &Record,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ProcessError> {
        let message: Value = serde_json::from_slice(&record.payload)
            .map_err(|e| ProcessError::permanent(format!("the alert message is not JSON: {e}")))?;
        if message.get("type").and_then(Value::as_str) != Some("qsofa") {
            return Ok(Outcome::Unchanged);
        }
        let event = alert_event_from_message(&message).map_err(ProcessError::permanent)?;
        let body = alerts::pagerduty_event(&event, &self.config.routing_key, &self.config.source);
        let post = Post::new(
            self.config.url.clone(),
            "application/json",
            body.to_string().into_bytes().into(),
        );
        let delivery = self.deliverer.post(&post).await;
        let episode = &event.episode().id;
        if delivery.outcome.is_success() {
            tracing::debug!(episode, attempt = ctx.attempt(), "paged");
            return Ok(Outcome::Unchanged);
        }
        let message = format!(
            "paging episode {episode} failed: {:?}{}",
            delivery.outcome,
            if delivery.body.is_empty() {
                String::new()
            } else {
                let shown = &delivery.body[..delivery.body.len().min(300)];
                format!(" ({})", String::from_utf8_lossy(shown))
            }
        );
        if delivery.outcome.is_retryable() {
            tracing::warn!(attempt = ctx.attempt(), "{message}");
            Err(ProcessError::retryable(message))
        } else {
            tracing::error!("{message}");
            Err(ProcessError::permanent(message))
        }
    }
}

/// Reads back an alert message ([`alerts::alert_message`]) as the engine's [`AlertEvent`], so
/// the PagerDuty body comes from [`alerts::pagerduty_event`] like everywhere else.
pub fn alert_event_from_message(message: &Value) -> Result<AlertEvent, String> {
    let text = |name: &str| {
        message
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the alert message has no `{name}`"))
    };
    let time = |name: &str| {
        text(name).and_then(|value| {
            Timestamp::parse_fhir(value).ok_or_else(|| format!("`{name}` is not a time: {value}"))
        })
    };
    let patient = text("patient")?;
    let basis = message
        .get("basis")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|item| {
            let reference = item.get("reference").and_then(Value::as_str).unwrap_or("");
            let criterion: Criterion = item
                .get("criterion")
                .cloned()
                .and_then(|c| serde_json::from_value(c).ok())
                .ok_or_else(|| format!("a basis entry has no known criterion: {item}"))?;
            let effective = item
                .get("effective")
                .and_then(Value::as_str)
                .and_then(Timestamp::parse_fhir)
                .ok_or_else(|| format!("a basis entry has no effective time: {item}"))?;
            Ok(EvidenceRef {
                observation_id: reference
                    .strip_prefix("Observation/")
                    .unwrap_or(reference)
                    .to_owned(),
                criterion,
                effective,
                value: item
                    .get("value")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let episode = Episode {
        id: text("episodeId")?.to_owned(),
        patient_id: patient
            .strip_prefix("Patient/")
            .unwrap_or(patient)
            .to_owned(),
        onset: time("onset")?,
        peak_at: time("peakAt")?,
        end: time("end")?,
        score: message
            .get("score")
            .and_then(Value::as_u64)
            .and_then(|s| u8::try_from(s).ok())
            .ok_or("the alert message has no score")?,
        basis,
        active: message
            .get("active")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    match text("action")? {
        "raised" => Ok(AlertEvent::Raised { episode }),
        "updated" => Ok(AlertEvent::Updated { episode }),
        "resolved" => {
            let reason = match message.get("resolution").and_then(Value::as_str) {
                Some("withdrawn") => ResolveReason::Withdrawn,
                Some("merged") => ResolveReason::Merged(
                    message
                        .get("mergedInto")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                ),
                _ => ResolveReason::Elapsed,
            };
            Ok(AlertEvent::Resolved { episode, reason })
        }
        other => Err(format!("unknown alert action `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn episode(active: bool) -> Episode {
        let t = |text: &str| Timestamp::parse_fhir(text).unwrap();
        Episode {
            id: "qsofa-0123456789abcdef0123456789abcdef".into(),
            patient_id: "p1".into(),
            onset: t("2024-01-01T10:00:00Z"),
            peak_at: t("2024-01-01T11:00:00Z"),
            end: t("2024-01-01T16:00:00Z"),
            score: 3,
            basis: vec![
                EvidenceRef {
                    observation_id: "rr1".into(),
                    criterion: Criterion::RespiratoryRate,
                    effective: t("2024-01-01T10:00:00Z"),
                    value: 24.0,
                },
                EvidenceRef {
                    observation_id: "gcs1".into(),
                    criterion: Criterion::GlasgowComaScore,
                    effective: t("2024-01-01T11:00:00Z"),
                    value: 13.0,
                },
            ],
            active,
        }
    }

    #[test]
    fn the_message_reads_back_as_the_event_it_was_made_from() {
        let events = [
            AlertEvent::Raised {
                episode: episode(true),
            },
            AlertEvent::Updated {
                episode: episode(true),
            },
            AlertEvent::Resolved {
                episode: episode(false),
                reason: ResolveReason::Merged("qsofa-earlier".into()),
            },
            AlertEvent::Resolved {
                episode: episode(false),
                reason: ResolveReason::Withdrawn,
            },
        ];
        for event in events {
            let read = alert_event_from_message(&alerts::alert_message(&event)).unwrap();
            assert_eq!(read, event);
            assert_eq!(
                alerts::pagerduty_event(&read, "KEY", "flare"),
                alerts::pagerduty_event(&event, "KEY", "flare")
            );
        }
    }

    #[test]
    fn a_message_without_an_episode_is_refused() {
        let mut message = alerts::alert_message(&AlertEvent::Raised {
            episode: episode(true),
        });
        message.as_object_mut().unwrap().remove("episodeId");
        assert!(alert_event_from_message(&message).is_err());
    }

    #[test]
    fn the_section_needs_a_routing_key_and_defaults_the_rest() {
        let parsed: PagerConfig = toml::from_str("routing_key = \"K\"").unwrap();
        assert_eq!(parsed.url, PAGERDUTY_EVENTS_URL);
        assert_eq!(parsed.retry.max_attempts, 8);
        assert!(toml::from_str::<PagerConfig>("url = \"https://x\"").is_err());
        assert!(toml::from_str::<PagerConfig>("routing_key = \"K\"\nkey = 1").is_err());
    }
}
