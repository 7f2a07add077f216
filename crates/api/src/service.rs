//! The App Mesh operations over a [`weft_store::Store`].
//!
//! Inputs arrive already checked against the model (see `http.rs`); this
//! module adds what the model cannot say: existence, uniqueness, references
//! between resources, quotas, versions, idempotency and pagination.
//!
//! Concurrency: every write in a mesh bumps the mesh's guard key and commits
//! only if the guard is unchanged since the write read the mesh. A write that
//! loses the race re-reads and tries again, so two updates of one resource
//! give versions n+1 and n+2, and a delete cannot slip past a concurrent
//! create that references what it deletes.
//!
//! - `records`: stored records and answers as raw JSON text.
//! - `guard`: the mesh guard, its resource counts and the writers' turns.
//! - `list_cache`: the references List answers with, by record revision.
//! - `validate`: what a request must satisfy beyond the model's shapes.
//! - `tokens`: `clientToken` idempotency records.
//! - `operations`: create, describe, update, delete and list.
//! - `tags`: the tagging operations.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value};
use weft_store::SharedStore;

use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::ledger::{Caps, Ledger};
use crate::throttle::{Admission, ClientId, Limits, Permit};
use list_cache::RefCache;
use weft_model::keys;
use weft_model::kind::{Action, Kind};

mod guard;
mod history;
mod list_cache;
mod operations;
mod records;
mod tags;
mod tokens;
mod validate;

pub use validate::HTTP_RETRY_EVENTS;

/// What an operation answers.
#[derive(Debug, Clone)]
pub enum Output {
    /// The output shape as a JSON tree.
    Value(Value),
    /// The output shape, already serialized as JSON.
    Json(Bytes),
    /// The value of the output's payload member `member` (the model's
    /// `payload`, which rest-json sends as the whole body), already
    /// serialized as JSON.
    Payload {
        /// The payload member's name (`virtualNode`, …).
        member: &'static str,
        /// Its value as JSON text.
        body: Bytes,
    },
}

impl Output {
    /// The output shape as a JSON tree, whatever form it came in.
    pub fn into_value(self) -> Result<Value, ApiError> {
        let parse = |body: &[u8]| {
            serde_json::from_slice::<Value>(body)
                .map_err(|e| ApiError::Internal(format!("answer is not JSON: {e}")))
        };
        match self {
            Output::Value(v) => Ok(v),
            Output::Json(body) => parse(&body),
            Output::Payload { member, body } => {
                let mut out = Map::new();
                out.insert(member.to_string(), parse(&body)?);
                Ok(Value::Object(out))
            }
        }
    }
}

/// The App Mesh API's behaviour, independent of HTTP.
#[derive(Clone)]
pub struct Service {
    store: SharedStore,
    /// Shared: the router clones the service for every request.
    config: Arc<ApiConfig>,
    refs: Arc<RefCache>,
    /// Writers of one mesh take turns here (see [`Service::lock_mesh`]).
    write_locks: Arc<[tokio::sync::Mutex<()>]>,
    /// Per-client rate and in-flight limits.
    admission: Arc<Admission>,
    /// The cap on `clientToken` records.
    tokens: Arc<Ledger>,
}

/// The current time in epoch seconds.
pub fn now() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // App Mesh timestamps carry millisecond precision.
    (d.as_millis() as f64) / 1000.0
}

impl Service {
    /// A service over `store`.
    pub fn new(store: SharedStore, config: ApiConfig) -> Self {
        Service {
            store,
            admission: Admission::new(Limits {
                rate: config.rate_limit,
                max_in_flight: config.max_in_flight_per_client,
            }),
            tokens: Arc::new(Ledger::new(
                keys::TOKEN_PREFIX,
                Caps {
                    max_records: config.client_token_max_records,
                    max_bytes: config.client_token_max_bytes,
                },
            )),
            config: Arc::new(config),
            refs: Arc::new(RefCache::default()),
            write_locks: (0..guard::WRITE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &ApiConfig {
        &self.config
    }

    /// Admits one App Mesh request of `client` under its rate and in-flight
    /// limits, or answers `TooManyRequestsException` as App Mesh's
    /// throttling does. The request counts as in flight while the permit lives.
    pub fn admit(&self, client: &ClientId) -> Result<Permit, ApiError> {
        self.admission
            .admit(client)
            .map_err(|refusal| ApiError::TooManyRequests(refusal.message()))
    }

    /// Runs one operation on its merged, model-validated input and returns
    /// its output shape as JSON.
    pub async fn call(&self, operation: &str, input: Value) -> Result<Value, ApiError> {
        self.respond(operation, input).await?.into_value()
    }

    /// Runs one operation like [`Service::call`], but answers in the form
    /// cheapest to send: some outputs come already serialized.
    pub async fn respond(&self, operation: &str, input: Value) -> Result<Output, ApiError> {
        let result = self.dispatch(operation, &input).await;
        let Err(error) = &result else {
            return result;
        };
        // The answer may rest on a write not yet durable (writes read the
        // latest state): wait for it, so no answer outruns the disk.
        match self.store.sync().await {
            Ok(()) => result,
            // A write decided before the answer was not applied after all
            // (another replica's write failed its batch): an answer drawn
            // from what was read is decided once more from what is applied
            // now, rather than turned into a 503.
            Err(weft_store::StoreError::Superseded(_)) if error.rests_on_reads() => {
                let again = self.dispatch(operation, &input).await;
                if again.is_err() {
                    self.store.sync().await?;
                }
                again
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn dispatch(&self, operation: &str, input: &Value) -> Result<Output, ApiError> {
        match operation {
            "TagResource" => return self.tag_resource(input).await.map(Output::Value),
            "UntagResource" => return self.untag_resource(input).await.map(Output::Value),
            "ListTagsForResource" => return self.list_tags(input).await.map(Output::Value),
            _ => {}
        }
        let (action, kind) = Kind::parse_operation(operation)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown operation {operation}")))?;
        self.check_owner(input)?;
        match action {
            Action::List => self.list(kind, input).await,
            action => {
                let id = self.resource_id(kind, input)?;
                match action {
                    Action::Create => self.create(operation, &id, input).await,
                    Action::Describe => self.describe(&id).await,
                    Action::Update => self.update(operation, &id, input).await,
                    _ => self.delete(&id).await.map(Output::Value),
                }
            }
        }
    }

    /// Whether the store can serve: `Err` while writes fail for a reason
    /// that can pass (degraded: reads are served, writes tried again) and
    /// once the disk failed for good (the store then refuses everything
    /// until a restart), so that `GET /healthz` tells a supervisor which.
    /// `Ok(Some(why))` while a remote store (etcd) is unreachable: the
    /// process is alive, and restarting it (as a liveness probe would on an
    /// error) cannot bring the store back, so it is not an error here;
    /// `/readyz` takes the replica out of service meanwhile.
    pub async fn health(&self) -> Result<Option<String>, ApiError> {
        let unreachable = match self.store.health() {
            weft_store::StoreHealth::Ok => None,
            weft_store::StoreHealth::Unreachable(why) => Some(why),
            weft_store::StoreHealth::Degraded(why) => {
                return Err(ApiError::ServiceUnavailable(format!(
                    "store degraded: {why}; reads are served and writes are tried again"
                )))
            }
            weft_store::StoreHealth::Failed(why) => {
                return Err(ApiError::ServiceUnavailable(format!(
                    "store failed: {why}; restart the server once the disk is sound"
                )))
            }
        };
        // The read refreshes the remote store's state (it is only cleared by
        // a request that succeeds); while the store is known unreachable it
        // is bounded, so that the probe answers within its own timeout.
        let read = self.store.revision();
        let answer = match &unreachable {
            None => Some(read.await),
            Some(_) => tokio::time::timeout(UNREACHABLE_PROBE, read).await.ok(),
        };
        match answer {
            Some(Ok(_)) => Ok(None),
            // The read itself may be what found the remote store unreachable.
            Some(Err(e)) => match self.store.health() {
                weft_store::StoreHealth::Unreachable(why) => Ok(Some(why)),
                _ => Err(e.into()),
            },
            None => Ok(unreachable),
        }
    }
}

/// How long `/healthz` waits for a store known to be unreachable.
const UNREACHABLE_PROBE: std::time::Duration = std::time::Duration::from_millis(500);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_store::{EmbeddedOptions, EmbeddedStore};

    /// A service with default settings over a store in a fresh directory,
    /// which lives as long as the returned guard.
    pub(super) async fn service() -> (tempfile::TempDir, Service) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
            .await
            .unwrap();
        let shared: SharedStore = store;
        (dir, Service::new(shared, ApiConfig::default()))
    }

    #[test]
    fn every_form_of_an_answer_reads_as_the_same_output_shape() {
        let tree = json!({"mesh": {"meshName": "m"}});
        let json = Output::Json(Bytes::from_static(br#"{"mesh":{"meshName":"m"}}"#));
        let payload = Output::Payload {
            member: "mesh",
            body: Bytes::from_static(br#"{"meshName":"m"}"#),
        };
        assert_eq!(Output::Value(tree.clone()).into_value().unwrap(), tree);
        assert_eq!(json.into_value().unwrap(), tree);
        assert_eq!(payload.into_value().unwrap(), tree);
        let broken = Output::Payload {
            member: "mesh",
            body: Bytes::from_static(b"{"),
        };
        assert_eq!(
            broken.into_value().unwrap_err().error_type(),
            "InternalServerErrorException"
        );
    }

    #[test]
    fn the_time_is_in_seconds_to_the_millisecond() {
        let t = now();
        assert!(t > 1.6e9, "{t}");
        let millis = t * 1000.0;
        assert!((millis - millis.round()).abs() < 0.01, "{t}");
    }

    #[tokio::test]
    async fn an_operation_the_model_does_not_name_is_a_bad_request() {
        let (_dir, service) = service().await;
        let err = service.call("CreateWidget", json!({})).await.unwrap_err();
        assert_eq!(err.error_type(), "BadRequestException");
        assert_eq!(err.to_string(), "unknown operation CreateWidget");
    }
}
