use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestServer, entries, match_ids};

async fn seed(server: &TestServer) {
    let patients = [
        ("p1", "Smith", "1980-01-15", "male", "111"),
        ("p2", "Smithson", "1990-06-01", "female", "222"),
        ("p3", "Jones", "2001-12-31", "female", "333"),
    ];
    for (id, family, birth, gender, mrn) in patients {
        let body = json!({"resourceType": "Patient", "id": id, "name": [{"family": family, "given": ["Sam"]}], "birthDate": birth, "gender": gender,
            "identifier": [{"system": "urn:mrn", "value": mrn}], "managingOrganization": {"reference": "Organization/o1"}});
        server
            .put(&format!("Patient/{id}"), &body)
            .await
            .expect(201);
    }
    server
        .put(
            "Organization/o1",
            &json!({"resourceType": "Organization", "id": "o1", "name": "General Hospital"}),
        )
        .await
        .expect(201);
    let observations = [
        ("o-rr", "p1", "9279-1", 24.0, "/min", "2024-03-01T10:00:00Z"),
        (
            "o-sbp",
            "p1",
            "8480-6",
            95.0,
            "mm[Hg]",
            "2024-03-01T11:00:00Z",
        ),
        (
            "o-rr2",
            "p2",
            "9279-1",
            16.0,
            "/min",
            "2024-05-01T10:00:00Z",
        ),
    ];
    for (id, patient, code, value, unit, when) in observations {
        let body = json!({"resourceType": "Observation", "id": id, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}});
        server
            .put(&format!("Observation/{id}"), &body)
            .await
            .expect(201);
    }
}

async fn ids(server: &TestServer, query: &str) -> Vec<String> {
    let reply = server.get(query).await;
    reply.expect(200);
    assert_eq!(reply.json["type"], "searchset", "{query}");
    let mut ids = match_ids(&reply.json);
    ids.sort();
    ids
}

#[tokio::test]
async fn search_parameter_types_and_modifiers() {
    let server = TestServer::start().await;
    seed(&server).await;
    let cases: &[(&str, &[&str])] = &[
        ("Patient?family=smith", &["p1", "p2"]),
        ("Patient?family:exact=Smith", &["p1"]),
        ("Patient?family:contains=mit", &["p1", "p2"]),
        ("Patient?name=sam", &["p1", "p2", "p3"]),
        ("Patient?identifier=urn:mrn|222", &["p2"]),
        ("Patient?identifier=333", &["p3"]),
        ("Patient?gender=female", &["p2", "p3"]),
        ("Patient?gender:not=female", &["p1"]),
        ("Patient?birthdate=1980", &["p1"]),
        ("Patient?birthdate=ge1990-01-01", &["p2", "p3"]),
        ("Patient?birthdate=lt1990-06-01", &["p1"]),
        ("Patient?birthdate=1990-06", &["p2"]),
        ("Patient?family=smith&gender=female", &["p2"]),
        ("Patient?family=jones,smithson", &["p2", "p3"]),
        ("Patient?_id=p1,p3", &["p1", "p3"]),
        ("Patient?organization=Organization/o1", &["p1", "p2", "p3"]),
        ("Patient?email:missing=true", &["p1", "p2", "p3"]),
        ("Patient?birthdate:missing=false", &["p1", "p2", "p3"]),
        (
            "Observation?code=http://loinc.org|9279-1",
            &["o-rr", "o-rr2"],
        ),
        ("Observation?patient=p1", &["o-rr", "o-sbp"]),
        ("Observation?subject=Patient/p1&code=8480-6", &["o-sbp"]),
        ("Observation?value-quantity=gt20", &["o-rr", "o-sbp"]),
        ("Observation?value-quantity=le95||mm[Hg]", &["o-sbp"]),
        ("Observation?date=ge2024-04-01", &["o-rr2"]),
        ("Observation?date=2024-03-01", &["o-rr", "o-sbp"]),
        (
            "Observation?category=vital-signs&date=lt2024-03-01T10:30:00Z",
            &["o-rr"],
        ),
        ("Observation?subject:Patient.family=jones", &[]),
        ("Observation?subject:Patient.family=smithson", &["o-rr2"]),
        (
            "Observation?patient.identifier=urn:mrn|111",
            &["o-rr", "o-sbp"],
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(ids(&server, query).await, *expected, "{query}");
    }
}

#[tokio::test]
async fn paging_sorting_and_counting() {
    let server = TestServer::start().await;
    for i in 0..25 {
        let body = json!({"resourceType": "Patient", "id": format!("pg{i:02}"), "name": [{"family": format!("Page{i:02}")}], "birthDate": format!("19{:02}-01-01", 50 + i)});
        server
            .put(&format!("Patient/pg{i:02}"), &body)
            .await
            .expect(201);
    }
    let first = server
        .get("Patient?_count=10&_sort=-birthdate&_total=accurate")
        .await;
    first.expect(200);
    assert_eq!(first.json["total"], 25);
    assert_eq!(match_ids(&first.json)[0], "pg24");
    let mut all = match_ids(&first.json);
    let mut next = first.json["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned);
    while let Some(url) = next {
        let page = server.get(&url).await;
        page.expect(200);
        all.extend(match_ids(&page.json));
        next = page.json["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned);
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("pg{i:02}")).collect();
    assert_eq!(all, expected, "pages are disjoint and in _sort order");

    let count = server.get("Patient?_summary=count").await;
    assert_eq!(count.json["total"], 25);
    assert!(count.json.get("entry").is_none());

    let elements = server.get("Patient?_id=pg01&_elements=birthDate").await;
    let resource = &entries(&elements.json)[0]["resource"];
    assert_eq!(resource["birthDate"], "1951-01-01");
    assert!(resource.get("name").is_none());
    assert_eq!(resource["meta"]["tag"][0]["code"], "SUBSETTED");
}

/// Bundle.total is counted when asked for, given for free on the last page, omitted otherwise;
/// paging without it still ends exactly at the last match.
#[tokio::test]
async fn total_is_counted_only_when_asked_for_or_free() {
    let server = TestServer::start().await;
    for i in 0..7 {
        let body = json!({"resourceType": "Patient", "id": format!("tt{i}"), "name": [{"family": "Totalson"}]});
        server
            .put(&format!("Patient/tt{i}"), &body)
            .await
            .expect(201);
    }
    let full_page = server.get("Patient?family=totalson&_count=3").await;
    full_page.expect(200);
    assert!(full_page.json.get("total").is_none(), "{}", full_page.json);
    let accurate = server
        .get("Patient?family=totalson&_count=3&_total=accurate")
        .await;
    assert_eq!(accurate.json["total"], 7);
    let only_total = server.get("Patient?family=totalson&_count=0").await;
    only_total.expect(200);
    assert_eq!(only_total.json["total"], 7);
    assert!(only_total.json.get("entry").is_none());
    let fits = server.get("Patient?family=totalson").await;
    assert_eq!(fits.json["total"], 7);
    assert_eq!(match_ids(&fits.json).len(), 7);

    let mut seen = Vec::new();
    let mut next = Some("Patient?family=totalson&_count=3".to_owned());
    let mut pages = 0;
    while let Some(url) = next {
        let page = server.get(&url).await;
        page.expect(200);
        pages += 1;
        seen.extend(match_ids(&page.json));
        next = page.json["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned);
        // Only the last page knows the total without counting.
        assert_eq!(
            page.json.get("total").is_some(),
            next.is_none(),
            "{}",
            page.json
        );
    }
    assert_eq!(pages, 3);
    seen.sort();
    let expected: Vec<String> = (0..7).map(|i| format!("tt{i}")).collect();
    assert_eq!(seen, expected);

    // A page that holds exactly the rest needs no further (empty) page.
    let exact = server.get("Patient?family=totalson&_count=7").await;
    assert_eq!(exact.json["total"], 7);
    assert!(
        !exact.json["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );
}

#[tokio::test]
async fn include_and_revinclude() {
    let server = TestServer::start().await;
    seed(&server).await;
    let reply = server
        .get("Patient?_id=p1&_include=Patient:organization&_revinclude=Observation:subject")
        .await;
    reply.expect(200);
    let mut included: Vec<String> = entries(&reply.json)
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    included.sort();
    assert_eq!(
        included,
        ["Observation/o-rr", "Observation/o-sbp", "Organization/o1"]
    );
    assert_eq!(match_ids(&reply.json), ["p1"]);
}

#[tokio::test]
async fn unknown_parameters_are_reported_or_refused() {
    let server = TestServer::start().await;
    seed(&server).await;
    let lenient = server.get("Patient?family=smith&nonsense=1").await;
    lenient.expect(200);
    let outcome: Vec<&Value> = entries(&lenient.json)
        .iter()
        .filter(|e| e["search"]["mode"] == "outcome")
        .collect();
    assert_eq!(outcome.len(), 1);
    assert!(
        outcome[0]["resource"]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("nonsense")
    );
    assert_eq!(match_ids(&lenient.json).len(), 2);
    let strict = server
        .call(
            Method::GET,
            "Patient?family=smith&nonsense=1",
            None,
            &[("prefer", "handling=strict")],
        )
        .await;
    strict.expect(400);
    assert!(strict.diagnostics().contains("nonsense"));
    server.get("Patient?birthdate=notadate").await.expect(400);
    server.get("Patient?_count=many").await.expect(400);
}

#[tokio::test]
async fn post_search_and_system_search() {
    let server = TestServer::start().await;
    seed(&server).await;
    let url = format!("{}/Patient/_search", server.base);
    let reply = server
        .client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=jones")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    let bundle: Value = reply.json().await.unwrap();
    assert_eq!(match_ids(&bundle), ["p3"]);
    let system = server.get("?_id=o1").await;
    system.expect(200);
    assert_eq!(match_ids(&system.json), ["o1"]);
}

#[tokio::test]
async fn expressions_beyond_plain_paths_are_indexed_by_the_fhirpath_engine() {
    let server = TestServer::start().await;
    server
        .put(
            "Patient/alive",
            &json!({"resourceType": "Patient", "id": "alive", "deceasedBoolean": false}),
        )
        .await
        .expect(201);
    server
        .put(
            "Patient/gone",
            &json!({"resourceType": "Patient", "id": "gone", "deceasedDateTime": "2020-01-01"}),
        )
        .await
        .expect(201);
    server
        .put(
            "Patient/unknown",
            &json!({"resourceType": "Patient", "id": "unknown"}),
        )
        .await
        .expect(201);
    // `Patient.deceased.exists() and Patient.deceased != false`
    assert_eq!(ids(&server, "Patient?deceased=true").await, ["gone"]);
    let text = json!({"resourceType": "Observation", "id": "coded", "status": "final", "code": {"text": "x"}, "valueCodeableConcept": {"text": "Positive for influenza"}});
    server.put("Observation/coded", &text).await.expect(201);
    // `(Observation.value as CodeableConcept).text | (Observation.value as string)`
    assert_eq!(
        ids(&server, "Observation?value-string=positive").await,
        ["coded"]
    );
}
