//! Measures durable write throughput of the embedded store with concurrent
//! writers (each txn is one put of a fresh key with a 100-byte value).
//!
//! ```text
//! cargo run --release -p weft-store --example write_bench -- [writers] [seconds] [dir]
//! ```
//!
//! `dir` defaults to a temporary directory under the system temp dir; point
//! it at the disk you care about (fsync cost is what this measures).

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weft_store::{EmbeddedOptions, EmbeddedStore, Op, Store, Txn, TxnOutcome};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let writers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(16);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let tmp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);

    let store = EmbeddedStore::open(EmbeddedOptions::new(&dir)).await?;
    let committed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let committed = committed.clone();
            tokio::spawn(async move {
                let value = Bytes::from(vec![b'x'; 100]);
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let txn = Txn {
                        compares: vec![],
                        ops: vec![Op::Put(format!("bench/{w}/{i}"), value.clone())],
                    };
                    if let Ok(TxnOutcome::Committed(_)) = store.txn(txn).await {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = committed.load(Ordering::Relaxed);
    println!(
        "{writers} writers, {n} durable txns in {elapsed:.2} s: {:.0} txn/s (dir {})",
        n as f64 / elapsed,
        dir.display()
    );
    Ok(())
}
