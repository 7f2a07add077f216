//! Route configurations: the egress table (one virtual host per backend virtual service) and
//! the ingress tables (everything to the local application).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::TransportSocket as XdsTransportSocket;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as XdsHeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier as XdsQueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action as XdsAction;
use envoy_types::pb::envoy::config::route::v3::route_action::upgrade_config::ConnectConfig as XdsConnectConfig;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier as XdsClusterSpecifier, UpgradeConfig as XdsUpgradeConfig,
};
use envoy_types::pb::envoy::config::route::v3::route_match::{
    ConnectMatcher as XdsConnectMatcher, GrpcRouteMatchOptions as XdsGrpcRouteMatchOptions,
    PathSpecifier as XdsPathSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight as XdsClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction as XdsDirectResponseAction, HeaderMatcher as XdsHeaderMatcher,
    QueryParameterMatcher as XdsQueryParameterMatcher, RetryPolicy as XdsRetryPolicy,
    Route as XdsRoute, RouteAction as XdsRouteAction, RouteConfiguration as XdsRouteConfiguration,
    RouteMatch as XdsRouteMatch, VirtualHost as XdsVirtualHost,
    WeightedCluster as XdsWeightedCluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as XdsMatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher as XdsRegexMatcher, StringMatcher as XdsStringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::Int64Range as XdsInt64Range;
use envoy_types::pb::google::protobuf::{Duration as XdsDuration, UInt32Value};
use weft_model::shapes::{
    Duration, GrpcRetryPolicyEvent, GrpcRoute, GrpcRouteMetadataMatchMethod, HeaderMatchMethod,
    HttpMethod, HttpRoute, HttpRouteMatch, HttpScheme, HttpTimeout, Listener, ListenerTimeout,
    PortProtocol, RouteData, ServiceDiscovery, TcpRetryPolicyEvent, TcpRoute, VirtualNodeData,
    VirtualServiceProvider, WeightedTarget,
};

use prost::Message;

use crate::defaults::{self, IDLE_TIMEOUT_SECS, PER_REQUEST_TIMEOUT_SECS};
use crate::listener::TcpTarget;
use crate::{cluster, names, tls, MeshSnapshot};

/// Whether a listener protocol is served by an HTTP connection manager.
pub(crate) fn is_http_family(protocol: PortProtocol) -> bool {
    matches!(
        protocol,
        PortProtocol::Http | PortProtocol::Http2 | PortProtocol::Grpc
    )
}

/// A port from the API's `i32`, if it is a usable TCP port.
pub(crate) fn port(value: i32) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

/// The per-request and idle timeouts of a node listener (`ListenerTimeout` is a union by
/// protocol; `tcp` has no per-request timeout).
pub(crate) fn listener_timeouts(listener: &Listener) -> (Option<&Duration>, Option<&Duration>) {
    match &listener.timeout {
        Some(ListenerTimeout::Http(t)) | Some(ListenerTimeout::Http2(t)) => {
            (t.per_request.as_ref(), t.idle.as_ref())
        }
        Some(ListenerTimeout::Grpc(t)) => (t.per_request.as_ref(), t.idle.as_ref()),
        Some(ListenerTimeout::Tcp(t)) => (None, t.idle.as_ref()),
        None => (None, None),
    }
}

/// The ingress route table for one HTTP-family node listener: every request to the local
/// application, bounded by the listener's timeouts (virtual_nodes.md, "Timeouts": per request
/// 15 s and idle 300 s by default, 0 disables). No retries: App Mesh retries at the client.
pub(crate) fn ingress(
    protocol: PortProtocol,
    port: u16,
    cluster_name: String,
    listener: &Listener,
) -> XdsRouteConfiguration {
    let (per_request, idle) = listener_timeouts(listener);
    XdsRouteConfiguration {
        name: names::ingress_route_config(protocol, port),
        virtual_hosts: vec![XdsVirtualHost {
            name: format!("ingress_{}_{port}", names::protocol_name(protocol)),
            domains: vec!["*".to_string()],
            routes: vec![XdsRoute {
                name: "ingress".to_string(),
                r#match: Some(prefix_match("/")),
                action: Some(XdsAction::Route(XdsRouteAction {
                    cluster_specifier: Some(XdsClusterSpecifier::Cluster(cluster_name)),
                    timeout: Some(defaults::timeout_or(per_request, PER_REQUEST_TIMEOUT_SECS)),
                    idle_timeout: Some(defaults::timeout_or(idle, IDLE_TIMEOUT_SECS)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> XdsRouteMatch {
    XdsRouteMatch {
        path_specifier: Some(XdsPathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    }
}

/// The egress route table of one node and the clusters its routes point at.
pub(crate) struct Egress {
    /// `rds_egress_http_<egress port>`.
    pub route_configuration: XdsRouteConfiguration,
    /// Every cluster a route points at, by name. Nothing else: this is what scopes a proxy's
    /// clusters to its backends.
    pub clusters: BTreeMap<String, Arc<XdsCluster>>,
    /// The HTTP-family ports of the backends' providers (transparent mode matches these).
    pub ports: BTreeSet<u16>,
    /// The `tcp` ports of the backends' providers and where transparent mode sends them.
    pub tcp_ports: BTreeMap<u16, TcpPlan>,
}

/// Where transparent mode sends connections to one `tcp` port: a TCP proxy to the targets of
/// the first route, with that route's idle timeout.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TcpPlan {
    /// The cluster(s).
    pub target: TcpTarget,
    /// The idle timeout (0 disables).
    pub idle_timeout: XdsDuration,
}

/// Builds the egress route table of `node`: one virtual host per backend virtual service (per
/// provider port when the provider has several), with `passthrough` (a cluster name) as a
/// catch-all `*` host when the mesh lets unknown traffic out. `identity`: whether the client
/// proxy has a Weft identity (see `tls.rs`).
pub(crate) fn egress(
    snapshot: &MeshSnapshot,
    targets: &mut TargetClusters,
    node: &VirtualNodeData,
    egress_port: u16,
    passthrough: Option<&str>,
    identity: bool,
    file_secrets: bool,
) -> Egress {
    let mut builder = EgressBuilder {
        snapshot,
        targets,
        client: node,
        identity,
        file_secrets,
        service: String::new(),
        clusters: BTreeMap::new(),
        ports: BTreeSet::new(),
        tcp_ports: BTreeMap::new(),
        domains: BTreeSet::new(),
        virtual_hosts: Vec::new(),
    };
    // A backend listed twice is one virtual host; BTreeSet also fixes the order.
    let services: BTreeSet<&str> = node
        .spec
        .backends
        .iter()
        .flatten()
        .map(|backend| match backend {
            weft_model::shapes::Backend::VirtualService(vs) => vs.virtual_service_name.as_str(),
        })
        .collect();
    for service in services {
        builder.service(service);
    }
    if let Some(cluster_name) = passthrough {
        builder.virtual_hosts.push(XdsVirtualHost {
            name: "passthrough".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![XdsRoute {
                name: "passthrough".to_string(),
                r#match: Some(prefix_match("/")),
                action: Some(XdsAction::Route(XdsRouteAction {
                    cluster_specifier: Some(XdsClusterSpecifier::Cluster(cluster_name.to_string())),
                    timeout: Some(defaults::seconds(PER_REQUEST_TIMEOUT_SECS)),
                    idle_timeout: Some(defaults::seconds(IDLE_TIMEOUT_SECS)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    Egress {
        route_configuration: XdsRouteConfiguration {
            name: names::egress_route_config(egress_port),
            virtual_hosts: builder.virtual_hosts,
            ..Default::default()
        },
        clusters: builder.clusters,
        ports: builder.ports,
        tcp_ports: builder.tcp_ports,
    }
}

/// The clusters of weighted targets already built from one snapshot, by target node and
/// target port: a node's cluster is the same for every proxy whose routes reach it, so
/// translating many proxies from one snapshot builds it once.
#[derive(Debug, Default)]
pub(crate) struct TargetClusters {
    by_node: HashMap<String, Vec<PortCluster>>,
    /// The same clusters originating TLS, by name and encoded transport socket: clients with
    /// the same policy for a target share its TLS cluster too.
    with_tls: HashMap<(String, Vec<u8>), Arc<XdsCluster>>,
}

/// A weighted target's port and its cluster (`None`: the target is unreachable).
type PortCluster = (Option<i32>, Option<Arc<XdsCluster>>);

impl TargetClusters {
    /// The cluster of `target` (`None`: unreachable), built on first use.
    fn get(
        &mut self,
        snapshot: &MeshSnapshot,
        target: &WeightedTarget,
    ) -> Option<&Arc<XdsCluster>> {
        let known = self
            .by_node
            .get(target.virtual_node.as_str())
            .is_some_and(|ports| ports.iter().any(|(p, _)| *p == target.port));
        if !known {
            let built = target_cluster(snapshot, target).map(Arc::new);
            self.by_node
                .entry(target.virtual_node.clone())
                .or_default()
                .push((target.port, built));
        }
        self.by_node
            .get(target.virtual_node.as_str())?
            .iter()
            .find(|(p, _)| *p == target.port)?
            .1
            .as_ref()
    }

    /// `cluster` originating TLS through `socket`, built on first use.
    fn with_tls(&mut self, cluster: &XdsCluster, socket: XdsTransportSocket) -> Arc<XdsCluster> {
        let key = (cluster.name.clone(), socket.encode_to_vec());
        Arc::clone(self.with_tls.entry(key).or_insert_with(|| {
            Arc::new(XdsCluster {
                transport_socket: Some(socket),
                ..cluster.clone()
            })
        }))
    }
}

struct EgressBuilder<'a> {
    snapshot: &'a MeshSnapshot,
    targets: &'a mut TargetClusters,
    /// The client: its client policies decide how its clusters originate TLS.
    client: &'a VirtualNodeData,
    /// Whether the client proxy has a Weft identity to present (mesh-wide mutual TLS).
    identity: bool,
    /// Whether the client proxy's agent serves `file` certificates over SDS.
    file_secrets: bool,
    /// The backend virtual service being built (the client policy's backend, and the SNI).
    service: String,
    clusters: BTreeMap<String, Arc<XdsCluster>>,
    ports: BTreeSet<u16>,
    tcp_ports: BTreeMap<u16, TcpPlan>,
    /// Domains already used (lower-cased): Envoy rejects a route table with a duplicate domain.
    domains: BTreeSet<String>,
    virtual_hosts: Vec<XdsVirtualHost>,
}

impl EgressBuilder<'_> {
    fn service(&mut self, service_name: &str) {
        // A backend naming a service that does not exist yet gets nothing (not an error).
        let snapshot = self.snapshot;
        let Some(service) = snapshot.virtual_services.get(service_name) else {
            return;
        };
        self.service = service_name.to_string();
        // A service without a provider gets no virtual host: its name is then unknown to the
        // proxy, so requests get 404 (or leave the mesh under ALLOW_ALL).
        let ports_and_routes: Vec<(u16, PortProtocol, Vec<XdsRoute>)> = match &service.spec.provider
        {
            None => return,
            Some(VirtualServiceProvider::VirtualNode(provider)) => {
                let Some(target) = snapshot.virtual_nodes.get(&provider.virtual_node_name) else {
                    return;
                };
                service_ports(
                    target
                        .spec
                        .listeners
                        .iter()
                        .flatten()
                        .map(|l| &l.port_mapping),
                )
                .into_iter()
                .map(|(port, protocol)| {
                    let route = if is_http_family(protocol) {
                        self.node_provider_route(target, port)
                    } else {
                        self.node_provider_tunnel(target, port)
                    };
                    (port, protocol, vec![route])
                })
                .collect()
            }
            Some(VirtualServiceProvider::VirtualRouter(provider)) => {
                let router_name = provider.virtual_router_name.as_str();
                let Some(router) = snapshot.virtual_routers.get(router_name) else {
                    return;
                };
                let ports = service_ports(
                    router
                        .spec
                        .listeners
                        .iter()
                        .flatten()
                        .map(|l| &l.port_mapping),
                );
                let routes = ordered_routes(snapshot.routes_of(router_name));
                ports
                    .into_iter()
                    .map(|(port, protocol)| {
                        let routes = routes
                            .iter()
                            .filter_map(|route| {
                                if is_http_family(protocol) {
                                    self.router_route(route, port)
                                } else {
                                    let tcp = route.spec.tcp_route.as_ref()?;
                                    self.tcp_route(&route.route_name, tcp, port)
                                }
                            })
                            .collect();
                        (port, protocol, routes)
                    })
                    .collect()
            }
        };
        let single = ports_and_routes.len() == 1;
        // The bare name goes to the lowest HTTP-family port: `Host: svc` carries no port, and a
        // CONNECT authority always does.
        let bare_port = ports_and_routes
            .iter()
            .find(|(_, protocol, _)| is_http_family(*protocol))
            .map(|(port, _, _)| *port);
        for (port, protocol, routes) in ports_and_routes {
            let mut domains = vec![format!("{service_name}:{port}")];
            if bare_port == Some(port) {
                domains.insert(0, service_name.to_string());
            }
            domains.retain(|d| self.domains.insert(d.to_ascii_lowercase()));
            if domains.is_empty() {
                continue;
            }
            if is_http_family(protocol) {
                self.ports.insert(port);
            } else if let Some(plan) = routes.first().and_then(tcp_plan) {
                // Transparent mode can only tell TCP destinations apart by port: the first
                // service (in name order) and its first route own a port.
                self.tcp_ports.entry(port).or_insert(plan);
            }
            self.virtual_hosts.push(XdsVirtualHost {
                name: if single {
                    service_name.to_string()
                } else {
                    format!("{service_name}:{port}")
                },
                domains,
                routes,
                ..Default::default()
            });
        }
    }

    /// The tunnel App Mesh's TCP semantics give a virtual-node provider's `tcp` listener: every
    /// `CONNECT <service>:<port>` to that listener, idle timeout by default (envoy-defaults.md).
    fn node_provider_tunnel(&mut self, target: &VirtualNodeData, port: u16) -> XdsRoute {
        let action = self.action(&[WeightedTarget {
            virtual_node: target.virtual_node_name.clone(),
            port: Some(i32::from(port)),
            weight: 1,
        }]);
        tunnel_route(&target.virtual_node_name, action, None)
    }

    /// One App Mesh `tcp` route as a CONNECT route on router listener `port`; `None` when its
    /// `match.port` names another port.
    fn tcp_route(&mut self, name: &str, tcp: &TcpRoute, port: u16) -> Option<XdsRoute> {
        let route_port = tcp.r#match.as_ref().and_then(|m| m.port);
        if route_port.is_some_and(|p| i32::from(port) != p) {
            return None;
        }
        let action = self.action(&tcp.action.weighted_targets);
        let idle = tcp.timeout.as_ref().and_then(|t| t.idle.as_ref());
        Some(tunnel_route(name, action, idle))
    }

    /// The route App Mesh creates for a virtual-node provider: everything to that node's
    /// listener, with the default timeouts and App Mesh's default retry policy (a node provider
    /// cannot carry a retry policy, envoy-defaults.md).
    fn node_provider_route(&mut self, target: &VirtualNodeData, port: u16) -> XdsRoute {
        let action = self.action(&[WeightedTarget {
            virtual_node: target.virtual_node_name.clone(),
            port: Some(i32::from(port)),
            weight: 1,
        }]);
        XdsRoute {
            name: target.virtual_node_name.clone(),
            r#match: Some(prefix_match("/")),
            action: Some(with_policy(
                action,
                None,
                None,
                Some(defaults::default_retry_policy()),
            )),
            ..Default::default()
        }
    }

    /// One App Mesh route, as served on router listener `port`; `None` when the route does not
    /// apply to that port (its `match.port` names another), is a TCP route (not served by the
    /// HTTP egress listener), or can never match (e.g. an invalid regular expression, which
    /// Envoy would NACK).
    ///
    /// Each carries a `stat_prefix` naming the service, router and route, so that Envoy counts
    /// its requests per route (see [`names::route_stat_prefix`]).
    fn router_route(&mut self, route: &RouteData, port: u16) -> Option<XdsRoute> {
        let spec = &route.spec;
        let stat_prefix =
            names::route_stat_prefix(&self.service, &route.virtual_router_name, &route.route_name);
        if let Some(http) = spec.http_route.as_ref().or(spec.http2_route.as_ref()) {
            let mut xds = self.http_route(&route.route_name, http, port)?;
            xds.stat_prefix = stat_prefix;
            return Some(xds);
        }
        if let Some(grpc) = spec.grpc_route.as_ref() {
            let mut xds = self.grpc_route(&route.route_name, grpc, port)?;
            xds.stat_prefix = stat_prefix;
            return Some(xds);
        }
        None
    }

    fn http_route(&mut self, name: &str, http: &HttpRoute, port: u16) -> Option<XdsRoute> {
        if http.r#match.port.is_some_and(|p| i32::from(port) != p) {
            return None;
        }
        let route_match = http_match(&http.r#match)?;
        let action = self.action(&http.action.weighted_targets);
        let (per_request, idle) = http_timeouts(http.timeout.as_ref());
        let retry = match &http.retry_policy {
            Some(p) => retry_policy(
                p.http_retry_events.as_deref(),
                p.tcp_retry_events.as_deref(),
                None,
                p.max_retries,
                &p.per_retry_timeout,
            ),
            None => Some(defaults::default_retry_policy()),
        };
        Some(XdsRoute {
            name: name.to_string(),
            r#match: Some(route_match),
            action: Some(with_policy(action, per_request, idle, retry)),
            ..Default::default()
        })
    }

    fn grpc_route(&mut self, name: &str, grpc: &GrpcRoute, port: u16) -> Option<XdsRoute> {
        if grpc.r#match.port.is_some_and(|p| i32::from(port) != p) {
            return None;
        }
        let route_match = grpc_match(grpc)?;
        let action = self.action(&grpc.action.weighted_targets);
        let timeout = grpc.timeout.as_ref();
        let retry = match &grpc.retry_policy {
            Some(p) => retry_policy(
                p.http_retry_events.as_deref(),
                p.tcp_retry_events.as_deref(),
                p.grpc_retry_events.as_deref(),
                p.max_retries,
                &p.per_retry_timeout,
            ),
            None => Some(defaults::default_retry_policy()),
        };
        Some(XdsRoute {
            name: name.to_string(),
            r#match: Some(route_match),
            action: Some(with_policy(
                action,
                timeout.and_then(|t| t.per_request.as_ref()),
                timeout.and_then(|t| t.idle.as_ref()),
                retry,
            )),
            ..Default::default()
        })
    }

    /// `cluster` (of `target`) as this client reaches it for the current backend: over TLS
    /// when the client's policy or the target listener says so (see `tls.rs`).
    fn with_tls(&mut self, cluster: Arc<XdsCluster>, target: &WeightedTarget) -> Arc<XdsCluster> {
        let Some((node, listener, port)) = target_listener(self.snapshot, target) else {
            return cluster;
        };
        let socket = tls::upstream(&tls::Origination {
            client: tls::client_policy(self.client, &self.service),
            server: listener.tls.as_ref(),
            port,
            protocol: listener.port_mapping.protocol,
            sni: &self.service,
            discovery_names: tls::discovery_names(node),
            identity: self.identity,
            file_secrets: self.file_secrets,
            mesh_peer: self
                .snapshot
                .mtls
                .is_on()
                .then(|| tls::node_spiffe_id(self.snapshot, &node.virtual_node_name)),
        });
        match socket {
            None => cluster,
            Some(socket) => self.targets.with_tls(&cluster, socket),
        }
    }

    /// Adds `cluster` to the proxy's clusters; returns the name its routes use. A target
    /// reached through two backends whose TLS differs (their client policies, or just the SNI
    /// — each backend's own name) cannot be one cluster: the first backend (in name order)
    /// keeps App Mesh's name, each other one gets its own `<cluster>_<virtual service>`.
    fn claim(&mut self, cluster: Arc<XdsCluster>) -> String {
        match self.clusters.get(&cluster.name) {
            None => {
                let name = cluster.name.clone();
                self.clusters.insert(name.clone(), cluster);
                name
            }
            Some(known) if Arc::ptr_eq(known, &cluster) || **known == *cluster => {
                cluster.name.clone()
            }
            Some(_) => {
                let name = format!("{}_{}", cluster.name, self.service);
                let mut variant = XdsCluster::clone(&cluster);
                variant.name.clone_from(&name);
                if let Some(assignment) = &mut variant.load_assignment {
                    assignment.cluster_name.clone_from(&name);
                }
                self.clusters
                    .entry(name.clone())
                    .or_insert_with(|| Arc::new(variant));
                name
            }
        }
    }

    /// The action for a route's weighted targets. Targets that cannot be reached (deleted node,
    /// no such listener, no service discovery) are left out and the others keep their relative
    /// weights; if none is left, or all weights are 0, the route answers 503 itself, so that
    /// its requests do not fall through to a lower-priority route.
    fn action(&mut self, targets: &[WeightedTarget]) -> XdsAction {
        let mut weights: BTreeMap<String, u32> = BTreeMap::new();
        for target in targets {
            if let Some(cluster) = self.targets.get(self.snapshot, target).cloned() {
                let cluster = self.with_tls(cluster, target);
                let name = self.claim(cluster);
                let weight = u32::try_from(target.weight.clamp(0, 100)).unwrap_or(0);
                *weights.entry(name).or_default() += weight;
            }
        }
        weights.retain(|_, w| *w > 0);
        let specifier = match weights.len() {
            0 => return direct_response(503),
            1 => weights.into_keys().next().map(XdsClusterSpecifier::Cluster),
            _ => Some(XdsClusterSpecifier::WeightedClusters(XdsWeightedCluster {
                clusters: weights
                    .into_iter()
                    .map(|(name, weight)| XdsClusterWeight {
                        name,
                        weight: Some(UInt32Value { value: weight }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })),
        };
        XdsAction::Route(XdsRouteAction {
            cluster_specifier: specifier,
            ..Default::default()
        })
    }
}

/// The cluster for one weighted target: the target node's listener on `target.port`, or its
/// only listener when no port is given (App Mesh requires the port when there are several;
/// we take the first listener rather than fail). DNS discovery gives a DNS cluster, Cloud
/// Map discovery an EDS cluster; a node without service discovery is unreachable.
fn target_cluster(snapshot: &MeshSnapshot, target: &WeightedTarget) -> Option<XdsCluster> {
    let (node, listener, listener_port) = target_listener(snapshot, target)?;
    match node.spec.service_discovery.as_ref()? {
        ServiceDiscovery::Dns(dns) => Some(cluster::egress_dns(
            snapshot.mesh_name(),
            &node.virtual_node_name,
            listener,
            listener_port,
            dns,
            snapshot
                .mesh
                .spec
                .service_discovery
                .as_ref()
                .and_then(|sd| sd.ip_preference),
        )),
        // Endpoints come from Weft's instance registry over EDS; the load assignment is
        // built alongside (`cloud_map::load_assignments`).
        ServiceDiscovery::AwsCloudMap(discovery) => Some(cluster::egress_eds(
            snapshot.mesh_name(),
            &node.virtual_node_name,
            listener,
            listener_port,
            crate::cloud_map::eds_service_name(snapshot, discovery, listener_port),
        )),
    }
}

/// The target node of a weighted target, its listener on `target.port` (or its first) and that
/// listener's port.
fn target_listener<'a>(
    snapshot: &'a MeshSnapshot,
    target: &WeightedTarget,
) -> Option<(&'a VirtualNodeData, &'a Listener, u16)> {
    let node = snapshot.virtual_nodes.get(&target.virtual_node)?;
    let listeners = node.spec.listeners.as_deref().unwrap_or_default();
    let listener = match target.port {
        Some(p) => listeners.iter().find(|l| l.port_mapping.port == p)?,
        None => listeners.first()?,
    };
    Some((node, listener, port(listener.port_mapping.port)?))
}

/// The ports of a set of port mappings with their protocol, sorted; should a port appear twice
/// (the API forbids it), the first mapping wins.
fn service_ports<'a>(
    mappings: impl Iterator<Item = &'a weft_model::shapes::PortMapping>,
) -> BTreeMap<u16, PortProtocol> {
    let mut ports = BTreeMap::new();
    for mapping in mappings {
        if let Some(p) = port(mapping.port) {
            ports.entry(p).or_insert(mapping.protocol);
        }
    }
    ports
}

/// A route for `CONNECT <service>:<port>` tunnels (explicit mode's way to reach a `tcp`
/// backend): Envoy terminates the CONNECT and forwards the tunnel's bytes as raw TCP to the
/// chosen target (`connect_config`, <https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/upgrades#connect-support>).
/// A tunnel lasts as long as the connection: no per-request timeout, only the TCP route's idle
/// timeout (default 300 s, 0 disables; routes.md). No retries: App Mesh has none for TCP.
fn tunnel_route(name: &str, action: XdsAction, idle: Option<&Duration>) -> XdsRoute {
    let action = match action {
        XdsAction::Route(mut route) => {
            route.timeout = Some(defaults::seconds(0));
            route.idle_timeout = Some(defaults::timeout_or(idle, IDLE_TIMEOUT_SECS));
            route.upgrade_configs = vec![XdsUpgradeConfig {
                upgrade_type: "CONNECT".to_string(),
                connect_config: Some(XdsConnectConfig::default()),
                ..Default::default()
            }];
            XdsAction::Route(route)
        }
        other => other,
    };
    XdsRoute {
        name: name.to_string(),
        r#match: Some(XdsRouteMatch {
            path_specifier: Some(XdsPathSpecifier::ConnectMatcher(XdsConnectMatcher {})),
            ..Default::default()
        }),
        action: Some(action),
        ..Default::default()
    }
}

/// The transparent-mode TCP proxy plan of a tunnel route; `None` for a direct response.
fn tcp_plan(route: &XdsRoute) -> Option<TcpPlan> {
    let Some(XdsAction::Route(action)) = &route.action else {
        return None;
    };
    let target = match action.cluster_specifier.as_ref()? {
        XdsClusterSpecifier::Cluster(name) => TcpTarget::Cluster(name.clone()),
        XdsClusterSpecifier::WeightedClusters(weighted) => TcpTarget::Weighted(
            weighted
                .clusters
                .iter()
                .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
                .collect(),
        ),
        _ => return None,
    };
    Some(TcpPlan {
        target,
        idle_timeout: action
            .idle_timeout
            .unwrap_or_else(|| defaults::seconds(IDLE_TIMEOUT_SECS)),
    })
}

/// A router's routes in App Mesh's matching order: by `priority`, 0 first (routes.md: "0 is
/// the highest priority"); routes without a priority after all prioritized ones; ties by name
/// so the order never depends on anything but the mesh.
pub(crate) fn ordered_routes<'a>(
    routes: impl Iterator<Item = &'a RouteData>,
) -> Vec<&'a RouteData> {
    let mut routes: Vec<&RouteData> = routes.collect();
    routes.sort_by(|a, b| {
        let key = |r: &RouteData| {
            (
                r.spec.priority.is_none(),
                r.spec.priority,
                r.route_name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    routes
}

fn direct_response(status: u32) -> XdsAction {
    XdsAction::DirectResponse(XdsDirectResponseAction {
        status,
        ..Default::default()
    })
}

/// Adds timeouts (App Mesh defaults when unset) and a retry policy to a forwarding action;
/// a direct response has neither.
fn with_policy(
    action: XdsAction,
    per_request: Option<&Duration>,
    idle: Option<&Duration>,
    retry: Option<XdsRetryPolicy>,
) -> XdsAction {
    match action {
        XdsAction::Route(mut route) => {
            route.timeout = Some(defaults::timeout_or(per_request, PER_REQUEST_TIMEOUT_SECS));
            route.idle_timeout = Some(defaults::timeout_or(idle, IDLE_TIMEOUT_SECS));
            route.retry_policy = retry;
            XdsAction::Route(route)
        }
        other => other,
    }
}

fn http_timeouts(timeout: Option<&HttpTimeout>) -> (Option<&Duration>, Option<&Duration>) {
    (
        timeout.and_then(|t| t.per_request.as_ref()),
        timeout.and_then(|t| t.idle.as_ref()),
    )
}

/// App Mesh retry events as Envoy `retry_on` conditions (HttpRetryPolicy in the API model):
/// - `server-error` (500–511) → `5xx`; `gateway-error` (502–504) → `gateway-error`; both "include
///   the Envoy reset policy" → `reset`;
/// - `client-error` (409) → `retriable-4xx` (which is exactly 409 in Envoy);
/// - `stream-error` ("retry on refused stream") → `refused-stream`;
/// - TCP `connection-error` → `connect-failure` (envoy-defaults.md calls them equivalent);
/// - gRPC events keep their names, which are Envoy's `x-envoy-retry-grpc-on` names.
///
/// `maxRetries` → `num_retries`, `perRetryTimeout` → `per_try_timeout` (0 = none). A policy
/// without any event retries nothing, so it yields no Envoy policy at all.
pub(crate) fn retry_policy(
    http_events: Option<&[String]>,
    tcp_events: Option<&[TcpRetryPolicyEvent]>,
    grpc_events: Option<&[GrpcRetryPolicyEvent]>,
    max_retries: i64,
    per_retry_timeout: &Duration,
) -> Option<XdsRetryPolicy> {
    let mut retry_on: BTreeSet<&'static str> = BTreeSet::new();
    for event in http_events.unwrap_or_default() {
        match event.as_str() {
            "server-error" => retry_on.extend(["5xx", "reset"]),
            "gateway-error" => retry_on.extend(["gateway-error", "reset"]),
            "client-error" => {
                retry_on.insert("retriable-4xx");
            }
            "stream-error" => {
                retry_on.insert("refused-stream");
            }
            // The API rejects other values; one that slipped into the store is ignored rather
            // than sent to Envoy.
            _ => {}
        }
    }
    for event in tcp_events.unwrap_or_default() {
        match event {
            TcpRetryPolicyEvent::ConnectionError => {
                retry_on.insert("connect-failure");
            }
        }
    }
    for event in grpc_events.unwrap_or_default() {
        retry_on.insert(match event {
            GrpcRetryPolicyEvent::Cancelled => "cancelled",
            GrpcRetryPolicyEvent::DeadlineExceeded => "deadline-exceeded",
            GrpcRetryPolicyEvent::Internal => "internal",
            GrpcRetryPolicyEvent::ResourceExhausted => "resource-exhausted",
            GrpcRetryPolicyEvent::Unavailable => "unavailable",
        });
    }
    if retry_on.is_empty() {
        return None;
    }
    let per_try_timeout: Option<XdsDuration> =
        defaults::duration(per_retry_timeout).filter(|d| d.seconds > 0 || d.nanos > 0);
    Some(XdsRetryPolicy {
        retry_on: retry_on.into_iter().collect::<Vec<_>>().join(","),
        num_retries: Some(UInt32Value {
            value: u32::try_from(max_retries.max(0)).unwrap_or(u32::MAX),
        }),
        per_try_timeout,
        ..Default::default()
    })
}

/// Whether `regex` is a regular expression Envoy's RE2 accepts. RE2 and the `regex` crate share
/// a syntax (no backreferences, no look-around); an invalid one would be NACKed by Envoy.
fn valid_regex(regex: &str) -> bool {
    !regex.is_empty() && regex::Regex::new(regex).is_ok()
}

fn regex_matcher(regex: &str) -> XdsRegexMatcher {
    XdsRegexMatcher {
        regex: regex.to_string(),
        ..Default::default()
    }
}

/// Envoy requires a header name without NUL, CR or LF, and not empty.
fn valid_header_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['\0', '\r', '\n'])
}

fn string_matcher(pattern: XdsMatchPattern) -> XdsHeaderMatchSpecifier {
    XdsHeaderMatchSpecifier::StringMatch(XdsStringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

/// One header condition; `None` if it can never be satisfied as written (Envoy would reject it).
/// An empty prefix or suffix matches any value, so it becomes "present" (Envoy requires them
/// non-empty). App Mesh ranges are `[start, end)`, like Envoy's `Int64Range`.
fn header_matcher(
    name: &str,
    invert: Option<bool>,
    method: Option<HeaderMatchMethod>,
) -> Option<XdsHeaderMatcher> {
    if !valid_header_name(name) {
        return None;
    }
    let specifier = match method {
        None => XdsHeaderMatchSpecifier::PresentMatch(true),
        Some(HeaderMatchMethod::Exact(v)) => string_matcher(XdsMatchPattern::Exact(v)),
        Some(HeaderMatchMethod::Prefix(v)) | Some(HeaderMatchMethod::Suffix(v)) if v.is_empty() => {
            XdsHeaderMatchSpecifier::PresentMatch(true)
        }
        Some(HeaderMatchMethod::Prefix(v)) => string_matcher(XdsMatchPattern::Prefix(v)),
        Some(HeaderMatchMethod::Suffix(v)) => string_matcher(XdsMatchPattern::Suffix(v)),
        Some(HeaderMatchMethod::Regex(v)) => {
            if !valid_regex(&v) {
                return None;
            }
            string_matcher(XdsMatchPattern::SafeRegex(regex_matcher(&v)))
        }
        Some(HeaderMatchMethod::Range(r)) => XdsHeaderMatchSpecifier::RangeMatch(XdsInt64Range {
            start: r.start,
            end: r.end,
        }),
    };
    Some(XdsHeaderMatcher {
        name: name.to_string(),
        invert_match: invert.unwrap_or(false),
        header_match_specifier: Some(specifier),
        ..Default::default()
    })
}

fn exact_header(name: &str, value: &str) -> XdsHeaderMatcher {
    XdsHeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(string_matcher(XdsMatchPattern::Exact(value.to_string()))),
        ..Default::default()
    }
}

fn method_name(method: HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Head => "HEAD",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Connect => "CONNECT",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Trace => "TRACE",
        HttpMethod::Patch => "PATCH",
    }
}

/// An App Mesh HTTP route match as an Envoy route match; `None` if it can never match.
///
/// Path: `path.exact` → `path`, `path.regex` → `safe_regex`, else `prefix` (default `/`).
/// Method and scheme are the `:method` and `:scheme` pseudo-headers; headers and query
/// parameters map one to one.
pub(crate) fn http_match(m: &HttpRouteMatch) -> Option<XdsRouteMatch> {
    let path = m.path.as_ref();
    let path_specifier = if let Some(exact) = path.and_then(|p| p.exact.as_ref()) {
        XdsPathSpecifier::Path(exact.clone())
    } else if let Some(regex) = path.and_then(|p| p.regex.as_ref()) {
        if !valid_regex(regex) {
            return None;
        }
        XdsPathSpecifier::SafeRegex(regex_matcher(regex))
    } else {
        XdsPathSpecifier::Prefix(m.prefix.clone().unwrap_or_else(|| "/".to_string()))
    };
    let mut headers = Vec::new();
    if let Some(method) = m.method {
        headers.push(exact_header(":method", method_name(method)));
    }
    if let Some(scheme) = m.scheme {
        let scheme = match scheme {
            HttpScheme::Http => "http",
            HttpScheme::Https => "https",
        };
        headers.push(exact_header(":scheme", scheme));
    }
    for header in m.headers.iter().flatten() {
        headers.push(header_matcher(
            &header.name,
            header.invert,
            header.r#match.clone(),
        )?);
    }
    let mut query_parameters = Vec::new();
    for param in m.query_parameters.iter().flatten() {
        if param.name.is_empty() {
            return None;
        }
        let specifier = match param.r#match.as_ref().and_then(|q| q.exact.as_ref()) {
            Some(exact) => XdsQueryParameterMatchSpecifier::StringMatch(XdsStringMatcher {
                match_pattern: Some(XdsMatchPattern::Exact(exact.clone())),
                ..Default::default()
            }),
            None => XdsQueryParameterMatchSpecifier::PresentMatch(true),
        };
        query_parameters.push(XdsQueryParameterMatcher {
            name: param.name.clone(),
            query_parameter_match_specifier: Some(specifier),
        });
    }
    Some(XdsRouteMatch {
        path_specifier: Some(path_specifier),
        headers,
        query_parameters,
        ..Default::default()
    })
}

/// A gRPC route match: gRPC calls are `POST /<service>/<method>`, so service and method become
/// an exact path or a path prefix; metadata entries are request headers. The `grpc` option
/// restricts the route to gRPC requests (`content-type: application/grpc`).
pub(crate) fn grpc_match(grpc: &GrpcRoute) -> Option<XdsRouteMatch> {
    let m = &grpc.r#match;
    let path_specifier = match (&m.service_name, &m.method_name) {
        (Some(service), Some(method)) => XdsPathSpecifier::Path(format!("/{service}/{method}")),
        (Some(service), None) => XdsPathSpecifier::Prefix(format!("/{service}/")),
        // A method without a service is rejected by the API; match all rather than guess.
        (None, _) => XdsPathSpecifier::Prefix("/".to_string()),
    };
    let mut headers = Vec::new();
    for metadata in m.metadata.iter().flatten() {
        let method = metadata.r#match.clone().map(|mm| match mm {
            GrpcRouteMetadataMatchMethod::Exact(v) => HeaderMatchMethod::Exact(v),
            GrpcRouteMetadataMatchMethod::Prefix(v) => HeaderMatchMethod::Prefix(v),
            GrpcRouteMetadataMatchMethod::Suffix(v) => HeaderMatchMethod::Suffix(v),
            GrpcRouteMetadataMatchMethod::Regex(v) => HeaderMatchMethod::Regex(v),
            GrpcRouteMetadataMatchMethod::Range(r) => HeaderMatchMethod::Range(r),
        });
        headers.push(header_matcher(&metadata.name, metadata.invert, method)?);
    }
    Some(XdsRouteMatch {
        path_specifier: Some(path_specifier),
        headers,
        grpc: Some(XdsGrpcRouteMatchOptions {}),
        ..Default::default()
    })
}
