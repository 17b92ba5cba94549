//! Idle patients: the watermark clock resolves an episode whose patient gets no newer vitals,
//! once the clock (here event time: the newest vital of any patient, minus the allowed
//! lateness) has passed the episode's end; an episode still inside stays active.

mod common;

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};
use std::time::Duration;

use flare_clinical::{
    AlertEvent, Criterion, Episode, EvidenceRef, ResolveReason, Timestamp, alerts,
};
use flare_log::{EventLog, NewRecord};
use flare_processors::{
    RuntimeOptions,
    builtin::{
        BuiltinDeps, spawn_builtin,
        watermark::{IdleClock, IdleResolution, WATERMARK_TOPIC, WatermarkClock, parse_watermark},
    },
};
use flare_service::RequestContext;
use serde_json::Value;

use common::*;

async fn alert_messages(log: &Arc<dyn EventLog>) -> Vec<Value> {
    let mut messages = Vec::new();
    for partition in 0..2 {
        for record in log
            .read(alerts::ALERTS_TOPIC, partition, 0, 1000)
            .await
            .unwrap_or_default()
        {
            messages.push(serde_json::from_slice::<Value>(&record.payload).unwrap());
        }
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_time_clock_resolves_the_episode_of_an_idle_patient() {
    let dir = tempfile::tempdir().unwrap();
    let commit_path = CommitPath::start(dir.path(), 2).await;
    let (fhir, log) = (commit_path.fhir.clone(), commit_path.log.clone());

    let ctx = RequestContext::new("http://127.0.0.1/fhir");
    let observations = [
        // p1: positive on 1 March, then silent.
        vital("rr-1", "p1", "9279-1", 24.0, "/min", "2024-03-01T10:00:00Z"),
        vital(
            "sbp-1",
            "p1",
            "8480-6",
            95.0,
            "mm[Hg]",
            "2024-03-01T12:00:00Z",
        ),
        // p3: positive early on 2 March, its window still open at the clock's watermark.
        vital("rr-3", "p3", "9279-1", 26.0, "/min", "2024-03-02T03:00:00Z"),
        vital(
            "sbp-3",
            "p3",
            "8480-6",
            90.0,
            "mm[Hg]",
            "2024-03-02T03:30:00Z",
        ),
        // p2: a normal vital that moves event time to 06:00 on 2 March.
        vital("rr-2", "p2", "9279-1", 16.0, "/min", "2024-03-02T06:00:00Z"),
    ];
    for observation in observations {
        let id = observation["id"].as_str().unwrap().to_owned();
        fhir.update(&ctx, "Observation", &id, observation, None)
            .await
            .unwrap();
    }

    let (state, _guard) = embedded_store().await.unwrap();
    let mut options = RuntimeOptions::default(); // allowed lateness 2 h
    options.checkpoint.every_ms = 20;
    options.qsofa.idle = IdleResolution {
        clock: IdleClock::EventTime,
        every_ms: 20,
    };
    let deps = BuiltinDeps {
        fhir: fhir.clone(),
        log: log.clone(),
        state: state.clone(),
        options,
    };
    let handle = spawn_builtin("qsofa", &deps).await.unwrap().handle;
    wait_checkpointed(&state, "qsofa", "fhir.observation.vitals", 5).await;

    let mut resolved = None;
    for _ in 0..3000 {
        resolved = alert_messages(&log)
            .await
            .into_iter()
            .find(|m| m["patient"] == "Patient/p1" && m["action"] == "resolved");
        if resolved.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the watermark record's checkpoint land before stopping.
    wait_checkpointed(&state, "qsofa", WATERMARK_TOPIC, 1).await;
    handle.shutdown().await.unwrap();
    commit_path.stop().await;

    let resolved = resolved.expect("p1's episode never resolved");
    assert_eq!(resolved["resolution"], "elapsed");
    let episode = resolved["episodeId"].as_str().unwrap();
    let flag = fhir.read("Flag", episode).await.unwrap();
    let flag: Value = serde_json::from_str(flag.body.as_deref().unwrap()).unwrap();
    assert_eq!(flag["status"], "inactive");

    // The watermark p1 was moved to: the newest vital seen when the clock ticked past p1's
    // episode, minus the 2 h lateness. Which vital that was depends on how far the processor
    // had got (the clock ticks beside it): p3's 03:00 or 03:30, or p2's 06:00.
    let mut watermarks = Vec::new();
    for partition in 0..2 {
        for record in log
            .read(WATERMARK_TOPIC, partition, 0, 100)
            .await
            .unwrap_or_default()
        {
            watermarks.push((
                String::from_utf8(record.key.clone().unwrap()).unwrap(),
                parse_watermark(&record.payload).unwrap(),
            ));
        }
    }
    assert_eq!(watermarks.len(), 1, "{watermarks:?}");
    assert_eq!(watermarks[0].0, "Patient/p1");
    let possible = [
        "2024-03-02T01:00:00Z",
        "2024-03-02T01:30:00Z",
        "2024-03-02T04:00:00Z",
    ]
    .map(|text| Timestamp::parse_fhir(text).unwrap());
    assert!(possible.contains(&watermarks[0].1), "{watermarks:?}");

    let messages = alert_messages(&log).await;
    let p3: Vec<&Value> = messages
        .iter()
        .filter(|m| m["patient"] == "Patient/p3")
        .collect();
    assert_eq!(p3.len(), 1, "{p3:?}");
    assert_eq!(p3[0]["action"], "raised");
}

fn episode(end: &str, active: bool) -> Episode {
    let t = |text: &str| Timestamp::parse_fhir(text).unwrap();
    Episode {
        id: "qsofa-idle-1".into(),
        patient_id: "p1".into(),
        onset: t("2024-03-01T10:00:00Z"),
        peak_at: t("2024-03-01T11:00:00Z"),
        end: t(end),
        score: 2,
        basis: vec![EvidenceRef {
            observation_id: "rr".into(),
            criterion: Criterion::RespiratoryRate,
            effective: t("2024-03-01T10:00:00Z"),
            value: 24.0,
        }],
        active,
    }
}

async fn publish(log: &Arc<dyn EventLog>, event: &AlertEvent) {
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

#[tokio::test]
async fn the_clock_nudges_each_elapsed_episode_once_and_again_after_it_grew() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 1).await;
    let latest = Arc::new(AtomicI64::new(i64::MIN));
    let mut clock = WatermarkClock::new(
        log.clone(),
        IdleResolution {
            clock: IdleClock::EventTime,
            every_ms: 1,
        },
        Duration::from_secs(2 * 3600),
        latest.clone(),
    );
    let millis = |text: &str| Timestamp::parse_fhir(text).unwrap().as_millis();

    publish(
        &log,
        &AlertEvent::Raised {
            episode: episode("2024-03-01T16:00:00Z", true),
        },
    )
    .await;
    assert_eq!(clock.tick().await.unwrap(), 0, "no event time seen yet");
    // 17:59 minus 2 h is before the end: not elapsed.
    latest.store(millis("2024-03-01T17:59:00Z"), Ordering::Relaxed);
    assert_eq!(clock.tick().await.unwrap(), 0);
    latest.store(millis("2024-03-01T18:01:00Z"), Ordering::Relaxed);
    assert_eq!(clock.tick().await.unwrap(), 1);
    assert_eq!(clock.tick().await.unwrap(), 0, "sent once");

    // Later evidence extended the episode: once elapsed again, it is nudged again.
    publish(
        &log,
        &AlertEvent::Updated {
            episode: episode("2024-03-01T20:00:00Z", true),
        },
    )
    .await;
    assert_eq!(clock.tick().await.unwrap(), 0);
    latest.store(millis("2024-03-01T22:30:00Z"), Ordering::Relaxed);
    assert_eq!(clock.tick().await.unwrap(), 1);

    // Resolved episodes are forgotten.
    publish(
        &log,
        &AlertEvent::Resolved {
            episode: episode("2024-03-01T20:00:00Z", false),
            reason: ResolveReason::Elapsed,
        },
    )
    .await;
    latest.store(millis("2024-03-05T00:00:00Z"), Ordering::Relaxed);
    assert_eq!(clock.tick().await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_running_clock_nudges_an_elapsed_episode_once_and_stops_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 1).await;
    publish(
        &log,
        &AlertEvent::Raised {
            episode: episode("2024-03-01T16:00:00Z", true),
        },
    )
    .await;
    let latest = Arc::new(AtomicI64::new(
        Timestamp::parse_fhir("2024-03-02T00:00:00Z")
            .unwrap()
            .as_millis(),
    ));
    let clock = WatermarkClock::new(
        log.clone(),
        IdleResolution {
            clock: IdleClock::EventTime,
            every_ms: 60_000,
        },
        Duration::from_secs(2 * 3600),
        latest,
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(clock.run(stopped));

    // Virtual time: a few hours of ticks pass in no time.
    let mut sent = Vec::new();
    for _ in 0..500 {
        sent = log
            .read(WATERMARK_TOPIC, 0, 0, 10)
            .await
            .unwrap_or_default();
        if !sent.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(sent.len(), 1);
    assert_eq!(
        parse_watermark(&sent[0].payload),
        Timestamp::parse_fhir("2024-03-01T22:00:00Z")
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    let _ = stop.send(true);
    running.await.unwrap();
    let after = log.read(WATERMARK_TOPIC, 0, 0, 10).await.unwrap();
    assert_eq!(after.len(), 1, "an elapsed episode is nudged once");
}

#[tokio::test]
async fn an_off_clock_returns_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path(), 1).await;
    let clock = WatermarkClock::new(
        log,
        IdleResolution::default(),
        Duration::from_secs(7200),
        Arc::new(AtomicI64::new(0)),
    );
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    // Would wait for a stop signal that never comes if the clock were on.
    clock.run(stopped).await;
}
