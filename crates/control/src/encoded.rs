//! Encoding translated resources once: an Envoy resource that many proxy
//! classes receive (the cluster of virtual node `red` is the same for every
//! client of `red`, and so is the egress listener of every node that calls the
//! same ports, and the virtual host of a service in every route configuration
//! that routes to it) is hashed and held once for as long as a snapshot uses
//! it. Its name and bytes are what recognise it: an unchanged resource keeps
//! its `Arc` (and version) across changes.
//!
//! Translation stays a pure function per class; this is the cache between its
//! output and the ADS server's [`Snapshot`]s.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::encoding;
use prost::{Message, Name};
use weft_translate::{
    SharedResources, XdsCluster, XdsClusterLoadAssignment, XdsRouteConfiguration,
};
use weft_xds::{cluster_eds_name, listener_rds_names, PackedAny, Resource, Snapshot, XdsError};

/// Encoded resources of one type, found by name and bytes. A name has more
/// than one while the classes of a mesh hold different versions of it (during
/// a change), and many when every class has its own (each node's egress route
/// configuration has the same name and its own virtual hosts).
///
/// Listeners and route configurations are pooled too: classes with the same
/// listener ports receive byte-identical listeners, and a class's own
/// encodings are half of what it costs (heap profile at 1,000 classes).
#[derive(Default)]
struct Interned {
    /// Keyed by a hash of name and bytes; a hit is confirmed on both.
    by_content: HashMap<u64, Vec<Arc<Resource>>>,
    hasher: RandomState,
}

impl Interned {
    /// The pooled resource with this name and content, else a new one.
    fn intern(&mut self, name: &str, body: PackedAny) -> Arc<Resource> {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(name.as_bytes());
        hasher.write_u8(0xff);
        for chunk in body.chunks() {
            hasher.write(chunk);
        }
        let variants = self.by_content.entry(hasher.finish()).or_default();
        if let Some(known) = variants.iter().find(|r| r.name == name && r.body == body) {
            return known.clone();
        }
        let resource = Arc::new(Resource::new(name, body));
        variants.push(resource.clone());
        resource
    }

    /// The pooled resource of a typed message.
    fn intern_message<M: Message + Name>(&mut self, name: &str, message: &M) -> Arc<Resource> {
        let body = Any {
            type_url: M::type_url(),
            value: message.encode_to_vec(),
        };
        self.intern(name, body.into())
    }

    /// Forgets the resources no snapshot holds any more.
    fn sweep(&mut self) {
        sweep_unheld(&mut self.by_content);
    }

    fn len(&self) -> usize {
        self.by_content.values().map(Vec::len).sum()
    }
}

/// Drops the entries only the pool itself holds.
fn sweep_unheld<T: ?Sized>(by_content: &mut HashMap<u64, Vec<Arc<T>>>) {
    by_content.retain(|_, variants| {
        variants.retain(|v| Arc::strong_count(v) > 1);
        !variants.is_empty()
    });
}

/// Encoded virtual hosts (each with its field key and length, as it appears in
/// a route configuration), shared by the route configurations that hold them.
///
/// The egress route configuration of a node has a virtual host per backend,
/// and the virtual host of a service is the same in every node that calls it:
/// in a mesh where each service has ten clients, each would otherwise be
/// encoded and held ten times (~2.6 KB of route configuration per node in the
/// scale benchmark).
#[derive(Default)]
struct VirtualHosts {
    by_content: HashMap<u64, Vec<Arc<[u8]>>>,
    hasher: RandomState,
}

impl VirtualHosts {
    fn intern(&mut self, bytes: Vec<u8>) -> Arc<[u8]> {
        let variants = self
            .by_content
            .entry(self.hasher.hash_one(bytes.as_slice()))
            .or_default();
        if let Some(known) = variants.iter().find(|v| ***v == *bytes) {
            return known.clone();
        }
        let host: Arc<[u8]> = bytes.into();
        variants.push(host.clone());
        host
    }

    /// Forgets the hosts no pooled route configuration holds any more.
    fn sweep(&mut self) {
        sweep_unheld(&mut self.by_content);
    }
}

/// Route configurations: [`Interned`], each held as its own fields and the
/// shared encodings of its virtual hosts.
#[derive(Default)]
struct RouteConfigurations {
    interned: Interned,
    virtual_hosts: VirtualHosts,
}

impl RouteConfigurations {
    fn intern(&mut self, mut route: XdsRouteConfiguration) -> Arc<Resource> {
        let hosts = std::mem::take(&mut route.virtual_hosts);
        let name = std::mem::take(&mut route.name);
        // Prost writes a message's fields in the order the .proto declares them:
        // `name` (1), then `virtual_hosts` (2), then the others. These parts are
        // that encoding, byte for byte (and so is the version hashed from them).
        let mut parts: Vec<Arc<[u8]>> = Vec::with_capacity(hosts.len() + 2);
        if !name.is_empty() {
            let mut head = Vec::with_capacity(encoding::string::encoded_len(1, &name));
            encoding::string::encode(1, &name, &mut head);
            parts.push(head.into());
        }
        for host in &hosts {
            let mut bytes = Vec::with_capacity(encoding::message::encoded_len(2, host));
            encoding::message::encode(2, host, &mut bytes);
            parts.push(self.virtual_hosts.intern(bytes));
        }
        let rest = route.encode_to_vec();
        if !rest.is_empty() {
            parts.push(rest.into());
        }
        self.interned.intern(
            &name,
            PackedAny::from_parts(XdsRouteConfiguration::type_url(), parts),
        )
    }

    fn sweep(&mut self) {
        // Route configurations first: the ones forgotten let go of their hosts.
        self.interned.sweep();
        self.virtual_hosts.sweep();
    }
}

/// Clusters or load assignments: [`Interned`], and within one round of
/// snapshots (one refresh, or one class published on its first connection)
/// also recognised by address: the translator of a refresh hands every proxy
/// class that reaches a route target the same cluster allocation, which is
/// encoded once. The messages are let go at the end of the round: a typed
/// `Cluster` takes several times the memory of its encoding, and keeping one
/// per cluster for comparison would cost ~8 KiB per proxy class (a heap
/// profile at 1,000 classes).
struct Pool<M> {
    interned: Interned,
    /// This round's messages by address, each held so that its address
    /// cannot be reused by another message before the round ends.
    round: HashMap<usize, (Arc<M>, Arc<Resource>)>,
}

impl<M> Default for Pool<M> {
    fn default() -> Self {
        Self {
            interned: Interned::default(),
            round: HashMap::new(),
        }
    }
}

impl<M: Message + Name> Pool<M> {
    fn intern(&mut self, name: &str, message: Arc<M>) -> Arc<Resource> {
        let address = Arc::as_ptr(&message).addr();
        if let Some((_, resource)) = self.round.get(&address) {
            return resource.clone();
        }
        let resource = self.interned.intern_message(name, message.as_ref());
        self.round.insert(address, (message, resource.clone()));
        resource
    }

    /// Lets go of this round's messages.
    fn end_round(&mut self) {
        self.round = HashMap::new();
    }

    /// Forgets the resources no snapshot holds any more (ends the round).
    fn sweep(&mut self) {
        self.end_round();
        self.interned.sweep();
    }
}

/// The encoding cache of the control plane.
#[derive(Default)]
pub(crate) struct EncodedPool {
    listeners: Interned,
    route_configurations: RouteConfigurations,
    clusters: Pool<XdsCluster>,
    assignments: Pool<XdsClusterLoadAssignment>,
}

impl EncodedPool {
    /// The snapshot of one class's translated `resources`, each resource
    /// taken from the pool when one with its name and bytes is there (so an
    /// unchanged resource keeps its `Arc` from the class's previous snapshot,
    /// and classes share what they have in common).
    pub(crate) fn snapshot(&mut self, resources: SharedResources) -> Result<Snapshot, XdsError> {
        let mut eds_names = BTreeSet::new();
        let mut rds_names = BTreeSet::new();
        let mut all = Vec::with_capacity(
            resources.listeners.len()
                + resources.route_configurations.len()
                + resources.clusters.len()
                + resources.cluster_load_assignments.len(),
        );
        for listener in resources.listeners {
            rds_names.extend(listener_rds_names(&listener));
            all.push(self.listeners.intern_message(&listener.name, &listener));
        }
        for route in resources.route_configurations {
            all.push(self.route_configurations.intern(route));
        }
        for cluster in resources.clusters {
            eds_names.extend(cluster_eds_name(&cluster));
            let name = cluster.name.clone();
            all.push(self.clusters.intern(&name, cluster));
        }
        for assignment in resources.cluster_load_assignments {
            let name = assignment.cluster_name.clone();
            all.push(self.assignments.intern(&name, Arc::new(assignment)));
        }
        Snapshot::from_shared_with_references(all, eds_names, rds_names)
    }

    /// Forgets what no snapshot uses any more; call after a round of
    /// [`EncodedPool::snapshot`] calls has replaced the older snapshots.
    pub(crate) fn sweep(&mut self) {
        self.listeners.sweep();
        self.route_configurations.sweep();
        self.clusters.sweep();
        self.assignments.sweep();
    }

    /// Ends a round of [`EncodedPool::snapshot`] calls without a sweep: the
    /// translated messages are let go.
    pub(crate) fn end_round(&mut self) {
        self.clusters.end_round();
        self.assignments.end_round();
    }

    /// How many encoded resources the pool holds.
    pub(crate) fn len(&self) -> usize {
        self.listeners.len()
            + self.route_configurations.interned.len()
            + self.clusters.interned.len()
            + self.assignments.interned.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use weft_translate::{XdsListener, XdsRouteConfiguration};

    fn cluster(name: &str, timeout_secs: i64) -> XdsCluster {
        XdsCluster {
            name: name.to_string(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: timeout_secs,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn route(name: &str, host: &str) -> XdsRouteConfiguration {
        XdsRouteConfiguration {
            name: name.to_string(),
            virtual_hosts: vec![envoy_types::pb::envoy::config::route::v3::VirtualHost {
                name: host.to_string(),
                domains: vec![host.to_string()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn resources(clusters: Vec<XdsCluster>, routes: Vec<XdsRouteConfiguration>) -> SharedResources {
        SharedResources {
            clusters: clusters.into_iter().map(Arc::new).collect(),
            route_configurations: routes,
            ..Default::default()
        }
    }

    fn held(s: &Snapshot, type_url: &str, name: &str) -> Arc<Resource> {
        s.resources(type_url).unwrap().get(name).unwrap().clone()
    }

    const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

    #[test]
    fn two_clients_of_red_share_one_encoded_cluster_and_a_changed_one_is_encoded_anew() {
        let mut pool = EncodedPool::default();
        let a = pool
            .snapshot(resources(vec![cluster("red", 1)], vec![]))
            .unwrap();
        let b = pool
            .snapshot(resources(vec![cluster("red", 1)], vec![]))
            .unwrap();
        assert!(Arc::ptr_eq(
            &held(&a, CLUSTER, "red"),
            &held(&b, CLUSTER, "red")
        ));
        let c = pool
            .snapshot(resources(vec![cluster("red", 2)], vec![]))
            .unwrap();
        assert!(!Arc::ptr_eq(
            &held(&a, CLUSTER, "red"),
            &held(&c, CLUSTER, "red")
        ));
        assert_ne!(a.version(), c.version());
        assert_eq!(a.version(), b.version());
        // Once no snapshot holds the first variant, the pool forgets it.
        drop((a, b));
        pool.sweep();
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn an_unchanged_route_configuration_keeps_its_resource_and_a_changed_one_is_new() {
        let mut pool = EncodedPool::default();
        let first = pool
            .snapshot(resources(vec![], vec![route("rds", "a")]))
            .unwrap();
        let same = pool
            .snapshot(resources(vec![], vec![route("rds", "a")]))
            .unwrap();
        assert!(Arc::ptr_eq(
            &held(&first, ROUTE, "rds"),
            &held(&same, ROUTE, "rds")
        ));
        let changed = pool
            .snapshot(resources(vec![], vec![route("rds", "b")]))
            .unwrap();
        assert!(!Arc::ptr_eq(
            &held(&first, ROUTE, "rds"),
            &held(&changed, ROUTE, "rds")
        ));
        assert_ne!(first.version(), changed.version());
    }

    #[test]
    fn two_classes_with_the_same_egress_listener_share_it_and_their_own_routes_stay_apart() {
        let mut pool = EncodedPool::default();
        let egress = |host: &str| SharedResources {
            listeners: vec![XdsListener {
                name: "lds_egress".into(),
                ..Default::default()
            }],
            route_configurations: vec![route("rds_egress", host)],
            ..Default::default()
        };
        let web = pool.snapshot(egress("cart")).unwrap();
        let api = pool.snapshot(egress("users")).unwrap();
        assert!(Arc::ptr_eq(
            &held(&web, LISTENER, "lds_egress"),
            &held(&api, LISTENER, "lds_egress")
        ));
        // The same name, two contents: each class gets its own.
        assert!(!Arc::ptr_eq(
            &held(&web, ROUTE, "rds_egress"),
            &held(&api, ROUTE, "rds_egress")
        ));
        assert_eq!(pool.len(), 3);
        // When `api` is replaced, its route configuration goes; the listener stays.
        drop(api);
        pool.sweep();
        assert_eq!(pool.len(), 2);
        let again = pool.snapshot(egress("cart")).unwrap();
        assert!(Arc::ptr_eq(
            &held(&web, ROUTE, "rds_egress"),
            &held(&again, ROUTE, "rds_egress")
        ));
    }

    fn routes_to(name: &str, hosts: &[&str]) -> XdsRouteConfiguration {
        XdsRouteConfiguration {
            name: name.to_string(),
            virtual_hosts: hosts
                .iter()
                .map(
                    |host| envoy_types::pb::envoy::config::route::v3::VirtualHost {
                        name: host.to_string(),
                        domains: vec![host.to_string(), format!("{host}:8080")],
                        ..Default::default()
                    },
                )
                .collect(),
            // Fields after `virtual_hosts` in the .proto, to check where they go.
            internal_only_headers: vec!["x-internal".into()],
            validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_calling_the_same_service_share_its_virtual_host_and_send_what_prost_encodes() {
        let mut pool = EncodedPool::default();
        let with = |route: XdsRouteConfiguration| SharedResources {
            route_configurations: vec![route],
            ..Default::default()
        };
        let web = pool
            .snapshot(with(routes_to("rds_egress", &["cart", "users"])))
            .unwrap();
        let api = pool
            .snapshot(with(routes_to("rds_egress", &["users", "orders"])))
            .unwrap();
        assert_eq!(pool.route_configurations.virtual_hosts.by_content.len(), 3);
        // What goes on the wire is the message's own encoding, and so is the version.
        for (snapshot, hosts) in [(&web, ["cart", "users"]), (&api, ["users", "orders"])] {
            let held = held(snapshot, ROUTE, "rds_egress");
            let expected = Resource::from_message("rds_egress", routes_to("rds_egress", &hosts));
            assert_eq!(held.body.to_any(), expected.body.to_any());
            assert_eq!(held.body.encode_to_vec(), expected.body.encode_to_vec());
            assert_eq!(held.version, expected.version);
        }
        // When `api` is gone, so is `orders`; `users` stays for `web`.
        drop(api);
        pool.sweep();
        assert_eq!(pool.route_configurations.virtual_hosts.by_content.len(), 2);
        let again = pool
            .snapshot(with(routes_to("rds_egress", &["cart", "users"])))
            .unwrap();
        assert!(Arc::ptr_eq(
            &held(&web, ROUTE, "rds_egress"),
            &held(&again, ROUTE, "rds_egress")
        ));
    }

    #[test]
    fn the_snapshot_is_the_one_from_resources_builds() {
        let mut pool = EncodedPool::default();
        let make = || {
            resources(
                vec![cluster("red", 1), cluster("blue", 1)],
                vec![route("rds", "a")],
            )
        };
        let pooled = pool.snapshot(make()).unwrap();
        let r = make().into_owned();
        let direct = Snapshot::from_resources(
            r.listeners,
            r.route_configurations,
            r.clusters,
            r.cluster_load_assignments,
        )
        .unwrap();
        assert_eq!(pooled, direct);
    }

    #[test]
    fn an_equal_cluster_in_a_new_allocation_gets_the_same_resource_and_is_then_matched_by_pointer()
    {
        let mut pool = EncodedPool::default();
        let first = pool
            .snapshot(resources(vec![cluster("red", 1)], vec![]))
            .unwrap();
        let shared = Arc::new(cluster("red", 1));
        let with = |c: &Arc<XdsCluster>| SharedResources {
            clusters: vec![c.clone()],
            ..Default::default()
        };
        let a = pool.snapshot(with(&shared)).unwrap();
        let b = pool.snapshot(with(&shared)).unwrap();
        assert!(Arc::ptr_eq(
            &held(&first, CLUSTER, "red"),
            &held(&a, CLUSTER, "red")
        ));
        assert!(Arc::ptr_eq(
            &held(&a, CLUSTER, "red"),
            &held(&b, CLUSTER, "red")
        ));
        // The pool keeps the shared allocation for the round only.
        assert!(Arc::strong_count(&shared) > 1);
        pool.end_round();
        assert_eq!(Arc::strong_count(&shared), 1);
        // After the round, an equal cluster is still recognised, by its bytes.
        let c = pool.snapshot(with(&shared)).unwrap();
        assert!(Arc::ptr_eq(
            &held(&first, CLUSTER, "red"),
            &held(&c, CLUSTER, "red")
        ));
    }
}
