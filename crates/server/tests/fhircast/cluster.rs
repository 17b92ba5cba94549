//! Point 76: several hub nodes on one event log serve one hub. Two (or three) nodes share an
//! `EmbeddedLog` in this process, each behind its own axum server on 127.0.0.1:0.

use std::sync::Arc;

use flare_fhircast::{FanOut, HubConfig, HubHandle};
use flare_log::{EmbeddedLog, EmbeddedLogConfig, EventLog};
use serde_json::{Value, json};

use crate::support::*;

struct Cluster {
    log: Arc<dyn EventLog>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(EmbeddedLogConfig::in_dir(dir.path().join("log")))
            .await
            .unwrap();
        Self {
            log: Arc::new(log),
            _dir: dir,
        }
    }

    async fn node(&self) -> Hub {
        let config = HubConfig {
            fan_out: FanOut::Log,
            ack_timeout_ms: 300,
            ..HubConfig::default()
        };
        Hub::serve(
            HubHandle::start_on_log(config, self.log.clone())
                .await
                .unwrap(),
        )
        .await
    }
}

/// The same endpoint path on another node.
fn on_node(endpoint: &str, node: &Hub) -> String {
    let path = endpoint.split("/fhircast/").nth(1).unwrap();
    format!("ws://{}/fhircast/{path}", node.address)
}

#[tokio::test]
async fn p76_an_event_published_on_node_a_reaches_a_subscriber_on_node_b_and_contexts_agree() {
    let cluster = Cluster::new().await;
    let (a, b) = (cluster.node().await, cluster.node().await);
    let mut on_b = b.subscriber("t", "Patient-open", "B-app").await;

    assert_eq!(
        a.publish(&patient_open("t", "e1", "p1")).await.status(),
        202
    );
    let delivered = on_b.next_json().await;
    assert_eq!(delivered["id"], "e1");
    assert_eq!(delivered["event"]["context"][0]["resource"]["id"], "p1");

    let context_a = a.get_json("/t").await;
    let context_b = b.get_json("/t").await;
    assert_eq!(context_a["context.type"], "Patient");
    assert!(context_a["context.versionId"].is_string());
    assert_eq!(context_a, context_b);
    assert_eq!(
        delivered["event"]["context.versionId"],
        context_a["context.versionId"]
    );
}

#[tokio::test]
async fn p76_events_from_both_nodes_arrive_once_each_in_one_order_everywhere() {
    let cluster = Cluster::new().await;
    let (a, b) = (cluster.node().await, cluster.node().await);
    let mut on_a = a.subscriber("t", "Patient-open,SyncError", "A-app").await;
    let mut on_b = b.subscriber("t", "Patient-open,SyncError", "B-app").await;
    for n in 0..10 {
        let node = if n % 2 == 0 { &a } else { &b };
        let event = patient_open("t", &format!("e{n}"), &format!("p{n}"));
        assert_eq!(node.publish(&event).await.status(), 202);
    }
    // A marker after the ten events: nothing else may come before it.
    b.sync_error_marker("t", "marker").await;
    for socket in [&mut on_a, &mut on_b] {
        for n in 0..10 {
            let event = socket.next_json().await;
            assert_eq!(event["id"], format!("e{n}"));
            socket.ack(&event, json!(200)).await;
        }
        socket.expect_next_id("marker").await;
    }
}

#[tokio::test]
async fn p76_a_subscription_made_on_one_node_connects_on_the_other_and_ends_from_either() {
    let cluster = Cluster::new().await;
    let (a, b) = (cluster.node().await, cluster.node().await);
    let endpoint = a.subscribe("t", "Patient-open", "roaming").await;
    let mut socket = Socket::connect(&on_node(&endpoint, &b)).await;
    let confirmation = socket.next_json().await;
    assert_eq!(confirmation["hub.mode"], "subscribe");
    assert_eq!(confirmation["hub.topic"], "t");

    assert_eq!(
        a.publish(&patient_open("t", "e1", "p1")).await.status(),
        202
    );
    socket.expect_next_id("e1").await;

    // Unsubscribed through node A: node B, which holds the socket, denies and closes it.
    a.unsubscribe("t", &endpoint).await;
    let denial = socket.next_json().await;
    assert_eq!(denial["hub.mode"], "denied");
    assert!(socket.next_is_close().await);
    let refused = tokio_tungstenite::connect_async(on_node(&endpoint, &b)).await;
    assert!(refused.is_err(), "the endpoint is dead on every node");
}

#[tokio::test]
async fn p76_concurrent_updates_with_one_version_on_two_nodes_one_wins_everywhere() {
    let cluster = Cluster::new().await;
    let (a, b) = (cluster.node().await, cluster.node().await);
    assert_eq!(a.publish(&report_open("t", "o1", "r1")).await.status(), 202);
    let version = a.get_json("/t").await["context.versionId"]
        .as_str()
        .unwrap()
        .to_string();
    let from_a = report_update(
        "t",
        "u-a",
        "r1",
        &version,
        json!([observation_put("obs-a", "preliminary")]),
    );
    let from_b = report_update(
        "t",
        "u-b",
        "r1",
        &version,
        json!([observation_put("obs-b", "preliminary")]),
    );
    let (answer_a, answer_b) = tokio::join!(a.publish(&from_a), b.publish(&from_b));
    let mut statuses = [answer_a.status().as_u16(), answer_b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [202, 409], "one update wins, the other is stale");

    let context_a = a.get_json("/t").await;
    assert_eq!(context_a, b.get_json("/t").await);
    let content = content_of(&context_a);
    let entries = content["resource"]["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "only the winner's change: {content}");
    assert_ne!(context_a["context.versionId"], version.as_str());
}

#[tokio::test]
async fn p76_a_sync_error_decided_on_one_node_reaches_sync_error_subscribers_on_the_other() {
    let cluster = Cluster::new().await;
    let (a, b) = (cluster.node().await, cluster.node().await);
    let mut refusing = b.subscriber("t", "Patient-open", "Refuser").await;
    let mut watcher = a.subscriber("t", "SyncError", "Watcher").await;
    assert_eq!(
        a.publish(&patient_open("t", "e1", "p1")).await.status(),
        202
    );
    let event = refusing.next_json().await;
    refusing.ack(&event, json!(409)).await;
    let sync_error = watcher.next_json().await;
    let codes = sync_error_codes(&sync_error);
    assert!(codes.contains(&"e1".to_string()), "{codes:?}");
    assert!(codes.contains(&"Refuser".to_string()), "{codes:?}");
}

#[tokio::test]
async fn p76_an_abrupt_close_on_one_node_ends_the_subscription_on_all() {
    let cluster = Cluster::new().await;
    let (a, b) = (cluster.node().await, cluster.node().await);
    let endpoint = b.subscribe("t", "Patient-open", "Dropper").await;
    let socket = Socket::connect(&endpoint).await;
    let mut watcher = a.subscriber("t", "SyncError", "Watcher").await;
    socket.drop_tcp();
    let sync_error = watcher.next_json().await;
    assert!(sync_error_codes(&sync_error).contains(&"Dropper".to_string()));
    // The end reached node A too: unsubscribing there finds nothing.
    let response = a
        .form(&format!(
            "hub.channel.type=websocket&hub.mode=unsubscribe&hub.topic=t&hub.channel.endpoint={endpoint}"
        ))
        .await;
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn p76_a_node_started_later_reads_the_history_of_the_hub() {
    let cluster = Cluster::new().await;
    let a = cluster.node().await;
    assert_eq!(
        a.publish(&patient_open("t", "e1", "p1")).await.status(),
        202
    );
    assert_eq!(a.publish(&report_open("t", "e2", "r1")).await.status(), 202);
    let endpoint = a.subscribe("t", "Patient-open", "early").await;

    let late = cluster.node().await;
    let context: Value = late.get_json("/t").await;
    assert_eq!(context, a.get_json("/t").await);
    assert_eq!(context["context.type"], "DiagnosticReport");
    // The subscription accepted by A before C started connects on C, with the replay.
    let mut socket = Socket::connect(&on_node(&endpoint, &late)).await;
    assert_eq!(socket.next_json().await["hub.mode"], "subscribe");
    socket.expect_next_id("e1").await;
}
