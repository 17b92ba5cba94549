//! The command message and its parsing (sans-I/O).
//!
//! ```json
//! {"type": "CreatePatient", "data": {"resourceType": "Patient", …},
//!  "metadata": {"requestId": "r-1", "source": "registration-desk", "timestamp": "…"}}
//! ```

use serde_json::Value;

/// What a command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Create,
    Update,
    Delete,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Create => "Create",
            Verb::Update => "Update",
            Verb::Delete => "Delete",
        }
    }
}

/// A well-formed command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// As sent, e.g. `CreatePatient`.
    pub command_type: String,
    pub verb: Verb,
    pub resource_type: String,
    /// The resource for creates and updates; for deletes, at least `{"id": "…"}`.
    pub data: Value,
    /// The sender's id for this request: the correlation id of what it causes, and the key
    /// that makes a redelivered command run once.
    pub request_id: String,
    pub source: Option<String>,
    pub timestamp: Option<String>,
}

/// Why a message is not a command. What could be read of it is kept, so that the rejection
/// still carries the sender's request id and type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct Malformed {
    pub reason: String,
    pub request_id: Option<String>,
    pub command_type: Option<String>,
}

/// Longest request id kept (it becomes a correlation id, a header and a database key).
pub const MAX_REQUEST_ID_LEN: usize = 256;

impl Command {
    /// Parses a command message.
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let malformed = |reason: String, request_id: Option<String>, command_type| Malformed {
            reason,
            request_id,
            command_type,
        };
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|err| malformed(format!("the command is not JSON: {err}"), None, None))?;
        let Some(object) = value.as_object() else {
            return Err(malformed(
                "the command must be a JSON object with `type`, `data` and `metadata`".into(),
                None,
                None,
            ));
        };
        let metadata = object.get("metadata").and_then(Value::as_object);
        let text = |key: &str| {
            metadata
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let request_id = text("requestId").filter(|id| !id.trim().is_empty());
        let command_type = object
            .get("type")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let fail = |reason: String| malformed(reason, request_id.clone(), command_type.clone());

        let Some(request_id_text) = request_id.clone() else {
            return Err(fail(
                "metadata.requestId is missing: every command needs a unique request id (it \
                 becomes the correlation id of the resulting event)"
                    .into(),
            ));
        };
        if request_id_text.len() > MAX_REQUEST_ID_LEN {
            return Err(Malformed {
                reason: format!(
                    "metadata.requestId is {} bytes long; at most {MAX_REQUEST_ID_LEN} are allowed",
                    request_id_text.len()
                ),
                request_id: None,
                command_type,
            });
        }
        let Some(type_text) = command_type.clone() else {
            return Err(fail(
                "`type` is missing: say what to do, e.g. \"CreatePatient\", \"UpdateObservation\" \
                 or \"DeleteEncounter\""
                    .into(),
            ));
        };
        let (verb, resource_type) = split_type(&type_text).ok_or_else(|| {
            fail(format!(
                "unknown command type `{type_text}`: use Create<Type>, Update<Type> or \
                 Delete<Type> with a FHIR resource type, e.g. CreatePatient"
            ))
        })?;
        let data = object.get("data").cloned().unwrap_or(Value::Null);
        if !data.is_object() {
            return Err(fail(format!(
                "`data` must be a JSON object: the {resource_type} resource{}",
                if verb == Verb::Delete {
                    " (or at least {\"id\": \"...\"})"
                } else {
                    ""
                }
            )));
        }
        if let Some(stated) = data.get("resourceType").and_then(Value::as_str)
            && stated != resource_type
        {
            return Err(fail(format!(
                "`data` is a {stated} but the command `{type_text}` is about a {resource_type}"
            )));
        }
        Ok(Self {
            command_type: type_text.clone(),
            verb,
            resource_type: resource_type.to_owned(),
            data,
            request_id: request_id_text,
            source: text("source"),
            timestamp: text("timestamp"),
        })
    }

    /// The id the command names in `data.id`.
    pub fn data_id(&self) -> Option<&str> {
        self.data.get("id").and_then(Value::as_str)
    }
}

/// `CreatePatient` -> (Create, `Patient`). The resource type must look like one (an upper-case
/// ASCII letter, then letters); whether R4 knows it is for the commit path to say.
fn split_type(command_type: &str) -> Option<(Verb, &str)> {
    let (verb, rest) = [Verb::Create, Verb::Update, Verb::Delete]
        .into_iter()
        .find_map(|verb| Some((verb, command_type.strip_prefix(verb.as_str())?)))?;
    let mut chars = rest.chars();
    let first = chars.next()?;
    (first.is_ascii_uppercase() && chars.all(|c| c.is_ascii_alphabetic())).then_some((verb, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes(value: Value) -> Vec<u8> {
        value.to_string().into_bytes()
    }

    #[test]
    fn a_command_names_verb_type_data_and_request() {
        let command = Command::parse(&bytes(json!({
            "type": "UpdateObservation",
            "data": {"resourceType": "Observation", "id": "o1", "status": "final"},
            "metadata": {"requestId": "r-1", "source": "lab", "timestamp": "2026-01-01T00:00:00Z"}
        })))
        .unwrap();
        assert_eq!(command.verb, Verb::Update);
        assert_eq!(command.resource_type, "Observation");
        assert_eq!(command.request_id, "r-1");
        assert_eq!(command.source.as_deref(), Some("lab"));
        assert_eq!(command.data_id(), Some("o1"));
    }

    #[test]
    fn what_is_wrong_is_said_and_the_request_id_kept() {
        let cases = [
            (
                json!({"type": "CreatePatient", "data": {}, "metadata": {}}),
                "requestId",
                None,
            ),
            (
                json!({"type": "FrobnicatePatient", "data": {}, "metadata": {"requestId": "a"}}),
                "unknown command type",
                Some("a"),
            ),
            (
                json!({"type": "Createpatient", "data": {}, "metadata": {"requestId": "b"}}),
                "unknown command type",
                Some("b"),
            ),
            (
                json!({"type": "CreatePatient", "data": [1], "metadata": {"requestId": "c"}}),
                "must be a JSON object",
                Some("c"),
            ),
            (
                json!({"type": "CreatePatient", "data": {"resourceType": "Observation"}, "metadata": {"requestId": "d"}}),
                "is a Observation",
                Some("d"),
            ),
            (
                json!({"data": {}, "metadata": {"requestId": "e"}}),
                "`type` is missing",
                Some("e"),
            ),
            (json!([1, 2]), "JSON object", None),
        ];
        for (input, expected, request_id) in cases {
            let err = Command::parse(&bytes(input.clone())).unwrap_err();
            assert!(err.reason.contains(expected), "{input}: {err}");
            assert_eq!(err.request_id.as_deref(), request_id, "{input}");
        }
        let err = Command::parse(b"{not json").unwrap_err();
        assert!(err.reason.contains("not JSON"), "{err}");
    }

    #[test]
    fn overlong_request_ids_are_refused_and_not_echoed() {
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        let err = Command::parse(&bytes(json!({
            "type": "CreatePatient", "data": {}, "metadata": {"requestId": long}
        })))
        .unwrap_err();
        assert!(err.reason.contains("at most"), "{err}");
        assert_eq!(err.request_id, None);
    }
}
