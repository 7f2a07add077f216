//! `GET /readyz` on the API listener: whether this replica should be sent
//! traffic — its store answers and its control plane has caught up with the
//! store's revision — apart from `GET /healthz`, which says whether the
//! process is alive. A load balancer or Kubernetes readiness probe takes a
//! replica out while it starts, reloads or has lost its store, and puts it
//! back once it serves current config
//! (<https://kubernetes.io/docs/reference/using-api/health-checks/>).
//! Unauthenticated like `/healthz` and `/metrics`: it reveals two revisions.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};
use weft_control::Progress;
use weft_store::{Revision, SharedStore, StoreError, StoreHealth};

/// Path of the endpoint on the API listener.
pub const PATH: &str = "/readyz";

/// How long the store may take to tell its revision, and the control plane
/// to apply it, before the replica is reported not ready.
const WAIT: Duration = Duration::from_secs(2);

/// The router serving [`PATH`].
pub fn router(store: SharedStore, progress: Progress) -> Router {
    Router::new().route(
        PATH,
        get(move || {
            let store = store.clone();
            let progress = progress.clone();
            async move { readiness(&store, &progress).await }
        }),
    )
}

async fn readiness(store: &SharedStore, progress: &Progress) -> Response {
    let revision = match store.health() {
        StoreHealth::Failed(why) => Err(format!("the store has failed: {why}")),
        _ => match tokio::time::timeout(WAIT, store.revision()).await {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(e)) => Err(unreachable(&e)),
            Err(_) => Err(format!(
                "the store did not answer within {} s",
                WAIT.as_secs()
            )),
        },
    };
    let caught_up = match revision {
        Ok(r) => caught_up(store, progress, r).await,
        Err(_) => false,
    };
    let (status, body) = verdict(revision, caught_up, progress.applied());
    (status, Json(body)).into_response()
}

/// Whether the control plane has applied every change of Weft's up to the store's revision
/// `revision`. The store's revision may count writes that are not Weft's (on etcd, every key
/// of the cluster moves it, other installations' prefixes included), which the control plane's
/// feed never delivers: when the control plane is behind the number, the store is asked for
/// the first change of Weft's after what was applied, and only such a change (not yet applied
/// within [`WAIT`]) makes the replica not ready.
async fn caught_up(store: &SharedStore, progress: &Progress, revision: Revision) -> bool {
    let Some(applied) = progress.applied() else {
        // Loading: wait a little for the load to finish.
        return progress.caught_up(revision, WAIT).await;
    };
    if applied >= revision {
        return true;
    }
    let first_pending = async {
        let mut feed = store.watch("", applied).await.ok()?;
        match feed.next().await {
            Some(Ok(event)) => Some(Some(event.revision)),
            // Compacted past what was applied: the control plane reloads.
            Some(Err(_)) => Some(Some(revision)),
            None => Some(None),
        }
    };
    match tokio::time::timeout(PENDING_WAIT, first_pending).await {
        // No change of Weft's since what was applied: the rest are others' writes.
        Err(_) | Ok(Some(None)) => true,
        Ok(Some(Some(pending))) if pending > revision => true,
        Ok(Some(Some(pending))) => progress.caught_up(pending, WAIT).await,
        Ok(None) => false,
    }
}

/// How long the store's feed is given to deliver a pending change of Weft's.
const PENDING_WAIT: Duration = Duration::from_millis(300);

fn unreachable(e: &StoreError) -> String {
    format!("the store is unreachable: {e}")
}

/// The answer, from what was found: the store's revision (or why it could
/// not be read), whether the control plane reached it in time, and the
/// revision it has applied. Pure, so that every case is tested without a
/// failing store.
fn verdict(
    store: Result<Revision, String>,
    caught_up: bool,
    applied: Option<Revision>,
) -> (StatusCode, Value) {
    match store {
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"ready": false, "reason": reason, "appliedRevision": applied}),
        ),
        Ok(revision) if caught_up => (
            StatusCode::OK,
            json!({"ready": true, "storeRevision": revision, "appliedRevision": applied}),
        ),
        Ok(revision) => {
            let reason = match applied {
                None => format!(
                    "the control plane is loading the store's state (store at revision {revision})"
                ),
                Some(a) => {
                    format!("the control plane has applied revision {a} of the store's {revision}")
                }
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"ready": false, "reason": reason, "storeRevision": revision,
                    "appliedRevision": applied}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_caught_up_with_a_reachable_store_is_ready() {
        let (status, body) = verdict(Ok(42), true, Some(42));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["ready"], json!(true));
        assert_eq!(body["storeRevision"], json!(42));
    }

    #[test]
    fn a_replica_whose_store_is_unreachable_is_not_ready_and_says_why() {
        let why = unreachable(&StoreError::Unavailable("connection refused".into()));
        let (status, body) = verdict(Err(why), false, Some(7));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["ready"], json!(false));
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("unreachable"), "{reason}");
        assert!(reason.contains("connection refused"), "{reason}");
    }

    #[test]
    fn a_replica_behind_its_store_is_not_ready_and_names_both_revisions() {
        let (status, body) = verdict(Ok(50), false, Some(40));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("40") && reason.contains("50"), "{reason}");
        let (_, loading) = verdict(Ok(50), false, None);
        let reason = loading["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("loading"), "{reason}");
    }
}
