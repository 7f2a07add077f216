//! Clusters: the local application (ingress) and each target virtual node listener (egress).

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds as XdsThresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType as XdsClusterDiscoveryType, DiscoveryType as XdsDiscoveryType,
    DnsLookupFamily as XdsDnsLookupFamily, LbPolicy as XdsLbPolicy,
};
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
    UpstreamProtocolOptions as XdsUpstreamProtocolOptions,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions as XdsHttpProtocolOptions;
use envoy_types::pb::google::protobuf::{Duration as XdsDuration, UInt32Value};
use envoy_types::util::pack_any;
use weft_model::shapes::{
    DnsResponseType, DnsServiceDiscovery, IpPreference, Listener, OutlierDetection, PortProtocol,
    VirtualNodeConnectionPool,
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
fn protocol_options(cluster: &mut XdsCluster, protocol: PortProtocol) {
    if matches!(protocol, PortProtocol::Http2 | PortProtocol::Grpc) {
        let options = XdsHttpProtocolOptions {
            upstream_protocol_options: Some(XdsUpstreamProtocolOptions::ExplicitHttpConfig(
                XdsExplicitHttpConfig {
                    protocol_config: Some(XdsProtocolConfig::Http2ProtocolOptions(
                        XdsHttp2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        // A single entry: the map's (hash) order cannot make encodings differ.
        cluster
            .typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pack_any(options));
    }
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
    let mut cluster = XdsCluster {
        load_assignment: Some(load_assignment(
            &name,
            &options.app_address,
            options.app_port(port),
        )),
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
        ..Default::default()
    };
    protocol_options(&mut cluster, protocol);
    cluster
}

/// Maps App Mesh's IP preference onto Envoy's DNS lookup family (virtual_nodes.md, "IP version
/// preference"). Unset means App Mesh's default, "prefers IPv6 and falls back to IPv4", which
/// is Envoy's `AUTO`.
fn dns_lookup_family(preference: Option<IpPreference>) -> XdsDnsLookupFamily {
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
    protocol_options(&mut cluster, protocol);
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
