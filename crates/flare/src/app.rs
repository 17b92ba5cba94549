//! Wiring: backends chosen by config, the FHIR service over them, the outbox relay.

use std::sync::Arc;

use anyhow::Context;
use flare_events::{Relay, RelayStats};
use flare_log::{EmbeddedLog, EventLog};
use flare_search::Registry;
use flare_service::Fhir;
use flare_store::{Store, sqlite::SqliteStore};
use tokio::{sync::watch, task::JoinHandle};

use crate::config::{FlareConfig, log_config, sqlite_config, validate};

/// The running core: store, log, FHIR service and relay.
pub struct App {
    pub fhir: Fhir,
    pub log: Arc<dyn EventLog>,
    pub relay_stats: Arc<RelayStats>,
    relay: JoinHandle<()>,
    stop_relay: watch::Sender<bool>,
}

impl App {
    pub async fn open(config: &FlareConfig) -> anyhow::Result<Self> {
        validate(config)?;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
        let sqlite = sqlite_config(config)?;
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(sqlite.clone())
                .with_context(|| format!("cannot open the store {}", config.store))?,
        );
        let log = open_log(config).await?;
        let registry = Arc::new(Registry::r4());
        let fhir = Fhir::new(store.clone(), registry, config.fhir.clone());
        let relay = Relay::new(store, log.clone());
        let relay_stats = relay.stats();
        relay
            .recover()
            .await
            .context("cannot move pending events from the store's outbox to the log")?;
        let (stop_relay, stopped) = watch::channel(false);
        let relay = tokio::spawn(relay.run(stopped));
        Ok(Self {
            fhir,
            log,
            relay_stats,
            relay,
            stop_relay,
        })
    }

    /// Stops the relay after it has moved everything committed so far.
    pub async fn shutdown(self) {
        let _ = self.stop_relay.send(true);
        let _ = self.relay.await;
    }
}

/// The event log the `log` URL names.
async fn open_log(config: &FlareConfig) -> anyhow::Result<Arc<dyn EventLog>> {
    #[cfg(feature = "kafka")]
    if let Some(kafka) = crate::config::kafka_config(config)? {
        let brokers = kafka.brokers.join(",");
        let log = flare_kafka::KafkaLog::connect(kafka)
            .await
            .with_context(|| format!("cannot open the Kafka event log on {brokers}"))?;
        return Ok(Arc::new(log));
    }
    let log_config = log_config(config)?;
    Ok(Arc::new(EmbeddedLog::open(log_config.clone()).await.with_context(|| {
        format!("cannot open the event log in {} (is another `flare serve` or `flare ingest` using this data directory?)", log_config.data_dir.display())
    })?))
}
