//! Virtual gateways: an Envoy deployed by itself that lets traffic from outside the mesh in
//! (virtual_gateways.md, gateway-routes.md).
//!
//! # How a request crosses the gateway
//!
//! App Mesh's gateway Envoy routes in two hops through itself (envoy-metrics.md names the
//! cluster of the first hop `cds_ingress_<mesh>_<gateway>_self_redirect_<protocol>_<port>`), and
//! so does Weft's:
//!
//! 1. **The gateway listener** (`lds_ingress_<addr>_<port>`, one per gateway listener, bound by
//!    Envoy itself — a gateway has no app and no traffic interception) applies the gateway routes:
//!    priority order, every match of the API, the path and hostname rewrites. Each route forwards
//!    to the listener's *self-redirect* cluster — the gateway Envoy's own egress listener on
//!    loopback — after naming its target in the internal header [`TARGET_HEADER`]
//!    (`<service>` or `<service>:<port>`). The listener's connection pool is this cluster's
//!    circuit breaker: the pool limits what the gateway sends into the mesh (virtual_gateways.md,
//!    "Enable connection pool").
//! 2. **The egress listener** (`lds_egress_<loopback>_<egress port>`) routes to the target
//!    virtual service exactly as a virtual node's egress does (the service's virtual router and
//!    its routes, weights, retries and timeouts, or its virtual-node provider): its route table
//!    is the virtual node egress table built by [`route::egress`] for "backends" = the targets of
//!    the gateway's routes, with each of its routes additionally matching the target header.
//!
//! Why two hops rather than one table: a gateway route rewrites the path (and host) *before*
//! the target service's routes match; Envoy matches a route once per hop, so composing, e.g., a
//! regex path rewrite with a router's path matches into one table is not possible in general.
//! Why a header rather than `Host`: with `defaultTargetHostname: DISABLED` the upstream must see
//! the client's own `Host`, so `Host` cannot also carry the target; the header is removed
//! before the request leaves the gateway.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction as XdsHeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue as XdsHeaderValue, HeaderValueOption as XdsHeaderValueOption,
};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as XdsFilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::Filter as XdsFilter;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as XdsHeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action as XdsAction;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier as XdsClusterSpecifier, HostRewriteSpecifier as XdsHostRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_match::{
    GrpcRouteMatchOptions as XdsGrpcRouteMatchOptions, PathSpecifier as XdsPathSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction as XdsDirectResponseAction, HeaderMatcher as XdsHeaderMatcher,
    Route as XdsRoute, RouteAction as XdsRouteAction, RouteConfiguration as XdsRouteConfiguration,
    RouteMatch as XdsRouteMatch, VirtualHost as XdsVirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck as XdsHealthCheckFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as XdsHttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as XdsHttpConnectionManager, HttpFilter as XdsHttpFilter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as XdsMatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute as XdsRegexMatchAndSubstitute, RegexMatcher as XdsRegexMatcher,
    StringMatcher as XdsStringMatcher,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use prost::{Message, Name};
use weft_model::shapes::{
    AccessLog, Backend, DefaultGatewayRouteRewrite, FileAccessLog, GatewayRouteData,
    GatewayRouteHostnameMatch, GatewayRouteHostnameRewrite, GatewayRouteTarget, GrpcGatewayRoute,
    GrpcMetadataMatchMethod, HeaderMatchMethod, HttpGatewayRoute, HttpRouteHeader, HttpRouteMatch,
    Listener, Logging, PortMapping, PortProtocol, ResourceMetadata, VirtualGatewayConnectionPool,
    VirtualGatewayData, VirtualGatewayGrpcConnectionPool, VirtualGatewayHealthCheckPolicy,
    VirtualGatewayListener, VirtualGatewayPortProtocol, VirtualNodeConnectionPool,
    VirtualNodeData, VirtualNodeGrpcConnectionPool, VirtualNodeHttp2ConnectionPool,
    VirtualNodeHttpConnectionPool, VirtualNodeSpec, VirtualNodeStatus, VirtualNodeStatusCode,
    VirtualServiceBackend,
};

use crate::defaults;
use crate::listener::{self, Direction, HcmExtras};
use crate::route::{self, TargetClusters};
use crate::tls;
use crate::{
    cluster, names, MeshSnapshot, ProxyIdentity, ProxyOptions, SharedResources, TranslateError,
    XdsCluster,
};

/// The internal request header that carries a gateway route's target from the gateway listener
/// to the egress listener: `<virtual service>` or `<virtual service>:<port>` — the names under
/// which a virtual node's egress knows the service. Set (overwriting anything a client sent) by
/// every gateway route, matched by the egress routes, removed before the request leaves.
pub const TARGET_HEADER: &str = "x-weft-gateway-target";

/// Stat prefix of the gateway listeners' connection managers (`http.ingress.*`).
const INGRESS_STAT_PREFIX: &str = "ingress";
/// Stat prefix of the egress hop's connection manager (`http.egress.*`).
const EGRESS_STAT_PREFIX: &str = "egress";
const HEALTH_CHECK_FILTER: &str = "envoy.filters.http.health_check";
/// The path of the gRPC health checking protocol
/// (<https://github.com/grpc/grpc/blob/master/doc/health-checking.md>).
const GRPC_HEALTH_PATH: &str = "/grpc.health.v1.Health/Check";

/// `cds_ingress_<mesh>_<gateway>_self_redirect_<protocol>_<egress port>` for a gateway with a
/// single listener; with several, the gateway listener's port comes first:
/// `cds_ingress_<mesh>_<gateway>_self_redirect_<listener port>_<protocol>_<egress port>`
/// (envoy-metrics.md, "Resource names").
pub fn self_redirect_cluster_name(
    mesh: &str,
    gateway: &str,
    listener_port: Option<u16>,
    protocol: VirtualGatewayPortProtocol,
    egress_port: u16,
) -> String {
    let protocol = names::protocol_name(port_protocol(protocol));
    match listener_port {
        None => format!("cds_ingress_{mesh}_{gateway}_self_redirect_{protocol}_{egress_port}"),
        Some(port) => {
            format!("cds_ingress_{mesh}_{gateway}_self_redirect_{port}_{protocol}_{egress_port}")
        }
    }
}

/// Translates `snapshot` for the virtual gateway `proxy` (see the module documentation).
///
/// Errors: the gateway does not exist (yet) ([`TranslateError::VirtualGatewayNotFound`]; the
/// ADS server keeps the proxy waiting). Problems inside the mesh (a target service that does not
/// exist, an unusable regular expression) are skipped or answered, never sent to Envoy.
pub(crate) fn translate(
    snapshot: &MeshSnapshot,
    target_clusters: &mut TargetClusters,
    proxy: &ProxyIdentity,
    options: &ProxyOptions,
) -> Result<SharedResources, TranslateError> {
    let gateway = snapshot.virtual_gateways.get(&proxy.name).ok_or_else(|| {
        TranslateError::VirtualGatewayNotFound {
            mesh: proxy.mesh.clone(),
            name: proxy.name.clone(),
        }
    })?;
    tls::check_gateway(gateway, options.identity)?;
    let mesh = snapshot.mesh_name();
    let loopback = loopback(&options.listen_address);
    let routes = ordered_gateway_routes(snapshot, &gateway.virtual_gateway_name);

    // Hop 2 first: the egress table tells which targets are reachable.
    let targets: BTreeSet<&str> = routes
        .iter()
        .filter_map(|r| target_of(r))
        .map(|t| t.virtual_service.virtual_service_name.as_str())
        .collect();
    let egress = route::egress(
        snapshot,
        target_clusters,
        &as_client_node(gateway, &targets),
        options.egress_port,
        None,
        options.identity,
        options.file_secrets,
    );
    let (egress_routes, reachable) = gateway_egress_routes(egress.route_configuration);
    let mut clusters: BTreeMap<String, Arc<XdsCluster>> = egress.clusters;
    let mut route_configurations = BTreeMap::new();
    let mut listeners = Vec::new();

    let access_log = listener::access_logs(logging(gateway).as_ref());
    let gateway_listeners = listeners_of(gateway, options.egress_port);
    let single = gateway_listeners.len() == 1;
    for (port, protocol, gateway_listener) in &gateway_listeners {
        let cluster = self_redirect_cluster(
            mesh,
            &gateway.virtual_gateway_name,
            gateway_listener,
            (!single).then_some(*port),
            &loopback,
            options.egress_port,
        );
        let rc = listener_routes(*port, *protocol, &routes, &cluster.name, &reachable);
        let mut filter = listener::http_connection_manager(
            INGRESS_STAT_PREFIX,
            &rc.name,
            &HcmExtras {
                access_log: access_log.clone(),
                tracing: options.tracing,
                ..Default::default()
            },
        );
        if let Some(policy) = &gateway_listener.health_check {
            filter = with_health_check(filter, policy);
        }
        let chain = listener::filter_chain(
            format!(
                "ingress_{}_{port}",
                names::protocol_name(port_protocol(*protocol))
            ),
            None,
            filter,
        );
        let server_tls = gateway_listener
            .tls
            .as_ref()
            .map(|t| tls::ServerTls::from(t).with_file_secrets(options.file_secrets));
        let (chains, inspect) = tls::chains(chain, server_tls.as_ref(), port_protocol(*protocol));
        let mut gateway_listener = listener::listener(
            names::ingress_listener(&options.listen_address, *port),
            &options.listen_address,
            *port,
            Direction::Ingress,
            false,
            chains,
            None,
        );
        if inspect {
            tls::add_inspector(&mut gateway_listener, &[]);
        }
        listeners.push(gateway_listener);
        route_configurations.insert(rc.name.clone(), rc);
        clusters.insert(cluster.name.clone(), Arc::new(cluster));
    }

    // The egress hop only exists for the gateway's own listeners: none, no hop.
    if !gateway_listeners.is_empty() {
        let hcm = listener::http_connection_manager(
            EGRESS_STAT_PREFIX,
            &egress_routes.name,
            &HcmExtras {
                tracing: options.tracing,
                grpc_stats: options.stats_intake,
                ..Default::default()
            },
        );
        listeners.push(listener::listener(
            names::egress_listener(&loopback, options.egress_port),
            &loopback,
            options.egress_port,
            Direction::Egress,
            false,
            vec![listener::filter_chain("egress_http".to_string(), None, hcm)],
            None,
        ));
        route_configurations.insert(egress_routes.name.clone(), egress_routes);
    } else {
        clusters.clear();
    }
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(SharedResources {
        listeners,
        route_configurations: route_configurations.into_values().collect(),
        clusters: clusters.into_values().collect(),
        cluster_load_assignments: Vec::new(),
    })
}

/// The loopback address of the family Envoy listens on: the egress hop never leaves the host,
/// so it is not exposed on the gateway's public address.
fn loopback(listen_address: &str) -> String {
    if listen_address.contains(':') {
        "::1".to_string()
    } else {
        "127.0.0.1".to_string()
    }
}

/// App Mesh's virtual-gateway protocols are a subset of the listener protocols.
fn port_protocol(protocol: VirtualGatewayPortProtocol) -> PortProtocol {
    match protocol {
        VirtualGatewayPortProtocol::Http => PortProtocol::Http,
        VirtualGatewayPortProtocol::Http2 => PortProtocol::Http2,
        VirtualGatewayPortProtocol::Grpc => PortProtocol::Grpc,
    }
}

/// The gateway's listeners by port; a port listed twice (the API forbids it) keeps the first,
/// and a port equal to the egress port is left out (Envoy would reject two listeners there).
fn listeners_of(
    gateway: &VirtualGatewayData,
    egress_port: u16,
) -> Vec<(u16, VirtualGatewayPortProtocol, &VirtualGatewayListener)> {
    let mut seen = BTreeSet::new();
    gateway
        .spec
        .listeners
        .iter()
        .filter_map(|l| {
            let port = route::port(l.port_mapping.port)?;
            (port != egress_port && seen.insert(port)).then_some((port, l.port_mapping.protocol, l))
        })
        .collect()
}

/// The gateway's `logging` in the shape virtual nodes use (the two are the same App Mesh
/// structure under different names), so that gateways log exactly like nodes do.
fn logging(gateway: &VirtualGatewayData) -> Option<Logging> {
    let weft_model::shapes::VirtualGatewayAccessLog::File(file) =
        gateway.spec.logging.as_ref()?.access_log.as_ref()?;
    Some(Logging {
        access_log: Some(AccessLog::File(FileAccessLog {
            format: file.format.clone(),
            path: file.path.clone(),
        })),
    })
}

/// The gateway seen as a client whose backends are the targets of its routes, so that the
/// egress table is built by exactly the code that builds a virtual node's (same virtual hosts,
/// routes, weights, retries, timeouts and clusters). Never stored or served.
fn as_client_node(gateway: &VirtualGatewayData, targets: &BTreeSet<&str>) -> VirtualNodeData {
    VirtualNodeData {
        mesh_name: gateway.mesh_name.clone(),
        metadata: ResourceMetadata {
            arn: gateway.metadata.arn.clone(),
            created_at: gateway.metadata.created_at,
            last_updated_at: gateway.metadata.last_updated_at,
            mesh_owner: gateway.metadata.mesh_owner.clone(),
            resource_owner: gateway.metadata.resource_owner.clone(),
            uid: gateway.metadata.uid.clone(),
            version: gateway.metadata.version,
        },
        spec: VirtualNodeSpec {
            // The gateway's client policy: App Mesh gives gateways backend defaults only.
            backend_defaults: gateway
                .spec
                .backend_defaults
                .as_ref()
                .map(tls::gateway_backend_defaults),
            backends: Some(
                targets
                    .iter()
                    .map(|service| {
                        Backend::VirtualService(VirtualServiceBackend {
                            client_policy: None,
                            virtual_service_name: (*service).to_string(),
                        })
                    })
                    .collect(),
            ),
            ..Default::default()
        },
        status: VirtualNodeStatus {
            status: VirtualNodeStatusCode::Active,
        },
        virtual_node_name: gateway.virtual_gateway_name.clone(),
    }
}

/// Turns a virtual node egress table into the gateway's egress table: one `*` virtual host in
/// which every route of the service known as `d` (each domain `d` of its virtual host:
/// `<service>`, `<service>:<port>`) also requires `x-weft-gateway-target: d`. Returns the table
/// and the target names it can route. CONNECT tunnels (`tcp` providers) are dropped: gateway
/// routes are HTTP, HTTP/2 and gRPC only.
fn gateway_egress_routes(rc: XdsRouteConfiguration) -> (XdsRouteConfiguration, BTreeSet<String>) {
    let mut routes = Vec::new();
    let mut reachable = BTreeSet::new();
    for vhost in &rc.virtual_hosts {
        for domain in &vhost.domains {
            let mut any = false;
            for route in &vhost.routes {
                let Some(mut m) = route.r#match.clone() else {
                    continue;
                };
                if matches!(m.path_specifier, Some(XdsPathSpecifier::ConnectMatcher(_))) {
                    continue;
                }
                m.headers.insert(0, exact_header(TARGET_HEADER, domain));
                routes.push(XdsRoute {
                    r#match: Some(m),
                    ..route.clone()
                });
                any = true;
            }
            if any {
                reachable.insert(domain.clone());
            }
        }
    }
    let table = XdsRouteConfiguration {
        name: rc.name,
        virtual_hosts: vec![XdsVirtualHost {
            name: "gateway_targets".to_string(),
            domains: vec!["*".to_string()],
            routes,
            ..Default::default()
        }],
        // Internal to the gateway: the upstream never sees it.
        request_headers_to_remove: vec![TARGET_HEADER.to_string()],
        ..Default::default()
    };
    (table, reachable)
}

fn exact_header(name: &str, value: &str) -> XdsHeaderMatcher {
    XdsHeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(XdsHeaderMatchSpecifier::StringMatch(XdsStringMatcher {
            match_pattern: Some(XdsMatchPattern::Exact(value.to_string())),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The self-redirect cluster of one gateway listener: a STATIC endpoint at the gateway Envoy's
/// own egress listener, speaking the listener's protocol (HTTP/2 for `http2` and `grpc`), with
/// the listener's connection pool as its circuit breakers.
///
/// Built by the same code as a virtual node's local-app cluster ([`cluster::ingress`]), whose
/// "app" here is the egress hop: the pool semantics are App Mesh's destination-side pool in
/// both cases (virtual_gateways.md and virtual_nodes.md, "Enable connection pool").
fn self_redirect_cluster(
    mesh: &str,
    gateway: &str,
    gateway_listener: &VirtualGatewayListener,
    listener_port: Option<u16>,
    loopback: &str,
    egress_port: u16,
) -> XdsCluster {
    let protocol = gateway_listener.port_mapping.protocol;
    let port = route::port(gateway_listener.port_mapping.port).unwrap_or(egress_port);
    let as_node_listener = Listener {
        connection_pool: gateway_listener
            .connection_pool
            .as_ref()
            .map(|pool| match pool {
                VirtualGatewayConnectionPool::Http(p) => {
                    VirtualNodeConnectionPool::Http(VirtualNodeHttpConnectionPool {
                        max_connections: p.max_connections,
                        max_pending_requests: p.max_pending_requests,
                    })
                }
                VirtualGatewayConnectionPool::Http2(p) => {
                    VirtualNodeConnectionPool::Http2(VirtualNodeHttp2ConnectionPool {
                        max_requests: p.max_requests,
                    })
                }
                VirtualGatewayConnectionPool::Grpc(VirtualGatewayGrpcConnectionPool {
                    max_requests,
                }) => VirtualNodeConnectionPool::Grpc(VirtualNodeGrpcConnectionPool {
                    max_requests: *max_requests,
                }),
            }),
        // The gateway listener's health check is answered by the gateway, not sent by it
        // (see `with_health_check`).
        health_check: None,
        outlier_detection: None,
        port_mapping: PortMapping {
            port: i32::from(port),
            protocol: port_protocol(protocol),
        },
        timeout: None,
        tls: None,
    };
    let mut options = ProxyOptions::explicit();
    options.app_address = loopback.to_string();
    options.app_ports.insert(port, egress_port);
    let mut cluster = cluster::ingress(mesh, gateway, &as_node_listener, port, &options);
    cluster.name = self_redirect_cluster_name(mesh, gateway, listener_port, protocol, egress_port);
    if let Some(assignment) = &mut cluster.load_assignment {
        assignment.cluster_name = cluster.name.clone();
    }
    cluster
}

/// The gateway listener's health check (virtual_gateways.md, "Enable health check"). The
/// policy is what the load balancer in front of the gateway (App Mesh: the target group) checks
/// the gateway listener with; interval, timeout and thresholds belong to that checker. Envoy's
/// part is the health check filter in pass-through mode on the policy's path (`/` by default;
/// the gRPC health-checking path for `grpc`): the check still goes through the gateway routes
/// to the mesh like any request, but once the gateway Envoy is failing or draining
/// (`/healthcheck/fail`, shutdown), Envoy answers it 503 itself so the load balancer takes the
/// gateway out before it stops
/// (<https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/health_check_filter>).
fn with_health_check(filter: XdsFilter, policy: &VirtualGatewayHealthCheckPolicy) -> XdsFilter {
    let Some(XdsFilterConfigType::TypedConfig(any)) = &filter.config_type else {
        return filter;
    };
    if any.type_url != XdsHttpConnectionManager::type_url() {
        return filter;
    }
    let Ok(mut hcm) = XdsHttpConnectionManager::decode(any.value.as_slice()) else {
        return filter;
    };
    let path = match policy.protocol {
        VirtualGatewayPortProtocol::Grpc => GRPC_HEALTH_PATH.to_string(),
        VirtualGatewayPortProtocol::Http | VirtualGatewayPortProtocol::Http2 => policy
            .path
            .clone()
            .filter(|p| p.starts_with('/'))
            .unwrap_or_else(|| "/".to_string()),
    };
    let health_check = XdsHealthCheckFilter {
        pass_through_mode: Some(BoolValue { value: true }),
        headers: vec![exact_header(":path", &path)],
        ..Default::default()
    };
    hcm.http_filters.insert(
        0,
        XdsHttpFilter {
            name: HEALTH_CHECK_FILTER.to_string(),
            config_type: Some(XdsHttpFilterConfigType::TypedConfig(pack_any(health_check))),
            ..Default::default()
        },
    );
    XdsFilter {
        name: filter.name,
        config_type: Some(XdsFilterConfigType::TypedConfig(pack_any(hcm))),
    }
}

/// The gateway routes of `gateway` in matching order: by `priority` (0 first, unset after all
/// set), then the most specific path first — exact paths, regular expressions, then the longest
/// prefix ("a request is matched to the route with the longest prefix", gateway-routes.md) —
/// then by name, so that the order depends on nothing but the mesh.
fn ordered_gateway_routes<'a>(
    snapshot: &'a MeshSnapshot,
    gateway: &str,
) -> Vec<&'a GatewayRouteData> {
    let mut routes: Vec<&GatewayRouteData> = snapshot
        .gateway_routes
        .range((gateway.to_string(), String::new())..)
        .take_while(|((g, _), _)| g == gateway)
        .map(|(_, r)| r)
        .collect();
    routes.sort_by_key(|r| {
        (
            r.spec.priority.is_none(),
            r.spec.priority,
            Reverse(specificity(r)),
            r.gateway_route_name.clone(),
        )
    });
    routes
}

/// How specific a gateway route's path match is: exact beats regex beats any prefix; longer
/// prefixes beat shorter ones.
fn specificity(route: &GatewayRouteData) -> usize {
    let spec = &route.spec;
    if let Some(http) = spec.http_route.as_ref().or(spec.http2_route.as_ref()) {
        let m = &http.r#match;
        if m.path.as_ref().is_some_and(|p| p.exact.is_some()) {
            return usize::MAX;
        }
        if m.path.as_ref().is_some_and(|p| p.regex.is_some()) {
            return usize::MAX - 1;
        }
        return m.prefix.as_deref().unwrap_or("/").len();
    }
    if let Some(grpc) = &spec.grpc_route {
        return grpc
            .r#match
            .service_name
            .as_ref()
            .map_or(1, |s| s.len() + 2);
    }
    0
}

fn target_of(route: &GatewayRouteData) -> Option<&GatewayRouteTarget> {
    let spec = &route.spec;
    if let Some(http) = spec.http_route.as_ref().or(spec.http2_route.as_ref()) {
        return Some(&http.action.target);
    }
    spec.grpc_route.as_ref().map(|g| &g.action.target)
}

/// The name the egress hop knows a target by: `<service>:<port>` when the route names the
/// provider port, else `<service>` (its lowest HTTP-family port), as a virtual node's egress
/// does for `Host`.
fn target_name(target: &GatewayRouteTarget) -> String {
    let service = &target.virtual_service.virtual_service_name;
    match target.port {
        Some(port) => format!("{service}:{port}"),
        None => service.clone(),
    }
}

/// The route table of one gateway listener: the gateway routes of its protocol (an `httpRoute`
/// serves `http` listeners, an `http2Route` `http2` ones, a `grpcRoute` `grpc` ones) whose
/// `match.port`, if any, is this listener's port.
fn listener_routes(
    port: u16,
    protocol: VirtualGatewayPortProtocol,
    routes: &[&GatewayRouteData],
    self_redirect: &str,
    reachable: &BTreeSet<String>,
) -> XdsRouteConfiguration {
    let xds_routes = routes
        .iter()
        .filter_map(|r| {
            let spec = &r.spec;
            let name = &r.gateway_route_name;
            match protocol {
                VirtualGatewayPortProtocol::Http => spec
                    .http_route
                    .as_ref()
                    .and_then(|h| http_route(name, h, port, self_redirect, reachable)),
                VirtualGatewayPortProtocol::Http2 => spec
                    .http2_route
                    .as_ref()
                    .and_then(|h| http_route(name, h, port, self_redirect, reachable)),
                VirtualGatewayPortProtocol::Grpc => spec
                    .grpc_route
                    .as_ref()
                    .and_then(|g| grpc_route(name, g, port, self_redirect, reachable)),
            }
        })
        .collect();
    let protocol_name = names::protocol_name(port_protocol(protocol));
    XdsRouteConfiguration {
        name: names::ingress_route_config(port_protocol(protocol), port),
        virtual_hosts: vec![XdsVirtualHost {
            name: format!("ingress_{protocol_name}_{port}"),
            domains: vec!["*".to_string()],
            routes: xds_routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One HTTP or HTTP/2 gateway route; `None` when it is for another port or can never match.
///
/// Matches as a router's HTTP route does ([`route::http_match`]: prefix, exact or regex path,
/// headers, method, query parameters), plus the hostname. Rewrites (gateway-routes.md):
/// - prefix match: the matched prefix becomes `/` by default (`/chapter/1` → `/1`), is kept with
///   `defaultPrefix: DISABLED`, or becomes `prefix.value`;
/// - `path.exact`: the whole path becomes that value (any match; none by default);
/// - hostname: `Host` becomes the target virtual service's name unless
///   `defaultTargetHostname: DISABLED`.
fn http_route(
    name: &str,
    http: &HttpGatewayRoute,
    port: u16,
    self_redirect: &str,
    reachable: &BTreeSet<String>,
) -> Option<XdsRoute> {
    let m = &http.r#match;
    if m.port.is_some_and(|p| i32::from(port) != p) {
        return None;
    }
    let as_route_match = HttpRouteMatch {
        headers: m.headers.as_ref().map(|headers| {
            headers
                .iter()
                .map(|h| HttpRouteHeader {
                    invert: h.invert,
                    r#match: h.r#match.clone(),
                    name: h.name.clone(),
                })
                .collect()
        }),
        method: m.method,
        path: m.path.clone(),
        port: None,
        prefix: m.prefix.clone(),
        query_parameters: m.query_parameters.clone(),
        scheme: None,
    };
    let mut route_match = route::http_match(&as_route_match)?;
    if let Some(hostname) = &m.hostname {
        route_match.headers.push(hostname_matcher(hostname)?);
    }
    let target = &http.action.target;
    let rewrite = http.action.rewrite.as_ref();
    let mut action = forward(target, self_redirect, reachable);
    if let XdsAction::Route(route_action) = &mut action {
        host_rewrite(
            route_action,
            target,
            rewrite.and_then(|r| r.hostname.as_ref()),
        );
        if let Some(exact) = rewrite
            .and_then(|r| r.path.as_ref())
            .and_then(|p| p.exact.as_ref())
        {
            route_action.regex_rewrite = Some(XdsRegexMatchAndSubstitute {
                pattern: Some(regex("^.*$")),
                substitution: escape_substitution(exact),
            });
        } else if let Some(XdsPathSpecifier::Prefix(prefix)) = &route_match.path_specifier {
            let prefix_rewrite = rewrite.and_then(|r| r.prefix.as_ref());
            let value = prefix_rewrite.and_then(|p| p.value.as_ref());
            let disabled = prefix_rewrite.and_then(|p| p.default_prefix)
                == Some(DefaultGatewayRouteRewrite::Disabled);
            if let Some(value) = value {
                route_action.prefix_rewrite = value.clone();
            } else if !disabled && prefix != "/" {
                // Envoy's `prefix_rewrite: "/"` would turn `/chapter/1` into `//1` (Envoy's
                // route docs: stripping a prefix needs care with trailing slashes); the regex
                // also takes the slashes after the prefix, as App Mesh's example shows
                // (virtual_gateways.md: `/chapter/1` → `/1`).
                route_action.regex_rewrite = Some(XdsRegexMatchAndSubstitute {
                    pattern: Some(regex(&format!("^{}/*", regex::escape(prefix)))),
                    substitution: "/".to_string(),
                });
            }
        }
    }
    Some(gateway_route(name, route_match, action, target))
}

/// One gRPC gateway route; `None` when it is for another port or can never match.
///
/// gRPC calls are `POST /<service>/<method>`: `serviceName` becomes the path prefix
/// `/<service>/` (every method); metadata entries are request headers; only gRPC requests
/// (`content-type: application/grpc`) match. The hostname rewrite applies as for HTTP.
fn grpc_route(
    name: &str,
    grpc: &GrpcGatewayRoute,
    port: u16,
    self_redirect: &str,
    reachable: &BTreeSet<String>,
) -> Option<XdsRoute> {
    let m = &grpc.r#match;
    if m.port.is_some_and(|p| i32::from(port) != p) {
        return None;
    }
    let as_route_match = HttpRouteMatch {
        headers: m.metadata.as_ref().map(|metadata| {
            metadata
                .iter()
                .map(|md| HttpRouteHeader {
                    invert: md.invert,
                    r#match: md.r#match.clone().map(|mm| match mm {
                        GrpcMetadataMatchMethod::Exact(v) => HeaderMatchMethod::Exact(v),
                        GrpcMetadataMatchMethod::Prefix(v) => HeaderMatchMethod::Prefix(v),
                        GrpcMetadataMatchMethod::Suffix(v) => HeaderMatchMethod::Suffix(v),
                        GrpcMetadataMatchMethod::Regex(v) => HeaderMatchMethod::Regex(v),
                        GrpcMetadataMatchMethod::Range(r) => HeaderMatchMethod::Range(r),
                    }),
                    name: md.name.clone(),
                })
                .collect()
        }),
        prefix: Some(match &m.service_name {
            Some(service) => format!("/{service}/"),
            None => "/".to_string(),
        }),
        ..Default::default()
    };
    let mut route_match = route::http_match(&as_route_match)?;
    route_match.grpc = Some(XdsGrpcRouteMatchOptions {});
    if let Some(hostname) = &m.hostname {
        route_match.headers.push(hostname_matcher(hostname)?);
    }
    let target = &grpc.action.target;
    let mut action = forward(target, self_redirect, reachable);
    if let XdsAction::Route(route_action) = &mut action {
        host_rewrite(
            route_action,
            target,
            grpc.action
                .rewrite
                .as_ref()
                .and_then(|r| r.hostname.as_ref()),
        );
    }
    Some(gateway_route(name, route_match, action, target))
}

/// The first hop's action: to the self-redirect cluster, naming the target. A target the mesh
/// cannot route (no such service, no provider, an unknown port) is answered 503 by the gateway,
/// so that its requests do not fall through to a lower-priority route (as a router route with
/// no reachable target does).
///
/// No timeout and no retries here: the target service's route (hop 2) carries App Mesh's
/// timeouts and retry policy; a second set on this hop would only cut them short or multiply
/// them.
fn forward(
    target: &GatewayRouteTarget,
    self_redirect: &str,
    reachable: &BTreeSet<String>,
) -> XdsAction {
    let target_name = target_name(target);
    if !reachable.contains(&target_name) {
        return XdsAction::DirectResponse(XdsDirectResponseAction {
            status: 503,
            ..Default::default()
        });
    }
    XdsAction::Route(XdsRouteAction {
        cluster_specifier: Some(XdsClusterSpecifier::Cluster(self_redirect.to_string())),
        timeout: Some(defaults::seconds(0)),
        idle_timeout: Some(defaults::seconds(0)),
        ..Default::default()
    })
}

/// The gateway route forwarding `action` to `target`: it names the target in
/// [`TARGET_HEADER`], overwriting whatever a client may have sent in that header, and counts
/// its requests under [`names::gateway_route_stat_prefix`].
fn gateway_route(
    name: &str,
    route_match: XdsRouteMatch,
    action: XdsAction,
    target: &GatewayRouteTarget,
) -> XdsRoute {
    let forwards = matches!(action, XdsAction::Route(_));
    XdsRoute {
        name: name.to_string(),
        // Per-route stats for the dashboard (`Route.stat_prefix`,
        // https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto).
        stat_prefix: names::gateway_route_stat_prefix(
            &target.virtual_service.virtual_service_name,
            name,
        ),
        r#match: Some(route_match),
        action: Some(action),
        request_headers_to_add: if forwards {
            vec![XdsHeaderValueOption {
                header: Some(XdsHeaderValue {
                    key: TARGET_HEADER.to_string(),
                    value: target_name(target),
                    ..Default::default()
                }),
                append_action: XdsHeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    }
}

/// `Host` becomes the target virtual service's name unless `defaultTargetHostname: DISABLED`
/// (virtual_gateways.md: "rewrites the incoming request's hostname to the Gateway Route target
/// Virtual Service's name … by default").
fn host_rewrite(
    action: &mut XdsRouteAction,
    target: &GatewayRouteTarget,
    rewrite: Option<&GatewayRouteHostnameRewrite>,
) {
    if rewrite.and_then(|r| r.default_target_hostname) != Some(DefaultGatewayRouteRewrite::Disabled)
    {
        action.host_rewrite_specifier = Some(XdsHostRewriteSpecifier::HostRewriteLiteral(
            target.virtual_service.virtual_service_name.clone(),
        ));
    }
}

/// A hostname match on `:authority` (HTTP/1.1 `Host`), case-insensitive as host names are, and
/// whatever port the client added (`Host: www.example.com:8080` is host `www.example.com`).
/// `None` when the match names nothing (the API requires exactly one of exact and suffix).
fn hostname_matcher(m: &GatewayRouteHostnameMatch) -> Option<XdsHeaderMatcher> {
    let pattern = match (&m.exact, &m.suffix) {
        (Some(exact), _) if !exact.is_empty() => format!("^{}", regex::escape(exact)),
        (_, Some(suffix)) if !suffix.is_empty() => format!("^.*{}", regex::escape(suffix)),
        _ => return None,
    };
    Some(XdsHeaderMatcher {
        name: ":authority".to_string(),
        header_match_specifier: Some(XdsHeaderMatchSpecifier::StringMatch(XdsStringMatcher {
            match_pattern: Some(XdsMatchPattern::SafeRegex(regex(&format!(
                "(?i){pattern}(:[0-9]+)?$"
            )))),
            ..Default::default()
        })),
        ..Default::default()
    })
}

fn regex(pattern: &str) -> XdsRegexMatcher {
    XdsRegexMatcher {
        regex: pattern.to_string(),
        ..Default::default()
    }
}

/// A literal for an Envoy regex substitution, where `\N` is a capture group.
fn escape_substitution(literal: &str) -> String {
    literal.replace('\\', "\\\\")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn self_redirect_clusters_follow_app_mesh_names_for_one_and_several_listeners() {
        assert_eq!(
            self_redirect_cluster_name(
                "apps",
                "edge",
                None,
                VirtualGatewayPortProtocol::Http,
                15001
            ),
            "cds_ingress_apps_edge_self_redirect_http_15001"
        );
        assert_eq!(
            self_redirect_cluster_name(
                "apps",
                "edge",
                Some(9080),
                VirtualGatewayPortProtocol::Grpc,
                15001
            ),
            "cds_ingress_apps_edge_self_redirect_9080_grpc_15001"
        );
    }

    #[test]
    fn a_hostname_match_ignores_case_and_port_and_a_suffix_matches_the_end() {
        let re = |m: GatewayRouteHostnameMatch| {
            let h = hostname_matcher(&m).unwrap();
            let Some(XdsHeaderMatchSpecifier::StringMatch(s)) = h.header_match_specifier else {
                panic!()
            };
            let Some(XdsMatchPattern::SafeRegex(r)) = s.match_pattern else {
                panic!()
            };
            // RE2 (Envoy) reads `(?i)`; this crate's `regex` lacks Unicode case folding, so the
            // case-insensitive flag is checked here and lower-case input used below.
            let pattern = r.regex.strip_prefix("(?i)").expect("case-insensitive");
            regex::Regex::new(pattern).unwrap()
        };
        let exact = re(GatewayRouteHostnameMatch {
            exact: Some("www.example.com".into()),
            suffix: None,
        });
        assert!(exact.is_match("www.example.com"));
        assert!(exact.is_match(&"WWW.Example.com:8080".to_ascii_lowercase()));
        assert!(!exact.is_match("wwwxexample.com"));
        assert!(!exact.is_match("a.www.example.com"));
        let suffix = re(GatewayRouteHostnameMatch {
            exact: None,
            suffix: Some(".example.com".into()),
        });
        assert!(suffix.is_match("api.example.com:443"));
        assert!(!suffix.is_match("example.org"));
        assert!(hostname_matcher(&GatewayRouteHostnameMatch::default()).is_none());
    }

    #[test]
    fn the_default_prefix_rewrite_takes_the_slashes_after_the_prefix() {
        let pattern = format!("^{}/*", regex::escape("/chapter"));
        let re = regex::Regex::new(&pattern).unwrap();
        assert_eq!(re.replace("/chapter/1", "/"), "/1");
        assert_eq!(re.replace("/chapter", "/"), "/");
        assert_eq!(re.replace("/chapter1", "/"), "/1");
    }
}
