//! The Envoy bootstrap, as JSON (Envoy reads JSON bootstraps as it reads YAML ones).
//!
//! What it holds and why (see `docs/proxy-contract.md`):
//! - `node`: id, cluster and `weft.*` metadata, which translation reads;
//! - `admin` on 127.0.0.1 (App Mesh's Envoy binds admin to IPv4 loopback unless told otherwise);
//! - one static cluster, `xds_cluster`, to Weft's ADS server over HTTP/2 (gRPC needs it);
//! - `dynamic_resources`: ADS (SotW or delta) for CDS and LDS, everything else follows over the
//!   same stream because translation points RDS/EDS at `{ads: {}}`;
//! - optional App Mesh stats tags, a runtime with an admin layer, and a cap on downstream
//!   connections;
//! - a second static cluster, [`SDS_CLUSTER`] (`weft_sds`), to the agent's SDS server on its
//!   Unix socket ([`crate::sds`]): the translation's TLS contexts name it for the secrets
//!   `weft-identity` and `weft-trust-bundle` (with a join token) and for certificates in files.
//!
//! Envoy docs: <https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/bootstrap/v3/bootstrap.proto>.

use serde_json::{json, Map, Value};

use crate::config::{AgentConfig, ListenerMode};

/// The name of the bootstrap's static cluster to Weft's ADS server.
pub const XDS_CLUSTER: &str = "xds_cluster";

/// The bootstrap's static cluster to the agent's SDS server (what `weft_translate`'s TLS
/// contexts name).
pub const SDS_CLUSTER: &str = "weft_sds";

/// The SDS socket named in the bootstrap when the agent will pick it at start (no
/// `APPMESH_SDS_SOCKET_PATH`, no run folder): only `--print-bootstrap` shows it.
pub const SDS_SOCKET_PLACEHOLDER: &str = "<temporary run folder>/sds.sock";

/// The cap on Envoy's active downstream connections (all listeners together).
pub const MAX_DOWNSTREAM_CONNECTIONS: u64 = 50_000;

/// The Envoy bootstrap for this agent.
pub fn bootstrap(config: &AgentConfig) -> Value {
    let mut root = json!({
        "node": node(config),
        "admin": admin(config),
        "static_resources": { "clusters": clusters(config) },
        "dynamic_resources": dynamic_resources(config),
        "layered_runtime": layered_runtime(),
        "overload_manager": overload_manager(),
    });
    if config.stats_tags {
        root["stats_config"] = stats_config(config);
    }
    // Stats sinks, flush interval, a stats config file (replacing the tags above) and tracing.
    crate::telemetry::apply(config, &mut root);
    root
}

/// [`bootstrap`] as pretty-printed JSON text (what `weft agent --print-bootstrap` prints and what
/// the supervisor writes for Envoy's `-c`).
pub fn bootstrap_json(config: &AgentConfig) -> String {
    // Serialising a `Value` cannot fail (all keys are strings); fall back to the compact form
    // rather than unwrap.
    let value = bootstrap(config);
    serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
}

fn node(config: &AgentConfig) -> Value {
    let mut metadata = Map::new();
    metadata.insert(
        "weft.listener_mode".into(),
        config.listener_mode.as_str().into(),
    );
    metadata.insert("weft.ingress_port".into(), config.ingress_port.into());
    metadata.insert("weft.egress_port".into(), config.egress_port.into());
    metadata.insert(
        "weft.listen_address".into(),
        config.listen_address.to_string().into(),
    );
    if let Some(v6) = config.listen_address_v6 {
        metadata.insert("weft.listen_address_v6".into(), v6.to_string().into());
    }
    metadata.insert(
        "weft.app_address".into(),
        config.app_address.to_string().into(),
    );
    if config.listener_mode == ListenerMode::Explicit || !config.app_ports.is_empty() {
        // A protobuf Struct: keys are strings; numbers travel as doubles, which hold any port.
        let ports: Map<String, Value> = config
            .app_ports
            .iter()
            .map(|(listener, app)| (listener.to_string(), Value::from(*app)))
            .collect();
        metadata.insert("weft.app_ports".into(), Value::Object(ports));
    }
    if config.identity.is_some() {
        // The agent serves the workload identity over SDS: translation may name it (mesh-wide
        // mutual TLS, `sds` and `acm` certificates); without this key it never does.
        metadata.insert("weft.identity".into(), true.into());
    }
    // The agent serves `file` TLS sources' certificates over SDS (`file_secrets`): translation
    // names them as secrets rather than files, which Envoy would refuse the config over if they
    // were missing.
    if config.serve_sds {
        metadata.insert("weft.file_secrets".into(), true.into());
    }
    // Envoy traces only in connection managers with `tracing` set, and those come from Weft's
    // server: the bootstrap's provider needs translation to turn tracing on there.
    if config.telemetry.traces() {
        metadata.insert(crate::telemetry::TRACING_METADATA_KEY.into(), true.into());
    }
    json!({
        "id": config.node_id,
        "cluster": config.node_cluster,
        "metadata": metadata,
    })
}

fn admin(config: &AgentConfig) -> Value {
    json!({
        "address": socket_address("127.0.0.1", config.admin_port),
        // `admin.access_log_path` is deprecated; the typed file logger replaces it.
        "access_log": [{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": config.admin_access_log.to_string_lossy(),
            }
        }],
    })
}

fn clusters(config: &AgentConfig) -> Vec<Value> {
    // The agent serves SDS: the workload identity with a join token, and the certificates
    // `file` TLS sources name (see `file_secrets`).
    if !config.serve_sds {
        return vec![xds_cluster(config)];
    }
    let socket = config
        .sds_socket
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| SDS_SOCKET_PLACEHOLDER.to_string());
    vec![xds_cluster(config), sds_cluster(&socket)]
}

/// The agent's SDS server: gRPC (so HTTP/2) over its Unix socket.
fn sds_cluster(socket: &str) -> Value {
    json!({
        "name": SDS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": SDS_CLUSTER,
            "endpoints": [{
                "lb_endpoints": [{
                    "endpoint": { "address": { "pipe": { "path": socket } } }
                }]
            }]
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        },
    })
}

fn xds_cluster(config: &AgentConfig) -> Value {
    let endpoints: Vec<&crate::config::XdsEndpoint> = config.xds_endpoints().collect();
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| json!({ "endpoint": { "address": socket_address(&e.host, e.port) } }))
        .collect();
    let mut cluster = json!({
        "name": XDS_CLUSTER,
        // IPs need no resolution. A name (replicas behind DNS, or a load balancer) is
        // STRICT_DNS: every address it resolves to is a host, re-resolved as it changes. Several
        // replicas are several hosts: when the ADS stream to one fails, Envoy retries it
        // (with backoff) on the next host of the round robin and keeps the config it has
        // meanwhile (https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/service_discovery).
        "type": if endpoints.iter().all(|e| e.is_ip()) { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": XDS_CLUSTER,
            "endpoints": [{ "lb_endpoints": lb_endpoints }]
        },
        // gRPC needs HTTP/2 to the control plane (envoy-notes: Envoy insists). HTTP/2 PINGs find
        // a dead control plane (or a half-open connection through a NAT) so Envoy reconnects.
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": { "interval": "30s", "timeout": "5s" }
                    }
                }
            }
        },
        "upstream_connection_options": {
            "tcp_keepalive": { "keepalive_time": 300 }
        },
    });
    if config.xds_tls && config.identity.is_some() {
        cluster["transport_socket"] = xds_tls(&endpoints);
    }
    cluster
}

/// An SDS secret Envoy gets from the agent (the `weft_sds` cluster).
/// The same config source, field for field, as translation's SDS secrets: Envoy shares one
/// subscription per secret name only between identical sources, so the xDS cluster and the
/// mesh's listeners then hold one copy of `weft-identity`, not two.
fn sds_secret(name: &str) -> Value {
    json!({
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": SDS_CLUSTER } }],
                "set_node_on_first_message_only": true
            }
        }
    })
}

/// Mutual TLS to `weft server --xds-tls`: the proxy's certificate, Weft's trust bundle, and
/// the server's certificate must name the xDS host (an IP SAN for an IP, a DNS SAN for a name;
/// the server's certificate holds its --xds-listen IP and each --xds-server-name).
/// With several endpoints, a server certificate naming any one of them is accepted; the SNI is
/// the first name (replicas behind one name share it).
fn xds_tls(endpoints: &[&crate::config::XdsEndpoint]) -> Value {
    let sans: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            let san_type = if e.is_ip() { "IP_ADDRESS" } else { "DNS" };
            json!({ "san_type": san_type, "matcher": { "exact": e.host } })
        })
        .collect();
    let sni = endpoints
        .iter()
        .find(|e| !e.is_ip())
        .map(|e| e.host.clone());
    let mut context = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_certificate_sds_secret_configs": [sds_secret(crate::identity::IDENTITY_SECRET)],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_typed_subject_alt_names": sans
                },
                "validation_context_sds_secret_config": sds_secret(crate::identity::TRUST_BUNDLE_SECRET),
            }
        }
    });
    if let Some(sni) = sni {
        context["sni"] = sni.into();
    }
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": context })
}

fn dynamic_resources(config: &AgentConfig) -> Value {
    let source = json!({
        "ads": {},
        "resource_api_version": "V3",
        // App Mesh's default is 0: wait for the control plane as long as it takes (Envoy's own
        // default would give up after 15 s and start with no listeners).
        "initial_fetch_timeout": duration(config.initial_fetch_timeout),
    });
    json!({
        "ads_config": {
            "api_type": config.xds_protocol.api_type(),
            "transport_api_version": "V3",
            "grpc_services": [{ "envoy_grpc": { "cluster_name": XDS_CLUSTER } }],
            // Envoy's node (with its list of ~300 extensions) only opens the stream; without
            // this every ACK carries it again and the control plane decodes it again (as Istio
            // does: api/envoy/config/core/v3/config_source.proto).
            "set_node_on_first_message_only": true,
        },
        "cds_config": source,
        "lds_config": source,
    })
}

/// App Mesh's stats tags (`envoy-metrics.md`): every metric gets the mesh and the node (or
/// gateway) as fixed-value tags.
fn stats_config(config: &AgentConfig) -> Value {
    let kind_tag = if config.is_gateway() {
        "appmesh.virtual_gateway"
    } else {
        "appmesh.virtual_node"
    };
    json!({
        "stats_tags": [
            { "tag_name": "appmesh.mesh", "fixed_value": config.mesh() },
            { "tag_name": kind_tag, "fixed_value": config.resource_name() },
        ]
    })
}

/// A static layer (empty, the place for future defaults) and an admin layer, so operators can
/// change runtime keys through `/runtime_modify` as they can on App Mesh's Envoy.
fn layered_runtime() -> Value {
    json!({
        "layers": [
            // Envoy refuses route regexes whose RE2 program is larger than 100 by
            // default; App Mesh users write bigger ones. Must match
            // `weft_translate::RE2_MAX_PROGRAM_SIZE`, which the translation assumes.
            // <https://www.envoyproxy.io/docs/envoy/latest/api-v3/type/matcher/v3/regex.proto>
            { "name": "static_layer", "static_layer": { "re2.max_program_size.error_level": 100000 } },
            { "name": "admin_layer", "admin_layer": {} },
        ]
    })
}

/// Envoy warns at start-up when downstream connections are unbounded: past the file-descriptor
/// limit it could not even accept admin or xDS connections. The bound is far above what one
/// sidecar carries; Envoy refuses connections beyond it instead of failing at random.
/// <https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/runtime#config-listeners-runtime>
fn overload_manager() -> Value {
    json!({
        "resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
            }
        }]
    })
}

fn socket_address(host: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": host, "port_value": port } })
}

/// A protobuf JSON Duration (`"1.5s"`).
pub(crate) fn duration(d: std::time::Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.9}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> AgentConfig {
        AgentConfig::for_resource(
            "arn:aws:appmesh:us-west-2:111122223333:mesh/apps/virtualNode/red",
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_node_carries_the_arn_cluster_and_weft_metadata() {
        let b = bootstrap(&config());
        assert_eq!(
            b["node"]["id"],
            "arn:aws:appmesh:us-west-2:111122223333:mesh/apps/virtualNode/red"
        );
        assert_eq!(b["node"]["cluster"], "mesh/apps/virtualNode/red");
        let md = &b["node"]["metadata"];
        assert_eq!(md["weft.listener_mode"], "transparent");
        assert_eq!(md["weft.ingress_port"], 15000);
        assert_eq!(md["weft.egress_port"], 15001);
        assert_eq!(md["weft.listen_address"], "0.0.0.0");
        assert!(md.get("weft.app_ports").is_none());
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 9901);
    }

    #[test]
    fn explicit_mode_writes_app_ports_as_a_struct() {
        let mut c = config();
        c.listener_mode = ListenerMode::Explicit;
        c.listen_address = [127, 0, 0, 1].into();
        c.app_ports = [(8080, 18080)].into();
        let md = &bootstrap(&c)["node"]["metadata"];
        assert_eq!(md["weft.listener_mode"], "explicit");
        assert_eq!(md["weft.listen_address"], "127.0.0.1");
        assert_eq!(md["weft.app_ports"], json!({"8080": 18080}));
    }

    #[test]
    fn ads_is_delta_by_default_and_sotw_on_request() {
        let mut c = config();
        assert_eq!(
            bootstrap(&c)["dynamic_resources"]["ads_config"]["api_type"],
            "DELTA_GRPC"
        );
        c.xds_protocol = crate::XdsProtocol::Sotw;
        let b = bootstrap(&c);
        assert_eq!(b["dynamic_resources"]["ads_config"]["api_type"], "GRPC");
        // The node is sent once per stream, not with every ACK.
        assert_eq!(
            b["dynamic_resources"]["ads_config"]["set_node_on_first_message_only"],
            true
        );
        assert_eq!(b["dynamic_resources"]["cds_config"]["ads"], json!({}));
        assert_eq!(
            b["dynamic_resources"]["lds_config"]["resource_api_version"],
            "V3"
        );
        assert_eq!(
            b["dynamic_resources"]["lds_config"]["initial_fetch_timeout"],
            "0s"
        );
    }

    #[test]
    fn stats_tags_appear_only_when_enabled_and_name_gateways_as_gateways() {
        let mut c = config();
        assert!(bootstrap(&c).get("stats_config").is_none());
        c.stats_tags = true;
        let tags = &bootstrap(&c)["stats_config"]["stats_tags"];
        assert_eq!(
            tags[0],
            json!({"tag_name": "appmesh.mesh", "fixed_value": "apps"})
        );
        assert_eq!(
            tags[1],
            json!({"tag_name": "appmesh.virtual_node", "fixed_value": "red"})
        );
        let mut g = AgentConfig::for_resource("mesh/apps/virtualGateway/edge")
            .unwrap_or_else(|e| panic!("{e}"));
        g.stats_tags = true;
        assert_eq!(
            bootstrap(&g)["stats_config"]["stats_tags"][1]["tag_name"],
            "appmesh.virtual_gateway"
        );
    }

    #[test]
    fn an_xds_name_is_resolved_by_dns_and_an_ip_is_static() {
        let mut c = config();
        assert_eq!(
            bootstrap(&c)["static_resources"]["clusters"][0]["type"],
            "STATIC"
        );
        c.xds_endpoint = "weft.internal:15010"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            bootstrap(&c)["static_resources"]["clusters"][0]["type"],
            "STRICT_DNS"
        );
    }

    #[test]
    fn every_replica_in_the_xds_endpoint_list_is_a_host_of_the_xds_cluster() {
        let mut c = config();
        let (first, more) =
            crate::config::parse_xds_endpoints("127.0.0.1:15010, 127.0.0.2:15011,[::1]:15012")
                .unwrap_or_else(|e| panic!("{e}"));
        c.xds_endpoint = first;
        c.more_xds_endpoints = more;
        let b = bootstrap(&c);
        let cluster = &b["static_resources"]["clusters"][0];
        assert_eq!(cluster["type"], "STATIC");
        let hosts: Vec<(String, u64)> = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        let s = &e["endpoint"]["address"]["socket_address"];
                        (
                            s["address"].as_str().unwrap_or_default().to_string(),
                            s["port_value"].as_u64().unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            hosts,
            [
                ("127.0.0.1".to_string(), 15010),
                ("127.0.0.2".to_string(), 15011),
                ("::1".to_string(), 15012)
            ]
        );
        // A name among them: resolved, every address a host.
        c.more_xds_endpoints = vec!["weft-replicas.internal:15010"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))];
        let b = bootstrap(&c);
        assert_eq!(b["static_resources"]["clusters"][0]["type"], "STRICT_DNS");
    }

    #[test]
    fn over_mutual_tls_a_server_certificate_naming_any_replica_is_accepted() {
        let endpoints: Vec<crate::config::XdsEndpoint> =
            ["10.0.0.1:15010", "weft-b.internal:15010"]
                .iter()
                .map(|e| e.parse().unwrap_or_else(|e| panic!("{e}")))
                .collect();
        let refs: Vec<&crate::config::XdsEndpoint> = endpoints.iter().collect();
        let tls = xds_tls(&refs);
        let context = &tls["typed_config"];
        let sans = &context["common_tls_context"]["combined_validation_context"]
            ["default_validation_context"]["match_typed_subject_alt_names"];
        assert_eq!(sans[0]["san_type"], "IP_ADDRESS");
        assert_eq!(sans[0]["matcher"]["exact"], "10.0.0.1");
        assert_eq!(sans[1]["san_type"], "DNS");
        assert_eq!(sans[1]["matcher"]["exact"], "weft-b.internal");
        assert_eq!(context["sni"], "weft-b.internal");
    }

    #[test]
    fn the_sds_cluster_is_on_the_agent_s_socket_with_or_without_identity() {
        let mut c = config();
        c.sds_socket = Some("/run/weft/sds.sock".into());
        assert_eq!(
            bootstrap(&c)["static_resources"]["clusters"][1]["name"],
            "weft_sds"
        );
        assert_eq!(bootstrap(&c)["node"]["metadata"]["weft.file_secrets"], true);
        c.identity = Some(crate::identity::IdentityConfig {
            token: crate::identity::TokenSource::File("/run/token".into()),
            ca_server: crate::identity::CaServer::beside(&c.xds_endpoint),
        });
        let b = bootstrap(&c);
        let sds = &b["static_resources"]["clusters"][1];
        assert_eq!(sds["name"], "weft_sds");
        assert_eq!(
            sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["pipe"]["path"],
            "/run/weft/sds.sock"
        );
        assert!(sds["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
            ["http2_protocol_options"]
            .is_object());
        // Neither the token nor its file's path is in the bootstrap Envoy reads.
        assert!(!bootstrap_json(&c).contains("/run/token"));
    }

    #[test]
    fn durations_are_protobuf_json() {
        assert_eq!(duration(Duration::from_secs(15)), "15s");
        assert_eq!(duration(Duration::from_millis(1500)), "1.500000000s");
    }
}
