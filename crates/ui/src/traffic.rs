//! The mesh's traffic as the dashboard reads it: the traffic store's snapshot in its JSON shape
//! (the one `GET /weft/v1/traffic` serves), and the counter it bumps at every ingest.
//!
//! The dashboard takes the snapshot as JSON through a closure rather than the traffic crate's
//! types, so that it depends on the documented shape only and the binary wires the two.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

/// Where the dashboard gets traffic from: a snapshot function and a change counter.
#[derive(Clone)]
pub struct TrafficSource {
    snapshot: Arc<dyn Fn() -> Value + Send + Sync>,
    changes: watch::Receiver<u64>,
}

impl TrafficSource {
    /// A source reading `snapshot` (the `TrafficSnapshot` JSON) whenever `changes` is bumped.
    pub fn new(
        snapshot: impl Fn() -> Value + Send + Sync + 'static,
        changes: watch::Receiver<u64>,
    ) -> TrafficSource {
        TrafficSource {
            snapshot: Arc::new(snapshot),
            changes,
        }
    }

    /// A source with no traffic, ever (a server without the stats intake).
    pub fn empty() -> TrafficSource {
        let (tx, rx) = watch::channel(0);
        // The sender is leaked into the closure so the receiver never reports it closed.
        TrafficSource::new(
            move || {
                let _ = &tx;
                serde_json::json!({"window_seconds": 0, "edges": [], "proxies": []})
            },
            rx,
        )
    }

    /// The current snapshot, read.
    pub fn view(&self) -> TrafficView {
        TrafficView::from_json(&(self.snapshot)())
    }

    /// A receiver of the change counter.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

/// A proxy or target by kind and name.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ProxyRef {
    /// `virtualNode` or `virtualGateway`.
    pub kind: String,
    /// Its name in the mesh.
    pub name: String,
}

/// A route by router (or gateway) and name.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RouteRef {
    /// The virtual router or virtual gateway.
    pub router: String,
    /// The route or gateway route.
    pub route: String,
}

/// One edge of the traffic snapshot.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TrafficEdge {
    /// The mesh of both ends.
    pub mesh: String,
    /// Who sent the requests.
    pub source: ProxyRef,
    /// The virtual service addressed, when known.
    #[serde(default)]
    pub virtual_service: Option<String>,
    /// The route matched, when known.
    #[serde(default)]
    pub route: Option<RouteRef>,
    /// Who received them.
    pub target: Option<ProxyRef>,
    /// Requests per second over the window.
    #[serde(default)]
    pub rps: f64,
    /// Fraction of them that failed.
    #[serde(default)]
    pub error_rate: f64,
    /// Median latency, milliseconds.
    #[serde(default)]
    pub p50_ms: Option<f64>,
    /// 90th percentile latency, milliseconds.
    #[serde(default)]
    pub p90_ms: Option<f64>,
    /// 99th percentile latency, milliseconds.
    #[serde(default)]
    pub p99_ms: Option<f64>,
    /// One point per flush, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryPoint>,
}

/// One point of an edge's history.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HistoryPoint {
    /// Unix seconds.
    pub t: u64,
    /// Requests per second then.
    #[serde(default)]
    pub rps: f64,
    /// Fraction of them that failed.
    #[serde(default)]
    pub error_rate: f64,
    /// 99th percentile latency then, milliseconds.
    #[serde(default)]
    pub p99_ms: Option<f64>,
}

/// An edge's ends as the graph names them.
pub struct EdgeKey {
    /// `vn` or `vg`.
    pub source_code: &'static str,
    /// The source's name.
    pub source: String,
    /// The virtual service, if known.
    pub service: Option<String>,
    /// `(router, route)`, if known.
    pub route: Option<(String, String)>,
    /// The target virtual node, if known.
    pub target: Option<String>,
}

impl TrafficEdge {
    /// The edge's ends as the graph names them.
    pub fn key(&self) -> EdgeKey {
        EdgeKey {
            source_code: if self.source.kind == "virtualGateway" {
                "vg"
            } else {
                "vn"
            },
            source: self.source.name.clone(),
            service: self.virtual_service.clone(),
            route: self
                .route
                .as_ref()
                .map(|r| (r.router.clone(), r.route.clone())),
            target: self
                .target
                .as_ref()
                .filter(|t| t.kind == "virtualNode")
                .map(|t| t.name.clone()),
        }
    }
}

/// A traffic snapshot, read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TrafficView {
    /// The window the figures are computed over.
    #[serde(default)]
    pub window_seconds: u64,
    /// Every edge that carried traffic recently.
    #[serde(default)]
    pub edges: Vec<TrafficEdge>,
}

impl TrafficView {
    /// Reads a snapshot's JSON; an unreadable one reads as no traffic (and is logged), so that
    /// the topology is still drawn.
    pub fn from_json(value: &Value) -> TrafficView {
        match TrafficView::deserialize(value) {
            Ok(view) => view,
            Err(e) => {
                tracing::warn!(error = %e, "the traffic snapshot does not have the expected shape");
                TrafficView::default()
            }
        }
    }

    /// The edges of one mesh.
    pub fn edges_of<'a>(&'a self, mesh: &str) -> impl Iterator<Item = &'a TrafficEdge> + 'a {
        let mesh = mesh.to_string();
        self.edges.iter().filter(move |e| e.mesh == mesh)
    }
}
