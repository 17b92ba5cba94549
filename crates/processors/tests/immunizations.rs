//! The immunizations processor end to end: counts by CVX vaccine from change events, honouring
//! `not-done` and deletes, kept across a restart.

mod common;

use std::sync::Arc;

use flare_events::Relay;
use flare_processors::{
    RuntimeOptions,
    builtin::{BuiltinDeps, spawn_builtin},
};
use flare_search::Registry;
use flare_service::{Fhir, FhirConfig, RequestContext};
use flare_store::{
    Store,
    sqlite::{SqliteConfig, SqliteStore},
};
use serde_json::{Value, json};

use common::*;

fn immunization(id: &str, system: &str, cvx: &str, status: &str, date: &str) -> Value {
    json!({
        "resourceType": "Immunization",
        "id": id,
        "status": status,
        "vaccineCode": {"coding": [{"system": system, "code": cvx}]},
        "patient": {"reference": "Patient/p1"},
        "occurrenceDateTime": date,
    })
}

fn totals(view: &flare_processors::builtin::immunizations::ImmunizationView) -> Vec<(String, u64)> {
    view.totals()
        .into_iter()
        .map(|t| (t.vaccine, t.count))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_by_vaccine_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteConfig::in_memory()).unwrap());
    let fhir = Fhir::new(
        store.clone(),
        Arc::new(Registry::r4()),
        FhirConfig::default(),
    );
    let log = open_log(dir.path(), 2).await;
    let (stop_relay, stopped) = tokio::sync::watch::channel(false);
    let relay = tokio::spawn(Relay::new(store, log.clone()).run(stopped));
    let ctx = RequestContext::new("http://127.0.0.1/fhir");
    let cvx = "http://hl7.org/fhir/sid/cvx";
    let legacy = "http://www2a.cdc.gov/vaccines/iis/iisstandards/vaccines.asp?rpt=cvx";
    for resource in [
        immunization("i1", cvx, "140", "completed", "2024-01-05T10:00:00Z"),
        immunization("i2", legacy, "140", "completed", "2024-01-06T10:00:00Z"),
        immunization("i3", cvx, "08", "completed", "2024-01-06T11:00:00Z"),
        immunization("i4", cvx, "08", "not-done", "2024-01-07T11:00:00Z"),
        immunization("i5", cvx, "133", "completed", "2024-01-07T12:00:00Z"),
    ] {
        let id = resource["id"].as_str().unwrap().to_owned();
        fhir.update(&ctx, "Immunization", &id, resource, None)
            .await
            .unwrap();
    }
    fhir.delete(&ctx, "Immunization", "i5", None).await.unwrap();

    let (state, _guard) = embedded_store().await.unwrap();
    let mut options = RuntimeOptions::default();
    options.checkpoint.every_ms = 20;
    let deps = BuiltinDeps {
        fhir,
        log: log.clone(),
        state: state.clone(),
        options,
    };
    let spawned = spawn_builtin("immunizations", &deps).await.unwrap();
    let view = spawned.immunizations.unwrap();
    wait_checkpointed(&state, "immunizations", "fhir.Immunization", 6).await;
    spawned.handle.shutdown().await.unwrap();
    let expected = vec![("08".to_string(), 1), ("140".to_string(), 2)];
    assert_eq!(totals(&view), expected);

    // A new start shows the checkpointed counts before any new record arrives.
    let again = spawn_builtin("immunizations", &deps).await.unwrap();
    assert_eq!(totals(&again.immunizations.unwrap()), expected);
    again.handle.shutdown().await.unwrap();
    let _ = stop_relay.send(true);
    relay.await.unwrap();
}
