//! The embedded backend: an in-memory ordered map made durable by a
//! write-ahead log with group commit, plus snapshots for compaction.
//!
//! Write path: [`Store::txn`] evaluates and applies a transaction to memory
//! under a short mutex, appends its encoded record to a pending buffer and
//! waits. A dedicated committer thread takes *all* pending records at once,
//! writes and fdatasyncs them with one call, then publishes the new durable
//! revision and the batch's watch events. Concurrent writers therefore share
//! fsyncs, which is where the throughput comes from.
//!
//! Read path: reads see memory, which may be ahead of the disk; a read that
//! saw revision `r` waits until `r` is durable before answering, so nothing
//! that could still be lost in a crash is ever observed.
//!
//! On-disk format and recovery: see the `disk` module.

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use futures::stream::BoxStream;
use tokio::sync::watch;

use crate::{
    Compare, Durability, KeyValue, Op, Range, RangeResult, Revision, Store, StoreError,
    StoreHealth, StoreSnapshot, Txn, TxnOutcome, WatchEvent,
};

mod disk;
/// The name of the store's snapshot file in its folder (it changes at every compaction).
pub use disk::SNAPSHOT_FILE;
mod hub;
#[cfg(test)]
mod tests;

use hub::Hub;

/// Configuration of an [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Directory for the lock file, write-ahead logs and snapshot; created if
    /// missing.
    pub dir: PathBuf,
    /// How many recent change events to keep in memory, so that watchers can
    /// start from a past revision (older → [`StoreError::Compacted`]).
    pub history_len: usize,
    /// At most this many bytes of keys and values in that history: large
    /// values (a client writing megabytes per update) shorten it rather than
    /// grow the process without bound.
    pub history_bytes: usize,
    /// Compaction (snapshot + fresh log) starts once the logs written since
    /// the last snapshot hold at least this many bytes *and* more than twice
    /// the live data size.
    pub compaction_threshold: u64,
    /// Logs are zero-filled this large ahead of use, in the background, so
    /// that a commit's sync flushes only data (see `disk::Wal`). 0: logs
    /// grow by appending.
    pub segment_size: u64,
    /// How many committed batches a slow watcher may have queued before it
    /// is switched to catching up from the history.
    pub watch_buffer: usize,
}

/// The default [`EmbeddedOptions::history_bytes`]: 64 MiB.
pub const DEFAULT_HISTORY_BYTES: usize = 64 << 20;

/// The default [`EmbeddedOptions::segment_size`]: 4 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 4 << 20;

impl EmbeddedOptions {
    /// Defaults for `dir`: 100 000 events and 64 MiB of history, compaction from
    /// 64 MiB of logs, 4 MiB log segments, 1024 queued batches per watcher.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmbeddedOptions {
            dir: dir.into(),
            history_len: 100_000,
            history_bytes: DEFAULT_HISTORY_BYTES,
            compaction_threshold: 64 << 20,
            segment_size: DEFAULT_SEGMENT_SIZE,
            watch_buffer: 1024,
        }
    }
}

/// The embedded, crash-safe [`Store`] backend. Single-process: it locks its
/// data directory.
///
/// Dropping the last handle flushes pending writes, stops the committer
/// thread and releases the directory lock; open watch streams then end with
/// [`StoreError::Unavailable`].
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

/// State shared between the store handle and the committer thread.
struct Inner {
    state: Mutex<State>,
    /// Wakes the committer when records are pending or on shutdown.
    wake: Condvar,
    /// What is on disk; waited on by writers and readers.
    durable: watch::Sender<Durable>,
    hub: Arc<Mutex<Hub>>,
    dir: PathBuf,
    compaction_threshold: u64,
    /// Test hook: make the next log write fail for good.
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
    /// Test hook: make this many log writes fail with "Too many open files".
    #[cfg(test)]
    fail_transiently: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Clone)]
struct Durable {
    /// Every revision up to this one is on disk.
    revision: Revision,
    /// Bumped each time a batch that could not be made durable is rolled
    /// back: revisions above the rollback point are then handed out again,
    /// so a revision alone no longer tells whether a waiter's write is on disk.
    epoch: u64,
    /// For the latest rollbacks, oldest first: the epoch that ended and the
    /// last durable revision of it. A waiter from that epoch whose revision
    /// is above it was rolled back.
    rolled_back: std::collections::VecDeque<(u64, Revision)>,
    /// Why the last rollback happened, for the writers it failed.
    rollback_reason: String,
    /// Set once a write or sync failed in a way that leaves the disk in an
    /// unknown state; the store is then unusable.
    failed: Option<String>,
    /// Set while writes fail for a reason that can pass (no descriptors, a
    /// full disk): memory matches the disk and reads are served; the next
    /// durable write clears it.
    degraded: Option<String>,
}

/// How many rollbacks [`Durable::rolled_back`] remembers. A waiter is woken
/// by each one, so it misses its own only if this many happen before it
/// runs; it then fails with an unknown outcome rather than guess.
const ROLLBACKS_KEPT: usize = 64;

/// A point a reader or writer must see durable before answering: a revision
/// of an epoch (see [`Durable::epoch`]).
#[derive(Debug, Clone, Copy)]
struct Mark {
    revision: Revision,
    epoch: u64,
}

/// Every live key and its value, in key order.
///
/// A persistent map: compaction snapshots it in O(1) under the state lock
/// (the snapshot shares its nodes; a write made while the snapshot thread
/// still holds it copies only the nodes on its own path). A `BTreeMap` had to
/// be copied whole under the lock: ~10 ms at 20,000 keys and ~60 ms at 100,000
/// (client tokens alone reach that in an hour of busy writes), a stall of
/// every read and write.
pub(crate) type Kvs = imbl::OrdMap<String, KeyValue>;

/// The in-memory state, ahead of disk by whatever is pending.
struct State {
    kvs: Kvs,
    /// The revision of the last applied transaction, durable or not.
    head: Revision,
    /// Approximate size of the live data, to decide when to compact.
    live_bytes: u64,
    /// Framed log records not yet handed to the committer.
    pending: Vec<u8>,
    /// Watch events of the pending records, in order.
    pending_events: Vec<WatchEvent>,
    /// How to take back the pending records' changes, in order: what a
    /// rollback applies, newest first, if their batch cannot be written.
    pending_undo: Vec<Undo>,
    /// The current [`Durable::epoch`].
    epoch: u64,
    /// Why writes are refused while the log is being cut back to its
    /// durable end after a failed batch (see [`repair`]).
    repairing: Option<String>,
    /// Set once a write or sync failed: memory may then be ahead of a disk
    /// that will never catch up, so nothing may be served any more.
    failed: Option<String>,
    shutdown: bool,
    /// The committer is (about to be) asleep on `wake` with nothing to do.
    /// Writers wake it only then: std's `Condvar::notify_one` is a futex
    /// syscall whether or not anyone waits, and while the committer is busy
    /// syncing it takes everything pending anyway when it comes back.
    committer_idle: bool,
}

/// The inverse of one applied op.
enum Undo {
    /// The op created this key.
    Remove(String),
    /// The op replaced or deleted this entry.
    Restore(KeyValue),
}

/// Applies an [`Undo`], keeping the live data size in step.
fn undo_op(kvs: &mut Kvs, live_bytes: &mut u64, undo: Undo) {
    let (key, previous) = match undo {
        Undo::Remove(key) => (key, None),
        Undo::Restore(kv) => (kv.key.clone(), Some(kv)),
    };
    if let Some(current) = kvs.remove(&key) {
        *live_bytes = live_bytes.saturating_sub(entry_size(&current.key, &current.value));
    }
    if let Some(kv) = previous {
        *live_bytes += entry_size(&kv.key, &kv.value);
        kvs.insert(key, kv);
    }
}

/// Size accounted per key toward the live data size: key, value and a rough
/// per-entry overhead for the revisions and framing.
fn entry_size(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len() + 32) as u64
}

/// Applies one op at `revision`; returns its watch event if `emit` is set and
/// the op changed something (deleting a missing key changes nothing).
/// Shared by live transactions and log replay, so both agree exactly.
fn apply_op(
    kvs: &mut Kvs,
    live_bytes: &mut u64,
    revision: Revision,
    op: Op,
    emit: bool,
    undo: Option<&mut Vec<Undo>>,
) -> Option<WatchEvent> {
    match op {
        Op::Put(key, value) => {
            let event = emit.then(|| WatchEvent {
                revision,
                key: key.clone(),
                value: Some(value.clone()),
            });
            *live_bytes += entry_size(&key, &value);
            match kvs.get_mut(&key) {
                Some(kv) => {
                    *live_bytes = live_bytes.saturating_sub(entry_size(&kv.key, &kv.value));
                    let replaced = KeyValue {
                        key,
                        value,
                        create_revision: kv.create_revision,
                        mod_revision: revision,
                        version: kv.version + 1,
                    };
                    let previous = std::mem::replace(kv, replaced);
                    if let Some(undo) = undo {
                        undo.push(Undo::Restore(previous));
                    }
                }
                None => {
                    if let Some(undo) = undo {
                        undo.push(Undo::Remove(key.clone()));
                    }
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision: revision,
                        mod_revision: revision,
                        version: 1,
                    };
                    kvs.insert(key, kv);
                }
            }
            event
        }
        Op::Delete(key) => {
            let kv = kvs.remove(&key)?;
            *live_bytes = live_bytes.saturating_sub(entry_size(&kv.key, &kv.value));
            if let Some(undo) = undo {
                undo.push(Undo::Restore(kv));
            }
            emit.then_some(WatchEvent {
                revision,
                key,
                value: None,
            })
        }
    }
}

impl State {
    fn holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::Absent(key) => !self.kvs.contains_key(key),
            Compare::ModRevision(key, rev) => {
                self.kvs.get(key).is_some_and(|kv| kv.mod_revision == *rev)
            }
        }
    }

    /// The entries of `range` in key order.
    fn range<'a>(&'a self, range: &Range) -> impl Iterator<Item = &'a KeyValue> + 'a {
        kvs_range(&self.kvs, range)
    }
}

/// The entries of `range` in `kvs`, in key order.
fn kvs_range<'a>(kvs: &'a Kvs, range: &Range) -> impl Iterator<Item = &'a KeyValue> + 'a {
    let end = match &range.end {
        Some(end) => Bound::Excluded(end.clone()),
        None => Bound::Unbounded,
    };
    // A map range panics on an inverted range; an empty one is fine.
    let empty = matches!(&end, Bound::Excluded(e) if *e <= range.start);
    let bounds = (Bound::Included(range.start.clone()), end);
    (!empty)
        .then(|| kvs.range(bounds).map(|(_, kv)| kv))
        .into_iter()
        .flatten()
}

impl Inner {
    /// Locks the state for a request, refusing if the store has failed.
    fn lock_state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        let st = self.state.lock().map_err(|_| {
            StoreError::Unavailable("internal panic while holding the store lock".into())
        })?;
        match &st.failed {
            Some(why) => Err(StoreError::Unavailable(why.clone())),
            None => Ok(st),
        }
    }

    /// Waits until what `mark` names is durable; fails if the store failed
    /// or the write was rolled back meanwhile.
    async fn wait_durable(&self, mark: Mark) -> Result<(), StoreError> {
        // Fast path: nothing in flight (the borrow ends before any await).
        if let Some(done) = durable_outcome(&self.durable.borrow(), mark) {
            return done;
        }
        let mut rx = self.durable.subscribe();
        let durable = rx
            .wait_for(|d| durable_outcome(d, mark).is_some())
            .await
            .map_err(|_| StoreError::Unavailable("store closed".into()))?;
        durable_outcome(&durable, mark).unwrap_or(Ok(()))
    }

    /// Marks the store failed everywhere after a disk error that leaves the
    /// disk's contents unknown.
    fn fail(&self, error: &std::io::Error) {
        let why = format!("write-ahead log failure: {error}");
        tracing::error!(dir = %self.dir.display(), "{why}; the store is now unavailable until a restart");
        lock_poisoned(&self.state).failed = Some(why.clone());
        self.durable.send_modify(|d| {
            d.failed.get_or_insert_with(|| why.clone());
        });
        hub::lock(&self.hub).end(&why);
    }

    /// Takes back every change not yet durable after a batch could not be
    /// written for a reason that can pass: `batch_undo` is the failed
    /// batch's, and every record accepted since is taken back too (they were
    /// decided on top of it). Memory then matches the disk again, the
    /// writers of those records fail, and the store is marked degraded.
    ///
    /// With `pause_writes`, new writes are refused until the log is repaired
    /// (see [`repair`]).
    fn roll_back(&self, batch_undo: Vec<Undo>, why: &str, pause_writes: bool) {
        let mut st = lock_poisoned(&self.state);
        let state = &mut *st;
        let undo = std::mem::take(&mut state.pending_undo);
        for u in undo.into_iter().rev().chain(batch_undo.into_iter().rev()) {
            undo_op(&mut state.kvs, &mut state.live_bytes, u);
        }
        state.pending.clear();
        state.pending_events.clear();
        if pause_writes {
            state.repairing = Some(why.to_string());
        }
        let durable = self.durable.borrow().revision;
        state.head = durable;
        let ended = state.epoch;
        state.epoch += 1;
        let epoch = state.epoch;
        // Published under the state lock: a writer of the new epoch must
        // never find the durable state still in the old one.
        self.durable.send_modify(|d| {
            d.rolled_back.push_back((ended, durable));
            if d.rolled_back.len() > ROLLBACKS_KEPT {
                d.rolled_back.pop_front();
            }
            d.epoch = epoch;
            d.rollback_reason = why.to_string();
            d.degraded = Some(why.to_string());
        });
    }

    /// The store's health, from what the committer published last.
    fn health(&self) -> StoreHealth {
        let d = self.durable.borrow();
        match (&d.failed, &d.degraded) {
            (Some(why), _) => StoreHealth::Failed(why.clone()),
            (None, Some(why)) => StoreHealth::Degraded(why.clone()),
            (None, None) => StoreHealth::Ok,
        }
    }
}

/// Whether what `mark` names is durable (`Ok`), will never be (`Err`), or
/// not yet known (`None`).
fn durable_outcome(d: &Durable, mark: Mark) -> Option<Result<(), StoreError>> {
    if d.epoch == mark.epoch {
        if d.revision >= mark.revision {
            return Some(Ok(()));
        }
        return d
            .failed
            .as_ref()
            .map(|why| Err(StoreError::Unavailable(why.clone())));
    }
    // A rollback ended the mark's epoch: only what was durable then stays.
    Some(
        match d.rolled_back.iter().find(|(epoch, _)| *epoch == mark.epoch) {
            Some((_, last)) if mark.revision <= *last => Ok(()),
            Some(_) => Err(StoreError::Unavailable(format!(
                "the write could not be made durable and was not applied: {}",
                d.rollback_reason
            ))),
            None => Err(StoreError::Unavailable(format!(
                "whether the write was made durable is unknown: {}",
                d.rollback_reason
            ))),
        },
    )
}

/// Locks a mutex whether or not it is poisoned: for the committer and drop,
/// which must make progress to record failure or shut down.
fn lock_poisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `opts.dir`: takes the directory lock,
    /// loads the snapshot, replays the log (truncating a torn tail) and starts
    /// the committer thread. Fails with [`StoreError::Corrupt`] on damage a
    /// crash cannot explain, and with an I/O error of kind `WouldBlock` if
    /// another store has the directory open.
    pub async fn open(opts: EmbeddedOptions) -> Result<Arc<EmbeddedStore>, StoreError> {
        // Replay reads and parses the whole log: keep it off the async workers.
        tokio::task::spawn_blocking(move || Self::open_blocking(opts))
            .await
            .map_err(|e| StoreError::Unavailable(format!("open task failed: {e}")))?
    }

    fn open_blocking(opts: EmbeddedOptions) -> Result<Arc<EmbeddedStore>, StoreError> {
        let recovered = disk::recover(&opts.dir, opts.segment_size)?;
        let head = recovered.head;
        tracing::info!(dir = %opts.dir.display(), revision = head, keys = recovered.kvs.len(), "opened store");
        let (durable, _) = watch::channel(Durable {
            revision: head,
            epoch: 0,
            rolled_back: std::collections::VecDeque::new(),
            rollback_reason: String::new(),
            failed: None,
            degraded: None,
        });
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                kvs: recovered.kvs,
                head,
                live_bytes: recovered.live_bytes,
                pending: Vec::new(),
                pending_events: Vec::new(),
                pending_undo: Vec::new(),
                epoch: 0,
                repairing: None,
                failed: None,
                shutdown: false,
                committer_idle: false,
            }),
            wake: Condvar::new(),
            durable,
            hub: Arc::new(Mutex::new(Hub::new(
                head,
                opts.history_len,
                opts.history_bytes,
                opts.watch_buffer,
            ))),
            dir: opts.dir.clone(),
            compaction_threshold: opts.compaction_threshold,
            #[cfg(test)]
            fail_writes: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            fail_transiently: std::sync::atomic::AtomicUsize::new(0),
        });
        let committer = {
            let inner = inner.clone();
            let wal = recovered.wal;
            std::thread::Builder::new()
                .name("weft-store-commit".into())
                .spawn(move || commit_loop(&inner, wal))?
        };
        Ok(Arc::new(EmbeddedStore {
            inner,
            committer: Mutex::new(Some(committer)),
        }))
    }
}

impl EmbeddedStore {
    /// Decides a transaction against memory: checks its compares and, if they
    /// hold, applies its ops and queues its log record for the committer.
    /// Returns the outcome and the mark that must be durable before the
    /// outcome may be relied on.
    fn decide(&self, txn: Txn) -> Result<(TxnOutcome, Mark), StoreError> {
        // Encode outside the lock; only the revision is added under it.
        let body = match txn.ops.is_empty() {
            true => None,
            false => Some(disk::encode_ops(&txn.ops)?),
        };
        let mut st = self.inner.lock_state()?;
        if let Some(why) = &st.repairing {
            return Err(StoreError::Unavailable(format!(
                "writes are paused until the write-ahead log is repaired: {why}"
            )));
        }
        let seen = Mark {
            revision: st.head,
            epoch: st.epoch,
        };
        if !txn.compares.iter().all(|c| st.holds(c)) {
            return Ok((TxnOutcome::Conflict(st.head), seen));
        }
        let Some(body) = body else {
            return Ok((TxnOutcome::Committed(st.head), seen));
        };
        let state = &mut *st;
        let revision = state.head + 1;
        disk::frame_record(&mut state.pending, revision, &body);
        for op in txn.ops {
            let undo = Some(&mut state.pending_undo);
            if let Some(event) = apply_op(
                &mut state.kvs,
                &mut state.live_bytes,
                revision,
                op,
                true,
                undo,
            ) {
                state.pending_events.push(event);
            }
        }
        state.head = revision;
        let idle = std::mem::replace(&mut state.committer_idle, false);
        drop(st);
        if idle {
            self.inner.wake.notify_one();
        }
        let mark = Mark {
            revision,
            epoch: seen.epoch,
        };
        Ok((TxnOutcome::Committed(revision), mark))
    }

    /// The mark of the latest accepted state, for a read that saw it.
    fn seen(st: &State) -> Mark {
        Mark {
            revision: st.head,
            epoch: st.epoch,
        }
    }

    /// The entries of `range` as the latest accepted state has them.
    fn read_range(st: &State, range: &Range) -> RangeResult {
        read_kvs_range(&st.kvs, st.head, range)
    }
}

/// The entries of `range` in `kvs` as of `revision`, at most `range.limit`.
fn read_kvs_range(kvs: &Kvs, revision: Revision, range: &Range) -> RangeResult {
    let mut iter = kvs_range(kvs, range);
    let kvs: Vec<KeyValue> = match range.limit {
        0 => iter.by_ref().cloned().collect(),
        limit => iter.by_ref().take(limit).cloned().collect(),
    };
    let more = iter.next().is_some();
    RangeResult {
        kvs,
        more,
        revision,
    }
}

/// A copy of the map at one revision: O(1) to take, as the map is persistent
/// (see [`Kvs`]), and read without the state lock.
struct EmbeddedSnapshot {
    kvs: Kvs,
    revision: Revision,
}

#[async_trait::async_trait]
impl StoreSnapshot for EmbeddedSnapshot {
    fn revision(&self) -> Revision {
        self.revision
    }

    async fn range(&self, range: Range) -> Result<RangeResult, StoreError> {
        Ok(read_kvs_range(&self.kvs, self.revision, &range))
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        lock_poisoned(&self.inner.state).shutdown = true;
        self.inner.wake.notify_all();
        // Joining makes drop synchronous: once it returns, pending writes are
        // flushed and the directory lock is released, so a reopen succeeds.
        if let Some(handle) = lock_poisoned(&self.committer).take() {
            if handle.join().is_err() {
                tracing::error!("store committer thread panicked");
            }
        }
    }
}

/// The committer: writes and syncs pending records in batches, publishes
/// them, and starts compactions. Exits on shutdown (after a final flush) or
/// on a disk error that leaves the disk's contents unknown. A batch that
/// fails for a reason that can pass is rolled back (see [`Inner::roll_back`])
/// and the store goes on.
fn commit_loop(inner: &Inner, mut wal: disk::Wal) {
    let mut batch = Vec::new();
    let mut compaction: Option<JoinHandle<()>> = None;
    let mut degraded = false;
    loop {
        let compacting = compaction.as_ref().is_some_and(|h| !h.is_finished());
        let (head, events, undo, snapshot) = {
            let mut st = lock_poisoned(&inner.state);
            while st.pending.is_empty() && !st.shutdown {
                st.committer_idle = true;
                st = inner.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.committer_idle = false;
            if st.pending.is_empty() {
                break; // shutdown, and everything is flushed
            }
            std::mem::swap(&mut st.pending, &mut batch);
            let events = std::mem::take(&mut st.pending_events);
            let undo = std::mem::take(&mut st.pending_undo);
            // Decide on compaction while the state is exactly the state at
            // `head`: this batch holds every record up to it, so once the
            // batch is durable the snapshot copy is fully covered by the log.
            let log_size = wal.since_snapshot() + batch.len() as u64;
            let snapshot = (!compacting
                && log_size >= inner.compaction_threshold
                && log_size > 2 * st.live_bytes)
                .then(|| st.kvs.clone());
            (st.head, events, undo, snapshot)
        };

        if let Err(e) = append(inner, &mut wal, &batch, head) {
            batch.clear();
            if !disk::is_transient(&e) {
                inner.fail(&e);
                break;
            }
            let why = format!("write-ahead log failure: {e}");
            tracing::warn!(
                dir = %inner.dir.display(),
                "{why}; the writes in flight fail, and the store goes on with what is durable"
            );
            inner.roll_back(undo, &why, false);
            degraded = true;
            // Put the log back to its durable end before anything else is
            // written; retried while the cause lasts.
            if let Err(e) = repair(inner, &mut wal) {
                inner.fail(&e);
                break;
            }
            continue;
        }
        drop(undo);
        batch.clear();
        // Feed watchers before releasing writers, so that once a txn has
        // returned its event is in the history for any new watcher.
        hub::lock(&inner.hub).publish(head, events);
        inner.durable.send_modify(|d| {
            d.revision = head;
            if degraded {
                d.degraded = None;
            }
        });
        if std::mem::take(&mut degraded) {
            tracing::info!(dir = %inner.dir.display(), revision = head, "store writes are durable again");
        }

        if let Some(kvs) = snapshot {
            // New records go to a fresh log from here on; the snapshot then
            // replaces every older log (see disk::write_snapshot). A log that
            // cannot be created only postpones the compaction.
            if let Err(e) = wal.rotate_for_snapshot(head + 1) {
                tracing::warn!(revision = head, "store compaction postponed: {e}");
                continue;
            }
            let dir = inner.dir.clone();
            let spawned = std::thread::Builder::new()
                .name("weft-store-compact".into())
                .spawn(move || {
                    disk::background_priority();
                    match disk::write_snapshot(&dir, &kvs, head) {
                        Ok(()) => tracing::info!(revision = head, "compacted the store log"),
                        // Not fatal: the logs still hold everything; the
                        // next compaction tries again.
                        Err(e) => tracing::warn!(revision = head, "store compaction failed: {e}"),
                    }
                });
            match spawned {
                Ok(handle) => compaction = Some(handle),
                Err(e) => tracing::warn!("could not start store compaction: {e}"),
            }
        }
    }
    if let Some(handle) = compaction {
        if handle.join().is_err() {
            tracing::error!("store compaction thread panicked");
        }
    }
    hub::lock(&inner.hub).end("store closed");
}

/// Writes and syncs one batch (with the test hooks that make it fail).
#[cfg_attr(not(test), allow(unused_variables))]
fn append(inner: &Inner, wal: &mut disk::Wal, batch: &[u8], head: Revision) -> std::io::Result<()> {
    #[cfg(test)]
    {
        use std::sync::atomic::Ordering;
        if inner.fail_writes.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected write failure"));
        }
        let transient =
            inner
                .fail_transiently
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if transient.is_ok() {
            return Err(std::io::Error::from_raw_os_error(
                rustix::io::Errno::MFILE.raw_os_error(),
            ));
        }
    }
    wal.append(batch, head)
}

/// Cuts the log back to its last durable record after a failed append,
/// retrying with a growing pause while the failure is one that can pass.
/// An error is one that cannot pass. On shutdown it stops trying: recovery
/// then clears the torn tail as after a crash.
fn repair(inner: &Inner, wal: &mut disk::Wal) -> std::io::Result<()> {
    let mut pause = std::time::Duration::from_millis(10);
    for attempt in 0u64.. {
        match wal.repair() {
            Ok(()) => {
                lock_poisoned(&inner.state).repairing = None;
                return Ok(());
            }
            Err(e) if disk::is_transient(&e) => {
                // Once, then about once a minute at the longest pause.
                if attempt % 60 == 0 {
                    tracing::warn!(attempt, "could not repair the write-ahead log yet: {e}");
                }
                if attempt == 0 {
                    // Writes accepted since the failure would land after a
                    // torn tail: take them back too, and refuse new ones
                    // until the log is repaired.
                    let why = format!("write-ahead log failure: {e}");
                    inner.roll_back(Vec::new(), &why, true);
                }
                let st = lock_poisoned(&inner.state);
                if st.shutdown {
                    return Ok(());
                }
                let (st, _) = inner
                    .wake
                    .wait_timeout(st, pause)
                    .unwrap_or_else(PoisonError::into_inner);
                if st.shutdown {
                    return Ok(());
                }
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let (kv, seen) = {
            let st = self.inner.lock_state()?;
            (st.kvs.get(key).cloned(), Self::seen(&st))
        };
        self.inner.wait_durable(seen).await?;
        Ok(kv)
    }

    async fn range(&self, range: Range) -> Result<RangeResult, StoreError> {
        let (result, seen) = {
            let st = self.inner.lock_state()?;
            (Self::read_range(&st, &range), Self::seen(&st))
        };
        // What was read may include accepted writes not yet on disk.
        self.inner.wait_durable(seen).await?;
        Ok(result)
    }

    /// Counts every key in the range; `range.limit` is ignored.
    async fn count(&self, range: Range) -> Result<usize, StoreError> {
        let (count, seen) = {
            let st = self.inner.lock_state()?;
            (st.range(&range).count(), Self::seen(&st))
        };
        self.inner.wait_durable(seen).await?;
        Ok(count)
    }

    async fn get_latest(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let st = self.inner.lock_state()?;
        Ok(st.kvs.get(key).cloned())
    }

    async fn range_latest(&self, range: Range) -> Result<RangeResult, StoreError> {
        let st = self.inner.lock_state()?;
        Ok(Self::read_range(&st, &range))
    }

    async fn count_latest(&self, range: Range) -> Result<usize, StoreError> {
        let st = self.inner.lock_state()?;
        Ok(st.range(&range).count())
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let seen = Self::seen(&*self.inner.lock_state()?);
        self.inner.wait_durable(seen).await
    }

    /// Ops apply in order, so several ops on one key in a txn each count as a
    /// write (each bumps `version`). Deleting a missing key is a no-op that
    /// emits no event, but the txn still takes a new revision.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let (outcome, visible) = self.decide(txn)?;
        // A conflict is also a read: it may have seen a not-yet-durable write,
        // so it waits like one.
        self.inner.wait_durable(visible).await?;
        Ok(outcome)
    }

    async fn txn_deferred(&self, txn: Txn) -> Result<(TxnOutcome, Durability), StoreError> {
        let (outcome, visible) = self.decide(txn)?;
        let inner = self.inner.clone();
        let revision = match outcome {
            TxnOutcome::Committed(r) | TxnOutcome::Conflict(r) => r,
        };
        let durable: Durability = Box::pin(async move {
            inner.wait_durable(visible).await?;
            Ok(revision)
        });
        Ok((outcome, durable))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        // The durable revision needs no wait; the lock check reports failure.
        drop(self.inner.lock_state()?);
        Ok(self.inner.durable.borrow().revision)
    }

    async fn snapshot<'a>(&'a self) -> Result<Box<dyn StoreSnapshot + 'a>, StoreError> {
        let (snapshot, seen) = {
            let st = self.inner.lock_state()?;
            let snapshot = EmbeddedSnapshot {
                kvs: st.kvs.clone(),
                revision: st.head,
            };
            (snapshot, Self::seen(&st))
        };
        // The copy may hold accepted writes not yet on disk.
        self.inner.wait_durable(seen).await?;
        Ok(Box::new(snapshot))
    }

    fn health(&self) -> StoreHealth {
        self.inner.health()
    }

    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        hub::watch(&self.inner.hub, prefix, after)
    }
}
