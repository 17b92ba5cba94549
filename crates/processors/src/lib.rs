//! The stream-processing runtime on the event log, and the built-in processors.
//!
//! - [`runtime`]: the consumer loop: a [`Processor`] declares its name (the consumer group)
//!   and topics, and handles one record at a time with the state of its key; the runtime
//!   checkpoints states with the offsets they reflect, retries failures with backoff and parks
//!   what still fails in a dead-letter topic.
//! - [`state`]: the [`StateStore`] trait and its backends (embedded SQLite, Redis).
//! - [`dlq`]: dead letters: list, show, replay, purge.
//! - [`metrics`]: per-processor counters and latency, rendered for Prometheus.
//! - [`config`]: the `[processors]` config section.
//! - [`builtin`]: the built-in processors (`qsofa` with its idle-patient watermark clock,
//!   `qsofa-pager`, `immunizations`) over `flare-clinical`.
//!
//! Architecture invariant: knows the log only through `flare_log::EventLog`; no HTTP.

pub mod builtin;
pub mod config;
pub mod dashboard;
pub mod dlq;
pub mod metrics;
pub mod runtime;
pub mod state;

pub use config::{CheckpointPolicy, ProcessorsConfig, QsofaSettings, RetryPolicy};
pub use dlq::{DeadLetter, DeadLetterId, DeadLetters, DlqError};
pub use metrics::{ProcessorMetrics, render_prometheus};
pub use runtime::{
    Context, Outcome, ProcessError, Processor, ProcessorHandle, RuntimeError, RuntimeOptions, spawn,
};
pub use state::{Checkpoint, PartitionOffset, StateError, StateStore};
