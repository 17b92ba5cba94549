//! The Subscription operations of the backport IG over the delivery runtime: `$status`
//! (instance and type level), `$events`, `$resend`, `$get-ws-binding-token`, and the websocket
//! channel's endpoint. Merged into the application by [`routes`]; more specific than the
//! `/fhir/{*path}` catch-all, so they take precedence.
//!
//! The websocket endpoint is `ws://<host>/fhir/Subscription/$websocket` ([`WEBSOCKET_PATH`]),
//! returned as `websocket-url` by `$get-ws-binding-token`. It speaks the four dialects of
//! [`flare_subscriptions::websocket`]; a token in the URL (`?token=…`, optionally
//! `&lastEventNumber=N` to resume) is checked before the upgrade, and an unknown or expired
//! one is refused with 401. Resume and expiry rules: [`flare_subscriptions::delivery::websocket`].

use axum::{
    Router,
    body::Bytes,
    extract::{
        Path, RawQuery, State,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use flare_service::FhirError;
use flare_subscriptions::{
    ContentLevel,
    delivery::{SubscriptionRuntime, WsSession, WsTokenError},
};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Where websocket clients connect.
pub const WEBSOCKET_PATH: &str = "/fhir/Subscription/$websocket";

/// The R4 extension on `CapabilityStatement.rest` that names the websocket endpoint.
pub const CAPABILITY_WEBSOCKET: &str =
    "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket";

/// The CapabilityStatement's `rest` extensions while subscriptions run: the websocket URL
/// (`ws://` or `wss://` on the FHIR base's host), for
/// `fhir.add_capability_extensions(capability_extensions)`.
pub fn capability_extensions(fhir_base: &str) -> Vec<Value> {
    let (scheme, rest) = match fhir_base.split_once("://") {
        Some(("https", rest)) => ("wss", rest),
        Some((_, rest)) => ("ws", rest),
        None => ("ws", fhir_base),
    };
    let host = rest.split('/').next().unwrap_or(rest);
    if host.is_empty() {
        return Vec::new();
    }
    vec![
        json!({"url": CAPABILITY_WEBSOCKET, "valueUri": format!("{scheme}://{host}{WEBSOCKET_PATH}")}),
    ]
}

/// The operation routes, with the runtime as their state.
pub fn routes(runtime: SubscriptionRuntime) -> Router {
    Router::new()
        .route("/fhir/Subscription/$status", any(type_status))
        .route("/fhir/Subscription/{id}/$status", any(instance_status))
        .route("/fhir/Subscription/{id}/$events", any(events))
        .route("/fhir/Subscription/{id}/$resend", any(resend))
        .route(
            "/fhir/Subscription/$get-ws-binding-token",
            any(type_binding_token),
        )
        .route(
            "/fhir/Subscription/{id}/$get-ws-binding-token",
            any(instance_binding_token),
        )
        .route(WEBSOCKET_PATH, any(websocket))
        .with_state(runtime)
}

fn fhir_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        body.to_string(),
    )
        .into_response()
}

fn failure(error: FhirError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    fhir_json(status, &error.outcome())
}

fn internal(error: impl std::fmt::Display) -> Response {
    failure(FhirError::internal(error.to_string()))
}

/// Query parameters, repeated ones kept, comma-separated values split (FHIR OR).
fn multi(query: &[(String, String)], name: &str) -> Vec<String> {
    query
        .iter()
        .filter(|(k, _)| k == name)
        .flat_map(|(_, v)| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

fn query_pairs(RawQuery(raw): RawQuery) -> Vec<(String, String)> {
    raw.as_deref()
        .map(flare_service::parse_query_string)
        .unwrap_or_default()
}

fn number(query: &[(String, String)], name: &str) -> Result<Option<u64>, Response> {
    match query.iter().find(|(k, _)| k == name) {
        None => Ok(None),
        Some((_, v)) => v.parse::<u64>().map(Some).map_err(|_| {
            failure(FhirError::bad_request(format!(
                "{name} must be a non-negative integer, not `{v}`"
            )))
        }),
    }
}

fn searchset(entries: Vec<Value>) -> Value {
    let total = entries.len();
    let entry: Vec<Value> = entries
        .into_iter()
        .map(|resource| {
            json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
                   "resource": resource, "search": {"mode": "match"}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "searchset", "total": total, "entry": entry})
}

async fn type_status(State(runtime): State<SubscriptionRuntime>, query: RawQuery) -> Response {
    let query = query_pairs(query);
    let ids = multi(&query, "id");
    let statuses = multi(&query, "status");
    let candidates = if ids.is_empty() {
        runtime.subscription_ids()
    } else {
        ids
    };
    let mut entries = Vec::new();
    for id in candidates {
        let info = match runtime.status(&id).await {
            Ok(Some(info)) => info,
            Ok(None) => continue,
            Err(e) => return internal(e),
        };
        if !statuses.is_empty() && !statuses.contains(&info.status) {
            continue;
        }
        match runtime.status_resource(&id).await {
            Ok(Some(resource)) => entries.push(resource),
            Ok(None) => {}
            Err(e) => return internal(e),
        }
    }
    fhir_json(StatusCode::OK, &searchset(entries))
}

fn unknown(id: &str) -> Response {
    failure(FhirError::not_found(format!(
        "Subscription/{id} is not known to the delivery runtime"
    )))
}

async fn instance_status(
    State(runtime): State<SubscriptionRuntime>,
    Path(id): Path<String>,
) -> Response {
    match runtime.status_resource(&id).await {
        Ok(Some(resource)) => fhir_json(StatusCode::OK, &searchset(vec![resource])),
        Ok(None) => unknown(&id),
        Err(e) => internal(e),
    }
}

async fn events(
    State(runtime): State<SubscriptionRuntime>,
    Path(id): Path<String>,
    query: RawQuery,
) -> Response {
    let query = query_pairs(query);
    let since = match number(&query, "eventsSinceNumber") {
        Ok(n) => n.unwrap_or(1),
        Err(response) => return response,
    };
    let until = match number(&query, "eventsUntilNumber") {
        Ok(n) => n.unwrap_or(u64::MAX),
        Err(response) => return response,
    };
    let content = match query
        .iter()
        .find(|(k, _)| k == "content")
        .map(|(_, v)| v.as_str())
    {
        None => None,
        Some(code) if ContentLevel::from_code(code).is_some() => ContentLevel::from_code(code),
        Some(other) => {
            return failure(FhirError::bad_request(format!(
                "content must be empty, id-only or full-resource, not `{other}`"
            )));
        }
    };
    match runtime.events_bundle(&id, since, until, content).await {
        Ok(Some(bundle)) => fhir_json(StatusCode::OK, &bundle),
        Ok(None) => unknown(&id),
        Err(e) => internal(e),
    }
}

async fn resend(
    State(runtime): State<SubscriptionRuntime>,
    Path(id): Path<String>,
    query: RawQuery,
) -> Response {
    let pairs = query_pairs(query);
    let since = match number(&pairs, "eventsSinceNumber") {
        Ok(n) => n.unwrap_or(1),
        Err(response) => return response,
    };
    match runtime.resend(&id, since).await {
        Ok(true) => fhir_json(
            StatusCode::OK,
            &json!({"resourceType": "OperationOutcome", "issue": [{
                "severity": "information", "code": "informational",
                "diagnostics": format!("events from {since} on will be delivered again, in order")}]}),
        ),
        Ok(false) => unknown(&id),
        Err(e) => internal(e),
    }
}

/// The `websocket-url` clients should use: the request's host, `wss` when the configured base
/// URL is https.
fn websocket_url(runtime: &SubscriptionRuntime, headers: &HeaderMap) -> String {
    let base = runtime.base_url();
    let scheme = if base.starts_with("https://") {
        "wss"
    } else {
        "ws"
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            base.split_once("://")
                .map(|(_, rest)| rest.split('/').next().unwrap_or(rest).to_owned())
        })
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{scheme}://{host}{WEBSOCKET_PATH}")
}

fn binding_token(runtime: &SubscriptionRuntime, headers: &HeaderMap, ids: &[String]) -> Response {
    match runtime.issue_ws_token(ids) {
        Ok(token) => fhir_json(
            StatusCode::OK,
            &token.parameters(&websocket_url(runtime, headers)),
        ),
        Err(WsTokenError::Unknown(id)) => unknown(&id),
        Err(e) => failure(FhirError::bad_request(e.to_string())),
    }
}

/// `id` parameters of a POSTed Parameters body (`valueId`, `valueString` or
/// `valueReference`), `Subscription/` prefix removed.
fn body_ids(body: &[u8]) -> Vec<String> {
    let Ok(parameters) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    parameters["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "id")
        .filter_map(|p| {
            p["valueId"]
                .as_str()
                .or_else(|| p["valueString"].as_str())
                .or_else(|| {
                    p.pointer("/valueReference/reference")
                        .and_then(Value::as_str)
                })
        })
        .map(|id| id.trim_start_matches("Subscription/").to_owned())
        .collect()
}

async fn type_binding_token(
    State(runtime): State<SubscriptionRuntime>,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    let mut ids: Vec<String> = multi(&query_pairs(query), "id")
        .into_iter()
        .map(|id| id.trim_start_matches("Subscription/").to_owned())
        .collect();
    ids.extend(body_ids(&body));
    binding_token(&runtime, &headers, &ids)
}

async fn instance_binding_token(
    State(runtime): State<SubscriptionRuntime>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    binding_token(&runtime, &headers, &[id])
}

async fn websocket(
    State(runtime): State<SubscriptionRuntime>,
    query: RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    let (mut session, outgoing) = runtime.open_ws_session();
    if let Some(raw) = query.0.as_deref()
        && let Some(token) = flare_subscriptions::websocket::token_from_query(raw)
    {
        let pairs = flare_service::parse_query_string(raw);
        let resume = match number(&pairs, "lastEventNumber") {
            Ok(n) => n,
            Err(response) => return response,
        };
        if !session.bind_query_token(&token, resume).await {
            return failure(FhirError::new(
                401,
                flare_fhir::IssueCode::Expired,
                "binding token unknown or expired",
            ));
        }
    }
    upgrade.on_upgrade(move |socket| serve_socket(socket, session, outgoing))
}

/// Pumps one connection: a writer task sends the session's frames while this loop feeds it
/// the client's, so a reply waiting for queue space never blocks the queue's draining.
async fn serve_socket(
    socket: WebSocket,
    mut session: WsSession,
    mut outgoing: mpsc::Receiver<String>,
) {
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if sink.send(Message::Text(frame.into())).await.is_err() {
                return;
            }
        }
    });
    while let Some(incoming) = stream.next().await {
        match incoming {
            Ok(Message::Text(text)) => session.handle_text(text.as_str()).await,
            Ok(Message::Close(_)) | Err(_) => break,
            // Pings are answered by the websocket layer; binary frames mean nothing here.
            Ok(_) => {}
        }
        if writer.is_finished() {
            break;
        }
    }
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_url_follows_the_fhir_base() {
        let plain = capability_extensions("http://127.0.0.1:8080/fhir");
        assert_eq!(plain[0]["url"], CAPABILITY_WEBSOCKET);
        assert_eq!(
            plain[0]["valueUri"],
            "ws://127.0.0.1:8080/fhir/Subscription/$websocket"
        );
        let secure = capability_extensions("https://fhir.example.org/fhir");
        assert_eq!(
            secure[0]["valueUri"],
            "wss://fhir.example.org/fhir/Subscription/$websocket"
        );
        assert!(capability_extensions("").is_empty());
    }
}
