//! Service-to-service authorization (the mesh tag `weft:authorization`, a Weft extension) with
//! real Envoys: a node accepts calls only from the nodes whose backends reach its services.
//! Callers are real: front's Envoy, and a client (curl) presenting a Weft certificate issued for
//! a node — `front`, which declares red's service, or `rogue`, which does not — straight to
//! red's listeners over mutual TLS, as that node's Envoy would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_appmesh::types::TagRef;
use common::certs::{trust_bundle, workload_certificate};
use common::mesh::{free_port, sample_app, wait_until};
use common::WeftServer;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{Listener, MeshSpec, NodeSpec, ServiceSpec};

/// A node's certificate and key in files, for curl.
struct Identity {
    cert: String,
    key: String,
}

async fn identity(server: &WeftServer, node: &str, dir: &Path) -> Identity {
    let (chain, key) =
        workload_certificate(&server.addr, &format!("mesh/apps/virtualNode/{node}")).await;
    let (cert_path, key_path) = (
        dir.join(format!("{node}.pem")),
        dir.join(format!("{node}.key")),
    );
    std::fs::write(&cert_path, chain).unwrap();
    std::fs::write(&key_path, key).unwrap();
    Identity {
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
    }
}

/// curl over mutual TLS to 127.0.0.1:`port` as `who`, trusting `bundle`: its exit code, HTTP
/// status line and headers (`-i`), and body.
fn curl(who: &Identity, bundle: &Path, port: u16, extra: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "-m", "5", "--cacert"])
        .arg(bundle)
        .args(["--cert", &who.cert, "--key", &who.key])
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn status_of(answer: &(i32, String)) -> Option<u16> {
    answer
        .1
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
}

/// red's denials per caller as `weft proxy-status --json` shows them, once they add up to at
/// least `at_least` (its Envoy's stats reach the server at its next flush).
async fn wait_for_denials(
    server: &WeftServer,
    node: &str,
    at_least: u64,
) -> Vec<(String, String, u64)> {
    let node_id = format!("mesh/apps/virtualNode/{node}");
    let mut denials = Vec::new();
    for _ in 0..100 {
        let answer =
            common::signed_request(&server.addr, "GET", "/weft/v1/proxy-status", None, "weft")
                .await;
        let status: serde_json::Value = answer.json().await.unwrap();
        denials = status["proxies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["nodeId"] == node_id.as_str())
            .flat_map(|p| {
                p["authorizationDenials"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|d| {
                (
                    d["caller"].as_str().unwrap().to_string(),
                    d["mode"].as_str().unwrap().to_string(),
                    d["count"].as_u64().unwrap(),
                )
            })
            .collect();
        if denials.iter().map(|d| d.2).sum::<u64>() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    denials
}

/// What `weft proxy-status` prints (signed with the administrator's key).
fn proxy_status_text(server: &WeftServer) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["proxy-status", "--endpoint", &server.addr])
        .envs(common::aws_env(&server.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn tag_mesh(server: &WeftServer, key: &str, value: &str) {
    server
        .client()
        .tag_resource()
        .resource_arn("arn:aws:appmesh:us-east-1:000000000000:mesh/apps")
        .tags(TagRef::builder().key(key).value(value).build().unwrap())
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_declared_callers_reach_a_node_over_http_grpc_and_tcp_and_declaring_the_backend_opens_it_at_once(
) {
    let server = WeftServer::start_with(&["--xds-tls"]);
    let tmp = tempfile::tempdir().unwrap();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    tag_mesh(&server, "weft:mtls", "STRICT").await;
    tag_mesh(&server, "weft:authorization", "ENFORCE").await;
    let (red_port, red_tcp_port) = (free_port(), free_port());
    let (_red_app, red_app_port) = sample_app("red");
    api.node(
        "red",
        NodeSpec::http("127.0.0.1", red_port).listener(Listener::tcp(red_tcp_port)),
    )
    .await;
    api.service("red.apps.local", ServiceSpec::by_node("red"))
        .await;
    api.node("front", NodeSpec::client(&["red.apps.local"]))
        .await;
    api.node("rogue", NodeSpec::client(&[])).await;
    // red's Envoy flushes its stats to the server every second.
    let red = common::joined_agent_with_env(
        &server,
        "mesh/apps/virtualNode/red",
        &[(red_port, red_app_port), (red_tcp_port, red_app_port)],
        &[("ENVOY_STATS_FLUSH_INTERVAL", "1s")],
    );
    let front = common::joined_agent(&server, "mesh/apps/virtualNode/front", &[]);

    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, trust_bundle(&server.addr).await).unwrap();
    let as_front = identity(&server, "front", tmp.path()).await;
    let as_rogue = identity(&server, "rogue", tmp.path()).await;

    // front's own Envoy reaches red: it declares red's service.
    wait_until(Duration::from_secs(40), || {
        front
            .get("red.apps.local", "/", &[])
            .is_ok_and(|(s, b)| s == 200 && b.contains("red"))
    });
    // HTTP: front's identity is let through, rogue's gets 403.
    let ok = curl(&as_front, &bundle, red_port, &[]);
    assert_eq!(status_of(&ok), Some(200), "{ok:?}");
    let denied = curl(&as_rogue, &bundle, red_port, &[]);
    assert_eq!(status_of(&denied), Some(403), "{denied:?}");
    // gRPC: the refusal is gRPC's PERMISSION_DENIED (grpc-status 7).
    let grpc = [
        "--http2",
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ];
    let denied = curl(&as_rogue, &bundle, red_port, &grpc);
    assert!(denied.1.contains("grpc-status: 7"), "{denied:?}");
    // TCP: rogue's connection is closed without an answer; front's is carried.
    let denied = curl(&as_rogue, &bundle, red_tcp_port, &[]);
    assert_eq!(status_of(&denied), None, "{denied:?}");
    let ok = curl(&as_front, &bundle, red_tcp_port, &[]);
    assert_eq!(status_of(&ok), Some(200), "{ok:?}");
    assert!(red.stat_sum("http.ingress.rbac.denied") >= 2);
    assert!(red.stat_sum("ingress_rbac.rbac.denied") >= 1);
    // rogue's two refused HTTP requests and its refused TCP connection (logged by the TCP
    // proxy) are counted under its name, for red, in weft proxy-status and /metrics; front's
    // allowed ones nowhere.
    let denials = wait_for_denials(&server, "red", 3).await;
    assert_eq!(
        denials,
        vec![("virtualNode/rogue".to_string(), "ENFORCE".to_string(), 3)]
    );
    let printed = proxy_status_text(&server);
    assert!(
        printed.contains("denied: virtualNode/rogue × 3"),
        "{printed}"
    );
    let metrics = reqwest::get(format!("{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weft_authorization_denied_total{")
                && l.contains("node=\"red\"")
                && l.contains("caller=\"virtualNode/rogue\"")
                && l.contains("mode=\"ENFORCE\"")
                && l.ends_with(" 3")),
        "{metrics}"
    );

    // rogue declares red's service: let through within a second or two, while front's requests
    // keep succeeding throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, failed, sent, egress) = (
            stop.clone(),
            failed.clone(),
            sent.clone(),
            front.egress_port,
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = common::mesh::http_get(egress, "red.apps.local", "/")
                    .is_ok_and(|(s, b)| s == 200 && b.contains("red"));
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let changed = Instant::now();
    api.client()
        .update_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("rogue")
        .spec(NodeSpec::client(&["red.apps.local"]).sdk())
        .send()
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        status_of(&curl(&as_rogue, &bundle, red_port, &[])) == Some(200)
    });
    let took = changed.elapsed();
    println!("rogue let through {took:?} after its backend was added");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(took < Duration::from_secs(3), "let through after {took:?}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "front's requests failed while rogue was let in ({} sent)",
        sent.load(Ordering::Relaxed)
    );
    for envoy in [&red, &front] {
        assert_eq!(envoy.stat_sum("update_rejected"), 0, "an Envoy NACKed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_only_counts_the_calls_it_would_refuse_and_refuses_none() {
    let server = WeftServer::start_with(&["--xds-tls"]);
    let tmp = tempfile::tempdir().unwrap();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    tag_mesh(&server, "weft:mtls", "STRICT").await;
    tag_mesh(&server, "weft:authorization", "REPORT").await;
    let (red_port, red_tcp_port) = (free_port(), free_port());
    let (_red_app, red_app_port) = sample_app("red");
    api.node(
        "red",
        NodeSpec::http("127.0.0.1", red_port).listener(Listener::tcp(red_tcp_port)),
    )
    .await;
    api.service("red.apps.local", ServiceSpec::by_node("red"))
        .await;
    api.node("rogue", NodeSpec::client(&[])).await;
    let red = common::joined_agent_with_env(
        &server,
        "mesh/apps/virtualNode/red",
        &[(red_port, red_app_port), (red_tcp_port, red_app_port)],
        &[("ENVOY_STATS_FLUSH_INTERVAL", "1s")],
    );
    let bundle = tmp.path().join("bundle.pem");
    std::fs::write(&bundle, trust_bundle(&server.addr).await).unwrap();
    let as_rogue = identity(&server, "rogue", tmp.path()).await;

    wait_until(Duration::from_secs(40), || {
        status_of(&curl(&as_rogue, &bundle, red_port, &[])) == Some(200)
    });
    let before = red.stat_sum("http.ingress.rbac.shadow_denied");
    assert!(before >= 1, "the call was counted as one to refuse");
    for _ in 0..3 {
        assert_eq!(
            status_of(&curl(&as_rogue, &bundle, red_port, &[])),
            Some(200)
        );
    }
    assert_eq!(red.stat_sum("http.ingress.rbac.shadow_denied"), before + 3);
    assert_eq!(red.stat_sum("http.ingress.rbac.denied"), 0);
    // TCP: rogue's connection is carried, and counted as one to refuse.
    assert_eq!(
        status_of(&curl(&as_rogue, &bundle, red_tcp_port, &[])),
        Some(200)
    );
    assert_eq!(red.stat_sum("ingress_rbac.rbac.shadow_denied"), 1);
    assert_eq!(red.stat_sum("ingress_rbac.rbac.denied"), 0);
    // The would-be denials, HTTP and TCP, are rogue's, in weft proxy-status.
    let denials = wait_for_denials(&server, "red", before + 4).await;
    assert_eq!(
        denials,
        vec![(
            "virtualNode/rogue".to_string(),
            "REPORT".to_string(),
            before + 4
        )]
    );
    let printed = proxy_status_text(&server);
    assert!(
        printed.contains(&format!(
            "would deny (REPORT): virtualNode/rogue × {}",
            before + 4
        )),
        "{printed}"
    );
}
