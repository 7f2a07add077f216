//! A store for tests of racing writers: it passes every call to the store it
//! wraps, except that it can hold the next `n` transactions until all `n`
//! have arrived and then let them through together. The writers have then
//! all read before any of them commits — the interleaving that two
//! control-plane replicas on one store can meet at any time, made certain.

use std::sync::{Arc, Mutex, PoisonError};

use futures::stream::BoxStream;

use crate::{
    KeyValue, Range, RangeResult, Revision, SharedStore, Store, StoreError, StoreSnapshot, Txn,
    TxnOutcome, WatchEvent,
};

/// A store whose next transactions can be held together (see the module).
pub struct GatedStore {
    inner: SharedStore,
    gate: Mutex<Option<(usize, Arc<tokio::sync::Barrier>)>>,
}

impl GatedStore {
    /// Wraps `inner`; nothing is held until [`GatedStore::hold_next`].
    pub fn new(inner: SharedStore) -> Arc<GatedStore> {
        Arc::new(GatedStore {
            inner,
            gate: Mutex::new(None),
        })
    }

    /// Holds each of the next `n` transactions until the `n`th arrives.
    pub fn hold_next(&self, n: usize) {
        let barrier = Arc::new(tokio::sync::Barrier::new(n));
        *self.gate.lock().unwrap_or_else(PoisonError::into_inner) = Some((n, barrier));
    }

    async fn pass(&self) {
        let barrier = {
            let mut gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
            match gate.as_mut() {
                Some((left, barrier)) => {
                    let barrier = barrier.clone();
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        *gate = None;
                    }
                    Some(barrier)
                }
                None => None,
            }
        };
        if let Some(barrier) = barrier {
            barrier.wait().await;
        }
    }
}

#[async_trait::async_trait]
impl Store for GatedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn range(&self, range: Range) -> Result<RangeResult, StoreError> {
        self.inner.range(range).await
    }
    async fn count(&self, range: Range) -> Result<usize, StoreError> {
        self.inner.count(range).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        self.pass().await;
        self.inner.txn(txn).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    async fn snapshot<'a>(&'a self) -> Result<Box<dyn StoreSnapshot + 'a>, StoreError> {
        self.inner.snapshot().await
    }
    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        self.inner.watch(prefix, after).await
    }
}
