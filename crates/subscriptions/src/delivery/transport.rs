//! How a notification leaves the process. [`Transport`] is the seam for the SSRF-guarded,
//! signing client; [`PlainHttp`] is a direct HTTP client without that guard.

use std::time::Duration;

use async_trait::async_trait;

/// One outbound HTTP request.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Empty for the R4 classic empty-body POST.
    pub body: Vec<u8>,
    pub timeout: Duration,
    /// HMAC-SHA256 secret for `X-Hub-Signature`, when the subscription has one.
    pub secret: Option<String>,
}

/// Why a request did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("endpoint refused by policy: {0}")]
    Refused(String),
    #[error("{0}")]
    Connection(String),
}

/// Sends requests; implementations enforce the endpoint policy.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The HTTP status the endpoint answered.
    async fn send(&self, request: OutboundRequest) -> Result<u16, TransportError>;
}

/// A plain HTTP client: no allow-list, no signature. Suitable for tests and trusted networks
/// only; production wiring supplies the guarded client.
#[derive(Clone, Default)]
pub struct PlainHttp {
    client: reqwest::Client,
}

#[async_trait]
impl Transport for PlainHttp {
    async fn send(&self, request: OutboundRequest) -> Result<u16, TransportError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|e| TransportError::Connection(e.to_string()))?;
        let mut builder = self
            .client
            .request(method, &request.url)
            .timeout(request.timeout)
            .body(request.body);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        match builder.send().await {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) if e.is_timeout() => Err(TransportError::Timeout(request.timeout)),
            Err(e) => Err(TransportError::Connection(e.to_string())),
        }
    }
}
