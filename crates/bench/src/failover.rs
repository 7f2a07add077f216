//! `weft-bench failover`: replicas of `weft server` on one real 3-member etcd cluster on this
//! machine, N simulated proxies over real ADS spread over them, each knowing every replica (as
//! `weft agent` lists them in Envoy's xDS cluster); one replica is killed with SIGKILL and the
//! time until every proxy it served has its config again from another replica is measured
//! (goal of issue 22: 5 s at 1,000 proxies).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weft_store_etcd::testing::EtcdCluster;

use crate::ads::{AdsProtocol, Fleet, ProxySpec};
use crate::appmesh::{self, MeshShape};
use crate::load::Api;
use crate::machine::ms;
use crate::server::{self, Server};

/// Mesh of the benchmark.
const MESH: &str = "scale";

/// Flags of `weft-bench failover`.
#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Simulated proxies, spread evenly over the replicas.
    #[arg(long, default_value_t = 1000)]
    pub proxies: usize,
    /// `weft server` replicas on the etcd cluster.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// ADS variant the proxies speak.
    #[arg(long, value_enum, default_value_t = AdsProtocol::Delta)]
    pub protocol: AdsProtocol,
    /// Virtual nodes (proxy `p` is an Envoy of node `p mod nodes`).
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Virtual services (each with its own router and route).
    #[arg(long, default_value_t = 100)]
    pub services: usize,
    /// ADS streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    pub streams_per_connection: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// What the replicas share: `etcd` (one 3-member cluster, one prefix: true replicas) or
    /// `mirrors` (each its own embedded store, the same mesh written to each: the proxies'
    /// side of a failover without etcd).
    #[arg(long, value_enum, default_value_t = Backend::Etcd)]
    pub backend: Backend,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    pub weft_bin: Option<PathBuf>,
}

/// What the replicas of the benchmark share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// One etcd cluster.
    Etcd,
    /// Nothing: each its own embedded store holding the same mesh.
    Mirrors,
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: FailoverArgs) -> Result<()> {
    if args.replicas < 2 {
        bail!("--replicas must be at least 2: one is killed");
    }
    let binary = server::weft_binary(&args.weft_bin)?;
    println!(
        "weft-bench failover: {} simulated proxies ({}) over {} replicas, {}",
        args.proxies,
        args.protocol.name(),
        args.replicas,
        match args.backend {
            Backend::Etcd => "on a 3-member etcd cluster",
            Backend::Mirrors => "each on its own embedded store holding the same mesh",
        }
    );
    let etcd = match args.backend {
        Backend::Etcd => Some(EtcdCluster::start(3).await),
        Backend::Mirrors => None,
    };
    let dir = tempfile::tempdir().context("a temporary folder")?;
    let kek = dir.path().join("auth-kek");
    let mut extra: Vec<String> = vec!["--auth-kek-file".into(), kek.display().to_string()];
    if let Some(etcd) = &etcd {
        extra.extend([
            "--store".into(),
            etcd.store_url(),
            "--etcd-prefix".into(),
            "/weft-bench/".into(),
        ]);
    }
    extra.extend(appmesh::big_quotas());
    let mut servers = Vec::new();
    for i in 0..args.replicas {
        let data = dir.path().join(format!("replica-{i}"));
        std::fs::create_dir_all(&data)?;
        servers.push(Some(Server::start(&binary, &data, &extra)?));
    }
    let shape = MeshShape {
        services: args.services,
        nodes: args.nodes,
        backends: 5.min(args.services),
    };
    // On etcd one replica takes the writes and every replica serves them; mirrors each take
    // them.
    let writers = match args.backend {
        Backend::Etcd => 1,
        Backend::Mirrors => args.replicas,
    };
    for server in servers.iter().take(writers).flatten() {
        let api = Arc::new(Api::new(&server.url, 32));
        appmesh::create_mesh(&api, MESH).await?;
        shape.create(&api, MESH, 32).await?;
    }
    let xds: Vec<String> = servers
        .iter()
        .flatten()
        .map(|s| s.xds_addr.clone())
        .collect();
    let mut fleet = Fleet::new(&xds[0], args.protocol, args.streams_per_connection, false)?;
    // Proxy p starts on replica p mod replicas and lists the others after it.
    for p in 0..args.proxies {
        let start = p % args.replicas;
        let endpoints: Vec<String> = (0..args.replicas)
            .map(|k| xds[(start + k) % args.replicas].clone())
            .collect();
        let node = shape.node(p % shape.nodes);
        fleet.add_failover(
            &endpoints,
            ProxySpec {
                node_id: format!("mesh/{MESH}/virtualNode/{node}"),
                cluster: format!("mesh/{MESH}/virtualNode/{node}"),
            },
        )?;
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let connected = fleet.wait_all_configured(timeout).await?;
    println!(
        "  {} proxies configured in {:.1} s",
        args.proxies,
        connected.as_secs_f64()
    );
    // Let the initial pushes settle, so that the responses counted after the kill are the
    // new streams' only.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let moving: BTreeSet<usize> = (0..args.proxies)
        .filter(|p| p % args.replicas == 0)
        .collect();
    let before = fleet.response_counts();
    let killed_at = Instant::now();
    // Dropping a server sends it SIGKILL.
    drop(servers[0].take());
    let mut last_reconnect = Duration::ZERO;
    let mut pending: BTreeSet<usize> = moving.clone();
    let mut reconnect_times = Vec::with_capacity(moving.len());
    while !pending.is_empty() {
        if killed_at.elapsed() > timeout {
            bail!(
                "{} of {} proxies had no config from another replica {timeout:?} after the kill",
                pending.len(),
                moving.len()
            );
        }
        let now = fleet.response_counts();
        let elapsed = killed_at.elapsed();
        pending.retain(|&p| {
            let back = now[p] > before[p];
            if back {
                reconnect_times.push(elapsed);
                last_reconnect = elapsed;
            }
            !back
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reconnect_times.sort();
    let median = reconnect_times
        .get(reconnect_times.len() / 2)
        .copied()
        .unwrap_or_default();
    println!(
        "  replica killed -> every proxy it served ({}) reconnected with config: {} ms (median {} ms); goal 5 s: {}",
        moving.len(),
        ms(last_reconnect),
        ms(median),
        if last_reconnect <= Duration::from_secs(5) {
            "met"
        } else {
            "missed"
        }
    );
    for s in servers.iter_mut().flatten() {
        s.check_alive()?;
    }
    drop(fleet);
    drop(servers);
    drop(etcd);
    Ok(())
}
