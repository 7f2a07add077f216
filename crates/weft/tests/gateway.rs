//! End-to-end (issue 6, virtual gateways): a real `weft server`, a gateway Envoy
//! (`weft agent` with `APPMESH_RESOURCE_ARN=mesh/apps/virtualGateway/edge`) and the Envoys of
//! the target nodes, all real Envoy 1.40 in explicit mode on loopback, configured only through
//! the official AWS SDK. Requests sent to the gateway's listener port reach the target virtual
//! services through the mesh's routing; the upstream apps echo the path (`x-weft-path`) and
//! `Host` (`x-weft-host`) they receive, so every match and rewrite is seen where it matters.
//!
//! Topology: gateway `edge` (http listener, grpc listener) → `colors.apps.local` (router
//! `colors`, route `main` → `blue` / `green`), `green.apps.local` (node `green`),
//! `rpc.apps.local` (gRPC node `rpc`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration as StdDuration;

use common::mesh::{agent, agent_with_id, free_port, request, sample_app, wait_until, Agent, Proc};
use common::WeftServer;
use weft_test_support::grpc::{self, grpc_app};
use weft_test_support::http::exchange_blocking;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{
    AccessLog, ConnectionPool, GatewayRouteSpec, GatewaySpec, GrpcMatch, HealthCheck, HttpMatch,
    Listener, MeshSpec, NodeSpec, Rewrite, RouteSpec, RouterSpec, ServiceSpec, ValueMatch,
};

const MESH: &str = "apps";
const COLORS: &str = "colors.apps.local";
const GREEN: &str = "green.apps.local";
const RPC: &str = "rpc.apps.local";

// ---- what the upstream saw ----

/// What one request through the gateway came to: the status, and which app answered with the
/// path and `Host` it received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: u16,
    app: String,
    path: String,
    host: String,
}

fn seen(status: u16, app: &str, path: &str, host: &str) -> Seen {
    Seen {
        status,
        app: app.into(),
        path: path.into(),
        host: host.into(),
    }
}

fn through(port: u16, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
    match exchange_blocking(port, method, host, path, headers) {
        Ok(response) => {
            let get = |k: &str| response.header(k).unwrap_or_default().to_string();
            Seen {
                status: response.status,
                app: get("x-weft-app"),
                path: get("x-weft-path"),
                host: get("x-weft-host"),
            }
        }
        Err(e) => seen(0, &e.to_string(), "", ""),
    }
}

// ---- the mesh, through the AWS SDK ----

/// The gateway: an HTTP listener with a health check of `/healthz` (with `pool`, a connection
/// pool of one connection and one pending request) and a gRPC listener, logging to /dev/null.
fn gateway_spec(http_port: u16, grpc_port: u16, pool: bool) -> GatewaySpec {
    let mut http =
        Listener::http(http_port).health_check(HealthCheck::http("/healthz").port(http_port));
    if pool {
        http = http.connection_pool(ConnectionPool::http(1, 1));
    }
    GatewaySpec::new()
        .listener(http)
        .listener(Listener::grpc(grpc_port))
        .access_log(AccessLog::file("/dev/null"))
}

struct Fixture {
    _server: WeftServer,
    api: MeshApi,
    gateway: Agent,
    nodes: Vec<Agent>,
    _apps: Vec<Proc>,
    http_port: u16,
    grpc_port: u16,
}

impl Fixture {
    async fn new() -> Fixture {
        let server = WeftServer::start();
        let api = MeshApi::create(&server.client(), MESH, MeshSpec::new()).await;
        let mut nodes = Vec::new();
        let mut apps = Vec::new();
        for name in ["blue", "green"] {
            let (app, app_port) = sample_app(name);
            let port = free_port();
            api.node(name, NodeSpec::http("127.0.0.1", port)).await;
            nodes.push(agent(
                &server.xds_addr,
                MESH,
                name,
                &[(port, app_port)],
                "delta",
            ));
            apps.push(app);
        }
        let rpc_app = grpc_app("rpc").await;
        let rpc_port = free_port();
        api.node(
            "rpc",
            NodeSpec::new()
                .listener(Listener::grpc(rpc_port))
                .dns("127.0.0.1"),
        )
        .await;
        nodes.push(agent(
            &server.xds_addr,
            MESH,
            "rpc",
            &[(rpc_port, rpc_app.port)],
            "delta",
        ));
        api.router("colors", RouterSpec::http(8080)).await;
        api.route("colors", "main", RouteSpec::split(&[("blue", 100)]))
            .await;
        api.service(COLORS, ServiceSpec::by_router("colors")).await;
        api.service(GREEN, ServiceSpec::by_node("green")).await;
        api.service(RPC, ServiceSpec::by_node("rpc")).await;
        let (http_port, grpc_port) = (free_port(), free_port());
        api.gateway("edge", gateway_spec(http_port, grpc_port, false))
            .await;
        let gateway = agent_with_id(
            &server.xds_addr,
            &format!("mesh/{MESH}/virtualGateway/edge"),
            &[],
            "delta",
        );
        Fixture {
            _server: server,
            api,
            gateway,
            nodes,
            _apps: apps,
            http_port,
            grpc_port,
        }
    }

    async fn gateway_route(&self, name: &str, spec: GatewayRouteSpec) {
        self.api.gateway_route("edge", name, spec).await;
    }

    fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
        through(self.http_port, "GET", host, path, headers)
    }

    fn assert_no_rejections(&self) {
        for envoy in self.nodes.iter().chain([&self.gateway]) {
            assert_eq!(
                envoy.stat_sum("update_rejected"),
                0,
                "an Envoy NACKed config"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_routes_by_every_match_and_applies_every_rewrite_as_the_upstream_sees_it() {
    let f = Fixture::new().await;
    let http = GatewayRouteSpec::http;
    let routes = [
        ("root", http(HttpMatch::prefix("/"), COLORS)),
        ("chapter", http(HttpMatch::prefix("/chapter"), COLORS)),
        (
            "keep",
            http(HttpMatch::prefix("/keep"), COLORS)
                .priority(10)
                .rewrite(Rewrite::new().keep_prefix().keep_hostname()),
        ),
        (
            "value",
            http(HttpMatch::prefix("/old"), COLORS).rewrite(Rewrite::new().prefix("/new")),
        ),
        (
            "exact",
            http(HttpMatch::exact_path("/exact"), COLORS)
                .rewrite(Rewrite::new().path("/rewritten")),
        ),
        ("regex", http(HttpMatch::regex_path("/re/[0-9]+"), GREEN)),
        (
            "host-exact",
            http(
                HttpMatch::prefix("/").hostname_exact("green.example.com"),
                GREEN,
            )
            .priority(1),
        ),
        (
            "host-suffix",
            http(
                HttpMatch::prefix("/").hostname_suffix(".green.example.org"),
                GREEN,
            )
            .priority(1)
            .rewrite(Rewrite::new().keep_hostname()),
        ),
        (
            "header",
            http(
                HttpMatch::prefix("/").header("x-canary", ValueMatch::exact("yes")),
                GREEN,
            )
            .priority(2),
        ),
        (
            "method",
            http(HttpMatch::prefix("/m").method("POST"), GREEN).priority(3),
        ),
        (
            "query",
            http(HttpMatch::prefix("/q").query("v", "2"), GREEN).priority(3),
        ),
        (
            "port",
            http(HttpMatch::prefix("/port").port(f.http_port), GREEN).priority(4),
        ),
        // Same match twice: priority decides, not the name order.
        (
            "a-prio-low",
            http(HttpMatch::exact_path("/prio"), COLORS).priority(9),
        ),
        (
            "z-prio-high",
            http(HttpMatch::exact_path("/prio"), GREEN).priority(0),
        ),
        (
            "rpc",
            GatewayRouteSpec::grpc(
                GrpcMatch::service("weft.Colors").metadata("x-tier", ValueMatch::exact("gold")),
                RPC,
            ),
        ),
    ];
    for (name, spec) in routes {
        f.gateway_route(name, spec).await;
    }

    // The last route created is in force once a request for it arrives.
    wait_until(StdDuration::from_secs(20), || {
        f.get("www.example.com", "/prio", &[]).app == "green"
    });
    let www = "www.example.com";
    let cases: Vec<(&str, Seen, Seen)> = vec![
        (
            "prefix / keeps the path, Host becomes the service",
            f.get(www, "/some/where", &[]),
            seen(200, "blue", "/some/where", COLORS),
        ),
        (
            "prefix /chapter is rewritten to / by default",
            f.get(www, "/chapter/1", &[]),
            seen(200, "blue", "/1", COLORS),
        ),
        (
            "the bare prefix becomes /",
            f.get(www, "/chapter", &[]),
            seen(200, "blue", "/", COLORS),
        ),
        (
            "defaultPrefix and defaultTargetHostname DISABLED keep path and Host",
            f.get(www, "/keep/x", &[]),
            seen(200, "blue", "/keep/x", www),
        ),
        (
            "prefix value",
            f.get(www, "/old/x?y=1", &[]),
            seen(200, "blue", "/new/x", COLORS),
        ),
        (
            "exact path with an exact path rewrite",
            f.get(www, "/exact", &[]),
            seen(200, "blue", "/rewritten", COLORS),
        ),
        (
            "regex path, no rewrite",
            f.get(www, "/re/42", &[]),
            seen(200, "green", "/re/42", GREEN),
        ),
        (
            "regex must match the whole path",
            f.get(www, "/re/42x", &[]),
            seen(200, "blue", "/re/42x", COLORS),
        ),
        (
            "hostname exact, whatever the case and port",
            f.get("Green.Example.com:8443", "/h", &[]),
            seen(200, "green", "/h", GREEN),
        ),
        (
            "hostname suffix, Host kept",
            f.get("a.green.example.org", "/h", &[]),
            seen(200, "green", "/h", "a.green.example.org"),
        ),
        (
            "header",
            f.get(www, "/h", &[("x-canary", "yes")]),
            seen(200, "green", "/h", GREEN),
        ),
        (
            "header mismatch",
            f.get(www, "/h", &[("x-canary", "no")]),
            seen(200, "blue", "/h", COLORS),
        ),
        (
            "method POST (and the prefix rewritten to /)",
            through(f.http_port, "POST", www, "/m/x", &[]),
            seen(200, "green", "/x", GREEN),
        ),
        (
            "method GET is not POST",
            f.get(www, "/m/x", &[]),
            seen(200, "blue", "/m/x", COLORS),
        ),
        (
            "query parameter",
            f.get(www, "/q/x?v=2", &[]),
            seen(200, "green", "/x", GREEN),
        ),
        (
            "query parameter mismatch",
            f.get(www, "/q/x?v=3", &[]),
            seen(200, "blue", "/q/x", COLORS),
        ),
        (
            "port",
            f.get(www, "/port/x", &[]),
            seen(200, "green", "/x", GREEN),
        ),
        (
            "priority 0 beats priority 9",
            f.get(www, "/prio", &[]),
            seen(200, "green", "/prio", GREEN),
        ),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: got {got:?}, want {want:?}"))
        .collect();
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));

    // The internal target header never reaches the upstream, and a client cannot steer with it.
    let response = exchange_blocking(
        f.http_port,
        "GET",
        www,
        "/x",
        &[("x-weft-gateway-target", GREEN)],
    )
    .unwrap();
    assert_eq!(response.header("x-weft-app"), Some("blue"));

    // gRPC: service name and metadata match; the app sees the method and the service as
    // `:authority`.
    let channel = grpc::channel(f.grpc_port, "api.example.com");
    let answer = grpc::call(&channel, "/weft.Colors/Get", &[("x-tier", "gold")], None)
        .await
        .unwrap();
    assert_eq!(
        (
            answer.app.as_str(),
            answer.path.as_str(),
            answer.authority.as_str()
        ),
        ("rpc", "/weft.Colors/Get", RPC)
    );
    let missing = grpc::call(&channel, "/weft.Colors/Get", &[], None)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unimplemented, "{missing:?}");

    // The target service's router decides where the gateway's traffic goes: 100% blue, then
    // 100% green.
    f.api
        .update_route("colors", "main", RouteSpec::split(&[("green", 100)]))
        .await;
    wait_until(StdDuration::from_secs(20), || {
        f.get(www, "/chapter/2", &[]) == seen(200, "green", "/2", COLORS)
    });

    f.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_health_check_fails_while_envoy_drains_and_a_pool_limit_overflows_with_503() {
    let f = Fixture::new().await;
    f.gateway_route(
        "root",
        GatewayRouteSpec::http(HttpMatch::prefix("/"), COLORS),
    )
    .await;
    let www = "www.example.com";
    wait_until(StdDuration::from_secs(20), || {
        f.get(www, "/healthz", &[]).status == 200
    });
    // Pass-through: the health check goes through the gateway route to the mesh.
    assert_eq!(
        f.get(www, "/healthz", &[]),
        seen(200, "blue", "/healthz", COLORS)
    );
    // A gateway Envoy told to fail (as when draining) answers its health check 503 itself
    // while other requests still flow, so the load balancer takes it out first.
    let admin = f.gateway.admin_port;
    assert_eq!(
        request(admin, "POST", "127.0.0.1", "/healthcheck/fail", &[])
            .unwrap()
            .0,
        200
    );
    let failed = f.get(www, "/healthz", &[]);
    assert_eq!((failed.status, failed.app.as_str()), (503, ""));
    assert_eq!(f.get(www, "/other", &[]).status, 200);
    request(admin, "POST", "127.0.0.1", "/healthcheck/ok", &[]).unwrap();
    assert_eq!(f.get(www, "/healthz", &[]).status, 200);

    // Connection pool: one connection, one pending request into the mesh; the rest overflow.
    f.api
        .update_gateway("edge", gateway_spec(f.http_port, f.grpc_port, true))
        .await;
    wait_until(StdDuration::from_secs(20), || {
        f.gateway
            .admin("/config_dump?resource=dynamic_active_clusters")
            .is_some_and(|d| d.contains("\"max_connections\": 1"))
    });
    let port = f.http_port;
    let slow: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || through(port, "GET", www, "/delay/1500", &[])))
        .collect();
    let statuses: Vec<u16> = slow.into_iter().map(|t| t.join().unwrap().status).collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let overflow = statuses.iter().filter(|s| **s == 503).count();
    assert!(ok >= 1 && overflow >= 1, "{statuses:?}");
    assert_eq!(ok + overflow, statuses.len(), "{statuses:?}");
    assert_eq!(
        f.gateway
            .stat_sum("self_redirect.*upstream_rq_pending_overflow"),
        overflow as u64,
        "the overflow is the gateway listener's pool"
    );
    f.assert_no_rejections();
}
