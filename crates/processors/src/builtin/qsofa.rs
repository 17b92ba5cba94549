//! `qsofa`: qSOFA sepsis screening on vital-sign Observation change events.
//!
//! State per patient (the partition key `Patient/<id>`) is `flare_clinical::PatientQsofa`.
//! Each alert event of the clinical engine becomes, in this order:
//! 1. `RiskAssessment/<episode id>` and `Flag/<episode id>` written with PUT through the commit
//!    path, concurrently (the ids are the deterministic episode id, so a replay rewrites the
//!    same resources);
//! 2. a message on `fhir.alerts.sepsis`, keyed by patient, whose `eventId` is derived from the
//!    episode, the alert kind and the input record's position (a replay repeats the same id).
//!
//! Malformed vital values (a value that is not a Quantity, no numeric value, an unparseable
//! effective time) fail the record, so it goes through the retries to the dead-letter topic and
//! can be replayed with `flare dlq replay` once the cause is fixed. Expected rejections (wrong
//! unit, no patient) only withdraw the Observation's earlier evidence.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use async_trait::async_trait;
use flare_clinical::{
    AlertEvent, EvidenceChange, PatientQsofa, QsofaConfig, Rejection, VitalReading, alerts,
    vitals::read_observation,
};
use flare_events::{Action, ChangeEvent};
use flare_log::{NewRecord, Record};
use flare_service::{Fhir, RequestContext};
use serde_json::Value;

use crate::{
    Context, Outcome, ProcessError, Processor,
    builtin::watermark::{self, NOTHING_SEEN, WATERMARK_TOPIC},
    dlq,
};

/// Topics with Observations under the default routing (vital signs, and everything else).
pub const DEFAULT_TOPICS: &[&str] = &["fhir.observation.vitals", "fhir.Observation"];

pub struct QsofaProcessor {
    fhir: Fhir,
    config: QsofaConfig,
    topics: Vec<String>,
    /// Whether watermark records of the idle clock are consumed.
    idle_clock: bool,
    /// The newest effective time applied, for the `event-time` idle clock.
    latest_effective_ms: Arc<AtomicI64>,
}

impl QsofaProcessor {
    pub fn new(fhir: Fhir) -> Self {
        Self {
            fhir,
            config: QsofaConfig::default(),
            topics: DEFAULT_TOPICS.iter().map(|t| (*t).to_owned()).collect(),
            idle_clock: false,
            latest_effective_ms: Arc::new(AtomicI64::new(NOTHING_SEEN)),
        }
    }

    /// Also consumes [`WATERMARK_TOPIC`], where the idle clock (see
    /// [`watermark`](crate::builtin::watermark)) moves the watermark of idle patients.
    pub fn with_idle_clock(mut self) -> Self {
        self.idle_clock = true;
        self
    }

    /// The newest effective time applied, in milliseconds ([`NOTHING_SEEN`] before any).
    pub fn latest_effective(&self) -> Arc<AtomicI64> {
        self.latest_effective_ms.clone()
    }

    /// Applies a watermark record of the idle clock.
    async fn advance(
        &self,
        state: &mut Option<PatientQsofa>,
        record: &Record,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ProcessError> {
        let Some(to) = watermark::parse_watermark(&record.payload) else {
            return Err(ProcessError::permanent(
                "the watermark record has no `to` instant",
            ));
        };
        let Some(patient) = state.as_mut() else {
            return Ok(Outcome::Unchanged);
        };
        let applied = patient.advance_watermark(&self.config, to);
        if applied.alerts.is_empty() && applied.released.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        // Deterministic, so a replay tags the rewritten resources the same way.
        let correlation_id = format!("qsofa-watermark-{}-{}", record.partition, record.offset);
        for alert in &applied.alerts {
            self.emit(alert, record, &correlation_id, ctx).await?;
        }
        if patient.is_idle() {
            return Ok(Outcome::Remove);
        }
        Ok(Outcome::Updated)
    }

    /// Other input topics (e.g. under the `action` or `hybrid` topic strategy).
    pub fn with_topics(mut self, topics: Vec<String>) -> Self {
        self.topics = topics;
        self
    }

    pub fn with_config(mut self, config: QsofaConfig) -> Self {
        self.config = config;
        self
    }

    async fn write(
        &self,
        request: &RequestContext,
        resource_type: &str,
        resource: Value,
    ) -> Result<(), ProcessError> {
        let id = resource
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match self
            .fhir
            .update(request, resource_type, &id, resource, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) => {
                let message = format!("writing {resource_type}/{id} failed: {error}");
                // Conflicts and server-side failures may pass later; a refused resource will not.
                if error.status >= 500 || error.status == 409 || error.status == 412 {
                    Err(ProcessError::retryable(message))
                } else {
                    Err(ProcessError::permanent(message))
                }
            }
        }
    }

    async fn emit(
        &self,
        alert: &AlertEvent,
        input: &Record,
        correlation_id: &str,
        ctx: &mut Context<'_>,
    ) -> Result<(), ProcessError> {
        let mut request = RequestContext::new("");
        request.correlation_id = correlation_id.to_owned();
        // Two commits at once share one store transaction (group commit): one fsync, not two.
        tokio::try_join!(
            self.write(&request, "RiskAssessment", alerts::risk_assessment(alert)),
            self.write(&request, "Flag", alerts::flag(alert)),
        )?;
        let message = alerts::alert_message(alert);
        let kind = message
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or("alert");
        let event_id = format!(
            "{}-{kind}-{}-{}-{}",
            alert.episode().id,
            input.topic,
            input.partition,
            input.offset
        );
        let record = NewRecord {
            key: Some(alerts::alert_key(alert).into_bytes()),
            headers: vec![flare_log::Header::new(
                "content-type",
                &b"application/json"[..],
            )],
            payload: message.to_string().into_bytes(),
            timestamp_ms: None,
        };
        ctx.publish(alerts::ALERTS_TOPIC, &event_id, record).await
    }
}

fn malformed(reason: &Rejection) -> bool {
    matches!(
        reason,
        Rejection::NotAQuantity { .. }
            | Rejection::MissingValue { .. }
            | Rejection::BadEffectiveTime(_)
    )
}

#[async_trait]
impl Processor for QsofaProcessor {
    type State = Option<PatientQsofa>;

    fn name(&self) -> &str {
        "qsofa"
    }

    fn topics(&self) -> Vec<String> {
        let mut topics = self.topics.clone();
        if self.idle_clock {
            topics.push(WATERMARK_TOPIC.to_owned());
        }
        topics
    }

    async fn process(
        &self,
        _key: &str,
        state: &mut Option<PatientQsofa>,
        record: &Record,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ProcessError> {
        if record.topic == WATERMARK_TOPIC || record.topic == dlq::retry_topic(WATERMARK_TOPIC) {
            return self.advance(state, record, ctx).await;
        }
        let event = ChangeEvent::from_json_bytes(&record.payload).map_err(|e| {
            ProcessError::permanent(format!("the payload is not a change event: {e}"))
        })?;
        if event.metadata.resource_type != "Observation" {
            return Ok(Outcome::Unchanged);
        }
        let observation_id = event.metadata.resource_id.clone();
        let resource = match event.metadata.action {
            Action::Deleted => None,
            _ => super::event_resource(Some(&self.fhir), &event).await?,
        };
        let change = match (event.metadata.action, &resource) {
            (Action::Deleted, _) => EvidenceChange::Cleared { observation_id },
            (_, None) => {
                return Err(ProcessError::permanent(format!(
                    "the event of Observation/{observation_id} carries neither data nor dataRef"
                )));
            }
            (_, Some(resource)) => match read_observation(resource) {
                VitalReading::Measured {
                    observation_id,
                    patient_id,
                    measurement,
                    effective,
                } => {
                    if state.is_none() {
                        *state = Some(PatientQsofa::new(patient_id));
                    }
                    self.latest_effective_ms
                        .fetch_max(effective.as_millis(), Ordering::Relaxed);
                    EvidenceChange::Measured {
                        observation_id,
                        measurement,
                        effective,
                    }
                }
                VitalReading::Rejected { reason, .. } if malformed(&reason) => {
                    return Err(ProcessError::retryable(format!(
                        "Observation/{observation_id}: {reason}"
                    )));
                }
                VitalReading::Withdrawn { .. }
                | VitalReading::Unrelated { .. }
                | VitalReading::Rejected { .. } => EvidenceChange::Cleared { observation_id },
            },
        };
        let Some(patient) = state.as_mut() else {
            // A retraction for a patient with no evidence: nothing to withdraw.
            return Ok(Outcome::Unchanged);
        };
        if let EvidenceChange::Cleared { observation_id } = &change
            && !patient.holds(observation_id)
        {
            return Ok(Outcome::Unchanged);
        }
        let applied = patient.apply(&self.config, change);
        for alert in &applied.alerts {
            self.emit(alert, record, &event.metadata.correlation_id, ctx)
                .await?;
        }
        if patient.is_idle() {
            return Ok(Outcome::Remove);
        }
        Ok(Outcome::Updated)
    }
}
