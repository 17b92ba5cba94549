//! The delivery runtime over a real store, embedded log and HTTP receiver. Tests are named
//! after the points of the conformance checklist (spec §1.9) they check.

mod channels;
mod common;
mod redaction;

use common::{Answer, BACKPORT, Env, Receiver, backport_subscription, encounter, param};
use serde_json::{Value, json};

#[tokio::test]
async fn c12_c13_c14_handshake_then_active() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let id = env
        .create(backport_subscription(&hooks.url("a"), "p1", "id-only"))
        .await;
    let received = hooks.wait("a", |r| !r.is_empty()).await;
    let handshake = &received[0];
    assert_eq!(handshake.method, "POST");
    assert_eq!(handshake.kind(), "handshake");
    assert_eq!(handshake.headers["content-type"], "application/fhir+json");
    assert_eq!(handshake.headers["x-test"], "yes");
    let body = handshake.json();
    assert_eq!(body["type"], "history");
    let status = &body["entry"][0]["resource"];
    assert_eq!(param(status, "status").unwrap()["valueCode"], "requested");
    assert_eq!(
        param(status, "events-since-subscription-start").unwrap()["valueString"],
        "0"
    );
    assert!(param(status, "notification-event").is_none());
    env.wait_status(&id, "active").await;
    // `$status` follows the written status (it is set right after the write commits).
    for _ in 0..500 {
        let info = env.runtime.status(&id).await.unwrap().unwrap();
        if info.status == "active" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("$status never showed active");
}

#[tokio::test]
async fn c13_failed_handshake_sets_error_with_reason() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    hooks.answer("down", Answer::Fail);
    let id = env
        .create(backport_subscription(&hooks.url("down"), "p1", "id-only"))
        .await;
    let subscription = env.wait_status(&id, "error").await;
    let reason = subscription["error"].as_str().unwrap();
    assert!(
        reason.contains("handshake") && reason.contains("500"),
        "{reason}"
    );
}

#[tokio::test]
async fn f25_event_numbers_are_gap_free_ordered_and_counted() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let id = env
        .create(backport_subscription(&hooks.url("a"), "p1", "id-only"))
        .await;
    env.wait_status(&id, "active").await;
    for _ in 0..5 {
        env.create(encounter("p1")).await;
        env.create(encounter("other")).await;
    }
    let received = hooks.wait_events("a", 5).await;
    let notifications: Vec<_> = received
        .iter()
        .filter(|n| n.kind() == "event-notification")
        .collect();
    let numbers: Vec<u64> = notifications
        .iter()
        .flat_map(|n| n.event_numbers())
        .collect();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5]);
    // The counter includes events generated but not yet delivered (F24): never below the
    // notification's own number, never decreasing.
    let mut previous_count = 0;
    for n in &notifications {
        let body = n.json();
        let status = &body["entry"][0]["resource"];
        let count: u64 = param(status, "events-since-subscription-start").unwrap()["valueString"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(count >= n.event_numbers()[0] && count >= previous_count && count <= 5);
        previous_count = count;
        // id-only: the focus entry has a fullUrl and request but no resource (E21).
        assert!(
            body["entry"][1]["fullUrl"]
                .as_str()
                .unwrap()
                .contains("/Encounter/")
        );
        assert!(body["entry"][1].get("resource").is_none());
        assert_eq!(body["entry"][1]["request"]["method"], "POST");
    }
    assert_eq!(
        env.runtime
            .status(&id)
            .await
            .unwrap()
            .unwrap()
            .events_since_start,
        5
    );
}

#[tokio::test]
async fn e22_full_resource_carries_the_version() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let id = env
        .create(backport_subscription(
            &hooks.url("a"),
            "p1",
            "full-resource",
        ))
        .await;
    env.wait_status(&id, "active").await;
    let encounter_id = env.create(encounter("p1")).await;
    let received = hooks
        .wait("a", |r| r.iter().any(|n| n.kind() == "event-notification"))
        .await;
    let body = received.last().unwrap().json();
    assert_eq!(body["entry"][1]["resource"]["id"], encounter_id.as_str());
    assert_eq!(body["entry"][1]["resource"]["meta"]["versionId"], "1");
    let status = &body["entry"][0]["resource"];
    assert_eq!(
        param(status, "topic").unwrap()["valueCanonical"],
        common::ADMISSION
    );
}

#[tokio::test]
async fn e20_empty_content_has_no_focus_and_no_topic() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let id = env
        .create(backport_subscription(&hooks.url("a"), "p1", "empty"))
        .await;
    env.wait_status(&id, "active").await;
    env.create(encounter("p1")).await;
    let received = hooks
        .wait("a", |r| r.iter().any(|n| n.kind() == "event-notification"))
        .await;
    let body = received.last().unwrap().json();
    assert_eq!(body["entry"].as_array().unwrap().len(), 1);
    let status = &body["entry"][0]["resource"];
    assert!(param(status, "topic").is_none());
    let event = param(status, "notification-event").unwrap();
    assert!(
        event["part"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "focus")
    );
}

#[tokio::test]
async fn b8_off_is_not_counted_h33_events_lists_every_number() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    // Held back until the events exist, so that they are pending together.
    hooks.answer("a", Answer::Ok);
    let mut subscription = backport_subscription(&hooks.url("a"), "p1", "id-only");
    subscription["channel"]["extension"] = json!([{
        "url": format!("{BACKPORT}backport-max-count"), "valuePositiveInt": 3}]);
    subscription["status"] = json!("off");
    let id = env.create(subscription.clone()).await;
    for _ in 0..7 {
        env.create(encounter("p1")).await;
    }
    // While off, nothing is numbered; turning it on numbers only later events.
    subscription["id"] = json!(id);
    subscription["status"] = json!("requested");
    env.update(subscription).await;
    env.wait_status(&id, "active").await;
    hooks.answer("a", Answer::Hang);
    for _ in 0..7 {
        env.create(encounter("p1")).await;
    }
    // The first notification hangs; the rest pile up behind it.
    let first = hooks
        .wait("a", |r| r.iter().any(|n| n.kind() == "event-notification"))
        .await;
    let first_numbers = first.last().unwrap().event_numbers();
    assert!(!first_numbers.is_empty() && first_numbers.len() <= 3);
    assert_eq!(first_numbers[0], 1);
    // The first notification can leave before the manager numbered all seven.
    let mut info = env.runtime.status(&id).await.unwrap().unwrap();
    for _ in 0..2000 {
        if info.events_since_start >= 7 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        info = env.runtime.status(&id).await.unwrap().unwrap();
    }
    assert_eq!(info.events_since_start, 7);
    // Every event is in $events, numbered 1..=7.
    let events = env
        .runtime
        .events_bundle(&id, 1, u64::MAX, None)
        .await
        .unwrap()
        .unwrap();
    let status = &events["entry"][0]["resource"];
    assert_eq!(param(status, "type").unwrap()["valueCode"], "query-event");
    let numbers: Vec<String> = status["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .map(|p| p["part"][0]["valueString"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(numbers, ["1", "2", "3", "4", "5", "6", "7"]);
}

#[tokio::test]
async fn f26_max_count_groups_pending_events() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let mut subscription = backport_subscription(&hooks.url("a"), "p1", "id-only");
    subscription["channel"]["extension"] = json!([{
        "url": format!("{BACKPORT}backport-max-count"), "valuePositiveInt": 3}]);
    let id = env.create(subscription).await;
    env.wait_status(&id, "active").await;
    hooks.answer("a", Answer::Fail);
    for _ in 0..7 {
        env.create(encounter("p1")).await;
    }
    let _ = env.wait_status(&id, "error").await;
    hooks.answer("a", Answer::Ok);
    let mut again = env.read("Subscription", &id).await;
    again["status"] = json!("requested");
    env.update(again).await;
    let received = hooks
        .wait("a", |r| {
            r.iter()
                .filter(|n| n.kind() == "event-notification")
                .flat_map(|n| n.event_numbers())
                .max()
                == Some(7)
        })
        .await;
    // After recovery, the backlog goes out in batches of at most 3, in order.
    let delivered: Vec<Vec<u64>> = received
        .iter()
        .skip_while(|n| n.kind() != "handshake" || n.event_numbers().len() > 1)
        .filter(|n| n.kind() == "event-notification")
        .map(|n| n.event_numbers())
        .collect();
    let last_batches: Vec<&Vec<u64>> = delivered.iter().rev().take(3).collect();
    assert!(delivered.iter().all(|b| b.len() <= 3), "{delivered:?}");
    assert_eq!(last_batches[0].last(), Some(&7), "{delivered:?}");
}

#[tokio::test]
async fn g30_b9_repeated_failures_turn_error_and_the_client_reactivates() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let id = env
        .create(backport_subscription(&hooks.url("a"), "p1", "id-only"))
        .await;
    env.wait_status(&id, "active").await;
    hooks.answer("a", Answer::Fail);
    env.create(encounter("p1")).await;
    let failed = env.wait_status(&id, "error").await;
    assert!(failed["error"].as_str().unwrap().contains("500"));
    let attempts = hooks
        .on("a")
        .iter()
        .filter(|n| n.kind() == "event-notification")
        .count();
    assert_eq!(attempts, env.config.max_attempts as usize);
    // Still counted while in error; never reset to active by the server.
    env.create(encounter("p1")).await;
    let mut counted = 0;
    for _ in 0..500 {
        counted = env
            .runtime
            .status(&id)
            .await
            .unwrap()
            .unwrap()
            .events_since_start;
        if counted == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(counted, 2);
    assert_eq!(env.read("Subscription", &id).await["status"], "error");
    // The client re-activates: a new handshake, then the events it missed, in order.
    hooks.answer("a", Answer::Ok);
    let mut again = failed.clone();
    again["status"] = json!("requested");
    env.update(again).await;
    let active = env.wait_status(&id, "active").await;
    assert!(active.get("error").is_none());
    let received = hooks
        .wait("a", |r| {
            r.iter()
                .rev()
                .take_while(|n| n.kind() != "handshake")
                .count()
                >= 2
        })
        .await;
    let after: Vec<u64> = received
        .iter()
        .rev()
        .take_while(|n| n.kind() != "handshake")
        .flat_map(|n| n.event_numbers())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(after, vec![1, 2]);
}

#[tokio::test]
async fn m50_a_hanging_endpoint_does_not_delay_the_others() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let stuck = env
        .create(backport_subscription(&hooks.url("stuck"), "p1", "id-only"))
        .await;
    let healthy = env
        .create(backport_subscription(
            &hooks.url("healthy"),
            "p1",
            "id-only",
        ))
        .await;
    env.wait_status(&stuck, "active").await;
    env.wait_status(&healthy, "active").await;
    hooks.answer("stuck", Answer::Hang);
    for _ in 0..20 {
        env.create(encounter("p1")).await;
    }
    let received = hooks.wait_events("healthy", 20).await;
    let numbers: Vec<u64> = received.iter().flat_map(|n| n.event_numbers()).collect();
    assert_eq!(numbers, (1..=20).collect::<Vec<u64>>());
    // The hanging endpoint got its first notification and nothing after it.
    let stuck_notifications: Vec<Vec<u64>> = hooks
        .on("stuck")
        .iter()
        .filter(|n| n.kind() == "event-notification")
        .map(|n| n.event_numbers())
        .collect();
    assert_eq!(stuck_notifications, vec![vec![1]]);
    assert_eq!(
        env.runtime
            .status(&stuck)
            .await
            .unwrap()
            .unwrap()
            .events_since_start,
        20
    );
}

#[tokio::test]
async fn b10_delete_stops_deliveries_including_retries() {
    // Enough attempts that the subscription is still retrying when it is deleted.
    let env = Env::start_with(|config| config.max_attempts = 100_000).await;
    let hooks = Receiver::start().await;
    let doomed = env
        .create(backport_subscription(&hooks.url("doomed"), "p1", "id-only"))
        .await;
    env.wait_status(&doomed, "active").await;
    hooks.answer("doomed", Answer::Fail);
    env.create(encounter("p1")).await;
    hooks
        .wait("doomed", |r| {
            r.iter().any(|n| n.kind() == "event-notification")
        })
        .await;
    env.delete("Subscription", &doomed).await;
    // A subscription created after the delete proves the manager has handled the delete.
    let witness = env
        .create(backport_subscription(
            &hooks.url("witness"),
            "p1",
            "id-only",
        ))
        .await;
    env.wait_status(&witness, "active").await;
    env.create(encounter("p1")).await;
    hooks
        .wait("witness", |r| {
            r.iter().any(|n| n.kind() == "event-notification")
        })
        .await;
    let count_after_delete = hooks.on("doomed").len();
    for _ in 0..3 {
        env.create(encounter("p1")).await;
    }
    hooks.wait_events("witness", 4).await;
    assert_eq!(hooks.on("doomed").len(), count_after_delete);
    assert!(env.runtime.status(&doomed).await.unwrap().is_none());
}

#[tokio::test]
async fn f25_restart_resumes_with_gap_free_stable_numbers() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let id = env
        .create(backport_subscription(&hooks.url("a"), "p1", "id-only"))
        .await;
    env.wait_status(&id, "active").await;
    for _ in 0..3 {
        env.create(encounter("p1")).await;
    }
    hooks.wait_events("a", 3).await;
    let before = env
        .runtime
        .events_bundle(&id, 1, 3, None)
        .await
        .unwrap()
        .unwrap();
    env.runtime.shutdown().await;
    // Written while nothing delivers.
    for _ in 0..4 {
        env.create(encounter("p1")).await;
    }
    let restarted = Env::runtime(&env.fhir, &env.log, env.config.clone()).await;
    let received = hooks.wait_events("a", 7).await;
    let numbers: Vec<u64> = received.iter().flat_map(|n| n.event_numbers()).collect();
    assert_eq!(numbers, (1..=7).collect::<Vec<u64>>());
    // The same numbers name the same events after the restart.
    let after = restarted
        .events_bundle(&id, 1, 3, None)
        .await
        .unwrap()
        .unwrap();
    let ids = |bundle: &Value| -> Vec<String> {
        bundle["entry"][0]["resource"]["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "notification-event")
            .map(|p| {
                p["extension"][0]["valueString"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(ids(&before).len(), 3);
    assert_eq!(ids(&before), ids(&after));
    restarted.shutdown().await;
}

#[tokio::test]
async fn k41_classic_rest_hook_posts_an_empty_body_or_puts_the_resource() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let classic = |endpoint: String, payload: Option<&str>| {
        let mut channel = json!({"type": "rest-hook", "endpoint": endpoint,
                                 "header": ["Authorization: Bearer abc"]});
        if let Some(payload) = payload {
            channel["payload"] = json!(payload);
        }
        json!({"resourceType": "Subscription", "status": "requested", "reason": "t",
               "criteria": "Observation?code=http://loinc.org|8480-6", "channel": channel})
    };
    let empty = env.create(classic(hooks.url("empty"), None)).await;
    let full = env
        .create(classic(hooks.url("full"), Some("application/fhir+json")))
        .await;
    env.wait_status(&empty, "active").await;
    env.wait_status(&full, "active").await;
    let observation = |code: &str| {
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": code}]}})
    };
    env.create(observation("9279-1")).await;
    let id = env.create(observation("8480-6")).await;
    let posted = hooks.wait("empty", |r| !r.is_empty()).await;
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].method, "POST");
    assert!(posted[0].body.is_empty());
    assert_eq!(posted[0].headers["authorization"], "Bearer abc");
    // With a payload: the resource as an update of [endpoint]/[type]/[id], stored meta intact.
    let put = hooks.wait("full", |r| !r.is_empty()).await;
    assert_eq!(put.len(), 1);
    assert_eq!(put[0].method, "PUT");
    assert_eq!(put[0].path, format!("/full/Observation/{id}"));
    assert_eq!(put[0].headers["content-type"], "application/fhir+json");
    assert_eq!(put[0].headers["authorization"], "Bearer abc");
    let stored = env.read("Observation", &id).await;
    assert_eq!(put[0].json(), stored);
    assert_eq!(put[0].json()["meta"]["versionId"], "1");
}

#[tokio::test]
async fn k42_b5_what_cannot_be_honoured_is_refused_at_create() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let chained = json!({"resourceType": "Subscription", "status": "requested", "reason": "t",
        "criteria": "Observation?subject:Patient.name=x",
        "channel": {"type": "rest-hook", "endpoint": hooks.url("a")}});
    let error = env.try_create(chained).await.unwrap_err();
    assert_eq!(error.status, 422);
    let mut unknown_topic = backport_subscription(&hooks.url("a"), "p1", "id-only");
    unknown_topic["criteria"] = json!("http://example.org/no-such-topic");
    let error = env.try_create(unknown_topic).await.unwrap_err();
    assert_eq!(error.status, 422);
    assert!(
        error
            .issues
            .iter()
            .any(|i| i.message.contains("no-such-topic")),
        "{error}"
    );
    assert!(hooks.on("a").is_empty());
}

#[tokio::test]
async fn g28_heartbeat_when_idle() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let mut subscription = backport_subscription(&hooks.url("a"), "p1", "id-only");
    subscription["channel"]["extension"] = json!([{
        "url": format!("{BACKPORT}backport-heartbeat-period"), "valueUnsignedInt": 1}]);
    let id = env.create(subscription).await;
    env.wait_status(&id, "active").await;
    let received = hooks
        .wait("a", |r| r.iter().any(|n| n.kind() == "heartbeat"))
        .await;
    let heartbeat = received.iter().find(|n| n.kind() == "heartbeat").unwrap();
    assert!(heartbeat.event_numbers().is_empty());
    assert_eq!(heartbeat.headers["x-test"], "yes");
}

#[tokio::test]
async fn h34_resend_delivers_a_range_again() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let id = env
        .create(backport_subscription(&hooks.url("a"), "p1", "id-only"))
        .await;
    env.wait_status(&id, "active").await;
    for _ in 0..3 {
        env.create(encounter("p1")).await;
    }
    hooks.wait_events("a", 3).await;
    assert!(env.runtime.resend(&id, 2).await.unwrap());
    let received = hooks.wait_events("a", 5).await;
    let numbers: Vec<u64> = received.iter().flat_map(|n| n.event_numbers()).collect();
    assert_eq!(numbers, vec![1, 2, 3, 2, 3]);
    assert!(!env.runtime.resend("unknown", 1).await.unwrap());
}

#[tokio::test]
async fn m52_notifications_carry_the_hmac_signature_of_their_body() {
    use flare_subscriptions::delivery::outbound::{Secret, verify_hub_signature};
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let mut subscription = backport_subscription(&hooks.url("a"), "p1", "id-only");
    subscription["channel"]["extension"] = json!([{
        "url": flare_subscriptions::spec::EXT_HMAC_SECRET, "valueString": "s3cret"}]);
    let id = env.create(subscription).await;
    env.wait_status(&id, "active").await;
    env.create(encounter("p1")).await;
    let received = hooks
        .wait("a", |r| r.iter().any(|n| n.kind() == "event-notification"))
        .await;
    for request in &received {
        let signature = &request.headers["x-hub-signature"];
        assert!(verify_hub_signature(
            &Secret::from("s3cret"),
            &request.body,
            signature
        ));
        assert!(!verify_hub_signature(
            &Secret::from("other"),
            &request.body,
            signature
        ));
    }
}
