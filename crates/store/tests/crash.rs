//! kill -9 crash test for the embedded store.
//!
//! `crash_recovery` re-executes this test binary as a child that runs only
//! `crash_writer_child` (selected with `--exact`, which works the same under
//! `cargo test` and `cargo nextest run`). The child writes unique keys from
//! many concurrent tasks and prints every acknowledged key; the parent
//! SIGKILLs it mid-stream, reopens the store and checks that every
//! acknowledged key survived. Three rounds on one directory exercise
//! recovery of whatever the previous kill left behind, including torn log
//! tails, interrupted compactions (the child compacts often) and logs
//! half prepared or just switched to.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weft_store::{Compare, EmbeddedOptions, EmbeddedStore, Op, Store, Txn, TxnOutcome};

/// Set in the child's environment: the store directory. Its presence is what
/// turns `crash_writer_child` from a no-op into the writer.
const DIR_VAR: &str = "WEFT_CRASH_WRITER_DIR";
/// Set in the child's environment: the round number, to keep keys unique.
const ROUND_VAR: &str = "WEFT_CRASH_WRITER_ROUND";
const WRITERS: usize = 16;
const ROUNDS: usize = 3;

fn options(dir: &Path) -> EmbeddedOptions {
    EmbeddedOptions {
        // Small, so that kills also land in the middle of compactions.
        compaction_threshold: 128 << 10,
        // Small too, so that kills land while the next log is prepared and
        // while writes switch to it.
        segment_size: 96 << 10,
        ..EmbeddedOptions::new(dir)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The child: a no-op unless started by `crash_recovery`.
#[test]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let round: usize = std::env::var(ROUND_VAR).unwrap().parse().unwrap();
    runtime().block_on(async move {
        let store = EmbeddedStore::open(options(&PathBuf::from(dir)))
            .await
            .unwrap();
        for writer in 0..WRITERS {
            let store: Arc<EmbeddedStore> = store.clone();
            tokio::spawn(async move {
                let hot = Bytes::from(vec![b'h'; 256]);
                for i in 0.. {
                    let key = format!("crash/{round}/{writer}/{i}");
                    let txn = Txn {
                        compares: vec![Compare::Absent(key.clone())],
                        ops: vec![
                            Op::Put(key.clone(), Bytes::from(key.clone())),
                            // Rewriting a per-writer key grows the log much
                            // faster than the live data, so it compacts.
                            Op::Put(format!("crash/hot/{writer}"), hot.clone()),
                        ],
                    };
                    let outcome = store.txn(txn).await.unwrap();
                    assert!(matches!(outcome, TxnOutcome::Committed(_)));
                    // Straight to the process's stdout (not the test
                    // harness's capture), flushed per line, so the parent
                    // sees each acknowledgement before the kill.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {key}").unwrap();
                    out.flush().unwrap();
                }
            });
        }
        // Safety net in case the parent dies without killing us.
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
}

/// The store's log files, oldest first.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("wal-") && name.ends_with(".log")
        })
        .collect();
    logs.sort();
    logs
}

/// Writes half a record header just after the newest log's last record, as
/// a kill in the middle of a write can leave (in a prepared log, the zeros
/// after it stay).
fn tear_log_tail(dir: &Path) {
    let newest = log_files(dir).pop().expect("no log file");
    let data = std::fs::read(&newest).unwrap();
    // Records end in key or value bytes, never in a zero.
    let end = data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let log = std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .unwrap();
    log.write_all_at(&[0x40, 0, 0, 0, 0x12], end as u64)
        .unwrap();
}

#[test]
fn crash_recovery() {
    if std::env::var_os(DIR_VAR).is_some() {
        return; // we are a child; only crash_writer_child runs here anyway
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut acked: Vec<String> = Vec::new();
    let mut prepared_logs_seen = false;

    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["crash_writer_child", "--exact", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(DIR_VAR, dir.path())
            .env(ROUND_VAR, round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(key) = line.strip_prefix("ACK ") {
                    if tx.send(key.to_string()).is_err() {
                        break;
                    }
                }
            }
        });

        let first = rx.recv_timeout(Duration::from_secs(30));
        if first.is_ok() {
            std::thread::sleep(Duration::from_millis(300 + 100 * round as u64));
        }
        // Child::kill sends SIGKILL on Unix: no chance to flush anything.
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let first = first.expect("the child acknowledged nothing within 30 s");
        let round_acked: Vec<String> = std::iter::once(first).chain(rx.try_iter()).collect();
        eprintln!("round {round}: {} acknowledged writes", round_acked.len());
        acked.extend(round_acked);

        // A prepared log is exactly segment_size long until it is full.
        prepared_logs_seen |= log_files(dir.path())
            .iter()
            .any(|p| std::fs::metadata(p).unwrap().len() == options(dir.path()).segment_size);
        if round == 1 {
            tear_log_tail(dir.path());
        }
        rt.block_on(async {
            let store = EmbeddedStore::open(options(dir.path())).await.unwrap();
            for key in &acked {
                let kv = store.get(key).await.unwrap();
                let kv = kv.unwrap_or_else(|| panic!("acknowledged key {key} was lost"));
                assert_eq!(kv.value, key.as_bytes());
            }
            let revision = store.revision().await.unwrap();
            assert!(revision >= acked.len() as i64);
        });
    }
    assert!(
        dir.path().join("snapshot").exists(),
        "the writers should have triggered at least one compaction"
    );
    assert!(
        prepared_logs_seen,
        "the writers should have switched to a prepared log at least once"
    );
}
