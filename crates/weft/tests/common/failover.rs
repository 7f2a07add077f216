//! Envoys failing over from one control plane to another (`weft agent` given several xDS
//! addresses): the mesh they serve, the open-loop traffic through it, and what is checked once
//! the control plane most of them are connected to is killed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{NodeSpec, RouteSpec, RouterSpec, ServiceSpec};

use super::mesh::{agent, free_port, sample_app, wait_until, Agent, Proc};
use super::WeftServer;

/// The virtual service the front Envoy calls.
pub const SERVICE: &str = "colors.apps.local";

/// The proxies connected to a control plane, by node id, from its proxy status.
pub async fn connected(server: &WeftServer) -> BTreeSet<String> {
    let response =
        super::signed_request(&server.addr, "GET", "/weft/v1/proxy-status", None, "weft").await;
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
pub fn rebuilds(agent: &Agent) -> u64 {
    agent.stat_sum("listener_manager.listener_modified")
        + agent.stat_sum("listener_manager.listener_added")
        + agent.stat_sum("cluster_manager.cluster_modified")
        + agent.stat_sum("cluster_manager.cluster_added")
}

/// Mesh `apps`: nodes `red` and `blue` (sample apps behind agents), router `colors` sending
/// everything to `red`, the service [`SERVICE`] by that router, and a `front` agent calling it;
/// every agent (delta xDS) is given `xds`, a list of control planes.
pub struct ColorsMesh {
    pub upstreams: Vec<(Agent, Proc)>,
    pub front: Arc<Agent>,
}

impl ColorsMesh {
    /// Writes the mesh through each of `apis` (control planes with their own stores are each
    /// given it; replicas of one store need one), starts the agents, and waits until `front`
    /// is answered by `red`.
    pub async fn start(apis: &[MeshApi], xds: &str) -> ColorsMesh {
        let mut upstreams = Vec::new();
        for name in ["red", "blue"] {
            let (app, app_port) = sample_app(name);
            let port = free_port();
            for api in apis {
                api.node(name, NodeSpec::http("127.0.0.1", port)).await;
            }
            upstreams.push((agent(xds, "apps", name, &[(port, app_port)], "delta"), app));
        }
        let front_port = free_port();
        for api in apis {
            api.router("colors", RouterSpec::http(8080)).await;
            api.route("colors", "main", RouteSpec::split(&[("red", 1)]))
                .await;
            api.service(SERVICE, ServiceSpec::by_router("colors")).await;
            api.node(
                "front",
                NodeSpec::http("127.0.0.1", front_port).backend(SERVICE),
            )
            .await;
        }
        let mesh = ColorsMesh {
            upstreams,
            front: Arc::new(agent(xds, "apps", "front", &[], "delta")),
        };
        mesh.wait_answered_by("red");
        mesh
    }

    /// Waits (20 s at the most) until `front` gets a 200 from `color`'s app.
    pub fn wait_answered_by(&self, color: &str) {
        wait_until(Duration::from_secs(20), || {
            self.front
                .get(SERVICE, "/", &[])
                .is_ok_and(|(s, b)| s == 200 && b.contains(color))
        });
    }

    /// [`rebuilds`] of every agent, upstreams then front.
    pub fn rebuilds(&self) -> Vec<u64> {
        self.upstreams
            .iter()
            .map(|(a, _)| a)
            .chain([&*self.front])
            .map(rebuilds)
            .collect()
    }

    /// After a kill at `killed_at`: waits (30 s at the most) until every proxy of `moving` is
    /// connected to `survivor` (`what` names it in messages), then checks that no agent rebuilt
    /// a listener or cluster since `before` (the control planes' versions are the same).
    pub async fn wait_moved(
        &self,
        survivor: &WeftServer,
        moving: &BTreeSet<String>,
        killed_at: Instant,
        what: &str,
        before: &[u64],
    ) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = connected(survivor).await;
            if moving.iter().all(|p| now.contains(p)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "proxies {moving:?} did not reconnect to {what} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "{} Envoy(s) reconnected to {what} {:.0} ms after the kill",
            moving.len(),
            killed_at.elapsed().as_secs_f64() * 1000.0
        );
        // Identical versions from the new control plane: nothing rebuilt, nothing drained.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            before,
            self.rebuilds(),
            "a listener or cluster was rebuilt on reconnect"
        );
    }
}

/// Of two control planes, the one the most of the mesh's 3 proxies are connected to (the one
/// to kill), and those proxies.
pub async fn busiest(servers: [&WeftServer; 2]) -> (usize, BTreeSet<String>) {
    let per_server = [connected(servers[0]).await, connected(servers[1]).await];
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
    (victim, per_server[victim].clone())
}

/// Open-loop traffic through `front` to [`SERVICE`]: a request every 10 ms whatever the
/// answers, for 60 s at the most.
pub struct OpenLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl OpenLoad {
    pub fn start(front: Arc<Agent>) -> OpenLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match front.get(SERVICE, "/", &[]) {
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
        OpenLoad {
            stop,
            ok,
            failed,
            thread,
        }
    }

    /// Lets the traffic run 300 ms more, stops it, and checks that it ran (more than 50
    /// requests) without a failed request.
    pub fn finish_without_a_failure(self) {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        eprintln!("open-loop traffic through the failover: {ok} ok, {failed} failed");
        assert!(ok > 50, "the traffic ran ({ok} requests)");
        assert_eq!(failed, 0, "no failed data-plane request");
    }
}
