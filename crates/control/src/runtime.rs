//! The loop: loads the meshes and the registry from the store, follows its
//! change feed, and drives publication — on every burst of changes, on every
//! new proxy class, and on the periodic sweep of idle classes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use weft_model::keys;
use weft_registry::keys as registry_keys;
use weft_store::{Range, SharedStore, StoreError, WatchEvent};
use weft_xds::SnapshotCache;

use crate::classes::{
    AppMeshResolver, Classes, ProxyClass, DEFAULT_IDLE_CLASS_TTL, MIN_IDLE_CLASS_TTL,
};
use crate::cloud_map::{CloudMap, Touched};
use crate::deps::MeshChanges;
use crate::failures::ClassFailures;
use crate::index::MeshIndex;
use crate::progress::{progress, Progress, ProgressWriter};
use crate::publish::Publisher;

/// Builds the resolver for the ADS server and the runtime that feeds its cache.
pub fn new(store: SharedStore, cache: SnapshotCache) -> (AppMeshResolver, Runtime) {
    let classes = Arc::new(Classes::default());
    let (tx, rx) = mpsc::unbounded_channel();
    let (progress_writer, progress) = progress();
    (
        AppMeshResolver::new(classes.clone(), tx),
        Runtime {
            store,
            classes,
            new_keys: rx,
            cloud_map: CloudMap::default(),
            index: MeshIndex::default(),
            publisher: Publisher::new(cache),
            idle_class_ttl: DEFAULT_IDLE_CLASS_TTL,
            progress_writer,
            progress,
        },
    )
}

/// Keeps meshes in memory from the store and publishes translated snapshots.
pub struct Runtime {
    store: SharedStore,
    /// The proxy classes, shared with the resolver.
    classes: Arc<Classes>,
    /// The key of each class the resolver registers, to publish it at once.
    new_keys: mpsc::UnboundedReceiver<String>,
    /// The instance registry's namespaces, services and instances.
    cloud_map: CloudMap,
    /// Every mesh, typed or dormant.
    index: MeshIndex,
    /// The snapshots of the classes, and what they were computed from.
    publisher: Publisher,
    /// How long a class no proxy is connected to is kept.
    idle_class_ttl: Duration,
    /// The revision applied so far, for readiness.
    progress_writer: ProgressWriter,
    progress: Progress,
}

impl Runtime {
    /// Sets how long a proxy class with no connected proxy keeps its
    /// snapshot before it is forgotten (default [`DEFAULT_IDLE_CLASS_TTL`];
    /// at least [`MIN_IDLE_CLASS_TTL`]).
    pub fn with_idle_class_ttl(mut self, ttl: Duration) -> Self {
        self.idle_class_ttl = ttl.max(MIN_IDLE_CLASS_TTL);
        self
    }

    /// Sets the trust domain of the server's CA: mesh-wide mutual TLS (a mesh's `weft:mtls`
    /// tag) validates each upstream against its SPIFFE id in this domain. Without it, the
    /// CA's default (`weft.local`).
    pub fn with_trust_domain(mut self, trust_domain: &str) -> Self {
        self.index.set_trust_domain(trust_domain);
        self
    }

    /// How far the runtime has followed the store (for `GET /readyz`).
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Why each failing proxy class's config was last not updated (see
    /// [`ClassFailures`]), shared: the runtime keeps it current, a status
    /// endpoint reads it.
    pub fn failures(&self) -> ClassFailures {
        self.publisher.failures.clone()
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
        let gone = self
            .classes
            .forget_idle(&self.publisher.cache, now, self.idle_class_ttl);
        self.publisher.forget(&gone);
        gone.len()
    }

    /// Reads every mesh resource and registry record; returns the revision to
    /// follow the change feed from.
    ///
    /// Every prefix is read from one snapshot, and only then is the state in
    /// memory replaced: what is published next is the store at exactly that
    /// revision, never a mix of revisions (after a compaction, a follower
    /// reloading while writes continue would otherwise serve resources newer
    /// than their meshes, or the reverse, until the feed caught up). A failed
    /// read leaves the state as it was.
    async fn load(&mut self) -> Result<i64, StoreError> {
        let prefixes = [
            "mesh/",
            "res/",
            registry_keys::NAMESPACES,
            registry_keys::SERVICES,
            registry_keys::INSTANCES,
        ];
        let ranges: Vec<Range> = prefixes.iter().map(|p| Range::prefix(*p)).collect();
        let (results, revision) = weft_store::read_ranges(&*self.store, &ranges).await?;
        self.index.clear();
        self.cloud_map = CloudMap::default();
        let mut ignored = Touched::default();
        // Meshes before their resources: a resource whose mesh is unknown is
        // skipped.
        for (prefix, result) in prefixes.iter().zip(results) {
            let registry = prefix.starts_with(registry_keys::PREFIX);
            for kv in result.kvs {
                if registry {
                    self.cloud_map
                        .apply(&kv.key, Some(kv.value.as_ref()), &mut ignored);
                } else {
                    self.index.follow(&kv.key, Some(kv.value));
                }
            }
        }
        self.index.settle(&self.cloud_map);
        Ok(revision)
    }

    /// Computes the snapshot of one proxy class on its own (its first proxy
    /// has connected), decoding its mesh first if no proxy wanted it yet.
    fn publish(&mut self, key: &str, class: &ProxyClass) {
        let escaped = keys::escape(&class.identity.mesh);
        self.index.want(&escaped, &self.cloud_map);
        let Some(mesh) = self.index.mesh(&escaped) else {
            // No such mesh (yet): the proxy waits with no config.
            return;
        };
        self.publisher.publish(key, class, &escaped, &mesh);
    }

    /// Recomputes the proxies whose config a burst of changes can have
    /// changed (see [`Publisher::refresh`]), after bringing the instances of
    /// the meshes naming a service the registry changes `touched` up to date.
    fn refresh(&mut self, changes: &BTreeMap<String, MeshChanges>, touched: &Touched) {
        let registry_changed = self.index.refresh_instances(&self.cloud_map, touched);
        self.publisher
            .refresh(&self.classes, &self.index, changes, &registry_changed);
    }

    /// Takes in one event of the change feed, recording what it changed.
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
        if let Some(mesh) = self.index.apply(&event.key, event.value, &self.cloud_map) {
            changes.entry(mesh).or_default().record(&event.key);
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
            self.progress_writer.reloading();
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
            self.publisher.deps.clear_classes();
            let all: BTreeMap<String, MeshChanges> = self
                .index
                .names()
                .map(|m| (m.clone(), MeshChanges::mesh_wide()))
                .collect();
            self.refresh(&all, &Touched::default());
            self.progress_writer.applied(revision);
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
                        if let Some(class) = self.classes.get(&key) {
                            self.publish(&key, &class);
                        }
                    }
                    event = feed.next() => {
                        let arrived = Instant::now();
                        let mut changes = BTreeMap::new();
                        let mut touched = Touched::default();
                        let mut next = event;
                        let mut reached = revision;
                        // Apply every change that is ready now, then recompute once.
                        loop {
                            match next {
                                Some(Ok(ev)) => {
                                    reached = reached.max(ev.revision);
                                    self.apply(ev, &mut changes, &mut touched);
                                }
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
                        self.publisher.origin = Some(arrived);
                        self.refresh(&changes, &touched);
                        self.publisher.origin = None;
                        self.progress_writer.applied(reached);
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
    use crate::test_support::{meta, record};
    use bytes::Bytes;
    use serde_json::json;
    use std::collections::BTreeSet;
    use weft_model::Kind;
    use weft_translate::{ProxyIdentity, ProxyOptions};
    use weft_xds::NodeResolver;

    /// A runtime on a fresh embedded store (kept alive by the returned folder).
    async fn runtime() -> (tempfile::TempDir, Runtime) {
        let dir = tempfile::tempdir().unwrap();
        let store = weft_store::EmbeddedStore::open(weft_store::EmbeddedOptions::new(dir.path()))
            .await
            .unwrap();
        let (_resolver, rt) = new(store, SnapshotCache::new());
        (dir, rt)
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
        rt.index.want("apps", &rt.cloud_map);
        let mut changes = BTreeMap::new();
        let mut touched = Touched::default();
        for ev in [
            event(
                "mesh/apps",
                json!({"meshName": "apps", "metadata": meta(), "spec": {}, "status": {}}),
            ),
            front_node(),
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
        rt.classes.insert(&key, class.clone());
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
        let pooled = rt.publisher.encoded.len();

        // The route moves to blue while front's stream still sends the old
        // snapshot: the refresh's sweep must keep what that snapshot holds.
        let sending = rt.publisher.cache.snapshot(&key).unwrap();
        change(&mut rt, event("res/apps/rt/r/split", route_to("blue")));
        assert!(!Arc::ptr_eq(
            &sending,
            &rt.publisher.cache.snapshot(&key).unwrap()
        ));
        assert!(rt.publisher.encoded.len() > pooled);
        // The stream moves on; the next periodic sweep lets the old ones go,
        // though no class was forgotten.
        drop(sending);
        assert_eq!(rt.forget_idle_classes(Instant::now()), 0);
        assert_eq!(rt.publisher.encoded.len(), pooled);
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
        rt.index.upsert(
            "mesh/apps",
            Some(&record(
                json!({"meshName": "apps", "metadata": meta(), "spec": {}, "status": {}}),
            )),
        );
        for name in ["front", "back"] {
            rt.index.upsert(
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
            let class = rt.classes.get(&key).unwrap();
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
        assert!(!rt.classes.contains(&front));
        assert!(rt.publisher.deps.get(&front).is_none());
        assert!(cache.snapshot(&back).is_some());
        assert_eq!(rt.forget_idle_classes(t0 + Duration::from_secs(3600)), 0);

        // front's Envoy comes back: its class is new again, and computed.
        let (again, _stream) = connect("front");
        assert_eq!(again, front);
        assert_eq!(rt.new_keys.try_recv().ok(), Some(front.clone()));
        let class = rt.classes.get(&front).unwrap();
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
            rt.publisher
                .deps
                .get(&key)
                .unwrap()
                .contains(&(Kind::VirtualNode, name.to_string()))
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
        let affected = rt
            .publisher
            .affected(&rt.classes, &changes, &BTreeSet::new());
        assert_eq!(affected.len(), 1);
        assert_eq!(affected[0].0, key);
    }

    /// front's node as `colors_mesh` creates it.
    fn front_node() -> WatchEvent {
        event(
            "res/apps/vn/front",
            json!({"meshName": "apps", "virtualNodeName": "front", "metadata": meta(),
            "spec": {"backends": [{"virtualService": {"virtualServiceName": "colors"}}]},
            "status": {"status": "ACTIVE"}}),
        )
    }

    #[tokio::test]
    async fn a_node_deleted_under_its_proxies_is_a_failure_naming_it_and_the_version_still_served_until_it_is_back(
    ) {
        let (_dir, mut rt) = runtime().await;
        colors_mesh(&mut rt, "red");
        let key = connect_front(&mut rt);
        let failures = rt.failures();
        let served = rt.publisher.cache.snapshot(&key).unwrap();
        assert_eq!(failures.get(&key), None);

        // front's node is deleted while its Envoys are served: they keep
        // their config, and the class says why it is not updated.
        change(
            &mut rt,
            WatchEvent {
                revision: 0,
                key: "res/apps/vn/front".to_string(),
                value: None,
            },
        );
        assert!(Arc::ptr_eq(
            &served,
            &rt.publisher.cache.snapshot(&key).unwrap()
        ));
        let failure = failures.get(&key).unwrap();
        assert_eq!(failure.proxy, "mesh/apps/virtualNode/front");
        assert_eq!(failure.resource, "virtualNode/front");
        assert_eq!(
            failure.reason,
            "virtual node \"front\" does not exist in mesh \"apps\""
        );
        assert_eq!(failure.serving_version.as_deref(), Some(served.version()));
        assert_eq!(failures.all().len(), 1);

        // A later change of the mesh fails the same way: the failure keeps
        // the time it was first seen.
        change(&mut rt, event("res/apps/rt/r/split", route_to("blue")));
        assert_eq!(failures.get(&key).unwrap().at, failure.at);

        // The node is created again: the class is translated, the failure gone.
        change(&mut rt, front_node());
        assert!(!Arc::ptr_eq(
            &served,
            &rt.publisher.cache.snapshot(&key).unwrap()
        ));
        assert_eq!(failures.get(&key), None);
        assert!(failures.all().is_empty());
    }

    #[tokio::test]
    async fn a_proxy_waiting_for_its_node_to_be_created_is_not_a_failure() {
        let (_dir, mut rt) = runtime().await;
        colors_mesh(&mut rt, "red");
        let class = ProxyClass {
            identity: ProxyIdentity::virtual_node("apps", "late"),
            options: ProxyOptions::default(),
            last_active: Instant::now(),
        };
        rt.classes.insert("late-key", class.clone());
        rt.publish("late-key", &class);
        assert!(rt.publisher.cache.snapshot("late-key").is_none());
        assert!(rt.failures().all().is_empty());
    }

    /// No App Mesh input makes a class's translation fail otherwise, or its
    /// resources an invalid snapshot: the translator skips what it cannot
    /// use. So the publication step is fed what a translator bug would hand
    /// it, two listeners of one name, which the snapshot refuses.
    #[tokio::test]
    async fn translated_resources_that_are_no_valid_snapshot_are_a_failure_until_a_translation_is_published(
    ) {
        let (_dir, mut rt) = runtime().await;
        colors_mesh(&mut rt, "red");
        let key = connect_front(&mut rt);
        let class = rt.classes.get(&key).unwrap();
        let served = rt.publisher.cache.snapshot(&key).unwrap();
        let listener = weft_translate::XdsListener {
            name: "lds_egress_0.0.0.0_15001".to_string(),
            ..Default::default()
        };
        let twice = weft_translate::SharedResources {
            listeners: vec![listener.clone(), listener],
            ..Default::default()
        };
        rt.publisher.settle(&key, &class, Ok(twice));
        let failure = rt.failures().get(&key).unwrap();
        assert_eq!(failure.resource, "virtualNode/front");
        assert!(
            failure
                .reason
                .starts_with("the translated resources are not a valid snapshot: duplicate"),
            "{}",
            failure.reason
        );
        assert_eq!(failure.serving_version.as_deref(), Some(served.version()));

        // The next change of front's config is translated and published.
        change(&mut rt, event("res/apps/rt/r/split", route_to("blue")));
        assert_eq!(rt.failures().get(&key), None);
    }

    #[tokio::test]
    async fn a_forgotten_class_takes_its_failure_with_it() {
        let (_dir, mut rt) = runtime().await;
        colors_mesh(&mut rt, "red");
        let key = connect_front(&mut rt);
        change(
            &mut rt,
            WatchEvent {
                revision: 0,
                key: "res/apps/vn/front".to_string(),
                value: None,
            },
        );
        assert!(rt.failures().get(&key).is_some());
        let later = Instant::now() + rt.idle_class_ttl + Duration::from_secs(1);
        assert_eq!(rt.forget_idle_classes(later), 1);
        assert!(rt.failures().all().is_empty());
    }

    /// A store that commits a write between two range reads of a load, fails
    /// a number of watches with `Compacted`, and logs each snapshot's
    /// revision and each watch's starting revision.
    struct Interleaving {
        inner: weft_store::SharedStore,
        between: std::sync::Mutex<Option<weft_store::Txn>>,
        compacted: std::sync::atomic::AtomicUsize,
        log: std::sync::Mutex<Vec<(&'static str, i64)>>,
    }

    impl Interleaving {
        fn new(inner: weft_store::SharedStore) -> Self {
            Interleaving {
                inner,
                between: std::sync::Mutex::new(None),
                compacted: std::sync::atomic::AtomicUsize::new(0),
                log: std::sync::Mutex::new(Vec::new()),
            }
        }

        /// Commits the pending write, if any.
        async fn interleave(&self) {
            let txn = self.between.lock().unwrap().take();
            if let Some(txn) = txn {
                let outcome = self.inner.txn(txn).await.unwrap();
                self.log
                    .lock()
                    .unwrap()
                    .push(("write", outcome_revision(outcome)));
            }
        }
    }

    fn outcome_revision(outcome: weft_store::TxnOutcome) -> i64 {
        match outcome {
            weft_store::TxnOutcome::Committed(r) | weft_store::TxnOutcome::Conflict(r) => r,
        }
    }

    struct InterleavingSnapshot<'a> {
        inner: Box<dyn weft_store::StoreSnapshot + 'a>,
        store: &'a Interleaving,
    }

    #[async_trait::async_trait]
    impl weft_store::StoreSnapshot for InterleavingSnapshot<'_> {
        fn revision(&self) -> i64 {
            self.inner.revision()
        }
        async fn range(&self, range: Range) -> Result<weft_store::RangeResult, StoreError> {
            let result = self.inner.range(range).await;
            self.store.interleave().await;
            result
        }
    }

    #[async_trait::async_trait]
    impl weft_store::Store for Interleaving {
        async fn get(&self, key: &str) -> Result<Option<weft_store::KeyValue>, StoreError> {
            self.inner.get(key).await
        }
        async fn range(&self, range: Range) -> Result<weft_store::RangeResult, StoreError> {
            let result = self.inner.range(range).await;
            self.interleave().await;
            result
        }
        async fn count(&self, range: Range) -> Result<usize, StoreError> {
            self.inner.count(range).await
        }
        async fn txn(&self, txn: weft_store::Txn) -> Result<weft_store::TxnOutcome, StoreError> {
            self.inner.txn(txn).await
        }
        async fn revision(&self) -> Result<i64, StoreError> {
            self.inner.revision().await
        }
        async fn snapshot<'a>(
            &'a self,
        ) -> Result<Box<dyn weft_store::StoreSnapshot + 'a>, StoreError> {
            let inner = self.inner.snapshot().await?;
            self.log
                .lock()
                .unwrap()
                .push(("snapshot", inner.revision()));
            Ok(Box::new(InterleavingSnapshot { inner, store: self }))
        }
        async fn watch(
            &self,
            prefix: &str,
            after: i64,
        ) -> Result<futures::stream::BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError>
        {
            self.log.lock().unwrap().push(("watch", after));
            let fail = self
                .compacted
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok();
            if fail {
                return Err(StoreError::Compacted {
                    requested: after,
                    oldest: after + 1,
                });
            }
            self.inner.watch(prefix, after).await
        }
    }

    /// Commits `records` (key, JSON data) in one transaction.
    fn puts(records: Vec<(&str, serde_json::Value)>) -> weft_store::Txn {
        weft_store::Txn {
            compares: vec![],
            ops: records
                .into_iter()
                .map(|(k, v)| weft_store::Op::Put(k.to_string(), Bytes::from(record(v))))
                .collect(),
        }
    }

    /// `colors_mesh`'s records, with the route to `target`.
    fn colors_records(target: &str) -> Vec<(&'static str, serde_json::Value)> {
        let front = front_node();
        let front_value: serde_json::Value =
            serde_json::from_slice::<serde_json::Value>(&front.value.unwrap()).unwrap()["data"]
                .clone();
        vec![
            (
                "mesh/apps",
                json!({"meshName": "apps", "metadata": meta(), "spec": {}, "status": {}}),
            ),
            ("res/apps/vn/front", front_value),
            ("res/apps/vn/red", served("red")),
            ("res/apps/vn/blue", served("blue")),
            (
                "res/apps/vs/colors",
                json!({"meshName": "apps", "virtualServiceName": "colors", "metadata": meta(),
                "spec": {"provider": {"virtualRouter": {"virtualRouterName": "r"}}},
                "status": {"status": "ACTIVE"}}),
            ),
            (
                "res/apps/vr/r",
                json!({"meshName": "apps", "virtualRouterName": "r", "metadata": meta(),
                "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]},
                "status": {"status": "ACTIVE"}}),
            ),
            ("res/apps/rt/r/split", route_to(target)),
        ]
    }

    /// An interleaving store over a fresh embedded store holding the colors
    /// mesh with its route to `target`.
    async fn interleaving_with_route_to(target: &str) -> (tempfile::TempDir, Arc<Interleaving>) {
        let dir = tempfile::tempdir().unwrap();
        let inner = weft_store::EmbeddedStore::open(weft_store::EmbeddedOptions::new(dir.path()))
            .await
            .unwrap();
        let store = Arc::new(Interleaving::new(inner));
        store.inner.txn(puts(colors_records(target))).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_load_with_writes_between_its_reads_is_the_state_of_one_revision_and_the_feed_resumes_right_after_it(
    ) {
        let (_dir, store) = interleaving_with_route_to("red").await;
        // The route moves to blue once the load has read the meshes and
        // before it reads their resources.
        *store.between.lock().unwrap() =
            Some(puts(vec![("res/apps/rt/r/split", route_to("blue"))]));
        let (_resolver, mut rt) = new(store.clone(), SnapshotCache::new());

        let revision = rt.load().await.unwrap();
        let log = store.log.lock().unwrap().clone();
        let Some(&(_, moved)) = log.iter().find(|(what, _)| *what == "write") else {
            panic!("no write between the reads: {log:?}")
        };
        assert!(moved > revision);

        // What is published is the state at `revision`: front depends on red.
        let key = connect_front(&mut rt);
        let deps = rt.publisher.deps.get(&key).unwrap();
        assert!(deps.contains(&(Kind::VirtualNode, "red".to_string())));
        assert!(!deps.contains(&(Kind::VirtualNode, "blue".to_string())));
        assert_eq!(log[0], ("snapshot", revision));
        // And the feed from it starts with the move to blue.
        let mut feed = store.inner.watch("", revision).await.unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (ev.revision, ev.key.as_str()),
            (moved, "res/apps/rt/r/split")
        );
    }

    #[tokio::test]
    async fn a_watch_failing_with_compacted_makes_the_runtime_reload_a_snapshot_and_watch_from_exactly_its_revision(
    ) {
        let (_dir, store) = interleaving_with_route_to("red").await;
        store
            .compacted
            .store(1, std::sync::atomic::Ordering::SeqCst);
        let (_resolver, rt) = new(store.clone(), SnapshotCache::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(rt.run(async move {
            let _ = stopped.await;
        }));
        tokio::time::timeout(Duration::from_secs(10), async {
            while store.log.lock().unwrap().len() < 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        stop.send(()).unwrap();
        task.await.unwrap();
        let log = store.log.lock().unwrap().clone();
        let first = log[0].1;
        assert_eq!(
            log,
            vec![
                ("snapshot", first),
                ("watch", first),
                ("snapshot", first),
                ("watch", first),
            ]
        );
    }
}
