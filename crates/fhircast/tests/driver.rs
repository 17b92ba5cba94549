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
    match session.commands.recv().await {
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
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    let endpoint = endpoint_of(&reply.body);
    let mut session = hub.connect(&endpoint).unwrap();
    assert_eq!(next_text(&mut session).await["hub.mode"], "subscribe");

    let event = json!({"timestamp": "2025-01-01T10:00:00Z", "id": "e1", "event": {"hub.topic": "t",
        "hub.event": "Patient-open", "context": [{"key": "patient", "resource": {"resourceType": "Patient", "id": "p1"}}]}});
    assert_eq!(hub.publish(None, event.to_string().as_bytes()).status, 202);
    let delivered = next_text(&mut session).await;
    assert_eq!(delivered["id"], "e1");
    hub.message(session.connection, r#"{"id":"e1","status":200}"#);

    // Nobody calls the hub: the timer task alone ends the subscription after 60 s.
    tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    assert_eq!(next_text(&mut session).await["hub.mode"], "denied");
    assert!(matches!(
        session.commands.recv().await,
        Some(SocketCommand::Close { code: 1000, .. })
    ));
    assert!(!hub.endpoint_is_live(&endpoint));
}
