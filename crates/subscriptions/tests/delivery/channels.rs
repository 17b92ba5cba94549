//! Points 39 (email), 40 (message), the Kafka channel, and R4B/R5-shaped notifications
//! (`fhirVersion` on the payload), against real receivers: an HTTP receiver, the embedded log,
//! and an SMTP server (Python's aiosmtpd, as in flare-outbound's mailer tests).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use flare_subscriptions::delivery::{MailTransport, outbound};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
};

use crate::common::{ADMISSION, BACKPORT, Env, Receiver, backport_subscription, encounter, param};

/// An interpreter that can import aiosmtpd (see crates/outbound/tests/smtp.rs), or `None`
/// when `FLARE_SKIP_SMTP=1` allows skipping.
fn python_with_aiosmtpd() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates: Vec<PathBuf> = std::env::var_os("FLARE_SMTP_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root.join("tests/interop/.venv/bin/python"),
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
        eprintln!("FLARE_SKIP_SMTP=1: skipping the email channel test (aiosmtpd not found)");
        return None;
    }
    panic!(
        "aiosmtpd not found (tried {candidates:?}): install tests/interop/requirements.txt into \
         tests/interop/.venv, set FLARE_SMTP_PYTHON, or FLARE_SKIP_SMTP=1 to skip"
    );
}

struct SmtpServer {
    _child: Child,
    port: u16,
    lines: Lines<BufReader<ChildStdout>>,
}

impl SmtpServer {
    async fn start(python: &Path) -> Self {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../outbound/tests/smtp_receiver.py");
        let mut child = Command::new(python)
            .arg("-u")
            .arg(script)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the SMTP receiver");
        let stdout = child.stdout.take().expect("piped stdout");
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

    /// The next `count` messages the server received, in arrival order.
    async fn messages(&mut self, count: usize) -> Vec<Value> {
        let mut messages = Vec::new();
        while messages.len() < count {
            let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
                .await
                .expect("no mail within 20 s")
                .unwrap()
                .expect("the SMTP receiver stopped");
            messages.push(serde_json::from_str(&line).unwrap());
        }
        messages
    }

    fn mailer(&self) -> Arc<dyn MailTransport> {
        Arc::new(
            outbound::Mailer::new(&outbound::SmtpConfig {
                host: "127.0.0.1".into(),
                port: Some(self.port),
                security: outbound::SmtpSecurity::None,
                from: "Flare <flare@example.org>".into(),
                ..outbound::SmtpConfig::default()
            })
            .unwrap(),
        )
    }
}

fn email_subscription(address: &str, payload: &str, content: &str) -> Value {
    let mut subscription = backport_subscription(&format!("mailto:{address}"), "p1", content);
    subscription["channel"]["type"] = json!("email");
    subscription["channel"]["payload"] = json!(payload);
    subscription["channel"]
        .as_object_mut()
        .unwrap()
        .remove("header");
    subscription
}

#[tokio::test]
async fn j39_email_stays_within_the_content_level_and_attaches_the_bundle_when_asked() {
    let Some(python) = python_with_aiosmtpd() else {
        return;
    };
    let mut smtp = SmtpServer::start(&python).await;
    let env = Env::start_full(|_| {}, Some(smtp.mailer())).await;
    let empty = env
        .create(email_subscription(
            "empty@example.org",
            "text/plain",
            "empty",
        ))
        .await;
    env.wait_status(&empty, "active").await;
    let handshake = smtp.messages(1).await.remove(0);
    assert_eq!(handshake["rcpt_tos"], json!(["empty@example.org"]));
    assert!(handshake["attachments"].as_array().unwrap().is_empty());
    let id_only = env
        .create(email_subscription(
            "ids@example.org",
            "text/plain;attach=application/fhir+json",
            "id-only",
        ))
        .await;
    env.wait_status(&id_only, "active").await;
    smtp.messages(1).await;
    let encounter_id = env.create(encounter("p1")).await;
    let mails = smtp.messages(2).await;
    let to = |address: &str| {
        mails
            .iter()
            .find(|mail| mail["rcpt_tos"] == json!([address]))
            .unwrap_or_else(|| panic!("no mail to {address}: {mails:#?}"))
            .clone()
    };
    // empty: which subscription and which event number, nothing about the resource.
    let plain = to("empty@example.org");
    let text = plain["text"].as_str().unwrap();
    assert!(plain["subject"].as_str().unwrap().contains("event 1"));
    assert!(text.contains(&format!("Subscription/{empty}")), "{text}");
    assert!(!text.contains("Encounter"), "empty content leaks: {text}");
    assert!(!text.contains(&encounter_id), "empty content leaks: {text}");
    assert!(plain["attachments"].as_array().unwrap().is_empty());
    // id-only: the reference in the text, the id-only Bundle attached, no resource in either.
    let detailed = to("ids@example.org");
    let text = detailed["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("Encounter/{encounter_id}")),
        "{text}"
    );
    assert!(
        !text.contains("in-progress"),
        "resource content in the text: {text}"
    );
    let attachment = &detailed["attachments"][0];
    assert_eq!(attachment["content_type"], "application/fhir+json");
    let bundle: Value = serde_json::from_str(attachment["payload"].as_str().unwrap()).unwrap();
    assert_eq!(bundle["type"], "history");
    let status = &bundle["entry"][0]["resource"];
    assert_eq!(
        param(status, "type").unwrap()["valueCode"],
        "event-notification"
    );
    assert!(bundle["entry"][1].get("resource").is_none());
    assert!(
        bundle["entry"][1]["fullUrl"]
            .as_str()
            .unwrap()
            .ends_with(&format!("Encounter/{encounter_id}"))
    );
}

#[tokio::test]
async fn j39_email_without_an_smtp_server_turns_error_with_the_reason() {
    let env = Env::start().await;
    let id = env
        .create(email_subscription("a@example.org", "text/plain", "empty"))
        .await;
    let failed = env.wait_status(&id, "error").await;
    assert!(
        failed["error"].as_str().unwrap().contains("SMTP"),
        "{failed}"
    );
}

#[tokio::test]
async fn j40_message_channel_posts_a_message_bundle_wrapping_the_notification() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let mut subscription = backport_subscription(&hooks.url("msg"), "p1", "full-resource");
    subscription["channel"]["type"] = json!("message");
    let id = env.create(subscription).await;
    env.wait_status(&id, "active").await;
    let encounter_id = env.create(encounter("p1")).await;
    let received = hooks.wait("msg", |r| r.len() >= 2).await;
    let wrapped = |index: usize| {
        let message = received[index].json();
        assert_eq!(message["type"], "message", "{message:#}");
        assert_eq!(received[index].headers["x-test"], "yes");
        let header = &message["entry"][0]["resource"];
        assert_eq!(header["resourceType"], "MessageHeader");
        assert_eq!(header["destination"][0]["endpoint"], hooks.url("msg"));
        assert_eq!(
            header["focus"][0]["reference"],
            message["entry"][1]["fullUrl"]
        );
        (
            header["eventCoding"]["code"].as_str().unwrap().to_owned(),
            message["entry"][1]["resource"].clone(),
        )
    };
    // The handshake first, then the event.
    let (event, handshake) = wrapped(0);
    assert_eq!(event, "handshake");
    assert_eq!(
        param(&handshake["entry"][0]["resource"], "type").unwrap()["valueCode"],
        "handshake"
    );
    let (event, notification) = wrapped(1);
    assert_eq!(event, "event-notification");
    assert_eq!(notification["type"], "history");
    assert_eq!(notification["entry"][1]["resource"]["id"], encounter_id);
}

#[tokio::test]
async fn kafka_channel_appends_notifications_to_the_named_topic_in_order() {
    let env = Env::start().await;
    let mut subscription = backport_subscription("kafka:admissions.notify", "p1", "id-only");
    subscription["channel"]["_type"] = json!({"extension": [{
        "url": format!("{BACKPORT}backport-channel-type"),
        "valueCoding": {"system": "http://flare.dev/fhir/CodeSystem/subscription-channel-type",
                        "code": "kafka"}}]});
    let id = env.create(subscription).await;
    env.wait_status(&id, "active").await;
    let first = env.create(encounter("p1")).await;
    let second = env.create(encounter("p1")).await;
    let mut records = Vec::new();
    for _ in 0..2000 {
        records = env
            .log
            .read("admissions.notify", 0, 0, 10)
            .await
            .unwrap_or_default();
        let partitions = env
            .log
            .topics()
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.name == "admissions.notify")
            .map(|t| t.partitions)
            .unwrap_or(1);
        // Keyed by subscription: all in one partition, wherever that is.
        for partition in 1..partitions {
            if records.is_empty() {
                records = env
                    .log
                    .read("admissions.notify", partition, 0, 10)
                    .await
                    .unwrap_or_default();
            }
        }
        if records.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(records.len(), 3, "{records:#?}");
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r.header_str("notification-type").unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["handshake", "event-notification", "event-notification"]
    );
    for record in &records {
        assert_eq!(record.key.as_deref(), Some(id.as_bytes()));
        assert_eq!(
            record.header_str("content-type"),
            Some("application/fhir+json")
        );
        assert_eq!(
            record.header_str("subscription"),
            Some(format!("Subscription/{id}").as_str())
        );
    }
    let focus = |index: usize| {
        let bundle: Value = serde_json::from_slice(&records[index].payload).unwrap();
        bundle["entry"][1]["fullUrl"].as_str().unwrap().to_owned()
    };
    assert!(focus(1).ends_with(&first));
    assert!(focus(2).ends_with(&second));
}

#[tokio::test]
async fn kafka_channel_refuses_a_topic_that_carries_change_events() {
    let env = Env::start().await;
    let mut subscription = backport_subscription("kafka:fhir.Encounter", "p1", "id-only");
    subscription["channel"]["_type"] = json!({"extension": [{
        "url": format!("{BACKPORT}backport-channel-type"),
        "valueCoding": {"system": "http://flare.dev/fhir/CodeSystem/subscription-channel-type",
                        "code": "kafka"}}]});
    let id = env.create(subscription).await;
    let failed = env.wait_status(&id, "error").await;
    assert!(
        failed["error"].as_str().unwrap().contains("fhir.Encounter"),
        "{failed}"
    );
}

/// The status resource and type of a notification of any version.
fn status_of(bundle: &Value) -> (&Value, String) {
    let status = &bundle["entry"][0]["resource"];
    let kind = match status["resourceType"].as_str() {
        Some("Parameters") => param(status, "type").unwrap()["valueCode"].as_str(),
        _ => status["type"].as_str(),
    };
    (status, kind.unwrap_or_default().to_owned())
}

#[tokio::test]
async fn fhir_version_on_the_payload_selects_r4b_or_r5_notifications() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    for (hook, version) in [("r5", "5.0"), ("r4b", "4.3")] {
        let mut subscription = backport_subscription(&hooks.url(hook), "p1", "id-only");
        subscription["channel"]["payload"] =
            json!(format!("application/fhir+json;fhirVersion={version}"));
        let id = env.create(subscription).await;
        env.wait_status(&id, "active").await;
    }
    let encounter_id = env.create(encounter("p1")).await;
    for (hook, bundle_type, version) in [
        ("r5", "subscription-notification", "5.0"),
        ("r4b", "history", "4.3"),
    ] {
        let received = hooks.wait(hook, |r| r.len() >= 2).await;
        assert_eq!(
            received[0].headers["content-type"],
            format!("application/fhir+json;fhirVersion={version}")
        );
        let handshake = received[0].json();
        assert_eq!(handshake["type"], bundle_type);
        let (status, kind) = status_of(&handshake);
        assert_eq!(status["resourceType"], "SubscriptionStatus");
        assert_eq!(kind, "handshake");
        assert_eq!(status["status"], "requested");
        let event = received[1].json();
        assert_eq!(event["type"], bundle_type);
        let (status, kind) = status_of(&event);
        assert_eq!(kind, "event-notification");
        assert_eq!(status["topic"], ADMISSION);
        assert_eq!(status["eventsSinceSubscriptionStart"], "1");
        let notified = &status["notificationEvent"][0];
        assert_eq!(notified["eventNumber"], "1");
        assert!(
            notified["focus"]["reference"]
                .as_str()
                .unwrap()
                .ends_with(&format!("Encounter/{encounter_id}"))
        );
    }
}

#[tokio::test]
async fn e20_missing_content_extension_means_empty_notifications() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let mut subscription = backport_subscription(&hooks.url("bare"), "p1", "id-only");
    subscription["channel"]
        .as_object_mut()
        .unwrap()
        .remove("_payload");
    let id = env.create(subscription).await;
    env.wait_status(&id, "active").await;
    env.create(encounter("p1")).await;
    let received = hooks.wait_events("bare", 1).await;
    let event = received
        .iter()
        .find(|r| r.kind() == "event-notification")
        .unwrap()
        .json();
    let status = &event["entry"][0]["resource"];
    assert_eq!(event["entry"].as_array().unwrap().len(), 1, "{event:#}");
    assert!(param(status, "topic").is_none());
    let notification = param(status, "notification-event").unwrap();
    assert!(
        notification["part"]
            .as_array()
            .unwrap()
            .iter()
            .all(|part| part["name"] != "focus"),
        "{event:#}"
    );
}
