//! Idempotency records expire and are swept, on a real embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use weft_api::{ApiConfig, Service};
use weft_store::{EmbeddedOptions, EmbeddedStore, Range, SharedStore, Store};

#[tokio::test]
async fn client_tokens_are_forgotten_after_their_time_to_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap();
    let shared: SharedStore = store.clone();
    let service = Service::new(shared, ApiConfig::default());
    let input = json!({"meshName": "apps", "clientToken": "t1"});
    let first = service.call("CreateMesh", input.clone()).await.unwrap();
    // Within the TTL the token replays the first answer.
    assert_eq!(
        service.call("CreateMesh", input.clone()).await.unwrap(),
        first
    );
    let tokens = || async { store.count(Range::prefix("token/")).await.unwrap() };
    assert_eq!(tokens().await, 1);
    // A sweep "now" keeps it; a sweep two hours later removes it.
    assert_eq!(
        service
            .sweep_expired_tokens(weft_api::service::now())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        service
            .sweep_expired_tokens(weft_api::service::now() + 7200.0)
            .await
            .unwrap(),
        1
    );
    assert_eq!(tokens().await, 0);
    // Without its token record, the same request is a new create: the mesh exists.
    let again = service.call("CreateMesh", input).await.unwrap_err();
    assert_eq!(again.error_type(), "ConflictException");
}
