//! `weft-bench compaction`: how long the embedded store's writes stall while
//! it compacts a large state.
//!
//! Compaction snapshots the whole key space at one revision and writes it out
//! in the background; the snapshot is taken under the lock every read and
//! write goes through. This benchmark opens the store in-process (the API
//! adds nothing to what it measures), fills it with many small keys (as a
//! busy hour of client-token records does), then has concurrent writers
//! overwrite a few large keys, so that the log outgrows twice the live data
//! every second or so and compaction runs again and again. It prints the
//! writers' latency, the longest write, and how many compactions completed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use bytes::Bytes;
use weft_store::{EmbeddedOptions, EmbeddedStore, Op, Store, Txn};

use crate::machine::{self, ms, quantile};

/// Flags of `weft-bench compaction`.
#[derive(clap::Args)]
pub struct CompactionArgs {
    /// Small keys written before the measurement (the state a snapshot copies).
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// Bytes of each small key's value.
    #[arg(long, default_value_t = 100)]
    pub key_bytes: usize,
    /// Large keys the writers overwrite, round robin.
    #[arg(long, default_value_t = 1_000)]
    pub hot_keys: usize,
    /// Bytes of each write's value.
    #[arg(long, default_value_t = 4096)]
    pub write_bytes: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Log bytes since the last snapshot that allow a compaction (it also
    /// needs the log to hold twice the live data), in MiB.
    #[arg(long, default_value_t = 16)]
    pub compaction_mib: u64,
}

/// Runs the benchmark and prints its table.
pub async fn run(args: CompactionArgs) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("weft-bench-compaction-")
        .tempdir()
        .context("creating the store folder")?;
    let mut opts = EmbeddedOptions::new(dir.path());
    opts.compaction_threshold = args.compaction_mib << 20;
    let store = EmbeddedStore::open(opts).await?;

    println!("date:       {}", machine::utc_now());
    println!("machine:    {}", machine::describe());
    println!(
        "store:      {} keys of {} B, then {} writers overwriting {} keys of {} B for {:.0} s; compaction from {} MiB of log",
        args.keys, args.key_bytes, args.concurrency, args.hot_keys, args.write_bytes, args.duration, args.compaction_mib
    );

    let started = Instant::now();
    let small = Bytes::from(vec![b's'; args.key_bytes]);
    for first in (0..args.keys).step_by(1_000) {
        let ops = (first..(first + 1_000).min(args.keys))
            .map(|i| Op::Put(format!("fill/{i:08}"), small.clone()))
            .collect();
        store
            .txn(Txn {
                compares: Vec::new(),
                ops,
            })
            .await?;
    }
    println!("  filled in {:.1} s", started.elapsed().as_secs_f64());

    let snapshots = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (snapshots, stop) = (snapshots.clone(), stop.clone());
        let path = dir.path().join(weft_store::embedded::SNAPSHOT_FILE);
        tokio::spawn(async move {
            let mut last = modified(&path);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = modified(&path);
                if now.is_some() && now != last {
                    snapshots.fetch_add(1, Ordering::Relaxed);
                    last = now;
                }
            }
        })
    };

    let value = Bytes::from(vec![b'w'; args.write_bytes]);
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let mut writers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (store, value, next) = (store.clone(), value.clone(), next.clone());
        let hot_keys = args.hot_keys.max(1);
        writers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) % hot_keys;
                let txn = Txn {
                    compares: Vec::new(),
                    ops: vec![Op::Put(format!("hot/{i:06}"), value.clone())],
                };
                let t = Instant::now();
                store.txn(txn).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for writer in writers {
        latencies.extend(writer.await??);
    }
    stop.store(true, Ordering::Relaxed);
    watcher.await?;
    latencies.sort_unstable();

    println!();
    println!(
        "{:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "keys", "writes", "writes/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "compactions"
    );
    println!(
        "{:>8} {:>8} {:>9.0} {:>8} {:>8} {:>8} {:>8} {:>12}",
        args.keys + args.hot_keys,
        latencies.len(),
        latencies.len() as f64 / args.duration,
        ms(quantile(&latencies, 0.50)),
        ms(quantile(&latencies, 0.99)),
        ms(quantile(&latencies, 0.999)),
        ms(latencies.last().copied().unwrap_or_default()),
        snapshots.load(Ordering::Relaxed),
    );
    println!();
    println!(
        "Each write: one put of a hot key through Store::txn, timed until it is durable. \
         compactions = snapshots that replaced the previous one during the measurement."
    );
    Ok(())
}

/// When the snapshot file last changed, if it exists.
fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
