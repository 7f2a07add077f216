//! Weft's certificate authority.
//!
//! `weft server` signs short-lived workload certificates for the proxies of its meshes. Each
//! certificate is an X.509-SVID: its SAN holds one SPIFFE id naming the proxy's App Mesh resource,
//! `spiffe://<trust-domain>/mesh/<mesh>/virtualNode/<name>` (or `…/virtualGateway/<name>`), and
//! the DNS names clients of that resource validate (App Mesh's `subjectAlternativeNames`: the
//! virtual services it provides, its DNS service-discovery hostname, see [`names`]).
//!
//! - **The signer** ([`Authority`]): by default a root (ECDSA P-256) Weft generates once and keeps
//!   in the store under `ca/` ([`store::ROOT_KEY`]), its private key sealed under the server's
//!   key-encryption key (the access keys' one), so that a restart keeps it; or an
//!   operator's root or intermediate given as PEM files (`--ca-cert`, `--ca-key`), which is
//!   never copied into the store.
//! - **Keys never leave the workload's host.** The server signs certificate signing requests
//!   (CSRs); it never generates, receives or stores a workload's private key. It checks each
//!   CSR's signature and takes only its public key: the names come from the server
//!   ([`csr`]), never from the request.
//! - **Proving who you are**: the first time with a join token the operator created for one
//!   virtual node or gateway ([`token`]); afterwards with the current certificate and a
//!   signature by its key over the new CSR ([`renewal`]).
//! - **HTTP** ([`http`]): `/weft/v1/join-tokens`, `/weft/v1/certificates`,
//!   `/weft/v1/trust-bundle` on the API listener. The join-token calls are administrative and,
//!   like the rest of the API today, not authenticated (request signing comes later).
//! - **CLI** ([`cli`]): `weft join-token create|list|revoke`, and the server's flags
//!   ([`cli::CaArgs`]).
//!
//! Secrets (token secrets, private keys) are never logged and never part of an error message.

pub mod authority;
pub mod cli;
pub mod csr;
pub mod duration;
pub mod http;
pub mod identity;
pub mod names;
pub mod renewal;
pub mod service;
pub mod store;
pub mod token;

pub use authority::{Authority, Issued};
pub use cli::CaArgs;
pub use identity::{ProxyKind, Resource, TrustDomain};
pub use service::{CaConfig, CaService};

/// Everything that can go wrong in the CA, each with the HTTP status it answers with.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The request or a flag is malformed or asks for something the server does not grant
    /// (HTTP 400).
    #[error("{0}")]
    InvalidInput(String),
    /// No valid credential: a missing, unknown, wrong or expired join token, or a renewal
    /// certificate or proof that does not verify (HTTP 401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential that may not be used: a revoked join token, or a resource that no
    /// longer exists (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// The named join token or resource does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request body is larger than the endpoint accepts (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    /// The CA's own certificate or key cannot be used (at start-up).
    #[error("{0}")]
    Config(String),
    /// Signing or encoding failed (HTTP 500).
    #[error("certificate authority error: {0}")]
    Crypto(String),
    /// The store failed (HTTP 503).
    #[error(transparent)]
    Store(#[from] weft_store::StoreError),
    /// A client command could not reach the server or got an error answer.
    #[error("{0}")]
    Client(String),
}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        CaError::Crypto(e.to_string())
    }
}
