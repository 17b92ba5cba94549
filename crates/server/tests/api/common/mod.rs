//! A Flare server on `127.0.0.1:0` over an in-memory store and an embedded log in a
//! temporary folder, plus a small HTTP client for FHIR.

#![allow(dead_code)]

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use flare_events::Relay;
use flare_log::{EmbeddedLog, EmbeddedLogConfig, EventLog, Record, StartFrom};
use flare_search::Registry;
use flare_server::{AppState, Metrics, ServerConfig};
use flare_service::{Fhir, FhirConfig};
use flare_store::{
    Store,
    sqlite::{SqliteConfig, SqliteStore},
};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;
use tokio::sync::watch;

/// Building the registry compiles every search expression: do it once per test binary.
fn registry() -> Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Arc::new(Registry::r4())).clone()
}

pub struct TestServer {
    pub base: String,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn Store>,
    pub client: reqwest::Client,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// A response with its body parsed as JSON where it is JSON.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The diagnostics of an OperationOutcome body, joined.
    pub fn diagnostics(&self) -> String {
        self.json["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["diagnostics"].as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Asserts the status and that an error body is an OperationOutcome.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        if status >= 400 {
            assert_eq!(
                self.json["resourceType"], "OperationOutcome",
                "error body: {}",
                self.text
            );
            assert!(
                !self.diagnostics().is_empty(),
                "an error must say what was wrong: {}",
                self.text
            );
        }
        self
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(ServerConfig::default(), FhirConfig::default()).await
    }

    pub async fn start_with(mut server: ServerConfig, fhir: FhirConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteConfig::in_memory()).unwrap());
        let mut log_config = EmbeddedLogConfig::in_dir(dir.path().join("log"));
        log_config.durability = flare_log::Durability::None;
        let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(log_config).await.unwrap());
        let service = Fhir::new(store.clone(), registry(), fhir);
        let relay = Relay::new(store.clone(), log.clone());
        let relay_stats = relay.stats();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(relay.run(stopped.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        server.listen = address.to_string();
        let state = AppState {
            fhir: service,
            log: log.clone(),
            config: Arc::new(server),
            metrics: Arc::new(Metrics::default()),
            relay: relay_stats,
        };
        let mut shutdown = stopped;
        tokio::spawn(flare_server::serve(listener, state, async move {
            let _ = shutdown.changed().await;
        }));
        Self {
            base: format!("http://{address}/fhir"),
            log,
            store,
            client: reqwest::Client::new(),
            _stop: stop,
            _dir: dir,
        }
    }

    /// Sends a request; `body` is sent as FHIR JSON when given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        };
        let mut request = self.client.request(method, url);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/fhir+json")
                .body(body.to_string());
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::POST, path, Some(body), &[]).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.call(Method::PUT, path, Some(body), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(Method::DELETE, path, None, &[]).await
    }

    /// Sends raw bytes with a content type.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let url = format!("{}/{}", self.base, path.trim_start_matches('/'));
        let response = self
            .client
            .request(method, url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    /// Every record of a topic from the start, waiting until at least `expected` arrived
    /// (or 5 s passed).
    pub async fn events(&self, topic: &str, expected: usize) -> Vec<Record> {
        let group = format!("test-{}", uuid_like());
        let mut consumer = self
            .log
            .consumer(&group, &[topic.to_owned()], StartFrom::Earliest)
            .await
            .unwrap();
        let mut records = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while records.len() < expected && tokio::time::Instant::now() < deadline {
            records.extend(
                consumer
                    .poll(1000, Duration::from_millis(200))
                    .await
                    .unwrap(),
            );
        }
        // Anything beyond what was expected arrives in the same round or not at all.
        records.extend(
            consumer
                .poll(1000, Duration::from_millis(100))
                .await
                .unwrap(),
        );
        records
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The entries of a Bundle.
pub fn entries(bundle: &Value) -> &[Value] {
    bundle["entry"].as_array().map_or(&[], Vec::as_slice)
}

/// The ids of the `match` resources of a searchset.
pub fn match_ids(bundle: &Value) -> Vec<String> {
    entries(bundle)
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}
