use reqwest::Method;
use serde_json::json;

use crate::common::TestServer;

fn patient(family: &str) -> serde_json::Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Ada"]}], "gender": "female", "birthDate": "1990-04-01"})
}

#[tokio::test]
async fn create_read_update_vread_delete() {
    let server = TestServer::start().await;
    let created = server.post("Patient", &patient("Lovelace")).await;
    created.expect(201);
    let id = created.json["id"].as_str().unwrap().to_owned();
    assert_eq!(created.json["meta"]["versionId"], "1");
    assert!(
        created.json["meta"]["lastUpdated"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    assert!(created.header("last-modified").unwrap().ends_with("GMT"));
    assert_eq!(
        created.header("location").unwrap(),
        format!("{}/Patient/{id}/_history/1", server.base)
    );
    assert!(
        created
            .header("content-type")
            .unwrap()
            .starts_with("application/fhir+json")
    );

    let read = server.get(&format!("Patient/{id}")).await;
    read.expect(200);
    assert_eq!(read.json, created.json);

    let mut changed = read.json.clone();
    changed["gender"] = json!("other");
    let updated = server.put(&format!("Patient/{id}"), &changed).await;
    updated.expect(200);
    assert_eq!(updated.json["meta"]["versionId"], "2");
    assert_eq!(updated.json["gender"], "other");

    let v1 = server.get(&format!("Patient/{id}/_history/1")).await;
    v1.expect(200);
    assert_eq!(v1.json["gender"], "female");
    server
        .get(&format!("Patient/{id}/_history/3"))
        .await
        .expect(404);
    server
        .get(&format!("Patient/{id}/_history/x"))
        .await
        .expect(404);

    let deleted = server.delete(&format!("Patient/{id}")).await;
    deleted.expect(204);
    assert_eq!(deleted.header("etag"), Some("W/\"3\""));
    server.get(&format!("Patient/{id}")).await.expect(410);
    server
        .get(&format!("Patient/{id}/_history/3"))
        .await
        .expect(410);
    server
        .get(&format!("Patient/{id}/_history/2"))
        .await
        .expect(200);
    // Deleting again changes nothing.
    server.delete(&format!("Patient/{id}")).await.expect(204);
    let history = server.get(&format!("Patient/{id}/_history")).await;
    history.expect(200);
    assert_eq!(history.json["total"], 3);
}

#[tokio::test]
async fn update_as_create_with_client_id_and_resurrection() {
    let server = TestServer::start().await;
    let mut body = patient("Hopper");
    body["id"] = json!("grace-1");
    let created = server.put("Patient/grace-1", &body).await;
    created.expect(201);
    assert_eq!(created.json["id"], "grace-1");
    server.delete("Patient/grace-1").await.expect(204);
    let back = server.put("Patient/grace-1", &body).await;
    back.expect(201);
    assert_eq!(back.json["meta"]["versionId"], "3");
}

#[tokio::test]
async fn an_update_that_changes_nothing_makes_no_version() {
    let server = TestServer::start().await;
    let mut body = patient("Noop");
    body["id"] = json!("same");
    server.put("Patient/same", &body).await.expect(201);
    let again = server.put("Patient/same", &body).await;
    again.expect(200);
    assert_eq!(again.json["meta"]["versionId"], "1");
    let history = server.get("Patient/same/_history").await;
    assert_eq!(history.json["total"], 1);
}

#[tokio::test]
async fn version_aware_updates_use_if_match() {
    let server = TestServer::start().await;
    let created = server.post("Patient", &patient("Turing")).await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    let body = created.json.clone();
    let path = format!("Patient/{id}");
    let mut changed = body.clone();
    changed["gender"] = json!("male");
    let stale = server
        .call(
            Method::PUT,
            &path,
            Some(&changed),
            &[("if-match", "W/\"7\"")],
        )
        .await;
    stale.expect(412);
    assert!(
        stale.diagnostics().contains("version 7"),
        "{}",
        stale.diagnostics()
    );
    server
        .call(
            Method::PUT,
            &path,
            Some(&changed),
            &[("if-match", "W/\"1\"")],
        )
        .await
        .expect(200);
    server
        .call(Method::DELETE, &path, None, &[("if-match", "W/\"1\"")])
        .await
        .expect(412);
    server
        .call(
            Method::PUT,
            &path,
            Some(&changed),
            &[("if-match", "banana")],
        )
        .await
        .expect(400);
}

#[tokio::test]
async fn conditional_create_update_and_delete() {
    let server = TestServer::start().await;
    let mut body = patient("Curie");
    body["identifier"] = json!([{"system": "urn:mrn", "value": "42"}]);
    let first = server
        .call(
            Method::POST,
            "Patient",
            Some(&body),
            &[("if-none-exist", "identifier=urn:mrn|42")],
        )
        .await;
    first.expect(201);
    let second = server
        .call(
            Method::POST,
            "Patient",
            Some(&body),
            &[("if-none-exist", "identifier=urn:mrn|42")],
        )
        .await;
    second.expect(200);
    assert_eq!(second.json["id"], first.json["id"]);

    // Conditional update of the one match.
    let mut changed = body.clone();
    changed["gender"] = json!("other");
    let updated = server.put("Patient?identifier=urn:mrn|42", &changed).await;
    updated.expect(200);
    assert_eq!(updated.json["id"], first.json["id"]);
    assert_eq!(updated.json["meta"]["versionId"], "2");
    // No match: creates.
    let mut other = body.clone();
    other["identifier"] = json!([{"system": "urn:mrn", "value": "43"}]);
    server
        .put("Patient?identifier=urn:mrn|43", &other)
        .await
        .expect(201);

    // Several matches: 412 for creates, updates and deletes.
    let mut twin = body.clone();
    twin["identifier"] = json!([{"system": "urn:mrn", "value": "42"}]);
    server.post("Patient", &twin).await.expect(201);
    server
        .call(
            Method::POST,
            "Patient",
            Some(&body),
            &[("if-none-exist", "identifier=urn:mrn|42")],
        )
        .await
        .expect(412);
    server
        .put("Patient?identifier=urn:mrn|42", &changed)
        .await
        .expect(412);
    server
        .delete("Patient?identifier=urn:mrn|42")
        .await
        .expect(412);

    // One match: deleted.
    server
        .delete("Patient?identifier=urn:mrn|43")
        .await
        .expect(204);
    let search = server.get("Patient?identifier=urn:mrn|43").await;
    assert_eq!(search.json["total"], 0);
    // Unknown criteria are refused, never matched-all.
    server.delete("Patient?bogus=1").await.expect(400);
}

#[tokio::test]
async fn prefer_return_chooses_the_body() {
    let server = TestServer::start().await;
    let minimal = server
        .call(
            Method::POST,
            "Patient",
            Some(&patient("Min")),
            &[("prefer", "return=minimal")],
        )
        .await;
    minimal.expect(201);
    assert!(minimal.text.is_empty());
    assert!(minimal.header("location").is_some());
    let outcome = server
        .call(
            Method::POST,
            "Patient",
            Some(&patient("Oo")),
            &[("prefer", "return=OperationOutcome")],
        )
        .await;
    outcome.expect(201);
    assert_eq!(outcome.json["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn correlation_ids_are_echoed_or_generated() {
    let server = TestServer::start().await;
    let with = server
        .call(
            Method::POST,
            "Patient",
            Some(&patient("C")),
            &[("x-correlation-id", "abc-123")],
        )
        .await;
    assert_eq!(with.header("x-correlation-id"), Some("abc-123"));
    let from_request_id = server
        .call(Method::GET, "metadata", None, &[("x-request-id", "req-9")])
        .await;
    assert_eq!(from_request_id.header("x-correlation-id"), Some("req-9"));
    let generated = server.get("metadata").await;
    assert_eq!(generated.header("x-correlation-id").unwrap().len(), 36);
}

#[tokio::test]
async fn read_with_if_none_match_is_not_modified() {
    let server = TestServer::start().await;
    let created = server.post("Patient", &patient("Cache")).await;
    let id = created.json["id"].as_str().unwrap();
    let reply = server
        .call(
            Method::GET,
            &format!("Patient/{id}"),
            None,
            &[("if-none-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(reply.status.as_u16(), 304);
}

#[tokio::test]
async fn capability_statement_states_what_is_supported() {
    let server = TestServer::start().await;
    let cs = server.get("metadata").await;
    cs.expect(200);
    assert_eq!(cs.json["resourceType"], "CapabilityStatement");
    assert_eq!(cs.json["fhirVersion"], "4.0.1");
    let resources = cs.json["rest"][0]["resource"].as_array().unwrap();
    assert!(resources.len() > 140, "every R4 resource type is listed");
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for expected in ["family", "identifier", "birthdate", "name", "organization"] {
        assert!(
            params.contains(&expected),
            "Patient search parameter {expected} missing: {params:?}"
        );
    }
    let formats = cs.json["format"].as_array().unwrap();
    assert!(formats.iter().any(|f| f == "application/fhir+xml"));
}
