//! The mesh's traffic, gathered: the statistics every Envoy sends through its `metrics_service`
//! stat sink become, per edge (a source proxy's virtual node or gateway to a target virtual node,
//! by route), requests per second, error rate and latency quantiles over a short window, with a
//! bounded history. The dashboard and `/metrics` read it through [`TrafficStore::snapshot`].

mod snapshot;
mod store;

pub use snapshot::{
    EdgeSnapshot, HistoryPoint, ProxyKind, ProxyRef, ProxySnapshot, RouteRef, TrafficSnapshot,
};
pub use store::TrafficStore;
