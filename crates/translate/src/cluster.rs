//! Clusters: the local application (ingress) and each target virtual node listener (egress:
//! DNS, or EDS for Cloud Map).

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds as XdsThresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType as XdsClusterDiscoveryType, CommonLbConfig as XdsCommonLbConfig,
    CustomClusterType as XdsCustomClusterType, DiscoveryType as XdsDiscoveryType,
    DnsLookupFamily as XdsDnsLookupFamily, EdsClusterConfig as XdsEdsClusterConfig,
    LbPolicy as XdsLbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier as XdsConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource as XdsAggregatedConfigSource, ApiVersion as XdsApiVersion,
    ConfigSource as XdsConfigSource,
};
use envoy_types::pb::envoy::config::core::v3::health_check::{
    GrpcHealthCheck as XdsGrpcHealthCheck, HealthChecker as XdsHealthChecker,
    HttpHealthCheck as XdsHttpHealthCheck, TcpHealthCheck as XdsTcpHealthCheck,
};
use envoy_types::pb::envoy::config::core::v3::HealthCheck as XdsHealthCheck;
use envoy_types::pb::envoy::config::endpoint::v3::endpoint::HealthCheckConfig as XdsEndpointHealthCheckConfig;
use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::cluster_config::ClusterImplementationSpecifier as XdsDfpClusterImplementation;
use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::ClusterConfig as XdsDfpClusterConfig;
use envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig as XdsDnsCacheConfig;
use envoy_types::pb::envoy::r#type::v3::{CodecClientType as XdsCodecClientType, Percent as XdsPercent};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers as XdsCircuitBreakers, Cluster as XdsCluster,
    OutlierDetection as XdsOutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as XdsAddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier as XdsPortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address as XdsAddress, Http2ProtocolOptions as XdsHttp2ProtocolOptions,
    RoutingPriority as XdsRoutingPriority, SocketAddress as XdsSocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier as XdsHostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment as XdsClusterLoadAssignment, Endpoint as XdsEndpoint,
    LbEndpoint as XdsLbEndpoint, LocalityLbEndpoints as XdsLocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig as XdsProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig as XdsExplicitHttpConfig,
    UseDownstreamHttpConfig as XdsUseDownstreamHttpConfig,
    UpstreamProtocolOptions as XdsUpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions as XdsHttpProtocolOptions;
use envoy_types::pb::google::protobuf::{Duration as XdsDuration, UInt32Value};
use envoy_types::util::pack_any;
use weft_model::shapes::{
    DnsResponseType, DnsServiceDiscovery, HealthCheckPolicy, IpPreference, Listener,
    OutlierDetection, PortProtocol, VirtualNodeConnectionPool,
};

use crate::defaults::{self, CIRCUIT_BREAKER_MAX, CONNECT_TIMEOUT_SECS};
use crate::{names, ProxyOptions};

/// Key of `typed_extension_protocol_options` for upstream HTTP protocol options.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A socket address.
pub(crate) fn socket_address(address: &str, port: u16) -> XdsAddress {
    XdsAddress {
        address: Some(XdsAddressKind::SocketAddress(XdsSocketAddress {
            address: address.to_string(),
            port_specifier: Some(XdsPortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn u32_value(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// Clamps an App Mesh integer (the API bounds it, but a store may hold anything) into Envoy's
/// `uint32`.
fn clamp_u32(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

/// App Mesh's circuit-breaker defaults: all four thresholds at 2147483647 so that Envoy's own
/// defaults (1024) never trip (envoy-defaults.md, "Default circuit breaker").
fn default_thresholds() -> XdsThresholds {
    XdsThresholds {
        priority: XdsRoutingPriority::Default as i32,
        max_connections: u32_value(CIRCUIT_BREAKER_MAX),
        max_pending_requests: u32_value(CIRCUIT_BREAKER_MAX),
        max_requests: u32_value(CIRCUIT_BREAKER_MAX),
        max_retries: u32_value(CIRCUIT_BREAKER_MAX),
        ..Default::default()
    }
}

/// HTTP/2 (cleartext) to the upstream for `http2` and `grpc` listeners; `http` and `tcp` keep
/// Envoy's default (HTTP/1.1, raw TCP).
///
/// `grpc_health_check`: Envoy sends gRPC health checks only through a cluster that may speak
/// HTTP/2. An `http` listener then uses the downstream's protocol (HTTP/1.1 requests stay
/// HTTP/1.1, the health checks use HTTP/2); a `tcp` listener's cluster carries no HTTP, so the
/// option only serves the health checks.
fn protocol_options(cluster: &mut XdsCluster, protocol: PortProtocol, grpc_health_check: bool) {
    let config = match protocol {
        PortProtocol::Http2 | PortProtocol::Grpc => {
            XdsUpstreamProtocolOptions::ExplicitHttpConfig(XdsExplicitHttpConfig {
                protocol_config: Some(XdsProtocolConfig::Http2ProtocolOptions(
                    XdsHttp2ProtocolOptions::default(),
                )),
            })
        }
        PortProtocol::Http | PortProtocol::Tcp if grpc_health_check => {
            XdsUpstreamProtocolOptions::UseDownstreamProtocolConfig(XdsUseDownstreamHttpConfig {
                http_protocol_options: Some(Default::default()),
                http2_protocol_options: Some(XdsHttp2ProtocolOptions::default()),
                ..Default::default()
            })
        }
        PortProtocol::Http | PortProtocol::Tcp => return,
    };
    let options = XdsHttpProtocolOptions {
        upstream_protocol_options: Some(config),
        ..Default::default()
    };
    // A single entry: the map's (hash) order cannot make encodings differ.
    cluster
        .typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pack_any(options));
}

fn load_assignment(cluster_name: &str, address: &str, port: u16) -> XdsClusterLoadAssignment {
    XdsClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints: vec![XdsLocalityLbEndpoints {
            lb_endpoints: vec![XdsLbEndpoint {
                host_identifier: Some(XdsHostIdentifier::Endpoint(XdsEndpoint {
                    address: Some(socket_address(address, port)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The cluster for the local application behind one node listener:
/// `cds_ingress_<mesh>_<node>_<protocol>_<port>`, a STATIC endpoint at
/// `app_address:app_port`.
///
/// The listener's `connectionPool` is App Mesh's destination-side connection pool: it becomes
/// this cluster's circuit-breaker thresholds (virtual_nodes.md, "Enable connection pool");
/// without one, App Mesh's "infinite" defaults apply.
pub(crate) fn ingress(
    mesh: &str,
    node: &str,
    listener: &Listener,
    port: u16,
    options: &ProxyOptions,
) -> XdsCluster {
    let protocol = listener.port_mapping.protocol;
    let name = names::ingress_cluster(mesh, node, protocol, port);
    let mut thresholds = default_thresholds();
    match &listener.connection_pool {
        Some(VirtualNodeConnectionPool::Http(pool)) => {
            thresholds.max_connections = u32_value(clamp_u32(pool.max_connections.into()));
            if let Some(pending) = pool.max_pending_requests {
                thresholds.max_pending_requests = u32_value(clamp_u32(pending.into()));
            }
        }
        Some(VirtualNodeConnectionPool::Http2(pool)) => {
            thresholds.max_requests = u32_value(clamp_u32(pool.max_requests.into()));
        }
        Some(VirtualNodeConnectionPool::Grpc(pool)) => {
            thresholds.max_requests = u32_value(clamp_u32(pool.max_requests.into()));
        }
        Some(VirtualNodeConnectionPool::Tcp(pool)) => {
            thresholds.max_connections = u32_value(clamp_u32(pool.max_connections.into()));
        }
        None => {}
    }
    let app_port = options.app_port(port);
    let mut assignment = load_assignment(&name, &options.app_address, app_port);
    let health_check = listener.health_check.as_ref().map(health_check);
    if let Some(policy) = &listener.health_check {
        // `healthCheck.port` names a port of the node; in explicit mode the app serves node
        // port P on `app_ports[P]`, so the check goes there too.
        let check_port = policy
            .port
            .and_then(crate::route::port)
            .map(|p| options.app_port(p))
            .filter(|p| *p != app_port);
        if let Some(check_port) = check_port {
            for locality in &mut assignment.endpoints {
                for lb_endpoint in &mut locality.lb_endpoints {
                    if let Some(XdsHostIdentifier::Endpoint(endpoint)) =
                        &mut lb_endpoint.host_identifier
                    {
                        endpoint.health_check_config = Some(XdsEndpointHealthCheckConfig {
                            port_value: u32::from(check_port),
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    let mut cluster = XdsCluster {
        load_assignment: Some(assignment),
        name,
        cluster_discovery_type: Some(XdsClusterDiscoveryType::Type(
            XdsDiscoveryType::Static as i32,
        )),
        connect_timeout: Some(defaults::seconds(CONNECT_TIMEOUT_SECS)),
        lb_policy: XdsLbPolicy::RoundRobin as i32,
        circuit_breakers: Some(XdsCircuitBreakers {
            thresholds: vec![thresholds],
            ..Default::default()
        }),
        // An app failing its health check must stop receiving traffic (virtual_nodes.md,
        // "Health check policy"). Envoy's default panic threshold (50%) would keep sending to
        // the single local endpoint once it is unhealthy; 0 turns panic routing off, so the
        // request is answered 503 by Envoy instead, which the client's default retry policy
        // (503) takes elsewhere.
        common_lb_config: health_check.as_ref().map(|_| XdsCommonLbConfig {
            healthy_panic_threshold: Some(XdsPercent { value: 0.0 }),
            ..Default::default()
        }),
        health_checks: health_check.into_iter().collect(),
        ..Default::default()
    };
    let grpc_health_check = listener
        .health_check
        .as_ref()
        .is_some_and(|hc| hc.protocol == PortProtocol::Grpc);
    protocol_options(&mut cluster, protocol, grpc_health_check);
    cluster
}

/// An App Mesh health check policy as an Envoy active health check (virtual_nodes.md, "Health
/// check policy"): `http` and `http2` GET `path` (HTTP/1.1 or HTTP/2 prior knowledge) and
/// expect 200 (Envoy's default expected status); `grpc` uses the gRPC health checking protocol
/// (`grpc.health.v1.Health/Check`, as App Mesh requires of the service); `tcp` connects only.
/// Intervals and timeouts are in milliseconds; thresholds are counts (at least 1 for Envoy).
fn health_check(policy: &HealthCheckPolicy) -> XdsHealthCheck {
    let millis = |ms: i64| {
        let ms = ms.max(1);
        XdsDuration {
            seconds: ms / 1000,
            // < 1e9, fits in i32.
            nanos: ((ms % 1000) * 1_000_000) as i32,
        }
    };
    let path = policy
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_string());
    let checker = match policy.protocol {
        PortProtocol::Http => XdsHealthChecker::HttpHealthCheck(XdsHttpHealthCheck {
            path,
            codec_client_type: XdsCodecClientType::Http1 as i32,
            ..Default::default()
        }),
        PortProtocol::Http2 => XdsHealthChecker::HttpHealthCheck(XdsHttpHealthCheck {
            path,
            codec_client_type: XdsCodecClientType::Http2 as i32,
            ..Default::default()
        }),
        PortProtocol::Grpc => XdsHealthChecker::GrpcHealthCheck(XdsGrpcHealthCheck::default()),
        PortProtocol::Tcp => XdsHealthChecker::TcpHealthCheck(XdsTcpHealthCheck::default()),
    };
    XdsHealthCheck {
        timeout: Some(millis(policy.timeout_millis)),
        interval: Some(millis(policy.interval_millis)),
        // Envoy checks a cluster that has not had traffic yet only every 60 s by default
        // (`no_traffic_interval`), so a listener that just started would ignore the interval
        // the user configured for a minute; App Mesh's interval applies from the start.
        no_traffic_interval: Some(millis(policy.interval_millis)),
        healthy_threshold: u32_value(clamp_u32(policy.healthy_threshold.into()).max(1)),
        unhealthy_threshold: u32_value(clamp_u32(policy.unhealthy_threshold.into()).max(1)),
        health_checker: Some(checker),
        ..Default::default()
    }
}

/// Maps App Mesh's IP preference onto Envoy's DNS lookup family (virtual_nodes.md, "IP version
/// preference"). Unset means App Mesh's default, "prefers IPv6 and falls back to IPv4", which
/// is Envoy's `AUTO`.
pub(crate) fn dns_lookup_family(preference: Option<IpPreference>) -> XdsDnsLookupFamily {
    match preference {
        None | Some(IpPreference::Ipv6Preferred) => XdsDnsLookupFamily::Auto,
        Some(IpPreference::Ipv4Preferred) => XdsDnsLookupFamily::V4Preferred,
        Some(IpPreference::Ipv4Only) => XdsDnsLookupFamily::V4Only,
        Some(IpPreference::Ipv6Only) => XdsDnsLookupFamily::V6Only,
    }
}

/// The client-side cluster for one listener of a target virtual node discovered by DNS:
/// `cds_egress_<mesh>_<node>_<protocol>_<port>`.
///
/// `responseType` `LOADBALANCER` (the default) means the name resolves to a load balancer:
/// Envoy's LOGICAL_DNS uses one address at a time. `ENDPOINTS` means the name resolves to every
/// instance: STRICT_DNS balances across all of them (virtual_nodes.md, "Service discovery").
/// The node listener's `outlierDetection` applies here, at the client (virtual_nodes.md).
pub(crate) fn egress_dns(
    mesh: &str,
    node: &str,
    listener: &Listener,
    port: u16,
    dns: &DnsServiceDiscovery,
    mesh_ip_preference: Option<IpPreference>,
) -> XdsCluster {
    let protocol = listener.port_mapping.protocol;
    let name = names::egress_cluster(mesh, node, protocol, port);
    let discovery = match dns.response_type {
        None | Some(DnsResponseType::Loadbalancer) => XdsDiscoveryType::LogicalDns,
        Some(DnsResponseType::Endpoints) => XdsDiscoveryType::StrictDns,
    };
    // The node's preference overrides the mesh's (DnsServiceDiscovery.ipPreference).
    let family = dns_lookup_family(dns.ip_preference.or(mesh_ip_preference));
    let mut cluster = XdsCluster {
        load_assignment: Some(load_assignment(&name, &dns.hostname, port)),
        name,
        cluster_discovery_type: Some(XdsClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: Some(defaults::seconds(CONNECT_TIMEOUT_SECS)),
        lb_policy: XdsLbPolicy::RoundRobin as i32,
        dns_lookup_family: family as i32,
        circuit_breakers: Some(XdsCircuitBreakers {
            thresholds: vec![default_thresholds()],
            ..Default::default()
        }),
        outlier_detection: listener.outlier_detection.as_ref().map(outlier_detection),
        ..Default::default()
    };
    protocol_options(&mut cluster, protocol, false);
    cluster
}

/// The client-side cluster for one listener of a target virtual node discovered through Cloud
/// Map (Weft's instance registry): `cds_egress_<mesh>_<node>_<protocol>_<port>` like a DNS
/// target, but its endpoints come over EDS (ADS) under `service_name`, so that registrations,
/// deregistrations and health changes reach Envoy as endpoint updates without touching the
/// cluster. Round robin across the instances; the node listener's `outlierDetection` applies,
/// which is where App Mesh recommends Cloud Map (virtual_nodes.md, "Outlier detection").
pub(crate) fn egress_eds(
    mesh: &str,
    node: &str,
    listener: &Listener,
    port: u16,
    service_name: String,
) -> XdsCluster {
    let protocol = listener.port_mapping.protocol;
    let mut cluster = XdsCluster {
        name: names::egress_cluster(mesh, node, protocol, port),
        cluster_discovery_type: Some(XdsClusterDiscoveryType::Type(XdsDiscoveryType::Eds as i32)),
        eds_cluster_config: Some(XdsEdsClusterConfig {
            eds_config: Some(XdsConfigSource {
                config_source_specifier: Some(XdsConfigSourceSpecifier::Ads(
                    XdsAggregatedConfigSource {},
                )),
                resource_api_version: XdsApiVersion::V3 as i32,
                ..Default::default()
            }),
            service_name,
        }),
        connect_timeout: Some(defaults::seconds(CONNECT_TIMEOUT_SECS)),
        lb_policy: XdsLbPolicy::RoundRobin as i32,
        circuit_breakers: Some(XdsCircuitBreakers {
            thresholds: vec![default_thresholds()],
            ..Default::default()
        }),
        outlier_detection: listener.outlier_detection.as_ref().map(outlier_detection),
        ..Default::default()
    };
    protocol_options(&mut cluster, protocol, false);
    cluster
}

fn outlier_detection(od: &OutlierDetection) -> XdsOutlierDetection {
    XdsOutlierDetection {
        consecutive_5xx: u32_value(clamp_u32(od.max_server_errors)),
        // Envoy requires both to be > 0; 0 (or unset) leaves Envoy's default (10 s, 30 s).
        interval: positive(defaults::duration(&od.interval)),
        base_ejection_time: positive(defaults::duration(&od.base_ejection_duration)),
        max_ejection_percent: u32_value(clamp_u32(od.max_ejection_percent.into()).min(100)),
        ..Default::default()
    }
}

fn positive(d: Option<XdsDuration>) -> Option<XdsDuration> {
    d.filter(|d| d.seconds > 0 || d.nanos > 0)
}

/// The ORIGINAL_DST cluster that forwards traffic for destinations outside the mesh to where
/// the application meant to send it (mesh egress filter `ALLOW_ALL`, meshes.md).
pub(crate) fn passthrough(mesh: &str) -> XdsCluster {
    XdsCluster {
        name: names::passthrough_cluster(mesh),
        cluster_discovery_type: Some(XdsClusterDiscoveryType::Type(
            XdsDiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: Some(defaults::seconds(CONNECT_TIMEOUT_SECS)),
        lb_policy: XdsLbPolicy::ClusterProvided as i32,
        circuit_breakers: Some(XdsCircuitBreakers {
            thresholds: vec![default_thresholds()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The DNS cache of the dynamic forward proxy: one per mesh, shared by the HTTP filter and the
/// cluster (Envoy requires both to carry the same settings).
pub(crate) fn forward_proxy_dns_cache(
    mesh: &str,
    mesh_ip_preference: Option<IpPreference>,
) -> XdsDnsCacheConfig {
    XdsDnsCacheConfig {
        name: format!("weft_egress_{mesh}"),
        dns_lookup_family: dns_lookup_family(mesh_ip_preference) as i32,
        ..Default::default()
    }
}

/// The dynamic forward proxy cluster: requests for hosts outside the mesh go where their `Host`
/// (or absolute URI) says, resolved by DNS — mesh egress filter `ALLOW_ALL` in explicit mode,
/// where no original destination exists (meshes.md;
/// <https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/dynamic_forward_proxy_filter>).
pub(crate) fn forward_proxy(mesh: &str, cache: XdsDnsCacheConfig) -> XdsCluster {
    XdsCluster {
        name: names::forward_proxy_cluster(mesh),
        cluster_discovery_type: Some(XdsClusterDiscoveryType::ClusterType(XdsCustomClusterType {
            name: "envoy.clusters.dynamic_forward_proxy".to_string(),
            typed_config: Some(pack_any(XdsDfpClusterConfig {
                cluster_implementation_specifier: Some(
                    XdsDfpClusterImplementation::DnsCacheConfig(cache),
                ),
                ..Default::default()
            })),
        })),
        connect_timeout: Some(defaults::seconds(CONNECT_TIMEOUT_SECS)),
        lb_policy: XdsLbPolicy::ClusterProvided as i32,
        circuit_breakers: Some(XdsCircuitBreakers {
            thresholds: vec![default_thresholds()],
            ..Default::default()
        }),
        ..Default::default()
    }
}
