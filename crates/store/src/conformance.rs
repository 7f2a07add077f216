//! A backend-independent conformance suite for [`Store`] implementations.
//!
//! Every check takes a fresh (or at least otherwise idle) store, uses keys
//! under its own `conformance/<check>/` prefix and only relies on revisions
//! *relative* to the revision it found at the start, so the suite also works
//! against a shared server such as etcd. Checks panic on failure, like tests.
//!
//! Call [`run_all`] with a factory for fresh stores, and [`watch_compacted`]
//! separately with a store whose retained watch history is known to be short.

// This is test code compiled into the library under the `testing` feature:
// panicking on an unexpected error is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use crate::{
    read_ranges, Compare, KeyValue, Op, Range, RangeResult, Revision, SharedStore, Store,
    StoreError, Txn, TxnOutcome, WatchEvent,
};

/// How long any single wait for a watch event may take before the check fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs every check except [`watch_compacted`], each on a store from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = SharedStore>,
{
    get_put_delete(&*make().await).await;
    cas_absent(&*make().await).await;
    cas_mod_revision(&*make().await).await;
    revisions_and_versions(&*make().await).await;
    range_prefix_limit(&*make().await).await;
    count_keys(&*make().await).await;
    atomic_multi_op(&*make().await).await;
    empty_txn(&*make().await).await;
    deferred_txn(&*make().await).await;
    concurrent_counter(make().await).await;
    concurrent_distinct_keys(make().await).await;
    watch_order_and_replay(&*make().await).await;
    watch_prefix_only(&*make().await).await;
    watch_from_future_revision(&*make().await).await;
    snapshot_under_writes(make().await).await;
}

fn put(key: &str, value: &str) -> Op {
    Op::Put(key.to_string(), Bytes::copy_from_slice(value.as_bytes()))
}

fn txn(compares: Vec<Compare>, ops: Vec<Op>) -> Txn {
    Txn { compares, ops }
}

/// Commits `ops` unconditionally and returns the new revision.
async fn commit(store: &dyn Store, ops: Vec<Op>) -> Revision {
    match store.txn(txn(vec![], ops)).await.unwrap() {
        TxnOutcome::Committed(rev) => rev,
        other => panic!("unconditional txn did not commit: {other:?}"),
    }
}

async fn value(store: &dyn Store, key: &str) -> Option<Bytes> {
    store.get(key).await.unwrap().map(|kv| kv.value)
}

/// The next event of a watch stream, failing the check after a timeout.
pub async fn next_event(
    stream: &mut BoxStream<'static, Result<WatchEvent, StoreError>>,
) -> WatchEvent {
    tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("timed out waiting for a watch event")
        .expect("watch stream ended")
        .expect("watch stream failed")
}

fn event(revision: Revision, key: &str, value: Option<&str>) -> WatchEvent {
    WatchEvent {
        revision,
        key: key.to_string(),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
    }
}

/// Put, get, overwrite, delete, get.
pub async fn get_put_delete(store: &dyn Store) {
    let k = "conformance/crud/a";
    assert_eq!(store.get(k).await.unwrap(), None);
    let r0 = store.revision().await.unwrap();

    let r1 = commit(store, vec![put(k, "one")]).await;
    assert_eq!(r1, r0 + 1);
    assert_eq!(
        store.get(k).await.unwrap(),
        Some(KeyValue {
            key: k.to_string(),
            value: Bytes::from_static(b"one"),
            create_revision: r1,
            mod_revision: r1,
            version: 1,
        })
    );
    assert_eq!(store.revision().await.unwrap(), r1);

    let r2 = commit(store, vec![put(k, "two")]).await;
    assert_eq!(value(store, k).await.as_deref(), Some(&b"two"[..]));

    let r3 = commit(store, vec![Op::Delete(k.to_string())]).await;
    assert!(r3 > r2);
    assert_eq!(store.get(k).await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), r3);
}

/// `Compare::Absent` lets exactly one creator win.
pub async fn cas_absent(store: &dyn Store) {
    let k = "conformance/cas-absent/k";
    let create = |v: &str| txn(vec![Compare::Absent(k.to_string())], vec![put(k, v)]);

    let won = store.txn(create("first")).await.unwrap();
    let TxnOutcome::Committed(rev) = won else {
        panic!("create of a missing key failed: {won:?}");
    };
    let lost = store.txn(create("second")).await.unwrap();
    assert_eq!(
        lost,
        TxnOutcome::Conflict(rev),
        "conflict reports the current revision"
    );
    assert_eq!(value(store, k).await.as_deref(), Some(&b"first"[..]));
    // A conflict writes nothing.
    assert_eq!(store.revision().await.unwrap(), rev);

    // After a delete the key is absent again.
    commit(store, vec![Op::Delete(k.to_string())]).await;
    assert!(matches!(
        store.txn(create("third")).await.unwrap(),
        TxnOutcome::Committed(_)
    ));
    assert_eq!(value(store, k).await.as_deref(), Some(&b"third"[..]));
}

/// `Compare::ModRevision` succeeds only against the latest mod revision, and
/// fails for a missing key.
pub async fn cas_mod_revision(store: &dyn Store) {
    let k = "conformance/cas-modrev/k";
    let update = |rev: Revision, v: &str| {
        txn(
            vec![Compare::ModRevision(k.to_string(), rev)],
            vec![put(k, v)],
        )
    };

    let r0 = store.revision().await.unwrap();
    assert!(matches!(
        store.txn(update(r0, "x")).await.unwrap(),
        TxnOutcome::Conflict(_)
    ));
    assert_eq!(store.get(k).await.unwrap(), None);

    let r1 = commit(store, vec![put(k, "a")]).await;
    let r2 = match store.txn(update(r1, "b")).await.unwrap() {
        TxnOutcome::Committed(r) => r,
        other => panic!("CAS on the current mod revision failed: {other:?}"),
    };
    // The old revision is stale now.
    assert_eq!(
        store.txn(update(r1, "c")).await.unwrap(),
        TxnOutcome::Conflict(r2)
    );
    let kv = store.get(k).await.unwrap().unwrap();
    assert_eq!((kv.value.as_ref(), kv.mod_revision), (&b"b"[..], r2));
}

/// create_revision, mod_revision and version as in etcd, including after a
/// delete and re-create; each write bumps the global revision by one.
pub async fn revisions_and_versions(store: &dyn Store) {
    let k = "conformance/versions/k";
    let other = "conformance/versions/other";
    let r0 = store.revision().await.unwrap();
    let r1 = commit(store, vec![put(k, "1")]).await;
    let r2 = commit(store, vec![put(other, "x")]).await;
    let r3 = commit(store, vec![put(k, "2")]).await;
    let r4 = commit(store, vec![put(k, "3")]).await;
    assert_eq!([r1, r2, r3, r4], [r0 + 1, r0 + 2, r0 + 3, r0 + 4]);

    let kv = store.get(k).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r4, 3)
    );
    let kv = store.get(other).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r2, r2, 1)
    );

    commit(store, vec![Op::Delete(k.to_string())]).await;
    let r6 = commit(store, vec![put(k, "again")]).await;
    let kv = store.get(k).await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r6, r6, 1),
        "a re-created key starts over"
    );
}

/// Prefix ranges, explicit `[start, end)` ranges, limit and `more`.
pub async fn range_prefix_limit(store: &dyn Store) {
    let p = "conformance/range/";
    // Neighbours just outside the prefix on both sides.
    commit(
        store,
        vec![
            put("conformance/range", "outside-before"),
            put("conformance/range0", "outside-after"),
            put(&format!("{p}c"), "3"),
            put(&format!("{p}a"), "1"),
            put(&format!("{p}b"), "2"),
            put(&format!("{p}b/nested"), "2n"),
        ],
    )
    .await;
    let rev = store.revision().await.unwrap();

    let all = store.range(Range::prefix(p)).await.unwrap();
    let keys: Vec<&str> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "conformance/range/a",
            "conformance/range/b",
            "conformance/range/b/nested",
            "conformance/range/c"
        ]
    );
    assert!(!all.more);
    assert_eq!(all.revision, rev);

    let limited = store
        .range(Range {
            limit: 2,
            ..Range::prefix(p)
        })
        .await
        .unwrap();
    assert_eq!(limited.kvs.len(), 2);
    assert_eq!(limited.kvs[1].key, "conformance/range/b");
    assert!(limited.more);

    let exact = store
        .range(Range {
            limit: 4,
            ..Range::prefix(p)
        })
        .await
        .unwrap();
    assert_eq!((exact.kvs.len(), exact.more), (4, false));

    let window = store
        .range(Range {
            start: format!("{p}b"),
            end: Some(format!("{p}c")),
            limit: 0,
        })
        .await
        .unwrap();
    assert_eq!(window.kvs.len(), 2, "end is exclusive");

    let inverted = store
        .range(Range {
            start: format!("{p}c"),
            end: Some(format!("{p}a")),
            limit: 0,
        })
        .await
        .unwrap();
    assert!(inverted.kvs.is_empty());

    let none = store
        .range(Range::prefix("conformance/range/zzz"))
        .await
        .unwrap();
    assert!(none.kvs.is_empty() && !none.more);
}

/// `count` agrees with `range` and ignores values.
pub async fn count_keys(store: &dyn Store) {
    let p = "conformance/count/";
    assert_eq!(store.count(Range::prefix(p)).await.unwrap(), 0);
    let ops = (0..25).map(|i| put(&format!("{p}{i:02}"), "v")).collect();
    commit(store, ops).await;
    commit(store, vec![Op::Delete(format!("{p}07"))]).await;
    assert_eq!(store.count(Range::prefix(p)).await.unwrap(), 24);
    let first_ten = Range {
        start: format!("{p}00"),
        end: Some(format!("{p}10")),
        limit: 0,
    };
    assert_eq!(store.count(first_ten).await.unwrap(), 9);
}

/// All ops of a txn apply under one revision, or none do.
pub async fn atomic_multi_op(store: &dyn Store) {
    let p = "conformance/atomic/";
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    commit(store, vec![put(&c, "doomed")]).await;

    let failing = txn(
        vec![Compare::Absent(a.clone()), Compare::Absent(c.clone())],
        vec![put(&a, "1"), put(&b, "2"), Op::Delete(c.clone())],
    );
    let before = store.revision().await.unwrap();
    assert_eq!(
        store.txn(failing.clone()).await.unwrap(),
        TxnOutcome::Conflict(before)
    );
    assert_eq!(store.get(&a).await.unwrap(), None);
    assert_eq!(store.get(&b).await.unwrap(), None);
    assert!(store.get(&c).await.unwrap().is_some());

    let passing = Txn {
        compares: vec![Compare::Absent(a.clone()), Compare::Absent(b.clone())],
        ..failing
    };
    let TxnOutcome::Committed(rev) = store.txn(passing).await.unwrap() else {
        panic!("txn should commit");
    };
    assert_eq!(rev, before + 1, "one txn, one revision");
    for key in [&a, &b] {
        let kv = store.get(key).await.unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision), (rev, rev));
    }
    assert_eq!(store.get(&c).await.unwrap(), None);
}

/// A txn without ops writes nothing and reports the current revision.
pub async fn empty_txn(store: &dyn Store) {
    let k = "conformance/empty/k";
    let rev = commit(store, vec![put(k, "v")]).await;
    assert_eq!(
        store
            .txn(txn(vec![Compare::ModRevision(k.into(), rev)], vec![]))
            .await
            .unwrap(),
        TxnOutcome::Committed(rev)
    );
    assert_eq!(
        store
            .txn(txn(vec![Compare::Absent(k.into())], vec![]))
            .await
            .unwrap(),
        TxnOutcome::Conflict(rev)
    );
    assert_eq!(store.revision().await.unwrap(), rev);
}

/// A deferred transaction is decided at once (latest reads see it) and its
/// durability future resolves; then plain reads and the revision show it. A
/// refused one changes nothing.
pub async fn deferred_txn(store: &dyn Store) {
    let k = "conformance/deferred/k";
    let create = txn(vec![Compare::Absent(k.into())], vec![put(k, "1")]);
    let (outcome, durable) = store.txn_deferred(create.clone()).await.unwrap();
    let TxnOutcome::Committed(rev) = outcome else {
        panic!("deferred create failed: {outcome:?}");
    };
    assert_eq!(
        store.get_latest(k).await.unwrap().unwrap().mod_revision,
        rev
    );
    let written_at = durable.await.unwrap();
    let stored = store.get(k).await.unwrap().unwrap();
    assert_eq!(stored.value, Bytes::from("1"));
    assert_eq!(stored.mod_revision, written_at);
    assert!(store.revision().await.unwrap() >= written_at);
    let (outcome, durable) = store.txn_deferred(create).await.unwrap();
    assert!(matches!(outcome, TxnOutcome::Conflict(_)), "{outcome:?}");
    durable.await.unwrap();
    assert_eq!(value(store, k).await, Some(Bytes::from("1")));
}

/// 16 tasks × 50 CAS-retry increments of one counter: no update is lost and
/// the counter's history is exactly 1, 2, …, 800 in revision order.
pub async fn concurrent_counter(store: SharedStore) {
    const TASKS: u64 = 16;
    const INCREMENTS: u64 = 50;
    let k = "conformance/counter/n";
    let created = match store
        .txn(txn(vec![Compare::Absent(k.into())], vec![put(k, "0")]))
        .await
        .unwrap()
    {
        TxnOutcome::Committed(rev) => rev,
        other => panic!("counter create failed: {other:?}"),
    };
    let mut feed = store.watch(k, created).await.unwrap();

    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..INCREMENTS {
                    loop {
                        let kv = store.get(k).await.unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                        let cas = txn(
                            vec![Compare::ModRevision(k.into(), kv.mod_revision)],
                            vec![put(k, &(n + 1).to_string())],
                        );
                        if let TxnOutcome::Committed(_) = store.txn(cas).await.unwrap() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }

    let total = TASKS * INCREMENTS;
    let kv = store.get(k).await.unwrap().unwrap();
    assert_eq!(kv.value, Bytes::from(total.to_string()));
    assert_eq!(kv.version, total as i64 + 1);
    let mut last = created;
    for expected in 1..=total {
        let ev = next_event(&mut feed).await;
        assert!(ev.revision > last, "revisions must increase");
        last = ev.revision;
        assert_eq!(ev.value, Some(Bytes::from(expected.to_string())));
    }
    assert_eq!(last, kv.mod_revision);
}

/// Concurrent unconditional writers all commit, each at its own revision.
pub async fn concurrent_distinct_keys(store: SharedStore) {
    let r0 = store.revision().await.unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..20 {
                    let key = format!("conformance/distinct/{t}/{i}");
                    revs.push(commit(&*store, vec![put(&key, "v")]).await);
                }
                revs
            })
        })
        .collect();
    let mut revs = Vec::new();
    for task in tasks {
        revs.extend(task.await.unwrap());
    }
    revs.sort_unstable();
    let expected: Vec<Revision> = (r0 + 1..=r0 + 320).collect();
    assert_eq!(
        revs, expected,
        "every txn gets its own consecutive revision"
    );
    let count = store
        .count(Range::prefix("conformance/distinct/"))
        .await
        .unwrap();
    assert_eq!(count, 320);
}

/// Replay from a past revision, then live events, in revision order, with
/// several events of one txn sharing its revision, in op order.
pub async fn watch_order_and_replay(store: &dyn Store) {
    let p = "conformance/watch/";
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    let r1 = commit(store, vec![put(&a, "1")]).await;
    let r2 = commit(store, vec![put(&b, "1")]).await;
    let r3 = commit(store, vec![put(&b, "2"), Op::Delete(a.clone())]).await;

    // From r1: everything after it, from history.
    let mut from_r1 = store.watch(p, r1).await.unwrap();
    assert_eq!(next_event(&mut from_r1).await, event(r2, &b, Some("1")));
    assert_eq!(next_event(&mut from_r1).await, event(r3, &b, Some("2")));
    assert_eq!(next_event(&mut from_r1).await, event(r3, &a, None));

    // From the start: everything.
    let mut from_start = store.watch(p, r1 - 1).await.unwrap();
    // From the head: only what comes next.
    let mut from_head = store.watch(p, r3).await.unwrap();

    let r4 = commit(store, vec![put(&a, "2")]).await;
    let r5 = commit(store, vec![Op::Delete(b.clone())]).await;
    let live = [event(r4, &a, Some("2")), event(r5, &b, None)];
    for ev in &live {
        assert_eq!(&next_event(&mut from_r1).await, ev);
        assert_eq!(&next_event(&mut from_head).await, ev);
    }
    let all = [
        event(r1, &a, Some("1")),
        event(r2, &b, Some("1")),
        event(r3, &b, Some("2")),
        event(r3, &a, None),
    ];
    for ev in all.iter().chain(&live) {
        assert_eq!(&next_event(&mut from_start).await, ev);
    }
    // Deleting a missing key changes nothing and emits nothing.
    commit(store, vec![Op::Delete(b.clone())]).await;
    let r7 = commit(store, vec![put(&b, "3")]).await;
    assert_eq!(next_event(&mut from_head).await, event(r7, &b, Some("3")));
}

/// A watch sees only its prefix, and an event only once.
pub async fn watch_prefix_only(store: &dyn Store) {
    let p = "conformance/prefix/in/";
    let r0 = store.revision().await.unwrap();
    let mut feed = store.watch(p, r0).await.unwrap();
    commit(store, vec![put("conformance/prefix/out/x", "no")]).await;
    commit(store, vec![put("conformance/prefix/in", "no: shorter")]).await;
    let r = commit(
        store,
        vec![
            put("conformance/prefix/in/x", "yes"),
            put("conformance/prefix/out/y", "no"),
        ],
    )
    .await;
    commit(store, vec![put("conformance/prefix/inx", "no")]).await;
    let r_last = commit(store, vec![put("conformance/prefix/in/y", "yes")]).await;
    assert_eq!(
        next_event(&mut feed).await,
        event(r, "conformance/prefix/in/x", Some("yes"))
    );
    assert_eq!(
        next_event(&mut feed).await,
        event(r_last, "conformance/prefix/in/y", Some("yes"))
    );
    // Nothing else is pending.
    let extra = tokio::time::timeout(Duration::from_millis(100), feed.next()).await;
    assert!(extra.is_err(), "unexpected extra event: {extra:?}");
}

/// A watch may start after a revision that does not exist yet.
pub async fn watch_from_future_revision(store: &dyn Store) {
    let k = "conformance/future/k";
    let r0 = store.revision().await.unwrap();
    let mut feed = store.watch(k, r0 + 2).await.unwrap();
    for v in ["1", "2", "3"] {
        commit(store, vec![put(k, v)]).await;
    }
    assert_eq!(next_event(&mut feed).await, event(r0 + 3, k, Some("3")));
}

/// Watching from before the retained history fails with `Compacted`, while
/// watching from the head still works. `retained` must be at least the
/// number of events the store keeps for watchers; the check writes more.
pub async fn watch_compacted(store: &dyn Store, retained: usize) {
    let k = "conformance/compacted/k";
    let r0 = store.revision().await.unwrap();
    for i in 0..retained + 10 {
        commit(store, vec![put(k, &i.to_string())]).await;
    }
    match store.watch(k, r0).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!(requested, r0);
            assert!(oldest > r0);
        }
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    let head = store.revision().await.unwrap();
    let mut feed = store.watch(k, head).await.unwrap();
    let r = commit(store, vec![put(k, "after")]).await;
    assert_eq!(next_event(&mut feed).await, event(r, k, Some("after")));
}

/// Snapshots taken while a writer keeps committing: every range read from
/// one (with writes committed between the reads) shows the state of exactly
/// the snapshot's revision, as does [`read_ranges`], and a watch from that
/// revision starts with the first write after it.
pub async fn snapshot_under_writes(store: SharedStore) {
    const SNAPSHOTS: usize = 20;
    let p = "conformance/snapshot/";
    // Write n puts `a/n` and `b/n` and sets `last` to n, in one transaction.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut log: Vec<Revision> = Vec::new();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 3 {
                n += 1;
                let ops = vec![
                    put(&format!("{p}a/{n:06}"), "x"),
                    put(&format!("{p}b/{n:06}"), "x"),
                    put(&format!("{p}last"), &n.to_string()),
                ];
                log.push(commit(&*store, ops).await);
            }
            log
        })
    };
    let ranges = [
        Range::prefix(format!("{p}a/")),
        Range::prefix(format!("{p}b/")),
        Range::prefix(format!("{p}last")),
    ];
    let mut seen: Vec<(Revision, Vec<RangeResult>)> = Vec::new();
    let mut interleaved = 0;
    for i in 0..SNAPSHOTS {
        if i % 2 == 0 {
            let snapshot = store.snapshot().await.unwrap();
            let mut results = Vec::new();
            for range in &ranges {
                results.push(snapshot.range(range.clone()).await.unwrap());
                // Let the writer commit between the reads.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if store.revision().await.unwrap() > snapshot.revision() {
                interleaved += 1;
            }
            seen.push((snapshot.revision(), results));
        } else {
            let (results, revision) = read_ranges(&*store, &ranges).await.unwrap();
            seen.push((revision, results));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let log = writer.await.unwrap();
    assert!(interleaved > 0, "no write landed while a snapshot was read");

    for (revision, results) in &seen {
        // The writes at or before the revision, and none after it.
        let n = log.iter().filter(|r| **r <= *revision).count();
        let keys =
            |sub: &str| -> Vec<String> { (1..=n).map(|i| format!("{p}{sub}/{i:06}")).collect() };
        let names = |r: &RangeResult| r.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();
        assert_eq!(names(&results[0]), keys("a"), "a/ at revision {revision}");
        assert_eq!(names(&results[1]), keys("b"), "b/ at revision {revision}");
        let last: Vec<Bytes> = results[2].kvs.iter().map(|kv| kv.value.clone()).collect();
        let expected: Vec<Bytes> = (n > 0)
            .then(|| Bytes::from(n.to_string()))
            .into_iter()
            .collect();
        assert_eq!(last, expected, "last at revision {revision}");
        for result in results {
            assert_eq!(result.revision, *revision);
        }
        // The feed from the snapshot's revision goes on with write n + 1.
        if let Some(next) = log.get(n) {
            let mut feed = store.watch(p, *revision).await.unwrap();
            let ev = next_event(&mut feed).await;
            assert_eq!(ev.revision, *next, "first event after revision {revision}");
        }
    }
}
