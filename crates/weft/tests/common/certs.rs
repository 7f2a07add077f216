//! A test CA (rcgen, ECDSA P-256) writing PEM files for the proxies' `file` certificates, as
//! the App Mesh TLS walkthroughs make them with openssl.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A leaf certificate's chain and key paths.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

/// A test CA writing PEM files into `dir`.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate's path (PEM).
    pub cert: String,
    dir: std::path::PathBuf,
}

impl Ca {
    /// A new CA whose certificate is written to `dir/ca.pem`.
    pub fn new(dir: &std::path::Path) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Weft test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let cert = dir.join("ca.pem");
        std::fs::write(&cert, issuer.pem()).unwrap();
        Ca {
            issuer,
            cert: cert.display().to_string(),
            dir: dir.to_path_buf(),
        }
    }

    /// A leaf certificate for `name` with DNS (or IP) SANs `sans`, written to `dir/<name>.pem`
    /// and its key to `dir/<name>.key`.
    pub fn leaf(&self, name: &str, sans: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: cert_path.display().to_string(),
            key: key_path.display().to_string(),
        }
    }
}

/// A workload certificate from the Weft server at `addr` for `resource`, joined with a join
/// token from the CLI and a CSR made here as an agent makes it: chain and key, PEM.
pub async fn workload_certificate(addr: &str, resource: &str) -> (String, String) {
    let token = super::join_token(addr, resource, "10m");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "workload");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let response = reqwest::Client::new()
        .post(format!("{addr}/weft/v1/certificates"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "csr": csr }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    let chain = format!(
        "{}{}",
        answer["certificate"].as_str().unwrap(),
        answer["chain"].as_str().unwrap()
    );
    (chain, key.serialize_pem())
}

/// The trust bundle of the Weft server at `addr` (PEM).
pub async fn trust_bundle(addr: &str) -> String {
    let answer: serde_json::Value = reqwest::get(format!("{addr}/weft/v1/trust-bundle"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["trustBundle"].as_str().unwrap().to_string()
}

/// A gRPC channel to the xDS listener at `addr` over mutual TLS: the server verified against
/// `bundle` (Weft's trust bundle), the client presenting `identity` (a workload certificate's
/// chain and key, as [`workload_certificate`] gives them).
pub async fn xds_tls_channel(
    addr: &str,
    bundle: &str,
    identity: (String, String),
) -> tonic::transport::Channel {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            CertificateDer::pem_slice_iter(identity.0.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            PrivateKeyDer::from_pem_slice(identity.1.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tls_channel(addr, std::sync::Arc::new(config)).await
}

/// A gRPC channel to `addr` (an IP address and port) over TLS with `config`.
pub async fn tls_channel(
    addr: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> tonic::transport::Channel {
    use rustls::pki_types::ServerName;
    let target = addr.to_string();
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let (target, config) = (target.clone(), config.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                let ip: std::net::SocketAddr = target.parse().unwrap();
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(ServerName::IpAddress(ip.ip().into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap()
}
