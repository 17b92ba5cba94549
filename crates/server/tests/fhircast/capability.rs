//! Point 4 (the hub in a co-located FHIR server's CapabilityStatement) and the sandbox page:
//! the FHIR routes and the hub's routes served together, as `flare serve` does.

use std::sync::Arc;

use flare_events::Relay;
use flare_fhircast::{HubConfig, HubHandle};
use flare_log::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use flare_search::Registry;
use flare_server::{AppState, Metrics, ServerConfig};
use flare_service::{Fhir, FhirConfig};
use flare_store::{
    Store,
    sqlite::{SqliteConfig, SqliteStore},
};
use serde_json::Value;

const STU3_EXTENSION: &str =
    "http://fhircast.hl7.org/StructureDefinition/fhircast-configuration-extension";

struct Server {
    origin: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// The FHIR API, plus the hub (registered in the CapabilityStatement) when `hub` is given.
async fn start(hub: Option<HubConfig>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteConfig::in_memory()).unwrap());
    let mut log_config = EmbeddedLogConfig::in_dir(dir.path().join("log"));
    log_config.durability = flare_log::Durability::None;
    let log: Arc<dyn EventLog> = Arc::new(EmbeddedLog::open(log_config).await.unwrap());
    let fhir = Fhir::new(
        store.clone(),
        Arc::new(Registry::r4()),
        FhirConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = AppState {
        fhir: fhir.clone(),
        log: log.clone(),
        config: Arc::new(ServerConfig::default()),
        metrics: Arc::new(Metrics::default()),
        relay: Relay::new(store, log).stats(),
    };
    let mut routes = flare_server::router(state);
    if let Some(config) = hub {
        let hub_config = config.clone();
        fhir.add_capability_extensions(move |base| {
            flare_fhircast::capability_extensions(&hub_config, base)
        });
        routes = routes.merge(flare_server::fhircast_routes(HubHandle::start(config)));
    }
    tokio::spawn(async move { axum::serve(listener, routes).await });
    Server {
        origin: format!("http://{address}"),
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

impl Server {
    async fn metadata(&self) -> Value {
        let response = self
            .client
            .get(format!("{}/fhir/metadata", self.origin))
            .header("accept", "application/fhir+json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

fn advertised_hub_url(statement: &Value) -> Option<String> {
    let rest = statement["rest"]
        .as_array()?
        .iter()
        .find(|rest| rest["mode"] == "server")?;
    let extension = rest["extension"]
        .as_array()?
        .iter()
        .find(|extension| extension["url"] == STU3_EXTENSION)?;
    let hub_url = extension["extension"]
        .as_array()?
        .iter()
        .find(|sub| sub["url"] == "hub.url")?;
    hub_url["valueUrl"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn p04_capability_statement_advertises_a_hub_url_that_answers_discovery() {
    let server = start(Some(HubConfig {
        path: "/fhircast".into(),
        ..HubConfig::default()
    }))
    .await;
    let hub_url = advertised_hub_url(&server.metadata().await)
        .expect("the CapabilityStatement names the hub");
    assert_eq!(hub_url, format!("{}/fhircast", server.origin));
    // The advertised URL is the hub: its discovery document answers.
    let discovery: Value = server
        .client
        .get(format!("{hub_url}/.well-known/fhircast-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["fhircastVersion"], "3.0.0");
}

#[tokio::test]
async fn p04_hub_url_follows_the_configured_path_and_public_url() {
    let server = start(Some(HubConfig {
        path: "/api/hub".into(),
        public_url: Some("https://hub.example.com".into()),
        ..HubConfig::default()
    }))
    .await;
    assert_eq!(
        advertised_hub_url(&server.metadata().await).as_deref(),
        Some("https://hub.example.com/api/hub")
    );
}

#[tokio::test]
async fn p04_no_hub_no_extension() {
    let server = start(None).await;
    let statement = server.metadata().await;
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert!(
        statement["rest"][0].get("extension").is_none(),
        "no hub, no extension (and no empty array): {}",
        statement["rest"][0]
    );
}

#[tokio::test]
async fn sandbox_page_is_served_under_the_hub_and_publishing_to_topic_sandbox_still_works() {
    let server = start(Some(HubConfig::default())).await;
    let page = server
        .client
        .get(format!("{}/fhircast/sandbox", server.origin))
        // What a browser sends when it navigates to the page.
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    for element in ["id=\"subscribe\"", "id=\"publish\"", "id=\"log\""] {
        assert!(html.contains(element), "the page has {element}");
    }
    // The page's route must not take the topic "sandbox" away from publishers.
    let published = server
        .client
        .post(format!("{}/fhircast/sandbox", server.origin))
        .json(&serde_json::json!({
            "timestamp": "2026-11-22T03:00:00Z",
            "id": "e1",
            "event": {
                "hub.topic": "sandbox",
                "hub.event": "Patient-open",
                "context": [{"key": "patient", "resource": {"resourceType": "Patient", "id": "p1"}}]
            }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 202);
}
