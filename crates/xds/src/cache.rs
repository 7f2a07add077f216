//! Snapshots per snapshot key, with change notification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::Snapshot;

type Slot = watch::Sender<Option<Arc<Snapshot>>>;

/// The latest snapshot of every snapshot key.
///
/// Proxies of the same virtual node share one key and one `Arc<Snapshot>`. Streams watch their
/// key through a `tokio::sync::watch` channel, which keeps only the latest value: a burst of
/// [`SnapshotCache::set_snapshot`] calls is seen by a stream as one change to the last snapshot.
/// A key without a snapshot holds `None`, and its streams wait without config until one is set.
#[derive(Clone, Default)]
pub struct SnapshotCache {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl SnapshotCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_slot<T>(&self, key: &str, f: impl FnOnce(&Slot) -> T) -> T {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots
            .entry(key.to_string())
            .or_insert_with(|| watch::channel(None).0);
        f(slot)
    }

    /// Sets the snapshot of `key` and wakes every stream of that key (unless the snapshot's
    /// version is the one already set: equal content changes nothing).
    pub fn set_snapshot(&self, key: &str, snapshot: Arc<Snapshot>) {
        self.with_slot(key, |slot| {
            slot.send_if_modified(|current| match current {
                Some(old) if old.version() == snapshot.version() => false,
                _ => {
                    *current = Some(snapshot);
                    true
                }
            });
        });
    }

    /// The current snapshot of `key`, if any.
    pub fn snapshot(&self, key: &str) -> Option<Arc<Snapshot>> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.get(key).and_then(|s| s.borrow().clone())
    }

    /// Forgets the snapshot of `key`. Connected proxies keep the config they have (Envoy keeps
    /// its last config); they get nothing new until a snapshot is set again.
    pub fn clear_snapshot(&self, key: &str) {
        self.with_slot(key, |slot| {
            slot.send_replace(None);
        });
    }

    /// Whether a stream watches `key`.
    pub fn is_watched(&self, key: &str) -> bool {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.get(key).is_some_and(|s| s.receiver_count() > 0)
    }

    /// Forgets `key`, its snapshot and its slot, if no stream watches it; answers whether it is
    /// gone. A stream that watches `key` afterwards starts from an empty slot and waits until a
    /// snapshot is set, like the first stream of a new key.
    pub fn remove_if_unwatched(&self, key: &str) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        match slots.get(key) {
            Some(slot) if slot.receiver_count() > 0 => false,
            Some(_) => {
                slots.remove(key);
                true
            }
            None => true,
        }
    }

    /// The keys that have a snapshot.
    pub fn keys(&self) -> Vec<String> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys: Vec<String> = slots
            .iter()
            .filter(|(_, s)| s.borrow().is_some())
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// A receiver of the snapshots of `key`, starting with the current one (marked unseen so
    /// that the first `changed()` fires when a snapshot is already there).
    pub fn watch(&self, key: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.with_slot(key, |slot| {
            let mut rx = slot.subscribe();
            rx.mark_changed();
            rx
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_is_forgotten_only_once_no_stream_watches_it() {
        let cache = SnapshotCache::new();
        cache.set_snapshot("k", Arc::new(Snapshot::from_typed([]).unwrap()));
        assert!(!cache.is_watched("k"));
        let stream = cache.watch("k");
        assert!(cache.is_watched("k"));
        assert!(!cache.remove_if_unwatched("k"));
        assert!(cache.snapshot("k").is_some());
        drop(stream);
        assert!(cache.remove_if_unwatched("k"));
        assert!(cache.snapshot("k").is_none());
        assert!(cache.keys().is_empty());
        // A stream of the key after that waits for a new snapshot.
        let mut later = cache.watch("k");
        assert!(later.borrow_and_update().is_none());
        cache.set_snapshot("k", Arc::new(Snapshot::from_typed([]).unwrap()));
        assert!(later.has_changed().unwrap());
    }
}
