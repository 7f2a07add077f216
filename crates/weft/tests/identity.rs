//! Workload identity end to end: a real `weft server` with its CA, join tokens made with the
//! real `weft join-token` CLI, real `weft agent`s that make their keys, get their certificates
//! and serve them to their real Envoy 1.40 over SDS, and mutual TLS between two proxies
//! configured through the official AWS SDK (ACM certificates and ACM Private CA trust stand for
//! Weft's identity and trust bundle).
//!
//! Topology: `front` (a client of `red.apps.local`; its client policy presents `weft-identity`
//! and trusts Weft's CA for red's SPIFFE id only) → `red` (STRICT TLS with Weft's certificate,
//! requiring a client certificate from Weft's CA naming front's SPIFFE id) → red's sample app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_appmesh::types as t;
use common::mesh::{free_port, sample_app, wait_until, Agent, Proc};
use common::WeftServer;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{MeshSpec, NodeSpec, ServiceSpec};

const RED_ID: &str = "spiffe://weft.local/mesh/apps/virtualNode/red";
const FRONT_ID: &str = "spiffe://weft.local/mesh/apps/virtualNode/front";

/// The id of a token, `weft-jt.<id>.<secret>`.
fn token_id(token: &str) -> &str {
    token.split('.').nth(1).unwrap()
}

/// Mesh `apps`: `red` on `red_port` (STRICT TLS with Weft's certificate, mutual TLS for
/// front's identity only), `red.apps.local` provided by it, and `front`, its client over
/// mutual TLS with Weft's certificate, trusting Weft's CA for red's identity only.
async fn mesh(server: &WeftServer, red_port: u16) {
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    let mut red = NodeSpec::http("127.0.0.1", red_port).sdk();
    red.listeners.as_mut().unwrap()[0].tls = Some(
        t::ListenerTls::builder()
            .mode(t::ListenerTlsMode::Strict)
            .certificate(t::ListenerTlsCertificate::Acm(
                t::ListenerTlsAcmCertificate::builder()
                    .certificate_arn("arn:aws:acm:us-west-2:111122223333:certificate/red")
                    .build()
                    .unwrap(),
            ))
            .validation(
                t::ListenerTlsValidationContext::builder()
                    .trust(t::ListenerTlsValidationContextTrust::Sds(
                        t::TlsValidationContextSdsTrust::builder()
                            .secret_name("weft-trust-bundle")
                            .build()
                            .unwrap(),
                    ))
                    .subject_alternative_names(common::exact_sans(&[FRONT_ID]))
                    .build(),
            )
            .build()
            .unwrap(),
    );
    create_node(&api, "red", red).await;
    api.service("red.apps.local", ServiceSpec::by_node("red"))
        .await;
    let mut front = NodeSpec::client(&["red.apps.local"]).sdk();
    front.backend_defaults = Some(
        t::BackendDefaults::builder()
            .client_policy(
                t::ClientPolicy::builder()
                    .tls(
                        t::ClientPolicyTls::builder()
                            .certificate(t::ClientTlsCertificate::Sds(
                                t::ListenerTlsSdsCertificate::builder()
                                    .secret_name("weft-identity")
                                    .build()
                                    .unwrap(),
                            ))
                            .validation(
                                t::TlsValidationContext::builder()
                                    .trust(t::TlsValidationContextTrust::Acm(
                                        t::TlsValidationContextAcmTrust::builder()
                                            .certificate_authority_arns(
                                                "arn:aws:acm-pca:us-west-2:111122223333:certificate-authority/weft",
                                            )
                                            .build()
                                            .unwrap(),
                                    ))
                                    .subject_alternative_names(common::exact_sans(&[RED_ID]))
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .build(),
    );
    create_node(&api, "front", front).await;
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

/// A `weft agent` (explicit mode, free ports) whose log (stderr, at info) goes to a file.
struct IdentityAgent {
    agent: Agent,
    log: PathBuf,
}

impl IdentityAgent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The serial numbers the agent logged as issued, in order.
    fn issued_serials(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("workload certificate ready"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("serial=")))
            .map(normal_serial)
            .collect()
    }
}

/// Starts `weft agent` for `mesh/apps/virtualNode/<node>` with `env`; waits for Envoy's admin
/// when `wait` is set.
fn spawn_agent(
    server: &WeftServer,
    node: &str,
    app_ports: &[(u16, u16)],
    env: &[(&str, &str)],
    log_dir: &Path,
    wait: bool,
) -> IdentityAgent {
    let (admin_port, egress_port) = (free_port(), free_port());
    let log = log_dir.join(format!("agent-{node}-{admin_port}.log"));
    let ports: Vec<String> = app_ports.iter().map(|(l, a)| format!("{l}={a}")).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.arg("agent")
        .env(
            "APPMESH_RESOURCE_ARN",
            format!("mesh/apps/virtualNode/{node}"),
        )
        .env("APPMESH_XDS_ENDPOINT", &server.xds_addr)
        .env("WEFT_CA_SERVER", &server.addr)
        .env("ENVOY_ADMIN_ACCESS_PORT", admin_port.to_string())
        .env("ENVOY_ADMIN_ACCESS_LOG_FILE", "/dev/null")
        .env("APPMESH_ENVOY_EGRESS_PORT", egress_port.to_string())
        .env("APPMESH_ENVOY_INGRESS_PORT", free_port().to_string())
        .env("ENVOY_CONCURRENCY", "1")
        .env("ENVOY_LOG_LEVEL", "warning")
        .env("WEFT_LISTENER_MODE", "explicit")
        .env("LISTENER_DRAIN_WAIT_TIME_S", "0")
        .env("WEFT_ENVOY_STOP_GRACE_S", "2")
        .env("WEFT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if !ports.is_empty() {
        cmd.env("WEFT_APP_PORTS", ports.join(","));
    }
    cmd.envs(env.iter().copied());
    let agent = Agent {
        proc: Proc(cmd.spawn().unwrap()),
        admin_port,
        egress_port,
    };
    if wait {
        wait_until(Duration::from_secs(20), || {
            agent.admin("/server_info").is_some()
        });
    }
    IdentityAgent { agent, log }
}

/// A serial number as hex without leading zeros, lowercase (Envoy and the CA may differ in
/// both).
fn normal_serial(s: &str) -> String {
    let s = s.trim().trim_matches('"').to_ascii_lowercase();
    let trimmed = s.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// The certificates Envoy's admin `/certs` shows for its own identity (not the CAs): each one's
/// serial (normalised) and its URI SANs.
fn envoy_certs(agent: &Agent) -> Vec<(String, Vec<String>)> {
    let Some(body) = agent.admin("/certs") else {
        return Vec::new();
    };
    let certs: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let mut out = Vec::new();
    for context in certs["certificates"].as_array().into_iter().flatten() {
        for cert in context["cert_chain"].as_array().into_iter().flatten() {
            let serial = normal_serial(cert["serial_number"].as_str().unwrap_or(""));
            let uris = cert["subject_alt_names"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|san| san["uri"].as_str().map(str::to_string))
                .collect();
            out.push((serial, uris));
        }
    }
    out
}

/// Serials of the certificates naming `spiffe_id` that Envoy shows.
fn serials_naming(agent: &Agent, spiffe_id: &str) -> BTreeSet<String> {
    envoy_certs(agent)
        .into_iter()
        .filter(|(_, uris)| uris.iter().any(|u| u == spiffe_id))
        .map(|(serial, _)| serial)
        .collect()
}

/// front → red over mutual TLS: red's app answered.
fn through(front: &Agent) -> bool {
    front
        .get("red.apps.local", "/", &[])
        .map(|(s, b)| s == 200 && b.contains("red"))
        .unwrap_or(false)
}

/// Every file under `dir`, read whole (sockets and other special files skipped).
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(files(&path));
        } else if meta.is_file() {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// An operator's root and intermediate (the intermediate signs): the server's store then
/// holds no private key at all, so any key in it would be a leak. The root's PEM, and the
/// chain and key files for `--ca-cert` / `--ca-key`.
fn operator_ca(dir: &Path) -> (String, PathBuf, PathBuf) {
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::default();
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.distinguished_name
        .push(DnType::CommonName, "Operator root");
    root.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let root_cert = root.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root, root_key);
    let int_key = KeyPair::generate().unwrap();
    let mut int = CertificateParams::default();
    int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int.distinguished_name
        .push(DnType::CommonName, "Operator mesh intermediate");
    int.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let int_cert = int.signed_by(&int_key, &root_issuer).unwrap();
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    std::fs::write(&cert_path, format!("{}{}", int_cert.pem(), root_cert.pem())).unwrap();
    std::fs::write(&key_path, int_key.serialize_pem()).unwrap();
    (root_cert.pem(), cert_path, key_path)
}

fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_join_tokens_get_certificates_from_weft_s_ca_and_their_envoys_speak_mutual_tls_with_them_over_sds(
) {
    let tmp = tempfile::tempdir().unwrap();
    let (root_pem, ca_cert, ca_key) = operator_ca(tmp.path());
    let server = WeftServer::start_with(&[
        "--xds-tls",
        "--ca-cert",
        ca_cert.to_str().unwrap(),
        "--ca-key",
        ca_key.to_str().unwrap(),
    ]);
    let red_port = free_port();
    mesh(&server, red_port).await;
    let (_red_app, red_app_port) = sample_app("red");
    let (red_token, front_token) = (
        common::join_token(&server.addr, "mesh/apps/virtualNode/red", "1h"),
        common::join_token(&server.addr, "mesh/apps/virtualNode/front", "1h"),
    );

    // red's Envoy runs as nobody (as root; App Mesh's APPMESH_IGNORE_UID), with its socket where
    // the operator says: the socket must be Envoy's, and only Envoy's.
    let socket_dir = tmp.path().join("sockets");
    std::fs::create_dir(&socket_dir).unwrap();
    std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let red_socket = socket_dir.join("red-sds.sock");
    let envoy_bin = is_root().then(common::netns::envoy_for_others);
    let mut red_env = vec![
        ("WEFT_JOIN_TOKEN", red_token.as_str()),
        ("APPMESH_SDS_SOCKET_PATH", red_socket.to_str().unwrap()),
    ];
    if let Some(bin) = &envoy_bin {
        red_env.extend([
            ("APPMESH_IGNORE_UID", "65534"),
            ("APPMESH_IGNORE_GID", "65534"),
            ("ENVOY_BIN", bin.to_str().unwrap()),
        ]);
    }
    let red = spawn_agent(
        &server,
        "red",
        &[(red_port, red_app_port)],
        &red_env,
        tmp.path(),
        true,
    );
    // front's token comes from a file; its socket is in its run folder.
    let token_file = tmp.path().join("front-token");
    std::fs::write(&token_file, format!("{front_token}\n")).unwrap();
    let front_run = tmp.path().join("front-run");
    let front = spawn_agent(
        &server,
        "front",
        &[],
        &[
            ("WEFT_JOIN_TOKEN_FILE", token_file.to_str().unwrap()),
            ("WEFT_RUN_DIR", front_run.to_str().unwrap()),
        ],
        tmp.path(),
        true,
    );

    wait_until(Duration::from_secs(40), || through(&front.agent));
    for _ in 0..5 {
        assert!(through(&front.agent));
    }

    // Envoy shows the certificates the CA issued, with their SPIFFE ids.
    for (agent, id) in [(&red, RED_ID), (&front, FRONT_ID)] {
        let issued = agent.issued_serials();
        assert_eq!(issued.len(), 1, "one certificate so far: {}", agent.log());
        let shown = serials_naming(&agent.agent, id);
        assert_eq!(
            shown,
            BTreeSet::from([issued[0].clone()]),
            "{id}: {:?}",
            envoy_certs(&agent.agent)
        );
        // The trust bundle from SDS is the operator's root.
        let dump = agent
            .agent
            .admin("/config_dump?resource=dynamic_active_secrets")
            .unwrap();
        let dump: Value = serde_json::from_str(&dump).unwrap();
        let mut names = Vec::new();
        let mut trusted = String::new();
        for secret in dump["configs"].as_array().into_iter().flatten() {
            names.push(secret["name"].as_str().unwrap_or("").to_string());
            if let Some(ca) =
                secret["secret"]["validation_context"]["trusted_ca"]["inline_bytes"].as_str()
            {
                trusted = ca.to_string();
            }
            if let Some(key) = secret["secret"]["tls_certificate"]["private_key"].as_object() {
                // Envoy redacts the key in its config dump.
                // (inline bytes show as base64 in JSON).
                assert!(
                    key.values()
                        .all(|v| base64_decode(v.as_str().unwrap_or("")) == "[redacted]"),
                    "{id}: the key shows in the config dump: {key:?}"
                );
            }
        }
        names.sort();
        assert_eq!(names, ["weft-identity", "weft-trust-bundle"], "{id}");
        let trusted = base64_decode(&trusted);
        assert_eq!(trusted.trim(), root_pem.trim(), "{id}");
        let full_dump = agent.agent.admin("/config_dump").unwrap();
        assert!(!full_dump.contains("PRIVATE KEY"), "{id}");
    }
    let handshakes = red
        .agent
        .stat_sum(&format!("listener.127.0.0.1_{red_port}.ssl.handshake"));
    assert!(handshakes >= 1, "front reached red over TLS");
    assert_eq!(
        red.agent
            .stat_sum(&format!("listener.127.0.0.1_{red_port}.ssl.no_certificate")),
        0,
        "front presented its certificate"
    );
    // STRICT: a plaintext client gets nothing from red.
    let plaintext = common::mesh::http_get(red_port, "red.apps.local", "/")
        .map(|(s, _)| s)
        .unwrap_or(0);
    assert_ne!(plaintext, 200);

    // The SDS sockets: Envoy's, 0600, never world-writable.
    let front_socket = front_run.join("sds.sock");
    for socket in [&red_socket, &front_socket] {
        let meta = std::fs::symlink_metadata(socket).unwrap();
        assert!(meta.file_type().is_socket(), "{}", socket.display());
        assert_eq!(meta.mode() & 0o777, 0o600, "{}", socket.display());
        assert_eq!(meta.mode() & 0o002, 0, "not world-writable");
    }
    if envoy_bin.is_some() {
        let meta = std::fs::metadata(&red_socket).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "Envoy's own");
    }

    // Keys never leave the host: not in the server's data dir (it holds no private key at all
    // with an operator CA), not in the agents' run folders, never in a log.
    for (path, bytes) in files(&server.data_dir).into_iter().chain(files(&front_run)) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("PRIVATE KEY"),
            "a private key in {}",
            path.display()
        );
    }
    for (agent, token) in [(&red, &red_token), (&front, &front_token)] {
        let log = agent.log();
        assert!(!log.contains("PRIVATE KEY") && !log.contains("BEGIN CERTIFICATE"));
        let secret = token.rsplit('.').next().unwrap();
        assert!(!log.contains(secret), "the token's secret is in the log");
        assert!(
            log.contains(token_id(token)),
            "the log names the token by id"
        );
    }

    // Stopping the agent removes its socket.
    drop(front);
    assert!(!front_socket.exists());
}

fn base64_decode(text: &str) -> String {
    use base64::Engine;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_20_s_lifetime_certificates_are_replaced_several_times_under_open_loop_load_and_no_request_fails(
) {
    // A renewal every 10 s (half life).
    let server = WeftServer::start_with(&["--xds-tls", "--workload-cert-ttl", "20s"]);
    let red_port = free_port();
    mesh(&server, red_port).await;
    let (_red_app, red_app_port) = sample_app("red");
    let tmp = tempfile::tempdir().unwrap();
    let red_token = common::join_token(&server.addr, "mesh/apps/virtualNode/red", "1h");
    let front_token = common::join_token(&server.addr, "mesh/apps/virtualNode/front", "1h");
    let red = spawn_agent(
        &server,
        "red",
        &[(red_port, red_app_port)],
        &[("WEFT_JOIN_TOKEN", &red_token)],
        tmp.path(),
        true,
    );
    let front = spawn_agent(
        &server,
        "front",
        &[],
        &[("WEFT_JOIN_TOKEN", &front_token)],
        tmp.path(),
        true,
    );
    wait_until(Duration::from_secs(40), || through(&front.agent));

    // Open loop: a request every 20 ms on the clock, each on its own connection and task, so a
    // stalled one never delays the next; it runs until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, port) = (stop.clone(), front.agent.egress_port);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                sent.push(tokio::spawn(async move {
                    let answer =
                        weft_test_support::http::exchange(port, "GET", "red.apps.local", "/", &[])
                            .await;
                    matches!(answer, Ok(r) if r.status == 200 && r.body.contains("red"))
                }));
            }
            let mut results = Vec::new();
            for request in sent {
                results.push(request.await.unwrap_or(false));
            }
            results
        })
    };

    // Meanwhile, Envoy's /certs shows each proxy's certificate replaced at least three times.
    let (mut seen_red, mut seen_front) = (BTreeSet::new(), BTreeSet::new());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    while Instant::now() < deadline && (seen_red.len() < 4 || seen_front.len() < 4) {
        seen_red.extend(serials_naming(&red.agent, RED_ID));
        seen_front.extend(serials_naming(&front.agent, FRONT_ID));
        std::thread::sleep(Duration::from_millis(250));
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = load.await.unwrap();
    assert!(
        seen_red.len() >= 4 && seen_front.len() >= 4,
        "three renewals each within {took:?}: red {seen_red:?}, front {seen_front:?}\n{}",
        red.log()
    );
    let failed = results.iter().filter(|ok| !**ok).count();
    assert_eq!(failed, 0, "{failed} of {} requests failed", results.len());
    assert!(results.len() > 1000, "the load ran: {}", results.len());
    // Envoy served exactly what the CA issued, each a new key's certificate.
    for (agent, seen) in [(&red, &seen_red), (&front, &seen_front)] {
        let issued: BTreeSet<String> = agent.issued_serials().into_iter().collect();
        assert!(seen.is_subset(&issued), "{seen:?} ⊄ {issued:?}");
        // Renewals were proved by the current key: the token was used once, to join.
        let joins = agent
            .log()
            .matches("asking Weft's CA for the proxy's certificate with join token")
            .count();
        assert_eq!(joins, 1, "{}", agent.log());
    }
    // Both proxies hold their xDS streams over mutual TLS, and reconnected when the
    // certificate of their first connection expired (the server checks identities again at
    // least once per certificate lifetime), with no request failing meanwhile.
    for agent in [&red, &front] {
        let handshakes = agent.agent.stat_sum("cluster.xds_cluster.ssl.handshake");
        assert!(handshakes >= 2, "{handshakes} xDS handshakes");
    }
}

/// Spawns an agent for `node` with `token` (no wait for Envoy), and waits for it to exit:
/// its exit status and log.
fn refused(server: &WeftServer, node: &str, token: &str, dir: &Path) -> (i32, String) {
    let mut agent = spawn_agent(server, node, &[], &[("WEFT_JOIN_TOKEN", token)], dir, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = agent.agent.proc.0.try_wait().unwrap() {
            return (status.code().unwrap_or(-1), agent.log());
        }
        assert!(
            Instant::now() < deadline,
            "the agent kept running: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_revoked_or_foreign_join_token_ends_the_agent_with_an_error_naming_the_token_id() {
    let server = WeftServer::start_with(&["--xds-tls"]);
    mesh(&server, free_port()).await;
    let tmp = tempfile::tempdir().unwrap();
    let good = common::join_token(&server.addr, "mesh/apps/virtualNode/red", "1h");
    let id = token_id(&good).to_string();

    // The right id with the wrong secret.
    let wrong = format!("weft-jt.{id}.not-the-secret-at-all");
    let (code, log) = refused(&server, "red", &wrong, tmp.path());
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains(&format!("refused join token {id} (401)")),
        "{log}"
    );
    assert!(!log.contains("not-the-secret-at-all"), "{log}");

    // A token for another node.
    let (code, log) = refused(&server, "front", &good, tmp.path());
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("the join token is for another virtual node or gateway"),
        "{log}"
    );

    // A revoked token.
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["join-token", "revoke", &id, "--server", &server.addr])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (code, log) = refused(&server, "red", &good, tmp.path());
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains(&format!("refused join token {id} (403)")),
        "{log}"
    );

    // Not a token at all: refused before anything starts, without repeating it.
    let (code, log) = refused(&server, "red", "my-password", tmp.path());
    assert_ne!(code, 0, "{log}");
    assert!(log.contains("WEFT_JOIN_TOKEN"), "{log}");
    assert!(!log.contains("my-password"), "{log}");
}
