//! The bounded traffic history: per edge (a source proxy's virtual node or gateway to a target
//! virtual node), one slot per `resolution` seconds holding the requests, the failures and the
//! latency buckets the source's Envoys reported in it. Pure: time is an argument.
//!
//! Two kinds of edge are kept, both from the source proxy:
//! - to a target virtual node, from the target's cluster stats: every request the source sent
//!   to that node, whichever route it matched (`route` and `virtual_service` unknown);
//! - to an App Mesh route (a virtual router's route, or a gateway route of the reporting
//!   gateway), from the route's own stats: every request that matched it, whichever of its
//!   weighted targets took it (`target` unknown, `route` and `virtual_service` known).
//!
//! A request counts once in each kind: sum one kind, never both.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::parse::{quantile, ClusterFlush, Flush};
use crate::snapshot::{
    EdgeSnapshot, HistoryPoint, ProxyKind, ProxyRef, ProxySnapshot, RouteRef, TrafficSnapshot,
};

/// The bounds of the history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The window rates and quantiles are computed over, in seconds.
    pub window_seconds: u64,
    /// The width of one history point, in seconds (the default stats flush interval).
    pub resolution_seconds: u64,
    /// History points kept per edge.
    pub history_points: usize,
    /// Edges kept at most; the traffic of further edges is dropped and counted.
    pub max_edges: usize,
    /// Proxies tracked at most; reports of further proxies are dropped and counted.
    pub max_proxies: usize,
    /// An edge without requests (or a proxy without reports) this long is forgotten.
    pub idle_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            window_seconds: 60,
            resolution_seconds: 10,
            history_points: 60,
            // About 5.5 KB an edge at most (64 slots, the window's buckets, keys): 8,000 edges
            // keep the history under the 50 MB issue 21 allows it (3,000 edges for 1,000
            // proxies calling 3 nodes each measured 17 MB).
            max_edges: 8_000,
            max_proxies: 20_000,
            idle_seconds: 600,
        }
    }
}

/// The proxy a report came from, as its stream's node id and TLS identity named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    /// Its mesh.
    pub mesh: String,
    /// Virtual node or virtual gateway.
    pub kind: ProxyKind,
    /// The node's or gateway's name.
    pub name: String,
    /// The Envoy's node id.
    pub proxy_id: String,
}

/// Why reports or parts of them were not taken, counted since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    /// Streams that broke with undecodable data.
    pub malformed: u64,
    /// Streams refused: no node, an unknown node id, or one the TLS identity contradicts.
    pub refused: u64,
    /// Series with a wrong type, a negative, non-finite or absurd value.
    pub bad_value: u64,
    /// Clusters whose names name no target node of the source's mesh.
    pub unknown_cluster: u64,
    /// Reports of edges or proxies beyond the limits.
    pub over_limit: u64,
    /// Series of names the history does not use (most of Envoy's stats): not an error.
    pub ignored: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct EdgeKey {
    mesh: String,
    source: ProxyRef,
    /// The target node of a cluster-stats edge; `None` for a route edge.
    target: Option<String>,
    virtual_service: Option<String>,
    route: Option<RouteRef>,
}

#[derive(Debug)]
struct Slot {
    t: u64,
    requests: u64,
    errors: u64,
    /// Latency bucket counts against the edge's bounds; emptied once out of the window.
    counts: Vec<u64>,
    p99_ms: Option<f64>,
}

#[derive(Debug)]
struct Edge {
    /// When the edge first carried requests, and the flush interval of that first report: the
    /// window of a young edge is the time it has been observed.
    first_seen: f64,
    first_interval: f64,
    last_active: f64,
    bounds: Vec<f64>,
    slots: VecDeque<Slot>,
}

#[derive(Debug)]
struct Proxy {
    source: Source,
    last_report: f64,
    /// Authorization denials since the proxy first reported, by caller and whether enforced.
    denials: BTreeMap<(String, bool), u64>,
}

/// When a flush is added: its time, the interval a first report covers, its slot and window.
struct At {
    now: f64,
    first_interval: f64,
    slot_t: u64,
    window_start: f64,
}

/// The authorization denials one proxy counted, per caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DenialCount {
    /// The proxy's mesh.
    pub mesh: String,
    /// The denying proxy's node or gateway.
    pub node: ProxyRef,
    /// The Envoy's node id.
    pub proxy_id: String,
    /// The caller: `virtualNode/<name>` or `virtualGateway/<name>` of the mesh, another
    /// certificate's URI SAN, or `unauthenticated`.
    pub caller: String,
    /// `ENFORCE` (refused) or `REPORT` (would have been refused).
    pub mode: &'static str,
    /// Requests since the proxy first reported.
    pub count: u64,
}

/// Callers counted at most per proxy.
const MAX_CALLERS: usize = 1000;

/// The history of every edge and proxy.
#[derive(Debug, Default)]
pub struct History {
    limits: Limits,
    edges: HashMap<EdgeKey, Edge>,
    proxies: HashMap<String, Proxy>,
    drops: Drops,
    last_sweep: f64,
}

impl History {
    /// An empty history within `limits`.
    pub fn new(limits: Limits) -> Self {
        History {
            limits: Limits {
                resolution_seconds: limits.resolution_seconds.max(1),
                ..limits
            },
            ..History::default()
        }
    }

    /// The counts of what was dropped.
    pub fn drops(&self) -> Drops {
        self.drops
    }

    /// Counts what the stream layer refused before any report.
    pub fn count_refused(&mut self, malformed: bool) {
        if malformed {
            self.drops.malformed += 1;
        } else {
            self.drops.refused += 1;
        }
    }

    /// Takes one flush of `source`'s stats at `now` (Unix seconds); `interval` is the time the
    /// flush covers when it is the proxy's first report (Envoy's flush interval).
    pub fn ingest(&mut self, source: &Source, flush: &Flush, now: f64, interval: f64) {
        self.drops.bad_value += flush.dropped;
        self.drops.ignored += flush.ignored;
        let proxies = self.proxies.len();
        let first_interval = match self.proxies.get_mut(&source.proxy_id) {
            Some(proxy) => {
                let since = now - proxy.last_report;
                proxy.last_report = now;
                if since > 0.0 {
                    since
                } else {
                    interval
                }
            }
            None if proxies >= self.limits.max_proxies => {
                self.drops.over_limit += 1;
                return;
            }
            None => {
                self.proxies.insert(
                    source.proxy_id.clone(),
                    Proxy {
                        source: source.clone(),
                        last_report: now,
                        denials: BTreeMap::new(),
                    },
                );
                interval
            }
        };
        if !flush.denials.is_empty() {
            self.count_denials(source, flush);
        }
        let slot_t =
            now.max(0.0) as u64 / self.limits.resolution_seconds * self.limits.resolution_seconds;
        let window_start = now - self.limits.window_seconds as f64;
        let at = At {
            now,
            first_interval,
            slot_t,
            window_start,
        };
        let from = ProxyRef {
            kind: source.kind,
            name: source.name.clone(),
        };
        for (cluster, stats) in &flush.clusters {
            let Some(target) = target_of(&source.mesh, cluster) else {
                self.drops.unknown_cluster += 1;
                continue;
            };
            let key = EdgeKey {
                mesh: source.mesh.clone(),
                source: from.clone(),
                target: Some(target.to_string()),
                virtual_service: None,
                route: None,
            };
            self.add(key, stats, &at);
        }
        for (route, stats) in &flush.routes {
            let key = EdgeKey {
                mesh: source.mesh.clone(),
                source: from.clone(),
                target: None,
                virtual_service: Some(route.virtual_service.clone()),
                route: Some(RouteRef {
                    // A gateway route's stats come from the gateway holding it.
                    router: route.router.clone().unwrap_or_else(|| source.name.clone()),
                    route: route.route.clone(),
                }),
            };
            self.add(key, stats, &at);
        }
        if now - self.last_sweep >= self.limits.resolution_seconds as f64 {
            self.sweep(now);
        }
    }

    /// Adds one flush's `stats` to the edge `key`, creating it when it carried requests.
    fn add(&mut self, key: EdgeKey, stats: &ClusterFlush, at: &At) {
        let edges = self.edges.len();
        let edge = match self.edges.get_mut(&key) {
            Some(edge) => edge,
            // Envoy reports every cluster at every flush: one that carried nothing is no
            // edge yet.
            None if stats.requests == 0 => return,
            None if edges >= self.limits.max_edges => {
                self.drops.over_limit += 1;
                return;
            }
            None => self.edges.entry(key).or_insert(Edge {
                first_seen: at.now,
                first_interval: at.first_interval,
                last_active: at.now,
                bounds: Vec::new(),
                slots: VecDeque::new(),
            }),
        };
        if stats.requests > 0 {
            edge.last_active = at.now;
        }
        if let Some(latency) = &stats.latency {
            if latency.bounds != edge.bounds {
                // Other bounds (a changed stats config): older buckets no longer add up.
                edge.bounds.clone_from(&latency.bounds);
                for slot in &mut edge.slots {
                    slot.counts.clear();
                }
            }
        }
        if edge.slots.back().is_none_or(|s| s.t != at.slot_t) {
            edge.slots.push_back(Slot {
                t: at.slot_t,
                requests: 0,
                errors: 0,
                counts: Vec::new(),
                p99_ms: None,
            });
            while edge.slots.len() > self.limits.history_points {
                edge.slots.pop_front();
            }
        }
        let Some(slot) = edge.slots.back_mut() else {
            return;
        };
        slot.requests = slot.requests.saturating_add(stats.requests);
        let errors = failed_requests(stats);
        slot.errors = slot.errors.saturating_add(errors);
        if let Some(latency) = &stats.latency {
            if slot.counts.len() != latency.counts.len() {
                slot.counts = vec![0; latency.counts.len()];
            }
            for (sum, n) in slot.counts.iter_mut().zip(&latency.counts) {
                *sum = sum.saturating_add(*n);
            }
            slot.p99_ms = quantile(&edge.bounds, &slot.counts, 0.99);
        }
        // Buckets out of the window are no longer read: free them.
        for slot in &mut edge.slots {
            if ((slot.t + self.limits.resolution_seconds) as f64) < at.window_start {
                slot.counts = Vec::new();
            }
        }
    }

    fn count_denials(&mut self, source: &Source, flush: &Flush) {
        let Some(proxy) = self.proxies.get_mut(&source.proxy_id) else {
            return;
        };
        let mesh_part = format!("/mesh/{}/", source.mesh);
        for denial in &flush.denials {
            let caller = match denial.caller.as_str() {
                "" | "-" => "unauthenticated".to_string(),
                san => match san.split_once(mesh_part.as_str()) {
                    Some((_, resource)) => resource.to_string(),
                    None => san.to_string(),
                },
            };
            let key = (caller, denial.enforced);
            if !proxy.denials.contains_key(&key) && proxy.denials.len() >= MAX_CALLERS {
                self.drops.over_limit += 1;
                continue;
            }
            let n = proxy.denials.entry(key).or_default();
            *n = n.saturating_add(denial.count);
        }
    }

    /// Every proxy's authorization denials per caller, by mesh, node and proxy.
    pub fn denials(&self) -> Vec<DenialCount> {
        let mut out: Vec<DenialCount> = self
            .proxies
            .values()
            .flat_map(|p| {
                p.denials
                    .iter()
                    .map(|((caller, enforced), count)| DenialCount {
                        mesh: p.source.mesh.clone(),
                        node: ProxyRef {
                            kind: p.source.kind,
                            name: p.source.name.clone(),
                        },
                        proxy_id: p.source.proxy_id.clone(),
                        caller: caller.clone(),
                        mode: if *enforced { "ENFORCE" } else { "REPORT" },
                        count: *count,
                    })
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.mesh, &a.node, &a.proxy_id, &a.caller, a.mode).cmp(&(
                &b.mesh,
                &b.node,
                &b.proxy_id,
                &b.caller,
                b.mode,
            ))
        });
        out
    }

    /// Forgets idle edges and silent proxies.
    pub fn sweep(&mut self, now: f64) {
        self.last_sweep = now;
        let idle = self.limits.idle_seconds as f64;
        self.edges.retain(|_, e| now - e.last_active < idle);
        self.proxies.retain(|_, p| now - p.last_report < idle);
    }

    /// Edges and proxies as the dashboard reads them, at `now`.
    pub fn snapshot(&self, now: f64) -> TrafficSnapshot {
        let window = self.limits.window_seconds as f64;
        let resolution = self.limits.resolution_seconds as f64;
        let mut edges: Vec<(&EdgeKey, EdgeSnapshot)> = self
            .edges
            .iter()
            .map(|(key, edge)| {
                let mut requests = 0u64;
                let mut errors = 0u64;
                let mut counts: Vec<u64> = Vec::new();
                for slot in edge
                    .slots
                    .iter()
                    .filter(|s| s.t as f64 + resolution > now - window)
                {
                    requests += slot.requests;
                    errors += slot.errors;
                    if counts.len() < slot.counts.len() {
                        counts.resize(slot.counts.len(), 0);
                    }
                    for (sum, n) in counts.iter_mut().zip(&slot.counts) {
                        *sum += n;
                    }
                }
                let observed = (now - edge.first_seen + edge.first_interval).clamp(1.0, window);
                let q = |q| quantile(&edge.bounds, &counts, q);
                let snapshot = EdgeSnapshot {
                    mesh: key.mesh.clone(),
                    source: key.source.clone(),
                    virtual_service: key.virtual_service.clone(),
                    route: key.route.clone(),
                    target: key.target.as_ref().map(|name| ProxyRef {
                        kind: ProxyKind::VirtualNode,
                        name: name.clone(),
                    }),
                    rps: requests as f64 / observed,
                    error_rate: ratio(errors, requests),
                    p50_ms: q(0.5),
                    p90_ms: q(0.9),
                    p99_ms: q(0.99),
                    history: edge
                        .slots
                        .iter()
                        .map(|s| HistoryPoint {
                            t: s.t,
                            rps: s.requests as f64 / resolution,
                            error_rate: ratio(s.errors, s.requests),
                            p99_ms: s.p99_ms,
                        })
                        .collect(),
                };
                (key, snapshot)
            })
            .collect();
        edges.sort_by(|a, b| a.0.cmp(b.0));
        let mut proxies: Vec<ProxySnapshot> = self
            .proxies
            .values()
            .map(|p| ProxySnapshot {
                mesh: p.source.mesh.clone(),
                kind: p.source.kind,
                name: p.source.name.clone(),
                proxy_id: p.source.proxy_id.clone(),
                last_report_unix: p.last_report.max(0.0) as u64,
            })
            .collect();
        proxies
            .sort_by(|a, b| (&a.mesh, &a.name, &a.proxy_id).cmp(&(&b.mesh, &b.name, &b.proxy_id)));
        TrafficSnapshot {
            window_seconds: self.limits.window_seconds,
            edges: edges.into_iter().map(|(_, e)| e).collect(),
            proxies,
        }
    }

    /// Edges held now.
    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// An estimate of the heap the history holds, in bytes: keys, slots and buckets.
    pub fn approx_bytes(&self) -> usize {
        let slot = std::mem::size_of::<Slot>();
        let edges: usize = self
            .edges
            .iter()
            .map(|(k, e)| {
                std::mem::size_of::<(EdgeKey, Edge)>()
                    + k.mesh.capacity()
                    + k.source.name.capacity()
                    + k.target.as_ref().map_or(0, String::capacity)
                    + k.virtual_service.as_ref().map_or(0, String::capacity)
                    + k.route
                        .as_ref()
                        .map_or(0, |r| r.router.capacity() + r.route.capacity())
                    + e.bounds.capacity() * 8
                    + e.slots.capacity() * slot
                    + e.slots
                        .iter()
                        .map(|s| s.counts.capacity() * 8)
                        .sum::<usize>()
            })
            .sum();
        let proxies: usize = self
            .proxies
            .iter()
            .map(|(id, p)| {
                std::mem::size_of::<(String, Proxy)>()
                    + id.capacity()
                    + p.source.mesh.capacity()
                    + p.source.name.capacity()
                    + p.source.proxy_id.capacity()
            })
            .sum();
        edges + proxies
    }
}

/// The requests of a flush that failed: the 5xx answers, or as many requests as the failed
/// share of the gRPC calls when that is more. `upstream_rq_total` counts every attempt, the
/// gRPC filter each call once however often the router retried it (App Mesh's default retry
/// policy retries `UNAVAILABLE`), so the calls' failed share is carried over to the requests;
/// and a call that failed with an HTTP 5xx is counted by both, so the larger counts it once.
fn failed_requests(stats: &crate::parse::ClusterFlush) -> u64 {
    let grpc = if stats.grpc_calls > 0 {
        let share = (stats.grpc_failures.min(stats.grpc_calls)) as f64 / stats.grpc_calls as f64;
        (share * stats.requests as f64).round() as u64
    } else {
        0
    };
    stats.errors.max(grpc).min(stats.requests)
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 / whole as f64).min(1.0)
    }
}

/// The target virtual node of egress cluster `cluster` of `mesh`:
/// `cds_egress_<mesh>_<node>_<protocol>_<port>` (crates/translate's `names::egress_cluster`).
/// `None` for the passthrough and forward-proxy clusters and for names of another form.
pub fn target_of<'a>(mesh: &str, cluster: &'a str) -> Option<&'a str> {
    let rest = cluster
        .strip_prefix("cds_egress_")?
        .strip_prefix(mesh)?
        .strip_prefix('_')?;
    let (rest, port) = rest.rsplit_once('_')?;
    port.parse::<u16>().ok()?;
    let (node, protocol) = rest.rsplit_once('_')?;
    matches!(protocol, "http" | "http2" | "grpc" | "tcp").then_some(node)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::parse::{Buckets, ClusterFlush};

    fn front(id: &str) -> Source {
        Source {
            mesh: "apps".into(),
            kind: ProxyKind::VirtualNode,
            name: "front".into(),
            proxy_id: id.into(),
        }
    }

    fn flush(cluster: &str, requests: u64, errors: u64) -> Flush {
        let mut f = Flush::default();
        f.clusters.insert(
            cluster.into(),
            ClusterFlush {
                requests,
                errors,
                grpc_failures: 0,
                grpc_calls: 0,
                latency: Some(Buckets {
                    bounds: vec![1.0, 5.0, 10.0],
                    counts: vec![0, requests, 0, 0],
                }),
            },
        );
        f
    }

    #[test]
    fn grpc_failures_in_http_200s_count_as_errors_once_whatever_the_retries() {
        let mut h = History::new(Limits::default());
        let mut f = flush("cds_egress_apps_grpc-back_grpc_50051", 100, 10);
        // 50 calls, 15 of them failed, in 100 attempts (retries).
        if let Some(c) = f.clusters.values_mut().next() {
            c.grpc_failures = 15;
            c.grpc_calls = 50;
        }
        h.ingest(&front("f-1"), &f, 1_796_000_000.0, 10.0);
        let snap = h.snapshot(1_796_000_000.0);
        assert!((snap.edges[0].error_rate - 0.3).abs() < 1e-9);
    }

    #[test]
    fn cluster_names_map_back_to_their_target_node() {
        assert_eq!(
            target_of("apps", "cds_egress_apps_back-v1_http_9080"),
            Some("back-v1")
        );
        assert_eq!(
            target_of("apps", "cds_egress_apps_my_node_grpc_80"),
            Some("my_node")
        );
        assert_eq!(target_of("apps", "cds_egress_apps_passthrough"), None);
        assert_eq!(target_of("apps", "cds_egress_other_back_http_80"), None);
        assert_eq!(target_of("apps", "cds_egress_apps_back_smtp_25"), None);
    }

    #[test]
    fn a_weighted_split_shows_as_two_edges_with_their_rates_and_errors() {
        let mut h = History::new(Limits::default());
        let t0 = 1_796_000_000.0;
        for i in 0..6 {
            let now = t0 + 10.0 * f64::from(i);
            let mut f = flush("cds_egress_apps_back-v1_http_9080", 75, 0);
            f.clusters
                .extend(flush("cds_egress_apps_back-v2_http_9080", 25, 5).clusters);
            h.ingest(&front("f-1"), &f, now, 10.0);
        }
        let snap = h.snapshot(t0 + 50.0);
        assert_eq!(snap.edges.len(), 2);
        let (v1, v2) = (&snap.edges[0], &snap.edges[1]);
        let name = |e: &EdgeSnapshot| e.target.as_ref().map(|t| t.name.clone());
        assert_eq!(
            (name(v1), name(v2)),
            (Some("back-v1".into()), Some("back-v2".into()))
        );
        assert!((v1.rps - 7.5).abs() < 0.01, "{}", v1.rps);
        assert!((v2.rps - 2.5).abs() < 0.01, "{}", v2.rps);
        assert_eq!(v1.error_rate, 0.0);
        assert!((v2.error_rate - 0.2).abs() < 1e-9);
        assert_eq!(v1.p50_ms, Some(3.0));
        assert_eq!(v1.history.len(), 6);
        assert_eq!(snap.proxies.len(), 1);
    }

    #[test]
    fn a_routes_stats_give_it_its_own_edge_beside_the_target_edges() {
        let mut h = History::new(Limits::default());
        let t0 = 1_796_000_000.0;
        let mut f = flush("cds_egress_apps_back-v1_http_9080", 75, 0);
        f.clusters
            .extend(flush("cds_egress_apps_back-v2_http_9080", 25, 5).clusters);
        let by_route = flush("route", 100, 5).clusters.remove("route").unwrap();
        f.routes.insert(
            crate::parse::RouteStat {
                virtual_service: "colors.apps.local".into(),
                router: Some("colors".into()),
                route: "split".into(),
            },
            by_route,
        );
        h.ingest(&front("f-1"), &f, t0, 10.0);
        let snap = h.snapshot(t0);
        assert_eq!(snap.edges.len(), 3);
        // Route edges (no target) sort first.
        let route = &snap.edges[0];
        assert_eq!(route.target, None);
        assert_eq!(route.virtual_service.as_deref(), Some("colors.apps.local"));
        assert_eq!(
            route.route,
            Some(RouteRef {
                router: "colors".into(),
                route: "split".into()
            })
        );
        assert!((route.rps - 10.0).abs() < 0.01, "{}", route.rps);
        assert!((route.error_rate - 0.05).abs() < 1e-9);
        assert_eq!(route.p50_ms, Some(3.0));
        assert!(snap.edges[1..].iter().all(|e| e.route.is_none()));
        // A gateway route is held by the gateway that reports it.
        let gateway = Source {
            kind: ProxyKind::VirtualGateway,
            name: "ingress".into(),
            ..front("g-1")
        };
        let mut g = Flush::default();
        g.routes.insert(
            crate::parse::RouteStat {
                virtual_service: "colors.apps.local".into(),
                router: None,
                route: "to-colors".into(),
            },
            flush("route", 10, 0).clusters.remove("route").unwrap(),
        );
        h.ingest(&gateway, &g, t0, 10.0);
        let snap = h.snapshot(t0);
        let held = snap
            .edges
            .iter()
            .find(|e| e.source.name == "ingress")
            .and_then(|e| e.route.clone());
        assert_eq!(
            held,
            Some(RouteRef {
                router: "ingress".into(),
                route: "to-colors".into()
            })
        );
    }

    #[test]
    fn denials_add_up_per_caller_named_by_its_mesh_resource() {
        let mut h = History::new(Limits::default());
        let red = Source {
            name: "red".into(),
            ..front("r-1")
        };
        let f = Flush {
            denials: vec![
                crate::parse::Denial {
                    caller: "spiffe://weft.local/mesh/apps/virtualNode/rogue".into(),
                    enforced: true,
                    count: 2,
                },
                crate::parse::Denial {
                    caller: "-".into(),
                    enforced: true,
                    count: 1,
                },
            ],
            ..Flush::default()
        };
        h.ingest(&red, &f, 1_796_000_000.0, 10.0);
        h.ingest(&red, &f, 1_796_000_010.0, 10.0);
        let d = h.denials();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].caller.as_str(), d[0].count, d[0].mode),
            ("unauthenticated", 2, "ENFORCE")
        );
        assert_eq!((d[1].caller.as_str(), d[1].count), ("virtualNode/rogue", 4));
        assert_eq!(d[1].node.name, "red");
    }

    #[test]
    fn history_is_bounded_and_idle_edges_are_forgotten() {
        let limits = Limits {
            history_points: 5,
            max_edges: 1,
            idle_seconds: 100,
            ..Limits::default()
        };
        let mut h = History::new(limits);
        let t0 = 1_796_000_000.0;
        for i in 0..20 {
            let mut f = flush("cds_egress_apps_a_http_80", 10, 0);
            f.clusters
                .extend(flush("cds_egress_apps_b_http_80", 10, 0).clusters);
            h.ingest(&front("f-1"), &f, t0 + 10.0 * f64::from(i), 10.0);
        }
        let snap = h.snapshot(t0 + 190.0);
        assert_eq!(snap.edges.len(), 1);
        assert_eq!(snap.edges[0].history.len(), 5);
        assert_eq!(h.drops().over_limit, 20);
        h.sweep(t0 + 400.0);
        assert_eq!(h.edge_count(), 0);
        assert!(h.snapshot(t0 + 400.0).proxies.is_empty());
    }
}
