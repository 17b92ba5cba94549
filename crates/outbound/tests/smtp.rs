//! The mailer against a real SMTP server (Python's aiosmtpd) on loopback.
//!
//! aiosmtpd comes from `tests/interop/requirements.txt` (installed into `tests/interop/.venv`
//! by `scripts/test.sh`); `FLARE_SMTP_PYTHON` names another interpreter that has it. Without
//! it these tests fail, unless `FLARE_SKIP_SMTP=1`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use bytes::Bytes;
use flare_outbound::smtp::{Mail, MailError, parse_recipient};
use flare_outbound::{Attachment, Mailer, SmtpConfig, SmtpSecurity};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An interpreter that can import aiosmtpd, or `None` when the tests are to be skipped.
fn python_with_aiosmtpd() -> Option<PathBuf> {
    let root = workspace_root();
    let candidates: Vec<PathBuf> = std::env::var_os("FLARE_SMTP_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root.join("tests/interop/.venv/bin/python"),
            root.join("tests/interop/.venv-smtp/bin/python"),
            PathBuf::from("python3"),
        ])
        .collect();
    for python in &candidates {
        let found = std::process::Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if found {
            return Some(python.clone());
        }
    }
    if std::env::var("FLARE_SKIP_SMTP").as_deref() == Ok("1") {
        eprintln!("FLARE_SKIP_SMTP=1: skipping the SMTP tests (aiosmtpd not found)");
        return None;
    }
    panic!(
        "aiosmtpd not found (tried {candidates:?}). Install it with `python3 -m venv \
         tests/interop/.venv && tests/interop/.venv/bin/pip install -r \
         tests/interop/requirements.txt`, point FLARE_SMTP_PYTHON at a Python that has it, \
         or set FLARE_SKIP_SMTP=1 to skip these tests"
    );
}

struct SmtpServer {
    _child: Child,
    port: u16,
    lines: Lines<BufReader<ChildStdout>>,
}

impl SmtpServer {
    async fn start(python: &Path, args: &[&str]) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_receiver.py");
        let mut child = Command::new(python)
            .arg("-u")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the SMTP receiver");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next_line()
            .await
            .unwrap()
            .expect("the SMTP receiver exited before listening");
        let ready: Value = serde_json::from_str(&first).unwrap();
        let port = u16::try_from(ready["port"].as_u64().unwrap()).unwrap();
        Self {
            _child: child,
            port,
            lines,
        }
    }

    /// The next message the server received (it prints it before answering 250).
    async fn next_message(&mut self) -> Value {
        let line = self.lines.next_line().await.unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn config(&self) -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: Some(self.port),
            security: SmtpSecurity::None,
            from: "Flare <flare@example.org>".into(),
            ..SmtpConfig::default()
        }
    }
}

#[tokio::test]
async fn notification_with_bundle_attachment_arrives() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    let mut server = SmtpServer::start(&python, &[]).await;
    let mailer = Mailer::new(&server.config()).unwrap();
    let bundle = r#"{"resourceType":"Bundle","type":"history"}"#;
    let mail = Mail {
        to: "mailto:alice@example.org".into(),
        subject: "Subscription notification".into(),
        text: "A resource matching your subscription changed.".into(),
        attachment: Some(Attachment::fhir_bundle(Bytes::from_static(
            bundle.as_bytes(),
        ))),
    };
    mailer.send(&mail).await.unwrap();

    let received = server.next_message().await;
    assert_eq!(received["mail_from"], "flare@example.org");
    assert_eq!(
        received["rcpt_tos"],
        serde_json::json!(["alice@example.org"])
    );
    assert_eq!(received["subject"], "Subscription notification");
    assert_eq!(
        received["text"].as_str().unwrap().trim_end(),
        "A resource matching your subscription changed."
    );
    let attachments = received["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0]["filename"], "notification.json");
    assert_eq!(attachments[0]["content_type"], "application/fhir+json");
    assert_eq!(attachments[0]["payload"], bundle);
}

#[tokio::test]
async fn plain_text_mail_without_attachment() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    let mut server = SmtpServer::start(&python, &[]).await;
    let mailer = Mailer::new(&server.config()).unwrap();
    let mail = Mail {
        to: "bob@example.org".into(),
        subject: "Heartbeat".into(),
        text: "No changes.".into(),
        attachment: None,
    };
    mailer.send(&mail).await.unwrap();
    let received = server.next_message().await;
    assert_eq!(received["rcpt_tos"], serde_json::json!(["bob@example.org"]));
    assert_eq!(received["text"].as_str().unwrap().trim_end(), "No changes.");
    assert!(received["attachments"].as_array().unwrap().is_empty());
    assert!(received["login"].is_null());
}

#[tokio::test]
async fn authenticates_with_the_configured_credentials() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    let mut server = SmtpServer::start(&python, &["auth"]).await;
    let mail = Mail {
        to: "carol@example.org".into(),
        subject: "s".into(),
        text: "t".into(),
        attachment: None,
    };
    let good = Mailer::new(&SmtpConfig {
        username: Some("flare".into()),
        password: Some("pw".into()),
        ..server.config()
    })
    .unwrap();
    good.send(&mail).await.unwrap();
    assert_eq!(server.next_message().await["login"], "flare");

    let wrong = Mailer::new(&SmtpConfig {
        username: Some("flare".into()),
        password: Some("wrong".into()),
        ..server.config()
    })
    .unwrap();
    let error = wrong.send(&mail).await.unwrap_err();
    assert!(matches!(error, MailError::Smtp { .. }), "{error:?}");
    assert!(
        !error.is_retryable(),
        "a rejected login is permanent: {error}"
    );

    let anonymous = Mailer::new(&server.config()).unwrap();
    let error = anonymous.send(&mail).await.unwrap_err();
    assert!(matches!(error, MailError::Smtp { .. }), "{error:?}");
}

fn tls_fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tls")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
async fn starttls_with_a_trusted_certificate() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    let (cert, key) = (tls_fixture("hook.pem"), tls_fixture("hook.key"));
    let mut server = SmtpServer::start(&python, &["starttls", &cert, &key]).await;
    let mail = Mail {
        to: "erin@example.org".into(),
        subject: "over TLS".into(),
        text: "t".into(),
        attachment: None,
    };
    let trusted = Mailer::new(&SmtpConfig {
        security: SmtpSecurity::Starttls,
        extra_root_certificates: vec![tls_fixture("ca.pem").into()],
        ..server.config()
    })
    .unwrap();
    trusted.send(&mail).await.unwrap();
    assert_eq!(server.next_message().await["subject"], "over TLS");

    // Without the test CA the certificate is not trusted and nothing is sent.
    let untrusted = Mailer::new(&SmtpConfig {
        security: SmtpSecurity::Starttls,
        ..server.config()
    })
    .unwrap();
    assert!(untrusted.send(&mail).await.is_err());
    // The server requires STARTTLS: a plain session is refused too.
    assert!(
        Mailer::new(&server.config())
            .unwrap()
            .send(&mail)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn unreachable_server_is_retryable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mailer = Mailer::new(&SmtpConfig {
        host: "127.0.0.1".into(),
        port: Some(port),
        security: SmtpSecurity::None,
        ..SmtpConfig::default()
    })
    .unwrap();
    let error = mailer
        .send(&Mail {
            to: "dave@example.org".into(),
            subject: "s".into(),
            text: "t".into(),
            attachment: None,
        })
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error}");
}

#[test]
fn recipients_are_exactly_one_plain_address() {
    for ok in [
        "mailto:alice@example.org",
        "MAILTO:alice@example.org",
        "alice@example.org",
        "mailto:alice%2Bfhir@example.org",
    ] {
        assert!(parse_recipient(ok).is_ok(), "{ok}");
    }
    assert_eq!(
        parse_recipient("mailto:alice%2Bfhir@example.org")
            .unwrap()
            .email
            .to_string(),
        "alice+fhir@example.org"
    );
    for bad in [
        "mailto:alice@example.org?bcc=eve@example.org",
        "mailto:alice@example.org?subject=x",
        "mailto:alice@example.org,eve@example.org",
        "mailto:alice@example.org%0D%0ABcc:eve@example.org",
        "mailto:Alice <alice@example.org>",
        "mailto:",
        "not an address",
    ] {
        assert!(
            matches!(
                parse_recipient(bad),
                Err(MailError::InvalidRecipient { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn config_rejects_unknown_fields_and_hides_the_password() {
    let config: SmtpConfig = toml::from_str(
        r#"
        host = "smtp.example.org"
        security = "tls"
        username = "flare"
        password = "hunter2"
        "#,
    )
    .unwrap();
    assert_eq!(config.security, SmtpSecurity::Tls);
    assert_eq!(config.timeout_ms, 30_000);
    assert!(!format!("{config:?}").contains("hunter2"));
    assert!(toml::from_str::<SmtpConfig>("hots = \"x\"").is_err());
    assert!(toml::from_str::<SmtpConfig>("security = \"ssl\"").is_err());
    assert!(
        Mailer::new(&SmtpConfig {
            from: "not an address".into(),
            ..SmtpConfig::default()
        })
        .is_err()
    );
}
