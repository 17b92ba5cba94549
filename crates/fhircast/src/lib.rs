//! FHIRcast hub: subscriptions, contexts, content sharing, the WebSocket channel.
//!
//! [`Hub`] is the protocol as a state machine without I/O (time passed in, frames and
//! replies handed out); [`driver::HubHandle`] runs it on tokio for a web server, which only
//! moves bytes between HTTP/WebSocket and the handle.
//!
//! Architecture invariant: knows nothing of FHIR storage or of any web framework.

pub mod capability;
pub mod catalog;
pub mod config;
pub mod driver;
pub mod hub;

pub use capability::{capability_extensions, hub_url};
pub use config::{FanOut, HubConfig, Profile};
pub use driver::{HubError, HubHandle, SocketCommand, SocketSession};
pub use hub::{
    AckStatus, ConnectRefused, ConnectionId, ContextShape, HttpReply, Hub, Output, Replicated,
    Response, SubscriberFrame, WebhookIntent, parse_subscriber_frame,
};

/// The sandbox page served at `{hub.url}/sandbox`: one static HTML file with vanilla JS that
/// subscribes over the WebSocket channel, publishes events, reads the current context and logs
/// every frame. It talks to the hub only through the public protocol.
pub const SANDBOX_PAGE: &str = include_str!("../assets/sandbox.html");
