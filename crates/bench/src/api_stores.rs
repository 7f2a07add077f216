//! `weft-bench api-stores`: the App Mesh API's throughput and p99 on the embedded store and on
//! a real 3-member etcd cluster on this machine, the same phases against each in one run (issue
//! 22's goal on etcd: CreateVirtualNode ≥ 1,000/s with p99 ≤ 20 ms), and the bound this
//! machine's etcd sets (see [`bound`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let binary = server::weft_binary(&args.weft_bin)?;
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
    bound(&args, &etcd).await?;
    drop(etcd);
    Ok(())
}

/// The machine's bound, on the same cluster after the server stopped: what
/// etcd gives `concurrency` clients that make, each on its own and with no
/// Weft in between, the one etcd request a CreateVirtualNode makes (it reads
/// ahead from its replica's own copy of the prefix): a transaction putting the
/// record and a guard under an absence compare. A Create cannot answer before
/// one such etcd commit, so this is the floor of its latency; Weft batches the
/// writes of concurrent Creates into shared transactions, so its throughput may
/// pass it.
async fn bound(args: &ApiStoresArgs, etcd: &EtcdCluster) -> Result<()> {
    use weft_store::{Compare, Op, Store, Txn};
    let store = etcd.store("/weft-bench-bound/").await;
    let stop = Instant::now() + Duration::from_secs_f64(args.warmup + args.duration);
    let measure_from = Instant::now() + Duration::from_secs_f64(args.warmup);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let guard = format!("guard/{t}");
                let mut latencies = Vec::new();
                let mut refused = 0u64;
                let mut i = 0u64;
                while Instant::now() < stop {
                    i += 1;
                    let key = format!("node/{t}/{i}");
                    let started = Instant::now();
                    let txn = Txn {
                        compares: vec![Compare::Absent(key.clone())],
                        ops: vec![
                            Op::Put(key, bytes::Bytes::from_static(&[b'x'; 600])),
                            Op::Put(guard.clone(), bytes::Bytes::from_static(b"{}")),
                        ],
                    };
                    let committed =
                        matches!(store.txn(txn).await?, weft_store::TxnOutcome::Committed(_));
                    if started >= measure_from {
                        latencies.push(started.elapsed());
                        refused += u64::from(!committed);
                    }
                }
                Ok::<_, weft_store::StoreError>((latencies, refused))
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (l, r) = task.await.context("a bound task")??;
        latencies.extend(l);
        refused += r;
    }
    latencies.sort_unstable();
    let q = |q: f64| {
        let n = latencies.len().max(1);
        let rank = ((n as f64 * q).ceil() as usize).clamp(1, n);
        latencies.get(rank - 1).copied().unwrap_or_default()
    };
    println!(
        "{:<9} {:<21} {:>10.0} {:>9} {:>9} {:>7}",
        "etcd bare",
        "write txn",
        latencies.len() as f64 / args.duration,
        ms(q(0.5)),
        ms(q(0.99)),
        refused
    );
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
