//! Creation-time validation: a [`WriteCheck`] that refuses, with the core's issues, any
//! Subscription the runtime could not honour, instead of accepting it and failing later; and
//! [`SubscriptionRedaction`], which keeps channel secrets out of every answer.

use std::sync::Arc;

use flare_search::Registry;
use flare_service::{FhirError, ReadTransform, WriteCheck};
use serde_json::Value;

use crate::{TopicRegistry, parse_subscription, redact_for_read, restore_redacted};

/// Register with `fhir.add_write_check("Subscription", Arc::new(SubscriptionCheck::new(…)))`.
pub struct SubscriptionCheck {
    registry: Arc<Registry>,
    topics: TopicRegistry,
}

impl SubscriptionCheck {
    pub fn new(registry: Arc<Registry>, topics: TopicRegistry) -> Self {
        Self { registry, topics }
    }
}

impl WriteCheck for SubscriptionCheck {
    fn check(&self, resource: &Value) -> Result<(), FhirError> {
        // `active` and `error` are written back by the runtime itself; the rest of the
        // resource must still be valid, so it is checked as if `requested`.
        let mut candidate = resource.clone();
        if matches!(
            resource.get("status").and_then(Value::as_str),
            Some("active" | "error")
        ) {
            candidate["status"] = Value::String("requested".into());
        }
        parse_subscription(&candidate, &self.registry, &self.topics)
            .map(|_| ())
            .map_err(|issues| FhirError::with_issues(422, issues))
    }
}

/// Masks channel secrets (`Authorization`-like headers, the HMAC secret) in every answer that
/// carries a Subscription, and puts them back when a client writes the mask back unchanged.
/// Register with `fhir.add_read_transform("Subscription", Arc::new(SubscriptionRedaction))`.
pub struct SubscriptionRedaction;

impl ReadTransform for SubscriptionRedaction {
    fn for_read(&self, resource: &Value) -> Value {
        redact_for_read(resource)
    }

    fn restore(&self, incoming: &mut Value, stored: &Value) {
        restore_redacted(incoming, stored);
    }
}
