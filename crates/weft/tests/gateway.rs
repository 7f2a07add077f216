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

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::pin::Pin;
use std::time::Duration as StdDuration;

use aws_sdk_appmesh::types::{
    DefaultGatewayRouteRewrite, DnsServiceDiscovery, GatewayRouteHostnameMatch,
    GatewayRouteHostnameRewrite, GatewayRouteSpec, GatewayRouteTarget, GatewayRouteVirtualService,
    GrpcGatewayRoute, GrpcGatewayRouteAction, GrpcGatewayRouteMatch, GrpcGatewayRouteMetadata,
    GrpcMetadataMatchMethod, HeaderMatchMethod, HttpGatewayRoute, HttpGatewayRouteAction,
    HttpGatewayRouteHeader, HttpGatewayRouteMatch, HttpGatewayRoutePathRewrite,
    HttpGatewayRoutePrefixRewrite, HttpGatewayRouteRewrite, HttpMethod, HttpPathMatch,
    HttpQueryParameter, HttpRoute, HttpRouteAction, HttpRouteMatch, Listener, PortMapping,
    PortProtocol, QueryParameterMatch, RouteSpec, ServiceDiscovery, VirtualGatewayAccessLog,
    VirtualGatewayConnectionPool, VirtualGatewayFileAccessLog, VirtualGatewayHealthCheckPolicy,
    VirtualGatewayHttpConnectionPool, VirtualGatewayListener, VirtualGatewayLogging,
    VirtualGatewayPortMapping, VirtualGatewayPortProtocol, VirtualGatewaySpec,
    VirtualNodeServiceProvider, VirtualNodeSpec, VirtualRouterServiceProvider,
    VirtualServiceProvider, VirtualServiceSpec, WeightedTarget,
};
use aws_sdk_appmesh::Client;
use common::mesh::{agent, agent_with_id, free_port, request, sample_app, wait_until, Agent, Proc};
use common::{router_spec, WeftServer};
use hyper_util::rt::{TokioExecutor, TokioIo};

const MESH: &str = "apps";
const COLORS: &str = "colors.apps.local";
const GREEN: &str = "green.apps.local";
const RPC: &str = "rpc.apps.local";

// ---- what the upstream saw ----

/// One HTTP/1.1 exchange on a fresh connection: status, lower-cased response headers, body.
fn exchange(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, HashMap<String, String>, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(StdDuration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("content-length: 0\r\n\r\n");
    conn.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = String::new();
    reader.read_to_string(&mut body)?;
    Ok((status, headers, body))
}

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
    match exchange(port, method, host, path, headers) {
        Ok((status, h, _)) => {
            let get = |k: &str| h.get(k).cloned().unwrap_or_default();
            Seen {
                status,
                app: get("x-weft-app"),
                path: get("x-weft-path"),
                host: get("x-weft-host"),
            }
        }
        Err(e) => seen(0, &e.to_string(), "", ""),
    }
}

// ---- gRPC: a tonic server and client with hand-written prost messages (no protoc) ----

#[derive(Clone, PartialEq, prost::Message)]
struct Ask {
    #[prost(string, tag = "1")]
    text: String,
}

/// Which app answered, and the method path and `:authority` it saw.
#[derive(Clone, PartialEq, prost::Message)]
struct Answer {
    #[prost(string, tag = "1")]
    app: String,
    #[prost(string, tag = "2")]
    path: String,
    #[prost(string, tag = "3")]
    authority: String,
}

struct Unary(Answer);

impl tonic::server::UnaryService<Ask> for Unary {
    type Response = Answer;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<Answer>, tonic::Status>> + Send>>;

    fn call(&mut self, _request: tonic::Request<Ask>) -> Self::Future {
        let answer = self.0.clone();
        Box::pin(async move { Ok(tonic::Response::new(answer)) })
    }
}

/// A gRPC server (h2c) answering every method with `name`; returns its port.
async fn grpc_app(name: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async {
                        let answer = Answer {
                            app: name.to_string(),
                            path: req.uri().path().to_string(),
                            authority: req
                                .uri()
                                .authority()
                                .map(|a| a.to_string())
                                .unwrap_or_default(),
                        };
                        let codec = tonic_prost::ProstCodec::<Answer, Ask>::default();
                        let mut grpc = tonic::server::Grpc::new(codec);
                        Ok::<_, Infallible>(grpc.unary(Unary(answer), req).await)
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

/// One unary call to `path` through the gateway's gRPC listener, with `:authority` `authority`.
async fn grpc_call(
    port: u16,
    authority: &str,
    path: &'static str,
    metadata: &[(&'static str, &str)],
) -> Result<Answer, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect_lazy();
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(Ask {
        text: "hello".to_string(),
    });
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    client
        .unary(
            req,
            http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::<Ask, Answer>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

// ---- the mesh, through the AWS SDK ----

fn node_spec(port: u16, protocol: PortProtocol) -> VirtualNodeSpec {
    VirtualNodeSpec::builder()
        .listeners(
            Listener::builder()
                .port_mapping(
                    PortMapping::builder()
                        .port(i32::from(port))
                        .protocol(protocol)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .service_discovery(ServiceDiscovery::Dns(
            DnsServiceDiscovery::builder()
                .hostname("127.0.0.1")
                .build()
                .unwrap(),
        ))
        .build()
}

fn router_route(node: &str) -> RouteSpec {
    RouteSpec::builder()
        .http_route(
            HttpRoute::builder()
                .r#match(HttpRouteMatch::builder().prefix("/").build())
                .action(
                    HttpRouteAction::builder()
                        .weighted_targets(
                            WeightedTarget::builder()
                                .virtual_node(node)
                                .weight(100)
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .build()
}

fn target(service: &str) -> GatewayRouteTarget {
    GatewayRouteTarget::builder()
        .virtual_service(
            GatewayRouteVirtualService::builder()
                .virtual_service_name(service)
                .build()
                .unwrap(),
        )
        .build()
}

/// An HTTP gateway route to `service`.
fn http(
    priority: Option<i32>,
    m: HttpGatewayRouteMatch,
    service: &str,
    rewrite: Option<HttpGatewayRouteRewrite>,
) -> GatewayRouteSpec {
    let mut action = HttpGatewayRouteAction::builder().target(target(service));
    if let Some(rewrite) = rewrite {
        action = action.rewrite(rewrite);
    }
    GatewayRouteSpec::builder()
        .set_priority(priority)
        .http_route(
            HttpGatewayRoute::builder()
                .r#match(m)
                .action(action.build())
                .build(),
        )
        .build()
}

fn prefix(p: &str) -> aws_sdk_appmesh::types::builders::HttpGatewayRouteMatchBuilder {
    HttpGatewayRouteMatch::builder().prefix(p)
}

fn gateway_spec(http_port: u16, grpc_port: u16, pool: bool) -> VirtualGatewaySpec {
    let mut http_listener = VirtualGatewayListener::builder()
        .port_mapping(
            VirtualGatewayPortMapping::builder()
                .port(i32::from(http_port))
                .protocol(VirtualGatewayPortProtocol::Http)
                .build()
                .unwrap(),
        )
        .health_check(
            VirtualGatewayHealthCheckPolicy::builder()
                .protocol(VirtualGatewayPortProtocol::Http)
                .path("/healthz")
                .port(i32::from(http_port))
                .healthy_threshold(2)
                .unhealthy_threshold(2)
                .interval_millis(5000)
                .timeout_millis(2000)
                .build()
                .unwrap(),
        );
    if pool {
        http_listener = http_listener.connection_pool(VirtualGatewayConnectionPool::Http(
            VirtualGatewayHttpConnectionPool::builder()
                .max_connections(1)
                .max_pending_requests(1)
                .build()
                .unwrap(),
        ));
    }
    VirtualGatewaySpec::builder()
        .listeners(http_listener.build())
        .listeners(
            VirtualGatewayListener::builder()
                .port_mapping(
                    VirtualGatewayPortMapping::builder()
                        .port(i32::from(grpc_port))
                        .protocol(VirtualGatewayPortProtocol::Grpc)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .logging(
            VirtualGatewayLogging::builder()
                .access_log(VirtualGatewayAccessLog::File(
                    VirtualGatewayFileAccessLog::builder()
                        .path("/dev/null")
                        .build()
                        .unwrap(),
                ))
                .build(),
        )
        .build()
        .unwrap()
}

struct Fixture {
    _server: WeftServer,
    c: Client,
    gateway: Agent,
    nodes: Vec<Agent>,
    _apps: Vec<Proc>,
    http_port: u16,
    grpc_port: u16,
}

impl Fixture {
    async fn new() -> Fixture {
        let server = WeftServer::start();
        let c = server.client();
        c.create_mesh().mesh_name(MESH).send().await.unwrap();
        let mut nodes = Vec::new();
        let mut apps = Vec::new();
        for name in ["blue", "green"] {
            let (app, app_port) = sample_app(name);
            let port = free_port();
            c.create_virtual_node()
                .mesh_name(MESH)
                .virtual_node_name(name)
                .spec(node_spec(port, PortProtocol::Http))
                .send()
                .await
                .unwrap();
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
        c.create_virtual_node()
            .mesh_name(MESH)
            .virtual_node_name("rpc")
            .spec(node_spec(rpc_port, PortProtocol::Grpc))
            .send()
            .await
            .unwrap();
        nodes.push(agent(
            &server.xds_addr,
            MESH,
            "rpc",
            &[(rpc_port, rpc_app)],
            "delta",
        ));
        c.create_virtual_router()
            .mesh_name(MESH)
            .virtual_router_name("colors")
            .spec(router_spec(8080, PortProtocol::Http))
            .send()
            .await
            .unwrap();
        c.create_route()
            .mesh_name(MESH)
            .virtual_router_name("colors")
            .route_name("main")
            .spec(router_route("blue"))
            .send()
            .await
            .unwrap();
        let services = [
            (
                COLORS,
                VirtualServiceProvider::VirtualRouter(
                    VirtualRouterServiceProvider::builder()
                        .virtual_router_name("colors")
                        .build()
                        .unwrap(),
                ),
            ),
            (
                GREEN,
                VirtualServiceProvider::VirtualNode(
                    VirtualNodeServiceProvider::builder()
                        .virtual_node_name("green")
                        .build()
                        .unwrap(),
                ),
            ),
            (
                RPC,
                VirtualServiceProvider::VirtualNode(
                    VirtualNodeServiceProvider::builder()
                        .virtual_node_name("rpc")
                        .build()
                        .unwrap(),
                ),
            ),
        ];
        for (name, provider) in services {
            c.create_virtual_service()
                .mesh_name(MESH)
                .virtual_service_name(name)
                .spec(VirtualServiceSpec::builder().provider(provider).build())
                .send()
                .await
                .unwrap();
        }
        let (http_port, grpc_port) = (free_port(), free_port());
        c.create_virtual_gateway()
            .mesh_name(MESH)
            .virtual_gateway_name("edge")
            .spec(gateway_spec(http_port, grpc_port, false))
            .send()
            .await
            .unwrap();
        let gateway = agent_with_id(
            &server.xds_addr,
            &format!("mesh/{MESH}/virtualGateway/edge"),
            &[],
            "delta",
        );
        Fixture {
            _server: server,
            c,
            gateway,
            nodes,
            _apps: apps,
            http_port,
            grpc_port,
        }
    }

    async fn gateway_route(&self, name: &str, spec: GatewayRouteSpec) {
        self.c
            .create_gateway_route()
            .mesh_name(MESH)
            .virtual_gateway_name("edge")
            .gateway_route_name(name)
            .spec(spec)
            .send()
            .await
            .unwrap();
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

fn rewrite_prefix(p: HttpGatewayRoutePrefixRewrite) -> Option<HttpGatewayRouteRewrite> {
    Some(HttpGatewayRouteRewrite::builder().prefix(p).build())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_routes_by_every_match_and_applies_every_rewrite_as_the_upstream_sees_it() {
    let f = Fixture::new().await;
    let keep_host = GatewayRouteHostnameRewrite::builder()
        .default_target_hostname(DefaultGatewayRouteRewrite::Disabled)
        .build();
    let routes = [
        ("root", http(None, prefix("/").build(), COLORS, None)),
        (
            "chapter",
            http(None, prefix("/chapter").build(), COLORS, None),
        ),
        (
            "keep",
            http(
                Some(10),
                prefix("/keep").build(),
                COLORS,
                Some(
                    HttpGatewayRouteRewrite::builder()
                        .prefix(
                            HttpGatewayRoutePrefixRewrite::builder()
                                .default_prefix(DefaultGatewayRouteRewrite::Disabled)
                                .build(),
                        )
                        .hostname(keep_host.clone())
                        .build(),
                ),
            ),
        ),
        (
            "value",
            http(
                None,
                prefix("/old").build(),
                COLORS,
                rewrite_prefix(
                    HttpGatewayRoutePrefixRewrite::builder()
                        .value("/new")
                        .build(),
                ),
            ),
        ),
        (
            "exact",
            http(
                None,
                HttpGatewayRouteMatch::builder()
                    .path(HttpPathMatch::builder().exact("/exact").build())
                    .build(),
                COLORS,
                Some(
                    HttpGatewayRouteRewrite::builder()
                        .path(
                            HttpGatewayRoutePathRewrite::builder()
                                .exact("/rewritten")
                                .build(),
                        )
                        .build(),
                ),
            ),
        ),
        (
            "regex",
            http(
                None,
                HttpGatewayRouteMatch::builder()
                    .path(HttpPathMatch::builder().regex("/re/[0-9]+").build())
                    .build(),
                GREEN,
                None,
            ),
        ),
        (
            "host-exact",
            http(
                Some(1),
                prefix("/")
                    .hostname(
                        GatewayRouteHostnameMatch::builder()
                            .exact("green.example.com")
                            .build(),
                    )
                    .build(),
                GREEN,
                None,
            ),
        ),
        (
            "host-suffix",
            http(
                Some(1),
                prefix("/")
                    .hostname(
                        GatewayRouteHostnameMatch::builder()
                            .suffix(".green.example.org")
                            .build(),
                    )
                    .build(),
                GREEN,
                Some(
                    HttpGatewayRouteRewrite::builder()
                        .hostname(keep_host)
                        .build(),
                ),
            ),
        ),
        (
            "header",
            http(
                Some(2),
                prefix("/")
                    .headers(
                        HttpGatewayRouteHeader::builder()
                            .name("x-canary")
                            .r#match(HeaderMatchMethod::Exact("yes".into()))
                            .build()
                            .unwrap(),
                    )
                    .build(),
                GREEN,
                None,
            ),
        ),
        (
            "method",
            http(
                Some(3),
                prefix("/m").method(HttpMethod::Post).build(),
                GREEN,
                None,
            ),
        ),
        (
            "query",
            http(
                Some(3),
                prefix("/q")
                    .query_parameters(
                        HttpQueryParameter::builder()
                            .name("v")
                            .r#match(QueryParameterMatch::builder().exact("2").build())
                            .build()
                            .unwrap(),
                    )
                    .build(),
                GREEN,
                None,
            ),
        ),
        (
            "port",
            http(
                Some(4),
                prefix("/port").port(i32::from(f.http_port)).build(),
                GREEN,
                None,
            ),
        ),
        // Same match twice: priority decides, not the name order.
        (
            "a-prio-low",
            http(
                Some(9),
                HttpGatewayRouteMatch::builder()
                    .path(HttpPathMatch::builder().exact("/prio").build())
                    .build(),
                COLORS,
                None,
            ),
        ),
        (
            "z-prio-high",
            http(
                Some(0),
                HttpGatewayRouteMatch::builder()
                    .path(HttpPathMatch::builder().exact("/prio").build())
                    .build(),
                GREEN,
                None,
            ),
        ),
    ];
    for (name, spec) in routes {
        f.gateway_route(name, spec).await;
    }
    f.c.create_gateway_route()
        .mesh_name(MESH)
        .virtual_gateway_name("edge")
        .gateway_route_name("rpc")
        .spec(
            GatewayRouteSpec::builder()
                .grpc_route(
                    GrpcGatewayRoute::builder()
                        .r#match(
                            GrpcGatewayRouteMatch::builder()
                                .service_name("weft.Colors")
                                .metadata(
                                    GrpcGatewayRouteMetadata::builder()
                                        .name("x-tier")
                                        .r#match(GrpcMetadataMatchMethod::Exact("gold".into()))
                                        .build()
                                        .unwrap(),
                                )
                                .build(),
                        )
                        .action(
                            GrpcGatewayRouteAction::builder()
                                .target(target(RPC))
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();

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
    let (_, headers, _) = exchange(
        f.http_port,
        "GET",
        www,
        "/x",
        &[("x-weft-gateway-target", GREEN)],
    )
    .unwrap();
    assert_eq!(headers.get("x-weft-app").map(String::as_str), Some("blue"));

    // gRPC: service name and metadata match; the app sees the method and the service as
    // `:authority`.
    let answer = grpc_call(
        f.grpc_port,
        "api.example.com",
        "/weft.Colors/Get",
        &[("x-tier", "gold")],
    )
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
    let missing = grpc_call(f.grpc_port, "api.example.com", "/weft.Colors/Get", &[])
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unimplemented, "{missing:?}");

    // The target service's router decides where the gateway's traffic goes: 100% blue, then
    // 100% green.
    f.c.update_route()
        .mesh_name(MESH)
        .virtual_router_name("colors")
        .route_name("main")
        .spec(router_route("green"))
        .send()
        .await
        .unwrap();
    wait_until(StdDuration::from_secs(20), || {
        f.get(www, "/chapter/2", &[]) == seen(200, "green", "/2", COLORS)
    });

    f.assert_no_rejections();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_health_check_fails_while_envoy_drains_and_a_pool_limit_overflows_with_503() {
    let f = Fixture::new().await;
    f.gateway_route("root", http(None, prefix("/").build(), COLORS, None))
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
    f.c.update_virtual_gateway()
        .mesh_name(MESH)
        .virtual_gateway_name("edge")
        .spec(gateway_spec(f.http_port, f.grpc_port, true))
        .send()
        .await
        .unwrap();
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
