//! Group commit over etcd: the I/O-free state machine behind
//! [`weft_store::Store::txn_deferred`] on the etcd backend.
//!
//! A write of one mesh is decided under that mesh's turn, and every write of
//! a mesh rewrites the mesh's guard key; if each write's etcd transaction had
//! to finish (a Raft commit, fsynced by a quorum) before the next could be
//! decided, a mesh would take one write per commit latency. Instead, as the
//! embedded store does with its fsync, a transaction is *decided* here at once
//! against the latest state this replica knows — etcd's, overlaid with the
//! writes it decided but etcd has not yet applied — and joins the next batch.
//! One batch is in flight at a time; the writes decided meanwhile go out
//! together as one etcd transaction when it returns
//! (<https://etcd.io/docs/v3.4/learning/api/#transaction>: all of a
//! transaction's compares hold, or none of its ops apply).
//!
//! - A compare on a key no pending write touched goes to etcd, so what other
//!   replicas wrote is still checked where it matters.
//! - A compare on a key an earlier pending write touched is checked here:
//!   if the batch it depends on fails, this one fails with it.
//! - A key decided but not yet applied reads with a *provisional* revision
//!   (negative, so never mistaken for one of etcd's); once its batch is
//!   applied, it reads with etcd's revision.
//! - A failed batch (a compare did not hold at etcd, or etcd did not answer)
//!   fails the batch decided on top of it too: their writers are told
//!   [`StoreError::Superseded`] and decide again from fresh reads.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;
use weft_store::{Compare, KeyValue, Op, Revision, StoreError, Txn, TxnOutcome};

/// etcd's default `--max-txn-ops`: at most this many compares, and this many
/// ops, in one transaction (<https://etcd.io/docs/v3.4/op-guide/configuration/>).
pub(crate) const MAX_TXN_OPS: usize = 128;

/// A batch stops growing past this many bytes of keys and values, well under
/// etcd's default `--max-request-bytes` of 1.5 MiB.
pub(crate) const MAX_BATCH_BYTES: usize = 1 << 20;

/// What a compare that goes to etcd expects of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Absent,
    ModRevision(Revision),
}

/// The last write this replica decided for one key.
#[derive(Debug, Clone)]
struct Entry {
    /// The value written; `None` for a delete.
    value: Option<Bytes>,
    /// The revision reads see until the batch is applied.
    provisional: Revision,
    /// The batch the write went out in.
    batch: u64,
    /// etcd's revision for the write, once its batch was applied.
    committed: Option<Revision>,
}

impl Entry {
    fn revision(&self) -> Revision {
        self.committed.unwrap_or(self.provisional)
    }
}

/// How one decided transaction ends.
pub(crate) type Settled = Result<TxnOutcome, StoreError>;

/// Writes decided since the batch in flight left, to go out together.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) id: u64,
    /// Compares for etcd, one per key.
    pub(crate) compares: BTreeMap<String, Expect>,
    /// The ops, one per key in the order each key was first written (the
    /// order etcd's watchers see a transaction's events in), each with the
    /// key's last value: `None` deletes it.
    pub(crate) ops: Ops,
    /// Keys whose compares were checked against the batch in flight: once it
    /// is applied, etcd checks that nobody wrote them since.
    chained: BTreeSet<String>,
    bytes: usize,
    members: Vec<oneshot::Sender<Settled>>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The compares this batch sends to etcd.
    fn etcd_compares(&self) -> usize {
        self.compares.len() + self.chained.len()
    }
}

/// A batch's ops: one per key, the last value written to it, at the place
/// of the key's first op.
#[derive(Debug, Default)]
pub(crate) struct Ops {
    list: Vec<(String, Option<Bytes>)>,
    index: std::collections::HashMap<String, usize>,
}

impl Ops {
    /// Writes `value` to `key`, over an earlier op on it.
    pub(crate) fn set(&mut self, key: String, value: Option<Bytes>) {
        match self.index.get(&key) {
            Some(&i) => self.list[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.list.len());
                self.list.push((key, value));
            }
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Option<Bytes>> {
        self.index.get(key).map(|&i| &self.list[i].1)
    }

    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &String> {
        self.list.iter().map(|(k, _)| k)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &(String, Option<Bytes>)> {
        self.list.iter()
    }
}

/// What [`Pipeline::decide`] made of a transaction.
#[derive(Debug)]
pub(crate) enum Decision {
    /// A compare does not hold against the latest state this replica knows.
    Conflict,
    /// Decided; `settled` says how it ends. `send` is a batch to send now
    /// (none is in flight).
    Accepted {
        provisional: Revision,
        settled: oneshot::Receiver<Settled>,
        send: Option<Batch>,
    },
    /// Cannot be decided yet: the batch that would hold it is full. Decide
    /// again once a batch completes.
    Wait,
}

/// The group-commit state of one etcd backend.
#[derive(Debug)]
pub(crate) struct Pipeline {
    overlay: BTreeMap<String, Entry>,
    pending: Batch,
    in_flight: Option<u64>,
    next_batch: u64,
    next_provisional: Revision,
    /// Applied batches' keys, oldest first, for forgetting their entries once
    /// no read that started before them can still be running.
    applied: VecDeque<(Instant, u64, Vec<String>)>,
    retain: Duration,
    /// The id of the last batch that completed, and of the last that failed.
    completed: u64,
    failed: u64,
    /// etcd's latest revision as the last answer told it.
    last_revision: Revision,
    /// The revision and time of the last batch etcd applied.
    last_applied: Option<(Revision, Instant)>,
}

impl Pipeline {
    /// `retain`: how long an applied write stays in the overlay — at least
    /// as long as any read may take, so a read that started before the
    /// write was applied (and so does not show it) still gets it overlaid.
    pub(crate) fn new(retain: Duration) -> Self {
        Pipeline {
            overlay: BTreeMap::new(),
            pending: Batch {
                id: 1,
                ..Batch::default()
            },
            in_flight: None,
            next_batch: 2,
            next_provisional: -1,
            applied: VecDeque::new(),
            retain,
            completed: 0,
            failed: 0,
            last_revision: 0,
            last_applied: None,
        }
    }

    /// Decides `txn` against etcd's state overlaid with the writes decided
    /// so far.
    pub(crate) fn decide(&mut self, txn: &Txn) -> Decision {
        let mut sent: Vec<(String, Expect)> = Vec::new();
        let mut chained: Vec<&String> = Vec::new();
        for compare in &txn.compares {
            let (key, expect) = match compare {
                Compare::Absent(key) => (key, Expect::Absent),
                Compare::ModRevision(key, revision) => (key, Expect::ModRevision(*revision)),
            };
            match self.overlay.get(key) {
                // Applied at `revision`: holds if nobody wrote the key since,
                // which etcd checks. An expectation older than that write
                // never holds again (a mod revision only grows); a newer one
                // comes from a read that saw another replica's write: etcd
                // judges it.
                Some(entry) if entry.committed.is_some() => {
                    let revision = entry.revision();
                    let expect = match (expect, &entry.value) {
                        (Expect::Absent, None) => Expect::Absent,
                        (Expect::ModRevision(r), Some(_)) if r == entry.provisional => {
                            Expect::ModRevision(revision)
                        }
                        (Expect::ModRevision(r), _) if r > revision => expect,
                        (Expect::ModRevision(r), Some(_)) if r == revision => expect,
                        _ => return Decision::Conflict,
                    };
                    sent.push((key.clone(), expect));
                }
                // Decided, not yet applied: judged here.
                Some(entry) => {
                    let holds = match expect {
                        Expect::Absent => entry.value.is_none(),
                        Expect::ModRevision(r) => entry.value.is_some() && r == entry.provisional,
                    };
                    if !holds {
                        return Decision::Conflict;
                    }
                    // In flight: etcd checks, once it said at which revision
                    // that batch was applied, that nobody wrote the key since.
                    // Earlier in this batch: holds if the batch applies.
                    if entry.batch != self.pending.id {
                        chained.push(key);
                    }
                }
                // A provisional revision whose entry was forgotten: its write
                // failed, or was applied so long ago that a read since shows
                // etcd's revision.
                None if matches!(expect, Expect::ModRevision(r) if r < 0) => {
                    return Decision::Conflict
                }
                None => sent.push((key.clone(), expect)),
            }
        }
        for (key, expect) in &sent {
            if matches!(self.pending.compares.get(key), Some(e) if e != expect) {
                // An earlier write in the batch expects otherwise: both
                // cannot hold, and the earlier one came first.
                return Decision::Conflict;
            }
        }
        let new_compares = sent
            .iter()
            .filter(|(k, _)| !self.pending.compares.contains_key(k))
            .count()
            + chained
                .iter()
                .filter(|k| !self.pending.chained.contains(**k))
                .count();
        let new_ops = txn
            .ops
            .iter()
            .map(op_key)
            .filter(|k| !self.pending.ops.contains_key(k))
            .collect::<HashSet<_>>()
            .len();
        let bytes: usize = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => k.len() + v.len(),
                Op::Delete(k) => k.len(),
            })
            .sum();
        if !self.pending.is_empty()
            && (self.pending.etcd_compares() + new_compares > MAX_TXN_OPS
                || self.pending.ops.len() + new_ops > MAX_TXN_OPS
                || self.pending.bytes + bytes > MAX_BATCH_BYTES)
        {
            return Decision::Wait;
        }
        let provisional = self.next_provisional;
        self.next_provisional -= 1;
        for (key, expect) in sent {
            self.pending.compares.insert(key, expect);
        }
        for key in chained {
            self.pending.chained.insert(key.clone());
        }
        for op in &txn.ops {
            let (key, value) = match op {
                Op::Put(k, v) => (k, Some(v.clone())),
                Op::Delete(k) => (k, None),
            };
            self.overlay.insert(
                key.clone(),
                Entry {
                    value: value.clone(),
                    provisional,
                    batch: self.pending.id,
                    committed: None,
                },
            );
            self.pending.ops.set(key.clone(), value);
        }
        self.pending.bytes += bytes;
        let (tx, settled) = oneshot::channel();
        self.pending.members.push(tx);
        let send = if self.in_flight.is_none() {
            self.take_pending()
        } else {
            None
        };
        Decision::Accepted {
            provisional,
            settled,
            send,
        }
    }

    /// Makes the pending batch the one in flight.
    fn take_pending(&mut self) -> Option<Batch> {
        if self.pending.is_empty() {
            return None;
        }
        let next = Batch {
            id: self.next_batch,
            ..Batch::default()
        };
        self.next_batch += 1;
        let batch = std::mem::replace(&mut self.pending, next);
        self.in_flight = Some(batch.id);
        Some(batch)
    }

    /// The id of the last batch holding a decided write: what
    /// [`weft_store::Store::sync`] waits for.
    pub(crate) fn last_decided(&self) -> u64 {
        if !self.pending.is_empty() {
            self.pending.id
        } else {
            self.in_flight.unwrap_or(self.completed)
        }
    }

    /// The last batch completed, and the last that failed.
    pub(crate) fn completed(&self) -> (u64, u64) {
        (self.completed, self.failed)
    }

    /// etcd's latest revision as far as this replica heard.
    pub(crate) fn last_revision(&self) -> Revision {
        self.last_revision
    }

    /// The revision etcd applied this replica's last batch at, and when the
    /// answer came.
    pub(crate) fn last_applied(&self) -> Option<(Revision, Instant)> {
        self.last_applied
    }

    /// Records how the batch in flight ended; returns the next batch to send.
    /// `outcome`: etcd's answer, or why there was none.
    pub(crate) fn complete(
        &mut self,
        batch: Batch,
        outcome: Result<TxnOutcome, StoreError>,
        now: Instant,
    ) -> Option<Batch> {
        self.in_flight = None;
        self.completed = batch.id;
        match outcome {
            Ok(TxnOutcome::Committed(revision)) => {
                self.last_revision = self.last_revision.max(revision);
                self.last_applied = Some((revision, now));
                let mut keys = Vec::with_capacity(batch.ops.len());
                for key in batch.ops.keys() {
                    if let Some(entry) = self.overlay.get_mut(key) {
                        if entry.batch == batch.id {
                            entry.committed = Some(revision);
                            keys.push(key.clone());
                        }
                    }
                }
                self.applied.push_back((now, batch.id, keys));
                // What the next batch was decided on is now etcd's state at
                // `revision`: etcd checks that it still is.
                for key in std::mem::take(&mut self.pending.chained) {
                    let expect = match batch.ops.get(&key) {
                        Some(None) => Expect::Absent,
                        _ => Expect::ModRevision(revision),
                    };
                    self.pending.compares.insert(key, expect);
                }
                for member in batch.members {
                    // A writer that stopped waiting has nothing to be told.
                    let _ = member.send(Ok(TxnOutcome::Committed(revision)));
                }
                self.forget_applied(now);
                self.take_pending()
            }
            failure => {
                if let Ok(TxnOutcome::Conflict(revision)) = &failure {
                    self.last_revision = self.last_revision.max(*revision);
                }
                let decided_on_it = std::mem::replace(
                    &mut self.pending,
                    Batch {
                        id: self.next_batch,
                        ..Batch::default()
                    },
                );
                self.next_batch += 1;
                // Both end here; sync() waits on the ids and reports the failure.
                self.completed = decided_on_it.id;
                self.failed = decided_on_it.id;
                let dropped = [batch.id, decided_on_it.id];
                self.overlay.retain(|_, e| !dropped.contains(&e.batch));
                let superseded = || {
                    StoreError::Superseded(
                        "a transaction decided in the same batch did not hold at etcd".into(),
                    )
                };
                for member in batch.members {
                    let told = match &failure {
                        // etcd did not answer: nobody knows more.
                        Err(StoreError::Unavailable(m)) => StoreError::Unavailable(m.clone()),
                        _ => superseded(),
                    };
                    let _ = member.send(Err(told));
                }
                for member in decided_on_it.members {
                    let _ = member.send(Err(superseded()));
                }
                None
            }
        }
    }

    /// Forgets applied writes older than the retention: a read starting now
    /// sees them at etcd.
    fn forget_applied(&mut self, now: Instant) {
        while let Some((at, batch, _)) = self.applied.front() {
            if now.duration_since(*at) < self.retain {
                break;
            }
            let batch = *batch;
            let Some((_, _, keys)) = self.applied.pop_front() else {
                break;
            };
            for key in keys {
                if self.overlay.get(&key).is_some_and(|e| e.batch == batch) {
                    self.overlay.remove(&key);
                }
            }
        }
    }

    /// The value of `key` for a read that etcd answered at `read_at` with
    /// `etcd` (what it found): a write this replica decided and etcd had not
    /// applied by `read_at` overlays it.
    ///
    /// An applied write the read already shows is forgotten: etcd's answer
    /// is at least as new (another replica may have written since), and
    /// what is decided next must be judged against that.
    pub(crate) fn merge_one(
        &mut self,
        key: &str,
        etcd: Option<KeyValue>,
        read_at: Revision,
    ) -> Option<KeyValue> {
        if self
            .overlay
            .get(key)
            .is_some_and(|e| e.committed.is_some_and(|r| r <= read_at))
        {
            self.overlay.remove(key);
        }
        self.overlay_one(key, etcd, read_at)
    }

    fn overlay_one(
        &self,
        key: &str,
        etcd: Option<KeyValue>,
        read_at: Revision,
    ) -> Option<KeyValue> {
        match self.overlay.get(key) {
            Some(entry) if entry.committed.is_none_or(|r| r > read_at) => {
                entry.value.as_ref().map(|value| KeyValue {
                    key: key.to_string(),
                    value: value.clone(),
                    create_revision: etcd
                        .as_ref()
                        .map_or(entry.revision(), |kv| kv.create_revision),
                    mod_revision: entry.revision(),
                    version: etcd.as_ref().map_or(1, |kv| kv.version + 1),
                })
            }
            _ => etcd,
        }
    }

    /// Whether a key `txn` compares or writes has a write decided and not yet
    /// applied: a transaction sent to etcd on its own waits for it, so that
    /// it is judged (and ordered) after that write.
    pub(crate) fn busy(&self, txn: &Txn) -> bool {
        let compared = txn.compares.iter().map(|c| match c {
            Compare::Absent(k) | Compare::ModRevision(k, _) => k,
        });
        compared
            .chain(txn.ops.iter().map(op_key))
            .any(|k| self.overlay.get(k).is_some_and(|e| e.committed.is_none()))
    }

    /// The value of a key this replica decided a write of that etcd has not
    /// applied yet (`Some(None)`: a delete); `None` when there is none, and
    /// etcd must be asked.
    pub(crate) fn decided(&self, key: &str) -> Option<Option<KeyValue>> {
        let entry = self.overlay.get(key).filter(|e| e.committed.is_none())?;
        Some(entry.value.as_ref().map(|value| KeyValue {
            key: key.to_string(),
            value: value.clone(),
            create_revision: entry.provisional,
            mod_revision: entry.provisional,
            version: 1,
        }))
    }

    /// Whether any decided write lies in `[start, end)` (`end` `None`: to the
    /// end of the key space).
    pub(crate) fn touches(&self, start: &str, end: Option<&str>) -> bool {
        self.in_range(start, end).next().is_some()
    }

    /// How many decided writes lie in the range: what a limited range read
    /// must read beyond its limit to fill it after merging.
    pub(crate) fn count_in(&self, start: &str, end: Option<&str>) -> usize {
        self.in_range(start, end).count()
    }

    fn in_range<'a>(
        &'a self,
        start: &str,
        end: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        self.overlay
            .range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| end.is_none_or(|end| k.as_str() < end))
    }

    /// Merges the writes decided in `[start, end)` into `kvs` (etcd's
    /// answer at `read_at`, in key order).
    pub(crate) fn merge_range(
        &self,
        kvs: Vec<KeyValue>,
        start: &str,
        end: Option<&str>,
        read_at: Revision,
    ) -> Vec<KeyValue> {
        let mut merged: BTreeMap<String, KeyValue> =
            kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        for (key, entry) in self.in_range(start, end) {
            if entry.committed.is_some_and(|r| r <= read_at) {
                continue;
            }
            let etcd = merged.remove(key);
            if let Some(kv) = self.overlay_one(key, etcd, read_at) {
                merged.insert(key.clone(), kv);
            }
        }
        merged.into_values().collect()
    }
}

fn op_key(op: &Op) -> &String {
    match op {
        Op::Put(k, _) | Op::Delete(k) => k,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put(key.to_string(), Bytes::copy_from_slice(value.as_bytes()))
    }

    fn txn(compares: Vec<Compare>, ops: Vec<Op>) -> Txn {
        Txn { compares, ops }
    }

    fn pipeline() -> Pipeline {
        Pipeline::new(Duration::from_secs(6))
    }

    /// Decides a transaction that must be accepted.
    fn accept(p: &mut Pipeline, t: &Txn) -> (Revision, oneshot::Receiver<Settled>, Option<Batch>) {
        match p.decide(t) {
            Decision::Accepted {
                provisional,
                settled,
                send,
            } => (provisional, settled, send),
            other => panic!("not accepted: {other:?}"),
        }
    }

    fn guard_write(rev: Revision, value: &str) -> Txn {
        txn(
            vec![Compare::ModRevision("guard".into(), rev)],
            vec![put("guard", value)],
        )
    }

    #[test]
    fn the_first_write_goes_out_at_once_and_later_ones_wait_for_it() {
        let mut p = pipeline();
        let (_, _, first) = accept(&mut p, &txn(vec![], vec![put("a", "1")]));
        let first = first.expect("nothing in flight: sent at once");
        assert_eq!(first.ops.len(), 1);
        let (_, _, second) = accept(&mut p, &txn(vec![], vec![put("b", "1")]));
        assert!(second.is_none(), "waits for the batch in flight");
        let (_, _, third) = accept(&mut p, &txn(vec![], vec![put("c", "1")]));
        assert!(third.is_none());
        let next = p
            .complete(first, Ok(TxnOutcome::Committed(10)), Instant::now())
            .expect("the writes decided meanwhile go out together");
        assert_eq!(next.ops.keys().collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn writes_of_one_mesh_chain_on_the_guard_without_waiting_for_etcd() {
        let mut p = pipeline();
        // The guard as etcd last showed it, at revision 7.
        let (p1, _, first) = accept(&mut p, &guard_write(7, "1"));
        let first = first.unwrap();
        assert_eq!(first.compares["guard"], Expect::ModRevision(7));
        let read = p.merge_one("guard", None, 7).unwrap();
        assert_eq!(read.mod_revision, p1);
        assert!(p1 < 0, "a provisional revision is never one of etcd's");
        let (p2, _, _) = accept(&mut p, &guard_write(p1, "2"));
        let (_, _, _) = accept(&mut p, &guard_write(p2, "3"));
        let next = p
            .complete(first, Ok(TxnOutcome::Committed(8)), Instant::now())
            .unwrap();
        // Checked here against the batch before, and at etcd against
        // whatever another replica wrote since that batch was applied.
        assert_eq!(next.compares.get("guard"), Some(&Expect::ModRevision(8)));
        assert_eq!(next.compares.len(), 1);
        assert_eq!(next.ops.get("guard"), Some(&Some(Bytes::from("3"))));
    }

    #[test]
    fn a_compare_against_an_older_revision_conflicts_with_a_decided_write() {
        let mut p = pipeline();
        let (_, _, _) = accept(&mut p, &guard_write(7, "1"));
        assert!(matches!(p.decide(&guard_write(7, "x")), Decision::Conflict));
    }

    #[test]
    fn a_failed_batch_fails_the_batch_decided_on_top_of_it_and_is_forgotten() {
        let mut p = pipeline();
        let (_, mut s1, first) = accept(&mut p, &guard_write(7, "1"));
        let (p2, mut s2, _) = accept(&mut p, &guard_write(-1, "2"));
        assert!(p2 < -1);
        let next = p.complete(first.unwrap(), Ok(TxnOutcome::Conflict(9)), Instant::now());
        assert!(next.is_none());
        assert!(matches!(s1.try_recv(), Ok(Err(StoreError::Superseded(_)))));
        assert!(matches!(s2.try_recv(), Ok(Err(StoreError::Superseded(_)))));
        // Reads show etcd's state again, and the next write is decided on it.
        let etcd = KeyValue {
            key: "guard".into(),
            value: Bytes::from("other"),
            create_revision: 1,
            mod_revision: 9,
            version: 3,
        };
        assert_eq!(p.merge_one("guard", Some(etcd.clone()), 9), Some(etcd));
        assert!(matches!(
            s1.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
        let (_, _, again) = accept(&mut p, &guard_write(9, "1"));
        assert!(again.is_some(), "nothing in flight after the failure");
    }

    #[test]
    fn a_transaction_on_a_key_with_a_write_in_flight_is_busy_until_it_is_applied() {
        let mut p = pipeline();
        let (_, _, first) = accept(&mut p, &txn(vec![], vec![put("k", "1")]));
        let on_k = txn(vec![Compare::Absent("k".into())], vec![put("other", "v")]);
        assert!(p.busy(&on_k));
        assert!(!p.busy(&txn(vec![], vec![put("elsewhere", "v")])));
        p.complete(first.unwrap(), Ok(TxnOutcome::Committed(3)), Instant::now());
        assert!(!p.busy(&on_k));
    }

    #[test]
    fn an_applied_write_judges_later_compares_until_a_read_shows_etcd_newer() {
        let mut p = pipeline();
        let (_, _, first) = accept(&mut p, &txn(vec![], vec![put("k", "1")]));
        p.complete(first.unwrap(), Ok(TxnOutcome::Committed(5)), Instant::now());
        let create = txn(vec![Compare::Absent("k".into())], vec![put("k", "2")]);
        assert!(matches!(p.decide(&create), Decision::Conflict));
        // Another replica deleted it at 6: a read at 6 shows etcd's state.
        assert_eq!(p.merge_one("k", None, 6), None);
        let (_, _, sent) = accept(&mut p, &create);
        assert_eq!(sent.unwrap().compares["k"], Expect::Absent);
    }

    #[test]
    fn a_read_older_than_an_applied_write_still_shows_it() {
        let mut p = pipeline();
        let (_, _, first) = accept(&mut p, &txn(vec![], vec![put("a", "new")]));
        let now = Instant::now();
        p.complete(first.unwrap(), Ok(TxnOutcome::Committed(20)), now);
        // A read answered at 19 predates the write: overlaid, at etcd's revision.
        let kv = p.merge_one("a", None, 19).unwrap();
        assert_eq!((kv.value, kv.mod_revision), (Bytes::from("new"), 20));
        // One answered at 20 or later is etcd's own answer (another replica may have written since).
        assert_eq!(p.merge_one("a", None, 20), None);
        // Past the retention, the write is forgotten.
        let (_, _, b) = accept(&mut p, &txn(vec![], vec![put("b", "1")]));
        p.complete(
            b.unwrap(),
            Ok(TxnOutcome::Committed(21)),
            now + Duration::from_secs(7),
        );
        assert!(!p.touches("a", Some("b")));
    }

    #[test]
    fn a_range_read_shows_decided_puts_and_hides_decided_deletes() {
        let mut p = pipeline();
        let kv = |k: &str| KeyValue {
            key: k.into(),
            value: Bytes::from("etcd"),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
        };
        accept(
            &mut p,
            &txn(
                vec![],
                vec![put("m/b", "new"), Op::Delete("m/c".into()), put("n/x", "1")],
            ),
        );
        assert!(p.touches("m/", Some("m0")));
        assert_eq!(p.count_in("m/", Some("m0")), 2);
        let merged = p.merge_range(vec![kv("m/a"), kv("m/c")], "m/", Some("m0"), 5);
        let keys: Vec<_> = merged.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["m/a", "m/b"]);
    }

    #[test]
    fn a_full_batch_makes_the_next_write_wait() {
        let mut p = pipeline();
        accept(&mut p, &txn(vec![], vec![put("first", "1")]));
        for i in 0..MAX_TXN_OPS {
            accept(&mut p, &txn(vec![], vec![put(&format!("k{i:03}"), "1")]));
        }
        assert!(matches!(
            p.decide(&txn(vec![], vec![put("one-more", "1")])),
            Decision::Wait
        ));
        // Rewriting a key already in the batch takes no room.
        accept(&mut p, &txn(vec![], vec![put("k000", "2")]));
    }
}
