//! Websocket text frames of the four dialects clients use (see the subscriptions brief §1.8):
//! R4 classic `bind <id>` → `bound <id>` / `ping <id>`; Backport/R5 `bind-with-token <token>`;
//! Medplum's JSON `{"type":"bind-with-token","payload":{"token":"…"}}`; and the token in the
//! connection URL's query (`?token=…`). Notifications themselves are the Bundles of
//! [`crate::notification`], sent as JSON text.

use serde_json::Value;

/// What a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// R4 classic: bind one subscription by id.
    Bind { subscription_id: String },
    /// Backport/R5 text or Medplum JSON: bind the subscriptions of a token.
    BindWithToken { token: String },
    /// Medplum: stop the subscriptions of a token.
    UnbindFromToken { token: String },
    /// Medplum keep-alive.
    Ping,
    /// Anything else (answer with an error, as HAPI does: `Unexpected client message: …`).
    Unknown(String),
}

/// Parses one client text frame.
pub fn parse_client_frame(text: &str) -> ClientFrame {
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        let Ok(json) = serde_json::from_str::<Value>(trimmed) else {
            return ClientFrame::Unknown(trimmed.to_owned());
        };
        let token = || {
            json.pointer("/payload/token")
                .and_then(Value::as_str)
                .filter(|token| !token.is_empty())
                .map(str::to_owned)
        };
        return match (json.get("type").and_then(Value::as_str), token()) {
            (Some("bind-with-token"), Some(token)) => ClientFrame::BindWithToken { token },
            (Some("unbind-from-token"), Some(token)) => ClientFrame::UnbindFromToken { token },
            (Some("ping"), _) => ClientFrame::Ping,
            _ => ClientFrame::Unknown(trimmed.to_owned()),
        };
    }
    // The IG's diagram also writes `bind-with-token: <token>`.
    if let Some(rest) = trimmed.strip_prefix("bind-with-token") {
        let token = rest.trim_start_matches(':').trim();
        if !token.is_empty() && !token.contains(char::is_whitespace) {
            return ClientFrame::BindWithToken {
                token: token.to_owned(),
            };
        }
        return ClientFrame::Unknown(trimmed.to_owned());
    }
    if let Some(id) = trimmed.strip_prefix("bind ") {
        let id = id.trim();
        if !id.is_empty() && !id.contains(char::is_whitespace) {
            return ClientFrame::Bind {
                subscription_id: id.to_owned(),
            };
        }
    }
    ClientFrame::Unknown(trimmed.to_owned())
}

/// The binding token of a connection URL's query string (`token=…`), if any.
pub fn token_from_query(query: &str) -> Option<String> {
    crate::criteria::decode_query(query.strip_prefix('?').unwrap_or(query))
        .into_iter()
        .find(|(name, value)| name == "token" && !value.is_empty())
        .map(|(_, value)| value)
}

/// R4 classic reply to `bind <id>`.
pub fn bound_frame(subscription_id: &str) -> String {
    format!("bound {subscription_id}")
}

/// R4 classic notification: a new result is available for `<id>`.
pub fn ping_frame(subscription_id: &str) -> String {
    format!("ping {subscription_id}")
}

/// R4 classic reply to anything it does not understand.
pub fn unexpected_frame(text: &str) -> String {
    format!("Unexpected client message: {text}")
}
