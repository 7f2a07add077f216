//! Envoy's telemetry with App Mesh's switches, end to end: real `weft agent`s (each with a real
//! Envoy 1.40) configured by App Mesh's variables, a real `weft server`, and real receivers in
//! the test: a UDP socket for DogStatsD, Envoy's own `/stats/prometheus`, a Zipkin HTTP
//! collector (`POST /api/v2/spans`, JSON) for Jaeger-format traces through two Envoys, and an
//! OTLP/gRPC trace receiver (tonic, prost) for OpenTelemetry traces through two Envoys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mesh::{agent_with_env, free_port, sample_app, wait_until, Agent, Proc};
use common::WeftServer;
use serde_json::Value;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{MeshSpec, NodeSpec, ServiceSpec};

/// Every DogStatsD line received on `socket` until `until` holds for the lines so far, or the
/// timeout.
fn statsd_lines(
    socket: &UdpSocket,
    timeout: Duration,
    until: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline && !until(&lines) {
        if let Ok(n) = socket.recv(&mut buf) {
            // Envoy packs several metrics in one datagram, one per line.
            let text = String::from_utf8_lossy(&buf[..n]);
            lines.extend(text.lines().map(str::to_string));
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dog_statsd_packets_and_prometheus_series_carry_app_mesh_s_tags() {
    let server = WeftServer::start();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let red_port = free_port();
    let (_red_app, red_app_port) = sample_app("red");
    api.node("red", NodeSpec::http("127.0.0.1", red_port)).await;

    let statsd = UdpSocket::bind("127.0.0.1:0").unwrap();
    let statsd_port = statsd.local_addr().unwrap().port().to_string();
    let red = agent_with_env(
        &server.xds_addr,
        "mesh/apps/virtualNode/red",
        &[(red_port, red_app_port)],
        "delta",
        &[
            ("ENABLE_ENVOY_STATS_TAGS", "1"),
            ("ENABLE_ENVOY_DOG_STATSD", "1"),
            ("STATSD_PORT", &statsd_port),
            ("ENVOY_STATS_FLUSH_INTERVAL", "500ms"),
        ],
    );
    // A request through red's ingress, so that its HTTP stats exist.
    wait_until(Duration::from_secs(30), || {
        common::mesh::http_get(red_port, "red", "/").is_ok_and(|(s, _)| s == 200)
    });

    // DogStatsD: the metrics arrive at the UDP socket, tagged with the mesh and the node as
    // App Mesh's Envoys tag them (`#appmesh.mesh:apps,appmesh.virtual_node:red`).
    let is_rq = |l: &String| {
        l.starts_with("envoy.http.downstream_rq_xx:")
            && l.contains("envoy.http_conn_manager_prefix:ingress")
    };
    // Gauges (server.uptime) and counters may come in separate datagrams: wait for both.
    let lines = statsd_lines(&statsd, Duration::from_secs(20), |lines| {
        lines.iter().any(is_rq) && lines.iter().any(|l| l.starts_with("envoy.server.uptime:"))
    });
    let tagged = |l: &String| {
        let Some((_, tags)) = l.split_once("|#") else {
            return false;
        };
        let tags: Vec<&str> = tags.split(',').collect();
        tags.contains(&"appmesh.mesh:apps") && tags.contains(&"appmesh.virtual_node:red")
    };
    let uptime = lines.iter().find(|l| l.starts_with("envoy.server.uptime:"));
    assert!(
        uptime.is_some_and(tagged),
        "server.uptime untagged or missing: {lines:?}"
    );
    let rq = lines
        .iter()
        .find(|l| is_rq(l))
        .unwrap_or_else(|| panic!("no ingress request stats in {lines:?}"));
    assert!(tagged(rq), "{rq}");
    assert!(rq.contains("envoy.response_code_class:2"), "{rq}");
    // Every metric is a well-formed DogStatsD line: name:value|type[|#tags]. (A few of Envoy's
    // own, such as filesystem.write_buffered, live outside the tagged scopes.)
    for line in &lines {
        let (name, rest) = line.split_once(':').unwrap_or_else(|| panic!("{line}"));
        let kind = rest.split('|').nth(1).unwrap_or_default();
        assert!(
            !name.is_empty() && ["c", "g", "ms", "h", "d"].contains(&kind),
            "{line}"
        );
    }

    // Prometheus: the same series on Envoy's admin, labelled as metrics.md shows them.
    let exposition = red
        .admin("/stats/prometheus")
        .expect("/stats/prometheus answers");
    assert!(
        exposition.contains("appmesh_virtual_node=\"red\""),
        "{exposition}"
    );
    let series: Vec<&str> = exposition
        .lines()
        .filter(|l| l.starts_with("envoy_http_downstream_rq_xx{"))
        .collect();
    let ingress_2xx = series
        .iter()
        .find(|l| {
            l.contains("envoy_http_conn_manager_prefix=\"ingress\"")
                && l.contains("envoy_response_code_class=\"2\"")
        })
        .unwrap_or_else(|| panic!("no ingress 2xx series in {series:?}"));
    assert!(
        ingress_2xx.contains("appmesh_mesh=\"apps\""),
        "{ingress_2xx}"
    );
    assert!(
        ingress_2xx.contains("appmesh_virtual_node=\"red\""),
        "{ingress_2xx}"
    );
    let count: f64 = ingress_2xx.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{ingress_2xx}");
    // The exposition declares each family's type, as Prometheus's text format requires.
    assert!(exposition.contains("# TYPE envoy_http_downstream_rq_xx counter"));
}

/// Mesh `apps`: `red` (a sample app behind its agent) as the service `red.apps.local`, and a
/// `front` agent calling it, both agents' Envoys given `tracing_env`; returns once `front` is
/// answered by red, with what keeps red running and front's agent.
async fn red_and_front(
    server: &WeftServer,
    tracing_env: &[(&str, &str)],
) -> ((Proc, Agent), Agent) {
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let red_port = free_port();
    let (red_app, red_app_port) = sample_app("red");
    api.node("red", NodeSpec::http("127.0.0.1", red_port)).await;
    api.service("red.apps.local", ServiceSpec::by_node("red"))
        .await;
    api.node("front", NodeSpec::client(&["red.apps.local"]))
        .await;
    let red = agent_with_env(
        &server.xds_addr,
        "mesh/apps/virtualNode/red",
        &[(red_port, red_app_port)],
        "delta",
        tracing_env,
    );
    let front = agent_with_env(
        &server.xds_addr,
        "mesh/apps/virtualNode/front",
        &[],
        "delta",
        tracing_env,
    );
    wait_until(Duration::from_secs(40), || {
        front
            .get("red.apps.local", "/", &[])
            .is_ok_and(|(s, b)| s == 200 && b.contains("red"))
    });
    ((red_app, red), front)
}

/// The spans received so far that are `mine`, once there are two of them or 30 s have passed
/// (Envoy's tracers flush every 5 s, or every 5 spans).
async fn two_spans<T: Clone>(received: &Mutex<Vec<T>>, mine: impl Fn(&T) -> bool) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found: Vec<T> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|s| mine(s))
            .cloned()
            .collect();
        if found.len() >= 2 || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Zipkin v2 collector: `POST /api/v2/spans` with a JSON list of spans.
async fn zipkin_collector() -> (u16, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::post;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/api/v2/spans",
        post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&body) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                store.lock().unwrap().extend(list);
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_tracing_through_two_envoys_sends_a_client_and_a_server_span_joined_by_their_ids() {
    let server = WeftServer::start();

    let (collector_port, spans) = zipkin_collector().await;
    let collector_port = collector_port.to_string();
    let tracing_env = [
        ("ENABLE_ENVOY_JAEGER_TRACING", "1"),
        ("JAEGER_TRACER_PORT", collector_port.as_str()),
        ("JAEGER_TRACER_VERSION", "JSON"),
    ];
    let (_red, front) = red_and_front(&server, &tracing_env).await;
    // One request in a trace of the test's own (B3 headers, as an instrumented app sends
    // them), to find its spans among those of the warm-up.
    let (trace_id, root_span) = ("463ac35c9f6413ad48485a3953bb6124", "0020000000000001");
    let (status, _) = front
        .get(
            "red.apps.local",
            "/",
            &[
                ("x-b3-traceid", trace_id),
                ("x-b3-spanid", root_span),
                ("x-b3-sampled", "1"),
            ],
        )
        .unwrap();
    assert_eq!(status, 200);

    // Envoy's Zipkin tracer flushes every 5 s (or every 5 spans).
    let found = two_spans(&spans, |s| s["traceId"] == trace_id).await;
    let by_kind: HashMap<&str, &Value> = found
        .iter()
        .filter_map(|s| Some((s["kind"].as_str()?, s)))
        .collect();
    let client = by_kind
        .get("CLIENT")
        .unwrap_or_else(|| panic!("no client span: {found:#?}"));
    let server_span = by_kind
        .get("SERVER")
        .unwrap_or_else(|| panic!("no server span: {found:#?}"));
    // One trace: front's egress span is the child of the caller's, red's ingress span the
    // child of front's; each names its Envoy's node.
    assert_eq!(client["traceId"], server_span["traceId"], "{found:#?}");
    assert_eq!(client["parentId"], root_span, "{found:#?}");
    assert_eq!(server_span["parentId"], client["id"], "{found:#?}");
    assert_ne!(server_span["id"], client["id"]);
    assert_eq!(
        client["localEndpoint"]["serviceName"],
        "mesh/apps/virtualNode/front"
    );
    assert_eq!(
        server_span["localEndpoint"]["serviceName"],
        "mesh/apps/virtualNode/red"
    );
}

#[test]
fn a_non_numeric_port_or_a_missing_config_file_stops_the_agent_naming_the_variable() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("ENABLE_ENVOY_DOG_STATSD", "1"), ("STATSD_PORT", "statsd")],
            "STATSD_PORT",
        ),
        (
            &[("ENVOY_TRACING_CFG_FILE", "/nonexistent/tracing.yaml")],
            "ENVOY_TRACING_CFG_FILE",
        ),
        (
            &[("ENABLE_ENVOY_XRAY_TRACING", "yes please")],
            "ENABLE_ENVOY_XRAY_TRACING",
        ),
    ];
    for (env, variable) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("agent")
            .env("APPMESH_RESOURCE_ARN", "mesh/apps/virtualNode/red")
            .env("APPMESH_XDS_ENDPOINT", format!("127.0.0.1:{}", free_port()))
            .env("ENVOY_ADMIN_ACCESS_PORT", free_port().to_string())
            .env("WEFT_LISTENER_MODE", "explicit")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{env:?}: the agent started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(variable), "{env:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_ray_segments_reach_the_daemon_port_in_x_ray_s_udp_format() {
    let server = WeftServer::start();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let red_port = free_port();
    let (_red_app, red_app_port) = sample_app("red");
    api.node("red", NodeSpec::http("127.0.0.1", red_port)).await;

    let daemon = UdpSocket::bind("127.0.0.1:0").unwrap();
    daemon
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let daemon_port = daemon.local_addr().unwrap().port().to_string();
    let _red = agent_with_env(
        &server.xds_addr,
        "mesh/apps/virtualNode/red",
        &[(red_port, red_app_port)],
        "delta",
        &[
            ("ENABLE_ENVOY_XRAY_TRACING", "1"),
            ("XRAY_DAEMON_PORT", &daemon_port),
            ("XRAY_SAMPLING_RATE", "1.00"),
        ],
    );
    wait_until(Duration::from_secs(30), || {
        common::mesh::http_get(red_port, "red", "/").is_ok_and(|(s, _)| s == 200)
    });
    // X-Ray's daemon protocol: a JSON header line, a newline, then the segment document.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 65536];
    let segment = loop {
        assert!(Instant::now() < deadline, "no X-Ray segment arrived");
        let Ok(n) = daemon.recv(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (header, body) = text.split_once('\n').unwrap_or_else(|| panic!("{text}"));
        let header: Value = serde_json::from_str(header).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(header["format"], "json", "{text}");
        assert_eq!(header["version"], 1, "{text}");
        break serde_json::from_str::<Value>(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    };
    // App Mesh's segment: named <mesh>/<node>, an App Mesh proxy's origin, the mesh and node.
    assert_eq!(segment["name"], "apps/red", "{segment:#}");
    assert_eq!(segment["origin"], "AWS::AppMesh::Proxy", "{segment:#}");
    assert_eq!(
        segment["aws"]["app_mesh"]["mesh_name"], "apps",
        "{segment:#}"
    );
    assert_eq!(segment["aws"]["app_mesh"]["virtual_node_name"], "red");
    let trace_id = segment["trace_id"].as_str().unwrap_or_default();
    assert!(trace_id.starts_with("1-"), "{segment:#}");
}

/// The parts of OTLP's trace export (opentelemetry-proto's `collector/trace/v1` and
/// `trace/v1`, <https://github.com/open-telemetry/opentelemetry-proto>) this test reads, with
/// their field numbers: prost skips every field not declared here.
mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceResponse {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    /// `AnyValue`'s `string_value` member of its `value` oneof.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(string, tag = "1")]
        pub string_value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        /// `SPAN_KIND_SERVER` is 2, `SPAN_KIND_CLIENT` 3.
        #[prost(int32, tag = "6")]
        pub kind: i32,
    }
}

/// A span as received, hex ids, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// OTLP/gRPC's `TraceService/Export`, answered through tonic's unary machinery with prost.
#[derive(Clone)]
struct TraceService(Received);

impl tonic::server::NamedService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct Export(Received);

impl tonic::server::UnaryService<otlp::ExportTraceServiceRequest> for Export {
    type Response = otlp::ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<otlp::ExportTraceServiceRequest>) -> Self::Future {
        let mut received = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| v.string_value.clone())
                .unwrap_or_default();
            for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                });
            }
        }
        std::future::ready(Ok(tonic::Response::new(
            otlp::ExportTraceServiceResponse {},
        )))
    }
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for TraceService {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let received = self.0.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(Export(received), request).await)
        })
    }
}

/// An OTLP/gRPC trace receiver on loopback: its port and the spans it received.
async fn otlp_collector() -> (u16, Received) {
    let received: Received = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = TraceService(received.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    });
    (port, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_tracing_through_two_envoys_sends_a_client_and_a_server_span_joined_by_their_ids() {
    let server = WeftServer::start();

    let (collector_port, received) = otlp_collector().await;
    let endpoint = format!("127.0.0.1:{collector_port}");
    let tracing_env = [
        ("ENABLE_ENVOY_OTEL_TRACING", "1"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
    ];
    let (_red, front) = red_and_front(&server, &tracing_env).await;
    // One request in a trace of the test's own (W3C trace context, as an OpenTelemetry-
    // instrumented app sends it), to find its spans among those of the warm-up.
    let (trace_id, root_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace_id}-{root_span}-01");
    let (status, _) = front
        .get(
            "red.apps.local",
            "/",
            &[("traceparent", traceparent.as_str())],
        )
        .unwrap();
    assert_eq!(status, 200);

    // Envoy's OpenTelemetry tracer exports every 5 s (or every 5 spans).
    let found = two_spans(&received, |s| s.trace_id == trace_id).await;
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    let client = found
        .iter()
        .find(|s| s.kind == CLIENT)
        .unwrap_or_else(|| panic!("no client span: {found:#?}"));
    let server_span = found
        .iter()
        .find(|s| s.kind == SERVER)
        .unwrap_or_else(|| panic!("no server span: {found:#?}"));
    // One trace: front's egress span is the child of the caller's, red's ingress span the
    // child of front's; each comes from its own Envoy's node.
    assert_eq!(client.parent_span_id, root_span, "{found:#?}");
    assert_eq!(server_span.parent_span_id, client.span_id, "{found:#?}");
    assert_ne!(server_span.span_id, client.span_id);
    assert!(client.service.contains("front"), "{found:#?}");
    assert!(server_span.service.contains("red"), "{found:#?}");
}
