//! The Subscription operations of the backport IG over the delivery runtime: `$status`
//! (instance and type level), `$events` and `$resend`. Merged into the application by
//! [`routes`]; more specific than the `/fhir/{*path}` catch-all, so they take precedence.

use axum::{
    Router,
    extract::{Path, RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::any,
};
use flare_service::FhirError;
use flare_subscriptions::delivery::{Content, SubscriptionRuntime};
use serde_json::{Value, json};

/// The operation routes, with the runtime as their state.
pub fn routes(runtime: SubscriptionRuntime) -> Router {
    Router::new()
        .route("/fhir/Subscription/$status", any(type_status))
        .route("/fhir/Subscription/{id}/$status", any(instance_status))
        .route("/fhir/Subscription/{id}/$events", any(events))
        .route("/fhir/Subscription/{id}/$resend", any(resend))
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
        Some("empty") => Some(Content::Empty),
        Some("id-only") => Some(Content::IdOnly),
        Some("full-resource") => Some(Content::FullResource),
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
