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
