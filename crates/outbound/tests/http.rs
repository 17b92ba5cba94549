//! Guarded HTTP delivery against real receivers on loopback addresses.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use flare_outbound::{
    AddressClass, Deliverer, DeliveryConfig, EndpointPolicy, HostLookup, IntentResult,
    IntentVerification, Outcome, Post, Refusal, SIGNATURE_HEADER, Secret, verify_hub_signature,
};

#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Receiver {
    fn record(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) {
        self.requests.lock().unwrap().push(Recorded {
            method,
            uri,
            headers,
            body,
        });
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn hook(
    State(receiver): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    receiver.record(method, uri, headers, body);
    "received"
}

async fn status(
    State(receiver): State<Receiver>,
    Path(code): Path<u16>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    receiver.record(method, uri, headers, body);
    StatusCode::from_u16(code).unwrap()
}

/// `/redirect/{code}?to=<url>`.
async fn redirect(
    State(receiver): State<Receiver>,
    Path(code): Path<u16>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    receiver.record(method, uri, headers, body);
    let to = query.get("to").cloned().unwrap_or_default();
    (
        StatusCode::from_u16(code).unwrap(),
        [(axum::http::header::LOCATION, to)],
    )
        .into_response()
}

async fn hang(
    State(receiver): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    receiver.record(method, uri, headers, body);
    std::future::pending::<()>().await;
    "never"
}

/// Echoes `hub.challenge` as a FHIRcast subscriber confirming its intent does.
async fn verify(
    State(receiver): State<Receiver>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> String {
    receiver.record(method, uri, headers, Bytes::new());
    query.get("hub.challenge").cloned().unwrap_or_default()
}

async fn spawn_receiver(ip: &str) -> (SocketAddr, Receiver) {
    let receiver = Receiver::default();
    let app = Router::new()
        .route("/hook", any(hook))
        .route("/hook/{*rest}", any(hook))
        .route("/status/{code}", any(status))
        .route("/redirect/{code}", any(redirect))
        .route("/hang", any(hang))
        .route("/verify", get(verify))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, receiver)
}

fn deliverer(allow: &str) -> Deliverer {
    Deliverer::new(
        EndpointPolicy::new(allow.parse().unwrap()),
        DeliveryConfig::default(),
    )
    .unwrap()
}

fn json_post(url: String) -> Post {
    Post::new(
        url,
        "application/fhir+json",
        Bytes::from_static(b"{\"resourceType\":\"Bundle\"}"),
    )
}

#[tokio::test]
async fn signed_post_arrives_with_a_signature_the_receiver_verifies() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let secret = Secret::from("per-subscription secret");
    let post = json_post(format!("http://{addr}/hook"))
        .header("Authorization", "Bearer abc")
        .header("X-Custom", "42")
        .signed_with(secret.clone());
    let delivery = deliverer("127.0.0.1/32").post(&post).await;

    assert_eq!(delivery.outcome, Outcome::Success { status: 200 });
    assert_eq!(&delivery.body[..], b"received");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.body, post.body);
    assert_eq!(request.headers["content-type"], "application/fhir+json");
    assert_eq!(request.headers["authorization"], "Bearer abc");
    assert_eq!(request.headers["x-custom"], "42");
    let signature = request.headers[SIGNATURE_HEADER].to_str().unwrap();
    assert!(verify_hub_signature(&secret, &request.body, signature));
    assert!(!verify_hub_signature(
        &Secret::from("other"),
        &request.body,
        signature
    ));
}

#[tokio::test]
async fn unsigned_post_has_no_signature_header() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let delivery = deliverer("127.0.0.1")
        .post(&json_post(format!("http://{addr}/hook")))
        .await;
    assert!(delivery.outcome.is_success());
    assert!(
        !receiver.requests()[0]
            .headers
            .contains_key(SIGNATURE_HEADER)
    );
}

#[tokio::test]
async fn put_keeps_its_method_through_a_307() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let post = json_post(format!("http://{addr}/redirect/307?to=/hook/Patient/1")).put();
    let delivery = deliverer("127.0.0.1").post(&post).await;
    assert_eq!(delivery.outcome, Outcome::Success { status: 200 });
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.method == Method::PUT));
    assert_eq!(requests[1].uri.path(), "/hook/Patient/1");
    assert_eq!(requests[1].body, post.body);
}

#[tokio::test]
async fn status_codes_are_classified() {
    let (addr, _receiver) = spawn_receiver("127.0.0.1").await;
    let deliverer = deliverer("127.0.0.1");
    for (code, expected, retryable) in [
        (201, Outcome::Success { status: 201 }, false),
        (204, Outcome::Success { status: 204 }, false),
        (404, Outcome::ClientError { status: 404 }, false),
        (410, Outcome::ClientError { status: 410 }, false),
        (429, Outcome::ClientError { status: 429 }, true),
        (500, Outcome::ServerError { status: 500 }, true),
        (503, Outcome::ServerError { status: 503 }, true),
    ] {
        let delivery = deliverer
            .post(&json_post(format!("http://{addr}/status/{code}")))
            .await;
        assert_eq!(delivery.outcome, expected, "status {code}");
        assert_eq!(delivery.outcome.is_retryable(), retryable, "status {code}");
        assert_eq!(delivery.outcome.status(), Some(code));
    }
}

#[tokio::test]
async fn closed_port_is_connection_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let delivery = deliverer("127.0.0.1")
        .post(&json_post(format!("http://{addr}/hook")))
        .await;
    assert_eq!(delivery.outcome, Outcome::ConnectionRefused);
    assert!(delivery.outcome.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn hanging_receiver_is_a_timeout() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let post = json_post(format!("http://{addr}/hang")).timeout(Duration::from_secs(30));
    let delivery = deliverer("127.0.0.1").post(&post).await;
    assert_eq!(delivery.outcome, Outcome::Timeout);
    assert!(delivery.outcome.is_retryable());
    // The request reached the receiver: the timeout is the answer that never came.
    assert_eq!(receiver.requests().len(), 1);
}

#[tokio::test]
async fn literal_private_addresses_are_refused_before_any_connection() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let deliverer = deliverer("");
    for url in [
        format!("http://{addr}/hook"),
        format!("http://2130706433:{}/hook", addr.port()),
        format!("http://[::ffff:127.0.0.1]:{}/hook", addr.port()),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let delivery = deliverer.post(&json_post(url.clone())).await;
        assert!(
            matches!(
                delivery.outcome,
                Outcome::Refused(Refusal::ForbiddenAddress { .. })
            ),
            "{url}: {:?}",
            delivery.outcome
        );
        assert!(!delivery.outcome.is_retryable());
    }
    assert!(receiver.requests().is_empty());
}

/// A name resolved by a table, the way an attacker's DNS would answer; each answer can be
/// changed between calls to model DNS rebinding.
struct ScriptedLookup {
    answers: Mutex<HashMap<String, Vec<Vec<IpAddr>>>>,
    calls: AtomicUsize,
}

impl ScriptedLookup {
    /// `host` answers each list in turn, the last one forever after.
    fn new(host: &str, answers: &[&[&str]]) -> Arc<Self> {
        let answers = answers
            .iter()
            .map(|ips| ips.iter().map(|ip| ip.parse().unwrap()).collect())
            .collect();
        Arc::new(Self {
            answers: Mutex::new(HashMap::from([(host.to_owned(), answers)])),
            calls: AtomicUsize::new(0),
        })
    }
}

impl HostLookup for ScriptedLookup {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut answers = self.answers.lock().unwrap();
        let result = match answers.get_mut(host) {
            Some(list) if list.len() > 1 => Ok(list.remove(0)),
            Some(list) => Ok(list[0].clone()),
            None => Err(std::io::Error::other("no such host")),
        };
        Box::pin(async move { result })
    }
}

fn deliverer_with(allow: &str, lookup: Arc<ScriptedLookup>) -> Deliverer {
    let policy = EndpointPolicy::new(allow.parse().unwrap()).with_lookup(lookup);
    Deliverer::new(policy, DeliveryConfig::default()).unwrap()
}

#[tokio::test]
async fn a_name_resolving_to_a_private_address_is_refused() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let lookup = ScriptedLookup::new("evil.test", &[&["127.0.0.1"]]);
    let deliverer = deliverer_with("", lookup.clone());
    for scheme in ["http", "https"] {
        let url = format!("{scheme}://evil.test:{}/hook", addr.port());
        let delivery = deliverer.post(&json_post(url)).await;
        assert!(
            matches!(
                delivery.outcome,
                Outcome::Refused(Refusal::ForbiddenAddress {
                    class: AddressClass::Loopback,
                    ..
                })
            ),
            "{scheme}: {:?}",
            delivery.outcome
        );
    }
    assert!(lookup.calls.load(Ordering::SeqCst) >= 2);
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn the_connection_goes_to_the_address_that_was_checked() {
    // hook.test exists only in this lookup: delivery to it proves the client resolves through
    // the policy rather than the system resolver.
    let (allowed, allowed_receiver) = spawn_receiver("127.0.0.2").await;
    let lookup = ScriptedLookup::new("hook.test", &[&["127.0.0.2"]]);
    let delivery = deliverer_with("127.0.0.2/32", lookup)
        .post(&json_post(format!(
            "http://hook.test:{}/hook",
            allowed.port()
        )))
        .await;
    assert_eq!(delivery.outcome, Outcome::Success { status: 200 });
    assert_eq!(allowed_receiver.requests().len(), 1);
}

#[tokio::test]
async fn rebinding_after_registration_is_refused_at_connect_time() {
    let (target, receiver) = spawn_receiver("127.0.0.1").await;
    // The first answer (seen when the endpoint is registered) is allow-listed; the second
    // (seen when delivering) points at a loopback address that is not.
    let lookup = ScriptedLookup::new("rebind.test", &[&["127.0.0.2"], &["127.0.0.1"]]);
    let deliverer = deliverer_with("127.0.0.2/32", lookup);
    let url = format!("http://rebind.test:{}/hook", target.port());
    assert!(deliverer.policy().check_endpoint(&url).await.is_ok());
    let delivery = deliverer.post(&json_post(url)).await;
    assert!(
        matches!(
            delivery.outcome,
            Outcome::Refused(Refusal::ForbiddenAddress { .. })
        ),
        "{:?}",
        delivery.outcome
    );
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn plain_http_to_a_public_name_is_refused() {
    let lookup = ScriptedLookup::new("public.test", &[&["93.184.216.34"]]);
    let delivery = deliverer_with("127.0.0.0/8", lookup)
        .post(&json_post("http://public.test/hook".to_owned()))
        .await;
    assert!(
        matches!(
            delivery.outcome,
            Outcome::Refused(Refusal::PlainHttp { .. })
        ),
        "{:?}",
        delivery.outcome
    );
}

#[tokio::test]
async fn redirect_to_a_refused_address_is_not_followed() {
    let (allowed, allowed_receiver) = spawn_receiver("127.0.0.2").await;
    let (forbidden, forbidden_receiver) = spawn_receiver("127.0.0.1").await;
    let target = format!("http://{forbidden}/hook");
    let url = format!("http://{allowed}/redirect/307?to={target}");
    let delivery = deliverer("127.0.0.2/32").post(&json_post(url)).await;

    assert!(
        matches!(
            delivery.outcome,
            Outcome::Refused(Refusal::ForbiddenAddress {
                class: AddressClass::Loopback,
                ..
            })
        ),
        "{:?}",
        delivery.outcome
    );
    assert_eq!(delivery.redirects, 1);
    assert_eq!(delivery.final_url.unwrap().as_str(), target);
    assert_eq!(allowed_receiver.requests().len(), 1);
    assert!(forbidden_receiver.requests().is_empty());
}

#[tokio::test]
async fn redirect_307_repeats_the_signed_post_without_first_origin_credentials() {
    let (first, _first_receiver) = spawn_receiver("127.0.0.2").await;
    let (second, second_receiver) = spawn_receiver("127.0.0.3").await;
    let secret = Secret::from("s");
    let post = json_post(format!(
        "http://{first}/redirect/308?to=http://{second}/hook"
    ))
    .header("Authorization", "Bearer for-the-first-endpoint")
    .signed_with(secret.clone());
    let delivery = deliverer("127.0.0.2/31").post(&post).await;

    assert_eq!(delivery.outcome, Outcome::Success { status: 200 });
    assert_eq!(delivery.redirects, 1);
    let requests = second_receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, Method::POST);
    assert_eq!(requests[0].body, post.body);
    let signature = requests[0].headers[SIGNATURE_HEADER].to_str().unwrap();
    assert!(verify_hub_signature(&secret, &post.body, signature));
    assert!(!requests[0].headers.contains_key("authorization"));
}

#[tokio::test]
async fn post_answered_302_is_not_turned_into_a_get() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let url = format!("http://{addr}/redirect/302?to=/hook");
    let delivery = deliverer("127.0.0.1").post(&json_post(url)).await;
    assert_eq!(
        delivery.outcome,
        Outcome::UnfollowedRedirect { status: 302 }
    );
    assert!(!delivery.outcome.is_retryable());
    assert_eq!(receiver.requests().len(), 1);
}

#[tokio::test]
async fn redirect_loops_stop_at_the_limit() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let url = format!("http://{addr}/redirect/307?to=/redirect/307");
    // The target has no `to`, so its Location is empty: follow it back to itself via join.
    let config = DeliveryConfig {
        max_redirects: 2,
        ..DeliveryConfig::default()
    };
    let deliverer =
        Deliverer::new(EndpointPolicy::new("127.0.0.1".parse().unwrap()), config).unwrap();
    let delivery = deliverer.post(&json_post(url)).await;
    assert_eq!(
        delivery.outcome,
        Outcome::Refused(Refusal::TooManyRedirects { max: 2 })
    );
    assert_eq!(delivery.redirects, 2);
    assert_eq!(receiver.requests().len(), 3);
}

#[tokio::test]
async fn intent_verification_echoes_the_challenge() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let deliverer = deliverer("127.0.0.1");
    let intent = IntentVerification {
        mode: "subscribe".into(),
        topic: "DrXRadiologist".into(),
        events: "patient-open,patient-close".into(),
        challenge: "meu3we944ix80ox".into(),
        lease_seconds: Some(7200),
        reason: None,
    };
    let result = deliverer
        .verify_intent(&format!("http://{addr}/verify?client=7"), &intent)
        .await;
    assert_eq!(result, IntentResult::Confirmed);
    let requests = receiver.requests();
    assert_eq!(requests[0].method, Method::GET);
    let query = requests[0].uri.query().unwrap();
    for expected in [
        "client=7",
        "hub.mode=subscribe",
        "hub.topic=DrXRadiologist",
        "hub.events=patient-open%2Cpatient-close",
        "hub.challenge=meu3we944ix80ox",
        "hub.lease_seconds=7200",
    ] {
        assert!(query.contains(expected), "{expected} in {query}");
    }

    // A subscriber that answers 200 with something else did not confirm.
    let mismatch = deliverer
        .verify_intent(&format!("http://{addr}/hook"), &intent)
        .await;
    assert_eq!(mismatch, IntentResult::ChallengeMismatch);
    let missing = deliverer
        .verify_intent(&format!("http://{addr}/status/404"), &intent)
        .await;
    assert_eq!(
        missing,
        IntentResult::NotConfirmed(Outcome::ClientError { status: 404 })
    );
}

#[tokio::test]
async fn intent_verification_goes_through_the_guard() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let intent = IntentVerification {
        mode: "subscribe".into(),
        topic: "t".into(),
        events: "patient-open".into(),
        challenge: "c".into(),
        lease_seconds: None,
        reason: None,
    };
    let result = deliverer("")
        .verify_intent(&format!("http://{addr}/verify"), &intent)
        .await;
    assert!(
        matches!(
            result,
            IntentResult::NotConfirmed(Outcome::Refused(Refusal::ForbiddenAddress { .. }))
        ),
        "{result:?}"
    );
    assert!(receiver.requests().is_empty());
}

#[tokio::test]
async fn invalid_header_values_are_not_sent() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let post = json_post(format!("http://{addr}/hook")).header("X-Bad", "line\r\nInjected: 1");
    let delivery = deliverer("127.0.0.1").post(&post).await;
    assert!(matches!(delivery.outcome, Outcome::InvalidRequest { .. }));
    assert!(!delivery.outcome.is_retryable());
    assert!(receiver.requests().is_empty());
}

mod tls {
    //! https against a receiver whose certificate comes from a test CA (`tests/tls/`).

    use std::io::{Read, Write};
    use std::path::PathBuf;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/tls")
            .join(name)
    }

    /// A one-request-per-connection HTTP/1.1 server over rustls, on a thread of its own so
    /// it shares nothing with the client under test. Records each request's raw bytes.
    fn spawn_tls_receiver() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
        let certificates = CertificateDer::pem_file_iter(fixture("hook.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("hook.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certificates, key)
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let config = config.clone();
                let recorded = recorded.clone();
                std::thread::spawn(move || {
                    let connection = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(connection, stream);
                    let Some(request) = read_request(&mut tls) else {
                        return;
                    };
                    recorded.lock().unwrap().push(request);
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        (addr, requests)
    }

    /// Headers and a `content-length` body, or `None` when the handshake or read fails.
    fn read_request(stream: &mut impl Read) -> Option<Vec<u8>> {
        let mut request = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = stream.read(&mut chunk).ok()?;
            if read == 0 {
                return None;
            }
            request.extend_from_slice(&chunk[..read]);
            let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                return Some(request);
            }
        }
    }

    fn https_deliverer(extra_roots: Vec<PathBuf>) -> Deliverer {
        let lookup = ScriptedLookup::new("hook.test", &[&["127.0.0.1"]]);
        let policy = EndpointPolicy::new("127.0.0.1".parse().unwrap()).with_lookup(lookup);
        let config = DeliveryConfig {
            extra_root_certificates: extra_roots,
            ..DeliveryConfig::default()
        };
        Deliverer::new(policy, config).unwrap()
    }

    #[tokio::test]
    async fn https_post_to_a_trusted_certificate() {
        let (addr, requests) = spawn_tls_receiver();
        let post = json_post(format!("https://hook.test:{}/hook", addr.port()))
            .signed_with(Secret::from("s"));
        let delivery = https_deliverer(vec![fixture("ca.pem")]).post(&post).await;
        assert_eq!(delivery.outcome, Outcome::Success { status: 200 });
        assert_eq!(&delivery.body[..], b"ok");
        let requests = requests.lock().unwrap();
        assert_eq!(requests.len(), 1);
        let request = String::from_utf8_lossy(&requests[0]);
        assert!(request.starts_with("POST /hook HTTP/1.1\r\n"), "{request}");
        assert!(
            request.ends_with("{\"resourceType\":\"Bundle\"}"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn https_to_an_untrusted_certificate_fails_before_sending() {
        let (addr, requests) = spawn_tls_receiver();
        let post = json_post(format!("https://hook.test:{}/hook", addr.port()));
        let delivery = https_deliverer(Vec::new()).post(&post).await;
        assert!(
            matches!(delivery.outcome, Outcome::ConnectionFailed { .. }),
            "{:?}",
            delivery.outcome
        );
        assert!(requests.lock().unwrap().is_empty());
    }

    #[test]
    fn a_root_certificate_file_without_certificates_is_a_build_error() {
        let config = DeliveryConfig {
            extra_root_certificates: vec![fixture("hook.key")],
            ..DeliveryConfig::default()
        };
        let error = Deliverer::new(EndpointPolicy::default(), config).unwrap_err();
        assert!(error.to_string().contains("hook.key"), "{error}");
    }
}

#[test]
fn delivery_config_from_toml_rejects_unknown_fields() {
    let config: DeliveryConfig = toml::from_str("timeout_ms = 500\nmax_redirects = 0").unwrap();
    assert_eq!(config.timeout_ms, 500);
    assert_eq!(config.max_redirects, 0);
    assert_eq!(
        config.connect_timeout_ms,
        DeliveryConfig::default().connect_timeout_ms
    );
    assert!(toml::from_str::<DeliveryConfig>("timeout = 5").is_err());
}

#[tokio::test]
async fn max_redirects_zero_follows_none() {
    let (addr, receiver) = spawn_receiver("127.0.0.1").await;
    let config = DeliveryConfig {
        max_redirects: 0,
        ..DeliveryConfig::default()
    };
    let deliverer =
        Deliverer::new(EndpointPolicy::new("127.0.0.1".parse().unwrap()), config).unwrap();
    let url = format!("http://{addr}/redirect/307?to=/hook");
    let delivery = deliverer.post(&json_post(url)).await;
    assert_eq!(
        delivery.outcome,
        Outcome::Refused(Refusal::TooManyRedirects { max: 0 })
    );
    assert_eq!(receiver.requests().len(), 1);
}
