//! The configuration file, `FLARE_*` environment variables and flags, merged in that order
//! (flags win).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use flare_log::embedded::EmbeddedLogConfig;
use flare_processors::ProcessorsConfig;
use flare_server::ServerConfig;
use flare_service::FhirConfig;
use flare_store::sqlite::SqliteConfig;
use serde::{Deserialize, Serialize};

/// Everything `flare serve` can be told, as one TOML file. Every field has a default.
///
/// ```toml
/// data_dir = "flare-data"      # where the store and the log live
/// store = "sqlite"             # sqlite (file in data_dir) | sqlite::memory: | sqlite:///abs/path.db
/// log = "embedded"             # embedded (folder `log` in data_dir) | kafka://host:port[,host:port]
///
/// [server]
/// listen = "127.0.0.1:8080"
///
/// [fhir.events]
/// strategy = "resource"        # resource | action | hybrid
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlareConfig {
    /// Folder for the store and the log. Default `flare-data` (env `FLARE_DATA_DIR`).
    pub data_dir: PathBuf,
    /// The store backend as a URL. Default `sqlite` (env `FLARE_STORE`).
    pub store: String,
    /// The log backend as a URL. Default `embedded` (env `FLARE_LOG`).
    pub log: String,
    pub server: ServerConfig,
    pub fhir: FhirConfig,
    /// SQLite tuning (`path` comes from `store`).
    pub sqlite: SqliteConfig,
    /// Embedded-log tuning (`data_dir` comes from `data_dir`).
    pub embedded_log: EmbeddedLogConfig,
    /// The FHIRcast hub, `[fhircast]` (served at `/fhircast` unless `enabled = false`).
    pub fhircast: flare_fhircast::HubConfig,
    /// Kafka-log settings, used when `log` is `kafka://...` (brokers come from the URL) or
    /// `kafka` (brokers from this section).
    #[cfg(feature = "kafka")]
    pub kafka: flare_kafka::KafkaConfig,
    /// Stream processors: which run, their state backend, retries, checkpoints.
    pub processors: ProcessorsConfig,
    /// FHIR Subscriptions: delivery of notifications to the endpoints subscriptions name.
    pub subscriptions: SubscriptionsConfig,
    /// Commands (`CreatePatient`, ...) consumed from a log topic, `[commands]`.
    pub commands: flare_commands::CommandsConfig,
}

/// `[subscriptions]`: notification delivery.
///
/// ```toml
/// [subscriptions]
/// enabled = true
/// [subscriptions.endpoints]
/// allow = ["127.0.0.0/8"]      # also plain http to these; env FLARE_SUBSCRIPTION_ALLOW
/// [subscriptions.delivery]
/// max_attempts = 5
/// [subscriptions.smtp]           # for `email` channels (mailto: endpoints)
/// host = "smtp.example.org"
/// security = "starttls"          # starttls | tls | none
/// username = "flare"
/// password = "..."
/// from = "Flare <flare@example.org>"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionsConfig {
    /// Deliver notifications for active Subscriptions. Default `true`.
    pub enabled: bool,
    /// Which endpoints may be called: only public `https` ones unless allow-listed.
    pub endpoints: flare_outbound::EndpointPolicyConfig,
    /// Retries, batches, timeouts; `cursor_file` defaults to `subscriptions.sqlite` in the
    /// data directory.
    pub delivery: flare_subscriptions::delivery::DeliveryConfig,
    /// The SMTP server of `email` channel notifications. Default: none (email subscriptions
    /// turn `error`, naming this section).
    pub smtp: Option<flare_outbound::SmtpConfig>,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoints: flare_outbound::EndpointPolicyConfig::default(),
            delivery: flare_subscriptions::delivery::DeliveryConfig::default(),
            smtp: None,
        }
    }
}

impl Default for FlareConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("flare-data"),
            store: "sqlite".into(),
            log: "embedded".into(),
            server: ServerConfig::default(),
            fhir: FhirConfig::default(),
            sqlite: SqliteConfig::default(),
            embedded_log: EmbeddedLogConfig::default(),
            fhircast: flare_fhircast::HubConfig::default(),
            #[cfg(feature = "kafka")]
            kafka: flare_kafka::KafkaConfig::default(),
            processors: ProcessorsConfig::default(),
            subscriptions: SubscriptionsConfig::default(),
            commands: flare_commands::CommandsConfig::default(),
        }
    }
}

/// Settings that flags and `FLARE_*` variables may override.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// A TOML config file (see `flare config-example`).
    #[arg(long, short = 'c', env = "FLARE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Folder for the store and the log [default: flare-data].
    #[arg(long, env = "FLARE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store backend: `sqlite` (a file in the data dir), `sqlite:///path/file.db`, or
    /// `sqlite::memory:` (nothing kept) [default: sqlite].
    #[arg(long, env = "FLARE_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Log backend: `embedded` (the folder `log` in the data dir) or
    /// `kafka://host:port[,host:port]` (brokers; other settings in `[kafka]`) [default: embedded].
    #[arg(long, env = "FLARE_LOG", value_name = "URL")]
    pub log: Option<String>,
}

impl CommonArgs {
    /// Loads the file (if any) and applies the overrides.
    pub fn load(&self) -> anyhow::Result<FlareConfig> {
        let mut config = match &self.config {
            Some(path) => read_file(path)?,
            None => FlareConfig::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(store) = &self.store {
            config.store = store.clone();
        }
        if let Some(log) = &self.log {
            config.log = log.clone();
        }
        Ok(config)
    }
}

fn read_file(path: &Path) -> anyhow::Result<FlareConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid Flare config (see `flare config-example`)",
            path.display()
        )
    })
}

/// Where the store lives, from the `store` URL.
pub fn sqlite_config(config: &FlareConfig) -> anyhow::Result<SqliteConfig> {
    let mut sqlite = config.sqlite.clone();
    sqlite.path = match config.store.as_str() {
        "sqlite" | "sqlite://" => Some(config.data_dir.join("flare.db")),
        "sqlite::memory:" | "sqlite://:memory:" => None,
        url if url.starts_with("sqlite://") => Some(PathBuf::from(&url["sqlite://".len()..])),
        other => bail!(
            "unsupported store `{other}`: use `sqlite`, `sqlite:///path/to/file.db` or `sqlite::memory:` (PostgreSQL is not available in this build)"
        ),
    };
    Ok(sqlite)
}

/// The embedded log's settings, from the `log` URL.
pub fn log_config(config: &FlareConfig) -> anyhow::Result<EmbeddedLogConfig> {
    match config.log.as_str() {
        "embedded" | "embedded://" => {
            let mut log = config.embedded_log.clone();
            log.data_dir = config.data_dir.join("log");
            Ok(log)
        }
        url if url.starts_with("embedded://") => {
            let mut log = config.embedded_log.clone();
            log.data_dir = PathBuf::from(&url["embedded://".len()..]);
            Ok(log)
        }
        other if cfg!(feature = "kafka") => bail!(
            "`{other}` is not an embedded log: use `embedded` or `embedded:///path` (`kafka://host:port` \
             is for `flare serve`)"
        ),
        other => bail!(
            "unsupported log `{other}`: use `embedded` (Kafka is not available in this build)"
        ),
    }
}

/// The Kafka log's settings when `log` is `kafka://host:port[,...]` (those brokers) or `kafka`
/// (the brokers of `[kafka]`); `None` for other logs.
#[cfg(feature = "kafka")]
pub fn kafka_config(config: &FlareConfig) -> anyhow::Result<Option<flare_kafka::KafkaConfig>> {
    let mut kafka = config.kafka.clone();
    match config.log.as_str() {
        "kafka" => {}
        url if url.starts_with("kafka://") => kafka.brokers = flare_kafka::brokers_from_url(url)?,
        _ => return Ok(None),
    }
    kafka.validate()?;
    Ok(Some(kafka))
}

/// The largest log record of the configured backend, and the setting that says so.
fn max_record_bytes(config: &FlareConfig) -> (usize, &'static str) {
    #[cfg(feature = "kafka")]
    if config.log == "kafka" || config.log.starts_with("kafka://") {
        return (config.kafka.max_record_bytes, "kafka.max_record_bytes");
    }
    (
        config.embedded_log.max_record_bytes,
        "embedded_log.max_record_bytes",
    )
}

/// Room an event's headers and framing take in a log record beside its payload.
const RECORD_OVERHEAD_BYTES: usize = 16 * 1024;

/// Cross-component checks that no single section can make on its own.
pub fn validate(config: &FlareConfig) -> anyhow::Result<()> {
    let (max_record, setting) = max_record_bytes(config);
    if config.fhir.max_event_bytes + RECORD_OVERHEAD_BYTES > max_record {
        bail!(
            "fhir.max_event_bytes ({}) leaves no room for headers in {setting} ({max_record}): \
             lower the first or raise the second so that events always fit in a log record",
            config.fhir.max_event_bytes
        );
    }
    Ok(())
}

/// An annotated example config with every default spelled out.
pub fn example() -> String {
    let config = FlareConfig::default();
    let body = toml::to_string_pretty(&config).unwrap_or_default();
    format!(
        "# Flare configuration. Every setting is optional; these are the defaults.\n# Environment variables FLARE_DATA_DIR, FLARE_STORE, FLARE_LOG, FLARE_LISTEN and flags override it.\n\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_parses_back_to_the_defaults() {
        let parsed: FlareConfig = toml::from_str(&example()).unwrap();
        assert_eq!(parsed, FlareConfig::default());
    }

    #[test]
    fn events_must_fit_in_a_log_record() {
        assert!(validate(&FlareConfig::default()).is_ok());
        let mut config = FlareConfig::default();
        config.embedded_log.max_record_bytes = 512 * 1024;
        let err = validate(&config).unwrap_err().to_string();
        assert!(err.contains("max_event_bytes"), "{err}");
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn kafka_urls_select_the_kafka_log_and_its_record_limit() {
        let mut config = FlareConfig {
            log: "kafka://k1:9092,k2:9092".into(),
            ..FlareConfig::default()
        };
        let kafka = kafka_config(&config).unwrap().unwrap();
        assert_eq!(kafka.brokers, ["k1:9092", "k2:9092"]);
        config.kafka.max_record_bytes = 512 * 1024;
        let err = validate(&config).unwrap_err().to_string();
        assert!(err.contains("kafka.max_record_bytes"), "{err}");
        config.log = "embedded".into();
        assert!(kafka_config(&config).unwrap().is_none());
        assert!(
            validate(&config).is_ok(),
            "the embedded log's limit applies"
        );
        config.log = "kafka://nohost".into();
        assert!(kafka_config(&config).is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err =
            toml::from_str::<FlareConfig>("data_dir = \"x\"\nlisten = \"0.0.0.0:1\"").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
    }

    #[test]
    fn store_urls_choose_the_database_file() {
        let mut config = FlareConfig {
            data_dir: "/d".into(),
            ..FlareConfig::default()
        };
        assert_eq!(
            sqlite_config(&config).unwrap().path,
            Some(PathBuf::from("/d/flare.db"))
        );
        config.store = "sqlite::memory:".into();
        assert_eq!(sqlite_config(&config).unwrap().path, None);
        config.store = "sqlite:///tmp/x.db".into();
        assert_eq!(
            sqlite_config(&config).unwrap().path,
            Some(PathBuf::from("/tmp/x.db"))
        );
        config.store = "postgres://localhost".into();
        assert!(
            sqlite_config(&config)
                .unwrap_err()
                .to_string()
                .contains("unsupported store")
        );
    }
}
