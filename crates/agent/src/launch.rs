//! Starting Envoy so that it runs as its own identity and never outlives the agent.
//!
//! The agent starts Envoy through `weft exec-envoy` (the [`exec`] function), a step that runs in
//! the new process before Envoy replaces it:
//! - it takes the ignored user and group (`APPMESH_IGNORE_UID` / `APPMESH_IGNORE_GID`), so that
//!   the redirection rules let Envoy's own connections through (App Mesh's Envoy image ran as
//!   uid 1337 for the same reason);
//! - then asks the kernel to SIGKILL it when the agent goes away (`PR_SET_PDEATHSIG`, set after
//!   the identity change, which would clear it), and exits at once if the agent is already gone;
//! - then `execv`s Envoy, which keeps the death signal (Envoy is not set-user-ID).
//!
//! A separate step rather than code run between `fork` and `exec` in the agent: that needs
//! `unsafe` (`CommandExt::pre_exec`), which this workspace forbids. The death signal is tied to
//! the *thread* that started the process (prctl(2)); the supervisor starts Envoy from a Tokio
//! worker thread, which lives as long as the agent's runtime.

use std::convert::Infallible;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// The identity Envoy runs as; `None` for either part keeps the agent's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvoyIdentity {
    /// User id (`APPMESH_IGNORE_UID`).
    pub uid: Option<u32>,
    /// Group id (`APPMESH_IGNORE_GID`).
    pub gid: Option<u32>,
}

impl EnvoyIdentity {
    /// Whether Envoy keeps the agent's identity.
    pub fn is_unchanged(&self) -> bool {
        self.uid.is_none() && self.gid.is_none()
    }
}

/// `weft exec-envoy`: the step between the agent and Envoy (not for direct use).
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// The agent's process id; the step exits if its parent is no longer this process.
    #[arg(long)]
    pub parent: u32,
    /// Run Envoy as this user id.
    #[arg(long)]
    pub uid: Option<u32>,
    /// Run Envoy as this group id (and no supplementary groups).
    #[arg(long)]
    pub gid: Option<u32>,
    /// The Envoy binary and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

/// The command line of `launcher exec-envoy … -- envoy args…`.
pub fn exec_args(
    parent: u32,
    identity: EnvoyIdentity,
    envoy_bin: &Path,
    envoy_args: Vec<OsString>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "exec-envoy".into(),
        "--parent".into(),
        parent.to_string().into(),
    ];
    if let Some(uid) = identity.uid {
        args.extend(["--uid".into(), uid.to_string().into()]);
    }
    if let Some(gid) = identity.gid {
        args.extend(["--gid".into(), gid.to_string().into()]);
    }
    args.push("--".into());
    args.push(envoy_bin.as_os_str().to_owned());
    args.extend(envoy_args);
    args
}

/// Takes Envoy's identity, ties this process's life to the agent's, and becomes Envoy. Returns
/// only on failure. Call it before any thread is started (`weft`'s `main` does, before its
/// runtime): the identity calls change the calling thread's credentials.
pub fn exec(args: &ExecArgs) -> Result<Infallible, AgentError> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    let fail = |what: &str, e: nix::Error| AgentError::Launch {
        detail: format!("{what}: {e}"),
    };
    if let Some(gid) = args.gid {
        setgroups(&[Gid::from_raw(gid)]).map_err(|e| fail("setgroups", e))?;
        setgid(Gid::from_raw(gid)).map_err(|e| fail(&format!("setgid({gid})"), e))?;
    } else if args.uid.is_some() {
        // Leaving the agent's supplementary groups (root's) to a process that gave up root
        // would keep their access.
        setgroups(&[]).map_err(|e| fail("setgroups", e))?;
    }
    if let Some(uid) = args.uid {
        setuid(Uid::from_raw(uid)).map_err(|e| fail(&format!("setuid({uid})"), e))?;
    }
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).map_err(
        |e| AgentError::Launch {
            detail: format!("prctl(PR_SET_PDEATHSIG): {e}"),
        },
    )?;
    // The agent may have died before the death signal was armed.
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(args.parent) {
        return Err(AgentError::Launch {
            detail: "the agent exited before Envoy started".into(),
        });
    }
    let cstrings: Vec<CString> = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| AgentError::Launch {
            detail: "an argument holds a NUL byte".into(),
        })?;
    let Some(program) = cstrings.first() else {
        return Err(AgentError::Launch {
            detail: "no command".into(),
        });
    };
    nix::unistd::execv(program, &cstrings).map_err(|e| AgentError::Launch {
        detail: format!("executing {}: {e}", args.command[0].to_string_lossy()),
    })
}

/// Whether `identity` can execute `path`: every folder on the way must be searchable by it and
/// the file executable. A `pip install` as root puts Envoy under `/root` (mode 700), out of reach
/// of the ignored user; this names the folder that blocks it.
pub fn check_executable_by(path: &Path, identity: EnvoyIdentity) -> Result<(), String> {
    let uid = identity.uid;
    let gid = identity.gid;
    if uid.is_none_or(|u| u == 0) {
        return Ok(());
    }
    let path = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut checks: Vec<(PathBuf, u32)> = path
        .ancestors()
        .skip(1)
        .map(|dir| (dir.to_path_buf(), 0o1))
        .collect();
    checks.push((path.clone(), 0o1));
    for (p, bit) in checks {
        let meta = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mode = meta.mode();
        let allowed = if Some(meta.uid()) == uid {
            mode & (bit << 6) != 0
        } else if Some(meta.gid()) == gid {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        };
        if !allowed {
            return Err(format!(
                "{} (mode {:o}, owner {}:{}) keeps uid {} from executing {}",
                p.display(),
                mode & 0o7777,
                meta.uid(),
                meta.gid(),
                uid.unwrap_or_default(),
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_step_command_line_carries_identity_then_envoy_verbatim() {
        let args = exec_args(
            42,
            EnvoyIdentity {
                uid: Some(1337),
                gid: None,
            },
            Path::new("/usr/local/bin/envoy"),
            vec!["-c".into(), "/run/b.json".into()],
        );
        let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        assert_eq!(
            args,
            [
                "exec-envoy",
                "--parent",
                "42",
                "--uid",
                "1337",
                "--",
                "/usr/local/bin/envoy",
                "-c",
                "/run/b.json"
            ]
        );
    }

    #[test]
    fn an_envoy_in_a_private_folder_is_named_as_out_of_reach() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap_or_else(|e| panic!("{e}"));
        let envoy = private.join("envoy");
        std::fs::write(&envoy, b"#!/bin/sh\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&envoy, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        let nobody = EnvoyIdentity {
            uid: Some(3_999_999_001),
            gid: Some(3_999_999_001),
        };
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = check_executable_by(&envoy, nobody)
            .err()
            .unwrap_or_default();
        assert!(e.contains("private") && e.contains("mode 700"), "{e}");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check_executable_by(&envoy, nobody), Ok(()));
        assert_eq!(
            check_executable_by(&envoy, EnvoyIdentity::default()),
            Ok(())
        );
    }
}
