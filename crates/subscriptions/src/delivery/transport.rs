//! How a notification leaves the process: [`Transport`] (HTTP), implemented by the
//! SSRF-guarded, signing [`flare_outbound::Deliverer`], and [`MailTransport`] (e-mail),
//! implemented by [`flare_outbound::Mailer`]; tests may supply their own.

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

/// One notification e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMail {
    /// The `mailto:` endpoint.
    pub to: String,
    pub subject: String,
    /// The human-readable body.
    pub text: String,
    /// `(content type, body)` of the attached notification Bundle.
    pub attachment: Option<(String, Vec<u8>)>,
}

/// Sends notification e-mails.
#[async_trait]
pub trait MailTransport: Send + Sync + 'static {
    async fn send_mail(&self, mail: OutboundMail) -> Result<(), TransportError>;
}

/// The SMTP mailer (cargo feature `outbound`): the operator's SMTP server; the subscription
/// gives only the one recipient.
#[cfg(feature = "outbound")]
#[async_trait]
impl MailTransport for flare_outbound::Mailer {
    async fn send_mail(&self, mail: OutboundMail) -> Result<(), TransportError> {
        let attachment = mail.attachment.map(|(content_type, body)| {
            let extension = if content_type.contains("xml") {
                "xml"
            } else {
                "json"
            };
            flare_outbound::Attachment {
                filename: format!("notification.{extension}"),
                content_type,
                body: body.into(),
            }
        });
        self.send(&flare_outbound::Mail {
            to: mail.to,
            subject: mail.subject,
            text: mail.text,
            attachment,
        })
        .await
        .map_err(|e| match e {
            flare_outbound::MailError::InvalidRecipient { .. } => {
                TransportError::Refused(e.to_string())
            }
            other => TransportError::Connection(other.to_string()),
        })
    }
}

/// The SSRF-guarded client (cargo feature `outbound`): endpoint policy checked after DNS and
/// on every redirect, and the `X-Hub-Signature` HMAC when the subscription has a secret.
/// Sends `POST` and, for R4 classic `payload` subscriptions, `PUT`.
#[cfg(feature = "outbound")]
#[async_trait]
impl Transport for flare_outbound::Deliverer {
    async fn send(&self, request: OutboundRequest) -> Result<u16, TransportError> {
        let put = match request.method {
            "POST" => false,
            "PUT" => true,
            other => {
                return Err(TransportError::Refused(format!(
                    "{other} deliveries are not supported; the outbound client sends POST and PUT"
                )));
            }
        };
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
        if put {
            post = post.put();
        }
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
