//! Certificate signing requests: parsed and their signature checked (proof that the requester
//! holds the private key), then reduced to the one thing the server takes from them, the public
//! key.
//!
//! The server decides every name in a certificate. What a CSR asks for is ignored, with one
//! exception meant to catch mistakes and attacks early: a CSR that asks for a SPIFFE id (a URI
//! SAN, or a subject common name that is a SPIFFE id) other than the one the credential grants is
//! refused with a clear error rather than answered with a certificate for another identity than
//! it asked for. Requested DNS names, IP addresses, e-mail addresses, key usages and every other
//! extension are ignored.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::CaError;

/// The key types workload certificates may carry: ECDSA P-256 (what the agent generates), ECDSA
/// P-384 and Ed25519.
pub const ACCEPTED_KEYS: &str = "ECDSA P-256, ECDSA P-384 or Ed25519";

/// A CSR whose signature verified: its public key and what it asked for.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    /// The public key the certificate will carry.
    pub public_key: rcgen::SubjectPublicKeyInfo,
    /// The CSR's DER, which a renewal proof signs.
    pub der: Vec<u8>,
    /// URI SANs the CSR asked for.
    pub requested_uris: Vec<String>,
    /// DNS SANs the CSR asked for (never granted for being asked).
    pub requested_dns: Vec<String>,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
}

/// Whether `alg` is a key type workload certificates may carry.
pub fn accepted_key(alg: &rcgen::SignatureAlgorithm) -> bool {
    alg == &rcgen::PKCS_ECDSA_P256_SHA256
        || alg == &rcgen::PKCS_ECDSA_P384_SHA384
        || alg == &rcgen::PKCS_ED25519
}

/// Parses a PEM CSR (`-----BEGIN CERTIFICATE REQUEST-----`) and checks its signature.
pub fn parse(pem: &str) -> Result<VerifiedCsr, CaError> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
        CaError::InvalidInput(
            "csr is not a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----)"
                .into(),
        )
    })?;
    parse_der(der.as_ref())
}

/// Parses a DER CSR and checks its signature.
pub fn parse_der(der: &[u8]) -> Result<VerifiedCsr, CaError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| {
        CaError::InvalidInput(format!(
            "csr is not a valid certificate signing request: {e}"
        ))
    })?;
    if !rest.is_empty() {
        return Err(CaError::InvalidInput(
            "csr has trailing bytes after the certificate signing request".into(),
        ));
    }
    csr.verify_signature().map_err(|e| {
        CaError::InvalidInput(format!(
            "csr's signature does not verify with its own public key ({e}): the requester must \
             sign it with the private key of the certificate it asks for, using {ACCEPTED_KEYS}"
        ))
    })?;
    let info = &csr.certification_request_info;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
        .ok()
        .filter(|k| accepted_key(rcgen::PublicKeyData::algorithm(k)))
        .ok_or_else(|| {
            CaError::InvalidInput(format!(
                "csr's key type is not accepted: use {ACCEPTED_KEYS}"
            ))
        })?;
    let common_name = info
        .subject
        .iter_common_name()
        .next()
        .map(|cn| cn.as_str().map(str::to_string).unwrap_or_default());
    let mut requested_uris = Vec::new();
    let mut requested_dns = Vec::new();
    // Extensions the parser cannot read are ignored like every other requested extension.
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(uri) => requested_uris.push(uri.to_string()),
                        GeneralName::DNSName(dns) => requested_dns.push(dns.to_string()),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(VerifiedCsr {
        public_key,
        der: der.to_vec(),
        requested_uris,
        requested_dns,
        common_name,
    })
}

impl VerifiedCsr {
    /// Refuses a CSR that asks for a SPIFFE id other than `granted` (see the module's doc).
    pub fn check_identity(&self, granted: &str) -> Result<(), CaError> {
        for uri in &self.requested_uris {
            if uri != granted {
                return Err(CaError::InvalidInput(format!(
                    "csr asks for the URI SAN {uri:?}, but this credential grants only {granted:?}: \
                     leave SANs out of the CSR (the server sets them) or ask for exactly that id"
                )));
            }
        }
        if let Some(cn) = &self.common_name {
            if cn.starts_with("spiffe://") && cn != granted {
                return Err(CaError::InvalidInput(format!(
                    "csr's subject names {cn:?}, but this credential grants only {granted:?}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn csr(sans: Vec<rcgen::SanType>, key: &rcgen::KeyPair) -> String {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn a_signed_csr_yields_its_key_and_requests() {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = csr(
            vec![
                rcgen::SanType::DnsName("evil.example".try_into().unwrap()),
                rcgen::SanType::URI("spiffe://weft.local/x".try_into().unwrap()),
            ],
            &key,
        );
        let parsed = parse(&pem).unwrap();
        assert_eq!(
            rcgen::PublicKeyData::der_bytes(&parsed.public_key),
            rcgen::PublicKeyData::der_bytes(&key)
        );
        assert_eq!(parsed.requested_dns, vec!["evil.example"]);
        assert!(parsed.check_identity("spiffe://weft.local/x").is_ok());
        assert!(parsed.check_identity("spiffe://weft.local/y").is_err());
    }

    #[test]
    fn garbage_and_a_csr_with_a_forged_signature_are_refused() {
        assert!(parse("hello").is_err());
        assert!(parse(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
        .is_err());
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = csr(Vec::new(), &key);
        let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        // Flip a bit in the signature, the last bytes of the DER.
        let last = der.len() - 2;
        der[last] ^= 1;
        let err = parse_der(&der).unwrap_err().to_string();
        assert!(err.contains("signature"), "{err}");
    }

    #[test]
    fn an_rsa_key_is_not_accepted() {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let err = parse(&csr(Vec::new(), &key)).unwrap_err().to_string();
        assert!(err.contains("key type"), "{err}");
    }
}
