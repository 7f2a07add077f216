//! `weft-bench xds-scale`: N simulated proxies speaking real ADS to a real
//! `weft server` holding a generated mesh; convergence after one
//! UpdateRoute and after one mesh-wide change, control-plane memory per
//! proxy and CPU per push.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::Method;

use crate::ads::{AdsProtocol, Fleet, ProxySpec};
use crate::appmesh::{self, MeshShape};
use crate::load::Api;
use crate::machine::{self, ms, quantile, CpuMark};
use crate::server::{self, Server};

/// Mesh of the benchmark.
const MESH: &str = "scale";

/// Flags of `weft-bench xds-scale`.
#[derive(clap::Args)]
pub struct XdsScaleArgs {
    /// Numbers of simulated proxies, one run (fresh server) each.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    pub proxies: Vec<usize>,
    /// ADS variant the proxies speak.
    #[arg(long, value_enum, default_value_t = AdsProtocol::Delta)]
    pub protocol: AdsProtocol,
    /// Virtual services (each with its own router and route).
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Virtual nodes (proxy `p` is an Envoy of node `p mod nodes`).
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Virtual-service backends per node.
    #[arg(long, default_value_t = 10)]
    pub backends: usize,
    /// ADS streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    pub streams_per_connection: usize,
    /// Changes of each kind measured (samples of all are pooled).
    #[arg(long, default_value_t = 2)]
    pub repeats: usize,
    /// Concurrent API requests while creating the mesh.
    #[arg(long, default_value_t = 32)]
    pub setup_concurrency: usize,
    /// Give up on a convergence after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    pub weft_bin: Option<PathBuf>,
}

/// Figures of one kind of change at one fleet size.
struct ChangeRow {
    kind: &'static str,
    expected: usize,
    updated: usize,
    responses_per_proxy: f64,
    samples: Vec<Duration>,
    server_cpu: Duration,
    client_cpu: Duration,
    other_pct: f64,
    /// Of that, the most the hypervisor took during one change.
    steal_pct: f64,
}

/// Figures of one fleet size.
struct SizeResult {
    proxies: usize,
    connections: usize,
    connect_time: Duration,
    rss_before_kib: u64,
    rss_first_kib: u64,
    rss_after_kib: u64,
    /// After the changes, just before the proxies leave; after every proxy
    /// left and the server's idle TTL passed; and after a second fleet of N
    /// connected and was configured (a leak would add to what the first
    /// left behind; reuse does not).
    rss_left_kib: (u64, u64, u64),
    /// Snapshot keys (proxy classes) the server held before the proxies
    /// left, and after (`snapshotKeys` of proxy-status).
    classes: (usize, usize),
    first_stage: usize,
    changes: Vec<ChangeRow>,
    setup: Duration,
}

/// Runs the benchmark and prints its tables.
pub async fn run(args: XdsScaleArgs) -> Result<()> {
    if args.proxies.is_empty() || args.nodes == 0 || args.services == 0 || args.backends == 0 {
        bail!("--proxies, --nodes, --services and --backends must be positive");
    }
    let binary = server::weft_binary(&args.weft_bin)?;
    let shape = MeshShape {
        services: args.services,
        nodes: args.nodes,
        backends: args.backends.min(args.services),
    };
    println!(
        "weft-bench xds-scale: simulated proxies over real ADS ({}) against `weft server`",
        args.protocol.name()
    );
    println!("date:       {}", machine::utc_now());
    println!("machine:    {}", machine::describe());
    println!("server:     {}", binary.display());
    if let Some(load) = machine::load_average() {
        println!("load avg:   {load:.2} (1 min, before the run)");
    }
    if let Some(limit) = machine::open_files_limit() {
        println!("ulimit -n:  {limit}");
    }
    println!(
        "mesh:       {} virtual services (one router + weighted route each, 50/50 over 2 nodes), \
         {} virtual nodes with {} backends each",
        shape.services, shape.nodes, shape.backends
    );
    println!(
        "proxies:    spread round-robin over the nodes, {} ADS streams per HTTP/2 connection, \
         ACK at once like Envoy",
        args.streams_per_connection
    );
    let mut results = Vec::new();
    for &n in &args.proxies {
        let r = run_size(&args, &binary, shape, n).await?;
        println!(
            "  N={n}: mesh created in {:.1} s, all proxies configured in {:.1} s over {} connections",
            r.setup.as_secs_f64(),
            r.connect_time.as_secs_f64(),
            r.connections
        );
        results.push(r);
    }
    println!();
    println!(
        "{:>7} {:<11} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}  {:<22} verdict",
        "proxies",
        "change",
        "affected",
        "updated",
        "resp/p",
        "p50 ms",
        "p99 ms",
        "max ms",
        "srv CPUs",
        "ms/push",
        "cli CPUs",
        "oth%",
        "steal%",
        "goal"
    );
    for r in &results {
        for c in &r.changes {
            let mut s = c.samples.clone();
            s.sort();
            let p99 = quantile(&s, 0.99);
            let (goal, verdict) = if c.kind == "mesh-wide" && r.proxies >= 10_000 {
                let ok = p99 <= Duration::from_secs(1) && c.updated >= c.expected;
                ("p99 <= 1 s at 10,000", if ok { "met" } else { "MISSED" })
            } else {
                ("-", "")
            };
            let pushes = c.updated.max(1) as f64;
            println!(
                "{:>7} {:<11} {:>8} {:>8} {:>6.1} {:>8} {:>8} {:>8} {:>8.2} {:>8.3} {:>8.2} {:>5.0}% {:>5.0}%  {:<22} {}",
                r.proxies,
                c.kind,
                c.expected,
                c.updated,
                c.responses_per_proxy,
                ms(quantile(&s, 0.5)),
                ms(p99),
                ms(s.last().copied().unwrap_or_default()),
                c.server_cpu.as_secs_f64(),
                1000.0 * c.server_cpu.as_secs_f64() / pushes,
                c.client_cpu.as_secs_f64(),
                c.other_pct,
                c.steal_pct,
                goal,
                verdict
            );
        }
    }
    println!();
    println!(
        "{:>7} {:>6} {:>10} {:>10} {:>10} {:>24} {:>13} {:>12} {:>14}  {:<16} verdict",
        "proxies",
        "conns",
        "RSS0 MiB",
        "RSS1 MiB",
        "RSS2 MiB",
        "RSS3 MiB",
        "classes 2->3",
        "KiB/proxy",
        "KiB/extra prx",
        "goal"
    );
    for r in &results {
        let per = (r.rss_after_kib.saturating_sub(r.rss_before_kib)) as f64 / r.proxies as f64;
        let extra = r.proxies.saturating_sub(r.first_stage);
        let marginal = if extra > 0 {
            format!(
                "{:.1}",
                r.rss_after_kib.saturating_sub(r.rss_first_kib) as f64 / extra as f64
            )
        } else {
            "-".into()
        };
        let verdict = if per <= 20.0 * 1000.0 / 1024.0 {
            "met"
        } else {
            "MISSED"
        };
        println!(
            "{:>7} {:>6} {:>10.1} {:>10.1} {:>10.1} {:>24} {:>13} {:>12.1} {:>14}  {:<16} {}",
            r.proxies,
            r.connections,
            r.rss_before_kib as f64 / 1024.0,
            r.rss_first_kib as f64 / 1024.0,
            r.rss_after_kib as f64 / 1024.0,
            format!(
                "{:.1} -> {:.1} -> {:.1}",
                r.rss_left_kib.0 as f64 / 1024.0,
                r.rss_left_kib.1 as f64 / 1024.0,
                r.rss_left_kib.2 as f64 / 1024.0
            ),
            format!("{} -> {}", r.classes.0, r.classes.1),
            per,
            marginal,
            "<= 20 KB/proxy",
            verdict
        );
    }
    println!();
    println!(
        "Convergence: from sending the API write until the proxy sent its ACK of the last response \
         the change caused (client-side clock), over every proxy that received something, pooled \
         over {} change(s) of each kind. \"route\" = UpdateRoute of one router (weights 50/50 <-> \
         70/30): affected = proxies of the {} nodes that have its service as a backend. \
         \"mesh-wide\" = UpdateMesh egressFilter DROP_ALL <-> ALLOW_ALL (every proxy). resp/p = \
         responses per updated proxy (make-before-break takes several). srv CPUs = server CPU \
         seconds from the write to convergence; ms/push = that per updated proxy. oth% = CPU of \
         everything else on the machine during the change, in % of one core; steal% = of that, what \
         the hypervisor took from this virtual machine (both the worst change of its kind).",
        args.repeats, shape.backends
    );
    println!(
        "Memory: server VmRSS before any proxy (RSS0), after one proxy per node (RSS1: every \
         node's snapshot computed), after all N (RSS2), and RSS3 = after the changes, then \
         after every proxy left and the server's idle TTL ({IDLE_TTL_S} s here) passed, then after \
         the same N proxies connected again and were configured; classes 2->3 = proxy classes (snapshot keys) the server held before the proxies \
         left and after. KiB/proxy = (RSS2 - RSS0) / N; KiB/extra \
         prx = (RSS2 - RSS1) / (N - proxies in the first stage). 20 KB = 19.5 KiB."
    );
    Ok(())
}

/// How many snapshot keys (proxy classes) the server holds config for.
async fn snapshot_keys(api: &Api) -> Result<usize> {
    let body = api
        .call_ok(Method::GET, "/weft/v1/proxy-status", None)
        .await?;
    let status: serde_json::Value =
        serde_json::from_slice(&body).context("proxy-status is not JSON")?;
    Ok(status["snapshotKeys"].as_array().map_or(0, Vec::len))
}

/// The server's `--proxy-idle-ttl` in this benchmark (its minimum).
const IDLE_TTL_S: f64 = 1.0;

async fn run_size(
    args: &XdsScaleArgs,
    binary: &std::path::Path,
    shape: MeshShape,
    n: usize,
) -> Result<SizeResult> {
    let data = tempfile::Builder::new()
        .prefix("weft-bench-xds-")
        .tempdir()
        .context("creating a temporary data folder")?;
    let mut flags = appmesh::big_quotas();
    // The shortest TTL, so that the run can show what the server lets go of
    // once every proxy has left.
    flags.extend(["--proxy-idle-ttl".to_string(), IDLE_TTL_S.to_string()]);
    let mut server = Server::start(binary, &data.path().join("data"), &flags)?;
    let api = Arc::new(Api::new(&server.url, args.setup_concurrency));
    let setup = Instant::now();
    appmesh::create_mesh(&api, MESH).await?;
    // Start from DROP_ALL explicitly so the first mesh-wide change flips it.
    appmesh::set_egress_filter(&api, MESH, false).await?;
    shape.create(&api, MESH, args.setup_concurrency).await?;
    let setup = setup.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.pid();
    let rss_before_kib = machine::rss_kib(pid).unwrap_or(0);

    let xds_addr = server.xds_addr.clone();
    let new_fleet = || Fleet::new(&xds_addr, args.protocol, args.streams_per_connection, false);
    let mut fleet = new_fleet()?;
    let timeout = Duration::from_secs_f64(args.timeout.max(1.0));
    let connect_started = Instant::now();
    let first_stage = n.min(shape.nodes);
    let spec = |p: usize| ProxySpec {
        node_id: format!("mesh/{MESH}/virtualNode/{}", shape.node(p % shape.nodes)),
        cluster: shape.node(p % shape.nodes),
    };
    for p in 0..first_stage {
        fleet.add(&server.xds_addr, spec(p))?;
    }
    fleet.wait_all_configured(timeout * 2).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_first_kib = machine::rss_kib(pid).unwrap_or(0);
    for p in first_stage..n {
        fleet.add(&server.xds_addr, spec(p))?;
    }
    fleet.wait_all_configured(timeout * 2).await?;
    let connect_time = connect_started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_kib = machine::rss_kib(pid).unwrap_or(0);
    server.check_alive()?;

    // Proxies of nodes that have service 0 (router 0) as a backend.
    let route_affected: BTreeSet<usize> = (0..n)
        .filter(|p| shape.backends_of(p % shape.nodes).contains(&0))
        .collect();
    let everyone: BTreeSet<usize> = (0..n).collect();
    let mut route = ChangeRow::new("route", route_affected.len());
    let mut wide = ChangeRow::new("mesh-wide", n);
    let quiet = Duration::from_millis(500);
    for r in 0..args.repeats.max(1) {
        let weight = if r % 2 == 0 { 70 } else { 50 };
        let before = fleet.response_counts();
        let cpu0 = CpuMark::now(pid);
        let t0 = Instant::now();
        appmesh::update_route(&api, MESH, &shape.router(0), "main", shape.route(0, weight)).await?;
        let got = fleet
            .wait_converged(&before, &route_affected, quiet, timeout)
            .await
            .context("route change")?;
        route.add(&got, t0, &cpu0, &CpuMark::now(pid));

        let allow = r % 2 == 0;
        let before = fleet.response_counts();
        let cpu0 = CpuMark::now(pid);
        let t0 = Instant::now();
        appmesh::set_egress_filter(&api, MESH, allow).await?;
        let got = fleet
            .wait_converged(&before, &everyone, quiet, timeout)
            .await
            .context("mesh-wide change")?;
        wide.add(&got, t0, &cpu0, &CpuMark::now(pid));
    }
    server.check_alive()?;
    if fleet.ended() > 0 {
        bail!(
            "{} ADS streams ended during the run: {:?}",
            fleet.ended(),
            fleet.errors
        );
    }
    let connections = fleet.connections();
    let classes_before = snapshot_keys(&api).await?;
    let rss_busy_kib = machine::rss_kib(pid).unwrap_or(0);
    drop(fleet);
    // The TTL, then a sweep (every 250 ms at this TTL); give up after some
    // slack and report what is left.
    let deadline = Instant::now() + Duration::from_secs_f64(IDLE_TTL_S + 3.0);
    tokio::time::sleep(Duration::from_secs_f64(IDLE_TTL_S)).await;
    let mut classes_left = snapshot_keys(&api).await?;
    while classes_left > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        classes_left = snapshot_keys(&api).await?;
    }
    let rss_gone_kib = machine::rss_kib(pid).unwrap_or(0);
    let classes = (classes_before, classes_left);
    // The fleet comes back.
    let mut fleet = new_fleet()?;
    for p in 0..n {
        fleet.add(&server.xds_addr, spec(p))?;
    }
    fleet.wait_all_configured(timeout * 2).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_left_kib = (
        rss_busy_kib,
        rss_gone_kib,
        machine::rss_kib(pid).unwrap_or(0),
    );
    server.check_alive()?;
    drop(fleet);
    drop(server);
    Ok(SizeResult {
        proxies: n,
        connections,
        connect_time,
        rss_before_kib,
        rss_first_kib,
        rss_after_kib,
        rss_left_kib,
        classes,
        first_stage,
        changes: vec![route, wide],
        setup,
    })
}

impl ChangeRow {
    fn new(kind: &'static str, expected: usize) -> Self {
        ChangeRow {
            kind,
            expected,
            updated: 0,
            responses_per_proxy: 0.0,
            samples: Vec::new(),
            server_cpu: Duration::ZERO,
            client_cpu: Duration::ZERO,
            other_pct: 0.0,
            steal_pct: 0.0,
        }
    }

    /// Pools one change's figures (averaging counts over the repeats).
    fn add(&mut self, got: &[(usize, u64, Instant)], t0: Instant, cpu0: &CpuMark, cpu1: &CpuMark) {
        let rounds = (self.samples.len() / got.len().max(1)) as f64;
        let responses: u64 = got.iter().map(|g| g.1).sum();
        let rpp = responses as f64 / got.len().max(1) as f64;
        self.responses_per_proxy = (self.responses_per_proxy * rounds + rpp) / (rounds + 1.0);
        self.updated = self.updated.max(got.len());
        self.samples
            .extend(got.iter().map(|g| g.2.saturating_duration_since(t0)));
        let (srv, cli, _) = cpu0.delta(cpu1);
        // Per change: keep the worst (the pooled samples say the rest).
        self.server_cpu = self.server_cpu.max(srv);
        self.client_cpu = self.client_cpu.max(cli);
        self.other_pct = self.other_pct.max(cpu0.other_percent(cpu1));
        self.steal_pct = self.steal_pct.max(cpu0.steal_percent(cpu1));
    }
}
