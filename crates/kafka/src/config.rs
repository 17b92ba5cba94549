//! Configuration of the Kafka backend: the `[kafka]` section of Flare's config file.

use std::{collections::BTreeMap, path::PathBuf};

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::KafkaError;

/// Settings of [`KafkaLog`](crate::KafkaLog). Every field has a default, so an empty TOML table
/// is a valid configuration.
///
/// ```toml
/// [kafka]
/// brokers = ["127.0.0.1:9092"]
/// partitions = 4
/// replication_factor = 3
///
/// [kafka.security]
/// protocol = "sasl_ssl"
/// sasl_mechanism = "SCRAM-SHA-512"
/// sasl_username = "flare"
/// sasl_password = "secret"
/// ssl_ca_location = "/etc/flare/ca.pem"
///
/// [kafka.properties]              # raw librdkafka properties, passed through unchanged
/// "linger.ms" = "5"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers as `host:port`. Default: `["127.0.0.1:9092"]`. A `kafka://` log URL
    /// replaces them.
    pub brokers: Vec<String>,
    /// `client.id` the brokers see in their logs and quotas. Default: `flare`.
    pub client_id: String,
    /// Partitions of a topic Flare creates (explicitly or by appending to a missing topic)
    /// when the caller does not say. Default: 4 (as the embedded log).
    pub partitions: u32,
    /// Replication factor of topics Flare creates. `-1` leaves it to the broker's
    /// `default.replication.factor` (Kafka 2.4+). Default: 1, which only suits a single
    /// broker: use 3 on a production cluster.
    pub replication_factor: i16,
    /// Largest record Flare appends (key, headers and payload). The brokers' `message.max.bytes`
    /// (or the topic's `max.message.bytes`) must be at least this plus Kafka's batch framing;
    /// topics Flare creates get `max.message.bytes` set accordingly. Default: 1 MiB.
    pub max_record_bytes: usize,
    /// How long metadata, admin and offset requests may take before they fail.
    /// Default: 30,000 ms.
    pub request_timeout_ms: u64,
    /// Authentication and encryption. Default: plaintext, no authentication.
    pub security: KafkaSecurity,
    /// Raw librdkafka properties (`linger.ms`, `compression.type`, ...) for what Flare does
    /// not model; applied last, so they override Flare's own settings. Default: none.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: vec!["127.0.0.1:9092".into()],
            client_id: "flare".into(),
            partitions: 4,
            replication_factor: 1,
            max_record_bytes: 1024 * 1024,
            request_timeout_ms: 30_000,
            security: KafkaSecurity::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// How Flare talks to the brokers (`security.protocol` and its companions in librdkafka).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// SASL mechanisms Flare supports (GSSAPI/Kerberos and OAUTHBEARER can still be set through
/// `properties`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Authentication (SASL) and TLS settings. Paths are PEM files.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSecurity {
    /// Default: `plaintext`.
    pub protocol: SecurityProtocol,
    /// Required with the `sasl_*` protocols.
    pub sasl_mechanism: Option<SaslMechanism>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
    /// CA certificate(s) that signed the brokers' certificates. Default: the system's.
    pub ssl_ca_location: Option<PathBuf>,
    /// Client certificate, for brokers that authenticate clients by TLS (mutual TLS).
    pub ssl_certificate_location: Option<PathBuf>,
    /// The client certificate's private key.
    pub ssl_key_location: Option<PathBuf>,
    pub ssl_key_password: Option<String>,
}

// Hand-written so that passwords never reach a log line through `{:?}`.
impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |set: bool| if set { "<redacted>" } else { "<none>" };
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &redacted(self.sasl_password.is_some()))
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_certificate_location", &self.ssl_certificate_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .field(
                "ssl_key_password",
                &redacted(self.ssl_key_password.is_some()),
            )
            .finish()
    }
}

impl KafkaConfig {
    /// The defaults with the brokers of a `kafka://host:port[,host:port...]` URL.
    pub fn from_url(url: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            brokers: brokers_from_url(url)?,
            ..Self::default()
        })
    }

    /// Checks what serde cannot: brokers present, SASL complete, sizes sensible.
    pub fn validate(&self) -> Result<(), KafkaError> {
        let invalid = |reason: String| Err(KafkaError::InvalidConfig(reason));
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            return invalid("kafka.brokers must list at least one host:port".into());
        }
        if self.partitions == 0 || self.partitions > i32::MAX as u32 {
            return invalid(format!(
                "kafka.partitions must be at least 1, not {}",
                self.partitions
            ));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return invalid(format!(
                "kafka.replication_factor must be -1 (broker default) or at least 1, not {}",
                self.replication_factor
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > i32::MAX as usize / 2 {
            return invalid(format!(
                "kafka.max_record_bytes must be between 1 and {}, not {}",
                i32::MAX / 2,
                self.max_record_bytes
            ));
        }
        let security = &self.security;
        if security.protocol.uses_sasl()
            && (security.sasl_mechanism.is_none()
                || security.sasl_username.is_none()
                || security.sasl_password.is_none())
        {
            return invalid(
                "kafka.security: the sasl_* protocols need sasl_mechanism, sasl_username and \
                 sasl_password"
                    .into(),
            );
        }
        if !security.protocol.uses_sasl() && security.sasl_mechanism.is_some() {
            return invalid(
                "kafka.security.sasl_mechanism is set but the protocol is not sasl_plaintext or \
                 sasl_ssl"
                    .into(),
            );
        }
        if security.ssl_certificate_location.is_some() != security.ssl_key_location.is_some() {
            return invalid(
                "kafka.security: ssl_certificate_location and ssl_key_location go together".into(),
            );
        }
        Ok(())
    }

    /// The librdkafka settings every client Flare creates shares: brokers, identity, security
    /// and the raw `properties` (last, so they win).
    pub fn client_config(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", self.brokers.join(","))
            .set("client.id", &self.client_id)
            .set("socket.timeout.ms", self.request_timeout_ms.to_string())
            .set("security.protocol", self.security.protocol.as_librdkafka());
        let security = &self.security;
        if let Some(mechanism) = security.sasl_mechanism {
            client.set("sasl.mechanism", mechanism.as_librdkafka());
        }
        let optional = [
            ("sasl.username", security.sasl_username.clone()),
            ("sasl.password", security.sasl_password.clone()),
            ("ssl.ca.location", path_string(&security.ssl_ca_location)),
            (
                "ssl.certificate.location",
                path_string(&security.ssl_certificate_location),
            ),
            ("ssl.key.location", path_string(&security.ssl_key_location)),
            ("ssl.key.password", security.ssl_key_password.clone()),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                client.set(key, value);
            }
        }
        for (key, value) in &self.properties {
            client.set(key, value);
        }
        client
    }
}

fn path_string(path: &Option<PathBuf>) -> Option<String> {
    path.as_ref().map(|p| p.display().to_string())
}

/// The brokers of a `kafka://host:port[,host:port...]` URL.
pub fn brokers_from_url(url: &str) -> Result<Vec<String>, KafkaError> {
    let Some(rest) = url.strip_prefix("kafka://") else {
        return Err(KafkaError::InvalidConfig(format!(
            "`{url}` is not a kafka:// URL"
        )));
    };
    let brokers: Vec<String> = rest
        .trim_end_matches('/')
        .split(',')
        .map(|b| b.trim().to_owned())
        .collect();
    let well_formed = |broker: &String| {
        broker
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    };
    if brokers.iter().all(well_formed) {
        Ok(brokers)
    } else {
        Err(KafkaError::InvalidConfig(format!(
            "`{url}`: expected kafka://host:port[,host:port...]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_or_more_brokers() {
        assert_eq!(
            brokers_from_url("kafka://127.0.0.1:9092").unwrap(),
            vec!["127.0.0.1:9092"]
        );
        assert_eq!(
            brokers_from_url("kafka://a:1,b:2/").unwrap(),
            vec!["a:1", "b:2"]
        );
        for bad in [
            "kafka://",
            "kafka://host",
            "kafka://host:port",
            "embedded",
            "kafka://:9",
        ] {
            assert!(brokers_from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_empty_section_is_the_defaults_and_unknown_keys_are_refused() {
        let parsed: KafkaConfig = toml::from_str("").unwrap();
        assert_eq!(parsed, KafkaConfig::default());
        assert!(parsed.validate().is_ok());
        let err = toml::from_str::<KafkaConfig>("broker = \"x:1\"").unwrap_err();
        assert!(err.to_string().contains("broker"), "{err}");
    }

    #[test]
    fn security_settings_reach_librdkafka_and_raw_properties_win() {
        let config: KafkaConfig = toml::from_str(
            r#"
            brokers = ["k1:9093", "k2:9093"]
            [security]
            protocol = "sasl_ssl"
            sasl_mechanism = "SCRAM-SHA-512"
            sasl_username = "flare"
            sasl_password = "secret"
            ssl_ca_location = "/etc/ca.pem"
            [properties]
            "client.id" = "override"
            "linger.ms" = "7"
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let client = config.client_config();
        assert_eq!(client.get("bootstrap.servers"), Some("k1:9093,k2:9093"));
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("sasl.username"), Some("flare"));
        assert_eq!(client.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(client.get("client.id"), Some("override"));
        assert_eq!(client.get("linger.ms"), Some("7"));
        assert!(!format!("{config:?}").contains("secret"));
    }

    #[test]
    fn incomplete_security_is_refused() {
        let mut config = KafkaConfig::default();
        config.security.protocol = SecurityProtocol::SaslPlaintext;
        config.security.sasl_mechanism = Some(SaslMechanism::Plain);
        assert!(config.validate().is_err(), "username and password missing");
        config.security.sasl_username = Some("u".into());
        config.security.sasl_password = Some("p".into());
        assert!(config.validate().is_ok());
        config.security.ssl_certificate_location = Some("/c.pem".into());
        assert!(config.validate().is_err(), "a certificate without its key");
    }
}
