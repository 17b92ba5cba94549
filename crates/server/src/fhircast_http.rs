//! The FHIRcast hub over HTTP and WebSocket: discovery, subscribe/unsubscribe, publish,
//! Get Current Context and the subscriber sockets. Protocol decisions live in
//! `flare-fhircast`; this module only moves bytes.

use std::time::Duration;

use axum::{
    Router,
    body::Bytes,
    extract::{
        Path, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use flare_fhircast::{ContextShape, HttpReply, HubHandle, SocketCommand};
use futures::{SinkExt, StreamExt};
use tower_http::cors::CorsLayer;

#[derive(Clone)]
struct HubState {
    hub: HubHandle,
    /// The hub's path, without a trailing slash.
    path: String,
    public_url: Option<String>,
    /// Liveness pings; `None` when off.
    ping_interval: Option<Duration>,
}

/// The hub's routes under its configured path (`/fhircast` by default):
///
/// - `GET {hub}/.well-known/fhircast-configuration`
/// - `POST {hub}`: subscribe/unsubscribe (form) or publish (JSON)
/// - `POST {hub}/{topic}`: publish (the STU1/STU2 path); `GET {hub}/{topic}`: current context
/// - `GET {hub}/STU2/{topic}`: current context as a bare array (STU2-era clients), and
///   `GET {hub}/STU2/.well-known/fhircast-configuration` saying `STU2`
/// - `GET {hub}/ws/{endpoint}`: a subscriber's WebSocket
/// - `GET {hub}/sandbox`: the sandbox page for browsers (`Accept: text/html`); other clients
///   get the current context of the topic named `sandbox`
///
/// The same routes answer under `/api/hub` too, the default hub path of OHIF and Medplum.
/// Browser apps call the hub from other origins, so CORS is open on these routes.
pub fn fhircast_routes(hub: HubHandle) -> Router {
    let config = hub.config();
    let path = config.path.trim_end_matches('/').to_string();
    let state = HubState {
        hub,
        path: path.clone(),
        public_url: config
            .public_url
            .map(|url| url.trim_end_matches('/').to_string()),
        ping_interval: (config.ping_interval_ms > 0)
            .then(|| Duration::from_millis(config.ping_interval_ms)),
    };
    let mut router = routes_at(&path);
    if path != API_HUB_ALIAS {
        router = router.merge(routes_at(API_HUB_ALIAS));
    }
    router.layer(CorsLayer::permissive()).with_state(state)
}

/// The hub path OHIF and Medplum clients use by default.
const API_HUB_ALIAS: &str = "/api/hub";

fn routes_at(path: &str) -> Router<HubState> {
    let root = if path.is_empty() {
        "/".to_string()
    } else {
        path.to_string()
    };
    Router::new()
        .route(
            &format!("{path}/.well-known/fhircast-configuration"),
            get(discovery),
        )
        .route(
            &format!("{path}/STU2/.well-known/fhircast-configuration"),
            get(discovery_stu2),
        )
        .route(&root, post(hub_post))
        .route(
            &format!("{path}/{{topic}}"),
            post(publish_to_topic).get(current_context),
        )
        .route(&format!("{path}/STU2/{{topic}}"), get(current_context_stu2))
        .route(&format!("{path}/ws/{{endpoint}}"), get(websocket))
        .route(
            &format!("{path}/sandbox"),
            get(sandbox_or_context).post(publish_to_sandbox_topic),
        )
}

async fn discovery(State(state): State<HubState>) -> Response {
    axum::Json(state.hub.discovery()).into_response()
}

/// What STU2-era clients of the bare-array route expect to read.
async fn discovery_stu2(State(state): State<HubState>) -> Response {
    let mut document = state.hub.discovery();
    document["fhircastVersion"] = "STU2".into();
    axum::Json(document).into_response()
}

/// The page for a browser; for API clients `sandbox` is a topic name like any other.
async fn sandbox_or_context(State(state): State<HubState>, headers: HeaderMap) -> Response {
    let wants_html = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.to_ascii_lowercase().contains("text/html"));
    if !wants_html {
        return to_response(state.hub.current_context("sandbox", ContextShape::Stu3));
    }
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        flare_fhircast::SANDBOX_PAGE,
    )
        .into_response()
}

/// The page's static route shadows `POST {hub}/{topic}` for the topic `sandbox`; keep publishing
/// to it working.
async fn publish_to_sandbox_topic(State(state): State<HubState>, body: Bytes) -> Response {
    to_response(state.hub.publish(Some("sandbox"), &body).await)
}

async fn hub_post(State(state): State<HubState>, headers: HeaderMap, body: Bytes) -> Response {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/x-www-form-urlencoded" => {
            let endpoint_base = endpoint_base(&state, &headers);
            to_response(state.hub.subscribe(&body, &endpoint_base).await)
        }
        "application/json" | "application/fhir+json" => {
            to_response(state.hub.publish(None, &body).await)
        }
        _ => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "use application/x-www-form-urlencoded to subscribe or application/json to publish",
        )
            .into_response(),
    }
}

async fn publish_to_topic(
    State(state): State<HubState>,
    Path(topic): Path<String>,
    body: Bytes,
) -> Response {
    to_response(state.hub.publish(Some(&topic), &body).await)
}

async fn current_context(State(state): State<HubState>, Path(topic): Path<String>) -> Response {
    to_response(state.hub.current_context(&topic, ContextShape::Stu3))
}

async fn current_context_stu2(
    State(state): State<HubState>,
    Path(topic): Path<String>,
) -> Response {
    to_response(state.hub.current_context(&topic, ContextShape::BareArray))
}

async fn websocket(
    State(state): State<HubState>,
    Path(endpoint): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // Refuse before upgrading so an unknown endpoint is a plain 404; a clustered node first
    // reads the hub's log up to its end, as the subscribe may have gone to another node.
    if !state.hub.endpoint_is_live(&endpoint) {
        state.hub.catch_up().await;
    }
    if !state.hub.endpoint_is_live(&endpoint) {
        return (
            StatusCode::NOT_FOUND,
            "no live subscription has this endpoint",
        )
            .into_response();
    }
    upgrade
        // tungstenite's defaults (128 KiB read and write buffers per socket) cost ~130 KiB
        // per subscriber; a hub socket reads small acknowledgements and writes events that
        // are flushed in batches.
        .read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(SOCKET_WRITE_BUFFER)
        .max_message_size(MAX_SUBSCRIBER_MESSAGE)
        .on_upgrade(move |socket| run_socket(state.hub, endpoint, socket, state.ping_interval))
}

/// Per-socket buffers (see `websocket`).
const SOCKET_READ_BUFFER: usize = 4 * 1024;
const SOCKET_WRITE_BUFFER: usize = 16 * 1024;
/// Subscribers send acknowledgements, endpoint echoes and SyncErrors, never large frames.
const MAX_SUBSCRIBER_MESSAGE: usize = 1024 * 1024;
/// Pings in a row a socket may leave unanswered before it counts as dropped.
const MAX_MISSED_PONGS: u32 = 2;
/// Frames written to a socket between two flushes when several are queued.
const MAX_FRAMES_PER_FLUSH: usize = 64;

async fn run_socket(
    hub: HubHandle,
    endpoint: String,
    socket: WebSocket,
    ping_interval: Option<Duration>,
) {
    let (mut sink, mut stream) = socket.split();
    let Ok(mut session) = hub.connect(&endpoint) else {
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1008,
                reason: "no live subscription has this endpoint".into(),
            })))
            .await;
        return;
    };
    let connection = session.connection;
    // Without pings the interval is an hour-long tick that is never selected.
    let mut pings = tokio::time::interval(ping_interval.unwrap_or(Duration::from_secs(3600)));
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pings.tick().await;
    let mut missed_pongs = 0u32;
    loop {
        tokio::select! {
            _ = pings.tick(), if ping_interval.is_some() => {
                if missed_pongs >= MAX_MISSED_PONGS {
                    // Silent peer (sleeping laptop, dead proxy): as if the TCP dropped.
                    hub.closed(connection, None);
                    return;
                }
                missed_pongs += 1;
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    hub.closed(connection, None);
                    return;
                }
            }
            command = session.next() => {
                // Frames already queued are written before one flush.
                let mut next = command;
                let mut written = 0;
                while let Some(command) = next.take() {
                    match command {
                        SocketCommand::Text(text) => {
                            if sink.feed(Message::Text(text.as_ref().into())).await.is_err() {
                                hub.closed(connection, None);
                                return;
                            }
                            written += 1;
                            if written < MAX_FRAMES_PER_FLUSH {
                                next = session.try_next();
                            }
                        }
                        SocketCommand::Close { code, reason } => {
                            // The hub already ended the subscription.
                            let _ = sink
                                .send(Message::Close(Some(CloseFrame { code, reason: reason.into() })))
                                .await;
                            return;
                        }
                    }
                }
                if written == 0 {
                    // The hub dropped the socket.
                    return;
                }
                if sink.flush().await.is_err() {
                    hub.closed(connection, None);
                    return;
                }
            },
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    missed_pongs = 0;
                    hub.message(connection, text.as_str());
                }
                Some(Ok(Message::Pong(_))) => missed_pongs = 0,
                Some(Ok(Message::Close(frame))) => {
                    // A close frame without a code is still a deliberate close.
                    hub.closed(connection, Some(frame.map_or(1000, |frame| frame.code)));
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    hub.closed(connection, None);
                    return;
                }
            },
        }
    }
}

/// `ws(s)://{host}{hub}/ws`: from the configured public URL, else from the request.
fn endpoint_base(state: &HubState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.public_url {
        let url = url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        return format!("{url}{}/ws", state.path);
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("localhost");
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
    let scheme = if secure { "wss" } else { "ws" };
    format!("{scheme}://{host}{}/ws", state.path)
}

fn to_response(reply: HttpReply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match reply.content_type {
        Some(content_type) => {
            (status, [(header::CONTENT_TYPE, content_type)], reply.body).into_response()
        }
        None => status.into_response(),
    }
}
