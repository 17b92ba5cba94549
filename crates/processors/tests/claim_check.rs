//! Change events too large for a log record carry `dataRef` (`Type/id/_history/n`) instead of
//! the resource: the built-in processors read that version through the service and process it
//! as if it had come inline.

mod common;

use std::sync::atomic::Ordering;

use flare_processors::{
    RuntimeOptions,
    builtin::{BuiltinDeps, spawn_builtin},
};
use flare_service::{FhirConfig, RequestContext};
use serde_json::{Value, json};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_ref_events_are_resolved_through_the_service() {
    let dir = tempfile::tempdir().unwrap();
    // Every event is larger than this, so every event travels as a claim check.
    let config = FhirConfig {
        max_event_bytes: 64,
        ..FhirConfig::default()
    };
    let commit_path = CommitPath::start_with(dir.path(), 2, config).await;
    let (fhir, log) = (commit_path.fhir.clone(), commit_path.log.clone());
    let ctx = RequestContext::new("http://127.0.0.1/fhir");
    let resources = [
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
            "2024-03-01T11:00:00Z",
        ),
        json!({"resourceType": "Immunization", "id": "imm-1", "status": "completed",
               "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
               "patient": {"reference": "Patient/p1"},
               "occurrenceDateTime": "2024-03-01T09:00:00Z"}),
    ];
    for resource in resources {
        let kind = resource["resourceType"].as_str().unwrap().to_owned();
        let id = resource["id"].as_str().unwrap().to_owned();
        fhir.update(&ctx, &kind, &id, resource, None).await.unwrap();
    }
    let (state, _guard) = embedded_store().await.unwrap();
    let mut options = RuntimeOptions::default();
    options.checkpoint.every_ms = 20;
    let deps = BuiltinDeps {
        fhir: fhir.clone(),
        log: log.clone(),
        state: state.clone(),
        options,
    };
    let qsofa = spawn_builtin("qsofa", &deps).await.unwrap().handle;
    let immunizations = spawn_builtin("immunizations", &deps).await.unwrap();
    wait_checkpointed(&state, "qsofa", "fhir.observation.vitals", 2).await;
    wait_checkpointed(&state, "immunizations", "fhir.Immunization", 1).await;
    let qsofa_metrics = qsofa.metrics();
    let immunization_metrics = immunizations.handle.metrics();
    qsofa.shutdown().await.unwrap();
    immunizations.handle.shutdown().await.unwrap();
    commit_path.stop().await;

    // The events on the log really are claim checks.
    let mut claim_checks = 0;
    for partition in 0..2 {
        for record in log
            .read("fhir.observation.vitals", partition, 0, 10)
            .await
            .unwrap()
        {
            let event: Value = serde_json::from_slice(&record.payload).unwrap();
            assert!(event.get("data").is_none(), "{event}");
            assert!(event["dataRef"].as_str().unwrap().contains("/_history/1"));
            claim_checks += 1;
        }
    }
    assert_eq!(claim_checks, 2);

    assert_eq!(qsofa_metrics.dead_lettered.load(Ordering::Relaxed), 0);
    assert_eq!(
        immunization_metrics.dead_lettered.load(Ordering::Relaxed),
        0
    );
    let mut alerts = Vec::new();
    for partition in 0..2 {
        for record in log
            .read("fhir.alerts.sepsis", partition, 0, 10)
            .await
            .unwrap()
        {
            alerts.push(serde_json::from_slice::<Value>(&record.payload).unwrap());
        }
    }
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["patient"], "Patient/p1");
    assert_eq!(alerts[0]["action"], "raised");
    let view = immunizations.immunizations.unwrap();
    let totals = view.totals();
    assert_eq!(totals.len(), 1, "{totals:?}");
    assert_eq!((totals[0].vaccine.as_str(), totals[0].count), ("140", 1));
}
