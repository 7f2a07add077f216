//! This replica's copy of its prefix, kept by a watch: what a write reads
//! ahead of its turn (see [`weft_store::Store::read_ahead`]) without a round
//! trip to etcd. I/O-free; the task that loads and follows it is
//! `EtcdStore::follow`.
//!
//! It is as stale as the watch is late, no more trustworthy than a
//! serializable read from a member that lags: what a write decides from it is
//! still checked by the write's compares at etcd, and an error answered from
//! it is decided again from a linearizable read (`ReadAhead::may_be_stale`).

use std::collections::HashMap;

use weft_store::{KeyValue, Revision, WatchEvent};

/// The prefix as of one revision, or nothing while it is not followed.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    state: Option<Followed>,
}

#[derive(Debug)]
struct Followed {
    /// Every event up to this revision is applied (every event of a
    /// revision comes in one watch response, and is applied together).
    revision: Revision,
    kvs: HashMap<String, KeyValue>,
}

impl Mirror {
    /// Starts over from a whole read of the prefix at `revision`.
    pub(crate) fn load(&mut self, revision: Revision, kvs: Vec<KeyValue>) {
        self.state = Some(Followed {
            revision,
            kvs: kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect(),
        });
    }

    /// Applies the events of one watch response, in order. Events at or
    /// before the mirror's revision are already in it (a watch reopened from
    /// the last revision seen may repeat none, but a load that raced a
    /// response may): they are skipped.
    pub(crate) fn apply(&mut self, events: &[WatchEvent]) {
        let Some(state) = self.state.as_mut() else {
            return;
        };
        let from = state.revision;
        for event in events.iter().filter(|e| e.revision > from) {
            match &event.value {
                Some(value) => {
                    // etcd's create revision and version, as a read would give them: the
                    // mirror saw every write since its load.
                    let (create_revision, version) = match state.kvs.get(&event.key) {
                        Some(old) => (old.create_revision, old.version + 1),
                        None => (event.revision, 1),
                    };
                    state.kvs.insert(
                        event.key.clone(),
                        KeyValue {
                            key: event.key.clone(),
                            value: value.clone(),
                            create_revision,
                            mod_revision: event.revision,
                            version,
                        },
                    );
                }
                None => {
                    state.kvs.remove(&event.key);
                }
            }
            state.revision = state.revision.max(event.revision);
        }
    }

    /// Stops answering until the next [`Mirror::load`]: the watch broke, or
    /// its revision was compacted away, so events may be missing.
    pub(crate) fn lose(&mut self) {
        self.state = None;
    }

    /// The revision every applied event is up to; `None` while not followed.
    pub(crate) fn revision(&self) -> Option<Revision> {
        self.state.as_ref().map(|s| s.revision)
    }

    /// `keys` as of [`Mirror::revision`] (absent ones as `None`), or `None`
    /// while not followed.
    pub(crate) fn read(
        &self,
        keys: &[String],
    ) -> Option<(Revision, HashMap<String, Option<KeyValue>>)> {
        let state = self.state.as_ref()?;
        let kvs = keys
            .iter()
            .map(|k| (k.clone(), state.kvs.get(k).cloned()))
            .collect();
        Some((state.revision, kvs))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn kv(key: &str, value: &str, create: Revision, modified: Revision, version: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Bytes::from(value.to_string()),
            create_revision: create,
            mod_revision: modified,
            version,
        }
    }

    fn put(revision: Revision, key: &str, value: &str) -> WatchEvent {
        WatchEvent {
            revision,
            key: key.into(),
            value: Some(Bytes::from(value.to_string())),
        }
    }

    fn delete(revision: Revision, key: &str) -> WatchEvent {
        WatchEvent {
            revision,
            key: key.into(),
            value: None,
        }
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn a_mirror_not_loaded_answers_nothing_and_ignores_events() {
        let mut mirror = Mirror::default();
        mirror.apply(&[put(5, "a", "1")]);
        assert_eq!(mirror.revision(), None);
        assert!(mirror.read(&keys(&["a"])).is_none());
    }

    #[test]
    fn reads_give_what_etcd_would_after_the_load_and_each_event() {
        let mut mirror = Mirror::default();
        mirror.load(10, vec![kv("mesh/apps", "m", 3, 7, 2)]);
        let (revision, read) = mirror.read(&keys(&["mesh/apps", "guard/apps"])).unwrap();
        assert_eq!(revision, 10);
        assert_eq!(read["mesh/apps"], Some(kv("mesh/apps", "m", 3, 7, 2)));
        assert_eq!(read["guard/apps"], None);

        // One transaction: the guard created, the mesh updated.
        mirror.apply(&[put(11, "guard/apps", "g"), put(11, "mesh/apps", "m2")]);
        let (revision, read) = mirror.read(&keys(&["mesh/apps", "guard/apps"])).unwrap();
        assert_eq!(revision, 11);
        assert_eq!(read["mesh/apps"], Some(kv("mesh/apps", "m2", 3, 11, 3)));
        assert_eq!(read["guard/apps"], Some(kv("guard/apps", "g", 11, 11, 1)));

        mirror.apply(&[delete(12, "mesh/apps")]);
        let (revision, read) = mirror.read(&keys(&["mesh/apps"])).unwrap();
        assert_eq!(revision, 12);
        assert_eq!(read["mesh/apps"], None);
    }

    #[test]
    fn events_the_load_already_shows_are_not_applied_twice() {
        let mut mirror = Mirror::default();
        mirror.load(20, vec![kv("a", "new", 15, 20, 4)]);
        mirror.apply(&[put(19, "a", "old"), put(20, "a", "new")]);
        let (_, read) = mirror.read(&keys(&["a"])).unwrap();
        assert_eq!(read["a"], Some(kv("a", "new", 15, 20, 4)));
        assert_eq!(mirror.revision(), Some(20));
    }

    #[test]
    fn a_lost_mirror_answers_nothing_until_it_is_loaded_again() {
        let mut mirror = Mirror::default();
        mirror.load(4, vec![kv("a", "1", 4, 4, 1)]);
        mirror.lose();
        assert!(mirror.read(&keys(&["a"])).is_none());
        mirror.apply(&[put(5, "b", "2")]);
        mirror.load(9, Vec::new());
        let (revision, read) = mirror.read(&keys(&["a", "b"])).unwrap();
        assert_eq!(
            (revision, read["a"].clone(), read["b"].clone()),
            (9, None, None)
        );
    }
}
