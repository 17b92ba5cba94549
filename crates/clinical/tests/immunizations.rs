//! Immunization counting through the public API.

use flare_clinical::Timestamp;
use flare_clinical::immunizations::{
    Bucket, CountDelta, CountScope, ImmunizationCounts, ImmunizationReading, NotCounted,
    SeriesPoint, is_cvx_system,
};
use serde_json::{Value, json};

fn immunization(id: &str, cvx: &str, when: &str, status: &str) -> Value {
    json!({
        "resourceType": "Immunization", "id": id, "status": status,
        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": cvx, "display": format!("vaccine {cvx}")}]},
        "patient": {"reference": "Patient/p1"},
        "occurrenceDateTime": when
    })
}

fn t(text: &str) -> Timestamp {
    Timestamp::parse_fhir(text).unwrap()
}

fn totals(counts: &ImmunizationCounts) -> Vec<(String, u64)> {
    counts
        .totals()
        .into_iter()
        .map(|total| (total.vaccine, total.count))
        .collect()
}

#[test]
fn completed_immunizations_count_by_vaccine_day_and_hour() {
    let mut counts = ImmunizationCounts::new();
    let outcome = counts.observe(&immunization(
        "i1",
        "140",
        "2026-03-14T09:15:00Z",
        "completed",
    ));
    assert_eq!(
        outcome.deltas,
        [
            CountDelta {
                vaccine: "140".into(),
                scope: CountScope::Total,
                count: 1
            },
            CountDelta {
                vaccine: "140".into(),
                scope: CountScope::Day(t("2026-03-14")),
                count: 1
            },
            CountDelta {
                vaccine: "140".into(),
                scope: CountScope::Hour(t("2026-03-14T09:00:00Z")),
                count: 1
            },
        ]
    );
    counts.observe(&immunization(
        "i2",
        "140",
        "2026-03-14T17:00:00+02:00",
        "completed",
    ));
    counts.observe(&immunization("i3", "140", "2026-03-15", "completed"));
    counts.observe(&immunization("i4", "08", "2026-03-15", "completed"));
    assert_eq!(totals(&counts), [("08".into(), 1), ("140".into(), 3)]);
    assert_eq!(counts.totals()[1].display.as_deref(), Some("vaccine 140"));
    let days = counts.series(t("2026-03-14"), t("2026-03-16"), Bucket::Day);
    let point = |vaccine: &str, start: &str, count| SeriesPoint {
        vaccine: vaccine.into(),
        start: t(start),
        count,
    };
    assert_eq!(
        days,
        [
            point("08", "2026-03-15", 1),
            point("140", "2026-03-14", 2),
            point("140", "2026-03-15", 1)
        ]
    );
    // The range is [from, to): one day only.
    assert_eq!(
        counts
            .series(t("2026-03-15"), t("2026-03-16"), Bucket::Day)
            .len(),
        2
    );
    let hours = counts.series(t("2026-03-14"), t("2026-03-15"), Bucket::Hour);
    assert_eq!(
        hours,
        [
            point("140", "2026-03-14T09:00:00Z", 1),
            point("140", "2026-03-14T15:00:00Z", 1)
        ]
    );
    assert!(
        counts
            .series(t("2026-03-16"), t("2026-03-14"), Bucket::Day)
            .is_empty()
    );
}

#[test]
fn the_legacy_cdc_url_and_the_oid_are_cvx() {
    assert!(is_cvx_system("http://hl7.org/fhir/sid/cvx"));
    assert!(is_cvx_system("urn:oid:2.16.840.1.113883.12.292"));
    assert!(is_cvx_system(
        "http://www2a.cdc.gov/vaccines/IIS/IISStandards/vaccines.asp?rpt=cvx"
    ));
    assert!(is_cvx_system(
        "https://www2a.cdc.gov/vaccines/iis/iisstandards/vaccines.asp?rpt=cvx"
    ));
    assert!(!is_cvx_system("http://snomed.info/sct"));
    assert!(!is_cvx_system(
        "http://www2a.cdc.gov/vaccines/iis/iisstandards/vaccines.asp?rpt=tradename"
    ));

    // A DSTU2-style record as the sample generator writes it: legacy URL, `date`, no status.
    let legacy = json!({
        "resourceType": "Immunization", "id": "legacy-1", "wasNotGiven": false,
        "vaccineCode": {"coding": [{"system": "http://www2a.cdc.gov/vaccines/IIS/IISStandards/vaccines.asp?rpt=cvx", "code": "3"}]},
        "date": "2008-06-12"
    });
    let mut counts = ImmunizationCounts::new();
    let outcome = counts.observe(&legacy);
    assert!(matches!(
        outcome.reading,
        Some(ImmunizationReading::Counted { ref vaccine, .. }) if vaccine == "03"
    ));
    assert_eq!(totals(&counts), [("03".into(), 1)]);
    let mut not_given = legacy.clone();
    not_given["wasNotGiven"] = json!(true);
    let outcome = counts.observe(&not_given);
    assert!(matches!(
        outcome.reading,
        Some(ImmunizationReading::NotCounted {
            reason: NotCounted::NotGiven,
            ..
        })
    ));
    assert!(totals(&counts).is_empty());
}

#[test]
fn not_done_and_entered_in_error_do_not_count() {
    let mut counts = ImmunizationCounts::new();
    for (id, status) in [("a", "not-done"), ("b", "entered-in-error")] {
        let outcome = counts.observe(&immunization(id, "140", "2026-03-14", status));
        assert!(outcome.deltas.is_empty());
    }
    assert!(totals(&counts).is_empty());
    counts.observe(&immunization("c", "140", "2026-03-14", "completed"));
    let outcome = counts.observe(&immunization("c", "140", "2026-03-14", "entered-in-error"));
    assert_eq!(outcome.deltas.len(), 3);
    assert!(outcome.deltas.iter().all(|delta| delta.count == 0));
    assert!(totals(&counts).is_empty());
    assert_eq!(counts.counted(), 0);
}

#[test]
fn an_update_moves_the_count_and_a_replay_changes_nothing() {
    let mut counts = ImmunizationCounts::new();
    let first = immunization("i1", "140", "2026-03-14T09:00:00Z", "completed");
    counts.observe(&first);
    assert!(
        counts.observe(&first).deltas.is_empty(),
        "replay is idempotent"
    );

    // A new vaccine code: 140 loses one, 141 gains one.
    let outcome = counts.observe(&immunization(
        "i1",
        "141",
        "2026-03-14T09:00:00Z",
        "completed",
    ));
    let moved: Vec<_> = outcome
        .deltas
        .iter()
        .filter(|d| d.scope == CountScope::Total)
        .map(|d| (d.vaccine.as_str(), d.count))
        .collect();
    assert_eq!(moved, [("140", 0), ("141", 1)]);
    assert_eq!(totals(&counts), [("141".into(), 1)]);

    // A new hour on the same day: the day and the total stay, two hours change.
    let outcome = counts.observe(&immunization(
        "i1",
        "141",
        "2026-03-14T11:00:00Z",
        "completed",
    ));
    let scopes: Vec<_> = outcome.deltas.iter().map(|d| (d.scope, d.count)).collect();
    assert_eq!(
        scopes,
        [
            (CountScope::Hour(t("2026-03-14T09:00:00Z")), 0),
            (CountScope::Hour(t("2026-03-14T11:00:00Z")), 1)
        ]
    );
}

#[test]
fn a_delete_removes_the_count_once() {
    let mut counts = ImmunizationCounts::new();
    counts.observe(&immunization("i1", "140", "2026-03-14", "completed"));
    counts.observe(&immunization("i2", "140", "2026-03-14", "completed"));
    let outcome = counts.observe_deleted("i1");
    assert!(outcome.deltas.iter().all(|d| d.count == 1));
    assert_eq!(outcome.deltas.len(), 3);
    assert!(counts.observe_deleted("i1").deltas.is_empty());
    assert!(counts.observe_deleted("unknown").deltas.is_empty());
    assert_eq!(totals(&counts), [("140".into(), 1)]);
}

#[test]
fn unusable_records_are_rejected_values_and_clear_an_earlier_count() {
    let mut counts = ImmunizationCounts::new();
    counts.observe(&immunization("i1", "140", "2026-03-14", "completed"));
    let mut no_cvx = immunization("i1", "140", "2026-03-14", "completed");
    no_cvx["vaccineCode"] = json!({"coding": [{"system": "http://snomed.info/sct", "code": "1"}]});
    let outcome = counts.observe(&no_cvx);
    assert!(matches!(
        outcome.reading,
        Some(ImmunizationReading::Rejected { .. })
    ));
    assert!(totals(&counts).is_empty());
    let mut bad_date = immunization("i2", "140", "2026-03-14", "completed");
    bad_date["occurrenceDateTime"] = json!("last spring");
    assert!(counts.observe(&bad_date).deltas.is_empty());
    let mut string_occurrence = immunization("i3", "140", "2026-03-14", "completed");
    string_occurrence
        .as_object_mut()
        .unwrap()
        .remove("occurrenceDateTime");
    string_occurrence["occurrenceString"] = json!("childhood");
    assert!(counts.observe(&string_occurrence).deltas.is_empty());
    assert!(
        counts
            .observe(&json!({"resourceType": "Patient", "id": "x"}))
            .deltas
            .is_empty()
    );
}

#[test]
fn counts_survive_a_checkpoint() {
    let mut counts = ImmunizationCounts::new();
    counts.observe(&immunization("i1", "140", "2026-03-14", "completed"));
    counts.observe(&immunization(
        "i2",
        "08",
        "2026-03-15T10:00:00Z",
        "completed",
    ));
    let bytes = serde_json::to_vec(&counts).unwrap();
    let mut restored: ImmunizationCounts = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(restored, counts);
    // The restored state still knows each contribution: a delete after restart is exact.
    restored.observe_deleted("i2");
    assert_eq!(totals(&restored), [("140".into(), 1)]);
}
