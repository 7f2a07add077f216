//! Encoding translated resources once: an Envoy resource that many proxy
//! classes receive (the cluster of virtual node `red` is the same for every
//! client of `red`, and so is the egress listener of every node that calls the
//! same ports) is hashed and held once for as long as a snapshot uses it. Its
//! name and bytes are what recognise it: an unchanged resource keeps its `Arc`
//! (and version) across changes.
//!
//! Translation stays a pure function per class; this is the cache between its
//! output and the ADS server's [`Snapshot`]s.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use weft_translate::{SharedResources, XdsCluster, XdsClusterLoadAssignment};
use weft_xds::{cluster_eds_name, listener_rds_names, Resource, Snapshot, XdsError};

/// Encoded resources of one type, found by name and bytes. A name has more
/// than one while the classes of a mesh hold different versions of it (during
/// a change), and many when every class has its own (each node's egress route
/// configuration has the same name and its own virtual hosts).
///
/// Listeners and route configurations are pooled too: classes with the same
/// listener ports receive byte-identical listeners, and a heap profile at
/// 1,000 classes found a class's own encodings to be half of what it costs.
struct Interned {
    /// Keyed by a hash of name and bytes; a hit is confirmed on both.
    by_content: HashMap<u64, Vec<Arc<Resource>>>,
    hasher: RandomState,
}

impl Default for Interned {
    fn default() -> Self {
        Self {
            by_content: HashMap::new(),
            hasher: RandomState::new(),
        }
    }
}

impl Interned {
    /// The pooled resource with this name and content, else a new one.
    fn intern(&mut self, name: &str, type_url: &str, value: Vec<u8>) -> Arc<Resource> {
        let key = self.hasher.hash_one((name, value.as_slice()));
        let variants = self.by_content.entry(key).or_default();
        if let Some(known) = variants
            .iter()
            .find(|r| r.name == name && r.body.value == value)
        {
            return known.clone();
        }
        let resource = Arc::new(Resource::new(
            name,
            Any {
                type_url: type_url.to_string(),
                value,
            },
        ));
        variants.push(resource.clone());
        resource
    }

    /// The pooled resource of a typed message.
    fn intern_message<M: Message + Name>(&mut self, name: &str, message: &M) -> Arc<Resource> {
        self.intern(name, &M::type_url(), message.encode_to_vec())
    }

    /// Forgets the resources no snapshot holds any more.
    fn sweep(&mut self) {
        self.by_content.retain(|_, variants| {
            variants.retain(|r| Arc::strong_count(r) > 1);
            !variants.is_empty()
        });
    }

    fn len(&self) -> usize {
        self.by_content.values().map(Vec::len).sum()
    }
}

/// Clusters or load assignments: [`Interned`], and within one round of
/// snapshots (one refresh, or one class published on its first connection)
/// also recognised by address: the translator of a refresh hands every proxy
/// class that reaches a route target the same cluster allocation, which is
/// encoded once. The messages are let go at the end of the round: a typed
/// `Cluster` takes several times the memory of its encoding, and keeping one
/// per cluster for comparison cost ~8 KiB per proxy class (a heap profile at
/// 1,000 classes).
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
pub struct EncodedPool {
    listeners: Interned,
    route_configurations: Interned,
    clusters: Pool<XdsCluster>,
    assignments: Pool<XdsClusterLoadAssignment>,
}

impl EncodedPool {
    /// The snapshot of one class's translated `resources`, each resource
    /// taken from the pool when one with its name and bytes is there (so an
    /// unchanged resource keeps its `Arc` from the class's previous snapshot,
    /// and classes share what they have in common).
    pub fn snapshot(&mut self, resources: SharedResources) -> Result<Snapshot, XdsError> {
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
            all.push(
                self.route_configurations
                    .intern_message(&route.name, &route),
            );
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
    pub fn sweep(&mut self) {
        self.listeners.sweep();
        self.route_configurations.sweep();
        self.clusters.sweep();
        self.assignments.sweep();
    }

    /// Ends a round of [`EncodedPool::snapshot`] calls without a sweep: the
    /// translated messages are let go.
    pub fn end_round(&mut self) {
        self.clusters.end_round();
        self.assignments.end_round();
    }

    /// How many encoded resources the pool holds.
    pub fn len(&self) -> usize {
        self.listeners.len()
            + self.route_configurations.len()
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
