//! Wiring from the store to the proxies: keeps every mesh's resources in
//! memory from the store's change feed, and for every class of connected proxy
//! (one virtual node with one set of options) translates its mesh into Envoy
//! resources and hands them to the ADS server's snapshot cache.
//!
//! Proxies of the same virtual node with the same options share one snapshot
//! key, so one translation serves all of them. Bursts of store changes are
//! coalesced: every change ready at once is applied before recomputing.
//!
//! The instance registry (the Cloud Map role) is followed the same way: its
//! namespaces, services and instances (`cloudmap/ns/`, `cloudmap/svc/`,
//! `cloudmap/inst/`) are kept in memory, every mesh snapshot carries the
//! instances of the services its Cloud Map nodes name, and a registry change
//! recomputes only the meshes naming that service — without re-reading their
//! App Mesh resources — so an instance that registers, deregisters or turns
//! unhealthy reaches the Envoys as an EDS update.
//!
//! A mesh no proxy has asked for is not decoded at all: its records are held
//! as stored bytes (the latest per key) and applied when its first proxy
//! connects, so writing to a mesh before its workloads run (a Terraform or
//! CloudFormation apply, a test set-up) costs the control plane nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use weft_model::shapes::{
    GatewayRouteData, MeshData, ResourceMetadata, RouteData, ServiceDiscovery, VirtualGatewayData,
    VirtualNodeData, VirtualRouterData, VirtualServiceData,
};
use weft_model::{keys, Kind};
use weft_registry::keys as registry_keys;
use weft_registry::{Instance, NamespaceRecord, ServiceRecord};
use weft_store::{Range, SharedStore, StoreError, WatchEvent};
use weft_translate::{
    CloudMapInstance, MeshSnapshot, ProxyIdentity, ProxyOptions, TranslateError, Translator,
};
use weft_xds::{NodeResolver, SnapshotCache, XdsNode};

use crate::encoded::EncodedPool;

/// One class of proxies: a virtual node (or gateway) and the options its
/// Envoys announce in their node metadata.
#[derive(Debug, Clone)]
struct ProxyClass {
    identity: ProxyIdentity,
    options: ProxyOptions,
    /// When the class was last known to have a proxy: when a stream resolved
    /// to it, or a sweep found its key watched (see
    /// [`Runtime::forget_idle_classes`]).
    last_active: Instant,
}

/// The proxy classes seen so far, shared by the resolver (which registers
/// them as Envoys connect) and the runtime (which computes their snapshots).
#[derive(Default)]
pub struct Registry {
    classes: Mutex<HashMap<String, ProxyClass>>,
}

/// Resolves an Envoy node to its snapshot key: `mesh/<m>/virtualNode/<n>#<options hash>`.
pub struct AppMeshResolver {
    registry: Arc<Registry>,
    new_keys: mpsc::UnboundedSender<String>,
}

impl NodeResolver for AppMeshResolver {
    fn snapshot_key(&self, node: &XdsNode) -> Result<String, tonic::Status> {
        let identity: ProxyIdentity = node
            .id
            .parse()
            .map_err(|e: TranslateError| tonic::Status::invalid_argument(e.to_string()))?;
        let options = match &node.metadata {
            Some(m) => ProxyOptions::from_metadata(m)
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?,
            None => ProxyOptions::default(),
        };
        let mut h = DefaultHasher::new();
        format!("{options:?}").hash(&mut h);
        let key = format!("{identity}#{:016x}", h.finish());
        let fresh = {
            let mut classes = self
                .registry
                .classes
                .lock()
                .map_err(|_| tonic::Status::internal("proxy registry poisoned"))?;
            let class = ProxyClass {
                identity,
                options,
                // See MIN_IDLE_CLASS_TTL: a class resolved now is not
                // forgotten before its stream watches it.
                last_active: Instant::now(),
            };
            classes.insert(key.clone(), class).is_none()
        };
        if fresh {
            // The runtime computes the first snapshot; the stream waits for it.
            let _ = self.new_keys.send(key.clone());
        }
        Ok(key)
    }
}

/// How long a proxy class with no connected proxy keeps its snapshot by
/// default: long enough that Envoys reconnecting after a restart of the
/// server or a network blip find their config ready, short enough that the
/// classes of deleted or renamed virtual nodes do not pile up.
pub const DEFAULT_IDLE_CLASS_TTL: Duration = Duration::from_secs(300);

/// The shortest TTL of an idle class. A stream resolves its class and then
/// watches the class's key without yielding in between; a class resolved
/// less than this long ago is never forgotten, so no stream can start
/// watching a key whose class was forgotten after it resolved it (it would
/// wait for a snapshot nobody computes).
pub const MIN_IDLE_CLASS_TTL: Duration = Duration::from_secs(1);

/// Builds the resolver for the ADS server and the runtime that feeds its cache.
pub fn new(store: SharedStore, cache: SnapshotCache) -> (AppMeshResolver, Runtime) {
    let registry = Arc::new(Registry::default());
    let (tx, rx) = mpsc::unbounded_channel();
    (
        AppMeshResolver {
            registry: registry.clone(),
            new_keys: tx,
        },
        Runtime {
            store,
            cache,
            registry,
            new_keys: rx,
            cloud_map: CloudMap::default(),
            meshes: HashMap::new(),
            deps: HashMap::new(),
            deps_memos: HashMap::new(),
            encoded: EncodedPool::default(),
            wanted: HashSet::new(),
            dormant: HashMap::new(),
            idle_class_ttl: DEFAULT_IDLE_CLASS_TTL,
        },
    )
}

/// A resource a proxy's config can depend on: a virtual node, service,
/// router (with its routes) or gateway (with its gateway routes), by name.
type Dep = (Kind, String);

/// What changed in one mesh during a burst of store events.
#[derive(Debug, Default)]
struct MeshChanges {
    /// The mesh record itself changed (egress filter, …): every proxy of it.
    mesh_wide: bool,
    names: HashSet<Dep>,
}

/// Which dependency a changed store key is: `res/{m}/rt/{router}/{route}`
/// counts as its router, `res/{m}/gr/{gateway}/{route}` as its gateway.
fn dep_of_key(key: &str) -> Option<Dep> {
    let mut parts = key.split('/');
    let (Some("res"), Some(_mesh), Some(code), Some(name)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let kind = match code {
        "rt" => Kind::VirtualRouter,
        "gr" => Kind::VirtualGateway,
        code => Kind::ALL.into_iter().find(|k| k.key_code() == code)?,
    };
    Some((kind, keys::unescape(name)))
}

/// Everything the config of a class is computed from, inside its mesh (the
/// mesh record aside): its own node or gateway, and for every virtual service
/// it reaches, that service's part ([`service_deps`], shared by all classes
/// that reach the service). A write that touches none of these cannot change
/// the proxy's config.
#[derive(Debug)]
struct ClassDeps {
    own: Dep,
    services: Vec<Arc<[Dep]>>,
}

impl ClassDeps {
    fn contains(&self, dep: &Dep) -> bool {
        self.own == *dep || self.services.iter().any(|s| s.contains(dep))
    }
}

/// What one virtual service brings into the config of a class that reaches
/// it: the service, and its provider — a virtual node, or a virtual router
/// with its routes and their target nodes.
fn service_deps(mesh: &MeshSnapshot, service: &str) -> Arc<[Dep]> {
    use weft_model::shapes::VirtualServiceProvider;
    let mut deps = vec![(Kind::VirtualService, service.to_string())];
    if let Some(vs) = mesh.virtual_services.get(service) {
        match &vs.spec.provider {
            Some(VirtualServiceProvider::VirtualNode(p)) => {
                deps.push((Kind::VirtualNode, p.virtual_node_name.clone()));
            }
            Some(VirtualServiceProvider::VirtualRouter(p)) => {
                let router = p.virtual_router_name.clone();
                for route in mesh.routes_of(&router) {
                    let spec = &route.spec;
                    let mut targets = Vec::new();
                    for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
                        targets.extend(http.action.weighted_targets.iter());
                    }
                    if let Some(g) = &spec.grpc_route {
                        targets.extend(g.action.weighted_targets.iter());
                    }
                    if let Some(t) = &spec.tcp_route {
                        targets.extend(t.action.weighted_targets.iter());
                    }
                    for t in targets {
                        deps.push((Kind::VirtualNode, t.virtual_node.clone()));
                    }
                }
                deps.push((Kind::VirtualRouter, router));
            }
            None => {}
        }
    }
    Arc::from(deps)
}

/// The dependencies of each virtual service of one mesh snapshot, computed
/// once: every class reaching a service shares them, whether it is
/// published in a refresh or on its first connection.
#[derive(Default)]
struct DepsMemo {
    /// The snapshot they were computed from. Every change of a mesh goes
    /// through `Arc::make_mut`, which leaves a weakly held snapshot behind
    /// in its old allocation: a memo of an older snapshot is never taken
    /// for the current one.
    snapshot: Weak<MeshSnapshot>,
    services: HashMap<String, Arc<[Dep]>>,
}

impl DepsMemo {
    fn of(mesh: &Arc<MeshSnapshot>) -> Self {
        Self {
            snapshot: Arc::downgrade(mesh),
            services: HashMap::new(),
        }
    }

    fn is_of(&self, mesh: &Arc<MeshSnapshot>) -> bool {
        std::ptr::eq(self.snapshot.as_ptr(), Arc::as_ptr(mesh))
    }

    fn service(&mut self, mesh: &MeshSnapshot, service: &str) -> Arc<[Dep]> {
        if let Some(deps) = self.services.get(service) {
            return deps.clone();
        }
        let deps = service_deps(mesh, service);
        self.services.insert(service.to_string(), deps.clone());
        deps
    }
}

/// Everything the config of `class` is computed from (see [`ClassDeps`]).
fn dependencies(mesh: &MeshSnapshot, class: &ProxyClass, memo: &mut DepsMemo) -> ClassDeps {
    use weft_model::shapes::Backend;
    use weft_translate::ProxyKind;
    let mut services: BTreeSet<&str> = BTreeSet::new();
    let own = match class.identity.kind {
        ProxyKind::VirtualNode => {
            if let Some(node) = mesh.virtual_nodes.get(&class.identity.name) {
                for b in node.spec.backends.iter().flatten() {
                    let Backend::VirtualService(vs) = b;
                    services.insert(&vs.virtual_service_name);
                }
            }
            (Kind::VirtualNode, class.identity.name.clone())
        }
        ProxyKind::VirtualGateway => {
            for ((gateway, _), gr) in &mesh.gateway_routes {
                if gateway != &class.identity.name {
                    continue;
                }
                let spec = &gr.spec;
                for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
                    services.insert(&http.action.target.virtual_service.virtual_service_name);
                }
                if let Some(g) = &spec.grpc_route {
                    services.insert(&g.action.target.virtual_service.virtual_service_name);
                }
            }
            (Kind::VirtualGateway, class.identity.name.clone())
        }
    };
    ClassDeps {
        own,
        services: services
            .into_iter()
            .map(|service| memo.service(mesh, service))
            .collect(),
    }
}

/// Keeps meshes in memory from the store and publishes translated snapshots.
pub struct Runtime {
    store: SharedStore,
    cache: SnapshotCache,
    registry: Arc<Registry>,
    new_keys: mpsc::UnboundedReceiver<String>,
    /// The instance registry's namespaces, services and instances.
    cloud_map: CloudMap,
    /// Every mesh, typed, by escaped name: kept up to date record by record
    /// from the change feed (each changed record is decoded once, straight
    /// from its stored bytes), never rebuilt from scratch.
    meshes: HashMap<String, Arc<MeshSnapshot>>,
    /// What each proxy class's last published config was computed from.
    deps: HashMap<String, ClassDeps>,
    /// The service dependencies of each mesh (by escaped name), for the
    /// snapshot each was computed from (see [`Runtime::take_memo`]).
    deps_memos: HashMap<String, DepsMemo>,
    /// Encoded resources shared between classes and kept between changes.
    encoded: EncodedPool,
    /// Meshes a proxy has asked for (by escaped name): their records are
    /// applied to `meshes` as they come. Never shrinks: a mesh whose proxies
    /// all left only keeps costing the decoding of its writes.
    wanted: HashSet<String>,
    /// The records of every other mesh, not decoded: the latest value of each
    /// key (`None`: deleted), applied by [`Runtime::want`].
    dormant: HashMap<String, BTreeMap<String, Option<Bytes>>>,
    /// How long a class no proxy is connected to is kept.
    idle_class_ttl: Duration,
}

/// The `data` member of a stored record (`StoredRecord`), decoded straight
/// into its typed shape; the tags are not needed here.
fn typed<T: DeserializeOwned + Stored>(key: &str, value: &[u8]) -> Option<T> {
    #[derive(serde::Deserialize)]
    struct Data<T> {
        data: T,
    }
    match serde_json::from_slice::<Data<T>>(value) {
        Ok(mut v) => {
            // Translation never reads a resource's ARN, uid or owners, and
            // every resource of a served mesh is held: ~0.2 KiB each.
            let metadata = v.data.metadata_mut();
            metadata.arn = String::new();
            metadata.uid = String::new();
            metadata.mesh_owner = String::new();
            metadata.resource_owner = String::new();
            Some(v.data)
        }
        Err(e) => {
            tracing::warn!(%key, error = %e, "stored resource does not match its shape; skipped");
            None
        }
    }
}

/// A stored App Mesh resource: what [`typed`] trims before the typed mesh
/// holds it.
trait Stored {
    fn metadata_mut(&mut self) -> &mut ResourceMetadata;
}

macro_rules! stored {
    ($($shape:ty),*) => {$(
        impl Stored for $shape {
            fn metadata_mut(&mut self) -> &mut ResourceMetadata {
                &mut self.metadata
            }
        }
    )*};
}

stored!(
    MeshData,
    VirtualNodeData,
    VirtualServiceData,
    VirtualRouterData,
    RouteData,
    VirtualGatewayData,
    GatewayRouteData
);

/// The mesh a `mesh/` or `res/` key belongs to (escaped), and the kind.
fn classify(key: &str) -> Option<(String, Kind)> {
    let mut parts = key.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("mesh"), Some(mesh), None) => Some((mesh.to_string(), Kind::Mesh)),
        (Some("res"), Some(mesh), Some(code)) => {
            let kind = Kind::ALL.into_iter().find(|k| k.key_code() == code)?;
            Some((mesh.to_string(), kind))
        }
        _ => None,
    }
}

/// `(namespace name, service name)`: how a virtual node names a Cloud Map service.
type ServiceName = (String, String);

/// The registry as translation needs it, kept from the change feed.
///
/// Instances are keyed by service id (as in the store) so that an instance
/// change costs a map update; names are resolved only when a mesh snapshot
/// is (re)built.
#[derive(Default)]
struct CloudMap {
    /// Namespace id → name.
    namespaces: HashMap<String, String>,
    /// Service id → (namespace id, service name).
    services: HashMap<String, (String, String)>,
    /// Service id → instance id → instance.
    instances: HashMap<String, BTreeMap<String, CloudMapInstance>>,
}

/// What a registry change may have changed, to find the meshes to recompute.
#[derive(Default)]
struct Touched {
    /// Services whose instances (or existence) changed.
    services: HashSet<ServiceName>,
    /// Namespaces that appeared or went: every service named in them.
    namespaces: HashSet<String>,
}

impl Touched {
    fn is_empty(&self) -> bool {
        self.services.is_empty() && self.namespaces.is_empty()
    }

    fn hits(&self, name: &ServiceName) -> bool {
        self.namespaces.contains(&name.0) || self.services.contains(name)
    }
}

fn registry_record<T: DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(%key, error = %e, "unreadable registry record skipped");
            None
        }
    }
}

/// An instance as translation takes it.
fn cloud_map_instance(instance: &Instance) -> CloudMapInstance {
    CloudMapInstance {
        id: instance.id.clone(),
        ipv4: instance.ipv4().map(|a| a.to_string()),
        ipv6: instance.ipv6().map(|a| a.to_string()),
        port: instance.port(),
        attributes: instance.attributes.clone(),
        healthy: instance.is_healthy(),
    }
}

impl CloudMap {
    /// The names of a service, once both it and its namespace are known.
    fn service_name(&self, service_id: &str) -> Option<ServiceName> {
        let (namespace_id, name) = self.services.get(service_id)?;
        let namespace = self.namespaces.get(namespace_id)?;
        Some((namespace.clone(), name.clone()))
    }

    /// Applies one change of a registry key (`value` `None` for a delete) and
    /// records what it touched. Keys the control plane does not need (name
    /// indexes, guards, operations, idempotency records) are ignored.
    fn apply(&mut self, key: &str, value: Option<&[u8]>, touched: &mut Touched) {
        if let Some((service_id, instance_id)) = registry_keys::parse_instance(key) {
            let changed = match value.and_then(|v| registry_record::<Instance>(key, v)) {
                Some(instance) => {
                    let instance = cloud_map_instance(&instance);
                    let instances = self.instances.entry(service_id.clone()).or_default();
                    instances.insert(instance_id, instance.clone()) != Some(instance)
                }
                None => {
                    let removed = match self.instances.get_mut(&service_id) {
                        Some(instances) => instances.remove(&instance_id).is_some(),
                        None => false,
                    };
                    if self
                        .instances
                        .get(&service_id)
                        .is_some_and(BTreeMap::is_empty)
                    {
                        self.instances.remove(&service_id);
                    }
                    removed
                }
            };
            // An instance of a service not known yet is picked up when the
            // service record arrives (which touches the service).
            if changed {
                if let Some(name) = self.service_name(&service_id) {
                    touched.services.insert(name);
                }
            }
        } else if let Some(id) = key.strip_prefix(registry_keys::SERVICES) {
            if let Some(name) = self.service_name(id) {
                touched.services.insert(name);
            }
            match value.and_then(|v| registry_record::<ServiceRecord>(key, v)) {
                Some(service) => {
                    self.services
                        .insert(id.to_string(), (service.namespace_id, service.name));
                }
                None => {
                    self.services.remove(id);
                }
            }
            if let Some(name) = self.service_name(id) {
                touched.services.insert(name);
            }
        } else if let Some(id) = key.strip_prefix(registry_keys::NAMESPACES) {
            if let Some(name) = self.namespaces.get(id) {
                touched.namespaces.insert(name.clone());
            }
            match value.and_then(|v| registry_record::<NamespaceRecord>(key, v)) {
                Some(namespace) => {
                    touched.namespaces.insert(namespace.name.clone());
                    self.namespaces.insert(id.to_string(), namespace.name);
                }
                None => {
                    self.namespaces.remove(id);
                }
            }
        }
    }

    /// The healthy and unhealthy instances of each named service (translation
    /// filters them), with an entry — possibly empty — for every name, so
    /// that the snapshot also records which services it depends on.
    fn instances_of<'a>(
        &self,
        names: impl Iterator<Item = &'a ServiceName>,
    ) -> BTreeMap<ServiceName, Vec<CloudMapInstance>> {
        let wanted: BTreeSet<&ServiceName> = names.collect();
        let mut out: BTreeMap<ServiceName, Vec<CloudMapInstance>> = wanted
            .iter()
            .map(|name| ((*name).clone(), Vec::new()))
            .collect();
        if wanted.is_empty() {
            return out;
        }
        // One pass over the services (few) rather than a name index to keep
        // consistent: names are resolved only when a snapshot is built.
        for service_id in self.services.keys() {
            let Some(name) = self.service_name(service_id) else {
                continue;
            };
            if let (Some(list), Some(instances)) =
                (out.get_mut(&name), self.instances.get(service_id))
            {
                list.extend(instances.values().cloned());
            }
        }
        out
    }
}

/// Whether a virtual node is discovered through Cloud Map (Weft's registry).
fn uses_cloud_map(node: &VirtualNodeData) -> bool {
    matches!(
        node.spec.service_discovery,
        Some(ServiceDiscovery::AwsCloudMap(_))
    )
}

/// The Cloud Map services the virtual nodes of a mesh name.
fn cloud_map_names(snapshot: &MeshSnapshot) -> BTreeSet<ServiceName> {
    snapshot
        .virtual_nodes
        .values()
        .filter_map(|node| match node.spec.service_discovery.as_ref()? {
            ServiceDiscovery::AwsCloudMap(cm) => {
                Some((cm.namespace_name.clone(), cm.service_name.clone()))
            }
            ServiceDiscovery::Dns(_) => None,
        })
        .collect()
}

impl Runtime {
    /// Sets how long a proxy class with no connected proxy keeps its
    /// snapshot before it is forgotten (default [`DEFAULT_IDLE_CLASS_TTL`];
    /// at least [`MIN_IDLE_CLASS_TTL`]).
    pub fn with_idle_class_ttl(mut self, ttl: Duration) -> Self {
        self.idle_class_ttl = ttl.max(MIN_IDLE_CLASS_TTL);
        self
    }

    /// Forgets the proxy classes that no stream has watched for the TTL
    /// (counted from the last sweep that found one watching, so at most a
    /// sweep's period short of it):
    /// their registration, snapshot, dependencies and the encoded resources
    /// only they held. Without this, every virtual node (and option set)
    /// that ever had a proxy would be kept and recomputed on every change of
    /// its mesh for the life of the server. A proxy of a forgotten class that
    /// connects again is registered afresh and waits for its first snapshot,
    /// as on its first connection. Also lets go of the encoded resources no
    /// snapshot or stream holds any more. Returns how many were forgotten.
    fn forget_idle_classes(&mut self, now: Instant) -> usize {
        let mut gone = Vec::new();
        {
            let Ok(mut classes) = self.registry.classes.lock() else {
                return 0;
            };
            // Under the registry's lock, so that a stream resolving a class
            // meanwhile either finds it (and it is kept: just resolved) or
            // registers it afresh.
            classes.retain(|key, class| {
                if self.cache.is_watched(key) {
                    class.last_active = now;
                    return true;
                }
                let idle = now.saturating_duration_since(class.last_active) >= self.idle_class_ttl;
                let forget = idle && self.cache.remove_if_unwatched(key);
                if forget {
                    gone.push(key.clone());
                }
                !forget
            });
        }
        for key in &gone {
            self.deps.remove(key);
        }
        // Also when no class went: the sweep after a refresh cannot free the
        // resources of the snapshots it replaced while streams still send
        // them; once they have moved on, only the pool holds them.
        self.encoded.sweep();
        if !gone.is_empty() {
            tracing::info!(
                forgotten = gone.len(),
                encoded = self.encoded.len(),
                "idle proxy classes forgotten"
            );
        }
        gone.len()
    }

    /// Reads every mesh resource and registry record; returns the revision to
    /// follow the change feed from.
    ///
    /// The prefixes are read one after another, at increasing revisions; the
    /// feed is followed from the *first* one, so that nothing written between
    /// the reads is missed. Replaying the changes up to the later reads is
    /// harmless: every event carries the key's whole value, so applying them
    /// in order ends in the current state.
    async fn load(&mut self) -> Result<i64, StoreError> {
        self.meshes.clear();
        self.dormant.clear();
        self.cloud_map = CloudMap::default();
        let mut revision = None;
        // Meshes before their resources: a resource whose mesh is unknown is
        // skipped, and comes back from the feed after its mesh's creation.
        for prefix in ["mesh/", "res/"] {
            let result = self.store.range(Range::prefix(prefix)).await?;
            revision = Some(revision.unwrap_or(result.revision).min(result.revision));
            for kv in result.kvs {
                self.follow(&kv.key, Some(kv.value));
            }
        }
        let mut ignored = Touched::default();
        for prefix in [
            registry_keys::NAMESPACES,
            registry_keys::SERVICES,
            registry_keys::INSTANCES,
        ] {
            let result = self.store.range(Range::prefix(prefix)).await?;
            revision = Some(revision.unwrap_or(result.revision).min(result.revision));
            for kv in result.kvs {
                self.cloud_map
                    .apply(&kv.key, Some(kv.value.as_ref()), &mut ignored);
            }
        }
        let meshes: Vec<String> = self.meshes.keys().cloned().collect();
        for escaped in meshes {
            self.refresh_cloud_map(&escaped);
        }
        for snap in self.meshes.values_mut() {
            Arc::make_mut(snap).compact();
        }
        Ok(revision.unwrap_or(0))
    }

    /// Applies one stored `mesh/` or `res/` record (`None`: deleted) to its
    /// typed mesh. Returns whether a virtual node discovered through Cloud
    /// Map changed, which can change the registry services the mesh names.
    ///
    /// The snapshot is changed in place (`Arc::make_mut`): between refreshes
    /// nobody else holds it strongly, so nothing is copied (a dependency
    /// memo's weak reference makes the first change move it, not clone it).
    fn upsert(&mut self, key: &str, value: Option<&[u8]>) -> bool {
        let Some((escaped, kind)) = classify(key) else {
            return false;
        };
        if kind == Kind::Mesh {
            match value.and_then(|v| typed(key, v)) {
                Some(mesh) => match self.meshes.get_mut(&escaped) {
                    Some(snap) => Arc::make_mut(snap).mesh = mesh,
                    None => {
                        self.meshes
                            .insert(escaped, Arc::new(MeshSnapshot::new(mesh)));
                    }
                },
                None => {
                    self.meshes.remove(&escaped);
                }
            }
            return false;
        }
        let Some(snap) = self.meshes.get_mut(&escaped) else {
            return false;
        };
        let snap = Arc::make_mut(snap);
        // `res/{m}/{code}/{name}` or `res/{m}/{code}/{parent}/{name}`.
        let mut names = key.split('/').skip(3).map(keys::unescape);
        let (Some(first), second) = (names.next(), names.next()) else {
            return false;
        };
        match (kind, value) {
            // Only a node discovered through Cloud Map (before or after) can
            // change which registry services the mesh names.
            (Kind::VirtualNode, Some(v)) => match typed::<VirtualNodeData>(key, v) {
                Some(d) => {
                    let named = uses_cloud_map(&d);
                    let old = snap.virtual_nodes.insert(d.virtual_node_name.clone(), d);
                    named || old.as_ref().is_some_and(uses_cloud_map)
                }
                None => false,
            },
            (Kind::VirtualNode, None) => snap
                .virtual_nodes
                .remove(&first)
                .as_ref()
                .is_some_and(uses_cloud_map),
            (Kind::VirtualService, Some(v)) => {
                if let Some(d) = typed::<VirtualServiceData>(key, v) {
                    snap.virtual_services
                        .insert(d.virtual_service_name.clone(), d);
                }
                false
            }
            (Kind::VirtualService, None) => {
                snap.virtual_services.remove(&first);
                false
            }
            (Kind::VirtualRouter, Some(v)) => {
                if let Some(d) = typed::<VirtualRouterData>(key, v) {
                    snap.virtual_routers
                        .insert(d.virtual_router_name.clone(), d);
                }
                false
            }
            (Kind::VirtualRouter, None) => {
                snap.virtual_routers.remove(&first);
                false
            }
            (Kind::Route, Some(v)) => {
                if let Some(d) = typed::<RouteData>(key, v) {
                    snap.routes
                        .insert((d.virtual_router_name.clone(), d.route_name.clone()), d);
                }
                false
            }
            (Kind::Route, None) => {
                if let Some(second) = second {
                    snap.routes.remove(&(first, second));
                }
                false
            }
            (Kind::VirtualGateway, Some(v)) => {
                if let Some(d) = typed::<VirtualGatewayData>(key, v) {
                    snap.virtual_gateways
                        .insert(d.virtual_gateway_name.clone(), d);
                }
                false
            }
            (Kind::VirtualGateway, None) => {
                snap.virtual_gateways.remove(&first);
                false
            }
            (Kind::GatewayRoute, Some(v)) => {
                if let Some(d) = typed::<GatewayRouteData>(key, v) {
                    snap.gateway_routes.insert(
                        (d.virtual_gateway_name.clone(), d.gateway_route_name.clone()),
                        d,
                    );
                }
                false
            }
            (Kind::GatewayRoute, None) => {
                if let Some(second) = second {
                    snap.gateway_routes.remove(&(first, second));
                }
                false
            }
            (Kind::Mesh, _) => false,
        }
    }

    /// Takes in one stored `mesh/` or `res/` record: applied at once if a
    /// proxy wants its mesh, else held undecoded until one does. A deleted
    /// mesh that nobody wants takes its held records with it.
    fn follow(&mut self, key: &str, value: Option<Bytes>) {
        let Some((escaped, kind)) = classify(key) else {
            return;
        };
        if self.wanted.contains(&escaped) {
            self.upsert(key, value.as_deref());
        } else {
            self.hold(escaped, kind, key, value);
        }
    }

    /// Holds a record of a mesh nobody wants (see [`Runtime::follow`]).
    fn hold(&mut self, escaped: String, kind: Kind, key: &str, value: Option<Bytes>) {
        if kind == Kind::Mesh && value.is_none() {
            self.dormant.remove(&escaped);
        } else {
            self.dormant
                .entry(escaped)
                .or_default()
                .insert(key.to_string(), value);
        }
    }

    /// Marks a mesh as wanted by a proxy; the first time, applies the records
    /// held for it and names its Cloud Map services.
    fn want(&mut self, escaped: &str) {
        if !self.wanted.insert(escaped.to_string()) {
            return;
        }
        let Some(records) = self.dormant.remove(escaped) else {
            return;
        };
        // In key order `mesh/…` comes before `res/…`, so the mesh record is
        // applied first (a resource of an unknown mesh would be skipped).
        for (key, value) in &records {
            self.upsert(key, value.as_deref());
        }
        self.refresh_cloud_map(escaped);
        if let Some(snap) = self.meshes.get_mut(escaped) {
            Arc::make_mut(snap).compact();
        }
    }

    /// Sets the instances of the Cloud Map services a mesh's nodes name.
    fn refresh_cloud_map(&mut self, escaped: &str) {
        let Some(snap) = self.meshes.get_mut(escaped) else {
            return;
        };
        let names = cloud_map_names(snap);
        if names.iter().eq(snap.cloud_map.keys()) {
            // Same services: their instances are kept current by `refresh`.
            return;
        }
        let instances = self.cloud_map.instances_of(names.iter());
        Arc::make_mut(snap).cloud_map = instances;
    }

    /// The service dependencies kept for `mesh` (the mesh's current
    /// snapshot), or a fresh memo if they were computed from an older one.
    fn take_memo(&mut self, escaped: &str, mesh: &Arc<MeshSnapshot>) -> DepsMemo {
        self.deps_memos
            .remove(escaped)
            .filter(|memo| memo.is_of(mesh))
            .unwrap_or_else(|| DepsMemo::of(mesh))
    }

    /// The typed snapshot of a mesh.
    fn mesh(&self, escaped: &str) -> Option<Arc<MeshSnapshot>> {
        self.meshes.get(escaped).cloned()
    }

    /// Recomputes the snapshot of one proxy class.
    fn publish(&mut self, key: &str, class: &ProxyClass) {
        let escaped = keys::escape(&class.identity.mesh);
        self.want(&escaped);
        let Some(mesh) = self.mesh(&escaped) else {
            // No such mesh (yet): the proxy waits with no config.
            return;
        };
        let mut memo = self.take_memo(&escaped, &mesh);
        self.publish_with(key, class, &mut Translator::new(&mesh), &mut memo);
        self.deps_memos.insert(escaped, memo);
        self.encoded.end_round();
    }

    /// Recomputes the snapshot of one proxy class with the translator (and
    /// dependency memo) of its mesh's current snapshot, shared by the classes
    /// of one refresh.
    fn publish_with(
        &mut self,
        key: &str,
        class: &ProxyClass,
        translator: &mut Translator<'_>,
        memo: &mut DepsMemo,
    ) {
        let mesh = translator.snapshot();
        self.deps
            .insert(key.to_string(), dependencies(mesh, class, memo));
        match translator.translate_shared(&class.identity, &class.options) {
            Ok(resources) => match self.encoded.snapshot(resources) {
                Ok(snapshot) => self.cache.set_snapshot(key, Arc::new(snapshot)),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "translated resources are not a valid snapshot")
                }
            },
            Err(
                TranslateError::VirtualNodeNotFound { .. }
                | TranslateError::VirtualGatewayNotFound { .. },
            ) => {}
            Err(e) => tracing::warn!(%key, error = %e, "translation failed"),
        }
    }

    /// The classes a burst of changes affects (see [`Runtime::refresh`]),
    /// cloned out of the registry; the others are not copied.
    fn affected_classes(
        &self,
        changes: &BTreeMap<String, MeshChanges>,
        registry_changed: &BTreeSet<String>,
    ) -> Vec<(String, ProxyClass)> {
        let Ok(classes) = self.registry.classes.lock() else {
            return Vec::new();
        };
        classes
            .iter()
            .filter(|(key, class)| {
                let escaped = keys::escape(&class.identity.mesh);
                registry_changed.contains(&escaped)
                    || changes.get(&escaped).is_some_and(|c| {
                        c.mesh_wide
                            || match self.deps.get(key.as_str()) {
                                Some(deps) => c.names.iter().any(|n| deps.contains(n)),
                                None => true,
                            }
                    })
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Recomputes the proxies whose config a burst of changes can have
    /// changed: in each mesh with changes, the classes that depend on a
    /// changed resource (every class on a change of the mesh record), and the
    /// proxies of meshes whose Cloud Map services changed (`touched`).
    fn refresh(&mut self, changes: &BTreeMap<String, MeshChanges>, touched: &Touched) {
        let mut registry_changed = BTreeSet::new();
        if !touched.is_empty() {
            // Only built meshes can be out of date (the others are built from
            // the current registry when first needed), and only those naming
            // a touched service. Their App Mesh part is unchanged: only the
            // instances are replaced, in place when nobody else holds the
            // snapshot.
            for (escaped, snap) in self.meshes.iter_mut() {
                if snap.cloud_map.keys().any(|name| touched.hits(name)) {
                    let instances = self.cloud_map.instances_of(snap.cloud_map.keys());
                    Arc::make_mut(snap).cloud_map = instances;
                    registry_changed.insert(escaped.clone());
                }
            }
        }
        if changes.is_empty() && registry_changed.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let affected = self.affected_classes(changes, &registry_changed);
        let published = affected.len();
        // One translator (and dependency memo) per mesh for the whole refresh:
        // what the classes share, such as the clusters of route targets, is
        // built once.
        let meshes: HashMap<String, Arc<MeshSnapshot>> = affected
            .iter()
            .map(|(_, class)| keys::escape(&class.identity.mesh))
            .collect::<BTreeSet<String>>()
            .into_iter()
            .filter_map(|escaped| {
                let mesh = self.mesh(&escaped)?;
                Some((escaped, mesh))
            })
            .collect();
        let mut work: HashMap<&str, (Translator<'_>, DepsMemo)> = meshes
            .iter()
            .map(|(escaped, mesh)| {
                let memo = self.take_memo(escaped, mesh);
                (escaped.as_str(), (Translator::new(mesh), memo))
            })
            .collect();
        for (key, class) in &affected {
            let escaped = keys::escape(&class.identity.mesh);
            // No such mesh (yet): the proxy waits with no config.
            if let Some((translator, memo)) = work.get_mut(escaped.as_str()) {
                self.publish_with(key, class, translator, memo);
            }
        }
        for (escaped, (_, memo)) in work {
            self.deps_memos.insert(escaped.to_string(), memo);
        }
        drop(meshes);
        // The snapshots just replaced may have held the last users of some
        // encoded resources (none were replaced if nothing was published).
        if published > 0 {
            self.encoded.sweep();
        }
        tracing::debug!(
            published,
            encoded = self.encoded.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "proxy classes recomputed"
        );
    }

    fn apply(
        &mut self,
        event: WatchEvent,
        changes: &mut BTreeMap<String, MeshChanges>,
        touched: &mut Touched,
    ) {
        if event.key.starts_with(registry_keys::PREFIX) {
            self.cloud_map
                .apply(&event.key, event.value.as_deref(), touched);
            return;
        }
        let Some((mesh, kind)) = classify(&event.key) else {
            return;
        };
        if !self.wanted.contains(&mesh) {
            self.hold(mesh, kind, &event.key, event.value);
            return;
        }
        let dep = dep_of_key(&event.key);
        if self.upsert(&event.key, event.value.as_deref()) {
            self.refresh_cloud_map(&mesh);
        }
        let entry = changes.entry(mesh).or_default();
        match dep {
            Some(dep) => {
                entry.names.insert(dep);
            }
            None => entry.mesh_wide = true,
        }
    }

    /// Runs until `shutdown` resolves: follows the store, publishes snapshots.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Idle classes are looked for a few times per TTL (at most every
        // 30 s, at least every 100 ms).
        let period =
            (self.idle_class_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut idle_sweep = tokio::time::interval(period);
        idle_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'reload: loop {
            let revision = match self.load().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "loading the meshes failed; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            };
            // After a (re)load every proxy is recomputed.
            self.deps.clear();
            let all: BTreeMap<String, MeshChanges> = self
                .meshes
                .keys()
                .map(|m| {
                    (
                        m.clone(),
                        MeshChanges {
                            mesh_wide: true,
                            ..Default::default()
                        },
                    )
                })
                .collect();
            self.refresh(&all, &Touched::default());
            let mut feed = match self.store.watch("", revision).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the store failed; reloading");
                    continue 'reload;
                }
            };
            loop {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = idle_sweep.tick() => {
                        self.forget_idle_classes(Instant::now());
                    }
                    key = self.new_keys.recv() => {
                        let Some(key) = key else { return };
                        let class = self.registry.classes.lock().ok().and_then(|c| c.get(&key).cloned());
                        if let Some(class) = class {
                            self.publish(&key, &class);
                        }
                    }
                    event = feed.next() => {
                        let mut changes = BTreeMap::new();
                        let mut touched = Touched::default();
                        let mut next = event;
                        // Apply every change that is ready now, then recompute once.
                        loop {
                            match next {
                                Some(Ok(ev)) => self.apply(ev, &mut changes, &mut touched),
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "change feed interrupted; reloading");
                                    continue 'reload;
                                }
                                None => {
                                    tracing::warn!("change feed ended; reloading");
                                    continue 'reload;
                                }
                            }
                            match feed.next().now_or_never() {
                                Some(n) => next = n,
                                None => break,
                            }
                        }
                        self.refresh(&changes, &touched);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use weft_translate::ProxyIdentity;

    fn data<T: DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn meta() -> serde_json::Value {
        json!({"arn": "a", "createdAt": 0, "lastUpdatedAt": 0, "meshOwner": "0", "resourceOwner": "0", "uid": "u", "version": 1})
    }

    use serde_json::json;

    /// front → service colors → router colors → routes to red and blue; green is unrelated.
    fn mesh() -> MeshSnapshot {
        let mut m = MeshSnapshot::new(data(
            json!({"meshName": "apps", "metadata": meta(), "spec": {}, "status": {}}),
        ));
        for (name, backends) in [
            ("front", vec!["colors"]),
            ("red", vec![]),
            ("blue", vec![]),
            ("green", vec![]),
        ] {
            let backends: Vec<_> = backends
                .iter()
                .map(|b| json!({"virtualService": {"virtualServiceName": b}}))
                .collect();
            m.virtual_nodes.insert(
                name.into(),
                data(
                    json!({"meshName": "apps", "virtualNodeName": name, "metadata": meta(),
                    "spec": {"backends": backends}, "status": {"status": "ACTIVE"}}),
                ),
            );
        }
        m.virtual_services.insert(
            "colors".into(),
            data(json!({"meshName": "apps", "virtualServiceName": "colors", "metadata": meta(),
                "spec": {"provider": {"virtualRouter": {"virtualRouterName": "r"}}}, "status": {"status": "ACTIVE"}})),
        );
        m.routes.insert(
            ("r".into(), "split".into()),
            data(json!({"meshName": "apps", "virtualRouterName": "r", "routeName": "split", "metadata": meta(),
                "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
                    {"virtualNode": "red", "weight": 1}, {"virtualNode": "blue", "weight": 1}]}}},
                "status": {"status": "ACTIVE"}})),
        );
        m
    }

    #[test]
    fn a_client_depends_on_its_services_routers_and_their_targets_only() {
        let class = ProxyClass {
            identity: ProxyIdentity::virtual_node("apps", "front"),
            options: ProxyOptions::default(),
            last_active: Instant::now(),
        };
        let deps = dependencies(&mesh(), &class, &mut DepsMemo::default());
        for dep in [
            (Kind::VirtualNode, "front"),
            (Kind::VirtualService, "colors"),
            (Kind::VirtualRouter, "r"),
            (Kind::VirtualNode, "red"),
            (Kind::VirtualNode, "blue"),
        ] {
            assert!(deps.contains(&(dep.0, dep.1.to_string())), "{dep:?}");
        }
        assert!(!deps.contains(&(Kind::VirtualNode, "green".to_string())));
    }

    fn record(data: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"data": data, "tags": []})).unwrap()
    }

    /// A runtime on a fresh embedded store (kept alive by the returned folder).
    async fn runtime() -> (tempfile::TempDir, Runtime) {
        let dir = tempfile::tempdir().unwrap();
        let store = weft_store::EmbeddedStore::open(weft_store::EmbeddedOptions::new(dir.path()))
            .await
            .unwrap();
        let (_resolver, rt) = new(store, SnapshotCache::new());
        (dir, rt)
    }

    #[tokio::test]
    async fn the_typed_mesh_follows_creates_updates_and_deletes_record_by_record() {
        let (_dir, mut rt) = runtime().await;
        let m = meta();
        let node = |name: &str, backend: &str| {
            record(
                json!({"meshName": "apps", "virtualNodeName": name, "metadata": m,
                "spec": {"backends": [{"virtualService": {"virtualServiceName": backend}}]},
                "status": {"status": "ACTIVE"}}),
            )
        };
        // A resource of an unknown mesh is skipped (the feed brings it back after the mesh).
        assert!(!rt.upsert("res/apps/vn/front", Some(&node("front", "a"))));
        assert!(rt.mesh("apps").is_none());
        rt.upsert(
            "mesh/apps",
            Some(&record(
                json!({"meshName": "apps", "metadata": meta(), "spec": {}, "status": {}}),
            )),
        );
        // A node without Cloud Map discovery does not change the registry services named.
        assert!(!rt.upsert("res/apps/vn/front", Some(&node("front", "a"))));
        rt.upsert(
            "res/apps/rt/r/split",
            Some(&record(
                json!({"meshName": "apps", "virtualRouterName": "r", "routeName": "split",
                "metadata": meta(), "spec": {"tcpRoute": {"action": {"weightedTargets": [
                    {"virtualNode": "front", "weight": 1}]}}}, "status": {"status": "ACTIVE"}}),
            )),
        );
        let held = rt.mesh("apps").unwrap();
        // An update replaces the node; a snapshot handed out earlier is not changed under its holder.
        rt.upsert("res/apps/vn/front", Some(&node("front", "b")));
        let now = rt.mesh("apps").unwrap();
        let backend = |s: &MeshSnapshot| {
            let weft_model::shapes::Backend::VirtualService(vs) =
                &s.virtual_nodes["front"].spec.backends.as_ref().unwrap()[0];
            vs.virtual_service_name.clone()
        };
        assert_eq!(backend(&held), "a");
        assert_eq!(backend(&now), "b");
        assert_eq!(now.routes_of("r").count(), 1);
        // Translation does not read the metadata strings, so the typed mesh does not hold them.
        let metadata = &now.virtual_nodes["front"].metadata;
        assert!(metadata.arn.is_empty() && metadata.uid.is_empty());
        assert_eq!(metadata.version, 1);
        // Deletes are found by the names in the key.
        assert!(!rt.upsert("res/apps/vn/front", None));
        // One discovered through Cloud Map does, when it comes and when it goes.
        let cm = record(
            json!({"meshName": "apps", "virtualNodeName": "cm", "metadata": meta(),
            "spec": {"serviceDiscovery": {"awsCloudMap": {"namespaceName": "ns", "serviceName": "s"}}},
            "status": {"status": "ACTIVE"}}),
        );
        assert!(rt.upsert("res/apps/vn/cm", Some(&cm)));
        rt.refresh_cloud_map("apps");
        assert!(rt
            .mesh("apps")
            .unwrap()
            .cloud_map
            .contains_key(&("ns".to_string(), "s".to_string())));
        assert!(rt.upsert("res/apps/vn/cm", None));
        rt.refresh_cloud_map("apps");
        assert!(rt.mesh("apps").unwrap().cloud_map.is_empty());
        rt.upsert("res/apps/rt/r/split", None);
        let now = rt.mesh("apps").unwrap();
        assert!(now.virtual_nodes.is_empty());
        assert_eq!(now.routes_of("r").count(), 0);
        rt.upsert("mesh/apps", None);
        assert!(rt.mesh("apps").is_none());
    }

    #[tokio::test]
    async fn a_mesh_no_proxy_wants_is_decoded_only_when_its_first_proxy_connects() {
        let (_dir, mut rt) = runtime().await;
        let mesh = |name: &str| {
            Bytes::from(record(
                json!({"meshName": name, "metadata": meta(), "spec": {}, "status": {}}),
            ))
        };
        let node = |name: &str, backend: &str| {
            Bytes::from(record(
                json!({"meshName": "apps", "virtualNodeName": name, "metadata": meta(),
                "spec": {"backends": [{"virtualService": {"virtualServiceName": backend}}]},
                "status": {"status": "ACTIVE"}}),
            ))
        };
        let backend = |s: &MeshSnapshot, node: &str| {
            let weft_model::shapes::Backend::VirtualService(vs) =
                &s.virtual_nodes[node].spec.backends.as_ref().unwrap()[0];
            vs.virtual_service_name.clone()
        };
        // Writes to a mesh no proxy wants are held as they were stored.
        rt.follow("mesh/apps", Some(mesh("apps")));
        rt.follow("res/apps/vn/front", Some(node("front", "a")));
        rt.follow("res/apps/vn/back", Some(node("back", "x")));
        rt.follow("res/apps/vn/front", Some(node("front", "b")));
        rt.follow("res/apps/vn/back", None);
        assert!(rt.mesh("apps").is_none());
        assert_eq!(rt.dormant["apps"].len(), 3);

        // Its first proxy: the latest of every record is applied.
        rt.want("apps");
        let snap = rt.mesh("apps").unwrap();
        assert_eq!(backend(&snap, "front"), "b");
        assert!(!snap.virtual_nodes.contains_key("back"));
        assert!(!rt.dormant.contains_key("apps"));

        // From then on its writes are applied as they come.
        rt.follow("res/apps/vn/later", Some(node("later", "c")));
        assert_eq!(backend(&rt.mesh("apps").unwrap(), "later"), "c");

        // A mesh deleted while nobody wanted it leaves nothing behind.
        rt.follow("mesh/gone", Some(mesh("gone")));
        rt.follow("mesh/gone", None);
        assert!(!rt.dormant.contains_key("gone"));
        rt.want("gone");
        assert!(rt.mesh("gone").is_none());
    }

    /// A stored record as the change feed delivers it.
    fn event(key: &str, data: serde_json::Value) -> WatchEvent {
        WatchEvent {
            revision: 0,
            key: key.to_string(),
            value: Some(Bytes::from(record(data))),
        }
    }

    /// Route `split` of router `r`, all to `target`.
    fn route_to(target: &str) -> serde_json::Value {
        json!({"meshName": "apps", "virtualRouterName": "r", "routeName": "split",
            "metadata": meta(), "spec": {"httpRoute": {"match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": target, "weight": 1}]}}},
            "status": {"status": "ACTIVE"}})
    }

    /// A node serving HTTP on 8080, found by DNS.
    fn served(name: &str) -> serde_json::Value {
        json!({"meshName": "apps", "virtualNodeName": name, "metadata": meta(),
            "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": format!("{name}.apps.local")}}},
            "status": {"status": "ACTIVE"}})
    }

    /// `apps`, wanted and refreshed: front calls colors, provided by router
    /// r (HTTP on 8080) whose route goes to `target`; red and blue serve.
    fn colors_mesh(rt: &mut Runtime, target: &str) {
        rt.want("apps");
        let mut changes = BTreeMap::new();
        let mut touched = Touched::default();
        for ev in [
            event(
                "mesh/apps",
                json!({"meshName": "apps", "metadata": meta(), "spec": {}, "status": {}}),
            ),
            event(
                "res/apps/vn/front",
                json!({"meshName": "apps", "virtualNodeName": "front", "metadata": meta(),
                "spec": {"backends": [{"virtualService": {"virtualServiceName": "colors"}}]},
                "status": {"status": "ACTIVE"}}),
            ),
            event("res/apps/vn/red", served("red")),
            event("res/apps/vn/blue", served("blue")),
            event(
                "res/apps/vs/colors",
                json!({"meshName": "apps", "virtualServiceName": "colors", "metadata": meta(),
                "spec": {"provider": {"virtualRouter": {"virtualRouterName": "r"}}},
                "status": {"status": "ACTIVE"}}),
            ),
            event(
                "res/apps/vr/r",
                json!({"meshName": "apps", "virtualRouterName": "r", "metadata": meta(),
                "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]},
                "status": {"status": "ACTIVE"}}),
            ),
            event("res/apps/rt/r/split", route_to(target)),
        ] {
            rt.apply(ev, &mut changes, &mut touched);
        }
        rt.refresh(&changes, &touched);
    }

    /// front's Envoy connects: its class is registered and published on its
    /// own. Returns the class's key.
    fn connect_front(rt: &mut Runtime) -> String {
        let class = ProxyClass {
            identity: ProxyIdentity::virtual_node("apps", "front"),
            options: ProxyOptions::default(),
            last_active: Instant::now(),
        };
        let key = "front-key".to_string();
        rt.registry
            .classes
            .lock()
            .unwrap()
            .insert(key.clone(), class.clone());
        rt.publish(&key, &class);
        key
    }

    /// Applies one record and refreshes the classes it affects.
    fn change(rt: &mut Runtime, ev: WatchEvent) {
        let mut changes = BTreeMap::new();
        let mut touched = Touched::default();
        rt.apply(ev, &mut changes, &mut touched);
        rt.refresh(&changes, &touched);
    }

    #[tokio::test]
    async fn the_resources_of_a_replaced_snapshot_are_let_go_once_no_stream_sends_them() {
        let (_dir, mut rt) = runtime().await;
        colors_mesh(&mut rt, "red");
        let key = connect_front(&mut rt);
        let pooled = rt.encoded.len();

        // The route moves to blue while front's stream still sends the old
        // snapshot: the refresh's sweep must keep what that snapshot holds.
        let sending = rt.cache.snapshot(&key).unwrap();
        change(&mut rt, event("res/apps/rt/r/split", route_to("blue")));
        assert!(!Arc::ptr_eq(&sending, &rt.cache.snapshot(&key).unwrap()));
        assert!(rt.encoded.len() > pooled);
        // The stream moves on; the next periodic sweep lets the old ones go,
        // though no class was forgotten.
        drop(sending);
        assert_eq!(rt.forget_idle_classes(Instant::now()), 0);
        assert_eq!(rt.encoded.len(), pooled);
    }

    #[tokio::test]
    async fn a_class_no_proxy_watches_is_forgotten_after_the_ttl_and_computed_again_on_return() {
        let dir = tempfile::tempdir().unwrap();
        let store = weft_store::EmbeddedStore::open(weft_store::EmbeddedOptions::new(dir.path()))
            .await
            .unwrap();
        let cache = SnapshotCache::new();
        let (resolver, rt) = new(store, cache.clone());
        let mut rt = rt.with_idle_class_ttl(Duration::from_secs(60));
        rt.upsert(
            "mesh/apps",
            Some(&record(
                json!({"meshName": "apps", "metadata": meta(), "spec": {}, "status": {}}),
            )),
        );
        for name in ["front", "back"] {
            rt.upsert(
                &format!("res/apps/vn/{name}"),
                Some(&record(json!({"meshName": "apps", "virtualNodeName": name,
                    "metadata": meta(), "spec": {}, "status": {"status": "ACTIVE"}}))),
            );
        }
        // Two Envoys connect, one of each node; the runtime computes their classes.
        let connect = |node: &str| {
            let key = resolver
                .snapshot_key(&weft_xds::test_helpers::node(&format!(
                    "mesh/apps/virtualNode/{node}"
                )))
                .unwrap();
            (key.clone(), cache.watch(&key))
        };
        let (front, front_stream) = connect("front");
        let (back, back_stream) = connect("back");
        while let Ok(key) = rt.new_keys.try_recv() {
            let class = rt.registry.classes.lock().unwrap()[&key].clone();
            rt.publish(&key, &class);
        }
        assert!(cache.snapshot(&front).is_some() && cache.snapshot(&back).is_some());
        let t0 = Instant::now();

        // front's Envoy leaves. Within the TTL nothing is forgotten.
        drop(front_stream);
        assert_eq!(rt.forget_idle_classes(t0 + Duration::from_secs(59)), 0);
        assert!(cache.snapshot(&front).is_some());
        // After it, front's class goes, with its snapshot and dependencies;
        // back's stays as long as its Envoy is connected.
        assert_eq!(rt.forget_idle_classes(t0 + Duration::from_secs(61)), 1);
        assert!(cache.snapshot(&front).is_none());
        assert!(!rt.registry.classes.lock().unwrap().contains_key(&front));
        assert!(!rt.deps.contains_key(&front));
        assert!(cache.snapshot(&back).is_some());
        assert_eq!(rt.forget_idle_classes(t0 + Duration::from_secs(3600)), 0);

        // front's Envoy comes back: its class is new again, and computed.
        let (again, _stream) = connect("front");
        assert_eq!(again, front);
        assert_eq!(rt.new_keys.try_recv().ok(), Some(front.clone()));
        let class = rt.registry.classes.lock().unwrap()[&front].clone();
        rt.publish(&front, &class);
        assert!(cache.snapshot(&front).is_some());

        // The TTL counts from when a class was last seen with a proxy, not
        // from its first connection: back's Envoy leaves after an hour.
        drop(back_stream);
        let left = t0 + Duration::from_secs(3600);
        assert_eq!(rt.forget_idle_classes(left + Duration::from_secs(59)), 0);
        assert_eq!(rt.forget_idle_classes(left + Duration::from_secs(61)), 1);
        assert!(cache.snapshot(&back).is_none());
    }

    #[tokio::test]
    async fn a_class_published_on_connect_follows_a_route_that_moves_to_another_node() {
        let (_dir, mut rt) = runtime().await;
        colors_mesh(&mut rt, "red");

        // front's Envoy connects: its class is published on its own, and its
        // dependencies (the service's, remembered for the mesh) name red.
        let key = connect_front(&mut rt);
        let depends_on = |rt: &Runtime, name: &str| {
            rt.deps[&key].contains(&(Kind::VirtualNode, name.to_string()))
        };
        assert!(depends_on(&rt, "red") && !depends_on(&rt, "blue"));

        // The route moves to blue: the mesh's remembered dependencies are
        // dropped with the old snapshot, and front now depends on blue, so
        // that a later change to blue reaches it.
        change(&mut rt, event("res/apps/rt/r/split", route_to("blue")));
        assert!(depends_on(&rt, "blue") && !depends_on(&rt, "red"));
        let mut changes = BTreeMap::new();
        rt.apply(
            event("res/apps/vn/blue", served("blue")),
            &mut changes,
            &mut Touched::default(),
        );
        let affected = rt.affected_classes(&changes, &BTreeSet::new());
        assert_eq!(affected.len(), 1);
        assert_eq!(affected[0].0, key);
    }

    #[test]
    fn a_route_key_counts_as_its_router_and_a_gateway_route_as_its_gateway() {
        assert_eq!(
            dep_of_key("res/apps/rt/r/split"),
            Some((Kind::VirtualRouter, "r".into()))
        );
        assert_eq!(
            dep_of_key("res/apps/gr/edge/g1"),
            Some((Kind::VirtualGateway, "edge".into()))
        );
        assert_eq!(
            dep_of_key("res/apps/vn/a%2Fb"),
            Some((Kind::VirtualNode, "a/b".into()))
        );
        assert_eq!(dep_of_key("mesh/apps"), None);
    }
}
