//! The processors' results over HTTP: sepsis alerts, immunization statistics, the pipeline's
//! gauges, and the dashboard's live WebSocket (`/api/live`, protocol in
//! `flare_processors::dashboard`).

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{
        Query, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use flare_clinical::{Timestamp, immunizations::Bucket};
use flare_log::EventLog;
use flare_processors::{
    ProcessorMetrics, builtin::immunizations::ImmunizationView, dashboard::DashboardFeed,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

/// How often the live socket sends the pipeline's gauges.
const PIPELINE_EVERY: Duration = Duration::from_secs(2);

/// What the dashboard routes read.
#[derive(Clone)]
pub struct DashboardState {
    pub feed: Arc<DashboardFeed>,
    /// `None` when the immunizations processor is not running.
    pub immunizations: Option<Arc<ImmunizationView>>,
    pub processors: Vec<Arc<ProcessorMetrics>>,
    pub log: Arc<dyn EventLog>,
}

/// `/api/sepsis/alerts`, `/api/stats/immunizations`, `/api/pipeline` and `/api/live`.
pub fn dashboard_routes(state: DashboardState) -> Router {
    Router::new()
        .route("/api/sepsis/alerts", get(alerts))
        .route("/api/stats/immunizations", get(immunizations))
        .route("/api/pipeline", get(pipeline))
        .route("/api/live", get(live))
        .with_state(state)
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[derive(Debug, Deserialize)]
struct AlertsQuery {
    /// `active` (default) or `all`.
    status: Option<String>,
}

async fn alerts(State(state): State<DashboardState>, Query(query): Query<AlertsQuery>) -> Response {
    let active_only = match query.status.as_deref() {
        None | Some("active") => true,
        Some("all") => false,
        Some(other) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("status={other} is not supported: use active or all"),
            );
        }
    };
    Json(json!({ "alerts": state.feed.alerts(active_only) })).into_response()
}

#[derive(Debug, Deserialize)]
struct StatsQuery {
    from: Option<String>,
    to: Option<String>,
    bucket: Option<String>,
}

async fn immunizations(
    State(state): State<DashboardState>,
    Query(query): Query<StatsQuery>,
) -> Response {
    let Some(view) = &state.immunizations else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the immunizations processor is not running: start flare serve with --processors immunizations",
        );
    };
    let bucket = match query.bucket.as_deref() {
        None | Some("day") => Bucket::Day,
        Some("hour") => Bucket::Hour,
        Some(other) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("bucket={other} is not supported: use day or hour"),
            );
        }
    };
    let now = Timestamp::from_millis(time::OffsetDateTime::now_utc().unix_timestamp() * 1000);
    let parse = |name: &str, text: &Option<String>, default: Timestamp| {
        match text {
        None => Ok(default),
        Some(text) => Timestamp::parse_fhir(text).ok_or_else(|| {
            problem(
                StatusCode::BAD_REQUEST,
                &format!("{name}={text} is not a FHIR date or dateTime (e.g. 2026-01-31 or 2026-01-31T12:00:00Z)"),
            )
        }),
    }
    };
    let from = match parse(
        "from",
        &query.from,
        now.saturating_sub_millis(30 * 86_400_000),
    ) {
        Ok(from) => from,
        Err(response) => return response,
    };
    let to = match parse("to", &query.to, now.saturating_add_millis(86_400_000)) {
        Ok(to) => to,
        Err(response) => return response,
    };
    if from > to {
        return problem(StatusCode::BAD_REQUEST, "from must not be after to");
    }
    let series: Vec<Value> = view
        .series(from, to, bucket)
        .into_iter()
        .map(|point| {
            json!({"vaccine": point.vaccine, "start": point.start.to_rfc3339(), "count": point.count})
        })
        .collect();
    Json(json!({
        "from": from.to_rfc3339(),
        "to": to.to_rfc3339(),
        "bucket": if bucket == Bucket::Day { "day" } else { "hour" },
        "totals": view.totals(),
        "series": series,
    }))
    .into_response()
}

async fn pipeline(State(state): State<DashboardState>) -> Response {
    let mut sampler = PipelineSampler::default();
    Json(sampler.sample(&state).await).into_response()
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    since: Option<u64>,
}

async fn live(
    State(state): State<DashboardState>,
    Query(query): Query<LiveQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    upgrade.on_upgrade(move |socket| stream(socket, state, query.since))
}

/// Sends the snapshot (or the missed deltas), then deltas as they come and the pipeline's
/// gauges every two seconds. A client too slow to keep up is disconnected; it reconnects with
/// `since` and loses nothing.
async fn stream(mut socket: WebSocket, state: DashboardState, since: Option<u64>) {
    let connection = state.feed.connect(since);
    for frame in connection.initial {
        if socket
            .send(Message::Text(frame.as_ref().into()))
            .await
            .is_err()
        {
            return;
        }
    }
    let mut updates = connection.updates;
    let mut sampler = PipelineSampler::default();
    let mut ticker = tokio::time::interval(PIPELINE_EVERY);
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Ok(frame) => {
                    if socket.send(Message::Text(frame.as_ref().into())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            _ = ticker.tick() => {
                let mut gauges = sampler.sample(&state).await;
                gauges["type"] = json!("pipeline");
                if socket.send(Message::Text(gauges.to_string().into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Events per second by topic, from the change of the log's end offsets between samples.
#[derive(Default)]
struct PipelineSampler {
    previous: Option<(Instant, HashMap<String, u64>)>,
}

impl PipelineSampler {
    async fn sample(&mut self, state: &DashboardState) -> Value {
        let now = Instant::now();
        let totals: HashMap<String, u64> = match state.log.topics().await {
            Ok(topics) => topics
                .into_iter()
                .map(|topic| (topic.name, topic.end_offsets.iter().sum()))
                .collect(),
            Err(_) => HashMap::new(),
        };
        let mut topics: Vec<Value> = Vec::new();
        if let Some((then, previous)) = &self.previous {
            let seconds = now.duration_since(*then).as_secs_f64().max(1e-3);
            for (name, total) in &totals {
                let before = previous.get(name).copied().unwrap_or(*total);
                let rate = total.saturating_sub(before) as f64 / seconds;
                topics.push(json!({"topic": name, "eventsPerSecond": rate}));
            }
        } else {
            for name in totals.keys() {
                topics.push(json!({"topic": name, "eventsPerSecond": 0.0}));
            }
        }
        topics.sort_by(|a, b| a["topic"].as_str().cmp(&b["topic"].as_str()));
        let dead_letters: u64 = totals
            .iter()
            .filter(|(name, _)| name.ends_with(".dlq"))
            .map(|(_, total)| total)
            .sum();
        let processors: Vec<Value> = state
            .processors
            .iter()
            .map(|metrics| {
                json!({
                    "processor": metrics.name,
                    "lag": metrics.lag.load(Ordering::Relaxed),
                    "retried": metrics.retried.load(Ordering::Relaxed),
                    "deadLettered": metrics.dead_lettered.load(Ordering::Relaxed),
                })
            })
            .collect();
        self.previous = Some((now, totals));
        json!({"topics": topics, "processors": processors, "deadLetterSize": dead_letters})
    }
}
