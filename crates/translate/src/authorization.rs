//! Service-to-service authorization (a Weft extension, the mesh tag `weft:authorization`, see
//! `weft_model::authorization`): a virtual node accepts calls only from the proxies whose specs
//! reach one of its virtual services — nodes that list such a service in `backends`, gateways
//! whose gateway routes target one — and from the extra callers of its `weft:callers` tag.
//!
//! Envoy decides with its RBAC filters on the peer certificate's SPIFFE id (the Weft identity
//! the caller's Envoy presents), so authorization needs mutual TLS on the node's listeners
//! (mesh-wide, `weft:mtls`, or the listener's own `tls` with Weft's CA): a plaintext caller has
//! no identity and is refused.
//! - HTTP, HTTP/2 and gRPC listeners: the HTTP RBAC filter before the router; a refused request
//!   gets 403, which gRPC clients read as `PERMISSION_DENIED`
//!   (<https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter>);
//! - TCP listeners: the network RBAC filter before the TCP proxy, which closes the connection
//!   (<https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/rbac_filter>).
//!
//! `REPORT` puts the same policy in `shadow_rules`: nothing is refused, and Envoy counts what
//! would have been (`http.ingress.rbac.shadow_denied`, `ingress_rbac.rbac.shadow_denied`).
//!
//! Denials per caller ([`denial_log`]): the RBAC filter only counts them in total, and naming
//! every caller in its config (one DENY policy per identity not allowed, for per-policy stats)
//! would make each node's config grow with the mesh and change whenever any node is added — on a
//! 500-node mesh, 500 principals in each of 500 configs, all pushed again at every new node. So
//! the HTTP connection manager logs each denied request to Envoy's stats access logger
//! (<https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/access_loggers/stats/v3/stats.proto>),
//! a counter tagged with the caller's certificate URI SAN: the config is the same few lines on
//! every node, the counters exist only for callers that were denied, and they reach Weft's
//! server through the stats sink with every other stat. The TCP proxy logs the connections the
//! network RBAC filter refuses to the same counters ([`tcp_denial_log`]).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as XdsAccessLogConfigType;
use envoy_types::pb::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier as XdsLogFilterSpecifier;
use envoy_types::pb::envoy::config::accesslog::v3::extension_filter::ConfigType as XdsExtensionFilterConfigType;
use envoy_types::pb::envoy::config::accesslog::v3::comparison_filter::Op as XdsComparisonOp;
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog as XdsAccessLog, AccessLogFilter as XdsAccessLogFilter,
    ComparisonFilter as XdsComparisonFilter, ExtensionFilter as XdsExtensionFilter,
    GrpcStatusFilter as XdsGrpcStatusFilter,
    MetadataFilter as XdsMetadataFilter, OrFilter as XdsOrFilter,
    StatusCodeFilter as XdsStatusCodeFilter,
};
use envoy_types::pb::envoy::config::accesslog::v3::grpc_status_filter::Status as XdsGrpcStatus;
use envoy_types::pb::envoy::config::core::v3::RuntimeUInt32 as XdsRuntimeUInt32;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as XdsFilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::Filter as XdsFilter;
use envoy_types::pb::envoy::config::rbac::v3::permission::Rule as XdsPermissionRule;
use envoy_types::pb::envoy::config::rbac::v3::principal::{
    Authenticated as XdsAuthenticated, Identifier as XdsPrincipalId, Set as XdsPrincipalSet,
};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as XdsRbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission as XdsPermission, Policy as XdsPolicy, Principal as XdsPrincipal,
    Rbac as XdsRbacRules,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as XdsHttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as XdsHttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter as XdsHttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as XdsNetworkRbac;
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::config::{
    Counter as XdsStatsCounter, Stat as XdsStat, Tag as XdsStatTag,
};
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::Config as XdsStatsLog;
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter as XdsCelFilter;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment as XdsPathSegmentKey;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment as XdsPathSegment;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as XdsMatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as XdsValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher as XdsMetadataMatcher, StringMatcher as XdsStringMatcher,
    ValueMatcher as XdsValueMatcher,
};
use envoy_types::pb::envoy::r#type::v3::Scope as XdsStatsScope;
use envoy_types::util::pack_any;
use weft_model::shapes::{Backend, VirtualServiceProvider};
use weft_model::MeshAuthorization;

use crate::snapshot::MeshSnapshot;

const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
/// The stat prefix of the network filter (`ingress_rbac.rbac.denied`).
const NETWORK_STAT_PREFIX: &str = "ingress_rbac";
/// The policy's name, in Envoy's response details
/// (`rbac_access_denied_matched_policy[none]` when no caller matched).
const POLICY: &str = "weft-mesh-callers";

/// The prefix of the per-caller denial counters: `weft_authz.denied.details.<response code
/// details>.caller.<URI SAN>` (ENFORCE: every 403, the server keeps those whose details are
/// the RBAC filter's `rbac_access_denied…`) and `weft_authz.shadow_denied.caller.<URI SAN>`
/// (REPORT). The caller comes last: a URI SAN may hold dots.
pub const DENIAL_STATS_PREFIX: &str = "weft_authz";
/// Distinct callers counted at most per proxy (Envoy's scope limit), so that the stats stay
/// bounded whatever presents itself.
const MAX_DENIAL_COUNTERS: u32 = 1000;

/// The virtual services `node` provides: directly, or through a router with a route to it.
fn services_of<'a>(snapshot: &'a MeshSnapshot, node: &str) -> BTreeSet<&'a str> {
    let mut out = BTreeSet::new();
    for (name, vs) in &snapshot.virtual_services {
        let provides = match &vs.spec.provider {
            Some(VirtualServiceProvider::VirtualNode(p)) => p.virtual_node_name == node,
            Some(VirtualServiceProvider::VirtualRouter(p)) => {
                snapshot.routes_of(&p.virtual_router_name).any(|route| {
                    route
                        .spec
                        .weighted_targets()
                        .any(|t| t.virtual_node == node)
                })
            }
            None => false,
        };
        if provides {
            out.insert(name.as_str());
        }
    }
    out
}

/// Who may call virtual node `node`: `virtualNode/<name>` and `virtualGateway/<name>` of the
/// mesh, sorted.
pub(crate) fn callers(snapshot: &MeshSnapshot, node: &str) -> BTreeSet<String> {
    let services = services_of(snapshot, node);
    let mut out = BTreeSet::new();
    for (name, caller) in &snapshot.virtual_nodes {
        let reaches = caller.spec.backends.iter().flatten().any(|b| {
            let Backend::VirtualService(vs) = b;
            services.contains(vs.virtual_service_name.as_str())
        });
        if reaches {
            out.insert(format!("virtualNode/{name}"));
        }
    }
    for ((gateway, _), gr) in &snapshot.gateway_routes {
        let spec = &gr.spec;
        let mut targets = Vec::new();
        for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
            targets.push(
                http.action
                    .target
                    .virtual_service
                    .virtual_service_name
                    .as_str(),
            );
        }
        if let Some(g) = &spec.grpc_route {
            targets.push(
                g.action
                    .target
                    .virtual_service
                    .virtual_service_name
                    .as_str(),
            );
        }
        if targets.iter().any(|t| services.contains(t)) {
            out.insert(format!("virtualGateway/{gateway}"));
        }
    }
    if let Some(extra) = snapshot.extra_callers.get(node) {
        out.extend(extra.iter().cloned());
    }
    out
}

/// The RBAC rules allowing exactly the callers of `node`, or `None` when the mesh does not ask
/// for authorization.
fn rules(snapshot: &MeshSnapshot, node: &str) -> Option<XdsRbacRules> {
    if snapshot.authorization == MeshAuthorization::Disabled {
        return None;
    }
    let prefix = format!(
        "spiffe://{}/mesh/{}/",
        snapshot.trust_domain,
        snapshot.mesh_name()
    );
    let ids: Vec<XdsPrincipal> = callers(snapshot, node)
        .into_iter()
        .map(|caller| XdsPrincipal {
            identifier: Some(XdsPrincipalId::Authenticated(XdsAuthenticated {
                principal_name: Some(XdsStringMatcher {
                    match_pattern: Some(XdsMatchPattern::Exact(format!("{prefix}{caller}"))),
                    ..Default::default()
                }),
            })),
        })
        .collect();
    let mut policies = BTreeMap::new();
    // No caller at all: an ALLOW list with no policy refuses everyone.
    if !ids.is_empty() {
        policies.insert(
            POLICY.to_string(),
            XdsPolicy {
                permissions: vec![XdsPermission {
                    rule: Some(XdsPermissionRule::Any(true)),
                }],
                principals: vec![XdsPrincipal {
                    identifier: Some(XdsPrincipalId::OrIds(XdsPrincipalSet { ids })),
                }],
                ..Default::default()
            },
        );
    }
    Some(XdsRbacRules {
        action: XdsRbacAction::Allow as i32,
        policies: policies.into_iter().collect(),
        ..Default::default()
    })
}

/// The HTTP RBAC filter for the listeners of `node`, if the mesh asks for authorization.
pub(crate) fn http_filter(snapshot: &MeshSnapshot, node: &str) -> Option<XdsHttpFilter> {
    let rules = rules(snapshot, node)?;
    let config = match snapshot.authorization {
        MeshAuthorization::Enforce => XdsHttpRbac {
            rules: Some(rules),
            ..Default::default()
        },
        _ => XdsHttpRbac {
            shadow_rules: Some(rules),
            ..Default::default()
        },
    };
    Some(XdsHttpFilter {
        name: HTTP_RBAC_FILTER.to_string(),
        config_type: Some(XdsHttpFilterConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    })
}

/// The network RBAC filter for the TCP listeners of `node`, if the mesh asks for authorization.
pub(crate) fn network_filter(snapshot: &MeshSnapshot, node: &str) -> Option<XdsFilter> {
    let rules = rules(snapshot, node)?;
    let mut config = XdsNetworkRbac {
        stat_prefix: NETWORK_STAT_PREFIX.to_string(),
        ..Default::default()
    };
    match snapshot.authorization {
        MeshAuthorization::Enforce => config.rules = Some(rules),
        _ => config.shadow_rules = Some(rules),
    }
    Some(XdsFilter {
        name: NETWORK_RBAC_FILTER.to_string(),
        config_type: Some(XdsFilterConfigType::TypedConfig(pack_any(config))),
    })
}

/// The access log counting each denied request per caller on `node`'s HTTP listeners (see the
/// module's comment), if the mesh asks for authorization and the proxy streams its stats to
/// Weft (`weft.stats_intake`, which also says its bootstrap is the agent's).
pub(crate) fn denial_log(snapshot: &MeshSnapshot, intake: bool) -> Option<XdsAccessLog> {
    if !intake {
        return None;
    }
    let caller = stat_tag("caller", "%DOWNSTREAM_PEER_URI_SAN%");
    let (name, tags, filter) = match snapshot.authorization {
        MeshAuthorization::Disabled => return None,
        // Enforced: the RBAC filter answers 403, or gRPC's PERMISSION_DENIED (in a 200) to a
        // gRPC request; the details tell its refusals from the app's.
        MeshAuthorization::Enforce => (
            "denied",
            vec![stat_tag("details", "%RESPONSE_CODE_DETAILS%"), caller],
            XdsLogFilterSpecifier::OrFilter(XdsOrFilter {
                filters: vec![
                    XdsAccessLogFilter {
                        filter_specifier: Some(XdsLogFilterSpecifier::StatusCodeFilter(
                            XdsStatusCodeFilter {
                                comparison: Some(XdsComparisonFilter {
                                    op: XdsComparisonOp::Eq as i32,
                                    value: Some(XdsRuntimeUInt32 {
                                        default_value: 403,
                                        runtime_key: "weft.authorization.denied_status".to_string(),
                                    }),
                                }),
                            },
                        )),
                    },
                    XdsAccessLogFilter {
                        filter_specifier: Some(XdsLogFilterSpecifier::GrpcStatusFilter(
                            XdsGrpcStatusFilter {
                                statuses: vec![XdsGrpcStatus::PermissionDenied as i32],
                                ..Default::default()
                            },
                        )),
                    },
                ],
            }),
        ),
        // Report-only: the shadow engine's verdict, in the filter's dynamic metadata
        // (rbac_filter.rst, "Dynamic Metadata").
        _ => (
            "shadow_denied",
            vec![caller],
            shadow_denied_filter(HTTP_RBAC_FILTER),
        ),
    };
    Some(stats_log(name, tags, filter))
}

/// The access log counting each connection refused per caller on `node`'s TCP listeners, for
/// the TCP proxy's `access_log`, with the HTTP one's counters and tags (the same intake counts
/// both), if the mesh asks for authorization and the proxy streams its stats to Weft.
///
/// The TCP proxy logs each connection when it ends, also one the network RBAC filter before it
/// closed (checked with Envoy 1.40), and the connection's stream info holds the filter's
/// verdict:
/// - enforced: `%CONNECTION_TERMINATION_DETAILS%` is `rbac_access_denied_matched_policy[…]`
///   (<https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/rbac_filter>),
///   and the filter emits no dynamic metadata for its enforced verdict, so a CEL filter on the
///   `connection.termination_details` attribute picks those connections
///   (<https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/access_loggers/filters/cel/v3/cel.proto>,
///   <https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes>);
/// - report-only: the shadow engine's verdict, in the network filter's dynamic metadata.
pub(crate) fn tcp_denial_log(snapshot: &MeshSnapshot, intake: bool) -> Option<XdsAccessLog> {
    if !intake {
        return None;
    }
    let caller = stat_tag("caller", "%DOWNSTREAM_PEER_URI_SAN%");
    let (name, tags, filter) = match snapshot.authorization {
        MeshAuthorization::Disabled => return None,
        MeshAuthorization::Enforce => (
            "denied",
            vec![
                stat_tag("details", "%CONNECTION_TERMINATION_DETAILS%"),
                caller,
            ],
            XdsLogFilterSpecifier::ExtensionFilter(XdsExtensionFilter {
                name: "envoy.access_loggers.extension_filters.cel".to_string(),
                config_type: Some(XdsExtensionFilterConfigType::TypedConfig(pack_any(
                    XdsCelFilter {
                        expression:
                            "connection.termination_details.startsWith('rbac_access_denied')"
                                .to_string(),
                        ..Default::default()
                    },
                ))),
            }),
        ),
        _ => (
            "shadow_denied",
            vec![caller],
            shadow_denied_filter(NETWORK_RBAC_FILTER),
        ),
    };
    Some(stats_log(name, tags, filter))
}

/// A tag of a per-caller denial counter, formatted from the access log's command operators.
fn stat_tag(name: &str, format: &str) -> XdsStatTag {
    XdsStatTag {
        name: name.to_string(),
        value_format: format.to_string(),
        ..Default::default()
    }
}

/// Logs whose RBAC filter `filter`'s shadow engine denied (its `shadow_engine_result` dynamic
/// metadata, rbac_filter.rst, "Dynamic Metadata").
fn shadow_denied_filter(filter: &str) -> XdsLogFilterSpecifier {
    XdsLogFilterSpecifier::MetadataFilter(XdsMetadataFilter {
        matcher: Some(XdsMetadataMatcher {
            filter: filter.to_string(),
            path: vec![XdsPathSegment {
                segment: Some(XdsPathSegmentKey::Key("shadow_engine_result".to_string())),
            }],
            value: Some(XdsValueMatcher {
                match_pattern: Some(XdsValuePattern::StringMatch(XdsStringMatcher {
                    match_pattern: Some(XdsMatchPattern::Exact("denied".to_string())),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The stats access logger adding one to `weft_authz.<name>` with `tags` for each log that
/// passes `filter`.
fn stats_log(name: &str, tags: Vec<XdsStatTag>, filter: XdsLogFilterSpecifier) -> XdsAccessLog {
    let config = XdsStatsLog {
        stats_scope: Some(XdsStatsScope {
            prefix: DENIAL_STATS_PREFIX.to_string(),
            max_counters: Some(envoy_types::pb::google::protobuf::UInt32Value {
                value: MAX_DENIAL_COUNTERS,
            }),
            ..Default::default()
        }),
        counters: vec![XdsStatsCounter {
            stat: Some(XdsStat {
                name: name.to_string(),
                tags,
            }),
            value_fixed: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 1 }),
            ..Default::default()
        }],
        ..Default::default()
    };
    XdsAccessLog {
        name: "envoy.access_loggers.stats".to_string(),
        filter: Some(XdsAccessLogFilter {
            filter_specifier: Some(filter),
        }),
        config_type: Some(XdsAccessLogConfigType::TypedConfig(pack_any(config))),
    }
}
