//! `weft agent init` and `weft agent cleanup`: transparent mode's traffic redirection, from App
//! Mesh's variables, with the host's netfilter front end ([`weft_intercept`]).
//!
//! Redirection is applied only when asked: by `init` (the role of the EKS `proxyinit` init
//! container and of ECS's `proxyConfiguration`), or by `weft agent` when
//! `APPMESH_START_ENABLED=1`, as App Mesh's proxy route manager did. Starting the agent alone
//! never captures a host's traffic.

use tracing::info;
pub use weft_intercept::{Backend, InterceptConfig, Preference};

use crate::error::AgentError;

/// The settings of `init` and `cleanup` beyond App Mesh's variables.
#[derive(Debug, Clone, clap::Args)]
pub struct RedirectArgs {
    /// Netfilter front end: auto, nftables, iptables-nft or iptables-legacy.
    #[arg(long, env = "WEFT_NETFILTER", default_value = "auto")]
    pub netfilter: Preference,
}

/// Reads App Mesh's variables, checks them and the process's permission, and applies the
/// redirection with the chosen front end (idempotent). Returns the front end used.
pub fn init(config: &InterceptConfig, preference: Preference) -> Result<Backend, AgentError> {
    config.check_identities()?;
    weft_intercept::netfilter::check_permission()?;
    let backend = Backend::choose(preference)?;
    weft_intercept::apply(config, backend)?;
    info!(
        egress_port = config.egress_port,
        ingress_port = config.ingress_port,
        app_ports = ?config.app_ports,
        ignore_uid = ?config.ignore_uid,
        ignore_gid = ?config.ignore_gid,
        ipv6 = config.ipv6,
        "traffic redirection applied with {}",
        backend.name()
    );
    Ok(backend)
}

/// Removes every rule the redirection added, with every front end that holds some (idempotent).
pub fn cleanup() -> Result<Vec<Backend>, AgentError> {
    weft_intercept::netfilter::check_permission()?;
    let removed = weft_intercept::remove()?;
    if removed.is_empty() {
        info!("no traffic redirection to remove");
    } else {
        let names: Vec<&str> = removed.iter().map(|b| b.name()).collect();
        info!("traffic redirection removed from {}", names.join(", "));
    }
    Ok(removed)
}

/// The redirection settings when `APPMESH_START_ENABLED=1` asks `weft agent` to apply them.
pub fn start_enabled() -> Result<Option<InterceptConfig>, AgentError> {
    let enabled = std::env::var(weft_intercept::config::START_ENABLED)
        .map(|v| v.trim() == "1" || v.trim() == "true")
        .unwrap_or(false);
    if !enabled {
        return Ok(None);
    }
    Ok(Some(InterceptConfig::from_env()?))
}
