//! Weft's store: an ordered key-value space with one global revision counter,
//! compare-and-swap transactions and an ordered change feed — the etcd v3 data
//! model, so that the embedded backend and a later etcd backend are
//! interchangeable behind [`Store`].
//!
//! Durability contract, shared by every backend:
//! - [`Store::txn`] returns `Ok` only once the write is durable (it survives
//!   `kill -9` and a restart).
//! - Reads never return data that is not yet durable: a reader may have to
//!   wait for an in-flight group commit to finish.
//! - Watch events are delivered in revision order, only for durable writes.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod embedded;
#[cfg(any(test, feature = "testing"))]
pub mod gated;

pub use embedded::{EmbeddedOptions, EmbeddedStore, DEFAULT_HISTORY_BYTES, DEFAULT_SEGMENT_SIZE};

/// A store revision: the global counter bumped by every successful write
/// transaction. 0 means "before any write".
pub type Revision = i64;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Disk or file-system failure.
    #[error("store I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The on-disk data is damaged beyond the torn tail a crash can leave.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// A watch asked for a revision older than the retained history.
    #[error("revision {requested} has been compacted (oldest available is {oldest})")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    /// The store failed earlier (for example an fsync error) and refuses
    /// further work, because its memory may no longer match its disk.
    #[error("store is unavailable: {0}")]
    Unavailable(String),
    /// A transaction [`Store::txn_deferred`] decided was not applied after
    /// all, because one it was batched with, or decided on top of, did not
    /// hold (a remote store's group commit): nothing of it was written, and
    /// its writer decides again from fresh reads.
    #[error("a decided write was not applied: {0}")]
    Superseded(String),
}

/// The health of a store, as `/healthz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// Reads and writes are served.
    Ok,
    /// The last write could not be made durable for a reason that can pass
    /// (too many open files, a full disk): it failed, and nothing it changed
    /// is served; reads are served and writes are tried again.
    Degraded(String),
    /// The disk failed in a way that leaves its contents unknown: nothing is
    /// served until a restart.
    Failed(String),
    /// A remote store (etcd) did not answer, or refused, the last request:
    /// nothing is wrong with this process, and a restart would not help; it
    /// serves again once the store answers.
    Unreachable(String),
}

/// A stored key with its value and revisions, as in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation: 1 after the create.
    pub version: i64,
}

/// A condition a transaction checks atomically before writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and its `mod_revision` equals this value.
    ModRevision(String, Revision),
}

/// One write in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Bytes),
    Delete(String),
}

/// A compare-and-swap transaction: if every compare holds, apply every op
/// atomically under one new revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

/// The outcome of [`Store::txn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every compare held; the ops were applied at this revision, durably.
    Committed(Revision),
    /// Some compare failed; nothing was written. Carries the current revision.
    Conflict(Revision),
}

/// The answer to a range read: the matching keys in key order and the store
/// revision at which they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched than `limit` allowed.
    pub more: bool,
    pub revision: Revision,
}

/// A key range `[start, end)` in byte order, with an optional limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub start: String,
    /// Exclusive end; `None` means "to the end of the key space".
    pub end: Option<String>,
    /// At most this many keys (0 = unlimited).
    pub limit: usize,
}

impl Range {
    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        let start = prefix.into();
        let end = prefix_end(&start);
        Range {
            start,
            end,
            limit: 0,
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, as etcd
/// computes it; `None` when no such key exists (empty or all-0xFF prefix).
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            // Keys are UTF-8 strings; incrementing an ASCII byte keeps them valid.
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

/// One change in the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub revision: Revision,
    pub key: String,
    /// The new value; `None` for a delete.
    pub value: Option<Bytes>,
}

/// Keys read in one request ahead of a write's turn (see
/// [`Store::read_ahead`]), with the revision they were read at.
#[derive(Debug, Clone, Default)]
pub struct ReadAhead {
    revision: Revision,
    kvs: std::collections::HashMap<String, Option<KeyValue>>,
    stale: bool,
}

impl ReadAhead {
    /// What a backend read at `revision`: each key asked for, with its value
    /// or `None` where it is absent. `stale`: read from a replica of the
    /// store that may lag (see [`ReadAhead::may_be_stale`]).
    pub fn new(
        revision: Revision,
        kvs: std::collections::HashMap<String, Option<KeyValue>>,
        stale: bool,
    ) -> Self {
        ReadAhead {
            revision,
            kvs,
            stale,
        }
    }

    /// Whether the keys may have been read from a replica that had not yet
    /// applied the latest writes. A write decided from them is still checked
    /// by its compares; an error answered from them (not found, already
    /// exists, over a quota) is not, so the writer reads again with
    /// `fresh` before answering one.
    pub fn may_be_stale(&self) -> bool {
        self.stale
    }

    /// The revision the keys were read at.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// `Some(value)` for a key that was read ahead, `None` for one that was not.
    pub fn get(&self, key: &str) -> Option<Option<&KeyValue>> {
        self.kvs.get(key).map(Option::as_ref)
    }
}

/// Resolves once a decided transaction's outcome is durable (see
/// [`Store::txn_deferred`]), with the revision it was written at (for a
/// commit; a remote store may only know it then) or the revision a refusal
/// was decided at.
pub type Durability = BoxFuture<'static, Result<Revision, StoreError>>;

/// An ordered, durable key-value store with CAS transactions and a change feed.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Reads a key range in key order.
    async fn range(&self, range: Range) -> Result<RangeResult, StoreError>;
    /// Counts keys in a range without reading values.
    async fn count(&self, range: Range) -> Result<usize, StoreError>;
    /// Reads one key as the latest accepted transaction left it, possibly
    /// before that write is durable. Only for building a transaction whose own
    /// commit then waits for durability (which covers every earlier write); a
    /// caller that answers from such a read without committing must call
    /// [`Store::sync`] first. Lets concurrent writers share one fsync.
    async fn get_latest(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.get(key).await
    }
    /// [`Store::range`] with the consistency of [`Store::get_latest`].
    async fn range_latest(&self, range: Range) -> Result<RangeResult, StoreError> {
        self.range(range).await
    }
    /// [`Store::count`] with the consistency of [`Store::get_latest`].
    async fn count_latest(&self, range: Range) -> Result<usize, StoreError> {
        self.count(range).await
    }
    /// Reads `keys` in one request, before a writer takes its turn (see
    /// [`Store::get_latest_ahead`]): a remote store's round trips then
    /// overlap between writers instead of following each other inside the
    /// turn. Unless `fresh`, the backend may answer from a replica that lags
    /// ([`ReadAhead::may_be_stale`]). A backend whose latest reads are in
    /// memory reads nothing ahead (the default).
    async fn read_ahead(&self, keys: &[String], fresh: bool) -> Result<ReadAhead, StoreError> {
        let _ = (keys, fresh);
        Ok(ReadAhead::default())
    }
    /// Whether [`Store::read_ahead`] reads anything: a writer need not list
    /// (nor parse its spec for) keys a backend will not read.
    fn reads_ahead(&self) -> bool {
        false
    }
    /// [`Store::get_latest`], answered from `ahead` where it holds the key:
    /// its value as read, overlaid with every write decided since. What
    /// another writer committed since the read is not seen; the write's
    /// compares catch it, as they catch a write committed between any read
    /// and the commit.
    async fn get_latest_ahead(
        &self,
        key: &str,
        ahead: &ReadAhead,
    ) -> Result<Option<KeyValue>, StoreError> {
        let _ = ahead;
        self.get_latest(key).await
    }
    /// Waits until every transaction accepted so far is durable.
    async fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Applies a compare-and-swap transaction; returns once durable.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;
    /// [`Store::txn`] in two steps: returns as soon as the transaction is
    /// decided (applied to the latest state, or refused), with a future that
    /// resolves once that outcome is durable. Nothing may be answered from the
    /// outcome before the future resolved; a writer that only retries after a
    /// conflict may drop it. Lets a writer release a lock of its own before
    /// the fsync, so that the next writer joins the same group commit.
    ///
    /// A committed outcome's revision orders it against reads of the latest
    /// state (compares may name it), but may be provisional; the revision the
    /// future resolves to is the store's. The future fails with
    /// [`StoreError::Superseded`] when a backend that decides ahead of its
    /// remote store finds the write was not applied.
    async fn txn_deferred(&self, txn: Txn) -> Result<(TxnOutcome, Durability), StoreError> {
        let outcome = self.txn(txn).await?;
        let revision = match outcome {
            TxnOutcome::Committed(r) | TxnOutcome::Conflict(r) => r,
        };
        let durable: Durability = Box::pin(futures::future::ready(Ok(revision)));
        Ok((outcome, durable))
    }
    /// The latest durable revision.
    async fn revision(&self) -> Result<Revision, StoreError>;
    /// A read-only view of the whole store at one durable revision: every
    /// range read from it sees the same state, whatever is written
    /// meanwhile. What a follower reloads from after losing its watch, so
    /// that it never builds (and serves) a state mixing two revisions, and
    /// then watches from exactly [`StoreSnapshot::revision`].
    async fn snapshot<'a>(&'a self) -> Result<Box<dyn StoreSnapshot + 'a>, StoreError>;
    /// Whether the store serves reads and writes, and if not, why.
    fn health(&self) -> StoreHealth {
        StoreHealth::Ok
    }
    /// Every change to keys starting with `prefix` with revision `> after`,
    /// in revision order, then live changes as they become durable.
    /// Fails with [`StoreError::Compacted`] when `after` is older than the
    /// retained history; the caller then re-reads from one [`Store::snapshot`] (see
    /// [`read_ranges`]) and watches again from its revision.
    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError>;
}

/// A shared handle to any store backend.
pub type SharedStore = Arc<dyn Store>;

/// The store as it was at one revision (see [`Store::snapshot`]).
#[async_trait::async_trait]
pub trait StoreSnapshot: Send + Sync {
    /// The revision every read of this snapshot sees; a watch from it
    /// continues exactly where the snapshot ends.
    fn revision(&self) -> Revision;
    /// Reads a key range in key order, as it was at [`Self::revision`];
    /// the result carries that revision. Fails with
    /// [`StoreError::Compacted`] when the backend has meanwhile discarded
    /// that revision (etcd, compacted past it); the caller takes a new
    /// snapshot.
    async fn range(&self, range: Range) -> Result<RangeResult, StoreError>;
}

/// How many times [`read_ranges`] takes a new snapshot when the one it read
/// from was compacted away under it.
const SNAPSHOT_ATTEMPTS: usize = 5;

/// Reads several ranges from one snapshot: the results, in the order of
/// `ranges`, all as of the returned revision, which is the one to watch
/// from. A snapshot compacted away before it was read whole is replaced
/// by a newer one (a few times, then the [`StoreError::Compacted`] is
/// returned), so a compaction never yields a mix of two revisions.
pub async fn read_ranges(
    store: &dyn Store,
    ranges: &[Range],
) -> Result<(Vec<RangeResult>, Revision), StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let snapshot = store.snapshot().await?;
        let mut results = Vec::with_capacity(ranges.len());
        let mut compacted = None;
        for range in ranges {
            match snapshot.range(range.clone()).await {
                Ok(result) => results.push(result),
                Err(e @ StoreError::Compacted { .. }) => {
                    compacted = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        match compacted {
            None => return Ok((results, snapshot.revision())),
            Some(e) if attempt >= SNAPSHOT_ATTEMPTS => return Err(e),
            Some(e) => tracing::debug!(error = %e, "snapshot compacted while read; taking another"),
        }
    }
}

/// Deletes `kvs` (as read earlier) in transactions of 128 keys, each only if
/// none of its keys changed since it was read: a key rewritten meanwhile makes
/// its chunk conflict and stay, for the caller's next sweep. Returns how many
/// were deleted. What expiring records (idempotency tokens, finished
/// operations) is built on.
pub async fn delete_unchanged<K: std::borrow::Borrow<KeyValue> + Sync>(
    store: &dyn Store,
    kvs: &[K],
) -> Result<usize, StoreError> {
    let mut removed = 0;
    for chunk in kvs.chunks(128) {
        let compares = chunk
            .iter()
            .map(|kv| {
                let kv = kv.borrow();
                Compare::ModRevision(kv.key.clone(), kv.mod_revision)
            })
            .collect();
        let ops = chunk
            .iter()
            .map(|kv| Op::Delete(kv.borrow().key.clone()))
            .collect();
        if let TxnOutcome::Committed(_) = store.txn(Txn { compares, ops }).await? {
            removed += chunk.len();
        }
    }
    Ok(removed)
}
