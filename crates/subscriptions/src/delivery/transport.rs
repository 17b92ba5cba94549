//! How a notification leaves the process: [`Transport`], implemented by the SSRF-guarded,
//! signing [`flare_outbound::Deliverer`] (tests may supply their own).

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

/// The SSRF-guarded client (cargo feature `outbound`): endpoint policy checked after DNS and on every redirect, and the
/// `X-Hub-Signature` HMAC when the subscription has a secret. It sends `POST` only, so the R4
/// classic `PUT [endpoint]/[type]/[id]` (a `payload` without topic) is refused.
#[cfg(feature = "outbound")]
#[async_trait]
impl Transport for flare_outbound::Deliverer {
    async fn send(&self, request: OutboundRequest) -> Result<u16, TransportError> {
        if request.method != "POST" {
            return Err(TransportError::Refused(format!(
                "{} deliveries are not supported; the outbound client sends POST only",
                request.method
            )));
        }
        let mut content_type = "application/fhir+json".to_owned();
        let mut post_headers = Vec::new();
        for (name, value) in request.headers {
            if name.eq_ignore_ascii_case("content-type") {
                content_type = value;
            } else {
                post_headers.push((name, value));
            }
        }
        let mut post = flare_outbound::Post::new(request.url, content_type, request.body.into())
            .timeout(request.timeout);
        for (name, value) in post_headers {
            post = post.header(name, value);
        }
        if let Some(secret) = request.secret {
            post = post.signed_with(flare_outbound::Secret::from(secret));
        }
        let delivery = self.post(&post).await;
        if let Some(status) = delivery.outcome.status() {
            return Ok(status);
        }
        Err(match delivery.outcome {
            flare_outbound::Outcome::Timeout => TransportError::Timeout(request.timeout),
            flare_outbound::Outcome::Refused(refusal) => {
                TransportError::Refused(refusal.to_string())
            }
            other => TransportError::Connection(format!("{other:?}")),
        })
    }
}
