//! `flare demo` as the README runs it (on a free port): it starts, the first immunization
//! counts and the first sepsis alert arrive over HTTP, and Ctrl-C stops it cleanly.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

#[test]
fn the_demo_shows_immunizations_and_a_sepsis_alert_then_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flare"))
        .args(["demo", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("FLARE_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let dashboard = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("Open the dashboard: ")
                .map(|url| url.trim().trim_end_matches('/').to_string())
        })
        .expect("the demo prints the dashboard URL");
    std::thread::spawn(move || for _ in lines {});
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let get = |path: &str| -> serde_json::Value {
        http.get(format!("{dashboard}{path}"))
            .send()
            .and_then(|r| r.json())
            .unwrap_or_default()
    };
    wait_for("immunization counts", Duration::from_secs(60), || {
        get("/api/stats/immunizations")["totals"]
            .as_array()
            .is_some_and(|totals| !totals.is_empty())
    });
    wait_for("the first sepsis alert", Duration::from_secs(300), || {
        get("/api/sepsis/alerts?status=all")["alerts"]
            .as_array()
            .is_some_and(|alerts| !alerts.is_empty())
    });
    let page = http.get(format!("{dashboard}/")).send().unwrap();
    assert_eq!(page.status(), 200);

    // Ctrl-C: the generator stops, then the server checkpoints and exits successfully.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(exit.success(), "{exit:?}");
}
