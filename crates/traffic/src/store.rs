//! The shared handle to the traffic history.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::snapshot::TrafficSnapshot;

/// The window, in seconds, rates and quantiles are computed over.
pub const WINDOW_SECONDS: u64 = 60;

/// The traffic history of the whole mesh, shared between the stats intake, `/metrics` and the
/// dashboard. Cloning is cheap: clones share one history.
#[derive(Clone)]
pub struct TrafficStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<TrafficSnapshot>,
    version: watch::Sender<u64>,
}

impl Default for TrafficStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TrafficStore {
    /// An empty history.
    pub fn new() -> Self {
        let (version, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(TrafficSnapshot {
                    window_seconds: WINDOW_SECONDS,
                    ..TrafficSnapshot::default()
                }),
                version,
            }),
        }
    }

    /// The current edges and proxies.
    pub fn snapshot(&self) -> TrafficSnapshot {
        match self.inner.state.lock() {
            Ok(state) => state.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A receiver whose value is bumped at every ingest, for live refresh.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_empty_store_serialises_to_the_dashboard_contract() {
        let store = TrafficStore::new();
        let json = serde_json::to_value(store.snapshot()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"window_seconds": 60, "edges": [], "proxies": []})
        );
    }
}
