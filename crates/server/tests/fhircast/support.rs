//! A hub on 127.0.0.1:0, a WebSocket subscriber, and FHIRcast event builders.

use std::time::Duration;

use flare_fhircast::{HubConfig, HubHandle, Profile};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::CloseFrame, protocol::frame::coding::CloseCode},
};

/// Guards against a hung test only; no test asserts on elapsed time.
const RECEIVE_GUARD: Duration = Duration::from_secs(15);

pub struct Hub {
    pub address: std::net::SocketAddr,
    /// `http://{address}{path}`: the hub.url.
    pub url: String,
    pub client: reqwest::Client,
}

pub fn fast_acks(profile: Profile) -> HubConfig {
    HubConfig {
        profile,
        ack_timeout_ms: 300,
        ..HubConfig::default()
    }
}

impl Hub {
    pub async fn start(config: HubConfig) -> Self {
        Self::serve(HubHandle::start(HubConfig {
            enabled: true,
            ..config
        }))
        .await
    }

    /// The routes of an already started hub on 127.0.0.1:0.
    pub async fn serve(handle: HubHandle) -> Self {
        let path = handle.config().path;
        let app = flare_server::fhircast_routes(handle);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            address,
            url: format!("http://{address}{path}"),
            client: reqwest::Client::new(),
        }
    }

    pub async fn form(&self, form: &str) -> reqwest::Response {
        self.client
            .post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Subscribes and returns the endpoint URL.
    pub async fn subscribe(&self, topic: &str, events: &str, name: &str) -> String {
        let response = self
            .form(&format!(
                "hub.channel.type=websocket&hub.mode=subscribe&hub.topic={topic}&hub.events={events}&subscriber.name={name}"
            ))
            .await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        body["hub.channel.endpoint"].as_str().unwrap().to_string()
    }

    /// Subscribes, connects and reads the confirmation.
    pub async fn subscriber(&self, topic: &str, events: &str, name: &str) -> Socket {
        let endpoint = self.subscribe(topic, events, name).await;
        let mut socket = Socket::connect(&endpoint).await;
        let confirmation = socket.next_json().await;
        assert_eq!(confirmation["hub.mode"], "subscribe");
        socket
    }

    pub async fn unsubscribe(&self, topic: &str, endpoint: &str) {
        let response = self
            .form(&format!(
                "hub.channel.type=websocket&hub.mode=unsubscribe&hub.topic={topic}&hub.channel.endpoint={endpoint}"
            ))
            .await;
        assert_eq!(response.status(), 202);
    }

    pub async fn publish(&self, event: &Value) -> reqwest::Response {
        self.client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(event.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    /// Posts a SyncError with `id`: SyncError subscribers receive it after anything the hub
    /// queued for them before, which makes "nothing else arrived" checkable.
    pub async fn sync_error_marker(&self, topic: &str, id: &str) {
        let event = json!({"timestamp": "2025-01-01T10:00:00Z", "id": id, "event": {"hub.topic": topic, "hub.event": "SyncError",
            "context": [{"key": "operationoutcome", "resource": {"resourceType": "OperationOutcome",
                "issue": [{"severity": "warning", "code": "processing", "diagnostics": "marker"}]}}]}});
        assert_eq!(self.publish(&event).await.status(), 202);
    }
}

pub struct Socket {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Socket {
    pub async fn connect(endpoint: &str) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(endpoint).await.unwrap();
        Self { stream }
    }

    /// The next text frame as JSON (pings and pongs skipped).
    pub async fn next_json(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(RECEIVE_GUARD, self.stream.next())
                .await
                .expect("no frame arrived");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str()).unwrap();
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Whether the next thing on the socket is the hub closing it.
    pub async fn next_is_close(&mut self) -> bool {
        let frame = tokio::time::timeout(RECEIVE_GUARD, self.stream.next())
            .await
            .expect("the socket stayed open");
        matches!(frame, None | Some(Ok(Message::Close(_))) | Some(Err(_)))
    }

    pub async fn send(&mut self, value: Value) {
        self.stream
            .send(Message::Text(value.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn ack(&mut self, event: &Value, status: Value) {
        self.send(json!({"id": event["id"], "status": status}))
            .await;
    }

    pub async fn close(mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        };
        self.stream.send(Message::Close(Some(frame))).await.unwrap();
        // Wait for the hub's answer so the close is processed before the test goes on.
        while let Some(Ok(_)) = self.stream.next().await {}
    }

    /// The connection disappears without a close frame.
    pub fn drop_tcp(self) {
        drop(self.stream);
    }

    pub async fn expect_next_id(&mut self, id: &str) {
        let frame = self.next_json().await;
        assert_eq!(frame["id"], id, "unexpected frame {frame}");
    }
}

pub fn sync_error_codes(event: &Value) -> Vec<String> {
    assert_eq!(event["event"]["hub.event"], "SyncError", "{event}");
    event["event"]["context"][0]["resource"]["issue"][0]["details"]["coding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|coding| coding["code"].as_str().unwrap().to_string())
        .collect()
}

pub fn content_of(context: &Value) -> Value {
    let contents: Vec<&Value> = context["context"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["key"] == "content")
        .collect();
    assert_eq!(contents.len(), 1, "exactly one content key: {context}");
    contents[0].clone()
}

fn event(topic: &str, id: &str, name: &str, context: Value) -> Value {
    json!({"timestamp": "2025-01-01T10:00:00Z", "id": id,
        "event": {"hub.topic": topic, "hub.event": name, "context": context}})
}

pub fn patient_open(topic: &str, id: &str, patient: &str) -> Value {
    event(
        topic,
        id,
        "Patient-open",
        json!([{"key": "patient", "resource": {"resourceType": "Patient", "id": patient,
        "identifier": [{"system": "urn:oid:1.2.3", "value": "185444"}]}}]),
    )
}

pub fn patient_close(topic: &str, id: &str, patient: &str) -> Value {
    event(
        topic,
        id,
        "Patient-close",
        json!([{"key": "patient", "resource": {"resourceType": "Patient", "id": patient}}]),
    )
}

fn report_context(report: &str) -> Value {
    json!([
        {"key": "report", "resource": {"resourceType": "DiagnosticReport", "id": report, "status": "unknown"}},
        {"key": "patient", "resource": {"resourceType": "Patient", "id": "p1"}},
    ])
}

pub fn report_open(topic: &str, id: &str, report: &str) -> Value {
    event(topic, id, "DiagnosticReport-open", report_context(report))
}

pub fn report_close(topic: &str, id: &str, report: &str) -> Value {
    event(topic, id, "DiagnosticReport-close", report_context(report))
}

pub fn report_update(topic: &str, id: &str, report: &str, version: &str, entries: Value) -> Value {
    let mut update = event(
        topic,
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

pub fn report_select(topic: &str, id: &str, report: &str, selected: &[&str]) -> Value {
    let mut context = vec![
        json!({"key": "report", "reference": {"reference": format!("DiagnosticReport/{report}")}}),
    ];
    context.extend(
        selected
            .iter()
            .map(|reference| json!({"key": "select", "reference": {"reference": reference}})),
    );
    event(topic, id, "DiagnosticReport-select", Value::Array(context))
}

pub fn observation_put(id: &str, status: &str) -> Value {
    json!({"request": {"method": "PUT"}, "resource": {"resourceType": "Observation", "id": id, "status": status}})
}
