//! Point 52 (secrets not echoed on read): every answer that carries a Subscription masks its
//! `Authorization`-like headers and signature secret, the store keeps them, deliveries use
//! them, and a client that writes back what it read keeps them.

use flare_service::{ReturnPreference, SearchRequest};
use serde_json::{Value, json};

use crate::common::{BACKPORT, Env, Receiver, backport_subscription, encounter};

const SECRET_EXT: &str = "http://flare.dev/fhir/StructureDefinition/subscription-hmac-secret";

fn with_secrets(endpoint: &str) -> Value {
    let mut subscription = backport_subscription(endpoint, "p1", "id-only");
    subscription["channel"]["header"] = json!([
        "Authorization: Bearer top-secret",
        "X-Api-Key: key-123",
        "X-Test: yes"
    ]);
    subscription["channel"]["extension"] =
        json!([{"url": SECRET_EXT, "valueString": "sign-with-this"}]);
    subscription
}

/// Every string in `value`, to look for a leaked secret anywhere in an answer.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings(item, out)),
        Value::Object(map) => map.values().for_each(|item| strings(item, out)),
        _ => {}
    }
}

fn assert_masked(answer: &Value, what: &str) {
    let mut found = Vec::new();
    strings(answer, &mut found);
    for secret in ["top-secret", "key-123", "sign-with-this"] {
        assert!(
            !found.iter().any(|text| text.contains(secret)),
            "{what} leaks {secret}: {answer:#}"
        );
    }
    assert!(
        found.iter().any(|text| text == "Authorization: [redacted]"),
        "{what} carries no masked Subscription: {answer:#}"
    );
}

fn body(version: &flare_store::StoredVersion) -> Value {
    serde_json::from_str(version.body.as_deref().unwrap()).unwrap()
}

#[tokio::test]
async fn m52_no_answer_carries_a_channel_secret_and_the_store_keeps_them() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let ctx = env.ctx();
    let created = env
        .fhir
        .create(&ctx, "Subscription", with_secrets(&hooks.url("a")), None)
        .await
        .unwrap();
    let created = created.version.unwrap();
    assert_masked(&body(&created), "the create response");
    let id = created.key.id.clone();
    assert_eq!(
        body(&created)["channel"]["header"][2],
        "X-Test: yes",
        "ordinary headers stay readable"
    );
    env.wait_status(&id, "active").await;

    let read = env.fhir.read("Subscription", &id).await.unwrap();
    assert_masked(&body(&read), "read");
    let vread = env.fhir.vread("Subscription", &id, "1").await.unwrap();
    assert_masked(&body(&vread), "vread");
    let search = |params: Vec<(&str, &str)>, resource_type: &str| SearchRequest {
        resource_type: Some(resource_type.to_owned()),
        params: params
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    let found = env
        .fhir
        .search(&ctx, &search(vec![("_id", &id)], "Subscription"))
        .await
        .unwrap();
    assert_eq!(found["entry"].as_array().unwrap().len(), 1);
    assert_masked(&found, "search");
    // An _include that pulls the Subscription in.
    env.create(json!({"resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110100"},
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"requestor": true, "who": {"display": "test"}}],
        "source": {"observer": {"display": "test"}},
        "entity": [{"what": {"reference": format!("Subscription/{id}")}}]}))
        .await;
    let included = env
        .fhir
        .search(
            &ctx,
            &search(vec![("_include", "AuditEvent:entity")], "AuditEvent"),
        )
        .await
        .unwrap();
    assert!(
        included["entry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["search"]["mode"] == "include"),
        "{included:#}"
    );
    assert_masked(&included, "_include");
    let history = env
        .fhir
        .history(&ctx, Some("Subscription"), Some(&id), &[])
        .await
        .unwrap();
    assert!(history["entry"].as_array().unwrap().len() >= 2);
    assert_masked(&history, "instance history");
    let type_history = env
        .fhir
        .history(&ctx, Some("Subscription"), None, &[])
        .await
        .unwrap();
    assert_masked(&type_history, "type history");
    let batch = env
        .fhir
        .process_bundle(
            &ctx,
            json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": format!("Subscription/{id}")}},
                {"request": {"method": "GET", "url": format!("Subscription/{id}/_history/1")}},
                {"request": {"method": "GET", "url": format!("Subscription?_id={id}")}},
                {"resource": with_secrets(&hooks.url("b")),
                 "request": {"method": "POST", "url": "Subscription"}}]}),
            ReturnPreference::Representation,
        )
        .await
        .unwrap();
    for (index, entry) in batch["entry"].as_array().unwrap().iter().enumerate() {
        assert_masked(entry, &format!("batch entry {index}"));
    }
    let transaction = env
        .fhir
        .process_bundle(
            &ctx,
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": with_secrets(&hooks.url("c")),
                 "request": {"method": "POST", "url": "Subscription"}},
                {"request": {"method": "GET", "url": format!("Subscription/{id}")}}]}),
            ReturnPreference::Representation,
        )
        .await
        .unwrap();
    for (index, entry) in transaction["entry"].as_array().unwrap().iter().enumerate() {
        assert_masked(entry, &format!("transaction entry {index}"));
    }

    // Stored as written, and delivered with the real values.
    let stored = body(&env.fhir.read_stored("Subscription", &id).await.unwrap());
    assert_eq!(
        stored["channel"]["header"][0],
        "Authorization: Bearer top-secret"
    );
    assert_eq!(
        stored["channel"]["extension"][0]["valueString"],
        "sign-with-this"
    );
    env.create(encounter("p1")).await;
    let received = hooks.wait_events("a", 1).await;
    let notification = received
        .iter()
        .find(|r| r.kind() == "event-notification")
        .unwrap();
    assert_eq!(notification.headers["authorization"], "Bearer top-secret");
    assert_eq!(notification.headers["x-api-key"], "key-123");
}

#[tokio::test]
async fn m52_writing_back_what_was_read_keeps_the_secrets() {
    let env = Env::start().await;
    let hooks = Receiver::start().await;
    let id = env.create(with_secrets(&hooks.url("a"))).await;
    env.wait_status(&id, "active").await;
    // Read (masked), change the reason, write back: the mask is not stored.
    let mut read = env.read("Subscription", &id).await;
    assert_eq!(read["channel"]["header"][0], "Authorization: [redacted]");
    read["reason"] = json!("changed");
    env.update(read).await;
    let stored = body(&env.fhir.read_stored("Subscription", &id).await.unwrap());
    assert_eq!(stored["reason"], "changed");
    assert_eq!(
        stored["channel"]["header"][0],
        "Authorization: Bearer top-secret"
    );
    assert_eq!(
        stored["channel"]["extension"][0]["valueString"],
        "sign-with-this"
    );
    // Writing back exactly what was read is no change at all.
    let versions_before = stored["meta"]["versionId"].clone();
    let unchanged = env.read("Subscription", &id).await;
    env.update(unchanged).await;
    let after = body(&env.fhir.read_stored("Subscription", &id).await.unwrap());
    assert_eq!(after["meta"]["versionId"], versions_before);
    // A client may still replace a secret with a new value.
    let mut replaced = env.read("Subscription", &id).await;
    replaced["channel"]["header"][0] = json!("Authorization: Bearer rotated");
    env.update(replaced).await;
    let rotated = body(&env.fhir.read_stored("Subscription", &id).await.unwrap());
    assert_eq!(
        rotated["channel"]["header"][0],
        "Authorization: Bearer rotated"
    );
    let _ = BACKPORT;
}
