//! FHIRcast hub: subscriptions, contexts, content sharing, the WebSocket channel.
//!
//! [`Hub`] is the protocol as a state machine without I/O (time passed in, frames and
//! replies handed out); [`driver::HubHandle`] runs it on tokio for a web server, which only
//! moves bytes between HTTP/WebSocket and the handle.
//!
//! Architecture invariant: knows nothing of FHIR storage or of any web framework.

pub mod catalog;
pub mod config;
pub mod driver;
pub mod hub;

pub use config::{HubConfig, Profile};
pub use driver::{HubHandle, SocketCommand, SocketSession};
pub use hub::{
    ConnectRefused, ConnectionId, ContextShape, HttpReply, Hub, Output, Response, WebhookIntent,
};
