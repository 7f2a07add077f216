//! `weft-bench ingest`: what the mesh's traffic costs `weft server` (issue 21's goal: at most 5%
//! of one core and 50 MB of history for 1,000 proxies flushing every 10 s).
//!
//! - CPU: 1,000 simulated proxies each hold a `StreamMetrics` stream to a real `weft server`'s
//!   xDS port, as Envoy's `metrics_service` sink does, and send one flush per round: their
//!   egress clusters' request counters and latency histogram among several hundred other
//!   stats, as an Envoy sidecar flushes them. Rounds go back to back (time compressed): the
//!   server's CPU (from `/proc`) for one round is its CPU for one 10 s flush interval of the
//!   fleet.
//! - Memory: the history itself, fed in process through [`weft_traffic::TrafficStore`] with the
//!   same fleet over simulated time until every edge holds its full history (60 points), its
//!   own estimate and the process's resident memory before and after.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use envoy_types::pb::io::prometheus::client::{
    Bucket, Counter, Gauge, Histogram, Metric, MetricFamily, MetricType,
};
use tokio::sync::mpsc;

use crate::machine;
use crate::server::{self, Server};

const MESH: &str = "bench";
/// The flush interval a round stands for.
const FLUSH: Duration = Duration::from_secs(10);
/// Goals: share of one core, and bytes of history.
const CPU_GOAL_PERCENT: f64 = 5.0;
const MEMORY_GOAL_BYTES: f64 = 50e6;
/// Envoy's default histogram bucket bounds, in ms (`stats_config.histogram_bucket_settings`
/// unset).
const ENVOY_BUCKETS: [f64; 20] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0, 7200000.0,
];

/// Flags of `weft-bench ingest`.
#[derive(clap::Args)]
pub struct IngestArgs {
    /// Simulated proxies.
    #[arg(long, default_value_t = 1000)]
    pub proxies: usize,
    /// Target nodes each proxy sends requests to (its edges).
    #[arg(long, default_value_t = 3)]
    pub targets: usize,
    /// Stats per cluster in each flush besides the three the history reads.
    #[arg(long, default_value_t = 60)]
    pub stats_per_cluster: usize,
    /// Other stats in each flush (listeners, connection managers, server).
    #[arg(long, default_value_t = 400)]
    pub other_stats: usize,
    /// Measured rounds (one flush of every proxy each), after a first unmeasured one.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// HTTP/2 connections the proxies' streams share.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    pub weft_bin: Option<PathBuf>,
}

fn counter(name: String, value: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name),
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

fn gauge(name: String, value: f64) -> MetricFamily {
    MetricFamily {
        name: Some(name),
        r#type: Some(MetricType::Gauge as i32),
        metric: vec![Metric {
            gauge: Some(Gauge { value: Some(value) }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An interval histogram of `n` samples spread over Envoy's low buckets.
fn histogram(name: String, n: u64) -> MetricFamily {
    let mut cumulative = 0;
    let bucket = ENVOY_BUCKETS
        .iter()
        .enumerate()
        .map(|(i, bound)| {
            cumulative += match i {
                0 => n / 10,
                1 => n / 2,
                2 => n / 4,
                3 => n - n / 10 - n / 2 - n / 4,
                _ => 0,
            };
            Bucket {
                cumulative_count: Some(cumulative),
                upper_bound: Some(*bound),
                ..Default::default()
            }
        })
        .collect();
    MetricFamily {
        name: Some(name),
        r#type: Some(MetricType::Histogram as i32),
        metric: vec![Metric {
            histogram: Some(Histogram {
                sample_count: Some(n),
                sample_sum: Some(n as f64 * 2.0),
                bucket,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Proxy `i`'s node name and its target nodes' names.
fn targets(i: usize, args: &IngestArgs) -> Vec<String> {
    (1..=args.targets)
        .map(|k| format!("n{}", (i + k) % args.proxies))
        .collect()
}

/// One flush of proxy `i`, as Envoy's sink sends it (counters as deltas).
fn flush(i: usize, args: &IngestArgs, first: bool) -> StreamMetricsMessage {
    let mut families = Vec::new();
    let mut clusters: Vec<String> = targets(i, args)
        .iter()
        .map(|t| format!("cds_egress_{MESH}_{t}_http_8080"))
        .collect();
    // Clusters whose stats the history skips: the app, the xDS server.
    clusters.push(format!("cds_ingress_{MESH}_n{i}_http_8080"));
    clusters.push("xds_cluster".to_string());
    for (k, cluster) in clusters.iter().enumerate() {
        let requests = 100 + 50 * k as u64;
        families.push(counter(
            format!("cluster.{cluster}.upstream_rq_total"),
            requests as f64,
        ));
        families.push(counter(format!("cluster.{cluster}.upstream_rq_5xx"), 1.0));
        families.push(histogram(
            format!("cluster.{cluster}.upstream_rq_time"),
            requests,
        ));
        for s in 0..args.stats_per_cluster {
            families.push(if s % 4 == 0 {
                gauge(format!("cluster.{cluster}.upstream_gauge_{s}"), 1.0)
            } else {
                counter(format!("cluster.{cluster}.upstream_stat_{s}"), 3.0)
            });
        }
    }
    for s in 0..args.other_stats {
        families.push(match s % 20 {
            0 => histogram(format!("http.ingress.downstream_rq_time_{s}"), 50),
            1..=4 => gauge(
                format!("listener.lds_ingress_{s}.downstream_cx_active"),
                2.0,
            ),
            _ => counter(format!("http.ingress.downstream_stat_{s}"), 7.0),
        });
    }
    StreamMetricsMessage {
        identifier: first.then(|| Identifier {
            node: Some(Node {
                id: format!("mesh/{MESH}/virtualNode/n{i}"),
                ..Default::default()
            }),
        }),
        envoy_metrics: families,
    }
}

/// Waits until `pid` has used no CPU for a while: the server has taken everything sent.
async fn quiet(pid: u32) -> Result<Duration> {
    let mut last = machine::cpu_time(pid).context("reading the server's CPU time")?;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = machine::cpu_time(pid).context("reading the server's CPU time")?;
        if now.saturating_sub(last) <= Duration::from_millis(10) {
            return Ok(now);
        }
        last = now;
    }
}

/// Runs `weft-bench ingest`.
pub async fn run(args: IngestArgs) -> Result<()> {
    let bin = server::weft_binary(&args.weft_bin)?;
    let dir = tempfile::Builder::new()
        .prefix("weft-bench-ingest-")
        .tempdir()?;
    let mut server = Server::start(&bin, dir.path(), &[])?;
    let pid = server.pid();
    println!(
        "weft-bench ingest: {} proxies x {} targets, {} stats per flush, {} measured rounds \
         (each one {}s flush interval of the fleet), over {} HTTP/2 connections; {}",
        args.proxies,
        args.targets,
        flush(0, &args, false).envoy_metrics.len(),
        args.rounds,
        FLUSH.as_secs(),
        args.connections,
        machine::describe()
    );

    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", server.xds_addr))?
                .connect()
                .await
                .context("connecting to the xDS port")?;
        channels.push(channel);
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.metrics.v3.MetricsService/StreamMetrics",
    );
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for i in 0..args.proxies {
        let (tx, rx) = mpsc::channel::<StreamMetricsMessage>(1);
        let mut grpc = tonic::client::Grpc::new(channels[i % channels.len()].clone());
        let path = path.clone();
        calls.push(tokio::spawn(async move {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let codec =
                tonic_prost::ProstCodec::<StreamMetricsMessage, StreamMetricsResponse>::default();
            grpc.client_streaming(
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                path,
                codec,
            )
            .await
            .map(|_| ())
        }));
        senders.push(tx);
    }
    let mut per_round = Vec::new();
    let mut bytes = 0usize;
    for round in 0..=args.rounds {
        let messages: Vec<StreamMetricsMessage> = (0..args.proxies)
            .map(|i| flush(i, &args, round == 0))
            .collect();
        bytes = messages.iter().map(prost::Message::encoded_len).sum();
        let before = quiet(pid).await?;
        let started = Instant::now();
        for (tx, message) in senders.iter().zip(messages) {
            tx.send(message)
                .await
                .context("a simulated proxy's stream ended")?;
        }
        let after = quiet(pid).await?;
        server.check_alive()?;
        let cpu = after.saturating_sub(before);
        println!(
            "  round {round}{}: {:.1} MB sent in {:?}, server CPU {:?}",
            if round == 0 {
                " (first: streams named, edges made; not counted)"
            } else {
                ""
            },
            bytes as f64 / 1e6,
            started.elapsed(),
            cpu
        );
        if round > 0 {
            per_round.push(cpu);
        }
    }
    drop(senders);
    for call in calls {
        let _ = call.await;
    }
    let traffic = reqwest_edges(&server).await;
    per_round.sort();
    let median = per_round
        .get(per_round.len() / 2)
        .copied()
        .unwrap_or_default();
    let cpu_percent = 100.0 * median.as_secs_f64() / FLUSH.as_secs_f64();
    println!(
        "server CPU per {}s flush of {} proxies ({:.1} MB): median {:?} of the rounds = {:.2}% of \
         one core (goal <= {CPU_GOAL_PERCENT}%: {}); server's edges: {traffic}",
        FLUSH.as_secs(),
        args.proxies,
        bytes as f64 / 1e6,
        median,
        cpu_percent,
        if cpu_percent <= CPU_GOAL_PERCENT {
            "met"
        } else {
            "missed"
        },
    );
    if let Some(rss) = machine::rss_kib(pid) {
        println!(
            "server resident memory after the rounds: {:.1} MB",
            rss as f64 / 1024.0
        );
    }
    drop(server);

    memory(&args);
    Ok(())
}

/// The server's `weft_traffic_edges` and `weft_traffic_history_bytes`, from `/metrics`.
async fn reqwest_edges(server: &Server) -> String {
    let api = crate::load::Api::new(&server.url, 1);
    let text = match api.call_ok(hyper::Method::GET, "/metrics", None).await {
        Ok(body) => String::from_utf8_lossy(&body).into_owned(),
        Err(e) => return format!("(/metrics unreadable: {e})"),
    };
    text.lines()
        .filter(|l| {
            l.starts_with("weft_traffic_edges ") || l.starts_with("weft_traffic_history_bytes ")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The history's memory with every edge's history full, fed in process over simulated time.
fn memory(args: &IngestArgs) {
    let self_pid = std::process::id();
    let rss_before = machine::rss_kib(self_pid).unwrap_or(0);
    let store = weft_traffic::TrafficStore::new();
    let limits = weft_traffic::Limits::default();
    let rounds = limits.history_points + 10;
    let flushes: Vec<(weft_traffic::Source, weft_traffic::parse::Flush)> = (0..args.proxies)
        .map(|i| {
            let source = weft_traffic::Source {
                mesh: MESH.into(),
                kind: weft_traffic::ProxyKind::VirtualNode,
                name: format!("n{i}"),
                proxy_id: format!("mesh/{MESH}/virtualNode/n{i}"),
            };
            let message = flush(i, args, false);
            (source, weft_traffic::parse::read(&message.envoy_metrics))
        })
        .collect();
    let t0 = machine::epoch_now();
    let started = Instant::now();
    for round in 0..rounds {
        let now = t0 + (round as f64) * FLUSH.as_secs_f64();
        for (source, flush) in &flushes {
            store.ingest_at(source, flush, now, FLUSH.as_secs_f64());
        }
    }
    let took = started.elapsed();
    let (edges, estimate) = store.size();
    let rss_after = machine::rss_kib(self_pid).unwrap_or(0);
    let rss = rss_after.saturating_sub(rss_before) as f64 * 1024.0;
    let snapshot_started = Instant::now();
    let snapshot = store.snapshot_at(t0 + (rounds as f64) * FLUSH.as_secs_f64());
    let snapshot_took = snapshot_started.elapsed();
    let points: usize = snapshot.edges.iter().map(|e| e.history.len()).sum();
    println!(
        "history: {edges} edges, {points} points ({} per edge) after {rounds} simulated flushes; \
         estimate {:.1} MB, resident growth {:.1} MB (goal <= {:.0} MB: {}); {:.1} µs per \
         proxy flush taken (the store alone), snapshot in {:?}",
        points / edges.max(1),
        estimate as f64 / 1e6,
        rss / 1e6,
        MEMORY_GOAL_BYTES / 1e6,
        if rss.max(estimate as f64) <= MEMORY_GOAL_BYTES {
            "met"
        } else {
            "missed"
        },
        took.as_secs_f64() * 1e6 / (rounds * args.proxies) as f64,
        snapshot_took,
    );
}
