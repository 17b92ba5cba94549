//! The legacy STU1/STU2 webhook channel through the driver, against a real HTTP callback
//! receiver on 127.0.0.1:0 (calls go through flare-outbound's endpoint policy).
#![cfg(feature = "webhook")]

use std::time::Duration;

use flare_fhircast::{HubConfig, HubHandle};
use flare_outbound::{Secret, verify_hub_signature};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

#[derive(Debug)]
struct Request {
    method: String,
    query: Vec<(String, String)>,
    signature: Option<String>,
    body: Vec<u8>,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A callback that answers intent verifications with the challenge (or `wrong`) and
/// notifications with 200, reporting every request. One request per connection.
async fn receiver(echo_challenge: bool) -> (String, mpsc::UnboundedReceiver<Request>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (sender, requests) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let target = parts.next().unwrap_or_default().to_string();
                let (mut length, mut signature) = (0usize, None);
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).await.unwrap();
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    let (name, value) = header.split_once(':').unwrap();
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap(),
                        "x-hub-signature" => signature = Some(value.trim().to_string()),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await.unwrap();
                let query: Vec<(String, String)> = url::Url::parse(&format!("http://x{target}"))
                    .unwrap()
                    .query_pairs()
                    .into_owned()
                    .collect();
                let challenge = query
                    .iter()
                    .find(|(key, _)| key == "hub.challenge")
                    .map(|(_, value)| value.clone())
                    .unwrap_or_default();
                let answer = match (method.as_str(), echo_challenge) {
                    ("GET", true) => challenge,
                    ("GET", false) => "wrong".to_string(),
                    _ => String::new(),
                };
                let _ = sender.send(Request {
                    method,
                    query,
                    signature,
                    body,
                });
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = write.write_all(response.as_bytes()).await;
            });
        }
    });
    (format!("http://{address}/cb?client=viewer-1"), requests)
}

async fn next(requests: &mut mpsc::UnboundedReceiver<Request>) -> Request {
    tokio::time::timeout(Duration::from_secs(15), requests.recv())
        .await
        .expect("the callback was not called")
        .unwrap()
}

fn hub(max_lease_seconds: u64) -> HubHandle {
    HubHandle::start(HubConfig {
        webhook: true,
        webhook_allow: vec!["127.0.0.0/8".into()],
        max_lease_seconds,
        ..HubConfig::default()
    })
}

fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn patient_open(id: &str) -> Vec<u8> {
    json!({"timestamp": "2025-01-01T10:00:00Z", "id": id, "event": {"hub.topic": "t", "hub.event": "Patient-open",
        "context": [{"key": "patient", "resource": {"resourceType": "Patient", "id": "p1"}}]}})
    .to_string()
    .into_bytes()
}

/// Publishes until the verified subscription receives one (verification runs in the
/// background after the 202).
async fn publish_until_delivered(
    hub: &HubHandle,
    requests: &mut mpsc::UnboundedReceiver<Request>,
) -> Request {
    for attempt in 0..100 {
        assert_eq!(
            hub.publish(None, &patient_open(&format!("e{attempt}")))
                .await
                .status,
            202
        );
        if let Ok(Some(request)) =
            tokio::time::timeout(Duration::from_millis(50), requests.recv()).await
        {
            return request;
        }
    }
    panic!("no notification was POSTed");
}

#[tokio::test]
async fn p70_intent_verification_preserves_the_callback_query_then_events_flow() {
    let hub = hub(86_400);
    assert_eq!(hub.discovery()["webhookSupport"], true);
    let (callback, mut requests) = receiver(true).await;
    let reply = hub.subscribe(
        format!(
            "hub.channel.type=webhook&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&hub.lease_seconds=600&hub.callback={}&hub.secret=shhh",
            form_encode(&callback)
        )
        .as_bytes(),
        "ws://unused",
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let verification = next(&mut requests).await;
    assert_eq!(verification.method, "GET");
    assert_eq!(verification.param("client"), Some("viewer-1"));
    assert_eq!(verification.param("hub.mode"), Some("subscribe"));
    assert_eq!(verification.param("hub.topic"), Some("t"));
    assert_eq!(verification.param("hub.events"), Some("Patient-open"));
    assert_eq!(verification.param("hub.lease_seconds"), Some("600"));
    assert!(
        verification
            .param("hub.challenge")
            .is_some_and(|c| c.len() >= 32)
    );
    let post = publish_until_delivered(&hub, &mut requests).await;
    assert_eq!(post.method, "POST");
    let event: Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(event["event"]["hub.event"], "Patient-open");
}

#[tokio::test]
async fn p71_notifications_are_signed_and_lease_expiry_sends_a_denial() {
    let hub = hub(1);
    let (callback, mut requests) = receiver(true).await;
    // STU1 style: no hub.channel.type.
    let form = format!(
        "hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&hub.callback={}&hub.secret=shhh-this-is-a-secret",
        form_encode(&callback)
    );
    assert_eq!(
        hub.subscribe(form.as_bytes(), "ws://unused").await.status,
        202
    );
    assert_eq!(next(&mut requests).await.method, "GET");
    let post = publish_until_delivered(&hub, &mut requests).await;
    let signature = post.signature.expect("X-Hub-Signature");
    assert!(signature.starts_with("sha256="));
    assert!(verify_hub_signature(
        &Secret::from("shhh-this-is-a-secret"),
        &post.body,
        &signature
    ));
    loop {
        let request = next(&mut requests).await;
        if request.method == "GET" {
            assert_eq!(request.param("hub.mode"), Some("denied"));
            assert_eq!(request.param("hub.topic"), Some("t"));
            assert!(request.param("hub.reason").is_some());
            break;
        }
    }
}

#[tokio::test]
async fn p70_webhook_needs_a_secret_under_200_bytes() {
    let hub = hub(86_400);
    let base = "hub.channel.type=webhook&hub.mode=subscribe&hub.topic=t&hub.events=Patient-open&hub.callback=http%3A%2F%2F127.0.0.1%3A9%2Fcb";
    assert_eq!(
        hub.subscribe(base.as_bytes(), "ws://unused").await.status,
        400
    );
    let long = format!("{base}&hub.secret={}", "s".repeat(200));
    assert_eq!(
        hub.subscribe(long.as_bytes(), "ws://unused").await.status,
        400
    );
}
