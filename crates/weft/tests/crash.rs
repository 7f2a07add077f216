//! Crash test of `weft server`: a `kill -9` while 16 clients write through the
//! official AWS SDK loses no write the server acknowledged.
//!
//! Each round starts the server on the same data folder, lets writers create
//! virtual nodes (unique names) and update existing ones, kills the server
//! with SIGKILL 300–600 ms into the writing, restarts it and checks that
//! every acknowledged create exists and that every acknowledged update's
//! version is at most the stored one (it may be higher when an
//! unacknowledged later update landed). Clients never retry, so a request
//! interrupted by the kill is an error, never an acknowledgement.
//!
//! A process kill leaves the kernel's page cache intact, so this catches a
//! server that acknowledges before its write reaches the kernel (or loses
//! the torn tail on recovery), not a missing fsync: that needs a power cut.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_appmesh::error::SdkError;
use aws_sdk_appmesh::types::VirtualNodeSpec;
use common::{dns_node_spec, with_backends, WeftServer};

const MESH: &str = "crash";
const WRITERS: usize = 16;
/// When each round's kill comes, after the round's first acknowledged write.
const KILL_AFTER_MS: [u64; 3] = [300, 450, 600];
/// How long a round may wait for its first acknowledged write.
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// A writer stops by itself after this long even if nobody tells it to.
const WRITER_DEADLINE: Duration = Duration::from_secs(20);
/// How long joining the writers or verifying a round may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Far above the 200 nodes per mesh that App Mesh allows by default.
const QUOTA: [&str; 2] = ["--quota", "virtual-nodes-per-mesh=100000"];

fn spec(name: &str, variant: usize) -> VirtualNodeSpec {
    with_backends(
        dns_node_spec(
            &format!("{name}.{MESH}.svc.cluster.local"),
            8080 + (variant % 100) as i32,
        ),
        &[&format!("orders.{MESH}.local")],
    )
}

/// What the server acknowledged, over all rounds.
#[derive(Default)]
struct Acked {
    /// Every node whose create was acknowledged, in order.
    created: Vec<String>,
    /// The highest acknowledged version of each updated node.
    updated: HashMap<String, i64>,
}

/// Per-round tallies, for the report.
#[derive(Default, Debug)]
struct Tally {
    creates: usize,
    updates: usize,
    /// Failed requests by kind (service error code or transport failure).
    errors: BTreeMap<String, usize>,
}

fn error_kind<E>(err: &SdkError<E, aws_sdk_appmesh::config::http::HttpResponse>) -> String
where
    E: aws_sdk_appmesh::error::ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(s) => s.err().code().unwrap_or("<no code>").to_string(),
        SdkError::DispatchFailure(_) => "dispatch failure".into(),
        SdkError::ResponseError(_) => "response error".into(),
        SdkError::TimeoutError(_) => "timeout".into(),
        SdkError::ConstructionFailure(_) => "construction failure".into(),
        _ => "other".into(),
    }
}

/// One writer: mostly creates under fresh names, every third request an
/// update of an already acknowledged node, until told to stop.
async fn writer(
    client: aws_sdk_appmesh::Client,
    round: usize,
    id: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    acks: Arc<AtomicUsize>,
) -> Tally {
    let mut tally = Tally::default();
    let started = Instant::now();
    let mut i = 0usize;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < WRITER_DEADLINE {
        i += 1;
        let target = {
            let a = acked.lock().unwrap();
            (i.is_multiple_of(3) && !a.created.is_empty())
                .then(|| a.created[(id * 7919 + i * 31) % a.created.len()].clone())
        };
        match target {
            Some(name) => {
                let res = client
                    .update_virtual_node()
                    .mesh_name(MESH)
                    .virtual_node_name(&name)
                    .spec(spec(&name, i))
                    .send()
                    .await;
                match res {
                    Ok(out) => {
                        let version = out
                            .virtual_node()
                            .and_then(|n| n.metadata())
                            .map(|m| m.version())
                            .expect("UpdateVirtualNode answered without metadata");
                        let mut a = acked.lock().unwrap();
                        let v = a.updated.entry(name).or_insert(0);
                        *v = (*v).max(version);
                        tally.updates += 1;
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => *tally.errors.entry(error_kind(&e)).or_default() += 1,
                }
            }
            None => {
                let name = format!("r{round}-w{id:02}-{i:05}");
                let res = client
                    .create_virtual_node()
                    .mesh_name(MESH)
                    .virtual_node_name(&name)
                    .spec(spec(&name, i))
                    .send()
                    .await;
                match res {
                    Ok(_) => {
                        acked.lock().unwrap().created.push(name);
                        tally.creates += 1;
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => *tally.errors.entry(error_kind(&e)).or_default() += 1,
                }
            }
        }
    }
    tally
}

/// Checks every acknowledged write against the restarted server, from
/// `WRITERS` concurrent readers. Returns the number of nodes checked.
async fn verify(client: &aws_sdk_appmesh::Client, acked: &Acked) -> usize {
    let names = acked.created.clone();
    let chunk = names.len().div_ceil(WRITERS).max(1);
    let mut readers = Vec::new();
    for part in names.chunks(chunk) {
        let client = client.clone();
        let part: Vec<(String, i64)> = part
            .iter()
            .map(|n| (n.clone(), acked.updated.get(n).copied().unwrap_or(1)))
            .collect();
        readers.push(tokio::spawn(async move {
            for (name, min_version) in part {
                let out = client
                    .describe_virtual_node()
                    .mesh_name(MESH)
                    .virtual_node_name(&name)
                    .send()
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "acknowledged create of {name} was lost after kill -9: {}",
                            common::error_code(&e)
                        )
                    });
                let stored = out
                    .virtual_node()
                    .and_then(|n| n.metadata())
                    .map(|m| m.version())
                    .expect("DescribeVirtualNode answered without metadata");
                assert!(
                    stored >= min_version,
                    "{name}: an update to version {min_version} was acknowledged, \
                     but after kill -9 the stored version is {stored}"
                );
            }
        }));
    }
    for r in readers {
        r.await.expect("a verifying reader failed");
    }
    // The listing agrees: every acknowledged node is listed.
    let mut listed = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_virtual_nodes()
            .mesh_name(MESH)
            .limit(100)
            .set_next_token(token.take())
            .send()
            .await
            .expect("ListVirtualNodes after restart");
        listed.extend(
            page.virtual_nodes()
                .iter()
                .map(|n| n.virtual_node_name().to_string()),
        );
        match page.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    for name in &names {
        assert!(
            listed.contains(name),
            "{name} is described but not listed after restart"
        );
    }
    names.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let acked = Arc::new(Mutex::new(Acked::default()));

    let mut server = WeftServer::start_in(&dir, &QUOTA);
    server
        .client_without_retries()
        .create_mesh()
        .mesh_name(MESH)
        .send()
        .await
        .expect("create the mesh");

    for (round, kill_after) in KILL_AFTER_MS.into_iter().enumerate() {
        let client = server.client_without_retries();
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|id| {
                tokio::spawn(writer(
                    client.clone(),
                    round,
                    id,
                    stop.clone(),
                    acked.clone(),
                    acks.clone(),
                ))
            })
            .collect();
        // Time the kill from the first acknowledged write, not from the
        // spawn, so that a slow start on a busy machine still leaves
        // 300-600 ms of writing.
        let first_ack = tokio::time::timeout(FIRST_ACK_TIMEOUT, async {
            while acks.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            first_ack.is_ok(),
            "round {round}: no write acknowledged within {FIRST_ACK_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        let mut tally = Tally::default();
        let joined = tokio::time::timeout(STEP_TIMEOUT, async {
            for w in writers {
                let t = w.await.expect("a writer panicked");
                tally.creates += t.creates;
                tally.updates += t.updates;
                for (kind, n) in t.errors {
                    *tally.errors.entry(kind).or_default() += n;
                }
            }
        })
        .await;
        assert!(joined.is_ok(), "writers did not stop after the kill");
        eprintln!("round {round}: killed {kill_after} ms after the first ack; {tally:?}");
        assert!(
            tally.creates > 0,
            "round {round}: no create was acknowledged before the kill"
        );
        let failed: usize = tally.errors.values().sum();
        assert!(
            failed > 0,
            "round {round}: no request was interrupted, so no write was in flight at the kill"
        );

        server = WeftServer::start_in(&dir, &QUOTA);
        let client = server.client_without_retries();
        let snapshot = {
            let a = acked.lock().unwrap();
            Acked {
                created: a.created.clone(),
                updated: a.updated.clone(),
            }
        };
        let checked = tokio::time::timeout(STEP_TIMEOUT, verify(&client, &snapshot))
            .await
            .expect("verification took too long");
        eprintln!(
            "round {round}: after restart all {checked} acknowledged creates and {} acknowledged \
             update versions hold",
            snapshot.updated.len()
        );
    }
    assert!(server.terminate(), "the last server did not exit cleanly");
}
