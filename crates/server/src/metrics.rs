//! Prometheus metrics in the text exposition format.

use std::{
    fmt::Write,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{extract::State, http::header, response::IntoResponse};

use crate::AppState;

/// Renders the metrics of a component (processors, say) in the text exposition format.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

/// Request counters by status class, kept lock-free, and the components' own metrics.
#[derive(Default)]
pub struct Metrics {
    by_class: [AtomicU64; 6],
    sources: RwLock<Vec<MetricsSource>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("by_class", &self.by_class)
            .finish()
    }
}

impl Metrics {
    pub fn record(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a component's metrics to `/metrics`.
    pub fn add_source(&self, source: MetricsSource) {
        self.sources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(source);
    }
}

pub(crate) async fn render(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    out.push_str("# HELP flare_http_requests_total FHIR API requests by status class.\n# TYPE flare_http_requests_total counter\n");
    for (class, count) in state.metrics.by_class.iter().enumerate().skip(1) {
        let _ = writeln!(
            out,
            "flare_http_requests_total{{class=\"{class}xx\"}} {}",
            count.load(Ordering::Relaxed)
        );
    }
    let relay = &state.relay;
    out.push_str("# HELP flare_outbox_relayed_total Change events moved from the outbox to the log.\n# TYPE flare_outbox_relayed_total counter\n");
    let _ = writeln!(
        out,
        "flare_outbox_relayed_total {}",
        relay.relayed.load(Ordering::Relaxed)
    );
    out.push_str("# HELP flare_outbox_relay_errors_total Failed relay rounds (retried).\n# TYPE flare_outbox_relay_errors_total counter\n");
    let _ = writeln!(
        out,
        "flare_outbox_relay_errors_total {}",
        relay.errors.load(Ordering::Relaxed)
    );
    out.push_str("# HELP flare_log_end_offset Next offset of each log partition.\n# TYPE flare_log_end_offset gauge\n");
    if let Ok(topics) = state.log.topics().await {
        for topic in topics {
            for (partition, end) in topic.end_offsets.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "flare_log_end_offset{{topic=\"{}\",partition=\"{partition}\"}} {end}",
                    topic.name
                );
            }
        }
    }
    let sources = state
        .metrics
        .sources
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for source in sources {
        out.push_str(&source());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
