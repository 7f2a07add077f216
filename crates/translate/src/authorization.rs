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

use std::collections::{BTreeMap, BTreeSet};

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
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as XdsMatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher as XdsStringMatcher;
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
