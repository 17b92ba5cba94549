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
/// - `GET {hub}/STU2/{topic}`: current context as a bare array (STU2-era clients)
/// - `GET {hub}/ws/{endpoint}`: a subscriber's WebSocket
/// - `GET {hub}/sandbox`: the sandbox page (so `GET` of a topic named `sandbox` shows the page)
///
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
    let root = if path.is_empty() {
        "/".to_string()
    } else {
        path.clone()
    };
    Router::new()
        .route(
            &format!("{path}/.well-known/fhircast-configuration"),
            get(discovery),
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
            get(sandbox).post(publish_to_sandbox_topic),
        )
        .layer(CorsLayer::permissive())
        .with_state(state)
}

async fn discovery(State(state): State<HubState>) -> Response {
    axum::Json(state.hub.discovery()).into_response()
}

async fn sandbox() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        flare_fhircast::SANDBOX_PAGE,
    )
        .into_response()
}

/// The page's static route shadows `POST {hub}/{topic}` for the topic `sandbox`; keep publishing
/// to it working.
async fn publish_to_sandbox_topic(State(state): State<HubState>, body: Bytes) -> Response {
    to_response(state.hub.publish(Some("sandbox"), &body))
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
            to_response(state.hub.subscribe(&body, &endpoint_base))
        }
        "application/json" | "application/fhir+json" => to_response(state.hub.publish(None, &body)),
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
    to_response(state.hub.publish(Some(&topic), &body))
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
    // Refuse before upgrading so an unknown endpoint is a plain 404.
    if !state.hub.endpoint_is_live(&endpoint) {
        return (
            StatusCode::NOT_FOUND,
            "no live subscription has this endpoint",
        )
            .into_response();
    }
    upgrade.on_upgrade(move |socket| run_socket(state.hub, endpoint, socket, state.ping_interval))
}

/// Pings in a row a socket may leave unanswered before it counts as dropped.
const MAX_MISSED_PONGS: u32 = 2;

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
            command = session.commands.recv() => match command {
                Some(SocketCommand::Text(text)) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        hub.closed(connection, None);
                        return;
                    }
                }
                Some(SocketCommand::Close { code, reason }) => {
                    // The hub already ended the subscription.
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame { code, reason: reason.into() })))
                        .await;
                    return;
                }
                None => return,
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
