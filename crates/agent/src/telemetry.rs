//! Envoy's telemetry, switched on by the variables App Mesh's Envoy image reads (App Mesh user
//! guide, `envoy-config.md`: "Tracing variables", "DogStatsD variables", "Envoy stats
//! variables"), plus OpenTelemetry tracing, which App Mesh never had.
//!
//! [`TelemetryArgs`] is the clap view (flattened into `weft agent`'s flags); [`Telemetry`] is
//! the validated result, with the YAML or JSON files the variables name already read, so that
//! a missing or malformed file stops the agent at start with the variable named, and the
//! bootstrap is a pure function of the configuration. [`apply`] renders it into the bootstrap:
//!
//! - `stats_sinks`: DogStatsD over UDP or a Unix socket, or the sinks of
//!   `ENVOY_STATS_SINKS_CFG_FILE`, which "overrides all of the DogStatsD variables";
//! - `stats_config`: App Mesh's tags (`ENABLE_ENVOY_STATS_TAGS`, in `bootstrap`) unless
//!   `ENVOY_STATS_CONFIG_FILE` gives a `StatsConfig` of its own, which replaces them;
//! - `stats_flush_interval`;
//! - `tracing`: one driver at a time (X-Ray, Datadog, Jaeger in Zipkin's format, OpenTelemetry
//!   over OTLP/gRPC) with a static cluster to its collector, or the tracing of
//!   `ENVOY_TRACING_CFG_FILE` with the static resources that file declares.
//!
//! Envoy traces a request only in the HTTP connection managers whose `tracing` field is set;
//! the bootstrap's provider alone traces nothing (and the field is deprecated in favour of the
//! connection manager's `provider`). Those connection managers come from Weft's server, so the
//! bootstrap says `weft.tracing: true` in the node metadata and translation sets `tracing: {}`
//! on every connection manager of the proxy, which then falls back to the bootstrap's provider
//! (docs/proxy-contract.md).
//!
//! Envoy docs: <https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto>,
//! <https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/trace/v3/http_tracer.proto>.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::{AgentConfig, XdsEndpoint};
use crate::error::AgentError;

/// The node metadata key telling translation to trace in every HTTP connection manager.
pub const TRACING_METADATA_KEY: &str = "weft.tracing";

/// The static cluster to the Datadog agent (App Mesh's name, so its stats keep their names).
pub const DATADOG_CLUSTER: &str = "datadog_agent";
/// The static cluster to the Jaeger (Zipkin-compatible) collector (App Mesh's name).
pub const JAEGER_CLUSTER: &str = "jaeger";
/// The static cluster to the OpenTelemetry collector (OTLP over gRPC).
pub const OTEL_CLUSTER: &str = "opentelemetry_collector";

/// The X-Ray tracer's own default sampling rate (5%), which App Mesh leaves alone.
const XRAY_DEFAULT_RATE: f64 = 0.05;

const DOG_STATSD: &str = "ENABLE_ENVOY_DOG_STATSD (--enable-dog-statsd)";
const STATS_INTAKE: &str = "WEFT_STATS_INTAKE (--stats-intake)";

/// The node metadata key saying how often Envoy flushes its stats, in seconds (the server's
/// stats intake reads a proxy's first report as covering that long).
pub const FLUSH_INTERVAL_METADATA_KEY: &str = "weft.stats_flush_interval_seconds";

/// How often Envoy flushes stats when Weft's stats intake is on and ENVOY_STATS_FLUSH_INTERVAL
/// is unset: the resolution of the server's traffic history.
pub const INTAKE_FLUSH_INTERVAL: Duration = Duration::from_secs(10);
const STATSD_ADDRESS: &str = "STATSD_ADDRESS (--statsd-address)";
const STATSD_PORT: &str = "STATSD_PORT (--statsd-port)";
const FLUSH_INTERVAL: &str = "ENVOY_STATS_FLUSH_INTERVAL (--stats-flush-interval)";
const STATS_CONFIG_FILE: &str = "ENVOY_STATS_CONFIG_FILE (--stats-config-file)";
const STATS_SINKS_FILE: &str = "ENVOY_STATS_SINKS_CFG_FILE (--stats-sinks-file)";
const XRAY: &str = "ENABLE_ENVOY_XRAY_TRACING (--enable-xray-tracing)";
const XRAY_PORT: &str = "XRAY_DAEMON_PORT (--xray-daemon-port)";
const XRAY_ADDRESS: &str = "AWS_XRAY_DAEMON_ADDRESS (--xray-daemon-address)";
const XRAY_RATE: &str = "XRAY_SAMPLING_RATE (--xray-sampling-rate)";
const XRAY_MANIFEST: &str = "XRAY_SAMPLING_RULE_MANIFEST (--xray-sampling-rule-manifest)";
const XRAY_SEGMENT: &str = "XRAY_SEGMENT_NAME (--xray-segment-name)";
const DATADOG: &str = "ENABLE_ENVOY_DATADOG_TRACING (--enable-datadog-tracing)";
const DATADOG_PORT: &str = "DATADOG_TRACER_PORT (--datadog-tracer-port)";
const DATADOG_ADDRESS: &str = "DATADOG_TRACER_ADDRESS (--datadog-tracer-address)";
const DD_SERVICE: &str = "DD_SERVICE (--dd-service)";
const JAEGER: &str = "ENABLE_ENVOY_JAEGER_TRACING (--enable-jaeger-tracing)";
const JAEGER_PORT: &str = "JAEGER_TRACER_PORT (--jaeger-tracer-port)";
const JAEGER_ADDRESS: &str = "JAEGER_TRACER_ADDRESS (--jaeger-tracer-address)";
const JAEGER_VERSION: &str = "JAEGER_TRACER_VERSION (--jaeger-tracer-version)";
const OTEL: &str = "ENABLE_ENVOY_OTEL_TRACING (--enable-otel-tracing)";
const OTEL_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT (--otel-exporter-otlp-endpoint)";
const OTEL_SERVICE: &str = "OTEL_SERVICE_NAME (--otel-service-name)";
const TRACING_FILE: &str = "ENVOY_TRACING_CFG_FILE (--tracing-cfg-file)";

/// Envoy's telemetry switches, each falling back to App Mesh's variable (`envoy-config.md`).
///
/// Values are taken as text and checked by [`Telemetry::from_args`], so that every error names
/// the variable at fault. An empty value is unset, as App Mesh's image treats it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TelemetryArgs {
    /// Send Envoy's stats to a DogStatsD daemon (1 or 0), at 127.0.0.1:8125 unless
    /// STATSD_ADDRESS, STATSD_PORT or STATSD_SOCKET_PATH say otherwise.
    #[arg(long, env = "ENABLE_ENVOY_DOG_STATSD", value_name = "0|1", num_args = 0..=1, default_missing_value = "1")]
    pub enable_dog_statsd: Option<String>,
    /// Send Envoy's stats to Weft's server too (1, the default, or 0), over the xDS connection
    /// (Envoy's `metrics_service` sink): the server's traffic history and dashboard read them.
    /// Independent of the DogStatsD and sinks-file options.
    #[arg(long, env = "WEFT_STATS_INTAKE", value_name = "0|1")]
    pub stats_intake: Option<String>,
    /// The DogStatsD daemon's IP address (default 127.0.0.1).
    #[arg(long, env = "STATSD_ADDRESS", value_name = "IP")]
    pub statsd_address: Option<String>,
    /// The DogStatsD daemon's UDP port (default 8125).
    #[arg(long, env = "STATSD_PORT", value_name = "PORT")]
    pub statsd_port: Option<String>,
    /// The DogStatsD daemon's Unix datagram socket, instead of its address and port.
    #[arg(long, env = "STATSD_SOCKET_PATH", value_name = "PATH")]
    pub statsd_socket_path: Option<PathBuf>,
    /// How often Envoy flushes its stats to the sinks, e.g. 5000ms or 10s (Envoy's default 5s).
    #[arg(long, env = "ENVOY_STATS_FLUSH_INTERVAL", value_name = "DURATION")]
    pub stats_flush_interval: Option<String>,
    /// A YAML or JSON file holding Envoy's `stats_config`, which replaces the default one
    /// (and so App Mesh's tags).
    #[arg(long, env = "ENVOY_STATS_CONFIG_FILE", value_name = "PATH")]
    pub stats_config_file: Option<PathBuf>,
    /// A YAML or JSON file holding Envoy's `stats_sinks`, which replace the DogStatsD sink.
    #[arg(long, env = "ENVOY_STATS_SINKS_CFG_FILE", value_name = "PATH")]
    pub stats_sinks_file: Option<PathBuf>,
    /// Trace with AWS X-Ray (1 or 0), to the daemon at 127.0.0.1:2000.
    #[arg(long, env = "ENABLE_ENVOY_XRAY_TRACING", value_name = "0|1", num_args = 0..=1, default_missing_value = "1")]
    pub enable_xray_tracing: Option<String>,
    /// The X-Ray daemon's UDP port (default 2000).
    #[arg(long, env = "XRAY_DAEMON_PORT", value_name = "PORT")]
    pub xray_daemon_port: Option<String>,
    /// The X-Ray daemon's IP address, optionally with its port (`127.0.0.1:2000`).
    #[arg(long, env = "AWS_XRAY_DAEMON_ADDRESS", value_name = "IP[:PORT]")]
    pub xray_daemon_address: Option<String>,
    /// The share of requests X-Ray samples, 0 to 1.00 (X-Ray's default 0.05).
    #[arg(long, env = "XRAY_SAMPLING_RATE", value_name = "RATE")]
    pub xray_sampling_rate: Option<String>,
    /// A JSON file of X-Ray sampling rules (version 2), which overrides XRAY_SAMPLING_RATE.
    #[arg(long, env = "XRAY_SAMPLING_RULE_MANIFEST", value_name = "PATH")]
    pub xray_sampling_rule_manifest: Option<PathBuf>,
    /// The X-Ray segment name (default `<mesh>/<virtual node or gateway>`).
    #[arg(long, env = "XRAY_SEGMENT_NAME", value_name = "NAME")]
    pub xray_segment_name: Option<String>,
    /// Trace with Datadog (1 or 0), to the agent at 127.0.0.1:8126.
    #[arg(long, env = "ENABLE_ENVOY_DATADOG_TRACING", value_name = "0|1", num_args = 0..=1, default_missing_value = "1")]
    pub enable_datadog_tracing: Option<String>,
    /// The Datadog agent's port (default 8126).
    #[arg(long, env = "DATADOG_TRACER_PORT", value_name = "PORT")]
    pub datadog_tracer_port: Option<String>,
    /// The Datadog agent's address (default 127.0.0.1).
    #[arg(long, env = "DATADOG_TRACER_ADDRESS", value_name = "HOST")]
    pub datadog_tracer_address: Option<String>,
    /// The Datadog service name (default `envoy-<mesh>/<virtual node or gateway>`).
    #[arg(long, env = "DD_SERVICE", value_name = "NAME")]
    pub dd_service: Option<String>,
    /// Trace with Jaeger (1 or 0): Zipkin's format to the collector at 127.0.0.1:9411.
    #[arg(long, env = "ENABLE_ENVOY_JAEGER_TRACING", value_name = "0|1", num_args = 0..=1, default_missing_value = "1")]
    pub enable_jaeger_tracing: Option<String>,
    /// The Jaeger collector's Zipkin port (default 9411).
    #[arg(long, env = "JAEGER_TRACER_PORT", value_name = "PORT")]
    pub jaeger_tracer_port: Option<String>,
    /// The Jaeger collector's address (default 127.0.0.1).
    #[arg(long, env = "JAEGER_TRACER_ADDRESS", value_name = "HOST")]
    pub jaeger_tracer_address: Option<String>,
    /// The encoding the collector takes: PROTO (default) or JSON (Zipkin v2 JSON).
    #[arg(long, env = "JAEGER_TRACER_VERSION", value_name = "PROTO|JSON")]
    pub jaeger_tracer_version: Option<String>,
    /// Trace with OpenTelemetry (1 or 0): OTLP over gRPC to 127.0.0.1:4317 (a Weft extension).
    #[arg(long, env = "ENABLE_ENVOY_OTEL_TRACING", value_name = "0|1", num_args = 0..=1, default_missing_value = "1")]
    pub enable_otel_tracing: Option<String>,
    /// The OpenTelemetry collector's OTLP/gRPC address: host:port or http://host:port.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "HOST:PORT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
    /// The service name on OpenTelemetry spans (default the node's cluster,
    /// `mesh/<mesh>/virtualNode/<name>` unless APPMESH_RESOURCE_CLUSTER says otherwise).
    #[arg(long, env = "OTEL_SERVICE_NAME", value_name = "NAME")]
    pub otel_service_name: Option<String>,
    /// A YAML or JSON file holding Envoy's `tracing` (and the `static_resources` clusters its
    /// collector needs), instead of the ENABLE_ENVOY_*_TRACING drivers.
    #[arg(long, env = "ENVOY_TRACING_CFG_FILE", value_name = "PATH")]
    pub tracing_cfg_file: Option<PathBuf>,
}

/// Where DogStatsD packets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsdTarget {
    /// A UDP address.
    Udp {
        /// An IP address (Envoy's sink takes no host name).
        address: IpAddr,
        /// UDP port.
        port: u16,
    },
    /// A Unix datagram socket.
    Unix(PathBuf),
}

/// How the Zipkin tracer encodes the spans it sends to a Jaeger collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZipkinEncoding {
    /// Zipkin v2 protobuf (`HTTP_PROTO`), App Mesh's default.
    #[default]
    Proto,
    /// Zipkin v2 JSON (`HTTP_JSON`).
    Json,
}

/// X-Ray's sampling: a rate App Mesh turns into a local manifest, or a manifest file.
#[derive(Debug, Clone, PartialEq)]
pub enum XRaySampling {
    /// A fixed rate (0 to 1) with one request a second always traced, as App Mesh writes it.
    Rate(f64),
    /// A sampling rule manifest file (version 2), read by Envoy.
    Manifest(PathBuf),
}

/// The one tracing driver of a proxy.
#[derive(Debug, Clone, PartialEq)]
pub enum Tracer {
    /// AWS X-Ray: segments over UDP to the daemon.
    XRay {
        /// The daemon's IP address and port.
        daemon: (IpAddr, u16),
        /// `None`: the tracer's default (5%).
        sampling: Option<XRaySampling>,
        /// `None`: `<mesh>/<name>`.
        segment_name: Option<String>,
    },
    /// Datadog: traces over HTTP to the Datadog agent.
    Datadog {
        /// The agent's address.
        collector: XdsEndpoint,
        /// `None`: `envoy-<mesh>/<name>`.
        service_name: Option<String>,
    },
    /// Jaeger's Zipkin-compatible collector (`/api/v2/spans`).
    Jaeger {
        /// The collector's address.
        collector: XdsEndpoint,
        /// Protobuf or JSON.
        encoding: ZipkinEncoding,
    },
    /// OpenTelemetry: OTLP over gRPC.
    OpenTelemetry {
        /// The collector's address.
        collector: XdsEndpoint,
        /// `None`: the node's cluster.
        service_name: Option<String>,
    },
    /// The `tracing.http` provider of `ENVOY_TRACING_CFG_FILE`, as written there.
    File(Value),
}

/// The validated telemetry of one agent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Telemetry {
    /// The DogStatsD sink; `None` when off or when a sinks file replaces it.
    pub dog_statsd: Option<StatsdTarget>,
    /// `stats_flush_interval`; `None` keeps Envoy's default (5 s), or 10 s with the intake on.
    pub flush_interval: Option<Duration>,
    /// Whether Envoy streams its stats to Weft's server (`metrics_service` sink).
    pub intake: bool,
    /// A `StatsConfig` from a file, replacing the default one (App Mesh's tags included).
    pub stats_config: Option<Value>,
    /// The stats sinks of `ENVOY_STATS_SINKS_CFG_FILE`.
    pub stats_sinks: Option<Vec<Value>>,
    /// The tracing driver, if any.
    pub tracer: Option<Tracer>,
    /// `static_resources` entries the files declare (`clusters`, `listeners`, `secrets`),
    /// appended to the bootstrap's.
    pub static_resources: BTreeMap<String, Vec<Value>>,
}

/// The bootstrap keys a telemetry file may hold: what App Mesh's image merges from them.
const FILE_KEYS: [&str; 5] = [
    "tracing",
    "stats_config",
    "stats_sinks",
    "stats_flush_interval",
    "static_resources",
];

/// The `static_resources` lists a file may add to.
const STATIC_KEYS: [&str; 3] = ["clusters", "listeners", "secrets"];

impl Telemetry {
    /// Validates the switches and reads the files they name.
    pub fn from_args(args: &TelemetryArgs) -> Result<Self, AgentError> {
        let mut telemetry = Telemetry {
            flush_interval: set(&args.stats_flush_interval)
                .map(|t| parse_flush_interval(t).map_err(|m| AgentError::config(FLUSH_INTERVAL, m)))
                .transpose()?,
            ..Telemetry::default()
        };
        let mut files = Files::default();
        if let Some(path) = set_path(&args.stats_config_file) {
            let file = read_file(STATS_CONFIG_FILE, path)?;
            let fragment = match file {
                // The file may be a bootstrap fragment (`stats_config: ...`, as App Mesh's
                // image merges it) or the `StatsConfig` itself.
                Value::Object(map) if has_file_key(&map) => map,
                Value::Object(map) => Map::from_iter([("stats_config".into(), Value::Object(map))]),
                _ => {
                    return Err(AgentError::config(
                        STATS_CONFIG_FILE,
                        format!("{}: not a mapping", path.display()),
                    ))
                }
            };
            files.merge(STATS_CONFIG_FILE, path, fragment)?;
            if files.stats_config.is_none() {
                return Err(AgentError::config(
                    STATS_CONFIG_FILE,
                    format!("{} holds no stats_config", path.display()),
                ));
            }
        }
        if let Some(path) = set_path(&args.stats_sinks_file) {
            let fragment = match read_file(STATS_SINKS_FILE, path)? {
                Value::Object(map) => map,
                // A plain list of sinks.
                list @ Value::Array(_) => Map::from_iter([("stats_sinks".into(), list)]),
                _ => {
                    return Err(AgentError::config(
                        STATS_SINKS_FILE,
                        format!("{}: not a mapping or a list", path.display()),
                    ))
                }
            };
            files.merge(STATS_SINKS_FILE, path, fragment)?;
            if files.stats_sinks.is_none() {
                return Err(AgentError::config(
                    STATS_SINKS_FILE,
                    format!("{} holds no stats_sinks configuration", path.display()),
                ));
            }
        }
        if let Some(path) = set_path(&args.tracing_cfg_file) {
            let fragment = match read_file(TRACING_FILE, path)? {
                Value::Object(map) if has_file_key(&map) => map,
                // The `Tracing` message itself (`http: {name, typed_config}`).
                Value::Object(map) => Map::from_iter([("tracing".into(), Value::Object(map))]),
                _ => {
                    return Err(AgentError::config(
                        TRACING_FILE,
                        format!("{}: not a mapping", path.display()),
                    ))
                }
            };
            files.merge(TRACING_FILE, path, fragment)?;
            if files.tracing.is_none() {
                return Err(AgentError::config(
                    TRACING_FILE,
                    format!("{} holds no tracing", path.display()),
                ));
            }
        }

        // Stats sinks: a sinks file "overrides all of the DogStatsD variables" (envoy-config.md);
        // they are still checked, so that a typo is not silently ignored.
        telemetry.intake =
            set(&args.stats_intake).is_none() || switch(STATS_INTAKE, &args.stats_intake)?;
        let dog_statsd = dog_statsd(args)?;
        telemetry.dog_statsd = if files.stats_sinks.is_some() {
            None
        } else {
            dog_statsd
        };

        // Tracing: one driver; a tracing file takes the place of the ENABLE_ variables, as in
        // App Mesh's image (which skips them when ENVOY_TRACING_CFG_FILE is set).
        let drivers = tracers(args)?;
        if drivers.len() > 1 {
            let names: Vec<&str> = drivers.iter().map(|(setting, _)| *setting).collect();
            return Err(AgentError::config(
                names[0],
                format!(
                    "only one tracing driver can be on, and {} are: {}",
                    names.len(),
                    names.join(", ")
                ),
            ));
        }
        let driver = drivers.into_iter().next().map(|(_, tracer)| tracer);
        telemetry.tracer = match (files.tracing.take(), driver) {
            (Some(file), Some(_)) => {
                tracing::warn!(
                    "ENVOY_TRACING_CFG_FILE is set: its tracing replaces the ENABLE_ENVOY_*_TRACING driver"
                );
                Some(Tracer::File(file))
            }
            (Some(file), None) => Some(Tracer::File(file)),
            (None, driver) => driver,
        };
        if telemetry.flush_interval.is_none() {
            telemetry.flush_interval = files.flush_interval;
        }
        telemetry.stats_config = files.stats_config;
        telemetry.stats_sinks = files.stats_sinks;
        // Envoy refuses two static clusters of one name: a file may not reuse the bootstrap's.
        let mut taken: Vec<String> = vec![
            crate::bootstrap::XDS_CLUSTER.into(),
            crate::bootstrap::SDS_CLUSTER.into(),
        ];
        taken.extend(
            telemetry
                .tracer
                .as_ref()
                .and_then(driver_cluster)
                .map(String::from),
        );
        for (setting, cluster) in files.static_resources.get("clusters").into_iter().flatten() {
            let name = cluster
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if taken.iter().any(|t| t == name) {
                return Err(AgentError::config(
                    setting,
                    format!(
                        "a static cluster named {name:?} is already in the bootstrap; rename it"
                    ),
                ));
            }
            taken.push(name.to_string());
        }
        telemetry.static_resources = files
            .static_resources
            .into_iter()
            .map(|(kind, items)| (kind, items.into_iter().map(|(_, item)| item).collect()))
            .collect();
        Ok(telemetry)
    }

    /// Whether the proxy traces (translation then sets `tracing` on its connection managers).
    pub fn traces(&self) -> bool {
        self.tracer.is_some()
    }
}

/// The static cluster a driver adds to the bootstrap.
fn driver_cluster(tracer: &Tracer) -> Option<&'static str> {
    match tracer {
        Tracer::Datadog { .. } => Some(DATADOG_CLUSTER),
        Tracer::Jaeger { .. } => Some(JAEGER_CLUSTER),
        Tracer::OpenTelemetry { .. } => Some(OTEL_CLUSTER),
        Tracer::XRay { .. } | Tracer::File(_) => None,
    }
}

/// What the files together contribute.
#[derive(Default)]
struct Files {
    tracing: Option<Value>,
    stats_config: Option<Value>,
    stats_sinks: Option<Vec<Value>>,
    flush_interval: Option<Duration>,
    /// Each entry with the setting whose file holds it.
    static_resources: BTreeMap<String, Vec<(&'static str, Value)>>,
}

impl Files {
    fn merge(
        &mut self,
        setting: &'static str,
        path: &Path,
        fragment: Map<String, Value>,
    ) -> Result<(), AgentError> {
        let at = |m: String| AgentError::config(setting, format!("{}: {m}", path.display()));
        let fragment = snake_keys(fragment).map_err(at)?;
        if fragment.is_empty() {
            return Err(at("is empty".into()));
        }
        for (key, value) in fragment {
            match key.as_str() {
                "tracing" => {
                    if self.tracing.is_some() {
                        return Err(at("a second tracing configuration (only one tracer is allowed)".into()));
                    }
                    self.tracing = Some(tracing_provider(value).map_err(at)?);
                }
                "stats_config" => {
                    if self.stats_config.is_some() {
                        return Err(at("a second stats_config".into()));
                    }
                    if !value.is_object() {
                        return Err(at("stats_config is not a mapping".into()));
                    }
                    self.stats_config = Some(value);
                }
                "stats_sinks" => {
                    let Value::Array(sinks) = value else {
                        return Err(at("stats_sinks is not a list".into()));
                    };
                    if let Some(bad) = sinks.iter().find(|s| s.get("name").and_then(Value::as_str).is_none()) {
                        return Err(at(format!("a stats sink without a name: {bad}")));
                    }
                    self.stats_sinks.get_or_insert_with(Vec::new).extend(sinks);
                }
                "stats_flush_interval" => {
                    let text = value.as_str().ok_or_else(|| at("stats_flush_interval is not a duration text such as \"10s\"".into()))?;
                    self.flush_interval = Some(parse_flush_interval(text).map_err(at)?);
                }
                "static_resources" => {
                    let Value::Object(resources) = value else {
                        return Err(at("static_resources is not a mapping".into()));
                    };
                    for (kind, list) in resources {
                        if !STATIC_KEYS.contains(&kind.as_str()) {
                            return Err(at(format!(
                                "static_resources.{kind} cannot be added; a file may add {}",
                                STATIC_KEYS.join(", ")
                            )));
                        }
                        let Value::Array(items) = list else {
                            return Err(at(format!("static_resources.{kind} is not a list")));
                        };
                        if let Some(bad) = items.iter().find(|i| i.get("name").and_then(Value::as_str).is_none()) {
                            return Err(at(format!("an entry of static_resources.{kind} without a name: {bad}")));
                        }
                        self.static_resources
                            .entry(kind)
                            .or_default()
                            .extend(items.into_iter().map(|item| (setting, item)));
                    }
                }
                other => {
                    return Err(at(format!(
                        "holds `{other}`, which the agent does not merge into Envoy's bootstrap (a telemetry file may hold {})",
                        FILE_KEYS.join(", ")
                    )))
                }
            }
        }
        Ok(())
    }
}

/// The `tracing` of a file: `{http: {name, typed_config}}`; returns the `http` provider.
fn tracing_provider(value: Value) -> Result<Value, String> {
    let http = value
        .get("http")
        .cloned()
        .ok_or("tracing has no `http` provider")?;
    match http.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => Ok(http),
        _ => Err("tracing.http has no name (e.g. envoy.tracers.zipkin)".into()),
    }
}

fn has_file_key(map: &Map<String, Value>) -> bool {
    map.keys()
        .any(|k| FILE_KEYS.contains(&snake_case(k).as_str()))
}

/// Top-level keys in snake_case: Envoy's JSON takes both spellings, and App Mesh's image
/// normalises `statsConfig` and `stats_config` alike, refusing a file that has both.
fn snake_keys(map: Map<String, Value>) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (key, value) in map {
        let snake = snake_case(&key);
        if out.insert(snake.clone(), value).is_some() {
            return Err(format!(
                "holds both {snake} and its camelCase spelling; keep one"
            ));
        }
    }
    Ok(out)
}

fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads a YAML or JSON file (JSON is YAML) into a JSON value.
fn read_file(setting: &'static str, path: &Path) -> Result<Value, AgentError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AgentError::config(setting, format!("cannot read {}: {e}", path.display())))?;
    let value: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        AgentError::config(
            setting,
            format!("{} is not valid YAML or JSON: {e}", path.display()),
        )
    })?;
    match &value {
        Value::Null => Err(AgentError::config(
            setting,
            format!("{} is empty", path.display()),
        )),
        _ => Ok(value),
    }
}

/// A value that is set: not absent, not empty (App Mesh's scripts test `[ -z "$VAR" ]`).
fn set(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn set_path(value: &Option<PathBuf>) -> Option<&Path> {
    value.as_deref().filter(|p| !p.as_os_str().is_empty())
}

/// `1`/`0` as App Mesh writes its switches, also `true`/`false`.
fn switch(setting: &'static str, value: &Option<String>) -> Result<bool, AgentError> {
    match set(value).map(str::to_ascii_lowercase).as_deref() {
        None | Some("0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(other) => Err(AgentError::config(
            setting,
            format!("{other:?} is not 1 or 0"),
        )),
    }
}

fn port(setting: &'static str, value: &Option<String>, default: u16) -> Result<u16, AgentError> {
    match set(value) {
        None => Ok(default),
        Some(text) => match text.parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(AgentError::config(
                setting,
                format!("{text:?} is not a port (1-65535)"),
            )),
        },
    }
}

fn ip(setting: &'static str, value: &Option<String>) -> Result<IpAddr, AgentError> {
    match set(value) {
        None => Ok(IpAddr::from([127, 0, 0, 1])),
        Some(text) => text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                AgentError::config(
                    setting,
                    format!("{text:?} is not an IP address (e.g. 127.0.0.1)"),
                )
            }),
    }
}

/// An IP address or a DNS name (the collector's cluster is then resolved by DNS).
fn host(setting: &'static str, value: &Option<String>) -> Result<String, AgentError> {
    match set(value) {
        None => Ok("127.0.0.1".into()),
        Some(text) => {
            let text = text.trim_start_matches('[').trim_end_matches(']');
            let name_ok = text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
            if text.parse::<IpAddr>().is_ok() || name_ok {
                Ok(text.to_string())
            } else {
                Err(AgentError::config(
                    setting,
                    format!("{text:?} is not an IP address or a host name"),
                ))
            }
        }
    }
}

fn name(setting: &'static str, value: &Option<String>) -> Result<Option<String>, AgentError> {
    match value.as_deref() {
        Some(text) if !text.is_empty() && text.trim().is_empty() => {
            Err(AgentError::config(setting, "must not be blank when set"))
        }
        _ => Ok(set(value).map(str::to_string)),
    }
}

fn dog_statsd(args: &TelemetryArgs) -> Result<Option<StatsdTarget>, AgentError> {
    let on = switch(DOG_STATSD, &args.enable_dog_statsd)?;
    let address = ip(STATSD_ADDRESS, &args.statsd_address)?;
    let port = port(STATSD_PORT, &args.statsd_port, 8125)?;
    if !on {
        return Ok(None);
    }
    // The socket, when given, wins over the address (the App Mesh controller's chart:
    // "overridden if stats.statsdSocketPath is specified").
    Ok(Some(match set_path(&args.statsd_socket_path) {
        Some(path) => StatsdTarget::Unix(path.to_path_buf()),
        None => StatsdTarget::Udp { address, port },
    }))
}

/// Every tracing driver switched on, with the setting that switched it on.
fn tracers(args: &TelemetryArgs) -> Result<Vec<(&'static str, Tracer)>, AgentError> {
    let mut on = Vec::new();
    if switch(XRAY, &args.enable_xray_tracing)? {
        on.push((XRAY, xray(args)?));
    }
    if switch(DATADOG, &args.enable_datadog_tracing)? {
        on.push((
            DATADOG,
            Tracer::Datadog {
                collector: XdsEndpoint {
                    host: host(DATADOG_ADDRESS, &args.datadog_tracer_address)?,
                    port: port(DATADOG_PORT, &args.datadog_tracer_port, 8126)?,
                },
                service_name: name(DD_SERVICE, &args.dd_service)?,
            },
        ));
    }
    if switch(JAEGER, &args.enable_jaeger_tracing)? {
        let encoding = match set(&args.jaeger_tracer_version)
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("PROTO") => ZipkinEncoding::Proto,
            Some("JSON") => ZipkinEncoding::Json,
            Some(other) => {
                return Err(AgentError::config(
                    JAEGER_VERSION,
                    format!("{other:?} is not PROTO or JSON"),
                ))
            }
        };
        on.push((
            JAEGER,
            Tracer::Jaeger {
                collector: XdsEndpoint {
                    host: host(JAEGER_ADDRESS, &args.jaeger_tracer_address)?,
                    port: port(JAEGER_PORT, &args.jaeger_tracer_port, 9411)?,
                },
                encoding,
            },
        ));
    }
    if switch(OTEL, &args.enable_otel_tracing)? {
        let collector = match set(&args.otel_exporter_otlp_endpoint) {
            None => XdsEndpoint {
                host: "127.0.0.1".into(),
                port: 4317,
            },
            Some(text) => otlp_endpoint(text).map_err(|m| AgentError::config(OTEL_ENDPOINT, m))?,
        };
        on.push((
            OTEL,
            Tracer::OpenTelemetry {
                collector,
                service_name: name(OTEL_SERVICE, &args.otel_service_name)?,
            },
        ));
    }
    Ok(on)
}

/// `host:port` or `http://host:port[/]` (the OpenTelemetry SDKs' form of the variable).
fn otlp_endpoint(text: &str) -> Result<XdsEndpoint, String> {
    if text.starts_with("https://") {
        return Err(format!(
            "{text:?}: TLS to the collector is not supported; give http://host:port or host:port"
        ));
    }
    let bare = text
        .strip_prefix("http://")
        .unwrap_or(text)
        .trim_end_matches('/');
    bare.parse::<XdsEndpoint>()
        .map_err(|_| format!("{text:?} is not host:port or http://host:port (e.g. 127.0.0.1:4317)"))
}

fn xray(args: &TelemetryArgs) -> Result<Tracer, AgentError> {
    let mut daemon = (
        IpAddr::from([127, 0, 0, 1]),
        port(XRAY_PORT, &args.xray_daemon_port, 2000)?,
    );
    // AWS_XRAY_DAEMON_ADDRESS may carry a port, which then wins over XRAY_DAEMON_PORT (as in
    // App Mesh's image); Envoy's X-Ray tracer takes an IP only.
    if let Some(text) = set(&args.xray_daemon_address) {
        let bad = || {
            AgentError::config(
                XRAY_ADDRESS,
                format!("{text:?} is not an IP address, optionally with :port"),
            )
        };
        match text.parse::<IpAddr>() {
            Ok(addr) => daemon.0 = addr,
            Err(_) => {
                let endpoint: XdsEndpoint = text.parse().map_err(|_| bad())?;
                daemon = (endpoint.host.parse().map_err(|_| bad())?, endpoint.port);
            }
        }
    }
    let sampling = match (
        set_path(&args.xray_sampling_rule_manifest),
        set(&args.xray_sampling_rate),
    ) {
        (Some(path), _) => {
            let manifest = read_file(XRAY_MANIFEST, path)?;
            // Envoy's X-Ray tracer reads version 2 manifests only.
            match manifest.get("version").and_then(Value::as_i64) {
                Some(2) => {}
                other => {
                    return Err(AgentError::config(
                        XRAY_MANIFEST,
                        format!(
                            "{}: version {other:?} is not supported; Envoy reads version 2",
                            path.display()
                        ),
                    ))
                }
            }
            Some(XRaySampling::Manifest(path.to_path_buf()))
        }
        (None, Some(text)) => {
            let rate: f64 = text
                .parse()
                .ok()
                .filter(|r: &f64| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    AgentError::config(
                        XRAY_RATE,
                        format!("{text:?} is not a decimal between 0 and 1.00"),
                    )
                })?;
            // Two decimals, as App Mesh's image rounds it; 5% is the tracer's own default.
            let rate = (rate * 100.0).round() / 100.0;
            (rate != XRAY_DEFAULT_RATE).then_some(XRaySampling::Rate(rate))
        }
        (None, None) => None,
    };
    Ok(Tracer::XRay {
        daemon,
        sampling,
        segment_name: name(XRAY_SEGMENT, &args.xray_segment_name)?,
    })
}

/// Go's duration syntax as App Mesh documents the variable (`5000ms`, `10s`, `1m30s`), or
/// plain seconds; Envoy takes 1 ms to 5 minutes (bootstrap.proto `stats_flush_interval`).
fn parse_flush_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("{t:?} is not a duration such as 5000ms, 10s or 1m");
    let total = if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(bad());
        }
        Duration::from_secs_f64(secs)
    } else {
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let (number, tail) = rest.split_at(digits);
            let number: f64 = number.parse().map_err(|_| bad())?;
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let scale = match unit {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            total += Duration::from_secs_f64(number * scale);
            rest = tail;
        }
        total
    };
    if total < Duration::from_millis(1) || total >= Duration::from_secs(300) {
        return Err(format!(
            "{t:?}: Envoy flushes stats every 1 ms to 5 minutes"
        ));
    }
    Ok(total)
}

/// Renders the telemetry into the bootstrap `root` (built by [`crate::bootstrap()`]).
pub fn apply(config: &AgentConfig, root: &mut Value) {
    let telemetry = &config.telemetry;
    if let Some(stats_config) = &telemetry.stats_config {
        root["stats_config"] = stats_config.clone();
    }
    let interval = telemetry
        .flush_interval
        .or(telemetry.intake.then_some(INTAKE_FLUSH_INTERVAL));
    if let Some(interval) = interval {
        root["stats_flush_interval"] = crate::bootstrap::duration(interval).into();
    }
    let mut sinks: Vec<Value> = telemetry.stats_sinks.clone().unwrap_or_default();
    if let Some(target) = &telemetry.dog_statsd {
        sinks.push(dog_statsd_sink(target));
    }
    if telemetry.intake {
        sinks.push(intake_sink());
        if let Some(metadata) = root["node"]["metadata"].as_object_mut() {
            // Translation adds the stats Weft reads (per-caller denials) only to proxies
            // that stream them.
            metadata.insert("weft.stats_intake".into(), true.into());
            metadata.insert(
                FLUSH_INTERVAL_METADATA_KEY.into(),
                interval
                    .unwrap_or(INTAKE_FLUSH_INTERVAL)
                    .as_secs_f64()
                    .into(),
            );
        }
    }
    if !sinks.is_empty() {
        root["stats_sinks"] = Value::Array(sinks);
    }
    let mut clusters = Vec::new();
    if let Some(tracer) = &telemetry.tracer {
        let (provider, cluster) = render_tracer(config, tracer);
        root["tracing"] = json!({ "http": provider });
        clusters.extend(cluster);
    }
    for (kind, items) in &telemetry.static_resources {
        if kind == "clusters" {
            clusters.extend(items.iter().cloned());
        } else if let Some(list) = static_list(root, kind) {
            list.extend(items.iter().cloned());
        }
    }
    if let Some(list) = static_list(root, "clusters") {
        list.extend(clusters);
    }
}

fn static_list<'a>(root: &'a mut Value, kind: &str) -> Option<&'a mut Vec<Value>> {
    let resources = root.get_mut("static_resources")?.as_object_mut()?;
    resources
        .entry(kind.to_string())
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
}

/// Envoy's DogStatsD sink: <https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto#config-metrics-v3-dogstatsdsink>.
fn dog_statsd_sink(target: &StatsdTarget) -> Value {
    let address = match target {
        StatsdTarget::Udp { address, port } => json!({
            "socket_address": { "protocol": "UDP", "address": address.to_string(), "port_value": port }
        }),
        StatsdTarget::Unix(path) => json!({ "pipe": { "path": path.to_string_lossy() } }),
    };
    json!({
        "name": "envoy.stat_sinks.dog_statsd",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink",
            "address": address,
        }
    })
}

/// Envoy's `metrics_service` sink to Weft's server over the xDS cluster (same connection
/// security, same identity): counters as the interval's increments and histograms as the
/// interval's buckets, which the server adds up over its window
/// (<https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/metrics_service.proto>).
fn intake_sink() -> Value {
    json!({
        "name": "envoy.stat_sinks.metrics_service",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig",
            "transport_api_version": "V3",
            "grpc_service": { "envoy_grpc": { "cluster_name": crate::bootstrap::XDS_CLUSTER } },
            "report_counters_as_deltas": true,
            "histogram_emit_mode": "HISTOGRAM",
        }
    })
}

/// The `tracing.http` provider and the static cluster to its collector, if it needs one.
fn render_tracer(config: &AgentConfig, tracer: &Tracer) -> (Value, Option<Value>) {
    let (mesh, name) = (config.mesh(), config.resource_name());
    match tracer {
        Tracer::XRay {
            daemon,
            sampling,
            segment_name,
        } => {
            let mut typed = json!({
                "@type": "type.googleapis.com/envoy.config.trace.v3.XRayConfig",
                "daemon_endpoint": { "protocol": "UDP", "address": daemon.0.to_string(), "port_value": daemon.1 },
                // App Mesh's default segment name, "meshName/resourceName".
                "segment_name": segment_name.clone().unwrap_or_else(|| format!("{mesh}/{name}")),
                // What App Mesh's proxies put in their segments (X-Ray shows them as App Mesh
                // proxies, with the mesh and the node).
                "segment_fields": {
                    "origin": "AWS::AppMesh::Proxy",
                    "aws": { "app_mesh": { "mesh_name": mesh, "virtual_node_name": name } }
                },
            });
            match sampling {
                Some(XRaySampling::Manifest(path)) => {
                    typed["sampling_rule_manifest"] = json!({ "filename": path.to_string_lossy() });
                }
                Some(XRaySampling::Rate(rate)) => {
                    // The manifest App Mesh's image writes for XRAY_SAMPLING_RATE, inline here
                    // rather than in a file (<https://docs.aws.amazon.com/xray/latest/devguide/xray-sdk-go-configuration.html#xray-sdk-go-configuration-sampling>).
                    let manifest = json!({ "version": 2, "default": { "fixed_target": 1, "rate": rate }, "rules": [] });
                    typed["sampling_rule_manifest"] =
                        json!({ "inline_string": manifest.to_string() });
                }
                None => {}
            }
            (
                json!({ "name": "envoy.tracers.xray", "typed_config": typed }),
                None,
            )
        }
        Tracer::Datadog {
            collector,
            service_name,
        } => (
            json!({
                "name": "envoy.tracers.datadog",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.DatadogConfig",
                    "collector_cluster": DATADOG_CLUSTER,
                    "service_name": service_name.clone().unwrap_or_else(|| format!("envoy-{mesh}/{name}")),
                }
            }),
            Some(collector_cluster(DATADOG_CLUSTER, collector, false)),
        ),
        Tracer::Jaeger {
            collector,
            encoding,
        } => (
            json!({
                "name": "envoy.tracers.zipkin",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                    "collector_cluster": JAEGER_CLUSTER,
                    "collector_endpoint": "/api/v2/spans",
                    "collector_endpoint_version": match encoding {
                        ZipkinEncoding::Proto => "HTTP_PROTO",
                        ZipkinEncoding::Json => "HTTP_JSON",
                    },
                    // Each hop its own span, the callee's a child of the caller's, as App
                    // Mesh's image sets it.
                    "shared_span_context": false,
                }
            }),
            Some(collector_cluster(JAEGER_CLUSTER, collector, false)),
        ),
        Tracer::OpenTelemetry {
            collector,
            service_name,
        } => (
            json!({
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": { "envoy_grpc": { "cluster_name": OTEL_CLUSTER } },
                    "service_name": service_name.clone().unwrap_or_else(|| config.node_cluster.clone()),
                }
            }),
            Some(collector_cluster(OTEL_CLUSTER, collector, true)),
        ),
        Tracer::File(provider) => (provider.clone(), None),
    }
}

/// A static cluster to a collector: `STATIC` for an IP, `STRICT_DNS` for a name (App Mesh's
/// image always used `STRICT_DNS`); HTTP/2 for gRPC.
fn collector_cluster(name: &str, endpoint: &XdsEndpoint, grpc: bool) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": if endpoint.is_ip() { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{
                "lb_endpoints": [{
                    "endpoint": { "address": { "socket_address": { "address": endpoint.host, "port_value": endpoint.port } } }
                }]
            }]
        },
    });
    if grpc {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        });
    }
    cluster
}
