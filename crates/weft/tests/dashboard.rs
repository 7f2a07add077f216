//! The live dashboard at `/ui`, in headless Chromium against a real `weft server` that verifies
//! SigV4: an operator runs `weft dashboard`, opens the URL it prints, and sees the mesh they
//! built with the AWS SDK — its nodes, its 75/25 split — change as they change it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_appmesh::Client;
use common::browser::{artifacts, Browser};
use common::WeftServer;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{
    GatewayRouteSpec, GatewaySpec, HttpMatch, Listener, MeshSpec, NodeSpec, RouteSpec, RouterSpec,
    ServiceSpec,
};

const COLORS: &str = "colors.apps.local";

/// Mesh `apps` as an App Mesh walkthrough builds it: `front` calls `colors.apps.local`, a
/// service provided by router `colors` whose route `split` sends 75% to `blue` and 25% to
/// `red`; gateway `edge` sends everything to the service.
async fn colors_mesh(client: &Client) -> MeshApi {
    let api = MeshApi::create(client, "apps", MeshSpec::new()).await;
    for name in ["blue", "red"] {
        api.node(name, NodeSpec::http(format!("{name}.local"), 8080))
            .await;
    }
    api.node("front", NodeSpec::http("front.local", 8080).backend(COLORS))
        .await;
    api.router("colors", RouterSpec::http(8080)).await;
    api.route(
        "colors",
        "split",
        RouteSpec::split(&[("blue", 75), ("red", 25)]),
    )
    .await;
    api.service(COLORS, ServiceSpec::by_router("colors")).await;
    api.gateway("edge", GatewaySpec::new().listener(Listener::http(8443)))
        .await;
    api.gateway_route(
        "edge",
        "to-colors",
        GatewayRouteSpec::http(HttpMatch::prefix("/"), COLORS),
    )
    .await;
    api
}

/// `weft dashboard` against `server`, signing as its administrator: the URL it prints.
fn dashboard_url(server: &WeftServer) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["dashboard", "--endpoint", &server.addr])
        .envs(common::aws_env(&server.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weft dashboard failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(url.contains("/ui/?login="), "{url}");
    url
}

/// A dashboard session for a client other than the browser: `weft dashboard`'s token traded
/// at `/ui/api/login`, as the page does; the `Cookie` header value.
async fn session_cookie(server: &WeftServer) -> String {
    let url = dashboard_url(server);
    let token = url.split("login=").nth(1).unwrap();
    let answer = reqwest::Client::new()
        .post(format!("{}/ui/api/login", server.addr))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 204);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// Every edge of the drawn graph as `id => label`.
const EDGE_LABELS: &str = "return Object.fromEntries(window.weftDashboard.cy.edges().map(e => [e.id(), e.data('label')]));";

#[tokio::test]
async fn an_operator_sees_the_mesh_and_a_weight_change_without_reloading() {
    let server = WeftServer::start();
    let api = colors_mesh(&server.client()).await;

    // The data needs a session: without one, the API says how to get one.
    let refused = reqwest::get(format!("{}/ui/api/meshes", server.addr))
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("weft dashboard"));

    let browser = Browser::start(1400, 900).await;
    browser.client.goto(&dashboard_url(&server)).await.unwrap();
    browser
        .wait_for(
            Duration::from_secs(15),
            "return window.weftDashboard && window.weftDashboard.ready;",
        )
        .await;
    // The one-time token left the address bar; the session cookie is out of scripts' reach.
    let url = browser.client.current_url().await.unwrap();
    assert!(!url.as_str().contains("login="), "{url}");
    let cookies = browser.eval("return document.cookie;").await;
    assert!(!cookies.as_str().unwrap().contains("weft_ui_session"));

    let nodes = browser
        .eval("return window.weftDashboard.cy.nodes().map(n => n.id()).sort();")
        .await;
    assert_eq!(
        nodes,
        serde_json::json!([
            "vg:edge",
            "vn:blue",
            "vn:front",
            "vn:red",
            "vr:colors",
            format!("vs:{COLORS}")
        ])
    );
    let labels = browser.eval(EDGE_LABELS).await;
    assert_eq!(labels["r:colors/split>blue"], "split 75%");
    assert_eq!(labels["r:colors/split>red"], "split 25%");
    assert_eq!(labels["g:edge/to-colors>colors.apps.local"], "to-colors");
    assert!(labels.get("b:front>colors.apps.local").is_some());

    // A weight change through the SDK is drawn within 2 s, in the same page (no reload: the
    // marker set now is still there), without laying the graph out again.
    browser.eval("window.__samePage = true; return null;").await;
    let layouts = browser.eval("return window.weftDashboard.layouts;").await;
    let changed = Instant::now();
    api.update_route(
        "colors",
        "split",
        RouteSpec::split(&[("blue", 50), ("red", 50)]),
    )
    .await;
    let (_, took) = browser
        .wait_for(
            Duration::from_secs(5),
            "const e = window.weftDashboard.cy.getElementById('r:colors/split>blue'); \
             return e.nonempty() && e.data('label') === 'split 50%';",
        )
        .await;
    let seen = changed.elapsed();
    println!("a route weight change was drawn {seen:?} after the SDK call (polled {took:?})");
    assert!(
        seen < Duration::from_secs(2),
        "the new weights took {seen:?}"
    );
    assert_eq!(browser.eval("return window.__samePage;").await, true);
    assert_eq!(
        browser.eval("return window.weftDashboard.layouts;").await,
        layouts
    );

    // The resource browser: the route's spec, who it sends to, and its two versions with the
    // weight change as a diff; the router lists who provides it.
    browser
        .eval("document.querySelector('nav button[data-tab=resources]').click(); return null;")
        .await;
    browser
        .wait_for(
            Duration::from_secs(5),
            "return [...document.querySelectorAll('#resource-list tbody tr')]\
             .find(tr => tr.dataset.key === 'rt|colors|split');",
        )
        .await;
    browser
        .eval(
            "[...document.querySelectorAll('#resource-list tbody tr')]\
             .find(tr => tr.dataset.key === 'rt|colors|split').click(); return null;",
        )
        .await;
    let (detail, _) = browser
        .wait_for(
            Duration::from_secs(5),
            "const d = document.querySelector('#resource-detail'); \
             return d.querySelector('.diff') && d.innerText;",
        )
        .await;
    let detail = detail.as_str().unwrap().to_string();
    assert!(
        detail.contains("route colors / split — version 2"),
        "{detail}"
    );
    assert!(detail.contains("History (2 kept)"), "{detail}");
    assert!(detail.contains("virtualNode blue (route)"), "{detail}");
    assert!(
        detail.contains("virtualRouter colors (contains)"),
        "{detail}"
    );
    let diff = browser
        .eval(
            "return [...document.querySelectorAll('#resource-detail .diff div')]\
             .filter(d => d.className).map(d => d.textContent.replace(/\\s+/g, ' '));",
        )
        .await;
    let diff: Vec<String> = serde_json::from_value(diff).unwrap();
    assert!(diff.contains(&"- \"weight\": 75".to_string()), "{diff:?}");
    assert!(diff.contains(&"+ \"weight\": 50".to_string()), "{diff:?}");
    let shot = artifacts().join("resource-history.png");
    browser.screenshot(&shot).await;
    println!("screenshot: {}", shot.display());
    browser
        .eval("document.querySelector('nav button[data-tab=topology]').click(); return null;")
        .await;

    // A new node appears too (and that one is laid out).
    api.node("green", NodeSpec::http("green.local", 8080)).await;
    browser
        .wait_for(
            Duration::from_secs(5),
            "return window.weftDashboard.cy.getElementById('vn:green').nonempty();",
        )
        .await;

    let shot = artifacts().join("colors-mesh.png");
    browser.screenshot(&shot).await;
    println!("screenshot: {}", shot.display());
    assert_eq!(browser.page_errors().await, Vec::<String>::new());
    browser.close().await;
}

#[tokio::test]
async fn a_used_login_token_opens_nothing() {
    let server = WeftServer::start();
    colors_mesh(&server.client()).await;
    let url = dashboard_url(&server);
    let token = url.split("login=").nth(1).unwrap().to_string();
    let login = |token: String| {
        let addr = server.addr.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{addr}/ui/api/login"))
                .json(&serde_json::json!({ "token": token }))
                .send()
                .await
                .unwrap()
        }
    };
    let first = login(token.clone()).await;
    assert_eq!(first.status(), 204);
    let cookie = first
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let session = cookie.split(';').next().unwrap().to_string();
    let meshes = reqwest::Client::new()
        .get(format!("{}/ui/api/meshes", server.addr))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(meshes.status(), 200);
    let body: serde_json::Value = meshes.json().await.unwrap();
    assert_eq!(body["meshes"], serde_json::json!(["apps"]));
    assert_eq!(login(token).await.status(), 401);
    // Without the administrator's signature there is no token to get.
    let unsigned = reqwest::Client::new()
        .post(format!("{}{}", server.addr, "/weft/v1/ui/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 403);
}

#[tokio::test]
async fn a_500_node_mesh_renders() {
    let server = WeftServer::start_with(&["--quota", "virtual-nodes-per-mesh=600"]);
    let client = server.client();
    let api = MeshApi::create(&client, "big", MeshSpec::new()).await;
    // 500 nodes in 50 groups: each group's router splits between its 10 nodes, and the
    // group's first node calls the next group's service.
    let created = Instant::now();
    let mut calls = Vec::new();
    for g in 0..50 {
        for i in 0..10 {
            let api = MeshApi::existing(&client, "big");
            let mut spec = NodeSpec::http(format!("n{g}-{i}.local"), 8080);
            if i == 0 && g < 49 {
                spec = spec.backend(format!("s{}.big.local", g + 1));
            }
            calls.push(async move { api.node(&format!("n{g}-{i}"), spec).await });
        }
    }
    // 16 at a time: under the API's in-flight cap per client.
    futures::StreamExt::collect::<Vec<_>>(futures::StreamExt::buffer_unordered(
        futures::stream::iter(calls),
        16,
    ))
    .await;
    for g in 0..50 {
        api.router(&format!("r{g}"), RouterSpec::http(8080)).await;
        let targets: Vec<(String, i32)> = (0..10).map(|i| (format!("n{g}-{i}"), 10)).collect();
        let targets: Vec<(&str, i32)> = targets.iter().map(|(n, w)| (n.as_str(), *w)).collect();
        api.route(&format!("r{g}"), "all", RouteSpec::split(&targets))
            .await;
        api.service(
            &format!("s{g}.big.local"),
            ServiceSpec::by_router(format!("r{g}")),
        )
        .await;
    }
    println!(
        "created 500 nodes, 50 routers and services in {:?}",
        created.elapsed()
    );

    let browser = Browser::start(1600, 1000).await;
    let url = dashboard_url(&server);
    let started = Instant::now();
    browser.client.goto(&url).await.unwrap();
    browser
        .wait_for(
            Duration::from_secs(60),
            "return window.weftDashboard && window.weftDashboard.ready;",
        )
        .await;
    let drawn = started.elapsed();
    let counts = browser
        .eval("const cy = window.weftDashboard.cy; return [cy.nodes('[kind = \"virtualNode\"]').length, cy.edges().length];")
        .await;
    println!("a 500-node mesh was drawn in {drawn:?} (nodes and edges: {counts})");
    // The server's side of it: one range read and one pass building the graph's JSON.
    let cookie = session_cookie(&server).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut bytes = 0;
    for _ in 0..20 {
        let graph = client
            .get(format!("{}/ui/api/graph?mesh=big", server.addr))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(graph.status(), 200);
        bytes = graph.bytes().await.unwrap().len();
    }
    println!(
        "GET /ui/api/graph of the 500-node mesh: {:?} each ({bytes} bytes)",
        started.elapsed() / 20
    );
    assert_eq!(counts[0], 500);
    // 500 route targets, 49 backends, 50 providers.
    assert_eq!(counts[1], 599);
    // A weight change on the big mesh is still drawn without a reload.
    let changed = Instant::now();
    api.update_route("r7", "all", RouteSpec::split(&[("n7-0", 90), ("n7-1", 10)]))
        .await;
    browser
        .wait_for(
            Duration::from_secs(10),
            "const e = window.weftDashboard.cy.getElementById('r:r7/all>n7-0'); \
             return e.nonempty() && e.data('label') === 'all 90%';",
        )
        .await;
    println!(
        "a weight change on the 500-node mesh was drawn in {:?}",
        changed.elapsed()
    );
    let shot = artifacts().join("500-nodes.png");
    browser.screenshot(&shot).await;
    println!("screenshot: {}", shot.display());
    assert_eq!(browser.page_errors().await, Vec::<String>::new());
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_traffic_shows_on_the_edges_and_a_backend_answering_500s_turns_its_edge_red() {
    use common::mesh::{agent_with_env, failing_app, free_port, sample_app, wait_until};
    let server = WeftServer::start();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let (_blue_app, blue_app_port) = sample_app("blue");
    let red_app_port = failing_app();
    let (blue_port, red_port) = (free_port(), free_port());
    api.node("blue", NodeSpec::http("127.0.0.1", blue_port))
        .await;
    api.node("red", NodeSpec::http("127.0.0.1", red_port)).await;
    api.router("colors", RouterSpec::http(8080)).await;
    api.route(
        "colors",
        "split",
        RouteSpec::split(&[("blue", 75), ("red", 25)]),
    )
    .await;
    api.service(COLORS, ServiceSpec::by_router("colors")).await;
    api.node("front", NodeSpec::client(&[COLORS])).await;
    // Envoys flushing their stats every second (App Mesh's variable), so the page sees traffic
    // within seconds.
    let agent = |node: &str, ports: &[(u16, u16)]| {
        agent_with_env(
            &server.xds_addr,
            &format!("mesh/apps/virtualNode/{node}"),
            ports,
            "sotw",
            &[("ENVOY_STATS_FLUSH_INTERVAL", "1s")],
        )
    };
    let _blue = agent("blue", &[(blue_port, blue_app_port)]);
    let _red = agent("red", &[(red_port, red_app_port)]);
    let front = agent("front", &[]);
    wait_until(Duration::from_secs(30), || {
        front
            .get(COLORS, "/", &[])
            .is_ok_and(|(s, b)| s == 200 && b.contains("blue"))
    });
    // A steady load through front's Envoy: 50 requests a second, for at most 60 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let port = front.egress_port;
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                let _ = common::mesh::http_get(port, COLORS, "/");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let browser = Browser::start(1400, 900).await;
    browser.client.goto(&dashboard_url(&server)).await.unwrap();
    let (_, took) = browser
        .wait_for(
            Duration::from_secs(40),
            "const cy = window.weftDashboard && window.weftDashboard.cy; if (!cy) return false; \
             const red = cy.getElementById('r:colors/split>red'), \
                   blue = cy.getElementById('r:colors/split>blue'); \
             return red.hasClass('failing') && !blue.hasClass('failing') \
                 && (blue.data('live') || {}).rps > 0;",
        )
        .await;
    println!("the failing backend's edge turned red {took:?} after the page opened");
    let labels = browser.eval(EDGE_LABELS).await;
    println!("edges: {labels:#}");
    let blue = labels["r:colors/split>blue"].as_str().unwrap();
    assert!(
        blue.starts_with("split 75%\n") && blue.contains(" rps · 0.0% err · p99 "),
        "{blue}"
    );
    // Requests are counted when they start and 5xx when they end, so a flush can split one
    // request across two windows: nearly, not exactly, every request of the window failed.
    let red = labels["r:colors/split>red"].as_str().unwrap();
    let red_errors: f64 = red
        .split(" rps · ")
        .nth(1)
        .and_then(|rest| rest.split("% err").next())
        .and_then(|percent| percent.parse().ok())
        .unwrap_or_else(|| panic!("no error percentage in {red:?}"));
    assert!(red_errors >= 90.0, "{labels}");
    // front's call to the service carries both, a quarter failing: over the 5% threshold.
    let backend = browser
        .eval("return window.weftDashboard.cy.getElementById('b:front>colors.apps.local').hasClass('failing');")
        .await;
    assert_eq!(backend, true);
    // Selecting the failing edge shows who sends on it, the figures and their history.
    browser
        .eval("window.weftDashboard.cy.getElementById('r:colors/split>red').emit('tap'); return null;")
        .await;
    let (selected, _) = browser
        .wait_for(
            Duration::from_secs(5),
            "const s = document.querySelector('#selected'); \
             const lines = [...s.querySelectorAll('svg polyline')]; \
             return lines.length === 3 \
                 && lines.every(l => l.getAttribute('points').split(' ').length >= 2) \
                 && s.innerText;",
        )
        .await;
    let selected = selected.as_str().unwrap();
    assert!(selected.contains("front → red: "), "{selected}");
    let selected_errors: f64 = selected
        .split("front → red: ")
        .nth(1)
        .and_then(|rest| rest.split("% errors, p50/p90/p99 ").next())
        .and_then(|figures| figures.rsplit(", ").next())
        .and_then(|percent| percent.parse().ok())
        .unwrap_or_else(|| panic!("no error percentage for front → red in {selected}"));
    assert!(selected_errors >= 90.0, "{selected}");
    let shot = artifacts().join("live-traffic.png");
    browser.screenshot(&shot).await;
    println!("screenshot: {}", shot.display());

    // The proxies: each Envoy with the versions it ACKed, and the config front holds.
    browser
        .eval("document.querySelector('nav button[data-tab=proxies]').click(); return null;")
        .await;
    let (rows, _) = browser
        .wait_for(
            Duration::from_secs(5),
            "const rows = [...document.querySelectorAll('#proxy-list tbody tr')] \
               .map(tr => [...tr.children].map(td => td.textContent)); \
             return rows.length >= 3 && rows;",
        )
        .await;
    let rows: Vec<Vec<String>> = serde_json::from_value(rows).unwrap();
    for node in ["front", "blue", "red"] {
        let row = rows
            .iter()
            .find(|r| r[0] == format!("mesh/apps/virtualNode/{node}"))
            .unwrap_or_else(|| panic!("no row for {node}: {rows:?}"));
        // CDS, LDS and RDS ACKed (EDS only where a cluster's endpoints come from Weft), no
        // NACK.
        assert!(
            [&row[2], &row[4], &row[5]].iter().all(|v| *v != "-"),
            "{row:?}"
        );
        assert_eq!(row[6], "0", "{row:?}");
    }
    browser
        .eval(
            "[...document.querySelectorAll('#proxy-list tbody tr')] \
               .find(tr => tr.children[0].textContent === 'mesh/apps/virtualNode/front').click(); \
             return null;",
        )
        .await;
    let (config, _) = browser
        .wait_for(
            Duration::from_secs(5),
            "const t = document.querySelector('#proxy-config').textContent; \
             return t.includes('== Cluster') && t;",
        )
        .await;
    let config = config.as_str().unwrap();
    assert!(config.contains("== Listener"), "{config}");
    assert!(config.contains("colors.apps.local"), "{config}");
    assert!(!config.contains("== Secret"), "{config}");
    let shot = artifacts().join("proxies.png");
    browser.screenshot(&shot).await;
    println!("screenshot: {}", shot.display());
    assert_eq!(browser.page_errors().await, Vec::<String>::new());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_a_dashboard_link_and_its_steady_load_shows_on_the_split() {
    use std::io::BufRead;
    let egress = common::mesh::free_port();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["demo", "--explicit", "--listen", "127.0.0.1:0"])
        .args(["--xds-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"])
        .args(["--egress-port", &egress.to_string()])
        .env_remove("ENVOY_BIN")
        .env("WEFT_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Stopped (SIGTERM: it stops its agents and Envoys) however the test ends.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = weft_agent::signal::send(self.0.id(), weft_agent::signal::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = demo.stdout.take().unwrap();
    let demo = Stop(demo);
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read all along, so the demo never blocks on a full pipe.
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.trim_start().starts_with("http://") && line.contains("/ui/?login=") {
                let _ = url_tx.send(line.trim().to_string());
            }
        }
    });
    let url = url_rx
        .recv_timeout(Duration::from_secs(90))
        .expect("the demo printed no dashboard link");

    let browser = Browser::start(1400, 800).await;
    browser.client.goto(&url).await.unwrap();
    // The demo's Envoys flush their stats every 10 s.
    let (_, took) = browser
        .wait_for(
            Duration::from_secs(45),
            "const cy = window.weftDashboard && window.weftDashboard.cy; if (!cy) return false; \
             const live = (id) => (cy.getElementById(id).data('live') || {}).rps > 0; \
             return live('r:colors/split>red') && live('r:colors/split>blue') \
                 && live('b:front>colors.demo.local');",
        )
        .await;
    println!("the demo's load showed on the dashboard {took:?} after the page opened");
    let labels = browser.eval(EDGE_LABELS).await;
    println!("edges: {labels:#}");
    // Only route split leads to red: its figures are red's; blue is reached by split and by
    // canary, and Envoy's stats do not say which, so each shows an upper bound.
    assert!(labels["r:colors/split>red"]
        .as_str()
        .unwrap()
        .starts_with("split 75%\n"));
    assert!(labels["r:colors/canary>blue"]
        .as_str()
        .unwrap()
        .starts_with("canary 100%\n≤"));
    let shot = artifacts().join("demo.png");
    browser.screenshot(&shot).await;
    println!("screenshot: {}", shot.display());
    assert_eq!(browser.page_errors().await, Vec::<String>::new());
    browser.close().await;
    drop(demo);
}

#[tokio::test]
async fn the_page_is_served_from_the_binary_and_an_open_server_needs_no_session() {
    let mut server = WeftServer::start_with(&["--insecure-no-auth"]);
    colors_mesh(&server.client()).await;
    let get = |path: &str| reqwest::get(format!("{}{path}", server.addr));
    let page = get("/ui/").await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers()["cache-control"], "no-cache");
    let html = page.text().await.unwrap();
    // Every asset the page loads is Weft's own: it works with no internet access.
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for script in [
        "/ui/vendor/cytoscape-3.35.0.min.js",
        "/ui/vendor/cytoscape-dagre-4.0.1.min.js",
    ] {
        assert!(html.contains(script));
        let asset = get(script).await.unwrap();
        assert_eq!(asset.status(), 200);
        assert_eq!(
            asset.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            asset.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
    }
    assert_eq!(get("/ui/nothing.js").await.unwrap().status(), 404);
    // --insecure-no-auth: the data is open, as the API is.
    let meshes: serde_json::Value = get("/ui/api/meshes").await.unwrap().json().await.unwrap();
    assert_eq!(meshes["meshes"], serde_json::json!(["apps"]));

    // Live-refresh connections are bounded: past the cap, 503 until one closes.
    let mut open = Vec::new();
    for _ in 0..weft_ui::MAX_EVENT_STREAMS {
        let stream = get("/ui/api/events?mesh=apps").await.unwrap();
        assert_eq!(stream.status(), 200);
        assert_eq!(stream.headers()["content-type"], "text/event-stream");
        open.push(stream);
    }
    assert_eq!(get("/ui/api/events?mesh=apps").await.unwrap().status(), 503);
    // The first event of a stream is the mesh's graph.
    let mut first = open.pop().unwrap();
    let chunk = first.chunk().await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(text.starts_with("event: graph\ndata: {"), "{text}");
    assert!(text.contains("\"percent\":75"), "{text}");
    // Stopping the server ends the open streams: it exits at once, not at its stop bound.
    let stopping = Instant::now();
    server.send_sigterm();
    assert!(server.exits_within(Duration::from_secs(5)));
    println!(
        "the server stopped in {:?} with 32 dashboard streams open",
        stopping.elapsed()
    );
    drop(open);
}

#[tokio::test]
async fn a_dashboard_opened_before_any_mesh_shows_the_first_one_created_and_lists_the_next() {
    let server = WeftServer::start();
    let browser = Browser::start(1000, 700).await;
    browser.client.goto(&dashboard_url(&server)).await.unwrap();
    browser
        .wait_for(
            Duration::from_secs(10),
            "return document.querySelector('#message').textContent.includes('No mesh yet');",
        )
        .await;
    colors_mesh(&server.client()).await;
    browser
        .wait_for(
            Duration::from_secs(10),
            "return window.weftDashboard.ready && window.weftDashboard.cy.nodes().length === 6;",
        )
        .await;
    // A second mesh joins the selector without a reload.
    MeshApi::create(&server.client(), "more", MeshSpec::new()).await;
    browser
        .wait_for(
            Duration::from_secs(10),
            "return [...document.querySelectorAll('#mesh option')].map(o => o.value).join() === 'apps,more';",
        )
        .await;
    assert_eq!(browser.page_errors().await, Vec::<String>::new());
    browser.close().await;
}

#[tokio::test]
async fn a_proxy_that_rejected_its_config_shows_envoys_message_on_the_proxies_tab() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    const CLUSTERS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    const ADS: &str =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
    let server = WeftServer::start();
    colors_mesh(&server.client()).await;
    // blue's proxy, as an ADS client that NACKs its clusters the way Envoy does (the request
    // after a response carries its nonce, the last accepted version and an error detail).
    let port: u16 = server.xds_addr.rsplit(':').next().unwrap().parse().unwrap();
    let channel = weft_test_support::grpc::channel(port, &server.xds_addr);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let node = Node {
        id: "mesh/apps/virtualNode/blue".into(),
        cluster: "blue".into(),
        ..Node::default()
    };
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    requests
        .send(DiscoveryRequest {
            node: Some(node.clone()),
            type_url: CLUSTERS.into(),
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap();
    let mut responses = grpc
        .streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            ADS.parse().unwrap(),
            tonic_prost::ProstCodec::<DiscoveryRequest, DiscoveryResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let rejection = "cds_ingress_apps_blue_http_8080: Proto constraint validation failed";
    requests
        .send(DiscoveryRequest {
            node: Some(node),
            type_url: CLUSTERS.into(),
            response_nonce: first.nonce.clone(),
            error_detail: Some(envoy_types::pb::google::rpc::Status {
                code: 3,
                message: rejection.into(),
                details: Vec::new(),
            }),
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap();

    let browser = Browser::start(1400, 700).await;
    browser.client.goto(&dashboard_url(&server)).await.unwrap();
    browser
        .wait_for(
            Duration::from_secs(15),
            "return window.weftDashboard && window.weftDashboard.ready;",
        )
        .await;
    browser
        .eval("document.querySelector('nav button[data-tab=proxies]').click(); return null;")
        .await;
    let (row, _) = browser
        .wait_for(
            Duration::from_secs(10),
            "const tr = [...document.querySelectorAll('#proxy-list tbody tr')] \
               .find(tr => tr.children[0].textContent === 'mesh/apps/virtualNode/blue'); \
             return tr && tr.children[6].textContent === '1' \
                 && [...tr.children].map(td => [td.textContent, td.className]);",
        )
        .await;
    let row: Vec<(String, String)> = serde_json::from_value(row).unwrap();
    let (nack, class) = &row[7];
    assert_eq!(
        nack,
        &format!("Cluster {}: {rejection}", &first.version_info[..12])
    );
    assert_eq!(class, "nack");
    let shot = artifacts().join("nack.png");
    browser.screenshot(&shot).await;
    println!("screenshot: {}", shot.display());
    assert_eq!(browser.page_errors().await, Vec::<String>::new());
    browser.close().await;
    drop(requests);
}
