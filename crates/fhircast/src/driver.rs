//! The hub on tokio: one lock around the state machine, a channel per open socket, and a
//! timer task for leases and acknowledgement deadlines.
//!
//! Outputs are dispatched while the lock is held, so every socket receives frames in the
//! order the hub produced them (hub-acceptance order).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};

use crate::config::HubConfig;
use crate::hub::{ConnectRefused, ConnectionId, ContextShape, HttpReply, Hub, Output};

/// What the web layer must do on one socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketCommand {
    Text(String),
    /// Send a close frame and stop.
    Close {
        code: u16,
        reason: String,
    },
}

/// An accepted WebSocket: report its frames with its `connection` id, send what arrives on
/// `commands`.
#[derive(Debug)]
pub struct SocketSession {
    pub connection: ConnectionId,
    pub commands: mpsc::UnboundedReceiver<SocketCommand>,
}

struct Shared {
    hub: Hub,
    sockets: HashMap<ConnectionId, mpsc::UnboundedSender<SocketCommand>>,
}

impl Shared {
    fn dispatch(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Send { connection, text } => {
                    if let Some(socket) = self.sockets.get(&connection) {
                        // A socket whose task ended is reported closed separately.
                        let _ = socket.send(SocketCommand::Text(text));
                    }
                }
                Output::Close {
                    connection,
                    code,
                    reason,
                } => {
                    if let Some(socket) = self.sockets.remove(&connection) {
                        let _ = socket.send(SocketCommand::Close { code, reason });
                    }
                }
            }
        }
    }
}

/// Wall-clock time that follows tokio's clock, so paused-time tests move it.
#[derive(Clone, Copy)]
struct Clock {
    wall_origin: OffsetDateTime,
    origin: tokio::time::Instant,
}

impl Clock {
    fn now(&self) -> OffsetDateTime {
        let elapsed = tokio::time::Instant::now() - self.origin;
        self.wall_origin + elapsed
    }
}

/// A running hub, cheap to clone.
#[derive(Clone)]
pub struct HubHandle {
    shared: Arc<Mutex<Shared>>,
    clock: Clock,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for HubHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubHandle").finish_non_exhaustive()
    }
}

impl HubHandle {
    /// Starts the hub and its timer task; call from within a tokio runtime.
    pub fn start(config: HubConfig) -> Self {
        Self::start_with(Hub::new(config))
    }

    pub fn start_with(hub: Hub) -> Self {
        let handle = Self {
            shared: Arc::new(Mutex::new(Shared {
                hub,
                sockets: HashMap::new(),
            })),
            clock: Clock {
                wall_origin: OffsetDateTime::now_utc(),
                origin: tokio::time::Instant::now(),
            },
            wake: Arc::new(Notify::new()),
        };
        tokio::spawn(run_timer(
            Arc::downgrade(&handle.shared),
            handle.clock,
            handle.wake.clone(),
        ));
        handle
    }

    pub fn config(&self) -> HubConfig {
        self.shared.lock().hub.config().clone()
    }

    pub fn discovery(&self) -> Value {
        self.shared.lock().hub.discovery()
    }

    /// A subscribe/unsubscribe form; endpoints are `{endpoint_base}/{id}`.
    pub fn subscribe(&self, form: &[u8], endpoint_base: &str) -> HttpReply {
        self.run(|hub, now| {
            let response = hub.subscribe(form, endpoint_base, now);
            (response.reply, response.outputs)
        })
    }

    /// A context change request; `path_topic` when it came to `{hub}/{topic}`.
    pub fn publish(&self, path_topic: Option<&str>, body: &[u8]) -> HttpReply {
        self.run(|hub, now| {
            let response = hub.publish(path_topic, body, now);
            (response.reply, response.outputs)
        })
    }

    pub fn current_context(&self, topic: &str, shape: ContextShape) -> HttpReply {
        self.shared.lock().hub.current_context(topic, shape)
    }

    pub fn endpoint_is_live(&self, endpoint: &str) -> bool {
        self.shared
            .lock()
            .hub
            .endpoint_is_live(endpoint, self.clock.now())
    }

    /// Accepts a socket for `endpoint`; its confirmation and replay are already queued.
    pub fn connect(&self, endpoint: &str) -> Result<SocketSession, ConnectRefused> {
        let (sender, commands) = mpsc::unbounded_channel();
        let mut shared = self.shared.lock();
        let (connection, outputs) = shared.hub.socket_opened(endpoint, self.clock.now())?;
        shared.sockets.insert(connection, sender);
        shared.dispatch(outputs);
        drop(shared);
        self.wake.notify_one();
        Ok(SocketSession {
            connection,
            commands,
        })
    }

    /// A text frame arrived on a socket.
    pub fn message(&self, connection: ConnectionId, text: &str) {
        self.run(|hub, now| ((), hub.socket_message(connection, text, now)));
    }

    /// A socket ended; `code` is `None` when it dropped without a close frame.
    pub fn closed(&self, connection: ConnectionId, code: Option<u16>) {
        self.run(|hub, now| ((), hub.socket_closed(connection, code, now)));
        self.shared.lock().sockets.remove(&connection);
    }

    fn run<T>(&self, step: impl FnOnce(&mut Hub, OffsetDateTime) -> (T, Vec<Output>)) -> T {
        let mut shared = self.shared.lock();
        let (value, outputs) = step(&mut shared.hub, self.clock.now());
        shared.dispatch(outputs);
        drop(shared);
        // Deadlines may have moved.
        self.wake.notify_one();
        value
    }
}

async fn run_timer(shared: Weak<Mutex<Shared>>, clock: Clock, wake: Arc<Notify>) {
    loop {
        let deadline = match shared.upgrade() {
            Some(shared) => shared.lock().hub.next_deadline(),
            None => return,
        };
        match deadline {
            Some(deadline) => {
                let wait =
                    std::time::Duration::try_from(deadline - clock.now()).unwrap_or_default();
                if !wait.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = wake.notified() => continue,
                    }
                }
            }
            None => {
                wake.notified().await;
                continue;
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut shared = shared.lock();
        let outputs = shared.hub.tick(clock.now());
        shared.dispatch(outputs);
    }
}
