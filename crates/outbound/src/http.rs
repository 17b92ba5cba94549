//! HTTP calls to user-supplied endpoints through the [`EndpointPolicy`].
//!
//! How the guard holds:
//! - Every URL, the first and each redirect target, passes [`EndpointPolicy::check_parsed`].
//! - Host names are resolved by the HTTP client's own DNS resolver, which is the policy
//!   ([`EndpointPolicy::resolve_host`]): the addresses checked are the addresses connected to,
//!   with no second lookup an attacker could answer differently (DNS rebinding). IP-literal
//!   hosts never reach a resolver; `check_parsed` has checked them.
//! - Plain `http` and `https` use separate clients: the `http` client's resolver admits only
//!   allow-listed addresses, so `http` cannot reach a public address even if a name changes.
//! - Proxies from the environment are ignored: a proxy would connect on our behalf to an
//!   address we never checked.
//! - Redirects are followed by this module, never by the client: at most
//!   [`DeliveryConfig::max_redirects`] hops, each re-checked. A `GET` follows 301, 302, 303,
//!   307 and 308; a `POST` follows only 307 and 308 (same method, same body, same signature),
//!   because the 301/302/303 rewrite to `GET` would drop the notification while looking
//!   delivered; a `POST` answered 301/302/303 is [`Outcome::UnfollowedRedirect`]. On a hop to
//!   another origin the caller's extra headers (often credentials meant for the first
//!   endpoint) are dropped.
//! - Nothing here logs header values, secrets or bodies.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::policy::{CheckedUrl, EndpointPolicy, Refusal, socket_addrs};
use crate::signature::{SIGNATURE_HEADER, Secret, hub_signature};

/// Settings of a [`Deliverer`]. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Longest a call may take per hop: connecting, sending, and reading the response
    /// headers and body, in milliseconds. Default 10000.
    pub timeout_ms: u64,
    /// Longest the TCP (and TLS) connect may take, in milliseconds. Default 5000.
    pub connect_timeout_ms: u64,
    /// Redirects followed, each re-checked against the policy; 0 follows none. Default 3.
    pub max_redirects: u8,
    /// Bytes of a response body kept in [`Delivery::body`]; the rest is not read.
    /// Default 65536.
    pub max_response_bytes: usize,
    /// `User-Agent` of every call. Default `Flare/<version>`.
    pub user_agent: String,
    /// PEM files of CA certificates trusted for https besides the platform's trust store
    /// (a private CA). Default: none.
    pub extra_root_certificates: Vec<PathBuf>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            max_redirects: 3,
            max_response_bytes: 64 * 1024,
            user_agent: concat!("Flare/", env!("CARGO_PKG_VERSION")).to_owned(),
            extra_root_certificates: Vec::new(),
        }
    }
}

/// The client could not be built (TLS setup); a startup error, not a delivery outcome.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read CA certificates from {path}: {reason}")]
    RootCertificates { path: PathBuf, reason: String },
    #[error("HTTP client setup failed: {0}")]
    Client(#[from] reqwest::Error),
}

/// What became of one call, as a value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A 2xx answer.
    Success { status: u16 },
    /// A 4xx answer.
    ClientError { status: u16 },
    /// A 5xx answer.
    ServerError { status: u16 },
    /// A redirect that was not followed (see the module docs), or another 1xx/3xx status.
    UnfollowedRedirect { status: u16 },
    /// No complete answer within the timeout.
    Timeout,
    /// The destination refused the TCP connection.
    ConnectionRefused,
    /// Another transport failure: DNS failure, reset, TLS error. `reason` holds no URL.
    ConnectionFailed { reason: String },
    /// The policy refused the endpoint or a redirect target; nothing was sent there.
    Refused(Refusal),
    /// The request itself cannot be sent: a header name or value, or the content type, is
    /// not valid HTTP (e.g. contains a line break). Nothing was sent.
    InvalidRequest { reason: String },
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success { .. })
    }

    /// Whether trying again later may succeed: 5xx, 408, 429, timeouts and transport
    /// failures. A refusal, another 4xx or an unfollowed redirect needs the endpoint changed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ServerError { .. }
            | Self::Timeout
            | Self::ConnectionRefused
            | Self::ConnectionFailed { .. } => true,
            Self::ClientError { status } => *status == 408 || *status == 429,
            Self::Success { .. }
            | Self::UnfollowedRedirect { .. }
            | Self::Refused(_)
            | Self::InvalidRequest { .. } => false,
        }
    }

    /// The HTTP status of the last answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Success { status }
            | Self::ClientError { status }
            | Self::ServerError { status }
            | Self::UnfollowedRedirect { status } => Some(*status),
            _ => None,
        }
    }

    fn from_status(status: StatusCode) -> Self {
        let status = status.as_u16();
        match status {
            200..=299 => Self::Success { status },
            400..=499 => Self::ClientError { status },
            500..=599 => Self::ServerError { status },
            _ => Self::UnfollowedRedirect { status },
        }
    }
}

/// The result of a call: the outcome, where it ended and what the endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub outcome: Outcome,
    /// The URL of the last hop tried; `None` when the first URL was refused unparsed.
    pub final_url: Option<Url>,
    /// Redirects followed.
    pub redirects: u8,
    /// The start of the last response body, at most [`DeliveryConfig::max_response_bytes`].
    pub body: Bytes,
}

impl Delivery {
    fn failed(outcome: Outcome, final_url: Option<Url>, redirects: u8) -> Self {
        Self {
            outcome,
            final_url,
            redirects,
            body: Bytes::new(),
        }
    }
}

/// The method of a [`Post`]: `POST` for notifications, `PUT` for the R4 rest-hook habit of
/// writing `[endpoint]/[type]/[id]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMethod {
    #[default]
    Post,
    Put,
}

/// A `POST` (or `PUT`) of a notification. Its `Debug` form shows header names but not their
/// values.
#[derive(Clone)]
pub struct Post {
    pub url: String,
    /// Default `POST`.
    pub method: WriteMethod,
    pub body: Bytes,
    /// `Content-Type`, e.g. `application/fhir+json`.
    pub content_type: String,
    /// Extra headers (`Subscription.channel.header`, `Authorization`): sent to the first
    /// origin only. Their values are never logged.
    pub headers: Vec<(String, String)>,
    /// When set, `X-Hub-Signature: sha256=<hex HMAC-SHA256 of body>` is added.
    pub secret: Option<Secret>,
    /// Overrides [`DeliveryConfig::timeout_ms`] for this call.
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for Post {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Post")
            .field("url", &self.url)
            .field("method", &self.method)
            .field("content_type", &self.content_type)
            .field("body_bytes", &self.body.len())
            .field("header_names", &header_names)
            .field("signed", &self.secret.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Post {
    pub fn new(url: impl Into<String>, content_type: impl Into<String>, body: Bytes) -> Self {
        Self {
            url: url.into(),
            method: WriteMethod::Post,
            body,
            content_type: content_type.into(),
            headers: Vec::new(),
            secret: None,
            timeout: None,
        }
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends with `PUT` instead of `POST`.
    pub fn put(mut self) -> Self {
        self.method = WriteMethod::Put;
        self
    }

    pub fn signed_with(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// The query of a WebSub/FHIRcast intent verification `GET` (FHIRcast STU1/STU2 webhook
/// channel): `hub.mode`, `hub.topic`, `hub.events`, `hub.challenge`, `hub.lease_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IntentVerification {
    /// `subscribe`, `unsubscribe` or `denied`.
    pub mode: String,
    pub topic: String,
    /// Comma-separated event names.
    pub events: String,
    /// The random string the subscriber must echo.
    pub challenge: String,
    pub lease_seconds: Option<u64>,
    /// Sent with `hub.mode=denied`.
    pub reason: Option<String>,
}

/// What the subscriber did with an intent verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentResult {
    /// A 2xx answer whose body is exactly the challenge.
    Confirmed,
    /// A 2xx answer with another body: the subscriber did not confirm.
    ChallengeMismatch,
    /// No 2xx answer, or the call failed or was refused.
    NotConfirmed(Outcome),
}

/// Makes guarded HTTP calls. Cheap to clone; keeps connections alive per destination.
#[derive(Clone)]
pub struct Deliverer {
    policy: EndpointPolicy,
    https: reqwest::Client,
    plain_http: reqwest::Client,
    config: Arc<DeliveryConfig>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("policy", &self.policy)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The HTTP client's resolver: the policy, so checked addresses are connected addresses.
struct GuardedResolver {
    policy: EndpointPolicy,
    plain_http: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let plain_http = self.plain_http;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = policy.resolve_host(&host, plain_http).await?;
            Ok(Box::new(socket_addrs(&addresses).into_iter()) as Addrs)
        })
    }
}

impl Deliverer {
    /// Builds the clients: https through the system's TLS library (OpenSSL) and trust store,
    /// plus any extra CA certificates from the config.
    pub fn new(policy: EndpointPolicy, config: DeliveryConfig) -> Result<Self, BuildError> {
        let extra_roots = load_root_certificates(&config.extra_root_certificates)?;
        let client = |plain_http: bool| {
            let mut builder = reqwest::Client::builder()
                .tls_backend_native()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(Duration::from_millis(config.timeout_ms))
                .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
                .user_agent(config.user_agent.clone())
                .dns_resolver(Arc::new(GuardedResolver {
                    policy: policy.clone(),
                    plain_http,
                }));
            for root in &extra_roots {
                builder = builder.add_root_certificate(root.clone());
            }
            builder.build()
        };
        let https = client(false)?;
        let plain_http = client(true)?;
        Ok(Self {
            policy,
            https,
            plain_http,
            config: Arc::new(config),
        })
    }

    pub fn policy(&self) -> &EndpointPolicy {
        &self.policy
    }

    /// `POST`s (or `PUT`s) a notification, following allowed redirects.
    pub async fn post(&self, post: &Post) -> Delivery {
        let mut headers = HeaderMap::new();
        for (name, value) in &post.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(mut value)) => {
                    value.set_sensitive(true);
                    headers.append(name, value);
                }
                _ => {
                    let reason = format!("header `{name}` has an invalid name or value");
                    return Delivery::failed(Outcome::InvalidRequest { reason }, None, 0);
                }
            }
        }
        let mut fixed = HeaderMap::new();
        match HeaderValue::from_str(&post.content_type) {
            Ok(value) => {
                fixed.insert(reqwest::header::CONTENT_TYPE, value);
            }
            Err(_) => {
                let reason = format!("content type `{}` is not a valid header", post.content_type);
                return Delivery::failed(Outcome::InvalidRequest { reason }, None, 0);
            }
        }
        if let Some(secret) = &post.secret {
            let signature = hub_signature(secret, &post.body);
            if let Ok(value) = HeaderValue::from_str(&signature) {
                fixed.insert(SIGNATURE_HEADER, value);
            }
        }
        let method = match post.method {
            WriteMethod::Post => Method::POST,
            WriteMethod::Put => Method::PUT,
        };
        let call = Call {
            method,
            body: Some(post.body.clone()),
            fixed,
            extra: headers,
            timeout: post.timeout,
        };
        self.run(&post.url, call).await
    }

    /// `GET`s `url` with `query` appended, following allowed redirects.
    pub async fn get(&self, url: &str, query: &[(&str, &str)]) -> Delivery {
        let url = match self.policy.check_url(url) {
            Ok(checked) => {
                let mut url = checked.into_url();
                if !query.is_empty() {
                    url.query_pairs_mut().extend_pairs(query);
                }
                url
            }
            Err(refusal) => return Delivery::failed(Outcome::Refused(refusal), None, 0),
        };
        let call = Call {
            method: Method::GET,
            body: None,
            fixed: HeaderMap::new(),
            extra: HeaderMap::new(),
            timeout: None,
        };
        self.run(url.as_str(), call).await
    }

    /// FHIRcast webhook intent verification: `GET callback?hub.mode=..&hub.challenge=..`;
    /// confirmed when the answer is 2xx with the challenge as its body.
    pub async fn verify_intent(&self, callback: &str, intent: &IntentVerification) -> IntentResult {
        let lease = intent.lease_seconds.map(|s| s.to_string());
        let mut query = vec![
            ("hub.mode", intent.mode.as_str()),
            ("hub.topic", intent.topic.as_str()),
            ("hub.events", intent.events.as_str()),
            ("hub.challenge", intent.challenge.as_str()),
        ];
        if let Some(lease) = &lease {
            query.push(("hub.lease_seconds", lease));
        }
        if let Some(reason) = &intent.reason {
            query.push(("hub.reason", reason));
        }
        let delivery = self.get(callback, &query).await;
        if !delivery.outcome.is_success() {
            return IntentResult::NotConfirmed(delivery.outcome);
        }
        if delivery.body.trim_ascii() == intent.challenge.as_bytes() {
            IntentResult::Confirmed
        } else {
            IntentResult::ChallengeMismatch
        }
    }

    async fn run(&self, url: &str, call: Call) -> Delivery {
        let mut checked = match self.policy.check_url(url) {
            Ok(checked) => checked,
            Err(refusal) => return Delivery::failed(Outcome::Refused(refusal), None, 0),
        };
        let first_origin = checked.url().origin();
        let mut redirects = 0u8;
        loop {
            let same_origin = checked.url().origin() == first_origin;
            let response = match self.send(&checked, &call, same_origin).await {
                Ok(response) => response,
                Err(outcome) => {
                    return Delivery::failed(outcome, Some(checked.into_url()), redirects);
                }
            };
            let status = response.status();
            let follows = match status.as_u16() {
                307 | 308 => true,
                301..=303 => call.method == Method::GET,
                _ => false,
            };
            if !follows {
                let outcome = Outcome::from_status(status);
                tracing::debug!(
                    host = checked.url().host_str().unwrap_or_default(),
                    status = status.as_u16(),
                    redirects,
                    "outbound call answered"
                );
                let body = self.read_body(response).await;
                return Delivery {
                    outcome,
                    final_url: Some(checked.into_url()),
                    redirects,
                    body,
                };
            }
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|location| checked.url().join(location).ok());
            let Some(next) = location else {
                let refusal = Refusal::BadRedirect {
                    status: status.as_u16(),
                };
                return Delivery::failed(
                    Outcome::Refused(refusal),
                    Some(checked.into_url()),
                    redirects,
                );
            };
            if redirects >= self.config.max_redirects {
                let refusal = Refusal::TooManyRedirects {
                    max: self.config.max_redirects,
                };
                return Delivery::failed(Outcome::Refused(refusal), Some(next), redirects);
            }
            redirects += 1;
            checked = match self.policy.check_parsed(next.clone()) {
                Ok(checked) => checked,
                Err(refusal) => {
                    return Delivery::failed(Outcome::Refused(refusal), Some(next), redirects);
                }
            };
        }
    }

    async fn send(
        &self,
        url: &CheckedUrl,
        call: &Call,
        same_origin: bool,
    ) -> Result<reqwest::Response, Outcome> {
        let client = if url.is_plain_http() {
            &self.plain_http
        } else {
            &self.https
        };
        let mut request = client
            .request(call.method.clone(), url.url().clone())
            .headers(call.fixed.clone());
        if same_origin {
            request = request.headers(call.extra.clone());
        }
        if let Some(body) = &call.body {
            request = request.body(body.clone());
        }
        if let Some(timeout) = call.timeout {
            request = request.timeout(timeout);
        }
        request.send().await.map_err(|error| {
            let outcome = classify_error(&error);
            tracing::debug!(
                host = url.url().host_str().unwrap_or_default(),
                outcome = ?outcome,
                "outbound call failed"
            );
            outcome
        })
    }

    /// Reads at most `max_response_bytes`; a body that fails half-way is kept as read.
    async fn read_body(&self, mut response: reqwest::Response) -> Bytes {
        let limit = self.config.max_response_bytes;
        let mut body = Vec::new();
        while body.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = limit - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        Bytes::from(body)
    }
}

fn load_root_certificates(paths: &[PathBuf]) -> Result<Vec<reqwest::Certificate>, BuildError> {
    let mut certificates = Vec::new();
    for path in paths {
        let error = |reason: String| BuildError::RootCertificates {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
        let found =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| error(e.to_string()))?;
        if found.is_empty() {
            return Err(error("no PEM certificate in the file".to_owned()));
        }
        certificates.extend(found);
    }
    Ok(certificates)
}

/// One request as repeated on each redirect hop.
struct Call {
    method: Method,
    body: Option<Bytes>,
    /// Sent on every hop: content type and signature.
    fixed: HeaderMap,
    /// Sent to the first origin only.
    extra: HeaderMap,
    timeout: Option<Duration>,
}

fn classify_error(error: &reqwest::Error) -> Outcome {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut refused = false;
    while let Some(current) = source {
        if let Some(refusal) = current.downcast_ref::<Refusal>() {
            return match refusal {
                // A name that does not resolve now may resolve later.
                Refusal::Unresolvable { .. } => Outcome::ConnectionFailed {
                    reason: refusal.to_string(),
                },
                _ => Outcome::Refused(refusal.clone()),
            };
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = current.source();
    }
    if error.is_timeout() {
        Outcome::Timeout
    } else if refused {
        Outcome::ConnectionRefused
    } else {
        Outcome::ConnectionFailed {
            reason: error_chain(error),
        }
    }
}

/// `connection failed: cause: cause`; the top error's own text would carry the URL, whose query
/// may hold a token, so only its kind is kept.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = String::from(if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(error);
    while let Some(current) = source {
        text.push_str(": ");
        text.push_str(&current.to_string());
        source = current.source();
    }
    text
}
