//! The commit path as seen from the log: one event per version, in the same order, with the
//! envelope and headers DESIGN.md describes.

use flare_events::ChangeEvent;
use reqwest::Method;
use serde_json::json;

use crate::common::TestServer;

#[tokio::test]
async fn every_version_is_exactly_one_event() {
    let server = TestServer::start().await;
    let created = server
        .call(
            Method::POST,
            "Patient",
            Some(&json!({"resourceType": "Patient", "gender": "male"})),
            &[
                ("x-correlation-id", "corr-1"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
            ],
        )
        .await;
    let id = created.json["id"].as_str().unwrap().to_owned();
    let mut body = created.json.clone();
    body["gender"] = json!("female");
    server
        .put(&format!("Patient/{id}"), &body)
        .await
        .expect(200);
    server
        .put(&format!("Patient/{id}"), &body)
        .await
        .expect(200); // no-op: no event
    server.delete(&format!("Patient/{id}")).await.expect(204);
    server.delete(&format!("Patient/{id}")).await.expect(204); // already deleted: no event
    server
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "active": "nope"}),
        )
        .await
        .expect(400); // refused: no event

    let records = server.events("fhir.Patient", 3).await;
    assert_eq!(
        records.len(),
        3,
        "one event per version, none for no-ops or failures"
    );
    let events: Vec<ChangeEvent> = records
        .iter()
        .map(|r| ChangeEvent::from_json_bytes(&r.payload).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["PatientCreated", "PatientUpdated", "PatientDeleted"]
    );
    assert_eq!(events[0].metadata.correlation_id, "corr-1");
    assert_eq!(events[0].metadata.resource_id, id);
    assert_eq!(events[1].metadata.version_id, "2");
    assert_eq!(events[1].data.as_ref().unwrap()["gender"], "female");
    assert!(events[2].data.is_none(), "deletes carry no data");
    let first = &records[0];
    assert_eq!(
        first.key.as_deref(),
        Some(format!("Patient/{id}").as_bytes())
    );
    assert_eq!(
        first.header_str("content-type"),
        Some("application/fhir+json")
    );
    assert_eq!(
        first.header_str("eventId"),
        Some(events[0].metadata.event_id.as_str())
    );
    assert_eq!(
        first.header_str("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    let partitions: std::collections::HashSet<u32> = records.iter().map(|r| r.partition).collect();
    assert_eq!(
        partitions.len(),
        1,
        "one patient's events stay in one partition"
    );
}

#[tokio::test]
async fn events_are_routed_and_keyed_by_patient() {
    let server = TestServer::start().await;
    server
        .put(
            "Patient/pat",
            &json!({"resourceType": "Patient", "id": "pat"}),
        )
        .await
        .expect(201);
    let vitals = json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "9279-1"}]}, "subject": {"reference": "Patient/pat"}, "valueQuantity": {"value": 20, "unit": "/min"}});
    let created = server.post("Observation", &vitals).await;
    created.expect(201);
    server
        .delete(&format!(
            "Observation/{}",
            created.json["id"].as_str().unwrap()
        ))
        .await
        .expect(204);
    let records = server.events("fhir.observation.vitals", 2).await;
    assert_eq!(
        records.len(),
        2,
        "the delete travels on the topic of what it retracts"
    );
    assert!(
        records
            .iter()
            .all(|r| r.key.as_deref() == Some(b"Patient/pat".as_slice()))
    );
    let patient_events = server.events("fhir.Patient", 1).await;
    assert_eq!(patient_events[0].key, records[0].key);
    assert_eq!(
        patient_events[0].partition, records[0].partition,
        "same key, same partition number"
    );
}

#[tokio::test]
async fn a_transaction_emits_one_event_per_entry_in_one_go() {
    let server = TestServer::start().await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:a0000000-0000-0000-0000-000000000001", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "tx2"}, "request": {"method": "PUT", "url": "Patient/tx2"}},
    ]});
    server
        .call(
            Method::POST,
            "",
            Some(&bundle),
            &[("x-request-id", "bundle-7")],
        )
        .await
        .expect(200);
    let records = server.events("fhir.Patient", 2).await;
    assert_eq!(records.len(), 2);
    for record in &records {
        let event = ChangeEvent::from_json_bytes(&record.payload).unwrap();
        assert_eq!(event.metadata.correlation_id, "bundle-7");
        assert_eq!(event.event_type, "PatientCreated");
    }
}
