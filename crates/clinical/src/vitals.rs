//! What one Observation says about qSOFA: which criterion it measures, its value, when and for
//! whom, or why it cannot be used.
//!
//! Everything that can be wrong with input is a [`Rejection`] value; nothing here panics on a
//! resource, however malformed.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const LOINC_SYSTEM: &str = "http://loinc.org";
pub const UCUM_SYSTEM: &str = "http://unitsofmeasure.org";

/// LOINC codes of the blood-pressure panels whose systolic component counts.
pub const BLOOD_PRESSURE_PANELS: [&str; 2] = ["85354-9", "55284-4"];

/// The three qSOFA criteria (Sepsis-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Criterion {
    /// Respiratory rate ≥ 22/min (LOINC 9279-1).
    #[serde(rename = "rr")]
    RespiratoryRate,
    /// Systolic blood pressure ≤ 100 mm[Hg] (LOINC 8480-6).
    #[serde(rename = "sbp")]
    SystolicBloodPressure,
    /// Glasgow coma score total < 15 (LOINC 9269-2): altered mentation.
    #[serde(rename = "gcs")]
    GlasgowComaScore,
}

impl Criterion {
    pub const ALL: [Criterion; 3] = [
        Criterion::RespiratoryRate,
        Criterion::SystolicBloodPressure,
        Criterion::GlasgowComaScore,
    ];

    pub fn loinc(self) -> &'static str {
        match self {
            Criterion::RespiratoryRate => "9279-1",
            Criterion::SystolicBloodPressure => "8480-6",
            Criterion::GlasgowComaScore => "9269-2",
        }
    }

    /// Whether `value` earns this criterion's point (thresholds are inclusive).
    pub fn is_met(self, value: f64) -> bool {
        match self {
            Criterion::RespiratoryRate => value >= 22.0,
            Criterion::SystolicBloodPressure => value <= 100.0,
            Criterion::GlasgowComaScore => value < 15.0,
        }
    }

    /// A short human label, e.g. for alert summaries.
    pub fn label(self) -> &'static str {
        match self {
            Criterion::RespiratoryRate => "respiratory rate >= 22/min",
            Criterion::SystolicBloodPressure => "systolic blood pressure <= 100 mmHg",
            Criterion::GlasgowComaScore => "altered mentation (GCS < 15)",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether a Quantity with this UCUM `code` (or, lacking one, `unit`) has the right unit.
    fn accepts_unit(self, unit: Option<&str>) -> bool {
        match self {
            // `{breaths}/min` is `/min` with a UCUM annotation, which carries no meaning.
            Criterion::RespiratoryRate => matches!(unit, Some("/min" | "{breaths}/min")),
            Criterion::SystolicBloodPressure => matches!(unit, Some("mm[Hg]")),
            Criterion::GlasgowComaScore => matches!(unit, None | Some("{score}" | "1" | "")),
        }
    }
}

/// How an Observation's `status` bears on evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusEffect {
    /// `final`, `amended`, `corrected`, `preliminary`.
    Counts,
    /// `entered-in-error`, `cancelled`: whatever this Observation contributed is withdrawn.
    Retracts,
    /// `registered`, `unknown` or missing: contributes nothing (yet).
    DoesNotCount,
}

pub fn status_effect(status: Option<&str>) -> StatusEffect {
    match status {
        Some("final" | "amended" | "corrected" | "preliminary") => StatusEffect::Counts,
        Some("entered-in-error" | "cancelled") => StatusEffect::Retracts,
        _ => StatusEffect::DoesNotCount,
    }
}

/// Why an Observation that looks like a qSOFA vital sign cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("the resource is not an Observation")]
    NotAnObservation,
    #[error("the Observation has no id")]
    MissingId,
    #[error("the Observation has no subject reference to a Patient")]
    NoPatient,
    #[error("the Observation has no effectiveDateTime, effectivePeriod.start or effectiveInstant")]
    NoEffectiveTime,
    #[error("the effective time {0:?} is not a FHIR dateTime")]
    BadEffectiveTime(String),
    #[error("the {criterion:?} value is not a Quantity")]
    NotAQuantity { criterion: Criterion },
    #[error("the {criterion:?} Quantity has no numeric value")]
    MissingValue { criterion: Criterion },
    #[error("the {criterion:?} unit {unit:?} is not the expected UCUM unit")]
    WrongUnit {
        criterion: Criterion,
        unit: Option<String>,
    },
}

/// A measurement of one criterion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub criterion: Criterion,
    pub value: f64,
}

/// What an Observation version means for qSOFA.
#[derive(Debug, Clone, PartialEq)]
pub enum VitalReading {
    /// A counting measurement (which may or may not meet its criterion).
    Measured {
        observation_id: String,
        patient_id: String,
        measurement: Measurement,
        effective: Timestamp,
    },
    /// The Observation is a qSOFA vital whose status withdraws it (`entered-in-error`,
    /// `cancelled`) or does not count (`registered`…): it contributes nothing now.
    Withdrawn {
        observation_id: String,
        patient_id: Option<String>,
        status: StatusEffect,
    },
    /// Not a qSOFA vital sign (another code): it contributes nothing.
    Unrelated { observation_id: Option<String> },
    /// A qSOFA vital that cannot be used; a previous version's evidence must still be cleared.
    Rejected {
        observation_id: Option<String>,
        patient_id: Option<String>,
        reason: Rejection,
    },
}

impl VitalReading {
    pub fn observation_id(&self) -> Option<&str> {
        match self {
            VitalReading::Measured { observation_id, .. }
            | VitalReading::Withdrawn { observation_id, .. } => Some(observation_id),
            VitalReading::Unrelated { observation_id }
            | VitalReading::Rejected { observation_id, .. } => observation_id.as_deref(),
        }
    }
}

/// A member of a JSON object by linear scan. FHIR objects have a handful of members, and
/// serde_json's ordered map hashes every lookup with SipHash, which the benchmark showed costs
/// more than comparing a few short keys.
fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    if object.len() > 16 {
        return object.get(key);
    }
    object
        .iter()
        .find_map(|(name, member)| (name == key).then_some(member))
}

/// Reads the qSOFA evidence of one Observation version as it appears in a change event.
pub fn read_observation(resource: &Value) -> VitalReading {
    read_borrowed(resource).into_owned()
}

/// [`VitalReading`] with the ids borrowed from the resource: the engine only copies the ids
/// it keeps (evidence), not those of every normal measurement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BorrowedReading<'a> {
    Measured {
        observation_id: &'a str,
        patient_id: &'a str,
        measurement: Measurement,
        effective: Timestamp,
    },
    Withdrawn {
        observation_id: &'a str,
        patient_id: Option<&'a str>,
        status: StatusEffect,
    },
    Unrelated {
        observation_id: Option<&'a str>,
    },
    Rejected {
        observation_id: Option<&'a str>,
        patient_id: Option<&'a str>,
        reason: Rejection,
    },
}

impl BorrowedReading<'_> {
    pub(crate) fn into_owned(self) -> VitalReading {
        let owned = |id: Option<&str>| id.map(str::to_owned);
        match self {
            BorrowedReading::Measured {
                observation_id,
                patient_id,
                measurement,
                effective,
            } => VitalReading::Measured {
                observation_id: observation_id.to_owned(),
                patient_id: patient_id.to_owned(),
                measurement,
                effective,
            },
            BorrowedReading::Withdrawn {
                observation_id,
                patient_id,
                status,
            } => VitalReading::Withdrawn {
                observation_id: observation_id.to_owned(),
                patient_id: owned(patient_id),
                status,
            },
            BorrowedReading::Unrelated { observation_id } => VitalReading::Unrelated {
                observation_id: owned(observation_id),
            },
            BorrowedReading::Rejected {
                observation_id,
                patient_id,
                reason,
            } => VitalReading::Rejected {
                observation_id: owned(observation_id),
                patient_id: owned(patient_id),
                reason,
            },
        }
    }
}

pub(crate) fn read_borrowed(resource: &Value) -> BorrowedReading<'_> {
    let observation_id = field(resource, "id").and_then(Value::as_str);
    if field(resource, "resourceType").and_then(Value::as_str) != Some("Observation") {
        return BorrowedReading::Rejected {
            observation_id,
            patient_id: None,
            reason: Rejection::NotAnObservation,
        };
    }
    let Some((criterion, quantity)) = find_vital(resource) else {
        return BorrowedReading::Unrelated { observation_id };
    };
    let patient_id = patient_ref(resource);
    let Some(observation_id) = observation_id else {
        return BorrowedReading::Rejected {
            observation_id: None,
            patient_id,
            reason: Rejection::MissingId,
        };
    };
    let status = status_effect(field(resource, "status").and_then(Value::as_str));
    if status != StatusEffect::Counts {
        return BorrowedReading::Withdrawn {
            observation_id,
            patient_id,
            status,
        };
    }
    let reject = |patient_id, reason| BorrowedReading::Rejected {
        observation_id: Some(observation_id),
        patient_id,
        reason,
    };
    let Some(patient) = patient_id else {
        return reject(None, Rejection::NoPatient);
    };
    let effective = match effective_time(resource) {
        Ok(effective) => effective,
        Err(reason) => return reject(Some(patient), reason),
    };
    match measure(criterion, quantity) {
        Ok(measurement) => BorrowedReading::Measured {
            observation_id,
            patient_id: patient,
            measurement,
            effective,
        },
        Err(reason) => reject(Some(patient), reason),
    }
}

fn has_loinc(concept: Option<&Value>, wanted: &str) -> bool {
    concept
        .and_then(|c| field(c, "coding"))
        .and_then(Value::as_array)
        .is_some_and(|codings| {
            codings.iter().any(|coding| {
                field(coding, "system").and_then(Value::as_str) == Some(LOINC_SYSTEM)
                    && field(coding, "code").and_then(Value::as_str) == Some(wanted)
            })
        })
}

/// What a LOINC code in `Observation.code` makes of the Observation.
enum CodeMeaning {
    Vital(Criterion),
    BloodPressurePanel,
}

fn code_meaning(code: &str) -> Option<CodeMeaning> {
    Criterion::ALL
        .into_iter()
        .find(|criterion| criterion.loinc() == code)
        .map(CodeMeaning::Vital)
        .or_else(|| {
            BLOOD_PRESSURE_PANELS
                .contains(&code)
                .then_some(CodeMeaning::BloodPressurePanel)
        })
}

/// The criterion an Observation measures and where its value sits (`None` for the value means
/// the element is absent; the caller reports it). One pass over the codings: this runs for
/// every Observation on the log.
fn find_vital(resource: &Value) -> Option<(Criterion, ValueSlot<'_>)> {
    let codings = field(field(resource, "code")?, "coding")?.as_array()?;
    let meaning = codings.iter().find_map(|coding| {
        if field(coding, "system").and_then(Value::as_str) != Some(LOINC_SYSTEM) {
            return None;
        }
        code_meaning(field(coding, "code")?.as_str()?)
    })?;
    match meaning {
        CodeMeaning::Vital(criterion) => Some((criterion, ValueSlot::of(resource))),
        CodeMeaning::BloodPressurePanel => {
            let systolic = field(resource, "component")
                .and_then(Value::as_array)?
                .iter()
                .find(|component| {
                    has_loinc(
                        field(component, "code"),
                        Criterion::SystolicBloodPressure.loinc(),
                    )
                })?;
            Some((Criterion::SystolicBloodPressure, ValueSlot::of(systolic)))
        }
    }
}

/// The `value[x]` of an Observation or component.
enum ValueSlot<'a> {
    Quantity(&'a Value),
    Other,
    Missing,
}

impl<'a> ValueSlot<'a> {
    fn of(element: &'a Value) -> Self {
        if let Some(quantity) = field(element, "valueQuantity") {
            return ValueSlot::Quantity(quantity);
        }
        let has_other_value = element
            .as_object()
            .is_some_and(|object| object.keys().any(|key| key.starts_with("value")));
        if has_other_value {
            ValueSlot::Other
        } else {
            ValueSlot::Missing
        }
    }
}

fn measure(criterion: Criterion, slot: ValueSlot<'_>) -> Result<Measurement, Rejection> {
    let quantity = match slot {
        ValueSlot::Quantity(quantity) => quantity,
        ValueSlot::Other => return Err(Rejection::NotAQuantity { criterion }),
        ValueSlot::Missing => return Err(Rejection::MissingValue { criterion }),
    };
    if !quantity.is_object() {
        return Err(Rejection::NotAQuantity { criterion });
    }
    let value = field(quantity, "value")
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite())
        .ok_or(Rejection::MissingValue { criterion })?;
    // The UCUM code is authoritative; `unit` is display text, used only when there is no code.
    let ucum_code = match field(quantity, "system").and_then(Value::as_str) {
        Some(system) if system != UCUM_SYSTEM => None,
        _ => field(quantity, "code").and_then(Value::as_str),
    };
    let unit = ucum_code.or_else(|| field(quantity, "unit").and_then(Value::as_str));
    if !criterion.accepts_unit(unit) {
        return Err(Rejection::WrongUnit {
            criterion,
            unit: unit.map(str::to_owned),
        });
    }
    Ok(Measurement { criterion, value })
}

/// The id of the Patient an Observation is about (`subject` = `Patient/x`, relative or
/// absolute, with or without `_history`).
pub fn patient_id(resource: &Value) -> Option<String> {
    patient_ref(resource).map(str::to_owned)
}

fn patient_ref(resource: &Value) -> Option<&str> {
    patient_in_reference(field(resource, "subject")?)
}

fn patient_in_reference(reference: &Value) -> Option<&str> {
    let text = field(reference, "reference")?.as_str()?;
    let (_, tail) = text.rsplit_once("Patient/")?;
    let id = tail.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// `effectiveDateTime`, `effectivePeriod.start` or `effectiveInstant`, as a UTC instant.
pub fn effective_time(resource: &Value) -> Result<Timestamp, Rejection> {
    let text = field(resource, "effectiveDateTime")
        .or_else(|| field(resource, "effectivePeriod").and_then(|p| field(p, "start")))
        .or_else(|| field(resource, "effectiveInstant"))
        .ok_or(Rejection::NoEffectiveTime)?;
    let text = text
        .as_str()
        .ok_or_else(|| Rejection::BadEffectiveTime(text.to_string()))?;
    Timestamp::parse_fhir(text).ok_or_else(|| Rejection::BadEffectiveTime(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn observation(code: &str, value: Value) -> Value {
        let mut resource = json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": LOINC_SYSTEM, "code": code}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2026-03-14T10:00:00Z"
        });
        if let Some(object) = value.as_object() {
            for (key, value) in object {
                resource[key] = value.clone();
            }
        }
        resource
    }

    fn quantity(value: f64, code: &str) -> Value {
        json!({"valueQuantity": {"value": value, "system": UCUM_SYSTEM, "code": code}})
    }

    fn measured(reading: &VitalReading) -> Option<(Criterion, f64)> {
        match reading {
            VitalReading::Measured { measurement, .. } => {
                Some((measurement.criterion, measurement.value))
            }
            _ => None,
        }
    }

    #[test]
    fn standalone_vitals_are_read_with_their_units() {
        let rr = read_observation(&observation("9279-1", quantity(24.0, "/min")));
        assert_eq!(measured(&rr), Some((Criterion::RespiratoryRate, 24.0)));
        let annotated = read_observation(&observation("9279-1", quantity(24.0, "{breaths}/min")));
        assert_eq!(
            measured(&annotated),
            Some((Criterion::RespiratoryRate, 24.0))
        );
        let sbp = read_observation(&observation("8480-6", quantity(95.0, "mm[Hg]")));
        assert_eq!(
            measured(&sbp),
            Some((Criterion::SystolicBloodPressure, 95.0))
        );
        let gcs = read_observation(&observation(
            "9269-2",
            json!({"valueQuantity": {"value": 13}}),
        ));
        assert_eq!(measured(&gcs), Some((Criterion::GlasgowComaScore, 13.0)));
        let gcs_score = read_observation(&observation("9269-2", quantity(14.0, "{score}")));
        assert_eq!(
            measured(&gcs_score),
            Some((Criterion::GlasgowComaScore, 14.0))
        );
    }

    #[test]
    fn panel_systolic_component_counts_and_other_panels_do_not() {
        let panel = |code: &str| {
            observation(
                code,
                json!({"component": [
                    {"code": {"coding": [{"system": LOINC_SYSTEM, "code": "8462-4"}]},
                     "valueQuantity": {"value": 60, "system": UCUM_SYSTEM, "code": "mm[Hg]"}},
                    {"code": {"coding": [{"system": LOINC_SYSTEM, "code": "8480-6"}]},
                     "valueQuantity": {"value": 98, "system": UCUM_SYSTEM, "code": "mm[Hg]"}}
                ]}),
            )
        };
        for code in BLOOD_PRESSURE_PANELS {
            assert_eq!(
                measured(&read_observation(&panel(code))),
                Some((Criterion::SystolicBloodPressure, 98.0))
            );
        }
        assert!(matches!(
            read_observation(&panel("12345-6")),
            VitalReading::Unrelated { .. }
        ));
    }

    #[test]
    fn wrong_units_and_non_quantities_are_rejections() {
        let rejection = |resource: Value| match read_observation(&resource) {
            VitalReading::Rejected { reason, .. } => reason,
            other => panic!("expected a rejection, got {other:?}"),
        };
        assert_eq!(
            rejection(observation("8480-6", quantity(95.0, "kPa"))),
            Rejection::WrongUnit {
                criterion: Criterion::SystolicBloodPressure,
                unit: Some("kPa".into())
            }
        );
        assert!(matches!(
            rejection(observation(
                "9279-1",
                json!({"valueQuantity": {"value": 30}})
            )),
            Rejection::WrongUnit { unit: None, .. }
        ));
        assert!(matches!(
            rejection(observation("9279-1", json!({"valueString": "fast"}))),
            Rejection::NotAQuantity { .. }
        ));
        assert!(matches!(
            rejection(observation("9279-1", json!({"valueQuantity": "30 /min"}))),
            Rejection::NotAQuantity { .. }
        ));
        assert!(matches!(
            rejection(observation(
                "9279-1",
                json!({"valueQuantity": {"code": "/min"}})
            )),
            Rejection::MissingValue { .. }
        ));
        assert!(matches!(
            rejection(observation("9279-1", json!({}))),
            Rejection::MissingValue { .. }
        ));
        let mut no_time = observation("9279-1", quantity(24.0, "/min"));
        no_time.as_object_mut().unwrap().remove("effectiveDateTime");
        assert_eq!(rejection(no_time), Rejection::NoEffectiveTime);
        let bad_time = observation("9279-1", json!({"effectiveDateTime": "yesterday"}));
        assert!(matches!(
            rejection(bad_time),
            Rejection::BadEffectiveTime(_)
        ));
        let group = observation("9279-1", json!({"subject": {"reference": "Group/g"}}));
        assert_eq!(rejection(group), Rejection::NoPatient);
    }

    #[test]
    fn effective_time_comes_from_any_effective_choice() {
        let period = observation(
            "9279-1",
            json!({"effectivePeriod": {"start": "2026-03-14T12:00:00+02:00"}}),
        );
        let mut period = period;
        period.as_object_mut().unwrap().remove("effectiveDateTime");
        assert_eq!(
            effective_time(&period),
            Ok(Timestamp::parse_fhir("2026-03-14T10:00:00Z").unwrap())
        );
        let instant = json!({"effectiveInstant": "2026-03-14T10:00:00.5Z"});
        assert_eq!(effective_time(&instant).unwrap().as_millis() % 1000, 500);
    }

    #[test]
    fn statuses_withdraw_or_do_not_count() {
        for (status, effect) in [
            ("entered-in-error", StatusEffect::Retracts),
            ("cancelled", StatusEffect::Retracts),
            ("registered", StatusEffect::DoesNotCount),
        ] {
            let reading = read_observation(&observation(
                "9279-1",
                json!({"status": status, "valueQuantity": {"value": 30, "code": "/min"}}),
            ));
            assert!(
                matches!(reading, VitalReading::Withdrawn { status, .. } if status == effect),
                "{status}"
            );
        }
        for status in ["amended", "corrected", "preliminary"] {
            let reading = read_observation(&observation(
                "9279-1",
                json!({"status": status, "valueQuantity": {"value": 30, "code": "/min"}}),
            ));
            assert!(measured(&reading).is_some(), "{status}");
        }
    }

    #[test]
    fn subject_references_name_the_patient() {
        for (reference, expected) in [
            ("Patient/p1", Some("p1")),
            ("http://x.org/fhir/Patient/p2/_history/3", Some("p2")),
            ("Patient/", None),
            ("Group/g", None),
        ] {
            assert_eq!(
                patient_id(&json!({"subject": {"reference": reference}})).as_deref(),
                expected
            );
        }
    }
}
