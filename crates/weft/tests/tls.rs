//! End-to-end TLS (tls.md, mutual-tls.md): a real `weft server`, real `weft agent`s each
//! running a real Envoy 1.40 in explicit mode, real HTTP apps, and certificates from a test CA
//! made here (rcgen, ECDSA P-256) on the proxies' file system — configured only through the
//! official AWS SDK, served over ADS, never NACKed.
//!
//! Topology: `web` → `red.apps.local` (node `red`, STRICT mutual TLS) directly, and
//! `web` → `edge.apps.local` → gateway `edge` (STRICT TLS listener; its backend defaults
//! originate mutual TLS) → `red.apps.local`. `edge.apps.local` is provided by `edge-port`, a
//! node standing for the gateway's listener (DNS 127.0.0.1, the gateway's port), so that `web`'s
//! Envoy is the gateway's TLS client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use aws_sdk_appmesh::types as t;
use common::certs::{Ca, Leaf};
use common::mesh::{agent, agent_with_id, free_port, http_get, sample_app, wait_until, Agent};
use common::WeftServer;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{
    GatewayRouteSpec, GatewaySpec, HttpMatch, Listener, MeshSpec, NodeSpec, ServiceSpec,
};

fn file_cert(leaf: &Leaf) -> t::ListenerTlsFileCertificate {
    t::ListenerTlsFileCertificate::builder()
        .certificate_chain(&leaf.cert)
        .private_key(&leaf.key)
        .build()
        .unwrap()
}

fn file_trust(ca: &Ca) -> t::TlsValidationContextFileTrust {
    t::TlsValidationContextFileTrust::builder()
        .certificate_chain(&ca.cert)
        .build()
        .unwrap()
}

/// A node listener's TLS in `mode` with a file certificate; with `clients`, mutual TLS
/// trusting `ca` for clients naming one of them.
fn listener_tls(
    mode: t::ListenerTlsMode,
    certificate: t::ListenerTlsCertificate,
    ca: &Ca,
    clients: Option<&[&str]>,
) -> t::ListenerTls {
    let mut tls = t::ListenerTls::builder()
        .mode(mode)
        .certificate(certificate);
    if let Some(clients) = clients {
        tls = tls.validation(
            t::ListenerTlsValidationContext::builder()
                .trust(t::ListenerTlsValidationContextTrust::File(file_trust(ca)))
                .subject_alternative_names(common::exact_sans(clients))
                .build(),
        );
    }
    tls.build().unwrap()
}

/// A client policy: mutual TLS with `cert`, trusting `ca` (for servers naming one of `names`,
/// if given).
fn client_policy(cert: &Leaf, ca: &Ca, names: Option<&[&str]>) -> t::ClientPolicy {
    let mut validation = t::TlsValidationContext::builder()
        .trust(t::TlsValidationContextTrust::File(file_trust(ca)));
    if let Some(names) = names {
        validation = validation.subject_alternative_names(common::exact_sans(names));
    }
    t::ClientPolicy::builder()
        .tls(
            t::ClientPolicyTls::builder()
                .certificate(t::ClientTlsCertificate::File(file_cert(cert)))
                .validation(validation.build())
                .build(),
        )
        .build()
}

/// An HTTP node on `port` found at 127.0.0.1, with `tls` on its listener.
fn tls_node(port: u16, tls: t::ListenerTls) -> t::VirtualNodeSpec {
    let mut spec = NodeSpec::http("127.0.0.1", port).sdk();
    spec.listeners.as_mut().unwrap()[0].tls = Some(tls);
    spec
}

async fn create_node(api: &MeshApi, name: &str, spec: t::VirtualNodeSpec) {
    api.client()
        .create_virtual_node()
        .mesh_name(api.name())
        .virtual_node_name(name)
        .spec(spec)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create virtual node {name}: {e:?}"));
}

async fn update_node(api: &MeshApi, name: &str, spec: t::VirtualNodeSpec) {
    api.client()
        .update_virtual_node()
        .mesh_name(api.name())
        .virtual_node_name(name)
        .spec(spec)
        .send()
        .await
        .unwrap_or_else(|e| panic!("update virtual node {name}: {e:?}"));
}

fn status(port: u16, host: &str) -> u16 {
    http_get(port, host, "/").map(|(s, _)| s).unwrap_or(0)
}

/// `envoy`'s counter named exactly `name`, 0 if it has none.
fn counter(envoy: &Agent, name: &str) -> u64 {
    envoy
        .admin("/stats")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_through_a_node_and_a_gateway_over_ads_and_live_mode_changes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let red_cert = ca.leaf("red", &["red.apps.local", "127.0.0.1"]);
    let web_cert = ca.leaf("web", &["web.apps.local"]);
    let edge_cert = ca.leaf("edge", &["edge.apps.local", "127.0.0.1"]);

    let server = WeftServer::start();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let (red_port, edge_port) = (free_port(), free_port());
    let (_red_app, red_app_port) = sample_app("red");

    let red_tls = |mode| {
        listener_tls(
            mode,
            t::ListenerTlsCertificate::File(file_cert(&red_cert)),
            &ca,
            Some(&["web.apps.local", "edge.apps.local"]),
        )
    };
    create_node(
        &api,
        "red",
        tls_node(red_port, red_tls(t::ListenerTlsMode::Strict)),
    )
    .await;
    api.service("red.apps.local", ServiceSpec::by_node("red"))
        .await;

    // The gateway: a STRICT TLS listener; its backend defaults originate mutual TLS.
    let mut gateway = GatewaySpec::new().listener(Listener::http(edge_port)).sdk();
    gateway.listeners[0].tls = Some(
        t::VirtualGatewayListenerTls::builder()
            .mode(t::VirtualGatewayListenerTlsMode::Strict)
            .certificate(t::VirtualGatewayListenerTlsCertificate::File(
                t::VirtualGatewayListenerTlsFileCertificate::builder()
                    .certificate_chain(&edge_cert.cert)
                    .private_key(&edge_cert.key)
                    .build()
                    .unwrap(),
            ))
            .build()
            .unwrap(),
    );
    gateway.backend_defaults = Some(
        t::VirtualGatewayBackendDefaults::builder()
            .client_policy(
                t::VirtualGatewayClientPolicy::builder()
                    .tls(
                        t::VirtualGatewayClientPolicyTls::builder()
                            .certificate(t::VirtualGatewayClientTlsCertificate::File(
                                t::VirtualGatewayListenerTlsFileCertificate::builder()
                                    .certificate_chain(&edge_cert.cert)
                                    .private_key(&edge_cert.key)
                                    .build()
                                    .unwrap(),
                            ))
                            .validation(
                                t::VirtualGatewayTlsValidationContext::builder()
                                    .trust(t::VirtualGatewayTlsValidationContextTrust::File(
                                        t::VirtualGatewayTlsValidationContextFileTrust::builder()
                                            .certificate_chain(&ca.cert)
                                            .build()
                                            .unwrap(),
                                    ))
                                    .subject_alternative_names(common::exact_sans(&[
                                        "red.apps.local",
                                    ]))
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .build(),
    );
    api.client()
        .create_virtual_gateway()
        .mesh_name(api.name())
        .virtual_gateway_name("edge")
        .spec(gateway)
        .send()
        .await
        .unwrap();
    api.gateway_route(
        "edge",
        "all",
        GatewayRouteSpec::http(HttpMatch::prefix("/"), "red.apps.local"),
    )
    .await;
    create_node(
        &api,
        "edge-port",
        tls_node(
            edge_port,
            listener_tls(
                t::ListenerTlsMode::Strict,
                t::ListenerTlsCertificate::File(file_cert(&edge_cert)),
                &ca,
                None,
            ),
        ),
    )
    .await;
    api.service("edge.apps.local", ServiceSpec::by_node("edge-port"))
        .await;

    // The client: mutual TLS to all its backends, validating them against the CA.
    let mut web = NodeSpec::client(&["red.apps.local", "edge.apps.local"]).sdk();
    web.backend_defaults = Some(
        t::BackendDefaults::builder()
            .client_policy(client_policy(&web_cert, &ca, None))
            .build(),
    );
    create_node(&api, "web", web).await;

    let red = agent(
        &server.xds_addr,
        "apps",
        "red",
        &[(red_port, red_app_port)],
        "delta",
    );
    let edge = agent_with_id(
        &server.xds_addr,
        "mesh/apps/virtualGateway/edge",
        &[],
        "delta",
    );
    let web = agent(&server.xds_addr, "apps", "web", &[], "sotw");
    let answers = |host: &str| {
        web.get(host, "/", &[])
            .map(|(s, b)| s == 200 && b.contains("red"))
            .unwrap_or(false)
    };

    wait_until(Duration::from_secs(30), || answers("red.apps.local"));
    wait_until(Duration::from_secs(30), || answers("edge.apps.local"));
    let red_ssl = |stat: &str| counter(&red, &format!("listener.127.0.0.1_{red_port}.ssl.{stat}"));
    assert!(red_ssl("handshake") >= 2, "from web and from the gateway");
    assert_eq!(red_ssl("no_certificate"), 0, "every client presented one");
    assert!(
        counter(
            &edge,
            &format!("listener.127.0.0.1_{edge_port}.ssl.handshake")
        ) >= 1
    );
    assert_eq!(
        status(red_port, "red.apps.local"),
        0,
        "STRICT: a plaintext client gets no answer"
    );

    // PERMISSIVE over ADS: plaintext is served too, TLS still is.
    update_node(
        &api,
        "red",
        tls_node(red_port, red_tls(t::ListenerTlsMode::Permissive)),
    )
    .await;
    wait_until(Duration::from_secs(20), || {
        status(red_port, "red.apps.local") == 200
    });
    let before = red_ssl("handshake");
    wait_until(Duration::from_secs(10), || {
        answers("red.apps.local") && red_ssl("handshake") > before
    });

    // An ACM certificate is Weft's identity over SDS, which only a proxy whose agent joined
    // with a join token has: red's has none, so its update is refused with a reason in
    // proxy-status, and red keeps serving the config it has (never NACKed).
    let acm = t::ListenerTlsCertificate::Acm(
        t::ListenerTlsAcmCertificate::builder()
            .certificate_arn("arn:aws:acm:us-west-2:111122223333:certificate/red")
            .build()
            .unwrap(),
    );
    update_node(
        &api,
        "red",
        tls_node(
            red_port,
            listener_tls(t::ListenerTlsMode::Strict, acm, &ca, None),
        ),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status =
            common::signed_request(&server.addr, "GET", "/weft/v1/proxy-status", None, "weft")
                .await
                .text()
                .await
                .unwrap();
        if status.contains("join token") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reason in proxy-status: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(answers("red.apps.local"), "red kept its last config");

    for envoy in [&red, &edge, &web] {
        assert_eq!(
            envoy.stat_sum("update_rejected"),
            0,
            "an Envoy NACKed config"
        );
    }
}

/// The serial numbers of the certificates Envoy holds for `dns_name` (admin `/certs`).
fn serials_for(envoy: &Agent, dns_name: &str) -> Vec<String> {
    let certs: serde_json::Value =
        serde_json::from_str(&envoy.admin("/certs").unwrap_or_default()).unwrap_or_default();
    let mut serials = Vec::new();
    for cert in certs["certificates"].as_array().into_iter().flatten() {
        for c in cert["cert_chain"].as_array().into_iter().flatten() {
            let named = c["subject_alt_names"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|san| san["dns"] == dns_name);
            if named {
                serials.push(c["serial_number"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    serials
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_file_never_makes_envoy_refuse_config_and_files_are_picked_up_and_rotated_on_disk(
) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let server = WeftServer::start();
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let (red_port, blue_port) = (free_port(), free_port());
    let (_red_app, red_app_port) = sample_app("red");
    let (_blue_app, blue_app_port) = sample_app("blue");

    // red's certificate files are named before they exist (a secret not mounted yet).
    let (chain, key) = (dir.path().join("red.pem"), dir.path().join("red.key"));
    let tls = t::ListenerTls::builder()
        .mode(t::ListenerTlsMode::Strict)
        .certificate(t::ListenerTlsCertificate::File(
            t::ListenerTlsFileCertificate::builder()
                .certificate_chain(chain.to_str().unwrap())
                .private_key(key.to_str().unwrap())
                .build()
                .unwrap(),
        ));
    create_node(&api, "red", tls_node(red_port, tls.build().unwrap())).await;
    api.service("red.apps.local", ServiceSpec::by_node("red"))
        .await;
    api.node("blue", NodeSpec::http("127.0.0.1", blue_port))
        .await;
    api.service("blue.apps.local", ServiceSpec::by_node("blue"))
        .await;
    api.node(
        "web",
        NodeSpec::client(&["red.apps.local", "blue.apps.local"]),
    )
    .await;
    let red = agent(
        &server.xds_addr,
        "apps",
        "red",
        &[(red_port, red_app_port)],
        "sotw",
    );
    let blue = agent(
        &server.xds_addr,
        "apps",
        "blue",
        &[(blue_port, blue_app_port)],
        "sotw",
    );
    let web = agent(&server.xds_addr, "apps", "web", &[], "sotw");

    // blue is served; red's listener waits for its certificate, and nothing is refused.
    wait_until(Duration::from_secs(30), || {
        web.get("blue.apps.local", "/", &[])
            .is_ok_and(|(s, b)| s == 200 && b.contains("blue"))
    });
    assert_ne!(
        web.get("red.apps.local", "/", &[]).map(|(s, _)| s).ok(),
        Some(200)
    );
    for envoy in [&red, &blue, &web] {
        assert_eq!(envoy.stat_sum("update_rejected"), 0, "an Envoy NACKed");
    }

    // The files appear: red serves TLS with them within the agent's next read.
    ca.leaf("red", &["red.apps.local", "127.0.0.1"]);
    wait_until(Duration::from_secs(20), || {
        web.get("red.apps.local", "/", &[])
            .is_ok_and(|(s, b)| s == 200 && b.contains("red"))
    });
    let first = serials_for(&red, "red.apps.local");
    assert_eq!(first.len(), 1, "{first:?}");

    // Rotated on disk: Envoy holds the new certificate without a restart or a config change,
    // and requests keep succeeding.
    ca.leaf("red", &["red.apps.local", "127.0.0.1"]);
    wait_until(Duration::from_secs(20), || {
        let now = serials_for(&red, "red.apps.local");
        !now.is_empty() && now != first
    });
    for _ in 0..5 {
        assert_eq!(
            web.get("red.apps.local", "/", &[]).map(|(s, _)| s).ok(),
            Some(200)
        );
    }
    for envoy in [&red, &blue, &web] {
        assert_eq!(envoy.stat_sum("update_rejected"), 0, "an Envoy NACKed");
    }
}
