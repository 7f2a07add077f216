//! `weft-bench`: benchmarks of Weft.
//!
//! `weft-bench api` starts a real `weft server` (the release build next to
//! this executable) on a fresh data folder, fills a mesh with virtual nodes
//! and measures DescribeVirtualNode, ListVirtualNodes, CreateVirtualNode and
//! UpdateVirtualNode over keep-alive HTTP/1.1 from concurrent client tasks,
//! each for a bounded time. Run it with
//! `cargo build --release -p weft && cargo run --release -p weft-bench -- api`.
//!
//! The other subcommands measure the control plane and the data plane
//! (issue 4): `xds-scale` (simulated proxies over real ADS), `envoys` (real
//! Envoys), `scoping` (config bytes per proxy as the mesh grows), `dataplane`
//! (open-loop latency added by the Envoy pair, explicit and transparent mode) and `no-drops` (failed
//! requests while routes change); `compaction` measures the embedded store's
//! writes while it compacts a large state; `abuse` measures a well-behaved
//! client while others abuse the server (issue 16); `ca` measures Weft's
//! certificate authority: CSRs signed per second and the cost of a rotation
//! wave (issue 19). Each is bounded in time,
//! binds loopback only (`dataplane` as root: two network namespaces of its own,
//! for its transparent row) and prints a table.

/// The load generators allocate per request and per ADS message on every
/// thread; mimalloc keeps that cost (which competes with the server for the
/// same two cores) low, as it does in `weft` itself.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod abuse;
mod ads;
mod api_stores;
mod appmesh;
mod bare;
mod ca;
mod compaction;
mod dataplane;
mod envoys;
mod failover;
mod ingest;
mod lan;
mod load;
mod machine;
mod mtls;
mod openloop;
mod procs;
mod promhist;
mod replicas_convergence;
mod scoping;
mod server;
mod telemetry;
mod xds_scale;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use load::{Api, Pace, PhaseResult, Workload};
use machine::CpuMark;
use server::Server;

/// Mesh holding the pre-created nodes read and updated by the benchmark.
const MESH: &str = "bench";
/// Mesh receiving the nodes of the create phase (with a number appended
/// when `--create-meshes` is more than 1).
const CREATE_MESH: &str = "bench-create";

#[derive(Parser)]
#[command(name = "weft-bench", version, about = "Benchmarks of Weft")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Throughput and latency of the App Mesh API of `weft server` on the embedded store.
    Api(ApiArgs),
    /// The API's throughput and p99 on the embedded store and on a 3-member etcd cluster, the
    /// same phases against each in one run.
    ApiStores(api_stores::ApiStoresArgs),
    /// Simulated proxies over real ADS: convergence, memory per proxy, CPU per push.
    XdsScale(xds_scale::XdsScaleArgs),
    /// Real Envoys connected to `weft server`: time from an API write to the last ACK.
    Envoys(envoys::EnvoysArgs),
    /// Replicas on a real etcd cluster, simulated proxies over them: time from killing a
    /// replica to every proxy it served having config from another.
    Failover(failover::FailoverArgs),
    /// Convergence (route write answered -> last ACK) of simulated proxies on 1 replica on the
    /// embedded store beside replicas on a real etcd cluster, the proxies spread over them.
    ReplicasConvergence(replicas_convergence::ReplicasConvergenceArgs),
    /// The stats intake: server CPU and history memory for simulated proxies' stats flushes.
    Ingest(ingest::IngestArgs),
    /// Bytes of config one proxy receives as the mesh grows around it.
    Scoping(scoping::ScopingArgs),
    /// Open-loop latency direct vs through the client and server Envoys.
    Dataplane(dataplane::DataplaneArgs),
    /// Failed requests under steady load while routes change every interval.
    NoDrops(dataplane::NoDropsArgs),
    /// Write latency of the embedded store while it compacts a large state.
    Compaction(compaction::CompactionArgs),
    /// A well-behaved client's latency, and the server's memory and
    /// descriptors, while hostile and careless clients abuse the API and xDS
    /// listeners (slow headers, idle floods, large bodies, token and request floods).
    Abuse(abuse::AbuseArgs),
    /// Weft's certificate authority: CSRs signed per second (in process and
    /// through the server's HTTP API, as agents use it) and the cost of a
    /// rotation wave of simulated agents to the server and to other clients.
    Ca(ca::CaArgs),
    /// Envoy's CPU with App Mesh's telemetry switches (stats tags, DogStatsD, X-Ray tracing)
    /// on and off, two pairs under the same open-loop load in one run.
    Telemetry(telemetry::TelemetryArgs),
}

#[derive(clap::Args)]
struct ApiArgs {
    /// Concurrent client tasks, each with its own keep-alive connection.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Warm-up seconds before each phase's measurement (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Virtual nodes created before the measurements.
    #[arg(long, default_value_t = 200)]
    nodes: usize,
    /// Page size of ListVirtualNodes (`limit`).
    #[arg(long, default_value_t = 100)]
    page_size: usize,
    /// Meshes the create phase spreads its tasks over (Weft serializes the
    /// writes within one mesh; more meshes show what that costs).
    #[arg(long, default_value_t = 1)]
    create_meshes: usize,
    /// Phases to run, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "describe,list,create,update"
    )]
    phases: Vec<Phase>,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    weft_bin: Option<PathBuf>,
    /// Parent folder of the server's fresh data folder (default: the system temp folder).
    #[arg(long)]
    data_parent: Option<PathBuf>,
    /// Worker threads of the client's runtime (default: one per core).
    #[arg(long)]
    client_threads: Option<usize>,
    /// Open loop: schedule this many requests per second in every phase
    /// (sent over the --concurrency connections, each latency counted from
    /// its scheduled time) instead of keeping --concurrency requests in
    /// flight at all times, which saturates the server.
    #[arg(long)]
    rate: Option<f64>,
    /// Hold a CPU latency request of 0 (`/dev/cpu_dma_latency`, needs root)
    /// while measuring, as tuned's latency-performance profile does: idle
    /// CPUs poll instead of halting. On a virtual machine a halted vCPU is
    /// woken through the hypervisor, which an unsaturated server meets at
    /// almost every request.
    #[arg(long)]
    poll_idle: bool,
    /// Then run the same phases again against a second server that verifies SigV4 on every
    /// request (`weft server`'s default), with a client signing each request as the AWS SDKs
    /// do, and print signed throughput beside unsigned (goal: at least 85% for Describe and
    /// Create).
    #[arg(long)]
    compare_signing: bool,
    /// Build (and, for the signed run, sign) each task's requests before every phase and send
    /// them as they are: N per task for Create and Update (4,000 if no N is given; past them
    /// requests are signed as they go, and counted), one round of the nodes for Describe,
    /// replayed (a signature stays valid for five minutes). List pages are built as they go.
    /// The client's per-request work is then the same in the unsigned and the signed run, so
    /// their ratio is the server's verification alone.
    #[arg(long, num_args = 0..=1, default_missing_value = "4000", value_name = "N")]
    presigned: Option<usize>,
}

/// The longest phase `--presigned` runs: its signatures, made just before, must stay within the
/// five minutes a server accepts
/// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/signing-elements.html>).
const PRESIGNED_PHASE_MAX_SECS: f64 = 240.0;

/// Signed throughput a phase must keep, as a share of unsigned (issue 20's goal).
const SIGNED_SHARE_GOAL: f64 = 0.85;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Describe,
    List,
    Create,
    Update,
}

/// A target to compare a phase's figures with.
struct Goal {
    /// Minimum throughput in requests per second, if any.
    min_rate: Option<f64>,
    /// Maximum 99th-percentile latency.
    max_p99: Duration,
}

impl Goal {
    fn for_phase(phase: Phase) -> Goal {
        let max_p99 = Duration::from_millis(5);
        let min_rate = match phase {
            Phase::Describe => Some(10_000.0),
            Phase::Create => Some(2_000.0),
            Phase::List | Phase::Update => None,
        };
        Goal { min_rate, max_p99 }
    }

    fn text(&self) -> String {
        let p99 = format!("p99 < {} ms", self.max_p99.as_millis());
        match self.min_rate {
            Some(rate) => format!(">= {}/s, {p99}", thousands(rate)),
            None => p99,
        }
    }

    /// "met", or which parts were missed. In an open loop the server
    /// sustained the offered rate if it answered (nearly) every scheduled
    /// request within the phase: the measured rate then falls short of the
    /// offered one only by the last answers' latency.
    fn verdict(&self, r: &PhaseResult, pace: Pace) -> String {
        let sustained = match pace {
            Pace::Closed => r.throughput(),
            Pace::Rate(offered) if r.throughput() >= 0.99 * offered => offered,
            Pace::Rate(_) => r.throughput(),
        };
        let mut missed = Vec::new();
        if let Some(rate) = self.min_rate {
            if sustained < rate {
                missed.push("rate");
            }
        }
        if r.quantile(0.99) >= self.max_p99 {
            missed.push("p99");
        }
        if r.errors > 0 {
            missed.push("errors");
        }
        if missed.is_empty() {
            "met".to_string()
        } else {
            format!("MISSED ({})", missed.join(", "))
        }
    }
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn millis(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// One row of the results table: names left-aligned, figures right-aligned.
fn share_line(cells: [&str; 8]) -> String {
    let [op, plain, signed, share, p99_plain, p99_signed, goal, verdict] = cells;
    format!(
        "{op:<20} {plain:>14} {signed:>12} {share:>6} {p99_plain:>15} {p99_signed:>13}  {goal:<8} {verdict}"
    )
}

fn table_line(cells: [&str; 12]) -> String {
    let [op, requests, rate, p50, p99, errors, srv, cli, steal, oth, goal, verdict] = cells;
    format!(
        "{op:<20} {requests:>9} {rate:>8} {p50:>7} {p99:>7} {errors:>6} {srv:>7} {cli:>7} {steal:>6} {oth:>7}  {goal:<24} {verdict}"
    )
}

/// The server's, this client's, the hypervisor's (steal) and everything
/// else's CPU time (the kernel's network and disk work included) from
/// `before` to `after`, each in % of one core ("?" if unreadable).
fn usage(before: &CpuMark, after: &CpuMark) -> [String; 4] {
    let wall = after.at.duration_since(before.at);
    let delta = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
    let server = delta(before.process, after.process);
    let client = delta(before.client, after.client);
    let steal = delta(before.steal, after.steal);
    let other = match (delta(before.machine, after.machine), server, client, steal) {
        (Some(m), Some(s), Some(c), Some(st)) => Some(m.saturating_sub(s + c + st)),
        _ => None,
    };
    [server, client, steal, other].map(|d| match d {
        Some(d) if wall > Duration::ZERO => {
            format!("{:.0}%", 100.0 * d.as_secs_f64() / wall.as_secs_f64())
        }
        _ => "?".to_string(),
    })
}

async fn api_bench(args: ApiArgs) -> Result<()> {
    if args.concurrency == 0 || args.nodes == 0 || args.page_size == 0 || args.create_meshes == 0 {
        bail!("--concurrency, --nodes, --page-size and --create-meshes must be at least 1");
    }
    let create_meshes: Vec<String> = match args.create_meshes {
        1 => vec![CREATE_MESH.to_string()],
        n => (0..n).map(|i| format!("{CREATE_MESH}-{i}")).collect(),
    };
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--rate must be a positive number of requests per second");
    }
    let pace = args.rate.map_or(Pace::Closed, Pace::Rate);
    let valid = |secs: f64| secs.is_finite() && secs >= 0.0;
    if !valid(args.duration) || args.duration == 0.0 || !valid(args.warmup) {
        bail!("--duration must be positive and --warmup not negative");
    }
    if args.presigned.is_some() && args.warmup + args.duration > PRESIGNED_PHASE_MAX_SECS {
        bail!(
            "with --presigned a phase (--warmup + --duration) lasts at most {PRESIGNED_PHASE_MAX_SECS} s: \
             a signature is accepted for five minutes"
        );
    }
    let binary = server::weft_binary(&args.weft_bin)?;
    let data = match &args.data_parent {
        Some(parent) => tempfile::Builder::new()
            .prefix("weft-bench-")
            .tempdir_in(parent),
        None => tempfile::Builder::new().prefix("weft-bench-").tempdir(),
    }
    .context("creating a temporary data folder")?;
    let data_dir = data.path().join("data");
    let (sync_p50, sync_p99) = machine::fdatasync_latency(data.path(), 500, false)?;
    let (zsync_p50, zsync_p99) = machine::fdatasync_latency(data.path(), 500, true)?;

    // The create phase adds far more nodes than App Mesh's default quota of
    // 200 per mesh, and --create-meshes may need more than 15 meshes.
    let quotas = [
        "--quota".to_string(),
        "virtual-nodes-per-mesh=1000000".into(),
        "--quota".into(),
        "meshes=1000".into(),
    ];
    let mut server = Server::start(&binary, &data_dir, &quotas)?;
    let api = Arc::new(Api::new(&server.url, args.concurrency));
    let setup = Instant::now();
    load::create_mesh(&api, MESH).await?;
    for mesh in &create_meshes {
        load::create_mesh(&api, mesh).await?;
    }
    load::create_nodes(api.clone(), MESH, args.nodes, args.concurrency).await?;
    let setup = setup.elapsed();

    println!("weft-bench api: the App Mesh REST API of `weft server` on the embedded store");
    println!("date:       {}", machine::utc_now());
    println!("machine:    {}", machine::describe());
    println!("server:     {} (pid {})", binary.display(), server.pid());
    println!("data dir:   {}", data_dir.display());
    let _poll_idle = match args.poll_idle {
        true => Some(machine::PollIdle::request()?),
        false => None,
    };
    println!(
        "idle:       {}",
        match args.poll_idle {
            true => "CPUs poll when idle (cpu_dma_latency held at 0, --poll-idle)",
            false => "the kernel's default idle (CPUs may halt)",
        }
    );
    if let Some(load) = machine::load_average() {
        println!("load avg:   {load:.2} (1 min, before the run; other work on the machine skews the figures)");
    }
    println!(
        "fdatasync:  p50 {} ms, p99 {} ms after a 256-byte append; p50 {} ms, p99 {} ms after 256 bytes \
         written into a zero-filled file, as into the store's prepared logs (data dir's file system, 500 rounds each)",
        millis(sync_p50),
        millis(sync_p99),
        millis(zsync_p50),
        millis(zsync_p99)
    );
    match pace {
        Pace::Closed => println!(
            "load:       closed loop: {} concurrent tasks over keep-alive HTTP/1.1, each sending its next \
             request when the last is answered; {:.1} s warm-up + {:.1} s measured per phase",
            args.concurrency, args.warmup, args.duration
        ),
        Pace::Rate(rate) => println!(
            "load:       open loop: {} requests/s scheduled, sent over {} keep-alive HTTP/1.1 connections, \
             each latency from the request's scheduled time; {:.1} s warm-up + {:.1} s measured per phase",
            thousands(rate),
            args.concurrency,
            args.warmup,
            args.duration
        ),
    }
    println!(
        "setup:      mesh {MESH:?} with {} virtual nodes (listener + health check, DNS discovery, 3 backends, access log) in {:.2} s",
        args.nodes,
        setup.as_secs_f64()
    );
    if args.create_meshes > 1 {
        println!(
            "create:     spread over {} meshes ({CREATE_MESH}-0 …)",
            args.create_meshes
        );
    }
    println!();

    let rows = measure_phases(api, &mut server, &args, &create_meshes, pace).await?;

    println!(
        "{}",
        table_line([
            "operation",
            "requests",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "srv CPU",
            "cli CPU",
            "steal",
            "oth CPU",
            "goal",
            "verdict",
        ])
    );
    print_rows(&rows, pace);
    println!();
    println!(
        "CPU columns: CPU time of the server, of this client, taken by the hypervisor from this virtual machine \
         (steal: its vCPUs had work, the host ran something else) and of everything else on the machine (the \
         kernel's network and disk work included), over the phase's wall time (warm-up included), in % of one \
         core; {} cores in all.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if rows.iter().any(|(p, ..)| *p == Phase::List) {
        println!(
            "ListVirtualNodes: one request is one page of {}; a full listing of {} nodes takes {} pages.",
            args.page_size,
            args.nodes,
            args.nodes.div_ceil(args.page_size)
        );
    }
    if let Some(n) = args.presigned {
        println!(
            "prepared:   each task's requests built before its phase and sent as they are (--presigned: \
             {n} per task for Create and Update, one round of the nodes for Describe, List built as it goes); \
             the signed run signs them then"
        );
    }
    for (_, r, ..) in &rows {
        if r.warmup_errors > 0 {
            println!(
                "{}: {} of {} warm-up requests failed too.",
                r.operation, r.warmup_errors, r.warmup_requests
            );
        }
        if let Some(e) = &r.first_error {
            println!("{}: first error: {e}", r.operation);
        }
    }
    drop(server);
    if args.compare_signing {
        compare_signing(
            &binary,
            data.path(),
            &quotas,
            &args,
            &create_meshes,
            pace,
            &rows,
        )
        .await?;
    }
    Ok(())
}

type PhaseRow = (Phase, load::PhaseResult, [String; 4]);

/// Runs `args.phases` against `server` through `api`, each with the server's and the machine's
/// CPU use.
async fn measure_phases(
    api: Arc<Api>,
    server: &mut Server,
    args: &ApiArgs,
    create_meshes: &[String],
    pace: Pace,
) -> Result<Vec<PhaseRow>> {
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let mut rows = Vec::new();
    for &phase in &args.phases {
        let workload = match phase {
            Phase::Describe => Workload::Describe {
                mesh: MESH.into(),
                nodes: args.nodes,
            },
            Phase::List => Workload::List {
                mesh: MESH.into(),
                nodes: args.nodes,
                limit: args.page_size,
            },
            Phase::Create => Workload::Create {
                meshes: create_meshes.to_vec(),
            },
            Phase::Update => Workload::Update {
                mesh: MESH.into(),
                nodes: args.nodes,
            },
        };
        let before = CpuMark::now(server.pid());
        let result = load::run_phase(
            api.clone(),
            workload,
            args.concurrency,
            pace,
            warmup,
            duration,
            args.presigned,
        )
        .await?;
        let cpu = usage(&before, &CpuMark::now(server.pid()));
        server.check_alive()?;
        rows.push((phase, result, cpu));
    }
    Ok(rows)
}

/// One table line per phase.
fn print_rows(rows: &[PhaseRow], pace: Pace) {
    for (phase, r, cpu) in rows {
        let goal = Goal::for_phase(*phase);
        println!(
            "{}",
            table_line([
                r.operation,
                &r.requests.to_string(),
                &format!("{:.0}", r.throughput()),
                &millis(r.quantile(0.5)),
                &millis(r.quantile(0.99)),
                &r.errors.to_string(),
                &cpu[0],
                &cpu[1],
                &cpu[2],
                &cpu[3],
                &goal.text(),
                &goal.verdict(r, pace),
            ])
        );
    }
}

/// The same phases against a server that verifies SigV4, with a signing client; signed
/// throughput beside `unsigned`'s, per phase.
async fn compare_signing(
    binary: &Path,
    data_parent: &Path,
    quotas: &[String],
    args: &ApiArgs,
    create_meshes: &[String],
    pace: Pace,
    unsigned: &[PhaseRow],
) -> Result<()> {
    let data_dir = data_parent.join("signed");
    let mut server = Server::start_verifying(binary, &data_dir, quotas)?;
    let creds = Server::admin_credentials(&data_dir)?;
    let api = Arc::new(Api::signing(&server.url, args.concurrency, creds));
    load::create_mesh(&api, MESH).await?;
    for mesh in create_meshes {
        load::create_mesh(&api, mesh).await?;
    }
    load::create_nodes(api.clone(), MESH, args.nodes, args.concurrency).await?;
    println!();
    println!(
        "signed: the same phases against a second server verifying SigV4 on every request \
         (weft server's default), each request signed by this client with the server's \
         administrator key (aws-sigv4, as the AWS SDKs sign)"
    );
    let rows = measure_phases(api, &mut server, args, create_meshes, pace).await?;
    print_rows(&rows, pace);
    for (_, r, _) in rows.iter().chain(unsigned) {
        if r.prepared_out > 0 {
            println!(
                "{}: {} requests past the {} prepared per task were built and signed as they went",
                r.operation, r.prepared_out, r.prepared
            );
        }
    }
    println!();
    println!(
        "{}",
        share_line([
            "operation",
            "unsigned req/s",
            "signed req/s",
            "share",
            "p99 unsigned ms",
            "p99 signed ms",
            "goal",
            "verdict",
        ])
    );
    for ((phase, signed, _), (_, plain, _)) in rows.iter().zip(unsigned) {
        let share = signed.throughput() / plain.throughput().max(f64::MIN_POSITIVE);
        let goal = matches!(phase, Phase::Describe | Phase::Create);
        println!(
            "{}",
            share_line([
                signed.operation,
                &format!("{:.0}", plain.throughput()),
                &format!("{:.0}", signed.throughput()),
                &format!("{:.0}%", share * 100.0),
                &millis(plain.quantile(0.99)),
                &millis(signed.quantile(0.99)),
                if goal { ">= 85%" } else { "-" },
                match (goal, share >= SIGNED_SHARE_GOAL, signed.errors) {
                    (_, _, e) if e > 0 => "errors",
                    (false, ..) => "-",
                    (true, true, _) => "met",
                    (true, false, _) => "missed",
                },
            ])
        );
    }
    drop(server);
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")
    };
    match cli.command {
        Command::XdsScale(args) => runtime()?.block_on(xds_scale::run(args)),
        Command::Envoys(args) => runtime()?.block_on(envoys::run(args)),
        Command::Failover(args) => runtime()?.block_on(failover::run(args)),
        Command::ReplicasConvergence(args) => runtime()?.block_on(replicas_convergence::run(args)),
        Command::ApiStores(args) => runtime()?.block_on(api_stores::run(args)),
        Command::Telemetry(args) => runtime()?.block_on(telemetry::run(args)),
        Command::Ingest(args) => runtime()?.block_on(ingest::run(args)),
        Command::Compaction(args) => runtime()?.block_on(compaction::run(args)),
        Command::Abuse(args) => runtime()?.block_on(abuse::run(args)),
        Command::Ca(args) => runtime()?.block_on(ca::run(args)),
        Command::Scoping(args) => runtime()?.block_on(scoping::run(args)),
        Command::Dataplane(args) => runtime()?.block_on(dataplane::run(args)),
        Command::NoDrops(args) => runtime()?.block_on(dataplane::run_no_drops(args)),
        Command::Api(args) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.enable_all();
            if let Some(n) = args.client_threads {
                builder.worker_threads(n.max(1));
            }
            let runtime = builder.build().context("starting the async runtime")?;
            runtime.block_on(api_bench(args))
        }
    }
}
