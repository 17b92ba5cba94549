//! `mailto:` notifications over SMTP.
//!
//! The SMTP server is the operator's (configuration), not the user's, so it is not subject to
//! the [`EndpointPolicy`](crate::EndpointPolicy); the user supplies only the recipient, which
//! must be exactly one valid address (no `mailto:` header fields, no second recipient), so a
//! subscription cannot add `Bcc:` or rewrite the subject.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with `STARTTLS`, which the server must offer. Port 587.
    #[default]
    Starttls,
    /// TLS from the first byte ("SMTPS"). Port 465.
    Tls,
    /// No encryption: only for a relay on the same host or a test server. Port 25.
    None,
}

impl SmtpSecurity {
    fn default_port(self) -> u16 {
        match self {
            Self::Starttls => 587,
            Self::Tls => 465,
            Self::None => 25,
        }
    }
}

/// The SMTP server notifications are sent through. Every field has a default.
///
/// ```toml
/// host = "smtp.example.org"
/// security = "starttls"     # starttls | tls | none
/// username = "flare"
/// password = "..."
/// from = "Flare <flare@example.org>"
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// Server host name or address. Default `localhost`.
    pub host: String,
    /// Server port. Default: 587 for `starttls`, 465 for `tls`, 25 for `none`.
    pub port: Option<u16>,
    /// Default `starttls`.
    pub security: SmtpSecurity,
    /// Login; authentication is used when both this and `password` are set. Default none.
    pub username: Option<String>,
    /// Never logged (the `Debug` form hides it). Default none.
    pub password: Option<String>,
    /// The `From:` of every notification. Default `Flare <flare@localhost>`.
    pub from: String,
    /// Longest one SMTP command may wait for the server, in milliseconds. Default 30000.
    pub timeout_ms: u64,
    /// PEM files of CA certificates trusted for the server's certificate besides the
    /// platform's trust store (a private CA). Default: none.
    pub extra_root_certificates: Vec<PathBuf>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: "localhost".to_owned(),
            port: None,
            security: SmtpSecurity::default(),
            username: None,
            password: None,
            from: "Flare <flare@localhost>".to_owned(),
            timeout_ms: 30_000,
            extra_root_certificates: Vec::new(),
        }
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("from", &self.from)
            .field("timeout_ms", &self.timeout_ms)
            .field("extra_root_certificates", &self.extra_root_certificates)
            .finish()
    }
}

/// A file attached to a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub filename: String,
    /// e.g. `application/fhir+json`.
    pub content_type: String,
    pub body: Bytes,
}

impl Attachment {
    /// A notification Bundle as `notification.json`, `application/fhir+json`.
    pub fn fhir_bundle(body: Bytes) -> Self {
        Self {
            filename: "notification.json".to_owned(),
            content_type: "application/fhir+json".to_owned(),
            body,
        }
    }
}

/// One notification e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// `mailto:alice@example.org` or `alice@example.org`.
    pub to: String,
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    pub attachment: Option<Attachment>,
}

/// Why a mail was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MailError {
    /// The recipient is not one plain address; the user must fix the endpoint.
    #[error("`{endpoint}` is not a single e-mail address: {reason}")]
    InvalidRecipient { endpoint: String, reason: String },
    /// The configured `from` address is invalid: an operator error.
    #[error("the configured sender `{from}` is not a valid address: {reason}")]
    InvalidSender { from: String, reason: String },
    /// The message could not be built (e.g. an attachment content type that is not a MIME
    /// type).
    #[error("cannot build the message: {0}")]
    Message(String),
    /// The server refused the message or the connection failed. [`is_retryable`] tells
    /// whether trying later may help.
    ///
    /// [`is_retryable`]: MailError::is_retryable
    #[error("SMTP delivery failed: {reason}")]
    Smtp { reason: String, retryable: bool },
}

impl MailError {
    /// SMTP 4xx, timeouts and connection failures may pass later; a 5xx or an invalid
    /// address will not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Smtp {
                retryable: true,
                ..
            }
        )
    }
}

/// The recipient of a `mailto:` endpoint: exactly one address, nothing else.
pub fn parse_recipient(endpoint: &str) -> Result<Mailbox, MailError> {
    let invalid = |reason: &str| MailError::InvalidRecipient {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = endpoint.trim();
    let address = match trimmed.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("mailto:") => &trimmed[7..],
        _ => trimmed,
    };
    if address.contains('?') {
        return Err(invalid(
            "mailto header fields (`?subject=`, `?cc=`, ...) are not accepted",
        ));
    }
    let address = percent_decode(address).ok_or_else(|| invalid("bad percent-encoding"))?;
    if address.contains(',') || address.contains(';') {
        return Err(invalid("only one recipient is accepted"));
    }
    if address
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>')
    {
        return Err(invalid("the address contains forbidden characters"));
    }
    address
        .parse::<lettre::Address>()
        .map(|address| Mailbox::new(None, address))
        .map_err(|e| invalid(&e.to_string()))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Sends notification e-mails through one SMTP server; keeps a small connection pool.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    host: String,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("host", &self.host)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Checks the configuration; connects only when the first mail is sent.
    pub fn new(config: &SmtpConfig) -> Result<Self, MailError> {
        let from = config
            .from
            .parse::<Mailbox>()
            .map_err(|e| MailError::InvalidSender {
                from: config.from.clone(),
                reason: e.to_string(),
            })?;
        let tls_parameters = || {
            let tls_error = |reason: String| MailError::Smtp {
                reason: format!("TLS setup: {reason}"),
                retryable: false,
            };
            let mut builder = TlsParameters::builder(config.host.clone());
            for path in &config.extra_root_certificates {
                let pem = std::fs::read(path)
                    .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
                let certificate = Certificate::from_pem(&pem)
                    .map_err(|e| tls_error(format!("{}: {e}", path.display())))?;
                builder = builder.add_root_certificate(certificate);
            }
            builder.build().map_err(|e| tls_error(e.to_string()))
        };
        let tls = match config.security {
            SmtpSecurity::Starttls => Tls::Required(tls_parameters()?),
            SmtpSecurity::Tls => Tls::Wrapper(tls_parameters()?),
            SmtpSecurity::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port.unwrap_or(config.security.default_port()))
            .tls(tls)
            .timeout(Some(Duration::from_millis(config.timeout_ms)));
        if let (Some(username), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(username.clone(), password.clone()));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            host: config.host.clone(),
        })
    }

    /// Builds and sends one mail.
    pub async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let to = parse_recipient(&mail.to)?;
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone());
        let text = SinglePart::plain(mail.text.clone());
        let message = match &mail.attachment {
            None => builder.singlepart(text),
            Some(attachment) => {
                let content_type = ContentType::parse(&attachment.content_type)
                    .map_err(|e| MailError::Message(e.to_string()))?;
                let part = lettre::message::Attachment::new(attachment.filename.clone())
                    .body(attachment.body.to_vec(), content_type);
                builder.multipart(MultiPart::mixed().singlepart(text).singlepart(part))
            }
        }
        .map_err(|e| MailError::Message(e.to_string()))?;
        match self.transport.send(message).await {
            Ok(_) => {
                tracing::debug!(smtp_host = %self.host, "notification mail sent");
                Ok(())
            }
            Err(error) => {
                tracing::debug!(smtp_host = %self.host, %error, "notification mail failed");
                Err(MailError::Smtp {
                    retryable: !error.is_permanent(),
                    reason: error.to_string(),
                })
            }
        }
    }
}
