//! The serialisable view of the traffic history, served at `GET /weft/v1/traffic` and read by
//! the dashboard.

use serde::Serialize;

/// Everything the server knows of the mesh's recent traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrafficSnapshot {
    /// The window `rps`, `error_rate` and the latencies are computed over.
    pub window_seconds: u64,
    /// One entry per edge that carried traffic recently.
    pub edges: Vec<EdgeSnapshot>,
    /// Every proxy that reported stats recently.
    pub proxies: Vec<ProxySnapshot>,
}

/// Which kind of App Mesh resource a proxy or target stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ProxyKind {
    /// A virtual node's sidecar.
    #[serde(rename = "virtualNode")]
    VirtualNode,
    /// A virtual gateway's Envoy.
    #[serde(rename = "virtualGateway")]
    VirtualGateway,
}

/// A virtual node or virtual gateway by name (the mesh is the edge's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ProxyRef {
    /// Virtual node or virtual gateway.
    pub kind: ProxyKind,
    /// The resource's name in its mesh.
    pub name: String,
}

/// The route an edge's requests matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RouteRef {
    /// The virtual router (or, for a gateway, the virtual gateway) holding the route.
    pub router: String,
    /// The route's name.
    pub route: String,
}

/// One point of an edge's history: one per flush of the source proxy's stats.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HistoryPoint {
    /// Unix seconds of the flush.
    pub t: u64,
    /// Requests per second during the flush interval.
    pub rps: f64,
    /// Fraction (0..1) of the interval's requests that failed.
    pub error_rate: f64,
    /// 99th percentile latency in milliseconds of the interval, if requests completed.
    pub p99_ms: Option<f64>,
}

/// One edge: a source proxy's traffic to a target virtual node (from the target's cluster
/// stats: `route` and `virtual_service` are `None`), or to an App Mesh route (from the route's
/// stats: `target` is `None`, since a route may split its requests between several targets).
/// A request counts once in each kind of edge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeSnapshot {
    /// The mesh of both ends.
    pub mesh: String,
    /// The proxy that sent the requests.
    pub source: ProxyRef,
    /// The virtual service the requests were addressed to, for a route's edge.
    pub virtual_service: Option<String>,
    /// The route they matched, for a route's edge.
    pub route: Option<RouteRef>,
    /// The virtual node that received them; `None` for a route's edge.
    pub target: Option<ProxyRef>,
    /// Requests per second over the window.
    pub rps: f64,
    /// Fraction (0..1) of the window's requests answered 5xx, failed with a gRPC error or reset.
    pub error_rate: f64,
    /// Median latency over the window, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 90th percentile latency over the window, in milliseconds.
    pub p90_ms: Option<f64>,
    /// 99th percentile latency over the window, in milliseconds.
    pub p99_ms: Option<f64>,
    /// One point per flush, oldest first, bounded.
    pub history: Vec<HistoryPoint>,
}

/// A proxy that reports its stats.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxySnapshot {
    /// The proxy's mesh.
    pub mesh: String,
    /// Virtual node or virtual gateway.
    pub kind: ProxyKind,
    /// The virtual node's or gateway's name.
    pub name: String,
    /// The Envoy's node id.
    pub proxy_id: String,
    /// Unix seconds of its last report.
    pub last_report_unix: u64,
}
