//! Idempotency records expire and are swept, on a real embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use weft_api::{ApiConfig, Service};
use weft_store::{EmbeddedOptions, EmbeddedStore, Range, SharedStore, Store};

/// The API's service on an embedded store in `dir`, and the store.
async fn service_on_a_store(dir: &std::path::Path) -> (std::sync::Arc<EmbeddedStore>, Service) {
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir))
        .await
        .unwrap();
    let shared: SharedStore = store.clone();
    (store, Service::new(shared, ApiConfig::default()))
}

#[tokio::test]
async fn client_tokens_are_forgotten_after_their_time_to_live() {
    let dir = tempfile::tempdir().unwrap();
    let (store, service) = service_on_a_store(dir.path()).await;
    let input = json!({"meshName": "apps", "clientToken": "t1"});
    let first = service.call("CreateMesh", input.clone()).await.unwrap();
    // Within the TTL the token replays the first answer.
    assert_eq!(
        service.call("CreateMesh", input.clone()).await.unwrap(),
        first
    );
    let tokens = || async { store.count(Range::prefix("token/")).await.unwrap() };
    assert_eq!(tokens().await, 1);
    // A sweep "now" keeps it; a sweep two hours later removes it.
    assert_eq!(
        service
            .sweep_expired_tokens(weft_api::service::now())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        service
            .sweep_expired_tokens(weft_api::service::now() + 7200.0)
            .await
            .unwrap(),
        1
    );
    assert_eq!(tokens().await, 0);
    // Without its token record, the same request is a new create: the mesh exists.
    let again = service.call("CreateMesh", input).await.unwrap_err();
    assert_eq!(again.error_type(), "ConflictException");
}

/// A token record keeps the request's SHA-256, not the request: same token
/// and same request replay, same token and another request conflict.
#[tokio::test]
async fn a_token_record_keeps_a_digest_of_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let (store, service) = service_on_a_store(dir.path()).await;
    let marker = "a-distinctive-egress-filter-marker";
    service
        .call("CreateMesh", json!({"meshName": "apps"}))
        .await
        .unwrap();
    let input = json!({
        "meshName": "apps",
        "virtualNodeName": "red",
        "clientToken": "t-red",
        "spec": {"backendDefaults": {"clientPolicy": {}}, "serviceDiscovery": {"dns": {"hostname": marker}}},
    });
    let first = service
        .call("CreateVirtualNode", input.clone())
        .await
        .unwrap();

    let records = store.range(Range::prefix("token/")).await.unwrap().kvs;
    assert_eq!(records.len(), 1);
    let record: serde_json::Value = serde_json::from_slice(&records[0].value).unwrap();
    let request = record["request"].as_str().unwrap();
    let digest = request.strip_prefix("sha256:").unwrap();
    assert_eq!(digest.len(), 64, "{request}");
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{request}");
    // Neither the request nor the answer's spec is kept: a retry carries
    // the spec, and the record stays a few hundred bytes whatever its size.
    let text = String::from_utf8(records[0].value.to_vec()).unwrap();
    assert_eq!(text.matches(marker).count(), 0, "{text}");
    assert!(text.len() < 512, "{} bytes: {text}", text.len());

    assert_eq!(
        service
            .call("CreateVirtualNode", input.clone())
            .await
            .unwrap(),
        first
    );
    let mut other = input;
    other["spec"]["serviceDiscovery"]["dns"]["hostname"] = json!("elsewhere.local");
    let err = service.call("CreateVirtualNode", other).await.unwrap_err();
    assert_eq!(err.error_type(), "ConflictException");
}

#[tokio::test]
async fn an_update_mesh_without_a_spec_replays_the_spec_the_mesh_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, service) = service_on_a_store(dir.path()).await;
    let spec = json!({"egressFilter": {"type": "ALLOW_ALL"}});
    service
        .call("CreateMesh", json!({"meshName": "apps", "spec": spec}))
        .await
        .unwrap();
    let update = json!({"meshName": "apps", "clientToken": "u1"});
    let first = service.call("UpdateMesh", update.clone()).await.unwrap();
    assert_eq!(first["mesh"]["spec"], spec);
    // The mesh changes again; the token still answers what it answered.
    service
        .call("UpdateMesh", json!({"meshName": "apps", "spec": {}}))
        .await
        .unwrap();
    assert_eq!(service.call("UpdateMesh", update).await.unwrap(), first);
}
