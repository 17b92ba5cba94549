//! `/fhir/...`: FHIR REST interactions over HTTP.

use axum::{
    body::{Body, to_bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use flare_fhir::operation_outcome::{IssueCode, OperationOutcome};
use flare_service::{
    FhirError, RequestContext, ReturnPreference, SearchRequest, WriteKind, WriteOutcome,
    format_instant, parse_etag, parse_query_string,
};
use flare_store::StoredVersion;
use serde_json::Value;

use crate::{
    AppState,
    format::{Rendering, decode_body},
};

const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a handler produced, before encoding.
enum Reply {
    /// A stored version: the body goes out as stored when no conversion is needed.
    Version {
        status: StatusCode,
        version: StoredVersion,
        location: bool,
    },
    /// A computed resource (Bundle, OperationOutcome, CapabilityStatement).
    Resource {
        status: StatusCode,
        resource: Value,
        headers: Vec<(HeaderName, String)>,
    },
    /// No body.
    Empty {
        status: StatusCode,
        headers: Vec<(HeaderName, String)>,
    },
}

pub(crate) async fn handle(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let params = parts
        .uri
        .query()
        .map(parse_query_string)
        .unwrap_or_default();
    let correlation_id = header_str(&parts.headers, &CORRELATION_ID)
        .or_else(|| header_str(&parts.headers, &REQUEST_ID))
        .filter(|id| id.len() <= 200)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let base_url = match &state.config.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => format!(
            "http://{}/fhir",
            header_str(&parts.headers, &header::HOST).unwrap_or("localhost")
        ),
    };
    let mut ctx = RequestContext::new(base_url);
    ctx.correlation_id = correlation_id.clone();
    ctx.traceparent =
        header_str(&parts.headers, &HeaderName::from_static("traceparent")).map(str::to_owned);
    ctx.strict = prefer(&parts.headers, "handling").as_deref() == Some("strict");

    let (rendering, result) = match Rendering::negotiate(&parts.headers, &params) {
        Ok(rendering) => (
            rendering,
            dispatch(
                &state,
                &ctx,
                &parts.method,
                parts.uri.path(),
                &parts.headers,
                params,
                body,
            )
            .await,
        ),
        Err(err) => (
            Rendering {
                format: flare_fhir::format::Format::Json,
                pretty: false,
            },
            Err(err),
        ),
    };
    let mut response = match result {
        Ok(reply) => encode(reply, &rendering, &ctx.base_url),
        Err(err) => error_response(&err, &rendering),
    };
    state.metrics.record(response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(CORRELATION_ID, value);
    }
    response
}

async fn dispatch(
    state: &AppState,
    ctx: &RequestContext,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    params: Vec<(String, String)>,
    body: Body,
) -> Result<Reply, FhirError> {
    let fhir = &state.fhir;
    let segments: Vec<&str> = path
        .trim_start_matches("/fhir")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let prefer_return = match prefer(headers, "return").as_deref() {
        Some("minimal") => ReturnPreference::Minimal,
        Some("OperationOutcome") => ReturnPreference::OperationOutcome,
        _ => ReturnPreference::Representation,
    };
    let if_match = match header_str(headers, &header::IF_MATCH) {
        Some(tag) => Some(parse_etag(tag).ok_or_else(|| {
            FhirError::bad_request(format!(
                "If-Match `{tag}` is not a version tag: send W/\"<versionId>\""
            ))
        })?),
        None => None,
    };
    let max_body = state.config.max_body_bytes;
    let m = method.clone();
    match (segments.as_slice(), m) {
        ([], Method::GET) => search(fhir, ctx, None, params).await,
        ([], Method::POST) => {
            let bundle = read_resource(headers, body, max_body).await?;
            let response = fhir.process_bundle(ctx, bundle, prefer_return).await?;
            Ok(Reply::Resource {
                status: StatusCode::OK,
                resource: response,
                headers: vec![],
            })
        }
        (["metadata"], Method::GET) => Ok(Reply::Resource {
            status: StatusCode::OK,
            resource: fhir.capability_statement(&ctx.base_url),
            headers: vec![],
        }),
        (["_history"], Method::GET) => history(fhir, ctx, None, None, &params).await,
        (["_search"], Method::POST) => {
            let params = form_params(headers, body, max_body, params).await?;
            search(fhir, ctx, None, params).await
        }
        ([t], Method::GET) => search(fhir, ctx, Some(t), params).await,
        ([t], Method::POST) => {
            let resource = read_resource(headers, body, max_body).await?;
            let if_none_exist = header_str(headers, &HeaderName::from_static("if-none-exist"));
            let outcome = fhir.create(ctx, t, resource, if_none_exist).await?;
            Ok(write_reply(outcome, prefer_return))
        }
        ([t], Method::PUT) if !params.is_empty() => {
            let resource = read_resource(headers, body, max_body).await?;
            let outcome = fhir
                .conditional_update(ctx, t, &params, resource, if_match)
                .await?;
            Ok(write_reply(outcome, prefer_return))
        }
        ([t], Method::DELETE) if !params.is_empty() => {
            let outcome = fhir.conditional_delete(ctx, t, &params).await?;
            Ok(write_reply(outcome, prefer_return))
        }
        ([t, "_search"], Method::POST) => {
            let params = form_params(headers, body, max_body, params).await?;
            search(fhir, ctx, Some(t), params).await
        }
        ([t, "_history"], Method::GET) => history(fhir, ctx, Some(t), None, &params).await,
        ([t, id], Method::GET) => {
            let version = fhir.read(t, id).await?;
            if let Some(tag) = header_str(headers, &header::IF_NONE_MATCH)
                && parse_etag(tag) == Some(version.version_id)
            {
                return Ok(Reply::Empty {
                    status: StatusCode::NOT_MODIFIED,
                    headers: version_headers(&version),
                });
            }
            Ok(Reply::Version {
                status: StatusCode::OK,
                version,
                location: false,
            })
        }
        ([t, id], Method::PUT) => {
            let resource = read_resource(headers, body, max_body).await?;
            let outcome = fhir.update(ctx, t, id, resource, if_match).await?;
            Ok(write_reply(outcome, prefer_return))
        }
        ([t, id], Method::DELETE) => {
            let outcome = fhir.delete(ctx, t, id, if_match).await?;
            Ok(write_reply(outcome, prefer_return))
        }
        ([t, id, "_history"], Method::GET) => history(fhir, ctx, Some(t), Some(id), &params).await,
        ([t, id, "_history", vid], Method::GET) => {
            let version = fhir.vread(t, id, vid).await?;
            Ok(Reply::Version {
                status: StatusCode::OK,
                version,
                location: false,
            })
        }
        (known, method) if is_known_path(known) => Err(FhirError::new(
            405,
            IssueCode::NotSupported,
            format!(
                "{method} is not supported on /fhir/{}; see /fhir/metadata for the interactions each path supports",
                known.join("/")
            ),
        )),
        (unknown, _) => Err(FhirError::not_found(format!(
            "/fhir/{} is not a FHIR endpoint: use [type], [type]/[id], [type]/[id]/_history/[vid], _history or metadata",
            unknown.join("/")
        ))),
    }
}

/// Whether the path has a FHIR shape (so a wrong method is 405, not 404).
fn is_known_path(segments: &[&str]) -> bool {
    match segments {
        [] | ["metadata"] | ["_history"] | ["_search"] => true,
        [t, ..] => flare_fhir::model::is_resource_type(t) && segments.len() <= 4,
    }
}

async fn search(
    fhir: &flare_service::Fhir,
    ctx: &RequestContext,
    t: Option<&str>,
    params: Vec<(String, String)>,
) -> Result<Reply, FhirError> {
    let bundle = fhir
        .search(
            ctx,
            &SearchRequest {
                resource_type: t.map(str::to_owned),
                params,
            },
        )
        .await?;
    Ok(Reply::Resource {
        status: StatusCode::OK,
        resource: bundle,
        headers: vec![],
    })
}

async fn history(
    fhir: &flare_service::Fhir,
    ctx: &RequestContext,
    t: Option<&str>,
    id: Option<&str>,
    params: &[(String, String)],
) -> Result<Reply, FhirError> {
    let bundle = fhir.history(ctx, t, id, params).await?;
    Ok(Reply::Resource {
        status: StatusCode::OK,
        resource: bundle,
        headers: vec![],
    })
}

fn write_reply(outcome: WriteOutcome, prefer: ReturnPreference) -> Reply {
    let status = StatusCode::from_u16(outcome.kind.status()).unwrap_or(StatusCode::OK);
    let headers = outcome
        .version
        .as_ref()
        .map(version_headers)
        .unwrap_or_default();
    match (outcome.kind, outcome.version, prefer) {
        (
            WriteKind::Deleted | WriteKind::NothingToDelete,
            _,
            ReturnPreference::OperationOutcome,
        ) => Reply::Resource {
            status: StatusCode::OK,
            resource: OperationOutcome::information("deleted").to_json(),
            headers,
        },
        (WriteKind::Deleted | WriteKind::NothingToDelete, _, _) | (_, None, _) => Reply::Empty {
            status: StatusCode::NO_CONTENT,
            headers,
        },
        (_, Some(version), ReturnPreference::Representation) => Reply::Version {
            status,
            version,
            location: true,
        },
        (_, Some(version), ReturnPreference::Minimal) => {
            let mut headers = headers;
            headers.push((
                header::LOCATION,
                format!("{}/_history/{}", version.key, version.version_id),
            ));
            Reply::Empty { status, headers }
        }
        (kind, Some(version), ReturnPreference::OperationOutcome) => {
            let mut headers = headers;
            headers.push((
                header::LOCATION,
                format!("{}/_history/{}", version.key, version.version_id),
            ));
            let message = match kind {
                WriteKind::Created => format!("created {}", version.key),
                WriteKind::Unchanged => format!("{} is unchanged: no new version", version.key),
                WriteKind::Existing => format!(
                    "{} already matches the condition: nothing created",
                    version.key
                ),
                _ => format!("updated {}", version.key),
            };
            Reply::Resource {
                status,
                resource: OperationOutcome::information(message).to_json(),
                headers,
            }
        }
    }
}

fn version_headers(version: &StoredVersion) -> Vec<(HeaderName, String)> {
    vec![
        (header::ETAG, format!("W/\"{}\"", version.version_id)),
        (header::LAST_MODIFIED, http_date(version.last_updated_ms)),
    ]
}

fn encode(reply: Reply, rendering: &Rendering, base_url: &str) -> Response {
    match reply {
        Reply::Version {
            status,
            version,
            location,
        } => {
            let mut headers = version_headers(&version);
            if location {
                headers.push((
                    header::LOCATION,
                    format!("{base_url}/{}/_history/{}", version.key, version.version_id),
                ));
            }
            let body = version.body.unwrap_or_default();
            // The stored JSON goes out untouched unless another rendering is asked for.
            if rendering.format == flare_fhir::format::Format::Json && !rendering.pretty {
                return build(status, rendering, headers, body.into_bytes());
            }
            match serde_json::from_str::<Value>(&body)
                .map_err(|e| FhirError::internal(e.to_string()))
                .and_then(|r| rendering.encode(&r))
            {
                Ok(bytes) => build(status, rendering, headers, bytes),
                Err(err) => error_response(&err, rendering),
            }
        }
        Reply::Resource {
            status,
            resource,
            headers,
        } => {
            let headers = absolutise_location(headers, base_url);
            match rendering.encode(&resource) {
                Ok(bytes) => build(status, rendering, headers, bytes),
                Err(err) => error_response(&err, rendering),
            }
        }
        Reply::Empty { status, headers } => {
            let mut response = status.into_response();
            for (name, value) in absolutise_location(headers, base_url) {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
    }
}

fn absolutise_location(
    headers: Vec<(HeaderName, String)>,
    base_url: &str,
) -> Vec<(HeaderName, String)> {
    headers
        .into_iter()
        .map(|(name, value)| {
            if name == header::LOCATION && !value.contains("://") {
                (name, format!("{base_url}/{value}"))
            } else {
                (name, value)
            }
        })
        .collect()
}

fn build(
    status: StatusCode,
    rendering: &Rendering,
    headers: Vec<(HeaderName, String)>,
    body: Vec<u8>,
) -> Response {
    let mut response = (status, body).into_response();
    let map = response.headers_mut();
    map.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(rendering.format.content_type()),
    );
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            map.insert(name, value);
        }
    }
    response
}

fn error_response(err: &FhirError, rendering: &Rendering) -> Response {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let outcome = err.outcome();
    let bytes = rendering
        .encode(&outcome)
        .unwrap_or_else(|_| serde_json::to_vec(&outcome).unwrap_or_default());
    let rendering = if bytes.first() == Some(&b'{') {
        Rendering {
            format: flare_fhir::format::Format::Json,
            ..*rendering
        }
    } else {
        *rendering
    };
    build(status, &rendering, vec![], bytes)
}

/// Reads the body within the size limit (413 beyond it) and decodes it.
async fn read_resource(headers: &HeaderMap, body: Body, limit: usize) -> Result<Value, FhirError> {
    let bytes = read_body(headers, body, limit).await?;
    decode_body(headers, &bytes)
}

async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, FhirError> {
    let declared =
        header_str(headers, &header::CONTENT_LENGTH).and_then(|l| l.parse::<usize>().ok());
    let too_large = || {
        FhirError::new(
            413,
            IssueCode::TooLong,
            format!(
                "the request body is larger than the limit of {limit} bytes; split it (e.g. smaller Bundles) or raise server.max_body_bytes"
            ),
        )
    };
    if declared.is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    to_bytes(body, limit).await.map_err(|_| too_large())
}

/// `POST [type]/_search`: parameters from the form body, after those in the URL.
async fn form_params(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    mut params: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, FhirError> {
    let content_type =
        header_str(headers, &header::CONTENT_TYPE).unwrap_or("application/x-www-form-urlencoded");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(FhirError::new(
            415,
            IssueCode::NotSupported,
            format!(
                "_search takes application/x-www-form-urlencoded parameters, not `{content_type}`"
            ),
        ));
    }
    let bytes = read_body(headers, body, limit).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| FhirError::bad_request("the form body is not UTF-8"))?;
    params.extend(parse_query_string(text));
    Ok(params)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A `Prefer` header preference value: `Prefer: return=minimal, handling=strict`.
fn prefer(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|pref| {
            let (key, value) = pref.trim().split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"').to_owned())
        })
}

/// RFC 7231 HTTP-date for `Last-Modified`.
fn http_date(ms: i64) -> String {
    use time::{OffsetDateTime, macros::format_description};
    let format = format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format_instant(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_rfc7231() {
        assert_eq!(http_date(784_111_777_000), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn prefer_values_are_found_among_several() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "prefer",
            HeaderValue::from_static("return=minimal, handling=strict"),
        );
        assert_eq!(prefer(&headers, "handling").as_deref(), Some("strict"));
        assert_eq!(prefer(&headers, "return").as_deref(), Some("minimal"));
        assert_eq!(prefer(&headers, "respond-async"), None);
    }
}
