//! The qSOFA processor end to end: Observations written through the commit path, relayed to
//! the log, turned into RiskAssessment + Flag resources and an alert message; a malformed
//! vital goes through the retries to the dead-letter topic.

mod common;

use std::sync::Arc;

use flare_processors::{
    DeadLetters, RetryPolicy, RuntimeOptions,
    builtin::{BuiltinDeps, spawn_builtin},
};
use flare_service::RequestContext;
use serde_json::{Value, json};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_written_and_published_and_poison_is_parked() {
    let dir = tempfile::tempdir().unwrap();
    let commit_path = CommitPath::start(dir.path(), 2).await;
    let (fhir, log) = (commit_path.fhir.clone(), commit_path.log.clone());

    let ctx = RequestContext::new("http://127.0.0.1/fhir");
    let observations = [
        vital(
            "rr-1",
            "p1",
            "9279-1",
            json!(24),
            "/min",
            "2024-03-01T10:00:00Z",
        ),
        vital(
            "sbp-1",
            "p1",
            "8480-6",
            json!(95),
            "mm[Hg]",
            "2024-03-01T12:00:00Z",
        ),
        vital(
            "rr-2",
            "p2",
            "9279-1",
            json!("fast"),
            "",
            "2024-03-01T10:00:00Z",
        ),
        vital(
            "rr-3",
            "p2",
            "9279-1",
            json!(30),
            "/min",
            "2024-03-01T10:30:00Z",
        ),
    ];
    for observation in observations {
        let id = observation["id"].as_str().unwrap().to_owned();
        fhir.update(&ctx, "Observation", &id, observation, None)
            .await
            .unwrap();
    }

    let (state, _guard) = embedded_store().await.unwrap();
    let mut options = RuntimeOptions::default();
    options.checkpoint.every_ms = 20;
    options.retry = RetryPolicy {
        base_ms: 1,
        factor: 2.0,
        max_delay_ms: 2,
        max_attempts: 3,
    };
    let deps = BuiltinDeps {
        fhir: fhir.clone(),
        log: log.clone(),
        state: state.clone(),
        options,
    };
    let handle = spawn_builtin("qsofa", &deps).await.unwrap().handle;
    wait_checkpointed(&state, "qsofa", "fhir.observation.vitals", 4).await;
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();
    commit_path.stop().await;

    // One alert, for p1 (RR >= 22 and SBP <= 100 two hours apart); p2 has one criterion only.
    let mut messages = Vec::new();
    for partition in 0..2 {
        for record in log
            .read("fhir.alerts.sepsis", partition, 0, 100)
            .await
            .unwrap()
        {
            assert!(record.header_str("eventId").is_some());
            messages.push(serde_json::from_slice::<Value>(&record.payload).unwrap());
        }
    }
    assert_eq!(messages.len(), 1, "{messages:?}");
    let alert = &messages[0];
    assert_eq!(alert["patient"], "Patient/p1");
    assert_eq!(alert["action"], "raised");
    assert_eq!(alert["score"], 2);
    let episode = alert["episodeId"].as_str().unwrap();
    let assessment = fhir.read("RiskAssessment", episode).await.unwrap();
    let assessment: Value = serde_json::from_str(assessment.body.as_deref().unwrap()).unwrap();
    let basis: Vec<&str> = assessment["basis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["reference"].as_str().unwrap())
        .collect();
    assert_eq!(basis, ["Observation/rr-1", "Observation/sbp-1"]);
    let flag = fhir.read("Flag", episode).await.unwrap();
    let flag: Value = serde_json::from_str(flag.body.as_deref().unwrap()).unwrap();
    assert_eq!(flag["status"], "active");

    // The string-valued respiratory rate was retried, then parked; p2's next vital went on.
    assert_eq!(
        metrics
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        metrics.retried.load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let letters = DeadLetters::new(log.clone()).list(None, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id.topic, "fhir.observation.vitals.dlq");
    assert_eq!(letters[0].retry_count, Some(2));
    let error = letters[0].error.as_deref().unwrap();
    assert!(
        error.contains("rr-2") && error.contains("not a Quantity"),
        "{error}"
    );
    let p2 = tallies_raw(&state, "qsofa", "Patient/p2").await;
    assert!(p2.contains("rr-3"), "{p2}");
}

async fn tallies_raw(
    state: &Arc<dyn flare_processors::StateStore>,
    group: &str,
    key: &str,
) -> String {
    let bytes = state.load(group, key).await.unwrap().unwrap();
    String::from_utf8(bytes).unwrap()
}
