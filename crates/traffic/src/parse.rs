//! Pure reading of one flush of an Envoy's stats (`io.prometheus.client.MetricFamily` as the
//! `metrics_service` sink sends them) into what the history needs: per target cluster, the
//! requests, the failures and the latency histogram of the flush interval; per App Mesh route,
//! the same from the route's own stats.
//!
//! Translation gives each Envoy route made from an App Mesh route a `stat_prefix`
//! (`weft.r.<service>.<router>.<route>`, or `weft.g.<service>.<gateway route>` for a gateway
//! route, each name one stat token: ASCII letters, digits and `-` as they are, any other byte as
//! `_` and two hex digits), and Envoy's router counts the route's requests under
//! `vhost.<virtual host>.route.<stat_prefix>.` with the virtual-cluster statistics
//! (`upstream_rq_total`, `upstream_rq_<*xx>`, `upstream_rq_time`, ...;
//! <https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto>,
//! `Route.stat_prefix`, and
//! <https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#virtual-cluster-statistics>).
//!
//! The sink is configured (see `weft_agent`) with `report_counters_as_deltas` (counters are the
//! interval's increments) and `histogram_emit_mode: HISTOGRAM` (the interval's buckets), as
//! <https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/metrics_service.proto>
//! describes.

use std::collections::BTreeMap;

use envoy_types::pb::io::prometheus::client::{Metric, MetricFamily, MetricType};

/// The largest count one flush may carry for one series: beyond it the value is absurd (a
/// billion requests a second for ten seconds would be 10^10) and dropped.
pub const MAX_COUNT: f64 = 1e10;

/// A latency histogram of one interval: upper bounds in milliseconds and the count of each
/// bucket (not cumulative), the last entry counting what exceeded every bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    /// Upper bounds, ascending, milliseconds.
    pub bounds: Vec<f64>,
    /// `bounds.len() + 1` counts.
    pub counts: Vec<u64>,
}

impl Buckets {
    /// How many samples the histogram holds.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// One target cluster's figures in one flush.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterFlush {
    /// `upstream_rq_total`: requests sent.
    pub requests: u64,
    /// `upstream_rq_5xx` (which includes the 503 Envoy answers for a connection failure or a
    /// reset before the response).
    pub errors: u64,
    /// `grpc.failure`: gRPC responses with a status other than OK, counted by the gRPC stats
    /// filter translation adds to proxies that stream their stats (they come in HTTP 200s).
    pub grpc_failures: u64,
    /// `grpc.total`: gRPC calls, once each however often the router retried them.
    pub grpc_calls: u64,
    /// `upstream_rq_time`.
    pub latency: Option<Buckets>,
}

/// Requests the proxy's RBAC filter refused (or, report-only, would have) from one caller in
/// one flush, as counted by the stats access logger translation adds
/// (`weft_authz.denied.details.<details>.caller.<URI SAN>`,
/// `weft_authz.shadow_denied.caller.<URI SAN>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The caller's certificate URI SAN (`-` when it presented none).
    pub caller: String,
    /// Refused (ENFORCE) rather than counted only (REPORT).
    pub enforced: bool,
    /// How many.
    pub count: u64,
}

/// The App Mesh route a route stat counts, as its `stat_prefix` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteStat {
    /// The virtual service the route serves (a gateway route's target service).
    pub virtual_service: String,
    /// The virtual router holding the route; `None` for a gateway route (the reporting gateway
    /// holds it).
    pub router: Option<String>,
    /// The route's or gateway route's name.
    pub route: String,
}

/// What one flush told.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flush {
    /// By cluster name.
    pub clusters: BTreeMap<String, ClusterFlush>,
    /// By App Mesh route: the route's requests, 5xx and latency (its gRPC fields stay 0: the
    /// gRPC stats filter counts per cluster only).
    pub routes: BTreeMap<RouteStat, ClusterFlush>,
    /// Authorization denials by caller.
    pub denials: Vec<Denial>,
    /// Series dropped: a known name with the wrong type, a negative, non-finite or absurd
    /// value, a malformed histogram.
    pub dropped: u64,
    /// Series of names the history has no use for (most of Envoy's stats).
    pub ignored: u64,
}

/// The stats of one flush, read.
pub fn read(families: &[MetricFamily]) -> Flush {
    let mut flush = Flush::default();
    for family in families {
        let name = family.name.as_deref().unwrap_or_default();
        if let Some((caller, enforced)) = denial_stat(name) {
            let kind = family.r#type.and_then(|t| MetricType::try_from(t).ok());
            match counter(kind, &family.metric) {
                Some(0) => {}
                Some(count) => flush.denials.push(Denial {
                    caller: caller.to_string(),
                    enforced,
                    count,
                }),
                None => flush.dropped += 1,
            }
            continue;
        }
        let kind = family.r#type.and_then(|t| MetricType::try_from(t).ok());
        if let Some((route, stat)) = route_stat(name) {
            match reading(stat, false, kind, &family.metric) {
                Reading::Ignored => flush.ignored += 1,
                Reading::Bad => flush.dropped += 1,
                reading => reading.add_to(flush.routes.entry(route).or_default()),
            }
            continue;
        }
        let Some((cluster, stat)) = cluster_stat(name) else {
            flush.ignored += 1;
            continue;
        };
        match reading(stat, true, kind, &family.metric) {
            Reading::Ignored => flush.ignored += 1,
            Reading::Bad => flush.dropped += 1,
            reading => reading.add_to(flush.clusters.entry(cluster.to_string()).or_default()),
        }
    }
    flush
}

/// What one series of a cluster or route stat holds.
enum Reading {
    Requests(u64),
    Errors(u64),
    GrpcCalls(u64),
    GrpcFailures(u64),
    Latency(Buckets),
    /// A stat the history does not use.
    Ignored,
    /// A stat it uses, with the wrong type or an insane value.
    Bad,
}

impl Reading {
    fn add_to(self, entry: &mut ClusterFlush) {
        match self {
            Reading::Requests(n) => entry.requests = entry.requests.saturating_add(n),
            Reading::Errors(n) => entry.errors = entry.errors.saturating_add(n),
            Reading::GrpcCalls(n) => entry.grpc_calls = entry.grpc_calls.saturating_add(n),
            Reading::GrpcFailures(n) => entry.grpc_failures = entry.grpc_failures.saturating_add(n),
            Reading::Latency(buckets) => entry.latency = Some(buckets),
            Reading::Ignored | Reading::Bad => {}
        }
    }
}

/// Reads series `stat` of a cluster (`grpc`: the gRPC stats filter's `grpc.*` too) or route.
fn reading(stat: &str, grpc: bool, kind: Option<MetricType>, metrics: &[Metric]) -> Reading {
    let counted = |make: fn(u64) -> Reading| counter(kind, metrics).map_or(Reading::Bad, make);
    match stat {
        "upstream_rq_total" => counted(Reading::Requests),
        "upstream_rq_5xx" => counted(Reading::Errors),
        "grpc.total" if grpc => counted(Reading::GrpcCalls),
        "grpc.failure" if grpc => counted(Reading::GrpcFailures),
        "upstream_rq_time" => histogram(kind, metrics).map_or(Reading::Bad, Reading::Latency),
        _ => Reading::Ignored,
    }
}

/// `vhost.<virtual host>.route.weft.r.<service>.<router>.<route>.<stat>` or
/// `vhost.<virtual host>.route.weft.g.<service>.<gateway route>.<stat>`: the route and the stat.
/// Read from the end, since a virtual host's name (a service's) may hold dots.
fn route_stat(name: &str) -> Option<(RouteStat, &str)> {
    let rest = name.strip_prefix("vhost.")?;
    let (rest, stat) = rest.rsplit_once('.')?;
    let (rest, route) = rest.rsplit_once('.')?;
    let (rest, last) = rest.rsplit_once('.')?;
    if rest.ends_with(".route.weft.g") {
        let route = RouteStat {
            virtual_service: unescape(last)?,
            router: None,
            route: unescape(route)?,
        };
        return Some((route, stat));
    }
    let (rest, service) = rest.rsplit_once('.')?;
    if !rest.ends_with(".route.weft.r") {
        return None;
    }
    let route = RouteStat {
        virtual_service: unescape(service)?,
        router: Some(unescape(last)?),
        route: unescape(route)?,
    };
    Some((route, stat))
}

/// A name from its stat token: `_` and two hex digits stand for one byte.
fn unescape(token: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'_' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    (!bytes.is_empty()).then_some(())?;
    String::from_utf8(bytes).ok()
}

/// The caller of a denial counter, and whether it counts refusals; `None` for other names and
/// for the 403s the application answered itself.
fn denial_stat(name: &str) -> Option<(&str, bool)> {
    let rest = name.strip_prefix("weft_authz.")?;
    if let Some(caller) = rest.strip_prefix("shadow_denied.caller.") {
        return Some((caller, false));
    }
    let rest = rest.strip_prefix("denied.details.")?;
    let (details, caller) = rest.split_once(".caller.")?;
    // The RBAC filter's own response code details (rbac_filter.cc's `RbacAccessDenied`).
    details
        .starts_with("rbac_access_denied")
        .then_some((caller, true))
}

/// `cluster.<name>.<stat>` with `<name>` one of Weft's egress clusters.
fn cluster_stat(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("cluster.")?;
    let (cluster, stat) = rest.split_once('.')?;
    cluster
        .starts_with("cds_egress_")
        .then_some((cluster, stat))
}

/// A counter's value (the sum of its series), if sane.
fn counter(kind: Option<MetricType>, metrics: &[Metric]) -> Option<u64> {
    if kind != Some(MetricType::Counter) {
        return None;
    }
    let mut total = 0u64;
    for metric in metrics {
        let value = metric.counter.as_ref()?.value?;
        total = total.saturating_add(count(value)?);
    }
    Some(total)
}

fn count(value: f64) -> Option<u64> {
    (value.is_finite() && (0.0..=MAX_COUNT).contains(&value) && value.fract() == 0.0)
        .then_some(value as u64)
}

/// The interval histogram of the first series: cumulative buckets made per-bucket counts.
fn histogram(kind: Option<MetricType>, metrics: &[Metric]) -> Option<Buckets> {
    if kind != Some(MetricType::Histogram) {
        return None;
    }
    let h = metrics.first()?.histogram.as_ref()?;
    let total = count(h.sample_count.map(|c| c as f64).or(h.sample_count_float)?)?;
    let mut bounds = Vec::with_capacity(h.bucket.len());
    let mut counts = Vec::with_capacity(h.bucket.len() + 1);
    let mut below = 0u64;
    for bucket in &h.bucket {
        let bound = bucket.upper_bound?;
        let cumulative = count(
            bucket
                .cumulative_count
                .map(|c| c as f64)
                .or(bucket.cumulative_count_float)?,
        )?;
        if bound.is_infinite() && bound > 0.0 {
            break;
        }
        // Bounds ascend and counts accumulate, or the histogram is malformed.
        if !bound.is_finite() || bounds.last().is_some_and(|b| *b >= bound) || cumulative < below {
            return None;
        }
        bounds.push(bound);
        counts.push(cumulative - below);
        below = cumulative;
    }
    if total < below || bounds.len() > 256 {
        return None;
    }
    counts.push(total - below);
    Some(Buckets { bounds, counts })
}

/// The `q` quantile (0..1) of `buckets`, interpolated linearly inside the bucket it falls in as
/// Prometheus's `histogram_quantile` does; `None` without samples. A quantile in the overflow
/// bucket is the highest bound.
pub fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, n) in counts.iter().enumerate() {
        let upto = below + n;
        if (upto as f64) >= rank && *n > 0 {
            let Some(upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let within = (rank - below as f64) / *n as f64;
            return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
        }
        below = upto;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use envoy_types::pb::io::prometheus::client::{Bucket, Counter, Histogram};

    fn counter_family(name: &str, value: f64) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                counter: Some(Counter {
                    value: Some(value),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn histogram_family(name: &str, buckets: &[(f64, u64)], total: u64) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Histogram as i32),
            metric: vec![Metric {
                histogram: Some(Histogram {
                    sample_count: Some(total),
                    bucket: buckets
                        .iter()
                        .map(|(b, c)| Bucket {
                            upper_bound: Some(*b),
                            cumulative_count: Some(*c),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_flush_gives_each_egress_cluster_its_requests_errors_and_latency() {
        let c = "cluster.cds_egress_apps_back_http_9080";
        let flush = read(&[
            counter_family(&format!("{c}.upstream_rq_total"), 40.0),
            counter_family(&format!("{c}.upstream_rq_5xx"), 4.0),
            counter_family(&format!("{c}.grpc.failure"), 6.0),
            histogram_family(
                &format!("{c}.upstream_rq_time"),
                &[(1.0, 10), (5.0, 30), (10.0, 40)],
                40,
            ),
            counter_family(
                "cluster.cds_ingress_apps_front_http_8080.upstream_rq_total",
                9.0,
            ),
            counter_family("server.uptime", 3.0),
        ]);
        let back = &flush.clusters["cds_egress_apps_back_http_9080"];
        assert_eq!((back.requests, back.errors, back.grpc_failures), (40, 4, 6));
        let latency = back.latency.as_ref().unwrap();
        assert_eq!(latency.counts, vec![10, 20, 10, 0]);
        assert_eq!(flush.clusters.len(), 1);
        assert_eq!((flush.dropped, flush.ignored), (0, 2));
    }

    #[test]
    fn absurd_values_and_wrong_types_are_dropped_not_taken() {
        let c = "cluster.cds_egress_apps_back_http_9080";
        let mut gauge = counter_family(&format!("{c}.upstream_rq_total"), 1.0);
        gauge.r#type = Some(MetricType::Gauge as i32);
        let flush = read(&[
            counter_family(&format!("{c}.upstream_rq_total"), f64::NAN),
            counter_family(&format!("{c}.upstream_rq_5xx"), -3.0),
            counter_family(&format!("{c}.upstream_rq_5xx"), 1e300),
            gauge,
            histogram_family(&format!("{c}.upstream_rq_time"), &[(5.0, 10), (1.0, 30)], 5),
        ]);
        assert_eq!(flush.dropped, 5);
        assert!(flush.clusters.is_empty());
    }

    #[test]
    fn denials_are_read_per_caller_and_the_apps_own_403s_are_not() {
        let flush = read(&[
            counter_family(
                "weft_authz.denied.details.rbac_access_denied_matched_policy[none].caller.spiffe://weft.local/mesh/apps/virtualNode/rogue",
                3.0,
            ),
            counter_family(
                "weft_authz.denied.details.via_upstream.caller.spiffe://weft.local/mesh/apps/virtualNode/front",
                9.0,
            ),
            counter_family("weft_authz.shadow_denied.caller.-", 2.0),
        ]);
        assert_eq!(
            flush.denials,
            vec![
                Denial {
                    caller: "spiffe://weft.local/mesh/apps/virtualNode/rogue".into(),
                    enforced: true,
                    count: 3
                },
                Denial {
                    caller: "-".into(),
                    enforced: false,
                    count: 2
                },
            ]
        );
    }

    #[test]
    fn a_routes_stats_are_read_back_from_its_stat_prefix() {
        let flush = read(&[
            counter_family(
                "vhost.colors.apps.local.route.weft.r.colors_2eapps_2elocal.colors.split_5f75_3a25.upstream_rq_total",
                40.0,
            ),
            counter_family(
                "vhost.colors.apps.local.route.weft.r.colors_2eapps_2elocal.colors.split_5f75_3a25.upstream_rq_5xx",
                4.0,
            ),
            counter_family(
                "vhost.colors.apps.local.route.weft.r.colors_2eapps_2elocal.colors.split_5f75_3a25.upstream_rq_retry",
                1.0,
            ),
            counter_family("vhost.gateway_targets.route.weft.g.front.to-front.upstream_rq_total", 3.0),
            counter_family("vhost.colors.route.weft.r.bad_zz.colors.split.upstream_rq_total", 3.0),
            counter_family("vhost.colors.route.other.upstream_rq_total", 3.0),
        ]);
        let split = RouteStat {
            virtual_service: "colors.apps.local".into(),
            router: Some("colors".into()),
            route: "split_75:25".into(),
        };
        assert_eq!(flush.routes[&split].requests, 40);
        assert_eq!(flush.routes[&split].errors, 4);
        let gateway = RouteStat {
            virtual_service: "front".into(),
            router: None,
            route: "to-front".into(),
        };
        assert_eq!(flush.routes[&gateway].requests, 3);
        assert_eq!(flush.routes.len(), 2);
        assert!(flush.clusters.is_empty());
        assert_eq!(flush.ignored, 3);
        assert_eq!(unescape("_c3_a9"), Some("é".to_string()));
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let bounds = [1.0, 5.0, 10.0];
        let counts = [10, 20, 10, 0];
        assert_eq!(quantile(&bounds, &counts, 0.5), Some(3.0));
        assert_eq!(quantile(&bounds, &counts, 0.25), Some(1.0));
        assert_eq!(quantile(&bounds, &counts, 1.0), Some(10.0));
        assert_eq!(quantile(&bounds, &[0, 0, 0, 5], 0.99), Some(10.0));
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
    }
}
