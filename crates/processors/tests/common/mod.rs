//! Shared test helpers: a private `redis-server`, a counting processor, waiting for catch-up.
#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use flare_log::{EmbeddedLog, EmbeddedLogConfig, EventLog, NewRecord, Record};
use flare_processors::{
    Context, Outcome, ProcessError, Processor, StateStore,
    state::{embedded::SqliteStateStore, redis::RedisStateStore},
};
use serde::{Deserialize, Serialize};

/// A `redis-server` of our own on a free loopback port, in a temporary directory, stopped on
/// drop.
pub struct RedisServer {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Option<Self> {
        if std::env::var("FLARE_SKIP_REDIS").is_ok_and(|v| v == "1") {
            return None;
        }
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "redis-server is not installed: run `bash scripts/test.sh` (it installs it), or \
             `apt-get install -y redis-server`; set FLARE_SKIP_REDIS=1 to skip the Redis tests"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        let server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
            _dir: dir,
        };
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not accept connections on port {port}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What keeps a state store alive for a test.
pub enum Guard {
    Dir(tempfile::TempDir),
    Redis(RedisServer),
}

pub async fn embedded_store() -> Option<(Arc<dyn StateStore>, Guard)> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStateStore::open(&dir.path().join("state.db"))
        .await
        .unwrap();
    Some((Arc::new(store), Guard::Dir(dir)))
}

pub async fn redis_store() -> Option<(Arc<dyn StateStore>, Guard)> {
    let server = RedisServer::start()?;
    let store = RedisStateStore::connect(&server.url).await.unwrap();
    Some((Arc::new(store), Guard::Redis(server)))
}

/// The commit path processors write through: an in-memory store, the FHIR service over it,
/// an embedded log and the outbox relay between them.
pub struct CommitPath {
    pub fhir: flare_service::Fhir,
    pub log: Arc<dyn EventLog>,
    stop_relay: tokio::sync::watch::Sender<bool>,
    relay: tokio::task::JoinHandle<()>,
}

impl CommitPath {
    pub async fn start(dir: &Path, partitions: u32) -> Self {
        Self::start_with(dir, partitions, flare_service::FhirConfig::default()).await
    }

    pub async fn start_with(
        dir: &Path,
        partitions: u32,
        config: flare_service::FhirConfig,
    ) -> Self {
        use flare_store::{
            Store,
            sqlite::{SqliteConfig, SqliteStore},
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteConfig::in_memory()).unwrap());
        let fhir = flare_service::Fhir::new(
            store.clone(),
            Arc::new(flare_search::Registry::r4()),
            config,
        );
        let log = open_log(dir, partitions).await;
        let relay = flare_events::Relay::new(store, log.clone());
        let (stop_relay, stopped) = tokio::sync::watch::channel(false);
        let relay = tokio::spawn(relay.run(stopped));
        Self {
            fhir,
            log,
            stop_relay,
            relay,
        }
    }

    /// Stops the relay after it has moved everything committed.
    pub async fn stop(self) {
        let _ = self.stop_relay.send(true);
        self.relay.await.unwrap();
    }
}

/// A vital-sign Observation; a string `value` becomes `valueString` (a poison record for
/// qSOFA), anything else `valueQuantity` in `unit`.
pub fn vital(
    id: &str,
    patient: &str,
    loinc: &str,
    value: impl Into<serde_json::Value>,
    unit: &str,
    at: &str,
) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut observation = json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": at,
    });
    match value.into() {
        Value::String(text) => observation["valueString"] = json!(text),
        number => {
            observation["valueQuantity"] = json!({"value": number, "unit": unit,
                "system": "http://unitsofmeasure.org", "code": unit})
        }
    }
    observation
}

pub async fn open_log(dir: &Path, partitions: u32) -> Arc<dyn EventLog> {
    let mut config = EmbeddedLogConfig::in_dir(dir);
    config.default_partitions = partitions;
    config.durability = flare_log::Durability::None;
    Arc::new(EmbeddedLog::open(config).await.unwrap())
}

/// Appends `count` records over `keys` keys; the payload of record `i` is `i` as text.
pub async fn append_numbers(
    log: &Arc<dyn EventLog>,
    topic: &str,
    range: std::ops::Range<u64>,
    keys: u64,
) {
    let records: Vec<NewRecord> = range
        .map(|i| NewRecord {
            key: Some(format!("Patient/{}", i % keys).into_bytes()),
            payload: i.to_string().into_bytes(),
            ..NewRecord::default()
        })
        .collect();
    for chunk in records.chunks(1000) {
        log.append(topic, chunk.to_vec()).await.unwrap();
    }
}

/// The per-key count and sum a correct run over `range` ends with.
pub fn expected_counts(range: std::ops::Range<u64>, keys: u64) -> Vec<(String, Tally)> {
    let mut tallies = std::collections::BTreeMap::<String, Tally>::new();
    for i in range {
        let tally = tallies.entry(format!("Patient/{}", i % keys)).or_default();
        tally.count += 1;
        tally.sum += i;
    }
    tallies.into_iter().collect()
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub count: u64,
    pub sum: u64,
}

/// Counts records and sums their numeric payloads per key. A payload that is not a number
/// fails permanently unless `accept_text` is set; `flaky_every` makes every n-th first attempt
/// fail after changing the state (which the runtime must throw away).
pub struct Counter {
    pub name: String,
    pub topic: String,
    pub accept_text: Arc<AtomicBool>,
    pub retryable_text: bool,
    pub flaky_every: Option<u64>,
    /// Publishes every counted record here, with an event id derived from its position.
    pub publish_to: Option<String>,
}

impl Counter {
    pub fn new(name: &str, topic: &str) -> Self {
        Self {
            name: name.into(),
            topic: topic.into(),
            accept_text: Arc::new(AtomicBool::new(false)),
            retryable_text: true,
            flaky_every: None,
            publish_to: None,
        }
    }
}

#[async_trait]
impl Processor for Counter {
    type State = Tally;

    fn name(&self) -> &str {
        &self.name
    }

    fn topics(&self) -> Vec<String> {
        vec![self.topic.clone()]
    }

    async fn process(
        &self,
        _key: &str,
        state: &mut Tally,
        record: &Record,
        ctx: &mut Context<'_>,
    ) -> Result<Outcome, ProcessError> {
        let text = String::from_utf8_lossy(&record.payload);
        let value = match text.parse::<u64>() {
            Ok(value) => value,
            Err(_) if self.accept_text.load(Ordering::SeqCst) => 0,
            Err(_) if self.retryable_text => {
                return Err(ProcessError::retryable(format!("not a number: {text}")));
            }
            Err(_) => return Err(ProcessError::permanent(format!("not a number: {text}"))),
        };
        state.count += 1;
        state.sum += value;
        if let Some(every) = self.flaky_every
            && value % every == 0
            && ctx.attempt() == 1
        {
            return Err(ProcessError::retryable("flaky first attempt"));
        }
        if let Some(topic) = &self.publish_to {
            let event_id = format!("{}/{}/{}", record.topic, record.partition, record.offset);
            let out = NewRecord {
                key: record.key.clone(),
                payload: state.count.to_string().into_bytes(),
                ..NewRecord::default()
            };
            ctx.publish(topic, &event_id, out).await?;
        }
        Ok(Outcome::Updated)
    }
}

/// The group's checkpointed next offsets over `topic`, summed.
pub async fn checkpointed(store: &Arc<dyn StateStore>, group: &str, topic: &str) -> u64 {
    store
        .offsets(group)
        .await
        .unwrap()
        .iter()
        .filter(|o| o.topic == topic)
        .map(|o| o.next_offset)
        .sum()
}

/// Waits until the group's checkpoint covers `records` records of `topic`.
pub async fn wait_checkpointed(
    store: &Arc<dyn StateStore>,
    group: &str,
    topic: &str,
    records: u64,
) {
    for _ in 0..6000 {
        if checkpointed(store, group, topic).await >= records {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the checkpoint of {group} never covered {records} records of {topic} (it covers {})",
        checkpointed(store, group, topic).await
    );
}

pub async fn tallies(store: &Arc<dyn StateStore>, group: &str) -> Vec<(String, Tally)> {
    store
        .all_states(group)
        .await
        .unwrap()
        .into_iter()
        .map(|(key, bytes)| (key, serde_json::from_slice(&bytes).unwrap()))
        .collect()
}
