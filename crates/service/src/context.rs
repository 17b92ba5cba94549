//! Who asked, and on whose behalf: what travels from a request into its events.

/// Request-scoped facts that end up in change events and responses.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The correlation id: from `X-Correlation-Id` / `X-Request-Id`, or generated.
    pub correlation_id: String,
    /// W3C `traceparent` of the request, carried into event headers.
    pub traceparent: Option<String>,
    /// The base URL of the FHIR endpoint as the client sees it, e.g. `http://127.0.0.1:8080/fhir`.
    pub base_url: String,
    /// `Prefer: handling=strict`: unknown search parameters are errors.
    pub strict: bool,
}

impl RequestContext {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            correlation_id: uuid::Uuid::new_v4().to_string(),
            traceparent: None,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            strict: false,
        }
    }
}
