//! The mesh's traffic, gathered: the statistics every Envoy sends through its `metrics_service`
//! stat sink become, per edge (a source proxy's virtual node or gateway to a target virtual
//! node), requests per second, error rate and latency quantiles over a short window, with a
//! bounded history. The dashboard and `/metrics` read it through [`TrafficStore::snapshot`].
//!
//! - [`parse`]: one flush of stats read (pure);
//! - [`history`]: the bounded history per edge (pure, time is an argument);
//! - [`grpc`]: `envoy.service.metrics.v3.MetricsService`, served beside ADS on the xDS port;
//! - [`http`]: `GET /weft/v1/traffic`, the snapshot as JSON;
//! - [`collector`]: the history as Prometheus gauges, for crates/metrics's registry.

pub mod collector;
mod error;
pub mod grpc;
pub mod history;
pub mod http;
pub mod parse;
mod snapshot;
mod store;

pub use error::TrafficError;
pub use history::{DenialCount, Drops, Limits, Source};
pub use snapshot::{
    EdgeSnapshot, HistoryPoint, ProxyKind, ProxyRef, ProxySnapshot, RouteRef, TrafficSnapshot,
};
pub use store::TrafficStore;
