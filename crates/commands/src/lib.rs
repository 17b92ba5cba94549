//! Commands: FHIR writes requested through a log topic instead of HTTP.
//!
//! A producer publishes to the command topic (default `fhir.commands`):
//!
//! ```json
//! {"type": "CreatePatient", "data": {"resourceType": "Patient", …},
//!  "metadata": {"requestId": "r-1", "source": "registration-desk", "timestamp": "…"}}
//! ```
//!
//! [`CommandRunner`] consumes the topic in a consumer group and executes each command through
//! the commit path of `flare-service`, with the request id as correlation id: the resulting
//! change event (`PatientCreated`, …) carries `correlationId = requestId` in its metadata and
//! headers. A command that cannot run yields a `CommandRejected` event on the rejection topic
//! (default `fhir.commands.rejected`) with an OperationOutcome and the same correlation id,
//! committed through the store's outbox like every other event.
//!
//! Each request id runs once: executed ids are kept in a SQLite file ([`ExecutedRequests`]), and
//! the effects themselves are idempotent for the window between the store commit and that
//! record (a create writes to an id derived from the request id, so a re-run finds its own
//! resource unchanged and emits nothing; a rejection's event id is derived from the request
//! id, so a repeated one is a duplicate consumers skip).
//!
//! Architecture invariant: knows the log and the store only through their traits, writes only
//! through `flare-service`; no HTTP.

mod command;
mod dedup;
mod runner;

use serde::{Deserialize, Serialize};

pub use command::{Command, MAX_REQUEST_ID_LEN, Malformed, Verb};
pub use dedup::{Executed, ExecutedRequests};
pub use runner::{CommandExecutor, CommandOutcome, CommandRunner, CommandStats};

/// `[commands]` in Flare's config.
///
/// ```toml
/// [commands]
/// enabled = true
/// topic = "fhir.commands"
/// rejected_topic = "fhir.commands.rejected"
/// group = "flare-commands"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// Consume and execute commands. Default: `true`.
    pub enabled: bool,
    /// The command topic. Default: `fhir.commands`.
    pub topic: String,
    /// Where `CommandRejected` events go. Default: `fhir.commands.rejected`.
    pub rejected_topic: String,
    /// The consumer group that executes commands; several nodes in one group share the
    /// topic's partitions. Default: `flare-commands`.
    pub group: String,
    /// Attempts for a command whose write failed on the server's side (store unavailable,
    /// say) before it is rejected. Default: 5.
    pub max_attempts: u32,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            topic: "fhir.commands".into(),
            rejected_topic: "fhir.commands.rejected".into(),
            group: "flare-commands".into(),
            max_attempts: 5,
        }
    }
}

/// Failures of the command machinery itself (not of a command: those are rejections).
#[derive(Debug, thiserror::Error)]
pub enum CommandsError {
    #[error("the executed-requests database failed: {0}")]
    Database(String),
    #[error("the event log failed: {0}")]
    Log(#[from] flare_log::LogError),
    #[error("the store failed: {0}")]
    Store(#[from] flare_store::StoreError),
}

/// `CommandRejected`: the `type` of rejection events.
pub const COMMAND_REJECTED: &str = "CommandRejected";
