//! Two Cloud Map services on one store, as two `weft server` replicas on one
//! etcd are: they share no lock, so only the store's compares keep the
//! quotas. The store holds the racing transactions until all have read, so
//! the race is certain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use weft_registry::{RegistryConfig, RegistryService};
use weft_store::gated::GatedStore;
use weft_store::{EmbeddedOptions, EmbeddedStore, SharedStore};

/// Two registries (replicas) over one gated embedded store.
async fn two_replicas(
    config: RegistryConfig,
) -> (
    tempfile::TempDir,
    std::sync::Arc<GatedStore>,
    RegistryService,
    RegistryService,
) {
    let dir = tempfile::tempdir().unwrap();
    let embedded: SharedStore = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap();
    let gated = GatedStore::new(embedded);
    let store: SharedStore = gated.clone();
    let a = RegistryService::new(store.clone(), config.clone());
    let b = RegistryService::new(store, config);
    (dir, gated, a, b)
}

#[tokio::test]
async fn the_last_namespace_under_the_quota_goes_to_one_of_two_replicas() {
    let config = RegistryConfig {
        max_namespaces: 1,
        ..RegistryConfig::default()
    };
    let (_dir, gated, a, b) = two_replicas(config).await;
    gated.hold_next(2);
    let (x, y) = tokio::join!(
        a.call("CreateHttpNamespace", json!({"Name": "east"})),
        b.call("CreateHttpNamespace", json!({"Name": "west"}))
    );
    assert_eq!([x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(), 1);
    let lost = x.err().or(y.err()).unwrap();
    assert!(lost.to_string().contains("namespaces"), "{lost}");
    let listed = b.call("ListNamespaces", json!({})).await.unwrap().unwrap();
    assert_eq!(listed["Namespaces"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_last_instance_under_a_service_s_quota_goes_to_one_of_two_replicas() {
    let config = RegistryConfig {
        max_instances_per_service: 1,
        ..RegistryConfig::default()
    };
    let (_dir, gated, a, b) = two_replicas(config).await;
    a.call("CreateHttpNamespace", json!({"Name": "apps"}))
        .await
        .unwrap();
    let listed = a.call("ListNamespaces", json!({})).await.unwrap().unwrap();
    let ns = listed["Namespaces"][0]["Id"].as_str().unwrap().to_string();
    let created = a
        .call("CreateService", json!({"Name": "red", "NamespaceId": ns}))
        .await
        .unwrap()
        .unwrap();
    let service = created["Service"]["Id"].as_str().unwrap().to_string();
    gated.hold_next(2);
    let (x, y) = tokio::join!(
        a.call(
            "RegisterInstance",
            json!({"ServiceId": service, "InstanceId": "i-1", "Attributes": {"AWS_INSTANCE_IPV4": "10.0.0.1"}}),
        ),
        b.call(
            "RegisterInstance",
            json!({"ServiceId": service, "InstanceId": "i-2", "Attributes": {"AWS_INSTANCE_IPV4": "10.0.0.2"}}),
        )
    );
    assert_eq!(
        [x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{x:?} {y:?}"
    );
    let lost = x.err().or(y.err()).unwrap();
    assert!(lost.to_string().contains("instances"), "{lost}");
    let instances = b
        .call("ListInstances", json!({"ServiceId": service}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(instances["Instances"].as_array().unwrap().len(), 1);
}
