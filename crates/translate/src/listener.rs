//! Listeners: ingress (to the local app) and egress (from the local app into the mesh), with
//! their network filters.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as XdsAccessLogConfigType;
use envoy_types::pb::envoy::config::accesslog::v3::AccessLog as XdsAccessLog;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier as XdsConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as XdsDataSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format as XdsFormat;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource as XdsAggregatedConfigSource, ApiVersion as XdsApiVersion,
    ConfigSource as XdsConfigSource, DataSource as XdsDataSource,
    SubstitutionFormatString as XdsSubstitutionFormatString,
    TrafficDirection as XdsTrafficDirection,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as XdsFilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as XdsListenerFilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::{
    AdditionalAddress as XdsAdditionalAddress, Filter as XdsFilter, FilterChain as XdsFilterChain,
    FilterChainMatch as XdsFilterChainMatch, Listener as XdsListener,
    ListenerFilter as XdsListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as XdsRouteConfiguration;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat as XdsAccessLogFormat;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog as XdsFileAccessLog;
use envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig as XdsDnsCacheConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3::filter_config::ImplementationSpecifier as XdsDfpImplementation;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3::FilterConfig as XdsDfpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3::filter_config::PerMethodStatSpecifier as XdsGrpcStatsPerMethod;
use envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3::FilterConfig as XdsGrpcStats;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router as XdsRouter;

/// Envoy's gRPC statistics filter.
const GRPC_STATS_FILTER: &str = "envoy.filters.http.grpc_stats";
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst as XdsOriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType as XdsCodecType, RouteSpecifier as XdsRouteSpecifier,
    Tracing as XdsHcmTracing, UpgradeConfig as XdsUpgradeConfig,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as XdsHttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as XdsHttpConnectionManager, HttpFilter as XdsHttpFilter,
    Rds as XdsRds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight as XdsTcpClusterWeight;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier as XdsTcpClusterSpecifier, WeightedCluster as XdsTcpWeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy as XdsTcpProxy;
use envoy_types::pb::google::protobuf::{
    value::Kind, Any, Duration as XdsDuration, Struct, UInt32Value, Value,
};
use weft_model::shapes::{AccessLog, Logging, LoggingFormat};
use envoy_types::util::pack_any;
use prost::{Message, Name};

use crate::cluster::socket_address;
use crate::TranslateError;

const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
const ROUTER_FILTER: &str = "envoy.filters.http.router";
const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";
const DYNAMIC_FORWARD_PROXY_FILTER: &str = "envoy.filters.http.dynamic_forward_proxy";
const FILE_ACCESS_LOG: &str = "envoy.access_loggers.file";

/// Which way a listener's traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Ingress,
    Egress,
}

/// What an HTTP connection manager carries besides its route table.
#[derive(Debug, Clone, Default)]
pub(crate) struct HcmExtras {
    /// Accept HTTP `CONNECT` (egress only): a TCP client reaches a `tcp` backend through a
    /// `CONNECT <service>:<port>` tunnel, the explicit-mode counterpart of iptables redirection.
    /// Routes with a `connect_matcher` then terminate the tunnel and forward its bytes as raw
    /// TCP (<https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/upgrades#connect-support>).
    pub connect: bool,
    /// The dynamic forward proxy's DNS cache, when the egress forwards requests for any host
    /// (egress filter `ALLOW_ALL` in explicit mode; the filter resolves the `Host` of requests
    /// routed to the dynamic forward proxy cluster and does nothing for other clusters).
    pub forward_proxy: Option<XdsDnsCacheConfig>,
    /// The node's access logs (`logging.accessLog`).
    pub access_log: Vec<XdsAccessLog>,
    /// Service-to-service authorization (ingress only): the RBAC filter, before the router.
    pub rbac: Option<XdsHttpFilter>,
    /// Trace requests (`weft.tracing`): an empty `tracing`, so Envoy uses the provider of the
    /// proxy's bootstrap (the HCM's `provider` field, when unset, falls back to it:
    /// <https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-tracing>).
    /// Sampling stays at Envoy's defaults (100%), the tracer's own sampling (X-Ray's) applies.
    pub tracing: bool,
    /// Count gRPC responses by status per upstream cluster (`cluster.<name>.grpc.failure`,
    /// `.grpc.total`, `.grpc.<code>`) with Envoy's gRPC statistics filter: a gRPC error comes in
    /// an HTTP 200, which the router's `upstream_rq_5xx` does not count. Egress only, for Weft's
    /// stats intake (`weft.stats_intake`), which counts them as errors
    /// (<https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/grpc_stats_filter>).
    pub grpc_stats: bool,
}

/// An HTTP connection manager that takes its routes from RDS over the ADS stream
/// (docs/proxy-contract.md).
///
/// - codec AUTO: the app or the peer Envoy may speak HTTP/1.1 or HTTP/2 (h2c, gRPC).
/// - `normalize_path` and `merge_slashes`: App Mesh turns them on for path matching, "to
///   minimize the probability of path confusion vulnerabilities" (routes.md).
/// - WebSocket upgrades: "The http listener permits connection transition to websockets"
///   (virtual_nodes.md).
/// - The router filter needs a `typed_config`, even if empty (envoy-notes.md).
pub(crate) fn http_connection_manager(
    stat_prefix: &str,
    route_config_name: &str,
    extras: &HcmExtras,
) -> XdsFilter {
    let mut http_filters = Vec::new();
    if let Some(cache) = &extras.forward_proxy {
        http_filters.push(XdsHttpFilter {
            name: DYNAMIC_FORWARD_PROXY_FILTER.to_string(),
            config_type: Some(XdsHttpFilterConfigType::TypedConfig(pack_any(
                XdsDfpFilterConfig {
                    implementation_specifier: Some(XdsDfpImplementation::DnsCacheConfig(
                        cache.clone(),
                    )),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        });
    }
    if let Some(rbac) = &extras.rbac {
        http_filters.push(rbac.clone());
    }
    if extras.grpc_stats {
        // Per cluster, not per method: the method names would multiply the stats by the
        // services' APIs.
        http_filters.push(XdsHttpFilter {
            name: GRPC_STATS_FILTER.to_string(),
            config_type: Some(XdsHttpFilterConfigType::TypedConfig(pack_any(
                XdsGrpcStats {
                    per_method_stat_specifier: Some(XdsGrpcStatsPerMethod::StatsForAllMethods(
                        envoy_types::pb::google::protobuf::BoolValue { value: false },
                    )),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        });
    }
    http_filters.push(XdsHttpFilter {
        name: ROUTER_FILTER.to_string(),
        config_type: Some(XdsHttpFilterConfigType::TypedConfig(pack_any(
            XdsRouter::default(),
        ))),
        ..Default::default()
    });
    let mut upgrade_configs = vec![XdsUpgradeConfig {
        upgrade_type: "websocket".to_string(),
        ..Default::default()
    }];
    if extras.connect {
        upgrade_configs.push(XdsUpgradeConfig {
            upgrade_type: "CONNECT".to_string(),
            ..Default::default()
        });
    }
    let hcm = XdsHttpConnectionManager {
        codec_type: XdsCodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(XdsRouteSpecifier::Rds(XdsRds {
            config_source: Some(XdsConfigSource {
                resource_api_version: XdsApiVersion::V3 as i32,
                config_source_specifier: Some(XdsConfigSourceSpecifier::Ads(
                    XdsAggregatedConfigSource {},
                )),
                ..Default::default()
            }),
            route_config_name: route_config_name.to_string(),
        })),
        http_filters,
        normalize_path: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
        merge_slashes: true,
        upgrade_configs,
        access_log: extras.access_log.clone(),
        tracing: extras.tracing.then(XdsHcmTracing::default),
        ..Default::default()
    };
    XdsFilter {
        name: HCM_FILTER.to_string(),
        config_type: Some(XdsFilterConfigType::TypedConfig(pack_any(hcm))),
    }
}

/// Where a TCP proxy sends its connections: one cluster, or several by weight (a `tcp` route's
/// weighted targets, transparent mode).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TcpTarget {
    /// One cluster.
    Cluster(String),
    /// Clusters with their weights (all > 0).
    Weighted(Vec<(String, u32)>),
}

/// A TCP proxy to `target`; `idle_timeout` 0 disables it (as in App Mesh, routes.md "TCP").
pub(crate) fn tcp_proxy(
    stat_prefix: &str,
    target: TcpTarget,
    idle_timeout: XdsDuration,
    access_log: &[XdsAccessLog],
) -> XdsFilter {
    let cluster_specifier = match target {
        TcpTarget::Cluster(name) => XdsTcpClusterSpecifier::Cluster(name),
        TcpTarget::Weighted(clusters) => {
            XdsTcpClusterSpecifier::WeightedClusters(XdsTcpWeightedCluster {
                clusters: clusters
                    .into_iter()
                    .map(|(name, weight)| XdsTcpClusterWeight {
                        name,
                        weight,
                        ..Default::default()
                    })
                    .collect(),
            })
        }
    };
    let proxy = XdsTcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(cluster_specifier),
        idle_timeout: Some(idle_timeout),
        access_log: access_log.to_vec(),
        ..Default::default()
    };
    XdsFilter {
        name: TCP_PROXY_FILTER.to_string(),
        config_type: Some(XdsFilterConfigType::TypedConfig(pack_any(proxy))),
    }
}

/// A node's `logging.accessLog` as Envoy file access logs (envoy-logs.md).
///
/// - `path` is the file Envoy appends to (`/dev/stdout` included);
/// - `format.text` is an Envoy format string; a missing final newline is added so that every
///   request is one line, as App Mesh's examples write it
///   (`"%LOCAL_REPLY_BODY%:%RESPONSE_CODE%:path=%REQ(:path)%\n"`);
/// - `format.json` key/value pairs become a JSON object per line, each value a format string;
/// - no format: Envoy's default format, which is what App Mesh used
///   (<https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#default-format-string>).
///
/// An empty path (which the API does not allow) yields no access log rather than a NACK.
pub(crate) fn access_logs(logging: Option<&Logging>) -> Vec<XdsAccessLog> {
    let Some(AccessLog::File(file)) = logging.and_then(|l| l.access_log.as_ref()) else {
        return Vec::new();
    };
    if file.path.is_empty() {
        return Vec::new();
    }
    let format = match &file.format {
        None => None,
        Some(LoggingFormat::Text(text)) => {
            let mut text = text.clone();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            Some(XdsFormat::TextFormatSource(XdsDataSource {
                specifier: Some(XdsDataSourceSpecifier::InlineString(text)),
                ..Default::default()
            }))
        }
        Some(LoggingFormat::Json(pairs)) => Some(XdsFormat::JsonFormat(Struct {
            fields: pairs
                .iter()
                .map(|pair| {
                    (
                        pair.key.clone(),
                        Value {
                            kind: Some(Kind::StringValue(pair.value.clone())),
                        },
                    )
                })
                .collect(),
        })),
    };
    let log = XdsFileAccessLog {
        path: file.path.clone(),
        access_log_format: format.map(|format| {
            XdsAccessLogFormat::LogFormat(XdsSubstitutionFormatString {
                format: Some(format),
                ..Default::default()
            })
        }),
    };
    vec![XdsAccessLog {
        name: FILE_ACCESS_LOG.to_string(),
        config_type: Some(XdsAccessLogConfigType::TypedConfig(pack_any(log))),
        ..Default::default()
    }]
}

/// A filter chain with one network filter, optionally only for connections originally sent to
/// `destination_port` (transparent mode, after the original_dst listener filter).
pub(crate) fn filter_chain(
    name: String,
    destination_port: Option<u16>,
    filter: XdsFilter,
) -> XdsFilterChain {
    XdsFilterChain {
        name,
        filter_chain_match: destination_port.map(|port| XdsFilterChainMatch {
            destination_port: Some(UInt32Value {
                value: u32::from(port),
            }),
            ..Default::default()
        }),
        filters: vec![filter],
        ..Default::default()
    }
}

/// A listener on `address:port`. With `original_dst`, connections redirected by iptables are
/// matched on the address the application originally dialled (App Mesh's 15000/15001).
pub(crate) fn listener(
    name: String,
    address: &str,
    port: u16,
    direction: Direction,
    original_dst: bool,
    filter_chains: Vec<XdsFilterChain>,
    default_filter_chain: Option<XdsFilterChain>,
) -> XdsListener {
    XdsListener {
        name,
        address: Some(socket_address(address, port)),
        filter_chains,
        default_filter_chain,
        listener_filters: if original_dst {
            vec![XdsListenerFilter {
                name: ORIGINAL_DST_FILTER.to_string(),
                config_type: Some(XdsListenerFilterConfigType::TypedConfig(pack_any(
                    XdsOriginalDst::default(),
                ))),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        traffic_direction: match direction {
            Direction::Ingress => XdsTrafficDirection::Inbound as i32,
            Direction::Egress => XdsTrafficDirection::Outbound as i32,
        },
        ..Default::default()
    }
}

/// `listener` also listening on `v6` (same port), a socket of its own: an IPv6 wildcard socket
/// is IPv6-only in Envoy unless `ipv4_compat` is set, and each family's redirected connections
/// then carry their own original destination
/// (<https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener.proto#envoy-v3-api-field-config-listener-v3-listener-additional-addresses>).
pub(crate) fn also_on(mut listener: XdsListener, v6: Option<&str>, port: u16) -> XdsListener {
    if let Some(v6) = v6 {
        listener.additional_addresses.push(XdsAdditionalAddress {
            address: Some(socket_address(v6, port)),
            ..Default::default()
        });
    }
    listener
}

/// `listeners` with every RDS reference replaced by the named route configuration inline, for a
/// static bootstrap (no ADS). Fails if a listener names a route configuration not given.
pub(crate) fn inline_routes(
    listeners: &[XdsListener],
    route_configurations: &[XdsRouteConfiguration],
) -> Result<Vec<XdsListener>, TranslateError> {
    let by_name: BTreeMap<&str, &XdsRouteConfiguration> = route_configurations
        .iter()
        .map(|rc| (rc.name.as_str(), rc))
        .collect();
    let inline_filter = |filter: &mut XdsFilter| -> Result<(), TranslateError> {
        let Some(XdsFilterConfigType::TypedConfig(any)) = &filter.config_type else {
            return Ok(());
        };
        if any.type_url != XdsHttpConnectionManager::type_url() {
            return Ok(());
        }
        let mut hcm = XdsHttpConnectionManager::decode(any.value.as_slice())
            .map_err(|e| TranslateError::Unsupported(format!("undecodable HCM: {e}")))?;
        if let Some(XdsRouteSpecifier::Rds(rds)) = &hcm.route_specifier {
            let rc = by_name.get(rds.route_config_name.as_str()).ok_or_else(|| {
                TranslateError::Unsupported(format!(
                    "listener refers to unknown route configuration {:?}",
                    rds.route_config_name
                ))
            })?;
            hcm.route_specifier = Some(XdsRouteSpecifier::RouteConfig((*rc).clone()));
        }
        filter.config_type = Some(XdsFilterConfigType::TypedConfig(Any {
            type_url: any.type_url.clone(),
            value: hcm.encode_to_vec(),
        }));
        Ok(())
    };
    let mut out = listeners.to_vec();
    for listener in &mut out {
        for chain in listener
            .filter_chains
            .iter_mut()
            .chain(listener.default_filter_chain.iter_mut())
        {
            for filter in &mut chain.filters {
                inline_filter(filter)?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transparent_listener_also_listens_on_its_ipv6_address_at_the_same_port() {
        let egress = listener(
            "lds_egress_0.0.0.0_15001".into(),
            "0.0.0.0",
            15001,
            Direction::Egress,
            true,
            Vec::new(),
            None,
        );
        let both = also_on(egress.clone(), Some("::"), 15001);
        assert_eq!(both.additional_addresses.len(), 1);
        assert_eq!(
            both.additional_addresses[0].address,
            Some(socket_address("::", 15001))
        );
        assert_eq!(also_on(egress, None, 15001).additional_addresses.len(), 0);
    }
}
