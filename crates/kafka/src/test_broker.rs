//! A throwaway Kafka-protocol broker for tests: `nisshi` (an Apache Kafka-compatible broker
//! written in Rust, installed by `scripts/test.sh`) on `127.0.0.1` with a free port and the
//! in-memory storage engine, or a SQLite file when a test restarts the broker.
//!
//! The broker runs under a small shell guard that stops it (SIGTERM, then SIGKILL after a grace
//! period) as soon as the test process goes away, even when the test binary exits without
//! running destructors, as it does for statics such as [`shared`].

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::KafkaConfig;

/// Env var naming the broker binary; otherwise `~/.cargo/bin/nisshi`, then `PATH`.
pub const BINARY_ENV: &str = "FLARE_NISSHI";
/// Env var that, set to `1`, skips Kafka tests instead of failing when no broker is installed.
pub const SKIP_ENV: &str = "FLARE_SKIP_KAFKA";

/// Where the broker binary is, or why it is not there.
pub fn nisshi_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(BINARY_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{BINARY_ENV}={} is not a file", path.display()))
        };
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/nisshi"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("nisshi")));
    }
    candidates
        .into_iter()
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "the test broker `nisshi` is not installed: run `bash scripts/test.sh` (it runs \
             `cargo install nisshi --locked --ignore-rust-version` once, ~15 minutes), set \
             FLARE_NISSHI to its path, or set FLARE_SKIP_KAFKA=1 to skip the Kafka tests"
                .to_owned()
        })
}

/// Where the broker keeps its topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageEngine {
    /// Fast; everything is gone when the broker stops.
    Memory,
    /// A SQLite file in the broker's folder: topics, records and committed offsets survive a
    /// [`TestBroker::restart`].
    Sqlite,
}

/// A running broker; stopped when dropped (or when the test process ends).
pub struct TestBroker {
    binary: PathBuf,
    engine: StorageEngine,
    /// `None` while stopped.
    running: Option<Guard>,
    address: SocketAddr,
    dir: tempfile::TempDir,
}

/// The shell guard around one broker process.
struct Guard {
    child: Child,
    /// Closing it tells the guard shell to stop the broker.
    stdin: Option<ChildStdin>,
}

impl std::fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBroker")
            .field("address", &self.address)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl TestBroker {
    /// Starts a broker on the memory engine, or returns `None` when it is not installed and
    /// `FLARE_SKIP_KAFKA=1`.
    ///
    /// # Panics
    /// When the broker is not installed (and skipping was not asked for) or does not start:
    /// a test that needs Kafka must not pass silently without it.
    pub fn start() -> Option<Self> {
        Self::start_on(StorageEngine::Memory)
    }

    /// Like [`TestBroker::start`], on the chosen storage engine.
    pub fn start_on(engine: StorageEngine) -> Option<Self> {
        let binary = match nisshi_binary() {
            Ok(binary) => binary,
            Err(reason) if skip_requested() => {
                eprintln!("skipping a Kafka test: {reason}");
                return None;
            }
            Err(reason) => panic!("{reason}"),
        };
        Some(Self::start_with(binary, engine).unwrap_or_else(|err| panic!("{err}")))
    }

    fn start_with(binary: PathBuf, engine: StorageEngine) -> Result<Self, String> {
        // The broker reads a `.env` from its working directory: give it an empty one.
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port()?;
        let mut broker = Self {
            binary,
            engine,
            running: None,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        broker.launch()?;
        Ok(broker)
    }

    /// Starts the broker process on this broker's port and waits until it listens.
    fn launch(&mut self) -> Result<(), String> {
        let url = format!("tcp://{}", self.address);
        let storage = match self.engine {
            StorageEngine::Memory => "memory://nisshi/".to_owned(),
            // Relative to the broker's working directory, its temp folder.
            StorageEngine::Sqlite => "sqlite://broker.db".to_owned(),
        };
        let script = r#"
            "$@" >>"$FLARE_BROKER_LOG" 2>&1 &
            broker=$!
            cat >/dev/null
            kill -TERM "$broker" 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                kill -0 "$broker" 2>/dev/null || exit 0
                sleep 0.2
            done
            kill -KILL "$broker" 2>/dev/null
        "#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("nisshi-guard")
            .arg(&self.binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &storage])
            .args(["--group-initial-rebalance-delay", "0s"])
            .env("FLARE_BROKER_LOG", self.dir.path().join("broker.log"))
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let stdin = child.stdin.take();
        self.running = Some(Guard { child, stdin });
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&self.address, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "the test broker did not listen on {} within 30 s; its log:\n{}",
                    self.address,
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the broker (SIGTERM, SIGKILL after a grace period) and waits until it is gone;
    /// clients then see connection failures until [`TestBroker::restart`].
    pub fn stop(&mut self) {
        let Some(mut guard) = self.running.take() else {
            return;
        };
        drop(guard.stdin.take());
        // The guard stops the broker within its grace period once stdin is closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(guard.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = guard.child.kill();
        let _ = guard.child.wait();
    }

    /// Starts the broker again on the same port and storage (after [`TestBroker::stop`]).
    /// Only the SQLite engine keeps topics and records across a restart.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.launch()
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// `kafka://127.0.0.1:PORT`, as `flare serve --log` takes it.
    pub fn url(&self) -> String {
        format!("kafka://{}", self.address)
    }

    /// A config for this broker: the defaults, single replica, short timeouts.
    pub fn config(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: vec![self.address()],
            request_timeout_ms: 10_000,
            ..KafkaConfig::default()
        }
    }

    /// What the broker printed so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One broker for the whole test binary (started on first use), or `None` when skipped.
pub fn shared() -> Option<&'static TestBroker> {
    static BROKER: OnceLock<Option<TestBroker>> = OnceLock::new();
    BROKER.get_or_init(TestBroker::start).as_ref()
}

fn skip_requested() -> bool {
    std::env::var(SKIP_ENV).is_ok_and(|v| v == "1")
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
