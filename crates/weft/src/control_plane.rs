//! Wiring from the store to the proxies: keeps every mesh's resources in
//! memory from the store's change feed, and for every class of connected proxy
//! (one virtual node with one set of options) translates its mesh into Envoy
//! resources and hands them to the ADS server's snapshot cache.
//!
//! Proxies of the same virtual node with the same options share one snapshot
//! key, so one translation serves all of them. Bursts of store changes are
//! coalesced: every change ready at once is applied before recomputing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use weft_model::{keys, Kind, StoredRecord};
use weft_store::{Range, SharedStore, StoreError, WatchEvent};
use weft_translate::{translate, MeshSnapshot, ProxyIdentity, ProxyOptions, TranslateError};
use weft_xds::{NodeResolver, Snapshot, SnapshotCache, XdsNode};

/// One class of proxies: a virtual node (or gateway) and the options its
/// Envoys announce in their node metadata.
#[derive(Debug, Clone)]
struct ProxyClass {
    identity: ProxyIdentity,
    options: ProxyOptions,
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
            classes
                .insert(key.clone(), ProxyClass { identity, options })
                .is_none()
        };
        if fresh {
            // The runtime computes the first snapshot; the stream waits for it.
            let _ = self.new_keys.send(key.clone());
        }
        Ok(key)
    }
}

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
            records: BTreeMap::new(),
            meshes: HashMap::new(),
        },
    )
}

/// Keeps meshes in memory from the store and publishes translated snapshots.
pub struct Runtime {
    store: SharedStore,
    cache: SnapshotCache,
    registry: Arc<Registry>,
    new_keys: mpsc::UnboundedReceiver<String>,
    /// Every `mesh/` and `res/` record, by store key.
    records: BTreeMap<String, StoredRecord>,
    /// Typed snapshots of meshes, rebuilt when their records change.
    meshes: HashMap<String, Arc<MeshSnapshot>>,
}

fn typed<T: DeserializeOwned>(record: &StoredRecord) -> Option<T> {
    match T::deserialize(&record.data) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "stored resource does not match its shape; skipped");
            None
        }
    }
}

fn str_field<'a>(record: &'a StoredRecord, member: &str) -> &'a str {
    record
        .data
        .get(member)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
}

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

impl Runtime {
    async fn load(&mut self) -> Result<i64, StoreError> {
        self.records.clear();
        self.meshes.clear();
        let mut revision = 0;
        for prefix in ["mesh/", "res/"] {
            let result = self.store.range(Range::prefix(prefix)).await?;
            revision = revision.max(result.revision);
            for kv in result.kvs {
                match serde_json::from_slice::<StoredRecord>(&kv.value) {
                    Ok(r) => {
                        self.records.insert(kv.key, r);
                    }
                    Err(e) => {
                        tracing::warn!(key = %kv.key, error = %e, "unreadable record skipped")
                    }
                }
            }
        }
        Ok(revision)
    }

    /// Builds the typed snapshot of one mesh (by escaped name) from the records.
    fn build_mesh(&self, escaped: &str) -> Option<MeshSnapshot> {
        let mesh = typed(self.records.get(&format!("mesh/{escaped}"))?)?;
        let mut snap = MeshSnapshot::new(mesh);
        let prefix = format!("res/{escaped}/");
        for (key, record) in self.records.range(prefix.clone()..) {
            if !key.starts_with(&prefix) {
                break;
            }
            let Some((_, kind)) = classify(key) else {
                continue;
            };
            match kind {
                Kind::VirtualNode => {
                    if let Some(v) = typed(record) {
                        snap.virtual_nodes
                            .insert(str_field(record, "virtualNodeName").into(), v);
                    }
                }
                Kind::VirtualService => {
                    if let Some(v) = typed(record) {
                        snap.virtual_services
                            .insert(str_field(record, "virtualServiceName").into(), v);
                    }
                }
                Kind::VirtualRouter => {
                    if let Some(v) = typed(record) {
                        snap.virtual_routers
                            .insert(str_field(record, "virtualRouterName").into(), v);
                    }
                }
                Kind::Route => {
                    if let Some(v) = typed(record) {
                        let id = (
                            str_field(record, "virtualRouterName").to_string(),
                            str_field(record, "routeName").to_string(),
                        );
                        snap.routes.insert(id, v);
                    }
                }
                Kind::VirtualGateway => {
                    if let Some(v) = typed(record) {
                        snap.virtual_gateways
                            .insert(str_field(record, "virtualGatewayName").into(), v);
                    }
                }
                Kind::GatewayRoute => {
                    if let Some(v) = typed(record) {
                        let id = (
                            str_field(record, "virtualGatewayName").to_string(),
                            str_field(record, "gatewayRouteName").to_string(),
                        );
                        snap.gateway_routes.insert(id, v);
                    }
                }
                Kind::Mesh => {}
            }
        }
        Some(snap)
    }

    /// The typed snapshot of a mesh, built on first use after a change.
    fn mesh(&mut self, escaped: &str) -> Option<Arc<MeshSnapshot>> {
        if let Some(m) = self.meshes.get(escaped) {
            return Some(m.clone());
        }
        let built = Arc::new(self.build_mesh(escaped)?);
        self.meshes.insert(escaped.to_string(), built.clone());
        Some(built)
    }

    /// Recomputes the snapshot of one proxy class.
    fn publish(&mut self, key: &str, class: &ProxyClass) {
        let escaped = keys::escape(&class.identity.mesh);
        let Some(mesh) = self.mesh(&escaped) else {
            // No such mesh (yet): the proxy waits with no config.
            return;
        };
        match translate(&mesh, &class.identity, &class.options) {
            Ok(resources) => match Snapshot::from_resources(
                resources.listeners,
                resources.route_configurations,
                resources.clusters,
                resources.cluster_load_assignments,
            ) {
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

    fn classes(&self) -> Vec<(String, ProxyClass)> {
        match self.registry.classes.lock() {
            Ok(c) => c.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn refresh(&mut self, dirty: &BTreeSet<String>) {
        // A changed mesh is rebuilt only when some proxy of it is connected:
        // writes to meshes nobody serves cost nothing here.
        for escaped in dirty {
            self.meshes.remove(escaped);
        }
        for (key, class) in self.classes() {
            if dirty.contains(&keys::escape(&class.identity.mesh)) {
                self.publish(&key, &class);
            }
        }
    }

    fn apply(&mut self, event: WatchEvent, dirty: &mut BTreeSet<String>) {
        let Some((mesh, _)) = classify(&event.key) else {
            return;
        };
        match event.value {
            Some(value) => match serde_json::from_slice::<StoredRecord>(&value) {
                Ok(r) => {
                    self.records.insert(event.key, r);
                }
                Err(e) => tracing::warn!(key = %event.key, error = %e, "unreadable record skipped"),
            },
            None => {
                self.records.remove(&event.key);
            }
        }
        dirty.insert(mesh);
    }

    /// Runs until `shutdown` resolves: follows the store, publishes snapshots.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        'reload: loop {
            let revision = match self.load().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "loading the meshes failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            let all: BTreeSet<String> = self
                .records
                .keys()
                .filter_map(|k| classify(k).map(|(m, _)| m))
                .collect();
            self.refresh(&all);
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
                    key = self.new_keys.recv() => {
                        let Some(key) = key else { return };
                        let class = self.registry.classes.lock().ok().and_then(|c| c.get(&key).cloned());
                        if let Some(class) = class {
                            self.publish(&key, &class);
                        }
                    }
                    event = feed.next() => {
                        let mut dirty = BTreeSet::new();
                        let mut next = event;
                        // Apply every change that is ready now, then recompute once.
                        loop {
                            match next {
                                Some(Ok(ev)) => self.apply(ev, &mut dirty),
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
                        self.refresh(&dirty);
                    }
                }
            }
        }
    }
}
