//! The hub state machine driven directly, with time passed in.

use flare_fhircast::{ContextShape, HttpReply, Hub, HubConfig, Output, Profile};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime, macros::datetime};

const BASE: &str = "ws://hub.test/fhircast/ws";
const TOPIC: &str = "topic-1";

struct Harness {
    hub: Hub,
    now: OffsetDateTime,
}

fn counter_ids() -> Box<dyn FnMut() -> String + Send> {
    let mut next = 0u32;
    Box::new(move || {
        next += 1;
        format!("id{next}")
    })
}

impl Harness {
    fn new(profile: Profile) -> Self {
        let config = HubConfig {
            profile,
            ..HubConfig::default()
        };
        Self {
            hub: Hub::with_id_source(config, counter_ids()),
            now: datetime!(2025-01-01 10:00 UTC),
        }
    }

    fn subscribe(&mut self, form: &str) -> (HttpReply, Vec<Output>) {
        let response = self.hub.subscribe(form.as_bytes(), BASE, self.now);
        (response.reply, response.outputs)
    }

    /// Subscribes and connects; returns the endpoint id, connection and the frames sent on connect.
    fn subscriber(&mut self, events: &str, name: &str) -> (String, u64, Vec<Value>) {
        let (reply, _) = self.subscribe(&format!(
            "hub.channel.type=websocket&hub.mode=subscribe&hub.topic={TOPIC}&hub.events={events}&subscriber.name={name}"
        ));
        assert_eq!(reply.status, 202, "{}", reply.body);
        let url = serde_json::from_str::<Value>(&reply.body).unwrap()["hub.channel.endpoint"]
            .as_str()
            .unwrap()
            .to_string();
        let endpoint = url.rsplit('/').next().unwrap().to_string();
        let (connection, outputs) = self.hub.socket_opened(&endpoint, self.now).unwrap();
        (endpoint, connection, frames_for(&outputs, connection))
    }

    fn publish(&mut self, body: &Value) -> (HttpReply, Vec<Output>) {
        let response = self
            .hub
            .publish(None, body.to_string().as_bytes(), self.now);
        (response.reply, response.outputs)
    }

    fn advance(&mut self, duration: Duration) -> Vec<Output> {
        self.now += duration;
        self.hub.tick(self.now)
    }
}

fn frames_for(outputs: &[Output], connection: u64) -> Vec<Value> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Send {
                connection: to,
                text,
            } if *to == connection => Some(serde_json::from_str(text).unwrap()),
            _ => None,
        })
        .collect()
}

fn closed(outputs: &[Output], connection: u64) -> bool {
    outputs
        .iter()
        .any(|output| matches!(output, Output::Close { connection: to, .. } if *to == connection))
}

fn event(id: &str, name: &str, context: Value) -> Value {
    json!({
        "timestamp": "2025-01-01T10:00:00Z",
        "id": id,
        "event": {"hub.topic": TOPIC, "hub.event": name, "context": context},
    })
}

fn patient_open(id: &str, patient: &str) -> Value {
    event(
        id,
        "Patient-open",
        json!([{"key": "patient", "resource": {"resourceType": "Patient", "id": patient}}]),
    )
}

fn report_open(id: &str, report: &str) -> Value {
    event(
        id,
        "DiagnosticReport-open",
        json!([
            {"key": "report", "resource": {"resourceType": "DiagnosticReport", "id": report}},
            {"key": "patient", "resource": {"resourceType": "Patient", "id": "p1"}},
        ]),
    )
}

fn report_update(id: &str, report: &str, version: &str, entries: Value) -> Value {
    let mut update = event(
        id,
        "DiagnosticReport-update",
        json!([
            {"key": "report", "reference": {"reference": format!("DiagnosticReport/{report}")}},
            {"key": "updates", "resource": {"resourceType": "Bundle", "id": "bundle-1", "type": "transaction", "entry": entries}},
        ]),
    );
    update["event"]["context.versionId"] = json!(version);
    update
}

fn observation_put(id: &str) -> Value {
    json!({"request": {"method": "PUT"}, "resource": {"resourceType": "Observation", "id": id, "status": "preliminary"}})
}

#[test]
fn confirmation_then_replay_of_open_contexts_only_for_subscribed_events() {
    let mut h = Harness::new(Profile::Lenient);
    let (_, publisher, _) = h.subscriber("Patient-open", "Publisher");
    let (reply, _) = h.publish(&patient_open("e1", "p1"));
    assert_eq!(reply.status, 202);
    h.publish(&report_open("e2", "r1"));

    let (_, _, frames) = h.subscriber("patient-open,Patient-close", "Late");
    assert_eq!(frames[0]["hub.mode"], "subscribe");
    assert_eq!(frames[0]["hub.topic"], TOPIC);
    assert_eq!(frames[0]["hub.events"], "Patient-open,Patient-close");
    assert_eq!(frames[0]["hub.lease_seconds"], 7200);
    assert_eq!(
        frames.len(),
        2,
        "only the Patient-open is replayed: {frames:?}"
    );
    assert_eq!(frames[1]["id"], "e1");
    assert_eq!(frames[1]["timestamp"], "2025-01-01T10:00:00Z");
    let _ = publisher;
}

#[test]
fn broadcast_reuses_the_request_id_and_reaches_the_requester() {
    let mut h = Harness::new(Profile::Lenient);
    let (_, a, _) = h.subscriber("Patient-open", "A");
    let (_, b, _) = h.subscriber("Patient-close", "B");
    let (_, outputs) = h.publish(&patient_open("req-7", "p1"));
    let to_a = frames_for(&outputs, a);
    assert_eq!(to_a.len(), 1);
    assert_eq!(to_a[0]["id"], "req-7");
    assert_eq!(to_a[0]["event"]["hub.event"], "Patient-open");
    assert!(to_a[0]["event"]["context.versionId"].is_string());
    assert!(
        frames_for(&outputs, b).is_empty(),
        "B did not subscribe to Patient-open"
    );
}

#[test]
fn timestamps_never_go_backwards_on_a_topic() {
    let mut h = Harness::new(Profile::Lenient);
    let (_, a, _) = h.subscriber("Patient-open", "A");
    h.publish(&patient_open("e1", "p1"));
    let mut older = patient_open("e2", "p2");
    older["timestamp"] = json!("2024-12-31T10:00:00Z");
    let (_, outputs) = h.publish(&older);
    assert_eq!(
        frames_for(&outputs, a)[0]["timestamp"],
        "2025-01-01T10:00:00Z"
    );
}

#[test]
fn unacknowledged_event_gives_a_sync_error_and_repeated_silence_unsubscribes() {
    let mut h = Harness::new(Profile::Lenient);
    let (_, publisher, _) = h.subscriber("Patient-open,SyncError", "Publisher");
    let (_, silent, _) = h.subscriber("Patient-open", "Silent");
    let (_, outputs) = h.publish(&patient_open("e1", "p1"));
    let delivered = frames_for(&outputs, publisher);
    h.hub.socket_message(
        publisher,
        &json!({"id": delivered[0]["id"], "status": 200}).to_string(),
        h.now,
    );

    assert!(h.advance(Duration::seconds(9)).is_empty());
    let outputs = h.advance(Duration::seconds(2));
    let errors = frames_for(&outputs, publisher);
    assert_eq!(errors.len(), 1, "{outputs:?}");
    let issue = &errors[0]["event"]["context"][0]["resource"]["issue"][0];
    assert_eq!(errors[0]["event"]["hub.event"], "SyncError");
    assert_eq!(issue["severity"], "warning");
    assert_eq!(issue["code"], "processing");
    let codes: Vec<&str> = issue["details"]["coding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|coding| coding["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["e1", "Patient-open", "Silent"]);
    assert!(!closed(&outputs, silent));

    for n in 2..=3 {
        h.publish(&patient_open(&format!("e{n}"), "p1"));
        let outputs = h.advance(Duration::seconds(11));
        if n == 3 {
            let frames = frames_for(&outputs, silent);
            assert_eq!(frames.last().unwrap()["hub.mode"], "denied");
            assert!(
                closed(&outputs, silent),
                "the third silence ends the subscription"
            );
        } else {
            assert!(!closed(&outputs, silent));
        }
    }
}

#[test]
fn refusing_ack_is_reported_to_the_others_and_string_status_is_accepted() {
    let mut h = Harness::new(Profile::Ira);
    let (_, watcher, _) = h.subscriber("SyncError", "Watcher");
    let (_, refuser, _) = h.subscriber("Patient-open", "Refuser");
    h.publish(&patient_open("e1", "p1"));
    let outputs = h
        .hub
        .socket_message(refuser, r#"{"id":"e1","status":"409"}"#, h.now);
    let errors = frames_for(&outputs, watcher);
    assert_eq!(errors.len(), 1);
    assert!(frames_for(&outputs, refuser).is_empty());
    // Acknowledged (even if refused): no timeout SyncError later.
    assert!(frames_for(&h.advance(Duration::seconds(20)), watcher).is_empty());
}

#[test]
fn ack_without_status_counts_only_in_lenient_mode() {
    for (profile, expect_sync_error) in [(Profile::Lenient, false), (Profile::Ira, true)] {
        let mut h = Harness::new(profile);
        let (_, watcher, _) = h.subscriber("SyncError", "Watcher");
        let (_, medplum, _) = h.subscriber("Patient-open", "Medplum");
        h.publish(&patient_open("e1", "p1"));
        h.hub.socket_message(
            medplum,
            r#"{"id":"e1","timestamp":"2025-01-01T10:00:00Z"}"#,
            h.now,
        );
        let outputs = h.advance(Duration::seconds(11));
        assert_eq!(
            !frames_for(&outputs, watcher).is_empty(),
            expect_sync_error,
            "{profile:?}"
        );
    }
}

#[test]
fn abnormal_close_reports_and_normal_close_does_not() {
    let mut h = Harness::new(Profile::Lenient);
    let (_, watcher, _) = h.subscriber("SyncError", "Watcher");
    let (quiet_endpoint, quiet, _) = h.subscriber("Patient-open", "Quiet");
    let (_, dropped, _) = h.subscriber("Patient-open", "Dropped");
    assert!(frames_for(&h.hub.socket_closed(quiet, Some(1000), h.now), watcher).is_empty());
    assert!(!h.hub.endpoint_is_live(&quiet_endpoint, h.now));
    let outputs = h.hub.socket_closed(dropped, None, h.now);
    assert_eq!(frames_for(&outputs, watcher).len(), 1);
}

#[test]
fn lease_expiry_denies_closes_and_kills_the_endpoint() {
    let mut h = Harness::new(Profile::Lenient);
    let (reply, _) = h.subscribe(&format!(
        "hub.channel.type=websocket&hub.mode=subscribe&hub.topic={TOPIC}&hub.events=Patient-open&hub.lease_seconds=60"
    ));
    let url: Value = serde_json::from_str(&reply.body).unwrap();
    let endpoint = url["hub.channel.endpoint"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    h.now += Duration::seconds(30);
    let (connection, outputs) = h.hub.socket_opened(&endpoint, h.now).unwrap();
    assert_eq!(frames_for(&outputs, connection)[0]["hub.lease_seconds"], 60);
    // Counted from the confirmation: still alive 59 s after it.
    assert!(h.advance(Duration::seconds(59)).is_empty());
    assert_eq!(h.hub.next_deadline(), Some(h.now + Duration::seconds(1)));
    let outputs = h.advance(Duration::seconds(1));
    assert_eq!(frames_for(&outputs, connection)[0]["hub.mode"], "denied");
    assert!(closed(&outputs, connection));
    assert!(h.hub.socket_opened(&endpoint, h.now).is_err());
}

#[test]
fn content_sharing_versions_atomicity_and_get_context() {
    let mut h = Harness::new(Profile::Ira);
    let (_, a, _) = h.subscriber("DiagnosticReport-open,DiagnosticReport-update", "A");
    let (_, outputs) = h.publish(&report_open("o1", "r1"));
    let v1 = frames_for(&outputs, a)[0]["event"]["context.versionId"]
        .as_str()
        .unwrap()
        .to_string();

    let (reply, outputs) = h.publish(&report_update(
        "u1",
        "r1",
        &v1,
        json!([observation_put("obs1")]),
    ));
    assert_eq!(reply.status, 202, "{}", reply.body);
    let update = &frames_for(&outputs, a)[0];
    let v2 = update["event"]["context.versionId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v1, v2);
    assert_eq!(update["event"]["context.priorVersionId"], v1.as_str());
    assert_eq!(update["event"]["context"][1]["resource"]["id"], "bundle-1");

    // Stale version: rejected, nothing applied, nothing sent.
    let (reply, outputs) = h.publish(&report_update(
        "u2",
        "r1",
        &v1,
        json!([observation_put("obs2")]),
    ));
    assert_eq!(reply.status, 400);
    assert!(outputs.is_empty());
    // One bad entry (POST) rejects the whole Bundle.
    let post = json!({"request": {"method": "POST"}, "resource": {"resourceType": "Observation", "id": "x"}});
    let (reply, _) = h.publish(&report_update(
        "u3",
        "r1",
        &v2,
        json!([observation_put("obs3"), post]),
    ));
    assert_eq!(reply.status, 400);
    // Deleting the patient of the context is refused in IRA mode.
    let (reply, _) = h.publish(&report_update(
        "u4",
        "r1",
        &v2,
        json!([{"fullUrl": "Patient/p1", "request": {"method": "DELETE"}}]),
    ));
    assert_eq!(reply.status, 400);
    // Duplicated resource.
    let (reply, _) = h.publish(&report_update(
        "u5",
        "r1",
        &v2,
        json!([observation_put("o"), observation_put("o")]),
    ));
    assert_eq!(reply.status, 400);
    // Oversize.
    let many: Vec<Value> = (0..101)
        .map(|n| observation_put(&format!("m{n}")))
        .collect();
    let (reply, _) = h.publish(&report_update("u6", "r1", &v2, Value::Array(many)));
    assert_eq!(reply.status, 413);

    let context: Value =
        serde_json::from_str(&h.hub.current_context(TOPIC, ContextShape::Stu3).body).unwrap();
    assert_eq!(context["context.type"], "DiagnosticReport");
    assert_eq!(context["context.versionId"], v2.as_str());
    let contents: Vec<&Value> = context["context"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == "content")
        .collect();
    assert_eq!(contents.len(), 1);
    let entries = contents[0]["resource"]["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "only obs1 was applied: {entries:?}");
    assert_eq!(entries[0]["resource"]["id"], "obs1");
    assert!(entries[0].get("request").is_none());
}

#[test]
fn multiple_reports_reopen_restores_content_and_close_leaves_no_current() {
    let mut h = Harness::new(Profile::Lenient);
    h.subscriber("DiagnosticReport-open", "A");
    h.publish(&report_open("o1", "r1"));
    let v1 = h.hub.current_context(TOPIC, ContextShape::Stu3);
    let v1: Value = serde_json::from_str(&v1.body).unwrap();
    let v1 = v1["context.versionId"].as_str().unwrap().to_string();
    let (reply, _) = h.publish(&report_update(
        "u1",
        "r1",
        &v1,
        json!([observation_put("obs1")]),
    ));
    assert_eq!(reply.status, 202);
    h.publish(&report_open("o2", "r2"));
    // An update to r1 while r2 is current is refused (supportsNonCurrentContextUpdates=false).
    let (reply, _) = h.publish(&report_update("u2", "r1", "whatever", json!([])));
    assert_eq!(reply.status, 409);

    h.publish(&report_open("o3", "r1"));
    let context: Value =
        serde_json::from_str(&h.hub.current_context(TOPIC, ContextShape::Stu3).body).unwrap();
    let content = context["context"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "content")
        .unwrap();
    assert_eq!(content["resource"]["entry"][0]["resource"]["id"], "obs1");
    assert_ne!(
        context["context.versionId"],
        v1.as_str(),
        "the update made a new version"
    );

    let close = event(
        "c1",
        "DiagnosticReport-close",
        json!([
            {"key": "report", "resource": {"resourceType": "DiagnosticReport", "id": "r1"}},
            {"key": "patient", "resource": {"resourceType": "Patient", "id": "p1"}},
        ]),
    );
    assert_eq!(h.publish(&close).0.status, 202);
    let context: Value =
        serde_json::from_str(&h.hub.current_context(TOPIC, ContextShape::Stu3).body).unwrap();
    assert_eq!(
        context,
        json!({"context.type": "", "context": []}),
        "r2 is still open but not current"
    );
}

#[test]
fn ira_rules_for_close_select_and_unknown_topics() {
    let mut h = Harness::new(Profile::Ira);
    let (reply, _) = h.publish(&patient_open("e1", "p1"));
    assert_eq!(reply.status, 400, "nobody subscribed to the topic");
    h.subscriber("Patient-open", "A");
    let close = event(
        "c1",
        "Patient-close",
        json!([{"key": "patient", "resource": {"resourceType": "Patient", "id": "p9"}}]),
    );
    assert_eq!(h.publish(&close).0.status, 409);
    let select = event(
        "s1",
        "DiagnosticReport-select",
        json!([{"key": "report", "reference": {"reference": "DiagnosticReport/r1"}}]),
    );
    assert_eq!(h.publish(&select).0.status, 409);
}

#[test]
fn subscription_errors() {
    let mut h = Harness::new(Profile::Ira);
    let ok = "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&subscriber.name=n";
    assert_eq!(h.subscribe(ok).0.status, 202);
    for (form, why) in [
        (
            "hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&subscriber.name=n",
            "no channel type",
        ),
        (
            "hub.channel.type=webhook&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&subscriber.name=n",
            "webhook",
        ),
        (
            "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=&hub.events=Patient-open&subscriber.name=n",
            "empty topic",
        ),
        (
            "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&subscriber.name=n",
            "no events",
        ),
        (
            "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=*&subscriber.name=n",
            "wildcard",
        ),
        (
            "hub.channel.type=websocket&hub.mode=follow&hub.topic=t&hub.events=Patient-open&subscriber.name=n",
            "mode",
        ),
        (
            "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.topic=u&hub.events=Patient-open&subscriber.name=n",
            "repeated",
        ),
        (
            "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open",
            "no name",
        ),
        (
            "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&subscriber.name=n&hub.lease_seconds=-4",
            "lease",
        ),
        (
            "hub.channel.type=websocket&hub.mode=unsubscribe&hub.topic=t",
            "unsubscribe without endpoint",
        ),
    ] {
        let (reply, _) = h.subscribe(form);
        assert_eq!(reply.status, 400, "{why}");
        assert!(reply.content_type.unwrap().starts_with("text/plain"));
        assert!(!reply.body.is_empty());
    }
}

#[test]
fn webhook_subscription_is_active_only_after_a_confirmed_verification() {
    let config = HubConfig {
        webhook: true,
        ..HubConfig::default()
    };
    let mut hub = Hub::with_id_source(config, counter_ids());
    let now = datetime!(2025-01-01 10:00 UTC);
    let form = "hub.channel.type=webhook&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&hub.callback=https%3A%2F%2Fapp.test%2Fcb%3Fx%3D1&hub.secret=s";
    let subscribe = |hub: &mut Hub| {
        let response = hub.subscribe(form.as_bytes(), BASE, now);
        assert_eq!(response.reply.status, 202);
        match &response.outputs[..] {
            [
                Output::VerifyIntent {
                    subscription,
                    callback,
                    intent,
                },
            ] => {
                assert_eq!(callback, "https://app.test/cb?x=1");
                assert_eq!(intent.mode, "subscribe");
                assert_eq!(intent.events, "Patient-open");
                subscription.clone()
            }
            other => panic!("{other:?}"),
        }
    };
    let publish = |hub: &mut Hub, id: &str| {
        let event = json!({"timestamp": "2025-01-01T10:00:00Z", "id": id, "event": {"hub.topic": "t",
            "hub.event": "Patient-open", "context": [{"key": "patient", "resource": {"resourceType": "Patient", "id": "p"}}]}});
        hub.publish(None, event.to_string().as_bytes(), now).outputs
    };
    let refused = subscribe(&mut hub);
    assert!(publish(&mut hub, "e1").is_empty(), "not verified yet");
    let _ = hub.intent_verified(&refused, false, now);
    let unsubscribe = "hub.channel.type=webhook&hub.mode=unsubscribe&hub.topic=t&hub.callback=https%3A%2F%2Fapp.test%2Fcb%3Fx%3D1";
    assert_eq!(
        hub.subscribe(unsubscribe.as_bytes(), BASE, now)
            .reply
            .status,
        400,
        "dropped"
    );

    let confirmed = subscribe(&mut hub);
    let _ = hub.intent_verified(&confirmed, true, now);
    match &publish(&mut hub, "e2")[..] {
        [
            Output::WebhookPost {
                callback,
                secret,
                body,
                ..
            },
        ] => {
            assert_eq!(callback, "https://app.test/cb?x=1");
            assert_eq!(secret, "s");
            assert_eq!(serde_json::from_str::<Value>(body).unwrap()["id"], "e2");
        }
        other => panic!("{other:?}"),
    }
    // A 500 from the callback is a refusal like a WebSocket ack: reported, not fatal.
    assert!(
        hub.webhook_delivered(&confirmed, "e2", "Patient-open", Some(500), now)
            .is_empty()
    );
    assert_eq!(
        hub.subscribe(unsubscribe.as_bytes(), BASE, now)
            .reply
            .status,
        202
    );
}
