//! What a change looks like on the log, and how it gets there.
//!
//! - [`envelope`]: the change-event envelope (`{"type":"PatientCreated","data":…,"metadata":…}`)
//!   and its headers.
//! - [`routing`]: which topic an event goes to (naming strategy plus routing rules) and which
//!   key partitions it (the patient compartment).
//! - [`relay`]: moves outbox messages, committed by the store together with the resource
//!   versions they describe, onto the event log, exactly once for the embedded log.
//!
//! Architecture invariant: this crate knows the store and the log only through their traits,
//! and nothing of HTTP.

pub mod envelope;
pub mod relay;
pub mod routing;

pub use envelope::{Action, ChangeEvent, EventMetadata, header};
pub use relay::{Relay, RelayError, RelayLag, RelayStats};
pub use routing::{Route, RoutingConfig, TopicStrategy, partition_key};
