use reqwest::Method;
use serde_json::json;

use crate::common::TestServer;

const PATIENT_XML: &str = r#"<Patient xmlns="http://hl7.org/fhir"><id value="x1"/><active value="true"/><name><family value="Xml"/><given value="Ex"/></name><birthDate value="1970-01-01"/></Patient>"#;

#[tokio::test]
async fn xml_in_and_out() {
    let server = TestServer::start().await;
    let created = server
        .send_raw(
            Method::PUT,
            "Patient/x1",
            "application/fhir+xml",
            PATIENT_XML.as_bytes().to_vec(),
        )
        .await;
    created.expect(201);
    assert_eq!(created.json["name"][0]["family"], "Xml");
    assert_eq!(created.json["active"], true);
    let xml = server.get("Patient/x1?_format=xml").await;
    xml.expect(200);
    assert!(
        xml.header("content-type")
            .unwrap()
            .starts_with("application/fhir+xml")
    );
    assert!(xml.text.contains("<family value=\"Xml\"/>"), "{}", xml.text);
    let by_accept = server
        .call(
            Method::GET,
            "Patient/x1",
            None,
            &[("accept", "application/fhir+xml")],
        )
        .await;
    assert!(by_accept.text.starts_with('<'));
    let json_again = server
        .call(
            Method::GET,
            "Patient/x1",
            None,
            &[("accept", "application/fhir+json")],
        )
        .await;
    assert_eq!(json_again.json["birthDate"], "1970-01-01");
    let pretty = server.get("Patient/x1?_pretty=true").await;
    assert!(pretty.text.contains("\n  "));
    // Errors follow the requested format too.
    let missing = server.get("Patient/nope?_format=xml").await;
    assert_eq!(missing.status.as_u16(), 404);
    assert!(
        missing.text.contains("<OperationOutcome"),
        "{}",
        missing.text
    );
    // Bundles render as XML.
    let search = server.get("Patient?_format=application/fhir%2Bxml").await;
    assert!(search.text.contains("<Bundle"), "{}", search.text);
}

#[tokio::test]
async fn unsupported_formats_are_refused() {
    let server = TestServer::start().await;
    server
        .send_raw(Method::POST, "Patient", "text/plain", b"hello".to_vec())
        .await
        .expect(415);
    server.get("metadata?_format=yaml").await.expect(406);
    let body = json!({"resourceType": "Patient"});
    server
        .call(Method::POST, "Patient", Some(&body), &[])
        .await
        .expect(201);
}
