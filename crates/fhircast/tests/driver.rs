//! The tokio driver with paused time: frames reach the socket channels in order, and the
//! timer expires leases without anyone calling in.

use flare_fhircast::{HubConfig, HubHandle, SocketCommand};
use serde_json::{Value, json};

fn endpoint_of(reply_body: &str) -> String {
    let body: Value = serde_json::from_str(reply_body).unwrap();
    body["hub.channel.endpoint"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

async fn next_text(session: &mut flare_fhircast::SocketSession) -> Value {
    match session.next().await {
        Some(SocketCommand::Text(text)) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn confirmation_delivery_and_lease_expiry_on_paused_time() {
    let hub = HubHandle::start(HubConfig::default());
    assert_eq!(hub.discovery()["websocketSupport"], true);
    let reply = hub.subscribe(
        b"hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&hub.lease_seconds=60",
        "ws://hub.test/fhircast/ws",
    ).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let endpoint = endpoint_of(&reply.body);
    let mut session = hub.connect(&endpoint).unwrap();
    assert_eq!(next_text(&mut session).await["hub.mode"], "subscribe");

    let event = json!({"timestamp": "2025-01-01T10:00:00Z", "id": "e1", "event": {"hub.topic": "t",
        "hub.event": "Patient-open", "context": [{"key": "patient", "resource": {"resourceType": "Patient", "id": "p1"}}]}});
    assert_eq!(
        hub.publish(None, event.to_string().as_bytes()).await.status,
        202
    );
    let delivered = next_text(&mut session).await;
    assert_eq!(delivered["id"], "e1");
    hub.message(session.connection, r#"{"id":"e1","status":200}"#);

    // Nobody calls the hub: the timer task alone ends the subscription after 60 s.
    tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    assert_eq!(next_text(&mut session).await["hub.mode"], "denied");
    assert!(matches!(
        session.next().await,
        Some(SocketCommand::Close { code: 1000, .. })
    ));
    assert!(!hub.endpoint_is_live(&endpoint));
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_reported_and_closed_when_its_queue_is_full() {
    let hub = HubHandle::start(HubConfig {
        max_queued_frames: 4,
        ..HubConfig::default()
    });
    let subscribe = |events: &str, name: &str| {
        format!(
            "hub.channel.type=websocket&hub.mode=subscribe&hub.topic=t&hub.events={events}&subscriber.name={name}"
        )
    };
    let base = "ws://hub.test/fhircast/ws";
    let stalled_endpoint = endpoint_of(
        &hub.subscribe(subscribe("Patient-open", "Stalled").as_bytes(), base)
            .await
            .body,
    );
    let watcher_endpoint = endpoint_of(
        &hub.subscribe(subscribe("SyncError", "Watcher").as_bytes(), base)
            .await
            .body,
    );
    // The stalled socket's confirmation takes one place in its queue; nobody reads it.
    let mut stalled = hub.connect(&stalled_endpoint).unwrap();
    let mut watcher = hub.connect(&watcher_endpoint).unwrap();
    assert_eq!(next_text(&mut watcher).await["hub.mode"], "subscribe");

    for n in 0..4 {
        let event = json!({"timestamp": "2025-01-01T10:00:00Z", "id": format!("e{n}"), "event": {"hub.topic": "t",
            "hub.event": "Patient-open", "context": [{"key": "patient", "resource": {"resourceType": "Patient", "id": "p1"}}]}});
        assert_eq!(
            hub.publish(None, event.to_string().as_bytes()).await.status,
            202
        );
    }
    // Confirmation + 3 events fill the queue of 4; the fourth event overflows it.
    let report = next_text(&mut watcher).await;
    assert_eq!(report["event"]["hub.event"], "SyncError");
    let codings = report["event"]["context"][0]["resource"]["issue"][0]["details"]["coding"]
        .as_array()
        .unwrap();
    assert_eq!(codings[2]["code"], "Stalled");
    assert!(!hub.endpoint_is_live(&stalled_endpoint));
    // The close jumps the queue: the socket does not have to drain first.
    assert!(matches!(
        stalled.next().await,
        Some(SocketCommand::Close { code: 1000, .. })
    ));
}
