//! `weft-bench envoys`: real Envoys (each under a `weft agent`,
//! `--concurrency 1`) connected to a real `weft server`; the time from an
//! UpdateRoute write until the last Envoy ACKed the new route configuration,
//! as the server's `GET /weft/v1/proxy-status` reports it; and the server's own
//! convergence histogram (`weft_proxy_convergence_time_seconds` in `/metrics`,
//! scraped before and after the changes) beside each Envoy's convergence seen
//! from outside, p99 against p99.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;
use serde_json::Value;

use crate::appmesh;
use crate::load::Api;
use crate::machine::{self, ms, quantile, CpuMark};
use crate::procs::{self, Agent};
use crate::promhist;
use crate::server::{self, Server};

const MESH: &str = "envoys";
const SERVICE: &str = "colors.envoys.local";
/// Envoy's RSS with `--concurrency 1` is ~65 MiB, ~15 MiB of it private
/// (envoy-notes.md); budget generously with the agent.
const MIB_PER_ENVOY: u64 = 80;

/// Flags of `weft-bench envoys`.
#[derive(clap::Args)]
pub struct EnvoysArgs {
    /// Envoys to start (each its own virtual node and `weft agent`).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Route changes measured.
    #[arg(long, default_value_t = 30)]
    pub changes: usize,
    /// Pause between changes, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub pause_ms: u64,
    /// Pause between polls of proxy-status while a change converges (the
    /// time is taken from the server's ACK stamps, not from the polls).
    #[arg(long, default_value_t = 20)]
    pub poll_ms: u64,
    /// ADS variant the agents' Envoys speak.
    #[arg(long, default_value = "delta")]
    pub protocol: String,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    pub weft_bin: Option<PathBuf>,
}

/// One proxy's part of `GET /weft/v1/proxy-status`.
struct Acked {
    /// The RouteConfiguration version it ACKed last.
    rds: Option<String>,
    /// No response of any type awaits its ACK or NACK.
    settled: bool,
    /// When the server received its latest ACK of any type (epoch seconds).
    last_ack: f64,
    /// When the server received its latest ACK of a RouteConfiguration (epoch seconds).
    rds_acked_at: Option<f64>,
}

/// RDS ACKed version, "fully ACKed" and the latest ACK's time per connected
/// proxy (by node id).
async fn rds_versions(api: &Api) -> Result<HashMap<String, Acked>> {
    let body = api
        .call_ok(Method::GET, "/weft/v1/proxy-status", None)
        .await?;
    let status: Value = serde_json::from_slice(&body).context("proxy-status is not JSON")?;
    let mut out = HashMap::new();
    for p in status["proxies"].as_array().into_iter().flatten() {
        let node = p["nodeId"].as_str().unwrap_or_default().to_string();
        let types = &p["types"];
        let rds = types["RouteConfiguration"]["ackedVersion"]
            .as_str()
            .map(str::to_string);
        let settled = types
            .as_object()
            .is_some_and(|t| t.values().all(|v| v["pendingNonce"].is_null()));
        let last_ack = types
            .as_object()
            .into_iter()
            .flat_map(|t| t.values())
            .filter_map(|v| v["ackedAt"].as_f64())
            .fold(0.0, f64::max);
        let rds_acked_at = types["RouteConfiguration"]["ackedAt"].as_f64();
        out.insert(
            node,
            Acked {
                rds,
                settled,
                last_ack,
                rds_acked_at,
            },
        );
    }
    Ok(out)
}

/// Runs the benchmark and prints its table.
pub async fn run(args: EnvoysArgs) -> Result<()> {
    let binary = server::weft_binary(&args.weft_bin)?;
    let available = procs::mem_available_mib().unwrap_or(0);
    let fits = (available * 8 / 10 / MIB_PER_ENVOY) as usize;
    let count = args.count.min(fits.max(1));
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let data = tempfile::Builder::new()
        .prefix("weft-bench-envoys-")
        .tempdir()
        .context("creating a temporary data folder")?;
    let mut server = Server::start(&binary, &data.path().join("data"), &appmesh::big_quotas())?;
    let api = Arc::new(Api::new(&server.url, 8));
    appmesh::create_mesh(&api, MESH).await?;
    // Two target nodes (no Envoy needed behind them) and a router splitting between them.
    for t in ["red", "blue"] {
        appmesh::create_node(
            &api,
            MESH,
            appmesh::node_body(t, 8080, "http", "127.0.0.1", &[]),
        )
        .await?;
    }
    appmesh::create_router(&api, MESH, "colors", 8080, "http").await?;
    let spec = |w: u32| appmesh::route_spec("http", &[("red".into(), w), ("blue".into(), 100 - w)]);
    appmesh::create_route(&api, MESH, "colors", "main", spec(50)).await?;
    appmesh::create_service(&api, MESH, SERVICE, "colors").await?;
    let mut nodes = Vec::new();
    for i in 0..count {
        let name = format!("client-{i:03}");
        let port = procs::free_port()?;
        appmesh::create_node(
            &api,
            MESH,
            appmesh::node_body(&name, port, "http", "127.0.0.1", &[SERVICE.to_string()]),
        )
        .await?;
        nodes.push(name);
    }
    let started = Instant::now();
    let mut agents: Vec<Agent> = Vec::new();
    for name in &nodes {
        agents.push(procs::agent(
            &binary,
            &server.xds_addr,
            MESH,
            name,
            &[],
            &args.protocol,
        )?);
        // Do not start them all in the same instant on 2 cores.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for a in &agents {
        a.wait_ready(Duration::from_secs(120)).await?;
    }
    // Every Envoy connected and settled with a route configuration.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = rds_versions(&api).await?;
        let ready = v.values().filter(|a| a.rds.is_some() && a.settled).count();
        if ready >= count {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {ready} of {count} Envoys ACKed a route configuration within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let startup = started.elapsed();
    let envoy_rss: u64 = agents
        .iter()
        .filter_map(|a| envoy_child_rss(a.proc.pid()))
        .sum();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut samples = Vec::new();
    let mut polls = Vec::new();
    // The fleet's idle cost (stats flushes, health checks, the agents'
    // polling), to tell it apart from what a change costs.
    let idle_start = (Instant::now(), fleet_cpu(&agents));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rate = fleet_cpu(&agents)
        .saturating_sub(idle_start.1)
        .as_secs_f64()
        / idle_start.0.elapsed().as_secs_f64();
    let histogram0 = convergence_histogram(&api).await?;
    // Each Envoy's own convergence, seen from outside: its RouteConfiguration ACK's stamp
    // minus the write's start, for every change.
    let mut per_envoy = Vec::new();
    // The same from the write's answer: the change durable. The histogram's clock starts
    // when the control plane receives the change from the store's watch, between the
    // write's start and its answer.
    let mut per_envoy_answered = Vec::new();
    let cpu0 = CpuMark::now(server.pid());
    let fleet0 = fleet_cpu(&agents);
    let loop_start = Instant::now();
    for c in 0..args.changes.max(1) {
        let before = rds_versions(&api).await?;
        let weight = if c % 2 == 0 { 70 } else { 50 };
        let t0 = Instant::now();
        let t0_wall = machine::epoch_now();
        appmesh::update_route(&api, MESH, "colors", "main", spec(weight)).await?;
        let answered_wall = machine::epoch_now();
        let mut n = 0;
        loop {
            n += 1;
            let now = rds_versions(&api).await?;
            let mut last_ack = t0_wall;
            let done = nodes.iter().all(|node| {
                let id = format!("mesh/{MESH}/virtualNode/{node}");
                match (before.get(&id), now.get(&id)) {
                    (Some(old), Some(new)) => {
                        last_ack = last_ack.max(new.last_ack);
                        new.rds != old.rds && new.settled
                    }
                    _ => false,
                }
            });
            if done {
                if last_ack <= t0_wall {
                    bail!(
                        "change {c}: proxy-status shows no ACK stamped after the write \
                         (ackedAt): is the weft binary older than weft-bench?"
                    );
                }
                // The server stamped every ACK as it arrived (same clock):
                // the last one ends the change, whenever this poll saw it.
                samples.push(Duration::from_secs_f64((last_ack - t0_wall).max(0.0)));
                for node in &nodes {
                    let id = format!("mesh/{MESH}/virtualNode/{node}");
                    if let Some(at) = now.get(&id).and_then(|a| a.rds_acked_at) {
                        per_envoy.push(Duration::from_secs_f64((at - t0_wall).max(0.0)));
                        per_envoy_answered
                            .push(Duration::from_secs_f64((at - answered_wall).max(0.0)));
                    }
                }
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("change {c}: not every Envoy ACKed within 30 s");
            }
            // Polling is not what times the change (the ACK stamps are), so
            // it can be sparse and leave the cores to the server and Envoys.
            tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
        }
        polls.push(n);
        tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
    }
    let cpu1 = CpuMark::now(server.pid());
    let fleet1 = fleet_cpu(&agents);
    let histogram = promhist::delta(&histogram0, &convergence_histogram(&api).await?);
    per_envoy.sort();
    per_envoy_answered.sort();
    let loop_secs = loop_start.elapsed().as_secs_f64();
    server.check_alive()?;
    let nacks: u64 = agents.iter().map(|a| a.stat_sum("update_rejected")).sum();
    samples.sort();
    let p99 = quantile(&samples, 0.99);
    let goal = Duration::from_millis(50);

    println!("weft-bench envoys: real Envoys, time from an API write to the last ACK");
    println!("date:       {}", machine::utc_now());
    println!("machine:    {}", machine::describe());
    println!("server:     {}", binary.display());
    if count < args.count {
        println!(
            "NOTE:       asked for {} Envoys; {} MiB available fits {count} at ~{MIB_PER_ENVOY} MiB each",
            args.count, available
        );
    }
    println!(
        "envoys:     {count} (`weft agent`, explicit mode, Envoy --concurrency 1, ADS {}), \
         all connected and configured in {:.1} s; Envoy RSS total {:.0} MiB",
        args.protocol,
        startup.as_secs_f64(),
        envoy_rss as f64 / 1024.0
    );
    println!(
        "change:     UpdateRoute of the one router every Envoy's node has as backend \
         (weights 50/50 <-> 70/30), {} times, {} ms apart",
        samples.len(),
        args.pause_ms
    );
    let (srv, _, _) = cpu0.delta(&cpu1);
    println!();
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>6} {:>6} {:>6}  {:<14} verdict",
        "envoys",
        "changes",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "polls/chg",
        "NACKs",
        "oth%",
        "steal%",
        "goal"
    );
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10.1} {:>6} {:>5.0}% {:>5.0}%  {:<14} {}",
        count,
        samples.len(),
        ms(quantile(&samples, 0.5)),
        ms(quantile(&samples, 0.9)),
        ms(p99),
        ms(samples.last().copied().unwrap_or_default()),
        polls.iter().sum::<usize>() as f64 / polls.len().max(1) as f64,
        nacks,
        cpu0.other_percent(&cpu1),
        cpu0.steal_percent(&cpu1),
        "p99 <= 50 ms",
        if p99 <= goal { "met" } else { "MISSED" }
    );
    // What the Envoys (and their agents) spend per change, and the latency
    // that alone implies when they share this machine's cores perfectly.
    let changes = samples.len().max(1) as f64;
    let fleet_total = fleet1.saturating_sub(fleet0).as_secs_f64();
    let fleet_ms = (fleet_total - idle_rate * loop_secs).max(0.0) * 1000.0 / changes;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!();
    println!(
        "work per change: server {:.1} ms CPU; the {count} Envoys and agents {:.1} ms CPU above \
         their idle {:.0}% of a core, i.e. >= {:.1} ms of wall time on {cores} cores before the \
         last one can ACK",
        srv.as_secs_f64() * 1000.0 / changes,
        fleet_ms,
        idle_rate * 100.0,
        fleet_ms / cores
    );
    println!();
    let observed = histogram.last().map_or(0.0, |(_, c)| *c);
    let outside = quantile(&per_envoy, 0.99);
    let answered = quantile(&per_envoy_answered, 0.99);
    match promhist::quantile(0.99, &histogram) {
        Some(inside) => {
            let ratio = inside / outside.as_secs_f64().max(f64::MIN_POSITIVE);
            let (low, high) = bucket_around(&histogram, inside);
            println!(
                "convergence histogram: weft_proxy_convergence_time_seconds in /metrics, scraped \
                 before and after the changes: {observed:.0} observations ({} Envoys x {} changes = \
                 {}), p99 {:.1} ms (histogram_quantile's interpolation, within its bucket \
                 ({:.0}, {:.0}] ms); from outside, each Envoy's RouteConfiguration ACK stamp minus \
                 the write's start: {} samples, p99 {} ms (minus the write's answer: p99 {} ms; \
                 the histogram's clock starts between the two, when the change reaches the control \
                 plane); histogram / outside = {ratio:.2} (goal: within 10%: {})",
                count,
                samples.len(),
                count * samples.len(),
                inside * 1000.0,
                low * 1000.0,
                high * 1000.0,
                per_envoy.len(),
                ms(outside),
                ms(answered),
                if (ratio - 1.0).abs() <= 0.10 {
                    "met"
                } else {
                    "MISSED"
                }
            );
        }
        None => println!(
            "convergence histogram: no weft_proxy_convergence_time_seconds observation between \
             the scrapes (is the weft binary older than weft-bench?)"
        ),
    }
    println!();
    println!(
        "Time: from sending UpdateRoute until the server received the last ACK of the change \
         (its `ackedAt` stamps in GET /weft/v1/proxy-status, polled every {} ms until every \
         Envoy's RouteConfiguration is ACKed at a new version with no response pending); \
         includes the durable write. Server CPU over all changes: {:.2} s. oth% = CPU of \
         everything but the server and this benchmark (the Envoys and agents, other work), in \
         % of one core; steal% = of that, what the hypervisor took from this virtual machine \
         (its vCPUs had work, the host ran something else).",
        args.poll_ms,
        srv.as_secs_f64()
    );
    drop(agents);
    drop(server);
    Ok(())
}

/// The buckets of `weft_proxy_convergence_time_seconds` in the server's `/metrics` now.
async fn convergence_histogram(api: &Api) -> Result<Vec<(f64, f64)>> {
    let body = api.call_ok(Method::GET, "/metrics", None).await?;
    let text = std::str::from_utf8(&body).context("/metrics is not UTF-8")?;
    Ok(promhist::buckets(
        text,
        "weft_proxy_convergence_time_seconds",
    ))
}

/// The bounds of the histogram's bucket holding `value`.
fn bucket_around(buckets: &[(f64, f64)], value: f64) -> (f64, f64) {
    let mut low = 0.0;
    for (bound, _) in buckets {
        if value <= *bound {
            return (low, *bound);
        }
        low = *bound;
    }
    (low, f64::INFINITY)
}

/// Summed RSS (KiB) of the children of `pid` (the agent's Envoy).
/// CPU time used so far by every agent and its Envoy.
fn fleet_cpu(agents: &[Agent]) -> Duration {
    agents
        .iter()
        .flat_map(|a| {
            let pid = a.proc.pid();
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            std::iter::once(pid)
                .chain(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok())
                        .collect::<Vec<_>>(),
                )
                .collect::<Vec<_>>()
        })
        .filter_map(machine::cpu_time)
        .sum()
}

fn envoy_child_rss(pid: u32) -> Option<u64> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    Some(
        children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .filter_map(machine::rss_kib)
            .sum(),
    )
}
