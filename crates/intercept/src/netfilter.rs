//! Applying and removing the rules with the host's netfilter front end: `nft` (Weft's own
//! tables), `iptables-nft` or `iptables-legacy` (App Mesh's chains in the `nat` table).
//!
//! Each change is one transaction per table and family (`nft -f`, `iptables-restore --noflush`),
//! and a failure in the second family undoes the first, so no rule set is ever left half-applied.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::rules::{self, Family, IptablesState};
use crate::{InterceptConfig, InterceptError};

/// A netfilter front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `nft`: tables `ip weft` and `ip6 weft`.
    Nftables,
    /// `iptables-nft` / `ip6tables-nft`: chains `APPMESH_EGRESS`/`APPMESH_INGRESS` in `nat`.
    IptablesNft,
    /// `iptables-legacy` / `ip6tables-legacy`: the same chains on the legacy x_tables.
    IptablesLegacy,
}

/// Which front end to use: one by name, or the first that works here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preference {
    /// `iptables-legacy` if the host already has legacy rules (two front ends fighting over
    /// one table is what to avoid), else `nft`, else `iptables-nft`, else `iptables-legacy`.
    #[default]
    Auto,
    /// This one or an error.
    Only(Backend),
}

impl std::str::FromStr for Preference {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Preference::Auto,
            "nftables" | "nft" => Preference::Only(Backend::Nftables),
            "iptables-nft" => Preference::Only(Backend::IptablesNft),
            "iptables-legacy" => Preference::Only(Backend::IptablesLegacy),
            other => {
                return Err(format!(
                    "{other:?} is not auto, nftables, iptables-nft or iptables-legacy"
                ))
            }
        })
    }
}

impl Backend {
    /// Every front end, in the order [`Preference::Auto`] tries them after the legacy check.
    pub const ALL: [Backend; 3] = [
        Backend::Nftables,
        Backend::IptablesNft,
        Backend::IptablesLegacy,
    ];

    /// The front end's name as users know it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::IptablesNft => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
        }
    }

    fn tool(self, family: Family, what: Tool) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let variant = match self {
            Backend::Nftables => return "nft".into(),
            Backend::IptablesNft => "nft",
            Backend::IptablesLegacy => "legacy",
        };
        match what {
            Tool::Save => format!("{base}-{variant}-save"),
            Tool::Restore => format!("{base}-{variant}-restore"),
        }
    }

    /// Whether this front end's tools run here (installed, and the kernel answers).
    pub fn usable(self) -> Result<(), String> {
        let probe = match self {
            Backend::Nftables => run("nft", &["list", "tables"], None),
            // Without `-t`, `iptables-save` prints the tables that exist: asking for `nat` would
            // create it (legacy x_tables instantiate a table on first use).
            _ => run(&self.tool(Family::V4, Tool::Save), &[], None),
        };
        probe.map(|_| ())
    }

    /// Picks the front end for `preference`, or says why none can be used.
    pub fn choose(preference: Preference) -> Result<Backend, InterceptError> {
        if let Preference::Only(backend) = preference {
            return backend.usable().map(|()| backend).map_err(|detail| {
                InterceptError::NoNetfilter {
                    detail: format!("{}: {detail}", backend.name()),
                }
            });
        }
        // A host whose rules live in legacy x_tables keeps them there.
        if let Ok(save) = run(
            &Backend::IptablesLegacy.tool(Family::V4, Tool::Save),
            &[],
            None,
        ) {
            if save.lines().any(|l| l.starts_with("-A ")) {
                return Ok(Backend::IptablesLegacy);
            }
        }
        let mut tried = Vec::new();
        for backend in Backend::ALL {
            match backend.usable() {
                Ok(()) => return Ok(backend),
                Err(e) => tried.push(format!("{}: {e}", backend.name())),
            }
        }
        Err(InterceptError::NoNetfilter {
            detail: format!(
                "{} (install Debian's `nftables` or `iptables` package)",
                tried.join("; ")
            ),
        })
    }
}

#[derive(Clone, Copy)]
enum Tool {
    Save,
    Restore,
}

/// Checks the process may change netfilter rules, before anything is touched.
pub fn check_permission() -> Result<(), InterceptError> {
    use rustix::thread::{capabilities, CapabilitySet};
    match capabilities(None) {
        Ok(sets) if sets.effective.contains(CapabilitySet::NET_ADMIN) => Ok(()),
        _ => Err(InterceptError::NotPermitted),
    }
}

/// Makes the rules of this network namespace exactly `config`'s (idempotent: applying twice
/// leaves one set). IPv6 rules are written only when `config.ipv6`; otherwise any IPv6 rules an
/// earlier run left are removed and IPv6 is left alone.
pub fn apply(config: &InterceptConfig, backend: Backend) -> Result<(), InterceptError> {
    check_permission()?;
    match backend {
        Backend::Nftables => {
            let mut script = rules::nft_apply(config, Family::V4);
            if config.ipv6 {
                script.push_str(&rules::nft_apply(config, Family::V6));
            } else {
                script.push_str(&rules::nft_delete(Family::V6));
            }
            // One `nft -f` is one transaction: both families or neither.
            nft(&script)
        }
        _ => {
            iptables_apply(config, backend, Family::V4)?;
            let v6 = if config.ipv6 {
                iptables_apply(config, backend, Family::V6)
            } else {
                iptables_remove(backend, Family::V6).map(|_| ())
            };
            if let Err(e) = v6 {
                // Leave nothing half-applied: take the IPv4 rules back out.
                if let Err(undo) = iptables_remove(backend, Family::V4) {
                    tracing::error!(error = %undo, "removing the IPv4 rules after the IPv6 ones failed");
                }
                return Err(e);
            }
            Ok(())
        }
    }
}

/// Removes every rule and chain Weft (or App Mesh's route manager) added to this network
/// namespace, with every front end that is usable, and nothing else. Idempotent.
pub fn remove() -> Result<Vec<Backend>, InterceptError> {
    check_permission()?;
    let mut removed = Vec::new();
    for backend in Backend::ALL {
        if backend.usable().is_err() {
            continue;
        }
        let touched = match backend {
            Backend::Nftables => {
                let present = run("nft", &["list", "tables"], None).map_err(|detail| {
                    InterceptError::Command {
                        backend: backend.name(),
                        command: "nft list tables".into(),
                        detail,
                    }
                })?;
                let ours = present.lines().any(|l| {
                    let l = l.trim();
                    l == format!("table ip {}", rules::NFT_TABLE)
                        || l == format!("table ip6 {}", rules::NFT_TABLE)
                });
                if ours {
                    let mut script = rules::nft_delete(Family::V4);
                    script.push_str(&rules::nft_delete(Family::V6));
                    nft(&script)?;
                }
                ours
            }
            _ => {
                let v4 = iptables_remove(backend, Family::V4)?;
                let v6 = iptables_remove(backend, Family::V6)?;
                v4 || v6
            }
        };
        if touched {
            removed.push(backend);
        }
    }
    Ok(removed)
}

fn nft(script: &str) -> Result<(), InterceptError> {
    run("nft", &["-f", "-"], Some(script))
        .map(|_| ())
        .map_err(|detail| InterceptError::Command {
            backend: Backend::Nftables.name(),
            command: "nft -f -".into(),
            detail,
        })
}

fn iptables_state(backend: Backend, family: Family) -> Result<IptablesState, InterceptError> {
    let save = backend.tool(family, Tool::Save);
    run(&save, &[], None)
        .map(|out| IptablesState::parse(&out))
        .map_err(|detail| InterceptError::Command {
            backend: backend.name(),
            command: save.clone(),
            detail,
        })
}

fn restore(backend: Backend, family: Family, input: &str) -> Result<(), InterceptError> {
    let tool = backend.tool(family, Tool::Restore);
    run(&tool, &["--noflush"], Some(input))
        .map(|_| ())
        .map_err(|detail| InterceptError::Command {
            backend: backend.name(),
            command: format!("{tool} --noflush"),
            detail,
        })
}

fn iptables_apply(
    config: &InterceptConfig,
    backend: Backend,
    family: Family,
) -> Result<(), InterceptError> {
    let state = iptables_state(backend, family)?;
    restore(
        backend,
        family,
        &rules::iptables_apply(config, family, state),
    )
}

/// Removes Weft's rules of one family; whether there were any.
fn iptables_remove(backend: Backend, family: Family) -> Result<bool, InterceptError> {
    let state = match iptables_state(backend, family) {
        Ok(state) => state,
        // No IPv6 netfilter (a kernel without it): nothing of ours can be there.
        Err(_) if family == Family::V6 => return Ok(false),
        Err(e) => return Err(e),
    };
    match rules::iptables_delete(state) {
        Some(input) => restore(backend, family, &input).map(|()| true),
        None => Ok(false),
    }
}

/// Runs `program args`, feeding `stdin`; its standard output, or what went wrong.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("`{program}` is not installed"),
            _ => format!("running `{program}`: {e}"),
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("writing to `{program}`: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for `{program}`: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
