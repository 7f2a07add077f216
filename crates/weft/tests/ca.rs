//! Weft's CA against a real `weft server`: join tokens made with the real `weft join-token`
//! CLI, CSRs made with rcgen as an agent makes them, answers read over real HTTP, certificates
//! read with x509-parser and their chains verified with rustls-webpki.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::WeftServer;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{MeshSpec, NodeSpec, ServiceSpec};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Runs `weft join-token ARGS --server <server>`; its stdout, or a panic with its stderr.
fn cli(server: &WeftServer, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("join-token")
        .args(args)
        .args(["--server", &server.addr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weft join-token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A token for `resource`, created with the CLI.
fn token(server: &WeftServer, resource: &str, ttl: &str) -> String {
    cli(server, &["create", "--resource", resource, "--ttl", ttl])
        .trim()
        .to_string()
}

/// Mesh `apps`: nodes `red` (DNS `red.apps.local`) and `blue`, and virtual service `red.svc`
/// provided by `red`.
async fn apps(server: &WeftServer) {
    let api = MeshApi::create(&server.client(), "apps", MeshSpec::new()).await;
    api.node("red", NodeSpec::http("red.apps.local", 8080))
        .await;
    api.node("blue", NodeSpec::http("blue.apps.local", 8080))
        .await;
    api.service("red.svc", ServiceSpec::by_node("red")).await;
}

/// A CSR for `key` asking for `sans`.
fn csr(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params
        .distinguished_name
        .push(DnType::CommonName, "workload");
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// `POST /weft/v1/certificates`: status and JSON answer.
async fn sign(server: &WeftServer, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/weft/v1/certificates", server.addr))
        .json(&body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A certificate for `key` with a join token; panics unless the server issues one.
async fn join(server: &WeftServer, token: &str, key: &KeyPair) -> Value {
    let (status, answer) = sign(server, Some(token), json!({ "csr": csr(key, Vec::new()) })).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// A renewal request: a CSR for `new_key`, the current certificate, and a proof by
/// `proof_key` (the current key, when the agent is honest).
fn renewal(current: &str, new_key: &KeyPair, proof_key: &KeyPair) -> Value {
    let pem = csr(new_key, Vec::new());
    let der =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
    let proof = weft_ca::renewal::sign(proof_key, der.as_ref()).unwrap();
    json!({
        "csr": pem,
        "certificate": current,
        "proof": base64::engine::general_purpose::STANDARD.encode(proof),
    })
}

async fn trust_bundle(server: &WeftServer) -> String {
    let answer: Value = reqwest::get(format!("{}/weft/v1/trust-bundle", server.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["trustBundle"].as_str().unwrap().to_string()
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The SAN entries of a PEM certificate, as `URI(…)` / `DNSName(…)`.
fn sans(pem: &str) -> Vec<String> {
    let der = &ders(pem)[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => format!("URI({u})"),
            GeneralName::DNSName(d) => format!("DNSName({d})"),
            other => format!("{other:?}"),
        })
        .collect()
}

/// Verifies the answer's leaf through its chain to `bundle`, for both TLS roles.
fn chains_to(answer: &Value, bundle: &str) {
    let leaf = ders(answer["certificate"].as_str().unwrap()).remove(0);
    let chain = ders(answer["chain"].as_str().unwrap());
    let roots = ders(bundle);
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
        .collect();
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &chain,
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .unwrap();
    }
}

/// Seconds from a PEM certificate's start of validity to its end; it must not be a CA.
fn lifetime(pem: &str) -> i64 {
    let der = &ders(pem)[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    assert!(!cert.is_ca());
    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()
}

fn public_key(pem: &str) -> Vec<u8> {
    let der = &ders(pem)[0];
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    cert.public_key().raw.to_vec()
}

#[tokio::test]
async fn a_csr_with_a_valid_token_gets_a_certificate_naming_its_resource_that_chains_to_the_trust_bundle(
) {
    let server = WeftServer::start();
    apps(&server).await;
    let token = token(&server, "mesh/apps/virtualNode/red", "1h");
    assert!(token.starts_with("weft-jt."), "{token}");
    let key = KeyPair::generate().unwrap();
    let answer = join(&server, &token, &key).await;
    assert_eq!(
        answer["spiffeId"],
        "spiffe://weft.local/mesh/apps/virtualNode/red"
    );
    let cert = answer["certificate"].as_str().unwrap();
    assert_eq!(
        sans(cert),
        vec![
            "URI(spiffe://weft.local/mesh/apps/virtualNode/red)",
            "DNSName(red.apps.local)",
            "DNSName(red.svc)",
        ]
    );
    assert_eq!(answer["dnsNames"], json!(["red.apps.local", "red.svc"]));
    assert_eq!(
        public_key(cert),
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );
    let bundle = trust_bundle(&server).await;
    assert_eq!(answer["trustBundle"], bundle.as_str());
    chains_to(&answer, &bundle);
    // 24 hours by default (and a minute of backdating for clock skew).
    assert_eq!(lifetime(cert), 24 * 3600 + 60);
    // The same token serves another replica with its own key.
    let other = KeyPair::generate().unwrap();
    let second = join(&server, &token, &other).await;
    assert_ne!(second["serialNumber"], answer["serialNumber"]);
}

#[tokio::test]
async fn requested_extra_sans_are_not_granted_and_the_lifetime_follows_the_flag() {
    let server = WeftServer::start_with(&[
        "--workload-cert-ttl",
        "2h",
        "--trust-domain",
        "corp.example",
    ]);
    apps(&server).await;
    let token = token(&server, "mesh/apps/virtualNode/red", "10m");
    let key = KeyPair::generate().unwrap();
    let asked = csr(
        &key,
        vec![
            SanType::DnsName("evil.example.com".try_into().unwrap()),
            SanType::DnsName("blue.apps.local".try_into().unwrap()),
            SanType::IpAddress("10.0.0.1".parse().unwrap()),
            SanType::URI(
                "spiffe://corp.example/mesh/apps/virtualNode/red"
                    .try_into()
                    .unwrap(),
            ),
        ],
    );
    let (status, answer) = sign(&server, Some(&token), json!({ "csr": asked })).await;
    assert_eq!(status, 200, "{answer}");
    let cert = answer["certificate"].as_str().unwrap();
    assert_eq!(
        sans(cert),
        vec![
            "URI(spiffe://corp.example/mesh/apps/virtualNode/red)",
            "DNSName(red.apps.local)",
            "DNSName(red.svc)",
        ]
    );
    assert_eq!(lifetime(cert), 2 * 3600 + 60);
}

#[tokio::test]
async fn a_token_for_node_a_cannot_get_a_certificate_for_node_b() {
    let server = WeftServer::start();
    apps(&server).await;
    let token = token(&server, "mesh/apps/virtualNode/red", "1h");
    let key = KeyPair::generate().unwrap();
    let for_blue = csr(
        &key,
        vec![SanType::URI(
            "spiffe://weft.local/mesh/apps/virtualNode/blue"
                .try_into()
                .unwrap(),
        )],
    );
    let (status, answer) = sign(&server, Some(&token), json!({ "csr": for_blue })).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "BadRequest");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("virtualNode/blue") && message.contains("virtualNode/red"),
        "{message}"
    );
    // A subject naming blue is refused the same way.
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        "spiffe://weft.local/mesh/apps/virtualNode/blue",
    );
    let by_subject = params.serialize_request(&key).unwrap().pem().unwrap();
    let (status, _) = sign(&server, Some(&token), json!({ "csr": by_subject })).await;
    assert_eq!(status, 400);
    // Without asking, the certificate names red, whatever the requester wanted.
    let answer = join(&server, &token, &key).await;
    assert!(sans(answer["certificate"].as_str().unwrap())
        .iter()
        .all(|s| !s.contains("blue")));
}

#[tokio::test]
async fn an_expired_and_a_revoked_token_are_refused() {
    let server = WeftServer::start();
    apps(&server).await;
    let key = KeyPair::generate().unwrap();
    let request = json!({ "csr": csr(&key, Vec::new()) });

    let short = token(&server, "mesh/apps/virtualNode/red", "1s");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, answer) = sign(&server, Some(&short), request.clone()).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["code"], "Unauthorized");
    assert!(
        answer["message"].as_str().unwrap().contains("expired"),
        "{answer}"
    );

    let revoked = token(&server, "mesh/apps/virtualNode/red", "1h");
    join(&server, &revoked, &key).await;
    let id = revoked.split('.').nth(1).unwrap();
    let out = cli(&server, &["revoke", id]);
    assert!(out.contains(id), "{out}");
    let (status, answer) = sign(&server, Some(&revoked), request.clone()).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["code"], "Forbidden");
    assert!(
        answer["message"].as_str().unwrap().contains("revoked"),
        "{answer}"
    );

    // The list shows both, and never a secret.
    let list = cli(&server, &["list"]);
    assert!(
        list.contains("expired") && list.contains("revoked"),
        "{list}"
    );
    let secret = revoked.rsplit('.').next().unwrap();
    assert!(!list.contains(secret));
    let json_list = cli(&server, &["list", "--json"]);
    assert!(
        !json_list.contains(secret) && !json_list.contains("weft-jt."),
        "{json_list}"
    );

    // A wrong secret, garbage and no credential at all.
    let forged = format!("weft-jt.{id}.not-the-secret");
    for (bearer, code) in [
        (Some(forged.as_str()), 401),
        (Some("garbage"), 401),
        (None, 401),
    ] {
        let (status, answer) = sign(&server, bearer, request.clone()).await;
        assert_eq!(status, code, "{bearer:?}: {answer}");
        assert!(answer["message"].is_string());
    }
}

#[tokio::test]
async fn renewal_with_the_current_certificate_works_and_without_it_fails() {
    let server = WeftServer::start();
    apps(&server).await;
    let token = token(&server, "mesh/apps/virtualNode/red", "1h");
    let old_key = KeyPair::generate().unwrap();
    let first = join(&server, &token, &old_key).await;
    let current = first["certificate"].as_str().unwrap();
    // The token is only for the first time: revoking it does not stop renewal.
    cli(&server, &["revoke", token.split('.').nth(1).unwrap()]);

    let new_key = KeyPair::generate().unwrap();
    let (status, renewed) = sign(&server, None, renewal(current, &new_key, &old_key)).await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["spiffeId"], first["spiffeId"]);
    assert_ne!(renewed["serialNumber"], first["serialNumber"]);
    let renewed_cert = renewed["certificate"].as_str().unwrap();
    assert_eq!(
        public_key(renewed_cert),
        rcgen::PublicKeyData::subject_public_key_info(&new_key)
    );
    chains_to(&renewed, &trust_bundle(&server).await);

    // The renewed certificate renews in turn.
    let newer_key = KeyPair::generate().unwrap();
    let (status, answer) = sign(&server, None, renewal(renewed_cert, &newer_key, &new_key)).await;
    assert_eq!(status, 200, "{answer}");

    // A proof by any key but the current certificate's is refused.
    let stranger = KeyPair::generate().unwrap();
    let (status, answer) = sign(&server, None, renewal(current, &stranger, &stranger)).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("proof"),
        "{answer}"
    );
    // No certificate, no proof: no credential.
    let mut bare = renewal(current, &new_key, &old_key);
    bare.as_object_mut().unwrap().remove("certificate");
    let (status, _) = sign(&server, None, bare).await;
    assert_eq!(status, 401);
    let mut unproven = renewal(current, &new_key, &old_key);
    unproven.as_object_mut().unwrap().remove("proof");
    let (status, _) = sign(&server, None, unproven).await;
    assert_eq!(status, 401);
    // A certificate this CA did not issue, even one naming red, is refused.
    let mut forged = CertificateParams::default();
    forged.subject_alt_names = vec![SanType::URI(
        "spiffe://weft.local/mesh/apps/virtualNode/red"
            .try_into()
            .unwrap(),
    )];
    let forged = forged.self_signed(&stranger).unwrap().pem();
    let (status, answer) = sign(&server, None, renewal(&forged, &new_key, &stranger)).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("not issued"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_restart_keeps_the_root_and_certificates_issued_before_it_renew() {
    let mut server = WeftServer::start();
    apps(&server).await;
    let bundle = trust_bundle(&server).await;
    let key = KeyPair::generate().unwrap();
    let token = token(&server, "mesh/apps/virtualNode/red", "1h");
    let first = join(&server, &token, &key).await;
    let dir = server.keep_dir();
    assert!(server.terminate());
    let server = WeftServer::start_in(&server.data_dir, &[]);
    assert_eq!(trust_bundle(&server).await, bundle);
    // The token survives the restart, and so does the certificate's standing.
    join(&server, &token, &key).await;
    let new_key = KeyPair::generate().unwrap();
    let current = first["certificate"].as_str().unwrap();
    let (status, answer) = sign(&server, None, renewal(current, &new_key, &key)).await;
    assert_eq!(status, 200, "{answer}");
    drop(dir);
}

/// An operator's root and an intermediate under it, written to `dir`: returns the root's PEM,
/// the intermediate's PEM, and the paths of the certificate file (intermediate then root) and
/// of the intermediate's key (PKCS#8 PEM).
fn operator_ca(dir: &Path) -> (String, String, std::path::PathBuf, std::path::PathBuf) {
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
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca-key.pem");
    std::fs::write(&cert_path, format!("{}{}", int_cert.pem(), root_cert.pem())).unwrap();
    std::fs::write(&key_path, int_key.serialize_pem()).unwrap();
    (root_cert.pem(), int_cert.pem(), cert_path, key_path)
}

/// The 32-byte secret scalar of a P-256 PKCS#8 key (after `INTEGER 1, OCTET STRING (32)` of
/// its SEC1 structure), to find the key in any encoding that carries it raw.
fn private_scalar(pkcs8: &[u8]) -> Vec<u8> {
    let marker = [0x02, 0x01, 0x01, 0x04, 0x20];
    let at = pkcs8
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap();
    pkcs8[at + marker.len()..at + marker.len() + 32].to_vec()
}

/// Every file under `dir`, read whole.
fn files(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(std::fs::read(&path).unwrap());
        }
    }
    out
}

/// The base64 bodies of the `PRIVATE KEY` PEM blocks in `bytes` (JSON-escaped newlines
/// removed).
fn private_keys(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut keys = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("PRIVATE KEY-----") {
        let after = &rest[start + "PRIVATE KEY-----".len()..];
        let Some(end) = after.find("-----END") else {
            break;
        };
        let body: String = after[..end]
            .replace("\\n", "")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if !body.is_empty() {
            keys.push(body);
        }
        rest = &after[end..];
        rest = rest
            .find("PRIVATE KEY-----")
            .map(|i| &rest[i + 16..])
            .unwrap_or("");
    }
    keys
}

#[tokio::test]
async fn an_operator_intermediate_signs_and_is_never_copied_into_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (root_pem, int_pem, cert_path, key_path) = operator_ca(tmp.path());
    let server = WeftServer::start_with(&[
        "--ca-cert",
        cert_path.to_str().unwrap(),
        "--ca-key",
        key_path.to_str().unwrap(),
    ]);
    apps(&server).await;
    let bundle = trust_bundle(&server).await;
    assert_eq!(bundle, root_pem);
    let token = token(&server, "mesh/apps/virtualNode/red", "1h");
    let key = KeyPair::generate().unwrap();
    let answer = join(&server, &token, &key).await;
    assert_eq!(answer["chain"], int_pem.as_str());
    chains_to(&answer, &root_pem);
    // Neither the operator's key nor any other private key is in the data dir.
    for file in files(&server.data_dir) {
        assert!(private_keys(&file).is_empty());
    }
}

#[tokio::test]
async fn the_store_holds_no_private_key_not_even_the_cas_own() {
    let mut server = WeftServer::start();
    apps(&server).await;
    let token = token(&server, "mesh/apps/virtualNode/red", "1h");
    let key = KeyPair::generate().unwrap();
    let first = join(&server, &token, &key).await;
    let new_key = KeyPair::generate().unwrap();
    let (status, _) = sign(
        &server,
        None,
        renewal(first["certificate"].as_str().unwrap(), &new_key, &key),
    )
    .await;
    assert_eq!(status, 200);
    let bundle = trust_bundle(&server).await;
    let _dir = server.keep_dir();
    assert!(server.terminate());

    let mut found = Vec::new();
    let secret = token.rsplit('.').next().unwrap();
    for file in files(&server.data_dir) {
        found.extend(private_keys(&file));
        for workload in [&key, &new_key] {
            let scalar = private_scalar(&workload.serialize_der());
            assert!(
                !file.windows(scalar.len()).any(|w| w == scalar),
                "a workload key is in the store"
            );
        }
        let text = String::from_utf8_lossy(&file);
        assert!(
            !text.contains(secret),
            "a join token's secret is in the store"
        );
    }
    // Not even the CA's own key: it is sealed under the key-encryption key.
    assert!(found.is_empty(), "a private key is in the data dir");
    assert!(bundle.contains("BEGIN CERTIFICATE"));
}

/// The raw value of the CA's root record in the embedded store of `data_dir` (the server
/// stopped).
async fn raw_root_record(data_dir: &Path) -> String {
    use weft_store::Store;
    let store = weft_store::EmbeddedStore::open(weft_store::EmbeddedOptions::new(data_dir))
        .await
        .unwrap();
    let kv = store.get("ca/root").await.unwrap().unwrap();
    String::from_utf8(kv.value.to_vec()).unwrap()
}

#[tokio::test]
async fn the_root_key_is_sealed_under_the_kek_and_opens_only_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = tmp.path().join("kek");
    let kek_arg = kek.to_str().unwrap();
    let data_dir = tmp.path().join("data");
    let mut server = WeftServer::start_in(&data_dir, &["--auth-kek-file", kek_arg]);
    apps(&server).await;
    let bundle = trust_bundle(&server).await;
    assert!(server.terminate());

    // The store holds the root's certificate, and its key only sealed.
    let raw = raw_root_record(&data_dir).await;
    assert!(raw.contains("BEGIN CERTIFICATE"), "{raw}");
    assert!(
        !raw.contains("PRIVATE KEY"),
        "the CA key is in the store in clear: {raw}"
    );
    assert!(raw.contains("sealedPrivateKey"), "{raw}");

    // The same key-encryption key: the same root signs.
    let mut server = WeftServer::start_in(&data_dir, &["--auth-kek-file", kek_arg]);
    assert_eq!(trust_bundle(&server).await, bundle);
    let token = token(&server, "mesh/apps/virtualNode/red", "1h");
    let answer = join(&server, &token, &KeyPair::generate().unwrap()).await;
    chains_to(&answer, &bundle);
    assert!(server.terminate());

    // Another one: the server refuses to start, naming the key.
    let other = tmp.path().join("other-kek");
    std::fs::write(
        &other,
        base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
    )
    .unwrap();
    let stderr = refused_start(&data_dir, &other);
    assert!(
        stderr.contains("key-encryption key") && stderr.contains(other.to_str().unwrap()),
        "{stderr}"
    );
}

/// Runs `weft server` on the embedded store in `data_dir` with `--auth-kek-file kek`, expecting
/// it to refuse to start; its stderr.
fn refused_start(data_dir: &Path, kek: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--xds-listen",
            "127.0.0.1:0",
        ])
        .args(["--dns-listen", "127.0.0.1:0", "--insecure-plaintext-xds"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--auth-kek-file")
        .arg(kek)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_missing_kek_file_on_a_store_with_a_sealed_root_is_refused_and_not_created() {
    let tmp = tempfile::tempdir().unwrap();
    let kek = tmp.path().join("kek");
    let data_dir = tmp.path().join("data");
    let mut server = WeftServer::start_in(&data_dir, &["--auth-kek-file", kek.to_str().unwrap()]);
    let bundle = trust_bundle(&server).await;
    assert!(server.terminate());

    // As a replica started without the file its peers share: the root it would have to open
    // was sealed under that file's key, so no new key is made.
    let missing = tmp.path().join("replica-kek");
    let stderr = refused_start(&data_dir, &missing);
    assert!(
        stderr.contains(&format!(
            "the key-encryption key file {} does not exist",
            missing.display()
        )) && stderr.contains("the store's CA root")
            && stderr.contains("sealed under a key-encryption key: the key that file should hold"),
        "{stderr}"
    );
    assert!(!missing.exists(), "a key file was created");
    assert!(
        !missing.with_extension("tmp").exists(),
        "a partial key file was left"
    );

    // With the file the store was sealed under, the same root again.
    std::fs::copy(&kek, &missing).unwrap();
    let mut server =
        WeftServer::start_in(&data_dir, &["--auth-kek-file", missing.to_str().unwrap()]);
    assert_eq!(trust_bundle(&server).await, bundle);
    assert!(server.terminate());
}

#[tokio::test]
async fn malformed_oversized_and_misdirected_requests_get_a_clear_json_error() {
    let server = WeftServer::start();
    apps(&server).await;
    let token = token(&server, "mesh/apps/virtualNode/red", "1h");
    let cases = [
        json!({ "csr": "not a csr" }),
        json!({ "csr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIBAA==\n-----END CERTIFICATE REQUEST-----\n" }),
        json!({ "nothing": true }),
    ];
    for body in cases {
        let (status, answer) = sign(&server, Some(&token), body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], "BadRequest");
    }
    let http = reqwest::Client::new();
    let url = format!("{}/weft/v1/certificates", server.addr);
    let response = http
        .post(&url)
        .bearer_auth(&token)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let huge = json!({ "csr": "A".repeat(100 * 1024) });
    let response = http
        .post(&url)
        .bearer_auth(&token)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["code"], "PayloadTooLarge");

    // Tokens for what does not exist, or cannot, are refused at creation (the join-token
    // calls are signed by the administrator, as `weft join-token` signs them).
    let tokens = "/weft/v1/join-tokens";
    let admin = |method: &'static str, path: String, body: Option<Value>| {
        let addr = server.addr.clone();
        async move { common::signed_request(&addr, method, &path, body, "weft").await }
    };
    for (resource, code) in [
        ("mesh/apps/virtualNode/ghost", 404),
        ("mesh/apps/virtualService/red.svc", 400),
        ("mesh/nope/virtualGateway/in", 404),
    ] {
        let response = admin("POST", tokens.into(), Some(json!({ "resource": resource }))).await;
        assert_eq!(response.status().as_u16(), code, "{resource}");
        let answer: Value = response.json().await.unwrap();
        assert!(answer["message"].is_string());
    }
    let response = admin("DELETE", format!("{tokens}/0123456789abcdef"), None).await;
    assert_eq!(response.status().as_u16(), 404);
    // Unsigned, they are refused.
    let response = http
        .post(format!("{}{tokens}", server.addr))
        .json(&json!({ "resource": "mesh/apps/virtualNode/blue" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["code"], "MissingAuthenticationTokenException");
    // The API answer to a create carries the token once; the list never does.
    let created: Value = admin(
        "POST",
        tokens.into(),
        Some(json!({ "resource": "mesh/apps/virtualNode/blue", "ttlSeconds": 120 })),
    )
    .await
    .json()
    .await
    .unwrap();
    assert!(created["token"].as_str().unwrap().starts_with("weft-jt."));
    assert_eq!(created["state"], "active");
    let listed: Value = admin("GET", tokens.into(), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["joinTokens"].as_array().unwrap().len(), 2);
    assert!(listed["joinTokens"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("token").is_none()));
}
