//! Weft's xDS control plane.
//!
//! This crate knows nothing about App Mesh: it serves opaque, per-node [`Snapshot`]s of typed Envoy
//! resources over the Aggregated Discovery Service (ADS), both state-of-the-world (SotW) and delta.
//!
//! - [`Resource`] / [`Snapshot`]: immutable, content-versioned sets of Envoy resources.
//! - [`SnapshotCache`]: snapshots keyed by a *snapshot key* (proxies of one virtual node share a key
//!   and one `Arc<Snapshot>`); setting a snapshot wakes every stream of that key, bursts coalesce.
//! - [`SotwStream`] / [`DeltaStream`]: the per-stream state machines, synchronous and free of I/O,
//!   tracking nonces, ACKs and NACKs per type and rolling changes out make-before-break. Their
//!   [`SotwResponse`]s / [`DeltaResponse`]s hold the snapshot's resources, not copies.
//! - [`AdsServer`]: drives one state machine per gRPC stream with a single `tokio::select!` loop,
//!   and reports [`ProxyStatus`] for every connected proxy.
//! - [`AdsService`]: the gRPC service. tonic-build generates it (routing, request decoding);
//!   the crate's transport writes its responses, each resources section encoded once and shared
//!   by the streams that send it.
//!
//! Protocol reference: <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol>.

mod cache;
mod delta;
mod error;
mod grpc;
mod packed;
mod resource;
mod rollout;
mod server;
mod sotw;
mod status;
mod transport;
mod wire;

#[cfg(any(test, feature = "testing"))]
pub mod test_helpers;

pub use cache::SnapshotCache;
pub use delta::DeltaStream;
pub use error::XdsError;
pub use packed::PackedAny;
pub use resource::{cluster_eds_name, listener_rds_names, Resource, Snapshot, TypeItems};
pub use rollout::RolloutPhase;
pub use server::{
    node_resource, AdsServer, ConvergenceObserver, NodeIdResolver, NodeResolver, PeerIdentity,
};
pub use sotw::SotwStream;
pub use status::{NackRecord, Protocol, ProxyStatus, TypeStatus};
pub use transport::AdsService;
pub use wire::{DeltaResponse, SotwResponse};

/// Envoy's node identity, as sent in the first request of a stream.
pub use envoy_types::pb::envoy::config::core::v3::Node as XdsNode;

/// Type URL of CDS resources (`envoy.config.cluster.v3.Cluster`).
pub const CLUSTER_TYPE_URL: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of EDS resources (`envoy.config.endpoint.v3.ClusterLoadAssignment`).
pub const ENDPOINT_TYPE_URL: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of LDS resources (`envoy.config.listener.v3.Listener`).
pub const LISTENER_TYPE_URL: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of RDS resources (`envoy.config.route.v3.RouteConfiguration`).
pub const ROUTE_TYPE_URL: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Whether an empty subscription of this type means "everything" (wildcard).
///
/// Only LDS and CDS are wildcard types in Envoy; see
/// <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#how-the-client-specifies-what-resources-to-return>.
pub(crate) fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER_TYPE_URL || type_url == CLUSTER_TYPE_URL
}

#[cfg(test)]
mod tests;
