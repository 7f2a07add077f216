//! The entry point: one proxy's resources from one mesh snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use weft_model::shapes::{EgressFilterType, VirtualNodeData};

use crate::defaults::{self, IDLE_TIMEOUT_SECS};
use crate::listener::{self, Direction, HcmExtras, TcpTarget};
use crate::route::{self, is_http_family};
use crate::tls;
use crate::{
    cluster, names, ListenerMode, MeshSnapshot, ProxyIdentity, ProxyKind, ProxyOptions,
    TranslateError, XdsCluster, XdsClusterLoadAssignment, XdsListener, XdsRouteConfiguration,
};

/// Stat prefix of ingress connection managers and TCP proxies (`http.ingress.*`).
const INGRESS_STAT_PREFIX: &str = "ingress";
/// Stat prefix of egress connection managers and TCP proxies (`http.egress.*`).
const EGRESS_STAT_PREFIX: &str = "egress";

/// Everything one proxy is served, each list sorted by resource name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProxyResources {
    /// LDS: ingress listener(s) and the egress listener.
    pub listeners: Vec<XdsListener>,
    /// RDS: `rds_ingress_<protocol>_<port>` and `rds_egress_http_<egress port>`.
    pub route_configurations: Vec<XdsRouteConfiguration>,
    /// CDS: the local app's clusters and the target nodes' clusters.
    pub clusters: Vec<XdsCluster>,
    /// EDS: the endpoints of Cloud Map targets (instance registry), one per EDS name, sorted by
    /// name. DNS and local-app clusters carry their own `load_assignment`.
    pub cluster_load_assignments: Vec<XdsClusterLoadAssignment>,
}

/// [`ProxyResources`] whose clusters are shared: what [`Translator::translate_shared`]
/// returns. The cluster of a route target is the same allocation for every proxy translated
/// by one [`Translator`] that reaches it, so a caller can tell it apart by pointer
/// ([`Arc::ptr_eq`]) without comparing or copying it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SharedResources {
    /// LDS, as in [`ProxyResources::listeners`].
    pub listeners: Vec<XdsListener>,
    /// RDS, as in [`ProxyResources::route_configurations`].
    pub route_configurations: Vec<XdsRouteConfiguration>,
    /// CDS, as in [`ProxyResources::clusters`].
    pub clusters: Vec<Arc<XdsCluster>>,
    /// EDS, as in [`ProxyResources::cluster_load_assignments`].
    pub cluster_load_assignments: Vec<XdsClusterLoadAssignment>,
}

impl SharedResources {
    /// The same resources, owned (a cluster still shared is copied).
    pub fn into_owned(self) -> ProxyResources {
        ProxyResources {
            listeners: self.listeners,
            route_configurations: self.route_configurations,
            clusters: self
                .clusters
                .into_iter()
                .map(Arc::unwrap_or_clone)
                .collect(),
            cluster_load_assignments: self.cluster_load_assignments,
        }
    }
}

impl ProxyResources {
    /// The listeners with their RDS route configurations inlined, for a static bootstrap
    /// (`static_resources`), e.g. to check the output with `envoy --mode validate`.
    pub fn listeners_with_inline_routes(&self) -> Result<Vec<XdsListener>, TranslateError> {
        listener::inline_routes(&self.listeners, &self.route_configurations)
    }
}

/// Translates `snapshot` for the proxy `proxy`.
///
/// Errors: the proxy is of another mesh ([`TranslateError::MeshMismatch`]); its virtual node
/// does not exist yet ([`TranslateError::VirtualNodeNotFound`] — the ADS server keeps it
/// waiting); likewise its virtual gateway ([`TranslateError::VirtualGatewayNotFound`]; gateways
/// are translated in `gateway.rs`).
/// Problems *inside* the mesh are never errors: they are skipped.
pub fn translate(
    snapshot: &MeshSnapshot,
    proxy: &ProxyIdentity,
    options: &ProxyOptions,
) -> Result<ProxyResources, TranslateError> {
    // The translator (and the clusters it keeps) is gone before the clusters are unwrapped:
    // nothing is copied.
    let shared = Translator::new(snapshot).translate_shared(proxy, options)?;
    Ok(shared.into_owned())
}

/// Translates one mesh snapshot for several proxies, sharing what their translations have in
/// common: the cluster of a route target (a virtual node's listener) is built once for every
/// proxy that reaches it, instead of once per proxy. Each result is exactly what
/// [`translate`] returns.
///
/// It borrows the snapshot: what it keeps is only valid for that snapshot.
#[derive(Debug)]
pub struct Translator<'a> {
    snapshot: &'a MeshSnapshot,
    targets: route::TargetClusters,
}

impl<'a> Translator<'a> {
    /// A translator of `snapshot`.
    pub fn new(snapshot: &'a MeshSnapshot) -> Self {
        Self {
            snapshot,
            targets: route::TargetClusters::default(),
        }
    }

    /// The snapshot it translates.
    pub fn snapshot(&self) -> &'a MeshSnapshot {
        self.snapshot
    }

    /// [`translate`] of the snapshot for `proxy`, with the clusters shared (see
    /// [`SharedResources`]).
    pub fn translate_shared(
        &mut self,
        proxy: &ProxyIdentity,
        options: &ProxyOptions,
    ) -> Result<SharedResources, TranslateError> {
        let snapshot = self.snapshot;
        if proxy.mesh != snapshot.mesh_name() {
            return Err(TranslateError::MeshMismatch {
                proxy_mesh: proxy.mesh.clone(),
                snapshot_mesh: snapshot.mesh_name().to_string(),
            });
        }
        let mut resources = match proxy.kind {
            ProxyKind::VirtualNode => translate_node(snapshot, &mut self.targets, proxy, options)?,
            ProxyKind::VirtualGateway => {
                crate::gateway::translate(snapshot, &mut self.targets, proxy, options)?
            }
        };
        // Endpoints of the Cloud Map (EDS) clusters, whoever built them (node or gateway).
        resources.cluster_load_assignments =
            crate::cloud_map::load_assignments(snapshot, resources.clusters.iter().map(|c| &**c));
        Ok(resources)
    }
}

/// A virtual node's proxy: its ingress and its egress.
fn translate_node(
    snapshot: &MeshSnapshot,
    targets: &mut route::TargetClusters,
    proxy: &ProxyIdentity,
    options: &ProxyOptions,
) -> Result<SharedResources, TranslateError> {
    let node = snapshot.virtual_nodes.get(&proxy.name).ok_or_else(|| {
        TranslateError::VirtualNodeNotFound {
            mesh: proxy.mesh.clone(),
            name: proxy.name.clone(),
        }
    })?;
    tls::check_node(node, options.identity)?;
    let mut out = Output::default();
    ingress(snapshot, node, options, &mut out);
    egress(snapshot, targets, node, options, &mut out);
    let mut listeners = out.listeners;
    listeners.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(SharedResources {
        listeners,
        route_configurations: out.route_configurations.into_values().collect(),
        clusters: out.clusters.into_values().collect(),
        cluster_load_assignments: Vec::new(),
    })
}

#[derive(Default)]
struct Output {
    listeners: Vec<XdsListener>,
    route_configurations: BTreeMap<String, XdsRouteConfiguration>,
    clusters: BTreeMap<String, Arc<XdsCluster>>,
}

/// The node's listeners, served to the local application: one ingress cluster and one filter
/// chain per listener port. Transparent mode: one listener on the ingress port choosing the
/// chain by original destination port (App Mesh's `lds_ingress_0.0.0.0_15000`; none if the node
/// has no listener, envoy-metrics.md). Explicit mode: one listener per node port.
fn ingress(
    snapshot: &MeshSnapshot,
    node: &VirtualNodeData,
    options: &ProxyOptions,
    out: &mut Output,
) {
    let mesh = snapshot.mesh_name();
    let mut seen = BTreeSet::new();
    let mut chains = Vec::new();
    // The `PERMISSIVE` ports, for which the shared listener needs the TLS inspector.
    let mut permissive = Vec::new();
    let access_log = listener::access_logs(node.spec.logging.as_ref());
    for node_listener in node.spec.listeners.iter().flatten() {
        let Some(port) = route::port(node_listener.port_mapping.port) else {
            continue;
        };
        // Two chains or listeners for one port would be NACKed; the API forbids duplicates,
        // so the first one wins should a duplicate ever reach us.
        if !seen.insert(port) {
            continue;
        }
        let explicit = options.listener_mode == ListenerMode::Explicit;
        // In explicit mode Envoy binds the node port itself; it cannot also be the egress port.
        if explicit && port == options.egress_port {
            continue;
        }
        let protocol = node_listener.port_mapping.protocol;
        let cluster = cluster::ingress(mesh, &node.virtual_node_name, node_listener, port, options);
        let filters = if is_http_family(protocol) {
            let rc = route::ingress(protocol, port, cluster.name.clone(), node_listener);
            let filter = listener::http_connection_manager(
                INGRESS_STAT_PREFIX,
                &rc.name,
                &HcmExtras {
                    access_log: access_log
                        .iter()
                        .cloned()
                        .chain(crate::authorization::denial_log(
                            snapshot,
                            options.stats_intake,
                        ))
                        .collect(),
                    rbac: crate::authorization::http_filter(snapshot, &node.virtual_node_name),
                    tracing: options.tracing,
                    ..Default::default()
                },
            );
            out.route_configurations.insert(rc.name.clone(), rc);
            vec![filter]
        } else {
            let (_, idle) = route::listener_timeouts(node_listener);
            // The TCP proxy logs also the connections the network RBAC filter before it closes,
            // so it is where those are counted per caller.
            let tcp_access_log: Vec<_> = access_log
                .iter()
                .cloned()
                .chain(crate::authorization::tcp_denial_log(
                    snapshot,
                    options.stats_intake,
                ))
                .collect();
            let proxy = listener::tcp_proxy(
                INGRESS_STAT_PREFIX,
                TcpTarget::Cluster(cluster.name.clone()),
                defaults::timeout_or(idle, IDLE_TIMEOUT_SECS),
                &tcp_access_log,
            );
            crate::authorization::network_filter(snapshot, &node.virtual_node_name)
                .into_iter()
                .chain(std::iter::once(proxy))
                .collect()
        };
        let chain_name = format!("ingress_{}_{port}", names::protocol_name(protocol));
        out.clusters.insert(cluster.name.clone(), Arc::new(cluster));
        // The listener's own `tls` wins over the mesh-wide default (`weft:mtls`).
        let server_tls = match &node_listener.tls {
            Some(own) => Some(tls::ServerTls::from(own).with_file_secrets(options.file_secrets)),
            None => tls::mesh_server(snapshot, options),
        };
        let mut chain =
            listener::filter_chain(chain_name, (!explicit).then_some(port), Default::default());
        // The network RBAC filter (authorization) goes before the TCP proxy.
        chain.filters = filters;
        let (port_chains, inspect) = tls::chains(chain, server_tls.as_ref(), protocol);
        if explicit {
            let mut l = listener::listener(
                names::ingress_listener(&options.listen_address, port),
                &options.listen_address,
                port,
                Direction::Ingress,
                false,
                port_chains,
                None,
            );
            if inspect {
                tls::add_inspector(&mut l, &[]);
            }
            out.listeners.push(l);
        } else {
            if inspect {
                permissive.push(port);
            }
            chains.extend(port_chains);
        }
    }
    if !chains.is_empty() {
        let mut l = listener::listener(
            names::ingress_listener(&options.listen_address, options.ingress_port),
            &options.listen_address,
            options.ingress_port,
            Direction::Ingress,
            true,
            chains,
            None,
        );
        if !permissive.is_empty() {
            tls::add_inspector(&mut l, &permissive);
        }
        out.listeners.push(listener::also_on(
            l,
            options.listen_address_v6.as_deref(),
            options.ingress_port,
        ));
    }
}

/// The egress listener and everything behind it.
///
/// Explicit mode: one HTTP connection manager. HTTP, HTTP/2 and gRPC requests are routed by
/// `Host`/`:authority` (`<service>[:<port>]`); a TCP backend is reached with
/// `CONNECT <service>:<port>`. Hosts that are not backends get 404 under `DROP_ALL` (the
/// default); under `ALLOW_ALL` they are forwarded to where the request says, through the
/// dynamic forward proxy (meshes.md, "Egress filter").
/// Transparent mode: a chain per backend port (original destination port): HTTP-family ports
/// into the same connection manager, `tcp` ports into a TCP proxy; everything else goes by the
/// egress filter: `DROP_ALL` answers unknown hosts 404 and drops non-HTTP traffic, `ALLOW_ALL`
/// forwards it to its original destination (an HTTP `*` host and a TCP default chain, both to
/// the ORIGINAL_DST passthrough cluster).
fn egress(
    snapshot: &MeshSnapshot,
    targets: &mut route::TargetClusters,
    node: &VirtualNodeData,
    options: &ProxyOptions,
    out: &mut Output,
) {
    let mesh = snapshot.mesh_name();
    let allow_all = snapshot
        .mesh
        .spec
        .egress_filter
        .as_ref()
        .is_some_and(|f| f.r#type == EgressFilterType::AllowAll);
    let transparent = options.listener_mode == ListenerMode::Transparent;
    let access_log = listener::access_logs(node.spec.logging.as_ref());
    let mut extras = HcmExtras {
        connect: true,
        forward_proxy: None,
        access_log: access_log.clone(),
        rbac: None,
        tracing: options.tracing,
        grpc_stats: options.stats_intake,
    };
    let catch_all = if !allow_all {
        None
    } else if transparent {
        out.clusters.insert(
            names::passthrough_cluster(mesh),
            Arc::new(cluster::passthrough(mesh)),
        );
        Some(names::passthrough_cluster(mesh))
    } else {
        let ip_preference = snapshot
            .mesh
            .spec
            .service_discovery
            .as_ref()
            .and_then(|sd| sd.ip_preference);
        let cache = cluster::forward_proxy_dns_cache(mesh, ip_preference);
        out.clusters.insert(
            names::forward_proxy_cluster(mesh),
            Arc::new(cluster::forward_proxy(mesh, cache.clone())),
        );
        extras.forward_proxy = Some(cache);
        Some(names::forward_proxy_cluster(mesh))
    };
    let plan = route::egress(
        snapshot,
        targets,
        node,
        options.egress_port,
        catch_all.as_deref(),
        options.identity,
        options.file_secrets,
    );
    let hcm = listener::http_connection_manager(
        EGRESS_STAT_PREFIX,
        &plan.route_configuration.name,
        &extras,
    );
    out.clusters.extend(plan.clusters);
    let (chains, default_chain) = if transparent {
        let mut chains: Vec<_> = plan
            .ports
            .iter()
            .map(|port| {
                listener::filter_chain(format!("egress_http_{port}"), Some(*port), hcm.clone())
            })
            .collect();
        // A port both HTTP and TCP (two services) stays HTTP: two chains with the same match
        // would be NACKed.
        for (port, tcp) in plan
            .tcp_ports
            .iter()
            .filter(|(p, _)| !plan.ports.contains(p))
        {
            chains.push(listener::filter_chain(
                format!("egress_tcp_{port}"),
                Some(*port),
                listener::tcp_proxy(
                    EGRESS_STAT_PREFIX,
                    tcp.target.clone(),
                    tcp.idle_timeout,
                    &access_log,
                ),
            ));
        }
        let default_chain = match &catch_all {
            Some(name) => listener::filter_chain(
                "egress_passthrough".to_string(),
                None,
                listener::tcp_proxy(
                    EGRESS_STAT_PREFIX,
                    TcpTarget::Cluster(name.clone()),
                    defaults::seconds(IDLE_TIMEOUT_SECS),
                    &access_log,
                ),
            ),
            None => listener::filter_chain("egress_http".to_string(), None, hcm),
        };
        (chains, Some(default_chain))
    } else {
        (
            vec![listener::filter_chain("egress_http".to_string(), None, hcm)],
            None,
        )
    };
    out.route_configurations.insert(
        plan.route_configuration.name.clone(),
        plan.route_configuration,
    );
    let egress = listener::listener(
        names::egress_listener(&options.listen_address, options.egress_port),
        &options.listen_address,
        options.egress_port,
        Direction::Egress,
        transparent,
        chains,
        default_chain,
    );
    let v6 = transparent
        .then_some(options.listen_address_v6.as_deref())
        .flatten();
    out.listeners
        .push(listener::also_on(egress, v6, options.egress_port));
}
