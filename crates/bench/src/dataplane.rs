//! `weft-bench dataplane` (latency the client and server Envoys add, open
//! loop, HTTP/1.1 and HTTP/2, in explicit and in transparent mode) and
//! `weft-bench no-drops` (failed requests while routes change under load),
//! on real Envoys configured by a real `weft server`. Explicit mode on
//! loopback like crates/weft/tests/dataplane.rs; with the transparent row
//! (root), every path across two network namespaces ([`crate::lan`]) like
//! crates/weft/tests/transparent.rs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::appmesh;
use crate::bare;
use crate::lan;
use crate::load::Api;
use crate::machine::{self, quantile, CpuMark};
use crate::mtls;
use crate::openloop::{self, Order, Target, TargetResult};
use crate::procs::{self, Agent, AgentSpec, Place, Proc};
use crate::server::{self, Server};

pub(crate) const MESH: &str = "dp";

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
    /// Leave out the minimal Envoy pair ("bare"): only the paths the goals
    /// compare share the machine, less load on its cores.
    #[arg(long)]
    pub no_bare: bool,
    /// Leave out the transparent row and run every path on loopback in this
    /// network namespace, as before it (the transparent row needs root: two
    /// network namespaces, the redirection rules, Envoys as another user).
    #[arg(long)]
    pub no_transparent: bool,
    /// An A/A run: measure a second explicit-mode pair (its own client and
    /// server Envoys and app) in place of the transparent path, whose Envoys
    /// and rules stay up unloaded; the ratio row then shows what this
    /// machine's noise alone gives. Needs the transparent row's topology (root).
    #[arg(long, conflicts_with = "no_transparent")]
    pub control: bool,
    /// Measure a mutual-TLS pair beside the plaintext one: a second
    /// explicit-mode pair whose hop between the Envoys is mutual TLS, set
    /// through App Mesh TLS specs (server listener STRICT with validation,
    /// client policy with a certificate and validation), the certificates
    /// from Weft's CA through join tokens and SDS. With the transparent
    /// row's topology (root) it is measured in place of the transparent
    /// path, whose Envoys and rules stay up unloaded; on loopback
    /// (--no-transparent), as one more path.
    #[arg(long, conflicts_with = "control")]
    pub mtls: bool,
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

/// The paths of one protocol, measured together in one open-loop run.
pub(crate) struct Paths {
    /// "HTTP/1.1" or "HTTP/2".
    pub proto: &'static str,
    /// Client -> app.
    pub direct: Target,
    /// Client -> client Envoy's egress port (explicit mode) -> server Envoy -> app.
    pub explicit: Target,
    /// Client -> the app's address, redirected through both Envoys (transparent mode).
    pub transparent: Option<Target>,
    /// Client -> a second explicit-mode pair with its own app (`--control`).
    pub control: Option<Target>,
    /// Client -> an explicit-mode pair speaking mutual TLS between its
    /// Envoys (`--mtls`).
    pub mtls: Option<Target>,
    /// Client -> two minimally configured Envoys -> app.
    pub bare: Option<Target>,
}

/// Everything one `weft-bench dataplane` run measures, kept alive while it
/// runs (fields drop in order: agents first, the server last).
pub(crate) struct Setup {
    /// Every `weft agent` (Envoy NACKs are summed over them).
    pub agents: Vec<Agent>,
    /// The minimal Envoy pairs (kept running).
    pub _bare: Vec<bare::BarePair>,
    /// The sample apps (kept running).
    pub _apps: Vec<Proc>,
    /// The control plane.
    pub server: Server,
    /// Where the load generator runs.
    pub load: Place,
    /// One per protocol.
    pub phases: Vec<Paths>,
    /// Where everything runs (the `hosts:` line).
    pub hosts: String,
    /// What each path goes through (the `paths:` line).
    pub paths: String,
    /// The transparent path's virtual nodes, client side then server side,
    /// to show that their Envoys carried its requests.
    pub transparent_envoys: Option<(&'static str, &'static str)>,
    /// The mTLS pair's virtual nodes, to show their Envoys' TLS handshakes.
    pub mtls_envoys: Option<MtlsEnvoys>,
    pub _data: tempfile::TempDir,
}

/// The mTLS pair's virtual nodes: the client node, and the server nodes
/// (HTTP/1.1 and HTTP/2 listeners).
#[derive(Clone, Copy)]
pub(crate) struct MtlsEnvoys {
    pub client: &'static str,
    pub servers: [&'static str; 2],
}

/// Virtual nodes of the mTLS pair.
pub(crate) const MTLS_ENVOYS: MtlsEnvoys = MtlsEnvoys {
    client: "mclient",
    servers: ["mserver-h1", "mserver-h2"],
};

/// The virtual services of the mTLS pair, per protocol.
pub(crate) const MTLS_SERVICES: [&str; 2] = ["m1.dp.local", "m2.dp.local"];

/// The mTLS pair on loopback: server nodes on `ports` (HTTP/1.1, HTTP/2)
/// in front of the app on `app_port`, a client node; their agents with
/// join tokens. Returns the agents (client last) once Envoy answers.
async fn loopback_mtls(
    binary: &Path,
    protocol: &str,
    server: &Server,
    api: &Api,
    app_port: u16,
) -> Result<Vec<Agent>> {
    let ports = [procs::free_port()?, procs::free_port()?];
    let clients = [mtls::spiffe_id(MESH, MTLS_ENVOYS.client)];
    let servers: Vec<String> = MTLS_ENVOYS
        .servers
        .iter()
        .map(|n| mtls::spiffe_id(MESH, n))
        .collect();
    let mut agents = Vec::new();
    for ((node, port), (service, proto)) in MTLS_ENVOYS
        .servers
        .iter()
        .zip(ports)
        .zip(MTLS_SERVICES.iter().zip(["http", "http2"]))
    {
        let body = appmesh::node_body(node, port, proto, "127.0.0.1", &[]);
        appmesh::create_node(api, MESH, mtls::with_listener_tls(body, node, &clients)).await?;
        let router = format!("{}-router", service.split('.').next().unwrap_or("m"));
        appmesh::create_router(api, MESH, &router, 8080, proto).await?;
        let spec = appmesh::route_spec(proto, &[(node.to_string(), 1)]);
        appmesh::create_route(api, MESH, &router, "main", spec).await?;
        appmesh::create_service(api, MESH, service, &router).await?;
    }
    let backends: Vec<String> = MTLS_SERVICES.iter().map(|s| s.to_string()).collect();
    let body = appmesh::node_body(
        MTLS_ENVOYS.client,
        procs::free_port()?,
        "http",
        "127.0.0.1",
        &backends,
    );
    appmesh::create_node(api, MESH, mtls::with_client_policy(body, &servers)).await?;
    for (node, app_ports) in MTLS_ENVOYS
        .servers
        .iter()
        .zip(ports)
        .map(|(n, p)| (*n, Some(format!("{p}={app_port}"))))
        .chain(std::iter::once((MTLS_ENVOYS.client, None)))
    {
        let mut env = vec![("WEFT_LISTENER_MODE", "explicit".to_string())];
        env.extend(app_ports.map(|p| ("WEFT_APP_PORTS", p)));
        env.extend(mtls::agent_env(
            mtls::join_token(api, MESH, node).await?,
            &server.url,
        ));
        let spec = AgentSpec {
            place: Place::here(),
            admin_port: procs::free_port()?,
            egress_port: procs::free_port()?,
            ingress_port: procs::free_port()?,
            env,
        };
        agents.push(procs::agent_with(
            binary,
            &server.xds_addr,
            MESH,
            node,
            protocol,
            spec,
        )?);
    }
    for a in &agents {
        a.wait_ready(Duration::from_secs(30)).await?;
    }
    Ok(agents)
}

/// The topology before the transparent row: every path on loopback in this
/// network namespace.
async fn loopback_setup(binary: &Path, args: &DataplaneArgs) -> Result<Setup> {
    let t = topology(
        binary,
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
    let Topology {
        server,
        api,
        client,
        apps,
        mut upstreams,
        _data,
    } = t;
    let app_port = apps[0].1;
    let mtls_agents = match args.mtls {
        true => loopback_mtls(binary, &args.protocol, &server, &api, app_port).await?,
        false => Vec::new(),
    };
    let mtls_egress = match mtls_agents.last() {
        Some(client) => {
            for host in MTLS_SERVICES {
                let port = client.egress_port;
                procs::wait_until(
                    Duration::from_secs(30),
                    &format!("a route to {host} over mutual TLS"),
                    || procs::answers_200(port, host),
                )
                .await?;
            }
            Some(format!("127.0.0.1:{}", client.egress_port))
        }
        None => None,
    };
    let mut bare = Vec::new();
    if !args.no_bare {
        for http2 in [false, true] {
            bare.push(bare::pair(&bare::Layout::loopback(app_port)?, http2).await?);
        }
    }
    let app = format!("127.0.0.1:{app_port}");
    let egress = format!("127.0.0.1:{}", client.egress_port);
    let phases = [
        ("HTTP/1.1", "h1.dp.local", false),
        ("HTTP/2", "h2.dp.local", true),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (proto, host, http2))| {
        let target = |label: &str, addr: &str| Target {
            label: label.into(),
            addr: addr.into(),
            host: host.into(),
            http2,
        };
        Paths {
            proto,
            direct: target("direct", &app),
            explicit: target("explicit", &egress),
            transparent: None,
            control: None,
            mtls: mtls_egress.as_deref().map(|addr| Target {
                label: "mtls".into(),
                addr: addr.into(),
                host: MTLS_SERVICES[i].into(),
                http2,
            }),
            bare: bare
                .get(i)
                .map(|b| target("bare", &format!("127.0.0.1:{}", b.port))),
        }
    })
    .collect();
    upstreams.push(client);
    upstreams.extend(mtls_agents);
    Ok(Setup {
        agents: upstreams,
        _bare: bare,
        _apps: apps.into_iter().map(|(p, _)| p).collect(),
        server,
        load: Place::here(),
        phases,
        transparent_envoys: None,
        mtls_envoys: args.mtls.then_some(MTLS_ENVOYS),
        hosts: "this network namespace, loopback only".into(),
        paths: format!(
            "direct = client -> sample app; explicit = client -> client Envoy (egress, \
             explicit mode) -> server Envoy (ingress) -> the same sample app{}; Envoys \
             --concurrency 1",
            match args.mtls {
                true =>
                    "; mtls = the same through a second pair whose Envoys speak mutual TLS \
                         (App Mesh TLS specs: server listener STRICT with validation, client \
                         policy with certificate and validation; certificates from Weft's CA \
                         through join tokens and SDS)",
                false => "",
            }
        ),
        _data,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting an async runtime")
}

/// Runs `weft-bench dataplane` and prints its table.
pub async fn run(args: DataplaneArgs) -> Result<()> {
    if !(args.rate > 0.0 && args.duration > 0.0 && args.warmup >= 0.0) {
        bail!("--rate and --duration must be positive, --warmup not negative");
    }
    let binary = server::weft_binary(&args.weft_bin)?;
    let hosts = match args.no_transparent {
        true => Err("--no-transparent".to_string()),
        false => lan::Hosts::create(),
    };
    let hosts = match hosts {
        Ok(hosts) => hosts,
        Err(why) if args.control => bail!("--control needs the transparent row's topology: {why}"),
        Err(why) => {
            let setup = loopback_setup(&binary, &args).await?;
            return measure(&args, &binary, setup, Some(why)).await;
        }
    };
    // The server runs in the bridge's namespace and the benchmark talks to
    // its API on loopback there: everything runs on a runtime inside it.
    let inside = hosts.share();
    let outcome = tokio::task::spawn_blocking(move || {
        let hub = inside.hub.clone();
        hub.within(move || -> Result<()> {
            runtime()?.block_on(async move {
                let setup = lan::setup(
                    &binary,
                    &args.protocol,
                    &inside,
                    !args.no_bare,
                    args.control,
                    args.mtls,
                )
                .await?;
                measure(&args, &binary, setup, None).await
            })
        })
    })
    .await
    .context("the benchmark's thread in the bridge's namespace")?;
    // The namespaces go (with anything left in them) only after the run.
    drop(hosts);
    outcome.map_err(anyhow::Error::from)?
}

/// Sends the open-loop load of one protocol from `place`.
async fn load(
    place: &Place,
    targets: Vec<Target>,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> Result<Vec<TargetResult>> {
    if place.name().is_none() {
        return openloop::run_in_order(&targets, rate, warmup, duration, Order::Shuffled).await;
    }
    // Sockets live in the namespace of the thread that opens them: a
    // runtime of its own inside the client namespace, like this one.
    let place = place.clone();
    tokio::task::spawn_blocking(move || {
        place.run(move || {
            runtime()?.block_on(openloop::run_in_order(
                &targets,
                rate,
                warmup,
                duration,
                Order::Shuffled,
            ))
        })
    })
    .await
    .context("the load generator's thread")??
}

/// Measures every protocol of `setup` and prints the table.
async fn measure(
    args: &DataplaneArgs,
    binary: &Path,
    setup: Setup,
    skipped: Option<String>,
) -> Result<()> {
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
        "load:       {} req/s on each path, interleaved in one run per protocol (the paths in a \
         fresh random order every round), {} s warm-up + {} s measured; latency from the \
         intended send time",
        args.rate, args.warmup, args.duration
    );
    println!("hosts:      {}", setup.hosts);
    println!(
        "paths:      {}; configured by Weft (ADS {}){}",
        setup.paths,
        args.protocol,
        match args.no_bare {
            true => " (no bare pair: --no-bare)",
            false =>
                "; bare = the same through two Envoys with a minimal static config (HTTP \
                      connection manager, router, one static cluster)",
        }
    );
    if let Some(why) = &skipped {
        println!("transparent: skipped ({why})");
    }
    println!();
    println!(
        "{:<8} {:<11} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>5} {:>6}  verdict",
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
    let mut transparent_sent = 0;
    let mut mtls_sent = 0;
    for paths in &setup.phases {
        let proto = paths.proto;
        let mut targets = vec![paths.direct.clone(), paths.explicit.clone()];
        targets.extend(paths.transparent.clone());
        targets.extend(paths.control.clone());
        targets.extend(paths.mtls.clone());
        targets.extend(paths.bare.clone());
        let pairs = pair_nodes(&setup);
        let envoys0 = pair_cpu(&setup, &pairs);
        let cpu0 = CpuMark::now(setup.server.pid());
        let results = load(&setup.load, targets.clone(), args.rate, warmup, duration).await?;
        let cpu1 = CpuMark::now(setup.server.pid());
        let envoys1 = pair_cpu(&setup, &pairs);
        let (oth, steal) = (cpu0.other_percent(&cpu1), cpu0.steal_percent(&cpu1));
        for (target, r) in targets.iter().zip(&results) {
            print_row(proto, &target.label, r, oth, steal);
        }
        let by_label = |label: &str| {
            targets
                .iter()
                .position(|t| t.label == label)
                .map(|i| &results[i])
        };
        let (Some(d), Some(m)) = (by_label("direct"), by_label("explicit")) else {
            bail!("no direct or explicit result");
        };
        let b = by_label("bare");
        // The path compared with explicit mode: transparent, or the control pair.
        let (t, third) = match (by_label("transparent"), by_label("control")) {
            (Some(t), _) => (Some(t), "transp+"),
            (None, c) => (c, "control+"),
        };
        let q = |r: &TargetResult, x: f64| quantile(&r.latencies, x);
        let added_ms = |over: &TargetResult, base: &TargetResult, x: f64| {
            q(over, x).as_secs_f64() * 1000.0 - q(base, x).as_secs_f64() * 1000.0
        };
        let diff = |over: &TargetResult, base: &TargetResult| -> Vec<String> {
            QUANTILES
                .iter()
                .map(|&x| signed_ms(q(over, x), q(base, x)))
                .collect()
        };
        // What any Envoy pair adds here, and what Weft's config adds on top.
        if let Some(b) = b {
            for (label, row) in [("bare+", diff(b, d)), ("weft+", diff(m, b))] {
                print_cells(proto, label, &row, "");
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
        print_cells(proto, "added", &diff(m, d), &verdict(&missed));
        if let Some(t) = t {
            print_cells(proto, third, &diff(t, d), "");
            // Transparent over explicit, each as added over direct at the same quantile.
            let mut missed = Vec::new();
            let ratios: Vec<String> = QUANTILES
                .iter()
                .map(|&x| {
                    let (te, ee) = (added_ms(t, d, x), added_ms(m, d, x));
                    let within = if ee > 0.0 {
                        te <= RATIO_GOAL * ee
                    } else {
                        te <= ee
                    };
                    if !within && (x == 0.5 || x == 0.99) {
                        missed.push(if x == 0.5 { "p50" } else { "p99" });
                    }
                    match ee > 0.0 {
                        true => format!("{:.2}x", te / ee),
                        false => "n/a".into(),
                    }
                })
                .collect();
            if t.failed > 0 {
                missed.push("errors");
            }
            print_cells(proto, "ratio", &ratios, &verdict(&missed));
            if third == "transp+" {
                transparent_sent += t.sent;
            }
        }
        if let Some(t) = by_label("mtls") {
            print_cells(proto, "mtls+", &diff(t, d), "");
            // The mTLS pair's added latency over the plaintext pair's, each over direct.
            let mut missed = Vec::new();
            let ratios: Vec<String> = QUANTILES
                .iter()
                .map(|&x| {
                    let (te, ee) = (added_ms(t, d, x), added_ms(m, d, x));
                    let within = match ee > 0.0 {
                        true => te <= MTLS_RATIO_GOAL * ee,
                        false => te <= ee,
                    };
                    if !within && x == 0.99 {
                        missed.push("p99");
                    }
                    match ee > 0.0 {
                        true => format!("{:.2}x", te / ee),
                        false => "n/a".into(),
                    }
                })
                .collect();
            if t.failed > 0 {
                missed.push("errors");
            }
            print_cells(proto, "mtls-ratio", &ratios, &verdict(&missed));
            mtls_sent += t.sent;
            // What bounds the tail on a shared machine: the CPU each pair's
            // Envoys spent per request (warm-up included) in this protocol's run.
            let requests = args.rate * (args.warmup + args.duration);
            let per_request = |i: usize| match (envoys0[i], envoys1[i]) {
                (Some(a), Some(b)) if requests > 0.0 => format!(
                    "{:.0} µs",
                    b.saturating_sub(a).as_secs_f64() * 1e6 / requests
                ),
                _ => "?".into(),
            };
            println!(
                "{proto:<8} Envoy CPU per request: plaintext pair {}, mTLS pair {} (client and \
                 server Envoys together)",
                per_request(0),
                per_request(1)
            );
        }
        for r in &results {
            for f in &r.failures {
                println!("  failure: {f}");
            }
        }
    }
    if let Some(envoys) = setup.mtls_envoys.filter(|_| mtls_sent > 0) {
        // Encrypted and mutual, not around the TLS: the server Envoys'
        // listeners (STRICT, a client certificate required) completed
        // handshakes, and the client Envoy's did too.
        let stat = |node: &str, name: &str| {
            setup
                .agents
                .iter()
                .filter(|a| a.node == node)
                .map(|a| a.stat_sum(name))
                .sum::<u64>()
        };
        let client = stat(envoys.client, "ssl.handshake");
        let server: u64 = envoys
            .servers
            .iter()
            .map(|n| stat(n, "ssl.handshake"))
            .sum();
        let no_cert: u64 = envoys
            .servers
            .iter()
            .map(|n| stat(n, "ssl.no_certificate"))
            .sum();
        let answered = stat(envoys.client, "http.egress.downstream_rq_2xx");
        println!();
        println!(
            "mtls: {mtls_sent} measured requests; answered 2xx by the mTLS client Envoy's egress \
             listener {answered} (warm-up included); TLS handshakes: client Envoy {client}, server \
             Envoys {server} (connections without a client certificate: {no_cert}){}",
            match server > 0 && client > 0 && answered >= mtls_sent {
                true => "",
                false => ": NOT every request went over mutual TLS",
            }
        );
    }
    if let Some((client, server)) = setup.transparent_envoys.filter(|_| transparent_sent > 0) {
        // Through both Envoys, not around them: each answered at least
        // every measured request of the path (and the warm-up's).
        let stat = |node: &str, name: &str| {
            setup
                .agents
                .iter()
                .filter(|a| a.node == node)
                .map(|a| a.stat_sum(name))
                .sum::<u64>()
        };
        let egress = stat(client, "http.egress.downstream_rq_2xx");
        let ingress = stat(server, "http.ingress.downstream_rq_2xx");
        println!();
        println!(
            "transparent: {transparent_sent} measured requests; answered 2xx by the client \
             Envoy's egress listener {egress}, by the server Envoy's ingress listener {ingress} \
             (warm-up included){}",
            match egress.min(ingress) >= transparent_sent {
                true => "",
                false => ": NOT every request went through both Envoys",
            }
        );
    }
    println!();
    println!(
        "goal: the pair adds <= 0.23 ms at p90 and <= 0.30 ms at p99 (added = explicit - direct \
         at the same quantile; bare+ = bare - direct, what two minimally configured Envoys add on \
         this machine; weft+ = explicit - bare, what Weft's config adds to that){}. oth% = CPU of \
         everything but the server and this benchmark (the Envoys, the sample apps, other work) \
         in % of one core; steal% = of that, what the hypervisor took from this virtual machine. \
         Envoy NACKs: {}.{}",
        match (&skipped, args.control) {
            // The mTLS pair in place of the transparent path: no transparent goal this run.
            (None, false) if args.mtls => String::new(),
            (None, false) => format!(
                "; transparent mode adds no more than explicit mode: ratio = transp+ / added \
                 <= {RATIO_GOAL:.2} at p50 and p99 (transp+ = transparent - direct)"
            ),
            (None, true) => format!(
                "; A/A (--control): ratio = control+ / added, two identical explicit-mode pairs \
                 (control+ = control - direct), the verdict against {RATIO_GOAL:.2} shows what \
                 noise alone does to the transparent goal's ratio"
            ),
            (Some(_), _) => String::new(),
        },
        setup
            .agents
            .iter()
            .map(|a| a.stat_sum("update_rejected"))
            .sum::<u64>(),
        match args.mtls {
            true => format!(
                " mTLS (--mtls): the mutual-TLS pair adds at most {MTLS_RATIO_GOAL:.2}x what the \
                 plaintext pair adds at p99: mtls-ratio = mtls+ / added (mtls+ = mtls - direct)"
            ),
            false => String::new(),
        }
    );
    Ok(())
}

/// The Envoys of the plaintext (explicit) pair and of the mTLS pair, by
/// virtual node (none for the mTLS pair without --mtls).
fn pair_nodes(setup: &Setup) -> [Vec<&'static str>; 2] {
    let mtls = setup
        .mtls_envoys
        .map(|e| vec![e.client, e.servers[0], e.servers[1]])
        .unwrap_or_default();
    [vec!["client", "server-h1", "server-h2"], mtls]
}

/// The CPU time of each pair's Envoys (`None` if any is unreadable).
fn pair_cpu(setup: &Setup, pairs: &[Vec<&'static str>; 2]) -> [Option<Duration>; 2] {
    pairs.clone().map(|nodes| {
        let mut total = Duration::ZERO;
        for node in nodes {
            let agent = setup.agents.iter().find(|a| a.node == node)?;
            total += agent.envoy_cpu()?;
        }
        Some(total)
    })
}

/// Transparent mode's added latency over explicit mode's, at most.
const RATIO_GOAL: f64 = 1.05;

/// The mTLS pair's added p99 over the plaintext pair's, at most (issue 19).
const MTLS_RATIO_GOAL: f64 = 1.25;

fn verdict(missed: &[&str]) -> String {
    if missed.is_empty() {
        "met".to_string()
    } else {
        format!("MISSED ({})", missed.join(", "))
    }
}

fn print_cells(proto: &str, label: &str, cells: &[String], verdict: &str) {
    println!(
        "{:<8} {:<11} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>5} {:>6}  {}",
        proto, label, "", "", cells[0], cells[1], cells[2], cells[3], "", "", verdict
    );
}

fn print_row(proto: &str, label: &str, r: &TargetResult, oth: f64, steal: f64) {
    let q: Vec<String> = QUANTILES
        .iter()
        .map(|&x| us(quantile(&r.latencies, x)))
        .collect();
    println!(
        "{:<8} {:<11} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>4.0}% {:>5.0}%",
        proto, label, r.sent, r.failed, q[0], q[1], q[2], q[3], oth, steal
    );
}

/// Runs `weft-bench no-drops` and prints its table.
pub async fn run_no_drops(args: NoDropsArgs) -> Result<()> {
    if !(args.rate > 0.0 && args.duration > 0.0) || args.interval_ms == 0 {
        bail!("--rate, --duration and --interval-ms must be positive");
    }
    let binary = server::weft_binary(&args.weft_bin)?;
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
