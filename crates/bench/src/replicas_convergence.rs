//! `weft-bench replicas-convergence`: convergence (route write answered → last ACK) of N
//! simulated proxies on 1 replica on the embedded store, then on replicas of `weft server` on a
//! real 3-member etcd cluster on this machine with the proxies spread over them and the writes
//! made through one; both figures and their ratio (goal of issue 22: the replicas' p99 within
//! 1.5× of the embedded store's). The same convergence counted from the write's sending (so
//! with the write's own time in it) is printed beside, with its ratio, and beside that the
//! machine's bound on it: each store's own commit latency, one write at a time with no Weft in
//! between, back to back and paced as the measured writes are (see [`commit_latency`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weft_store::{Compare, EmbeddedOptions, EmbeddedStore, Op, Store, Txn, TxnOutcome};
use weft_store_etcd::testing::EtcdCluster;

use crate::ads::{AdsProtocol, Fleet, ProxySpec};
use crate::appmesh::{self, MeshShape};
use crate::load::Api;
use crate::machine::{self, ms, quantile};
use crate::server::{self, Server};

/// Mesh of the benchmark.
const MESH: &str = "scale";

/// The goal of issue 22: the replicas' p99 at most this many times the embedded store's.
const GOAL_RATIO: f64 = 1.5;

/// Value size of the bare commits: about a route record as the API stores it, so that the
/// bound writes what an UpdateRoute writes.
const RECORD_BYTES: usize = 1024;

/// Bare commits made before the counted ones: the setups' writes come after the mesh's
/// creation, on a store and a connection already in use.
const COMMIT_WARMUP: usize = 10;

/// How long a setup waits with no ACK before it counts a change as converged, and so at least
/// how far apart the measured writes are; the paced bare commits are this far apart too.
const QUIET: Duration = Duration::from_millis(300);

/// Flags of `weft-bench replicas-convergence`.
#[derive(clap::Args)]
pub struct ReplicasConvergenceArgs {
    /// Simulated proxies in each setup.
    #[arg(long, default_value_t = 1000)]
    pub proxies: usize,
    /// `weft server` replicas on the etcd cluster (the proxies spread evenly over them).
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Route changes measured in each setup.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Bare commits timed on each store after its setup (the machine's bound).
    #[arg(long, default_value_t = 200)]
    pub commits: usize,
    /// Bare commits timed on each store after those, each after a pause as long as the one
    /// between two measured writes (the bound for writes that find the processes idle; 0: none).
    #[arg(long, default_value_t = 50)]
    pub paced_commits: usize,
    /// ADS variant the proxies speak.
    #[arg(long, value_enum, default_value_t = AdsProtocol::Delta)]
    pub protocol: AdsProtocol,
    /// Virtual nodes (proxy `p` is an Envoy of node `p mod nodes`).
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Virtual services (each with its own router and route).
    #[arg(long, default_value_t = 100)]
    pub services: usize,
    /// Virtual-service backends per node.
    #[arg(long, default_value_t = 5)]
    pub backends: usize,
    /// ADS streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    pub streams_per_connection: usize,
    /// Give up on one convergence after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    pub weft_bin: Option<PathBuf>,
}

/// Figures of one setup.
struct SetupResult {
    /// Proxies the changed route reaches.
    affected: usize,
    /// Per change: from the write's answer to the last ACK of any proxy it reached.
    last_ack: Vec<Duration>,
    /// Every proxy of every change: from the write's answer to its ACK (zero when it ACKed
    /// before the answer arrived).
    per_proxy: Vec<Duration>,
    /// Per change: the write's own latency (sent → answered).
    write: Vec<Duration>,
    /// Per change: from the write's sending to the last ACK of any proxy it reached.
    from_sent: Vec<Duration>,
}

/// The `q` quantile of unsorted `values`.
fn quantile_of(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    quantile(&sorted, q)
}

/// `other / base`, infinite for a zero base (every proxy ACKed before the answer) so that a
/// verdict cannot pass on it.
fn ratio(other: Duration, base: Duration) -> f64 {
    if base.is_zero() {
        f64::INFINITY
    } else {
        other.as_secs_f64() / base.as_secs_f64()
    }
}

/// Runs both setups and prints their figures and the verdict.
pub async fn run(args: ReplicasConvergenceArgs) -> Result<()> {
    if args.replicas == 0 || args.changes == 0 || args.proxies == 0 || args.commits == 0 {
        bail!("--replicas, --changes, --proxies and --commits must be positive");
    }
    if args.nodes == 0 || args.services == 0 || args.backends == 0 {
        bail!("--nodes, --services and --backends must be positive");
    }
    let binary = server::weft_binary(&args.weft_bin)?;
    let shape = MeshShape {
        services: args.services,
        nodes: args.nodes,
        backends: args.backends.min(args.services),
    };
    println!(
        "weft-bench replicas-convergence: {} simulated proxies ({}), {} route changes, 1 replica \
         on the embedded store vs {} replicas on a 3-member etcd cluster",
        args.proxies,
        args.protocol.name(),
        args.changes,
        args.replicas
    );
    println!("date:     {}", machine::utc_now());
    println!("machine:  {}", machine::describe());
    println!("server:   {}", binary.display());
    println!(
        "mesh:     {} virtual services, {} virtual nodes with {} backends each",
        shape.services, shape.nodes, shape.backends
    );
    let dir = tempfile::tempdir().context("a temporary folder")?;
    let embedded = run_setup(&args, &binary, shape, dir.path(), None).await?;
    // On the same disk as the setup's data, after its server stopped.
    let embedded_commit = {
        let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("bound"))).await?;
        let hot = commit_latency(&*store, args.commits, Duration::ZERO).await?;
        let paced = commit_latency(&*store, args.paced_commits, QUIET).await?;
        (hot, paced)
    };
    let etcd = EtcdCluster::start(3).await;
    let replicas = run_setup(&args, &binary, shape, dir.path(), Some(&etcd)).await?;
    // The replicas' cluster, after they stopped; a prefix beside theirs, not in it.
    let etcd_commit = {
        let store = etcd.store("/weft-bench-bound/").await;
        let hot = commit_latency(&*store, args.commits, Duration::ZERO).await?;
        let paced = commit_latency(&*store, args.paced_commits, QUIET).await?;
        (hot, paced)
    };
    let ((embedded_commit, embedded_paced), (etcd_commit, etcd_paced)) =
        (embedded_commit, etcd_commit);
    drop(etcd);

    println!();
    println!(
        "{:<22} {:>8} {:>11} {:>11} {:>11} {:>12} {:>12} {:>12} {:>11} {:>11}",
        "setup",
        "affected",
        "last p50 ms",
        "last p99 ms",
        "last max ms",
        "proxy p50 ms",
        "proxy p99 ms",
        "write p50 ms",
        "sent p50 ms",
        "sent p99 ms"
    );
    let rows = [
        ("1 replica, embedded".to_string(), &embedded),
        (format!("{} replicas, etcd (3)", args.replicas), &replicas),
    ];
    for (name, r) in &rows {
        let mut last = r.last_ack.clone();
        last.sort();
        let mut per = r.per_proxy.clone();
        per.sort();
        let mut write = r.write.clone();
        write.sort();
        println!(
            "{:<22} {:>8} {:>11} {:>11} {:>11} {:>12} {:>12} {:>12} {:>11} {:>11}",
            name,
            r.affected,
            ms(quantile(&last, 0.5)),
            ms(quantile(&last, 0.99)),
            ms(last.last().copied().unwrap_or_default()),
            ms(quantile(&per, 0.5)),
            ms(quantile(&per, 0.99)),
            ms(quantile(&write, 0.5)),
            ms(quantile_of(&r.from_sent, 0.5)),
            ms(quantile_of(&r.from_sent, 0.99)),
        );
    }
    let answered = ratio(
        quantile_of(&replicas.last_ack, 0.99),
        quantile_of(&embedded.last_ack, 0.99),
    );
    let sent = ratio(
        quantile_of(&replicas.from_sent, 0.99),
        quantile_of(&embedded.from_sent, 0.99),
    );
    println!();
    println!(
        "ratio (p99 of the last ACK per change, replicas / embedded): {answered:.2}; goal <= \
         {GOAL_RATIO}: {}",
        if answered <= GOAL_RATIO {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "ratio from the write's sending (p99 of the last ACK per change, replicas / embedded): \
         {sent:.2}; goal <= {GOAL_RATIO}: {}",
        if sent <= GOAL_RATIO { "met" } else { "MISSED" }
    );
    let commit = |q| ratio(quantile(&etcd_commit, q), quantile(&embedded_commit, q));
    let sent_p50 = ratio(
        quantile_of(&replicas.from_sent, 0.5),
        quantile_of(&embedded.from_sent, 0.5),
    );
    println!(
        "store commit alone, one at a time ({} txns of one {RECORD_BYTES}-byte put under an \
         absence compare, no Weft): embedded p50 {} p99 {} ms, etcd (3) p50 {} p99 {} ms; ratio \
         etcd / embedded: p50 {:.2}, p99 {:.2}",
        args.commits,
        ms(quantile(&embedded_commit, 0.5)),
        ms(quantile(&embedded_commit, 0.99)),
        ms(quantile(&etcd_commit, 0.5)),
        ms(quantile(&etcd_commit, 0.99)),
        commit(0.5),
        commit(0.99)
    );
    println!(
        "from the write's sending over the commit's ratio (the machine's bound): p99 {sent:.2} / \
         {:.2} = {:.2}; p50 {sent_p50:.2} / {:.2} = {:.2}",
        commit(0.99),
        sent / commit(0.99),
        commit(0.5),
        sent_p50 / commit(0.5)
    );
    if args.paced_commits > 0 {
        let paced = |q| ratio(quantile(&etcd_paced, q), quantile(&embedded_paced, q));
        println!(
            "store commit alone, paced like the writes ({} txns, each {} ms after the last \
             answer): embedded p50 {} p99 {} ms, etcd (3) p50 {} p99 {} ms; ratio etcd / \
             embedded: p50 {:.2}, p99 {:.2}; from the write's sending over it: p99 {:.2}, p50 \
             {:.2}",
            args.paced_commits,
            QUIET.as_millis(),
            ms(quantile(&embedded_paced, 0.5)),
            ms(quantile(&embedded_paced, 0.99)),
            ms(quantile(&etcd_paced, 0.5)),
            ms(quantile(&etcd_paced, 0.99)),
            paced(0.5),
            paced(0.99),
            sent / paced(0.99),
            sent_p50 / paced(0.5)
        );
    }
    println!(
        "Convergence per change: from the UpdateRoute's answer (client-side clock) to the last \
         ACK of any proxy that received something from it; proxy p50/p99 pool every such proxy's \
         ACK over the changes; sent p50/p99 count from the UpdateRoute's sending to the last ACK \
         instead. affected = proxies of the {} nodes with the changed router's \
         service as a backend. On etcd the writes go through replica 0 and proxy group g \
         ({} streams) is on replica g mod {}.",
        shape.backends, args.streams_per_connection, args.replicas
    );
    Ok(())
}

/// The store's own commit latency, sorted: `count` transactions made one after another, each
/// one put of a fresh key under an absence compare, with no Weft in between. An UpdateRoute
/// cannot answer before one such durable commit: on the embedded store one fsync, on etcd a Raft
/// commit (the leader's and a follower's fsync on this machine's one disk, and the round trips
/// between them), so the ratio of the two bounds the convergence ratio counted from the sending.
/// `pause` before each: back to back (zero), the processes on the way stay awake; a pause as long
/// as the one between the measured writes makes each commit wake them as those writes do, which
/// on this virtual machine costs each hop time (docs/benchmark-history.md, 2026-12-07 23:38), and
/// etcd's commit has more hops than the embedded store's fsync.
async fn commit_latency(store: &dyn Store, count: usize, pause: Duration) -> Result<Vec<Duration>> {
    let value = bytes::Bytes::from(vec![b'x'; RECORD_BYTES]);
    let mut latencies = Vec::with_capacity(count);
    let warmup = if count == 0 { 0 } else { COMMIT_WARMUP };
    for i in 0..warmup + count {
        if i >= warmup && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let key = format!("commit/{}/{i}", pause.as_millis());
        let txn = Txn {
            compares: vec![Compare::Absent(key.clone())],
            ops: vec![Op::Put(key, value.clone())],
        };
        let started = Instant::now();
        let outcome = store.txn(txn).await?;
        let took = started.elapsed();
        if !matches!(outcome, TxnOutcome::Committed(_)) {
            bail!("a bare commit of a fresh key was refused: {outcome:?}");
        }
        if i >= warmup {
            latencies.push(took);
        }
    }
    latencies.sort_unstable();
    Ok(latencies)
}

/// One setup: `etcd` absent = 1 replica on its embedded store, else `args.replicas` replicas on
/// the cluster.
async fn run_setup(
    args: &ReplicasConvergenceArgs,
    binary: &Path,
    shape: MeshShape,
    dir: &Path,
    etcd: Option<&EtcdCluster>,
) -> Result<SetupResult> {
    let (label, count) = match etcd {
        Some(_) => ("etcd", args.replicas),
        None => ("embedded", 1),
    };
    if let Some(load) = machine::load_average() {
        println!("  {label}: load average {load:.2} (1 min) before the setup");
    }
    let mut extra = appmesh::big_quotas();
    extra.extend([
        "--auth-kek-file".to_string(),
        dir.join(format!("{label}-kek")).display().to_string(),
    ]);
    if let Some(etcd) = etcd {
        extra.extend([
            "--store".to_string(),
            etcd.store_url(),
            "--etcd-prefix".to_string(),
            "/weft-bench/".to_string(),
        ]);
    }
    let mut servers = Vec::with_capacity(count);
    for i in 0..count {
        let data = dir.join(format!("{label}-{i}"));
        std::fs::create_dir_all(&data)?;
        servers.push(Server::start(binary, &data, &extra)?);
    }
    let Some(writer) = servers.first() else {
        bail!("no replica started");
    };
    let api = Arc::new(Api::new(&writer.url, 32));
    let setup = Instant::now();
    appmesh::create_mesh(&api, MESH).await?;
    shape.create(&api, MESH, 32).await?;
    let setup = setup.elapsed();

    let xds: Vec<String> = servers.iter().map(|s| s.xds_addr.clone()).collect();
    let mut fleet = Fleet::new(&xds[0], args.protocol, args.streams_per_connection, false)?;
    let spc = args.streams_per_connection.max(1);
    for p in 0..args.proxies {
        // A fleet opens one HTTP/2 connection per group of streams, to the address of the
        // group's first proxy: a whole group goes to one replica.
        let replica = (p / spc) % count;
        let node = shape.node(p % shape.nodes);
        fleet.add(
            &xds[replica],
            ProxySpec {
                node_id: format!("mesh/{MESH}/virtualNode/{node}"),
                cluster: node,
            },
        )?;
    }
    let timeout = Duration::from_secs_f64(args.timeout.max(1.0));
    let connected = fleet.wait_all_configured(timeout * 2).await?;
    println!(
        "  {label}: {count} replica(s), mesh created in {:.1} s, {} proxies configured in {:.1} s",
        setup.as_secs_f64(),
        args.proxies,
        connected.as_secs_f64()
    );
    // Let the initial pushes settle so that each change counts its own responses only.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let affected: BTreeSet<usize> = (0..args.proxies)
        .filter(|p| shape.backends_of(p % shape.nodes).contains(&0))
        .collect();
    if affected.is_empty() {
        bail!("no proxy has service 0 as a backend: raise --proxies or --backends");
    }
    let quiet = QUIET;
    let mut result = SetupResult {
        affected: affected.len(),
        last_ack: Vec::with_capacity(args.changes),
        per_proxy: Vec::new(),
        write: Vec::with_capacity(args.changes),
        from_sent: Vec::with_capacity(args.changes),
    };
    for c in 0..args.changes {
        let weight = if c % 2 == 0 { 70 } else { 50 };
        let before = fleet.response_counts();
        let sent = Instant::now();
        appmesh::update_route(&api, MESH, &shape.router(0), "main", shape.route(0, weight)).await?;
        let answered = Instant::now();
        let got = fleet
            .wait_converged(&before, &affected, quiet, timeout)
            .await
            .with_context(|| format!("{label}: route change {c}"))?;
        let times: Vec<Duration> = got
            .iter()
            .map(|g| g.2.saturating_duration_since(answered))
            .collect();
        let last_ack = times.iter().copied().max().unwrap_or_default();
        result.last_ack.push(last_ack);
        result.per_proxy.extend(times);
        result.write.push(answered - sent);
        let last_at = got.iter().map(|g| g.2).max().unwrap_or(answered);
        result
            .from_sent
            .push(last_at.saturating_duration_since(sent));
    }
    for s in &mut servers {
        s.check_alive()?;
    }
    if fleet.ended() > 0 {
        bail!(
            "{label}: {} ADS streams ended during the run: {:?}",
            fleet.ended(),
            fleet.errors
        );
    }
    drop(fleet);
    drop(servers);
    Ok(result)
}
