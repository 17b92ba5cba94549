//! Synthetic clinical data: Patients with Encounters and vital-sign Observations, as
//! transaction Bundles linked by `urn:uuid` references. Deterministic per patient number, so a
//! search can ask for a value it knows was loaded.

use serde_json::{Value, json};
use uuid::Uuid;

/// The identifier system of generated patients.
pub const MRN_SYSTEM: &str = "urn:flare-bench:mrn";
/// Vital signs (LOINC code, display, unit, typical value).
pub const VITALS: [(&str, &str, &str, f64); 8] = [
    ("8867-4", "Heart rate", "/min", 72.0),
    ("9279-1", "Respiratory rate", "/min", 16.0),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 120.0),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 80.0),
    ("8310-5", "Body temperature", "Cel", 37.0),
    ("59408-5", "Oxygen saturation", "%", 97.0),
    ("29463-7", "Body weight", "kg", 75.0),
    ("8302-2", "Body height", "cm", 172.0),
];
/// Observations fall on days from 2024-01-01 over this many days.
pub const OBSERVATION_DAYS: u64 = 730;
const FAMILY_STARTS: [&str; 24] = [
    "Ander", "Bal", "Car", "Dal", "Eber", "Fitz", "Gar", "Hal", "Iver", "Jen", "Kel", "Lind",
    "Mar", "Nor", "Oster", "Pen", "Quin", "Ros", "Stan", "Tal", "Ul", "Van", "Wes", "Yar",
];
const FAMILY_ENDS: [&str; 20] = [
    "son", "berg", "ley", "ton", "field", "man", "wood", "ford", "strom", "dale", "sen", "worth",
    "holm", "by", "ridge", "well", "mont", "hurst", "gaard", "croft",
];
const GIVEN: [&str; 12] = [
    "Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kit", "Lea",
];

/// How the dataset is cut into Bundles.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub patients: usize,
    pub observations: usize,
    pub encounters_per_patient: usize,
    pub patients_per_bundle: usize,
}

impl Shape {
    /// Encounters scale with the observations (one per five, at least one); Bundles hold
    /// whole patients and about 200 entries.
    pub fn new(patients: usize, observations: usize) -> Self {
        let patients = patients.max(1);
        let per_patient = observations.div_ceil(patients);
        let encounters_per_patient = (per_patient / 5).max(1);
        let entries_per_patient = 1 + encounters_per_patient + per_patient;
        let patients_per_bundle = (200 / entries_per_patient).max(1);
        Self {
            patients,
            observations,
            encounters_per_patient,
            patients_per_bundle,
        }
    }

    /// Observations of patient `patient`: the total spread evenly, the first ones taking the
    /// remainder.
    pub fn observations_of(&self, patient: usize) -> usize {
        let base = self.observations / self.patients;
        base + usize::from(patient < self.observations % self.patients)
    }

    pub fn bundles(&self) -> usize {
        self.patients.div_ceil(self.patients_per_bundle)
    }

    pub fn resources(&self) -> usize {
        self.patients * (1 + self.encounters_per_patient) + self.observations
    }

    /// The patients of Bundle number `bundle`.
    pub fn patients_in(&self, bundle: usize) -> std::ops::Range<usize> {
        let start = bundle * self.patients_per_bundle;
        start.min(self.patients)..(start + self.patients_per_bundle).min(self.patients)
    }
}

/// A well-mixed 64-bit hash of a number (SplitMix64), for reproducible variety.
pub fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The family name of patient `patient`: one of 480 names.
pub fn family_name(patient: usize) -> String {
    let h = mix(patient as u64) as usize;
    format!(
        "{}{}",
        FAMILY_STARTS[h % FAMILY_STARTS.len()],
        FAMILY_ENDS[(h / 97) % FAMILY_ENDS.len()]
    )
}

pub fn mrn(patient: usize) -> String {
    format!("MRN{patient:08}")
}

/// A date `day` days after 2024-01-01, as `YYYY-MM-DD`.
pub fn date_after_2024(day: u64) -> String {
    const DAYS_IN_MONTH: [u64; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut year = 2024;
    let mut day = day;
    loop {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let length = if leap { 366 } else { 365 };
        if day < length {
            let mut month = 0;
            while month < 12 {
                let days = DAYS_IN_MONTH[month] + u64::from(month == 1 && leap);
                if day < days {
                    break;
                }
                day -= days;
                month += 1;
            }
            return format!("{year:04}-{:02}-{:02}", month + 1, day + 1);
        }
        day -= length;
        year += 1;
    }
}

pub fn patient(patient: usize) -> Value {
    let h = mix(patient as u64 ^ 0xABCD);
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": MRN_SYSTEM, "value": mrn(patient)}],
        "name": [{"family": family_name(patient), "given": [GIVEN[(h % 12) as usize]]}],
        "gender": if h.is_multiple_of(2) { "female" } else { "male" },
        "birthDate": format!("{}-{:02}-{:02}", 1930 + h % 90, 1 + (h / 7) % 12, 1 + (h / 11) % 28),
    })
}

pub fn encounter(subject: &str, day: u64) -> Value {
    let date = date_after_2024(day);
    json!({
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": subject},
        "period": {"start": format!("{date}T08:00:00Z"), "end": format!("{date}T09:00:00Z")},
    })
}

/// Vital sign `vital` of [`VITALS`] for `subject`, on `day` (seconds vary with `seed`).
pub fn observation(
    subject: &str,
    encounter: Option<&str>,
    vital: usize,
    day: u64,
    seed: u64,
) -> Value {
    let (code, display, unit, typical) = VITALS[vital % VITALS.len()];
    let h = mix(seed);
    let value = typical * (0.9 + (h % 200) as f64 / 1000.0);
    let mut resource = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": subject},
        "effectiveDateTime": format!("{}T{:02}:{:02}:{:02}Z", date_after_2024(day), 8 + h % 12, (h / 13) % 60, (h / 17) % 60),
        "valueQuantity": {"value": (value * 10.0).round() / 10.0, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    });
    if let Some(encounter) = encounter {
        resource["encounter"] = json!({"reference": encounter});
    }
    resource
}

fn entry(full_url: &str, resource: Value) -> Value {
    let resource_type = resource["resourceType"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": resource_type}})
}

fn urn() -> String {
    format!("urn:uuid:{}", Uuid::new_v4())
}

/// Transaction Bundle number `bundle` of `shape`. Also returns, per patient in it, the index
/// of its Patient entry (the transaction response has one entry per request entry, in order).
pub fn transaction(shape: &Shape, bundle: usize) -> (Value, Vec<(usize, usize)>) {
    let mut entries = Vec::new();
    let mut patient_entries = Vec::new();
    for number in shape.patients_in(bundle) {
        let patient_urn = urn();
        patient_entries.push((number, entries.len()));
        entries.push(entry(&patient_urn, patient(number)));
        let observations = shape.observations_of(number);
        let first_day = mix(number as u64 ^ 0x5EED) % OBSERVATION_DAYS;
        let encounter_urns: Vec<String> =
            (0..shape.encounters_per_patient).map(|_| urn()).collect();
        for (index, encounter_urn) in encounter_urns.iter().enumerate() {
            let day = (first_day + index as u64 * 7) % OBSERVATION_DAYS;
            entries.push(entry(encounter_urn, encounter(&patient_urn, day)));
        }
        for index in 0..observations {
            let encounter_index = index * encounter_urns.len() / observations.max(1);
            let day = (first_day + encounter_index as u64 * 7) % OBSERVATION_DAYS;
            let seed = (number as u64) << 20 | index as u64;
            let resource = observation(
                &patient_urn,
                encounter_urns.get(encounter_index).map(String::as_str),
                index,
                day,
                seed,
            );
            entries.push(entry(&urn(), resource));
        }
    }
    (
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        patient_entries,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_keeps_the_requested_totals_and_bundle_sizes() {
        for (patients, observations) in
            [(100_000, 1_000_000), (10_000, 100_000), (7, 100), (1000, 0)]
        {
            let shape = Shape::new(patients, observations);
            let total: usize = (0..patients).map(|p| shape.observations_of(p)).sum();
            assert_eq!(total, observations);
            let covered: usize = (0..shape.bundles())
                .map(|b| shape.patients_in(b).len())
                .sum();
            assert_eq!(covered, patients);
            let (bundle, _) = transaction(&shape, 0);
            let entries = bundle["entry"].as_array().unwrap().len();
            assert!(
                entries <= 300,
                "{patients}/{observations}: {entries} entries"
            );
        }
        let shape = Shape::new(100_000, 1_000_000);
        let (bundle, _) = transaction(&shape, 3);
        let entries = bundle["entry"].as_array().unwrap().len();
        assert!((100..=300).contains(&entries), "{entries}");
    }

    #[test]
    fn observations_reference_their_patient_and_encounter_by_urn() {
        let shape = Shape::new(10, 100);
        let (bundle, patients) = transaction(&shape, 0);
        let entries = bundle["entry"].as_array().unwrap();
        let (number, index) = patients[1];
        assert_eq!(number, 1);
        let patient_url = entries[index]["fullUrl"].as_str().unwrap();
        assert!(patient_url.starts_with("urn:uuid:"));
        let encounter_url = entries[index + 1]["fullUrl"].as_str().unwrap();
        let observation = &entries[index + 1 + shape.encounters_per_patient]["resource"];
        assert_eq!(observation["subject"]["reference"], patient_url);
        assert_eq!(observation["encounter"]["reference"], encounter_url);
        assert_eq!(entries[index]["resource"]["identifier"][0]["value"], mrn(1));
    }

    #[test]
    fn dates_cross_years_and_leap_days() {
        assert_eq!(date_after_2024(0), "2024-01-01");
        assert_eq!(date_after_2024(59), "2024-02-29");
        assert_eq!(date_after_2024(365), "2024-12-31");
        assert_eq!(date_after_2024(366), "2025-01-01");
        assert_eq!(date_after_2024(730), "2025-12-31");
    }

    #[test]
    fn family_names_come_from_the_known_set() {
        let names: Vec<String> = FAMILY_STARTS
            .iter()
            .flat_map(|start| FAMILY_ENDS.iter().map(move |end| format!("{start}{end}")))
            .collect();
        assert_eq!(names.len(), 480);
        for patient in 0..1000 {
            assert!(names.contains(&family_name(patient)));
        }
    }
}
