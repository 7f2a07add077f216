//! `weft-bench abuse`: hostile and careless clients against a real `weft
//! server` (issue 16), with one well-behaved client measured alongside.
//!
//! The server runs with its default limits on a fresh data folder. A
//! well-behaved client (its own access key) sends an open loop of
//! DescribeVirtualNode and, one request in `--update-every`, an
//! UpdateVirtualNode, in every phase; each latency runs from the request's
//! scheduled time. The phases, in order, each abuse running through a
//! warm-up and the measured window:
//!
//! - `baseline`: no abuse.
//! - `slow-headers`: connections trickling a request head, one byte per
//!   `--slow-byte-ms`.
//! - `idle-flood`: connections to the API and the xDS ports that never send
//!   a byte; one the server closes is opened again after `--reconnect-ms`.
//! - `large-bodies`: another access key sending bodies just over the
//!   server's 256 KiB limit and valid updates just under it, in a loop.
//! - `token-flood`: another access key sending UpdateVirtualNode with a fresh
//!   `clientToken` each, `--token-workers` at once.
//! - `request-flood`: another access key keeping `--flood-requests`
//!   DescribeVirtualNode requests in flight at once.
//!
//! At the end of each measured window (abuse still running) the server's
//! RSS, open descriptors and data-folder size are read from `/proc` and
//! the disk; after the abuse stopped, its descriptors again and `/healthz`.
//! Everything binds and connects to loopback only; every loop ends at its
//! phase's end and has a count bound.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, timeout_at};

use crate::load::{self, Api};
use crate::machine::{self, CpuMark};
use crate::server::{self, Server};

/// The mesh every client works in.
const MESH: &str = "abuse";
/// Access key of the well-behaved client.
const GOOD_KEY: &str = "AKIDWELLBEHAVED00001";
/// Access keys of the abusers that send whole requests.
const LARGE_KEY: &str = "AKIDLARGEBODIES00001";
const TOKEN_KEY: &str = "AKIDTOKENFLOOD000001";
const FLOOD_KEY: &str = "AKIDREQUESTFLOOD0001";
/// The server's body limit (its default, `DEFAULT_MAX_BODY_BYTES`).
const BODY_LIMIT: usize = 256 * 1024;
/// Size of the abusers' valid updates: just under the limit.
const NEAR_LIMIT: usize = BODY_LIMIT - 4 * 1024;
/// A request of the well-behaved client or an abuser that takes longer
/// than this counts as failed (timed out).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The abuse goes on this long past the measured window, so that the
/// server's figures are read while it still runs.
const SAMPLE_MARGIN: Duration = Duration::from_millis(300);
/// Time the abusers get to stop after their phase ends before they are aborted.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Pause after a phase before the next starts and its descriptors are counted again.
const SETTLE: Duration = Duration::from_secs(1);
/// Bound on the requests of one abuser task (besides its phase's end).
const MAX_REQUESTS_PER_TASK: u64 = 1_000_000;
/// Bound on the connections one raw-connection abuser task opens.
const MAX_CONNECTS_PER_TASK: u64 = 10_000;
/// Connection attempts in progress at once, per target port.
const CONNECTS_AT_ONCE: usize = 256;
/// How often the server's RSS and descriptors are sampled for the peaks.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Most abusers of each kind (a typo must not open a million sockets).
const MAX_ABUSERS: usize = 20_000;

#[derive(clap::Args)]
pub struct AbuseArgs {
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds each phase's abuse runs before the measurement (connections
    /// opening, loops starting); the well-behaved client's requests in it
    /// are not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Requests per second of the well-behaved client (open loop).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// One request in this many of the well-behaved client is an
    /// UpdateVirtualNode; the others are DescribeVirtualNode.
    #[arg(long, default_value_t = 10)]
    update_every: u64,
    /// Virtual nodes the well-behaved client reads and updates.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// slow-headers: connections trickling a request head.
    #[arg(long, default_value_t = 500)]
    slow_connections: usize,
    /// slow-headers: milliseconds between two bytes of a head.
    #[arg(long, default_value_t = 500)]
    slow_byte_ms: u64,
    /// idle-flood: idle connections to the API port.
    #[arg(long, default_value_t = 2000)]
    idle_api: usize,
    /// idle-flood: idle connections to the xDS port.
    #[arg(long, default_value_t = 2000)]
    idle_xds: usize,
    /// slow-headers and idle-flood: milliseconds before a connection the
    /// server closed is opened again.
    #[arg(long, default_value_t = 1000)]
    reconnect_ms: u64,
    /// large-bodies: concurrent senders of over-limit bodies and of valid
    /// near-limit updates (half each).
    #[arg(long, default_value_t = 8)]
    large_workers: usize,
    /// token-flood: concurrent senders of UpdateVirtualNode (the server's
    /// default in-flight cap per client is 64).
    #[arg(long, default_value_t = 64)]
    token_workers: usize,
    /// request-flood: DescribeVirtualNode requests kept in flight at once.
    #[arg(long, default_value_t = 2000)]
    flood_requests: usize,
    /// Phases to run, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,slow-headers,idle-flood,large-bodies,token-flood,request-flood"
    )]
    phases: Vec<AbusePhase>,
    /// Extra flags for `weft server` (default: none, so the server's default
    /// limits are what is measured), e.g. `--server-arg=--max-connections=4096`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    weft_bin: Option<PathBuf>,
    /// Parent folder of the server's fresh data folder (default: the system temp folder).
    #[arg(long)]
    data_parent: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum AbusePhase {
    Baseline,
    SlowHeaders,
    IdleFlood,
    LargeBodies,
    TokenFlood,
    RequestFlood,
}

impl AbusePhase {
    fn name(self) -> &'static str {
        match self {
            AbusePhase::Baseline => "baseline",
            AbusePhase::SlowHeaders => "slow-headers",
            AbusePhase::IdleFlood => "idle-flood",
            AbusePhase::LargeBodies => "large-bodies",
            AbusePhase::TokenFlood => "token-flood",
            AbusePhase::RequestFlood => "request-flood",
        }
    }
}

/// The goal for the well-behaved client in an abuse phase: p99 within
/// `RATIO` × its baseline p99 or within `FLOOR` (whichever is larger), and
/// no failed request.
const RATIO: f64 = 5.0;
const FLOOR: Duration = Duration::from_millis(50);

/// What one kind of abuser got, counted across its tasks.
#[derive(Default)]
struct Tally {
    /// Answers by HTTP status.
    statuses: BTreeMap<u16, u64>,
    /// Connections opened (raw-connection abusers).
    opened: u64,
    /// Connections the server closed or reset.
    closed: u64,
    /// Connections refused (connect failed).
    refused: u64,
    /// Requests not answered within [`REQUEST_TIMEOUT`].
    timeouts: u64,
    /// Other failures.
    other: u64,
    /// The first of those, as an example.
    first_other: Option<String>,
    /// Bytes the server sent to connections that never sent a request.
    bytes_in: u64,
    /// Shortest and longest life of a connection the server closed.
    closed_after: Option<(Duration, Duration)>,
    /// Longest wait for a connection to open (a full accept queue drops
    /// the SYN, and the client sends it again 1 s, 3 s, 7 s … later).
    slowest_connect: Duration,
}

type SharedTally = Arc<Mutex<Tally>>;

fn lock(t: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tally {
    /// Counts a connection the server closed after `life`.
    fn closed_after(&mut self, life: Duration) {
        self.closed += 1;
        self.closed_after = Some(match self.closed_after {
            None => (life, life),
            Some((a, b)) => (a.min(life), b.max(life)),
        });
    }

    fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, n)| format!("{status}×{n}"))
            .collect();
        for (label, n) in [
            ("opened", self.opened),
            ("closed by the server", self.closed),
            ("refused", self.refused),
            ("timed out", self.timeouts),
            ("failed", self.other),
        ] {
            if n > 0 || (label == "closed by the server" && self.opened > 0) {
                parts.push(format!("{label} {n}"));
            }
        }
        if let Some((first, last)) = self.closed_after {
            parts.push(format!(
                "closed after {:.1}–{:.1} s",
                first.as_secs_f64(),
                last.as_secs_f64()
            ));
        }
        if self.opened > 0 {
            parts.push(format!(
                "slowest connect {} ms",
                machine::ms(self.slowest_connect)
            ));
        }
        if self.bytes_in > 0 {
            parts.push(format!("{} bytes received", self.bytes_in));
        }
        if parts.is_empty() {
            "nothing".into()
        } else {
            parts.join(", ")
        }
    }

    /// Counts the outcome of one request of an abuser.
    fn count(&mut self, outcome: Result<Result<(StatusCode, Bytes)>, tokio::time::error::Elapsed>) {
        match outcome {
            Err(_) => self.timeouts += 1,
            Ok(Ok((status, _))) => *self.statuses.entry(status.as_u16()).or_default() += 1,
            Ok(Err(e)) => match failure_kind(&e) {
                Failure::Refused => self.refused += 1,
                Failure::Closed => self.closed += 1,
                Failure::Other => {
                    self.other += 1;
                    self.first_other.get_or_insert_with(|| format!("{e:#}"));
                }
            },
        }
    }
}

enum Failure {
    Refused,
    Closed,
    Other,
}

/// Whether a failed request's connection was refused, closed by the
/// server, or something else.
fn failure_kind(e: &anyhow::Error) -> Failure {
    if let Some(client) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
        if client.is_connect() {
            return Failure::Refused;
        }
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return Failure::Closed;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) {
                return Failure::Closed;
            }
        }
        source = err.source();
    }
    Failure::Other
}

/// What the well-behaved client saw in one phase's measured window.
#[derive(Default)]
struct GoodResult {
    /// Latencies of every measured request (answered or not), sorted.
    latencies: Vec<Duration>,
    /// Measured requests that failed: a status other than 200, a
    /// transport failure or no answer within [`REQUEST_TIMEOUT`].
    errors: u64,
    /// Failures by kind (`429`, `closed`, …).
    kinds: BTreeMap<String, u64>,
    /// The first failure, described.
    first_error: Option<String>,
    /// Requests scheduled in the measured window that were not answered
    /// (still in flight when the drain ended).
    unanswered: u64,
}

/// One phase's figures.
struct Row {
    phase: AbusePhase,
    good: GoodResult,
    abusers: Vec<(&'static str, Tally)>,
    /// CPU of the server, of this benchmark, steal and everything else, in
    /// % of one core, over the measured window.
    cpu: [String; 4],
    rss_end_kib: Option<u64>,
    rss_peak_kib: Option<u64>,
    fds_end: Option<usize>,
    fds_peak: Option<usize>,
    fds_after: Option<usize>,
    rss_after_kib: Option<u64>,
    data_bytes: Option<u64>,
    health: String,
}

/// Everything a phase needs.
struct Ctx {
    args: AbuseArgs,
    pid: u32,
    base: String,
    api_addr: SocketAddr,
    xds_addr: SocketAddr,
    data_dir: PathBuf,
}

pub async fn run(args: AbuseArgs) -> Result<()> {
    let valid = |secs: f64| secs.is_finite() && secs >= 0.0;
    if !valid(args.duration) || args.duration == 0.0 || !valid(args.warmup) {
        bail!("--duration must be positive and --warmup not negative");
    }
    if args.duration > 600.0 || args.warmup > 60.0 {
        bail!("--duration is at most 600 s and --warmup at most 60 s");
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 10_000.0) {
        bail!("--rate must be a positive number of requests per second, at most 10,000");
    }
    if args.nodes == 0 || args.update_every == 0 {
        bail!("--nodes and --update-every must be at least 1");
    }
    for (flag, n) in [
        ("--slow-connections", args.slow_connections),
        ("--idle-api", args.idle_api),
        ("--idle-xds", args.idle_xds),
        ("--large-workers", args.large_workers),
        ("--token-workers", args.token_workers),
        ("--flood-requests", args.flood_requests),
    ] {
        if n > MAX_ABUSERS {
            bail!("{flag} is at most {MAX_ABUSERS}");
        }
    }
    let nofile = raise_open_file_limit();
    let wanted =
        args.slow_connections.max(args.idle_api + args.idle_xds) + args.flood_requests + 256;
    if (nofile as usize) < wanted {
        eprintln!(
            "warning: this process may open {wanted} files but its limit is {nofile}; some abusers' \
             connections will fail here, not in the server"
        );
    }

    let binary = server::weft_binary(&args.weft_bin)?;
    let data = match &args.data_parent {
        Some(parent) => tempfile::Builder::new()
            .prefix("weft-bench-abuse-")
            .tempdir_in(parent),
        None => tempfile::Builder::new()
            .prefix("weft-bench-abuse-")
            .tempdir(),
    }
    .context("creating a temporary data folder")?;
    let data_dir = data.path().join("data");
    // The server's default limits unless told otherwise: the point is what
    // a default server does.
    let mut server = Server::start(&binary, &data_dir, &args.server_args)?;
    let api_addr = loopback_addr(server.url.trim_start_matches("http://"))?;
    let xds_addr = loopback_addr(&server.xds_addr)?;

    let setup = Instant::now();
    let admin = Arc::new(Api::new(&server.url, 16));
    load::create_mesh(&admin, MESH).await?;
    load::create_nodes(admin.clone(), MESH, args.nodes, 8).await?;
    let large_nodes = args.large_workers.div_ceil(2);
    create_named(&admin, "big", large_nodes).await?;
    create_named(&admin, "tok", args.token_workers).await?;
    let setup = setup.elapsed();

    println!("weft-bench abuse: a well-behaved client next to hostile and careless ones");
    println!("date:       {}", machine::utc_now());
    println!("machine:    {}", machine::describe());
    println!("server:     {} (pid {})", binary.display(), server.pid());
    match args.server_args.is_empty() {
        true => println!("            default limits (`weft server` with no limit flags)"),
        false => println!("            with {}", args.server_args.join(" ")),
    }
    println!("data dir:   {}", data_dir.display());
    if let Some(load) = machine::load_average() {
        println!("load avg:   {load:.2} (1 min, before the run; other work on the machine skews the figures)");
    }
    println!("open files: this process may hold {nofile}");
    println!(
        "client:     open loop, {} requests/s (DescribeVirtualNode over {} nodes; one in {} an \
         UpdateVirtualNode), access key {GOOD_KEY}, latency from each request's scheduled time",
        args.rate, args.nodes, args.update_every
    );
    println!(
        "phases:     {:.1} s of abuse before + {:.1} s measured each; figures of the server read at \
         the end of the measured window, abuse still running",
        args.warmup, args.duration
    );
    println!(
        "setup:      mesh {MESH:?} with {} + {} + {} virtual nodes in {:.2} s",
        args.nodes,
        large_nodes,
        args.token_workers,
        setup.as_secs_f64()
    );
    println!();

    let ctx = Ctx {
        pid: server.pid(),
        base: server.url.clone(),
        api_addr,
        xds_addr,
        data_dir,
        args,
    };
    let mut rows = Vec::new();
    for &phase in &ctx.args.phases {
        let row = run_phase(&ctx, phase).await?;
        server
            .check_alive()
            .with_context(|| format!("the server exited during the {} phase", phase.name()))?;
        rows.push(row);
    }
    print_report(&ctx, &rows);
    drop(server);
    Ok(())
}

/// Raises this process's soft open-file limit to its hard limit (the
/// floods hold thousands of sockets) and returns the limit in force.
fn raise_open_file_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: current.maximum,
        maximum: current.maximum,
    };
    if current.current != current.maximum && setrlimit(Resource::Nofile, raised).is_ok() {
        return current.maximum.unwrap_or(u64::MAX);
    }
    current.current.unwrap_or(u64::MAX)
}

/// `host:port` as a socket address, which must be on loopback.
fn loopback_addr(text: &str) -> Result<SocketAddr> {
    let addr: SocketAddr = text
        .trim()
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("the server's address {text:?}"))?;
    if !addr.ip().is_loopback() {
        bail!("the server listens on {addr}, not on loopback: refusing to abuse it");
    }
    Ok(addr)
}

/// Creates virtual nodes `PREFIX-0000` … in the mesh.
async fn create_named(api: &Api, prefix: &str, count: usize) -> Result<()> {
    for i in 0..count {
        let name = format!("{prefix}-{i:04}");
        api.call_ok(
            Method::PUT,
            &load::nodes_path(MESH),
            Some(load::create_body(MESH, &name, i as u64)),
        )
        .await
        .with_context(|| format!("creating virtual node {name}"))?;
    }
    Ok(())
}

async fn run_phase(ctx: &Ctx, phase: AbusePhase) -> Result<Row> {
    let args = &ctx.args;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let measure_end = measure_from + Duration::from_secs_f64(args.duration);
    let stop = measure_end + SAMPLE_MARGIN;

    let mut abusers = JoinSet::new();
    let tallies = start_abusers(ctx, phase, stop, &mut abusers)?;

    let sampler = tokio::spawn(sample_peaks(ctx.pid, measure_end));
    let pid = ctx.pid;
    let data_dir = ctx.data_dir.clone();
    let window = async move {
        sleep_until(measure_from.into()).await;
        let before = CpuMark::now(pid);
        sleep_until(measure_end.into()).await;
        let after = CpuMark::now(pid);
        let rss = machine::rss_kib(pid);
        let fds = open_fds(pid);
        let data = tokio::task::spawn_blocking(move || disk_usage(&data_dir))
            .await
            .ok()
            .flatten();
        (cpu_percent(&before, &after), rss, fds, data)
    };
    // The well-behaved client runs on a thread and runtime of its own, so
    // that its latency is the server's and not this process's backlog of
    // abuser tasks.
    let good = {
        let (base, rate, nodes, update_every) =
            (ctx.base.clone(), args.rate, args.nodes, args.update_every);
        tokio::task::spawn_blocking(move || -> Result<GoodResult> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let api = Arc::new(Api::signed(&base, 16, GOOD_KEY)?);
                let schedule = Schedule {
                    rate,
                    nodes,
                    update_every,
                    start,
                    measure_from,
                    measure_end,
                };
                Ok(well_behaved(api, schedule).await)
            })
        })
    };
    let (good, (cpu, rss_end_kib, fds_end, data_bytes)) = tokio::join!(good, window);
    let good = good.context("the well-behaved client's thread")??;
    let (rss_peak_kib, fds_peak) = sampler.await.unwrap_or((None, None));

    // The abusers stop at `stop`; give them a grace, then abort the rest.
    let drained = timeout(STOP_GRACE, async {
        while abusers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        abusers.abort_all();
        while abusers.join_next().await.is_some() {}
    }
    tokio::time::sleep(SETTLE).await;
    let fds_after = open_fds(ctx.pid);
    let rss_after_kib = machine::rss_kib(ctx.pid);
    let health = health(&ctx.base).await;
    let abusers = tallies
        .into_iter()
        .map(|(label, t)| {
            let tally = std::mem::take(&mut *lock(&t));
            (label, tally)
        })
        .collect();
    Ok(Row {
        phase,
        good,
        abusers,
        cpu,
        rss_end_kib,
        rss_peak_kib,
        fds_end,
        fds_peak,
        fds_after,
        rss_after_kib,
        data_bytes,
        health,
    })
}

/// Starts the phase's abusers (each ends by `stop`); returns their tallies
/// with a label each.
fn start_abusers(
    ctx: &Ctx,
    phase: AbusePhase,
    stop: Instant,
    tasks: &mut JoinSet<()>,
) -> Result<Vec<(&'static str, SharedTally)>> {
    let args = &ctx.args;
    let reconnect = Duration::from_millis(args.reconnect_ms);
    let mut tallies = Vec::new();
    match phase {
        AbusePhase::Baseline => {}
        AbusePhase::SlowHeaders => {
            let tally = SharedTally::default();
            let head = Bytes::from(format!(
                "GET {}/node-0000 HTTP/1.1\r\nHost: {}\r\nUser-Agent: weft-bench-slow-headers\r\n\
                 X-Padding: {}\r\n\r\n",
                load::nodes_path(MESH),
                ctx.api_addr,
                "a".repeat(200)
            ));
            let interval = Duration::from_millis(args.slow_byte_ms.max(1));
            let connects = Arc::new(Semaphore::new(CONNECTS_AT_ONCE));
            for _ in 0..args.slow_connections {
                tasks.spawn(hold(
                    ctx.api_addr,
                    Some((head.clone(), interval)),
                    stop,
                    reconnect,
                    connects.clone(),
                    tally.clone(),
                ));
            }
            tallies.push(("trickling heads", tally));
        }
        AbusePhase::IdleFlood => {
            for (label, addr, count) in [
                ("idle API", ctx.api_addr, args.idle_api),
                ("idle xDS", ctx.xds_addr, args.idle_xds),
            ] {
                let tally = SharedTally::default();
                let connects = Arc::new(Semaphore::new(CONNECTS_AT_ONCE));
                for _ in 0..count {
                    tasks.spawn(hold(
                        addr,
                        None,
                        stop,
                        reconnect,
                        connects.clone(),
                        tally.clone(),
                    ));
                }
                tallies.push((label, tally));
            }
        }
        AbusePhase::LargeBodies => {
            let api = Arc::new(Api::signed(&ctx.base, args.large_workers, LARGE_KEY)?);
            let over = SharedTally::default();
            let near = SharedTally::default();
            for w in 0..args.large_workers {
                let api = api.clone();
                let node = format!("big-{:04}", w / 2);
                let (tally, size) = match w % 2 {
                    0 => (over.clone(), BODY_LIMIT + 1),
                    _ => (near.clone(), NEAR_LIMIT),
                };
                tasks.spawn(async move {
                    let path = format!("{}/{node}", load::nodes_path(MESH));
                    let mut i = 0u64;
                    while Instant::now() < stop && i < MAX_REQUESTS_PER_TASK {
                        i += 1;
                        let body = large_update(&node, w as u64 * MAX_REQUESTS_PER_TASK + i, size);
                        let outcome =
                            timeout(REQUEST_TIMEOUT, api.call(Method::PUT, &path, Some(body)))
                                .await;
                        lock(&tally).count(outcome);
                    }
                });
            }
            tallies.push(("over 256 KiB", over));
            tallies.push(("valid, near 256 KiB", near));
        }
        AbusePhase::TokenFlood => {
            let api = Arc::new(Api::signed(&ctx.base, args.token_workers, TOKEN_KEY)?);
            let tally = SharedTally::default();
            for w in 0..args.token_workers {
                let api = api.clone();
                let tally = tally.clone();
                tasks.spawn(async move {
                    let node = format!("tok-{w:04}");
                    let path = format!("{}/{node}", load::nodes_path(MESH));
                    let mut i = 0u64;
                    while Instant::now() < stop && i < MAX_REQUESTS_PER_TASK {
                        i += 1;
                        let body = load::update_body(MESH, &node, i);
                        let outcome =
                            timeout(REQUEST_TIMEOUT, api.call(Method::PUT, &path, Some(body)))
                                .await;
                        lock(&tally).count(outcome);
                    }
                });
            }
            tallies.push(("fresh tokens", tally));
        }
        AbusePhase::RequestFlood => {
            let api = Arc::new(Api::signed(&ctx.base, args.flood_requests, FLOOD_KEY)?);
            let tally = SharedTally::default();
            let nodes = args.nodes;
            for w in 0..args.flood_requests {
                let api = api.clone();
                let tally = tally.clone();
                tasks.spawn(async move {
                    let mut i = 0u64;
                    while Instant::now() < stop && i < MAX_REQUESTS_PER_TASK {
                        let path = format!(
                            "{}/{}",
                            load::nodes_path(MESH),
                            load::node_name((w + i as usize) % nodes)
                        );
                        i += 1;
                        let outcome =
                            timeout(REQUEST_TIMEOUT, api.call(Method::GET, &path, None)).await;
                        lock(&tally).count(outcome);
                    }
                });
            }
            tallies.push(("concurrent requests", tally));
        }
    }
    Ok(tallies)
}

/// An UpdateVirtualNode body of `size` bytes that is valid in every way
/// but its size: the node's spec with a backend default whose TLS
/// validation lists subject alternative names (254 characters each, as
/// many as fill the size; the model bounds neither the list nor the body).
fn large_update(node: &str, variant: u64, size: usize) -> Bytes {
    let spec = load::node_spec(MESH, node, variant);
    // The spec without its closing brace, then the backend defaults.
    let open = spec.strip_suffix('}').unwrap_or(&spec);
    let mut body = String::with_capacity(size + 512);
    body.push_str(&format!(
        r#"{{"clientToken":"{}","spec":{open},"backendDefaults":{{"clientPolicy":{{"tls":{{"validation":{{"trust":{{"file":{{"certificateChain":"/etc/ssl/ca.pem"}}}},"subjectAlternativeNames":{{"match":{{"exact":["#,
        load::client_token()
    ));
    // The list, then match, subjectAlternativeNames, validation, tls,
    // clientPolicy, backendDefaults, spec and the body.
    const CLOSE: &str = "]}}}}}}}}";
    let mut n = 0u64;
    loop {
        let name = format!("{variant:x}-{n}.");
        let fill = 254 - name.len();
        let entry_len = 254 + 2 + usize::from(n > 0);
        if body.len() + entry_len + CLOSE.len() > size {
            break;
        }
        if n > 0 {
            body.push(',');
        }
        body.push('"');
        body.push_str(&name);
        body.extend(std::iter::repeat_n('s', fill));
        body.push('"');
        n += 1;
    }
    body.push_str(CLOSE);
    // Pad to the exact size with whitespace (valid JSON).
    let pad = size.saturating_sub(body.len());
    body.extend(std::iter::repeat_n(' ', pad));
    Bytes::from(body)
}

/// How a raw connection of an abuser ended.
enum Ended {
    /// The phase is over (the connection was still open).
    PhaseOver,
    /// The server closed or reset it.
    Closed,
}

/// Holds connections to `addr` until `stop`: idle (`trickle` is `None`) or
/// sending `head` one byte per interval. A connection the server closes is
/// opened again after `reconnect`.
async fn hold(
    addr: SocketAddr,
    trickle: Option<(Bytes, Duration)>,
    stop: Instant,
    reconnect: Duration,
    connects: Arc<Semaphore>,
    tally: SharedTally,
) {
    let mut attempts = 0;
    while Instant::now() < stop && attempts < MAX_CONNECTS_PER_TASK {
        attempts += 1;
        let connected = timeout_at(stop.into(), async {
            let _permit = connects.acquire().await;
            let asked = Instant::now();
            TcpStream::connect(addr).await.map(|s| (s, asked.elapsed()))
        })
        .await;
        let (stream, took) = match connected {
            Err(_) => break,
            Ok(Ok(connected)) => connected,
            Ok(Err(_)) => {
                lock(&tally).refused += 1;
                sleep_until((Instant::now() + reconnect).min(stop).into()).await;
                continue;
            }
        };
        {
            let mut t = lock(&tally);
            t.opened += 1;
            t.slowest_connect = t.slowest_connect.max(took);
        }
        let opened = Instant::now();
        let ended = match &trickle {
            None => idle(stream, stop, &tally).await,
            Some((head, interval)) => trickle_head(stream, head, *interval, stop, &tally).await,
        };
        match ended {
            Ended::PhaseOver => break,
            Ended::Closed => lock(&tally).closed_after(opened.elapsed()),
        }
        sleep_until((Instant::now() + reconnect).min(stop).into()).await;
    }
}

/// Reads until the server closes the connection or the phase ends,
/// counting what the server sends (an HTTP/2 server's settings, an
/// answer's status).
async fn idle(mut stream: TcpStream, stop: Instant, tally: &SharedTally) -> Ended {
    let mut buf = [0u8; 4096];
    loop {
        match timeout_at(stop.into(), stream.read(&mut buf)).await {
            Err(_) => return Ended::PhaseOver,
            Ok(Ok(0)) | Ok(Err(_)) => return Ended::Closed,
            Ok(Ok(n)) => received(&buf[..n], tally),
        }
    }
}

/// Sends `head` one byte per `interval`, watching for the server closing
/// the connection or answering.
async fn trickle_head(
    mut stream: TcpStream,
    head: &[u8],
    interval: Duration,
    stop: Instant,
    tally: &SharedTally,
) -> Ended {
    let mut buf = [0u8; 4096];
    let mut sent = 0;
    let mut next = Instant::now();
    loop {
        if sent < head.len() && Instant::now() >= next {
            if stream.write_all(&head[sent..sent + 1]).await.is_err() {
                return Ended::Closed;
            }
            sent += 1;
            next += interval;
        }
        let wake = if sent < head.len() {
            next.min(stop)
        } else {
            stop
        };
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(n) => received(&buf[..n], tally),
            },
            _ = sleep_until(wake.into()) => {
                if Instant::now() >= stop {
                    return Ended::PhaseOver;
                }
            }
        }
    }
}

/// Counts bytes a raw connection received, and the status of an HTTP/1.1
/// answer among them.
fn received(bytes: &[u8], tally: &SharedTally) {
    let mut t = lock(tally);
    t.bytes_in += bytes.len() as u64;
    if let Some(rest) = bytes.strip_prefix(b"HTTP/1.1 ") {
        if let Some(status) = rest
            .get(..3)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
        {
            *t.statuses.entry(status).or_default() += 1;
        }
    }
}

/// When and what the well-behaved client sends.
struct Schedule {
    /// Requests per second.
    rate: f64,
    /// Virtual nodes read and updated.
    nodes: usize,
    /// One request in this many is an update.
    update_every: u64,
    start: Instant,
    measure_from: Instant,
    measure_end: Instant,
}

/// The well-behaved client: an open loop at `rate` from `start` to
/// `measure_end`; the requests scheduled from `measure_from` count.
async fn well_behaved(good: Arc<Api>, schedule: Schedule) -> GoodResult {
    let Schedule {
        rate,
        nodes,
        update_every,
        start,
        measure_from,
        measure_end,
    } = schedule;
    let mut ticks = crate::openloop::schedule(rate, start, measure_end);
    let mut inflight = JoinSet::new();
    let mut i: u64 = 0;
    let mut result = GoodResult::default();
    let mut answered = 0u64;
    while let Some(intended) = ticks.recv().await {
        let api = good.clone();
        let n = i;
        i += 1;
        inflight.spawn(async move {
            let node = load::node_name(n as usize % nodes);
            let path = format!("{}/{node}", load::nodes_path(MESH));
            let request = async {
                if n % update_every == update_every - 1 {
                    let body = load::update_body(MESH, &node, n);
                    api.call(Method::PUT, &path, Some(body)).await
                } else {
                    api.call(Method::GET, &path, None).await
                }
            };
            let outcome = timeout(REQUEST_TIMEOUT, request).await;
            (intended, intended.elapsed(), outcome)
        });
        while let Some(joined) = inflight.try_join_next() {
            if let Ok(done) = joined {
                answered += record(&mut result, measure_from, done);
            }
        }
    }
    let drain = timeout(REQUEST_TIMEOUT + Duration::from_secs(2), async {
        while let Some(joined) = inflight.join_next().await {
            if let Ok(done) = joined {
                answered += record(&mut result, measure_from, done);
            }
        }
    })
    .await;
    if drain.is_err() {
        inflight.abort_all();
    }
    // Requests scheduled in the window: those past the drain never answered.
    let interval = Duration::from_secs_f64(1.0 / rate);
    let scheduled = (0..)
        .map(|k| start + interval * k)
        .take_while(|at| *at < measure_end)
        .filter(|at| *at >= measure_from)
        .count() as u64;
    result.unanswered = scheduled.saturating_sub(answered);
    result.latencies.sort_unstable();
    result
}

/// One answered request of the well-behaved client, as its task returns it.
type Done = (
    Instant,
    Duration,
    Result<Result<(StatusCode, Bytes)>, tokio::time::error::Elapsed>,
);

/// Counts one request of the well-behaved client if it was scheduled in
/// the measured window; returns 1 if it was, else 0.
fn record(result: &mut GoodResult, measure_from: Instant, done: Done) -> u64 {
    let (intended, latency, outcome) = done;
    if intended < measure_from {
        return 0;
    }
    result.latencies.push(latency);
    let kind = match outcome {
        Ok(Ok((StatusCode::OK, _))) => return 1,
        Ok(Ok((status, body))) => {
            result.first_error.get_or_insert_with(|| {
                format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )
            });
            status.as_u16().to_string()
        }
        Ok(Err(e)) => {
            result.first_error.get_or_insert_with(|| format!("{e:#}"));
            match failure_kind(&e) {
                Failure::Refused => "refused".to_string(),
                Failure::Closed => "closed".to_string(),
                Failure::Other => "failed".to_string(),
            }
        }
        Err(_) => {
            result
                .first_error
                .get_or_insert_with(|| format!("no answer within {REQUEST_TIMEOUT:?}"));
            "timed out".to_string()
        }
    };
    result.errors += 1;
    *result.kinds.entry(kind).or_default() += 1;
    1
}

/// The server's peak RSS (KiB) and open descriptors, sampled until `end`.
async fn sample_peaks(pid: u32, end: Instant) -> (Option<u64>, Option<usize>) {
    let (mut rss, mut fds) = (None, None);
    while Instant::now() < end {
        rss = rss.max(machine::rss_kib(pid));
        fds = fds.max(open_fds(pid));
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    (rss, fds)
}

/// Open descriptors of a process (entries of `/proc/PID/fd`).
fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Bytes the files under `dir` take on disk (allocated blocks).
fn disk_usage(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    // Bounded: the store keeps a handful of files.
    let mut visited = 0;
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            visited += 1;
            if visited > 100_000 {
                return None;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    Some(total)
}

/// The server's, this benchmark's, the hypervisor's (steal) and everything
/// else's CPU from `before` to `after`, in % of one core.
fn cpu_percent(before: &CpuMark, after: &CpuMark) -> [String; 4] {
    let wall = after.at.duration_since(before.at).as_secs_f64();
    let pct = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) if wall > 0.0 => {
            format!("{:.0}%", 100.0 * b.saturating_sub(a).as_secs_f64() / wall)
        }
        _ => "?".into(),
    };
    [
        pct(before.process, after.process),
        pct(before.client, after.client),
        pct(before.steal, after.steal),
        // Everything but the server and this benchmark, less the steal.
        format!(
            "{:.0}%",
            (before.other_percent(after) - before.steal_percent(after)).max(0.0)
        ),
    ]
}

/// `/healthz`'s status, from a fresh connection.
async fn health(base: &str) -> String {
    let api = Api::new(base, 1);
    match timeout(REQUEST_TIMEOUT, api.call(Method::GET, "/healthz", None)).await {
        Ok(Ok((status, body))) if status == StatusCode::OK => {
            String::from_utf8_lossy(&body).trim().to_string()
        }
        Ok(Ok((status, _))) => status.as_u16().to_string(),
        Ok(Err(_)) => "failed".into(),
        Err(_) => "timeout".into(),
    }
}

fn mib(kib_or_bytes: Option<u64>, per_mib: u64) -> String {
    kib_or_bytes.map_or("?".into(), |v| format!("{:.1}", v as f64 / per_mib as f64))
}

fn count(n: Option<usize>) -> String {
    n.map_or("?".into(), |n| n.to_string())
}

/// The goal's verdict for a phase, against the baseline's p99.
fn verdict(row: &Row, baseline_p99: Option<Duration>) -> String {
    let p99 = machine::quantile(&row.good.latencies, 0.99);
    let bound = match baseline_p99 {
        Some(b) => FLOOR.max(b.mul_f64(RATIO)),
        None => FLOOR,
    };
    let mut missed = Vec::new();
    if p99 > bound || row.good.latencies.is_empty() {
        missed.push("p99");
    }
    if row.good.errors > 0 || row.good.unanswered > 0 {
        missed.push("errors");
    }
    if missed.is_empty() {
        "met".into()
    } else {
        format!("MISSED ({})", missed.join(", "))
    }
}

fn print_report(ctx: &Ctx, rows: &[Row]) {
    let baseline_p99 = rows
        .iter()
        .find(|r| r.phase == AbusePhase::Baseline)
        .map(|r| machine::quantile(&r.good.latencies, 0.99));
    let line = |c: [&str; 16]| {
        let [phase, reqs, p50, p99, max, err, srv, cli, steal, oth, rss, rss_pk, fds, fds_pk, data, verdict] =
            c;
        format!(
            "{phase:<14} {reqs:>5} {p50:>7} {p99:>7} {max:>7} {err:>6} {srv:>7} {cli:>7} {steal:>5} {oth:>7} \
             {rss:>7} {rss_pk:>7} {fds:>5} {fds_pk:>6} {data:>8}  {verdict}"
        )
    };
    println!(
        "{}",
        line([
            "phase", "reqs", "p50 ms", "p99 ms", "max ms", "errors", "srv CPU", "cli CPU", "steal",
            "oth CPU", "RSS MiB", "RSS pk", "fds", "fds pk", "data MiB", "verdict",
        ])
    );
    for row in rows {
        let g = &row.good;
        let verdict = match row.phase {
            AbusePhase::Baseline => match g.errors + g.unanswered {
                0 => "(baseline)".to_string(),
                _ => "(baseline) MISSED (errors)".to_string(),
            },
            _ => verdict(row, baseline_p99),
        };
        println!(
            "{}",
            line([
                row.phase.name(),
                &g.latencies.len().to_string(),
                &machine::ms(machine::quantile(&g.latencies, 0.5)),
                &machine::ms(machine::quantile(&g.latencies, 0.99)),
                &machine::ms(g.latencies.last().copied().unwrap_or_default()),
                &(g.errors + g.unanswered).to_string(),
                &row.cpu[0],
                &row.cpu[1],
                &row.cpu[2],
                &row.cpu[3],
                &mib(row.rss_end_kib, 1024),
                &mib(row.rss_peak_kib, 1024),
                &count(row.fds_end),
                &count(row.fds_peak),
                &mib(row.data_bytes, 1 << 20),
                &verdict,
            ])
        );
    }
    println!();
    println!("after each phase (abuse stopped, {SETTLE:?} later): server RSS MiB, open descriptors, /healthz");
    for row in rows {
        println!(
            "{:<14} {:>7} {:>5}  {}",
            row.phase.name(),
            mib(row.rss_after_kib, 1024),
            count(row.fds_after),
            row.health
        );
    }
    println!();
    println!("what the abusers got (answers by HTTP status, connections):");
    let a = &ctx.args;
    for row in rows {
        let what = match row.phase {
            AbusePhase::Baseline => "no abuse".to_string(),
            AbusePhase::SlowHeaders => format!(
                "{} connections, each sending a request head one byte per {} ms",
                a.slow_connections, a.slow_byte_ms
            ),
            AbusePhase::IdleFlood => format!(
                "{} idle connections to the API port and {} to the xDS port, each opened again {} ms \
                 after the server closes it",
                a.idle_api, a.idle_xds, a.reconnect_ms
            ),
            AbusePhase::LargeBodies => format!(
                "access key {LARGE_KEY}, {} senders of UpdateVirtualNode bodies of {} bytes (over the \
                 limit) and {} senders of valid ones of {} bytes",
                a.large_workers.div_ceil(2),
                BODY_LIMIT + 1,
                a.large_workers / 2,
                NEAR_LIMIT
            ),
            AbusePhase::TokenFlood => format!(
                "access key {TOKEN_KEY}, {} senders of UpdateVirtualNode, a fresh clientToken each",
                a.token_workers
            ),
            AbusePhase::RequestFlood => format!(
                "access key {FLOOD_KEY}, {} DescribeVirtualNode requests kept in flight",
                a.flood_requests
            ),
        };
        println!("{:<14} {what}", row.phase.name());
        for (label, tally) in &row.abusers {
            println!("{:<14}   {label}: {}", "", tally.summary());
            if let Some(e) = &tally.first_other {
                println!("{:<14}     first failure: {e}", "");
            }
        }
    }
    println!();
    println!(
        "well-behaved client: reqs = requests scheduled in the measured window and answered; errors = \
         failed, not 200, or unanswered; latency from each request's scheduled time."
    );
    println!(
        "server: RSS (VmRSS) and open descriptors (/proc/PID/fd) at the end of the measured window and \
         their peaks (sampled every {SAMPLE_EVERY:?}); data = the data folder's allocated size. CPU over \
         the measured window in % of one core: the server's, this benchmark's (all its clients), steal (what the \
         hypervisor took from this machine) and everything else on the machine."
    );
    println!(
        "goal: in every abuse phase, the well-behaved client's p99 ≤ {RATIO}× its baseline p99 or ≤ {} ms, \
         whichever is larger, and no failed request{}",
        FLOOR.as_millis(),
        baseline_p99.map_or(String::new(), |b| format!(
            " (here ≤ {} ms)",
            machine::ms(FLOOR.max(b.mul_f64(RATIO)))
        ))
    );
    for row in rows {
        if let Some(e) = &row.good.first_error {
            let kinds: Vec<String> = row
                .good
                .kinds
                .iter()
                .map(|(k, n)| format!("{k}×{n}"))
                .collect();
            println!(
                "{}: the well-behaved client's failures: {}; first: {e}",
                row.phase.name(),
                kinds.join(", ")
            );
        }
        if row.good.unanswered > 0 {
            println!(
                "{}: {} of the well-behaved client's requests were never answered",
                row.phase.name(),
                row.good.unanswered
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_large_update_has_the_size_asked_and_is_json() {
        for size in [NEAR_LIMIT, BODY_LIMIT + 1] {
            let body = large_update("big-0000", 7, size);
            assert_eq!(body.len(), size);
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let sans = &value["spec"]["backendDefaults"]["clientPolicy"]["tls"]["validation"]
                ["subjectAlternativeNames"]["match"]["exact"];
            let sans = sans.as_array().unwrap();
            assert!(sans.len() > 900, "{}", sans.len());
            assert!(sans
                .iter()
                .all(|s| s.as_str().unwrap().chars().count() == 254));
            assert!(value["clientToken"].as_str().unwrap().len() <= 36);
            assert_eq!(value["spec"]["listeners"][0]["portMapping"]["port"], 8087);
        }
    }

    #[test]
    fn only_loopback_addresses_are_abused() {
        assert!(loopback_addr("127.0.0.1:8080").is_ok());
        assert!(loopback_addr("[::1]:8080").is_ok());
        assert!(loopback_addr("10.0.0.1:8080").is_err());
    }
}
