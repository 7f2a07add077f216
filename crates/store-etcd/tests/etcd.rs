//! The etcd backend on a real 3-member etcd cluster: what a Weft replica
//! relies on when members die, history is compacted, the cluster goes away,
//! or several installations share it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use weft_store::conformance::next_event;
use weft_store::{
    Compare, Op, Range, Revision, Store, StoreError, StoreHealth, Txn, TxnOutcome, WatchEvent,
};
use weft_store_etcd::testing::EtcdCluster;
use weft_store_etcd::{EtcdOptions, EtcdStore, EtcdStoreError};

fn put(key: &str, value: &str) -> Op {
    Op::Put(key.to_string(), Bytes::copy_from_slice(value.as_bytes()))
}

async fn commit(store: &dyn Store, ops: Vec<Op>) -> Revision {
    match store
        .txn(Txn {
            compares: vec![],
            ops,
        })
        .await
        .unwrap()
    {
        TxnOutcome::Committed(rev) => rev,
        other => panic!("unconditional txn did not commit: {other:?}"),
    }
}

/// Writes `value` to `key` over its previous write at `prev` (0: none yet)
/// exactly once, retrying while etcd has no leader: a write whose answer was
/// lost is recognised by its value rather than written again.
async fn write_once(store: &dyn Store, key: &str, value: &str, prev: Revision) -> Revision {
    let guard = if prev == 0 {
        Compare::Absent(key.to_string())
    } else {
        Compare::ModRevision(key.to_string(), prev)
    };
    let write = Txn {
        compares: vec![guard],
        ops: vec![put(key, value)],
    };
    for _ in 0..20 {
        match store.txn(write.clone()).await {
            Ok(TxnOutcome::Committed(rev)) => return rev,
            Ok(TxnOutcome::Conflict(_)) => {
                let kv = store.get(key).await.unwrap().unwrap();
                assert_eq!(kv.value, value.as_bytes(), "someone else wrote {key}");
                return kv.mod_revision;
            }
            Err(StoreError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("writing {key}: {e}"),
        }
    }
    panic!("{key} could not be written in 20 attempts");
}

/// Every key under `prefix` and its value, and the revision read at.
async fn state(store: &dyn Store, prefix: &str) -> (BTreeMap<String, String>, Revision) {
    let read = store.range(Range::prefix(prefix)).await.unwrap();
    let kvs = read
        .kvs
        .into_iter()
        .map(|kv| (kv.key, String::from_utf8(kv.value.to_vec()).unwrap()))
        .collect();
    (kvs, read.revision)
}

/// Fails if the feed yields anything within 300 ms.
async fn expect_silence(feed: &mut BoxStream<'static, Result<WatchEvent, StoreError>>) {
    let extra = tokio::time::timeout(Duration::from_millis(300), feed.next()).await;
    assert!(extra.is_err(), "unexpected event: {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_continue_when_the_etcd_leader_is_killed_under_write_load() {
    const WRITERS: usize = 4;
    const CREATES: usize = 100;
    let mut cluster = EtcdCluster::start(3).await;
    let store = cluster.store("/load/").await;
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (store, acknowledged, failures) =
                (store.clone(), acknowledged.clone(), failures.clone());
            tokio::spawn(async move {
                for i in 0..CREATES {
                    // A create guarded as the API guards one: only if the name is free.
                    let key = format!("meshes/m/vn/{w}-{i}");
                    let create = Txn {
                        compares: vec![Compare::Absent(key.clone())],
                        ops: vec![put(&key, &i.to_string())],
                    };
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        match store.txn(create.clone()).await {
                            Ok(TxnOutcome::Committed(_)) => break,
                            // An earlier attempt whose answer was lost did commit.
                            Ok(TxnOutcome::Conflict(_)) if attempts > 1 => break,
                            Ok(TxnOutcome::Conflict(_)) => panic!("{key} existed before"),
                            Err(StoreError::Unavailable(why)) if attempts < 20 => {
                                failures.lock().unwrap().push(why);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => panic!("creating {key}: {e}"),
                        }
                    }
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while acknowledged.load(Ordering::Relaxed) < 100 {
        assert!(
            !writers.iter().any(|w| w.is_finished()),
            "a writer stopped early"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let leader = cluster.leader().await;
    cluster.kill(leader);
    let at_kill = acknowledged.load(Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(
        at_kill < WRITERS * CREATES,
        "the load ended before the kill"
    );
    // Every create is there, once, with its value.
    let (kvs, _) = state(&*store, "meshes/m/vn/").await;
    assert_eq!(kvs.len(), WRITERS * CREATES);
    assert_eq!(kvs["meshes/m/vn/3-99"], "99");
    let failures = failures.lock().unwrap();
    eprintln!(
        "killed the leader (member {leader}) after {at_kill} of {} creates; {} attempts failed \
         and were retried, such as: {:?}",
        WRITERS * CREATES,
        failures.len(),
        failures.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_delivers_every_change_once_and_in_order_while_the_members_it_reads_from_are_killed_in_turn(
) {
    let mut cluster = EtcdCluster::start(3).await;
    let writer = cluster.store("/resume/").await;
    // The watcher knows only members 0 and 1: killing each in turn breaks its
    // watch stream at least once.
    let watcher = EtcdStore::connect(EtcdOptions {
        endpoints: cluster.endpoints_of(&[0, 1]),
        ..cluster.options("/resume/")
    })
    .await
    .unwrap();
    let start = writer.revision().await.unwrap();
    let mut feed = watcher.watch("routes/", start).await.unwrap();
    let mut expected = Vec::new();
    for phase in 0..3 {
        if phase > 0 {
            cluster.kill(phase - 1);
        }
        for i in 0..10 {
            let n = phase * 10 + i;
            let prev = expected.last().copied().unwrap_or(0);
            expected.push(write_once(&*writer, "routes/r", &n.to_string(), prev).await);
        }
        if phase > 0 {
            cluster.restart(phase - 1).await;
        }
    }
    for (n, rev) in expected.iter().enumerate() {
        let event = next_event(&mut feed).await;
        assert_eq!(
            (event.revision, event.value),
            (*rev, Some(Bytes::from(n.to_string())))
        );
    }
    expect_silence(&mut feed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_a_compaction_gets_compacted_and_reloads_the_current_state() {
    let cluster = EtcdCluster::start(3).await;
    let store = cluster.store("/follow/").await;
    let p = "res/m/vn/";
    commit(
        &*store,
        vec![put("res/m/vn/a", "1"), put("res/m/vn/b", "1")],
    )
    .await;

    // The follower loads, then watches.
    let (loaded, rev) = state(&*store, p).await;
    assert_eq!(loaded.len(), 2);
    let mut feed = store.watch(p, rev).await.unwrap();
    commit(&*store, vec![put("res/m/vn/a", "2")]).await;
    let seen = next_event(&mut feed).await;
    assert_eq!(seen.value, Some(Bytes::from("2")));
    // Then it loses its stream; meanwhile the mesh changes and etcd compacts.
    drop(feed);
    commit(&*store, vec![put("res/m/vn/b", "2")]).await;
    commit(
        &*store,
        vec![Op::Delete("res/m/vn/a".into()), put("res/m/vn/c", "1")],
    )
    .await;
    let compacted = cluster.compact().await;

    match store.watch(p, seen.revision).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!(requested, seen.revision);
            assert_eq!(oldest, compacted);
        }
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    // Reloading gives the current state, not a mix of old and new, and the
    // follower continues from it.
    let (reloaded, rev) = state(&*store, p).await;
    let expected: BTreeMap<String, String> = [("res/m/vn/b", "2"), ("res/m/vn/c", "1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(reloaded, expected);
    let mut feed = store.watch(p, rev).await.unwrap();
    let next = commit(&*store, vec![put("res/m/vn/d", "1")]).await;
    let event = next_event(&mut feed).await;
    assert_eq!((event.revision, event.key.as_str()), (next, "res/m/vn/d"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_compacted_away_while_read_fails_with_compacted_and_read_ranges_gives_one_newer_state(
) {
    let cluster = EtcdCluster::start(3).await;
    let store = cluster.store("/snapshot/").await;
    commit(&*store, vec![put("a/1", "1"), put("b/1", "1")]).await;
    let snapshot = store.snapshot().await.unwrap();
    let before = snapshot.revision();
    let a = snapshot.range(Range::prefix("a/")).await.unwrap();
    assert_eq!(a.kvs.len(), 1);
    // A write, then a compaction past the snapshot, before its second read.
    let written = commit(&*store, vec![put("a/2", "2"), put("b/2", "2")]).await;
    let compacted = cluster.compact().await;
    match snapshot.range(Range::prefix("b/")).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!(requested, before);
            assert_eq!(oldest, compacted);
        }
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(r) => panic!("expected Compacted, got {r:?}"),
    }
    assert_eq!(
        store.health(),
        StoreHealth::Ok,
        "a compacted read is no outage"
    );
    // A fresh snapshot reads both ranges as of one revision, the write's.
    let (results, revision) =
        weft_store::read_ranges(&*store, &[Range::prefix("a/"), Range::prefix("b/")])
            .await
            .unwrap();
    assert_eq!(revision, written.max(compacted));
    assert_eq!(results[0].kvs.len(), 2);
    assert_eq!(results[1].kvs.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_on_different_prefixes_of_one_cluster_do_not_see_each_other() {
    let cluster = EtcdCluster::start(3).await;
    let team_a = cluster.store("/team-a/").await;
    let team_b = cluster.store("/team-b/").await;
    commit(&*team_a, vec![put("res/shop/mesh", "a")]).await;
    commit(&*team_b, vec![put("res/shop/mesh", "b")]).await;
    commit(&*team_b, vec![put("res/shop/vn/only-b", "b")]).await;

    let mut a_feed = team_a
        .watch("", team_a.revision().await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        state(&*team_a, "").await.0.into_iter().collect::<Vec<_>>(),
        [("res/shop/mesh".to_string(), "a".to_string())]
    );
    assert_eq!(team_b.count(Range::prefix("")).await.unwrap(), 2);
    // The same name is free for one and taken for the other.
    let create = Txn {
        compares: vec![Compare::Absent("res/shop/vn/only-b".into())],
        ops: vec![put("res/shop/vn/only-b", "a")],
    };
    assert!(matches!(
        team_a.txn(create.clone()).await.unwrap(),
        TxnOutcome::Committed(_)
    ));
    assert!(matches!(
        team_b.txn(create).await.unwrap(),
        TxnOutcome::Conflict(_)
    ));
    assert_eq!(next_event(&mut a_feed).await.value, Some(Bytes::from("a")));
    // B's deletes and writes are not A's changes.
    commit(
        &*team_b,
        vec![Op::Delete("res/shop/mesh".into()), put("res/x", "b")],
    )
    .await;
    expect_silence(&mut a_feed).await;
    assert!(team_a.get("res/shop/mesh").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_holding_another_key_layout_is_refused_with_a_clear_error() {
    let cluster = EtcdCluster::start(3).await;
    // A first start claims its prefix.
    cluster.store("/fresh/").await;
    let mut client = cluster.client().await;
    let marker = client.get("/fresh/layout", None).await.unwrap();
    assert_eq!(marker.kvs()[0].value(), weft_store_etcd::LAYOUT.as_bytes());
    // `/fresh` is the same prefix.
    let same = cluster.store("/fresh").await;
    commit(&*same, vec![put("res/m/mesh", "1")]).await;
    assert!(
        client
            .get("/fresh/kv/res/m/mesh", None)
            .await
            .unwrap()
            .count()
            == 1
    );
    // A prefix written by a Weft with another layout.
    client
        .put("/older/layout", "weft-store-v0", None)
        .await
        .unwrap();
    client.put("/older/meshes/shop", "{}", None).await.unwrap();
    let refused = EtcdStore::connect(cluster.options("/older/")).await;
    let Err(e @ EtcdStoreError::Layout { .. }) = refused else {
        panic!("expected a layout error, got {:?}", refused.err());
    };
    let message = e.to_string();
    for part in [
        "\"/older/\"",
        "weft-store-v0",
        "weft-store-v1",
        "--etcd-prefix",
    ] {
        assert!(message.contains(part), "{message:?} lacks {part}");
    }
    // Nothing was overwritten.
    let marker = client.get("/older/layout", None).await.unwrap();
    assert_eq!(marker.kvs()[0].value(), b"weft-store-v0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_at_start_is_a_clear_error_naming_every_endpoint() {
    // Two loopback ports nobody listens on.
    let ports: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("127.0.0.1:{}", l.local_addr().unwrap().port())
        })
        .collect();
    let refused = EtcdStore::connect(EtcdOptions {
        request_timeout: Duration::from_millis(500),
        connect_for: Duration::from_secs(1),
        ..EtcdOptions::new(ports.clone())
    })
    .await;
    let Err(e @ EtcdStoreError::Unreachable { .. }) = refused else {
        panic!("expected unreachable, got {:?}", refused.err());
    };
    let message = e.to_string();
    assert!(
        message.contains(&ports.join(",")) && message.contains("unreachable"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_cluster_is_down_answers_unavailable_and_recovers_when_it_returns() {
    let mut cluster = EtcdCluster::start(3).await;
    let store = cluster.store("/outage/").await;
    commit(&*store, vec![put("res/m/mesh", "1")]).await;
    assert_eq!(store.health(), StoreHealth::Ok);
    for i in 0..3 {
        cluster.kill(i);
    }
    let endpoints = cluster.endpoints().join(",");
    match store
        .txn(Txn {
            compares: vec![],
            ops: vec![put("res/m/vn/a", "1")],
        })
        .await
    {
        Err(StoreError::Unavailable(why)) => assert!(why.contains(&endpoints), "{why}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        store.get("res/m/mesh").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(store.health(), StoreHealth::Unreachable(why) if why.contains(&endpoints)));

    cluster.restart_all().await;
    let (kvs, _) = state(&*store, "res/").await;
    assert_eq!(
        kvs.len(),
        1,
        "the data survived and the failed write left nothing: {kvs:?}"
    );
    assert_eq!(store.health(), StoreHealth::Ok);
    commit(&*store, vec![put("res/m/vn/a", "1")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_weft_never_writes_are_skipped_and_binary_values_pass_through() {
    let cluster = EtcdCluster::start(3).await;
    let store = cluster.store("/odd/").await;
    let start = store.revision().await.unwrap();
    let mut feed = store.watch("", start).await.unwrap();
    let mut client = cluster.client().await;
    client
        .put(b"/odd/kv/\xff\xfe".to_vec(), "x", None)
        .await
        .unwrap();
    client
        .put("/odd/kv/bin", vec![0u8, 0xff, 0x80], None)
        .await
        .unwrap();
    let kvs = store.range(Range::prefix("")).await.unwrap().kvs;
    assert_eq!(kvs.len(), 1);
    assert_eq!(
        (kvs[0].key.as_str(), kvs[0].value.as_ref()),
        ("bin", &[0u8, 0xff, 0x80][..])
    );
    let event = next_event(&mut feed).await;
    assert_eq!(event.key, "bin");
    expect_silence(&mut feed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_authentication_on_weft_serves_as_a_user_whose_role_holds_its_prefix() {
    use etcd_client::Permission;
    let cluster = EtcdCluster::start(3).await;
    let mut admin = cluster.client().await;
    // As an operator sets it up (https://etcd.io/docs/v3.4/op-guide/authentication/):
    // root first, then a role for Weft's prefix and a user with it.
    admin.user_add("root", "root-secret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("weft").await.unwrap();
    admin
        .role_grant_permission("weft", Permission::read_write("/weft-auth/").with_prefix())
        .await
        .unwrap();
    admin.user_add("weft", "weft-secret", None).await.unwrap();
    admin.user_grant_role("weft", "weft").await.unwrap();
    admin.auth_enable().await.unwrap();

    let as_user = |user: &str, password: &str, prefix: &str| EtcdOptions {
        user: Some((user.to_string(), password.to_string())),
        ..cluster.options(prefix)
    };
    let store = EtcdStore::connect(as_user("weft", "weft-secret", "/weft-auth/"))
        .await
        .unwrap();
    let rev = commit(&*store, vec![put("res/m/mesh", "1")]).await;
    let mut feed = store.watch("res/", rev - 1).await.unwrap();
    assert_eq!(next_event(&mut feed).await.revision, rev);

    for (options, why) in [
        (as_user("weft", "wrong", "/weft-auth/"), "a wrong password"),
        (
            as_user("weft", "weft-secret", "/other-team/"),
            "a prefix its role lacks",
        ),
        (cluster.options("/weft-auth/"), "no user"),
    ] {
        let refused = EtcdStore::connect(options).await;
        assert!(
            matches!(refused, Err(EtcdStoreError::Refused { .. })),
            "{why}: {:?}",
            refused.err()
        );
    }
}

/// A CA and, signed by it, a certificate for the members (127.0.0.1) and one for Weft, as PEM
/// files in `dir`.
fn tls_files(dir: &std::path::Path) -> weft_store_etcd::testing::ClusterTls {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "test etcd CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let leaf = |name: &str, sans: &[&str]| {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        (
            write(&format!("{name}.pem"), cert.pem()),
            write(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    let (server_cert, server_key) = leaf("etcd", &["127.0.0.1", "localhost"]);
    let (client_cert, client_key) = leaf("weft", &[]);
    weft_store_etcd::testing::ClusterTls {
        ca: write("ca.pem", ca.pem()),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_cluster_that_requires_tls_client_certificates_is_reached_with_the_tls_options() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_files(dir.path());
    let cluster = EtcdCluster::start_tls(3, tls.clone()).await;
    let store = cluster.store("/secure/").await;
    let rev = commit(&*store, vec![put("res/m/mesh", "1")]).await;
    assert_eq!(
        store.get("res/m/mesh").await.unwrap().unwrap().mod_revision,
        rev
    );
    // Without a client certificate the members refuse the connection.
    let mut options = cluster.options("/secure/");
    options.tls = Some(weft_store_etcd::EtcdTls {
        ca_file: Some(tls.ca.clone()),
        cert_file: None,
        key_file: None,
    });
    options.connect_for = Duration::from_secs(1);
    assert!(EtcdStore::connect(options).await.is_err());
    // A certificate without its key is a clear configuration error.
    let mut options = cluster.options("/secure/");
    options.tls = Some(weft_store_etcd::EtcdTls {
        ca_file: Some(tls.ca),
        cert_file: Some(tls.client_cert),
        key_file: None,
    });
    let Err(EtcdStoreError::Options(why)) = EtcdStore::connect(options).await else {
        panic!("a certificate without its key was accepted");
    };
    assert!(why.contains("--etcd-key-file"), "{why}");
}

/// A mesh of thousands of resources, or a few large ones, is more than one
/// gRPC message holds (4 MiB by default): a range is read in pages, all at
/// the revision of the first, and a limit still cuts where it says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_larger_than_one_grpc_message_reads_whole_at_one_revision() {
    let cluster = EtcdCluster::start(3).await;
    let store = cluster.store("/big/").await;
    // 24 records of 256 KiB: 6 MiB, past the 4 MiB a message may carry.
    let big = Bytes::from(vec![b'x'; 256 * 1024]);
    let before = store.revision().await.unwrap();
    for i in 0..24 {
        commit(&*store, vec![Op::Put(format!("big/{i:02}"), big.clone())]).await;
    }
    // 1,200 small ones: more keys than one page.
    for chunk in 0..10 {
        let ops = (0..120)
            .map(|i| put(&format!("small/{:04}", chunk * 120 + i), "v"))
            .collect();
        commit(&*store, ops).await;
    }
    let head = store.revision().await.unwrap();

    let bigs = store.range(Range::prefix("big/")).await.unwrap();
    assert_eq!(bigs.kvs.len(), 24);
    assert!(bigs.kvs.iter().all(|kv| kv.value == big));
    assert!(!bigs.more);
    // A watch from before them gets their history, more than one message's worth.
    let mut feed = store.watch("big/", before).await.unwrap();
    for i in 0..24 {
        let event = next_event(&mut feed).await;
        assert_eq!(event.key, format!("big/{i:02}"));
        assert_eq!(event.value.as_ref(), Some(&big));
    }

    let smalls = store.range(Range::prefix("small/")).await.unwrap();
    let names: Vec<String> = smalls.kvs.iter().map(|kv| kv.key.clone()).collect();
    let expected: Vec<String> = (0..1200).map(|i| format!("small/{i:04}")).collect();
    assert_eq!(names, expected, "every key once, in key order");
    assert_eq!(smalls.revision, head);
    assert!(!smalls.more);

    let limited = store
        .range(Range {
            limit: 700,
            ..Range::prefix("small/")
        })
        .await
        .unwrap();
    assert_eq!(limited.kvs.len(), 700);
    assert_eq!(limited.kvs[699].key, "small/0699");
    assert!(limited.more);

    // A snapshot reads its pages at its own revision, whatever comes after.
    let (ranges, at) = weft_store::read_ranges(&*store, &[Range::prefix("small/")])
        .await
        .unwrap();
    commit(&*store, vec![put("small/0000", "changed")]).await;
    assert_eq!(at, head);
    assert_eq!(ranges[0].kvs.len(), 1200);
    assert_eq!(ranges[0].kvs[0].value, Bytes::from("v"));
}

/// Two installations whose prefixes nest would read each other's keys as
/// their own data: the second to start is refused, whichever is inside, and
/// writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_inside_or_around_another_installation_is_refused() {
    let cluster = EtcdCluster::start(3).await;
    let outer = cluster.store("/outer/").await;
    commit(&*outer, vec![put("res/shop/mesh", "outer")]).await;
    let revision = outer.revision().await.unwrap();

    let inside = EtcdStore::connect(cluster.options("/outer/kv/inner/")).await;
    match inside {
        Err(EtcdStoreError::Nested { prefix, other }) => {
            assert_eq!(
                (prefix.as_str(), other.as_str()),
                ("/outer/kv/inner/", "/outer/")
            );
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a prefix inside another installation's was accepted"),
    }
    let around = EtcdStore::connect(cluster.options("/")).await;
    assert!(
        matches!(&around, Err(EtcdStoreError::Nested { other, .. }) if other == "/outer/"),
        "{:?}",
        around.err()
    );
    assert_eq!(outer.revision().await.unwrap(), revision, "nothing written");
    // A sibling whose name starts alike is not nested.
    cluster.store("/outer-2/").await;
}

/// Reads `key` ahead (not fresh) until `accept` holds for what it gives, for up to 5 s.
async fn read_ahead_until(
    store: &dyn Store,
    key: &str,
    accept: impl Fn(Option<&weft_store::KeyValue>) -> bool,
) -> weft_store::ReadAhead {
    let keys = [key.to_string()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ahead = store.read_ahead(&keys, false).await.unwrap();
        if accept(ahead.get(key).flatten()) {
            return ahead;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} read ahead never showed what was expected: {:?}",
            ahead.get(key)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to 5 s until `store`'s copy of its prefix is at `revision` or later (reading ahead
/// starts it).
async fn mirrored(store: &EtcdStore, revision: Revision) {
    store.read_ahead(&["-".to_string()], false).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.mirrored_revision().is_none_or(|r| r < revision) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copy to read ahead from is at {:?}, not {revision}",
            store.mirrored_revision()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn holds(value: &'static str) -> impl Fn(Option<&weft_store::KeyValue>) -> bool {
    move |kv| kv.is_some_and(|kv| kv.value == value.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reads_ahead_from_its_own_copy_another_replicas_writes_once_watched_and_its_own_at_once(
) {
    let mut cluster = EtcdCluster::start(3).await;
    let a = cluster.store("/mirror/").await;
    let b = cluster.store("/mirror/").await;
    let key = "res/m/vn/a";

    // Replica a writes; replica b's reads ahead show it once b's watch delivers it, at
    // its revision, and flagged as possibly stale (errors answered from them are decided
    // again from a linearizable read).
    let first = commit(&*a, vec![put(key, "1")]).await;
    let ahead = read_ahead_until(&*b, key, holds("1")).await;
    assert!(ahead.may_be_stale());
    assert!(ahead.revision() >= first);
    assert_eq!(ahead.get(key).flatten().unwrap().mod_revision, first);
    let second = commit(&*a, vec![put(key, "2")]).await;
    let ahead = read_ahead_until(&*b, key, holds("2")).await;
    let kv = ahead.get(key).flatten().unwrap().clone();
    assert_eq!(
        (kv.mod_revision, kv.create_revision, kv.version),
        (second, first, 2)
    );

    // Replica b's own write reads back at once, before and after etcd applies it, and a
    // write decided on that read holds at etcd.
    let (outcome, durable) = b
        .txn_deferred(Txn {
            compares: vec![Compare::ModRevision(key.into(), second)],
            ops: vec![put(key, "3")],
        })
        .await
        .unwrap();
    assert!(matches!(outcome, TxnOutcome::Committed(_)));
    let ahead = b.read_ahead(&[key.to_string()], false).await.unwrap();
    let mine = b.get_latest_ahead(key, &ahead).await.unwrap().unwrap();
    assert_eq!(mine.value, "3".as_bytes());
    let third = durable.await.unwrap();
    let ahead = b.read_ahead(&[key.to_string()], false).await.unwrap();
    let mine = b.get_latest_ahead(key, &ahead).await.unwrap().unwrap();
    assert_eq!(
        (mine.value.as_ref(), mine.mod_revision),
        ("3".as_bytes(), third)
    );
    let (outcome, durable) = b
        .txn_deferred(Txn {
            compares: vec![Compare::ModRevision(key.into(), mine.mod_revision)],
            ops: vec![put(key, "4")],
        })
        .await
        .unwrap();
    assert!(matches!(outcome, TxnOutcome::Committed(_)));
    let fourth = durable.await.unwrap();

    // What b reads ahead is its own copy: with every member down it still answers (a
    // write decided from it fails at etcd), while a fresh read cannot.
    mirrored(&b, fourth).await;
    for i in 0..3 {
        cluster.kill(i);
    }
    let ahead = b.read_ahead(&[key.to_string()], false).await.unwrap();
    assert_eq!(ahead.get(key).flatten().unwrap().value, "4".as_bytes());
    assert!(matches!(
        b.read_ahead(&[key.to_string()], true).await,
        Err(StoreError::Unavailable(_))
    ));
    cluster.restart_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_member_was_down_through_a_compaction_reads_ahead_the_current_state_after()
{
    let mut cluster = EtcdCluster::start(3).await;
    let writer = EtcdStore::connect(EtcdOptions {
        endpoints: cluster.endpoints_of(&[0, 1]),
        ..cluster.options("/mirror/")
    })
    .await
    .unwrap();
    // This replica reaches etcd through member 2 only.
    let reader = EtcdStore::connect(EtcdOptions {
        endpoints: cluster.endpoints_of(&[2]),
        ..cluster.options("/mirror/")
    })
    .await
    .unwrap();
    let first = commit(
        &*writer,
        vec![put("res/m/vn/a", "1"), put("res/m/vn/b", "1")],
    )
    .await;
    mirrored(&reader, first).await;

    // Its member dies; meanwhile the mesh changes and etcd compacts the history its
    // watch would resume from.
    cluster.kill(2);
    // Unconditional, so sent again while the cluster elects a leader in its place.
    for ops in [
        vec![Op::Delete("res/m/vn/a".into())],
        vec![put("res/m/vn/b", "2")],
    ] {
        let txn = Txn {
            compares: vec![],
            ops,
        };
        let mut attempts = 0;
        while let Err(e) = writer.txn(txn.clone()).await {
            attempts += 1;
            assert!(
                attempts < 20,
                "the two members left did not take a write: {e}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let compacted = cluster.compact().await;
    cluster.restart(2).await;

    // It loads the prefix again: the current state, not the one before. Its own copy, not
    // a read through its member: with that member down again it still answers, at or after
    // the compaction, and without the deleted key.
    mirrored(&reader, compacted).await;
    cluster.kill(2);
    let keys = ["res/m/vn/a".to_string(), "res/m/vn/b".to_string()];
    let ahead = reader.read_ahead(&keys, false).await.unwrap();
    assert!(ahead.revision() >= compacted);
    assert_eq!(ahead.get("res/m/vn/a"), Some(None));
    assert_eq!(
        ahead.get("res/m/vn/b").flatten().unwrap().value,
        "2".as_bytes()
    );
}
