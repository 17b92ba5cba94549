//! A store, an embedded log and a relay in a temporary folder, the delivery runtime over them,
//! and a receiver on `127.0.0.1:0` that records requests and answers 200, 500 or never.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    routing::any,
};
use flare_events::Relay;
use flare_log::{Durability, EmbeddedLog, EmbeddedLogConfig, EventLog};
use flare_search::Registry;
use flare_service::{Fhir, FhirConfig, RequestContext};
use flare_store::{
    Store,
    sqlite::{SqliteConfig, SqliteStore},
};
use flare_subscriptions::{
    TopicRegistry,
    delivery::{
        DeliveryConfig, Dependencies, MailTransport, SubscriptionCheck, SubscriptionRedaction,
        SubscriptionRuntime,
    },
};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::watch;

pub const ADMISSION: &str = "http://flare.dev/fhir/SubscriptionTopic/encounter-admission";
pub const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

fn registry() -> Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Arc::new(Registry::r4())).clone()
}

/// How the receiver answers a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Fail,
    Hang,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The status Parameters' `type`.
    pub fn kind(&self) -> String {
        param(&self.json()["entry"][0]["resource"], "type")
            .and_then(|p| p["valueCode"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The event numbers this notification carries.
    pub fn event_numbers(&self) -> Vec<u64> {
        let body = self.json();
        body["entry"][0]["resource"]["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == "notification-event")
            .filter_map(|p| {
                p["part"]
                    .as_array()?
                    .iter()
                    .find(|part| part["name"] == "event-number")?["valueString"]
                    .as_str()?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

pub fn param<'a>(parameters: &'a Value, name: &str) -> Option<&'a Value> {
    parameters["parameter"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
}

#[derive(Clone, Default)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
}

pub struct Receiver {
    pub base: String,
    state: ReceiverState,
}

async fn record(
    State(state): State<ReceiverState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    state.received.lock().push(Received {
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: body.to_vec(),
    });
    let hook = path.split('/').nth(1).unwrap_or("").to_owned();
    let answer = state
        .answers
        .lock()
        .get(&hook)
        .copied()
        .unwrap_or(Answer::Ok);
    match answer {
        Answer::Ok => StatusCode::OK,
        Answer::Fail => StatusCode::INTERNAL_SERVER_ERROR,
        Answer::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK
        }
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let state = ReceiverState::default();
        let app = Router::new()
            .route("/{*path}", any(record))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base: format!("http://{address}"),
            state,
        }
    }

    /// The URL of hook `name` (its first path segment).
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    pub fn answer(&self, hook: &str, answer: Answer) {
        self.state.answers.lock().insert(hook.to_owned(), answer);
    }

    /// Requests received on hook `name`, in arrival order.
    pub fn on(&self, hook: &str) -> Vec<Received> {
        let prefix = format!("/{hook}");
        self.state
            .received
            .lock()
            .iter()
            .filter(|r| r.path == prefix || r.path.starts_with(&format!("{prefix}/")))
            .cloned()
            .collect()
    }

    /// Waits until hook `name`'s requests satisfy `done` (a test fails after 20 s of waiting,
    /// which only a broken runtime reaches).
    pub async fn wait(&self, hook: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        for _ in 0..2000 {
            let received = self.on(hook);
            if done(&received) {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "hook {hook} never got what the test waited for: {:#?}",
            self.on(hook)
        );
    }

    /// Waits until `hook` has received exactly `count` event notifications.
    pub async fn wait_events(&self, hook: &str, count: usize) -> Vec<Received> {
        self.wait(hook, |r| {
            r.iter()
                .filter(|n| n.kind() == "event-notification")
                .count()
                == count
        })
        .await
    }
}

pub struct Env {
    pub fhir: Fhir,
    pub log: Arc<dyn EventLog>,
    pub runtime: SubscriptionRuntime,
    pub config: DeliveryConfig,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

pub fn test_config(dir: &std::path::Path) -> DeliveryConfig {
    DeliveryConfig {
        cursor_file: dir.join("subscriptions.sqlite"),
        max_attempts: 3,
        retry_base_ms: 10,
        retry_max_ms: 40,
        default_timeout_ms: 2000,
        topic_refresh_ms: 20,
        ..DeliveryConfig::default()
    }
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut DeliveryConfig)) -> Self {
        Self::start_full(adjust, None).await
    }

    /// With a sender for `email` subscriptions.
    pub async fn start_full(
        adjust: impl FnOnce(&mut DeliveryConfig),
        mailer: Option<Arc<dyn MailTransport>>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteConfig::in_memory()).unwrap());
        let mut log_config = EmbeddedLogConfig::in_dir(dir.path().join("log"));
        log_config.durability = Durability::None;
        let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(log_config).await.unwrap());
        let fhir = Fhir::new(store.clone(), registry(), FhirConfig::default());
        fhir.add_write_check(
            "Subscription",
            Arc::new(SubscriptionCheck::new(
                registry(),
                TopicRegistry::with_builtins(&registry()),
            )),
        );
        // As `flare serve` does: channel secrets never appear in answers.
        fhir.add_read_transform("Subscription", Arc::new(SubscriptionRedaction));
        let relay = Relay::new(store, log.clone());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(relay.run(stopped));
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let runtime = SubscriptionRuntime::start_with_mailer(
            Self::dependencies(&fhir, &log),
            config.clone(),
            mailer,
        )
        .await
        .unwrap();
        Self {
            fhir,
            log,
            runtime,
            config,
            _stop: stop,
            _dir: dir,
        }
    }

    fn dependencies(fhir: &Fhir, log: &Arc<dyn EventLog>) -> Dependencies {
        Dependencies {
            fhir: fhir.clone(),
            log: log.clone(),
            topics: TopicRegistry::with_builtins(&registry()),
            transport: Arc::new(loopback_deliverer()),
        }
    }

    pub async fn runtime(
        fhir: &Fhir,
        log: &Arc<dyn EventLog>,
        config: DeliveryConfig,
    ) -> SubscriptionRuntime {
        SubscriptionRuntime::start(Self::dependencies(fhir, log), config)
            .await
            .unwrap()
    }

    pub fn ctx(&self) -> RequestContext {
        RequestContext::new(self.config.base_url.clone())
    }

    pub async fn create(&self, resource: Value) -> String {
        self.try_create(resource).await.unwrap()
    }

    pub async fn try_create(&self, resource: Value) -> Result<String, flare_service::FhirError> {
        let resource_type = resource["resourceType"].as_str().unwrap().to_owned();
        let outcome = self
            .fhir
            .create(&self.ctx(), &resource_type, resource, None)
            .await?;
        Ok(outcome.version.unwrap().key.id.clone())
    }

    pub async fn update(&self, resource: Value) {
        let resource_type = resource["resourceType"].as_str().unwrap().to_owned();
        let id = resource["id"].as_str().unwrap().to_owned();
        self.fhir
            .update(&self.ctx(), &resource_type, &id, resource, None)
            .await
            .unwrap();
    }

    pub async fn delete(&self, resource_type: &str, id: &str) {
        self.fhir
            .delete(&self.ctx(), resource_type, id, None)
            .await
            .unwrap();
    }

    pub async fn read(&self, resource_type: &str, id: &str) -> Value {
        let version = self.fhir.read(resource_type, id).await.unwrap();
        serde_json::from_str(version.body.as_deref().unwrap()).unwrap()
    }

    /// Waits until the Subscription's status is `status`.
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        for _ in 0..2000 {
            let current = self.read("Subscription", id).await;
            if current["status"] == status {
                return current;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "Subscription/{id} never became {status}: {}",
            self.read("Subscription", id).await
        );
    }
}

/// A backport (topic-based) rest-hook Subscription on Encounters of `patient`.
pub fn backport_subscription(endpoint: &str, patient: &str, content: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": ADMISSION,
        "_criteria": {"extension": [{"url": format!("{BACKPORT}backport-filter-criteria"),
            "valueString": format!("patient=Patient/{patient}")}]},
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "header": ["X-Test: yes"],
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"),
                "valueCode": content}]}
        }
    })
}

pub fn encounter(patient: &str) -> Value {
    json!({"resourceType": "Encounter", "status": "in-progress",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
           "subject": {"reference": format!("Patient/{patient}")}})
}

/// The guarded outbound client, with loopback allowed explicitly (as a user would with
/// `--subscription-allow 127.0.0.0/8`).
fn loopback_deliverer() -> flare_subscriptions::delivery::outbound::Deliverer {
    let allow: flare_subscriptions::delivery::outbound::AllowList = "127.0.0.0/8".parse().unwrap();
    flare_subscriptions::delivery::outbound::Deliverer::new(
        flare_subscriptions::delivery::outbound::EndpointPolicy::new(allow),
        flare_subscriptions::delivery::outbound::DeliveryConfig::default(),
    )
    .unwrap()
}
