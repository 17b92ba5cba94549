//! The pure conformance points of the subscriptions brief §1.9 (validation, matching
//! semantics, bundle shapes), each test named after its point, plus the index's equivalence
//! with one-by-one evaluation.

mod bundles;
mod matching;
mod validation;
mod websocket;

use std::sync::{Arc, OnceLock};

use flare_search::Registry;
use flare_subscriptions::{SubscriptionSpec, TopicRegistry, parse_subscription};
use serde_json::{Value, json};

pub const TOPIC: &str = "http://flare.dev/fhir/SubscriptionTopic/";
pub const FILTER: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
pub const CONTENT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";

pub fn registry() -> Arc<Registry> {
    static REGISTRY: OnceLock<Arc<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Arc::new(Registry::r4())).clone()
}

pub fn topics() -> TopicRegistry {
    TopicRegistry::with_builtins(&registry())
}

/// A Backport subscription on a built-in topic (`topic` is the id after the base URL).
pub fn backport(topic: &str, filters: &[&str], content: &str) -> Value {
    let filters: Vec<Value> = filters
        .iter()
        .map(|filter| json!({"url": FILTER, "valueString": filter}))
        .collect();
    json!({
        "resourceType": "Subscription",
        "id": format!("sub-{topic}"),
        "status": "requested",
        "reason": "test",
        "criteria": format!("{TOPIC}{topic}"),
        "_criteria": {"extension": filters},
        "channel": {
            "type": "rest-hook",
            "endpoint": "https://client.example.org/hook",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": CONTENT, "valueCode": content}]},
        },
    })
}

/// A classic subscription with `criteria`.
pub fn classic(criteria: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "id": "classic",
        "status": "requested",
        "reason": "test",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": "https://client.example.org/hook"},
    })
}

pub fn parse(subscription: &Value) -> Result<SubscriptionSpec, String> {
    parse_subscription(subscription, &registry(), &topics()).map_err(|issues| {
        issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}
