//! Proxy classes: the Envoys of one virtual node (or gateway) that announce
//! the same options share one class, one snapshot key and one translation.
//! The resolver registers a class as its first Envoy connects; the idle sweep
//! forgets the classes no Envoy has watched for a while.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use weft_translate::{ProxyIdentity, ProxyOptions, TranslateError};
use weft_xds::{NodeResolver, SnapshotCache, XdsNode};

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

/// One class of proxies: a virtual node (or gateway) and the options its
/// Envoys announce in their node metadata.
#[derive(Debug, Clone)]
pub(crate) struct ProxyClass {
    pub(crate) identity: ProxyIdentity,
    pub(crate) options: ProxyOptions,
    /// When the class was last known to have a proxy: when a stream resolved
    /// to it, or a sweep found its key watched (see [`Classes::forget_idle`]).
    pub(crate) last_active: Instant,
}

/// The proxy classes seen so far, shared by the resolver (which registers
/// them as Envoys connect) and the runtime (which computes their snapshots).
#[derive(Default)]
pub(crate) struct Classes {
    by_key: Mutex<HashMap<String, ProxyClass>>,
}

impl Classes {
    /// The class registered under `key`, cloned.
    pub(crate) fn get(&self, key: &str) -> Option<ProxyClass> {
        self.by_key.lock().ok()?.get(key).cloned()
    }

    /// The classes `wanted` picks, cloned out of the registry; the others
    /// are not copied.
    pub(crate) fn matching(
        &self,
        wanted: impl Fn(&str, &ProxyClass) -> bool,
    ) -> Vec<(String, ProxyClass)> {
        let Ok(classes) = self.by_key.lock() else {
            return Vec::new();
        };
        classes
            .iter()
            .filter(|(key, class)| wanted(key, class))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Forgets the classes that no stream has watched for `ttl` (counted
    /// from the last sweep that found one watching), removing their
    /// snapshots from `cache`; returns their keys.
    pub(crate) fn forget_idle(
        &self,
        cache: &SnapshotCache,
        now: Instant,
        ttl: Duration,
    ) -> Vec<String> {
        let mut gone = Vec::new();
        let Ok(mut classes) = self.by_key.lock() else {
            return gone;
        };
        // Under the registry's lock, so that a stream resolving a class
        // meanwhile either finds it (and it is kept: just resolved) or
        // registers it afresh.
        classes.retain(|key, class| {
            if cache.is_watched(key) {
                class.last_active = now;
                return true;
            }
            let idle = now.saturating_duration_since(class.last_active) >= ttl;
            let forget = idle && cache.remove_if_unwatched(key);
            if forget {
                gone.push(key.clone());
            }
            !forget
        });
        gone
    }

    /// Registers `class` under `key` as a stream resolves it.
    #[cfg(test)]
    pub(crate) fn insert(&self, key: &str, class: ProxyClass) {
        if let Ok(mut classes) = self.by_key.lock() {
            classes.insert(key.to_string(), class);
        }
    }

    /// Whether a class is registered under `key`.
    #[cfg(test)]
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.by_key
            .lock()
            .is_ok_and(|classes| classes.contains_key(key))
    }
}

/// Resolves an Envoy node to its snapshot key: `mesh/<m>/virtualNode/<n>#<options hash>`.
pub struct AppMeshResolver {
    classes: Arc<Classes>,
    new_keys: mpsc::UnboundedSender<String>,
}

impl AppMeshResolver {
    /// A resolver registering classes in `classes` and sending the key of
    /// each new one to `new_keys`, for the runtime to compute its first
    /// snapshot.
    pub(crate) fn new(classes: Arc<Classes>, new_keys: mpsc::UnboundedSender<String>) -> Self {
        Self { classes, new_keys }
    }
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
                .classes
                .by_key
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
