//! The mesh's traffic, gathered: real Envoys (each `weft agent`'s) stream their stats to
//! `weft server` through Envoy's `metrics_service` sink on the xDS port, and the server keeps
//! per edge (source node → target node, and source node → App Mesh route) requests per second, error rate and latency, served at
//! `GET /weft/v1/traffic` and in `/metrics` (read by Prometheus's own Python parser).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::mesh::{agent_with_env, failing_app, free_port, sample_app, wait_until, Agent, Proc};
use common::prometheus::{self, sample};
use common::WeftServer;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage;
use envoy_types::pb::io::prometheus::client::{Counter, Metric, MetricFamily, MetricType};
use prost::Message;
use serde_json::Value;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{Listener, MeshSpec, NodeSpec, RouteSpec, RouterSpec, ServiceSpec};

const SERVICE: &str = "colors.apps.local";

/// An agent whose Envoy flushes its stats every second (App Mesh's variable), so that a test
/// sees its traffic within seconds.
fn fast_agent(server: &WeftServer, node: &str, app_ports: &[(u16, u16)]) -> Agent {
    agent_with_env(
        &server.xds_addr,
        &format!("mesh/apps/virtualNode/{node}"),
        app_ports,
        "sotw",
        &[("ENVOY_STATS_FLUSH_INTERVAL", "1s")],
    )
}

/// `GET /weft/v1/traffic`, signed as the administrator.
async fn traffic(server: &WeftServer) -> Value {
    let answer =
        common::signed_request(&server.addr, "GET", "/weft/v1/traffic", None, "weft").await;
    assert_eq!(answer.status().as_u16(), 200);
    answer.json().await.unwrap()
}

/// The edge from `source` to `target` in a traffic snapshot.
fn edge<'a>(snapshot: &'a Value, source: &str, target: &str) -> Option<&'a Value> {
    snapshot["edges"].as_array()?.iter().find(|e| {
        e["source"]["name"] == source && e["target"]["name"] == target && e["mesh"] == "apps"
    })
}

/// The edge from `source` to route `route` of virtual router `router` in a traffic snapshot.
fn route_edge<'a>(
    snapshot: &'a Value,
    source: &str,
    router: &str,
    route: &str,
) -> Option<&'a Value> {
    snapshot["edges"].as_array()?.iter().find(|e| {
        e["source"]["name"] == source
            && e["route"]["router"] == router
            && e["route"]["route"] == route
            && e["mesh"] == "apps"
    })
}

/// Requests an edge's history holds (each point is a 10 s slot's rate).
fn requests_seen(edge: Option<&Value>) -> f64 {
    edge.and_then(|e| e["history"].as_array())
        .map(|h| {
            h.iter()
                .map(|p| p["rps"].as_f64().unwrap_or(0.0) * 10.0)
                .sum()
        })
        .unwrap_or(0.0)
}

/// `/metrics`, parsed by Prometheus's official Python client: every sample.
async fn scrape(server: &WeftServer) -> Vec<Value> {
    let text = reqwest::get(format!("{}/metrics", server.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    prometheus::parse(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_75_25_route_gives_two_edges_three_to_one_and_the_backend_answering_500s_its_error_rate()
{
    let server = WeftServer::start();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let (_v1_app, v1_app_port): (Proc, u16) = sample_app("v1");
    let v2_app_port = failing_app();
    let (v1_port, v2_port) = (free_port(), free_port());
    api.node("v1", NodeSpec::http("127.0.0.1", v1_port)).await;
    api.node("v2", NodeSpec::http("127.0.0.1", v2_port)).await;
    api.router("colors", RouterSpec::http(8080)).await;
    api.route(
        "colors",
        "main",
        RouteSpec::split(&[("v1", 75), ("v2", 25)]),
    )
    .await;
    api.service(SERVICE, ServiceSpec::by_router("colors")).await;
    api.node("front", NodeSpec::client(&[SERVICE])).await;
    let _v1 = fast_agent(&server, "v1", &[(v1_port, v1_app_port)]);
    let _v2 = fast_agent(&server, "v2", &[(v2_port, v2_app_port)]);
    let front = fast_agent(&server, "front", &[]);
    wait_until(Duration::from_secs(30), || {
        front
            .get(SERVICE, "/", &[])
            .is_ok_and(|(s, b)| s == 200 && b.contains("v1"))
    });

    let (mut ok, mut failed) = (0u32, 0u32);
    for _ in 0..400 {
        match front.get(SERVICE, "/", &[]) {
            Ok((200, _)) => ok += 1,
            Ok((500, _)) => failed += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    println!("front got {ok} answers 200 and {failed} answers 500");

    // Every request reaches the server within a flush or two.
    let mut snapshot = Value::Null;
    for _ in 0..100 {
        snapshot = traffic(&server).await;
        let seen = requests_seen(edge(&snapshot, "front", "v1"))
            + requests_seen(edge(&snapshot, "front", "v2"));
        let routed = requests_seen(route_edge(&snapshot, "front", "colors", "main"));
        if seen >= 400.0 && routed >= 400.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v1 =
        edge(&snapshot, "front", "v1").unwrap_or_else(|| panic!("no front→v1 edge: {snapshot:#}"));
    let v2 =
        edge(&snapshot, "front", "v2").unwrap_or_else(|| panic!("no front→v2 edge: {snapshot:#}"));
    let rps = |e: &Value| e["rps"].as_f64().unwrap();
    let errors = |e: &Value| e["error_rate"].as_f64().unwrap();
    let ratio = rps(v1) / rps(v2);
    println!(
        "front→v1 {:.1}/s, front→v2 {:.1}/s (ratio {ratio:.2}); error rates {:.3} and {:.3}; p99 {} and {} ms",
        rps(v1),
        rps(v2),
        errors(v1),
        errors(v2),
        v1["p99_ms"],
        v2["p99_ms"]
    );
    // The edges tell what front's Envoy did (its 75/25 draw over 400 requests) and that is
    // about 3:1.
    let observed = f64::from(ok) / f64::from(failed);
    assert!(
        (ratio - observed).abs() / observed < 0.1,
        "edges {ratio:.2}, answers {observed:.2}"
    );
    assert!(
        (2.0..=5.0).contains(&ratio),
        "rps ratio {ratio}: {snapshot:#}"
    );
    assert_eq!(errors(v1), 0.0);
    assert!(errors(v2) > 0.95, "{v2:#}");
    // Of front's traffic, the failing backend's share fails.
    let share = (rps(v1) * errors(v1) + rps(v2) * errors(v2)) / (rps(v1) + rps(v2));
    assert!((0.15..=0.35).contains(&share), "error share {share}");
    for e in [v1, v2] {
        assert_eq!(e["source"]["kind"], "virtualNode");
        assert_eq!(e["target"]["kind"], "virtualNode");
        let p99 = e["p99_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("no p99: {e:#}"));
        assert!(p99 > 0.0 && p99 < 5_000.0, "{e:#}");
        assert!(!e["history"].as_array().unwrap().is_empty());
    }
    // The route's own stats (its `stat_prefix`) give it an edge of its own: every request of
    // both targets, with the failing one's share of errors, named by router, route and service.
    let main = route_edge(&snapshot, "front", "colors", "main")
        .unwrap_or_else(|| panic!("no front→colors/main edge: {snapshot:#}"));
    println!(
        "front→colors/main {:.1}/s, error rate {:.3}, p99 {} ms",
        rps(main),
        errors(main),
        main["p99_ms"]
    );
    assert_eq!(main["virtual_service"], SERVICE);
    assert_eq!(main["target"], Value::Null);
    let both = rps(v1) + rps(v2);
    assert!(
        (rps(main) - both).abs() / both < 0.1,
        "route {} vs targets {both}: {snapshot:#}",
        rps(main)
    );
    assert!((errors(main) - share).abs() < 0.05, "{main:#}");
    assert!(main["p99_ms"].as_f64().is_some_and(|p| p > 0.0), "{main:#}");
    let reporters: Vec<&str> = snapshot["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for node in ["front", "v1", "v2"] {
        assert!(
            reporters.contains(&node),
            "{node} never reported: {reporters:?}"
        );
    }

    let samples = scrape(&server).await;
    let labels = |target| [("mesh", "apps"), ("node", "front"), ("target", target)];
    let scraped_v1 = sample(&samples, "weft_edge_requests_per_second", &labels("v1")).unwrap();
    let scraped_v2 = sample(&samples, "weft_edge_requests_per_second", &labels("v2")).unwrap();
    assert!(
        scraped_v1 > scraped_v2 * 2.0,
        "{scraped_v1} vs {scraped_v2}"
    );
    assert!(sample(&samples, "weft_edge_error_ratio", &labels("v2")).unwrap() > 0.95);
    assert_eq!(
        sample(&samples, "weft_edge_error_ratio", &labels("v1")),
        Some(0.0)
    );
    let mut p99 = labels("v1").to_vec();
    p99.push(("quantile", "0.99"));
    assert!(sample(&samples, "weft_edge_latency_seconds", &p99).is_some());
    let by_route = [
        ("mesh", "apps"),
        ("node", "front"),
        ("virtual_service", SERVICE),
        ("router", "colors"),
        ("route", "main"),
        ("target", ""),
    ];
    let scraped_main = sample(&samples, "weft_edge_requests_per_second", &by_route).unwrap();
    assert!(scraped_main > scraped_v1, "{scraped_main} vs {scraped_v1}");
}

/// A gRPC codec that sends bytes as they are, to put garbage on the wire.
#[derive(Default, Clone, Copy)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// One StreamMetrics call to the xDS port carrying `messages` as they are: the server's answer.
async fn stream_metrics(xds: &str, messages: Vec<Vec<u8>>) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{xds}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    stream_metrics_on(channel, messages).await
}

/// [`stream_metrics`] on a channel of the caller's (e.g. over mutual TLS).
async fn stream_metrics_on(
    channel: tonic::transport::Channel,
    messages: Vec<Vec<u8>>,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.metrics.v3.MetricsService/StreamMetrics",
    );
    grpc.client_streaming(
        tonic::Request::new(futures::stream::iter(messages)),
        path,
        Raw,
    )
    .await
    .map(|_| ())
}

fn counter(name: &str, value: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name.into()),
        r#type: Some(MetricType::Counter as i32),
        metric: vec![Metric {
            counter: Some(Counter {
                value: Some(value),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn identified(node: &str, metrics: Vec<MetricFamily>) -> Vec<u8> {
    StreamMetricsMessage {
        identifier: Some(Identifier {
            node: Some(Node {
                id: node.into(),
                ..Default::default()
            }),
        }),
        envoy_metrics: metrics,
    }
    .encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_unknown_names_and_absurd_values_on_the_metrics_stream_are_counted_drops_and_real_stats_keep_flowing(
) {
    let server = WeftServer::start();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let (_app, app_port) = sample_app("back");
    let back_port = free_port();
    api.node("back", NodeSpec::http("127.0.0.1", back_port))
        .await;
    api.service("back.apps.local", ServiceSpec::by_node("back"))
        .await;
    api.node("front", NodeSpec::client(&["back.apps.local"]))
        .await;

    // Bytes that are no protobuf: the stream breaks, counted.
    let garbage = stream_metrics(&server.xds_addr, vec![vec![0xff; 64]]).await;
    assert!(garbage.is_err(), "{garbage:?}");
    // A stream naming no proxy, or one that is no virtual node or gateway: refused.
    let anonymous = StreamMetricsMessage::default().encode_to_vec();
    let refused = stream_metrics(&server.xds_addr, vec![anonymous]).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);
    let stranger = identified("mesh/apps/route/nope", vec![]);
    let refused = stream_metrics(&server.xds_addr, vec![stranger]).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);
    // An identified proxy with absurd values and names nobody knows: each bad series dropped,
    // the stream carries on.
    let c = "cluster.cds_egress_apps_back_http_80";
    let absurd = identified(
        "mesh/apps/virtualNode/front",
        vec![
            counter(&format!("{c}.upstream_rq_total"), f64::NAN),
            counter(&format!("{c}.upstream_rq_total"), 1e300),
            counter(&format!("{c}.upstream_rq_5xx"), -5.0),
            counter(
                "cluster.cds_egress_apps_ghost_smtp_x.upstream_rq_total",
                3.0,
            ),
            counter("no.such.stat", 1.0),
        ],
    );
    stream_metrics(&server.xds_addr, vec![absurd, vec![0x08, 0x96, 0x01]])
        .await
        .ok();

    // Real Envoys still report, and the server serves.
    let _back = fast_agent(&server, "back", &[(back_port, app_port)]);
    let front = fast_agent(&server, "front", &[]);
    wait_until(Duration::from_secs(30), || {
        front
            .get("back.apps.local", "/", &[])
            .is_ok_and(|(s, b)| s == 200 && b.contains("back"))
    });
    for _ in 0..20 {
        assert_eq!(front.get("back.apps.local", "/", &[]).unwrap().0, 200);
    }
    let mut seen = 0.0;
    for _ in 0..100 {
        seen = requests_seen(edge(&traffic(&server).await, "front", "back"));
        if seen >= 20.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen >= 20.0, "front→back carried {seen} requests");
    let samples = scrape(&server).await;
    let dropped = |reason| {
        sample(
            &samples,
            "weft_traffic_dropped_total",
            &[("reason", reason)],
        )
        .unwrap_or(0.0)
    };
    assert!(dropped("malformed") >= 1.0, "{samples:?}");
    assert!(dropped("refused") >= 2.0);
    assert!(dropped("bad_value") >= 3.0);
    assert!(dropped("unknown_cluster") >= 1.0);
    assert_eq!(server.health().await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_a_proxy_reports_only_as_the_node_its_certificate_names() {
    let server = WeftServer::start_with(&["--xds-tls"]);
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    api.node("front", NodeSpec::client(&[])).await;
    let bundle = common::certs::trust_bundle(&server.addr).await;
    let front =
        common::certs::workload_certificate(&server.addr, "mesh/apps/virtualNode/front").await;
    let c = "cluster.cds_egress_apps_back_http_80";
    let report =
        |node: &str| identified(node, vec![counter(&format!("{c}.upstream_rq_total"), 5.0)]);
    // front's certificate, claiming to be back: refused as ADS refuses it, nothing recorded.
    let channel = common::certs::xds_tls_channel(&server.xds_addr, &bundle, front.clone()).await;
    let refused = stream_metrics_on(channel, vec![report("mesh/apps/virtualNode/back")]).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::PermissionDenied);
    // As itself: taken.
    let channel = common::certs::xds_tls_channel(&server.xds_addr, &bundle, front).await;
    stream_metrics_on(channel, vec![report("mesh/apps/virtualNode/front")])
        .await
        .unwrap();
    let snapshot = traffic(&server).await;
    let sources: Vec<&str> = snapshot["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(sources, ["front"], "{snapshot:#}");
    assert_eq!(requests_seen(edge(&snapshot, "front", "back")), 5.0);
}

/// A gRPC server (HTTP/2, prior knowledge) on a free port answering every call with the
/// trailers-only status UNAVAILABLE (14) in an HTTP 200, as a failing gRPC service does.
async fn failing_grpc_app() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    let response = hyper::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "14")
                        .header("grpc-message", "unavailable")
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_answered_in_http_200s_count_in_the_edge_s_error_rate() {
    let server = WeftServer::start();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let app_port = failing_grpc_app().await;
    let rpc_port = free_port();
    api.node(
        "rpc",
        NodeSpec::new()
            .listener(Listener::grpc(rpc_port))
            .dns("127.0.0.1"),
    )
    .await;
    api.service("rpc.apps.local", ServiceSpec::by_node("rpc"))
        .await;
    api.node("front", NodeSpec::client(&["rpc.apps.local"]))
        .await;
    let _rpc = fast_agent(&server, "rpc", &[(rpc_port, app_port)]);
    let front = fast_agent(&server, "front", &[]);
    let call = || {
        let out = Command::new("curl")
            .args([
                "-s",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-m",
                "5",
                "--http2-prior-knowledge",
            ])
            .args([
                "-X",
                "POST",
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
            ])
            .args(["-H", "host: rpc.apps.local"])
            .arg(format!(
                "http://127.0.0.1:{}/weft.Test/Call",
                front.egress_port
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until(Duration::from_secs(30), || {
        call().contains("grpc-status: 14")
    });
    for _ in 0..20 {
        assert!(call().contains("grpc-status: 14"));
    }
    let mut rpc = None;
    for _ in 0..100 {
        let snapshot = traffic(&server).await;
        if requests_seen(edge(&snapshot, "front", "rpc")) >= 20.0 {
            rpc = edge(&snapshot, "front", "rpc").cloned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rpc = rpc.expect("front→rpc carried the calls");
    // Every call failed, though every answer was an HTTP 200.
    assert_eq!(rpc["error_rate"].as_f64(), Some(1.0), "{rpc:#}");
}
