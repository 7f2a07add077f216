//! Renewal: a proxy proves who it is with the certificate it holds.
//!
//! The API listener is plain HTTP today, so the proof cannot be a TLS client certificate.
//! Instead the renewing agent sends, beside its new CSR:
//!
//! - `certificate`: its current certificate (PEM), which this CA issued and which has not
//!   expired (see [`crate::Authority::verify_issued`]);
//! - `proof`: a signature, by the current certificate's private key, over
//!   [`PROOF_CONTEXT`] followed by the new CSR's DER (base64; ECDSA signatures in their ASN.1
//!   DER form: ECDSA P-256 with SHA-256, P-384 with SHA-384, or Ed25519, by the current key's
//!   type).
//!
//! The CSR's own signature proves the requester holds the *new* key; the proof proves it holds
//! the *current* one, and binds that to this very CSR. The certificate issued names the same
//! resource as the current one, with the DNS names the mesh grants it now. A recorded request
//! replayed by someone else gets them nothing: the certificate it yields carries the CSR's
//! public key, whose private key never left the agent's host. The context string keeps a proof
//! from being usable as a signature over anything else. A stolen key renews until its
//! resource is deleted, like any credential; the certificates' short life bounds everything
//! else. A certificate from a replaced CA cannot renew: the agent joins again with a token.

use crate::CaError;

/// What every renewal proof signs before the new CSR's DER: a fixed context, so that no other
/// message signed with the same key can serve as a proof.
pub const PROOF_CONTEXT: &[u8] = b"weft certificate renewal v1\n";

/// The message a renewal proof signs: [`PROOF_CONTEXT`] then the CSR's DER.
pub fn message(csr_der: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(PROOF_CONTEXT.len() + csr_der.len());
    m.extend_from_slice(PROOF_CONTEXT);
    m.extend_from_slice(csr_der);
    m
}

/// Signs a renewal proof for `csr_der` with the current certificate's key (what the agent does).
pub fn sign(current_key: &impl rcgen::SigningKey, csr_der: &[u8]) -> Result<Vec<u8>, CaError> {
    Ok(current_key.sign(&message(csr_der))?)
}

/// Checks a renewal proof: `signature` over [`message`]`(csr_der)` by the key of
/// `public_key_der` (a DER SubjectPublicKeyInfo, the current certificate's).
pub fn verify(public_key_der: &[u8], csr_der: &[u8], signature: &[u8]) -> Result<(), CaError> {
    use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
    let refused = || {
        CaError::Unauthenticated(
            "renewal proof does not verify: sign the context string and the new CSR's DER with \
             the current certificate's key"
                .into(),
        )
    };
    let key = rcgen::SubjectPublicKeyInfo::from_der(public_key_der).map_err(|_| refused())?;
    let alg = rcgen::PublicKeyData::algorithm(&key);
    let verification: &'static dyn VerificationAlgorithm = if alg == &rcgen::PKCS_ECDSA_P256_SHA256
    {
        &signature::ECDSA_P256_SHA256_ASN1
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        &signature::ECDSA_P384_SHA384_ASN1
    } else if alg == &rcgen::PKCS_ED25519 {
        &signature::ED25519
    } else {
        return Err(refused());
    };
    UnparsedPublicKey::new(verification, rcgen::PublicKeyData::der_bytes(&key))
        .verify(&message(csr_der), signature)
        .map_err(|_| refused())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::PublicKeyData;

    #[test]
    fn a_proof_verifies_only_for_its_key_and_its_csr() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let current = rcgen::KeyPair::generate_for(alg).unwrap();
            let other = rcgen::KeyPair::generate().unwrap();
            let proof = sign(&current, b"csr").unwrap();
            let spki = current.subject_public_key_info();
            verify(&spki, b"csr", &proof).unwrap();
            assert!(verify(&spki, b"another csr", &proof).is_err());
            assert!(verify(&other.subject_public_key_info(), b"csr", &proof).is_err());
            // A signature over the bare CSR (no context) is not a proof.
            let bare = rcgen::SigningKey::sign(&current, b"csr").unwrap();
            assert!(verify(&spki, b"csr", &bare).is_err());
        }
    }
}
