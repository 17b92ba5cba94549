//! The `qsofa-pager` processor against a real HTTP receiver on loopback (allow-listed): one
//! PagerDuty incident per episode, a resolve at the end, retries after a 500, and a refused
//! page (400) parked in the dead-letter topic without retries.

mod common;

use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering},
};

use axum::{Router, extract::State, http::StatusCode, routing::post};
use flare_clinical::{
    AlertEvent, Criterion, Episode, EvidenceRef, ResolveReason, Timestamp, alerts,
};
use flare_log::{EventLog, NewRecord};
use flare_processors::{
    DeadLetters, RetryPolicy, RuntimeOptions,
    builtin::{
        BuiltinDeps, BuiltinError,
        pager::{self, PagerConfig},
        spawn_builtin,
    },
};
use flare_search::Registry;
use flare_service::{Fhir, FhirConfig};
use flare_store::sqlite::{SqliteConfig, SqliteStore};
use parking_lot::Mutex;
use serde_json::Value;

use common::*;

/// Records every body and answers with the scripted statuses first, then 202.
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<Value>>>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

async fn receive(State(receiver): State<Receiver>, body: String) -> StatusCode {
    let parsed = serde_json::from_str(&body).unwrap_or(Value::Null);
    receiver.bodies.lock().push(parsed);
    let status = receiver.script.lock().pop_front().unwrap_or(202);
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn start_receiver(script: &[u16]) -> (Receiver, String) {
    let receiver = Receiver::default();
    receiver.script.lock().extend(script.iter().copied());
    let app = Router::new()
        .route("/v2/enqueue", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v2/enqueue", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (receiver, url)
}

fn episode(patient: &str, score: u8, active: bool) -> Episode {
    let t = |text: &str| Timestamp::parse_fhir(text).unwrap();
    let mut basis = vec![
        EvidenceRef {
            observation_id: format!("{patient}-rr"),
            criterion: Criterion::RespiratoryRate,
            effective: t("2024-03-01T10:00:00Z"),
            value: 24.0,
        },
        EvidenceRef {
            observation_id: format!("{patient}-sbp"),
            criterion: Criterion::SystolicBloodPressure,
            effective: t("2024-03-01T11:00:00Z"),
            value: 95.0,
        },
    ];
    if score == 3 {
        basis.push(EvidenceRef {
            observation_id: format!("{patient}-gcs"),
            criterion: Criterion::GlasgowComaScore,
            effective: t("2024-03-01T12:00:00Z"),
            value: 13.0,
        });
    }
    Episode {
        id: flare_clinical::qsofa::episode_id(patient, t("2024-03-01T10:00:00Z")),
        patient_id: patient.into(),
        onset: t("2024-03-01T10:00:00Z"),
        peak_at: t("2024-03-01T11:00:00Z"),
        end: t("2024-03-01T16:00:00Z"),
        score,
        basis,
        active,
    }
}

async fn publish(log: &Arc<dyn EventLog>, events: &[AlertEvent]) {
    for event in events {
        let record = NewRecord {
            key: Some(alerts::alert_key(event).into_bytes()),
            headers: Vec::new(),
            payload: alerts::alert_message(event).to_string().into_bytes(),
            timestamp_ms: None,
        };
        log.append(alerts::ALERTS_TOPIC, vec![record])
            .await
            .unwrap();
    }
}

async fn deps(log: Arc<dyn EventLog>, url: Option<&str>) -> (BuiltinDeps, Guard) {
    let store = Arc::new(SqliteStore::open(SqliteConfig::in_memory()).unwrap());
    let fhir = Fhir::new(store, Arc::new(Registry::r4()), FhirConfig::default());
    let (state, guard) = embedded_store().await.unwrap();
    let mut options = RuntimeOptions::default();
    options.checkpoint.every_ms = 20;
    options.qsofa.pager = url.map(|url| PagerConfig {
        url: url.to_owned(),
        routing_key: "R0UTING".into(),
        source: "flare-test".into(),
        endpoints: toml::from_str("allow = [\"127.0.0.0/8\"]").unwrap(),
        delivery: Default::default(),
        retry: RetryPolicy {
            base_ms: 1,
            factor: 2.0,
            max_delay_ms: 4,
            max_attempts: 4,
        },
    });
    let deps = BuiltinDeps {
        fhir,
        log,
        state,
        options,
    };
    (deps, guard)
}

/// The `event_action`s received for one episode, in order.
fn actions_of(bodies: &[Value], episode_id: &str) -> Vec<String> {
    bodies
        .iter()
        .filter(|b| b["dedup_key"] == episode_id)
        .map(|b| b["event_action"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodes_page_once_resolve_at_the_end_and_survive_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 2).await;
    // The first call fails with a 500: it must be sent again.
    let (receiver, url) = start_receiver(&[500]).await;
    let (deps, _guard) = deps(log.clone(), Some(&url)).await;

    let first = episode("p1", 2, true);
    let second = episode("p2", 2, true);
    publish(
        &log,
        &[
            AlertEvent::Raised {
                episode: first.clone(),
            },
            AlertEvent::Raised {
                episode: second.clone(),
            },
            AlertEvent::Updated {
                episode: episode("p1", 3, true),
            },
            AlertEvent::Resolved {
                episode: episode("p1", 3, false),
                reason: ResolveReason::Elapsed,
            },
        ],
    )
    .await;

    let handle = spawn_builtin(pager::NAME, &deps).await.unwrap().handle;
    wait_checkpointed(&deps.state, pager::NAME, alerts::ALERTS_TOPIC, 4).await;
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();

    let bodies = receiver.bodies.lock().clone();
    // Four messages and one retry.
    assert_eq!(bodies.len(), 5, "{bodies:#?}");
    assert_eq!(metrics.retried.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 0);
    // The call that got the 500 is repeated unchanged right after.
    assert_eq!(bodies[0], bodies[1]);

    // Every page of an episode carries its id as dedup_key: one incident per episode,
    // resolved by the last page.
    let first_actions = actions_of(&bodies, &first.id);
    let second_actions = actions_of(&bodies, &second.id);
    assert_eq!(first_actions.len() + second_actions.len(), 5);
    assert_eq!(first_actions.last().map(String::as_str), Some("resolve"));
    assert_eq!(
        first_actions.iter().filter(|a| *a == "resolve").count(),
        1,
        "{first_actions:?}"
    );
    assert!(second_actions.iter().all(|a| a == "trigger"));
    let sent_once: Vec<&Value> = bodies
        .iter()
        .skip(1)
        .filter(|b| b["dedup_key"] == second.id)
        .collect();
    assert_eq!(
        sent_once.len(),
        1,
        "p2's single trigger, apart from a retry"
    );

    // The body is the Events API v2 shape with the configured key and source.
    let trigger = &bodies[1];
    assert_eq!(trigger["routing_key"], "R0UTING");
    assert_eq!(trigger["payload"]["source"], "flare-test");
    assert!(
        trigger["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("qSOFA")
    );
    let escalated = bodies
        .iter()
        .find(|b| b["dedup_key"] == first.id && b["payload"]["severity"] == "critical");
    assert!(escalated.is_some(), "the score-3 update pages as critical");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_pager_sends_what_came_while_it_was_down_and_nothing_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 2).await;
    let (receiver, url) = start_receiver(&[]).await;
    let (deps, _guard) = deps(log.clone(), Some(&url)).await;
    let first = episode("p1", 2, true);
    let second = episode("p2", 2, true);

    publish(
        &log,
        &[AlertEvent::Raised {
            episode: first.clone(),
        }],
    )
    .await;
    let handle = spawn_builtin(pager::NAME, &deps).await.unwrap().handle;
    wait_checkpointed(&deps.state, pager::NAME, alerts::ALERTS_TOPIC, 1).await;
    handle.shutdown().await.unwrap();

    // Alerts published while the pager is down are paged when it comes back.
    publish(
        &log,
        &[
            AlertEvent::Raised {
                episode: second.clone(),
            },
            AlertEvent::Resolved {
                episode: episode("p1", 2, false),
                reason: ResolveReason::Withdrawn,
            },
        ],
    )
    .await;
    let handle = spawn_builtin(pager::NAME, &deps).await.unwrap().handle;
    wait_checkpointed(&deps.state, pager::NAME, alerts::ALERTS_TOPIC, 3).await;
    handle.shutdown().await.unwrap();

    let bodies = receiver.bodies.lock().clone();
    assert_eq!(actions_of(&bodies, &first.id), ["trigger", "resolve"]);
    assert_eq!(actions_of(&bodies, &second.id), ["trigger"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_page_is_not_retried_and_is_parked() {
    let dir = tempfile::tempdir().unwrap();
    // One partition, so the refused page comes first and the next must still go out.
    let log = open_log(dir.path(), 1).await;
    let (receiver, url) = start_receiver(&[400]).await;
    let (deps, _guard) = deps(log.clone(), Some(&url)).await;
    let refused = episode("p1", 2, true);
    let next = episode("p2", 2, true);
    publish(
        &log,
        &[
            AlertEvent::Raised {
                episode: refused.clone(),
            },
            AlertEvent::Raised {
                episode: next.clone(),
            },
        ],
    )
    .await;

    let handle = spawn_builtin(pager::NAME, &deps).await.unwrap().handle;
    wait_checkpointed(&deps.state, pager::NAME, alerts::ALERTS_TOPIC, 2).await;
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();

    let bodies = receiver.bodies.lock().clone();
    assert_eq!(actions_of(&bodies, &refused.id), ["trigger"]);
    assert_eq!(actions_of(&bodies, &next.id), ["trigger"]);
    assert_eq!(metrics.retried.load(Ordering::Relaxed), 0);
    assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 1);
    let letters = DeadLetters::new(log.clone()).list(None, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id.topic, "fhir.alerts.sepsis.dlq");
    let error = letters[0].error.as_deref().unwrap();
    assert!(
        error.contains(&refused.id) && error.contains("400"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pager_needs_its_section_and_calls_no_private_endpoint_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 1).await;
    let (unconfigured, _guard) = deps(log.clone(), None).await;
    assert!(matches!(
        spawn_builtin(pager::NAME, &unconfigured).await,
        Err(BuiltinError::NotConfigured { .. })
    ));

    let (receiver, url) = start_receiver(&[]).await;
    let (mut deps, _guard) = deps(log.clone(), Some(&url)).await;
    if let Some(pager) = deps.options.qsofa.pager.as_mut() {
        pager.endpoints = Default::default();
    }
    publish(
        &log,
        &[AlertEvent::Raised {
            episode: episode("p1", 2, true),
        }],
    )
    .await;
    let handle = spawn_builtin(pager::NAME, &deps).await.unwrap().handle;
    wait_checkpointed(&deps.state, pager::NAME, alerts::ALERTS_TOPIC, 1).await;
    let metrics = handle.metrics();
    handle.shutdown().await.unwrap();
    assert!(receiver.bodies.lock().is_empty());
    assert_eq!(metrics.retried.load(Ordering::Relaxed), 0);
    assert_eq!(metrics.dead_lettered.load(Ordering::Relaxed), 1);
}
