//! Crash test of subscription delivery: `flare serve` is killed with SIGKILL while writes keep
//! coming and committed changes still wait for delivery; after a restart on the same data
//! directory every matching change reaches the rest-hook receiver, event numbers are gap-free,
//! and a notification delivered twice carries the same event id both times.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use common::{Served, client};
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
const TOPIC: &str = "http://flare.dev/fhir/SubscriptionTopic/observation-created";
const WATCHED_CODE: &str = "8867-4";
const OTHER_CODE: &str = "8310-5";
/// How long the receiver takes per notification: slower than the writers, so that committed
/// changes queue up for delivery and the kill finds some of them undelivered.
const RECEIVER_DELAY: Duration = Duration::from_millis(15);

/// One `notification-event` as the receiver saw it.
#[derive(Debug, Clone)]
struct Delivered {
    number: u64,
    event_id: String,
    /// `Observation/<id>`, without the base URL (which changes with the port on restart).
    focus: String,
}

/// A rest-hook endpoint on 127.0.0.1 that records every event notification on arrival (before
/// answering, so a notification cut short by the kill counts as seen and is expected again).
struct Receiver {
    endpoint: String,
    events: Arc<Mutex<Vec<Delivered>>>,
    _runtime: tokio::runtime::Runtime,
}

async fn receive(State(events): State<Arc<Mutex<Vec<Delivered>>>>, body: Bytes) -> StatusCode {
    let Ok(bundle) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let status = &bundle["entry"][0]["resource"];
    let parameters = status["parameter"].as_array().cloned().unwrap_or_default();
    let kind = parameters
        .iter()
        .find(|parameter| parameter["name"] == "type")
        .and_then(|parameter| parameter["valueCode"].as_str());
    if kind == Some("event-notification") {
        let mut seen = Vec::new();
        for event in parameters
            .iter()
            .filter(|parameter| parameter["name"] == "notification-event")
        {
            let part = |name: &str| {
                event["part"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|part| part["name"] == name)
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            let number = part("event-number")["valueString"]
                .as_str()
                .and_then(|number| number.parse().ok())
                .expect("every notification-event has a numeric event-number");
            let reference = part("focus")["valueReference"]["reference"]
                .as_str()
                .expect("id-only notifications name their focus")
                .to_owned();
            let focus = reference
                .rsplit_once("/Observation/")
                .map(|(_, id)| format!("Observation/{id}"))
                .unwrap_or(reference);
            let event_id = event["extension"][0]["valueString"]
                .as_str()
                .expect("every notification-event carries its event id")
                .to_owned();
            seen.push(Delivered {
                number,
                event_id,
                focus,
            });
        }
        events.lock().extend(seen);
    }
    tokio::time::sleep(RECEIVER_DELAY).await;
    StatusCode::OK
}

impl Receiver {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(events.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            endpoint: format!("http://{address}/hook"),
            events,
            _runtime: runtime,
        }
    }

    fn events(&self) -> Vec<Delivered> {
        self.events.lock().clone()
    }

    fn distinct_numbers(&self) -> usize {
        self.events()
            .iter()
            .map(|event| event.number)
            .collect::<BTreeSet<_>>()
            .len()
    }
}

fn start_server(data_dir: &std::path::Path) -> Served {
    Served::start_with(
        data_dir,
        &[
            "--processors",
            "none",
            "--subscription-allow",
            "127.0.0.0/8",
        ],
    )
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Writers that create Observations in a loop against whichever server is current, one in
/// four with a code the subscription does not watch. Refused connections (the server is down)
/// are retried; the outcome of a request cut off by the kill is unknown, so the store, not the
/// writers, says what was committed.
struct Writers {
    base: Arc<RwLock<String>>,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<String>>>,
    attempts: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Writers {
    fn start(base: &str, count: usize) -> Self {
        let base = Arc::new(RwLock::new(base.to_owned()));
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(AtomicUsize::new(0));
        let threads = (0..count)
            .map(|_| {
                let (base, stop, acknowledged, attempts) = (
                    base.clone(),
                    stop.clone(),
                    acknowledged.clone(),
                    attempts.clone(),
                );
                thread::spawn(move || {
                    let http = client();
                    while !stop.load(Ordering::Relaxed) {
                        let number = attempts.fetch_add(1, Ordering::Relaxed);
                        let code = if number % 4 == 3 {
                            OTHER_CODE
                        } else {
                            WATCHED_CODE
                        };
                        let observation = json!({
                            "resourceType": "Observation",
                            "status": "final",
                            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                            "subject": {"reference": format!("Patient/p{}", number % 7)},
                            "valueQuantity": {"value": number % 200, "unit": "/min",
                                "system": "http://unitsofmeasure.org", "code": "/min"},
                        });
                        let url = format!("{}/Observation", base.read());
                        match http.post(url).json(&observation).send() {
                            Ok(response) if response.status().as_u16() == 201 => {
                                if code == WATCHED_CODE {
                                    let created: Value = response.json().unwrap_or(Value::Null);
                                    if let Some(id) = created["id"].as_str() {
                                        acknowledged.lock().push(format!("Observation/{id}"));
                                    }
                                }
                            }
                            Ok(response) => {
                                panic!("a create was refused: HTTP {}", response.status())
                            }
                            // The server is down or was killed mid-request.
                            Err(_) => thread::sleep(Duration::from_millis(20)),
                        }
                    }
                })
            })
            .collect();
        Self {
            base,
            stop,
            acknowledged,
            attempts,
            threads,
        }
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().len()
    }

    fn point_at(&self, base: &str) {
        *self.base.write() = base.to_owned();
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a writer panicked");
        }
        assert!(self.attempts.load(Ordering::Relaxed) > 0);
        self.acknowledged.lock().clone()
    }
}

#[test]
fn sigkill_between_commit_and_delivery_loses_nothing_and_keeps_numbers() {
    let data_dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let mut server = start_server(data_dir.path());

    let subscription = json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "crash test",
        "criteria": TOPIC,
        "_criteria": {"extension": [{"url": format!("{BACKPORT}backport-filter-criteria"),
            "valueString": format!("code=http://loinc.org|{WATCHED_CODE}")}]},
        "channel": {
            "type": "rest-hook",
            "endpoint": receiver.endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"),
                "valueCode": "id-only"}]}
        }
    });
    let response = server
        .http
        .post(format!("{}/Subscription", server.base))
        .json(&subscription)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let id = response.json::<Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until(
        "the subscription is active",
        Duration::from_secs(60),
        || {
            server.search(&format!("Subscription?_id={id}"))["entry"][0]["resource"]["status"]
                == "active"
        },
    );

    // Sustained writes; kill once some notifications went out and a backlog of committed,
    // undelivered changes has built up behind the slow receiver.
    let writers = Writers::start(&server.base, 3);
    wait_until(
        "notifications flow and a backlog builds up",
        Duration::from_secs(120),
        || receiver.distinct_numbers() >= 20 && writers.acknowledged() >= 150,
    );
    let delivered_before_kill = receiver.distinct_numbers();
    let acknowledged_before_kill = writers.acknowledged();
    server.kill();
    assert!(
        acknowledged_before_kill > delivered_before_kill + 20,
        "the kill must find committed changes undelivered \
         ({acknowledged_before_kill} acknowledged, {delivered_before_kill} delivered)"
    );

    // Same data directory, new port; the writers carry on against it.
    let server = start_server(data_dir.path());
    writers.point_at(&server.base);
    let acknowledged_at_restart = writers.acknowledged();
    wait_until(
        "writes succeed after the restart",
        Duration::from_secs(60),
        || writers.acknowledged() >= acknowledged_at_restart + 50,
    );
    let acknowledged = writers.stop();

    // What the store holds is what must be delivered: acknowledged creates and any create
    // whose answer the kill cut off but which committed.
    let stored: BTreeSet<String> = server
        .all(&format!(
            "Observation?code=http://loinc.org|{WATCHED_CODE}&_count=500"
        ))
        .iter()
        .map(|resource| format!("Observation/{}", resource["id"].as_str().unwrap()))
        .collect();
    for id in &acknowledged {
        assert!(
            stored.contains(id),
            "{id} was acknowledged but is not stored"
        );
    }
    wait_until(
        "every stored change is delivered",
        Duration::from_secs(300),
        || {
            let delivered: BTreeSet<String> = receiver
                .events()
                .into_iter()
                .map(|event| event.focus)
                .collect();
            stored.is_subset(&delivered)
        },
    );
    // Give a straggler (a wrongly numbered extra event) the chance to show up.
    thread::sleep(RECEIVER_DELAY * 20);

    let events = receiver.events();
    let mut by_number: BTreeMap<u64, Vec<&Delivered>> = BTreeMap::new();
    for event in &events {
        by_number.entry(event.number).or_default().push(event);
    }
    let numbers: Vec<u64> = by_number.keys().copied().collect();
    let expected: Vec<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(
        numbers, expected,
        "event numbers are 1..=N without gaps, one per stored change"
    );
    let mut event_ids = BTreeSet::new();
    let mut focuses = BTreeSet::new();
    let mut duplicates = 0;
    for (number, deliveries) in &by_number {
        let first = deliveries[0];
        for again in &deliveries[1..] {
            duplicates += 1;
            assert_eq!(
                again.event_id, first.event_id,
                "event {number} delivered twice with different event ids"
            );
            assert_eq!(
                again.focus, first.focus,
                "event {number} delivered twice with different focus"
            );
        }
        assert!(
            event_ids.insert(first.event_id.clone()),
            "event id {} is used by two event numbers",
            first.event_id
        );
        assert!(
            focuses.insert(first.focus.clone()),
            "{} was numbered twice",
            first.focus
        );
    }
    assert_eq!(focuses, stored, "exactly the stored changes are numbered");
    eprintln!(
        "crash test: {} stored changes, {} acknowledged, {delivered_before_kill} delivered before the kill, {duplicates} delivered twice",
        stored.len(),
        acknowledged.len(),
    );
}
