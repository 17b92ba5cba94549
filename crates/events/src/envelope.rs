//! The change-event envelope: one event per resource version.
//!
//! ```json
//! {"type":"PatientCreated","data":{…resource…},
//!  "metadata":{"eventId":"…","timestamp":"…","source":"…","correlationId":"…",
//!              "resourceType":"Patient","resourceId":"123","versionId":"1","action":"created"}}
//! ```
//! Deletes carry no `data`: the metadata names the id and the tombstone version. A resource too
//! large to travel inline (see [`ChangeEvent::to_bounded_json_bytes`]) is left out too, and
//! `dataRef` names the version to read instead (the claim-check pattern), so one huge resource
//! never blocks the log.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Header names Flare puts on every change event.
pub mod header {
    pub const CONTENT_TYPE: &str = "content-type";
    pub const EVENT_ID: &str = "eventId";
    pub const CORRELATION_ID: &str = "correlationId";
    pub const TRACEPARENT: &str = "traceparent";
    pub const EVENT_TYPE: &str = "eventType";
    /// The outbox sequence number the record was relayed from (lets the relay skip what it
    /// already appended before a crash).
    pub const OUTBOX_SEQ: &str = "flare-outbox-seq";
}

/// Appends the JSON of a value that cannot fail to serialise (strings, the metadata struct).
fn write_json(bytes: &mut Vec<u8>, value: &impl Serialize) {
    if serde_json::to_writer(&mut *bytes, value).is_err() {
        bytes.extend_from_slice(b"null");
    }
}

/// What happened to the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Updated,
    Deleted,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Deleted => "deleted",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Action::Created => "Created",
            Action::Updated => "Updated",
            Action::Deleted => "Deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMetadata {
    pub event_id: String,
    /// RFC 3339, the version's `meta.lastUpdated`.
    pub timestamp: String,
    pub source: String,
    pub correlation_id: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: String,
    pub action: Action,
}

/// A change event as it travels on the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// `<ResourceType><Created|Updated|Deleted>`, e.g. `ObservationCreated`.
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// `Type/id/_history/n` when `data` was left out because the resource was too large.
    #[serde(default, rename = "dataRef", skip_serializing_if = "Option::is_none")]
    pub data_ref: Option<String>,
    pub metadata: EventMetadata,
}

impl ChangeEvent {
    /// Builds the event for a new version; `resource` is `None` for a delete.
    pub fn new(metadata: EventMetadata, resource: Option<Value>) -> Self {
        let event_type = format!("{}{}", metadata.resource_type, metadata.action.suffix());
        Self {
            event_type,
            data: resource,
            data_ref: None,
            metadata,
        }
    }

    /// The JSON payload, at most `max_bytes` long where the resource is what makes it larger:
    /// then `data` is replaced by `dataRef`.
    pub fn to_bounded_json_bytes(&mut self, max_bytes: usize) -> Vec<u8> {
        let bytes = self.to_json_bytes();
        if bytes.len() <= max_bytes || self.data.is_none() {
            return bytes;
        }
        let m = &self.metadata;
        self.data_ref = Some(format!(
            "{}/{}/_history/{}",
            m.resource_type, m.resource_id, m.version_id
        ));
        self.data = None;
        self.to_json_bytes()
    }

    /// [`to_bounded_json_bytes`](Self::to_bounded_json_bytes) for an event built without
    /// `data`, with the resource given as its JSON text: the same bytes, without parsing or
    /// serialising the resource again (the write path already serialised it for the store).
    /// `resource_json` must be one JSON value, as `serde_json` writes it.
    pub fn to_bounded_json_bytes_with_data(
        &mut self,
        resource_json: &str,
        max_bytes: usize,
    ) -> Vec<u8> {
        // The field order of the derived serialisation: type, data, (dataRef), metadata.
        let mut bytes = Vec::with_capacity(resource_json.len() + 384);
        bytes.extend_from_slice(b"{\"type\":");
        write_json(&mut bytes, &self.event_type);
        bytes.extend_from_slice(b",\"data\":");
        bytes.extend_from_slice(resource_json.as_bytes());
        bytes.extend_from_slice(b",\"metadata\":");
        write_json(&mut bytes, &self.metadata);
        bytes.push(b'}');
        if bytes.len() <= max_bytes {
            return bytes;
        }
        let m = &self.metadata;
        self.data_ref = Some(format!(
            "{}/{}/_history/{}",
            m.resource_type, m.resource_id, m.version_id
        ));
        self.data = None;
        self.to_json_bytes()
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings and a JSON value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The headers that travel with the event (values as bytes, as on Kafka).
    pub fn headers(&self, traceparent: Option<&str>) -> Vec<(String, Vec<u8>)> {
        let mut headers = vec![
            (
                header::CONTENT_TYPE.to_owned(),
                b"application/fhir+json".to_vec(),
            ),
            (
                header::EVENT_ID.to_owned(),
                self.metadata.event_id.clone().into_bytes(),
            ),
            (
                header::CORRELATION_ID.to_owned(),
                self.metadata.correlation_id.clone().into_bytes(),
            ),
            (
                header::EVENT_TYPE.to_owned(),
                self.event_type.clone().into_bytes(),
            ),
        ];
        if let Some(tp) = traceparent {
            headers.push((header::TRACEPARENT.to_owned(), tp.as_bytes().to_vec()));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metadata(action: Action) -> EventMetadata {
        EventMetadata {
            event_id: "e1".into(),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            source: "flare".into(),
            correlation_id: "c1".into(),
            resource_type: "Patient".into(),
            resource_id: "p1".into(),
            version_id: "2".into(),
            action,
        }
    }

    #[test]
    fn envelope_has_the_documented_shape() {
        let event = ChangeEvent::new(
            metadata(Action::Updated),
            Some(json!({"resourceType": "Patient"})),
        );
        let v: Value = serde_json::from_slice(&event.to_json_bytes()).unwrap();
        assert_eq!(v["type"], "PatientUpdated");
        assert_eq!(v["data"]["resourceType"], "Patient");
        assert_eq!(v["metadata"]["eventId"], "e1");
        assert_eq!(v["metadata"]["correlationId"], "c1");
        assert_eq!(v["metadata"]["versionId"], "2");
        assert_eq!(v["metadata"]["action"], "updated");
        assert_eq!(
            ChangeEvent::from_json_bytes(&event.to_json_bytes()).unwrap(),
            event
        );
    }

    #[test]
    fn oversized_resources_travel_by_reference() {
        let big = json!({"resourceType": "Patient", "text": {"div": "x".repeat(5000)}});
        let mut event = ChangeEvent::new(metadata(Action::Updated), Some(big.clone()));
        let small = event.to_bounded_json_bytes(1000);
        assert!(small.len() < 1000);
        let v: Value = serde_json::from_slice(&small).unwrap();
        assert!(v.get("data").is_none());
        assert_eq!(v["dataRef"], "Patient/p1/_history/2");
        let mut fits = ChangeEvent::new(metadata(Action::Updated), Some(big));
        let v: Value = serde_json::from_slice(&fits.to_bounded_json_bytes(10_000)).unwrap();
        assert_eq!(v["data"]["resourceType"], "Patient");
        assert!(v.get("dataRef").is_none());
    }

    #[test]
    fn payload_from_resource_text_is_the_payload_from_the_resource() {
        let resource = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Ünal \"q\""}], "multipleBirthInteger": 2, "x": 1.50});
        let text = resource.to_string();
        for max_bytes in [100_000, 200] {
            let mut from_value =
                ChangeEvent::new(metadata(Action::Updated), Some(resource.clone()));
            let mut from_text = ChangeEvent::new(metadata(Action::Updated), None);
            assert_eq!(
                from_text.to_bounded_json_bytes_with_data(&text, max_bytes),
                from_value.to_bounded_json_bytes(max_bytes),
                "max {max_bytes}"
            );
            assert_eq!(from_text.data_ref, from_value.data_ref);
        }
    }

    #[test]
    fn deletes_carry_no_data() {
        let event = ChangeEvent::new(metadata(Action::Deleted), None);
        let v: Value = serde_json::from_slice(&event.to_json_bytes()).unwrap();
        assert_eq!(v["type"], "PatientDeleted");
        assert!(v.get("data").is_none());
    }

    #[test]
    fn headers_name_the_event_and_trace() {
        let event = ChangeEvent::new(metadata(Action::Created), None);
        let headers = event.headers(Some("00-abc-def-01"));
        let get = |k: &str| {
            headers
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get(header::CONTENT_TYPE).unwrap(), b"application/fhir+json");
        assert_eq!(get(header::EVENT_ID).unwrap(), b"e1");
        assert_eq!(get(header::TRACEPARENT).unwrap(), b"00-abc-def-01");
    }
}
