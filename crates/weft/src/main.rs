//! `weft`: the one binary. Thin: parses the command line and wires the crates.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use weft_api::{ApiConfig, Quotas, Service};
use weft_store::{EmbeddedOptions, EmbeddedStore, SharedStore};

mod control_plane;
mod proxy_status;

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "An open, self-hosted service mesh that keeps the AWS App Mesh API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the App Mesh API and the xDS server for Envoy.
    Server(ServerArgs),
    /// Show every proxy connected to a control plane: its node, the version
    /// it ACKed per resource type, and its last NACK.
    ProxyStatus(proxy_status::ProxyStatusArgs),
    /// Run beside a workload: write the Envoy bootstrap from App Mesh's
    /// environment variables, start Envoy and keep it running.
    Agent(weft_agent::AgentArgs),
    /// A tiny HTTP app answering with its name, for demos and tests.
    SampleApp(weft_agent::SampleAppArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Address of the App Mesh REST API (port 0 picks a free port).
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:9080")]
    listen: SocketAddr,
    /// Address of the xDS (ADS over gRPC) server Envoys connect to.
    #[arg(long, env = "WEFT_XDS_LISTEN", default_value = "127.0.0.1:15010")]
    xds_listen: SocketAddr,
    /// Folder of the embedded store (created if missing).
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "./weft-data")]
    data_dir: PathBuf,
    /// Region written into ARNs.
    #[arg(long, env = "WEFT_REGION", default_value = "us-east-1")]
    region: String,
    /// The 12-digit account that owns every resource (meshOwner, resourceOwner).
    #[arg(long, env = "WEFT_ACCOUNT_ID", default_value = "000000000000")]
    account_id: String,
    /// Override an App Mesh quota, e.g. `--quota virtual-nodes-per-mesh=500` (repeatable).
    #[arg(long = "quota", value_name = "NAME=VALUE")]
    quotas: Vec<String>,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` also works.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    log: String,
}

fn parse_quotas(items: &[String]) -> Result<Quotas> {
    let mut quotas = Quotas::default();
    for item in items {
        let Some((name, value)) = item.split_once('=') else {
            bail!("--quota expects NAME=VALUE, got {item:?}");
        };
        let value: usize = value
            .parse()
            .with_context(|| format!("quota {name}: {value:?} is not a number"))?;
        if !quotas.set(name, value) {
            bail!(
                "unknown quota {name:?}; known: {}",
                Quotas::NAMES.join(", ")
            );
        }
    }
    Ok(quotas)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

async fn server(args: ServerArgs) -> Result<()> {
    if args.account_id.len() != 12 || !args.account_id.bytes().all(|b| b.is_ascii_digit()) {
        bail!("--account-id must be 12 digits, got {:?}", args.account_id);
    }
    let config = ApiConfig {
        region: args.region,
        account: args.account_id,
        quotas: parse_quotas(&args.quotas)?,
        ..ApiConfig::default()
    };
    let store = EmbeddedStore::open(EmbeddedOptions::new(&args.data_dir))
        .await
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let store: SharedStore = store;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let xds_listener = tokio::net::TcpListener::bind(args.xds_listen)
        .await
        .with_context(|| format!("binding {}", args.xds_listen))?;
    let xds_addr = xds_listener.local_addr()?;
    tracing::info!(%addr, %xds_addr, data_dir = %args.data_dir.display(), "control plane listening");
    // Plain lines on stdout so scripts and tests can find ports chosen with :0.
    println!("weft api listening on http://{addr}");
    println!("weft xds listening on {xds_addr}");

    let cache = weft_xds::SnapshotCache::new();
    let (resolver, runtime) = control_plane::new(store.clone(), cache.clone());
    let ads = weft_xds::AdsServer::new(cache, std::sync::Arc::new(resolver));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let runtime_task = tokio::spawn(runtime.run(stopped(stop_rx.clone())));
    let ads_task = {
        let ads = ads.clone();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { ads.serve(xds_listener, stop).await })
    };

    let service = Service::new(store, config);
    let sweeper = service.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
        loop {
            tick.tick().await;
            match sweeper.sweep_expired_tokens(weft_api::service::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(removed = n, "expired client tokens swept"),
                Err(e) => tracing::warn!(error = %e, "sweeping client tokens failed"),
            }
        }
    });
    let app = weft_api::router(service).merge(proxy_status::router(ads));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        })
        .await
        .context("serving the API")?;
    match ads_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "xDS server ended with an error"),
        Err(e) => tracing::warn!(error = %e, "xDS server task failed"),
        Ok(Ok(())) => {}
    }
    let _ = runtime_task.await;
    Ok(())
}

async fn agent(args: weft_agent::AgentArgs) -> Result<()> {
    let config = weft_agent::AgentConfig::from_args(&args)?;
    if args.print_bootstrap {
        println!("{}", weft_agent::bootstrap_json(&config));
        return Ok(());
    }
    let outcome = weft_agent::run(config, shutdown_signal()).await?;
    let code = outcome.exit_code();
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = match &cli.command {
        Command::Server(a) => a.log.clone(),
        _ => std::env::var("WEFT_LOG").unwrap_or_else(|_| "info".into()),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server(args).await,
            Command::Agent(args) => agent(args).await,
            Command::ProxyStatus(args) => proxy_status::run(args).await,
            Command::SampleApp(args) => {
                weft_agent::run_sample_app(&args, shutdown_signal()).await?;
                Ok(())
            }
        }
    })
}
