//! The App Mesh domain, exactly as the 2019-01-25 API model defines it.
//!
//! - [`shapes`]: Rust types for every shape of the model, generated at build
//!   time from `appmesh-2019-01-25.service.json` (see `build.rs`).
//! - [`mod@schema`]: the same model, loaded at run time, for the HTTP bindings of
//!   each operation and the constraints of each shape.
//! - [`validate`]: checks a request against every constraint of the model
//!   (required members, lengths, ranges, enums, patterns, list and map sizes,
//!   unions).
//!
//! `schema` and `validate` are one engine for any botocore model: the Cloud
//! Map registry (`weft-registry`) loads its model with [`Schema::parse`] and
//! validates with the same code, under its own [`Rules`].
//! - [`arn`]: App Mesh ARNs.
//! - [`kind`], [`keys`], [`stored`]: the seven resource kinds, where each
//!   lives in the store and how it is stored — shared by the API (which writes)
//!   and the xDS control plane (which reads).
//! - [`mtls`]: Weft's mesh-wide mutual TLS tag (`weft:mtls`), a Weft extension.
//! - [`authorization`]: Weft's service-to-service authorization tags (`weft:authorization` on a
//!   mesh, `weft:callers` on a virtual node), a Weft extension.
//!
//! Pure: no I/O.

pub mod arn;
pub mod authorization;
pub mod keys;
pub mod kind;
pub mod mtls;
pub mod schema;
pub mod stored;
pub mod validate;

/// Types generated from the App Mesh API model.
#[allow(clippy::large_enum_variant, clippy::enum_variant_names)]
pub mod shapes {
    include!(concat!(env!("OUT_DIR"), "/shapes.rs"));
}

pub use arn::{Arn, ResourcePath};
pub use authorization::{MeshAuthorization, AUTHORIZATION_TAG, CALLERS_TAG};
pub use kind::{Action, Kind, ResourceId};
pub use mtls::{MeshMtls, MTLS_TAG};
pub use schema::{schema, Location, ModelError, Operation, Schema, Shape, ShapeKind};
pub use stored::StoredRecord;
pub use validate::{validate_input, Rules, ValidationError};

/// The App Mesh API model this crate is built from (botocore JSON).
pub const MODEL_JSON: &str = include_str!("../appmesh-2019-01-25.service.json");

impl shapes::RouteSpec {
    /// Every weighted target of the route, whichever of its protocols (`httpRoute`,
    /// `http2Route`, `grpcRoute`, `tcpRoute`) holds them.
    pub fn weighted_targets(&self) -> impl Iterator<Item = &shapes::WeightedTarget> {
        let http = [&self.http_route, &self.http2_route]
            .into_iter()
            .flatten()
            .flat_map(|r| r.action.weighted_targets.iter());
        let grpc = self
            .grpc_route
            .iter()
            .flat_map(|r| r.action.weighted_targets.iter());
        let tcp = self
            .tcp_route
            .iter()
            .flat_map(|r| r.action.weighted_targets.iter());
        http.chain(grpc).chain(tcp)
    }
}
