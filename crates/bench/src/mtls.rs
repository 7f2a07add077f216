//! The mutual-TLS pair of `weft-bench dataplane --mtls` (issue 19): App Mesh
//! TLS specs as users write them, certificates from Weft's CA through join
//! tokens and the agents' SDS, like crates/weft/tests/identity.rs sets them:
//!
//! - the server nodes' listeners: `STRICT`, the `acm` certificate (Weft's
//!   identity for the node, secret `weft-identity`), validation of the
//!   client's certificate against `weft-trust-bundle` (`sds` trust) with its
//!   SPIFFE id as the only subject alternative name accepted;
//! - the client node's backend defaults: a client policy presenting
//!   `weft-identity` (`sds` certificate) and validating the server's
//!   certificate against Weft's CA (an `acm` PCA trust, which Weft maps to
//!   its trust bundle) for the server nodes' SPIFFE ids only.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use crate::load::Api;

/// The trust domain of `weft server`'s CA by default (`--trust-domain`).
const TRUST_DOMAIN: &str = "weft.local";

/// An ACM Private CA ARN: Weft maps any `acm` trust to its own trust bundle.
const PCA_ARN: &str = "arn:aws:acm-pca:us-west-2:111122223333:certificate-authority/weft";

/// The SPIFFE id Weft's CA gives the proxies of `mesh/<mesh>/virtualNode/<node>`.
pub fn spiffe_id(mesh: &str, node: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/mesh/{mesh}/virtualNode/{node}")
}

/// A listener's `tls`: STRICT, Weft's certificate for the node (an ACM ARN),
/// mutual TLS accepting only `clients` (SPIFFE ids).
pub fn listener_tls(node: &str, clients: &[String]) -> Value {
    json!({
        "mode": "STRICT",
        "certificate": {
            "acm": { "certificateArn": format!("arn:aws:acm:us-west-2:111122223333:certificate/{node}") }
        },
        "validation": {
            "trust": { "sds": { "secretName": "weft-trust-bundle" } },
            "subjectAlternativeNames": { "match": { "exact": clients } }
        }
    })
}

/// Backend defaults whose client policy presents the node's certificate
/// and accepts only `servers` (SPIFFE ids) under Weft's CA.
pub fn backend_defaults(servers: &[String]) -> Value {
    json!({
        "clientPolicy": {
            "tls": {
                "certificate": { "sds": { "secretName": "weft-identity" } },
                "validation": {
                    "trust": { "acm": { "certificateAuthorityArns": [PCA_ARN] } },
                    "subjectAlternativeNames": { "match": { "exact": servers } }
                }
            }
        }
    })
}

/// Puts [`listener_tls`] on every listener of a virtual node body.
pub fn with_listener_tls(mut body: Value, node: &str, clients: &[String]) -> Value {
    if let Some(listeners) = body["spec"]["listeners"].as_array_mut() {
        for l in listeners {
            l["tls"] = listener_tls(node, clients);
        }
    }
    body
}

/// Puts [`backend_defaults`] on a virtual node body.
pub fn with_client_policy(mut body: Value, servers: &[String]) -> Value {
    body["spec"]["backendDefaults"] = backend_defaults(servers);
    body
}

/// A join token (one hour) for `mesh/<mesh>/virtualNode/<node>`, through the
/// CA's HTTP API as `weft join-token create` asks for it.
pub async fn join_token(api: &Api, mesh: &str, node: &str) -> Result<String> {
    let body = json!({ "resource": format!("mesh/{mesh}/virtualNode/{node}"), "ttlSeconds": 3600 });
    let (status, bytes) = api
        .call(
            Method::POST,
            weft_ca::http::JOIN_TOKENS,
            Some(Bytes::from(body.to_string())),
        )
        .await?;
    if status != StatusCode::CREATED {
        bail!(
            "creating a join token for {node}: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    let token: weft_ca::http::TokenJson = serde_json::from_slice(&bytes)?;
    token.token.context("no token in the answer")
}

/// What an agent of the mTLS pair gets beside its usual variables: its join
/// token, the CA's address, and plaintext xDS — the benchmark's server
/// keeps xDS plaintext for the other paths' agents, which hold no token
/// (the certificate still reaches Envoy over SDS for the mesh's TLS).
pub fn agent_env<'a>(token: String, ca_url: &str) -> Vec<(&'a str, String)> {
    vec![
        ("WEFT_JOIN_TOKEN", token),
        ("WEFT_CA_SERVER", ca_url.to_string()),
        ("WEFT_INSECURE_PLAINTEXT_XDS", "true".to_string()),
    ]
}
