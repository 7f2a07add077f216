//! `weft-bench telemetry`: what App Mesh's telemetry switches cost Envoy (issue 21's goal: at
//! most 5% more CPU at 1,000 requests/s). Two identical explicit-mode pairs (a client Envoy
//! and a server Envoy in front of one sample app) carry the same open-loop load at the same
//! time: one with telemetry off, one with the Envoy image's variables on — stats tags
//! (`ENABLE_ENVOY_STATS_TAGS`), a DogStatsD sink (`ENABLE_ENVOY_DOG_STATSD`, to a UDP socket
//! this benchmark drains) and X-Ray tracing (`ENABLE_ENVOY_XRAY_TRACING`, segments to another
//! UDP socket), as `envoy-config.md` and `tracing.md` of the App Mesh user guide describe them.
//! The Envoys' CPU is read from `/proc` before and after the load.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::appmesh;
use crate::load::Api;
use crate::machine::{self, ms, quantile, CpuMark};
use crate::openloop::{self, Target};
use crate::procs::{self, Agent, AgentSpec, Place};
use crate::server::{self, Server};

const MESH: &str = "tm";
/// The goal: the telemetry pair's Envoys use at most this much more CPU.
const CPU_GOAL: f64 = 1.05;

/// Flags of `weft-bench telemetry`.
#[derive(clap::Args)]
pub struct TelemetryArgs {
    /// Requests per second sent through each pair (open loop, HTTP/1.1).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Warm-up seconds (not measured).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// X-Ray's sampling rate on the telemetry pair (`XRAY_SAMPLING_RATE`; App Mesh's
    /// default is 0.05).
    #[arg(long, default_value = "0.05")]
    pub xray_sampling_rate: String,
    /// Stats flush interval of the DogStatsD sink (`ENVOY_STATS_FLUSH_INTERVAL`; Envoy's
    /// default is 5 s).
    #[arg(long, default_value = "5s")]
    pub flush_interval: String,
    /// The switches turned on in the telemetry pair (to tell their costs apart).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "stats-tags,dogstatsd,xray"
    )]
    pub switches: Vec<Switch>,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    pub weft_bin: Option<PathBuf>,
}

/// One of App Mesh's telemetry switches.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Switch {
    /// `ENABLE_ENVOY_STATS_TAGS=1`.
    StatsTags,
    /// `ENABLE_ENVOY_DOG_STATSD=1` with its address, port and flush interval.
    Dogstatsd,
    /// `ENABLE_ENVOY_XRAY_TRACING=1` with its port and sampling rate.
    Xray,
}

/// A UDP socket on loopback whose datagrams a thread counts (and drops) until stopped.
struct Sink {
    port: u16,
    packets: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn bind() -> Result<Sink> {
        let socket = UdpSocket::bind("127.0.0.1:0").context("binding a UDP sink")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let port = socket.local_addr()?.port();
        let packets = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (packets.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !s.load(Ordering::Relaxed) {
                if socket.recv(&mut buf).is_ok() {
                    p.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Sink {
            port,
            packets,
            stop,
            thread: Some(thread),
        })
    }

    fn packets(&self) -> u64 {
        self.packets.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One pair: its client agent (egress) and server agent.
struct Pair {
    label: &'static str,
    service: String,
    client: Agent,
    server: Agent,
}

impl Pair {
    fn envoy_cpu(&self) -> Option<Duration> {
        Some(self.client.envoy_cpu()? + self.server.envoy_cpu()?)
    }
}

/// Creates pair `label`'s nodes, router and service and starts its two agents with `env`.
async fn pair(
    binary: &std::path::Path,
    server: &Server,
    api: &Api,
    label: &'static str,
    app_port: u16,
    env: &[(&'static str, String)],
) -> Result<Pair> {
    let upstream = format!("server-{label}");
    let port = procs::free_port()?;
    appmesh::create_node(
        api,
        MESH,
        appmesh::node_body(&upstream, port, "http", "127.0.0.1", &[]),
    )
    .await?;
    let router = format!("router-{label}");
    let service = format!("{label}.{MESH}.local");
    appmesh::create_router(api, MESH, &router, 8080, "http").await?;
    appmesh::create_route(
        api,
        MESH,
        &router,
        "main",
        appmesh::route_spec("http", &[(upstream.clone(), 1)]),
    )
    .await?;
    appmesh::create_service(api, MESH, &service, &router).await?;
    let client_node = format!("client-{label}");
    appmesh::create_node(
        api,
        MESH,
        appmesh::node_body(
            &client_node,
            procs::free_port()?,
            "http",
            "127.0.0.1",
            std::slice::from_ref(&service),
        ),
    )
    .await?;
    let start = |node: &str, app_ports: Option<(u16, u16)>| {
        let mut vars = vec![("WEFT_LISTENER_MODE", "explicit".to_string())];
        if let Some((listener, app)) = app_ports {
            vars.push(("WEFT_APP_PORTS", format!("{listener}={app}")));
        }
        vars.extend(env.iter().cloned());
        let spec = AgentSpec {
            place: Place::here(),
            admin_port: procs::free_port()?,
            egress_port: procs::free_port()?,
            ingress_port: procs::free_port()?,
            env: vars,
        };
        procs::agent_with(binary, &server.xds_addr, MESH, node, "delta", spec)
    };
    let upstream_agent = start(&upstream, Some((port, app_port)))?;
    let client = start(&client_node, None)?;
    for a in [&upstream_agent, &client] {
        a.wait_ready(Duration::from_secs(30)).await?;
    }
    let egress = client.egress_port;
    procs::wait_until(
        Duration::from_secs(30),
        &format!("a route to {service}"),
        || procs::answers_200(egress, &service),
    )
    .await?;
    Ok(Pair {
        label,
        service,
        client,
        server: upstream_agent,
    })
}

/// Runs the benchmark and prints its table.
pub async fn run(args: TelemetryArgs) -> Result<()> {
    if !(args.rate > 0.0 && args.duration > 0.0 && args.warmup >= 0.0) {
        bail!("--rate and --duration must be positive, --warmup not negative");
    }
    let binary = server::weft_binary(&args.weft_bin)?;
    let data = tempfile::Builder::new()
        .prefix("weft-bench-telemetry-")
        .tempdir()
        .context("creating a temporary data folder")?;
    let mut server = Server::start(&binary, &data.path().join("data"), &[])?;
    let api = Arc::new(Api::new(&server.url, 4));
    appmesh::create_mesh(&api, MESH).await?;
    let (_app, app_port) = procs::sample_app(&binary, "app").await?;
    let statsd = Sink::bind()?;
    let xray = Sink::bind()?;
    let mut telemetry: Vec<(&'static str, String)> = Vec::new();
    if args.switches.contains(&Switch::StatsTags) {
        telemetry.push(("ENABLE_ENVOY_STATS_TAGS", "1".into()));
    }
    if args.switches.contains(&Switch::Dogstatsd) {
        telemetry.extend([
            ("ENABLE_ENVOY_DOG_STATSD", "1".into()),
            ("STATSD_ADDRESS", "127.0.0.1".into()),
            ("STATSD_PORT", statsd.port.to_string()),
            ("ENVOY_STATS_FLUSH_INTERVAL", args.flush_interval.clone()),
        ]);
    }
    if args.switches.contains(&Switch::Xray) {
        telemetry.extend([
            ("ENABLE_ENVOY_XRAY_TRACING", "1".into()),
            ("XRAY_DAEMON_PORT", xray.port.to_string()),
            ("XRAY_SAMPLING_RATE", args.xray_sampling_rate.clone()),
        ]);
    }
    let off = pair(&binary, &server, &api, "off", app_port, &[]).await?;
    let on = pair(&binary, &server, &api, "on", app_port, &telemetry).await?;
    let pairs = [off, on];
    let targets: Vec<Target> = pairs
        .iter()
        .map(|p| Target {
            label: p.label.into(),
            addr: format!("127.0.0.1:{}", p.client.egress_port),
            host: p.service.clone(),
            http2: false,
        })
        .collect();
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    // The CPU is read over the whole load (warm-up included) on both pairs alike.
    let before: Vec<Option<Duration>> = pairs.iter().map(Pair::envoy_cpu).collect();
    let (statsd0, xray0) = (statsd.packets(), xray.packets());
    let mark = CpuMark::now(server.pid());
    let started = std::time::Instant::now();
    let results = openloop::run_in_order(
        &targets,
        args.rate,
        warmup,
        duration,
        openloop::Order::Shuffled,
    )
    .await?;
    let wall = started.elapsed();
    let mark1 = CpuMark::now(server.pid());
    let after: Vec<Option<Duration>> = pairs.iter().map(Pair::envoy_cpu).collect();
    // Let the last flush and segments arrive before counting them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (statsd_n, xray_n) = (statsd.packets() - statsd0, xray.packets() - xray0);
    server.check_alive()?;

    println!(
        "weft-bench telemetry: Envoy's CPU with App Mesh's telemetry switches on vs off, same load, same run"
    );
    println!("date:       {}", machine::utc_now());
    println!("machine:    {}", machine::describe());
    println!("server:     {}", binary.display());
    if let Some(load) = machine::load_average() {
        println!("load avg:   {load:.2} (1 min, before the run)");
    }
    println!(
        "pairs:      off and on, each client Envoy (egress, explicit mode) -> server Envoy \
         (ingress) -> one shared sample app, Envoys --concurrency 1, ADS delta; on = {}",
        telemetry
            .iter()
            .map(|(k, v)| match k.starts_with("ENABLE") {
                true => format!("{k}={v}"),
                false => format!("{k}={}", if k.ends_with("PORT") { "<sink>" } else { v }),
            })
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "load:       open loop, {} requests/s through each pair at the same time (HTTP/1.1, \
         interleaved), {:.0} s warm-up + {:.0} s measured; CPU read from /proc over all {:.1} s",
        args.rate,
        args.warmup,
        args.duration,
        wall.as_secs_f64()
    );
    println!();
    println!(
        "{:<5} {:>8} {:>7} {:>8} {:>8} {:>11} {:>12}",
        "pair", "sent", "failed", "p50 ms", "p99 ms", "Envoy CPU", "µs/request"
    );
    let mut per_request = Vec::new();
    for ((p, r), (b, a)) in pairs.iter().zip(&results).zip(before.iter().zip(&after)) {
        let cpu = match (b, a) {
            (Some(b), Some(a)) => Some(a.saturating_sub(*b)),
            _ => None,
        };
        let sent_all = args.rate * wall.as_secs_f64();
        let us = cpu.map(|c| c.as_secs_f64() * 1e6 / sent_all.max(1.0));
        per_request.push(cpu);
        println!(
            "{:<5} {:>8} {:>7} {:>8} {:>8} {:>10} {:>12}",
            p.label,
            r.sent,
            r.failed,
            ms(quantile(&r.latencies, 0.5)),
            ms(quantile(&r.latencies, 0.99)),
            cpu.map_or("?".into(), |c| format!(
                "{:.1}%",
                100.0 * c.as_secs_f64() / wall.as_secs_f64()
            )),
            us.map_or("?".into(), |u| format!("{u:.0}")),
        );
    }
    println!();
    match (per_request[0], per_request[1]) {
        (Some(off), Some(on)) if off > Duration::ZERO => {
            let ratio = on.as_secs_f64() / off.as_secs_f64();
            println!(
                "telemetry on / off: Envoy CPU x{ratio:.3} (goal <= x{CPU_GOAL:.2}: {}); \
                 received {statsd_n} DogStatsD datagrams and {xray_n} X-Ray segment datagrams \
                 from the on pair, server {:.0}% and everything else {:.0}% of a core, steal {:.0}%",
                if ratio <= CPU_GOAL && results.iter().all(|r| r.failed == 0) {
                    "met"
                } else {
                    "MISSED"
                },
                100.0 * mark.delta(&mark1).0.as_secs_f64() / wall.as_secs_f64(),
                mark.other_percent(&mark1),
                mark.steal_percent(&mark1),
            );
        }
        _ => println!("the Envoys' CPU could not be read from /proc"),
    }
    if statsd_n == 0 && args.switches.contains(&Switch::Dogstatsd) {
        println!("NOTE: no DogStatsD datagram arrived: the telemetry pair's sink did not work");
    }
    for (p, r) in pairs.iter().zip(&results) {
        if let Some(f) = r.failures.first() {
            println!("{}: first failure: {f}", p.label);
        }
    }
    drop(pairs);
    drop(server);
    Ok(())
}
