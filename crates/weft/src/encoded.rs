//! Encoding translated resources once: an Envoy resource that many proxy
//! classes receive (the cluster of virtual node `red` is the same for every
//! client of `red`) is encoded once per round of snapshots, and hashed and
//! held once for as long as a snapshot uses it. Its bytes are what recognise
//! it: an unchanged resource keeps its `Arc` (and version) across changes.
//!
//! Translation stays a pure function per class; this is the cache between its
//! output and the ADS server's [`Snapshot`]s.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use prost::{Message, Name};
use weft_translate::{SharedResources, XdsCluster, XdsClusterLoadAssignment};
use weft_xds::{cluster_eds_name, listener_rds_names, Resource, Snapshot, XdsError};

/// Encoded resources by name. A name has more than one while the classes of
/// a mesh hold different versions of it (during a change).
///
/// A message is recognised by its bytes: it is encoded and compared with the
/// resources of its name. Within one round of snapshots (one refresh, or one
/// class published on its first connection) it is also recognised by address:
/// the translator of a refresh hands every proxy class that reaches a route
/// target the same cluster allocation, which is encoded once. The messages
/// are let go at the end of the round: a typed `Cluster` takes several times
/// the memory of its encoding, and keeping one per cluster for comparison
/// cost ~8 KiB per proxy class (a heap profile at 1,000 classes).
struct Pool<M> {
    by_name: HashMap<String, Vec<Arc<Resource>>>,
    /// This round's messages by address, each held so that its address
    /// cannot be reused by another message before the round ends.
    round: HashMap<usize, (Arc<M>, Arc<Resource>)>,
}

impl<M> Default for Pool<M> {
    fn default() -> Self {
        Self {
            by_name: HashMap::new(),
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
        let value = message.encode_to_vec();
        // Looked up by `&str` first: the common case, a hit, allocates no name.
        let known = self
            .by_name
            .get(name)
            .and_then(|variants| variants.iter().find(|r| r.body.value == value))
            .cloned();
        let resource = known.unwrap_or_else(|| {
            let resource = Arc::new(Resource::new(
                name,
                Any {
                    type_url: M::type_url(),
                    value,
                },
            ));
            self.by_name
                .entry(name.to_string())
                .or_default()
                .push(resource.clone());
            resource
        });
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
        self.by_name.retain(|_, variants| {
            variants.retain(|r| Arc::strong_count(r) > 1);
            !variants.is_empty()
        });
    }

    fn len(&self) -> usize {
        self.by_name.values().map(Vec::len).sum()
    }
}

/// The encoding cache of the control plane.
#[derive(Default)]
pub struct EncodedPool {
    clusters: Pool<XdsCluster>,
    assignments: Pool<XdsClusterLoadAssignment>,
}

impl EncodedPool {
    /// The snapshot of one class's translated `resources`. Clusters and
    /// endpoints come from the shared pool; a listener or route configuration
    /// equal (byte for byte) to the one in `previous` is reused from it.
    pub fn snapshot(
        &mut self,
        resources: SharedResources,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, XdsError> {
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
            all.push(reuse_or_encode(previous, listener.name.clone(), listener));
        }
        for route in resources.route_configurations {
            all.push(reuse_or_encode(previous, route.name.clone(), route));
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
        self.clusters.len() + self.assignments.len()
    }
}

/// The previous snapshot's resource of that name if its bytes are the same,
/// else a newly encoded one.
fn reuse_or_encode<M: Message + Name>(
    previous: Option<&Snapshot>,
    name: String,
    message: M,
) -> Arc<Resource> {
    let body = pack_any(message);
    if let Some(old) = previous
        .and_then(|p| p.resources(&body.type_url))
        .and_then(|items| items.get(&name))
    {
        if old.body.value == body.value {
            return old.clone();
        }
    }
    Arc::new(Resource::new(name, body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use weft_translate::XdsRouteConfiguration;

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

    #[test]
    fn two_clients_of_red_share_one_encoded_cluster_and_a_changed_one_is_encoded_anew() {
        let mut pool = EncodedPool::default();
        let a = pool
            .snapshot(resources(vec![cluster("red", 1)], vec![]), None)
            .unwrap();
        let b = pool
            .snapshot(resources(vec![cluster("red", 1)], vec![]), None)
            .unwrap();
        assert!(Arc::ptr_eq(
            &held(&a, CLUSTER, "red"),
            &held(&b, CLUSTER, "red")
        ));
        let c = pool
            .snapshot(resources(vec![cluster("red", 2)], vec![]), None)
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
    fn an_unchanged_route_configuration_is_reused_from_the_previous_snapshot() {
        let mut pool = EncodedPool::default();
        let first = pool
            .snapshot(resources(vec![], vec![route("rds", "a")]), None)
            .unwrap();
        let same = pool
            .snapshot(resources(vec![], vec![route("rds", "a")]), Some(&first))
            .unwrap();
        assert!(Arc::ptr_eq(
            &held(&first, ROUTE, "rds"),
            &held(&same, ROUTE, "rds")
        ));
        let changed = pool
            .snapshot(resources(vec![], vec![route("rds", "b")]), Some(&first))
            .unwrap();
        assert!(!Arc::ptr_eq(
            &held(&first, ROUTE, "rds"),
            &held(&changed, ROUTE, "rds")
        ));
        assert_ne!(first.version(), changed.version());
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
        let pooled = pool.snapshot(make(), None).unwrap();
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
            .snapshot(resources(vec![cluster("red", 1)], vec![]), None)
            .unwrap();
        let shared = Arc::new(cluster("red", 1));
        let with = |c: &Arc<XdsCluster>| SharedResources {
            clusters: vec![c.clone()],
            ..Default::default()
        };
        let a = pool.snapshot(with(&shared), None).unwrap();
        let b = pool.snapshot(with(&shared), None).unwrap();
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
        let c = pool.snapshot(with(&shared), None).unwrap();
        assert!(Arc::ptr_eq(
            &held(&first, CLUSTER, "red"),
            &held(&c, CLUSTER, "red")
        ));
    }
}
