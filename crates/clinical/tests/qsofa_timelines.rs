//! The qSOFA rules over hand-written timelines, through the public engine API.

use flare_clinical::qsofa::IgnoreReason;
use flare_clinical::{
    AlertEvent, Disposition, PatientQsofa, QsofaConfig, QsofaEngine, Rejection, ResolveReason,
    Timestamp,
};
use serde_json::{Value, json};

const BASE: &str = "2026-03-14T00:00:00Z";

fn at(minutes: i64) -> String {
    let base = Timestamp::parse_fhir(BASE).unwrap();
    base.saturating_add_millis(minutes * 60_000).to_rfc3339()
}

fn vital(id: &str, patient: &str, code: &str, value: f64, unit: &str, minutes: i64) -> Value {
    json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": at(minutes),
        "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": unit}
    })
}

fn rr(id: &str, value: f64, minutes: i64) -> Value {
    vital(id, "p1", "9279-1", value, "/min", minutes)
}

fn sbp(id: &str, value: f64, minutes: i64) -> Value {
    vital(id, "p1", "8480-6", value, "mm[Hg]", minutes)
}

fn gcs(id: &str, value: f64, minutes: i64) -> Value {
    vital(id, "p1", "9269-2", value, "{score}", minutes)
}

fn engine() -> QsofaEngine {
    QsofaEngine::new(QsofaConfig::default()).unwrap()
}

/// Feeds resources in order and returns every alert event.
fn run(engine: &mut QsofaEngine, resources: &[Value]) -> Vec<AlertEvent> {
    resources
        .iter()
        .flat_map(|resource| engine.observe(resource).alerts)
        .collect()
}

fn kinds(alerts: &[AlertEvent]) -> Vec<&'static str> {
    alerts
        .iter()
        .map(|alert| match alert {
            AlertEvent::Raised { .. } => "raised",
            AlertEvent::Updated { .. } => "updated",
            AlertEvent::Resolved { .. } => "resolved",
        })
        .collect()
}

#[test]
fn each_threshold_counts_exactly_at_its_boundary() {
    let mut at_boundary = engine();
    let alerts = run(&mut at_boundary, &[rr("a", 22.0, 0), sbp("b", 100.0, 10)]);
    assert_eq!(kinds(&alerts), ["raised"]);
    assert_eq!(alerts[0].episode().score, 2);

    let mut gcs_boundary = engine();
    let alerts = run(&mut gcs_boundary, &[gcs("a", 14.0, 0), sbp("b", 100.0, 0)]);
    assert_eq!(kinds(&alerts), ["raised"]);

    let mut just_outside = engine();
    let alerts = run(
        &mut just_outside,
        &[rr("a", 21.9, 0), sbp("b", 100.1, 0), gcs("c", 15.0, 0)],
    );
    assert!(alerts.is_empty(), "{alerts:?}");
    // One criterion alone is never positive.
    let alerts = run(&mut just_outside, &[rr("d", 30.0, 5), rr("e", 35.0, 6)]);
    assert!(alerts.is_empty(), "{alerts:?}");
}

#[test]
fn the_window_is_closed_at_six_hours() {
    for (gap_minutes, positive) in [(359, true), (360, true), (361, false)] {
        let mut engine = engine();
        let alerts = run(
            &mut engine,
            &[rr("a", 24.0, 0), sbp("b", 90.0, gap_minutes)],
        );
        assert_eq!(!alerts.is_empty(), positive, "gap {gap_minutes} min");
        if positive {
            let episode = alerts[0].episode();
            assert_eq!(episode.onset.to_rfc3339(), at(gap_minutes));
            assert_eq!(episode.end.to_rfc3339(), at(360));
        }
    }
    // And the other way round: the later evidence arriving first (within the lateness).
    let mut engine = QsofaEngine::new(QsofaConfig {
        window_minutes: 360,
        allowed_lateness_minutes: 360,
    })
    .unwrap();
    let alerts = run(&mut engine, &[sbp("b", 90.0, 359), rr("a", 24.0, 0)]);
    assert_eq!(kinds(&alerts), ["raised"]);
}

#[test]
fn out_of_order_arrival_keeps_one_episode_and_moves_its_onset() {
    let mut engine = engine();
    let alerts = run(
        &mut engine,
        &[rr("r2", 25.0, 60), gcs("g1", 13.0, 90), sbp("s1", 95.0, 30)],
    );
    // Raised at 90 min (RR + GCS); the SBP from 30 min makes it positive from 60 min on.
    assert_eq!(kinds(&alerts), ["raised", "updated"]);
    let raised = alerts[0].episode();
    let updated = alerts[1].episode();
    assert_eq!(raised.id, updated.id);
    assert_eq!(raised.onset.to_rfc3339(), at(90));
    assert_eq!(updated.onset.to_rfc3339(), at(60));
    assert_eq!(updated.score, 3);

    // The same evidence in time order ends in the same episode.
    let mut ordered = QsofaEngine::new(QsofaConfig::default()).unwrap();
    let ordered_alerts = run(
        &mut ordered,
        &[sbp("s1", 95.0, 30), rr("r2", 25.0, 60), gcs("g1", 13.0, 90)],
    );
    assert_eq!(kinds(&ordered_alerts), ["raised", "updated"]);
    let last = ordered_alerts.last().unwrap().episode();
    assert_eq!(
        (last.onset, last.end, last.score),
        (updated.onset, updated.end, 3)
    );
}

#[test]
fn a_retraction_ends_the_episode() {
    let mut engine = engine();
    let alerts = run(&mut engine, &[rr("r", 25.0, 0), sbp("s", 95.0, 30)]);
    assert_eq!(kinds(&alerts), ["raised"]);
    let id = alerts[0].episode().id.clone();

    let mut retracted = sbp("s", 95.0, 30);
    retracted["status"] = json!("entered-in-error");
    let outcome = engine.observe(&retracted);
    assert_eq!(outcome.disposition, Disposition::Cleared);
    assert_eq!(kinds(&outcome.alerts), ["resolved"]);
    match &outcome.alerts[0] {
        AlertEvent::Resolved { episode, reason } => {
            assert_eq!(episode.id, id);
            assert!(!episode.active);
            assert_eq!(*reason, ResolveReason::Withdrawn);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(engine.patient("p1").unwrap().active_episodes().count(), 0);
}

#[test]
fn a_delete_withdraws_what_the_observation_contributed() {
    let mut engine = engine();
    run(
        &mut engine,
        &[rr("r", 25.0, 0), sbp("s", 95.0, 30), gcs("g", 12.0, 40)],
    );
    let outcome = engine.observe_deleted("g");
    assert_eq!(kinds(&outcome.alerts), ["updated"]);
    assert_eq!(outcome.alerts[0].episode().score, 2);
    let outcome = engine.observe_deleted("r");
    assert_eq!(kinds(&outcome.alerts), ["resolved"]);
    // A delete of something that contributed nothing is a no-op.
    let outcome = engine.observe_deleted("never-seen");
    assert_eq!(
        outcome.disposition,
        Disposition::Ignored(IgnoreReason::NoEvidence)
    );
    assert!(outcome.alerts.is_empty());
}

#[test]
fn a_correction_replaces_the_observations_evidence() {
    let mut engine = engine();
    let alerts = run(&mut engine, &[rr("r", 25.0, 0), sbp("s", 110.0, 30)]);
    assert!(alerts.is_empty());
    let mut corrected = sbp("s", 95.0, 30);
    corrected["status"] = json!("corrected");
    let alerts = run(&mut engine, &[corrected]);
    assert_eq!(kinds(&alerts), ["raised"]);
    assert_eq!(
        alerts[0]
            .episode()
            .basis
            .iter()
            .map(|b| b.value)
            .collect::<Vec<_>>(),
        [25.0, 95.0]
    );
    let mut amended = rr("r", 18.0, 0);
    amended["status"] = json!("amended");
    let outcome = engine.observe(&amended);
    assert_eq!(outcome.disposition, Disposition::Normal);
    assert_eq!(kinds(&outcome.alerts), ["resolved"]);
    // A new version with an unusable value also takes the old evidence away.
    let mut engine = QsofaEngine::new(QsofaConfig::default()).unwrap();
    run(&mut engine, &[rr("r", 25.0, 0), sbp("s", 95.0, 30)]);
    let outcome = engine.observe(&vital("s", "p1", "8480-6", 12.0, "kPa", 30));
    assert!(matches!(
        outcome.disposition,
        Disposition::Rejected(Rejection::WrongUnit { .. })
    ));
    assert_eq!(kinds(&outcome.alerts), ["resolved"]);
}

#[test]
fn panel_components_count_like_standalone_systolic_observations() {
    let panel = json!({
        "resourceType": "Observation", "id": "bp", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": at(20),
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 88, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 50, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]
    });
    let mut engine = engine();
    let alerts = run(&mut engine, &[rr("r", 23.0, 0), panel]);
    assert_eq!(kinds(&alerts), ["raised"]);
    let basis: Vec<&str> = alerts[0]
        .episode()
        .basis
        .iter()
        .map(|b| b.observation_id.as_str())
        .collect();
    assert_eq!(basis, ["r", "bp"]);
    // A standalone systolic and a panel for the same reading are one criterion, not two.
    let alerts = run(&mut engine, &[sbp("s", 88.0, 20)]);
    assert!(alerts.is_empty(), "{alerts:?}");
    let active: Vec<_> = engine.patient("p1").unwrap().active_episodes().collect();
    assert_eq!(active[0].score, 2);
}

#[test]
fn wrong_units_are_rejected_values_and_count_for_nothing() {
    let mut engine = engine();
    let outcome = engine.observe(&vital("s", "p1", "8480-6", 12.0, "kPa", 0));
    assert!(matches!(
        outcome.disposition,
        Disposition::Rejected(Rejection::WrongUnit { .. })
    ));
    let outcome = engine.observe(&vital("r", "p1", "9279-1", 30.0, "/h", 0));
    assert!(matches!(outcome.disposition, Disposition::Rejected(_)));
    let mut text_value = rr("t", 0.0, 0);
    text_value.as_object_mut().unwrap().remove("valueQuantity");
    text_value["valueString"] = json!("30");
    let outcome = engine.observe(&text_value);
    assert!(matches!(
        outcome.disposition,
        Disposition::Rejected(Rejection::NotAQuantity { .. })
    ));
    let alerts = run(&mut engine, &[gcs("g", 10.0, 0)]);
    assert!(alerts.is_empty());
}

#[test]
fn evidence_beyond_the_allowed_lateness_is_dropped_and_reported() {
    let config = QsofaConfig {
        window_minutes: 360,
        allowed_lateness_minutes: 60,
    };
    let mut engine = QsofaEngine::new(config).unwrap();
    run(&mut engine, &[rr("r", 25.0, 300)]);
    // 300 - 60 = 240: the boundary. 239 min is too late even though it is inside the window.
    let outcome = engine.observe(&sbp("late", 90.0, 239));
    assert!(
        matches!(outcome.disposition, Disposition::TooLate { .. }),
        "{outcome:?}"
    );
    assert!(outcome.alerts.is_empty());
    let outcome = engine.observe(&sbp("in-time", 90.0, 240));
    assert_eq!(outcome.disposition, Disposition::Recorded);
    assert_eq!(kinds(&outcome.alerts), ["raised"]);
}

#[test]
fn late_evidence_creating_a_past_window_raises_and_resolves_it() {
    let config = QsofaConfig {
        window_minutes: 360,
        allowed_lateness_minutes: 24 * 60,
    };
    let mut engine = QsofaEngine::new(config).unwrap();
    run(
        &mut engine,
        &[rr("r", 25.0, 0), sbp("normal", 120.0, 20 * 60)],
    );
    let alerts = run(&mut engine, &[gcs("g", 13.0, 60)]);
    assert_eq!(kinds(&alerts), ["raised", "resolved"]);
    let episode = alerts[0].episode();
    assert_eq!(episode.onset.to_rfc3339(), at(60));
    assert_eq!(episode.end.to_rfc3339(), at(360));
    assert!(matches!(
        &alerts[1],
        AlertEvent::Resolved { reason: ResolveReason::Elapsed, episode } if !episode.active
    ));
}

#[test]
fn one_episode_until_resolved_with_an_update_when_the_score_rises() {
    let mut engine = engine();
    let mut resources = Vec::new();
    for set in 0..8 {
        let minutes = set * 15;
        resources.push(rr(&format!("r{set}"), 26.0, minutes));
        resources.push(sbp(&format!("s{set}"), 92.0, minutes));
    }
    resources.push(gcs("g", 13.0, 120));
    let alerts = run(&mut engine, &resources);
    assert_eq!(kinds(&alerts), ["raised", "updated"]);
    assert_eq!(alerts[1].episode().score, 3);
    // Normal vitals from then on: the episode ends six hours after the last evidence.
    let mut alerts = Vec::new();
    for set in 9..40 {
        let minutes = set * 15;
        alerts.extend(run(
            &mut engine,
            &[
                rr(&format!("r{set}"), 16.0, minutes),
                sbp(&format!("s{set}"), 120.0, minutes),
            ],
        ));
    }
    assert_eq!(kinds(&alerts), ["resolved"]);
    let episode = alerts[0].episode();
    // RR and SBP last held at 105 min: two criteria until 105 + 360, GCS alone after that.
    assert_eq!(episode.end.to_rfc3339(), at(105 + 360));
    assert_eq!(episode.score, 3);
}

#[test]
fn a_long_episode_keeps_its_identity_while_the_state_stays_small() {
    let config = QsofaConfig::default();
    let mut state = PatientQsofa::new("p1");
    let mut engine = QsofaEngine::new(config.clone()).unwrap();
    let mut alerts = Vec::new();
    // Three days of septic vitals every 15 minutes.
    for set in 0..(3 * 24 * 4) {
        let minutes = set * 15;
        alerts.extend(run(
            &mut engine,
            &[
                rr(&format!("r{set}"), 28.0, minutes),
                sbp(&format!("s{set}"), 85.0, minutes),
                gcs(&format!("g{set}"), 13.0, minutes),
            ],
        ));
    }
    assert_eq!(kinds(&alerts), ["raised", "updated"]);
    let held = engine.patient("p1").unwrap();
    let active: Vec<_> = held.active_episodes().collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].onset.to_rfc3339(), at(0));
    assert_eq!(active[0].score, 3);
    // Evidence older than boundary - window is forgotten: 8 h of 3 criteria at most.
    assert!(held.observation_ids().count() <= 3 * (8 * 4 + 1));
    state.clone_from(held);
    let bytes = serde_json::to_vec(&state).unwrap();
    let restored: PatientQsofa = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(restored, state);
}

#[test]
fn checkpointed_state_resumes_where_it_stopped() {
    let timeline = [
        rr("r1", 25.0, 0),
        sbp("s1", 130.0, 10),
        gcs("g1", 14.0, 20),
        sbp("s2", 99.0, 40),
        rr("r2", 15.0, 500),
    ];
    let mut straight = engine();
    let straight_alerts = run(&mut straight, &timeline);

    let mut first = engine();
    let mut resumed_alerts = run(&mut first, &timeline[..2]);
    let bytes = serde_json::to_vec(first.patient("p1").unwrap()).unwrap();
    let mut second = engine();
    second.restore_patient(serde_json::from_slice(&bytes).unwrap());
    resumed_alerts.extend(run(&mut second, &timeline[2..]));
    assert_eq!(resumed_alerts, straight_alerts);
    assert_eq!(kinds(&straight_alerts), ["raised", "updated", "resolved"]);
}

#[test]
fn episode_ids_are_deterministic_and_distinct() {
    let timeline = [rr("r", 25.0, 0), sbp("s", 95.0, 30)];
    let first = run(&mut engine(), &timeline);
    let second = run(&mut engine(), &timeline);
    assert_eq!(first, second);
    let other_patient = run(
        &mut engine(),
        &[
            vital("r", "p2", "9279-1", 25.0, "/min", 0),
            vital("s", "p2", "8480-6", 95.0, "mm[Hg]", 30),
        ],
    );
    assert_ne!(first[0].episode().id, other_patient[0].episode().id);
    let id = &first[0].episode().id;
    assert!(id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
}

#[test]
fn an_observation_moved_to_another_patient_leaves_the_first() {
    let mut engine = engine();
    run(&mut engine, &[rr("r", 25.0, 0), sbp("s", 95.0, 30)]);
    let moved = vital("s", "p2", "8480-6", 95.0, "mm[Hg]", 30);
    let outcome = engine.observe(&moved);
    assert_eq!(kinds(&outcome.alerts), ["resolved"]);
    assert_eq!(outcome.touched, ["p1", "p2"]);
    assert!(engine.patient("p2").unwrap().holds("s"));
    assert!(!engine.patient("p1").unwrap().holds("s"));
}

#[test]
fn episodes_split_and_merge_with_stable_ids() {
    let config = QsofaConfig {
        window_minutes: 360,
        allowed_lateness_minutes: 24 * 60,
    };
    let mut engine = QsofaEngine::new(config).unwrap();
    // Two episodes 10 h apart (RR+SBP at 0, RR+SBP at 600 min)…
    let alerts = run(
        &mut engine,
        &[
            rr("r1", 25.0, 0),
            sbp("s1", 95.0, 0),
            rr("r2", 25.0, 600),
            sbp("s2", 95.0, 600),
        ],
    );
    // (the first elapses when the watermark reaches 600 min)
    assert_eq!(kinds(&alerts), ["raised", "resolved", "raised"]);
    let first_id = alerts[0].episode().id.clone();
    let second_id = alerts[2].episode().id.clone();
    // …joined by late evidence at 300 min: the earlier id survives.
    let alerts = run(&mut engine, &[rr("r3", 25.0, 300), sbp("s3", 95.0, 300)]);
    let merged: Vec<_> = alerts
        .iter()
        .filter_map(|a| match a {
            AlertEvent::Resolved {
                episode,
                reason: ResolveReason::Merged(into),
            } => Some((episode.id.clone(), into.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(merged, [(second_id, first_id.clone())]);
    let active: Vec<_> = engine.patient("p1").unwrap().active_episodes().collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].id, first_id);
    // Deleting the bridge splits them again: the first part keeps the id.
    let alerts: Vec<_> = ["r3", "s3"]
        .iter()
        .flat_map(|id| engine.observe_deleted(id).alerts)
        .collect();
    let raised: Vec<_> = alerts
        .iter()
        .filter(|a| matches!(a, AlertEvent::Raised { .. }))
        .map(|a| a.episode().onset.to_rfc3339())
        .collect();
    assert_eq!(raised, [at(600)]);
    assert!(alerts.iter().any(|a| a.episode().id == first_id));
}
