use serde_json::json;

use crate::common::{TestServer, entries};

#[tokio::test]
async fn history_at_every_level_with_since_and_paging() {
    let server = TestServer::start().await;
    for i in 0..5 {
        let mut p = json!({"resourceType": "Patient", "id": format!("h{i}"), "gender": "male"});
        server.put(&format!("Patient/h{i}"), &p).await.expect(201);
        p["gender"] = json!("female");
        server.put(&format!("Patient/h{i}"), &p).await.expect(200);
    }
    server
        .post(
            "Organization",
            &json!({"resourceType": "Organization", "name": "Acme"}),
        )
        .await
        .expect(201);

    let instance = server.get("Patient/h0/_history").await;
    instance.expect(200);
    assert_eq!(instance.json["type"], "history");
    let versions: Vec<&str> = entries(&instance.json)
        .iter()
        .map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["2", "1"], "newest first");
    assert_eq!(entries(&instance.json)[0]["request"]["method"], "PUT");

    let by_type = server.get("Patient/_history").await;
    assert_eq!(by_type.json["total"], 10);
    let system = server.get("_history").await;
    assert_eq!(system.json["total"], 11);

    // Paging: _count and next links walk every version exactly once.
    let mut seen = Vec::new();
    let mut next = Some(format!("{}/Patient/_history?_count=3", server.base));
    while let Some(url) = next {
        let page = server.get(&url).await;
        page.expect(200);
        for entry in entries(&page.json) {
            seen.push(format!(
                "{}@{}",
                entry["resource"]["id"], entry["resource"]["meta"]["versionId"]
            ));
        }
        next = page.json["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned);
        // Writes after the first page do not shift later pages.
        server
            .post("Patient", &json!({"resourceType": "Patient"}))
            .await
            .expect(201);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 10);

    // _since: only what changed afterwards.
    let since = instance.json["entry"][0]["resource"]["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_owned();
    let recent = server
        .get(&format!(
            "Patient/_history?_since={}",
            since.replace('+', "%2B")
        ))
        .await;
    recent.expect(200);
    assert!(recent.json["total"].as_u64().unwrap() < 16);
    server
        .get("Patient/_history?_since=yesterday")
        .await
        .expect(400);
    server.get("Patient/nope/_history").await.expect(404);
}
