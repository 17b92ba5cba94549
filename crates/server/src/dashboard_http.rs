//! The processors' results over HTTP: sepsis alerts, immunization statistics, the pipeline's
//! gauges, and the dashboard's live WebSocket (`/api/live`, protocol in
//! `flare_processors::dashboard`).

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock, atomic::Ordering},
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
use futures::SinkExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{
    broadcast::error::{RecvError, TryRecvError},
    watch,
};

/// How often the pipeline's gauges are sampled (and sent on every live socket).
const PIPELINE_EVERY: Duration = Duration::from_secs(2);
/// The first rates are measured over this long after the sampler starts, so that the first
/// answer of `/api/pipeline` already has rates instead of zeros.
const FIRST_RATES_AFTER: Duration = Duration::from_secs(1);
/// Read buffer of a live socket (its client sends only control frames).
const LIVE_READ_BUFFER: usize = 4 * 1024;
/// Frames are buffered up to this size before a write, unless flushed first.
const LIVE_WRITE_BUFFER: usize = 32 * 1024;
/// Most deltas sent in one write.
const LIVE_BATCH: usize = 64;
/// Longest wait of `/api/pipeline` for the first sample.
const FIRST_SAMPLE_WAIT: Duration = Duration::from_secs(10);

/// What the dashboard routes read.
#[derive(Clone)]
pub struct DashboardState {
    pub feed: Arc<DashboardFeed>,
    /// `None` when the immunizations processor is not running.
    pub immunizations: Option<Arc<ImmunizationView>>,
    pub processors: Vec<Arc<ProcessorMetrics>>,
    pub log: Arc<dyn EventLog>,
}

/// The routes' state: what they read, plus the one pipeline sampler they share.
#[derive(Clone)]
struct Shared {
    dashboard: DashboardState,
    gauges: Arc<PipelineGauges>,
}

impl axum::extract::FromRef<Shared> for DashboardState {
    fn from_ref(shared: &Shared) -> Self {
        shared.dashboard.clone()
    }
}

/// `/api/sepsis/alerts`, `/api/stats/immunizations`, `/api/pipeline` and `/api/live`.
pub fn dashboard_routes(state: DashboardState) -> Router {
    let shared = Shared {
        gauges: Arc::new(PipelineGauges::default()),
        dashboard: state,
    };
    // Start sampling now when there is a runtime, so rates exist before anyone asks;
    // otherwise the first reader starts it.
    if tokio::runtime::Handle::try_current().is_ok() {
        shared.gauges.subscribe(&shared.dashboard);
    }
    Router::new()
        .route("/api/sepsis/alerts", get(alerts))
        .route("/api/stats/immunizations", get(immunizations))
        .route("/api/pipeline", get(pipeline))
        .route("/api/live", get(live))
        .with_state(shared)
}

/// One sample of the pipeline's gauges, as `/api/pipeline` answers it and as the live frame.
struct GaugeSample {
    json: Value,
    frame: Arc<str>,
}

/// One sampler task for every reader: `/api/pipeline` and every live socket read the latest
/// sample, so rates are measured between consecutive samples (never from a fresh sampler that
/// has nothing to compare with), and the log is asked once per period however many dashboards
/// are open.
#[derive(Default)]
struct PipelineGauges {
    latest: OnceLock<watch::Receiver<Option<Arc<GaugeSample>>>>,
}

impl PipelineGauges {
    /// The latest sample and its updates; starts the sampler on first use. Must be called
    /// within a Tokio runtime.
    fn subscribe(&self, state: &DashboardState) -> watch::Receiver<Option<Arc<GaugeSample>>> {
        self.latest
            .get_or_init(|| {
                let (sender, receiver) = watch::channel(None);
                tokio::spawn(sample_pipeline(state.clone(), sender));
                receiver
            })
            .clone()
    }
}

/// Samples until no reader is left (the routes and every socket dropped their receivers).
async fn sample_pipeline(state: DashboardState, sender: watch::Sender<Option<Arc<GaugeSample>>>) {
    let mut sampler = PipelineSampler::default();
    sampler.sample(&state).await;
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + FIRST_RATES_AFTER,
        PIPELINE_EVERY,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = sender.closed() => return,
        }
        let json = sampler.sample(&state).await;
        let mut frame = json.clone();
        frame["type"] = json!("pipeline");
        let sample = GaugeSample {
            json,
            frame: Arc::from(frame.to_string()),
        };
        if sender.send(Some(Arc::new(sample))).is_err() {
            return;
        }
    }
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

async fn pipeline(State(shared): State<Shared>) -> Response {
    let mut latest = shared.gauges.subscribe(&shared.dashboard);
    let waited = tokio::time::timeout(
        FIRST_SAMPLE_WAIT,
        latest.wait_for(|sample| sample.is_some()),
    )
    .await;
    match waited {
        Ok(Ok(sample)) => match sample.as_ref() {
            Some(sample) => Json(sample.json.clone()).into_response(),
            None => problem(StatusCode::SERVICE_UNAVAILABLE, "no pipeline sample yet"),
        },
        _ => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline sampler has not answered yet: try again in a few seconds",
        ),
    }
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    since: Option<u64>,
}

async fn live(
    State(shared): State<Shared>,
    Query(query): Query<LiveQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let gauges = shared.gauges.subscribe(&shared.dashboard);
    upgrade
        // The client only sends control frames: a small read buffer keeps thousands of open
        // dashboards cheap (the default is 128 KiB each).
        .read_buffer_size(LIVE_READ_BUFFER)
        .write_buffer_size(LIVE_WRITE_BUFFER)
        .on_upgrade(move |socket| stream(socket, shared.dashboard, gauges, query.since))
}

/// Sends the snapshot (or the missed deltas), then deltas as they come and the pipeline's
/// gauges at each sample. A client too slow to keep up is disconnected; it reconnects with
/// `since` and loses nothing.
async fn stream(
    mut socket: WebSocket,
    state: DashboardState,
    mut gauges: watch::Receiver<Option<Arc<GaugeSample>>>,
    since: Option<u64>,
) {
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
    // The latest sample goes out at once, then each new one.
    gauges.mark_changed();
    loop {
        tokio::select! {
            update = updates.recv() => match update {
                Ok(frame) => {
                    // Deltas already waiting go out with this one in a single write: under
                    // load, a connection catches up in a few system calls instead of one per
                    // delta.
                    let mut batch = vec![frame];
                    while batch.len() < LIVE_BATCH {
                        match updates.try_recv() {
                            Ok(frame) => batch.push(frame),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Lagged(_) | TryRecvError::Closed) => {
                                let _ = socket.send(Message::Close(None)).await;
                                return;
                            }
                        }
                    }
                    for frame in batch {
                        if socket.feed(Message::Text(frame.as_ref().into())).await.is_err() {
                            return;
                        }
                    }
                    if socket.flush().await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            changed = gauges.changed() => {
                if changed.is_err() {
                    return; // the server is shutting down
                }
                let frame = gauges.borrow_and_update().as_ref().map(|sample| sample.frame.clone());
                if let Some(frame) = frame
                    && socket.send(Message::Text(frame.as_ref().into())).await.is_err()
                {
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
