//! The agent's configuration: the environment variables App Mesh's Envoy image reads
//! (App Mesh user guide, `envoy-config.md`), Weft's own for explicit mode, and the flags that
//! override each of them.
//!
//! [`AgentArgs`] is the clap view (every flag has its environment variable);
//! [`AgentConfig`] is the validated result the rest of the crate uses.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_model::{Arn, ResourcePath};

use crate::error::AgentError;
use crate::identity::{CaServer, IdentityConfig, JoinToken, TokenSource};
use crate::launch::EnvoyIdentity;
use crate::telemetry::{Telemetry, TelemetryArgs};

/// How the application's traffic reaches Envoy (`weft.listener_mode`, `docs/proxy-contract.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ListenerMode {
    /// Ingress 15000 / egress 15001 with iptables redirection, as App Mesh does.
    #[default]
    Transparent,
    /// No iptables: Envoy binds the node's listener ports itself and forwards to the app on
    /// `app_ports`; the app uses the egress port as an HTTP proxy.
    Explicit,
}

impl ListenerMode {
    /// The value written into node metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerMode::Transparent => "transparent",
            ListenerMode::Explicit => "explicit",
        }
    }
}

/// Which ADS variant Envoy speaks to Weft.
///
/// Delta is the default: a change to one cluster or listener sends that resource only, instead
/// of every cluster/listener of the proxy as state-of-the-world must (CDS and LDS are
/// "full state" types in SotW), and after a control-plane restart Envoy reports the versions it
/// holds (`initial_resource_versions`), so only differences travel. Weft serves both, so SotW
/// stays selectable for control planes or debugging tools that only speak SotW.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XdsProtocol {
    /// Incremental ADS (`DELTA_GRPC`).
    #[default]
    Delta,
    /// State-of-the-world ADS (`GRPC`).
    #[value(alias = "grpc")]
    Sotw,
}

impl XdsProtocol {
    /// The bootstrap's `ads_config.api_type`.
    pub fn api_type(self) -> &'static str {
        match self {
            XdsProtocol::Delta => "DELTA_GRPC",
            XdsProtocol::Sotw => "GRPC",
        }
    }
}

/// Where Weft's ADS server listens: `host:port`, host an IP literal or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsEndpoint {
    /// IP literal (IPv6 without brackets) or DNS name.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl XdsEndpoint {
    /// Whether `host` is an IP literal (a `STATIC` cluster) rather than a name (`LOGICAL_DNS`).
    pub fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

impl std::str::FromStr for XdsEndpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not host:port (e.g. 127.0.0.1:15010 or weft.local:15010)");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || (host.contains(':') && host.parse::<IpAddr>().is_err()) {
            return Err(bad());
        }
        Ok(XdsEndpoint {
            host: host.to_string(),
            port,
        })
    }
}

/// `APPMESH_XDS_ENDPOINT`: one `host:port`, or several replicas' as a comma-separated list
/// (spaces allowed); the first, and the others in order.
pub fn parse_xds_endpoints(text: &str) -> Result<(XdsEndpoint, Vec<XdsEndpoint>), String> {
    let mut endpoints = text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::parse::<XdsEndpoint>);
    let first = match endpoints.next() {
        Some(first) => first?,
        None => return Err(format!("{text:?} names no host:port")),
    };
    let more = endpoints.collect::<Result<Vec<_>, _>>()?;
    Ok((first, more))
}

impl std::fmt::Display for XdsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Run Envoy beside a workload, configured by Weft (flags fall back to App Mesh's variables).
///
/// Each flag falls back to the environment variable App Mesh's Envoy image (or Weft) reads;
/// `AgentConfig::from_args` validates them.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The virtual node or gateway this proxy serves: a full App Mesh ARN or
    /// `mesh/<mesh>/virtualNode/<name>` / `mesh/<mesh>/virtualGateway/<name>`. Required.
    #[arg(long, env = "APPMESH_RESOURCE_ARN", value_name = "ARN")]
    pub resource_arn: Option<String>,
    /// Envoy's `node.cluster` (stats, tracing); defaults to `mesh/<mesh>/virtualNode/<name>`.
    #[arg(long, env = "APPMESH_RESOURCE_CLUSTER", value_name = "NAME")]
    pub resource_cluster: Option<String>,
    /// Envoy admin port (bound on 127.0.0.1).
    #[arg(long, env = "ENVOY_ADMIN_ACCESS_PORT", default_value_t = 9901)]
    pub admin_port: u16,
    /// Envoy admin access log file.
    #[arg(
        long,
        env = "ENVOY_ADMIN_ACCESS_LOG_FILE",
        default_value = "/tmp/envoy_admin_access.log"
    )]
    pub admin_access_log: PathBuf,
    /// Envoy log level: trace, debug, info, warning, error, critical, off.
    #[arg(long, env = "ENVOY_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Envoy worker threads (`--concurrency`); Envoy's default (one per core) when unset.
    #[arg(long, env = "ENVOY_CONCURRENCY")]
    pub concurrency: Option<u32>,
    /// How long Envoy waits for its first config from Weft, in seconds (`0`: forever).
    #[arg(long, env = "ENVOY_INITIAL_FETCH_TIMEOUT", default_value = "0")]
    pub initial_fetch_timeout: String,
    /// Weft's xDS (ADS) address, host:port; several replicas' addresses as a comma-separated
    /// list (Envoy fails over between them, and so do the agent's own calls).
    #[arg(long, env = "APPMESH_XDS_ENDPOINT", default_value = "127.0.0.1:15010")]
    pub xds_endpoint: String,
    /// ADS variant: delta (incremental) or sotw (state of the world).
    #[arg(
        long,
        env = "WEFT_XDS_PROTOCOL",
        value_enum,
        ignore_case = true,
        default_value_t
    )]
    pub xds_protocol: XdsProtocol,
    /// Ingress listener port (transparent mode).
    #[arg(long, env = "APPMESH_ENVOY_INGRESS_PORT", default_value_t = 15000)]
    pub ingress_port: u16,
    /// Egress listener port (both modes).
    #[arg(long, env = "APPMESH_ENVOY_EGRESS_PORT", default_value_t = 15001)]
    pub egress_port: u16,
    /// Tag Envoy's stats with `appmesh.mesh` and `appmesh.virtual_node` (1 or 0).
    #[arg(
        long,
        env = "ENABLE_ENVOY_STATS_TAGS",
        value_name = "0|1",
        num_args = 0..=1,
        default_missing_value = "1",
        default_value = "0",
        value_parser = parse_switch
    )]
    pub enable_stats_tags: bool,
    /// transparent (iptables, ingress/egress ports) or explicit (Envoy binds the node's ports).
    #[arg(
        long,
        env = "WEFT_LISTENER_MODE",
        value_enum,
        ignore_case = true,
        default_value_t
    )]
    pub listener_mode: ListenerMode,
    /// Explicit mode: where the app really listens per node listener port, e.g. `8080=18080,9090=19090`.
    #[arg(long, env = "WEFT_APP_PORTS", value_name = "PORT=APP_PORT,...")]
    pub app_ports: Option<String>,
    /// Address Envoy's listeners bind (default 127.0.0.1 in explicit mode, 0.0.0.0 in transparent).
    #[arg(long, env = "WEFT_LISTEN_ADDRESS")]
    pub listen_address: Option<IpAddr>,
    /// IPv6 address the transparent listeners also listen on; `::` when APPMESH_ENABLE_IPV6=1
    /// (the redirection then sends IPv6 to Envoy too), none otherwise.
    #[arg(long, env = "WEFT_LISTEN_ADDRESS_V6")]
    pub listen_address_v6: Option<IpAddr>,
    /// Whether IPv6 is redirected as well (App Mesh's APPMESH_ENABLE_IPV6, `1` or `0`).
    #[arg(long, env = "APPMESH_ENABLE_IPV6", value_parser = parse_switch, default_value = "0")]
    pub enable_ipv6: bool,
    /// Address of the local app (default 127.0.0.1).
    #[arg(long, env = "WEFT_APP_ADDRESS")]
    pub app_address: Option<IpAddr>,
    /// The Envoy binary; `envoy` on PATH when unset.
    #[arg(long, env = "ENVOY_BIN")]
    pub envoy_bin: Option<PathBuf>,
    /// Folder for the bootstrap file (kept); a temporary folder, removed on exit, when unset.
    #[arg(long, env = "WEFT_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Seconds to let connections drain on shutdown before stopping Envoy (App Mesh: 5–110, default 20).
    #[arg(
        long = "drain-wait-s",
        env = "LISTENER_DRAIN_WAIT_TIME_S",
        default_value_t = 20
    )]
    pub drain_wait_s: u64,
    /// How many times Envoy is restarted after it exits: a number, or `unlimited`.
    #[arg(long, env = "APPNET_ENVOY_RESTART_COUNT", default_value = "unlimited")]
    pub envoy_restart_count: String,
    /// Seconds between SIGTERM and SIGKILL when stopping Envoy.
    #[arg(
        long = "stop-grace-s",
        env = "WEFT_ENVOY_STOP_GRACE_S",
        default_value_t = 10
    )]
    pub stop_grace_s: u64,
    /// Run Envoy as this user id (App Mesh's `APPMESH_IGNORE_UID`, whose traffic the
    /// redirection lets through); the agent's own when unset.
    #[arg(long, env = "APPMESH_IGNORE_UID", value_name = "UID")]
    pub ignore_uid: Option<String>,
    /// Run Envoy as this group id (`APPMESH_IGNORE_GID`).
    #[arg(long, env = "APPMESH_IGNORE_GID", value_name = "GID")]
    pub ignore_gid: Option<String>,
    /// Print the Envoy bootstrap (JSON) and exit.
    #[arg(long)]
    pub print_bootstrap: bool,
    /// Workload identity: the join token the operator created for this virtual node or gateway
    /// (`weft join-token create`). With it, the agent gets the proxy's certificate from Weft's
    /// CA and serves it to Envoy over SDS; without it (and without --join-token-file), no
    /// identity. Prefer the variable or the file: a flag shows in the process list.
    #[arg(long, env = "WEFT_JOIN_TOKEN", value_name = "TOKEN", hide_env_values = true,
          conflicts_with = "join_token_file", value_parser = secret_arg)]
    pub join_token: Option<SecretArg>,
    /// A file holding the join token (read again whenever the agent joins, so it can be replaced).
    #[arg(long, env = "WEFT_JOIN_TOKEN_FILE", value_name = "PATH")]
    pub join_token_file: Option<PathBuf>,
    /// Weft's CA: the server's API address (plain HTTP); `http://<xDS host>:9080` when unset.
    #[arg(long, env = "WEFT_CA_SERVER", value_name = "URL")]
    pub ca_server: Option<String>,
    /// The Unix socket the agent serves the proxy's certificate and trust bundle on (SDS), for
    /// Envoy; `sds.sock` in the run folder when unset.
    #[arg(long, env = "APPMESH_SDS_SOCKET_PATH", value_name = "PATH")]
    pub sds_socket_path: Option<PathBuf>,
    /// Mutual TLS to the xDS server, the default when the agent has a join token: Envoy
    /// presents the proxy's certificate (`weft-identity`), trusts Weft's CA
    /// (`weft-trust-bundle`) and expects the server's certificate to name the xDS host. Set,
    /// it makes a missing join token an error at start.
    #[arg(long, env = "WEFT_XDS_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    pub xds_tls: bool,
    /// Plaintext xDS even with a join token, for a `weft server --insecure-plaintext-xds`
    /// (local experiments); the certificate is still served to Envoy over SDS for the mesh's
    /// TLS.
    #[arg(long, env = "WEFT_INSECURE_PLAINTEXT_XDS", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_plaintext_xds: bool,
    /// Envoy's stats sinks and tracing (App Mesh's DogStatsD, stats and tracing variables).
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// A flag value that is a secret: its `Debug` hides it, and clap never repeats it in an error
/// (it accepts any text; [`AgentConfig::from_args`] checks it without quoting it).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretArg(String);

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

fn secret_arg(s: &str) -> Result<SecretArg, std::convert::Infallible> {
    Ok(SecretArg(s.to_string()))
}

/// `1`/`0` (App Mesh's convention for switches), also `true`/`false`.
fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!("{other:?} is not 1 or 0")),
    }
}

/// Envoy's `--log-level` values (App Mesh's `ENVOY_LOG_LEVEL` list, plus Envoy's `warn`).
const LOG_LEVELS: [&str; 8] = [
    "trace", "debug", "info", "warning", "warn", "error", "critical", "off",
];

const ARN: &str = "APPMESH_RESOURCE_ARN (--resource-arn)";
const ADMIN_PORT: &str = "ENVOY_ADMIN_ACCESS_PORT (--admin-port)";
const LOG_LEVEL: &str = "ENVOY_LOG_LEVEL (--log-level)";
const CONCURRENCY: &str = "ENVOY_CONCURRENCY (--concurrency)";
const FETCH_TIMEOUT: &str = "ENVOY_INITIAL_FETCH_TIMEOUT (--initial-fetch-timeout)";
const XDS: &str = "APPMESH_XDS_ENDPOINT (--xds-endpoint)";
const INGRESS: &str = "APPMESH_ENVOY_INGRESS_PORT (--ingress-port)";
const EGRESS: &str = "APPMESH_ENVOY_EGRESS_PORT (--egress-port)";
const APP_PORTS: &str = "WEFT_APP_PORTS (--app-ports)";
const DRAIN: &str = "LISTENER_DRAIN_WAIT_TIME_S (--drain-wait-s)";
const RESTARTS: &str = "APPNET_ENVOY_RESTART_COUNT (--envoy-restart-count)";
const CLUSTER: &str = "APPMESH_RESOURCE_CLUSTER (--resource-cluster)";
pub(crate) const IGNORE_UID: &str = "APPMESH_IGNORE_UID (--ignore-uid)";
pub(crate) const IGNORE_GID: &str = "APPMESH_IGNORE_GID (--ignore-gid)";
const JOIN_TOKEN: &str = "WEFT_JOIN_TOKEN (--join-token)";
const JOIN_TOKEN_FILE: &str = "WEFT_JOIN_TOKEN_FILE (--join-token-file)";
const CA_SERVER: &str = "WEFT_CA_SERVER (--ca-server)";

/// The longest drain App Mesh allows (`LISTENER_DRAIN_WAIT_TIME_S` maximum).
pub const MAX_DRAIN_WAIT: Duration = Duration::from_secs(110);

/// The validated configuration of one agent (one Envoy).
///
/// Fields are public so `weft demo` can build agents in code: start from
/// [`AgentConfig::for_resource`], adjust, then call [`AgentConfig::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The virtual node or virtual gateway this Envoy serves.
    pub resource: ResourcePath,
    /// `node.id`: `APPMESH_RESOURCE_ARN` verbatim (ARN or path form), as the contract says.
    pub node_id: String,
    /// `node.cluster`: `APPMESH_RESOURCE_CLUSTER`, else the resource path.
    pub node_cluster: String,
    /// Admin port on 127.0.0.1.
    pub admin_port: u16,
    /// Admin access log path.
    pub admin_access_log: PathBuf,
    /// Envoy `--log-level`.
    pub log_level: String,
    /// Envoy `--concurrency`, if set.
    pub concurrency: Option<u32>,
    /// `initial_fetch_timeout` of CDS/LDS; zero waits forever (App Mesh's default).
    pub initial_fetch_timeout: Duration,
    /// Weft's ADS address (the first of the list).
    pub xds_endpoint: XdsEndpoint,
    /// The other replicas' ADS addresses, in the order given after the first.
    pub more_xds_endpoints: Vec<XdsEndpoint>,
    /// SotW or delta ADS.
    pub xds_protocol: XdsProtocol,
    /// Ingress listener port.
    pub ingress_port: u16,
    /// Egress listener port.
    pub egress_port: u16,
    /// Whether to add App Mesh's stats tags: `appmesh.mesh` and `appmesh.virtual_node` (or
    /// `appmesh.virtual_gateway`), unless a stats config file replaces them.
    pub stats_tags: bool,
    /// Transparent or explicit.
    pub listener_mode: ListenerMode,
    /// Address Envoy's listeners bind.
    pub listen_address: IpAddr,
    /// IPv6 address the transparent ingress and egress listeners also bind, if any.
    pub listen_address_v6: Option<IpAddr>,
    /// Address of the local application.
    pub app_address: IpAddr,
    /// Explicit mode: node listener port → app port.
    pub app_ports: BTreeMap<u16, u16>,
    /// The Envoy binary, if given (else `envoy` on PATH).
    pub envoy_bin: Option<PathBuf>,
    /// Where the bootstrap is written (kept), if given; else a temporary folder.
    pub run_dir: Option<PathBuf>,
    /// How long to let connections drain on shutdown (also Envoy's `--drain-time-s`).
    pub drain_wait: Duration,
    /// How many restarts of Envoy are allowed; `None` is unlimited.
    pub restart_limit: Option<u32>,
    /// Time between SIGTERM and SIGKILL when stopping Envoy.
    pub stop_grace: Duration,
    /// The identity Envoy runs as (`APPMESH_IGNORE_UID` / `APPMESH_IGNORE_GID`).
    pub envoy_identity: EnvoyIdentity,
    /// The `weft` binary that starts Envoy through `weft exec-envoy` (identity and parent-death
    /// signal, see [`crate::launch`]); `None` starts Envoy directly, which keeps the agent's
    /// identity and leaves Envoy running if the agent is killed.
    pub launcher: Option<PathBuf>,
    /// Workload identity (a certificate from Weft's CA, served to Envoy over SDS); `None`
    /// without a join token.
    pub identity: Option<IdentityConfig>,
    /// The Unix socket of the agent's SDS server (`APPMESH_SDS_SOCKET_PATH`), which serves the
    /// workload identity and the certificates `file` TLS sources name; `None`:
    /// [`crate::identity::SDS_SOCKET_FILE`] in the run folder.
    pub sds_socket: Option<PathBuf>,
    /// Whether the agent serves SDS (and so the certificates `file` TLS sources name): with a
    /// join token, or when no `APPMESH_SDS_SOCKET_PATH` is given. A socket path without a join
    /// token belongs to another SDS server (SPIRE's agent, as App Mesh used it), which the
    /// agent leaves alone.
    pub serve_sds: bool,
    /// Mutual TLS to the xDS server with the proxy's certificate (needs `identity`).
    pub xds_tls: bool,
    /// Stats sinks, stats config and tracing, with the files they name already read.
    pub telemetry: Telemetry,
}

impl AgentConfig {
    /// Every ADS address: [`AgentConfig::xds_endpoint`], then the others.
    pub fn xds_endpoints(&self) -> impl Iterator<Item = &XdsEndpoint> + '_ {
        std::iter::once(&self.xds_endpoint).chain(&self.more_xds_endpoints)
    }

    /// The defaults App Mesh's Envoy image uses, for the given resource (ARN or path form).
    pub fn for_resource(resource_arn: &str) -> Result<Self, AgentError> {
        let resource = parse_resource(resource_arn)?;
        Ok(AgentConfig {
            node_cluster: resource.to_string(),
            resource,
            node_id: resource_arn.to_string(),
            admin_port: 9901,
            admin_access_log: PathBuf::from("/tmp/envoy_admin_access.log"),
            log_level: "info".into(),
            concurrency: None,
            initial_fetch_timeout: Duration::ZERO,
            xds_endpoint: XdsEndpoint {
                host: "127.0.0.1".into(),
                port: 15010,
            },
            more_xds_endpoints: Vec::new(),
            xds_protocol: XdsProtocol::default(),
            ingress_port: 15000,
            egress_port: 15001,
            stats_tags: false,
            listener_mode: ListenerMode::Transparent,
            listen_address: default_listen_address(ListenerMode::Transparent),
            app_address: IpAddr::from([127, 0, 0, 1]),
            app_ports: BTreeMap::new(),
            envoy_bin: None,
            run_dir: None,
            drain_wait: Duration::from_secs(20),
            restart_limit: None,
            stop_grace: Duration::from_secs(10),
            envoy_identity: EnvoyIdentity::default(),
            launcher: None,
            listen_address_v6: None,
            identity: None,
            sds_socket: None,
            serve_sds: true,
            xds_tls: false,
            telemetry: Telemetry::default(),
        })
    }

    /// Builds and validates the configuration from `weft agent`'s flags/environment.
    pub fn from_args(args: &AgentArgs) -> Result<Self, AgentError> {
        let arn = args.resource_arn.as_deref().map(str::trim).unwrap_or("");
        if arn.is_empty() {
            return Err(AgentError::config(
                ARN,
                "required: the ARN of the virtual node or gateway, e.g. \
                 arn:aws:appmesh:us-east-1:111122223333:mesh/apps/virtualNode/red, \
                 or mesh/apps/virtualNode/red",
            ));
        }
        let mut config = AgentConfig::for_resource(arn)?;
        if let Some(cluster) = &args.resource_cluster {
            if cluster.trim().is_empty() {
                return Err(AgentError::config(CLUSTER, "must not be empty when set"));
            }
            config.node_cluster = cluster.trim().to_string();
        }
        config.admin_port = args.admin_port;
        config.admin_access_log = args.admin_access_log.clone();
        config.log_level = args.log_level.trim().to_ascii_lowercase();
        config.concurrency = args.concurrency;
        config.initial_fetch_timeout = parse_seconds(&args.initial_fetch_timeout)
            .map_err(|m| AgentError::config(FETCH_TIMEOUT, m))?;
        let (first, more) =
            parse_xds_endpoints(&args.xds_endpoint).map_err(|m| AgentError::config(XDS, m))?;
        config.xds_endpoint = first;
        config.more_xds_endpoints = more;
        config.xds_protocol = args.xds_protocol;
        config.ingress_port = args.ingress_port;
        config.egress_port = args.egress_port;
        config.stats_tags = args.enable_stats_tags;
        config.listener_mode = args.listener_mode;
        config.listen_address = args
            .listen_address
            .unwrap_or_else(|| default_listen_address(args.listener_mode));
        if let Some(addr) = args.app_address {
            config.app_address = addr;
        }
        config.listen_address_v6 = match args.listen_address_v6 {
            Some(addr) if addr.is_ipv4() => {
                return Err(AgentError::config(
                    "WEFT_LISTEN_ADDRESS_V6 (--listen-address-v6)",
                    format!("{addr} is not an IPv6 address"),
                ))
            }
            Some(addr) => Some(addr),
            None if args.enable_ipv6 && args.listener_mode == ListenerMode::Transparent => {
                Some(IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED))
            }
            None => None,
        };
        if let Some(ports) = &args.app_ports {
            config.app_ports = parse_app_ports(ports)?;
        }
        config.envoy_bin = args.envoy_bin.clone();
        config.run_dir = args.run_dir.clone();
        config.drain_wait = Duration::from_secs(args.drain_wait_s);
        config.restart_limit = parse_restart_count(&args.envoy_restart_count)?;
        config.stop_grace = Duration::from_secs(args.stop_grace_s);
        config.envoy_identity = EnvoyIdentity {
            uid: parse_id(IGNORE_UID, args.ignore_uid.as_deref())?,
            gid: parse_id(IGNORE_GID, args.ignore_gid.as_deref())?,
        };
        config.sds_socket = args
            .sds_socket_path
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .or_else(|| {
                config
                    .run_dir
                    .as_ref()
                    .map(|d| d.join(crate::identity::SDS_SOCKET_FILE))
            });
        config.identity = identity_config(args, &config)?;
        let socket_given = args
            .sds_socket_path
            .as_ref()
            .is_some_and(|p| !p.as_os_str().is_empty());
        config.serve_sds = config.identity.is_some() || !socket_given;
        if args.xds_tls && args.insecure_plaintext_xds {
            return Err(AgentError::config(
                "WEFT_XDS_TLS",
                "mutual TLS and WEFT_INSECURE_PLAINTEXT_XDS (--insecure-plaintext-xds) exclude \
                 each other: set one"
                    .to_string(),
            ));
        }
        if args.xds_tls && config.identity.is_none() {
            return Err(AgentError::config(
                "WEFT_XDS_TLS",
                "mutual TLS to the xDS server needs the proxy's certificate: give a join token \
                 (WEFT_JOIN_TOKEN or WEFT_JOIN_TOKEN_FILE)"
                    .to_string(),
            ));
        }
        // With an identity, the secure way is the default (`weft server` demands mutual TLS on
        // xDS unless started with --insecure-plaintext-xds); without one the agent can only
        // speak plaintext, which a secure server refuses: start() says so in the log.
        config.xds_tls = config.identity.is_some() && !args.insecure_plaintext_xds;
        config.telemetry = Telemetry::from_args(&args.telemetry)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the combination of settings; every error names the variable and flag at fault.
    pub fn validate(&self) -> Result<(), AgentError> {
        parse_resource(&self.node_id)?;
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(AgentError::config(
                LOG_LEVEL,
                format!(
                    "{:?} is not one of trace, debug, info, warning, error, critical, off",
                    self.log_level
                ),
            ));
        }
        if self.concurrency == Some(0) {
            return Err(AgentError::config(CONCURRENCY, "must be at least 1"));
        }
        for (setting, port) in [
            (ADMIN_PORT, self.admin_port),
            (INGRESS, self.ingress_port),
            (EGRESS, self.egress_port),
        ] {
            if port == 0 {
                return Err(AgentError::config(setting, "port 0 is not allowed"));
            }
        }
        if self.admin_port == self.egress_port {
            return Err(AgentError::config(
                ADMIN_PORT,
                format!("{} is also the egress port", self.admin_port),
            ));
        }
        if self.listener_mode == ListenerMode::Transparent {
            if self.ingress_port == self.egress_port {
                return Err(AgentError::config(
                    INGRESS,
                    format!("{} is also the egress port", self.ingress_port),
                ));
            }
            if self.admin_port == self.ingress_port {
                return Err(AgentError::config(
                    ADMIN_PORT,
                    format!("{} is also the ingress port", self.admin_port),
                ));
            }
            if !self.app_ports.is_empty() {
                return Err(AgentError::config(
                    APP_PORTS,
                    "applies only to WEFT_LISTENER_MODE=explicit (transparent mode redirects \
                     traffic with iptables and the app keeps its ports)",
                ));
            }
        }
        for (&listener, &app) in &self.app_ports {
            if listener == self.admin_port || listener == self.egress_port {
                return Err(AgentError::config(
                    APP_PORTS,
                    format!("listener port {listener} is also the admin or egress port"),
                ));
            }
            // Envoy would bind the port the app listens on: one of them fails to start, or
            // (SO_REUSEPORT) both bind and traffic splits between them silently.
            if listener == app && self.listen_address == self.app_address {
                return Err(AgentError::config(
                    APP_PORTS,
                    format!(
                        "{listener}={app}: Envoy and the app cannot both listen on \
                         {}:{listener}; move the app to another port",
                        self.app_address
                    ),
                ));
            }
        }
        if self.drain_wait > MAX_DRAIN_WAIT {
            return Err(AgentError::config(
                DRAIN,
                format!(
                    "{} s is above App Mesh's maximum of 110 s",
                    self.drain_wait.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// The mesh name.
    pub fn mesh(&self) -> &str {
        self.resource.mesh()
    }

    /// The virtual node's or gateway's name.
    pub fn resource_name(&self) -> &str {
        match &self.resource {
            ResourcePath::VirtualNode { name, .. } | ResourcePath::VirtualGateway { name, .. } => {
                name
            }
            // `parse_resource` admits only nodes and gateways.
            other => other.mesh(),
        }
    }

    /// Whether this proxy is a virtual gateway (else a virtual node).
    pub fn is_gateway(&self) -> bool {
        matches!(self.resource, ResourcePath::VirtualGateway { .. })
    }
}

/// Workload identity from the flags: on with a join token (or its file), off otherwise.
fn identity_config(
    args: &AgentArgs,
    config: &AgentConfig,
) -> Result<Option<IdentityConfig>, AgentError> {
    let token = match (&args.join_token, &args.join_token_file) {
        (Some(SecretArg(text)), _) => TokenSource::Value(
            JoinToken::parse(text).map_err(|m| AgentError::config(JOIN_TOKEN, m))?,
        ),
        (None, Some(path)) => {
            let source = TokenSource::File(path.clone());
            // Read now, so that a wrong path fails at start rather than at the first join.
            source
                .read()
                .map_err(|m| AgentError::config(JOIN_TOKEN_FILE, m))?;
            source
        }
        (None, None) => return Ok(None),
    };
    let ca_server = match args.ca_server.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => {
            CaServer::parse(url).map_err(|m| AgentError::config(CA_SERVER, m))?
        }
        _ => CaServer::beside_each(config.xds_endpoints()),
    };
    Ok(Some(IdentityConfig { token, ca_server }))
}

fn default_listen_address(mode: ListenerMode) -> IpAddr {
    match mode {
        ListenerMode::Explicit => IpAddr::from([127, 0, 0, 1]),
        ListenerMode::Transparent => IpAddr::from([0, 0, 0, 0]),
    }
}

/// Accepts the full ARN (what App Mesh's Envoy image is given) or the path form.
fn parse_resource(text: &str) -> Result<ResourcePath, AgentError> {
    let parsed = if text.starts_with("arn:") {
        text.parse::<Arn>().map(|a| a.resource)
    } else {
        text.parse::<ResourcePath>()
    };
    match parsed {
        Ok(r @ (ResourcePath::VirtualNode { .. } | ResourcePath::VirtualGateway { .. })) => Ok(r),
        Ok(other) => Err(AgentError::config(
            ARN,
            format!("{other} is not a virtual node or virtual gateway"),
        )),
        Err(e) => Err(AgentError::config(
            ARN,
            format!(
                "{e}; expected arn:aws:appmesh:<region>:<account>:mesh/<mesh>/virtualNode/<name> \
                 or mesh/<mesh>/virtualNode/<name> (virtualGateway likewise)"
            ),
        )),
    }
}

/// Seconds as App Mesh's variables give them (`15`), also `15s` or `500ms`.
/// A numeric user or group id; empty is unset (App Mesh's scripts test `[ -z "$VAR" ]`).
fn parse_id(setting: &'static str, text: Option<&str>) -> Result<Option<u32>, AgentError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => match t.parse::<u32>() {
            Ok(id) if id != u32::MAX => Ok(Some(id)),
            _ => Err(AgentError::config(
                setting,
                format!("{t:?} is not a numeric id"),
            )),
        },
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("{t:?} is not a duration in seconds (e.g. 0, 15, 15s, 500ms)");
    if let Some(ms) = t.strip_suffix("ms") {
        return ms
            .trim()
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| bad());
    }
    let secs = t.strip_suffix('s').unwrap_or(t).trim();
    let value: f64 = secs.parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(value))
}

/// `8080=18080,9090=19090` → {8080: 18080, 9090: 19090}.
pub fn parse_app_ports(text: &str) -> Result<BTreeMap<u16, u16>, AgentError> {
    let mut ports = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = |why: &str| {
            AgentError::config(
                APP_PORTS,
                format!("{item:?}: {why}; expected LISTENER_PORT=APP_PORT[,...] e.g. 8080=18080"),
            )
        };
        let (listener, app) = item.split_once('=').ok_or_else(|| bad("missing '='"))?;
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p != 0);
        let (Some(listener), Some(app)) = (port(listener), port(app)) else {
            return Err(bad("ports are 1-65535"));
        };
        if ports.insert(listener, app).is_some() {
            return Err(bad("listener port given twice"));
        }
    }
    Ok(ports)
}

/// A number (`APPNET_ENVOY_RESTART_COUNT` semantics: how many restarts) or `unlimited`.
fn parse_restart_count(text: &str) -> Result<Option<u32>, AgentError> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("unlimited") || t == "-1" {
        return Ok(None);
    }
    t.parse::<u32>().map(Some).map_err(|_| {
        AgentError::config(
            RESTARTS,
            format!("{t:?} is not a number of restarts or `unlimited`"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn parse(extra: &[&str]) -> Result<AgentConfig, AgentError> {
        let mut argv = vec!["weft-agent"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
        AgentConfig::from_args(&cli.args)
    }

    fn err(extra: &[&str]) -> String {
        match parse(extra) {
            Ok(c) => panic!("accepted {extra:?}: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_full_arn_gives_node_id_verbatim_and_path_cluster() {
        let arn = "arn:aws:appmesh:us-west-2:111122223333:mesh/apps/virtualNode/red";
        let c = parse(&["--resource-arn", arn]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.node_id, arn);
        assert_eq!(c.node_cluster, "mesh/apps/virtualNode/red");
        assert_eq!((c.mesh(), c.resource_name()), ("apps", "red"));
        assert_eq!(
            (c.admin_port, c.ingress_port, c.egress_port),
            (9901, 15000, 15001)
        );
        assert_eq!(c.xds_endpoint.to_string(), "127.0.0.1:15010");
        assert_eq!(c.listen_address, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.restart_limit, None);
        assert_eq!(c.initial_fetch_timeout, Duration::ZERO);
    }

    #[test]
    fn the_path_form_and_gateways_are_accepted_and_cluster_overrides() {
        let c = parse(&[
            "--resource-arn",
            "mesh/apps/virtualGateway/gw",
            "--resource-cluster",
            "edge",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.is_gateway());
        assert_eq!(c.node_cluster, "edge");
    }

    #[test]
    fn a_missing_or_foreign_resource_is_a_clear_error() {
        assert!(err(&[]).contains("APPMESH_RESOURCE_ARN"));
        let e = err(&["--resource-arn", "mesh/apps/virtualService/s.local"]);
        assert!(e.contains("not a virtual node or virtual gateway"), "{e}");
        let e = err(&["--resource-arn", "arn:aws:s3:::bucket"]);
        assert!(
            e.contains("APPMESH_RESOURCE_ARN") && e.contains("expected"),
            "{e}"
        );
    }

    #[test]
    fn explicit_mode_reads_app_ports_and_binds_loopback() {
        let c = parse(&[
            "--resource-arn",
            "mesh/m/virtualNode/n",
            "--listener-mode",
            "EXPLICIT",
            "--app-ports",
            "8080=18080, 9090=19090",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listener_mode, ListenerMode::Explicit);
        assert_eq!(c.listen_address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.app_ports, BTreeMap::from([(8080, 18080), (9090, 19090)]));
    }

    #[test]
    fn bad_values_name_the_variable_at_fault() {
        let base = ["--resource-arn", "mesh/m/virtualNode/n"];
        let cases: [(&[&str], &str); 9] = [
            (&["--log-level", "loud"], "ENVOY_LOG_LEVEL"),
            (&["--concurrency", "0"], "ENVOY_CONCURRENCY"),
            (
                &["--initial-fetch-timeout", "soon"],
                "ENVOY_INITIAL_FETCH_TIMEOUT",
            ),
            (&["--xds-endpoint", "nohost"], "APPMESH_XDS_ENDPOINT"),
            (&["--egress-port", "9901"], "ENVOY_ADMIN_ACCESS_PORT"),
            (&["--app-ports", "8080=18080"], "WEFT_APP_PORTS"),
            (
                &["--listener-mode", "explicit", "--app-ports", "8080=x"],
                "WEFT_APP_PORTS",
            ),
            (&["--drain-wait-s", "500"], "LISTENER_DRAIN_WAIT_TIME_S"),
            (
                &["--envoy-restart-count", "many"],
                "APPNET_ENVOY_RESTART_COUNT",
            ),
        ];
        for (extra, var) in cases {
            let mut argv = base.to_vec();
            argv.extend_from_slice(extra);
            let e = err(&argv);
            assert!(e.contains(var), "{extra:?}: {e}");
        }
    }

    #[test]
    fn an_app_port_equal_to_its_listener_port_on_the_same_address_is_refused() {
        let e = err(&[
            "--resource-arn",
            "mesh/m/virtualNode/n",
            "--listener-mode",
            "explicit",
            "--app-ports",
            "8080=8080",
        ]);
        assert!(e.contains("cannot both listen"), "{e}");
    }

    #[test]
    fn durations_switches_and_endpoints_parse_as_app_mesh_writes_them() {
        assert_eq!(parse_seconds("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_seconds("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_seconds("-1").is_err());
        assert_eq!(parse_switch("1"), Ok(true));
        assert_eq!(parse_switch("0"), Ok(false));
        assert!(parse_switch("2").is_err());
        let e: XdsEndpoint = "[::1]:15010".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((e.host.as_str(), e.port, e.is_ip()), ("::1", 15010, true));
        let e: XdsEndpoint = "weft.local:15010".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(!e.is_ip());
        assert!("weft.local:0".parse::<XdsEndpoint>().is_err());
        assert_eq!(parse_restart_count("3").ok(), Some(Some(3)));
        assert_eq!(parse_restart_count("unlimited").ok(), Some(None));
    }

    const TOKEN: &str = "weft-jt.0123456789abcdef.c2VjcmV0LXNlY3JldC1zZWNyZXQ";

    #[test]
    fn with_a_join_token_xds_is_mutual_tls_unless_plaintext_is_asked_for() {
        let base = ["--resource-arn", "mesh/m/virtualNode/n", "--xds-tls"];
        let err = parse(&base)
            .err()
            .unwrap_or_else(|| panic!("accepted without a token"));
        assert!(err.to_string().contains("join token"), "{err}");
        let mut argv = base.to_vec();
        argv.extend(["--join-token", TOKEN]);
        assert!(parse(&argv).unwrap_or_else(|e| panic!("{e}")).xds_tls);
        // No token: plaintext, the only thing it can speak.
        assert!(!parse(&base[..2]).unwrap_or_else(|e| panic!("{e}")).xds_tls);
        // A token alone: mutual TLS.
        let with_token = [base[0], base[1], "--join-token", TOKEN];
        assert!(parse(&with_token).unwrap_or_else(|e| panic!("{e}")).xds_tls);
        let mut plaintext = with_token.to_vec();
        plaintext.push("--insecure-plaintext-xds");
        let config = parse(&plaintext).unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.xds_tls && config.identity.is_some());
        argv.push("--insecure-plaintext-xds");
        let err = parse(&argv)
            .err()
            .unwrap_or_else(|| panic!("accepted both --xds-tls and plaintext"));
        assert!(err.to_string().contains("exclude each other"), "{err}");
    }

    #[test]
    fn the_xds_endpoint_lists_every_replica_and_the_ca_is_asked_beside_each() {
        let c = parse(&[
            "--resource-arn",
            "mesh/m/virtualNode/n",
            "--xds-endpoint",
            " 10.0.0.1:15010, 10.0.0.2:15010 ,weft-c.internal:15011",
            "--join-token",
            TOKEN,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let all: Vec<String> = c.xds_endpoints().map(ToString::to_string).collect();
        assert_eq!(
            all,
            ["10.0.0.1:15010", "10.0.0.2:15010", "weft-c.internal:15011"]
        );
        let identity = c.identity.unwrap_or_else(|| panic!("identity is on"));
        let cas: Vec<&str> = identity.ca_server.authorities().collect();
        assert_eq!(
            cas,
            ["10.0.0.1:9080", "10.0.0.2:9080", "weft-c.internal:9080"]
        );
        // One bad entry in the list is named, with the variable.
        let e = err(&[
            "--resource-arn",
            "mesh/m/virtualNode/n",
            "--xds-endpoint",
            "10.0.0.1:15010,nohost",
        ]);
        assert!(
            e.contains("APPMESH_XDS_ENDPOINT") && e.contains("nohost"),
            "{e}"
        );
        let e = err(&[
            "--resource-arn",
            "mesh/m/virtualNode/n",
            "--xds-endpoint",
            " , ",
        ]);
        assert!(e.contains("APPMESH_XDS_ENDPOINT"), "{e}");
    }

    #[test]
    fn identity_is_off_without_a_join_token_and_on_with_one() {
        let base = ["--resource-arn", "mesh/m/virtualNode/n"];
        assert_eq!(
            parse(&base).unwrap_or_else(|e| panic!("{e}")).identity,
            None
        );
        let mut argv = base.to_vec();
        argv.extend([
            "--join-token",
            TOKEN,
            "--xds-endpoint",
            "weft.internal:15010",
        ]);
        let c = parse(&argv).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sds_socket, None, "resolved in the temporary run folder");
        let identity = c.identity.unwrap_or_else(|| panic!("identity is on"));
        assert_eq!(identity.ca_server.to_string(), "http://weft.internal:9080");
        let TokenSource::Value(token) = &identity.token else {
            panic!("{:?}", identity.token)
        };
        assert_eq!(token.id(), "0123456789abcdef");

        let mut argv = base.to_vec();
        argv.extend([
            "--join-token",
            TOKEN,
            "--ca-server",
            "http://127.0.0.1:7000/",
            "--run-dir",
            "/run/weft",
        ]);
        let c = parse(&argv).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.sds_socket, Some(PathBuf::from("/run/weft/sds.sock")));
        let identity = c.identity.unwrap_or_else(|| panic!("identity is on"));
        assert_eq!(identity.ca_server.authority(), "127.0.0.1:7000");
        let mut argv = base.to_vec();
        argv.extend([
            "--join-token",
            TOKEN,
            "--sds-socket-path",
            "/run/spire/sds.sock",
        ]);
        let c = parse(&argv).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.identity.is_some() && c.serve_sds);
        assert_eq!(c.sds_socket, Some(PathBuf::from("/run/spire/sds.sock")));
    }

    #[test]
    fn without_a_join_token_the_agent_serves_sds_unless_the_socket_is_another_server_s() {
        let base = ["--resource-arn", "mesh/m/virtualNode/n"];
        let c = parse(&base).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            c.identity.is_none() && c.serve_sds,
            "its own socket, for file certificates"
        );
        // App Mesh's SPIRE set-up: the socket is SPIRE's agent's; this agent leaves it alone.
        let mut argv = base.to_vec();
        argv.extend(["--sds-socket-path", "/run/spire/sockets/agent.sock"]);
        let c = parse(&argv).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.serve_sds);
        let b = crate::bootstrap(&c);
        assert_eq!(
            b["static_resources"]["clusters"].as_array().map(Vec::len),
            Some(1)
        );
        assert!(b["node"]["metadata"].get("weft.file_secrets").is_none());
    }

    #[test]
    fn a_bad_join_token_or_token_file_is_refused_without_showing_the_token() {
        let e = err(&[
            "--resource-arn",
            "mesh/m/virtualNode/n",
            "--join-token",
            "my-secret-value",
        ]);
        assert!(
            e.contains("WEFT_JOIN_TOKEN") && !e.contains("my-secret-value"),
            "{e}"
        );
        let e = err(&[
            "--resource-arn",
            "mesh/m/virtualNode/n",
            "--join-token-file",
            "/nonexistent/token",
        ]);
        assert!(e.contains("WEFT_JOIN_TOKEN_FILE"), "{e}");
        let e = err(&[
            "--resource-arn",
            "mesh/m/virtualNode/n",
            "--join-token",
            TOKEN,
            "--ca-server",
            "https://weft:9080",
        ]);
        assert!(e.contains("WEFT_CA_SERVER"), "{e}");
        // The parsed flags do not show the token either.
        let cli = Cli::try_parse_from(["weft-agent", "--join-token", TOKEN])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{:?}", cli.args).contains("c2VjcmV0"));
    }

    #[test]
    fn the_stats_tags_flag_takes_app_mesh_1_or_stands_alone() {
        let c = parse(&[
            "--resource-arn",
            "mesh/m/virtualNode/n",
            "--enable-stats-tags",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.stats_tags);
        let c = parse(&[
            "--resource-arn",
            "mesh/m/virtualNode/n",
            "--enable-stats-tags=0",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.stats_tags);
    }
}
