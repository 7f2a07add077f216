//! `/weft/v1/access-keys`: the administrator's endpoints for access keys (JSON in and out),
//! behind the [`crate::layer`] like every admin endpoint (`weft:CreateAccessKey`,
//! `weft:ListAccessKeys`, `weft:RevokeAccessKey`; the bootstrap key's `AdministratorAccess`
//! allows them).
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /weft/v1/access-keys` | `{"name": "ci", "policy": "AWSAppMeshReadOnly"}` (`policy`: a managed policy's name or a policy document; default `AdministratorAccess`) | 201, a [key view](KeyJson) with `secretAccessKey`, shown only here |
//! | `GET /weft/v1/access-keys` | | 200, `{"accessKeys": [key view, …]}`, no secrets |
//! | `DELETE /weft/v1/access-keys/{id}` | | 200, the revoked key's view; 404 if unknown |
//!
//! Errors are `{"code": "...", "message": "..."}`, as the CA's endpoints answer them.

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keys::{self, KeyRecord};
use crate::layer::{refusal_response, Protocol};
use crate::{AuthError, Authenticator, Policy};

/// Access keys: create (POST) and list (GET).
pub const ACCESS_KEYS: &str = "/weft/v1/access-keys";

/// `POST /weft/v1/access-keys`'s body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateKeyJson {
    /// A name for people.
    pub name: String,
    /// A managed policy's name (a JSON string) or a policy document (a JSON object).
    #[serde(default)]
    pub policy: Option<Value>,
}

/// An access key as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyJson {
    /// The access key id.
    pub access_key_id: String,
    /// The secret: only in the answer to its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Its name.
    pub name: String,
    /// The managed policy's name, or `custom`.
    pub policy_name: String,
    /// The policy document.
    pub policy: Policy,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Seconds since the epoch, once revoked.
    pub revoked_at: Option<u64>,
    /// `active` or `revoked`.
    pub state: String,
}

/// `GET /weft/v1/access-keys`'s answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyListJson {
    /// Every key, by id.
    pub access_keys: Vec<KeyJson>,
}

impl KeyJson {
    /// The view of a record, without its secret.
    pub fn of(record: KeyRecord) -> KeyJson {
        KeyJson {
            state: if record.revoked_at.is_some() {
                "revoked".into()
            } else {
                "active".into()
            },
            access_key_id: record.id,
            secret_access_key: None,
            name: record.name,
            policy_name: record.policy.label().to_string(),
            policy: record.policy,
            created_at: record.created_at,
            revoked_at: record.revoked_at,
        }
    }
}

fn refuse(e: AuthError) -> Response {
    if matches!(e, AuthError::Store(_) | AuthError::Crypto(_)) {
        tracing::warn!(error = %e, "access key request failed");
    }
    refusal_response(Protocol::WeftAdmin, &e)
}

async fn create(State(auth): State<Authenticator>, body: Bytes) -> Response {
    let input: CreateKeyJson = match serde_json::from_slice(&body) {
        Ok(input) => input,
        Err(e) => {
            return refuse(AuthError::InvalidInput(format!(
                "The request body is not {{\"name\", \"policy\"}}: {e}"
            )))
        }
    };
    let policy = match input.policy {
        None => Policy::managed("AdministratorAccess"),
        Some(Value::String(name)) => Policy::managed(&name),
        Some(doc @ Value::Object(_)) => Policy::parse(&doc.to_string()),
        Some(_) => Err(AuthError::InvalidInput(
            "policy must be a managed policy's name or a policy document".into(),
        )),
    };
    let policy = match policy {
        Ok(p) => p,
        Err(e) => return refuse(e),
    };
    match keys::create(
        &**auth.store(),
        auth.kek(),
        &input.name,
        policy,
        SystemTime::now(),
    )
    .await
    {
        Ok((record, secret)) => {
            tracing::info!(key_id = %record.id, name = %record.name, policy = record.policy.label(), "access key created");
            let mut view = KeyJson::of(record);
            view.secret_access_key = Some(secret.expose().to_string());
            (StatusCode::CREATED, Json(view)).into_response()
        }
        Err(e) => refuse(e),
    }
}

async fn list(State(auth): State<Authenticator>) -> Response {
    match keys::list(&**auth.store()).await {
        Ok(records) => Json(KeyListJson {
            access_keys: records.into_iter().map(KeyJson::of).collect(),
        })
        .into_response(),
        Err(e) => refuse(e),
    }
}

async fn revoke(State(auth): State<Authenticator>, Path(id): Path<String>) -> Response {
    match keys::revoke(&**auth.store(), &id, SystemTime::now()).await {
        Ok(Some(record)) => {
            tracing::info!(key_id = %record.id, "access key revoked");
            Json(KeyJson::of(record)).into_response()
        }
        Ok(None) => refuse(AuthError::NotFound(format!("No access key {id}"))),
        Err(e) => refuse(e),
    }
}

/// The access-key endpoints.
pub fn router(auth: Authenticator) -> Router {
    Router::new()
        .route(ACCESS_KEYS, get(list).post(create))
        .route(&format!("{ACCESS_KEYS}/{{id}}"), delete(revoke))
        .with_state(auth)
}
