//! The FHIRcast hub black-box on 127.0.0.1:0 with real WebSocket clients, walking the
//! conformance checklist of the FHIRcast brief (§3). Each test is named after its point.

mod capability;
mod cluster;
mod support;

use flare_fhircast::{HubConfig, Profile};
use serde_json::{Value, json};
use support::*;

// ---- Discovery ----

#[tokio::test]
async fn p01_well_known_lists_events_and_websocket_support() {
    let hub = Hub::start(HubConfig::default()).await;
    let response = hub
        .client
        .get(format!("{}/.well-known/fhircast-configuration", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["websocketSupport"], true);
    let events: Vec<&str> = body["eventsSupported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for event in [
        "Patient-open",
        "DiagnosticReport-update",
        "SyncError",
        "UserLogout",
    ] {
        assert!(events.contains(&event), "{event}");
    }
}

#[tokio::test]
async fn p02_well_known_version_capabilities_and_get_current_support() {
    let hub = Hub::start(HubConfig::default()).await;
    let body: Value = hub.get_json("/.well-known/fhircast-configuration").await;
    assert_eq!(body["fhircastVersion"], "3.0.0");
    assert_eq!(body["capabilities"]["supportsGetCurrentContext"], true);
    assert_eq!(body["getCurrentSupport"], true);
    assert_eq!(
        body["capabilities"]["supportsNonCurrentContextUpdates"],
        false
    );
}

#[tokio::test]
async fn p03_well_known_under_a_hub_path_with_segments() {
    let hub = Hub::start(HubConfig {
        path: "/fhircast/STU3".into(),
        ..HubConfig::default()
    })
    .await;
    assert!(hub.url.ends_with("/fhircast/STU3"));
    let body: Value = hub.get_json("/.well-known/fhircast-configuration").await;
    assert_eq!(body["websocketSupport"], true);
    // And the hub works there.
    let endpoint = hub.subscribe("t", "Patient-open", "A").await;
    assert!(endpoint.contains("/fhircast/STU3/ws/"));
}

// ---- Subscription request handling ----

#[tokio::test]
async fn p06_subscribe_answers_202_with_a_websocket_endpoint() {
    let hub = Hub::start(HubConfig::default()).await;
    let response = hub
        .form("hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t1&hub.events=Patient-open,Patient-close&subscriber.name=Acme%20Reporting&hub.lease_seconds=600")
        .await;
    assert_eq!(response.status(), 202);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    let endpoint = body["hub.channel.endpoint"].as_str().unwrap();
    assert!(
        endpoint.starts_with(&format!("ws://{}/fhircast/ws/", hub.address)),
        "{endpoint}"
    );
}

async fn assert_subscribe_400(profile: Profile, form: &str) {
    let hub = Hub::start(HubConfig {
        profile,
        ..HubConfig::default()
    })
    .await;
    let response = hub.form(form).await;
    assert_eq!(response.status(), 400, "{form}");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(!response.text().await.unwrap().is_empty());
}

#[tokio::test]
async fn p07_missing_channel_type_is_400() {
    assert_subscribe_400(
        Profile::Ira,
        "hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&subscriber.name=n",
    )
    .await;
}

#[tokio::test]
async fn p08_non_websocket_channel_is_400() {
    assert_subscribe_400(Profile::Lenient, "hub.channel.type=webhook&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&hub.callback=https://x.test/cb&hub.secret=s").await;
}

#[tokio::test]
async fn p09_missing_or_empty_topic_is_400() {
    assert_subscribe_400(
        Profile::Lenient,
        "hub.channel.type=websocket&hub.mode=subscribe&hub.events=Patient-open",
    )
    .await;
    assert_subscribe_400(
        Profile::Lenient,
        "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=&hub.events=Patient-open",
    )
    .await;
}

#[tokio::test]
async fn p10_subscribe_without_events_is_400() {
    assert_subscribe_400(
        Profile::Lenient,
        "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t",
    )
    .await;
    assert_subscribe_400(
        Profile::Lenient,
        "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=",
    )
    .await;
}

#[tokio::test]
async fn p11_invalid_mode_is_400() {
    assert_subscribe_400(
        Profile::Lenient,
        "hub.channel.type=websocket&hub.mode=listen&hub.topic=t&hub.events=Patient-open",
    )
    .await;
}

#[tokio::test]
async fn p12_repeated_parameter_is_400() {
    assert_subscribe_400(Profile::Lenient, "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&hub.events=Patient-close").await;
}

#[tokio::test]
async fn p13_repeated_event_names_are_collapsed() {
    let hub = Hub::start(HubConfig::default()).await;
    let endpoint = hub
        .subscribe("t", "Patient-open,patient-OPEN,Patient-close", "A")
        .await;
    let mut socket = Socket::connect(&endpoint).await;
    let confirmation = socket.next_json().await;
    assert_eq!(confirmation["hub.events"], "Patient-open,Patient-close");
}

#[tokio::test]
async fn p14_event_names_match_case_insensitively() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub.subscriber("t", "patient-open", "A").await;
    let mut event = patient_open("t", "e1", "p1");
    event["event"]["hub.event"] = json!("PATIENT-OPEN");
    assert!(hub.publish(&event).await.status().is_success());
    let received = socket.next_json().await;
    assert_eq!(received["id"], "e1");
    assert_eq!(received["event"]["hub.event"], "Patient-open");
}

#[tokio::test]
async fn p15_custom_reverse_domain_events_are_routed() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub
        .subscriber("t", "com.example.researchstudy_transmogrify", "A")
        .await;
    let event = json!({"timestamp": "2025-01-01T10:00:00Z", "id": "c1", "event": {
        "hub.topic": "t", "hub.event": "com.example.researchstudy_transmogrify", "context": [{"key": "extension", "data": {"x": 1}}]}});
    assert_eq!(hub.publish(&event).await.status(), 202);
    assert_eq!(socket.next_json().await["id"], "c1");
}

#[tokio::test]
async fn p16_endpoints_are_unique_and_carry_128_random_bits() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let endpoint = hub.subscribe("t", "Patient-open", "A").await;
        let id = endpoint.rsplit('/').next().unwrap().to_string();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(seen.insert(id), "endpoint reused");
    }
    // 200 ids of 128 uniform bits: every hex digit value shows up.
    let digits: std::collections::HashSet<char> = seen.iter().flat_map(|id| id.chars()).collect();
    assert_eq!(digits.len(), 16);
}

#[tokio::test]
async fn p17_resubscribe_replaces_the_event_set_and_renews_the_lease() {
    let hub = Hub::start(HubConfig::default()).await;
    let endpoint = hub.subscribe("t", "Patient-open", "A").await;
    let mut socket = Socket::connect(&endpoint).await;
    socket.next_json().await;
    let response = hub
        .form(&format!("hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=Patient-close&hub.lease_seconds=900&hub.channel.endpoint={endpoint}"))
        .await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["hub.channel.endpoint"], endpoint.as_str());
    let confirmation = socket.next_json().await;
    assert_eq!(confirmation["hub.events"], "Patient-close");
    assert_eq!(confirmation["hub.lease_seconds"], 900);
    hub.publish(&patient_open("t", "e1", "p1")).await;
    hub.publish(&patient_close("t", "e2", "p1")).await;
    assert_eq!(
        socket.next_json().await["id"],
        "e2",
        "the Patient-open is no longer delivered"
    );
}

#[tokio::test]
async fn p18_granted_lease_is_capped() {
    let hub = Hub::start(HubConfig {
        max_lease_seconds: 3600,
        ..HubConfig::default()
    })
    .await;
    let response = hub.form("hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&hub.lease_seconds=999999").await;
    let endpoint: Value = response.json().await.unwrap();
    let mut socket = Socket::connect(endpoint["hub.channel.endpoint"].as_str().unwrap()).await;
    assert_eq!(socket.next_json().await["hub.lease_seconds"], 3600);
}

#[tokio::test]
async fn p20_subscribing_to_an_unknown_topic_creates_the_session() {
    let hub = Hub::start(HubConfig {
        profile: Profile::Ira,
        ..HubConfig::default()
    })
    .await;
    let mut event = patient_open("fresh", "e1", "p1");
    assert_eq!(hub.publish(&event).await.status(), 400, "no session yet");
    let _socket = hub.subscriber("fresh", "Patient-open", "A").await;
    event["id"] = json!("e2");
    assert_eq!(hub.publish(&event).await.status(), 202);
}

#[tokio::test]
async fn p21_subscriber_name_required_only_in_ira_profile() {
    let form = "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open";
    assert_subscribe_400(Profile::Ira, form).await;
    let hub = Hub::start(HubConfig::default()).await;
    assert_eq!(hub.form(form).await.status(), 202);
}

// ---- WebSocket channel ----

#[tokio::test]
async fn p22_upgrade_to_unknown_or_unsubscribed_endpoint_is_refused() {
    let hub = Hub::start(HubConfig::default()).await;
    let unknown = format!("ws://{}/fhircast/ws/{}", hub.address, "0".repeat(32));
    assert!(tokio_tungstenite::connect_async(unknown).await.is_err());
    let endpoint = hub.subscribe("t", "Patient-open", "A").await;
    hub.unsubscribe("t", &endpoint).await;
    assert!(tokio_tungstenite::connect_async(endpoint).await.is_err());
}

#[tokio::test]
async fn p23_first_frame_is_the_confirmation() {
    let hub = Hub::start(HubConfig::default()).await;
    let endpoint = hub.subscribe("topic-23", "Patient-open", "A").await;
    let mut socket = Socket::connect(&endpoint).await;
    let confirmation = socket.next_json().await;
    assert_eq!(
        confirmation,
        json!({"hub.mode": "subscribe", "hub.topic": "topic-23", "hub.events": "Patient-open", "hub.lease_seconds": 7200})
    );
}

#[tokio::test]
async fn p24_open_context_is_replayed_after_confirmation() {
    let hub = Hub::start(HubConfig::default()).await;
    let _publisher = hub.subscriber("t", "Patient-open", "P").await;
    let mut open = patient_open("t", "e1", "p1");
    open["timestamp"] = json!("2024-05-06T07:08:09.5Z");
    hub.publish(&open).await;
    let mut socket = hub.subscriber("t", "Patient-open", "Late").await;
    let replay = socket.next_json().await;
    assert_eq!(replay["id"], "e1");
    assert_eq!(replay["timestamp"], "2024-05-06T07:08:09.5Z");
    assert_eq!(replay["event"]["context"][0]["resource"]["id"], "p1");
}

#[tokio::test]
async fn p25_no_replay_or_delivery_of_unsubscribed_events() {
    let hub = Hub::start(HubConfig::default()).await;
    let _publisher = hub.subscriber("t", "Patient-open", "P").await;
    hub.publish(&patient_open("t", "e1", "p1")).await;
    let mut socket = hub
        .subscriber("t", "Patient-close,UserLogout", "Other")
        .await;
    hub.publish(&patient_open("t", "e2", "p2")).await;
    hub.publish(&patient_close("t", "e3", "p2")).await;
    assert_eq!(
        socket.next_json().await["id"],
        "e3",
        "neither replay nor e2"
    );
}

#[tokio::test]
async fn p26_notification_shape() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub.subscriber("t", "Patient-open", "A").await;
    let mut open = patient_open("t", "e1", "p1");
    open["timestamp"] = json!("2018-01-08T01:37:05.14");
    hub.publish(&open).await;
    let event = socket.next_json().await;
    assert_eq!(
        event["timestamp"], "2018-01-08T01:37:05.14Z",
        "RFC 3339 UTC"
    );
    assert_eq!(event["id"], "e1");
    assert_eq!(event["event"]["hub.topic"], "t");
    assert_eq!(event["event"]["hub.event"], "Patient-open");
    assert!(event["event"]["context"].is_array());
}

#[tokio::test]
async fn p27_delivery_in_acceptance_order_with_non_decreasing_timestamps() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub.subscriber("t", "Patient-open", "A").await;
    for n in 0..30 {
        let mut event = patient_open("t", &format!("e{n}"), &format!("p{n}"));
        // Publishers' clocks disagree; the hub never lets time run backwards.
        event["timestamp"] = json!(format!("2025-01-01T10:00:{:02}Z", 59 - n));
        hub.publish(&event).await;
    }
    let mut last = String::new();
    for n in 0..30 {
        let event = socket.next_json().await;
        assert_eq!(event["id"], format!("e{n}"));
        let timestamp = event["timestamp"].as_str().unwrap().to_string();
        assert!(timestamp >= last);
        last = timestamp;
        socket.ack(&event, json!(200)).await;
    }
}

#[tokio::test]
async fn p28_acks_with_numeric_and_string_status_are_correlated() {
    let hub = Hub::start(fast_acks(Profile::Ira)).await;
    let mut watcher = hub.subscriber("t", "SyncError", "Watcher").await;
    let mut a = hub.subscriber("t", "Patient-open", "A").await;
    hub.publish(&patient_open("t", "e1", "p1")).await;
    let event = a.next_json().await;
    a.ack(&event, json!("200")).await;
    hub.publish(&patient_open("t", "e2", "p2")).await;
    let event = a.next_json().await;
    a.ack(&event, json!(202)).await;
    // Both were acknowledged: the only SyncError is for e3, which A leaves unanswered.
    hub.publish(&patient_open("t", "e3", "p3")).await;
    let error = watcher.next_json().await;
    assert_eq!(sync_error_codes(&error)[0], "e3");
}

#[tokio::test]
async fn p29_refusing_ack_sends_sync_error_to_the_others() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut publisher = hub
        .subscriber("t", "Patient-open,SyncError", "Publisher")
        .await;
    let mut refuser = hub
        .subscriber("t", "Patient-open,SyncError", "Refuser")
        .await;
    hub.publish(&patient_open("t", "e1", "p1")).await;
    let event = publisher.next_json().await;
    publisher.ack(&event, json!(200)).await;
    let event = refuser.next_json().await;
    refuser.ack(&event, json!(409)).await;
    let error = publisher.next_json().await;
    assert_eq!(error["event"]["hub.event"], "SyncError");
    assert_eq!(sync_error_codes(&error), ["e1", "Patient-open", "Refuser"]);
    let issue = &error["event"]["context"][0]["resource"]["issue"][0];
    assert_eq!(issue["severity"], "warning");
    assert_eq!(issue["code"], "processing");
    assert!(issue["diagnostics"].as_str().unwrap().contains("Refuser"));
    // The refuser itself is not told about its own refusal.
    hub.sync_error_marker("t", "marker").await;
    refuser.expect_next_id("marker").await;
}

#[tokio::test]
async fn p30_no_ack_within_the_timeout_gives_a_sync_error_to_the_publisher() {
    let hub = Hub::start(fast_acks(Profile::Lenient)).await;
    let mut publisher = hub
        .subscriber("t", "Patient-open,SyncError", "Publisher")
        .await;
    let mut silent = hub.subscriber("t", "Patient-open", "Silent").await;
    hub.publish(&patient_open("t", "e1", "p1")).await;
    let event = publisher.next_json().await;
    publisher.ack(&event, json!(200)).await;
    assert_eq!(silent.next_json().await["id"], "e1");
    let error = publisher.next_json().await;
    assert_eq!(sync_error_codes(&error), ["e1", "Patient-open", "Silent"]);
}

#[tokio::test]
async fn p31_unresponsive_subscriber_is_unsubscribed_after_n_sync_errors() {
    let hub = Hub::start(HubConfig {
        max_unacknowledged: 2,
        ..fast_acks(Profile::Lenient)
    })
    .await;
    let mut watcher = hub.subscriber("t", "SyncError", "Watcher").await;
    let mut silent = hub.subscriber("t", "Patient-open", "Silent").await;
    for n in 1..=2 {
        hub.publish(&patient_open("t", &format!("e{n}"), "p1"))
            .await;
        silent.next_json().await;
        watcher.next_json().await;
    }
    let denial = silent.next_json().await;
    assert_eq!(denial["hub.mode"], "denied");
    assert!(silent.next_is_close().await);
}

#[tokio::test]
async fn p32_normal_close_gives_no_sync_error() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut watcher = hub.subscriber("t", "SyncError", "Watcher").await;
    let leaver = hub.subscriber("t", "Patient-open", "Leaver").await;
    leaver.close(1000).await;
    hub.sync_error_marker("t", "marker").await;
    watcher.expect_next_id("marker").await;
}

#[tokio::test]
async fn p33_abrupt_close_gives_a_sync_error_and_ends_the_subscription() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut watcher = hub.subscriber("t", "SyncError", "Watcher").await;
    let endpoint = hub.subscribe("t", "Patient-open", "Crasher").await;
    let crasher = Socket::connect(&endpoint).await;
    crasher.drop_tcp();
    let error = watcher.next_json().await;
    assert_eq!(sync_error_codes(&error)[2], "Crasher");
    assert!(tokio_tungstenite::connect_async(endpoint).await.is_err());
}

#[tokio::test]
async fn p34_lease_expiry_closes_the_socket_and_kills_the_endpoint() {
    let hub = Hub::start(HubConfig::default()).await;
    let response = hub.form("hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&hub.lease_seconds=1").await;
    let endpoint: Value = response.json().await.unwrap();
    let endpoint = endpoint["hub.channel.endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let mut socket = Socket::connect(&endpoint).await;
    socket.next_json().await;
    assert_eq!(socket.next_json().await["hub.reason"], "lease expired");
    assert!(socket.next_is_close().await);
    assert!(tokio_tungstenite::connect_async(endpoint).await.is_err());
}

#[tokio::test]
async fn p35_denial_frame_then_close() {
    let hub = Hub::start(HubConfig::default()).await;
    let endpoint = hub.subscribe("t", "Patient-open,Patient-close", "A").await;
    let mut socket = Socket::connect(&endpoint).await;
    socket.next_json().await;
    hub.unsubscribe("t", &endpoint).await;
    let denial = socket.next_json().await;
    assert_eq!(denial["hub.mode"], "denied");
    assert_eq!(denial["hub.topic"], "t");
    assert_eq!(denial["hub.events"], "Patient-open,Patient-close");
    assert!(denial["hub.reason"].is_string());
    assert!(socket.next_is_close().await);
}

#[tokio::test]
async fn p37_subscriber_that_never_answers_pings_is_dropped_with_a_sync_error() {
    let hub = Hub::start(HubConfig {
        ping_interval_ms: 100,
        ..HubConfig::default()
    })
    .await;
    let mut watcher = hub.subscriber("t", "SyncError", "Watcher").await;
    // A client that is never polled never answers pings (tungstenite pongs while reading).
    let endpoint = hub.subscribe("t", "Patient-open", "Sleeper").await;
    let _sleeper = Socket::connect(&endpoint).await;
    // The watcher keeps reading, so it answers every ping and stays.
    let error = watcher.next_json().await;
    assert_eq!(sync_error_codes(&error)[2], "Sleeper");
    assert!(tokio_tungstenite::connect_async(endpoint).await.is_err());
}

// ---- Publish ----

#[tokio::test]
async fn p38_publish_accepts_json_and_fhir_json() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub.subscriber("t", "Patient-open", "A").await;
    for (n, content_type) in ["application/json", "application/fhir+json; charset=utf-8"]
        .iter()
        .enumerate()
    {
        let response = hub
            .client
            .post(&hub.url)
            .header("content-type", *content_type)
            .body(patient_open("t", &format!("e{n}"), "p1").to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{content_type}");
        assert_eq!(socket.next_json().await["id"], format!("e{n}"));
    }
}

#[tokio::test]
async fn p39_publish_to_topic_path_alias_and_mismatch() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub.subscriber("t", "Patient-open", "A").await;
    let post = |topic: &str| {
        hub.client
            .post(format!("{}/{topic}", hub.url))
            .header("content-type", "application/json")
            .body(patient_open("t", "e1", "p1").to_string())
            .send()
    };
    assert_eq!(post("other").await.unwrap().status(), 400);
    assert_eq!(post("t").await.unwrap().status(), 202);
    assert_eq!(socket.next_json().await["id"], "e1");
}

#[tokio::test]
async fn p40_malformed_publish_requests_are_400() {
    let hub = Hub::start(HubConfig {
        profile: Profile::Ira,
        ..HubConfig::default()
    })
    .await;
    let _socket = hub.subscriber("t", "Patient-open", "A").await;
    let valid = patient_open("t", "e1", "p1");
    let mut cases: Vec<(String, String)> = Vec::new();
    for field in ["timestamp", "id", "event"] {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(field);
        cases.push((format!("no {field}"), body.to_string()));
    }
    for field in ["hub.topic", "hub.event", "context"] {
        let mut body = valid.clone();
        body["event"].as_object_mut().unwrap().remove(field);
        cases.push((format!("no event.{field}"), body.to_string()));
    }
    let mut unknown = valid.clone();
    unknown["event"]["hub.event"] = json!("Patient-explode");
    cases.push(("unknown event".into(), unknown.to_string()));
    let mut no_patient = valid.clone();
    no_patient["event"]["context"] = json!([]);
    cases.push(("missing patient key".into(), no_patient.to_string()));
    cases.push(("malformed JSON".into(), "{\"id\": ".into()));
    for (why, body) in cases {
        let response = hub
            .client
            .post(&hub.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{why}");
    }
}

#[tokio::test]
async fn p41_unknown_topic_is_400_in_ira_profile() {
    let hub = Hub::start(HubConfig {
        profile: Profile::Ira,
        ..HubConfig::default()
    })
    .await;
    assert_eq!(
        hub.publish(&patient_open("nobody", "e1", "p1"))
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn p42_broadcast_includes_the_requester() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut requester = hub.subscriber("t", "Patient-open", "Requester").await;
    let mut other = hub.subscriber("t", "Patient-open", "Other").await;
    hub.publish(&patient_open("t", "e1", "p1")).await;
    assert_eq!(requester.next_json().await["id"], "e1");
    assert_eq!(other.next_json().await["id"], "e1");
}

#[tokio::test]
async fn p43_broadcast_reuses_the_request_id() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub.subscriber("t", "Patient-open", "A").await;
    hub.publish(&patient_open("t", "wYXStHqxFQyHFELh", "p1"))
        .await;
    assert_eq!(socket.next_json().await["id"], "wYXStHqxFQyHFELh");
}

#[tokio::test]
async fn p44_multi_tab_open_contexts_and_closing_the_current_one() {
    let hub = Hub::start(HubConfig::default()).await;
    let _socket = hub.subscriber("t", "Patient-open", "A").await;
    hub.publish(&patient_open("t", "e1", "p1")).await;
    hub.publish(&patient_open("t", "e2", "p2")).await;
    let context: Value = hub.get_json("/t").await;
    assert_eq!(context["context"][0]["resource"]["id"], "p2");
    assert_eq!(
        hub.publish(&patient_close("t", "e3", "p2")).await.status(),
        202
    );
    let context: Value = hub.get_json("/t").await;
    assert_eq!(context, json!({"context.type": "", "context": []}));
    // p1 is still open: closing it is accepted (not a 409).
    let hub_ira = Hub::start(HubConfig {
        profile: Profile::Ira,
        ..HubConfig::default()
    })
    .await;
    let _socket = hub_ira.subscriber("t", "Patient-open", "A").await;
    hub_ira.publish(&patient_open("t", "e1", "p1")).await;
    hub_ira.publish(&patient_open("t", "e2", "p2")).await;
    hub_ira.publish(&patient_close("t", "e3", "p2")).await;
    assert_eq!(
        hub_ira
            .publish(&patient_close("t", "e4", "p1"))
            .await
            .status(),
        202
    );
}

#[tokio::test]
async fn p47_close_update_select_of_a_context_not_open_is_409() {
    let hub = Hub::start(HubConfig {
        profile: Profile::Ira,
        ..HubConfig::default()
    })
    .await;
    let _socket = hub.subscriber("t", "Patient-open", "A").await;
    assert_eq!(
        hub.publish(&patient_close("t", "e1", "p1")).await.status(),
        409
    );
    assert_eq!(
        hub.publish(&report_update("t", "u1", "r1", "v", json!([])))
            .await
            .status(),
        409
    );
    assert_eq!(
        hub.publish(&report_select("t", "s1", "r1", &[]))
            .await
            .status(),
        409
    );
}

#[tokio::test]
async fn p49_extra_elements_and_extension_key_are_accepted() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub.subscriber("t", "Patient-open", "A").await;
    let mut event = patient_open("t", "e1", "p1");
    event["event"]["context"][0]["resource"]["madeUpElement"] = json!({"x": [1, 2]});
    event["event"]["context"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "extension", "data": {"vendor": "acme"}}));
    assert_eq!(hub.publish(&event).await.status(), 202);
    let received = socket.next_json().await;
    assert_eq!(
        received["event"]["context"][0]["resource"]["madeUpElement"]["x"][1],
        2
    );
    assert_eq!(received["event"]["context"][1]["data"]["vendor"], "acme");
}

#[tokio::test]
async fn p50_logout_hibernate_home_and_custom_events_are_routed() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub
        .subscriber(
            "t",
            "UserLogout,UserHibernate,Home-open,org.example.ping",
            "A",
        )
        .await;
    let parameters = json!([{"key": "parameters", "resource": {"resourceType": "Parameters",
        "parameter": [{"name": "code", "valueCoding": {"code": "user-initiated"}}]}}]);
    for (id, name, context) in [
        ("e1", "userLogout", parameters.clone()),
        ("e2", "UserHibernate", parameters),
        ("e3", "home-open", json!([])),
        ("e4", "org.example.ping", json!([])),
    ] {
        let event = json!({"timestamp": "2025-01-01T10:00:00Z", "id": id, "event": {"hub.topic": "t", "hub.event": name, "context": context}});
        assert_eq!(hub.publish(&event).await.status(), 202, "{name}");
        assert_eq!(socket.next_json().await["id"], id);
    }
    let context: Value = hub.get_json("/t").await;
    assert_eq!(context["context.type"], "");
}

#[tokio::test]
async fn p51_subscriber_posted_sync_error_is_forwarded() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut watcher = hub.subscriber("t", "SyncError", "Watcher").await;
    let event = json!({"timestamp": "2025-01-01T10:00:00Z", "id": "se1", "event": {"hub.topic": "t", "hub.event": "syncerror",
        "context": [{"key": "operationoutcome", "resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "processing", "diagnostics": "Acme failed"}]}}]}});
    assert_eq!(hub.publish(&event).await.status(), 202);
    let received = watcher.next_json().await;
    assert_eq!(received["id"], "se1");
    assert_eq!(received["event"]["hub.event"], "SyncError");
}

// ---- Get current context ----

#[tokio::test]
async fn p52_get_current_context() {
    let hub = Hub::start(HubConfig::default()).await;
    let _socket = hub.subscriber("t", "Patient-open", "A").await;
    let open = patient_open("t", "e1", "p1");
    hub.publish(&open).await;
    let context: Value = hub.get_json("/t").await;
    assert_eq!(context["context.type"], "Patient");
    assert!(context["context.versionId"].is_string());
    assert_eq!(context["context"], open["event"]["context"]);
}

#[tokio::test]
async fn p53_empty_context_shape() {
    let hub = Hub::start(HubConfig::default()).await;
    let _socket = hub.subscriber("t", "Patient-open", "A").await;
    assert_eq!(
        hub.get_json("/t").await,
        json!({"context.type": "", "context": []})
    );
    hub.publish(&patient_open("t", "e1", "p1")).await;
    hub.publish(&patient_close("t", "e2", "p1")).await;
    assert_eq!(
        hub.get_json("/t").await,
        json!({"context.type": "", "context": []})
    );
}

// ---- Content sharing ----

#[tokio::test]
async fn p54_p56_p59_content_sharing_round_trip() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub
        .subscriber("t", "DiagnosticReport-open,DiagnosticReport-update", "A")
        .await;
    hub.publish(&report_open("t", "o1", "r1")).await;
    let opened = socket.next_json().await;
    let v1 = opened["event"]["context.versionId"]
        .as_str()
        .unwrap()
        .to_string();
    let context: Value = hub.get_json("/t").await;
    let content = content_of(&context);
    assert_eq!(content["resource"]["type"], "collection");
    assert_eq!(content["resource"]["entry"], json!([]));

    let update = report_update(
        "t",
        "u1",
        "r1",
        &v1,
        json!([observation_put("obs1", "preliminary")]),
    );
    assert_eq!(hub.publish(&update).await.status(), 202);
    let updated = socket.next_json().await;
    let v2 = updated["event"]["context.versionId"].as_str().unwrap();
    assert_ne!(v2, v1);
    assert_eq!(updated["event"]["context.priorVersionId"], v1.as_str());
    assert_eq!(updated["event"]["context"][1]["resource"]["id"], "bundle-1");

    let context: Value = hub.get_json("/t").await;
    assert_eq!(context["context.versionId"], v2);
    let content = content_of(&context);
    assert_eq!(
        content["resource"]["entry"][0]["resource"]["status"],
        "preliminary"
    );
    assert!(content["resource"]["entry"][0].get("request").is_none());
    // Updates go to content, not into the open event's context.
    assert_eq!(context["context"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn p57_p58_stale_version_or_bad_entry_rejects_everything() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub
        .subscriber("t", "DiagnosticReport-open,DiagnosticReport-update", "A")
        .await;
    hub.publish(&report_open("t", "o1", "r1")).await;
    let v1 = socket.next_json().await["event"]["context.versionId"]
        .as_str()
        .unwrap()
        .to_string();
    let stale = report_update(
        "t",
        "u1",
        "r1",
        "not-the-version",
        json!([observation_put("a", "final")]),
    );
    assert!(hub.publish(&stale).await.status().is_client_error());
    let mut missing = report_update("t", "u2", "r1", &v1, json!([observation_put("a", "final")]));
    missing["event"]
        .as_object_mut()
        .unwrap()
        .remove("context.versionId");
    assert!(hub.publish(&missing).await.status().is_client_error());
    let half_bad = report_update(
        "t",
        "u3",
        "r1",
        &v1,
        json!([observation_put("a", "final"), {"request": {"method": "DELETE"}}]),
    );
    assert_eq!(hub.publish(&half_bad).await.status(), 400);
    let context: Value = hub.get_json("/t").await;
    assert_eq!(context["context.versionId"], v1.as_str());
    assert_eq!(content_of(&context)["resource"]["entry"], json!([]));
    let good = report_update("t", "u4", "r1", &v1, json!([]));
    assert_eq!(hub.publish(&good).await.status(), 202);
    socket.expect_next_id("u4").await;
}

#[tokio::test]
async fn p60_bundle_rules() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub.subscriber("t", "DiagnosticReport-open", "A").await;
    hub.publish(&report_open("t", "o1", "r1")).await;
    let v1 = socket.next_json().await["event"]["context.versionId"]
        .as_str()
        .unwrap()
        .to_string();
    let cases = [
        (
            "POST",
            json!([{"request": {"method": "POST"}, "resource": {"resourceType": "Observation", "id": "x"}}]),
        ),
        (
            "PUT without resource",
            json!([{"request": {"method": "PUT"}}]),
        ),
        (
            "DELETE without fullUrl",
            json!([{"request": {"method": "DELETE"}}]),
        ),
        (
            "twice",
            json!([observation_put("x", "final"), {"fullUrl": "Observation/x", "request": {"method": "DELETE"}}]),
        ),
    ];
    for (why, entries) in cases {
        assert_eq!(
            hub.publish(&report_update("t", "u", "r1", &v1, entries))
                .await
                .status(),
            400,
            "{why}"
        );
    }
    let mut batch = report_update("t", "u", "r1", &v1, json!([]));
    batch["event"]["context"][1]["resource"]["type"] = json!("batch");
    assert_eq!(hub.publish(&batch).await.status(), 400);
    let ok = report_update(
        "t",
        "u",
        "r1",
        &v1,
        json!([observation_put("x", "final"), {"fullUrl": "Observation/y", "request": {"method": "DELETE"}}]),
    );
    assert_eq!(hub.publish(&ok).await.status(), 202);
}

#[tokio::test]
async fn p61_oversize_bundle_is_413() {
    let hub = Hub::start(HubConfig {
        max_update_entries: 5,
        ..HubConfig::default()
    })
    .await;
    let mut socket = hub.subscriber("t", "DiagnosticReport-open", "A").await;
    hub.publish(&report_open("t", "o1", "r1")).await;
    let v1 = socket.next_json().await["event"]["context.versionId"]
        .as_str()
        .unwrap()
        .to_string();
    let entries: Vec<Value> = (0..6)
        .map(|n| observation_put(&format!("o{n}"), "final"))
        .collect();
    assert_eq!(
        hub.publish(&report_update("t", "u", "r1", &v1, Value::Array(entries)))
            .await
            .status(),
        413
    );
}

#[tokio::test]
async fn p62_p63_close_disposes_content_and_reopen_restores_it() {
    let hub = Hub::start(HubConfig::default()).await;
    let _socket = hub.subscriber("t", "DiagnosticReport-open", "A").await;
    hub.publish(&report_open("t", "o1", "r1")).await;
    let v1 = hub.get_json("/t").await["context.versionId"]
        .as_str()
        .unwrap()
        .to_string();
    hub.publish(&report_update(
        "t",
        "u1",
        "r1",
        &v1,
        json!([observation_put("kept", "final")]),
    ))
    .await;
    let v2 = hub.get_json("/t").await["context.versionId"].clone();
    hub.publish(&report_open("t", "o2", "r2")).await;
    hub.publish(&report_open("t", "o3", "r1")).await;
    let context = hub.get_json("/t").await;
    assert_eq!(context["context.versionId"], v2);
    assert_eq!(
        content_of(&context)["resource"]["entry"][0]["resource"]["id"],
        "kept"
    );

    hub.publish(&report_close("t", "c1", "r1")).await;
    assert_eq!(hub.get_json("/t").await["context.type"], "");
    hub.publish(&report_open("t", "o4", "r1")).await;
    let context = hub.get_json("/t").await;
    assert_eq!(
        content_of(&context)["resource"]["entry"],
        json!([]),
        "closed content is gone"
    );
}

#[tokio::test]
async fn p64_updates_may_not_remove_or_swap_the_patient_in_ira_profile() {
    let hub = Hub::start(HubConfig {
        profile: Profile::Ira,
        ..HubConfig::default()
    })
    .await;
    let mut socket = hub.subscriber("t", "DiagnosticReport-open", "A").await;
    hub.publish(&report_open("t", "o1", "r1")).await;
    let v1 = socket.next_json().await["event"]["context.versionId"]
        .as_str()
        .unwrap()
        .to_string();
    let delete = json!([{"fullUrl": "Patient/p1", "request": {"method": "DELETE"}}]);
    assert_eq!(
        hub.publish(&report_update("t", "u1", "r1", &v1, delete))
            .await
            .status(),
        400
    );
    let swap = json!([{"request": {"method": "PUT"}, "resource": {"resourceType": "Patient", "id": "someone-else"}}]);
    assert_eq!(
        hub.publish(&report_update("t", "u2", "r1", &v1, swap))
            .await
            .status(),
        400
    );
}

#[tokio::test]
async fn p65_select_forwarded_and_refused_for_non_current_context() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut socket = hub
        .subscriber("t", "DiagnosticReport-open,DiagnosticReport-select", "A")
        .await;
    hub.publish(&report_open("t", "o1", "r1")).await;
    hub.publish(&report_open("t", "o2", "r2")).await;
    socket.next_json().await;
    socket.next_json().await;
    assert_eq!(
        hub.publish(&report_select("t", "s1", "r1", &["Observation/a"]))
            .await
            .status(),
        409
    );
    assert_eq!(
        hub.publish(&report_select("t", "s2", "r2", &["Observation/a"]))
            .await
            .status(),
        202
    );
    assert_eq!(socket.next_json().await["id"], "s2");
    assert_eq!(
        hub.publish(&report_select("t", "s3", "r2", &[]))
            .await
            .status(),
        202,
        "empty select clears"
    );
    assert_eq!(socket.next_json().await["id"], "s3");
}

#[tokio::test]
async fn p66_non_current_context_updates_follow_the_advertised_capability() {
    for allowed in [false, true] {
        let hub = Hub::start(HubConfig {
            non_current_context_updates: allowed,
            ..HubConfig::default()
        })
        .await;
        let advertised = hub.get_json("/.well-known/fhircast-configuration").await;
        assert_eq!(
            advertised["capabilities"]["supportsNonCurrentContextUpdates"],
            allowed
        );
        let _socket = hub.subscriber("t", "DiagnosticReport-open", "A").await;
        hub.publish(&report_open("t", "o1", "r1")).await;
        let v1 = hub.get_json("/t").await["context.versionId"]
            .as_str()
            .unwrap()
            .to_string();
        hub.publish(&report_open("t", "o2", "r2")).await;
        let status = hub
            .publish(&report_update("t", "u1", "r1", &v1, json!([])))
            .await
            .status();
        assert_eq!(status.is_success(), allowed, "{status}");
    }
}

// ---- Unsubscribe ----

#[tokio::test]
async fn p67_unsubscribe_answers_with_the_endpoint_denies_and_closes() {
    let hub = Hub::start(HubConfig::default()).await;
    let endpoint = hub.subscribe("t", "Patient-open", "A").await;
    let mut socket = Socket::connect(&endpoint).await;
    socket.next_json().await;
    let response = hub.form(&format!("hub.channel.type=websocket&hub.mode=unsubscribe&hub.topic=t&hub.channel.endpoint={endpoint}")).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["hub.channel.endpoint"], endpoint.as_str());
    assert_eq!(socket.next_json().await["hub.mode"], "denied");
    assert!(socket.next_is_close().await);
    assert!(tokio_tungstenite::connect_async(&endpoint).await.is_err());
    let again = hub.form(&format!("hub.channel.type=websocket&hub.mode=unsubscribe&hub.topic=t&hub.channel.endpoint={endpoint}")).await;
    assert_eq!(again.status(), 400);
}

#[tokio::test]
async fn p68_unsubscribe_errors() {
    let hub = Hub::start(HubConfig {
        profile: Profile::Ira,
        ..HubConfig::default()
    })
    .await;
    let endpoint = hub.subscribe("t", "Patient-open", "A").await;
    for form in [
        "hub.channel.type=websocket&hub.mode=unsubscribe&hub.topic=t".to_string(),
        format!(
            "hub.channel.type=websocket&hub.mode=unsubscribe&hub.topic=other&hub.channel.endpoint={endpoint}"
        ),
        format!(
            "hub.channel.type=webhook&hub.mode=unsubscribe&hub.topic=t&hub.channel.endpoint={endpoint}"
        ),
        format!("hub.channel.type=websocket&hub.mode=unsubscribe&hub.topic=t&endpoint={endpoint}"),
    ] {
        assert_eq!(hub.form(&form).await.status(), 400, "{form}");
    }
}

#[tokio::test]
async fn p69_endpoint_alias_and_trailing_newline() {
    let hub = Hub::start(HubConfig::default()).await;
    let first = hub.subscribe("t", "Patient-open", "A").await;
    let response = hub
        .form(&format!(
            "hub.channel.type=websocket&hub.mode=unsubscribe&hub.topic=t&endpoint={first}"
        ))
        .await;
    assert_eq!(response.status(), 202);
    let second = hub.subscribe("t", "Patient-open", "A").await;
    let response = hub.form(&format!("hub.channel.type=websocket&hub.mode=unsubscribe&hub.topic=t&hub.channel.endpoint={second}%0A")).await;
    assert_eq!(response.status(), 202);
}

// ---- Robustness and vendor compatibility ----

#[tokio::test]
async fn p72_lease_alias_and_webhook_fields_on_websocket_subscriptions() {
    let hub = Hub::start(HubConfig::default()).await;
    let response = hub.form("hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&hub.lease=120&hub.callback=https://viewer.test/cb&hub.secret=s").await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let mut socket = Socket::connect(body["hub.channel.endpoint"].as_str().unwrap()).await;
    assert_eq!(socket.next_json().await["hub.lease_seconds"], 120);
}

#[tokio::test]
async fn p73_non_ack_frames_are_ignored() {
    let hub = Hub::start(fast_acks(Profile::Lenient)).await;
    let mut watcher = hub.subscriber("t", "SyncError", "Watcher").await;
    let endpoint = hub.subscribe("t", "Patient-open", "Medplum").await;
    let mut socket = Socket::connect(&endpoint).await;
    socket.next_json().await;
    socket.send(json!({"hub.channel.endpoint": endpoint})).await;
    socket.send(json!({"timestamp": "2025-01-01T10:00:00Z", "id": "hb", "event": {"hub.topic": "t", "hub.event": "heartbeat", "context": [{"key": "period", "decimal": "10"}]}})).await;
    hub.publish(&patient_open("t", "e1", "p1")).await;
    let event = socket.next_json().await;
    // Medplum acknowledges with {id, timestamp}: taken as 200 in the lenient profile.
    socket
        .send(json!({"id": event["id"], "timestamp": "2025-01-01T10:00:00Z"}))
        .await;
    // Past the acknowledgement timeout, then a marker: a timeout SyncError would precede it.
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    hub.sync_error_marker("t", "marker").await;
    watcher.expect_next_id("marker").await;
}

#[tokio::test]
async fn p74_cors_preflight_and_headers() {
    let hub = Hub::start(HubConfig::default()).await;
    let response = hub
        .client
        .request(reqwest::Method::OPTIONS, &hub.url)
        .header("origin", "https://viewer.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert!(
        response
            .headers()
            .contains_key("access-control-allow-origin")
    );
    let response = hub
        .client
        .get(format!("{}/t", hub.url))
        .header("origin", "https://viewer.example")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test]
async fn p75_stu2_route_returns_the_bare_context_array() {
    let hub = Hub::start(HubConfig::default()).await;
    let _socket = hub.subscriber("t", "Patient-open", "A").await;
    assert_eq!(hub.get_json("/STU2/t").await, json!([]));
    let open = patient_open("t", "e1", "p1");
    hub.publish(&open).await;
    assert_eq!(hub.get_json("/STU2/t").await, open["event"]["context"]);
}

#[tokio::test]
async fn p74_the_api_hub_alias_serves_the_same_hub() {
    let hub = Hub::start(HubConfig::default()).await;
    let alias = format!("http://{}/api/hub", hub.address);
    let response = hub
        .client
        .post(&alias)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&subscriber.name=OHIF")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let mut socket = Socket::connect(body["hub.channel.endpoint"].as_str().unwrap()).await;
    assert_eq!(socket.next_json().await["hub.mode"], "subscribe");
    // Published through the configured path, read back through the alias.
    assert_eq!(
        hub.publish(&patient_open("t", "e1", "p1")).await.status(),
        202
    );
    socket.expect_next_id("e1").await;
    let context: Value = hub
        .client
        .get(format!("{alias}/t"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(context["context.type"], "Patient");
}

#[tokio::test]
async fn p75_stu2_well_known_says_stu2() {
    let hub = Hub::start(HubConfig::default()).await;
    let stu2 = hub
        .get_json("/STU2/.well-known/fhircast-configuration")
        .await;
    assert_eq!(stu2["fhircastVersion"], "STU2");
    assert_eq!(stu2["websocketSupport"], true);
    let stu3 = hub.get_json("/.well-known/fhircast-configuration").await;
    assert_eq!(stu3["fhircastVersion"], "3.0.0");
}

#[tokio::test]
async fn a_topic_named_sandbox_has_a_current_context_and_browsers_get_the_page() {
    let hub = Hub::start(HubConfig::default()).await;
    assert_eq!(
        hub.publish(&patient_open("sandbox", "e1", "p1"))
            .await
            .status(),
        202
    );
    let context = hub.get_json("/sandbox").await;
    assert_eq!(context["context.type"], "Patient");
    let page = hub
        .client
        .get(format!("{}/sandbox", hub.url))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
}

#[tokio::test]
async fn p37_heartbeat_events_reach_every_connected_subscriber_when_enabled() {
    let hub = Hub::start(HubConfig {
        heartbeat_seconds: 1,
        ..HubConfig::default()
    })
    .await;
    // Subscribed to nothing like heartbeat: the legacy event goes to every subscriber.
    let mut socket = hub.subscriber("t", "Patient-open", "A").await;
    let heartbeat = socket.next_json().await;
    assert_eq!(heartbeat["event"]["hub.event"], "heartbeat");
    assert_eq!(heartbeat["event"]["hub.topic"], "t");
    assert_eq!(heartbeat["event"]["context"][0]["key"], "period");
    assert_eq!(heartbeat["event"]["context"][0]["decimal"], "1");
    // Not acknowledged, and nobody is reported for it: the next one still comes.
    assert_eq!(socket.next_json().await["event"]["hub.event"], "heartbeat");
}

fn encounter_open(topic: &str, id: &str, encounter: &str, patient: &str) -> Value {
    json!({"timestamp": "2025-01-01T10:00:00Z", "id": id, "event": {"hub.topic": topic,
        "hub.event": "Encounter-open", "context": [
            {"key": "encounter", "resource": {"resourceType": "Encounter", "id": encounter}},
            {"key": "patient", "resource": {"resourceType": "Patient", "id": patient}}]}})
}

#[tokio::test]
async fn p48_derived_patient_open_for_subscribers_of_patient_open_only() {
    let hub = Hub::start(HubConfig::default()).await;
    let mut patient_only = hub
        .subscriber("t", "Patient-open,SyncError", "Patient app")
        .await;
    let mut both = hub
        .subscriber("t", "Patient-open,Encounter-open,SyncError", "EMR")
        .await;
    assert_eq!(
        hub.publish(&encounter_open("t", "enc-1", "e1", "p1"))
            .await
            .status(),
        202
    );
    let derived = patient_only.next_json().await;
    assert_eq!(derived["event"]["hub.event"], "Patient-open");
    assert_eq!(derived["event"]["context"][0]["resource"]["id"], "p1");
    assert_ne!(derived["id"], "enc-1");
    patient_only.ack(&derived, json!(200)).await;
    // A subscriber of both gets the Encounter-open only (it implies the patient itself).
    both.expect_next_id("enc-1").await;

    // Same patient, another encounter: no duplicate Patient-open.
    assert_eq!(
        hub.publish(&encounter_open("t", "enc-2", "e2", "p1"))
            .await
            .status(),
        202
    );
    both.expect_next_id("enc-2").await;
    hub.sync_error_marker("t", "marker-1").await;
    patient_only.expect_next_id("marker-1").await;

    // Another patient: a new derived open.
    assert_eq!(
        hub.publish(&encounter_open("t", "enc-3", "e3", "p2"))
            .await
            .status(),
        202
    );
    let derived = patient_only.next_json().await;
    assert_eq!(derived["event"]["context"][0]["resource"]["id"], "p2");
    // The encounter stays the current context.
    assert_eq!(hub.get_json("/t").await["context.type"], "Encounter");
    // A late Patient-open subscriber is replayed the derived patient.
    let mut late = hub.subscriber("t", "Patient-open", "Late").await;
    let replayed = late.next_json().await;
    assert_eq!(replayed["event"]["context"][0]["resource"]["id"], "p2");
}

#[tokio::test]
async fn p64_updates_may_not_change_the_study_uid_or_accession_in_ira_profile() {
    let hub = Hub::start(HubConfig {
        profile: Profile::Ira,
        ..HubConfig::default()
    })
    .await;
    let mut socket = hub.subscriber("t", "DiagnosticReport-open", "A").await;
    let accession = json!({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}, "value": "A-100"});
    let study = |uid: &str, accession: &Value| {
        json!({"resourceType": "ImagingStudy", "id": "s1", "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": uid}, accession]})
    };
    let mut open = report_open("t", "o1", "r1");
    open["event"]["context"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "study", "resource": study("urn:oid:1.2.3", &accession)}));
    assert_eq!(hub.publish(&open).await.status(), 202);
    let v1 = socket.next_json().await["event"]["context.versionId"]
        .as_str()
        .unwrap()
        .to_string();
    let put = |resource: Value| json!([{"request": {"method": "PUT"}, "resource": resource}]);
    let other_accession = json!({"type": {"coding": [{"code": "ACSN"}]}, "value": "A-999"});
    for (id, changed) in [
        ("u1", study("urn:oid:9.9.9", &accession)),
        ("u2", study("urn:oid:1.2.3", &other_accession)),
    ] {
        let response = hub
            .publish(&report_update("t", id, "r1", &v1, put(changed)))
            .await;
        assert_eq!(response.status(), 400);
    }
    // The same identifiers with another status is an ordinary update.
    let mut same = study("urn:oid:1.2.3", &accession);
    same["status"] = json!("registered");
    assert_eq!(
        hub.publish(&report_update("t", "u3", "r1", &v1, put(same)))
            .await
            .status(),
        202
    );
}
