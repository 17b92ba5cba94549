//! The websocket channel: binding tokens (`$get-ws-binding-token`) and connection sessions.
//!
//! A session is transport-free: the HTTP layer feeds it the client's text frames
//! ([`WsSession::handle_text`]) and writes out whatever arrives on its outgoing queue. Each
//! bound subscription gets one task that reads the subscription's numbered events from the
//! cursor file, from the connection's own position, and queues one notification per batch in
//! event-number order; the log's events are never pushed to the connection directly, so a
//! reconnecting client can ask for exactly what it missed.
//!
//! **Resume.** A bind may carry the last event number the client saw: `bind-with-token
//! <token> <lastEventNumber>`, `bind <id> <lastEventNumber>`, Medplum JSON
//! `{"type":"bind-with-token","payload":{"token":…,"lastEventNumber":N}}`, or the connection
//! URL's `lastEventNumber=N` next to `token=`. Delivery then starts at `N + 1`. Without it, a
//! first bind starts after the subscription's current `events-since-subscription-start` (only
//! new events). One number applies to every subscription of the bind; a client that follows
//! several subscriptions with different positions binds them with one token each.
//!
//! **Expiry.** A binding lasts until its token expires; delivery for it then pauses, and the
//! connection keeps its position, so a re-bind with a fresh token (on the same connection)
//! continues at the next undelivered number, without gap or repeat.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use super::{Shared, notify};
use crate::websocket::{
    ClientFrame, bound_frame, parse_client_frame, ping_frame, unexpected_frame,
};
use crate::{ChannelType, notification::NotificationType};

/// Why a binding token was not issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsTokenError {
    #[error("no subscription id given")]
    NoSubscription,
    #[error("Subscription/{0} is not known to the delivery runtime")]
    Unknown(String),
    #[error("Subscription/{0} does not use the websocket channel")]
    NotWebsocket(String),
    #[error("Subscription/{id} is {status}: nothing would be delivered")]
    Inactive { id: String, status: String },
}

/// An issued binding token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsBindingToken {
    pub token: String,
    /// When it stops binding (FHIR instant).
    pub expiration: String,
    pub subscriptions: Vec<String>,
}

impl WsBindingToken {
    /// The `$get-ws-binding-token` answer of the Backport IG.
    pub fn parameters(&self, websocket_url: &str) -> Value {
        let mut parameter = vec![
            json!({"name": "token", "valueString": self.token}),
            json!({"name": "expiration", "valueDateTime": self.expiration}),
        ];
        for id in &self.subscriptions {
            parameter
                .push(json!({"name": "subscription", "valueString": format!("Subscription/{id}")}));
        }
        parameter.push(json!({"name": "websocket-url", "valueUrl": websocket_url}));
        json!({"resourceType": "Parameters", "parameter": parameter})
    }
}

/// A token's grant, kept in memory: tokens do not outlive the process (a client asks again).
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    subscriptions: Vec<String>,
    expires: Instant,
}

/// The token table. Expired grants are swept on every issue.
#[derive(Default)]
pub(crate) struct Tokens {
    grants: parking_lot::Mutex<HashMap<String, Grant>>,
}

impl Tokens {
    fn issue(&self, subscriptions: Vec<String>, ttl: Duration) -> (String, Instant) {
        // 256 random bits, hex: unguessable and URL-safe.
        let bytes: [u8; 32] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let expires = Instant::now() + ttl;
        let mut grants = self.grants.lock();
        let now = Instant::now();
        grants.retain(|_, grant| grant.expires > now);
        grants.insert(
            token.clone(),
            Grant {
                subscriptions,
                expires,
            },
        );
        (token, expires)
    }

    /// The grant of a token that is still valid.
    pub(crate) fn valid(&self, token: &str) -> Option<Grant> {
        let grants = self.grants.lock();
        grants
            .get(token)
            .filter(|grant| grant.expires > Instant::now())
            .cloned()
    }
}

fn is_websocket(shared: &Shared, id: &str) -> Option<bool> {
    let live = shared.live.lock().get(id).cloned()?;
    Some(live.channel().map(|channel| channel.channel_type) == Some(ChannelType::Websocket))
}

pub(crate) fn issue_token(shared: &Shared, ids: &[String]) -> Result<WsBindingToken, WsTokenError> {
    if ids.is_empty() {
        return Err(WsTokenError::NoSubscription);
    }
    let mut subscriptions: Vec<String> = Vec::new();
    for id in ids {
        let status = shared
            .live
            .lock()
            .get(id)
            .map(|live| live.status().to_owned());
        if let Some(status) = status
            && !matches!(status.as_str(), "requested" | "active" | "error")
        {
            return Err(WsTokenError::Inactive {
                id: id.clone(),
                status,
            });
        }
        match is_websocket(shared, id) {
            None => return Err(WsTokenError::Unknown(id.clone())),
            Some(false) => return Err(WsTokenError::NotWebsocket(id.clone())),
            Some(true) if !subscriptions.contains(id) => subscriptions.push(id.clone()),
            Some(true) => {}
        }
    }
    let ttl = Duration::from_millis(shared.config.ws_token_ttl_ms.max(1));
    let (token, _) = shared.ws_tokens.issue(subscriptions.clone(), ttl);
    let expires_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d + ttl).as_millis() as i64)
        .unwrap_or(0);
    Ok(WsBindingToken {
        token,
        expiration: flare_service::format_instant(expires_ms),
        subscriptions,
    })
}

/// How a binding was made; decides the shape of what the connection receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// R4 classic `bind <id>`: `ping <id>` per event, no Bundles.
    Classic,
    /// Token binds (backport text, Medplum JSON, URL query): notification Bundles.
    Token,
}

struct Binding {
    /// The next event number to send; survives the task so a re-bind continues from it.
    next: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

/// Frames queued per connection before its delivery tasks wait for the client.
const OUTGOING_CAPACITY: usize = 64;

/// One websocket connection. Dropping it stops its delivery tasks.
pub struct WsSession {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<String>,
    bindings: HashMap<String, Binding>,
}

impl Drop for WsSession {
    fn drop(&mut self) {
        for binding in self.bindings.values() {
            binding.task.abort();
        }
    }
}

/// A bind request after the resume number (if any) has been split off.
fn split_resume(text: &str) -> (String, Option<u64>) {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        let number = serde_json::from_str::<Value>(trimmed)
            .ok()
            .and_then(|json| {
                let value = json.pointer("/payload/lastEventNumber")?;
                value
                    .as_u64()
                    .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
            });
        return (trimmed.to_owned(), number);
    }
    let words: Vec<&str> = trimmed.split_whitespace().collect();
    if let [verb @ ("bind" | "bind-with-token"), target, number] = words.as_slice()
        && let Ok(number) = number.parse::<u64>()
    {
        return (format!("{verb} {target}"), Some(number));
    }
    (trimmed.to_owned(), None)
}

fn outcome(diagnostics: &str) -> String {
    json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "security", "diagnostics": diagnostics}]})
    .to_string()
}

impl WsSession {
    pub(crate) fn new(shared: Arc<Shared>) -> (Self, mpsc::Receiver<String>) {
        // Bounded: a slow client holds back its own delivery tasks (they resume from the
        // cursor file) instead of piling notifications up in memory.
        let (outgoing, receiver) = mpsc::channel(OUTGOING_CAPACITY);
        (
            Self {
                shared,
                outgoing,
                bindings: HashMap::new(),
            },
            receiver,
        )
    }

    /// Ids of the subscriptions bound on this connection, sorted.
    pub fn bound(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.bindings.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Binds the subscriptions of a token given in the connection URL. `false`: the token is
    /// unknown or expired (refuse the connection).
    pub async fn bind_query_token(&mut self, token: &str, last_event_number: Option<u64>) -> bool {
        self.bind_token(token, last_event_number).await
    }

    /// Handles one client text frame; replies and notifications arrive on the outgoing queue.
    /// Waits while that queue is full, so the queue must be drained concurrently.
    pub async fn handle_text(&mut self, text: &str) {
        let (frame, resume) = split_resume(text);
        match parse_client_frame(&frame) {
            ClientFrame::Bind { subscription_id } => {
                if is_websocket(&self.shared, &subscription_id) == Some(true) {
                    self.bind(&subscription_id, Dialect::Classic, None, resume);
                    self.send(bound_frame(&subscription_id)).await;
                } else {
                    self.send(unexpected_frame(&format!(
                        "Subscription/{subscription_id} is not a websocket subscription"
                    )))
                    .await;
                }
            }
            ClientFrame::BindWithToken { token } => {
                if !self.bind_token(&token, resume).await {
                    self.send(outcome("binding token unknown or expired")).await;
                }
            }
            ClientFrame::UnbindFromToken { token } => {
                if let Some(grant) = self.shared.ws_tokens.valid(&token) {
                    for id in grant.subscriptions {
                        if let Some(binding) = self.bindings.remove(&id) {
                            binding.task.abort();
                        }
                    }
                }
            }
            ClientFrame::Ping => self.send(json!({"type": "pong"}).to_string()).await,
            ClientFrame::Unknown(text) => self.send(unexpected_frame(&text)).await,
        }
    }

    async fn send(&self, frame: String) {
        let _ = self.outgoing.send(frame).await;
    }

    async fn bind_token(&mut self, token: &str, resume: Option<u64>) -> bool {
        let Some(grant) = self.shared.ws_tokens.valid(token) else {
            return false;
        };
        for id in &grant.subscriptions {
            let Some(live) = self.shared.live.lock().get(id).cloned() else {
                continue;
            };
            // The IG's handshake on bind, before any event of the binding.
            let handshake = notify::bundle(
                &self.shared,
                id,
                &live,
                NotificationType::Handshake,
                &[],
                live.content(),
            );
            self.send(frame_text(&live, &handshake)).await;
            self.bind(id, Dialect::Token, Some(grant.expires), resume);
        }
        true
    }

    fn bind(&mut self, id: &str, dialect: Dialect, expires: Option<Instant>, resume: Option<u64>) {
        let next = match self.bindings.remove(id) {
            Some(previous) => {
                previous.task.abort();
                previous.next
            }
            None => {
                let current = self
                    .shared
                    .live
                    .lock()
                    .get(id)
                    .map(|l| l.events_since_start)
                    .unwrap_or(0);
                Arc::new(AtomicU64::new(current + 1))
            }
        };
        if let Some(last_seen) = resume {
            next.store(last_seen.saturating_add(1), Ordering::SeqCst);
        }
        let task = tokio::spawn(deliver(
            self.shared.clone(),
            id.to_owned(),
            dialect,
            expires,
            next.clone(),
            self.outgoing.clone(),
        ));
        self.bindings.insert(id.to_owned(), Binding { next, task });
    }
}

/// Sends one subscription's events from `next` on, in order, until the binding expires, the
/// subscription stops, or the connection goes.
async fn deliver(
    shared: Arc<Shared>,
    id: String,
    dialect: Dialect,
    expires: Option<Instant>,
    next: Arc<AtomicU64>,
    outgoing: mpsc::Sender<String>,
) {
    let mut committed = shared.committed.subscribe();
    let mut last_sent = Instant::now();
    loop {
        if expires.is_some_and(|at| at <= Instant::now()) {
            return;
        }
        // Seen before reading, so a commit between the read and the wait is not missed.
        committed.borrow_and_update();
        let Some(live) = shared.live.lock().get(&id).cloned() else {
            return;
        };
        if !matches!(live.status(), "active" | "error" | "requested") {
            return;
        }
        let from = next.load(Ordering::SeqCst);
        let limit = match (dialect, live.channel()) {
            (Dialect::Token, Some(channel)) if live.is_topic_based() => {
                channel.max_count.unwrap_or(1).clamp(1, 1000) as usize
            }
            _ => 1,
        };
        let rows = match shared.cursor.events(&id, from, u64::MAX, limit).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(subscription = %id, error = %e, "cannot read the cursor");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Some(last) = rows.last().map(|r| r.number) {
            let frame = match dialect {
                Dialect::Classic => ping_frame(&id),
                Dialect::Token => {
                    let content = live.content();
                    let events = notify::load_events(&shared, rows, content).await;
                    let bundle = notify::bundle(
                        &shared,
                        &id,
                        &live,
                        NotificationType::EventNotification,
                        &events,
                        content,
                    );
                    frame_text(&live, &bundle)
                }
            };
            if outgoing.send(frame).await.is_err() {
                return;
            }
            next.store(last + 1, Ordering::SeqCst);
            record_delivery(&shared, &id, last).await;
            last_sent = Instant::now();
            continue;
        }
        let heartbeat = match (dialect, live.channel().and_then(|c| c.heartbeat_period)) {
            (Dialect::Token, Some(period)) => {
                Some(last_sent + Duration::from_secs(u64::from(period.max(1))))
            }
            _ => None,
        };
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            changed = committed.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(expires.unwrap_or(far)), if expires.is_some() => return,
            _ = tokio::time::sleep_until(heartbeat.unwrap_or(far)), if heartbeat.is_some() => {
                let bundle = notify::bundle(
                    &shared, &id, &live, NotificationType::Heartbeat, &[], live.content());
                if outgoing.send(frame_text(&live, &bundle)).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
            }
        }
    }
}

/// A notification as a text frame, in the payload's format (JSON unless XML is asked for).
fn frame_text(live: &super::Live, bundle: &Value) -> String {
    notify::encode(live.channel(), bundle)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| bundle.to_string())
}

/// Moves the subscription's `$status` delivery position forward (never back) to `number`.
async fn record_delivery(shared: &Shared, id: &str, number: u64) {
    for _ in 0..3 {
        let Ok(current) = shared.cursor.delivered_through(id).await else {
            return;
        };
        if current >= number {
            return;
        }
        if shared
            .cursor
            .mark_delivered(id, current, number)
            .await
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_resume;

    #[test]
    fn resume_number_is_split_off_every_bind_form() {
        assert_eq!(
            split_resume("bind-with-token abc 17"),
            ("bind-with-token abc".to_owned(), Some(17))
        );
        assert_eq!(
            split_resume("bind sub-1 0"),
            ("bind sub-1".to_owned(), Some(0))
        );
        let medplum = r#"{"type":"bind-with-token","payload":{"token":"t","lastEventNumber":"9"}}"#;
        assert_eq!(split_resume(medplum), (medplum.to_owned(), Some(9)));
    }

    #[test]
    fn frames_without_a_number_pass_through() {
        assert_eq!(
            split_resume(" bind-with-token abc "),
            ("bind-with-token abc".to_owned(), None)
        );
        // Not a number: left for the frame parser to refuse.
        assert_eq!(
            split_resume("bind-with-token abc def"),
            ("bind-with-token abc def".to_owned(), None)
        );
        assert_eq!(split_resume("ping"), ("ping".to_owned(), None));
    }
}
