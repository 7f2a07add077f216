//! Two API services on one store, as two `weft server` replicas on one etcd
//! are: they share no lock and no cache, so only the store's compares keep
//! their writes apart. Each race below is run with many writers at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use weft_api::{ApiConfig, Service};
use weft_store::gated::GatedStore;
use weft_store::{EmbeddedOptions, EmbeddedStore, SharedStore};

/// Two services (replicas) over one embedded store in a fresh folder.
async fn two_replicas(config: ApiConfig) -> (tempfile::TempDir, Service, Service) {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap();
    let a = Service::new(store.clone(), config.clone());
    let b = Service::new(store, config);
    (dir, a, b)
}

fn node(mesh: &str, name: &str) -> serde_json::Value {
    json!({
        "meshName": mesh,
        "virtualNodeName": name,
        "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]},
    })
}

#[tokio::test]
async fn two_replicas_creating_the_same_names_at_once_let_exactly_one_create_win_each() {
    let (_dir, a, b) = two_replicas(ApiConfig::default()).await;
    a.call("CreateMesh", json!({"meshName": "apps"}))
        .await
        .unwrap();
    let mut writers = Vec::new();
    for i in 0..20 {
        for replica in [a.clone(), b.clone()] {
            let input = node("apps", &format!("node-{i}"));
            writers.push(tokio::spawn(async move {
                replica.call("CreateVirtualNode", input).await
            }));
        }
    }
    let (mut won, mut conflicts) = (0, 0);
    for w in writers {
        match w.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => {
                assert_eq!(e.error_type(), "ConflictException", "{e}");
                conflicts += 1;
            }
        }
    }
    assert_eq!((won, conflicts), (20, 20));
}

#[tokio::test]
async fn a_mesh_quota_holds_when_two_replicas_fill_the_mesh_at_once() {
    let mut config = ApiConfig::default();
    config.quotas.virtual_nodes_per_mesh = 7;
    let (_dir, a, b) = two_replicas(config).await;
    a.call("CreateMesh", json!({"meshName": "apps"}))
        .await
        .unwrap();
    let mut writers = Vec::new();
    for i in 0..30 {
        let replica = if i % 2 == 0 { a.clone() } else { b.clone() };
        let input = node("apps", &format!("node-{i}"));
        writers.push(tokio::spawn(async move {
            replica.call("CreateVirtualNode", input).await
        }));
    }
    let mut won = 0;
    for w in writers {
        match w.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.error_type(), "LimitExceededException", "{e}"),
        }
    }
    assert_eq!(won, 7);
    for replica in [&a, &b] {
        let listed = replica
            .call("ListVirtualNodes", json!({"meshName": "apps"}))
            .await
            .unwrap();
        assert_eq!(listed["virtualNodes"].as_array().unwrap().len(), 7);
    }
}

/// Writes in different meshes take no common turn and commit under
/// different mesh guards: only the compare on the token's record keeps one
/// `clientToken` from answering several different requests.
#[tokio::test]
async fn one_client_token_sent_to_two_replicas_with_different_requests_wins_once() {
    let dir = tempfile::tempdir().unwrap();
    let embedded: SharedStore = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap();
    let gated = GatedStore::new(embedded);
    let store: SharedStore = gated.clone();
    let a = Service::new(store.clone(), ApiConfig::default());
    let b = Service::new(store, ApiConfig::default());
    for mesh in ["east", "west"] {
        a.call("CreateMesh", json!({"meshName": mesh}))
            .await
            .unwrap();
    }
    let mut east = node("east", "red");
    east["clientToken"] = json!("one-token");
    let mut west = node("west", "blue");
    west["clientToken"] = json!("one-token");
    // Both read the token as unused, then commit together.
    gated.hold_next(2);
    let (x, y) = tokio::join!(
        a.call("CreateVirtualNode", east),
        b.call("CreateVirtualNode", west)
    );
    assert_eq!(
        [x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{x:?} {y:?}"
    );
    let lost = x.err().or(y.err()).unwrap();
    assert_eq!(lost.error_type(), "ConflictException", "{lost}");
    assert!(lost.to_string().contains("clientToken"), "{lost}");
}

#[tokio::test]
async fn updates_through_two_replicas_are_never_lost() {
    let (_dir, a, b) = two_replicas(ApiConfig::default()).await;
    a.call("CreateMesh", json!({"meshName": "apps"}))
        .await
        .unwrap();
    a.call("CreateVirtualNode", node("apps", "red"))
        .await
        .unwrap();
    let mut writers = Vec::new();
    for i in 0..40 {
        let replica = if i % 2 == 0 { a.clone() } else { b.clone() };
        let mut input = node("apps", "red");
        input["spec"]["listeners"][0]["portMapping"]["port"] = json!(9000 + i);
        writers.push(tokio::spawn(async move {
            replica.call("UpdateVirtualNode", input).await
        }));
    }
    let mut versions = Vec::new();
    for w in writers {
        let out = w.await.unwrap().unwrap();
        versions.push(out["virtualNode"]["metadata"]["version"].as_i64().unwrap());
    }
    versions.sort_unstable();
    // Every acknowledged update read the one before it: versions 2..=41, once each.
    assert_eq!(versions, (2..=41).collect::<Vec<_>>());
    for replica in [&a, &b] {
        let red = replica
            .call(
                "DescribeVirtualNode",
                json!({"meshName": "apps", "virtualNodeName": "red"}),
            )
            .await
            .unwrap();
        assert_eq!(red["virtualNode"]["metadata"]["version"], json!(41));
    }
}
