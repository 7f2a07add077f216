//! `weft agent` given several control planes (`APPMESH_XDS_ENDPOINT=A,B`): its Envoy keeps
//! serving when the one it is connected to is killed with SIGKILL, reconnects to the other, and
//! — because versions are derived from content, not from a server's own counters — receives
//! the config it already has under the same versions: no listener or cluster is rebuilt.
//! The two control planes here hold the same mesh, written to each (two independent embedded
//! stores); `tests/replicas.rs` runs replicas of one store on etcd.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::mesh::{agent, free_port, sample_app, wait_until, Agent, Proc};
use common::WeftServer;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{MeshSpec, NodeSpec, RouteSpec, RouterSpec, ServiceSpec};

/// The proxies connected to a control plane, by node id, from its proxy status.
async fn connected(server: &WeftServer) -> BTreeSet<String> {
    let response =
        common::signed_request(&server.addr, "GET", "/weft/v1/proxy-status", None, "weft").await;
    let status: serde_json::Value = response.json().await.unwrap_or_default();
    status["proxies"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["nodeId"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Envoy counters that move when a listener or cluster is added or rebuilt (and the old one
/// drained) rather than kept.
fn rebuilds(agent: &Agent) -> u64 {
    agent.stat_sum("listener_manager.listener_modified")
        + agent.stat_sum("listener_manager.listener_added")
        + agent.stat_sum("cluster_manager.cluster_modified")
        + agent.stat_sum("cluster_manager.cluster_added")
}

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
    let mut upstreams: Vec<(Agent, Proc)> = Vec::new();
    for name in ["red", "blue"] {
        let (app, app_port) = sample_app(name);
        let port = free_port();
        for api in &apis {
            api.node(name, NodeSpec::http("127.0.0.1", port)).await;
        }
        upstreams.push((agent(&xds, "apps", name, &[(port, app_port)], "delta"), app));
    }
    let front_port = free_port();
    for api in &apis {
        api.router("colors", RouterSpec::http(8080)).await;
        api.route("colors", "main", RouteSpec::split(&[("red", 1)]))
            .await;
        api.service("colors.apps.local", ServiceSpec::by_router("colors"))
            .await;
        api.node(
            "front",
            NodeSpec::http("127.0.0.1", front_port).backend("colors.apps.local"),
        )
        .await;
    }
    let front = Arc::new(agent(&xds, "apps", "front", &[], "delta"));
    wait_until(Duration::from_secs(20), || {
        front
            .get("colors.apps.local", "/", &[])
            .is_ok_and(|(s, b)| s == 200 && b.contains("red"))
    });
    let mut per_server = Vec::new();
    for s in servers.iter().flatten() {
        per_server.push(connected(s).await);
    }
    assert_eq!(
        per_server[0].len() + per_server[1].len(),
        3,
        "{per_server:?}"
    );
    let victim = if per_server[0].len() >= per_server[1].len() {
        0
    } else {
        1
    };
    let survivor = 1 - victim;
    let moving = per_server[victim].clone();
    let all: Vec<&Agent> = upstreams.iter().map(|(a, _)| a).chain([&*front]).collect();
    let before: Vec<u64> = all.iter().map(|a| rebuilds(a)).collect();

    // Open-loop traffic: a request every 10 ms whatever the answers.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (front, stop, ok, failed) = (front.clone(), stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match front.get("colors.apps.local", "/", &[]) {
                    Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed request: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                next += Duration::from_millis(10);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    servers[victim].as_mut().unwrap().kill9();
    servers[victim] = None;
    let other = servers[survivor].as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = connected(other).await;
        if moving.iter().all(|p| now.contains(p)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{moving:?} did not reconnect to the other control plane within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{} Envoy(s) reconnected to the other control plane {:.0} ms after the kill",
        moving.len(),
        killed_at.elapsed().as_secs_f64() * 1000.0
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<u64> = all.iter().map(|a| rebuilds(a)).collect();
    assert_eq!(
        before, after,
        "a listener or cluster was rebuilt on reconnect"
    );

    // A route change made after the kill reaches the Envoys.
    apis[survivor]
        .update_route("colors", "main", RouteSpec::split(&[("blue", 1)]))
        .await;
    wait_until(Duration::from_secs(20), || {
        front
            .get("colors.apps.local", "/", &[])
            .is_ok_and(|(s, b)| s == 200 && b.contains("blue"))
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("open-loop traffic through the failover: {ok} ok, {failed} failed");
    assert!(ok > 50, "the traffic ran ({ok} requests)");
    assert_eq!(failed, 0, "no failed data-plane request");
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
