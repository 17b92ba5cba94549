//! The websocket channel end to end: `$get-ws-binding-token`, then real WebSocket clients on
//! the advertised URL in each dialect.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async, tungstenite::Message};

use super::{ADMISSION, BACKPORT, Server, event_numbers, param};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Guards against a hang only; never reached when the server behaves.
const PATIENCE: Duration = Duration::from_secs(20);

impl Server {
    async fn create_ws_subscription(&self, patient: &str, extra: &[Value]) -> String {
        let mut subscription = json!({
            "resourceType": "Subscription", "status": "requested", "reason": "test",
            "criteria": ADMISSION,
            "_criteria": {"extension": [{"url": format!("{BACKPORT}backport-filter-criteria"),
                "valueString": format!("patient=Patient/{patient}")}]},
            "channel": {"type": "websocket",
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"),
                    "valueCode": "full-resource"}]}}
        });
        if !extra.is_empty() {
            subscription["channel"]["extension"] = Value::Array(extra.to_vec());
        }
        let (status, created) = self.post("Subscription", &subscription).await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        for _ in 0..2000 {
            let (_, current) = self.get(&format!("Subscription/{id}")).await;
            if current["status"] == "active" {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("websocket Subscription/{id} never became active");
    }

    /// `(token, websocket-url)` for the given subscriptions (type level with `id`).
    async fn ws_token(&self, ids: &[&str]) -> (String, String) {
        let query: Vec<String> = ids.iter().map(|id| format!("id={id}")).collect();
        let (status, parameters) = self
            .get(&format!(
                "Subscription/$get-ws-binding-token?{}",
                query.join("&")
            ))
            .await;
        assert_eq!(status, 200, "{parameters}");
        (
            param(&parameters, "token").unwrap()["valueString"]
                .as_str()
                .unwrap()
                .to_owned(),
            param(&parameters, "websocket-url").unwrap()["valueUrl"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    }
}

async fn connect(url: &str) -> Client {
    connect_async(url).await.unwrap().0
}

async fn send(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
}

async fn next_text(client: &mut Client) -> String {
    loop {
        let message = tokio::time::timeout(PATIENCE, client.next())
            .await
            .expect("no frame from the server")
            .expect("connection closed")
            .unwrap();
        if let Message::Text(text) = message {
            return text.to_string();
        }
    }
}

async fn next_json(client: &mut Client) -> Value {
    serde_json::from_str(&next_text(client).await).unwrap()
}

fn notification_type(bundle: &Value) -> String {
    param(&bundle["entry"][0]["resource"], "type").unwrap()["valueCode"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn subscription_of(bundle: &Value) -> String {
    param(&bundle["entry"][0]["resource"], "subscription").unwrap()["valueReference"]["reference"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned()
}

/// The next event notification, skipping heartbeats.
async fn next_event(client: &mut Client) -> Value {
    loop {
        let bundle = next_json(client).await;
        if notification_type(&bundle) == "event-notification" {
            return bundle;
        }
        assert_eq!(notification_type(&bundle), "heartbeat", "{bundle}");
    }
}

#[tokio::test]
async fn binding_token_has_the_ig_shape_and_refuses_other_channels() {
    let server = Server::start().await;
    let first = server.create_ws_subscription("p1", &[]).await;
    let second = server.create_ws_subscription("p2", &[]).await;

    let (status, parameters) = server
        .get(&format!("Subscription/{first}/$get-ws-binding-token"))
        .await;
    assert_eq!(status, 200, "{parameters}");
    assert_eq!(parameters["resourceType"], "Parameters");
    let token = param(&parameters, "token").unwrap()["valueString"]
        .as_str()
        .unwrap();
    assert!(token.len() >= 32, "token too short to be unguessable");
    assert!(param(&parameters, "expiration").unwrap()["valueDateTime"].is_string());
    assert_eq!(
        param(&parameters, "subscription").unwrap()["valueString"],
        format!("Subscription/{first}")
    );
    let url = param(&parameters, "websocket-url").unwrap()["valueUrl"]
        .as_str()
        .unwrap();
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/fhir/Subscription/$websocket"), "{url}");

    // Type level: several subscriptions, a fresh token each time.
    let (status, both) = server
        .get(&format!(
            "Subscription/$get-ws-binding-token?id={first}&id={second}"
        ))
        .await;
    assert_eq!(status, 200, "{both}");
    let named: Vec<&Value> = both["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "subscription")
        .collect();
    assert_eq!(named.len(), 2);
    assert_ne!(param(&both, "token").unwrap()["valueString"], token);

    let rest_hook = server.create_subscription("p3").await;
    let (status, _) = server
        .get(&format!("Subscription/{rest_hook}/$get-ws-binding-token"))
        .await;
    assert_eq!(status, 400);
    let (status, _) = server
        .get("Subscription/missing/$get-ws-binding-token")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn backport_text_dialect_gets_handshake_then_full_resource_events() {
    let server = Server::start().await;
    let id = server.create_ws_subscription("p1", &[]).await;
    let (token, url) = server.ws_token(&[&id]).await;
    let mut client = connect(&url).await;
    send(&mut client, &format!("bind-with-token {token}")).await;
    let handshake = next_json(&mut client).await;
    assert_eq!(notification_type(&handshake), "handshake");
    assert_eq!(subscription_of(&handshake), id);

    server.admit("p2").await; // another patient: not this subscription's
    server.admit("p1").await;
    let event = next_event(&mut client).await;
    assert_eq!(event_numbers(&event), vec!["1"]);
    assert_eq!(event["entry"][1]["resource"]["resourceType"], "Encounter");
    assert_eq!(
        event["entry"][1]["resource"]["subject"]["reference"],
        "Patient/p1"
    );
}

#[tokio::test]
async fn medplum_json_dialect_binds_and_answers_ping() {
    let server = Server::start().await;
    let id = server.create_ws_subscription("p1", &[]).await;
    let (token, url) = server.ws_token(&[&id]).await;
    let mut client = connect(&url).await;
    send(
        &mut client,
        &json!({"type": "bind-with-token", "payload": {"token": token}}).to_string(),
    )
    .await;
    assert_eq!(
        notification_type(&next_json(&mut client).await),
        "handshake"
    );
    send(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "pong");
    server.admit("p1").await;
    assert_eq!(event_numbers(&next_event(&mut client).await), vec!["1"]);
}

#[tokio::test]
async fn token_in_the_url_binds_and_an_unknown_one_is_refused() {
    let server = Server::start().await;
    let id = server.create_ws_subscription("p1", &[]).await;
    let (token, url) = server.ws_token(&[&id]).await;
    let mut client = connect(&format!("{url}?token={token}")).await;
    assert_eq!(
        notification_type(&next_json(&mut client).await),
        "handshake"
    );
    server.admit("p1").await;
    assert_eq!(event_numbers(&next_event(&mut client).await), vec!["1"]);

    let refused = connect_async(format!("{url}?token=not-a-token")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("expected a 401 refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn r4_classic_bind_answers_bound_and_pings() {
    let server = Server::start().await;
    let id = server.create_ws_subscription("p1", &[]).await;
    let (_, url) = server.ws_token(&[&id]).await;
    let mut client = connect(&url).await;
    send(&mut client, &format!("bind {id}")).await;
    assert_eq!(next_text(&mut client).await, format!("bound {id}"));
    server.admit("p1").await;
    assert_eq!(next_text(&mut client).await, format!("ping {id}"));
    send(&mut client, "hello").await;
    assert!(
        next_text(&mut client)
            .await
            .starts_with("Unexpected client message")
    );
}

#[tokio::test]
async fn one_connection_carries_several_subscriptions_each_in_order() {
    let server = Server::start().await;
    let first = server.create_ws_subscription("p1", &[]).await;
    let second = server.create_ws_subscription("p2", &[]).await;
    let (token, url) = server.ws_token(&[&first, &second]).await;
    let mut client = connect(&url).await;
    send(&mut client, &format!("bind-with-token {token}")).await;
    let mut handshakes = vec![
        subscription_of(&next_json(&mut client).await),
        subscription_of(&next_json(&mut client).await),
    ];
    handshakes.sort();
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    assert_eq!(handshakes, expected);

    for _ in 0..3 {
        server.admit("p1").await;
        server.admit("p2").await;
    }
    let mut seen: std::collections::HashMap<String, Vec<String>> = Default::default();
    for _ in 0..6 {
        let event = next_event(&mut client).await;
        seen.entry(subscription_of(&event))
            .or_default()
            .extend(event_numbers(&event));
    }
    assert_eq!(seen[&first], vec!["1", "2", "3"]);
    assert_eq!(seen[&second], vec!["1", "2", "3"]);
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let server = Server::start_with(|config| config.ws_token_ttl_ms = 1).await;
    let id = server.create_ws_subscription("p1", &[]).await;
    let (token, url) = server.ws_token(&[&id]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut client = connect(&url).await;
    send(&mut client, &format!("bind-with-token {token}")).await;
    let answer = next_json(&mut client).await;
    assert_eq!(answer["resourceType"], "OperationOutcome", "{answer}");
    let refused = connect_async(format!("{url}?token={token}")).await;
    assert!(
        refused.is_err(),
        "an expired token in the URL must be refused"
    );
}

#[tokio::test]
async fn resume_after_a_dropped_connection_has_no_gap_and_no_duplicate() {
    let server = Server::start().await;
    let id = server.create_ws_subscription("p1", &[]).await;
    let (token, url) = server.ws_token(&[&id]).await;
    let mut client = connect(&url).await;
    send(&mut client, &format!("bind-with-token {token}")).await;
    next_json(&mut client).await; // handshake
    server.admit("p1").await;
    server.admit("p1").await;
    assert_eq!(event_numbers(&next_event(&mut client).await), vec!["1"]);
    assert_eq!(event_numbers(&next_event(&mut client).await), vec!["2"]);
    drop(client);

    // Missed while disconnected.
    for _ in 0..3 {
        server.admit("p1").await;
    }
    let (token, url) = server.ws_token(&[&id]).await;
    let mut client = connect(&url).await;
    send(&mut client, &format!("bind-with-token {token} 2")).await;
    next_json(&mut client).await; // handshake
    server.admit("p1").await; // after the re-bind
    let mut numbers = Vec::new();
    for _ in 0..4 {
        numbers.extend(event_numbers(&next_event(&mut client).await));
    }
    assert_eq!(numbers, vec!["3", "4", "5", "6"]);

    // The URL form of resume replays from the given number.
    let (token, url) = server.ws_token(&[&id]).await;
    let mut replay = connect(&format!("{url}?token={token}&lastEventNumber=4")).await;
    next_json(&mut replay).await; // handshake
    assert_eq!(event_numbers(&next_event(&mut replay).await), vec!["5"]);
    assert_eq!(event_numbers(&next_event(&mut replay).await), vec!["6"]);
}

#[tokio::test]
async fn rebind_after_expiry_on_the_same_connection_continues_without_gap() {
    let server = Server::start_with(|config| config.ws_token_ttl_ms = 1500).await;
    let id = server.create_ws_subscription("p1", &[]).await;
    let (token, url) = server.ws_token(&[&id]).await;
    let mut client = connect(&url).await;
    send(&mut client, &format!("bind-with-token {token}")).await;
    next_json(&mut client).await; // handshake
    server.admit("p1").await;
    assert_eq!(event_numbers(&next_event(&mut client).await), vec!["1"]);

    tokio::time::sleep(Duration::from_millis(1600)).await; // the binding lapses
    server.admit("p1").await;
    server.admit("p1").await;
    let (fresh, _) = server.ws_token(&[&id]).await;
    send(&mut client, &format!("bind-with-token {fresh}")).await;
    assert_eq!(
        notification_type(&next_json(&mut client).await),
        "handshake"
    );
    assert_eq!(event_numbers(&next_event(&mut client).await), vec!["2"]);
    assert_eq!(event_numbers(&next_event(&mut client).await), vec!["3"]);
}

#[tokio::test]
async fn idle_bindings_get_heartbeats() {
    let server = Server::start().await;
    let heartbeat = json!({"url": format!("{BACKPORT}backport-heartbeat-period"),
        "valueUnsignedInt": 1});
    let id = server.create_ws_subscription("p1", &[heartbeat]).await;
    let (token, url) = server.ws_token(&[&id]).await;
    let mut client = connect(&url).await;
    send(&mut client, &format!("bind-with-token {token}")).await;
    assert_eq!(
        notification_type(&next_json(&mut client).await),
        "handshake"
    );
    let beat = next_json(&mut client).await;
    assert_eq!(notification_type(&beat), "heartbeat");
    assert_eq!(subscription_of(&beat), id);
}

#[tokio::test]
async fn a_backlog_larger_than_the_connection_queue_arrives_whole_and_in_order() {
    let server = Server::start().await;
    let id = server.create_ws_subscription("p1", &[]).await;
    let (token, url) = server.ws_token(&[&id]).await;
    let mut client = connect(&url).await;
    send(&mut client, &format!("bind-with-token {token}")).await;
    next_json(&mut client).await; // handshake
    // More than the per-connection queue holds, while the client reads nothing.
    let total = 100;
    for _ in 0..total {
        server.admit("p1").await;
    }
    let mut numbers = Vec::new();
    while numbers.len() < total {
        numbers.extend(event_numbers(&next_event(&mut client).await));
    }
    let expected: Vec<String> = (1..=total).map(|n| n.to_string()).collect();
    assert_eq!(numbers, expected);

    // `$status` reflects what the connection was sent.
    let (status, bundle) = server.get(&format!("Subscription/{id}/$status")).await;
    assert_eq!(status, 200, "{bundle}");
    let parameters = &bundle["entry"][0]["resource"];
    assert_eq!(
        param(parameters, "events-since-subscription-start").unwrap()["valueString"],
        total.to_string()
    );
    assert_eq!(param(parameters, "status").unwrap()["valueCode"], "active");
}

#[tokio::test]
async fn turning_a_subscription_off_stops_its_binding() {
    let server = Server::start().await;
    let id = server.create_ws_subscription("p1", &[]).await;
    let other = server.create_ws_subscription("p2", &[]).await;
    let (token, url) = server.ws_token(&[&id, &other]).await;
    let mut client = connect(&url).await;
    send(&mut client, &format!("bind-with-token {token}")).await;
    next_json(&mut client).await;
    next_json(&mut client).await;

    let (_, mut current) = server.get(&format!("Subscription/{id}")).await;
    current["status"] = json!("off");
    let response = server
        .client
        .put(format!("{}/Subscription/{id}", server.base))
        .header("content-type", "application/fhir+json")
        .body(current.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Wait until the runtime has seen `off`.
    for _ in 0..2000 {
        let (_, status) = server.get(&format!("Subscription/{id}/$status")).await;
        if param(&status["entry"][0]["resource"], "status").unwrap()["valueCode"] == "off" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.admit("p1").await;
    server.admit("p2").await;
    // Only the other subscription's event arrives.
    let event = next_event(&mut client).await;
    assert_eq!(subscription_of(&event), other);
    send(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut client).await["type"], "pong");
    // And no new token binds it.
    let (status, outcome) = server
        .get(&format!("Subscription/{id}/$get-ws-binding-token"))
        .await;
    assert_eq!(status, 400, "{outcome}");
}
