//! Quotas rest on per-mesh counts kept in the mesh's guard key: exact under
//! concurrent creates, kept by deletes, rebuilt once for data written before
//! counts existed, and intact across a reopen of the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use weft_api::{ApiConfig, Service};
use weft_store::{EmbeddedOptions, EmbeddedStore, Op, Range, SharedStore, Store, Txn};

fn config(nodes: usize) -> ApiConfig {
    let mut config = ApiConfig::default();
    config.quotas.virtual_nodes_per_mesh = nodes;
    config
}

fn node(name: &str) -> Value {
    json!({
        "meshName": "apps",
        "virtualNodeName": name,
        "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}
    })
}

fn code(result: Result<Value, weft_api::ApiError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.error_type(),
    }
}

async fn guard(store: &EmbeddedStore) -> Value {
    let kv = store.get("guard/apps").await.unwrap().unwrap();
    serde_json::from_slice(&kv.value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_never_pass_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap();
    let shared: SharedStore = store.clone();
    let service = Arc::new(Service::new(shared, config(20)));
    service
        .call("CreateMesh", json!({"meshName": "apps"}))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            code(
                service
                    .call("CreateVirtualNode", node(&format!("n{i}")))
                    .await,
            )
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(
        codes.iter().filter(|c| **c == "ok").count(),
        20,
        "{codes:?}"
    );
    assert!(codes
        .iter()
        .all(|c| *c == "ok" || *c == "LimitExceededException"));
    assert_eq!(
        store.count(Range::prefix("res/apps/vn/")).await.unwrap(),
        20
    );
    assert_eq!(guard(&store).await["vn"], 20);

    // A delete frees a slot; the mesh cannot go while it holds anything.
    let mesh_delete = service
        .call("DeleteMesh", json!({"meshName": "apps"}))
        .await;
    assert_eq!(code(mesh_delete), "ResourceInUseException");
    let full = service.call("CreateVirtualNode", node("again")).await;
    assert_eq!(code(full), "LimitExceededException");
    let first = store
        .range(Range::prefix("res/apps/vn/"))
        .await
        .unwrap()
        .kvs[0]
        .key
        .clone();
    let name = first.trim_start_matches("res/apps/vn/");
    service
        .call(
            "DeleteVirtualNode",
            json!({"meshName": "apps", "virtualNodeName": name}),
        )
        .await
        .unwrap();
    assert_eq!(guard(&store).await["vn"], 19);
    service
        .call("CreateVirtualNode", node("again"))
        .await
        .unwrap();
    assert_eq!(guard(&store).await["vn"], 20);
}

#[tokio::test]
async fn a_guard_without_counts_is_counted_once_then_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
            .await
            .unwrap();
        let shared: SharedStore = store.clone();
        let service = Service::new(shared, config(5));
        service
            .call("CreateMesh", json!({"meshName": "apps"}))
            .await
            .unwrap();
        for i in 0..3 {
            service
                .call("CreateVirtualNode", node(&format!("n{i}")))
                .await
                .unwrap();
        }
        // What a store written before counts existed holds: an empty guard.
        store
            .txn(Txn {
                compares: vec![],
                ops: vec![Op::Put("guard/apps".into(), Bytes::new())],
            })
            .await
            .unwrap();
    }
    // Reopened: the first write counts the mesh and stores the counts.
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap();
    let shared: SharedStore = store.clone();
    let service = Service::new(shared, config(5));
    service.call("CreateVirtualNode", node("n3")).await.unwrap();
    assert_eq!(guard(&store).await["vn"], 4);
    service.call("CreateVirtualNode", node("n4")).await.unwrap();
    let over = service.call("CreateVirtualNode", node("n5")).await;
    assert_eq!(code(over), "LimitExceededException");
    assert_eq!(guard(&store).await["vn"], 5);
    drop(service);
    drop(store);
    // The counts survive a reopen.
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap();
    assert_eq!(guard(&store).await["vn"], 5);
}
