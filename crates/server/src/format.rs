//! Request body decoding and response encoding: JSON or XML, pretty or not.

use axum::http::HeaderMap;
use flare_fhir::format::{Format, from_accept, parse as format_of};
use flare_fhir::operation_outcome::IssueCode;
use flare_service::FhirError;
use serde_json::Value;

/// How to render a response: from `_format` (wins) or `Accept`, and `_pretty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rendering {
    pub format: Format,
    pub pretty: bool,
}

impl Rendering {
    pub fn negotiate(headers: &HeaderMap, params: &[(String, String)]) -> Result<Self, FhirError> {
        let pretty = params.iter().any(|(n, v)| n == "_pretty" && v == "true");
        if let Some((_, value)) = params.iter().find(|(n, _)| n == "_format") {
            let format = format_of(value).ok_or_else(|| {
                FhirError::new(
                    406,
                    IssueCode::NotSupported,
                    format!("_format={value} is not supported: use json or xml"),
                )
            })?;
            return Ok(Self { format, pretty });
        }
        let accept = headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // The preferred FHIR format in the client's list; anything else means JSON.
        let format = from_accept(accept).unwrap_or(Format::Json);
        Ok(Self { format, pretty })
    }

    /// Encodes a resource.
    pub fn encode(&self, resource: &Value) -> Result<Vec<u8>, FhirError> {
        match (self.format, self.pretty) {
            (Format::Json, false) => Ok(serde_json::to_vec(resource).unwrap_or_default()),
            (Format::Json, true) => Ok(serde_json::to_vec_pretty(resource).unwrap_or_default()),
            (Format::Xml, _) => flare_fhir::xml::from_json(resource)
                .map(String::into_bytes)
                .map_err(|err| {
                    FhirError::internal(format!("the resource could not be rendered as XML: {err}"))
                }),
        }
    }
}

/// Decodes a request body in the format its `Content-Type` names: 415 for other types, 400
/// for malformed content.
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, FhirError> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = match content_type {
        None => Format::Json,
        Some(ct) => format_of(ct).ok_or_else(|| {
            FhirError::new(
                415,
                IssueCode::NotSupported,
                format!("Content-Type `{ct}` is not supported: send application/fhir+json or application/fhir+xml"),
            )
        })?,
    };
    if body.is_empty() {
        return Err(FhirError::new(
            400,
            IssueCode::Required,
            "the request has no body: send a FHIR resource",
        ));
    }
    match format {
        Format::Json => flare_fhir::parse_json(body).map_err(|err| {
            FhirError::new(
                400,
                IssueCode::Structure,
                format!("the body is not valid JSON: {err}"),
            )
        }),
        Format::Xml => {
            let text = std::str::from_utf8(body).map_err(|_| {
                FhirError::new(400, IssueCode::Structure, "the XML body is not UTF-8 text")
            })?;
            flare_fhir::xml::to_json(text).map_err(|err| {
                FhirError::new(
                    400,
                    IssueCode::Structure,
                    format!("the body is not valid FHIR XML: {err}"),
                )
            })
        }
    }
}
