//! `weft-bench api-stores`: the App Mesh API's throughput and p99 on the embedded store and on
//! a real 3-member etcd cluster on this machine, the same phases against each in one run (issue
//! 22's goal on etcd: CreateVirtualNode ≥ 1,000/s with p99 ≤ 20 ms).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use weft_store_etcd::testing::EtcdCluster;

use crate::load::{self, Api, Pace, Workload};
use crate::machine::{self, ms};
use crate::server::{self, Server};

/// Mesh of the read phases.
const MESH: &str = "bench";
/// Mesh of the create phase.
const CREATE_MESH: &str = "bench-create";

/// Flags of `weft-bench api-stores`.
#[derive(clap::Args)]
pub struct ApiStoresArgs {
    /// Concurrent client tasks, each with its own keep-alive connection.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Warm-up seconds before each phase (not counted).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Virtual nodes created before the measurements (described in the Describe phase).
    #[arg(long, default_value_t = 200)]
    pub nodes: usize,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    pub weft_bin: Option<PathBuf>,
}

/// Runs the phases against a server on each store and prints one row per store and phase.
pub async fn run(args: ApiStoresArgs) -> Result<()> {
    let binary = match &args.weft_bin {
        Some(b) => b.clone(),
        None => server::default_weft_binary()?,
    };
    println!("weft-bench api-stores: the App Mesh API on the embedded store and on etcd");
    println!("date:    {}", machine::utc_now());
    println!("machine: {}", machine::describe());
    println!(
        "{:<9} {:<21} {:>10} {:>9} {:>9} {:>7}",
        "store", "operation", "req/s", "p50 ms", "p99 ms", "errors"
    );
    let quotas: Vec<String> = [
        "--quota",
        "virtual-nodes-per-mesh=1000000",
        "--quota",
        "meshes=1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let dir = tempfile::tempdir().context("a temporary folder")?;
    {
        let server = Server::start(&binary, &dir.path().join("embedded"), &quotas)?;
        phases(&args, &server, "embedded").await?;
    }
    let etcd = EtcdCluster::start(3).await;
    let mut extra = quotas.clone();
    extra.extend(["--store".to_string(), etcd.store_url()]);
    {
        let server = Server::start(&binary, &dir.path().join("etcd"), &extra)?;
        phases(&args, &server, "etcd (3)").await?;
    }
    drop(etcd);
    Ok(())
}

async fn phases(args: &ApiStoresArgs, server: &Server, store: &str) -> Result<()> {
    let api = Arc::new(Api::new(&server.url, args.concurrency));
    load::create_mesh(&api, MESH).await?;
    load::create_mesh(&api, CREATE_MESH).await?;
    load::create_nodes(api.clone(), MESH, args.nodes, args.concurrency).await?;
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let workloads = [
        Workload::Describe {
            mesh: MESH.into(),
            nodes: args.nodes,
        },
        Workload::Create {
            meshes: vec![CREATE_MESH.to_string()],
        },
        Workload::Update {
            mesh: MESH.into(),
            nodes: args.nodes,
        },
    ];
    for workload in workloads {
        let result = load::run_phase(
            api.clone(),
            workload,
            args.concurrency,
            Pace::Closed,
            warmup,
            duration,
            None,
        )
        .await?;
        println!(
            "{:<9} {:<21} {:>10.0} {:>9} {:>9} {:>7}",
            store,
            result.operation,
            result.throughput(),
            ms(result.quantile(0.5)),
            ms(result.quantile(0.99)),
            result.errors
        );
        if let Some(e) = &result.first_error {
            println!("          first error: {e}");
        }
    }
    Ok(())
}
