//! Fan-out of durable changes to watchers.
//!
//! The committer publishes each durable batch here, under the hub lock, both
//! into a bounded history ring and to every live subscriber. A new watcher
//! copies the history it needs and registers under that same lock, so the
//! hand-over from history to live events has no gap and no duplicate.
//!
//! Each subscriber has a bounded channel. When a watcher falls behind and its
//! channel is full, the hub drops its sender and records the revision up to
//! which the channel is complete; once the watcher has drained the channel it
//! re-subscribes from that revision, out of the history ring. Only if the ring
//! no longer reaches back that far does the watcher get
//! [`StoreError::Compacted`] — it never silently misses events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;

use crate::{Revision, StoreError, WatchEvent};

/// `Subscriber::resume_after` value while the subscriber is not lagging.
const NOT_LAGGED: Revision = -1;

/// Shared watch state; see the module docs.
pub(super) struct Hub {
    history: VecDeque<WatchEvent>,
    history_len: usize,
    /// The bytes of keys and values in `history`, and the most it may hold.
    history_bytes: usize,
    max_history_bytes: usize,
    /// Every event with a revision above this is in `history`.
    compacted_through: Revision,
    /// The durable revision published last.
    published: Revision,
    subscribers: Vec<Subscriber>,
    watch_buffer: usize,
    /// Set when the store failed or shut down: why no more events will come.
    ended: Option<String>,
}

struct Subscriber {
    prefix: String,
    tx: mpsc::Sender<Vec<WatchEvent>>,
    resume_after: Arc<AtomicI64>,
}

/// What a new subscriber starts with.
struct Subscription {
    backlog: VecDeque<WatchEvent>,
    rx: mpsc::Receiver<Vec<WatchEvent>>,
    resume_after: Arc<AtomicI64>,
}

/// Locks the hub. Nothing panics while holding it, and its state stays
/// consistent at every step anyway, so a poisoned lock is still usable.
pub(super) fn lock(hub: &Mutex<Hub>) -> MutexGuard<'_, Hub> {
    hub.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    /// A hub for a store recovered at `head`. History before `head` is not
    /// known after a restart, so watching from below it reports `Compacted`.
    pub fn new(
        head: Revision,
        history_len: usize,
        max_history_bytes: usize,
        watch_buffer: usize,
    ) -> Self {
        Hub {
            history: VecDeque::new(),
            history_len,
            history_bytes: 0,
            max_history_bytes,
            compacted_through: head,
            published: head,
            subscribers: Vec::new(),
            watch_buffer: watch_buffer.max(1),
            ended: None,
        }
    }

    /// Publishes the events of a durable batch that ends at `revision`.
    pub fn publish(&mut self, revision: Revision, events: Vec<WatchEvent>) {
        let lagged_at = self.published;
        self.published = revision;
        self.subscribers.retain(|sub| {
            if sub.tx.is_closed() {
                // The stream was dropped: unsubscribe.
                return false;
            }
            let batch: Vec<WatchEvent> = events
                .iter()
                .filter(|e| e.key.starts_with(&sub.prefix))
                .cloned()
                .collect();
            if batch.is_empty() {
                return true;
            }
            match sub.tx.try_send(batch) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Everything up to the previous batch is in the channel.
                    sub.resume_after.store(lagged_at, Ordering::Release);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.history_bytes += events.iter().map(event_size).sum::<usize>();
        self.history.extend(events);
        while self.history.len() > self.history_len || self.history_bytes > self.max_history_bytes {
            let Some(oldest) = self.history.pop_front() else {
                break;
            };
            self.history_bytes = self.history_bytes.saturating_sub(event_size(&oldest));
            // Drop whole revisions, so a watcher never gets half a txn.
            self.compacted_through = oldest.revision;
            while let Some(next) = self
                .history
                .front()
                .filter(|e| e.revision == oldest.revision)
            {
                self.history_bytes = self.history_bytes.saturating_sub(event_size(next));
                self.history.pop_front();
            }
        }
    }

    /// Ends every watch with [`StoreError::Unavailable`] carrying `why`
    /// (the store failed or closed).
    pub fn end(&mut self, why: &str) {
        if self.ended.is_none() {
            self.ended = Some(why.to_string());
        }
        // Dropping the senders lets each stream drain, then see the error.
        self.subscribers.clear();
    }

    fn ended_error(&self) -> Option<StoreError> {
        self.ended.clone().map(StoreError::Unavailable)
    }

    fn subscribe(&mut self, prefix: &str, after: Revision) -> Result<Subscription, StoreError> {
        if let Some(e) = self.ended_error() {
            return Err(e);
        }
        if after < self.compacted_through {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: self.compacted_through,
            });
        }
        let backlog = self
            .history
            .iter()
            .filter(|e| e.revision > after && e.key.starts_with(prefix))
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(self.watch_buffer);
        let resume_after = Arc::new(AtomicI64::new(NOT_LAGGED));
        self.subscribers.push(Subscriber {
            prefix: prefix.to_string(),
            tx,
            resume_after: resume_after.clone(),
        });
        Ok(Subscription {
            backlog,
            rx,
            resume_after,
        })
    }
}

/// What an event costs the history: its key and value, and a rough
/// allowance for the entry itself.
fn event_size(event: &WatchEvent) -> usize {
    event.key.len() + event.value.as_ref().map_or(0, |v| v.len()) + 48
}

/// A watch stream's state between items.
struct WatchState {
    hub: Arc<Mutex<Hub>>,
    prefix: String,
    /// Events at or below this revision are not delivered: either the caller
    /// asked to start after it, or they were already delivered.
    floor: Revision,
    sub: Subscription,
}

/// Starts a watch of `prefix` for events after revision `after`.
pub(super) fn watch(
    hub: &Arc<Mutex<Hub>>,
    prefix: &str,
    after: Revision,
) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
    // Revision 0 is "before any write"; anything lower means the same.
    let after = after.max(0);
    let sub = lock(hub).subscribe(prefix, after)?;
    let state = WatchState {
        hub: hub.clone(),
        prefix: prefix.to_string(),
        floor: after,
        sub,
    };
    Ok(futures::stream::unfold(Some(state), next_event).boxed())
}

/// Produces the next item; `None` state means the stream has ended (after
/// an error, nothing more is delivered).
async fn next_event(
    state: Option<WatchState>,
) -> Option<(Result<WatchEvent, StoreError>, Option<WatchState>)> {
    let mut st = state?;
    loop {
        while let Some(event) = st.sub.backlog.pop_front() {
            // Live batches can predate `floor` when the watch started in the
            // future or re-subscribed; skip what the caller must not see.
            if event.revision > st.floor {
                return Some((Ok(event), Some(st)));
            }
        }
        if let Some(batch) = st.sub.rx.recv().await {
            st.sub.backlog.extend(batch);
            continue;
        }
        // The hub dropped our sender and the channel is drained.
        let resume_after = st.sub.resume_after.load(Ordering::Acquire);
        if resume_after == NOT_LAGGED {
            let error = lock(&st.hub)
                .ended_error()
                .unwrap_or_else(|| StoreError::Unavailable("watch ended".into()));
            return Some((Err(error), None));
        }
        // We lagged: everything up to `resume_after` has been delivered, so
        // pick up from there out of the history.
        st.floor = st.floor.max(resume_after);
        let resubscribed = lock(&st.hub).subscribe(&st.prefix, st.floor);
        match resubscribed {
            Ok(sub) => st.sub = sub,
            Err(e) => return Some((Err(e), None)),
        }
    }
}
