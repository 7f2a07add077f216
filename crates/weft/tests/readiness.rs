//! `GET /readyz`: a replica is ready once its store answers and its control
//! plane has applied the store's latest revision; `/healthz` stays liveness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::WeftServer;

/// `GET /readyz`, unsigned as a load balancer's probe sends it: status and JSON body.
async fn readiness(server: &WeftServer) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("{}/readyz", server.addr))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_server_on_its_embedded_store_is_ready_after_start_and_after_each_write() {
    let server = WeftServer::start();
    let (status, body) = readiness(&server).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ready"], serde_json::json!(true));
    let before = body["storeRevision"].as_i64().unwrap();

    let client = server.client();
    client.create_mesh().mesh_name("apps").send().await.unwrap();
    client
        .create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .spec(common::dns_node_spec("red.apps.local", 8080))
        .send()
        .await
        .unwrap();
    let (status, body) = readiness(&server).await;
    assert_eq!(status, 200, "{body}");
    let after = body["storeRevision"].as_i64().unwrap();
    assert!(after >= before + 2, "{before} -> {after}");
    // The control plane has applied every write the store holds.
    assert!(body["appliedRevision"].as_i64().unwrap() >= after, "{body}");
    assert_eq!(server.health().await.0, 200);
}
