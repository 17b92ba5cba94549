//! `flare fhircast subscribe|publish|context` against the hub of a real `flare serve`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Served, flare};
use serde_json::{Value, json};

/// Guards against a hung test only; nothing asserts on elapsed time.
const LINE_GUARD: Duration = Duration::from_secs(60);

fn hub_of(served: &Served) -> String {
    format!("{}/fhircast", served.base.trim_end_matches("/fhir"))
}

/// A running `flare fhircast subscribe` with its stdout and stderr read line by line.
struct Subscriber {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

impl Subscriber {
    /// Starts the subscriber and waits until the hub confirmed its subscription.
    fn start(hub: &str, topic: &str, extra: &[&str]) -> Self {
        let mut child = flare()
            .args(["fhircast", "subscribe", "--hub", hub, "--topic", topic])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flare fhircast subscribe starts");
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        let subscriber = Self {
            child,
            stdout,
            stderr,
        };
        let confirmed = subscriber.stderr_line();
        assert!(confirmed.starts_with("subscribed to"), "{confirmed}");
        subscriber
    }

    fn event(&self) -> Value {
        let line = self
            .stdout
            .recv_timeout(LINE_GUARD)
            .expect("an event line on stdout");
        serde_json::from_str(&line).expect("each event is one JSON line")
    }

    fn stderr_line(&self) -> String {
        self.stderr
            .recv_timeout(LINE_GUARD)
            .expect("a line on stderr")
    }

    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_success(mut self) -> Vec<String> {
        let status = self.child.wait().unwrap();
        let rest: Vec<String> = self.stderr.try_iter().collect();
        assert!(status.success(), "{status}: {rest:?}");
        rest
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(hub: &str, topic: &str, event: &str, context_file: &str, id: &str) {
    let output = flare()
        .args(["fhircast", "publish", "--hub", hub, "--topic", topic])
        .args(["--event", event, "--context", context_file, "--id", id])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn publish_from_stdin(hub: &str, topic: &str, event: &str, context: &Value) -> (bool, String) {
    let mut child = flare()
        .args(["fhircast", "publish", "--hub", hub, "--topic", topic])
        .args(["--event", event, "--context", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(context.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn current_context(hub: &str, topic: &str) -> Value {
    let output = flare()
        .args(["fhircast", "context", "--hub", hub, "--topic", topic])
        .output()
        .unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).expect("the context is JSON")
}

#[test]
fn subscribe_prints_published_events_and_ctrl_c_unsubscribes() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::api_only(dir.path());
    let hub = hub_of(&served);
    let subscriber = Subscriber::start(
        &hub,
        "session-1",
        &["--events", "Patient-open,Patient-close", "--lease", "600"],
    );

    let context_file = dir.path().join("patient.json");
    std::fs::write(
        &context_file,
        json!([{"key": "patient", "resource": {"resourceType": "Patient", "id": "p-42"}}])
            .to_string(),
    )
    .unwrap();
    publish(
        &hub,
        "session-1",
        "Patient-open",
        context_file.to_str().unwrap(),
        "open-1",
    );
    let opened = subscriber.event();
    assert_eq!(opened["id"], "open-1");
    assert_eq!(opened["event"]["hub.event"], "Patient-open");
    assert_eq!(opened["event"]["context"][0]["resource"]["id"], "p-42");
    assert_eq!(
        current_context(&hub, "session-1")["context.type"],
        "Patient"
    );

    // One entry instead of an array, from stdin.
    let (published, stderr) = publish_from_stdin(
        &hub,
        "session-1",
        "patient-close",
        &json!({"key": "patient", "resource": {"resourceType": "Patient", "id": "p-42"}}),
    );
    assert!(published, "{stderr}");
    let closed = subscriber.event();
    assert_eq!(closed["event"]["hub.event"], "Patient-close");
    assert_eq!(
        current_context(&hub, "session-1"),
        json!({"context.type": "", "context": []})
    );

    subscriber.interrupt();
    let stderr = subscriber.wait_success();
    assert!(
        stderr.iter().any(|line| line.starts_with("unsubscribed")),
        "{stderr:?}"
    );
}

#[test]
fn acknowledgement_status_reaches_the_hub_and_max_ends_a_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::api_only(dir.path());
    let hub = hub_of(&served);
    // Refuses to follow: the hub tells the SyncError subscriber, naming it.
    let refuser = Subscriber::start(
        &hub,
        "session-2",
        &[
            "--events",
            "Patient-open",
            "--status",
            "409",
            "--name",
            "Refusing Viewer",
        ],
    );
    let watcher = Subscriber::start(&hub, "session-2", &["--events", "SyncError", "--max", "1"]);
    let (published, stderr) = publish_from_stdin(
        &hub,
        "session-2",
        "Patient-open",
        &json!([{"key": "patient", "resource": {"resourceType": "Patient", "id": "p-7"}}]),
    );
    assert!(published, "{stderr}");
    assert_eq!(refuser.event()["event"]["hub.event"], "Patient-open");
    let sync_error = watcher.event();
    assert_eq!(sync_error["event"]["hub.event"], "SyncError");
    let codings = sync_error["event"]["context"][0]["resource"]["issue"][0]["details"]["coding"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        codings
            .iter()
            .any(|coding| coding["code"] == "Refusing Viewer")
    );
    // --max 1: the watcher unsubscribes and exits on its own.
    watcher.wait_success();
}

#[test]
fn refused_publications_fail_with_the_hubs_reason() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::api_only(dir.path());
    let hub = hub_of(&served);
    // A Patient-open without a patient: the hub answers 400 and says why.
    let (published, stderr) = publish_from_stdin(
        &hub,
        "session-3",
        "Patient-open",
        &json!([{"key": "encounter", "resource": {"resourceType": "Encounter", "id": "e"}}]),
    );
    assert!(!published);
    assert!(
        stderr.contains("400") && stderr.contains("patient"),
        "{stderr}"
    );

    let (published, stderr) = publish_from_stdin(&hub, "session-3", "Patient-open", &json!(42));
    assert!(!published);
    assert!(stderr.contains("JSON array"), "{stderr}");

    let output = flare()
        .args([
            "fhircast",
            "publish",
            "--hub",
            "ftp://nowhere",
            "--topic",
            "t",
        ])
        .args(["--event", "Patient-open", "--context", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("http://"));
}
