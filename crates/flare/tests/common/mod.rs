//! What the `flare` binary tests share: the command, and a `flare serve` child to talk to.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

pub mod sample_patients;

/// The `flare` binary under test, quiet unless something goes wrong.
pub fn flare() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flare"));
    command.env("FLARE_LOG_LEVEL", "warn");
    command
}

/// A blocking HTTP client with a timeout generous enough for debug builds.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A `flare serve` child on a free port; killed on drop.
pub struct Served {
    child: Child,
    /// The FHIR base URL, `http://127.0.0.1:PORT/fhir`.
    pub base: String,
    pub http: reqwest::blocking::Client,
}

impl Served {
    /// The whole server on `data_dir`.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Only the FHIR API: Flare's own components change what they manage (a Subscription's
    /// status) and add resources (alerts), which a store round trip must not see.
    pub fn api_only(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &["--processors", "none", "--no-subscriptions"])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Self {
        let data_dir = data_dir.to_str().expect("test data dirs are UTF-8");
        let mut args = vec!["--data-dir", data_dir];
        args.extend_from_slice(extra);
        Self::start_args(&args)
    }

    /// `flare serve --listen 127.0.0.1:0 ARGS...`.
    pub fn start_args(args: &[&str]) -> Self {
        let mut child = flare()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("flare serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let base = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                line.split("listening on ")
                    .nth(1)
                    .map(|url| format!("{}/fhir", url.trim()))
            })
            .expect("flare serve says where it listens");
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            base,
            http: client(),
        }
    }

    /// `start_args` from an async test: starting blocks until the server says where it
    /// listens, which must not hold up the test's runtime.
    pub async fn start_args_async(args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Self::start_args(&args)
        })
        .await
        .expect("flare serve starts")
    }

    /// A Kafka-backed `flare serve` with processors and subscriptions off: the node the Kafka
    /// tests start.
    pub async fn on_kafka(broker_url: &str, data_dir: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "--log",
            broker_url,
            "--data-dir",
            data_dir,
            "--processors",
            "none",
            "--no-subscriptions",
        ];
        args.extend_from_slice(extra);
        Self::start_args_async(&args).await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// A search (`Type?params`) that must answer 200.
    pub fn search(&self, query: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/{query}", self.base))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{query}");
        response.json().unwrap()
    }

    /// The total of a search.
    pub fn count(&self, query: &str) -> u64 {
        let separator = if query.contains('?') { '&' } else { '?' };
        self.search(&format!("{query}{separator}_summary=count"))["total"]
            .as_u64()
            .unwrap_or_else(|| panic!("no total for {query}"))
    }

    /// Every resource a search matches, following `next` links.
    pub fn all(&self, query: &str) -> Vec<Value> {
        let mut resources = Vec::new();
        let mut page = self.search(query);
        loop {
            for entry in page["entry"].as_array().into_iter().flatten() {
                resources.push(entry["resource"].clone());
            }
            let next = page["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|link| link["relation"] == "next")
                .and_then(|link| link["url"].as_str())
                .map(str::to_owned);
            let Some(next) = next else { break };
            page = self.http.get(next).send().unwrap().json().unwrap();
        }
        resources
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every record of a topic, all partitions, in partition then offset order.
pub async fn read_all(log: &dyn flare_log::EventLog, topic: &str) -> Vec<flare_log::Record> {
    let info = log
        .topics()
        .await
        .unwrap()
        .into_iter()
        .find(|info| info.name == topic)
        .unwrap_or_else(|| panic!("no topic {topic}"));
    let mut records = Vec::new();
    for partition in 0..info.partitions {
        let mut offset = 0;
        loop {
            let batch = log.read(topic, partition, offset, 1000).await.unwrap();
            let Some(last) = batch.last() else { break };
            offset = last.offset + 1;
            records.extend(batch);
        }
    }
    records
}
