//! The dashboard's history of a resource: each update keeps the version it replaces, in the same
//! transaction, at most `HISTORY_KEPT` of them; a delete leaves none behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use weft_api::{ApiConfig, Service};
use weft_model::keys;
use weft_store::{EmbeddedOptions, EmbeddedStore, Range, SharedStore, Store};

fn node(port: u64) -> Value {
    json!({
        "meshName": "apps",
        "virtualNodeName": "blue",
        "spec": {"listeners": [{"portMapping": {"port": port, "protocol": "http"}}]}
    })
}

/// The kept versions of node `blue`: (version, listener port).
async fn kept(store: &EmbeddedStore) -> Vec<(i64, u64)> {
    let prefix = format!("{}res/apps/vn/blue/", keys::HISTORY_PREFIX);
    let found = store.range(Range::prefix(prefix)).await.unwrap();
    found
        .kvs
        .iter()
        .map(|kv| {
            let record: Value = serde_json::from_slice(&kv.value).unwrap();
            (
                record["data"]["metadata"]["version"].as_i64().unwrap(),
                record["data"]["spec"]["listeners"][0]["portMapping"]["port"]
                    .as_u64()
                    .unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_operator_sees_the_last_ten_versions_of_a_node_and_none_after_it_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap();
    let shared: SharedStore = store.clone();
    let service = Service::new(shared, ApiConfig::default());
    service
        .call("CreateMesh", json!({"meshName": "apps"}))
        .await
        .unwrap();
    service.call("CreateVirtualNode", node(8000)).await.unwrap();
    assert!(kept(&store).await.is_empty());
    // Versions 2..=13, listening on 8001..=8012.
    for port in 8001..=8012 {
        service.call("UpdateVirtualNode", node(port)).await.unwrap();
    }
    let versions = kept(&store).await;
    assert_eq!(versions.len() as i64, keys::HISTORY_KEPT);
    // The ten versions before the current one (13), each with the spec it had.
    assert_eq!(versions.first(), Some(&(3, 8002)));
    assert_eq!(versions.last(), Some(&(12, 8011)));
    service
        .call(
            "DeleteVirtualNode",
            json!({"meshName": "apps", "virtualNodeName": "blue"}),
        )
        .await
        .unwrap();
    assert!(kept(&store).await.is_empty());
}
