//! Mutual TLS on the xDS listener (`weft server`'s default) against a real `weft server`: a
//! raw ADS client over rustls with a workload certificate from the server's CA (join token
//! from the real CLI, CSR made with rcgen as an agent makes it) gets its own node's config and
//! is refused another node's, which the server logs; a client without a certificate cannot
//! finish the handshake; plaintext gets nothing; proxy-status says how xDS is secured; real
//! `weft agent`s with join tokens converge over mutual TLS and carry traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::mesh::{free_port, sample_app};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{MeshSpec, NodeSpec, ServiceSpec};

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// A `weft server` with its log (stderr, at info) in a file.
struct Server {
    child: Child,
    addr: String,
    xds_addr: String,
    log: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("server.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--xds-listen",
                "127.0.0.1:0",
            ])
            .args(["--dns-listen", "127.0.0.1:0", "--data-dir"])
            .arg(tmp.path().join("data"))
            .args(extra)
            .env("WEFT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut addr, mut xds_addr) = (None, None);
        while addr.is_none() || xds_addr.is_none() {
            let line = lines.next().expect("weft server exited").unwrap();
            if let Some(a) = line.strip_prefix("weft api listening on ") {
                addr = Some(a.to_string());
            }
            if let Some(a) = line.strip_prefix("weft xds listening on ") {
                xds_addr = Some(a.to_string());
            }
        }
        std::thread::spawn(move || for _ in lines {});
        common::remember_admin_credentials(addr.as_deref().unwrap(), &tmp.path().join("data"));
        Server {
            child,
            addr: addr.unwrap(),
            xds_addr: xds_addr.unwrap(),
            log,
            _tmp: tmp,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    fn client(&self) -> aws_sdk_appmesh::Client {
        common::client_for(&self.addr)
    }

    async fn proxy_status(&self) -> Value {
        common::signed_request(&self.addr, "GET", "/weft/v1/proxy-status", None, "weft")
            .await
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rustls client trusting `bundle`, presenting `identity` (chain and key) when given.
fn tls_client(bundle: &str, identity: Option<(String, String)>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A TLS handshake with the xDS listener at `addr` (server name: its IP).
async fn handshake(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let ip: std::net::SocketAddr = addr.parse().unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = connector
        .connect(ServerName::IpAddress(ip.ip().into()), tcp)
        .await?;
    // TLS 1.3: the server checks the client's certificate after the client's handshake is
    // done; a refusal arrives as an alert on the first read.
    use tokio::io::AsyncWriteExt;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    tls.flush().await?;
    Ok(tls)
}

/// Opens an ADS stream for `node_id` asking for clusters: the first response, or the status
/// the stream ended with.
async fn ask(
    channel: tonic::transport::Channel,
    node_id: &str,
) -> Result<DiscoveryResponse, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: node_id.to_string(),
            cluster: "test".into(),
            ..Default::default()
        }),
        type_url: CLUSTER_TYPE_URL.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut responses = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            http::uri::PathAndQuery::from_static(SOTW_PATH),
            tonic_prost::ProstCodec::<DiscoveryRequest, DiscoveryResponse>::default(),
        )
        .await?
        .into_inner();
    let response = tokio::time::timeout(Duration::from_secs(20), responses.message())
        .await
        .expect("an answer in time")?;
    drop(tx);
    Ok(response.expect("a response"))
}

fn arn(resource: &str) -> String {
    format!("arn:aws:appmesh:us-east-1:000000000000:{resource}")
}

/// Mesh `apps` with nodes `a` and `b`.
async fn apps(server: &Server) {
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    api.node("a", NodeSpec::http("a.apps.local", 8080)).await;
    api.node("b", NodeSpec::http("b.apps.local", 8080)).await;
}

fn wait_for_log(server: &Server, needle: &str) -> String {
    for _ in 0..100 {
        let log = server.log();
        if log.contains(needle) {
            return log;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the server never logged {needle:?}:\n{}", server.log());
}

#[tokio::test]
async fn a_certificate_for_node_a_gets_node_a_s_config_and_is_refused_node_b_s_which_the_server_logs(
) {
    let server = Server::start(&["--xds-tls"]);
    apps(&server).await;
    let bundle = common::certs::trust_bundle(&server.addr).await;
    let identity =
        common::certs::workload_certificate(&server.addr, "mesh/apps/virtualNode/a").await;
    let channel =
        common::certs::tls_channel(&server.xds_addr, tls_client(&bundle, Some(identity))).await;

    let a = ask(channel.clone(), &arn("mesh/apps/virtualNode/a"))
        .await
        .expect("node a's config");
    assert_eq!(a.type_url, CLUSTER_TYPE_URL);

    let status = ask(channel.clone(), &arn("mesh/apps/virtualNode/b"))
        .await
        .expect_err("node b's config is refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let status = ask(channel, "mesh/apps/virtualNode/b")
        .await
        .expect_err("node b's config is refused, by path too");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    let log = wait_for_log(&server, "ADS stream refused");
    let refusal = log
        .lines()
        .find(|l| l.contains("ADS stream refused"))
        .unwrap();
    assert!(
        refusal.contains("virtualNode/b") && refusal.contains("mesh/apps/virtualNode/a"),
        "{refusal}"
    );
    let status = server.proxy_status().await;
    assert_eq!(status["xdsSecurity"], "mTLS", "{status}");
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["proxy-status", "--endpoint", &server.addr])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("xDS: mTLS"));
    let proxies = status["proxies"].as_array().unwrap();
    assert!(
        proxies
            .iter()
            .all(|p| !p.to_string().contains("virtualNode/b")),
        "{status}"
    );
}

#[tokio::test]
async fn by_default_a_client_without_a_certificate_or_in_plaintext_gets_nothing() {
    let server = Server::start(&[]);
    apps(&server).await;
    let bundle = common::certs::trust_bundle(&server.addr).await;

    // No client certificate: the handshake, or the first read after it, fails.
    let refused = match handshake(&server.xds_addr, tls_client(&bundle, None)).await {
        Err(_) => true,
        Ok(mut tls) => {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            matches!(
                tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await,
                Ok(Err(_)) | Ok(Ok(0))
            )
        }
    };
    assert!(refused, "a client without a certificate got a TLS session");
    wait_for_log(&server, "xDS connection refused");

    // Plaintext gRPC to the TLS port: no config.
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{}", server.xds_addr))
        .unwrap()
        .connect_lazy();
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        ask(plaintext, &arn("mesh/apps/virtualNode/a")),
    )
    .await;
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "plaintext got a config: {answer:?}"
    );
    assert!(server.proxy_status().await["proxies"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn plaintext_xds_says_it_is_unauthenticated_in_the_log_and_in_proxy_status() {
    let server = Server::start(&["--insecure-plaintext-xds"]);
    let status = server.proxy_status().await;
    assert_eq!(
        status["xdsSecurity"], "plaintext (unauthenticated)",
        "{status}"
    );
    wait_for_log(&server, "xDS is plaintext and unauthenticated");
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["proxy-status", "--endpoint", &server.addr])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("WARNING: xDS is plaintext (unauthenticated)"),
        "{table}"
    );
}

#[tokio::test]
async fn agents_with_join_tokens_converge_over_mutual_tls_by_default_and_carry_traffic() {
    let server = Server::start(&[]);
    let red_port = free_port();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    api.node("red", NodeSpec::http("127.0.0.1", red_port)).await;
    api.service("red.apps.local", ServiceSpec::by_node("red"))
        .await;
    api.node("front", NodeSpec::client(&["red.apps.local"]))
        .await;
    let (_red_app, red_app_port) = sample_app("red");
    let red = common::joined_agent_of(
        &server.addr,
        &server.xds_addr,
        "mesh/apps/virtualNode/red",
        &[(red_port, red_app_port)],
    );
    let front = common::joined_agent_of(
        &server.addr,
        &server.xds_addr,
        "mesh/apps/virtualNode/front",
        &[],
    );
    let through = || {
        front
            .get("red.apps.local", "/", &[])
            .map(|(s, b)| s == 200 && b.contains("red"))
            .unwrap_or(false)
    };
    let converged = std::time::Instant::now() + Duration::from_secs(60);
    while !through() {
        assert!(
            std::time::Instant::now() < converged,
            "front never reached red over xDS with mutual TLS\nserver:\n{}",
            server.log(),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..5 {
        assert!(through());
    }
    // Both Envoys hold ADS streams over TLS (the xDS cluster's TLS handshakes), and the server
    // serves both proxies, refusing none.
    for agent in [&red, &front] {
        assert!(
            agent.stat_sum("cluster.xds_cluster.ssl.handshake") >= 1,
            "{}",
            agent
                .admin("/stats?filter=xds_cluster.ssl")
                .unwrap_or_default()
        );
    }
    let status = server.proxy_status().await;
    assert_eq!(status["xdsSecurity"], "mTLS");
    assert_eq!(status["proxies"].as_array().unwrap().len(), 2, "{status}");
    assert!(!server.log().contains("ADS stream refused"));
    drop(red);
    drop(front);
}
