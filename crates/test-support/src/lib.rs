//! Fixtures shared by Weft's tests, one home per part:
//!
//! - [`spec`]: chainable builders of App Mesh specs (virtual nodes with their listeners,
//!   backends and service discovery; routers, routes, virtual services, gateways and gateway
//!   routes). Each renders as App Mesh JSON (what `aws appmesh create-* --spec` takes) and,
//!   with the `sdk` feature, as the AWS SDK for Rust's types.
//! - [`sdk`] (feature `sdk`): [`sdk::MeshApi`], a mesh's resources created through the SDK.
//! - [`mesh`] (feature `translate`): [`mesh::Mesh`], a mesh snapshot built from specs and
//!   translated for one proxy.
//! - [`grpc`] (feature `grpc`): a gRPC app and client, with hand-written prost messages.
//! - [`http`] (feature `http`): one HTTP/1.1 exchange through hyper's client.
//!
//! Test support panics on what a test did not expect: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod spec;

#[cfg(feature = "sdk")]
pub mod sdk;

#[cfg(feature = "translate")]
pub mod mesh;

#[cfg(feature = "grpc")]
pub mod grpc;

#[cfg(feature = "http")]
pub mod http;
