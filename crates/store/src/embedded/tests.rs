//! Tests for the embedded backend: the shared conformance suite plus
//! durability, recovery, compaction and watch-lag behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;

use super::disk::{self, SNAPSHOT_FILE};
use super::{EmbeddedOptions, EmbeddedStore};
use crate::conformance::{self, next_event};
use crate::{Op, Range, RangeResult, Revision, SharedStore, Store, StoreError, Txn, TxnOutcome};

async fn open(dir: &Path) -> Arc<EmbeddedStore> {
    EmbeddedStore::open(EmbeddedOptions::new(dir))
        .await
        .unwrap()
}

async fn put(store: &dyn Store, key: &str, value: &str) -> Revision {
    let txn = Txn {
        compares: vec![],
        ops: vec![Op::Put(
            key.into(),
            Bytes::copy_from_slice(value.as_bytes()),
        )],
    };
    match store.txn(txn).await.unwrap() {
        TxnOutcome::Committed(rev) => rev,
        other => panic!("txn did not commit: {other:?}"),
    }
}

/// Writes `n` puts, one txn each, over a few keys; returns the final revision.
async fn write_some(store: &dyn Store, n: usize) -> Revision {
    let mut rev = 0;
    for i in 0..n {
        rev = put(store, &format!("k/{}", i % 7), &format!("value-{i}")).await;
    }
    rev
}

async fn everything(store: &dyn Store) -> RangeResult {
    store.range(Range::prefix("")).await.unwrap()
}

fn logs(dir: &Path) -> Vec<PathBuf> {
    disk::list_logs(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn only_log(dir: &Path) -> PathBuf {
    let logs = logs(dir);
    assert_eq!(logs.len(), 1, "expected one log: {logs:?}");
    logs.into_iter().next().unwrap()
}

/// Polls `cond` for up to 10 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().to_path_buf();
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let dir = root_path.join(format!("store-{}", n.fetch_add(1, Ordering::Relaxed)));
        async move {
            EmbeddedStore::open(EmbeddedOptions::new(dir))
                .await
                .unwrap() as SharedStore
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_watch_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions {
        history_len: 20,
        ..EmbeddedOptions::new(dir.path())
    })
    .await
    .unwrap();
    conformance::watch_compacted(&*store, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let head = write_some(&*store, 30).await;
    put(&*store, "multi", "x").await;
    store
        .txn(Txn {
            compares: vec![],
            ops: vec![Op::Delete("k/3".into()), Op::Delete("missing".into())],
        })
        .await
        .unwrap();
    let before = everything(&*store).await;
    assert_eq!(before.revision, head + 2);
    drop(store);

    let store = open(dir.path()).await;
    assert_eq!(everything(&*store).await, before);
    assert_eq!(store.revision().await.unwrap(), head + 2);
    // Writes continue from the recovered revision.
    assert_eq!(put(&*store, "next", "y").await, head + 3);
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.revision().await.unwrap(), head + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let head = write_some(&*store, 10).await;
    drop(store);

    // A partial last record: what kill -9 during a write leaves.
    let log = only_log(dir.path());
    let len = fs::metadata(&log).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let store = open(dir.path()).await;
    assert_eq!(store.revision().await.unwrap(), head - 1);
    // k/9 was the last write; its previous value is gone with it.
    assert_eq!(
        store.get("k/2").await.unwrap().unwrap().value,
        Bytes::from_static(b"value-2")
    );
    // The log is usable again: a new write takes the lost revision's place.
    assert_eq!(put(&*store, "after", "crash").await, head);
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.revision().await.unwrap(), head);
    assert!(store.get("after").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let head = write_some(&*store, 10).await;
    let before = everything(&*store).await;
    drop(store);

    let log = only_log(dir.path());
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"\x20\x00\x00\x00garbage that is not a record")
        .unwrap();
    drop(f);
    let store = open(dir.path()).await;
    assert_eq!(everything(&*store).await, before);
    assert_eq!(put(&*store, "x", "y").await, head + 1);
    drop(store);

    // A complete-length last record with a bad checksum is torn too.
    let len = fs::metadata(&log).unwrap().len();
    flip_byte(&log, len - 1);
    let store = open(dir.path()).await;
    assert_eq!(everything(&*store).await, before);
}

/// Opening with `opts` fails with a `Corrupt` error that mentions `why`.
async fn expect_corrupt(opts: EmbeddedOptions, why: &str) {
    match EmbeddedStore::open(opts).await {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains(why), "{msg}"),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, opened fine"),
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let mut data = fs::read(path).unwrap();
    data[offset as usize] ^= 0x40;
    fs::write(path, data).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_the_middle_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    write_some(&*store, 10).await;
    drop(store);

    // Inside the first record's payload (8-byte header, 8-byte revision).
    flip_byte(&only_log(dir.path()), 20);
    expect_corrupt(EmbeddedOptions::new(dir.path()), "checksum").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_length_in_the_middle_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    write_some(&*store, 10).await;
    drop(store);

    // A huge length in the first header would look like a torn tail if
    // recovery did not look for the valid records behind it.
    flip_byte(&only_log(dir.path()), 3);
    assert!(matches!(
        EmbeddedStore::open(EmbeddedOptions::new(dir.path())).await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_a_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    match EmbeddedStore::open(EmbeddedOptions::new(dir.path())).await {
        Err(StoreError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
            assert!(e.to_string().contains("already in use"), "{e}");
        }
        Err(e) => panic!("expected a lock error, got {e}"),
        Ok(_) => panic!("two stores opened the same directory"),
    }
    drop(store);
    // Dropping the store releases the lock.
    open(dir.path()).await;
}

/// A store in a fresh folder that compacts from `threshold` bytes of log,
/// with its options for reopening it.
async fn compacting_store(
    threshold: u64,
) -> (tempfile::TempDir, EmbeddedOptions, Arc<EmbeddedStore>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        compaction_threshold: threshold,
        ..EmbeddedOptions::new(dir.path())
    };
    let store = EmbeddedStore::open(opts.clone()).await.unwrap();
    (dir, opts, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_then_reopen_keeps_data() {
    let (dir, opts, store) = compacting_store(4096).await;
    write_some(&*store, 300).await;
    eventually("a snapshot", || dir.path().join(SNAPSHOT_FILE).exists()).await;
    // Some more writes after the snapshot, into the new log.
    put(&*store, "late", "write").await;
    let before = everything(&*store).await;
    drop(store);
    assert!(
        logs(dir.path()).len() <= 2,
        "old logs are deleted: {:?}",
        logs(dir.path())
    );
    let total: u64 = logs(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(total < 3 * 4096 + 1024, "logs stay small: {total} bytes");

    let store = EmbeddedStore::open(opts).await.unwrap();
    assert_eq!(everything(&*store).await, before);
    assert_eq!(store.revision().await.unwrap(), before.revision);
    // Watching from the recovered head works; from before it, it does not.
    let mut feed = store.watch("", before.revision).await.unwrap();
    let rev = put(&*store, "after", "reopen").await;
    assert_eq!(next_event(&mut feed).await.revision, rev);
    assert!(matches!(
        store.watch("", before.revision - 1).await,
        Err(StoreError::Compacted { .. })
    ));
}

/// Compaction snapshots the state without copying it (the map is
/// persistent): writers that overwrite and delete the snapshot's keys while
/// it is being written must change neither the snapshot nor their own data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_compactions_change_neither_the_snapshot_nor_the_data() {
    let (dir, opts, store) = compacting_store(8192).await;
    // Written five times: the log outgrows twice the live data.
    for _ in 0..5 {
        for i in 0..100 {
            put(&*store, &format!("k/{i:03}"), "initial").await;
        }
    }
    let snapshot_file = dir.path().join(SNAPSHOT_FILE);
    let modified = || fs::metadata(&snapshot_file).and_then(|m| m.modified()).ok();
    eventually("a first snapshot", || modified().is_some()).await;
    let first = modified();
    // Four writers rewrite and delete the same keys until compaction ran again.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..61 {
                    for i in (w..100).step_by(4 * 7) {
                        let key = format!("k/{i:03}");
                        let op = match round % 3 {
                            2 => Op::Delete(key),
                            _ => Op::Put(key, Bytes::from(format!("w{w}-r{round}"))),
                        };
                        store
                            .txn(Txn {
                                compares: vec![],
                                ops: vec![op],
                            })
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    assert_ne!(modified(), first, "compaction ran again during the writes");
    let before = everything(&*store).await;
    drop(store);

    let store = EmbeddedStore::open(opts).await.unwrap();
    assert_eq!(everything(&*store).await, before);
    // Round 60 of every writer put its keys; the untouched ones kept theirs.
    let value = |key: &str| {
        before
            .kvs
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    };
    assert_eq!(value("k/000").as_deref(), Some("w0-r60"));
    assert_eq!(value("k/001").as_deref(), Some("w1-r60"));
    assert_eq!(value("k/004").as_deref(), Some("initial"));
}

/// Crash after the committer switched to a new log but before the snapshot
/// was renamed into place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_snapshot_rename_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let head = write_some(&*store, 10).await;
    let before = everything(&*store).await;
    drop(store);
    fs::File::create(dir.path().join(disk::log_file_name(head + 1))).unwrap();
    fs::write(dir.path().join("snapshot.tmp"), b"half a snapshot").unwrap();

    let store = open(dir.path()).await;
    assert_eq!(everything(&*store).await, before);
    assert!(!dir.path().join("snapshot.tmp").exists());
    assert_eq!(put(&*store, "x", "y").await, head + 1);
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.revision().await.unwrap(), head + 1);
}

/// Crash after the snapshot was renamed but before the old logs were
/// deleted: their records must be skipped, not applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_old_log_deletion_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    // Enough rewrites of a few keys that the log outgrows twice the live data.
    write_some(&*store, 40).await;
    drop(store);
    let first_log = only_log(dir.path());
    let saved = fs::read(&first_log).unwrap();

    let opts = EmbeddedOptions {
        compaction_threshold: 1,
        ..EmbeddedOptions::new(dir.path())
    };
    let store = EmbeddedStore::open(opts.clone()).await.unwrap();
    put(&*store, "k/0", "overwritten").await;
    eventually("the old log's deletion", || !first_log.exists()).await;
    put(&*store, "k/1", "also overwritten").await;
    let before = everything(&*store).await;
    drop(store);

    fs::write(&first_log, saved).unwrap();
    let store = EmbeddedStore::open(opts).await.unwrap();
    assert_eq!(everything(&*store).await, before);
    let kv = store.get("k/0").await.unwrap().unwrap();
    // 6 writes from write_some (i = 0, 7, …, 35) plus "overwritten".
    assert_eq!(kv.version, 7, "old records were not replayed twice");
    drop(store);
    assert!(!first_log.exists(), "recovery removes the redundant log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_catches_up_from_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions {
        watch_buffer: 4,
        history_len: 1000,
        ..EmbeddedOptions::new(dir.path())
    })
    .await
    .unwrap();
    let mut feed = store.watch("k/", 0).await.unwrap();
    let mut revs = Vec::new();
    for i in 0..50 {
        revs.push(put(&*store, &format!("k/{i}"), "v").await);
        put(&*store, "other", "v").await;
    }
    for rev in revs {
        assert_eq!(next_event(&mut feed).await.revision, rev);
    }
    let rev = put(&*store, "k/live", "v").await;
    assert_eq!(next_event(&mut feed).await.revision, rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_beyond_history_gets_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions {
        watch_buffer: 4,
        history_len: 10,
        ..EmbeddedOptions::new(dir.path())
    })
    .await
    .unwrap();
    let mut feed = store.watch("", 0).await.unwrap();
    for i in 0..50 {
        put(&*store, &format!("k/{i}"), "v").await;
    }
    // The four queued batches arrive, then the gap is reported.
    for rev in 1..=4 {
        assert_eq!(next_event(&mut feed).await.revision, rev);
    }
    match feed.next().await {
        Some(Err(StoreError::Compacted { requested, oldest })) => {
            assert_eq!((requested, oldest), (4, 40));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(
        feed.next().await.is_none(),
        "the stream ends after the error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_store_ends_watches_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let mut feed = store.watch("", 0).await.unwrap();
    let rev = put(&*store, "a", "1").await;
    drop(store);
    assert_eq!(next_event(&mut feed).await.revision, rev);
    assert!(matches!(
        feed.next().await,
        Some(Err(StoreError::Unavailable(_)))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_failure_makes_the_store_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let rev = put(&*store, "a", "1").await;
    let mut feed = store.watch("", rev).await.unwrap();
    store.inner.fail_writes.store(true, Ordering::SeqCst);
    let txn = Txn {
        compares: vec![],
        ops: vec![Op::Put("b".into(), Bytes::from_static(b"2"))],
    };
    assert!(matches!(
        store.txn(txn.clone()).await,
        Err(StoreError::Unavailable(_))
    ));
    // Everything fails from now on, reads included.
    assert!(matches!(
        store.txn(txn).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.get("a").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.revision().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        feed.next().await,
        Some(Err(StoreError::Unavailable(_)))
    ));
    assert!(matches!(
        store.watch("", rev).await,
        Err(StoreError::Unavailable(_))
    ));
    drop(store);
    // The failed write never became durable.
    let store = open(dir.path()).await;
    assert_eq!(store.revision().await.unwrap(), rev);
    assert_eq!(store.get("b").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_for_want_of_descriptors_fails_alone_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let rev = put(&*store, "a", "1").await;
    let mut feed = store.watch("", rev).await.unwrap();
    store.inner.fail_transiently.store(1, Ordering::SeqCst);
    let txn = Txn {
        compares: vec![],
        ops: vec![
            Op::Put("a".into(), Bytes::from_static(b"changed")),
            Op::Put("b".into(), Bytes::from_static(b"2")),
            Op::Delete("a".into()),
        ],
    };
    assert!(matches!(
        store.txn(txn).await,
        Err(StoreError::Unavailable(why)) if why.contains("Too many open files")
    ));
    // Nothing of the failed write is served, and the store says why.
    assert!(
        matches!(store.health(), crate::StoreHealth::Degraded(why) if why.contains("Too many open files"))
    );
    assert_eq!(store.get("a").await.unwrap().unwrap().value, "1");
    assert_eq!(store.get("b").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), rev);
    // The next write is durable, with the next revision, and heals the store.
    let next = put(&*store, "c", "3").await;
    assert_eq!(next, rev + 1);
    assert_eq!(store.health(), crate::StoreHealth::Ok);
    // Watchers saw only what is durable.
    let event = next_event(&mut feed).await;
    assert_eq!((event.revision, event.key.as_str()), (next, "c"));
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.revision().await.unwrap(), next);
    assert_eq!(store.get("a").await.unwrap().unwrap().value, "1");
    assert_eq!(store.get("b").await.unwrap(), None);
    assert_eq!(store.get("c").await.unwrap().unwrap().value, "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_failed_batches_the_store_holds_exactly_the_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    // Writers race while batches fail now and then: those decided on top of
    // a failed batch are taken back with it.
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for i in 0..60 {
                    if i % 20 == 10 {
                        store.inner.fail_transiently.fetch_add(1, Ordering::SeqCst);
                    }
                    let key = format!("w{t}/{i}");
                    let txn = Txn {
                        compares: vec![],
                        ops: vec![
                            Op::Put(key.clone(), Bytes::from(format!("v{i}"))),
                            Op::Put(format!("last/{t}"), Bytes::from(key.clone())),
                        ],
                    };
                    match store.txn(txn).await {
                        Ok(TxnOutcome::Committed(_)) => acknowledged.push(key),
                        Ok(other) => panic!("no compare, yet {other:?}"),
                        Err(StoreError::Unavailable(_)) => {}
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    let mut last = Vec::new();
    for w in writers {
        let keys = w.await.unwrap();
        last.extend(keys.last().cloned());
        acknowledged.extend(keys);
    }
    acknowledged.sort();
    last.sort();
    assert!(
        acknowledged.len() > 8 * 30,
        "most writes succeed: {}",
        acknowledged.len()
    );
    assert!(acknowledged.len() < 8 * 60, "some batches failed");
    let check = |result: RangeResult, what: &str| {
        let written: Vec<String> = result
            .kvs
            .iter()
            .filter(|kv| kv.key.starts_with('w'))
            .map(|kv| kv.key.clone())
            .collect();
        assert_eq!(
            written, acknowledged,
            "{what}: the writes present are the acknowledged ones"
        );
        let mut lasts: Vec<String> = result
            .kvs
            .iter()
            .filter(|kv| kv.key.starts_with("last/"))
            .map(|kv| String::from_utf8(kv.value.to_vec()).unwrap())
            .collect();
        lasts.sort();
        assert_eq!(
            lasts, last,
            "{what}: each writer's last pointer is its last acknowledged write"
        );
    };
    check(everything(&*store).await, "in memory");
    let head = store.revision().await.unwrap();
    drop(store);
    let store = open(dir.path()).await;
    assert_eq!(store.revision().await.unwrap(), head);
    check(everything(&*store).await, "after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_history_is_bounded_by_bytes_as_well_as_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions {
        history_bytes: 1 << 20,
        ..EmbeddedOptions::new(dir.path())
    })
    .await
    .unwrap();
    let big = Bytes::from(vec![b'x'; 100 << 10]);
    let first = put(&*store, "k/0", "small").await;
    for i in 0..30 {
        let txn = Txn {
            compares: vec![],
            ops: vec![Op::Put(format!("k/{i}"), big.clone())],
        };
        store.txn(txn).await.unwrap();
    }
    // 30 events of 100 KiB do not fit in 1 MiB: the oldest are gone.
    assert!(matches!(
        store.watch("", first).await,
        Err(StoreError::Compacted { .. })
    ));
    let head = store.revision().await.unwrap();
    let mut feed = store.watch("", head - 5).await.unwrap();
    assert_eq!(next_event(&mut feed).await.revision, head - 4);
}

/// Readers never see a write before it is durable, even while a group
/// commit is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_wait_for_durability() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    put(&*store, &format!("w/{t}/{i}"), "v").await;
                }
            })
        })
        .collect();
    for _ in 0..200 {
        let seen = store.range(Range::prefix("w/")).await.unwrap();
        let durable = store.inner.durable.borrow().revision;
        assert!(
            seen.revision <= durable,
            "read at {} but only {durable} is durable",
            seen.revision
        );
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
}

/// Small prepared logs, so that a test switches between several.
fn segmented(dir: &Path) -> EmbeddedOptions {
    EmbeddedOptions {
        segment_size: 128 << 10,
        ..EmbeddedOptions::new(dir)
    }
}

/// Writes 1 KiB values over `keys` keys until the directory holds at least
/// `logs` logs; returns the number of writes.
async fn write_until_logs(store: &dyn Store, dir: &Path, keys: usize, logs_wanted: usize) -> usize {
    let value = "v".repeat(1024);
    for i in 0..5000 {
        put(store, &format!("big/{}", i % keys), &value).await;
        if logs(dir).len() >= logs_wanted {
            return i + 1;
        }
    }
    panic!("still {} logs after 5000 writes", logs(dir).len());
}

/// Fills a store in `dir` with 1 KiB values over 1000 keys until it has
/// `logs_wanted` logs, closes it and returns what it held.
async fn fill_prepared_logs(dir: &Path, logs_wanted: usize) -> RangeResult {
    let store = EmbeddedStore::open(segmented(dir)).await.unwrap();
    write_until_logs(&*store, dir, 1000, logs_wanted).await;
    everything(&*store).await
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_to_prepared_logs_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill_prepared_logs(dir.path(), 4).await;

    // Every log after the first (which was created empty) was prepared at
    // full size; the records end somewhere before that, in zeros.
    let all = logs(dir.path());
    for log in &all[1..all.len() - 1] {
        assert_eq!(file_len(log), 128 << 10, "{}", log.display());
        assert_eq!(fs::read(log).unwrap().last(), Some(&0));
    }

    let store = EmbeddedStore::open(segmented(dir.path())).await.unwrap();
    assert_eq!(everything(&*store).await, before);
    assert!(
        !dir.path().join("wal-next.tmp").exists(),
        "a spare log is dropped on open"
    );
    // Writes continue into the zero-filled rest of the newest log.
    let newest = all.last().unwrap().clone();
    let len = file_len(&newest);
    assert_eq!(put(&*store, "after", "reopen").await, before.revision + 1);
    drop(store);
    assert_eq!(logs(dir.path()).last(), Some(&newest));
    assert_eq!(file_len(&newest), len, "written in place, not appended");
    let store = EmbeddedStore::open(segmented(dir.path())).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), before.revision + 1);
    assert!(store.get("after").await.unwrap().is_some());
}

/// What a kill -9 mid-write leaves in a prepared log: part of a record,
/// followed by the zeros it did not reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_write_into_a_prepared_log_is_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let before = fill_prepared_logs(dir.path(), 3).await;

    let newest = logs(dir.path()).pop().unwrap();
    let len = file_len(&newest);
    let data = fs::read(&newest).unwrap();
    let end = data.iter().rposition(|b| *b != 0).unwrap() + 1;
    assert!(end + 200 < data.len(), "the newest log has room left");
    // A header promising 100 bytes, and 60 of them.
    let mut torn = data.clone();
    torn[end..end + 4].copy_from_slice(&100u32.to_le_bytes());
    torn[end + 4..end + 68].fill(0xab);
    fs::write(&newest, &torn).unwrap();

    let store = EmbeddedStore::open(segmented(dir.path())).await.unwrap();
    assert_eq!(everything(&*store).await, before);
    // The torn bytes are zeros again, the preallocated length is kept.
    assert_eq!(fs::read(&newest).unwrap(), data);
    assert_eq!(file_len(&newest), len);
    assert_eq!(put(&*store, "x", "y").await, before.revision + 1);
    drop(store);
    let store = EmbeddedStore::open(segmented(dir.path())).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), before.revision + 1);
}

/// Only an all-zero rest of a log is unused space: anything else in it, in a
/// log that was complete before the next one started, is damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_in_the_zero_tail_of_an_older_log_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    fill_prepared_logs(dir.path(), 3).await;

    let older = logs(dir.path())[1].clone();
    let len = file_len(&older);
    flip_byte(&older, len - 10);
    expect_corrupt(segmented(dir.path()), "not the newest").await;
}

/// Compaction looks at everything logged since the last snapshot, however
/// many logs it spans, so that rewriting a few keys never grows the logs
/// without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_counts_every_log_since_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        compaction_threshold: 300 << 10,
        ..segmented(dir.path())
    };
    let store = EmbeddedStore::open(opts.clone()).await.unwrap();
    // Each log stays below the threshold; together they pass it.
    write_until_logs(&*store, dir.path(), 5, 3).await;
    let value = "w".repeat(1024);
    for i in 0..400 {
        put(&*store, &format!("big/{}", i % 5), &value).await;
    }
    eventually("a snapshot", || dir.path().join(SNAPSHOT_FILE).exists()).await;
    let before = everything(&*store).await;
    drop(store);
    let total: u64 = logs(dir.path()).iter().map(|p| file_len(p)).sum();
    assert!(
        total <= 4 * (128 << 10),
        "old logs are deleted: {total} bytes"
    );

    let store = EmbeddedStore::open(opts).await.unwrap();
    assert_eq!(everything(&*store).await, before);
}

#[test]
fn background_work_runs_at_a_lower_priority() {
    let nice = std::thread::spawn(|| {
        disk::background_priority();
        // Field 19 of /proc/thread-self/stat, counted after the ")" that ends
        // the thread's name.
        let stat = fs::read_to_string("/proc/thread-self/stat").unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split_whitespace()
            .nth(16)
            .unwrap()
            .parse::<i32>()
            .unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(nice, 10);
}
