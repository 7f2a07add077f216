//! Translation of App Mesh resources into Envoy resources (pure, no I/O).
//!
//! [`translate`] maps one consistent [`MeshSnapshot`] and one proxy's [`ProxyIdentity`] (with
//! its [`ProxyOptions`] from the node metadata) to the listeners, route configurations and
//! clusters that proxy needs — following App Mesh's conventions
//! (`shared/reference/app-mesh-user-guide/`) and the agent/translation/ADS contract
//! (`docs/proxy-contract.md`).
//!
//! Guarantees:
//! - **Scoped**: a virtual node's proxy gets its own ingress and the clusters its backends'
//!   routes point at, never the rest of the mesh.
//! - **Never NACKed**: dangling references (a backend service that does not exist, a route
//!   target whose node was deleted, an unusable regular expression) are skipped, not sent.
//! - **Deterministic**: equal inputs give equal resources in equal order, so their protobuf
//!   encodings are byte-identical (the ADS server derives versions from content).

mod authorization;
mod cloud_map;
mod cluster;
mod defaults;
mod error;
mod gateway;
mod identity;
mod listener;
mod names;
mod options;
mod route;
mod snapshot;
mod tls;
mod translate;

pub use cloud_map::CloudMapInstance;
pub use defaults::{
    default_retry_policy, CIRCUIT_BREAKER_MAX, CONNECT_TIMEOUT_SECS, DEFAULT_MAX_RETRIES,
    DEFAULT_RETRY_ON, IDLE_TIMEOUT_SECS, PER_REQUEST_TIMEOUT_SECS, RE2_MAX_PROGRAM_SIZE,
    RE2_MAX_PROGRAM_SIZE_RUNTIME_KEY,
};
pub use error::TranslateError;
pub use gateway::{self_redirect_cluster_name, TARGET_HEADER as GATEWAY_TARGET_HEADER};
pub use identity::{ProxyIdentity, ProxyKind};
pub use names::{
    egress_cluster as egress_cluster_name, egress_listener as egress_listener_name,
    egress_route_config as egress_route_config_name,
    forward_proxy_cluster as forward_proxy_cluster_name, ingress_cluster as ingress_cluster_name,
    ingress_listener as ingress_listener_name, ingress_route_config as ingress_route_config_name,
    passthrough_cluster as passthrough_cluster_name,
};
pub use options::{ListenerMode, ProxyOptions, DEFAULT_EGRESS_PORT, DEFAULT_INGRESS_PORT};
pub use snapshot::{MeshSnapshot, DEFAULT_TRUST_DOMAIN};
pub use tls::{
    identity_notice, IDENTITY_SECRET as TLS_IDENTITY_SECRET, SDS_CLUSTER as TLS_SDS_CLUSTER,
    TRUST_BUNDLE_SECRET as TLS_TRUST_BUNDLE_SECRET,
};
pub use translate::{translate, ProxyResources, SharedResources, Translator};
pub use weft_model::MeshMtls;

/// Envoy's cluster type (kept apart from App Mesh names by the `Xds` prefix).
pub use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
/// Envoy's endpoint assignment type.
pub use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as XdsClusterLoadAssignment;
/// Envoy's listener type.
pub use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
/// Envoy's route configuration type.
pub use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as XdsRouteConfiguration;
