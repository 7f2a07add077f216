//! The topology of one mesh as the dashboard draws it: a pure function from the mesh's stored
//! resources (and the traffic snapshot) to nodes and edges, built in one pass so that a 500-node
//! mesh costs one range read and one walk.
//!
//! Nodes are the mesh's virtual services, virtual routers, virtual nodes and virtual gateways.
//! Edges follow a request's way as App Mesh routes it
//! (<https://docs.aws.amazon.com/app-mesh/latest/userguide/virtual_services.html>):
//! a gateway's gateway route to a virtual service, a virtual node's backend to a virtual
//! service, a virtual service to its provider (router or node), a router's route to each of its
//! weighted targets (labelled with its share of the route's weight, e.g. 75/25).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::traffic::{EdgeKey, TrafficEdge, TrafficView};

/// One stored resource of a mesh: its store key and its `…Data` JSON (`spec`, `metadata`,
/// `status`), as the API's `Describe…` returns it.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Kind code of the key (`vn`, `vs`, `vr`, `rt`, `vg`, `gr`).
    pub code: String,
    /// The parent (router or gateway) of a route or gateway route.
    pub parent: Option<String>,
    /// The resource's name.
    pub name: String,
    /// Its `…Data` JSON.
    pub data: Value,
}

/// A node of the graph.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GraphNode {
    /// Unique in the graph: `<code>:<name>` (`vn:front`).
    pub id: String,
    /// `virtualNode`, `virtualService`, `virtualRouter` or `virtualGateway`.
    pub kind: &'static str,
    /// The resource's name.
    pub name: String,
    /// The resource's status (`ACTIVE`, `INACTIVE`, `DELETED`).
    pub status: String,
    /// The resource's version.
    pub version: i64,
}

/// An edge of the graph.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GraphEdge {
    /// Unique in the graph and stable across rebuilds (the client updates edges by id).
    pub id: String,
    /// Source node id.
    pub source: String,
    /// Target node id.
    pub target: String,
    /// `route`, `provider`, `backend` or `gatewayRoute`.
    pub kind: &'static str,
    /// The route or gateway route of a `route`/`gatewayRoute` edge.
    pub route: Option<String>,
    /// The target's weight in its route.
    pub weight: Option<u64>,
    /// The target's share of its route's total weight, in percent (75 of a 75/25 split).
    pub percent: Option<u64>,
}

/// Live figures of an edge or node, from the traffic snapshot.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Live {
    /// Requests per second over the traffic window.
    pub rps: f64,
    /// Fraction (0..1) of those that failed.
    pub error_rate: f64,
    /// 99th percentile latency in milliseconds, when known.
    pub p99_ms: Option<f64>,
    /// Whether the error rate is over the dashboard's threshold.
    pub failing: bool,
    /// Whether part of these figures may have gone another way: several routes lead to the same
    /// node and Envoy's stats do not say which one a request matched (the figures are then an
    /// upper bound).
    pub shared: bool,
}

/// The whole graph of a mesh.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Graph {
    /// The mesh's name.
    pub mesh: String,
    /// Every node, in a stable order.
    pub nodes: Vec<GraphNode>,
    /// Every edge, in a stable order.
    pub edges: Vec<GraphEdge>,
}

/// The live figures of a graph's edges and nodes, by id: what the page updates on each traffic
/// tick without touching the layout.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct LiveFigures {
    /// By edge id.
    pub edges: BTreeMap<String, Live>,
    /// By node id: what a virtual node received (its inbound traffic).
    pub nodes: BTreeMap<String, Live>,
    /// The error rate over which an edge or node is failing.
    pub threshold: f64,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

fn node_id(code: &str, name: &str) -> String {
    format!("{code}:{name}")
}

/// Kind names by key code, for the graph's nodes.
fn kind_of(code: &str) -> Option<&'static str> {
    match code {
        "vn" => Some("virtualNode"),
        "vs" => Some("virtualService"),
        "vr" => Some("virtualRouter"),
        "vg" => Some("virtualGateway"),
        _ => None,
    }
}

/// The weighted targets of a route's spec, whichever protocol holds them.
fn weighted_targets(spec: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for protocol in ["httpRoute", "http2Route", "grpcRoute", "tcpRoute"] {
        if let Some(targets) = spec
            .get(protocol)
            .and_then(|r| r.get("action"))
            .and_then(|a| a.get("weightedTargets"))
            .and_then(Value::as_array)
        {
            for t in targets {
                if let Some(node) = t.get("virtualNode").and_then(Value::as_str) {
                    let weight = t.get("weight").and_then(Value::as_u64).unwrap_or(0);
                    out.push((node.to_string(), weight));
                }
            }
        }
    }
    out
}

/// The virtual service a gateway route's spec sends to.
fn gateway_route_target(spec: &Value) -> Option<&str> {
    ["httpRoute", "http2Route", "grpcRoute"]
        .iter()
        .find_map(|p| {
            str_at(
                spec,
                &[
                    p,
                    "action",
                    "target",
                    "virtualService",
                    "virtualServiceName",
                ],
            )
        })
}

/// Builds the graph of `mesh` from its resources in one pass over them.
pub fn build(mesh: &str, resources: &[Resource]) -> Graph {
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    for r in resources {
        let spec = r.data.get("spec").unwrap_or(&Value::Null);
        if let Some(kind) = kind_of(&r.code) {
            nodes.push(GraphNode {
                id: node_id(&r.code, &r.name),
                kind,
                name: r.name.clone(),
                status: str_at(&r.data, &["status", "status"])
                    .unwrap_or("ACTIVE")
                    .to_string(),
                version: r
                    .data
                    .get("metadata")
                    .and_then(|m| m.get("version"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
            });
        }
        match r.code.as_str() {
            "vs" => {
                let provider = str_at(spec, &["provider", "virtualRouter", "virtualRouterName"])
                    .map(|n| node_id("vr", n))
                    .or_else(|| {
                        str_at(spec, &["provider", "virtualNode", "virtualNodeName"])
                            .map(|n| node_id("vn", n))
                    });
                if let Some(target) = provider {
                    edges.push(GraphEdge {
                        id: format!("p:{}>{target}", r.name),
                        source: node_id("vs", &r.name),
                        target,
                        kind: "provider",
                        route: None,
                        weight: None,
                        percent: None,
                    });
                }
            }
            "vn" => {
                for b in spec
                    .get("backends")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(vs) = str_at(b, &["virtualService", "virtualServiceName"]) {
                        edges.push(GraphEdge {
                            id: format!("b:{}>{vs}", r.name),
                            source: node_id("vn", &r.name),
                            target: node_id("vs", vs),
                            kind: "backend",
                            route: None,
                            weight: None,
                            percent: None,
                        });
                    }
                }
            }
            "rt" => {
                let Some(router) = &r.parent else { continue };
                let targets = weighted_targets(spec);
                let total: u64 = targets.iter().map(|(_, w)| w).sum();
                for (node, weight) in targets {
                    edges.push(GraphEdge {
                        id: format!("r:{router}/{}>{node}", r.name),
                        source: node_id("vr", router),
                        target: node_id("vn", &node),
                        kind: "route",
                        route: Some(r.name.clone()),
                        weight: Some(weight),
                        percent: (total > 0).then(|| (weight * 100 + total / 2) / total),
                    });
                }
            }
            "gr" => {
                let Some(gateway) = &r.parent else { continue };
                if let Some(vs) = gateway_route_target(spec) {
                    edges.push(GraphEdge {
                        id: format!("g:{gateway}/{}>{vs}", r.name),
                        source: node_id("vg", gateway),
                        target: node_id("vs", vs),
                        kind: "gatewayRoute",
                        route: Some(r.name.clone()),
                        weight: None,
                        percent: None,
                    });
                }
            }
            _ => {}
        }
    }
    // An edge to a resource that does not exist (yet) would make the graph library throw: the
    // API allows a route to name a node created later.
    let known: std::collections::HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    edges.retain(|e| known.contains(e.source.as_str()) && known.contains(e.target.as_str()));
    Graph {
        mesh: mesh.to_string(),
        nodes,
        edges,
    }
}

fn add(into: &mut Live, rps: f64, error_rate: f64, p99: Option<f64>) {
    let total = into.rps + rps;
    if total > 0.0 {
        into.error_rate = (into.error_rate * into.rps + error_rate * rps) / total;
    }
    into.rps = total;
    // The worst p99 of the parts: an upper bound, not the merged quantile.
    into.p99_ms = match (into.p99_ms, p99) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
}

/// The graph edges a request from `source` to the virtual node `target` went through: the
/// source's backend (or gateway route) to a virtual service, the service's provider, and the
/// router's route to the target when a router provides it. Narrowed to the service and route
/// when the traffic names them; Envoy's cluster stats name only the target, so when several
/// services lead to it, each path gets the traffic (an upper bound for each).
fn paths<'a>(
    out: &HashMap<&'a str, Vec<&'a GraphEdge>>,
    source: &str,
    target: &str,
    service: Option<&str>,
    route: Option<(&str, &str)>,
) -> BTreeSet<&'a str> {
    let mut ids = BTreeSet::new();
    let target_id = node_id("vn", target);
    for first in out.get(source).into_iter().flatten() {
        if !matches!(first.kind, "backend" | "gatewayRoute") {
            continue;
        }
        if service.is_some_and(|vs| first.target != node_id("vs", vs)) {
            continue;
        }
        for provider in out.get(first.target.as_str()).into_iter().flatten() {
            if provider.target == target_id {
                ids.extend([first.id.as_str(), provider.id.as_str()]);
                continue;
            }
            for hop in out.get(provider.target.as_str()).into_iter().flatten() {
                let named = route.is_none_or(|(router, name)| {
                    provider.target == node_id("vr", router) && hop.route.as_deref() == Some(name)
                });
                if hop.kind == "route" && hop.target == target_id && named {
                    ids.extend([first.id.as_str(), provider.id.as_str(), hop.id.as_str()]);
                }
            }
        }
    }
    ids
}

/// The graph's edges by source node.
fn outgoing(graph: &Graph) -> HashMap<&str, Vec<&GraphEdge>> {
    let mut out: HashMap<&str, Vec<&GraphEdge>> = HashMap::new();
    for e in &graph.edges {
        out.entry(e.source.as_str()).or_default().push(e);
    }
    out
}

/// The traffic snapshot's edges whose requests crossed the graph edge `id` (see [`paths`]):
/// what the dashboard shows, with their history, when an edge is selected.
pub fn crossing<'t>(graph: &Graph, traffic: &'t TrafficView, id: &str) -> Vec<&'t TrafficEdge> {
    let out = outgoing(graph);
    traffic
        .edges_of(&graph.mesh)
        .filter(|e| {
            let key = e.key();
            let Some(target) = key.target else {
                return false;
            };
            let source = node_id(key.source_code, &key.source);
            let route = key.route.as_ref().map(|(r, n)| (r.as_str(), n.as_str()));
            paths(&out, &source, &target, key.service.as_deref(), route).contains(id)
        })
        .collect()
}

/// Places the traffic snapshot's edges on the graph: each edge of the way a request took (see
/// [`paths`]) gets its rps, error rate and p99, summed over the traffic crossing it; a virtual
/// node gets what it received. Anything over `threshold` is failing.
pub fn live(graph: &Graph, traffic: &TrafficView, threshold: f64) -> LiveFigures {
    let mut figures = LiveFigures {
        threshold,
        ..LiveFigures::default()
    };
    let out = outgoing(graph);
    for e in traffic.edges_of(&graph.mesh) {
        let EdgeKey {
            source_code,
            source,
            service,
            route,
            target,
        } = e.key();
        let Some(target) = target else { continue };
        let source = node_id(source_code, &source);
        let route = route.as_ref().map(|(r, n)| (r.as_str(), n.as_str()));
        let ids = paths(&out, &source, &target, service.as_deref(), route);
        let routes = ids.iter().filter(|id| id.starts_with("r:")).count();
        for id in ids {
            let live = figures.edges.entry(id.to_string()).or_default();
            add(live, e.rps, e.error_rate, e.p99_ms);
            live.shared |= routes > 1 && id.starts_with("r:");
        }
        add(
            figures.nodes.entry(node_id("vn", &target)).or_default(),
            e.rps,
            e.error_rate,
            e.p99_ms,
        );
    }
    for l in figures.edges.values_mut().chain(figures.nodes.values_mut()) {
        l.failing = l.rps > 0.0 && l.error_rate > threshold;
    }
    figures
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn res(code: &str, parent: Option<&str>, name: &str, spec: Value) -> Resource {
        Resource {
            code: code.into(),
            parent: parent.map(str::to_string),
            name: name.into(),
            data: json!({"spec": spec, "metadata": {"version": 2}, "status": {"status": "ACTIVE"}}),
        }
    }

    fn demo_mesh() -> Vec<Resource> {
        vec![
            res(
                "vn",
                None,
                "front",
                json!({"backends": [{"virtualService": {"virtualServiceName": "color.apps.local"}}]}),
            ),
            res("vn", None, "blue", json!({})),
            res("vn", None, "red", json!({})),
            res("vr", None, "color", json!({})),
            res(
                "rt",
                Some("color"),
                "split",
                json!({"httpRoute": {"action": {"weightedTargets": [
                {"virtualNode": "blue", "weight": 3}, {"virtualNode": "red", "weight": 1}]}}}),
            ),
            res(
                "vs",
                None,
                "color.apps.local",
                json!({"provider": {"virtualRouter": {"virtualRouterName": "color"}}}),
            ),
            res("vg", None, "ingress", json!({})),
            res(
                "gr",
                Some("ingress"),
                "to-color",
                json!({"httpRoute": {"action": {"target": {"virtualService": {"virtualServiceName": "color.apps.local"}}}}}),
            ),
        ]
    }

    #[test]
    fn a_weighted_route_becomes_one_edge_per_target_labelled_with_its_share() {
        let graph = build("apps", &demo_mesh());
        let share = |id: &str| {
            graph
                .edges
                .iter()
                .find(|e| e.id == id)
                .and_then(|e| e.percent)
        };
        assert_eq!(share("r:color/split>blue"), Some(75));
        assert_eq!(share("r:color/split>red"), Some(25));
        assert_eq!(graph.nodes.len(), 6);
        let kinds: Vec<&str> = graph.edges.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            ["backend", "route", "route", "provider", "gatewayRoute"]
        );
    }

    #[test]
    fn traffic_naming_only_its_target_is_placed_on_the_way_there() {
        let graph = build("apps", &demo_mesh());
        let traffic = TrafficView::from_json(&json!({"window_seconds": 60, "edges": [
            {"mesh": "apps", "source": {"kind": "virtualNode", "name": "front"},
             "virtual_service": null, "route": null,
             "target": {"kind": "virtualNode", "name": "red"}, "rps": 2.0, "error_rate": 1.0,
             "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "history": []},
            {"mesh": "apps", "source": {"kind": "virtualGateway", "name": "ingress"},
             "virtual_service": null, "route": null,
             "target": {"kind": "virtualNode", "name": "blue"}, "rps": 6.0, "error_rate": 0.0,
             "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 4.0, "history": []}
        ], "proxies": []}));
        let live = live(&graph, &traffic, 0.05);
        let ids: Vec<&str> = live.edges.keys().map(String::as_str).collect();
        assert_eq!(
            ids,
            [
                "b:front>color.apps.local",
                "g:ingress/to-color>color.apps.local",
                "p:color.apps.local>vr:color",
                "r:color/split>blue",
                "r:color/split>red"
            ]
        );
        assert!(live.edges["r:color/split>red"].failing);
        assert!(!live.edges["r:color/split>blue"].failing);
        assert!(!live.edges["r:color/split>blue"].shared);
        let crossing_provider = crossing(&graph, &traffic, "p:color.apps.local>vr:color");
        assert_eq!(crossing_provider.len(), 2);
        let crossing_red = crossing(&graph, &traffic, "r:color/split>red");
        assert_eq!(crossing_red.len(), 1);
        assert_eq!(crossing_red[0].source.name, "front");
        assert_eq!(live.edges["p:color.apps.local>vr:color"].rps, 8.0);
        assert!((live.edges["p:color.apps.local>vr:color"].error_rate - 0.25).abs() < 1e-9);
    }

    #[test]
    fn traffic_to_a_node_two_routes_lead_to_is_an_upper_bound_on_each() {
        let mut mesh = demo_mesh();
        mesh.push(res(
            "rt",
            Some("color"),
            "canary",
            json!({"httpRoute": {"action": {"weightedTargets": [
            {"virtualNode": "blue", "weight": 1}]}}}),
        ));
        let graph = build("apps", &mesh);
        let traffic = TrafficView::from_json(&json!({"edges": [
            {"mesh": "apps", "source": {"kind": "virtualNode", "name": "front"},
             "target": {"kind": "virtualNode", "name": "blue"}, "rps": 6.0, "error_rate": 0.0}
        ]}));
        let live = live(&graph, &traffic, 0.05);
        assert!(live.edges["r:color/split>blue"].shared);
        assert!(live.edges["r:color/canary>blue"].shared);
        assert_eq!(live.edges["r:color/canary>blue"].rps, 6.0);
        assert!(!live.edges["b:front>color.apps.local"].shared);
    }

    #[test]
    fn an_edge_to_a_resource_not_created_yet_is_left_out() {
        let mut mesh = demo_mesh();
        mesh.retain(|r| r.name != "red");
        let graph = build("apps", &mesh);
        assert!(graph.edges.iter().all(|e| e.target != "vn:red"));
        assert!(graph.edges.iter().any(|e| e.target == "vn:blue"));
    }

    #[test]
    fn traffic_with_errors_over_the_threshold_marks_its_route_edge_and_node_failing() {
        let graph = build("apps", &demo_mesh());
        let traffic = TrafficView::from_json(&json!({"window_seconds": 60, "edges": [
            {"mesh": "apps", "source": {"kind": "virtualNode", "name": "front"},
             "virtual_service": "color.apps.local", "route": {"router": "color", "route": "split"},
             "target": {"kind": "virtualNode", "name": "red"}, "rps": 2.0, "error_rate": 0.5,
             "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 3.0, "history": []},
            {"mesh": "apps", "source": {"kind": "virtualNode", "name": "front"},
             "virtual_service": "color.apps.local", "route": {"router": "color", "route": "split"},
             "target": {"kind": "virtualNode", "name": "blue"}, "rps": 6.0, "error_rate": 0.0,
             "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": 4.0, "history": []},
            {"mesh": "other", "source": {"kind": "virtualNode", "name": "front"},
             "virtual_service": null, "route": null,
             "target": {"kind": "virtualNode", "name": "blue"}, "rps": 100.0, "error_rate": 1.0,
             "p50_ms": null, "p90_ms": null, "p99_ms": null, "history": []}
        ], "proxies": []}));
        let live = live(&graph, &traffic, 0.05);
        assert!(live.edges["r:color/split>red"].failing);
        assert!(!live.edges["r:color/split>blue"].failing);
        assert!(live.nodes["vn:red"].failing);
        let backend = &live.edges["b:front>color.apps.local"];
        assert_eq!(backend.rps, 8.0);
        assert!((backend.error_rate - 0.125).abs() < 1e-9);
        assert!(backend.failing);
        assert_eq!(backend.p99_ms, Some(4.0));
        assert_eq!(live.edges["p:color.apps.local>vr:color"].rps, 8.0);
    }
}
