//! The store conformance suite, unchanged, against a real 3-member etcd cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use etcd_client::Client;
use futures::stream::BoxStream;
use weft_store::{
    KeyValue, Range, RangeResult, Revision, SharedStore, Store, StoreError, StoreSnapshot, Txn,
    TxnOutcome, WatchEvent,
};
use weft_store_etcd::testing::EtcdCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_backend_passes_the_store_conformance_suite_on_a_three_member_cluster() {
    let cluster = EtcdCluster::start(3).await;
    // Each check gets a store of its own: a fresh prefix in the shared cluster.
    let next = AtomicUsize::new(0);
    weft_store::conformance::run_all(|| {
        let prefix = format!("/conformance-{}/", next.fetch_add(1, Ordering::Relaxed));
        let cluster = &cluster;
        async move {
            let store: SharedStore = cluster.store(&prefix).await;
            store
        }
    })
    .await;
}

/// An etcd that keeps `retained` revisions of history, as etcd's own
/// `--auto-compaction-mode=revision` does (every 5 minutes there, after every
/// write here): compaction is the cluster operator's, not Weft's.
struct Retaining {
    store: SharedStore,
    client: Client,
    retained: i64,
}

#[async_trait::async_trait]
impl Store for Retaining {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.store.get(key).await
    }
    async fn range(&self, range: Range) -> Result<RangeResult, StoreError> {
        self.store.range(range).await
    }
    async fn count(&self, range: Range) -> Result<usize, StoreError> {
        self.store.count(range).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let outcome = self.store.txn(txn).await?;
        if let TxnOutcome::Committed(rev) = outcome {
            if rev > self.retained {
                let mut client = self.client.clone();
                client.compact(rev - self.retained, None).await.unwrap();
            }
        }
        Ok(outcome)
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.store.revision().await
    }
    async fn snapshot<'a>(&'a self) -> Result<Box<dyn StoreSnapshot + 'a>, StoreError> {
        self.store.snapshot().await
    }
    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        self.store.watch(prefix, after).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_revision_etcd_compacted_away_fails_with_compacted() {
    let cluster = EtcdCluster::start(3).await;
    let store = Retaining {
        store: cluster.store("/compacted/").await,
        client: cluster.client().await,
        retained: 20,
    };
    weft_store::conformance::watch_compacted(&store, 20).await;
}
