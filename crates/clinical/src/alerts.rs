//! What an alert episode becomes outside the engine: the FHIR resources the processor writes
//! through the commit path, the message on the alerts topic and a PagerDuty Events API v2 body.
//!
//! Resource ids are the episode id, so writing them again after a crash (or on every update)
//! overwrites the same `RiskAssessment/{id}` and `Flag/{id}` instead of adding copies.

use crate::qsofa::{AlertEvent, Episode, ResolveReason};
use serde_json::{Value, json};

/// The topic alert messages are published on.
pub const ALERTS_TOPIC: &str = "fhir.alerts.sepsis";

/// Flare's own code system for the rules it runs (there is no standard code for qSOFA as an
/// assessment method).
pub const RULE_SYSTEM: &str = "http://flare.invalid/fhir/CodeSystem/clinical-rule";
/// Identifier system of alert episodes.
pub const EPISODE_IDENTIFIER_SYSTEM: &str = "http://flare.invalid/fhir/NamingSystem/alert-episode";
const RISK_PROBABILITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/risk-probability";
const FLAG_CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/flag-category";
const SNOMED: &str = "http://snomed.info/sct";

fn patient_reference(episode: &Episode) -> Value {
    json!({"reference": format!("Patient/{}", episode.patient_id)})
}

fn identifier(episode: &Episode) -> Value {
    json!([{"system": EPISODE_IDENTIFIER_SYSTEM, "value": episode.id}])
}

fn method() -> Value {
    json!({
        "coding": [{"system": RULE_SYSTEM, "code": "qsofa",
                    "display": "quick Sequential Organ Failure Assessment (Sepsis-3)"}],
        "text": "qSOFA"
    })
}

fn sepsis() -> Value {
    json!({"coding": [{"system": SNOMED, "code": "91302008", "display": "Sepsis"}], "text": "Sepsis"})
}

fn criteria_text(episode: &Episode) -> String {
    episode
        .criteria()
        .map(|criterion| criterion.label())
        .collect::<Vec<_>>()
        .join(", ")
}

fn window_text(episode: &Episode) -> String {
    let until = if episode.active {
        "ongoing".to_owned()
    } else {
        episode.end.to_rfc3339()
    };
    format!("{} to {until}", episode.onset.to_rfc3339())
}

/// The `RiskAssessment` for an alert event: status `final` when raised, `amended` after an
/// update, `entered-in-error` when the evidence was withdrawn, `cancelled` when merged into
/// another episode; an elapsed episode keeps the status it had.
pub fn risk_assessment(event: &AlertEvent) -> Value {
    let episode = event.episode();
    let status = match event {
        AlertEvent::Raised { .. } => "final",
        AlertEvent::Updated { .. } => "amended",
        AlertEvent::Resolved {
            reason: ResolveReason::Elapsed,
            ..
        } => "final",
        AlertEvent::Resolved {
            reason: ResolveReason::Withdrawn,
            ..
        } => "entered-in-error",
        AlertEvent::Resolved {
            reason: ResolveReason::Merged(_),
            ..
        } => "cancelled",
    };
    let basis: Vec<Value> = episode
        .basis
        .iter()
        .map(|evidence| {
            json!({
                "reference": format!("Observation/{}", evidence.observation_id),
                "display": format!("{} ({} at {})", evidence.criterion.label(), evidence.value,
                                   evidence.effective.to_rfc3339()),
            })
        })
        .collect();
    let mut resource = json!({
        "resourceType": "RiskAssessment",
        "id": episode.id,
        "identifier": identifier(episode),
        "status": status,
        "method": method(),
        "code": {"text": "Sepsis screening (qSOFA)"},
        "subject": patient_reference(episode),
        "occurrenceDateTime": episode.onset.to_rfc3339(),
        "prediction": [{
            "outcome": sepsis(),
            "qualitativeRisk": {
                "coding": [{"system": RISK_PROBABILITY_SYSTEM, "code": "high", "display": "High likelihood"}]
            },
            "rationale": format!("qSOFA {} of 3: {}", episode.score, criteria_text(episode)),
        }],
        "note": [{"text": format!("Positive window {} (effective time).", window_text(episode))}],
    });
    if !basis.is_empty() {
        resource["basis"] = Value::Array(basis);
    }
    resource
}

/// The `Flag` shown while the episode lasts: `active`, then `inactive` when it resolves
/// (`entered-in-error` when its evidence was withdrawn); `period` is the effective window.
pub fn flag(event: &AlertEvent) -> Value {
    let episode = event.episode();
    let status = match event {
        AlertEvent::Resolved {
            reason: ResolveReason::Withdrawn,
            ..
        } => "entered-in-error",
        _ if episode.active => "active",
        _ => "inactive",
    };
    let mut period = json!({"start": episode.onset.to_rfc3339()});
    if !episode.active {
        period["end"] = json!(episode.end.to_rfc3339());
    }
    json!({
        "resourceType": "Flag",
        "id": episode.id,
        "identifier": identifier(episode),
        "status": status,
        "category": [{"coding": [{"system": FLAG_CATEGORY_SYSTEM, "code": "clinical", "display": "Clinical"}]}],
        "code": {
            "coding": [{"system": RULE_SYSTEM, "code": "qsofa-positive", "display": "qSOFA positive: sepsis risk"}],
            "text": format!("Sepsis risk: qSOFA {} of 3", episode.score),
        },
        "subject": patient_reference(episode),
        "period": period,
    })
}

fn action(event: &AlertEvent) -> &'static str {
    match event {
        AlertEvent::Raised { .. } => "raised",
        AlertEvent::Updated { .. } => "updated",
        AlertEvent::Resolved { .. } => "resolved",
    }
}

/// The message published on [`ALERTS_TOPIC`] (keyed by `Patient/{id}`).
pub fn alert_message(event: &AlertEvent) -> Value {
    let episode = event.episode();
    let basis: Vec<Value> = episode
        .basis
        .iter()
        .map(|evidence| {
            json!({
                "reference": format!("Observation/{}", evidence.observation_id),
                "criterion": evidence.criterion,
                "value": evidence.value,
                "effective": evidence.effective.to_rfc3339(),
            })
        })
        .collect();
    let mut message = json!({
        "type": "qsofa",
        "action": action(event),
        "episodeId": episode.id,
        "patient": format!("Patient/{}", episode.patient_id),
        "score": episode.score,
        "active": episode.active,
        "onset": episode.onset.to_rfc3339(),
        "peakAt": episode.peak_at.to_rfc3339(),
        "end": episode.end.to_rfc3339(),
        "basis": basis,
        "riskAssessment": format!("RiskAssessment/{}", episode.id),
        "flag": format!("Flag/{}", episode.id),
    });
    if let AlertEvent::Resolved { reason, .. } = event {
        let (text, into) = match reason {
            ResolveReason::Elapsed => ("elapsed", None),
            ResolveReason::Withdrawn => ("withdrawn", None),
            ResolveReason::Merged(into) => ("merged", Some(into)),
        };
        message["resolution"] = json!(text);
        if let Some(into) = into {
            message["mergedInto"] = json!(into);
        }
    }
    message
}

/// The key of an alert message: the patient compartment, as for change events.
pub fn alert_key(event: &AlertEvent) -> String {
    format!("Patient/{}", event.episode().patient_id)
}

/// A PagerDuty Events API v2 body (`POST https://events.pagerduty.com/v2/enqueue`): raised and
/// updated episodes `trigger` (PagerDuty folds triggers with one `dedup_key` into one
/// incident), resolved ones `resolve`. `source` names the system, e.g. the server's base URL.
pub fn pagerduty_event(event: &AlertEvent, routing_key: &str, source: &str) -> Value {
    let episode = event.episode();
    let (event_action, timestamp, summary) = match event {
        AlertEvent::Raised { .. } | AlertEvent::Updated { .. } => (
            "trigger",
            episode.peak_at,
            format!(
                "Sepsis risk: qSOFA {} of 3 for Patient/{} ({})",
                episode.score,
                episode.patient_id,
                criteria_text(episode)
            ),
        ),
        AlertEvent::Resolved { .. } => (
            "resolve",
            episode.end,
            format!(
                "Sepsis risk resolved for Patient/{} (qSOFA was {} of 3)",
                episode.patient_id, episode.score
            ),
        ),
    };
    json!({
        "routing_key": routing_key,
        "event_action": event_action,
        "dedup_key": episode.id,
        "payload": {
            "summary": truncate(summary, 1024),
            "severity": if episode.score >= 3 { "critical" } else { "error" },
            "source": source,
            "timestamp": timestamp.to_rfc3339(),
            "custom_details": alert_message(event),
        },
    })
}

/// PagerDuty rejects summaries over 1024 characters.
fn truncate(mut text: String, max_chars: usize) -> String {
    if let Some((index, _)) = text.char_indices().nth(max_chars) {
        text.truncate(index);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qsofa::EvidenceRef;
    use crate::time::Timestamp;
    use crate::vitals::Criterion;

    fn episode(active: bool) -> Episode {
        let t = |text: &str| Timestamp::parse_fhir(text).unwrap();
        Episode {
            id: "qsofa-0123456789abcdef0123456789abcdef".into(),
            patient_id: "p1".into(),
            onset: t("2026-03-14T10:00:00Z"),
            peak_at: t("2026-03-14T10:30:00Z"),
            end: t("2026-03-14T16:00:00Z"),
            score: 3,
            basis: vec![
                EvidenceRef {
                    observation_id: "rr-1".into(),
                    criterion: Criterion::RespiratoryRate,
                    effective: t("2026-03-14T10:00:00Z"),
                    value: 24.0,
                },
                EvidenceRef {
                    observation_id: "bp-1".into(),
                    criterion: Criterion::SystolicBloodPressure,
                    effective: t("2026-03-14T10:30:00Z"),
                    value: 95.0,
                },
            ],
            active,
        }
    }

    fn every_event() -> Vec<AlertEvent> {
        vec![
            AlertEvent::Raised {
                episode: episode(true),
            },
            AlertEvent::Updated {
                episode: episode(true),
            },
            AlertEvent::Resolved {
                episode: episode(false),
                reason: ResolveReason::Elapsed,
            },
            AlertEvent::Resolved {
                episode: episode(false),
                reason: ResolveReason::Withdrawn,
            },
            AlertEvent::Resolved {
                episode: episode(false),
                reason: ResolveReason::Merged("qsofa-other".into()),
            },
        ]
    }

    #[test]
    fn resources_are_valid_r4_for_every_event() {
        for event in every_event() {
            for resource in [risk_assessment(&event), flag(&event)] {
                if let Err(issues) = flare_fhir::validate(&resource) {
                    panic!("{resource:#}\n{issues:?}");
                }
            }
        }
    }

    #[test]
    fn resources_are_linked_to_the_episode_and_its_evidence() {
        let raised = AlertEvent::Raised {
            episode: episode(true),
        };
        let assessment = risk_assessment(&raised);
        assert_eq!(assessment["id"], "qsofa-0123456789abcdef0123456789abcdef");
        assert_eq!(assessment["subject"]["reference"], "Patient/p1");
        assert_eq!(assessment["basis"][0]["reference"], "Observation/rr-1");
        assert_eq!(assessment["basis"][1]["reference"], "Observation/bp-1");
        assert_eq!(assessment["occurrenceDateTime"], "2026-03-14T10:00:00Z");
        assert_eq!(assessment["method"]["coding"][0]["code"], "qsofa");
        assert!(
            assessment["prediction"][0]["rationale"]
                .as_str()
                .unwrap()
                .starts_with("qSOFA 3 of 3")
        );
        let active_flag = flag(&raised);
        assert_eq!(active_flag["id"], assessment["id"]);
        assert_eq!(active_flag["status"], "active");
        assert!(active_flag["period"].get("end").is_none());

        let elapsed = &every_event()[2];
        let closed_flag = flag(elapsed);
        assert_eq!(closed_flag["status"], "inactive");
        assert_eq!(closed_flag["period"]["end"], "2026-03-14T16:00:00Z");
        assert_eq!(flag(&every_event()[3])["status"], "entered-in-error");
        assert_eq!(
            risk_assessment(&every_event()[3])["status"],
            "entered-in-error"
        );
        assert_eq!(risk_assessment(&every_event()[4])["status"], "cancelled");
    }

    #[test]
    fn pagerduty_bodies_trigger_and_resolve_with_the_episode_as_dedup_key() {
        let events = every_event();
        let trigger = pagerduty_event(&events[0], "R0UTING", "https://flare.example");
        assert_eq!(trigger["routing_key"], "R0UTING");
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], events[0].episode().id);
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["source"], "https://flare.example");
        assert_eq!(trigger["payload"]["timestamp"], "2026-03-14T10:30:00Z");
        assert_eq!(
            trigger["payload"]["custom_details"]["patient"],
            "Patient/p1"
        );
        let resolve = pagerduty_event(&events[2], "R0UTING", "https://flare.example");
        assert_eq!(resolve["event_action"], "resolve");
        assert_eq!(resolve["dedup_key"], trigger["dedup_key"]);
        assert_eq!(truncate("é".repeat(2000), 1024).chars().count(), 1024);
    }

    #[test]
    fn alert_messages_say_what_happened() {
        let events = every_event();
        let raised = alert_message(&events[0]);
        assert_eq!(raised["action"], "raised");
        assert_eq!(raised["basis"][0]["criterion"], "rr");
        assert_eq!(
            raised["riskAssessment"],
            format!("RiskAssessment/{}", raised["episodeId"].as_str().unwrap())
        );
        assert!(raised.get("resolution").is_none());
        let merged = alert_message(&events[4]);
        assert_eq!(merged["resolution"], "merged");
        assert_eq!(merged["mergedInto"], "qsofa-other");
        assert_eq!(alert_key(&events[0]), "Patient/p1");
    }
}
