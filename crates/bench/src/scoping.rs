//! `weft-bench scoping`: how many bytes of config one proxy receives as the
//! mesh grows around it while its own backends stay the same.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::ads::{AdsProtocol, Fleet, ProxySpec};
use crate::appmesh::{self, MeshShape};
use crate::load::Api;
use crate::machine;
use crate::server::{self, Server};

/// Mesh of the benchmark.
const MESH: &str = "scale";
/// The observed proxy's virtual node.
const OBSERVER: &str = "observer";

/// Flags of `weft-bench scoping`.
#[derive(clap::Args)]
pub struct ScopingArgs {
    /// Mesh sizes (virtual services, each with a router, a route and a node), in growing order.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub sizes: Vec<usize>,
    /// Backends of the observed proxy's node (services 0 … n-1), fixed while the mesh grows.
    #[arg(long, default_value_t = 3)]
    pub backends: usize,
    /// Concurrent API requests while growing the mesh.
    #[arg(long, default_value_t = 32)]
    pub setup_concurrency: usize,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    pub weft_bin: Option<PathBuf>,
}

/// What one fresh proxy of the observer node holds.
struct Held {
    resources: u64,
    bytes: u64,
}

async fn observe(xds: &str, protocol: AdsProtocol) -> Result<Held> {
    let mut fleet = Fleet::new(xds, protocol, 1, true)?;
    fleet.add(
        xds,
        ProxySpec {
            node_id: format!("mesh/{MESH}/virtualNode/{OBSERVER}"),
            cluster: OBSERVER.into(),
        },
    )?;
    fleet.wait_all_configured(Duration::from_secs(60)).await?;
    let before = fleet.response_counts();
    // Let the rollout finish: nothing more for 300 ms.
    fleet
        .wait_converged(
            &before,
            &Default::default(),
            Duration::from_millis(300),
            Duration::from_secs(60),
        )
        .await?;
    let s = &fleet.stats[0];
    Ok(Held {
        resources: s.resources_held.load(Ordering::Relaxed),
        bytes: s.bytes_held.load(Ordering::Relaxed),
    })
}

/// Runs the benchmark and prints its table.
pub async fn run(args: ScopingArgs) -> Result<()> {
    if args.sizes.is_empty() || args.sizes.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--sizes must be growing");
    }
    let first = args.sizes[0];
    if args.backends == 0 || args.backends > first {
        bail!("--backends must be between 1 and the smallest size");
    }
    let binary = server::weft_binary(&args.weft_bin)?;
    let data = tempfile::Builder::new()
        .prefix("weft-bench-scoping-")
        .tempdir()
        .context("creating a temporary data folder")?;
    let server = Server::start(&binary, &data.path().join("data"), &appmesh::big_quotas())?;
    let api = Arc::new(Api::new(&server.url, args.setup_concurrency));
    appmesh::create_mesh(&api, MESH).await?;
    let shape = |services: usize| MeshShape {
        services,
        nodes: services,
        backends: 10.min(services),
    };
    let observer_backends: Vec<String> = (0..args.backends)
        .map(|j| shape(first).service(j))
        .collect();
    appmesh::create_node(
        &api,
        MESH,
        appmesh::node_body(
            OBSERVER,
            8080,
            "http",
            "observer.scale.local",
            &observer_backends,
        ),
    )
    .await?;

    println!("weft-bench scoping: config one proxy receives as the mesh grows");
    println!("date:       {}", machine::utc_now());
    println!("machine:    {}", machine::describe());
    println!("server:     {}", binary.display());
    println!(
        "observed:   a fresh proxy of virtual node {OBSERVER:?} with {} fixed virtual-service backends \
         (each a router with a 50/50 route over 2 nodes); every other node has 10 backends",
        args.backends
    );
    println!();
    println!(
        "{:>8} {:>9} {:>12} {:>12} {:>9} {:>12} {:>12}",
        "services",
        "resources",
        "delta bytes",
        "sotw bytes",
        "vs first",
        "other nodes",
        "mesh records"
    );
    let mut prev = 0;
    let mut rows = Vec::new();
    for &size in &args.sizes {
        let s = shape(size);
        let futs = (prev..size).map(|i| {
            let api = api.clone();
            async move {
                let backends: Vec<String> =
                    s.backends_of(i).into_iter().map(|j| s.service(j)).collect();
                appmesh::create_node(
                    &api,
                    MESH,
                    appmesh::node_body(
                        &s.node(i),
                        8080,
                        "http",
                        &format!("{}.scale.local", s.node(i)),
                        &backends,
                    ),
                )
                .await?;
                appmesh::create_router(&api, MESH, &s.router(i), 8080, "http").await?;
                anyhow::Ok(())
            }
        });
        stream::iter(futs)
            .buffer_unordered(args.setup_concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        let futs = (prev..size).map(|j| {
            let api = api.clone();
            async move {
                appmesh::create_route(&api, MESH, &s.router(j), "main", s.route(j, 50)).await?;
                appmesh::create_service(&api, MESH, &s.service(j), &s.router(j)).await
            }
        });
        stream::iter(futs)
            .buffer_unordered(args.setup_concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        prev = size;
        let delta = observe(&server.xds_addr, AdsProtocol::Delta).await?;
        let sotw = observe(&server.xds_addr, AdsProtocol::Sotw).await?;
        rows.push((size, delta, sotw));
        let (size, delta, sotw) = &rows[rows.len() - 1];
        let base = rows[0].1.bytes.max(1) as f64;
        println!(
            "{:>8} {:>9} {:>12} {:>12} {:>8.2}x {:>12} {:>12}",
            size,
            delta.resources,
            delta.bytes,
            sotw.bytes,
            delta.bytes as f64 / base,
            size,
            size * 4 + 2
        );
    }
    let min = rows.iter().map(|r| r.1.bytes).min().unwrap_or(0);
    let max = rows.iter().map(|r| r.1.bytes).max().unwrap_or(0);
    let flat = max as f64 <= min as f64 * 1.05;
    println!();
    println!(
        "goal: flat (a proxy's config depends on its backends, not on the mesh): largest / smallest = {:.3} -> {}",
        max as f64 / min.max(1) as f64,
        if flat { "met" } else { "MISSED" }
    );
    println!(
        "bytes = sum of the encoded sizes (protobuf `Any`) of the clusters, endpoints, listeners \
         and route configurations the proxy holds after its initial rollout, measured by the ADS \
         client; mesh records = mesh + nodes, routers, routes and services."
    );
    drop(server);
    Ok(())
}
