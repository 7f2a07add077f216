//! `weft-bench dataplane` (latency the client and server Envoys add, open
//! loop, HTTP/1.1 and HTTP/2) and `weft-bench no-drops` (failed requests
//! while routes change under load), on real Envoys configured by a real
//! `weft server` in explicit mode, like crates/weft/tests/dataplane.rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::appmesh;
use crate::bare;
use crate::load::Api;
use crate::machine::{self, quantile, CpuMark};
use crate::openloop::{self, Target, TargetResult};
use crate::procs::{self, Agent, Proc};
use crate::server::{self, Server};

const MESH: &str = "dp";

/// Flags of `weft-bench dataplane`.
#[derive(clap::Args)]
pub struct DataplaneArgs {
    /// Requests per second on each path (direct and through the Envoys), open loop.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured seconds per protocol.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds per protocol (not counted).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// ADS variant of the Envoys.
    #[arg(long, default_value = "delta")]
    pub protocol: String,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    pub weft_bin: Option<PathBuf>,
    /// Hold a CPU latency request of 0 (`/dev/cpu_dma_latency`, needs root)
    /// while measuring, as tuned's latency-performance profile does: idle
    /// CPUs poll instead of halting, so waking a proxy does not wait for a
    /// halted (virtual) CPU. It applies to every path alike.
    #[arg(long)]
    pub poll_idle: bool,
    /// Leave out the minimal Envoy pair ("bare"): only the two paths the
    /// goal compares share the machine, a third less load on its cores.
    #[arg(long)]
    pub no_bare: bool,
}

/// Flags of `weft-bench no-drops`.
#[derive(clap::Args)]
pub struct NoDropsArgs {
    /// Seconds of load (and of route changes).
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Milliseconds between route changes.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Requests per second through the client Envoy, open loop.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// ADS variant of the Envoys.
    #[arg(long, default_value = "delta")]
    pub protocol: String,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    pub weft_bin: Option<PathBuf>,
}

/// A server, upstream apps behind their own Envoys, and a client Envoy.
struct Topology {
    server: Server,
    api: Arc<Api>,
    client: Agent,
    apps: Vec<(Proc, u16)>,
    upstreams: Vec<Agent>,
    _data: tempfile::TempDir,
}

/// One upstream virtual node: name, listener protocol.
struct Upstream<'a> {
    name: &'a str,
    protocol: &'a str,
    /// The app it fronts (index in `apps`).
    app: usize,
}

/// One service: name, router listener protocol, route targets.
struct Service<'a> {
    name: &'a str,
    protocol: &'a str,
    targets: Vec<(String, u32)>,
}

async fn topology(
    binary: &Path,
    protocol: &str,
    apps: &[&str],
    upstreams: &[Upstream<'_>],
    services: &[Service<'_>],
) -> Result<Topology> {
    let data = tempfile::Builder::new()
        .prefix("weft-bench-dp-")
        .tempdir()
        .context("creating a temporary data folder")?;
    let server = Server::start(binary, &data.path().join("data"), &[])?;
    let api = Arc::new(Api::new(&server.url, 4));
    appmesh::create_mesh(&api, MESH).await?;
    let mut app_procs = Vec::new();
    for name in apps {
        app_procs.push(procs::sample_app(binary, name).await?);
    }
    let mut agents = Vec::new();
    for u in upstreams {
        let port = procs::free_port()?;
        appmesh::create_node(
            &api,
            MESH,
            appmesh::node_body(u.name, port, u.protocol, "127.0.0.1", &[]),
        )
        .await?;
        let app_port = app_procs[u.app].1;
        agents.push(procs::agent(
            binary,
            &server.xds_addr,
            MESH,
            u.name,
            &[(port, app_port)],
            protocol,
        )?);
    }
    for s in services {
        let router = format!("{}-router", s.name.split('.').next().unwrap_or("r"));
        appmesh::create_router(&api, MESH, &router, 8080, s.protocol).await?;
        appmesh::create_route(
            &api,
            MESH,
            &router,
            "main",
            appmesh::route_spec(s.protocol, &s.targets),
        )
        .await?;
        appmesh::create_service(&api, MESH, s.name, &router).await?;
    }
    let backends: Vec<String> = services.iter().map(|s| s.name.to_string()).collect();
    appmesh::create_node(
        &api,
        MESH,
        appmesh::node_body(
            "client",
            procs::free_port()?,
            "http",
            "127.0.0.1",
            &backends,
        ),
    )
    .await?;
    let client = procs::agent(binary, &server.xds_addr, MESH, "client", &[], protocol)?;
    for a in agents.iter().chain(std::iter::once(&client)) {
        a.wait_ready(Duration::from_secs(30)).await?;
    }
    Ok(Topology {
        server,
        api,
        client,
        apps: app_procs,
        upstreams: agents,
        _data: data,
    })
}

impl Topology {
    /// Waits until an HTTP/1.1 request for `host` through the client Envoy answers 200.
    async fn wait_route(&self, host: &str) -> Result<()> {
        let port = self.client.egress_port;
        procs::wait_until(
            Duration::from_secs(30),
            &format!("a route to {host}"),
            || procs::answers_200(port, host),
        )
        .await
    }

    /// NACKs (rejected updates) over every Envoy.
    fn rejected(&self) -> u64 {
        self.upstreams
            .iter()
            .chain(std::iter::once(&self.client))
            .map(|a| a.stat_sum("update_rejected"))
            .sum()
    }
}

fn us(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn signed_ms(a: Duration, b: Duration) -> String {
    format!("{:+.3}", (a.as_secs_f64() - b.as_secs_f64()) * 1000.0)
}

const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Runs `weft-bench dataplane` and prints its table.
pub async fn run(args: DataplaneArgs) -> Result<()> {
    if !(args.rate > 0.0 && args.duration > 0.0 && args.warmup >= 0.0) {
        bail!("--rate and --duration must be positive, --warmup not negative");
    }
    let binary = match &args.weft_bin {
        Some(b) => b.clone(),
        None => server::default_weft_binary()?,
    };
    let t = topology(
        &binary,
        &args.protocol,
        &["upstream"],
        &[
            Upstream {
                name: "server-h1",
                protocol: "http",
                app: 0,
            },
            Upstream {
                name: "server-h2",
                protocol: "http2",
                app: 0,
            },
        ],
        &[
            Service {
                name: "h1.dp.local",
                protocol: "http",
                targets: vec![("server-h1".into(), 1)],
            },
            Service {
                name: "h2.dp.local",
                protocol: "http2",
                targets: vec![("server-h2".into(), 1)],
            },
        ],
    )
    .await?;
    t.wait_route("h1.dp.local").await?;
    t.wait_route("h2.dp.local").await?;
    let app = format!("127.0.0.1:{}", t.apps[0].1);
    let bare = match args.no_bare {
        true => None,
        false => Some((
            bare::pair(t.apps[0].1, false).await?,
            bare::pair(t.apps[0].1, true).await?,
        )),
    };
    let egress = format!("127.0.0.1:{}", t.client.egress_port);
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let _poll_idle = match args.poll_idle {
        true => Some(machine::PollIdle::request()?),
        false => None,
    };

    println!("weft-bench dataplane: latency added by the client and server Envoys (open loop)");
    println!("date:       {}", machine::utc_now());
    println!("machine:    {}", machine::describe());
    println!(
        "idle:       {}",
        match args.poll_idle {
            true => "CPUs poll when idle (cpu_dma_latency held at 0, --poll-idle)",
            false => "the kernel's default idle (CPUs may halt)",
        }
    );
    println!("server:     {}", binary.display());
    println!(
        "load:       {} req/s on each path, interleaved in one run per protocol, {:.0} s warm-up + {:.0} s measured; \
         latency from the intended send time",
        args.rate, args.warmup, args.duration
    );
    println!(
        "paths:      direct = client -> sample app; mesh = client -> client Envoy (egress, explicit mode) -> \
         server Envoy (ingress) -> the same sample app; Envoys --concurrency 1, configured by Weft (ADS {}){}",
        args.protocol,
        match args.no_bare {
            true => " (no bare pair: --no-bare)",
            false => "; bare = the same through two Envoys with a minimal static config (HTTP connection \
                      manager, router, one static cluster)",
        }
    );
    println!();
    println!(
        "{:<8} {:<7} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>5} {:>6}  verdict",
        "proto",
        "path",
        "sent",
        "failed",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9ms",
        "oth%",
        "steal%"
    );
    let mut verdicts = Vec::new();
    for (proto, host, http2, bare_port) in [
        (
            "HTTP/1.1",
            "h1.dp.local",
            false,
            bare.as_ref().map(|b| b.0.port),
        ),
        (
            "HTTP/2",
            "h2.dp.local",
            true,
            bare.as_ref().map(|b| b.1.port),
        ),
    ] {
        let mut targets = vec![
            Target {
                label: "direct".into(),
                addr: app.clone(),
                host: host.into(),
                http2,
            },
            Target {
                label: "mesh".into(),
                addr: egress.clone(),
                host: host.into(),
                http2,
            },
        ];
        if let Some(bare_port) = bare_port {
            targets.push(Target {
                label: "bare".into(),
                addr: format!("127.0.0.1:{bare_port}"),
                host: host.into(),
                http2,
            });
        }
        let cpu0 = CpuMark::now(t.server.pid());
        let results = openloop::run(&targets, args.rate, warmup, duration).await?;
        let cpu1 = CpuMark::now(t.server.pid());
        let (oth, steal) = (cpu0.other_percent(&cpu1), cpu0.steal_percent(&cpu1));
        for (target, r) in targets.iter().zip(&results) {
            print_row(proto, &target.label, r, oth, steal);
        }
        let (d, m, b) = (&results[0], &results[1], results.get(2));
        let q = |r: &TargetResult, x: f64| quantile(&r.latencies, x);
        let diff = |over: &TargetResult, base: &TargetResult| -> Vec<String> {
            QUANTILES
                .iter()
                .map(|&x| signed_ms(q(over, x), q(base, x)))
                .collect()
        };
        let added = diff(m, d);
        // What any Envoy pair adds here, and what Weft's config adds on top.
        if let Some(b) = b {
            for (label, row) in [("bare+", diff(b, d)), ("weft+", diff(m, b))] {
                println!(
                    "{:<8} {:<7} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8}",
                    proto, label, "", "", row[0], row[1], row[2], row[3]
                );
            }
        }
        let p90 = q(m, 0.9).saturating_sub(q(d, 0.9));
        let p99 = q(m, 0.99).saturating_sub(q(d, 0.99));
        let mut missed = Vec::new();
        if p90 > Duration::from_micros(230) {
            missed.push("p90");
        }
        if p99 > Duration::from_micros(300) {
            missed.push("p99");
        }
        if m.failed + d.failed > 0 {
            missed.push("errors");
        }
        let verdict = if missed.is_empty() {
            "met".to_string()
        } else {
            format!("MISSED ({})", missed.join(", "))
        };
        println!(
            "{:<8} {:<7} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>5} {:>6}  {}",
            proto, "added", "", "", added[0], added[1], added[2], added[3], "", "", verdict
        );
        verdicts.push((proto, verdict));
        for r in &results {
            for f in &r.failures {
                println!("  failure: {f}");
            }
        }
    }
    println!();
    println!(
        "goal: the pair adds <= 0.23 ms at p90 and <= 0.30 ms at p99 (added = mesh - direct at \
         the same quantile; bare+ = bare - direct, what two minimally configured Envoys add on this \
         machine; weft+ = mesh - bare, what Weft's config adds to that). oth% = CPU of everything but the server and this benchmark (the \
         Envoys, the sample app, other work) in % of one core; steal% = of that, what the hypervisor \
         took from this virtual machine. Envoy NACKs: {}.",
        t.rejected()
    );
    Ok(())
}

fn print_row(proto: &str, label: &str, r: &TargetResult, oth: f64, steal: f64) {
    let q: Vec<String> = QUANTILES
        .iter()
        .map(|&x| us(quantile(&r.latencies, x)))
        .collect();
    println!(
        "{:<8} {:<7} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>4.0}% {:>5.0}%",
        proto, label, r.sent, r.failed, q[0], q[1], q[2], q[3], oth, steal
    );
}

/// Runs `weft-bench no-drops` and prints its table.
pub async fn run_no_drops(args: NoDropsArgs) -> Result<()> {
    if !(args.rate > 0.0 && args.duration > 0.0) || args.interval_ms == 0 {
        bail!("--rate, --duration and --interval-ms must be positive");
    }
    let binary = match &args.weft_bin {
        Some(b) => b.clone(),
        None => server::default_weft_binary()?,
    };
    let names = ["red", "blue", "green"];
    let t = topology(
        &binary,
        &args.protocol,
        &names,
        &[
            Upstream {
                name: "red",
                protocol: "http",
                app: 0,
            },
            Upstream {
                name: "blue",
                protocol: "http",
                app: 1,
            },
            Upstream {
                name: "green",
                protocol: "http",
                app: 2,
            },
        ],
        &[Service {
            name: "colors.dp.local",
            protocol: "http",
            targets: vec![("red".into(), 1)],
        }],
    )
    .await?;
    t.wait_route("colors.dp.local").await?;
    // Weights and targets change every interval: a target appears, weights
    // shift, a target disappears.
    let plans: Vec<Vec<(String, u32)>> = vec![
        vec![("red".into(), 1)],
        vec![("red".into(), 3), ("blue".into(), 1)],
        vec![("red".into(), 1), ("blue".into(), 3)],
        vec![("blue".into(), 1)],
        vec![("blue".into(), 1), ("green".into(), 1)],
        vec![("green".into(), 1)],
        vec![("green".into(), 2), ("red".into(), 1)],
        vec![("red".into(), 1), ("blue".into(), 1), ("green".into(), 1)],
    ];
    let duration = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs(1);
    let target = Target {
        label: "mesh".into(),
        addr: format!("127.0.0.1:{}", t.client.egress_port),
        host: "colors.dp.local".into(),
        http2: false,
    };
    let api = t.api.clone();
    let interval = Duration::from_millis(args.interval_ms);
    let changer = async move {
        let started = Instant::now();
        tokio::time::sleep(warmup).await;
        let mut writes = Vec::new();
        let mut failed = 0u64;
        let mut i = 1;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while started.elapsed() < warmup + duration {
            tick.tick().await;
            let spec = appmesh::route_spec("http", &plans[i % plans.len()]);
            let t0 = Instant::now();
            match appmesh::update_route(&api, MESH, "colors-router", "main", spec).await {
                Ok(()) => writes.push(t0.elapsed()),
                Err(_) => failed += 1,
            }
            i += 1;
        }
        (writes, failed)
    };
    let cpu0 = CpuMark::now(t.server.pid());
    let (load, (mut writes, write_failures)) = tokio::join!(
        openloop::run(std::slice::from_ref(&target), args.rate, warmup, duration),
        changer
    );
    let oth = cpu0.other_percent(&CpuMark::now(t.server.pid()));
    let load = load?;
    let r = &load[0];
    writes.sort();
    let rejected = t.rejected();

    println!("weft-bench no-drops: failed requests while routes change under load");
    println!("date:       {}", machine::utc_now());
    println!("machine:    {}", machine::describe());
    println!("server:     {}", binary.display());
    println!(
        "topology:   client Envoy -> router colors (weighted targets over red, blue, green, each a \
         sample app behind its own Envoy); explicit mode, ADS {}",
        args.protocol
    );
    println!(
        "load:       {} req/s open loop over keep-alive HTTP/1.1 through the client Envoy, {:.0} s \
         (after 1 s warm-up); an UpdateRoute every {} ms cycling through {} target/weight plans",
        args.rate, args.duration, args.interval_ms, 8
    );
    println!();
    println!(
        "{:>8} {:>7} {:>8} {:>9} {:>11} {:>11} {:>6} {:>5}  {:<8} verdict",
        "requests",
        "failed",
        "changes",
        "chg fail",
        "write p50",
        "write p99",
        "NACKs",
        "oth%",
        "goal"
    );
    println!(
        "{:>8} {:>7} {:>8} {:>9} {:>8} ms {:>8} ms {:>6} {:>4.0}%  {:<8} {}",
        r.sent,
        r.failed,
        writes.len(),
        write_failures,
        us(quantile(&writes, 0.5)),
        us(quantile(&writes, 0.99)),
        rejected,
        oth,
        "0 failed",
        if r.failed == 0 && r.sent > 0 {
            "met"
        } else {
            "MISSED"
        }
    );
    for f in &r.failures {
        println!("  failure: {f}");
    }
    println!(
        "latency p50 {} ms, p99 {} ms, p99.9 {} ms (from intended send time)",
        us(quantile(&r.latencies, 0.5)),
        us(quantile(&r.latencies, 0.99)),
        us(quantile(&r.latencies, 0.999))
    );
    Ok(())
}
