//! The CA's endpoints on the server's API listener (JSON in and out):
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /weft/v1/join-tokens` | `{"resource": "mesh/m/virtualNode/n", "ttlSeconds": 3600}` (`ttlSeconds` optional) | 201, a [token view](TokenJson) with `token`, the secret, shown only here |
//! | `GET /weft/v1/join-tokens` | | 200, `{"joinTokens": [token view, …]}`, no secrets |
//! | `DELETE /weft/v1/join-tokens/{id}` | | 200, the revoked token's view; 404 if unknown |
//! | `POST /weft/v1/certificates` | `{"csr": PEM}` with `Authorization: Bearer <join token>`, or `{"csr": PEM, "certificate": PEM, "proof": base64}` to renew (see [`crate::renewal`]) | 200, [`CertificateJson`] |
//! | `GET /weft/v1/trust-bundle` | | 200, `{"trustDomain": "weft.local", "trustBundle": PEM}` |
//!
//! Errors are `{"code": "...", "message": "..."}` with 400 (`BadRequest`: malformed body or CSR,
//! a CSR asking for another identity), 401 (`Unauthorized`: no, unknown, wrong or expired token;
//! a renewal certificate or proof that does not verify), 403 (`Forbidden`: revoked token,
//! resource deleted), 404 (`NotFound`), 413 (`PayloadTooLarge`: bodies are limited to
//! [`MAX_BODY`]), 500 and 503 (the store).
//!
//! The join-token calls are administrative: `weft server` puts them behind weft-auth's layer,
//! which requires a SigV4 signature (service `weft`) by a key whose policy allows
//! `weft:CreateJoinToken`, `weft:ListJoinTokens` or `weft:RevokeJoinToken` (an administrator's).
//! The certificate and trust-bundle calls stay open there: a join token or the current
//! certificate authenticates them.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

use crate::authority::Issued;
use crate::identity::Resource;
use crate::service::{rfc3339, CaService};
use crate::token::{Minted, TokenRecord};
use crate::CaError;

/// Join tokens: create (POST) and list (GET).
pub const JOIN_TOKENS: &str = "/weft/v1/join-tokens";
/// Certificates: sign a CSR (POST).
pub const CERTIFICATES: &str = "/weft/v1/certificates";
/// The trust bundle (GET).
pub const TRUST_BUNDLE: &str = "/weft/v1/trust-bundle";
/// The largest request body accepted (a CSR and a certificate are a few KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// An error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorJson {
    /// `BadRequest`, `Unauthorized`, `Forbidden`, `NotFound`, `PayloadTooLarge`,
    /// `InternalError` or `ServiceUnavailable`.
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

impl IntoResponse for CaError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            CaError::InvalidInput(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            CaError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            CaError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            CaError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            CaError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            CaError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            CaError::Config(_) | CaError::Crypto(_) | CaError::Client(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
            }
        };
        let message = self.to_string();
        if status.is_server_error() {
            tracing::warn!(%status, %message, "CA request failed");
        } else {
            tracing::info!(%status, %message, "CA request refused");
        }
        let mut response = (
            status,
            Json(ErrorJson {
                code: code.into(),
                message,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"weft\""),
            );
        }
        response
    }
}

/// `POST /weft/v1/join-tokens`'s body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateTokenJson {
    /// `mesh/<mesh>/virtualNode/<name>`, `mesh/<mesh>/virtualGateway/<name>`, or its ARN.
    pub resource: String,
    /// Lifetime in seconds; the server's `--join-token-ttl` if absent.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A join token as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenJson {
    /// The token's id (what `DELETE` takes).
    pub id: String,
    /// The token itself, `weft-jt.<id>.<secret>`: only in the answer to its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The resource it grants.
    pub resource: String,
    /// The SPIFFE id certificates issued with it carry.
    pub spiffe_id: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// RFC 3339, once revoked.
    pub revoked_at: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub state: String,
}

/// `GET /weft/v1/join-tokens`'s answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenListJson {
    /// Every token, by id.
    pub join_tokens: Vec<TokenJson>,
}

/// `POST /weft/v1/certificates`'s body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestJson {
    /// The CSR (PEM), signed by the new key.
    pub csr: String,
    /// For renewal: the current certificate (PEM).
    #[serde(default)]
    pub certificate: Option<String>,
    /// For renewal: base64 signature by the current key over the context and the CSR's DER.
    #[serde(default)]
    pub proof: Option<String>,
}

/// `POST /weft/v1/certificates`'s answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateJson {
    /// The SPIFFE id in the certificate's SAN.
    pub spiffe_id: String,
    /// The DNS names in its SAN.
    pub dns_names: Vec<String>,
    /// The leaf certificate (PEM).
    pub certificate: String,
    /// Certificates between the leaf and the trust bundle (PEM; empty under Weft's own root).
    pub chain: String,
    /// The CA certificates to trust (PEM).
    pub trust_bundle: String,
    /// Hex.
    pub serial_number: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339: half-way through the lifetime, when the agent should renew.
    pub renew_after: String,
}

/// `GET /weft/v1/trust-bundle`'s answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustBundleJson {
    /// The trust domain.
    pub trust_domain: String,
    /// The CA certificates to trust (PEM).
    pub trust_bundle: String,
}

fn secs(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(s)
}

fn token_json(ca: &CaService, record: &TokenRecord, now: SystemTime) -> TokenJson {
    let spiffe_id = Resource::parse(&record.resource)
        .map(|r| r.spiffe_id(ca.authority().trust_domain()))
        .unwrap_or_default();
    TokenJson {
        id: record.id.clone(),
        token: None,
        resource: record.resource.clone(),
        spiffe_id,
        created_at: rfc3339(secs(record.created_at)),
        expires_at: rfc3339(secs(record.expires_at)),
        revoked_at: record.revoked_at.map(|s| rfc3339(secs(s))),
        state: record.state(now).as_str().into(),
    }
}

fn certificate_json(issued: Issued) -> CertificateJson {
    let half = issued
        .not_after
        .duration_since(issued.not_before)
        .unwrap_or_default()
        / 2;
    CertificateJson {
        spiffe_id: issued.spiffe_id,
        dns_names: issued.dns_names,
        certificate: issued.certificate_pem,
        chain: issued.chain_pem,
        trust_bundle: issued.trust_bundle_pem,
        serial_number: issued.serial,
        not_before: rfc3339(issued.not_before),
        not_after: rfc3339(issued.not_after),
        renew_after: rfc3339(issued.not_before + half),
    }
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes.
async fn read_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, CaError> {
    let bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                CaError::TooLarge(format!("request body is larger than {MAX_BODY} bytes"))
            } else {
                CaError::InvalidInput("request body could not be read".into())
            }
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| CaError::InvalidInput(format!("request body is not the expected JSON: {e}")))
}

async fn create_token(State(ca): State<CaService>, body: Body) -> Result<Response, CaError> {
    let request: CreateTokenJson = read_json(body).await?;
    let now = SystemTime::now();
    let Minted { token, record } = ca
        .create_token(
            &request.resource,
            request.ttl_seconds.map(Duration::from_secs),
            now,
        )
        .await?;
    let mut view = token_json(&ca, &record, now);
    view.token = Some(token);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn list_tokens(State(ca): State<CaService>) -> Result<Response, CaError> {
    let now = SystemTime::now();
    let join_tokens = ca
        .list_tokens()
        .await?
        .iter()
        .map(|r| token_json(&ca, r, now))
        .collect();
    Ok(Json(TokenListJson { join_tokens }).into_response())
}

async fn revoke_token(
    State(ca): State<CaService>,
    Path(id): Path<String>,
) -> Result<Response, CaError> {
    let now = SystemTime::now();
    let record = ca.revoke_token(&id, now).await?;
    Ok(Json(token_json(&ca, &record, now)).into_response())
}

/// The bearer token of an `Authorization` header, if there is one.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, CaError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| CaError::Unauthenticated("the Authorization header is not text".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok(Some(token.trim().to_string()))
        }
        _ => Err(CaError::Unauthenticated(
            "the Authorization header is not `Bearer <join token>`".into(),
        )),
    }
}

async fn certificates(
    State(ca): State<CaService>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, CaError> {
    let token = bearer(&headers)?;
    let request: CertificateRequestJson = read_json(body).await?;
    let now = SystemTime::now();
    let issued = match (token, request.certificate, request.proof) {
        (Some(_), Some(_), _) => {
            return Err(CaError::InvalidInput(
                "send either a join token or the current certificate, not both".into(),
            ))
        }
        (Some(token), None, _) => ca.issue_with_token(&token, &request.csr, now).await?,
        (None, Some(current), Some(proof)) => ca.renew(&current, &proof, &request.csr, now).await?,
        (None, Some(_), None) => {
            return Err(CaError::Unauthenticated(
                "renewal needs a proof: the current key's signature over the new CSR".into(),
            ))
        }
        (None, None, _) => {
            return Err(CaError::Unauthenticated(
                "no credential: send `Authorization: Bearer <join token>`, or the current \
                 certificate and a renewal proof"
                    .into(),
            ))
        }
    };
    Ok(Json(certificate_json(issued)).into_response())
}

async fn trust_bundle(State(ca): State<CaService>) -> Response {
    Json(TrustBundleJson {
        trust_domain: ca.authority().trust_domain().to_string(),
        trust_bundle: ca.authority().trust_bundle_pem().to_string(),
    })
    .into_response()
}

/// The CA's routes, to merge into the API listener's router.
pub fn router(ca: CaService) -> Router {
    Router::new()
        .route(JOIN_TOKENS, post(create_token).get(list_tokens))
        .route(&format!("{JOIN_TOKENS}/{{id}}"), delete(revoke_token))
        .with_state(ca.clone())
        .merge(workload_router(ca))
}

/// Only what agents call (certificates and the trust bundle, both authenticated by a join token
/// or a certificate, or public): for a listener on the workloads' network, where creating or
/// listing join tokens must not be offered.
pub fn workload_router(ca: CaService) -> Router {
    Router::new()
        .route(CERTIFICATES, post(certificates))
        .route(TRUST_BUNDLE, get(trust_bundle))
        .with_state(ca)
}
