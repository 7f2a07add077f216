//! End-to-end (issue 5): App Mesh's traffic features beyond HTTP/1.1 routing, with a real
//! `weft server`, real `weft agent`s each running a real Envoy 1.40 in explicit mode, and real
//! clients and servers on loopback — gRPC (tonic), HTTP/2 (hyper, prior knowledge), raw TCP
//! through `CONNECT` tunnels.
//!
//! Meshes are built with weft-test-support's spec builders and created through the official
//! AWS SDK, as in the other end-to-end tests; requests are raw only where the wire is the point
//! (HTTP/2 with prior knowledge, `CONNECT` tunnels).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mesh::{agent, free_port, request, sample_app, Agent, Proc};
use common::WeftServer;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use weft_test_support::grpc::{self, grpc_app};
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{
    ms, secs, AccessLog, ConnectionPool, GrpcMatch, HealthCheck, HttpMatch, Listener, MeshSpec,
    NodeSpec, Retry, RouteSpec, RouterSpec, ServiceSpec, ValueMatch,
};

const MESH: &str = "apps";

// ---- the mesh, through the AWS SDK ----

/// A control plane, its App Mesh API, and the Envoys and apps of one test.
struct Fixture {
    server: WeftServer,
    api: MeshApi,
    agents: Vec<Agent>,
    procs: Vec<Proc>,
}

impl Fixture {
    async fn new(mesh: MeshSpec) -> Fixture {
        let server = WeftServer::start();
        let api = MeshApi::create(&server.client(), MESH, mesh).await;
        Fixture {
            server,
            api,
            agents: Vec::new(),
            procs: Vec::new(),
        }
    }

    /// The virtual node `name` as `spec` (its listeners each on a free port), discovered by DNS
    /// at 127.0.0.1, with its own Envoy forwarding listener i to `app_ports[i]`. Returns the
    /// index of its agent.
    async fn upstream(&mut self, name: &str, spec: NodeSpec, app_ports: &[u16]) -> usize {
        let ports: Vec<(u16, u16)> = spec
            .listeners
            .iter()
            .zip(app_ports)
            .map(|(l, app)| (u16::try_from(l.port).unwrap(), *app))
            .collect();
        self.api.node(name, spec.dns("127.0.0.1")).await;
        let a = agent(&self.server.xds_addr, MESH, name, &ports, "delta");
        self.agents.push(a);
        self.agents.len() - 1
    }

    /// The client node `front` as `spec` (its backends, …), and its Envoy; returns its agent
    /// index.
    async fn front(&mut self, spec: NodeSpec) -> usize {
        self.api.node("front", spec).await;
        let a = agent(&self.server.xds_addr, MESH, "front", &[], "delta");
        self.agents.push(a);
        self.agents.len() - 1
    }

    /// A sample app (HTTP/1.1 and h2c) kept alive for the test; returns its port.
    fn app(&mut self, name: &str) -> u16 {
        let (proc, port) = sample_app(name);
        self.procs.push(proc);
        port
    }

    /// No Envoy of this test rejected any config.
    fn assert_no_rejections(&self) {
        for a in &self.agents {
            assert_eq!(a.stat_sum("update_rejected"), 0, "an Envoy NACKed config");
        }
    }
}

/// Polls the async `f` until it is true; panics after `timeout`.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within {timeout:?}: {what}");
}

/// An HTTP/1.1 request through `egress` (blocking, on a helper thread).
async fn http1(port: u16, host: &str, path: &str) -> (u16, String) {
    let (host, path) = (host.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || {
        request(port, "GET", &host, &path, &[]).unwrap_or((0, String::new()))
    })
    .await
    .unwrap()
}

// ---- gRPC: weft-test-support's tonic app and client ----

/// Which app answers `path` with `metadata`, or the gRPC error code.
async fn who(channel: &tonic::transport::Channel, path: &str, metadata: &[(&str, &str)]) -> String {
    match grpc::call(channel, path, metadata, None).await {
        Ok(answer) => {
            assert_eq!(answer.path, path, "the app saw another method");
            answer.app
        }
        Err(status) => format!("error {:?}", status.code()),
    }
}

const RPC: &str = "rpc.apps.local";

/// A node with one gRPC listener on a free port.
fn grpc_node() -> NodeSpec {
    NodeSpec::new().listener(Listener::grpc(free_port()))
}

/// Two gRPC nodes `alpha` and `beta` behind router `rpc` (grpc listener 50051) and the client
/// `front`; returns the fixture, front's agent index, and alpha's call counter.
async fn grpc_mesh(routes: Vec<(&str, RouteSpec)>) -> (Fixture, usize, Arc<AtomicU64>) {
    let mut f = Fixture::new(MeshSpec::new()).await;
    let (alpha, beta) = (grpc_app("alpha").await, grpc_app("beta").await);
    f.upstream("alpha", grpc_node(), &[alpha.port]).await;
    f.upstream("beta", grpc_node(), &[beta.port]).await;
    f.api
        .router("rpc", RouterSpec::new().listener(50051, "grpc"))
        .await;
    for (name, spec) in routes {
        f.api.route("rpc", name, spec).await;
    }
    f.api.service(RPC, ServiceSpec::by_router("rpc")).await;
    let front = f.front(NodeSpec::client(&[RPC])).await;
    (f, front, alpha.calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_routed_by_service_method_and_metadata_through_the_egress_port() {
    let grpc =
        |priority: i32, m: GrpcMatch, to: &str| RouteSpec::grpc(m).priority(priority).to(to, 1);
    let colors = || GrpcMatch::service("weft.Colors");
    let (f, front, _) = grpc_mesh(vec![
        ("by-method", grpc(1, colors().method("Beta"), "beta")),
        (
            "by-exact-metadata",
            grpc(
                2,
                colors().metadata("x-tier", ValueMatch::exact("gold")),
                "beta",
            ),
        ),
        (
            "by-range",
            grpc(
                3,
                colors().metadata("x-n", ValueMatch::range(100, 200)),
                "beta",
            ),
        ),
        (
            "by-prefix-suffix-regex",
            grpc(
                4,
                colors()
                    .metadata("x-region", ValueMatch::prefix("eu-"))
                    .metadata("x-zone", ValueMatch::suffix("-b"))
                    .metadata("x-id", ValueMatch::regex("^[0-9a-f]{4}$")),
                "beta",
            ),
        ),
        (
            "inverted",
            grpc(
                5,
                GrpcMatch::service("weft.Inverted")
                    .metadata_not("x-env", ValueMatch::exact("prod")),
                "beta",
            ),
        ),
        ("service-default", grpc(10, colors(), "alpha")),
        (
            "inverted-default",
            grpc(11, GrpcMatch::service("weft.Inverted"), "alpha"),
        ),
    ])
    .await;
    let channel = grpc::channel(f.agents[front].egress_port, &format!("{RPC}:50051"));
    eventually(Duration::from_secs(20), "gRPC reaches alpha", || async {
        who(&channel, "/weft.Colors/Alpha", &[]).await == "alpha"
    })
    .await;
    eventually(Duration::from_secs(20), "every route is served", || async {
        who(&channel, "/weft.Inverted/Call", &[("x-env", "dev")]).await == "beta"
    })
    .await;

    assert_eq!(who(&channel, "/weft.Colors/Beta", &[]).await, "beta");
    assert_eq!(
        who(&channel, "/weft.Colors/Alpha", &[("x-tier", "gold")]).await,
        "beta"
    );
    assert_eq!(
        who(&channel, "/weft.Colors/Alpha", &[("x-tier", "silver")]).await,
        "alpha"
    );
    assert_eq!(
        who(&channel, "/weft.Colors/Alpha", &[("x-n", "150")]).await,
        "beta"
    );
    assert_eq!(
        who(&channel, "/weft.Colors/Alpha", &[("x-n", "200")]).await,
        "alpha",
        "range end is exclusive"
    );
    let all = [("x-region", "eu-west"), ("x-zone", "1-b"), ("x-id", "beef")];
    assert_eq!(who(&channel, "/weft.Colors/Alpha", &all).await, "beta");
    let wrong_id = [
        ("x-region", "eu-west"),
        ("x-zone", "1-b"),
        ("x-id", "beefy"),
    ];
    assert_eq!(
        who(&channel, "/weft.Colors/Alpha", &wrong_id).await,
        "alpha"
    );
    // Inverted: everything but x-env=prod goes to beta.
    assert_eq!(
        who(&channel, "/weft.Inverted/Call", &[("x-env", "dev")]).await,
        "beta"
    );
    assert_eq!(
        who(&channel, "/weft.Inverted/Call", &[("x-env", "prod")]).await,
        "alpha"
    );
    // A service no route names is not routed: Envoy answers UNIMPLEMENTED (HTTP 404).
    let other = who(&channel, "/weft.Unknown/Call", &[]).await;
    assert!(other.starts_with("error"), "{other}");
    f.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried_by_policy_and_a_route_timeout_cuts_a_slow_call() {
    let to_alpha = |service: &str, priority: i32| {
        RouteSpec::grpc(GrpcMatch::service(service))
            .priority(priority)
            .to("alpha", 1)
    };
    let (f, front, alpha_calls) = grpc_mesh(vec![
        (
            "retried",
            to_alpha("weft.Flaky", 1).retry(Retry::new(3, secs(5)).grpc_events(&["unavailable"])),
        ),
        (
            "not-retried",
            to_alpha("weft.Fragile", 2)
                .retry(Retry::new(3, secs(5)).grpc_events(&["resource-exhausted"])),
        ),
        (
            "deadline",
            to_alpha("weft.Slow", 3).per_request_timeout(ms(500)),
        ),
    ])
    .await;
    let channel = grpc::channel(f.agents[front].egress_port, &format!("{RPC}:50051"));
    eventually(Duration::from_secs(20), "all routes served", || async {
        who(&channel, "/weft.Slow/Call", &[]).await == "alpha"
            && who(&channel, "/weft.Fragile/Call", &[]).await == "alpha"
    })
    .await;

    // Every 2nd call fails UNAVAILABLE at the app; the route retries it: all 20 succeed.
    let before = alpha_calls.load(Ordering::SeqCst);
    for _ in 0..20 {
        let r = grpc::call(&channel, "/weft.Flaky/Call", &[("x-fail-every", "2")], None).await;
        assert_eq!(
            r.map(|a| a.app).map_err(|s| s.code()),
            Ok("alpha".to_string())
        );
    }
    let made = alpha_calls.load(Ordering::SeqCst) - before;
    assert!(made > 20, "the app saw {made} calls: retries happened");
    // The same app behind a route that does not retry UNAVAILABLE: half the calls fail.
    let mut failed = 0;
    for _ in 0..20 {
        match grpc::call(
            &channel,
            "/weft.Fragile/Call",
            &[("x-fail-every", "2")],
            None,
        )
        .await
        {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                failed += 1;
            }
        }
    }
    assert!((8..=12).contains(&failed), "{failed} of 20 failed");

    // The route's 500 ms per-request timeout cuts a 5 s call; a fast call still succeeds.
    let started = Instant::now();
    let slow = grpc::call(&channel, "/weft.Slow/Call", &[("x-delay-ms", "5000")], None).await;
    let took = started.elapsed();
    assert!(slow.is_err(), "{slow:?}");
    assert!(took < Duration::from_secs(3), "cut after {took:?}");
    assert!(took >= Duration::from_millis(400), "cut after {took:?}");
    assert!(grpc::call(&channel, "/weft.Slow/Call", &[], None)
        .await
        .is_ok());
    // The client's own deadline (sent as `grpc-timeout`) ends the call early as well.
    let started = Instant::now();
    let short = grpc::call(
        &channel,
        "/weft.Flaky/Call",
        &[("x-delay-ms", "3000")],
        Some(Duration::from_millis(200)),
    )
    .await;
    let code = short.map(|a| a.app).map_err(|s| s.code());
    assert!(
        matches!(
            code,
            Err(tonic::Code::DeadlineExceeded | tonic::Code::Cancelled)
        ),
        "{code:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(f.agents[front].stat_sum("upstream_rq_retry") > 0);
    f.assert_no_rejections();
}

// ---- HTTP/2 ----

/// One HTTP/2 (prior knowledge, h2c) request to `port` with `:authority` `authority`.
async fn h2_get(
    port: u16,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, http::Version, String)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let mut req = http::Request::builder().uri(format!("http://{authority}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .ok()?;
    let (status, version) = (response.status().as_u16(), response.version());
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        version,
        String::from_utf8_lossy(&body).trim().to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_with_prior_knowledge_is_routed_by_authority_and_headers() {
    let mut f = Fixture::new(MeshSpec::new()).await;
    let (red, blue) = (f.app("red"), f.app("blue"));
    let h2_node = || NodeSpec::new().listener(Listener::http2(free_port()));
    f.upstream("red", h2_node(), &[red]).await;
    f.upstream("blue", h2_node(), &[blue]).await;
    f.api
        .router("colors", RouterSpec::new().listener(9090, "http2"))
        .await;
    f.api
        .route(
            "colors",
            "blue-by-header",
            RouteSpec::http2(HttpMatch::prefix("/").header("x-color", ValueMatch::exact("blue")))
                .priority(1)
                .to("blue", 1),
        )
        .await;
    f.api
        .route(
            "colors",
            "default",
            RouteSpec::http2(HttpMatch::prefix("/"))
                .priority(2)
                .to("red", 1),
        )
        .await;
    f.api
        .service("h2.apps.local", ServiceSpec::by_router("colors"))
        .await;
    let front = f.front(NodeSpec::client(&["h2.apps.local"])).await;
    let egress = f.agents[front].egress_port;
    eventually(Duration::from_secs(20), "HTTP/2 reaches red", || async {
        h2_get(egress, "h2.apps.local:9090", "/", &[])
            .await
            .is_some_and(|(s, _, b)| s == 200 && b == "red")
    })
    .await;
    let (status, version, body) = h2_get(egress, "h2.apps.local:9090", "/", &[("x-color", "blue")])
        .await
        .unwrap();
    assert_eq!(
        (status, version, body.as_str()),
        (200, http::Version::HTTP_2, "blue")
    );
    let (status, _, _) = h2_get(egress, "elsewhere.local:9090", "/", &[])
        .await
        .unwrap();
    assert_eq!(
        status, 404,
        "an authority outside the backends is not routed"
    );
    // The ingress side spoke HTTP/2 to the app too (the http2 listener's cluster).
    assert!(f.agents[1].stat_sum("upstream_cx_http2_total") > 0);
    f.assert_no_rejections();
}

// ---- TCP ----

/// A TCP echo server answering each line with `<name> <line>`; returns its port.
async fn tcp_echo(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if write
                        .write_all(format!("{name} {line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Opens a `CONNECT <authority>` tunnel through the Envoy egress at `port` (HTTP/1.1);
/// returns the stream once Envoy answered 200, or the status it answered.
async fn tunnel(port: u16, authority: &str) -> Result<BufReader<TcpStream>, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 || line == "\r\n" {
            break;
        }
    }
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(reader)
    } else {
        Err(status_line)
    }
}

/// One line through a tunnel: which echo server answered.
async fn echo_once(port: u16, authority: &str) -> Result<String, String> {
    let mut t = tunnel(port, authority).await?;
    t.get_mut()
        .write_all(b"ping\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), t.read_line(&mut line))
        .await
        .map_err(|_| "no echo".to_string())?
        .map_err(|e| e.to_string())?;
    line.trim()
        .strip_suffix(" ping")
        .map(str::to_string)
        .ok_or(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_echo_service_is_split_75_25_through_connect_tunnels_and_idle_tunnels_close() {
    let mut f = Fixture::new(MeshSpec::new()).await;
    let (one, two) = (tcp_echo("one").await, tcp_echo("two").await);
    let tcp_node = || NodeSpec::new().listener(Listener::tcp(free_port()));
    f.upstream("one", tcp_node(), &[one]).await;
    f.upstream("two", tcp_node(), &[two]).await;
    f.api
        .router("echo", RouterSpec::new().listener(7000, "tcp"))
        .await;
    f.api
        .route(
            "echo",
            "split",
            RouteSpec::tcp()
                .to("one", 75)
                .to("two", 25)
                .idle_timeout(secs(1)),
        )
        .await;
    f.api
        .service("echo.apps.local", ServiceSpec::by_router("echo"))
        .await;
    let front = f.front(NodeSpec::client(&["echo.apps.local"])).await;
    let egress = f.agents[front].egress_port;
    eventually(
        Duration::from_secs(20),
        "a tunnel reaches an echo server",
        || async { echo_once(egress, "echo.apps.local:7000").await.is_ok() },
    )
    .await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let who = echo_once(egress, "echo.apps.local:7000").await.unwrap();
        *counts.entry(who).or_default() += 1;
    }
    let one = *counts.get("one").unwrap_or(&0) as f64;
    // 75% of 400: σ ≈ 8.7, so ±40 is more than 4σ.
    assert_eq!(
        one + *counts.get("two").unwrap_or(&0) as f64,
        400.0,
        "{counts:?}"
    );
    assert!((one - 300.0).abs() <= 40.0, "75/25 gave {counts:?}");

    // The route's 1 s idle timeout closes a silent tunnel.
    let mut t = tunnel(egress, "echo.apps.local:7000").await.unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), t.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle tunnel stayed open");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // A port the service does not have is refused.
    assert!(tunnel(egress, "echo.apps.local:7001").await.is_err());
    f.assert_no_rejections();
}

// ---- several listeners ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_two_listeners_is_reached_by_port_through_routes_matched_by_port() {
    let mut f = Fixture::new(MeshSpec::new()).await;
    let (web_app, admin_app) = (f.app("web"), f.app("admin"));
    let (p_web, p_admin) = (free_port(), free_port());
    f.upstream(
        "multi",
        NodeSpec::new()
            .listener(Listener::http(p_web))
            .listener(Listener::http(p_admin)),
        &[web_app, admin_app],
    )
    .await;
    f.api
        .router(
            "multi",
            RouterSpec::new()
                .listener(8080, "http")
                .listener(8081, "http"),
        )
        .await;
    let to_port = |port: u16, node_port: u16| {
        RouteSpec::http(HttpMatch::prefix("/").port(port)).to_port("multi", node_port, 1)
    };
    f.api.route("multi", "web", to_port(8080, p_web)).await;
    f.api.route("multi", "admin", to_port(8081, p_admin)).await;
    f.api
        .service("multi.apps.local", ServiceSpec::by_router("multi"))
        .await;
    let front = f.front(NodeSpec::client(&["multi.apps.local"])).await;
    let egress = f.agents[front].egress_port;
    eventually(Duration::from_secs(20), "both ports routed", || async {
        http1(egress, "multi.apps.local:8081", "/").await == (200, "admin\n".to_string())
    })
    .await;
    assert_eq!(http1(egress, "multi.apps.local:8080", "/").await.1, "web\n");
    assert_eq!(
        http1(egress, "multi.apps.local", "/").await.1,
        "web\n",
        "no port: the lowest"
    );
    assert_eq!(
        http1(egress, "multi.apps.local:8081", "/").await.1,
        "admin\n"
    );
    f.assert_no_rejections();
}

// ---- listener resilience ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_pool_of_one_turns_concurrent_requests_beyond_it_into_503() {
    let mut f = Fixture::new(MeshSpec::new()).await;
    let app = f.app("pooled");
    let listener = Listener::http(free_port()).connection_pool(ConnectionPool::http(1, 1));
    let pooled = f
        .upstream("pooled", NodeSpec::new().listener(listener), &[app])
        .await;
    f.api
        .service("pooled.apps.local", ServiceSpec::by_node("pooled"))
        .await;
    let front = f.front(NodeSpec::client(&["pooled.apps.local"])).await;
    let egress = f.agents[front].egress_port;
    eventually(Duration::from_secs(20), "pooled reachable", || async {
        http1(egress, "pooled.apps.local", "/").await.0 == 200
    })
    .await;
    // 8 slow requests at once: one in flight, one pending, the rest overflow.
    let calls: Vec<_> = (0..8)
        .map(|_| tokio::spawn(http1(egress, "pooled.apps.local", "/delay/1500")))
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap().0);
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let overflow = statuses.iter().filter(|s| **s == 503).count();
    assert!(ok >= 1 && overflow >= 1, "statuses {statuses:?}");
    assert!(
        f.agents[pooled].stat_sum("upstream_rq_pending_overflow") > 0,
        "the ingress cluster's circuit breaker overflowed"
    );
    f.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_its_health_check_stops_receiving_traffic_until_it_recovers() {
    let mut f = Fixture::new(MeshSpec::new()).await;
    let app = f.app("checked");
    // App Mesh's minimums: 5 s interval, 2 s timeout, thresholds of 2.
    let listener = Listener::http(free_port()).health_check(HealthCheck::http("/health"));
    let checked = f
        .upstream("checked", NodeSpec::new().listener(listener), &[app])
        .await;
    f.api
        .service("checked.apps.local", ServiceSpec::by_node("checked"))
        .await;
    let front = f.front(NodeSpec::client(&["checked.apps.local"])).await;
    let egress = f.agents[front].egress_port;
    eventually(Duration::from_secs(30), "healthy app reachable", || async {
        http1(egress, "checked.apps.local", "/").await == (200, "checked\n".to_string())
    })
    .await;
    // The app starts failing its health check (directly, not through the mesh).
    assert_eq!(http1(app, "127.0.0.1", "/health-fail").await.0, 200);
    tokio::time::sleep(Duration::from_secs(12)).await;
    eprintln!(
        "{}",
        f.agents[checked]
            .admin("/clusters")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("cds_ingress"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!("{:?}", http1(egress, "checked.apps.local", "/").await);
    eprintln!("{:?}", http1(app, "127.0.0.1", "/health").await);
    eventually(
        Duration::from_secs(30),
        "unhealthy app gets no traffic",
        || async { http1(egress, "checked.apps.local", "/").await.0 == 503 },
    )
    .await;
    let (status, body) = http1(egress, "checked.apps.local", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains("checked"), "the app answered: {body}");
    assert!(f.agents[checked].stat_sum("health_check.failure") >= 2);
    // Recovery: traffic comes back after two passing checks.
    assert_eq!(http1(app, "127.0.0.1", "/health-recover").await.0, 200);
    eventually(
        Duration::from_secs(30),
        "recovered app gets traffic",
        || async {
            http1(egress, "checked.apps.local", "/").await == (200, "checked\n".to_string())
        },
    )
    .await;
    f.assert_no_rejections();
}

// ---- egress filter ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_all_refuses_a_destination_outside_the_mesh_and_allow_all_reaches_it() {
    let mut f = Fixture::new(MeshSpec::drop_all()).await;
    let inside = f.app("inside");
    let outside = f.app("outside");
    f.upstream(
        "inside",
        NodeSpec::new().listener(Listener::http(free_port())),
        &[inside],
    )
    .await;
    f.api
        .service("inside.apps.local", ServiceSpec::by_node("inside"))
        .await;
    let front = f.front(NodeSpec::client(&["inside.apps.local"])).await;
    let egress = f.agents[front].egress_port;
    let outside_host = format!("127.0.0.1:{outside}");
    eventually(Duration::from_secs(20), "backend reachable", || async {
        http1(egress, "inside.apps.local", "/").await.0 == 200
    })
    .await;
    assert_eq!(http1(egress, &outside_host, "/").await.0, 404, "DROP_ALL");

    f.api.update_mesh(MeshSpec::allow_all()).await;
    eventually(
        Duration::from_secs(20),
        "ALLOW_ALL reaches outside",
        || async { http1(egress, &outside_host, "/").await == (200, "outside\n".to_string()) },
    )
    .await;
    // As an HTTP proxy (absolute URI), the way `http_proxy=` clients send.
    let (status, body) = http1(egress, &outside_host, &format!("http://{outside_host}/")).await;
    assert_eq!((status, body.as_str()), (200, "outside\n"));
    // The mesh's own backends still go through the mesh.
    assert_eq!(http1(egress, "inside.apps.local", "/").await.1, "inside\n");

    f.api.update_mesh(MeshSpec::drop_all()).await;
    eventually(Duration::from_secs(20), "DROP_ALL again", || async {
        http1(egress, &outside_host, "/").await.0 == 404
    })
    .await;
    f.assert_no_rejections();
}

// ---- access logs ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_logs_are_written_per_request_in_text_json_and_default_formats() {
    let mut f = Fixture::new(MeshSpec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let (text_log, json_log, default_log) = (
        dir.path().join("front.log"),
        dir.path().join("logged.json.log"),
        dir.path().join("plain.log"),
    );
    let app = f.app("logged");
    let plain_app = f.app("plain");
    let http_node = || NodeSpec::new().listener(Listener::http(free_port()));
    f.upstream(
        "logged",
        http_node().access_log(AccessLog::file(&json_log).json_fields(&[
            ("status", "%RESPONSE_CODE%"),
            ("path", "%REQ(:PATH)%"),
            ("mesh", "weft"),
        ])),
        &[app],
    )
    .await;
    f.upstream(
        "plain",
        http_node().access_log(AccessLog::file(&default_log)),
        &[plain_app],
    )
    .await;
    f.api
        .service("logged.apps.local", ServiceSpec::by_node("logged"))
        .await;
    f.api
        .service("plain.apps.local", ServiceSpec::by_node("plain"))
        .await;
    let front = f
        .front(
            NodeSpec::client(&["logged.apps.local", "plain.apps.local"]).access_log(
                AccessLog::file(&text_log)
                    .text("front %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%\n"),
            ),
        )
        .await;
    let egress = f.agents[front].egress_port;
    eventually(Duration::from_secs(20), "both reachable", || async {
        http1(egress, "logged.apps.local", "/warmup").await.0 == 200
            && http1(egress, "plain.apps.local", "/warmup").await.0 == 200
    })
    .await;
    let lines = |path: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    // Only the lines of the requests below count (warm-up lines may still be in flight).
    let measured = |path: &std::path::Path| -> Vec<String> {
        lines(path)
            .into_iter()
            .filter(|l| l.contains("/r") || l.contains("/status/418"))
            .collect()
    };
    for i in 0..5 {
        assert_eq!(
            http1(egress, "logged.apps.local", &format!("/r{i}"))
                .await
                .0,
            200
        );
    }
    assert_eq!(
        http1(egress, "plain.apps.local", "/status/418").await.0,
        418
    );
    // The agent has Envoy flush access logs every second (its default is 10 s).
    eventually(Duration::from_secs(10), "all lines written", || async {
        measured(&text_log).len() >= 6
            && measured(&json_log).len() >= 5
            && !measured(&default_log).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let new_front = measured(&text_log);
    assert_eq!(new_front.len(), 6, "one line per request: {new_front:?}");
    for (i, line) in new_front.iter().take(5).enumerate() {
        assert_eq!(line, &format!("front GET /r{i} 200"));
    }
    assert_eq!(new_front[5], "front GET /status/418 418");
    let new_json = measured(&json_log);
    assert_eq!(new_json.len(), 5, "{new_json:?}");
    for (i, line) in new_json.iter().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["path"], format!("/r{i}"));
        assert_eq!(v["status"], 200);
        assert_eq!(v["mesh"], "weft");
    }
    // Envoy's default format: `[time] "METHOD PATH PROTOCOL" CODE ...`.
    let default_lines = measured(&default_log);
    assert_eq!(default_lines.len(), 1, "{default_lines:?}");
    let last = &default_lines[0];
    assert!(last.contains("\"GET /status/418 HTTP/1.1\" 418"), "{last}");
    f.assert_no_rejections();
}
