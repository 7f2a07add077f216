//! `GET /weft/v1/traffic`: the [`crate::TrafficSnapshot`] as JSON, an administrator's call like
//! every `/weft/v1/` endpoint (the API listener's authentication layer checks the signature).

use axum::routing::get;
use axum::{Json, Router};

use crate::store::TrafficStore;

/// Where the snapshot is served.
pub const TRAFFIC_PATH: &str = "/weft/v1/traffic";

/// The endpoint, to merge into the API listener's router.
pub fn router(store: TrafficStore) -> Router {
    Router::new().route(
        TRAFFIC_PATH,
        get(move || {
            let store = store.clone();
            async move { Json(store.snapshot()) }
        }),
    )
}
