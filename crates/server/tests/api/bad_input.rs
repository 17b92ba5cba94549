//! The bad-input corpus: each case gets a clear OperationOutcome with the right status, and
//! the server stays up and keeps what it had accepted.

use flare_server::ServerConfig;
use flare_service::FhirConfig;
use reqwest::Method;
use serde_json::json;

use crate::common::TestServer;

/// (name, method, path, content type, body, expected status)
type Case = (
    &'static str,
    Method,
    &'static str,
    &'static str,
    Vec<u8>,
    u16,
);

fn corpus() -> Vec<Case> {
    let bomb = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let object_bomb = format!(
        "{{\"resourceType\":\"Patient\",\"extension\":{}1{}}}",
        "[{\"x\":".repeat(20_000),
        "}]".repeat(20_000)
    )
    .into_bytes();
    vec![
        ("malformed JSON", Method::POST, "Patient", "application/fhir+json", b"{\"resourceType\": \"Patient\",".to_vec(), 400),
        ("JSON that is not an object", Method::POST, "Patient", "application/fhir+json", b"[1,2,3]".to_vec(), 400),
        ("empty body", Method::POST, "Patient", "application/fhir+json", Vec::new(), 400),
        ("deeply nested array bomb", Method::POST, "Patient", "application/fhir+json", bomb, 400),
        ("deeply nested object bomb", Method::POST, "Patient", "application/fhir+json", object_bomb, 400),
        ("malformed XML", Method::POST, "Patient", "application/fhir+xml", b"<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"1\"></Patient>".to_vec(), 400),
        ("XML in the wrong namespace", Method::POST, "Patient", "application/fhir+xml", b"<Patient xmlns=\"urn:other\"/>".to_vec(), 400),
        ("XML entity expansion", Method::POST, "Patient", "application/fhir+xml", b"<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]><Patient xmlns=\"http://hl7.org/fhir\"><id value=\"&lol2;\"/></Patient>".to_vec(), 400),
        ("body type differs from URL", Method::POST, "Patient", "application/fhir+json", br#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#.to_vec(), 400),
        ("unknown resource type in body", Method::POST, "Patient", "application/fhir+json", br#"{"resourceType":"Patiant"}"#.to_vec(), 400),
        ("missing resourceType", Method::POST, "Patient", "application/fhir+json", br#"{"name":[{"family":"x"}]}"#.to_vec(), 400),
        ("unknown element", Method::POST, "Patient", "application/fhir+json", br#"{"resourceType":"Patient","favouriteColour":"blue"}"#.to_vec(), 400),
        ("wrong primitive type", Method::POST, "Patient", "application/fhir+json", br#"{"resourceType":"Patient","active":"yes"}"#.to_vec(), 400),
        ("invalid date", Method::POST, "Patient", "application/fhir+json", br#"{"resourceType":"Patient","birthDate":"1990-13-45"}"#.to_vec(), 400),
        ("array where one value is allowed", Method::POST, "Patient", "application/fhir+json", br#"{"resourceType":"Patient","gender":["male"]}"#.to_vec(), 400),
        ("single value where an array is required", Method::POST, "Patient", "application/fhir+json", br#"{"resourceType":"Patient","name":{"family":"x"}}"#.to_vec(), 400),
        ("invalid id in URL", Method::PUT, "Patient/bad$id", "application/fhir+json", br#"{"resourceType":"Patient","id":"bad$id"}"#.to_vec(), 400),
        ("id in body differs from URL", Method::PUT, "Patient/a", "application/fhir+json", br#"{"resourceType":"Patient","id":"b"}"#.to_vec(), 400),
        ("update without id", Method::PUT, "Patient/a", "application/fhir+json", br#"{"resourceType":"Patient"}"#.to_vec(), 400),
        ("unknown resource type in URL", Method::GET, "Patiant/1", "application/fhir+json", Vec::new(), 404),
        ("unknown path", Method::GET, "Patient/1/_history/1/extra", "application/fhir+json", Vec::new(), 404),
        ("method not allowed", Method::PATCH, "Patient/1", "application/json-patch+json", b"[]".to_vec(), 405),
        ("delete on the base", Method::DELETE, "", "application/fhir+json", Vec::new(), 405),
        ("unsupported content type", Method::POST, "Patient", "application/x-yaml", b"resourceType: Patient".to_vec(), 415),
    ]
}

#[tokio::test]
async fn every_bad_input_gets_a_clear_error_and_nothing_is_lost() {
    let server = TestServer::start().await;
    let keep = server
        .put(
            "Patient/keep",
            &json!({"resourceType": "Patient", "id": "keep"}),
        )
        .await;
    keep.expect(201);
    for (name, method, path, content_type, body, status) in corpus() {
        let reply = server.send_raw(method, path, content_type, body).await;
        assert_eq!(reply.status.as_u16(), status, "{name}: {}", reply.text);
        assert_eq!(
            reply.json["resourceType"], "OperationOutcome",
            "{name}: {}",
            reply.text
        );
        assert!(
            !reply.diagnostics().is_empty(),
            "{name}: the outcome says nothing"
        );
    }
    // Still up, and what was accepted is intact; nothing from the corpus was stored.
    server.get("Patient/keep").await.expect(200);
    let all = server.get("_history").await;
    assert_eq!(all.json["total"], 1);
}

#[tokio::test]
async fn validation_errors_locate_the_element() {
    let server = TestServer::start().await;
    let reply = server
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "x", "given": ["a", 7]}]}),
        )
        .await;
    reply.expect(400);
    let expression = reply.json["issue"][0]["expression"][0]
        .as_str()
        .unwrap_or_default();
    assert!(
        expression.starts_with("Patient.name[0].given"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let config = ServerConfig {
        max_body_bytes: 10_000,
        ..ServerConfig::default()
    };
    let server = TestServer::start_with(config, FhirConfig::default()).await;
    let big = json!({"resourceType": "Patient", "name": [{"family": "x".repeat(20_000)}]});
    let reply = server.post("Patient", &big).await;
    reply.expect(413);
    assert!(reply.diagnostics().contains("10000"));
    server
        .post("Patient", &json!({"resourceType": "Patient"}))
        .await
        .expect(201);
}
