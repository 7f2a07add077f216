//! The shared handle to the traffic history.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::history::{DenialCount, Drops, History, Limits, Source};
use crate::parse::Flush;
use crate::snapshot::TrafficSnapshot;

/// The traffic history of the whole mesh, shared between the stats intake, `/metrics` and the
/// dashboard. Cloning is cheap: clones share one history.
#[derive(Clone)]
pub struct TrafficStore {
    inner: Arc<Inner>,
}

struct Inner {
    history: Mutex<History>,
    version: watch::Sender<u64>,
}

impl Default for TrafficStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Unix time now, in seconds.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl TrafficStore {
    /// An empty history with the default limits.
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// An empty history within `limits`.
    pub fn with_limits(limits: Limits) -> Self {
        let (version, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                history: Mutex::new(History::new(limits)),
                version,
            }),
        }
    }

    fn history(&self) -> MutexGuard<'_, History> {
        self.inner
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The current edges and proxies.
    pub fn snapshot(&self) -> TrafficSnapshot {
        self.history().snapshot(unix_now())
    }

    /// A receiver whose value is bumped at every ingest, for live refresh.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Takes one flush of `source`'s stats, read by [`crate::parse::read`], now; `interval` is
    /// the time a proxy's first flush covers.
    pub fn ingest(&self, source: &Source, flush: &Flush, interval: f64) {
        self.ingest_at(source, flush, unix_now(), interval);
    }

    /// [`TrafficStore::ingest`] at Unix time `now` (for simulations that compress time).
    pub fn ingest_at(&self, source: &Source, flush: &Flush, now: f64, interval: f64) {
        self.history().ingest(source, flush, now, interval);
        self.inner.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Counts a stream refused (`malformed`: it broke with undecodable data).
    pub fn count_refused(&self, malformed: bool) {
        self.history().count_refused(malformed);
    }

    /// Every reporting proxy's authorization denials per caller.
    pub fn denials(&self) -> Vec<DenialCount> {
        self.history().denials()
    }

    /// What was dropped since the start.
    pub fn drops(&self) -> Drops {
        self.history().drops()
    }

    /// Edges held now, and an estimate of the bytes the history holds.
    pub fn size(&self) -> (usize, usize) {
        let history = self.history();
        (history.edge_count(), history.approx_bytes())
    }

    /// The snapshot at Unix time `now`.
    pub fn snapshot_at(&self, now: f64) -> TrafficSnapshot {
        self.history().snapshot(now)
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
