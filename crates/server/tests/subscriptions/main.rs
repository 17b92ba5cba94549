//! Black-box tests of the Subscription operations: a Flare server on `127.0.0.1:0` with the
//! delivery runtime, and a receiver that answers 200 to every notification.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::any};
use flare_events::Relay;
use flare_log::{Durability, EmbeddedLog, EmbeddedLogConfig, EventLog};
use flare_search::Registry;
use flare_server::{AppState, Metrics, ServerConfig, subscriptions_http};
use flare_service::{Fhir, FhirConfig};
use flare_store::{
    Store,
    sqlite::{SqliteConfig, SqliteStore},
};
use flare_subscriptions::{
    TopicRegistry,
    delivery::{
        DeliveryConfig, Dependencies, OutboundRequest, SubscriptionRuntime, Transport,
        TransportError,
    },
};
use serde_json::{Value, json};
use tokio::sync::watch;

mod websocket;

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
const ADMISSION: &str = "http://flare.dev/fhir/SubscriptionTopic/encounter-admission";

struct Server {
    base: String,
    hook: String,
    notifications: Arc<AtomicUsize>,
    client: reqwest::Client,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut DeliveryConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::r4());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteConfig::in_memory()).unwrap());
        let mut log_config = EmbeddedLogConfig::in_dir(dir.path().join("log"));
        log_config.durability = Durability::None;
        let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(log_config).await.unwrap());
        let fhir = Fhir::new(store.clone(), registry.clone(), FhirConfig::default());
        let relay = Relay::new(store, log.clone());
        let relay_stats = relay.stats();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(relay.run(stopped.clone()));

        let notifications = Arc::new(AtomicUsize::new(0));
        let counter = notifications.clone();
        let receiver = Router::new().route(
            "/{*path}",
            any(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    "ok"
                }
            }),
        );
        let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hook = format!("http://{}/hook", hook_listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(hook_listener, receiver).await });

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let base = format!("http://{address}/fhir");
        let mut config = DeliveryConfig {
            cursor_file: dir.path().join("subscriptions.sqlite"),
            topic_refresh_ms: 20,
            base_url: base.clone(),
            ..DeliveryConfig::default()
        };
        adjust(&mut config);
        let runtime = SubscriptionRuntime::start(
            Dependencies {
                fhir: fhir.clone(),
                log: log.clone(),
                topics: TopicRegistry::with_builtins(&registry),
                transport: Arc::new(LoopbackHttp(reqwest::Client::new())),
            },
            config,
        )
        .await
        .unwrap();
        let server = ServerConfig {
            listen: address.to_string(),
            ..ServerConfig::default()
        };
        let state = AppState {
            fhir,
            log,
            config: Arc::new(server),
            metrics: Arc::new(Metrics::default()),
            relay: relay_stats,
        };
        let app = flare_server::router(state).merge(subscriptions_http::routes(runtime));
        let mut shutdown = stopped;
        tokio::spawn(flare_server::serve_router(listener, app, async move {
            let _ = shutdown.changed().await;
        }));
        Self {
            base,
            hook,
            notifications,
            client: reqwest::Client::new(),
            _stop: stop,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}/{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/{path}", self.base))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create_subscription(&self, patient: &str) -> String {
        let subscription = json!({
            "resourceType": "Subscription", "status": "requested", "reason": "test",
            "criteria": ADMISSION,
            "_criteria": {"extension": [{"url": format!("{BACKPORT}backport-filter-criteria"),
                "valueString": format!("patient=Patient/{patient}")}]},
            "channel": {"type": "rest-hook", "endpoint": self.hook,
                "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"),
                    "valueCode": "id-only"}]}}
        });
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
        panic!("Subscription/{id} never became active");
    }

    async fn admit(&self, patient: &str) {
        let encounter = json!({"resourceType": "Encounter", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": format!("Patient/{patient}")}});
        let (status, body) = self.post("Encounter", &encounter).await;
        assert_eq!(status, 201, "{body}");
    }
}

fn param<'a>(parameters: &'a Value, name: &str) -> Option<&'a Value> {
    parameters["parameter"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

fn event_numbers(bundle: &Value) -> Vec<String> {
    bundle["entry"][0]["resource"]["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "notification-event")
        .map(|p| {
            p["part"][0]["valueString"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn h31_instance_status_is_a_searchset_with_the_active_status() {
    let server = Server::start().await;
    let id = server.create_subscription("p1").await;
    let (status, bundle) = server.get(&format!("Subscription/{id}/$status")).await;
    assert_eq!(status, 200);
    assert_eq!(bundle["type"], "searchset");
    let parameters = &bundle["entry"][0]["resource"];
    assert_eq!(param(parameters, "status").unwrap()["valueCode"], "active");
    assert_eq!(
        param(parameters, "type").unwrap()["valueCode"],
        "query-status"
    );
    let (status, outcome) = server.get("Subscription/unknown/$status").await;
    assert_eq!(status, 404);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn h32_type_status_filters_by_id_and_status() {
    let server = Server::start().await;
    let first = server.create_subscription("p1").await;
    let second = server.create_subscription("p2").await;
    let (_, all) = server.get("Subscription/$status").await;
    assert_eq!(all["total"], 2);
    let (_, one) = server
        .get(&format!("Subscription/$status?id={second}"))
        .await;
    assert_eq!(one["total"], 1);
    let reference = param(&one["entry"][0]["resource"], "subscription").unwrap()["valueReference"]
        ["reference"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reference.ends_with(&format!("Subscription/{second}")));
    let (_, both) = server
        .get(&format!(
            "Subscription/$status?id={first},{second}&status=active"
        ))
        .await;
    assert_eq!(both["total"], 2);
    let (_, none) = server.get("Subscription/$status?status=error").await;
    assert_eq!(none["total"], 0);
}

#[tokio::test]
async fn h33_events_returns_an_inclusive_range_and_h34_resend_redelivers() {
    let server = Server::start().await;
    let id = server.create_subscription("p1").await;
    for _ in 0..4 {
        server.admit("p1").await;
    }
    let mut bundle = Value::Null;
    for _ in 0..2000 {
        let (_, current) = server.get(&format!("Subscription/{id}/$events")).await;
        if event_numbers(&current).len() == 4 {
            bundle = current;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(event_numbers(&bundle), ["1", "2", "3", "4"]);
    assert_eq!(bundle["type"], "history");
    let (status, range) = server
        .get(&format!(
            "Subscription/{id}/$events?eventsSinceNumber=2&eventsUntilNumber=3"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(event_numbers(&range), ["2", "3"]);
    assert_eq!(
        param(&range["entry"][0]["resource"], "type").unwrap()["valueCode"],
        "query-event"
    );
    let (status, _) = server
        .get(&format!("Subscription/{id}/$events?eventsSinceNumber=x"))
        .await;
    assert_eq!(status, 400);

    // Handshake plus four events reached the hook; $resend from 3 sends 3 and 4 again.
    for _ in 0..2000 {
        if server.notifications.load(Ordering::SeqCst) >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = server.notifications.load(Ordering::SeqCst);
    let (status, outcome) = server
        .post(
            &format!("Subscription/{id}/$resend?eventsSinceNumber=3"),
            &json!({"resourceType": "Parameters"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    for _ in 0..2000 {
        if server.notifications.load(Ordering::SeqCst) >= before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.notifications.load(Ordering::SeqCst), before + 2);
}

/// A direct HTTP transport for this test: the guarded client is the binary's choice (and is
/// tested in flare-subscriptions); here only the operations are under test.
struct LoopbackHttp(reqwest::Client);

impl Transport for LoopbackHttp {
    fn send<'a, 'b>(
        &'a self,
        request: OutboundRequest,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<u16, TransportError>> + Send + 'b>>
    where
        'a: 'b,
    {
        Box::pin(self.send_now(request))
    }
}

impl LoopbackHttp {
    async fn send_now(&self, request: OutboundRequest) -> Result<u16, TransportError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|e| TransportError::Connection(e.to_string()))?;
        let mut builder = self
            .0
            .request(method, &request.url)
            .timeout(request.timeout)
            .body(request.body);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        builder
            .send()
            .await
            .map(|response| response.status().as_u16())
            .map_err(|e| TransportError::Connection(e.to_string()))
    }
}
