//! The agent's side of Weft's CA endpoint, `POST /weft/v1/certificates` (see
//! [`weft_ca::http`]): a CSR with a join token the first time, a CSR with the current
//! certificate and a renewal proof afterwards.
//!
//! The wire format is the CA's own ([`CertificateRequestJson`], [`CertificateJson`],
//! [`ErrorJson`]), so the two sides cannot drift apart. Answers are split into what retrying
//! can fix ([`CaCallError::Unavailable`]: the server unreachable, slow, overloaded or failing)
//! and what it cannot ([`CaCallError::Refused`]: the server understood and said no).

use std::time::Duration;

use bytes::Bytes;
use weft_ca::http::{CertificateJson, CertificateRequestJson, ErrorJson, CERTIFICATES};

use crate::http_client::exchange;
use crate::identity::{CaServer, JoinToken};

/// How long one call to the CA may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Who the agent says it is in a certificate request.
#[derive(Clone)]
pub enum Credential<'a> {
    /// The first time: the operator's join token (`Authorization: Bearer`).
    Token(&'a JoinToken),
    /// Afterwards: the current certificate (PEM) and the current key's signature over the new
    /// CSR (base64, see [`weft_ca::renewal`]).
    Renewal {
        /// The current leaf certificate, PEM.
        certificate: &'a str,
        /// The renewal proof, base64.
        proof: String,
    },
}

/// Why a certificate request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaCallError {
    /// The CA answered and refused (a 4xx other than 408 and 429): retrying the same request
    /// gets the same answer.
    Refused {
        /// HTTP status.
        status: u16,
        /// The CA's error code (`Unauthorized`, `Forbidden`, …).
        code: String,
        /// The CA's message (never contains a secret: the CA leaves them out).
        message: String,
    },
    /// No usable answer: connection refused, timeout, a 5xx, 408 or 429, or an answer that is
    /// not the CA's JSON. Worth retrying.
    Unavailable(String),
}

impl std::fmt::Display for CaCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaCallError::Refused {
                status,
                code,
                message,
            } => write!(f, "the CA refused ({status} {code}): {message}"),
            CaCallError::Unavailable(message) => write!(f, "the CA is unavailable: {message}"),
        }
    }
}

/// Sends `csr_pem` with `credential` to the CA at `server`; the certificate it issued. With
/// several replicas, one that cannot be reached (or answers that it is unavailable) passes the
/// request to the next; a refusal is the answer.
pub async fn request_certificate(
    server: &CaServer,
    credential: Credential<'_>,
    csr_pem: &str,
) -> Result<CertificateJson, CaCallError> {
    let mut last = None;
    for authority in server.authorities() {
        match request_from(authority, credential.clone(), csr_pem).await {
            Err(CaCallError::Unavailable(why)) => {
                tracing::debug!(ca = authority, error = %why, "CA replica unavailable; trying the next");
                last = Some(CaCallError::Unavailable(why));
            }
            answer => return answer,
        }
    }
    Err(last.unwrap_or_else(|| CaCallError::Unavailable("no CA address".into())))
}

async fn request_from(
    server: &str,
    credential: Credential<'_>,
    csr_pem: &str,
) -> Result<CertificateJson, CaCallError> {
    let (body, bearer) = match credential {
        Credential::Token(token) => (
            CertificateRequestJson {
                csr: csr_pem.to_string(),
                certificate: None,
                proof: None,
            },
            Some(format!("Bearer {}", token.expose())),
        ),
        Credential::Renewal { certificate, proof } => (
            CertificateRequestJson {
                csr: csr_pem.to_string(),
                certificate: Some(certificate.to_string()),
                proof: Some(proof),
            },
            None,
        ),
    };
    let body = serde_json::to_vec(&body)
        .map_err(|e| CaCallError::Unavailable(format!("encoding the request: {e}")))?;
    let mut headers = vec![("content-type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    let call = exchange(server, "POST", CERTIFICATES, &headers, Bytes::from(body));
    let answer = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(CaCallError::Unavailable(format!("{server}: {e}"))),
        Err(_) => {
            return Err(CaCallError::Unavailable(format!(
                "{server} did not answer within {} s",
                CALL_TIMEOUT.as_secs()
            )))
        }
    };
    decode(answer.status, &answer.body)
}

/// Reads the CA's answer: the certificate, or the error it says.
pub fn decode(status: u16, body: &[u8]) -> Result<CertificateJson, CaCallError> {
    if status == 200 {
        return serde_json::from_slice(body).map_err(|e| {
            CaCallError::Unavailable(format!("the CA's answer is not a certificate: {e}"))
        });
    }
    let (code, message) = match serde_json::from_slice::<ErrorJson>(body) {
        Ok(e) => (e.code, e.message),
        Err(_) => (
            String::new(),
            String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        ),
    };
    if (400..500).contains(&status) && status != 408 && status != 429 {
        Err(CaCallError::Refused {
            status,
            code,
            message,
        })
    } else {
        Err(CaCallError::Unavailable(format!(
            "answered {status} {code}: {message}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_refusals_and_the_rest_is_worth_retrying() {
        let body = br#"{"code":"Unauthorized","message":"unknown join token"}"#;
        assert_eq!(
            decode(401, body).err(),
            Some(CaCallError::Refused {
                status: 401,
                code: "Unauthorized".into(),
                message: "unknown join token".into()
            })
        );
        for status in [408, 429, 500, 503] {
            assert!(
                matches!(decode(status, body), Err(CaCallError::Unavailable(_))),
                "{status}"
            );
        }
        // A 200 that is not a certificate (a proxy's page, say) is not taken.
        assert!(matches!(
            decode(200, b"<html>"),
            Err(CaCallError::Unavailable(_))
        ));
        // A 404 without the CA's JSON (a server without the CA) is still a refusal.
        assert!(matches!(
            decode(404, b"not found"),
            Err(CaCallError::Refused { status: 404, .. })
        ));
    }
}
