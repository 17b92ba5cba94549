//! One patient's stay: the Patient, an Encounter, past immunizations, vitals on a clock (with a
//! sepsis course for some), labs, medications, and the discharge.

use rand::{Rng, SeedableRng, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::{
    Action, Generated, GeneratorConfig, PatientPlan, SepsisPlan,
    catalog::{self, VitalCode},
    fhir_time, new_id,
};

const DAYS_PER_MONTH: f64 = 30.4375;
/// An inpatient's first set of vital signs is measured this long after admission.
pub(crate) const FIRST_VITALS_AFTER: Duration = Duration::minutes(10);

/// An inpatient's vital signs still to come: generated one set at a time, so a population
/// with thousands of patients in hospital holds a few fields per patient, not their whole stay.
pub struct Stay {
    rng: ChaCha8Rng,
    patient: String,
    encounter: String,
    next_vitals: OffsetDateTime,
    discharged: OffsetDateTime,
    course: Option<SepsisPlan>,
    spike_at: Option<OffsetDateTime>,
}

impl Stay {
    /// When the next set of vital signs is measured, if the patient is still in hospital.
    pub fn vitals_due(&self) -> Option<OffsetDateTime> {
        (self.next_vitals < self.discharged).then_some(self.next_vitals)
    }

    /// The next set of vital signs (each with its own send time, never before it is measured).
    pub fn next_vitals(&mut self, config: &GeneratorConfig) -> Vec<Generated> {
        let at = self.next_vitals;
        let every = Duration::minutes(i64::from(config.vitals_every_minutes));
        self.next_vitals += every;
        let rng = &mut self.rng;
        let mut vitals = Vitals::normal(rng);
        if let Some(course) = self.course {
            vitals = vitals.septic(course.progress(at));
        }
        // A few normal inpatients have one isolated abnormal respiratory rate: one criterion
        // alone must never raise an alert.
        if self
            .spike_at
            .is_some_and(|spike| at >= spike && at < spike + every)
        {
            vitals.respiratory_rate = rng.random_range(22.0..26.0_f64).round();
        }
        let refs = Refs {
            patient: &self.patient,
            encounter: &self.encounter,
        };
        let mut out = Vec::with_capacity(6);
        vital_set(rng, config, &refs, at, &vitals, true, &mut out);
        out
    }
}

/// Admits one patient: the resources written at admission and later in the stay (labs,
/// medications, discharge), unsorted, and for inpatients the [`Stay`] that yields their vitals.
/// `rng` is the patient's own stream, so patients do not depend on how their events interleave.
pub fn generate(
    mut rng: ChaCha8Rng,
    config: &GeneratorConfig,
    index: u64,
    admitted: OffsetDateTime,
    inpatient: bool,
    septic: bool,
) -> (Vec<Generated>, Option<Stay>, PatientPlan) {
    let rng = &mut rng;
    let mut stay_vitals = None;
    let mut out = Vec::new();
    let patient_id = new_id(rng);
    let patient_ref = format!("Patient/{patient_id}");
    // Ages 0-95, children over-represented so the childhood schedule shows in the counts.
    let age_years: f64 = if rng.random_bool(0.25) {
        rng.random_range(0.0..18.0)
    } else {
        rng.random_range(18.0..95.0)
    };
    let birth = admitted - Duration::seconds_f64(age_years * 365.25 * 86_400.0);
    let patient = patient_resource(rng, &patient_id, index, birth);
    out.push(created(admitted, patient));

    let encounter_id = new_id(rng);
    let encounter_ref = format!("Encounter/{encounter_id}");
    let stay = if inpatient {
        Duration::hours(rng.random_range(12..=72))
    } else {
        Duration::minutes(40)
    };
    let discharged = admitted + stay;
    let mut plan = PatientPlan {
        patient: patient_ref.clone(),
        admitted,
        discharged,
        inpatient,
        sepsis: None,
    };
    let mut encounter = json!({
        "resourceType": "Encounter",
        "id": encounter_id,
        "status": "in-progress",
        "class": if inpatient {
            json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP", "display": "inpatient encounter"})
        } else {
            json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"})
        },
        "subject": {"reference": patient_ref},
        "period": {"start": fhir_time(admitted)},
    });
    out.push(created(admitted, encounter.clone()));

    past_immunizations(rng, &patient_ref, birth, admitted, &mut out);

    let refs = Refs {
        patient: &patient_ref,
        encounter: &encounter_ref,
    };
    if inpatient {
        let course = septic.then(|| SepsisPlan {
            onset: admitted + Duration::minutes(rng.random_range(120..=720)),
            ramp: Duration::minutes(rng.random_range(240..=480)),
        });
        plan.sepsis = course;
        let isolated_spike = !septic && rng.random_bool(0.05);
        stay_vitals = Some(Stay {
            rng: ChaCha8Rng::seed_from_u64(rng.random()),
            patient: patient_ref.clone(),
            encounter: encounter_ref.clone(),
            next_vitals: admitted + FIRST_VITALS_AFTER,
            discharged,
            course,
            spike_at: isolated_spike.then(|| admitted + (discharged - admitted) / 2),
        });
        // Later labs only for a course that peaks before discharge.
        let lab_course = course.filter(|c| c.onset + c.ramp < discharged);
        labs(
            rng,
            &refs,
            admitted + Duration::minutes(5),
            lab_course,
            &mut out,
        );
        if let Some(course) = course {
            let at = course.onset + course.ramp / 2;
            if at < discharged {
                out.push(created(
                    at,
                    medication_request(rng, &refs, at, catalog::SEPSIS_ANTIBIOTIC),
                ));
            }
        }
    } else {
        let at = admitted + Duration::minutes(10);
        let vitals = Vitals::normal(rng);
        vital_set(rng, config, &refs, at, &vitals, false, &mut out);
        if rng.random_bool(0.5) {
            let at = admitted + Duration::minutes(20);
            out.push(created(
                at,
                immunization(rng, &patient_ref, &catalog::INFLUENZA, at),
            ));
        }
        if rng.random_bool(0.2) {
            let medication = *catalog::OUTPATIENT_MEDICATIONS
                .choose(rng)
                .unwrap_or(&catalog::OUTPATIENT_MEDICATIONS[0]);
            let at = admitted + Duration::minutes(30);
            out.push(created(at, medication_request(rng, &refs, at, medication)));
        }
    }

    encounter["status"] = json!("finished");
    encounter["period"]["end"] = json!(fhir_time(discharged));
    out.push(Generated {
        at: discharged,
        action: Action::Update,
        resource: encounter,
    });
    (out, stay_vitals, plan)
}

struct Refs<'a> {
    patient: &'a str,
    encounter: &'a str,
}

fn created(at: OffsetDateTime, resource: Value) -> Generated {
    Generated {
        at,
        action: Action::Create,
        resource,
    }
}

fn patient_resource(rng: &mut ChaCha8Rng, id: &str, index: u64, birth: OffsetDateTime) -> Value {
    let female = rng.random_bool(0.5);
    let given = if female {
        catalog::GIVEN_FEMALE.choose(rng)
    } else {
        catalog::GIVEN_MALE.choose(rng)
    }
    .copied()
    .unwrap_or("Alex");
    let family = catalog::FAMILY.choose(rng).copied().unwrap_or("Doe");
    let (city, state, zip) =
        catalog::CITIES
            .choose(rng)
            .copied()
            .unwrap_or(("Springfield", "MA", "011"));
    let street = catalog::STREETS
        .choose(rng)
        .copied()
        .unwrap_or("High Street");
    let number: u32 = rng.random_range(1..400);
    let zip_suffix: u32 = rng.random_range(10..100);
    let phone: u32 = rng.random_range(1000..10000);
    json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [{
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR", "display": "Medical record number"}]},
            "system": catalog::MRN_SYSTEM,
            "value": format!("MRN{:08}", index + 1),
        }],
        "active": true,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "telecom": [{"system": "phone", "value": format!("555-01{:02}-{phone}", index % 100), "use": "home"}],
        "gender": if female { "female" } else { "male" },
        "birthDate": birth.date().to_string(),
        "address": [{
            "use": "home",
            "line": [format!("{number} {street}")],
            "city": city,
            "state": state,
            "postalCode": format!("{zip}{zip_suffix:02}"),
            "country": "US",
        }],
    })
}

/// The doses the schedule gave before admission (most, not all: coverage is not perfect),
/// plus influenza shots in the last three seasons for adults.
fn past_immunizations(
    rng: &mut ChaCha8Rng,
    patient: &str,
    birth: OffsetDateTime,
    admitted: OffsetDateTime,
    out: &mut Vec<Generated>,
) {
    for vaccine in catalog::VACCINES {
        for months in vaccine.doses_at_months {
            let given = birth
                + Duration::seconds_f64(f64::from(*months) * DAYS_PER_MONTH * 86_400.0)
                + Duration::days(rng.random_range(0..21));
            if given >= admitted || !rng.random_bool(0.85) {
                continue;
            }
            out.push(created(
                admitted,
                immunization(rng, patient, vaccine, given),
            ));
        }
    }
    let age_days = (admitted - birth).whole_days();
    if age_days > 18 * 365 {
        for season in 1..=3 {
            let given = admitted - Duration::days(365 * season - rng.random_range(0..60));
            if rng.random_bool(0.55) {
                out.push(created(
                    admitted,
                    immunization(rng, patient, &catalog::INFLUENZA, given),
                ));
            }
        }
    }
}

fn immunization(
    rng: &mut ChaCha8Rng,
    patient: &str,
    vaccine: &catalog::Vaccine,
    given: OffsetDateTime,
) -> Value {
    json!({
        "resourceType": "Immunization",
        "id": new_id(rng),
        "status": "completed",
        "vaccineCode": {
            "coding": [{"system": catalog::CVX, "code": vaccine.cvx, "display": vaccine.display}],
            "text": vaccine.display,
        },
        "patient": {"reference": patient},
        "occurrenceDateTime": fhir_time(given),
        "primarySource": true,
    })
}

/// One set of vital signs.
struct Vitals {
    respiratory_rate: f64,
    systolic: f64,
    diastolic: f64,
    heart_rate: f64,
    temperature: f64,
    oxygen_saturation: f64,
    gcs: f64,
}

impl Vitals {
    /// Normal adult ranges, kept clear of the qSOFA thresholds (RR ≤ 21, SBP ≥ 101).
    fn normal(rng: &mut ChaCha8Rng) -> Self {
        let systolic: f64 = rng.random_range(104.0..150.0_f64).round();
        Self {
            respiratory_rate: rng.random_range(12.0..21.0_f64).round(),
            systolic,
            diastolic: (systolic * rng.random_range(0.58..0.68)).round(),
            heart_rate: rng.random_range(60.0..95.0_f64).round(),
            temperature: round1(rng.random_range(36.4..37.3)),
            oxygen_saturation: rng.random_range(95.0..100.0_f64).round(),
            gcs: 15.0,
        }
    }

    /// Moves a normal set along a sepsis course (progress 0..1): tachypnoea, hypotension,
    /// tachycardia, fever, desaturation, then altered mentation.
    fn septic(mut self, progress: f64) -> Self {
        self.respiratory_rate = (self.respiratory_rate + 12.0 * progress).round();
        self.systolic = (self.systolic.min(128.0) - 38.0 * progress).round();
        self.diastolic = (self.systolic * 0.6).round();
        self.heart_rate = (self.heart_rate + 35.0 * progress).round();
        self.temperature = round1(self.temperature + 1.8 * progress);
        self.oxygen_saturation = (self.oxygen_saturation - 7.0 * progress).round();
        self.gcs = (15.0 - (3.0 * progress).round()).max(3.0);
        self
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn vital_set(
    rng: &mut ChaCha8Rng,
    config: &GeneratorConfig,
    refs: &Refs<'_>,
    effective: OffsetDateTime,
    vitals: &Vitals,
    with_gcs: bool,
    out: &mut Vec<Generated>,
) {
    let mut single = |rng: &mut ChaCha8Rng, code: &VitalCode, value: f64| {
        let resource = vital_observation(rng, refs, effective, code, value);
        out.push(created(sent_at(rng, config, effective), resource));
    };
    single(rng, &catalog::RESPIRATORY_RATE, vitals.respiratory_rate);
    single(rng, &catalog::HEART_RATE, vitals.heart_rate);
    single(rng, &catalog::BODY_TEMPERATURE, vitals.temperature);
    single(rng, &catalog::OXYGEN_SATURATION, vitals.oxygen_saturation);
    if with_gcs {
        single(rng, &catalog::GCS_TOTAL, vitals.gcs);
    }
    let (panel_code, panel_display) = catalog::BP_PANEL;
    let panel = json!({
        "resourceType": "Observation",
        "id": new_id(rng),
        "status": "final",
        "category": [vital_signs_category()],
        "code": {"coding": [{"system": catalog::LOINC, "code": panel_code, "display": panel_display}], "text": "Blood pressure"},
        "subject": {"reference": refs.patient},
        "encounter": {"reference": refs.encounter},
        "effectiveDateTime": fhir_time(effective),
        "component": [
            component(&catalog::SYSTOLIC, vitals.systolic),
            component(&catalog::DIASTOLIC, vitals.diastolic),
        ],
    });
    out.push(created(sent_at(rng, config, effective), panel));
}

/// When a measurement reaches the server: usually within a minute, sometimes much later
/// (a device that buffered), which makes arrival order differ from effective order.
fn sent_at(
    rng: &mut ChaCha8Rng,
    config: &GeneratorConfig,
    effective: OffsetDateTime,
) -> OffsetDateTime {
    if rng.random_bool(config.late_share) {
        effective + Duration::minutes(rng.random_range(20..=90))
    } else {
        effective + Duration::seconds(rng.random_range(0..60))
    }
}

fn vital_signs_category() -> Value {
    json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]})
}

fn quantity(code: &VitalCode, value: f64) -> Value {
    json!({"value": value, "unit": code.unit_display, "system": catalog::UCUM, "code": code.unit})
}

fn component(code: &VitalCode, value: f64) -> Value {
    json!({
        "code": {"coding": [{"system": catalog::LOINC, "code": code.loinc, "display": code.display}]},
        "valueQuantity": quantity(code, value),
    })
}

fn vital_observation(
    rng: &mut ChaCha8Rng,
    refs: &Refs<'_>,
    effective: OffsetDateTime,
    code: &VitalCode,
    value: f64,
) -> Value {
    json!({
        "resourceType": "Observation",
        "id": new_id(rng),
        "status": "final",
        "category": [vital_signs_category()],
        "code": {"coding": [{"system": catalog::LOINC, "code": code.loinc, "display": code.display}], "text": code.display},
        "subject": {"reference": refs.patient},
        "encounter": {"reference": refs.encounter},
        "effectiveDateTime": fhir_time(effective),
        "valueQuantity": quantity(code, value),
    })
}

fn labs(
    rng: &mut ChaCha8Rng,
    refs: &Refs<'_>,
    at: OffsetDateTime,
    course: Option<SepsisPlan>,
    out: &mut Vec<Generated>,
) {
    let mut lab = |rng: &mut ChaCha8Rng, at: OffsetDateTime, code: &VitalCode, value: f64| {
        let resource = json!({
            "resourceType": "Observation",
            "id": new_id(rng),
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory", "display": "Laboratory"}]}],
            "code": {"coding": [{"system": catalog::LOINC, "code": code.loinc, "display": code.display}], "text": code.display},
            "subject": {"reference": refs.patient},
            "encounter": {"reference": refs.encounter},
            "effectiveDateTime": fhir_time(at),
            "valueQuantity": quantity(code, value),
        });
        out.push(created(at + Duration::minutes(45), resource));
    };
    let white_cells = round1(rng.random_range(4.5..10.5));
    lab(rng, at, &catalog::WBC, white_cells);
    let lactate = round1(rng.random_range(0.6..1.8));
    lab(rng, at, &catalog::LACTATE, lactate);
    if let Some(course) = course {
        let later = course.onset + course.ramp;
        let white_cells = round1(rng.random_range(13.0..22.0));
        lab(rng, later, &catalog::WBC, white_cells);
        let lactate = round1(rng.random_range(2.5..5.5));
        lab(rng, later, &catalog::LACTATE, lactate);
    }
}

fn medication_request(
    rng: &mut ChaCha8Rng,
    refs: &Refs<'_>,
    at: OffsetDateTime,
    (code, text): (Option<&str>, &str),
) -> Value {
    let mut concept = json!({"text": text});
    if let Some(code) = code {
        concept["coding"] = json!([{"system": catalog::RXNORM, "code": code, "display": text}]);
    }
    json!({
        "resourceType": "MedicationRequest",
        "id": new_id(rng),
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": concept,
        "subject": {"reference": refs.patient},
        "encounter": {"reference": refs.encounter},
        "authoredOn": fhir_time(at),
    })
}
