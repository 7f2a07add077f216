//! A cap on the records kept under one store prefix, by count and by bytes,
//! the oldest forgotten first: what bounds idempotency records (App Mesh's
//! `clientToken`s, Cloud Map's `CreatorRequestId`s and operations) between
//! the periodic sweeps of their time window. Without it, a client sending a
//! fresh token with each of 10,000 updates would grow the server by hundreds
//! of MB.
//!
//! The ledger learns the records from the store once (lazily, at the first
//! write), then from each write that adds one. Age is commit order (the
//! record's `mod_revision`). Evictions are deletes conditioned on the
//! record's revision, so a record rewritten since is kept; they are not
//! waited for: a crash that loses one leaves a record for the sweep.
//!
//! With several control planes on one store (etcd), each ledger sees its
//! own writes: the cap holds per replica.

use std::collections::{HashMap, VecDeque};

use weft_store::{Compare, Op, Range, Revision, SharedStore, StoreError, Txn};

/// Caps on the records under one prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Most records kept.
    pub max_records: usize,
    /// Most bytes kept, keys and values.
    pub max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    loaded: bool,
    /// Revision the records were read at: writes at or before it are known.
    loaded_at: Revision,
    /// Records in commit order; an entry whose key was written again since
    /// is stale (its revision no longer matches `current`) and is skipped.
    order: VecDeque<(String, Revision)>,
    /// Each record's latest revision and size.
    current: HashMap<String, (Revision, usize)>,
    bytes: usize,
}

impl State {
    fn insert(&mut self, key: String, revision: Revision, size: usize) {
        if let Some((_, old)) = self.current.insert(key.clone(), (revision, size)) {
            self.bytes = self.bytes.saturating_sub(old);
        }
        self.bytes += size;
        self.order.push_back((key, revision));
    }

    /// Takes the oldest records out until the caps hold.
    fn over(&mut self, caps: Caps) -> Vec<(String, Revision)> {
        let mut out = Vec::new();
        while self.current.len() > caps.max_records || self.bytes > caps.max_bytes {
            let Some((key, revision)) = self.order.pop_front() else {
                break;
            };
            match self.current.get(&key) {
                Some((current, size)) if *current == revision => {
                    self.bytes = self.bytes.saturating_sub(*size);
                    self.current.remove(&key);
                    out.push((key, revision));
                }
                // Written again since: the newer entry comes later.
                _ => {}
            }
        }
        out
    }
}

/// The records under one prefix, capped.
#[derive(Debug)]
pub struct Ledger {
    prefix: String,
    caps: Caps,
    state: tokio::sync::Mutex<State>,
}

impl Ledger {
    /// A ledger of the records under `prefix`, held to `caps`.
    pub fn new(prefix: impl Into<String>, caps: Caps) -> Ledger {
        Ledger {
            prefix: prefix.into(),
            caps,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// Notes the record `key` (of `size` bytes with its key) just committed
    /// at `revision`, and deletes the oldest records past the caps. Returns
    /// how many were deleted. A failure to read the store leaves the cap
    /// for the next write; the records stay valid.
    pub async fn note(
        &self,
        store: &SharedStore,
        key: &str,
        revision: Revision,
        size: usize,
    ) -> Result<usize, StoreError> {
        let evicted = {
            let mut state = self.state.lock().await;
            if !state.loaded {
                *state = self.load(store).await?;
            }
            if revision > state.loaded_at {
                state.insert(key.to_string(), revision, size);
            }
            state.over(self.caps)
        };
        let n = evicted.len();
        for (key, revision) in evicted {
            let txn = Txn {
                compares: vec![Compare::ModRevision(key.clone(), revision)],
                ops: vec![Op::Delete(key)],
            };
            // Decided now, durable with the next commit: nothing is answered
            // from it, so its fsync is not waited for.
            let _ = store.txn_deferred(txn).await?;
        }
        Ok(n)
    }

    /// Forgets what the ledger knows, so that the next write reads the
    /// records again: after a sweep deleted some of them.
    pub async fn reset(&self) {
        *self.state.lock().await = State::default();
    }

    /// Records the ledger knows of, and their bytes.
    pub async fn usage(&self) -> (usize, usize) {
        let state = self.state.lock().await;
        (state.current.len(), state.bytes)
    }

    async fn load(&self, store: &SharedStore) -> Result<State, StoreError> {
        let result = store
            .range_latest(Range::prefix(self.prefix.clone()))
            .await?;
        let mut kvs: Vec<(String, Revision, usize)> = result
            .kvs
            .into_iter()
            .map(|kv| {
                let size = kv.key.len() + kv.value.len();
                (kv.key, kv.mod_revision, size)
            })
            .collect();
        kvs.sort_by_key(|(_, revision, _)| *revision);
        let mut state = State {
            loaded: true,
            loaded_at: result.revision,
            ..State::default()
        };
        for (key, revision, size) in kvs {
            state.loaded_at = state.loaded_at.max(revision);
            state.insert(key, revision, size);
        }
        Ok(state)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_records_go_first_and_a_rewritten_one_counts_once() {
        let mut s = State::default();
        let caps = Caps {
            max_records: 2,
            max_bytes: 1000,
        };
        s.insert("a".into(), 1, 10);
        s.insert("b".into(), 2, 10);
        s.insert("a".into(), 3, 10);
        assert!(s.over(caps).is_empty(), "a counts once");
        s.insert("c".into(), 4, 10);
        assert_eq!(s.over(caps), vec![("b".to_string(), 2)]);
        let bytes = Caps {
            max_records: 10,
            max_bytes: 15,
        };
        assert_eq!(s.over(bytes), vec![("a".to_string(), 3)]);
        assert_eq!(s.bytes, 10);
    }
}
