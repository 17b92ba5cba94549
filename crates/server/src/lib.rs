//! The HTTP face of Flare: the FHIR REST API at `/fhir`, the dashboard at `/`, `/health` and
//! `/metrics`.
//!
//! FHIR paths are irregular (`/Patient/1/_history/2`, `/_history`, `/Patient/_search`), so
//! one handler parses the path and dispatches; every failure, including unknown paths, wrong
//! methods, oversized bodies and unsupported media types, is an OperationOutcome.
//!
//! Architecture invariant: this is the only crate that knows axum; it knows the store, the
//! log and the search engine only through `flare-service`.

mod config;
mod dashboard_http;
mod fhir_http;
mod fhircast_http;
mod format;
mod metrics;
pub mod subscriptions_http;
mod web;

use std::sync::Arc;

use axum::{Router, routing::any, routing::get};
use flare_events::RelayStats;
use flare_log::EventLog;
use flare_service::Fhir;
use tokio::net::TcpListener;

pub use config::ServerConfig;
pub use dashboard_http::{DashboardState, dashboard_routes};
pub use fhircast_http::fhircast_routes;
pub use metrics::{Metrics, MetricsSource};

/// Everything a request handler needs, shared.
#[derive(Clone)]
pub struct AppState {
    pub fhir: Fhir,
    pub log: Arc<dyn EventLog>,
    pub config: Arc<ServerConfig>,
    pub metrics: Arc<Metrics>,
    pub relay: Arc<RelayStats>,
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/fhir", any(fhir_http::handle))
        .route("/fhir/", any(fhir_http::handle))
        .route("/fhir/{*path}", any(fhir_http::handle))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(metrics::render))
        .route("/", get(web::index))
        .route("/index.html", get(web::index))
        .route("/assets/{*path}", get(web::asset))
        .with_state(state)
}

/// Serves the core routes until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(state), shutdown).await
}

/// Serves `app` (the core [`router`] merged with the routes of optional components such as
/// the FHIRcast hub) until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
