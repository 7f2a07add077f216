//! The traffic history as Prometheus gauges, read at each scrape (crates/metrics registers the
//! collector under its `weft_` prefix):
//!
//! - `weft_edge_requests_per_second{mesh, source_kind, node, virtual_service, router, route, target}`:
//!   a node-to-target edge has `router`, `route` and `virtual_service` empty, a route's edge
//!   `target` empty (see [`crate::history`]); sum one kind, never both;
//! - `weft_edge_error_ratio{…}`: 5xx and gRPC failures over requests, 0..1;
//! - `weft_edge_latency_seconds{…, quantile}`: 0.5, 0.9 and 0.99 over the window;
//! - `weft_authorization_denied_total{mesh, node, caller, mode}`: requests refused (ENFORCE)
//!   or counted only (REPORT) by a node's RBAC filter, per caller;
//! - `weft_traffic_dropped{reason}`: reports or series not taken, since the start;
//! - `weft_traffic_edges`, `weft_traffic_history_bytes`: the history's size.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::snapshot::ProxyKind;
use crate::store::TrafficStore;

/// Reads a [`TrafficStore`] at each scrape.
#[derive(Clone)]
pub struct TrafficCollector {
    store: TrafficStore,
}

impl std::fmt::Debug for TrafficCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrafficCollector")
    }
}

impl TrafficCollector {
    /// A collector of `store`'s figures.
    pub fn new(store: TrafficStore) -> Self {
        TrafficCollector { store }
    }
}

impl Collector for TrafficCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.store.snapshot();
        let labels: Vec<[(&str, &str); 7]> = snapshot
            .edges
            .iter()
            .map(|e| {
                [
                    ("mesh", e.mesh.as_str()),
                    (
                        "source_kind",
                        match e.source.kind {
                            ProxyKind::VirtualNode => "virtualNode",
                            ProxyKind::VirtualGateway => "virtualGateway",
                        },
                    ),
                    ("node", e.source.name.as_str()),
                    (
                        "virtual_service",
                        e.virtual_service.as_deref().unwrap_or(""),
                    ),
                    ("router", e.route.as_ref().map_or("", |r| r.router.as_str())),
                    ("route", e.route.as_ref().map_or("", |r| r.route.as_str())),
                    ("target", e.target.as_ref().map_or("", |t| t.name.as_str())),
                ]
            })
            .collect();
        let mut rps = encoder.encode_descriptor(
            "edge_requests_per_second",
            "Requests per second from a proxy's node to a target node over the last window",
            None,
            MetricType::Gauge,
        )?;
        for (edge, l) in snapshot.edges.iter().zip(&labels) {
            ConstGauge::new(edge.rps).encode(rps.encode_family(l)?)?;
        }
        let mut errors = encoder.encode_descriptor(
            "edge_error_ratio",
            "Fraction of an edge's requests answered 5xx, failed with a gRPC error or reset, over the last window",
            None,
            MetricType::Gauge,
        )?;
        for (edge, l) in snapshot.edges.iter().zip(&labels) {
            ConstGauge::new(edge.error_rate).encode(errors.encode_family(l)?)?;
        }
        let mut latency = encoder.encode_descriptor(
            "edge_latency_seconds",
            "Upstream request time of an edge over the last window, by quantile",
            None,
            MetricType::Gauge,
        )?;
        for (edge, l) in snapshot.edges.iter().zip(&labels) {
            for (q, ms) in [
                ("0.5", edge.p50_ms),
                ("0.9", edge.p90_ms),
                ("0.99", edge.p99_ms),
            ] {
                let Some(ms) = ms else { continue };
                let mut with_q = l.to_vec();
                with_q.push(("quantile", q));
                ConstGauge::new(ms / 1000.0).encode(latency.encode_family(&with_q)?)?;
            }
        }
        let mut denied = encoder.encode_descriptor(
            "authorization_denied",
            "Requests a node's RBAC filter refused (mode ENFORCE) or would have (REPORT), by caller",
            None,
            MetricType::Counter,
        )?;
        let mut by_node: std::collections::BTreeMap<(String, String, String, &str), u64> =
            Default::default();
        for d in self.store.denials() {
            *by_node
                .entry((d.mesh, d.node.name, d.caller, d.mode))
                .or_default() += d.count;
        }
        for ((mesh, node, caller, mode), n) in &by_node {
            let labels = [
                ("mesh", mesh.as_str()),
                ("node", node.as_str()),
                ("caller", caller.as_str()),
                ("mode", *mode),
            ];
            ConstCounter::new(*n).encode(denied.encode_family(&labels)?)?;
        }
        let drops = self.store.drops();
        let mut dropped = encoder.encode_descriptor(
            "traffic_dropped",
            "Envoy stats reports or series the traffic history did not take, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("malformed", drops.malformed),
            ("refused", drops.refused),
            ("bad_value", drops.bad_value),
            ("unknown_cluster", drops.unknown_cluster),
            ("over_limit", drops.over_limit),
        ] {
            ConstCounter::new(n).encode(dropped.encode_family(&[("reason", reason)])?)?;
        }
        let (edges, bytes) = self.store.size();
        let gauge = ConstGauge::new(i64::try_from(edges).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "traffic_edges",
            "Edges the traffic history holds",
            None,
            MetricType::Gauge,
        )?)?;
        let gauge = ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "traffic_history_bytes",
            "An estimate of the memory the traffic history holds",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}
