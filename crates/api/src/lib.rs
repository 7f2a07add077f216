//! The App Mesh REST API (`rest-json`, paths under `/v20190125`), byte-compatible
//! with what the AWS SDKs and CLI send and expect, served from a Weft store.
//!
//! Requests are SigV4-signed by the SDKs. This crate does not check signatures:
//! `weft server` puts weft-auth's layer in front of the router, which verifies
//! them and the key's policy before a request gets here.

pub mod body;
pub mod config;
pub mod error;
pub mod http;
pub mod ledger;
pub mod service;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod throttle;

pub use config::{ApiConfig, Quotas, RateLimit};
pub use error::ApiError;
pub use http::router;
pub use service::{Output, Service};
pub use weft_model::{keys, kind};
