//! `weft`: the one binary. Thin: parses the command line and wires the crates.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's malloc: the API and xDS paths allocate many small,
/// short-lived buffers on two or more threads, where glibc's per-thread arenas kept
/// growing and trimming their heaps (`grow_heap`/`mprotect` in profiles of the write path).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backup;
mod dashboard;
mod demo;
mod proxy_status;
mod readiness;
mod server;
mod store_backend;
mod xds_tls;

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
    Server(Box<server::ServerArgs>),
    /// A whole mesh on this machine: control plane, sample services, their
    /// agents and Envoys, a router with a weighted, header-matched route.
    Demo(demo::DemoArgs),
    /// Show every proxy connected to a control plane: its node, the version
    /// it ACKed per resource type, and its last NACK.
    ProxyStatus(proxy_status::ProxyStatusArgs),
    /// Print the URL of the live dashboard with a one-time login token (asked of the control
    /// plane with the administrator's credentials, as `weft proxy-status` does).
    Dashboard(dashboard::DashboardArgs),
    /// Write every App Mesh and Cloud Map resource of a control plane (specs, tags, instances)
    /// as one JSON document, in the order a restore creates them.
    Backup(backup::BackupArgs),
    /// Create every resource of a backup that a control plane lacks; refuses, before writing
    /// anything, if any exists with a different definition.
    Restore(backup::RestoreArgs),
    /// Create, list and revoke the join tokens proxies prove who they are with the first
    /// time they ask the control plane's CA for a certificate.
    JoinToken(weft_ca::cli::JoinTokenArgs),
    /// Create, list and revoke the access keys the API accepts (signed with an administrator's
    /// key from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_SHARED_CREDENTIALS_FILE).
    AccessKey(weft_auth::cli::AccessKeyArgs),
    /// Run beside a workload: write the Envoy bootstrap from App Mesh's
    /// environment variables, start Envoy and keep it running.
    Agent(Box<AgentCmd>),
    /// A tiny HTTP app answering with its name, for demos and tests.
    SampleApp(weft_agent::SampleAppArgs),
    /// The step between an agent and its Envoy: takes Envoy's identity, ties its life to the
    /// agent's, and executes Envoy. Started by `weft agent`, not by hand.
    #[command(hide = true)]
    ExecEnvoy(weft_agent::launch::ExecArgs),
}

/// Resolves on SIGTERM or SIGINT.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    // The handlers are installed now, not when the future is first awaited:
    // a SIGTERM that arrives while the server is still starting (after it
    // printed its addresses, before it waits for the signal) is then a
    // graceful shutdown, not the signal's default action, which kills the
    // process.
    #[cfg(unix)]
    let (term, interrupt) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            async fn received(signal: Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = received(term) => {},
                _ = received(interrupt) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down");
    }
}

/// `weft agent`: the Envoy supervisor plus optional self-registration and
/// the workload's DNS resolver.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AgentCmd {
    #[command(subcommand)]
    action: Option<AgentAction>,
    #[command(flatten)]
    agent: weft_agent::AgentArgs,
    #[command(flatten)]
    registration: weft_agent::RegistrationArgs,
    #[command(flatten)]
    redirect: weft_agent::redirect::RedirectArgs,
    #[command(flatten)]
    dns: weft_agent::dns::DnsArgs,
}

#[derive(Subcommand)]
enum AgentAction {
    /// Redirect the workload's traffic through Envoy (transparent mode) from App Mesh's
    /// variables (APPMESH_APP_PORTS, APPMESH_IGNORE_UID, ...), then exit: the role of an
    /// init container or ECS proxyConfiguration. Idempotent.
    Init(weft_agent::redirect::RedirectArgs),
    /// Remove exactly the redirection rules `init` added, and nothing else. Idempotent.
    Cleanup,
}

async fn agent(cmd: AgentCmd) -> Result<()> {
    match cmd.action {
        Some(AgentAction::Init(args)) => {
            let config = weft_intercept_config()?;
            weft_agent::redirect::init(&config, args.netfilter)?;
            return Ok(());
        }
        Some(AgentAction::Cleanup) => {
            weft_agent::redirect::cleanup()?;
            return Ok(());
        }
        None => {}
    }
    let mut config = weft_agent::AgentConfig::from_args(&cmd.agent)?;
    config.launcher = Some(std::env::current_exe().context("finding the weft binary")?);
    if cmd.agent.print_bootstrap {
        println!("{}", weft_agent::bootstrap_json(&config));
        return Ok(());
    }
    let registration = cmd.registration.registration()?;
    // The workload's resolver answers from before Envoy starts until it has
    // stopped: the app may resolve names while Envoy drains.
    let resolver = match cmd.dns.resolver(&config.xds_endpoint)? {
        Some(resolver) => {
            let running = weft_agent::dns::start(resolver).await?;
            // A plain line on stdout, so scripts and tests find a port chosen with :0.
            println!("weft agent dns listening on {}", running.addr);
            Some(running)
        }
        None => None,
    };
    // On SIGTERM the instance leaves the registry first (clients stop picking
    // it), then Envoy drains: the order ECS followed for App Mesh tasks.
    let (deregistered_tx, deregistered_rx) = tokio::sync::oneshot::channel::<()>();
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = signal_tx.send(true);
    });
    let registering = {
        let mut rx = signal_rx.clone();
        tokio::spawn(async move {
            if let Some(reg) = registration {
                weft_agent::run_registration(reg, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
            } else {
                let _ = rx.wait_for(|s| *s).await;
            }
            let _ = deregistered_tx.send(());
        })
    };
    // APPMESH_START_ENABLED=1: apply the redirection now and remove it on the way out, as App
    // Mesh's proxy route manager did.
    let redirected = match weft_agent::redirect::start_enabled()? {
        Some(intercept) => {
            anyhow::ensure!(
                config.listener_mode == weft_agent::ListenerMode::Transparent,
                "APPMESH_START_ENABLED=1 redirects traffic to Envoy's ingress and egress ports, \
                 which only transparent mode (WEFT_LISTENER_MODE=transparent) listens on"
            );
            weft_agent::redirect::init(&intercept, cmd.redirect.netfilter)?;
            true
        }
        None => false,
    };
    let outcome = weft_agent::run(config, async move {
        let _ = deregistered_rx.await;
    })
    .await;
    if redirected {
        if let Err(e) = weft_agent::redirect::cleanup() {
            tracing::error!(error = %e, "removing the traffic redirection failed");
        }
    }
    if let Some(resolver) = resolver {
        resolver.stop().await;
    }
    let outcome = outcome?;
    registering.abort();
    let code = outcome.exit_code();
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}

/// App Mesh's redirection variables, read and checked.
fn weft_intercept_config() -> Result<weft_agent::redirect::InterceptConfig> {
    Ok(weft_agent::redirect::InterceptConfig::from_env()?)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::ExecEnvoy(args) = &cli.command {
        // Before any thread exists: the identity change applies to the calling thread.
        weft_agent::launch::exec(args)?;
        return Ok(());
    }
    let filter = match &cli.command {
        Command::Server(a) => a.log.clone(),
        Command::Demo(_) => std::env::var("WEFT_LOG").unwrap_or_else(|_| "warn".into()),
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
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(*args, shutdown_signal()).await,
            Command::Demo(args) => demo::run(args, shutdown_signal()).await,
            Command::Agent(args) => agent(*args).await,
            Command::ProxyStatus(args) => proxy_status::run(args).await,
            Command::Dashboard(args) => dashboard::run(args).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Restore(args) => backup::restore(args).await,
            Command::JoinToken(args) => Ok(weft_ca::cli::run(args).await?),
            Command::AccessKey(args) => Ok(weft_auth::cli::run(args).await?),
            Command::SampleApp(args) => {
                weft_agent::run_sample_app(&args, shutdown_signal()).await?;
                Ok(())
            }
            Command::ExecEnvoy(_) => Ok(()),
        }
    });
    // Dropping a runtime waits for its blocking tasks without bound: a
    // shutdown must end even if one is stuck (on a hung disk, say).
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    outcome
}
