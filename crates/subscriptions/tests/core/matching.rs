//! Matching semantics: which subscriptions an event notifies.

use std::sync::Arc;

use flare_subscriptions::{
    Interaction, MatchEvent, SubscriptionIndex, SubscriptionSpec, Topic, TopicRegistry,
};
use serde_json::{Value, json};

use crate::{backport, classic, parse, registry, topics};

fn index_of(specs: &[(&str, Value)], topics: TopicRegistry) -> SubscriptionIndex {
    let mut index = SubscriptionIndex::new(registry(), topics);
    for (id, subscription) in specs {
        let spec: SubscriptionSpec = parse_with(subscription, &index);
        index.insert_with_id(id, &spec).unwrap();
    }
    index
}

fn parse_with(subscription: &Value, index: &SubscriptionIndex) -> SubscriptionSpec {
    flare_subscriptions::parse_subscription(subscription, &registry(), index.topics())
        .unwrap_or_else(|issues| panic!("{subscription}: {issues:?}"))
}

/// The sorted ids an event notifies.
fn matched(
    index: &SubscriptionIndex,
    resource_type: &str,
    interaction: Interaction,
    current: Option<&Value>,
    previous: Option<&Value>,
) -> Vec<String> {
    let event = MatchEvent {
        resource_type,
        interaction,
        current,
        previous,
        trigger_event: None,
    };
    sorted(index.matching(&event))
}

fn sorted(ids: Vec<Arc<str>>) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    ids.sort();
    ids
}

fn observation(id: &str, code: &str, patient: &str, status: &str) -> Value {
    json!({
        "resourceType": "Observation", "id": id,
        "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
    })
}

fn encounter(id: &str, status: &str) -> Value {
    json!({
        "resourceType": "Encounter", "id": id, "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p1"},
    })
}

#[test]
fn c1_9_41_classic_criteria_on_create_and_update_not_on_noop_meta_only_or_delete() {
    let index = index_of(
        &[
            ("heart", classic("Observation?code=http://loinc.org|8867-4")),
            (
                "final",
                classic("Observation?status=final&subject=Patient/p1"),
            ),
            ("patients", classic("Patient")),
        ],
        topics(),
    );
    let created = observation("o1", "8867-4", "p1", "final");
    assert_eq!(
        matched(
            &index,
            "Observation",
            Interaction::Create,
            Some(&created),
            None
        ),
        ["final", "heart"]
    );
    let mut changed = created.clone();
    changed["status"] = json!("amended");
    changed["meta"]["versionId"] = json!("2");
    assert_eq!(
        matched(
            &index,
            "Observation",
            Interaction::Update,
            Some(&changed),
            Some(&created)
        ),
        ["heart"],
        "a real update is evaluated on the new version"
    );
    let mut meta_only = created.clone();
    meta_only["meta"] =
        json!({"versionId": "2", "lastUpdated": "2026-01-02T00:00:00Z", "tag": [{"code": "x"}]});
    assert!(
        matched(
            &index,
            "Observation",
            Interaction::Update,
            Some(&meta_only),
            Some(&created)
        )
        .is_empty(),
        "meta-only change"
    );
    assert!(
        matched(
            &index,
            "Observation",
            Interaction::Update,
            Some(&created),
            Some(&created)
        )
        .is_empty(),
        "no-op update"
    );
    assert!(
        matched(
            &index,
            "Observation",
            Interaction::Delete,
            None,
            Some(&created)
        )
        .is_empty(),
        "classic criteria never notify on delete"
    );
    let other = observation("o2", "1234-5", "p2", "final");
    assert!(
        matched(
            &index,
            "Observation",
            Interaction::Create,
            Some(&other),
            None
        )
        .is_empty()
    );
    let patient = json!({"resourceType": "Patient", "id": "p9"});
    assert_eq!(
        matched(&index, "Patient", Interaction::Create, Some(&patient), None),
        ["patients"]
    );
}

#[test]
fn c1_9_43_supported_interactions_are_respected_and_deletes_notify_when_listed() {
    let registry = registry();
    let mut topics = topics();
    topics.insert(
        Topic::from_json(
            &json!({
                "resourceType": "SubscriptionTopic",
                "url": "http://example.org/topics/observation-deleted",
                "resourceTrigger": [{"resource": "Observation", "supportedInteraction": ["delete"]}],
                "canFilterBy": [{"resource": "Observation", "filterParameter": "patient"}]
            }),
            &registry,
        )
        .unwrap(),
    );
    let mut deleted = backport("x", &["patient=Patient/p1"], "id-only");
    deleted["criteria"] = json!("http://example.org/topics/observation-deleted");
    let index = index_of(
        &[
            ("created", backport("observation-created", &[], "id-only")),
            ("changed", backport("observation-changed", &[], "id-only")),
            ("deleted-p1", deleted),
        ],
        topics,
    );
    let first = observation("o1", "8867-4", "p1", "final");
    let second = observation("o1", "8867-4", "p1", "amended");
    assert_eq!(
        matched(
            &index,
            "Observation",
            Interaction::Create,
            Some(&first),
            None
        ),
        ["changed", "created"]
    );
    assert_eq!(
        matched(
            &index,
            "Observation",
            Interaction::Update,
            Some(&second),
            Some(&first)
        ),
        ["changed"]
    );
    assert_eq!(
        matched(
            &index,
            "Observation",
            Interaction::Delete,
            None,
            Some(&second)
        ),
        ["deleted-p1"],
        "a delete is filtered on the previous version"
    );
    let elsewhere = observation("o2", "8867-4", "p2", "final");
    assert!(
        matched(
            &index,
            "Observation",
            Interaction::Delete,
            None,
            Some(&elsewhere)
        )
        .is_empty()
    );
}

#[test]
fn c1_9_44_query_criteria_previous_current_result_for_create_and_require_both() {
    let index = index_of(
        &[
            ("admission", backport("encounter-admission", &[], "id-only")),
            ("discharge", backport("encounter-discharge", &[], "id-only")),
        ],
        topics(),
    );
    assert!(index.needs_previous("Encounter"));
    let planned = encounter("e1", "planned");
    let started = encounter("e1", "in-progress");
    let finished = encounter("e1", "finished");
    // resultForCreate = test-passes: created already in progress is an admission.
    assert_eq!(
        matched(
            &index,
            "Encounter",
            Interaction::Create,
            Some(&started),
            None
        ),
        ["admission"]
    );
    assert!(
        matched(
            &index,
            "Encounter",
            Interaction::Create,
            Some(&planned),
            None
        )
        .is_empty()
    );
    assert_eq!(
        matched(
            &index,
            "Encounter",
            Interaction::Update,
            Some(&started),
            Some(&planned)
        ),
        ["admission"]
    );
    // requireBoth: still in progress is no new admission.
    let mut still = started.clone();
    still["period"] = json!({"start": "2026-01-01"});
    assert!(
        matched(
            &index,
            "Encounter",
            Interaction::Update,
            Some(&still),
            Some(&started)
        )
        .is_empty()
    );
    assert_eq!(
        matched(
            &index,
            "Encounter",
            Interaction::Update,
            Some(&finished),
            Some(&started)
        ),
        ["discharge"]
    );

    // Either test suffices without requireBoth.
    let registry = registry();
    let mut topics = topics();
    topics.insert(
        Topic::from_json(
            &json!({
                "resourceType": "SubscriptionTopic",
                "url": "http://example.org/topics/touching-finished",
                "resourceTrigger": [{
                    "resource": "Encounter",
                    "supportedInteraction": ["update", "delete"],
                    "queryCriteria": {"previous": "status=finished", "current": "status=finished",
                                      "resultForDelete": "test-fails", "requireBoth": false}
                }]
            }),
            &registry,
        )
        .unwrap(),
    );
    let mut either = backport("x", &[], "id-only");
    either["criteria"] = json!("http://example.org/topics/touching-finished");
    let index = index_of(&[("either", either)], topics);
    assert_eq!(
        matched(
            &index,
            "Encounter",
            Interaction::Update,
            Some(&started),
            Some(&finished)
        ),
        ["either"],
        "previous passes"
    );
    assert_eq!(
        matched(
            &index,
            "Encounter",
            Interaction::Delete,
            None,
            Some(&finished)
        ),
        ["either"],
        "previous passes, current is test-fails on delete"
    );
    assert!(
        matched(
            &index,
            "Encounter",
            Interaction::Delete,
            None,
            Some(&planned)
        )
        .is_empty()
    );
    assert!(
        matched(
            &index,
            "Encounter",
            Interaction::Update,
            Some(&started),
            Some(&planned)
        )
        .is_empty()
    );
}

#[test]
fn c1_9_45_fhirpath_criteria_see_previous_and_current() {
    let registry = registry();
    let mut topics = topics();
    topics.insert(
        Topic::from_json(
            &json!({
                "resourceType": "SubscriptionTopic",
                "url": "http://example.org/topics/status-changed",
                "resourceTrigger": [{
                    "resource": "Observation",
                    "supportedInteraction": ["create", "update"],
                    "fhirPathCriteria": "%previous.empty() or %previous.status != %current.status"
                }]
            }),
            &registry,
        )
        .unwrap(),
    );
    let mut subscription = backport("x", &[], "id-only");
    subscription["criteria"] = json!("http://example.org/topics/status-changed");
    let index = index_of(&[("status", subscription)], topics);
    assert!(index.needs_previous("Observation"));
    let preliminary = observation("o1", "1", "p1", "preliminary");
    let final_ = observation("o1", "1", "p1", "final");
    let mut final_again = final_.clone();
    final_again["issued"] = json!("2026-01-01T00:00:00Z");
    assert_eq!(
        matched(
            &index,
            "Observation",
            Interaction::Create,
            Some(&preliminary),
            None
        ),
        ["status"]
    );
    assert_eq!(
        matched(
            &index,
            "Observation",
            Interaction::Update,
            Some(&final_),
            Some(&preliminary)
        ),
        ["status"]
    );
    assert!(
        matched(
            &index,
            "Observation",
            Interaction::Update,
            Some(&final_again),
            Some(&final_)
        )
        .is_empty()
    );
}

#[test]
fn c1_9_46_event_triggers_fire_on_their_event_only() {
    let index = index_of(
        &[(
            "sepsis",
            backport("sepsis-alert", &["patient=Patient/p1"], "full-resource"),
        )],
        topics(),
    );
    let assessment = json!({"resourceType": "RiskAssessment", "id": "r1", "status": "final",
                            "subject": {"reference": "Patient/p1"}});
    let event = |trigger_event| MatchEvent {
        resource_type: "RiskAssessment",
        interaction: Interaction::Create,
        current: Some(&assessment),
        previous: None,
        trigger_event,
    };
    let system = "http://flare.dev/fhir/CodeSystem/trigger-event";
    assert_eq!(
        sorted(index.matching(&event(Some((system, "sepsis-alert"))))),
        ["sepsis"]
    );
    assert!(
        index
            .matching(&event(Some((system, "other-alert"))))
            .is_empty()
    );
    // The built-in topic also fires on the RiskAssessment's creation itself.
    assert_eq!(sorted(index.matching(&event(None))), ["sepsis"]);
    let other_patient = json!({"resourceType": "RiskAssessment", "id": "r2", "status": "final",
                               "subject": {"reference": "Patient/p2"}});
    let event = MatchEvent {
        current: Some(&other_patient),
        ..event(Some((system, "sepsis-alert")))
    };
    assert!(
        index.matching(&event).is_empty(),
        "filters apply to event triggers"
    );
}

#[test]
fn c1_9_47_topic_filters_narrow_exactly() {
    let index = index_of(
        &[
            (
                "p1",
                backport("observation-created", &["patient=Patient/p1"], "id-only"),
            ),
            (
                "p1-heart",
                backport(
                    "observation-created",
                    &["patient=Patient/p1", "code=8867-4"],
                    "id-only",
                ),
            ),
            (
                "not-vital",
                backport(
                    "observation-created",
                    &["category:not=vital-signs"],
                    "id-only",
                ),
            ),
            ("any", backport("observation-created", &[], "id-only")),
        ],
        topics(),
    );
    let heart = observation("o1", "8867-4", "p1", "final");
    assert_eq!(
        matched(
            &index,
            "Observation",
            Interaction::Create,
            Some(&heart),
            None
        ),
        ["any", "p1", "p1-heart"]
    );
    let other = observation("o2", "1234-5", "p1", "final");
    assert_eq!(
        matched(
            &index,
            "Observation",
            Interaction::Create,
            Some(&other),
            None
        ),
        ["any", "p1"]
    );
    let mut lab = observation("o3", "8867-4", "p2", "final");
    lab["category"] = json!([{"coding": [{"code": "laboratory"}]}]);
    assert_eq!(
        matched(&index, "Observation", Interaction::Create, Some(&lab), None),
        ["any", "not-vital"]
    );
}

/// The index only narrows: for many subscriptions it returns exactly what evaluating each one
/// alone returns.
#[test]
fn index_matches_one_by_one_evaluation_and_forgets_removed_subscriptions() {
    let codes = ["8867-4", "1234-5", "2345-7", "9279-1"];
    let patients = ["p1", "p2", "p3"];
    let mut subscriptions: Vec<(String, Value)> = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        for (j, patient) in patients.iter().enumerate() {
            subscriptions.push((
                format!("classic-{i}-{j}"),
                classic(&format!(
                    "Observation?code={code},other&subject=Patient/{patient}"
                )),
            ));
            subscriptions.push((
                format!("topic-{i}-{j}"),
                backport(
                    "observation-changed",
                    &[&format!("code={code}"), &format!("patient={patient}")],
                    "id-only",
                ),
            ));
        }
        subscriptions.push((
            format!("status-{i}"),
            classic("Observation?status:not=final"),
        ));
        subscriptions.push((
            format!("date-{i}"),
            classic("Observation?_lastUpdated=ge2026-01-01"),
        ));
    }
    let all: Vec<(&str, Value)> = subscriptions
        .iter()
        .map(|(id, subscription)| (id.as_str(), subscription.clone()))
        .collect();
    let mut index = index_of(&all, topics());
    let mut events = Vec::new();
    for code in codes.iter().chain(["0000-0"].iter()) {
        for patient in patients {
            for status in ["final", "preliminary"] {
                events.push(observation("o", code, patient, status));
            }
        }
    }
    for event in &events {
        let mut expected = Vec::new();
        for (id, subscription) in &all {
            let alone = index_of(&[(id, subscription.clone())], topics());
            if !matched(
                &alone,
                "Observation",
                Interaction::Create,
                Some(event),
                None,
            )
            .is_empty()
            {
                expected.push(id.to_string());
            }
        }
        expected.sort();
        assert!(!expected.is_empty());
        assert_eq!(
            matched(
                &index,
                "Observation",
                Interaction::Create,
                Some(event),
                None
            ),
            expected
        );
    }
    assert!(index.remove("classic-0-0"));
    assert!(!index.remove("classic-0-0"));
    let event = observation("o", "8867-4", "p1", "final");
    let after = matched(
        &index,
        "Observation",
        Interaction::Create,
        Some(&event),
        None,
    );
    assert!(after.contains(&"topic-0-0".to_string()));
    assert!(!after.contains(&"classic-0-0".to_string()));
    // Members of a group of identical criteria leave one by one.
    let preliminary = observation("o", "8867-4", "p1", "preliminary");
    assert!(index.remove("status-0"));
    let after = matched(
        &index,
        "Observation",
        Interaction::Create,
        Some(&preliminary),
        None,
    );
    assert!(!after.contains(&"status-0".to_string()));
    assert!(after.contains(&"status-1".to_string()));
    // Re-inserting an id replaces it.
    let spec = parse(&classic("Observation?code=never")).unwrap();
    index.insert_with_id("topic-0-0", &spec).unwrap();
    let after = matched(
        &index,
        "Observation",
        Interaction::Create,
        Some(&event),
        None,
    );
    assert!(!after.contains(&"topic-0-0".to_string()));
    assert_eq!(index.len(), all.len() - 2);
}
