//! Who may call Weft's APIs: AWS Signature Version 4 checked against access keys the server
//! holds, and IAM-style policies saying what each key may do.
//!
//! - [`keys`]: access keys (`AKIA…` ids, 40-character secrets) kept in the store under
//!   `auth/access-keys/`, each secret sealed with AES-256-GCM under a key-encryption key
//!   ([`kek`]) that lives in a file beside the store, never in it. SigV4 needs the secret
//!   itself (the signing key is derived from it per day, region and service), so a hash would
//!   not do.
//! - [`sigv4`]: the `Authorization` header (or a presigned URL's query) parsed, the key looked
//!   up, and the request as received signed again with the maintained `aws-sigv4` crate (the
//!   one the AWS SDK for Rust signs with), over exactly the headers the client listed in
//!   `SignedHeaders` and at its `x-amz-date`; the two signatures compared in constant time.
//! - [`policy`]: statements (`Effect`, `Action`, `Resource`) evaluated as IAM does: an explicit
//!   deny wins, and what no statement allows is denied. App Mesh's managed policies are
//!   available by name.
//! - [`layer`]: the middleware in front of the App Mesh, Cloud Map and Weft admin endpoints,
//!   answering refusals in each protocol's own error shape.
//! - [`admin`]: `/weft/v1/access-keys`; [`cli`]: `weft access-key`; [`client`]: the signed
//!   HTTP exchange Weft's own commands use, with credentials found as the AWS CLI finds them.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod client;
pub mod kek;
pub mod keys;
pub mod layer;
pub mod policy;
pub mod sigv4;

pub use kek::Kek;
pub use keys::{AccessKey, KeyRecord, Secret};
pub use layer::{Authenticator, Mode};
pub use policy::Policy;

/// Everything that goes wrong in authentication, key management and the key CLI.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (nor presigned query): `MissingAuthenticationTokenException`.
    #[error("{0}")]
    MissingToken(String),
    /// An `Authorization` header that is not a whole SigV4 one: `IncompleteSignatureException`.
    #[error("{0}")]
    IncompleteSignature(String),
    /// An access key the server does not hold, or a revoked one: `UnrecognizedClientException`.
    #[error("{0}")]
    UnrecognizedClient(String),
    /// A signature that does not match, a scope for another region or service, or a time too
    /// far from the server's clock: `InvalidSignatureException`.
    #[error("{0}")]
    InvalidSignature(String),
    /// The key's policy does not allow the action: App Mesh's `ForbiddenException`, Cloud Map's
    /// and Weft's `AccessDeniedException`.
    #[error("{0}")]
    AccessDenied(String),
    /// The request body could not be read or is over the limit: the protocol's bad-request
    /// error, as without verification.
    #[error("{0}")]
    Body(String),
    /// A malformed admin request or flag (a policy that does not parse, an empty name).
    #[error("{0}")]
    InvalidInput(String),
    /// The named access key does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] weft_store::StoreError),
    /// Sealing, opening or generating a secret failed, or a stored record is unreadable.
    #[error("access key error: {0}")]
    Crypto(String),
    /// The key-encryption key file or another setting cannot be used (at start-up).
    #[error("{0}")]
    Config(String),
    /// A client command could not reach the server or got an error answer.
    #[error("{0}")]
    Client(String),
}
