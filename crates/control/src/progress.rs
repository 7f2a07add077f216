//! How far the control plane has followed the store: the revision of the
//! last change it has applied and recomputed the proxies' config for. What
//! readiness (`GET /readyz`) compares with the store's own revision, so that
//! a replica that has not yet caught up (just started, or reconnecting to
//! its store) is not sent traffic that would get old config.

use std::time::Duration;

use weft_store::Revision;

/// A shared view of the control plane's progress through the store's
/// revisions (cheap to clone).
#[derive(Debug, Clone)]
pub struct Progress {
    applied: tokio::sync::watch::Receiver<Option<Revision>>,
}

/// The runtime's side of [`Progress`].
#[derive(Debug)]
pub(crate) struct ProgressWriter {
    applied: tokio::sync::watch::Sender<Option<Revision>>,
}

/// A new progress pair: nothing applied yet.
pub(crate) fn progress() -> (ProgressWriter, Progress) {
    let (tx, rx) = tokio::sync::watch::channel(None);
    (ProgressWriter { applied: tx }, Progress { applied: rx })
}

impl ProgressWriter {
    /// Every change up to `revision` is applied and the proxies' config
    /// recomputed from it.
    pub(crate) fn applied(&self, revision: Revision) {
        self.applied.send_if_modified(|current| {
            let newer = current.is_none_or(|c| revision > c);
            if newer {
                *current = Some(revision);
            }
            newer
        });
    }

    /// The state is being (re)loaded: nothing is known to be current.
    pub(crate) fn reloading(&self) {
        self.applied.send_replace(None);
    }
}

impl Progress {
    /// The revision of the last change applied; `None` while the state is
    /// (re)loading.
    pub fn applied(&self) -> Option<Revision> {
        *self.applied.borrow()
    }

    /// Whether the control plane reaches `revision` (the store's, as just
    /// read) within `wait`: a replica following a busy store is always a
    /// little behind its latest revision, so it is given the time one
    /// change takes to arrive.
    pub async fn caught_up(&self, revision: Revision, wait: Duration) -> bool {
        let mut rx = self.applied.clone();
        let reached = async move {
            rx.wait_for(|applied| applied.is_some_and(|a| a >= revision))
                .await
                .is_ok()
        };
        matches!(tokio::time::timeout(wait, reached).await, Ok(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_control_plane_is_caught_up_once_it_has_applied_the_store_s_revision() {
        let (writer, progress) = progress();
        let wait = Duration::from_millis(50);
        assert_eq!(progress.applied(), None);
        assert!(!progress.caught_up(0, wait).await);
        writer.applied(5);
        assert!(progress.caught_up(5, wait).await);
        assert!(progress.caught_up(3, wait).await);
        assert!(!progress.caught_up(6, wait).await);
        // An older revision never moves it back.
        writer.applied(4);
        assert_eq!(progress.applied(), Some(5));
        // A reload forgets it until the state is loaded again.
        writer.reloading();
        assert!(!progress.caught_up(5, wait).await);
    }

    #[tokio::test]
    async fn a_change_arriving_within_the_wait_counts() {
        let (writer, progress) = progress();
        writer.applied(1);
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.applied(2);
            writer
        });
        assert!(progress.caught_up(2, Duration::from_secs(5)).await);
        drop(later.await);
    }
}
