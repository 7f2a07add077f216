//! The signer: a CA certificate and its key, and the certificates it issues.
//!
//! Either a root Weft generated (ECDSA P-256, ten years, its own SPIFFE id
//! `spiffe://<trust-domain>` in its SAN) or an operator's CA given as PEM: the signing
//! certificate first, then any intermediates above it, ideally ending with the root. The trust
//! bundle is the self-signed certificates of that file (or, if none is, its last certificate);
//! the chain sent after each leaf is every other certificate of the file, in order.
//!
//! Workload certificates are X.509-SVIDs: one URI SAN (the SPIFFE id), the DNS names the server
//! grants, `CA:FALSE`, key usage `digitalSignature`, extended key usages `serverAuth` and
//! `clientAuth` (a proxy is both), a random 128-bit serial, valid from a minute before issue
//! (clock skew) for the configured lifetime, never past the signer's own expiry.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::csr::VerifiedCsr;
use crate::identity::{Resource, TrustDomain};
use crate::CaError;

/// How long a root Weft generates is valid.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How far before "now" certificates start being valid, for peers whose clocks are behind.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// Where the signer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A root Weft generated and keeps in its store.
    Generated,
    /// The operator's CA (`--ca-cert`, `--ca-key`), read from files, not stored.
    Operator,
}

/// A root Weft generated, as the store keeps it (PEM certificate and PKCS#8 PEM key).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootRecord {
    /// The root certificate (PEM).
    pub certificate: String,
    /// The root's private key (PKCS#8 PEM).
    pub private_key: String,
}

impl fmt::Debug for RootRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootRecord")
            .field("certificate", &self.certificate)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// The CA: signs workload certificates and checks the ones it issued.
pub struct Authority {
    trust_domain: TrustDomain,
    source: Source,
    issuer: Issuer<'static, KeyPair>,
    /// The signing certificate's DER, to check the certificates it issued.
    signer_der: Vec<u8>,
    signer_not_after: SystemTime,
    chain_pem: String,
    bundle_pem: String,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A workload certificate, with what a proxy needs beside it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The leaf certificate (PEM).
    pub certificate_pem: String,
    /// The certificates between the leaf and the trust bundle (PEM; empty under Weft's root).
    pub chain_pem: String,
    /// The CA certificates peers trust (PEM).
    pub trust_bundle_pem: String,
    /// The SPIFFE id in the SAN.
    pub spiffe_id: String,
    /// The DNS names in the SAN.
    pub dns_names: Vec<String>,
    /// The serial number, in hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// What a certificate this CA issued says, once checked (see [`Authority::verify_issued`]).
#[derive(Debug, Clone)]
pub struct Holder {
    /// The resource its SPIFFE id names.
    pub resource: Resource,
    /// Its subject public key info (DER), whose key must sign a renewal proof.
    pub public_key_der: Vec<u8>,
    /// Its serial, in hex.
    pub serial: String,
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// A random, positive 128-bit serial number.
fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Crypto("no randomness".into()))?;
    // Positive (top bit clear) and sixteen significant bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| CaError::InvalidInput(format!("not an X.509 certificate: {e}")))
}

fn pem_of(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Whether a certificate is self-signed (its own issuer, and its signature verifies with its own
/// key).
fn self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok()
}

impl Authority {
    /// Generates a root for `trust_domain`: an ECDSA P-256 key and a self-signed CA certificate
    /// valid from `now` for [`ROOT_LIFETIME`]. Returns it with the record to store.
    pub fn generate_root(
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<(Authority, RootRecord), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Weft");
        dn.push(DnType::CommonName, "Weft root CA");
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::URI(trust_domain.id().try_into().map_err(
                |_| CaError::InvalidInput("trust domain is not ASCII".into()),
            )?)];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial()?);
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + ROOT_LIFETIME);
        let cert = params.self_signed(&key)?;
        let record = RootRecord {
            certificate: cert.pem(),
            private_key: key.serialize_pem(),
        };
        let authority = Authority::from_pem(
            trust_domain,
            &record.certificate,
            &record.private_key,
            Source::Generated,
            now,
        )?;
        Ok((authority, record))
    }

    /// A root Weft generated earlier, as the store kept it.
    pub fn from_record(
        trust_domain: &TrustDomain,
        record: &RootRecord,
        now: SystemTime,
    ) -> Result<Authority, CaError> {
        Authority::from_pem(
            trust_domain,
            &record.certificate,
            &record.private_key,
            Source::Generated,
            now,
        )
    }

    /// An operator's root or intermediate: `cert_pem` holds the signing certificate first, then
    /// any certificates above it; `key_pem` the signing certificate's private key (PKCS#8, SEC1
    /// or PKCS#1 PEM). Checks that the key matches the certificate, that the certificate is a
    /// CA allowed to sign certificates, and that it has not expired.
    pub fn from_pem(
        trust_domain: &TrustDomain,
        cert_pem: &str,
        key_pem: &str,
        source: Source,
        now: SystemTime,
    ) -> Result<Authority, CaError> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| CaError::Config(format!("the CA certificate file: {e}")))?;
        let Some(signer_der) = certs.first() else {
            return Err(CaError::Config(
                "the CA certificate file holds no PEM certificate".into(),
            ));
        };
        // No detail from the key parser: nothing of the key may reach a message.
        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
            CaError::Config(
                "the CA key file holds no PEM private key (PKCS#8, SEC1 or PKCS#1)".into(),
            )
        })?;
        let key = KeyPair::try_from(&key_der).map_err(|_| {
            CaError::Config(
                "the CA private key cannot be used: ECDSA P-256/P-384, Ed25519 and RSA are".into(),
            )
        })?;
        let signer = parse_cert(signer_der)
            .map_err(|e| CaError::Config(format!("the CA certificate: {e}")))?;
        if signer.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::Config(
                "the CA private key does not belong to the first certificate of the CA \
                 certificate file"
                    .into(),
            ));
        }
        if !signer.is_ca() {
            return Err(CaError::Config(
                "the first certificate of the CA certificate file is not a CA certificate \
                 (basicConstraints CA:TRUE)"
                    .into(),
            ));
        }
        if let Ok(Some(ku)) = signer.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(CaError::Config(
                    "the CA certificate's key usage does not allow signing certificates \
                     (keyCertSign)"
                        .into(),
                ));
            }
        }
        let not_after = system_time(signer.validity().not_after.timestamp());
        if not_after <= now {
            return Err(CaError::Config(format!(
                "the CA certificate expired at {}",
                crate::service::rfc3339(not_after)
            )));
        }
        let mut anchors = Vec::new();
        let mut chain = Vec::new();
        for der in &certs {
            let cert = parse_cert(der)
                .map_err(|e| CaError::Config(format!("the CA certificate file: {e}")))?;
            if self_signed(&cert) {
                anchors.push(der.clone());
            } else {
                chain.push(der.clone());
            }
        }
        if anchors.is_empty() {
            // No root in the file: its top certificate is what peers trust.
            if let Some(top) = chain.pop() {
                anchors.push(top);
            }
        }
        let issuer = Issuer::from_ca_cert_der(signer_der, key)
            .map_err(|e| CaError::Config(format!("the CA certificate: {e}")))?;
        Ok(Authority {
            trust_domain: trust_domain.clone(),
            source,
            issuer,
            signer_der: signer_der.to_vec(),
            signer_not_after: not_after,
            chain_pem: chain.iter().map(|d| pem_of(d)).collect(),
            bundle_pem: anchors.iter().map(|d| pem_of(d)).collect(),
        })
    }

    /// The trust domain of the SPIFFE ids this CA issues.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Where the signer came from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The CA certificates peers trust (PEM).
    pub fn trust_bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The certificates sent after each leaf (PEM; empty when the signer is the root).
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// Signs a workload certificate for `resource` with the public key of `csr`, valid for
    /// `lifetime` from `now` (never past the signer's expiry). Its SAN is the resource's SPIFFE
    /// id and `dns_names`; nothing else from the CSR is used. A CSR asking for another SPIFFE id
    /// is refused (see [`crate::csr`]).
    pub fn issue(
        &self,
        csr: &VerifiedCsr,
        resource: &Resource,
        dns_names: &[String],
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let spiffe_id = resource.spiffe_id(&self.trust_domain);
        csr.check_identity(&spiffe_id)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Weft");
        params.distinguished_name = dn;
        let mut sans =
            vec![SanType::URI(spiffe_id.clone().try_into().map_err(
                |_| CaError::Crypto("SPIFFE id is not ASCII".into()),
            )?)];
        let mut granted = Vec::new();
        for name in dns_names {
            // A discovery "hostname" may be an address: it goes in as an IP SAN, which is what
            // a client validating that name matches (RFC 6125 §1.7.2: no IPs in DNS names).
            // Names the mesh holds but a certificate cannot (not IA5) are left out.
            if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                sans.push(SanType::IpAddress(ip));
                granted.push(name.clone());
            } else if let Ok(ia5) = name.clone().try_into() {
                sans.push(SanType::DnsName(ia5));
                granted.push(name.clone());
            }
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = serial()?;
        let serial_hex = hex(serial.as_ref());
        params.serial_number = Some(serial);
        let not_before = now - BACKDATE;
        let not_after = (now + lifetime).min(self.signer_not_after);
        if not_after <= now {
            return Err(CaError::Config(
                "the CA certificate has expired: no certificate can be issued".into(),
            ));
        }
        params.not_before = offset(not_before);
        params.not_after = offset(not_after);
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        // Whole seconds, as the certificate holds them.
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| UNIX_EPOCH + Duration::from_secs(d.as_secs()))
                .unwrap_or(t)
        };
        Ok(Issued {
            certificate_pem: cert.pem(),
            chain_pem: self.chain_pem.clone(),
            trust_bundle_pem: self.bundle_pem.clone(),
            spiffe_id,
            dns_names: granted,
            serial: serial_hex,
            not_before: secs(not_before),
            not_after: secs(not_after),
        })
    }

    /// A certificate for Weft's own xDS endpoint, with a fresh P-256 key: its SAN holds
    /// `names` (IP addresses as IP SANs, the rest as DNS names) and the SPIFFE id
    /// [`TrustDomain::server_id`] names; valid for `lifetime` from `now` (never past the
    /// signer's expiry). Returns the certificate followed by its chain, and the key (PEM).
    pub fn issue_server(
        &self,
        names: &[String],
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<(String, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Weft");
        dn.push(DnType::CommonName, "weft xDS server");
        params.distinguished_name = dn;
        let spiffe_id = self.trust_domain.server_id();
        let mut sans =
            vec![SanType::URI(spiffe_id.try_into().map_err(|_| {
                CaError::Crypto("SPIFFE id is not ASCII".into())
            })?)];
        for name in names {
            if let Ok(ip) = name.parse::<std::net::IpAddr>() {
                sans.push(SanType::IpAddress(ip));
            } else if let Ok(ia5) = name.clone().try_into() {
                sans.push(SanType::DnsName(ia5));
            }
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial()?);
        let not_after = (now + lifetime).min(self.signer_not_after);
        if not_after <= now {
            return Err(CaError::Config(
                "the CA certificate has expired: no certificate can be issued".into(),
            ));
        }
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((
            format!("{}{}", cert.pem(), self.chain_pem),
            key.serialize_pem(),
        ))
    }

    /// Checks a workload certificate presented for renewal (PEM; the first certificate counts):
    /// this CA's signing key signed it, it is valid at `now`, it is not a CA, and its SAN has
    /// exactly one URI, a SPIFFE id of this trust domain naming a proxy's resource.
    pub fn verify_issued(&self, cert_pem: &str, now: SystemTime) -> Result<Holder, CaError> {
        let unauthenticated = |why: &str| CaError::Unauthenticated(format!("certificate {why}"));
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| unauthenticated("is not a PEM certificate"))?;
        let cert = X509Certificate::from_der(der.as_ref())
            .map(|(_, c)| c)
            .map_err(|_| unauthenticated("is not a valid X.509 certificate"))?;
        let signer = parse_cert(&self.signer_der)?;
        if cert.issuer() != signer.subject()
            || cert.verify_signature(Some(signer.public_key())).is_err()
        {
            return Err(unauthenticated(
                "was not issued by this server's CA (was the CA replaced? join again with a token)",
            ));
        }
        let not_before = system_time(cert.validity().not_before.timestamp());
        let not_after = system_time(cert.validity().not_after.timestamp());
        if now > not_after {
            return Err(CaError::Unauthenticated(format!(
                "certificate expired at {}: join again with a token",
                crate::service::rfc3339(not_after)
            )));
        }
        if now < not_before {
            return Err(unauthenticated("is not valid yet"));
        }
        if cert.is_ca() {
            return Err(unauthenticated("is a CA certificate, not a workload's"));
        }
        let uris: Vec<String> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let [uri] = &uris[..] else {
            return Err(unauthenticated("does not hold exactly one SPIFFE id"));
        };
        let resource = Resource::from_spiffe_id(uri, &self.trust_domain)
            .ok_or_else(|| unauthenticated("does not name a proxy of this trust domain"))?;
        Ok(Holder {
            resource,
            public_key_der: cert.public_key().raw.to_vec(),
            serial: hex(cert.raw_serial()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::csr;

    fn td() -> TrustDomain {
        "weft.local".parse().unwrap()
    }

    fn request(key: &KeyPair, sans: Vec<SanType>) -> VerifiedCsr {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        csr::parse(&params.serialize_request(key).unwrap().pem().unwrap()).unwrap()
    }

    #[test]
    fn a_generated_root_issues_an_svid_that_names_only_what_the_server_grants() {
        let now = SystemTime::now();
        let (ca, record) = Authority::generate_root(&td(), now).unwrap();
        assert!(record.private_key.contains("PRIVATE KEY"));
        assert!(!format!("{record:?}").contains("PRIVATE KEY"));
        let key = KeyPair::generate().unwrap();
        let csr = request(
            &key,
            vec![SanType::DnsName("evil.example".try_into().unwrap())],
        );
        let resource = Resource::parse("mesh/apps/virtualNode/red").unwrap();
        let issued = ca
            .issue(
                &csr,
                &resource,
                &["red.apps.local".to_string(), "10.0.0.7".to_string()],
                now,
                Duration::from_secs(3600),
            )
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes()).unwrap();
        let cert = parse_cert(&der).unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            vec![
                "URI(spiffe://weft.local/mesh/apps/virtualNode/red)",
                "DNSName(red.apps.local)",
                // A discovery hostname that is an address is an IP SAN, as clients match it.
                "IPAddress(0a:00:00:07)"
            ]
        );
        assert!(!cert.is_ca());
        let root_der = CertificateDer::from_pem_slice(issued.trust_bundle_pem.as_bytes()).unwrap();
        let root = parse_cert(&root_der).unwrap();
        cert.verify_signature(Some(root.public_key())).unwrap();
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + 60);
        assert_eq!(issued.chain_pem, "");

        let holder = ca.verify_issued(&issued.certificate_pem, now).unwrap();
        assert_eq!(holder.resource, resource);
        assert_eq!(holder.public_key_der, key.subject_public_key_info());
        let later = now + Duration::from_secs(7200);
        assert!(matches!(
            ca.verify_issued(&issued.certificate_pem, later),
            Err(CaError::Unauthenticated(_))
        ));
        // Another CA's certificate is not this one's.
        let (other, _) = Authority::generate_root(&td(), now).unwrap();
        assert!(other.verify_issued(&issued.certificate_pem, now).is_err());
    }

    #[test]
    fn a_stored_root_comes_back_as_the_same_signer() {
        let now = SystemTime::now();
        let (ca, record) = Authority::generate_root(&td(), now).unwrap();
        let again = Authority::from_record(&td(), &record, now).unwrap();
        assert_eq!(ca.trust_bundle_pem(), again.trust_bundle_pem());
        let key = KeyPair::generate().unwrap();
        let resource = Resource::parse("mesh/apps/virtualGateway/in").unwrap();
        let issued = again
            .issue(
                &request(&key, Vec::new()),
                &resource,
                &[],
                now,
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(ca.verify_issued(&issued.certificate_pem, now).is_ok());
    }

    #[test]
    fn an_operator_root_with_a_sec1_key_as_openssl_writes_it_is_accepted() {
        use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der};
        use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let now = SystemTime::now();
        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let sec1 = pem::encode(&pem::Pem::new(
            "EC PRIVATE KEY",
            AsDer::<EcPrivateKeyRfc5915Der>::as_der(&ec.private_key())
                .unwrap()
                .as_ref()
                .to_vec(),
        ));
        let pkcs8 = ec.to_pkcs8v1().unwrap();
        let key = KeyPair::try_from(pkcs8.as_ref()).unwrap();
        let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = root.self_signed(&key).unwrap();
        let ca = Authority::from_pem(&td(), &cert.pem(), &sec1, Source::Operator, now).unwrap();
        assert_eq!(ca.trust_bundle_pem(), cert.pem());
        assert_eq!(ca.chain_pem(), "");
    }

    #[test]
    fn an_operator_intermediate_signs_and_its_root_is_the_bundle() {
        let now = SystemTime::now();
        let root_key = KeyPair::generate().unwrap();
        let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.distinguished_name
            .push(DnType::CommonName, "Operator root");
        let root_cert = root.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root, &root_key);
        let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut int = CertificateParams::new(Vec::<String>::new()).unwrap();
        int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        int.distinguished_name
            .push(DnType::CommonName, "Operator intermediate");
        let int_cert = int.signed_by(&int_key, &root_issuer).unwrap();
        let chain = format!("{}{}", int_cert.pem(), root_cert.pem());
        let ca = Authority::from_pem(
            &td(),
            &chain,
            &int_key.serialize_pem(),
            Source::Operator,
            now,
        )
        .unwrap();
        assert_eq!(ca.trust_bundle_pem(), root_cert.pem());
        assert_eq!(ca.chain_pem(), int_cert.pem());
        // The wrong key is refused, and so is a leaf as a CA.
        let wrong = KeyPair::generate().unwrap();
        let err = Authority::from_pem(&td(), &chain, &wrong.serialize_pem(), Source::Operator, now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not belong"), "{err}");
        assert!(!err.contains("PRIVATE"), "{err}");
        let leaf = CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&wrong)
            .unwrap();
        let err = Authority::from_pem(
            &td(),
            &leaf.pem(),
            &wrong.serialize_pem(),
            Source::Operator,
            now,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a CA"), "{err}");
    }
}
