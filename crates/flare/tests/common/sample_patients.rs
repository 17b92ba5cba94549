//! The sample-patient fixtures' README table (../shared/fixtures/sample-patients), checked
//! against a server the fixtures were loaded into by any route (files, Kafka).

use std::collections::{BTreeMap, BTreeSet};

use super::Served;

const CVX: &str = "http://hl7.org/fhir/sid/cvx";
const LOINC: &str = "http://loinc.org";

/// Dates (YYYY-MM-DD) of the patient's Observations matching `filter`.
fn observation_dates(served: &Served, patient: &str, filter: &str) -> BTreeSet<String> {
    served
        .all(&format!(
            "Observation?subject=Patient/{patient}&{filter}&_count=500"
        ))
        .iter()
        .filter_map(|observation| observation["effectiveDateTime"].as_str())
        .map(|date| date.chars().take(10).collect())
        .collect()
}

/// Patients and birth dates, immunizations by CVX code, Observations, respiratory rates and
/// systolic pressures per patient, and the dates with both qSOFA vital criteria, for the
/// DSTU2 XML folder.
pub fn assert_dstu2_readme_counts(served: &Served) {
    let patients: BTreeMap<String, String> = served
        .all("Patient?_count=100")
        .iter()
        .map(|patient| {
            (
                patient["id"].as_str().unwrap().to_owned(),
                patient["birthDate"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expected_patients: BTreeMap<String, String> = [
        ("1032702", "2007-03-20"),
        ("1134281", "2004-10-15"),
        ("1288992", "1925-12-23"),
        ("1614502", "2006-11-22"),
        ("1869612", "1950-07-31"),
        ("4444001", "1932-06-15"),
        ("629528", "1981-10-27"),
        ("7321938", "2010-12-16"),
        ("8888801", "1953-03-17"),
        ("981968", "1956-03-23"),
    ]
    .into_iter()
    .map(|(id, date)| (id.to_owned(), date.to_owned()))
    .collect();
    assert_eq!(patients, expected_patients);

    // Immunizations by CVX code (the legacy system URL is now the R4 one).
    let mut vaccines: BTreeMap<&str, u64> = BTreeMap::new();
    for code in [
        "110", "89", "116", "21", "104", "03", "141", "115", "33", "121",
    ] {
        vaccines.insert(
            code,
            served.count(&format!("Immunization?vaccine-code={CVX}|{code}")),
        );
    }
    let expected_vaccines: BTreeMap<&str, u64> = [
        ("110", 1),
        ("89", 2),
        ("116", 1),
        ("21", 1),
        ("104", 1),
        ("03", 2),
        ("141", 1),
        ("115", 1),
        ("33", 1),
        ("121", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(vaccines, expected_vaccines);
    assert_eq!(served.count("Immunization"), 12);

    // Observations, respiratory rate and systolic pressure per patient; then the dates on
    // which both RR >= 22/min and SBP <= 100 mm Hg occur.
    let table: &[(&str, u64, u64, u64, usize)] = &[
        ("1032702", 1, 0, 0, 0),
        ("1134281", 69, 0, 0, 0),
        ("1288992", 317, 27, 27, 2),
        ("1614502", 2, 0, 0, 0),
        ("1869612", 242, 18, 18, 2),
        ("4444001", 0, 0, 0, 0),
        ("629528", 181, 15, 15, 0),
        ("7321938", 7, 0, 0, 0),
        ("8888801", 318, 0, 9, 0),
        ("981968", 151, 15, 15, 0),
    ];
    for (patient, observations, rr, sbp, qsofa_dates) in table {
        let subject = format!("subject=Patient/{patient}");
        assert_eq!(
            served.count(&format!("Observation?{subject}")),
            *observations,
            "{patient}"
        );
        assert_eq!(
            served.count(&format!("Observation?{subject}&code={LOINC}|9279-1")),
            *rr,
            "{patient} RR"
        );
        assert_eq!(
            served.count(&format!("Observation?{subject}&code={LOINC}|8480-6")),
            *sbp,
            "{patient} SBP"
        );
        let fast_breathing = observation_dates(
            served,
            patient,
            &format!("code={LOINC}|9279-1&value-quantity=ge22"),
        );
        let low_pressure = observation_dates(
            served,
            patient,
            &format!("code={LOINC}|8480-6&value-quantity=le100"),
        );
        assert_eq!(
            fast_breathing.intersection(&low_pressure).count(),
            *qsofa_dates,
            "{patient} dates with RR>=22 and SBP<=100"
        );
    }
    assert_eq!(served.count("Observation"), 1288);
}
