//! `weft agent` given several control planes (`APPMESH_XDS_ENDPOINT=A,B`): its Envoy keeps
//! serving when the one it is connected to is killed with SIGKILL, reconnects to the other, and
//! — because versions are derived from content, not from a server's own counters — receives
//! the config it already has under the same versions: no listener or cluster is rebuilt.
//! The two control planes here hold the same mesh, written to each (two independent embedded
//! stores); `tests/replicas.rs` runs replicas of one store on etcd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::failover::{busiest, ColorsMesh, OpenLoad};
use common::mesh::free_port;
use common::WeftServer;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{MeshSpec, RouteSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_envoy_given_two_control_planes_fails_over_without_a_failed_request_or_a_rebuilt_listener(
) {
    let mut servers = [Some(WeftServer::start()), Some(WeftServer::start())];
    let xds = format!(
        "{},{}",
        servers[0].as_ref().unwrap().xds_addr,
        servers[1].as_ref().unwrap().xds_addr
    );
    let mut apis = Vec::new();
    for s in servers.iter().flatten() {
        apis.push(MeshApi::create(&s.client(), "apps", MeshSpec::new()).await);
    }
    let mesh = ColorsMesh::start(&apis, &xds).await;
    let (victim, moving) =
        busiest([servers[0].as_ref().unwrap(), servers[1].as_ref().unwrap()]).await;
    let survivor = 1 - victim;
    let before = mesh.rebuilds();

    let load = OpenLoad::start(mesh.front.clone());
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    servers[victim].as_mut().unwrap().kill9();
    servers[victim] = None;
    let other = servers[survivor].as_ref().unwrap();
    mesh.wait_moved(
        other,
        &moving,
        killed_at,
        "the other control plane",
        &before,
    )
    .await;

    // A route change made after the kill reaches the Envoys.
    apis[survivor]
        .update_route("colors", "main", RouteSpec::split(&[("blue", 1)]))
        .await;
    mesh.wait_answered_by("blue");
    load.finish_without_a_failure();
}

#[tokio::test]
async fn an_agent_s_registry_call_skips_a_dead_replica_and_is_answered_by_the_next() {
    let server = WeftServer::start();
    let dead = format!("127.0.0.1:{}", free_port());
    let endpoints = format!("{dead},{}", server.addr.trim_start_matches("http://"));
    let created = weft_agent::registration::call(
        &endpoints,
        "CreateHttpNamespace",
        serde_json::json!({"Name": "apps.local"}),
    )
    .await
    .unwrap();
    assert!(created["OperationId"].is_string(), "{created}");
    // An answer, even an error, is the answer: it is not sent again to another replica.
    let err = weft_agent::registration::call(
        &endpoints,
        "CreateHttpNamespace",
        serde_json::json!({"Name": "apps.local"}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("NamespaceAlreadyExists"), "{err}");
    // Only dead replicas: the error names the last one tried.
    let err = weft_agent::registration::call(&dead, "ListNamespaces", serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&dead), "{err}");
}
