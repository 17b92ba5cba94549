//! `/api/pipeline` while `flare generate` writes: rates come from one shared sampler, so a
//! single request already reports the events per second flowing through the log, and they fall
//! back to zero once writes stop.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
mod common;
use common::{Served, flare};

fn pipeline(served: &Served) -> Value {
    let root = served.base.trim_end_matches("/fhir");
    let response = served
        .http
        .get(format!("{root}/api/pipeline"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().unwrap()
}

fn total_rate(pipeline: &Value) -> f64 {
    pipeline["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|topic| topic["eventsPerSecond"].as_f64())
        .sum()
}

fn wait_for(what: &str, served: &Served, mut check: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let sample = pipeline(served);
        if check(&sample) {
            return sample;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {sample}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_pipeline_reports_event_rates_while_writes_flow_and_zero_after() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path());
    let idle = pipeline(&served);
    assert_eq!(total_rate(&idle), 0.0, "nothing written yet: {idle}");

    let mut generator = flare()
        .args(["generate", "--rate", "100/s", "--url", &served.base])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let busy = wait_for("non-zero rates", &served, |sample| total_rate(sample) > 0.0);
    // 100 resources/s at most: rates far above that would be a wrong measure.
    assert!(total_rate(&busy) < 1000.0, "{busy}");
    // The rates follow the flow: vital signs come after each patient's first resources.
    wait_for("vital signs flowing", &served, |sample| {
        sample["topics"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|topic| {
                topic["topic"] == "fhir.observation.vitals"
                    && topic["eventsPerSecond"]
                        .as_f64()
                        .is_some_and(|rate| rate > 0.0)
            })
    });
    let _ = generator.kill();
    let _ = generator.wait();

    wait_for("rates back to zero", &served, |sample| {
        total_rate(sample) == 0.0
    });
}
