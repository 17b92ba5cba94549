//! The dashboard's static files are served from the binary.

use crate::common::TestServer;

#[tokio::test]
async fn the_dashboard_page_and_its_assets_are_served() {
    let server = TestServer::start().await;
    let root = server.base.trim_end_matches("/fhir").to_string();
    let client = reqwest::Client::new();
    let page = client.get(format!("{root}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let content_type = page.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = page.text().await.unwrap();
    let scripts: Vec<&str> = html
        .split('"')
        .filter(|s| s.starts_with("/assets/") && s.ends_with(".js"))
        .collect();
    assert!(!scripts.is_empty(), "the page loads no script: {html}");
    for script in scripts {
        let reply = client.get(format!("{root}{script}")).send().await.unwrap();
        assert_eq!(reply.status(), 200, "{script}");
        assert!(
            reply.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
    }
    let missing = client
        .get(format!("{root}/assets/missing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
