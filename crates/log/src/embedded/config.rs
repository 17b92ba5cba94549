//! Configuration of the embedded log.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// When an append is acknowledged relative to the disk.
///
/// In TOML: `durability = "fsync"`, `durability = "none"` or `durability = { interval_ms = 50 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// An append is acknowledged only after `fdatasync` of the data it wrote (and of the
    /// directory when it created a segment file). Nothing acknowledged is lost, even on power
    /// loss. Concurrent appends share one write and one sync per file (group commit).
    #[default]
    Fsync,
    /// An append is acknowledged after `write(2)`; files are synced every `interval_ms`
    /// milliseconds. A killed process loses nothing; a power loss may lose the last interval.
    IntervalMs(u64),
    /// An append is acknowledged after `write(2)`; the operating system decides when data
    /// reaches the disk. For tests and throwaway data.
    None,
}

/// Settings of [`EmbeddedLog`](super::EmbeddedLog). Every field has a default, so an empty
/// TOML table is a valid configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedLogConfig {
    /// Directory holding topics, segments and consumer-group offsets. Default: `data/log`.
    pub data_dir: PathBuf,
    /// Partitions of a topic created implicitly by an append. Default: 4.
    pub default_partitions: u32,
    /// A segment file is closed and a new one started once it would grow past this many bytes.
    /// Retention deletes whole closed segments, so this is also its granularity.
    /// Default: 64 MiB.
    pub segment_bytes: u64,
    /// When appends are acknowledged. Default: `fsync`.
    pub durability: Durability,
    /// Closed segments whose newest record is older than this are deleted. `None` keeps
    /// records forever. Default: 7 days (Kafka's default).
    pub retention_ms: Option<u64>,
    /// Per partition: closed segments are deleted, oldest first, while the partition is larger
    /// than this. `None` means no size limit. Default: `None`.
    pub retention_bytes: Option<u64>,
    /// How often retention runs. Default: 60,000 ms.
    pub retention_check_interval_ms: u64,
    /// Largest record accepted (key, headers, payload and framing). Default: 1 MiB.
    pub max_record_bytes: usize,
    /// One sparse index entry (offset, file position, newest timestamp) per this many bytes
    /// of segment. Default: 4096.
    pub index_interval_bytes: u64,
}

impl Default for EmbeddedLogConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data/log"),
            default_partitions: 4,
            segment_bytes: 64 * 1024 * 1024,
            durability: Durability::Fsync,
            retention_ms: Some(7 * 24 * 60 * 60 * 1000),
            retention_bytes: None,
            retention_check_interval_ms: 60_000,
            max_record_bytes: 1024 * 1024,
            index_interval_bytes: 4096,
        }
    }
}

impl EmbeddedLogConfig {
    /// The defaults with another data directory.
    pub fn in_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_durability_form_and_rejects_unknown_fields() {
        let config: EmbeddedLogConfig =
            toml::from_str("data_dir = \"/x\"\ndurability = { interval_ms = 50 }").unwrap();
        assert_eq!(config.durability, Durability::IntervalMs(50));
        assert_eq!(config.default_partitions, 4);
        let config: EmbeddedLogConfig = toml::from_str("durability = \"none\"").unwrap();
        assert_eq!(config.durability, Durability::None);
        let config: EmbeddedLogConfig = toml::from_str("").unwrap();
        assert_eq!(config, EmbeddedLogConfig::default());
        assert!(toml::from_str::<EmbeddedLogConfig>("segment_size = 1").is_err());
    }
}
