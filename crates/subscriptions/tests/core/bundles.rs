//! Notification bodies: shapes per version and content level; every R4 one validates.

use flare_subscriptions::notification::EXT_EVENT_ID;
use flare_subscriptions::{
    ContentLevel, Interaction, NotificationEvent, NotificationType, NotificationVersion,
    ResourceRef, StatusInfo, SubscriptionStatus, batches, classic_rest_hook, notification_bundle,
    status_resource, status_search_bundle,
};
use serde_json::{Value, json};

const BASE: &str = "https://srv.example.org/fhir";
const NOW: &str = "2026-01-01T10:00:00Z";

fn status(status: SubscriptionStatus, count: u64) -> StatusInfo {
    StatusInfo {
        base_url: format!("{BASE}/"),
        subscription_id: "123".into(),
        topic_url: Some("http://flare.dev/fhir/SubscriptionTopic/encounter-admission".into()),
        status,
        events_since_subscription_start: count,
        errors: Vec::new(),
    }
}

fn event(number: u64, interaction: Interaction) -> NotificationEvent {
    let id = format!("e{number}");
    NotificationEvent {
        event_number: number,
        event_id: format!("event-{number}"),
        timestamp: format!("2026-01-01T09:00:0{number}Z"),
        focus: ResourceRef {
            resource_type: "Encounter".into(),
            id: id.clone(),
            interaction,
            resource: (interaction != Interaction::Delete).then(|| {
                json!({"resourceType": "Encounter", "id": id, "status": "in-progress",
                       "class": {"code": "IMP"}})
            }),
        },
        additional_context: vec![ResourceRef {
            resource_type: "Patient".into(),
            id: "p1".into(),
            interaction: Interaction::Update,
            resource: Some(json!({"resourceType": "Patient", "id": "p1"})),
        }],
    }
}

/// The R4 status `Parameters` parameter named `name`.
fn parameter<'a>(bundle: &'a Value, name: &str) -> Vec<&'a Value> {
    bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|parameter| parameter["name"] == name)
        .collect()
}

fn part<'a>(event: &'a Value, name: &str) -> Vec<&'a Value> {
    event["part"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|part| part["name"] == name)
        .collect()
}

fn assert_valid_r4(bundle: &Value) {
    if let Err(issues) = flare_fhir::validate(bundle) {
        panic!("{bundle:#}\n{issues:?}");
    }
}

/// Checks shared by every R4 notification: history, status first with fullUrl, every entry
/// with request and response.
fn assert_r4_notification_shape(bundle: &Value, kind: &str) {
    assert_valid_r4(bundle);
    assert_eq!(bundle["type"], "history");
    assert_eq!(bundle["timestamp"], NOW);
    let entries = bundle["entry"].as_array().unwrap();
    let first = &entries[0];
    assert!(first["fullUrl"].as_str().unwrap().starts_with("urn:uuid:"));
    assert_eq!(first["resource"]["resourceType"], "Parameters");
    assert_eq!(
        first["resource"]["meta"]["profile"][0],
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
    );
    assert_eq!(first["request"]["method"], "GET");
    assert_eq!(
        first["request"]["url"],
        format!("{BASE}/Subscription/123/$status")
    );
    for entry in entries {
        assert!(entry["request"]["method"].is_string(), "{entry}");
        assert!(entry["response"]["status"].is_string(), "{entry}");
        assert!(entry["fullUrl"].is_string());
    }
    assert_eq!(parameter(bundle, "type")[0]["valueCode"], kind);
    assert_eq!(
        parameter(bundle, "subscription")[0]["valueReference"]["reference"],
        format!("{BASE}/Subscription/123")
    );
}

#[test]
fn c1_9_12_handshake_is_a_history_bundle_with_status_requested_counter_0_and_no_events() {
    let bundle = notification_bundle(
        &status(SubscriptionStatus::Requested, 0),
        NotificationType::Handshake,
        &[],
        ContentLevel::IdOnly,
        NotificationVersion::R4,
        NOW,
    );
    assert_r4_notification_shape(&bundle, "handshake");
    assert_eq!(parameter(&bundle, "status")[0]["valueCode"], "requested");
    assert_eq!(
        parameter(&bundle, "events-since-subscription-start")[0]["valueString"],
        "0"
    );
    assert!(parameter(&bundle, "notification-event").is_empty());
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 1);
}

#[test]
fn c1_9_20_empty_content_has_events_without_focus_no_topic_and_no_other_entries() {
    let bundle = notification_bundle(
        &status(SubscriptionStatus::Active, 2),
        NotificationType::EventNotification,
        &[event(2, Interaction::Create)],
        ContentLevel::Empty,
        NotificationVersion::R4,
        NOW,
    );
    assert_r4_notification_shape(&bundle, "event-notification");
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 1);
    let events = parameter(&bundle, "notification-event");
    assert_eq!(events.len(), 1);
    assert!(part(events[0], "focus").is_empty());
    assert!(part(events[0], "additional-context").is_empty());
    // c1_9_19: no topic for empty.
    assert!(parameter(&bundle, "topic").is_empty());
}

#[test]
fn c1_9_21_id_only_has_focus_and_entries_without_resources() {
    let bundle = notification_bundle(
        &status(SubscriptionStatus::Active, 1),
        NotificationType::EventNotification,
        &[event(1, Interaction::Create)],
        ContentLevel::IdOnly,
        NotificationVersion::R4,
        NOW,
    );
    assert_r4_notification_shape(&bundle, "event-notification");
    let events = parameter(&bundle, "notification-event");
    let focus = part(events[0], "focus")[0]["valueReference"]["reference"]
        .as_str()
        .unwrap();
    assert_eq!(focus, format!("{BASE}/Encounter/e1"));
    let context = part(events[0], "additional-context");
    assert_eq!(
        context[0]["valueReference"]["reference"],
        format!("{BASE}/Patient/p1")
    );
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[1]["fullUrl"], focus);
    assert_eq!(
        entries[1]["request"],
        json!({"method": "POST", "url": "Encounter"})
    );
    assert_eq!(entries[1]["response"]["status"], "201");
    assert!(
        entries[1..]
            .iter()
            .all(|entry| entry.get("resource").is_none())
    );
}

#[test]
fn c1_9_22_full_resource_entries_carry_the_resources_and_deletes_only_request_response() {
    let bundle = notification_bundle(
        &status(SubscriptionStatus::Active, 2),
        NotificationType::EventNotification,
        &[event(1, Interaction::Update), event(2, Interaction::Delete)],
        ContentLevel::FullResource,
        NotificationVersion::R4,
        NOW,
    );
    assert_r4_notification_shape(&bundle, "event-notification");
    // c1_9_19: topic present for full-resource.
    assert_eq!(
        parameter(&bundle, "topic")[0]["valueCanonical"],
        "http://flare.dev/fhir/SubscriptionTopic/encounter-admission"
    );
    let entries = bundle["entry"].as_array().unwrap();
    let full_urls: Vec<&str> = entries
        .iter()
        .map(|entry| entry["fullUrl"].as_str().unwrap())
        .collect();
    for event in parameter(&bundle, "notification-event") {
        let focus = part(event, "focus")[0]["valueReference"]["reference"]
            .as_str()
            .unwrap();
        assert!(
            full_urls.contains(&focus),
            "focus {focus} resolves to an entry"
        );
    }
    assert_eq!(entries[1]["resource"]["id"], "e1");
    assert_eq!(
        entries[1]["request"],
        json!({"method": "PUT", "url": "Encounter/e1"})
    );
    assert_eq!(
        entries[3]["request"],
        json!({"method": "DELETE", "url": "Encounter/e2"})
    );
    assert!(entries[3].get("resource").is_none());
}

#[test]
fn c1_9_24_c1_9_27_counters_event_numbers_timestamps_and_stable_event_ids() {
    let events = [event(4, Interaction::Create), event(5, Interaction::Create)];
    let render = || {
        notification_bundle(
            &status(SubscriptionStatus::Active, 5),
            NotificationType::EventNotification,
            &events,
            ContentLevel::IdOnly,
            NotificationVersion::R4,
            NOW,
        )
    };
    let bundle = render();
    assert_eq!(
        parameter(&bundle, "events-since-subscription-start")[0]["valueString"],
        "5"
    );
    let numbers: Vec<&Value> = parameter(&bundle, "notification-event")
        .iter()
        .map(|event| &part(event, "event-number")[0]["valueString"])
        .collect();
    assert_eq!(numbers, [&json!("4"), &json!("5")]);
    let event_ids = |bundle: &Value| -> Vec<Value> {
        parameter(bundle, "notification-event")
            .iter()
            .map(|event| {
                assert_eq!(event["extension"][0]["url"], EXT_EVENT_ID);
                event["extension"][0]["valueString"].clone()
            })
            .collect()
    };
    assert_eq!(event_ids(&bundle), [json!("event-4"), json!("event-5")]);
    assert_eq!(
        event_ids(&render()),
        event_ids(&bundle),
        "a re-delivery carries the same ids"
    );
    let timestamp = &part(parameter(&bundle, "notification-event")[0], "timestamp")[0];
    assert_eq!(timestamp["valueInstant"], "2026-01-01T09:00:04Z");
}

#[test]
fn c1_9_26_max_count_batches_events() {
    let events: Vec<NotificationEvent> = (1..=5).map(|n| event(n, Interaction::Create)).collect();
    let sizes: Vec<usize> = batches(&events, Some(2)).map(<[_]>::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(batches(&events, None).count(), 1);
    for batch in batches(&events, Some(2)) {
        let bundle = notification_bundle(
            &status(SubscriptionStatus::Active, 5),
            NotificationType::EventNotification,
            batch,
            ContentLevel::Empty,
            NotificationVersion::R4,
            NOW,
        );
        assert_eq!(parameter(&bundle, "notification-event").len(), batch.len());
    }
}

#[test]
fn c1_9_28_heartbeat_carries_the_current_counter_and_error_status() {
    let mut info = status(SubscriptionStatus::Error, 7);
    info.errors.push("endpoint answered 500".into());
    let bundle = notification_bundle(
        &info,
        NotificationType::Heartbeat,
        &[],
        ContentLevel::IdOnly,
        NotificationVersion::R4,
        NOW,
    );
    assert_r4_notification_shape(&bundle, "heartbeat");
    assert_eq!(parameter(&bundle, "status")[0]["valueCode"], "error");
    assert_eq!(
        parameter(&bundle, "events-since-subscription-start")[0]["valueString"],
        "7"
    );
    assert_eq!(
        parameter(&bundle, "error")[0]["valueCodeableConcept"]["text"],
        "endpoint answered 500"
    );
}

#[test]
fn c1_9_15_r4b_and_r5_shapes() {
    let info = status(SubscriptionStatus::Active, 1);
    let events = [event(1, Interaction::Create)];
    let r4b = notification_bundle(
        &info,
        NotificationType::EventNotification,
        &events,
        ContentLevel::IdOnly,
        NotificationVersion::R4B,
        NOW,
    );
    assert_eq!(r4b["type"], "history");
    let r5 = notification_bundle(
        &info,
        NotificationType::EventNotification,
        &events,
        ContentLevel::IdOnly,
        NotificationVersion::R5,
        NOW,
    );
    assert_eq!(r5["type"], "subscription-notification");
    for bundle in [&r4b, &r5] {
        let status = &bundle["entry"][0]["resource"];
        assert_eq!(status["resourceType"], "SubscriptionStatus");
        assert_eq!(status["type"], "event-notification");
        assert_eq!(status["eventsSinceSubscriptionStart"], "1");
        assert_eq!(status["notificationEvent"][0]["eventNumber"], "1");
        assert_eq!(
            status["notificationEvent"][0]["focus"]["reference"],
            format!("{BASE}/Encounter/e1")
        );
        assert_eq!(
            status["subscription"]["reference"],
            format!("{BASE}/Subscription/123")
        );
        assert_eq!(
            status["topic"],
            "http://flare.dev/fhir/SubscriptionTopic/encounter-admission"
        );
        // The entries other than the status are the same history entries as in R4.
        assert_eq!(
            bundle["entry"][1]["request"],
            json!({"method": "POST", "url": "Encounter"})
        );
    }
    let handshake = notification_bundle(
        &info,
        NotificationType::Handshake,
        &[],
        ContentLevel::Empty,
        NotificationVersion::R5,
        NOW,
    );
    assert!(
        handshake["entry"][0]["resource"]
            .get("notificationEvent")
            .is_none()
    );
    assert!(handshake["entry"][0]["resource"].get("topic").is_none());
}

#[test]
fn c1_9_31_c1_9_33_status_and_events_operation_results() {
    let statuses: Vec<Value> = ["a", "b"]
        .iter()
        .map(|id| {
            let mut info = status(SubscriptionStatus::Active, 3);
            info.subscription_id = (*id).into();
            status_resource(
                &info,
                NotificationType::QueryStatus,
                &[],
                ContentLevel::IdOnly,
                NotificationVersion::R4,
            )
        })
        .collect();
    let bundle = status_search_bundle(&statuses, NOW);
    assert_valid_r4(&bundle);
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], 2);
    assert_eq!(
        bundle["entry"][1]["resource"]["parameter"][0]["valueReference"]["reference"],
        format!("{BASE}/Subscription/b")
    );
    assert_eq!(
        bundle["entry"][0]["resource"]["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "type")
            .unwrap()["valueCode"],
        "query-status"
    );

    let events = bundle_of_events();
    assert_r4_notification_shape(&events, "query-event");
}

fn bundle_of_events() -> Value {
    notification_bundle(
        &status(SubscriptionStatus::Active, 9),
        NotificationType::QueryEvent,
        &[event(2, Interaction::Create), event(3, Interaction::Update)],
        ContentLevel::FullResource,
        NotificationVersion::R4,
        NOW,
    )
}

#[test]
fn c1_9_41_classic_rest_hook_is_an_empty_post_or_a_put_of_the_resource() {
    let resource = json!({"resourceType": "Observation", "id": "o1",
        "meta": {"versionId": "3", "lastUpdated": "2026-01-01T00:00:00Z", "source": "#lab"}});
    let empty = classic_rest_hook("https://client.example.org/hook", false, &resource);
    assert_eq!(
        (empty.method, empty.url.as_str(), empty.body.is_none()),
        ("POST", "https://client.example.org/hook", true)
    );
    let put = classic_rest_hook("https://client.example.org/fhir/", true, &resource);
    assert_eq!(put.method, "PUT");
    assert_eq!(put.url, "https://client.example.org/fhir/Observation/o1");
    assert_eq!(put.body.unwrap()["meta"]["versionId"], "3");
}
