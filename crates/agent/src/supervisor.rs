//! Running Envoy beside the workload: write the bootstrap, start Envoy, restart it when it
//! exits, and on shutdown drain it and stop it.
//!
//! This is the role of App Mesh's Agent for Envoy (user guide `envoy-config.md`, "Agent
//! variables"): it logs every exit status and restarts up to `APPNET_ENVOY_RESTART_COUNT` times,
//! and on shutdown waits `LISTENER_DRAIN_WAIT_TIME_S` for connections to drain. Unlike App
//! Mesh's agent (default 0 restarts), Weft restarts without limit by default, with backoff:
//! that is what users expect of a supervisor.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::admin;
use crate::bootstrap::bootstrap_json;
use crate::config::AgentConfig;
use crate::envoy::{envoy_command, find_envoy};
use crate::error::AgentError;
use crate::identity::RunningIdentity;

/// First delay before restarting Envoy; doubles per consecutive quick exit.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest delay between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An Envoy that ran this long was healthy: the next restart starts from the initial backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// What the supervisor's Envoy is doing, observable while it runs ([`Supervisor::state`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvoyState {
    /// PID of the running Envoy, if one runs.
    pub pid: Option<u32>,
    /// How many times Envoy has been started.
    pub starts: u32,
    /// How the last Envoy exited.
    pub last_exit: Option<ExitStatus>,
    /// The bootstrap file Envoy was started with.
    pub bootstrap_path: Option<PathBuf>,
    /// Shutdown has begun (draining or stopping).
    pub stopping: bool,
    /// The SDS socket the agent serves the proxy's identity on (workload identity on).
    pub sds_socket: Option<PathBuf>,
}

/// How a supervisor run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown was requested; Envoy was drained and stopped.
    Stopped {
        /// Restarts performed during the run.
        restarts: u32,
    },
    /// Envoy exited and the restart limit was reached.
    EnvoyExited {
        /// Envoy's last exit status.
        status: ExitStatus,
        /// Restarts performed during the run.
        restarts: u32,
    },
}

impl Outcome {
    /// The exit code for the agent process: 0 after a requested stop, else Envoy's (128 + signal
    /// when a signal killed it, as shells report it), so orchestrators see Envoy's failure.
    pub fn exit_code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Outcome::Stopped { .. } => 0,
            Outcome::EnvoyExited { status, .. } => status
                .code()
                .or_else(|| status.signal().map(|s| 128 + s))
                .unwrap_or(1),
        }
    }
}

/// Supervises one Envoy. [`Supervisor::state`] lets callers (tests, `weft demo`) watch it.
pub struct Supervisor {
    config: AgentConfig,
    state: watch::Sender<EnvoyState>,
}

/// Runs Envoy for `config` until `shutdown` completes (then drains and stops it), or until Envoy
/// exits more often than the restart limit allows.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, AgentError> {
    Supervisor::new(config).run(shutdown).await
}

impl Supervisor {
    /// A supervisor for `config` (validate it first: [`AgentConfig::validate`]).
    pub fn new(config: AgentConfig) -> Self {
        let (state, _) = watch::channel(EnvoyState::default());
        Supervisor { config, state }
    }

    /// A view of Envoy's state that updates as Envoy starts and exits.
    pub fn state(&self) -> watch::Receiver<EnvoyState> {
        self.state.subscribe()
    }

    /// See [`run`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<Outcome, AgentError> {
        let envoy_bin = find_envoy(self.config.envoy_bin.as_deref())?;
        if self.config.identity.is_none() {
            tracing::warn!(
                "no join token (WEFT_JOIN_TOKEN or WEFT_JOIN_TOKEN_FILE): Envoy speaks \
                 plaintext xDS, which `weft server` refuses unless started with \
                 --insecure-plaintext-xds; create a token with `weft join-token create`"
            );
        } else if !self.config.xds_tls {
            tracing::warn!(
                "plaintext xDS (WEFT_INSECURE_PLAINTEXT_XDS): for local experiments only"
            );
        }
        // Kept alive until the run ends: dropping it removes the temporary folder.
        let (dir, _temp_dir) = run_dir(&self.config)?;
        let config = &with_sds_socket(&self.config, &dir);
        let bootstrap_path = bootstrap_file_name(config, &dir);
        tokio::fs::write(&bootstrap_path, bootstrap_json(config))
            .await
            .map_err(|e| AgentError::io(format!("writing {}", bootstrap_path.display()), e))?;
        hand_over(config, &envoy_bin, &dir, &bootstrap_path)?;
        // The SDS socket is made after `hand_over` gave the folder to Envoy's identity, and is
        // served before Envoy starts. Dropped (socket removed) when the run ends.
        let socket = config
            .sds_socket
            .clone()
            .unwrap_or_else(|| dir.join(crate::identity::SDS_SOCKET_FILE));
        let files = crate::file_secrets::FileSecrets::default();
        let (mut identity, _files_only) = match &config.identity {
            Some(identity) => (
                Some(RunningIdentity::start(
                    identity,
                    &socket,
                    config.resource.to_string(),
                    config.envoy_identity,
                    files,
                )?),
                None,
            ),
            None if config.serve_sds => (
                None,
                Some(crate::sds::serve_without_identity(
                    &socket,
                    config.envoy_identity,
                    files,
                )?),
            ),
            None => (None, None),
        };
        let sds_socket = config.serve_sds.then_some(socket);
        self.state.send_modify(|s| {
            s.bootstrap_path = Some(bootstrap_path.clone());
            s.sds_socket = sds_socket;
        });
        // Completes if the proxy cannot have an identity (the CA refused the join token).
        let failed = async {
            match &mut identity {
                Some(identity) => identity.failed().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(failed);
        info!(node = %config.node_id, xds = %config.xds_endpoint, envoy = %envoy_bin.display(),
              bootstrap = %bootstrap_path.display(), "starting Envoy");

        tokio::pin!(shutdown);
        let mut restarts = 0u32;
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let started = Instant::now();
            let mut child = envoy_command(&envoy_bin, config, &bootstrap_path)
                .spawn()
                .map_err(|e| AgentError::io(format!("starting {}", envoy_bin.display()), e))?;
            let pid = child.id();
            info!(pid, admin_port = config.admin_port, "Envoy started");
            self.state.send_modify(|s| {
                s.pid = pid;
                s.starts += 1;
            });

            tokio::select! {
                status = child.wait() => {
                    let status = status.map_err(|e| AgentError::io("waiting for Envoy", e))?;
                    self.state.send_modify(|s| {
                        s.pid = None;
                        s.last_exit = Some(status);
                    });
                    let ran = started.elapsed();
                    warn!(pid, %status, ran_for = ?ran, "Envoy exited");
                    if config.restart_limit.is_some_and(|limit| restarts >= limit) {
                        warn!(restarts, "restart limit (APPNET_ENVOY_RESTART_COUNT) reached; not restarting Envoy");
                        return Ok(Outcome::EnvoyExited { status, restarts });
                    }
                    if ran >= STABLE_AFTER {
                        backoff = INITIAL_BACKOFF;
                    }
                    info!(delay = ?backoff, "restarting Envoy");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = &mut shutdown => return Ok(Outcome::Stopped { restarts }),
                        e = &mut failed => return Err(e),
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    restarts += 1;
                }
                _ = &mut shutdown => {
                    self.state.send_modify(|s| s.stopping = true);
                    let status = stop(config, &mut child, pid).await?;
                    self.state.send_modify(|s| {
                        s.pid = None;
                        s.last_exit = Some(status);
                    });
                    return Ok(Outcome::Stopped { restarts });
                }
                e = &mut failed => {
                    // Nothing to drain: without its identity the proxy never served TLS.
                    error!(error = %e, "stopping Envoy: the proxy cannot get its certificate");
                    self.state.send_modify(|s| s.stopping = true);
                    let status = terminate(config, &mut child, pid).await?;
                    self.state.send_modify(|s| {
                        s.pid = None;
                        s.last_exit = Some(status);
                    });
                    return Err(e);
                }
            }
        }
    }
}

/// `config` with its SDS socket placed in `dir` when no path was given.
fn with_sds_socket(config: &AgentConfig, dir: &Path) -> AgentConfig {
    let mut config = config.clone();
    if config.sds_socket.is_none() {
        config.sds_socket = Some(dir.join(crate::identity::SDS_SOCKET_FILE));
    }
    config
}

/// The folder for the bootstrap: the configured one (kept), or a fresh temporary one (removed
/// when the returned guard drops).
fn run_dir(config: &AgentConfig) -> Result<(PathBuf, Option<tempfile::TempDir>), AgentError> {
    match &config.run_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| AgentError::io(format!("creating {}", dir.display()), e))?;
            Ok((dir.clone(), None))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("weft-agent-")
                .tempdir()
                .map_err(|e| AgentError::io("creating a temporary run folder", e))?;
            Ok((temp.path().to_path_buf(), Some(temp)))
        }
    }
}

/// When Envoy runs as another identity, gives it what it must read and write: the run folder
/// and bootstrap (created by the agent, private to it) and the admin access log; and checks
/// that identity can execute Envoy at all.
fn hand_over(
    config: &AgentConfig,
    envoy_bin: &Path,
    dir: &Path,
    bootstrap_path: &Path,
) -> Result<(), AgentError> {
    let identity = config.envoy_identity;
    if identity.is_unchanged() {
        return Ok(());
    }
    if config.launcher.is_none() {
        return Err(AgentError::config(
            crate::config::IGNORE_UID,
            "running Envoy as another identity needs the `weft` binary to start it \
             (AgentConfig::launcher)",
        ));
    }
    crate::launch::check_executable_by(envoy_bin, identity).map_err(|detail| {
        AgentError::EnvoyNotFound {
            detail: format!(
                "{detail}; Envoy runs as APPMESH_IGNORE_UID, so put it where that user can                  execute it (`scripts/demo` and `scripts/test` install a copy in                  /usr/local/lib/weft/envoy) and point ENVOY_BIN there"
            ),
        }
    })?;
    let chown = |path: &Path| {
        std::os::unix::fs::chown(path, identity.uid, identity.gid).map_err(|e| {
            AgentError::io(format!("giving {} to Envoy's identity", path.display()), e)
        })
    };
    if config.run_dir.is_none() {
        chown(dir)?;
    }
    chown(bootstrap_path)?;
    // Envoy opens its admin access log itself; in a sticky folder such as /tmp it may only open
    // a file it owns (fs.protected_regular).
    // Only a regular file: a device such as /dev/null or /dev/stdout is left as it is.
    let log = &config.admin_access_log;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| AgentError::io(format!("opening {}", log.display()), e))?;
    let regular = file
        .metadata()
        .map_err(|e| AgentError::io(format!("reading {}", log.display()), e))?
        .is_file();
    if regular {
        chown(log)?;
    }
    Ok(())
}

/// Drain, then SIGTERM, then SIGKILL after the grace period.
async fn stop(
    config: &AgentConfig,
    child: &mut Child,
    pid: Option<u32>,
) -> Result<ExitStatus, AgentError> {
    // Graceful drain: listeners keep accepting for the drain time, but every connection is
    // closed after its current request, so clients move to other instances without errors.
    match admin::drain_listeners(config.admin_port).await {
        Ok(()) => {
            info!(wait = ?config.drain_wait, "draining Envoy's listeners");
            if let Ok(status) = tokio::time::timeout(config.drain_wait, child.wait()).await {
                let status = status.map_err(|e| AgentError::io("waiting for Envoy", e))?;
                warn!(%status, "Envoy exited while draining");
                return Ok(status);
            }
        }
        // No admin (Envoy still starting, or wedged): nothing to drain, stop it now.
        Err(e) => warn!(error = %e, "could not drain Envoy; stopping it"),
    }
    terminate(config, child, pid).await
}

/// SIGTERM, then SIGKILL after the grace period.
async fn terminate(
    config: &AgentConfig,
    child: &mut Child,
    pid: Option<u32>,
) -> Result<ExitStatus, AgentError> {
    if let Some(pid) = pid {
        signal(pid, crate::signal::Signal::TERM);
    }
    match tokio::time::timeout(config.stop_grace, child.wait()).await {
        Ok(status) => {
            let status = status.map_err(|e| AgentError::io("waiting for Envoy", e))?;
            info!(%status, "Envoy stopped");
            Ok(status)
        }
        Err(_) => {
            warn!(grace = ?config.stop_grace, "Envoy ignored SIGTERM; killing it");
            child
                .start_kill()
                .map_err(|e| AgentError::io("killing Envoy", e))?;
            child
                .wait()
                .await
                .map_err(|e| AgentError::io("waiting for Envoy", e))
        }
    }
}

/// Sends a signal to Envoy. The PID cannot have been reused: Envoy is our
/// child and not yet reaped.
fn signal(pid: u32, signal: crate::signal::Signal) {
    if let Err(e) = crate::signal::send(pid, signal) {
        warn!(pid, signal = ?signal, error = %e, "could not signal Envoy");
    }
}

/// The bootstrap path a supervisor writes for `config` inside `dir` (tests, tooling).
pub fn bootstrap_file_name(config: &AgentConfig, dir: &Path) -> PathBuf {
    dir.join(format!("envoy-bootstrap-{}.json", config.admin_port))
}
