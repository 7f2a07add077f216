//! End-to-end: a real `weft server`, real `weft agent`s each running a real
//! Envoy 1.40, real HTTP upstreams (`weft sample-app`), configured only
//! through the official AWS SDK — traffic follows the mesh.
//!
//! Topology: `front` (client, backend `colors.apps.local`) → router `colors`
//! → virtual nodes `red` and `blue`, each with its own Envoy bound to the
//! node's listener port and forwarding to its app (explicit mode: no iptables).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use common::mesh::{agent, free_port, sample_app, wait_until, Agent, Proc};
use common::WeftServer;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{
    ms, HttpMatch, MeshSpec, NodeSpec, Retry, RouteSpec, RouterSpec, ServiceSpec, ValueMatch,
};

const SERVICE: &str = "colors.apps.local";

struct Mesh {
    server: WeftServer,
    api: MeshApi,
    front: Agent,
    upstreams: HashMap<String, (Agent, Proc)>,
}

impl Mesh {
    /// Builds the mesh with upstream nodes `names` and a 100% route to the first.
    async fn new(names: &[&str], protocol: &str) -> Mesh {
        let server = WeftServer::start();
        let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
        let mut upstreams = HashMap::new();
        for name in names {
            let (app, app_port) = sample_app(name);
            let port = free_port();
            api.node(name, NodeSpec::http("127.0.0.1", port)).await;
            let a = agent(
                &server.xds_addr,
                "apps",
                name,
                &[(port, app_port)],
                protocol,
            );
            upstreams.insert(name.to_string(), (a, app));
        }
        api.router("colors", RouterSpec::http(8080)).await;
        api.route("colors", "main", RouteSpec::split(&[(names[0], 1)]))
            .await;
        api.service(SERVICE, ServiceSpec::by_router("colors")).await;
        api.node(
            "front",
            NodeSpec::http("127.0.0.1", free_port()).backend(SERVICE),
        )
        .await;
        let front = agent(&server.xds_addr, "apps", "front", &[], protocol);
        let mesh = Mesh {
            server,
            api,
            front,
            upstreams,
        };
        let first = names[0].to_string();
        mesh.wait_for(|body| body.contains(&first));
        mesh
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        self.front
            .get(SERVICE, path, headers)
            .unwrap_or((0, String::new()))
    }

    /// Waits until a request to `/` answers 200 with a body satisfying `f`.
    fn wait_for(&self, f: impl Fn(&str) -> bool) {
        wait_until(StdDuration::from_secs(20), || {
            let (status, body) = self.get("/", &[]);
            status == 200 && f(&body)
        });
    }

    async fn set_route(&self, route: RouteSpec) {
        self.api.update_route("colors", "main", route).await;
    }

    /// Counts which upstream answered `n` requests.
    fn split(&self, n: usize) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..n {
            let (status, body) = self.get("/", &[]);
            assert_eq!(status, 200, "{body}");
            *counts.entry(body.trim().to_string()).or_insert(0) += 1;
        }
        counts
    }

    /// No Envoy rejected any config.
    fn assert_no_rejections(&self) {
        let mut all = vec![&self.front];
        all.extend(self.upstreams.values().map(|(a, _)| a));
        for a in all {
            assert_eq!(a.stat_sum("update_rejected"), 0, "an Envoy NACKed config");
        }
    }
}

async fn weighted_split_and_live_weight_change(protocol: &str) {
    let mesh = Mesh::new(&["red", "blue"], protocol).await;
    mesh.set_route(RouteSpec::split(&[("red", 75), ("blue", 25)]))
        .await;
    mesh.wait_for(|b| b.contains("blue"));
    let counts = mesh.split(1000);
    let red = *counts.get("red").unwrap_or(&0) as f64;
    let blue = *counts.get("blue").unwrap_or(&0) as f64;
    assert_eq!(red + blue, 1000.0, "{counts:?}");
    // 75% of 1000: σ ≈ 13.7, so ±60 is more than 4σ.
    assert!((red - 750.0).abs() <= 60.0, "75/25 gave {counts:?}");

    // Shift everything to blue through the SDK; Envoy follows.
    mesh.set_route(RouteSpec::split(&[("red", 0), ("blue", 100)]))
        .await;
    mesh.wait_for(|b| b.contains("blue"));
    wait_until(StdDuration::from_secs(10), || {
        mesh.split(20).get("blue") == Some(&20)
    });
    assert_eq!(mesh.split(200).get("blue"), Some(&200));
    mesh.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_75_25_route_splits_traffic_and_a_weight_change_shows_in_traffic_delta() {
    weighted_split_and_live_weight_change("delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_75_25_route_splits_traffic_and_a_weight_change_shows_in_traffic_sotw() {
    weighted_split_and_live_weight_change("sotw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_path_method_and_query_matches_route_as_written_in_priority_order() {
    let mesh = Mesh::new(&["red", "blue", "green"], "delta").await;
    // The catch-all goes to red at the lowest priority.
    mesh.set_route(RouteSpec::split(&[("red", 1)]).priority(1000))
        .await;
    let routes = [
        // Header `x-color: blue` → blue.
        (
            "by-header",
            RouteSpec::http(HttpMatch::prefix("/").header("x-color", ValueMatch::exact("blue")))
                .priority(10)
                .to("blue", 1),
        ),
        // Exact path /green → green.
        (
            "by-path",
            RouteSpec::http(HttpMatch::exact_path("/green"))
                .priority(20)
                .to("green", 1),
        ),
        // POST → green.
        (
            "by-method",
            RouteSpec::http(HttpMatch::prefix("/").method("POST"))
                .priority(30)
                .to("green", 1),
        ),
        // ?color=blue → blue.
        (
            "by-query",
            RouteSpec::http(HttpMatch::prefix("/").query("color", "blue"))
                .priority(40)
                .to("blue", 1),
        ),
    ];
    for (name, route) in routes {
        mesh.api.route("colors", name, route).await;
    }
    // A lower priority number wins: header blue beats path /green.
    let answer =
        |path: &str, headers: &[(&str, &str)]| mesh.get(path, headers).1.trim().to_string();
    wait_until(StdDuration::from_secs(10), || {
        answer("/", &[("x-color", "blue")]) == "blue"
    });
    wait_until(StdDuration::from_secs(10), || {
        answer("/?color=blue", &[]) == "blue"
    });
    assert_eq!(answer("/", &[]), "red");
    assert_eq!(answer("/green", &[]), "green");
    assert_eq!(
        answer("/green", &[("x-color", "blue")]),
        "blue",
        "priority 10 beats 20"
    );
    assert_eq!(
        answer("/greenhouse", &[]),
        "red",
        "exact path does not match a longer one"
    );
    assert_eq!(answer("/", &[("x-color", "red")]), "red");
    let (_, body) = common::mesh::request(
        mesh.front.egress_port,
        "POST",
        SERVICE,
        "/",
        &[("content-length", "0")],
    )
    .unwrap();
    assert_eq!(body.trim(), "green");
    mesh.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_policy_turns_a_flaky_upstream_into_full_success_and_a_timeout_cuts_slow_requests()
{
    let mesh = Mesh::new(&["red"], "delta").await;
    // Without a retry policy of its own, App Mesh's default policy applies.
    // With one: 3 retries on server errors make every-other-request failures invisible.
    let retrying = RouteSpec::split(&[("red", 1)])
        .retry(Retry::new(3, ms(2000)).http_events(&["server-error"]))
        .per_request_timeout(ms(500));
    mesh.set_route(retrying).await;
    // Wait until the new route (with its 500 ms timeout) is in force.
    wait_until(StdDuration::from_secs(10), || {
        mesh.get("/delay/800", &[]).0 == 504
    });
    let mut ok = 0;
    for _ in 0..100 {
        let (status, _) = mesh.get("/fail-every/2", &[]);
        if status == 200 {
            ok += 1;
        }
    }
    assert_eq!(
        ok, 100,
        "retries hide an upstream failing every other request"
    );
    // The 500 ms per-request timeout cuts a 3 s request.
    let started = Instant::now();
    let (status, _) = mesh.get("/delay/3000", &[]);
    let took = started.elapsed();
    assert_eq!(status, 504);
    assert!(
        took >= StdDuration::from_millis(450) && took < StdDuration::from_millis(2500),
        "{took:?}"
    );
    mesh.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_mesh_defaults_apply_when_a_route_sets_nothing() {
    let mesh = Mesh::new(&["red"], "delta").await;
    let dump = mesh
        .front
        .admin("/config_dump?resource=dynamic_route_configs")
        .unwrap();
    // 15 s per request and App Mesh's default retry policy (2 retries).
    assert!(dump.contains("\"timeout\": \"15s\""), "{dump}");
    assert!(dump.contains("\"num_retries\": 2"), "{dump}");
    // A 503 answered by the app is retried by the default policy (503 → retry on gateway-error),
    // so an upstream failing every other request is hidden even without a policy of its own.
    let mut ok = 0;
    for _ in 0..50 {
        if mesh.get("/fail-every/2", &[]).0 == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 50);
    mesh.assert_no_rejections();
}

async fn no_drops_while_routes_change(protocol: &str) {
    let mesh = Arc::new(Mesh::new(&["red", "blue", "green"], protocol).await);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (mesh, stop, ok, failed) = (mesh.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(std::thread::spawn(move || {
            let deadline = Instant::now() + StdDuration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match mesh.get("/", &[]) {
                    (200, _) => ok.fetch_add(1, Ordering::Relaxed),
                    (status, body) => {
                        eprintln!("failed request: {status} {body}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let plans: [&[(&str, i32)]; 6] = [
        &[("red", 50), ("blue", 50)],
        &[("blue", 100)],
        &[("green", 30), ("red", 70)],
        &[("green", 100)],
        &[("red", 1), ("blue", 1), ("green", 1)],
        &[("red", 100)],
    ];
    for round in 0..3 {
        for plan in plans {
            mesh.set_route(RouteSpec::split(plan)).await;
            tokio::time::sleep(StdDuration::from_millis(150 + 50 * round)).await;
        }
    }
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{protocol}: {ok} requests ok, {failed} failed across 18 route changes");
    assert!(ok > 200, "the load ran ({ok} requests)");
    assert_eq!(failed, 0, "zero failed requests while routes change");
    mesh.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failed_requests_while_weights_and_targets_change_delta() {
    no_drops_while_routes_change("delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failed_requests_while_weights_and_targets_change_sotw() {
    no_drops_while_routes_change("sotw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_keep_serving_through_a_control_plane_restart_and_reconnect() {
    let mut mesh = Mesh::new(&["red", "blue"], "delta").await;
    let dir = mesh.server.keep_dir().unwrap();
    let xds = mesh.server.xds_addr.clone();
    mesh.server.kill9();
    // Envoy keeps its last config.
    for _ in 0..20 {
        assert_eq!(mesh.get("/", &[]).1.trim(), "red");
    }
    // A new control plane on the same data and the same xDS port.
    let restarted = WeftServer::start_in(&dir.path().join("data"), &["--xds-listen", &xds]);
    mesh.api = MeshApi::existing(&restarted.client(), "apps");
    mesh.server = restarted;
    mesh.set_route(RouteSpec::split(&[("blue", 1)])).await;
    mesh.wait_for(|b| b.contains("blue"));
    mesh.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_whose_node_does_not_exist_yet_waits_and_gets_config_when_it_is_created() {
    let server = WeftServer::start();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let (_app, app_port) = sample_app("late");
    let port = free_port();
    // App Mesh's Envoy image sends the full ARN as its node id.
    let arn = "arn:aws:appmesh:us-east-1:000000000000:mesh/apps/virtualNode/late";
    let envoy = common::mesh::agent_with_id(&server.xds_addr, arn, &[(port, app_port)], "delta");
    std::thread::sleep(StdDuration::from_millis(500));
    assert!(
        common::mesh::http_get(port, "x", "/").is_err(),
        "no listener before the node exists"
    );
    api.node("late", NodeSpec::http("127.0.0.1", port)).await;
    // Without a restart, Envoy now serves the node's listener and hands requests to the app.
    wait_until(
        StdDuration::from_secs(10),
        || matches!(common::mesh::http_get(port, "x", "/"), Ok((200, body)) if body.contains("late")),
    );
    assert_eq!(envoy.stat_sum("update_rejected"), 0);
}

/// The snapshot keys `weft proxy-status --json` says the server holds config for.
fn snapshot_keys(server: &WeftServer) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["proxy-status", "--json", "--endpoint", &server.addr])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["snapshotKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_envoys_left_is_forgotten_after_the_idle_ttl_and_served_again_when_one_returns(
) {
    let server = WeftServer::start_with(&["--proxy-idle-ttl", "1"]);
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let (_app, app_port) = sample_app("red");
    let port = free_port();
    api.node("red", NodeSpec::http("127.0.0.1", port)).await;
    let red_is_served_on = |port: u16| matches!(common::mesh::http_get(port, "x", "/"), Ok((200, body)) if body.contains("red"));
    let envoy = agent(
        &server.xds_addr,
        "apps",
        "red",
        &[(port, app_port)],
        "delta",
    );
    wait_until(StdDuration::from_secs(10), || red_is_served_on(port));
    let keys = snapshot_keys(&server);
    assert!(
        keys.iter()
            .any(|k| k.starts_with("mesh/apps/virtualNode/red#")),
        "{keys:?}"
    );

    // Its only Envoy leaves; a second later the server holds nothing for it.
    drop(envoy);
    wait_until(StdDuration::from_secs(10), || {
        snapshot_keys(&server).is_empty()
    });

    // The node changes while no Envoy of it is connected; the next one to
    // connect is configured from scratch with the node as it is now.
    let moved = free_port();
    api.update_node("red", NodeSpec::http("127.0.0.1", moved))
        .await;
    let envoy = agent(
        &server.xds_addr,
        "apps",
        "red",
        &[(moved, app_port)],
        "delta",
    );
    wait_until(StdDuration::from_secs(10), || red_is_served_on(moved));
    assert_eq!(snapshot_keys(&server).len(), 1);
    assert_eq!(envoy.stat_sum("update_rejected"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_lists_every_proxy_with_its_acked_versions() {
    let mesh = Mesh::new(&["red"], "sotw").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["proxy-status", "--json", "--endpoint", &mesh.server.addr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let proxies = status["proxies"].as_array().unwrap();
    let mut nodes: Vec<&str> = proxies
        .iter()
        .map(|p| p["nodeId"].as_str().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["mesh/apps/virtualNode/front", "mesh/apps/virtualNode/red"]
    );
    for p in proxies {
        assert_eq!(p["protocol"], "sotw");
        for t in ["Cluster", "Listener", "RouteConfiguration"] {
            assert!(
                p["types"][t]["ackedVersion"].is_string(),
                "{t} not ACKed: {p}"
            );
        }
        assert!(p["lastNack"].is_null(), "{p}");
    }
    assert_eq!(status["nackCount"], 0);
    // The table form names both nodes too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["proxy-status", "--endpoint", &mesh.server.addr])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("mesh/apps/virtualNode/front") && table.contains("Steady"),
        "{table}"
    );
}

/// `weft proxy-status --json`, parsed.
fn proxy_status_json(server: &WeftServer) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["proxy-status", "--json", "--endpoint", &server.addr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_names_the_deleted_node_a_proxy_is_not_updated_for_and_the_version_it_keeps() {
    let server = WeftServer::start();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let (_app, app_port) = sample_app("red");
    let port = free_port();
    api.node("red", NodeSpec::http("127.0.0.1", port)).await;
    let _envoy = agent(
        &server.xds_addr,
        "apps",
        "red",
        &[(port, app_port)],
        "delta",
    );
    let red_is_served = || matches!(common::mesh::http_get(port, "x", "/"), Ok((200, body)) if body.contains("red"));
    wait_until(StdDuration::from_secs(10), red_is_served);
    let status = proxy_status_json(&server);
    let proxy = &status["proxies"][0];
    assert!(proxy["configFailure"].is_null(), "{proxy}");
    assert_eq!(status["configFailures"], serde_json::json!([]));
    let version = proxy["snapshotVersion"].as_str().unwrap().to_string();

    // The node is deleted under its Envoy: Envoy keeps its config, and
    // proxy-status says why it is not updated and what it is still served.
    api.client()
        .delete_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .send()
        .await
        .unwrap();
    wait_until(StdDuration::from_secs(10), || {
        !proxy_status_json(&server)["proxies"][0]["configFailure"].is_null()
    });
    let status = proxy_status_json(&server);
    let failure = &status["proxies"][0]["configFailure"];
    assert_eq!(failure["resource"], "virtualNode/red", "{failure}");
    assert_eq!(failure["proxy"], "mesh/apps/virtualNode/red");
    assert_eq!(
        failure["reason"],
        "virtual node \"red\" does not exist in mesh \"apps\""
    );
    assert_eq!(failure["servingVersion"].as_str(), Some(version.as_str()));
    assert_eq!(status["configFailures"].as_array().unwrap().len(), 1);
    assert!(red_is_served());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["proxy-status", "--endpoint", &server.addr])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let line = format!(
        "config not updated: translation of virtualNode/red failed: \
         virtual node \"red\" does not exist in mesh \"apps\"; serving version {}",
        &version[..12]
    );
    assert!(table.contains(&line), "{table}");

    // The node is created again: the proxy is updated, the failure gone.
    api.node("red", NodeSpec::http("127.0.0.1", port)).await;
    wait_until(StdDuration::from_secs(10), || {
        let status = proxy_status_json(&server);
        status["proxies"][0]["configFailure"].is_null()
            && status["configFailures"] == serde_json::json!([])
    });
}

#[test]
fn weft_demo_in_explicit_mode_brings_up_a_whole_mesh_and_routes_as_configured() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "demo",
            "--check",
            "--explicit",
            "--listen",
            "127.0.0.1:0",
            "--xds-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
        ])
        .args(["--egress-port", &free_port().to_string()])
        .env("WEFT_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().find(|l| l.starts_with("check:")).unwrap();
    // "check: 200 requests: red R, blue B; with x-canary: blue"
    let red: u32 = line
        .split("red ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (120..=180).contains(&red),
        "75% of 200 expected red: {line}"
    );
    assert!(line.ends_with("with x-canary: blue"), "{line}");
    assert!(
        stdout.contains("aws appmesh update-route"),
        "the guide is printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_can_use_its_envoy_as_an_http_proxy() {
    let mesh = Mesh::new(&["red"], "delta").await;
    // What `http_proxy=http://127.0.0.1:<egress>` makes clients send: an absolute URI.
    let (status, body) = common::mesh::request(
        mesh.front.egress_port,
        "GET",
        SERVICE,
        &format!("http://{SERVICE}/hello"),
        &[],
    )
    .unwrap();
    assert_eq!((status, body.trim()), (200, "red"));
    // `Host: <service>:<port>` with the router's listener port works too.
    let (status, body) = mesh
        .front
        .get(&format!("{SERVICE}:8080"), "/", &[])
        .unwrap();
    assert_eq!((status, body.trim()), (200, "red"));
    // A host that is not a backend of this node gets no route.
    let (status, _) = mesh.front.get("elsewhere.local", "/", &[]).unwrap();
    assert_eq!(status, 404);
    mesh.assert_no_rejections();
}
