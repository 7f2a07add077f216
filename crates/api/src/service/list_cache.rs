//! The serialized references List answers with, cached by record revision.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use weft_store::{KeyValue, Revision};

/// At most this many serialized references are kept; past it the cache
/// starts over (entries of deleted resources would otherwise pile up).
const REF_CACHE_MAX: usize = 100_000;

/// The serialized `…Ref` of each listed resource, by store key, with the
/// `mod_revision` of the record it was built from. A revision names one
/// write, so an entry whose revision matches the record read is exact; a
/// changed record simply misses. Spares List re-reading every record's
/// spec (the bulk of its bytes) on each page.
#[derive(Default)]
pub(super) struct RefCache {
    map: Mutex<HashMap<String, (Revision, Bytes)>>,
}

impl RefCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Revision, Bytes)>> {
        // Every step leaves the map valid, so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached reference of each record, where it is current.
    pub(super) fn get(&self, kvs: &[KeyValue]) -> Vec<Option<Bytes>> {
        let map = self.lock();
        kvs.iter()
            .map(|kv| match map.get(kv.key.as_str()) {
                Some((revision, bytes)) if *revision == kv.mod_revision => Some(bytes.clone()),
                _ => None,
            })
            .collect()
    }

    /// Appends the references of `kvs`, comma-separated, to `out` if every
    /// one is cached and current; otherwise leaves `out` as it was.
    pub(super) fn write_all(&self, kvs: &[KeyValue], out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let map = self.lock();
        for (i, kv) in kvs.iter().enumerate() {
            match map.get(kv.key.as_str()) {
                Some((revision, bytes)) if *revision == kv.mod_revision => {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(bytes);
                }
                _ => {
                    out.truncate(start);
                    return false;
                }
            }
        }
        true
    }

    /// Caches `fresh` (key, revision of the record, reference).
    pub(super) fn insert(&self, fresh: Vec<(String, Revision, Bytes)>) {
        let mut map = self.lock();
        if map.len() + fresh.len() > REF_CACHE_MAX {
            map.clear();
        }
        for (key, revision, bytes) in fresh {
            map.insert(key, (revision, bytes));
        }
    }

    /// Forgets the reference of the record `key` (a deleted resource).
    pub(super) fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, mod_revision: Revision) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Bytes::new(),
            create_revision: 1,
            mod_revision,
            version: 1,
        }
    }

    fn entry(key: &str, revision: Revision, reference: &'static str) -> (String, Revision, Bytes) {
        (
            key.into(),
            revision,
            Bytes::from_static(reference.as_bytes()),
        )
    }

    #[test]
    fn a_cached_reference_is_found_only_at_its_record_s_revision() {
        let cache = RefCache::default();
        cache.insert(vec![entry("vn/m/a", 5, "{\"a\":5}")]);
        let hits = cache.get(&[kv("vn/m/a", 5), kv("vn/m/a", 6), kv("vn/m/b", 5)]);
        assert_eq!(hits, [Some(Bytes::from_static(b"{\"a\":5}")), None, None]);
    }

    #[test]
    fn a_page_is_written_from_the_cache_only_when_every_record_is_current() {
        let cache = RefCache::default();
        cache.insert(vec![entry("a", 1, "{1}"), entry("b", 2, "{2}")]);
        let mut out = b"[".to_vec();
        assert!(cache.write_all(&[kv("a", 1), kv("b", 2)], &mut out));
        assert_eq!(out, b"[{1},{2}");
        // One rewritten record: nothing is appended, not even the ones before it.
        let mut out = b"[".to_vec();
        assert!(!cache.write_all(&[kv("a", 1), kv("b", 3)], &mut out));
        assert_eq!(out, b"[");
        // An empty page is written, empty.
        let mut out = Vec::new();
        assert!(cache.write_all(&[], &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn a_newer_reference_replaces_the_older_one_and_a_removed_one_misses() {
        let cache = RefCache::default();
        cache.insert(vec![entry("a", 1, "old")]);
        cache.insert(vec![entry("a", 2, "new")]);
        assert_eq!(cache.get(&[kv("a", 2)]), [Some(Bytes::from_static(b"new"))]);
        assert_eq!(cache.get(&[kv("a", 1)]), [None]);
        cache.remove("a");
        assert_eq!(cache.get(&[kv("a", 2)]), [None]);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_cache_starts_over_when_it_would_pass_its_size() {
        let cache = RefCache::default();
        cache.insert(
            (0..REF_CACHE_MAX)
                .map(|i| (i.to_string(), 1, Bytes::new()))
                .collect(),
        );
        assert_eq!(cache.len(), REF_CACHE_MAX);
        cache.insert(vec![entry("last", 1, "{}")]);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(&[kv("0", 1)]), [None]);
        assert_eq!(
            cache.get(&[kv("last", 1)]),
            [Some(Bytes::from_static(b"{}"))]
        );
    }
}
