//! Idempotency: what a `clientToken` remembers of the create or update it
//! came with, how a retry with the same token is answered, and how the
//! records are kept within their time to live and their caps.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use weft_model::keys;
use weft_model::kind::ResourceId;
use weft_store::{Compare, Op, Range, ReadAhead, Revision};

use super::records::{data_bytes, write_json};
use super::{now, Output, Service};
use crate::error::ApiError;

/// What a `clientToken` remembers: the request it came with (see
/// [`Fingerprint`]) and what the answer needs beyond the request, as stored
/// JSON `{"request": "sha256:…", "metadata": {…}, "at": …}`, with `"spec"`
/// only when the answer's spec is not the request's (an UpdateMesh without
/// one keeps the mesh's); read borrowing the stored bytes. A replay rebuilds
/// the answer from the resource's names, this metadata and the retried
/// request's spec (the same request: its digest matched), so a record is a
/// few hundred bytes whatever the spec's size.
#[derive(Deserialize)]
struct TokenRecord<'a> {
    /// `sha256:` and the request's digest.
    #[serde(borrow)]
    request: &'a str,
    /// The answer's `metadata`.
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    /// The answer's spec, when the request had none.
    #[serde(borrow, default)]
    spec: Option<&'a RawValue>,
    /// When the token was first used (epoch seconds).
    at: f64,
}

impl TokenRecord<'_> {
    /// Whether the record was written for the request `fingerprint`.
    fn same_request(&self, fingerprint: &Fingerprint) -> bool {
        self.request.strip_prefix("sha256:") == Some(fingerprint.digest.as_str())
    }

    /// The `…Data` answer the record stands for, for resource `id` and the
    /// retried request's spec `spec`: the kept spec if the record has one.
    fn answer(&self, id: &ResourceId, spec: Option<&[u8]>) -> Result<Vec<u8>, ApiError> {
        let metadata = self.metadata.map_or("{}", RawValue::get).as_bytes();
        let spec = match (self.spec, spec) {
            (Some(kept), _) => kept.get().as_bytes(),
            (None, Some(spec)) => spec,
            (None, None) => b"{}",
        };
        data_bytes(id, metadata, spec)
    }
}

/// A request as a `clientToken` remembers it: the SHA-256 of the input's
/// JSON without its `clientToken`. Records store only the digest: a token
/// record is written with every create and update, and the request itself
/// would be a third of its bytes, all of it logged, synced and compacted.
pub(super) struct Fingerprint {
    /// Lowercase hex.
    digest: String,
}

impl Fingerprint {
    fn new(json: String) -> Fingerprint {
        use sha2::Digest;
        use std::fmt::Write;
        let hash = sha2::Sha256::digest(json.as_bytes());
        let mut digest = String::with_capacity(64);
        for b in hash.iter() {
            // Writing to a String cannot fail.
            let _ = write!(digest, "{b:02x}");
        }
        Fingerprint { digest }
    }

    /// The request as an idempotency record remembers it: the input's JSON
    /// without its `clientToken` (written without copying the input).
    pub(super) fn of(input: &Value) -> Result<Fingerprint, ApiError> {
        let Some(obj) = input.as_object() else {
            return Ok(Fingerprint::new(input.to_string()));
        };
        let mut out = Vec::with_capacity(512);
        out.push(b'{');
        let mut first = true;
        for (name, value) in obj {
            if name == "clientToken" {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            write_json(&mut out, name)?;
            out.push(b':');
            write_json(&mut out, value)?;
        }
        out.push(b'}');
        String::from_utf8(out)
            .map(Fingerprint::new)
            .map_err(|e| ApiError::Internal(format!("request is not UTF-8: {e}")))
    }
}

/// When a token record was written; the rest of it is skipped.
#[derive(Deserialize)]
struct TokenAge {
    #[serde(default)]
    at: f64,
}

/// The stored form of a [`TokenRecord`] for `request`, written at `at`.
fn token_record(
    request: &Fingerprint,
    metadata: &[u8],
    kept_spec: Option<&[u8]>,
    at: f64,
) -> Result<Bytes, ApiError> {
    let extra = kept_spec.map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(metadata.len() + extra + 128);
    out.extend_from_slice(b"{\"request\":\"sha256:");
    out.extend_from_slice(request.digest.as_bytes());
    out.extend_from_slice(b"\",\"metadata\":");
    out.extend_from_slice(metadata);
    if let Some(spec) = kept_spec {
        out.extend_from_slice(b",\"spec\":");
        out.extend_from_slice(spec);
    }
    out.extend_from_slice(b",\"at\":");
    write_json(&mut out, &at)?;
    out.push(b'}');
    Ok(Bytes::from(out))
}

/// What [`Service::replay`] found for a request's `clientToken`.
pub(super) enum Replay {
    /// The token answered this request before: its answer again.
    Answer(Output),
    /// The request is new (no token, or a token not used yet or expired):
    /// the write goes on, under this compare on the token's record.
    Fresh(Option<Compare>),
}

impl Service {
    /// Replays an earlier answer for the same `clientToken`, or refuses a
    /// token reused for a different request. The first answer may still be
    /// on its way to disk: the caller syncs the store before sending a
    /// replay.
    ///
    /// Otherwise returns the compare that holds while the token's record
    /// stays as read (absent, or expired): the write that then remembers the
    /// token commits under it, so that two writers with one token (on two
    /// replicas, or in two meshes, which take no common turn) never both
    /// win, and the loser replays or refuses on its retry.
    pub(super) async fn replay(
        &self,
        operation: &str,
        token: Option<&str>,
        request: &Fingerprint,
        id: &ResourceId,
        spec: Option<&[u8]>,
        ahead: &ReadAhead,
    ) -> Result<Replay, ApiError> {
        let member = id.kind.payload_member();
        let Some(token) = token else {
            return Ok(Replay::Fresh(None));
        };
        let key = keys::token(operation, token);
        let Some(kv) = self.store.get_latest_ahead(&key, ahead).await? else {
            return Ok(Replay::Fresh(Some(Compare::Absent(key))));
        };
        let record: TokenRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::Internal(format!("token record unreadable: {e}")))?;
        if now() - record.at > self.config.client_token_ttl.as_secs_f64() {
            // An expired token is forgotten: the request runs as a new one.
            let unchanged = Compare::ModRevision(key, kv.mod_revision);
            return Ok(Replay::Fresh(Some(unchanged)));
        }
        if !record.same_request(request) {
            return Err(ApiError::Conflict(format!(
                "clientToken {token} was already used with a different {operation} request"
            )));
        }
        Ok(Replay::Answer(Output::Payload {
            member,
            body: Bytes::from(record.answer(id, spec)?),
        }))
    }

    /// The op that remembers a `clientToken`'s request and what its answer
    /// needs besides the request (see [`TokenRecord`]): the answer's
    /// `metadata`, and its spec when the request carried none (`kept_spec`).
    pub(super) fn token_op(
        &self,
        operation: &str,
        token: Option<&str>,
        request: &Fingerprint,
        metadata: &[u8],
        kept_spec: Option<&[u8]>,
    ) -> Result<Option<Op>, ApiError> {
        let Some(token) = token else { return Ok(None) };
        Ok(Some(Op::Put(
            keys::token(operation, token),
            token_record(request, metadata, kept_spec, now())?,
        )))
    }

    /// Notes a token record just committed at `revision`, so that the
    /// records stay within their caps (see [`crate::ApiConfig::client_token_max_records`]).
    pub(super) async fn note_token(&self, op: Option<&Op>, revision: Revision) {
        let Some(Op::Put(key, value)) = op else {
            return;
        };
        let size = key.len() + value.len();
        if let Err(e) = self.tokens.note(&self.store, key, revision, size).await {
            // The write stands; the cap is applied at the next one.
            tracing::warn!(error = %e, "capping client token records failed");
        }
    }

    /// Deletes idempotency records older than the configured time to live, as
    /// seen at `at` (epoch seconds); returns how many went. Run periodically
    /// so that the tokens SDKs attach to every write do not pile up.
    pub async fn sweep_expired_tokens(&self, at: f64) -> Result<usize, ApiError> {
        let ttl = self.config.client_token_ttl.as_secs_f64();
        let result = self.store.range(Range::prefix(keys::TOKEN_PREFIX)).await?;
        let mut expired = Vec::new();
        for kv in &result.kvs {
            let stale = match serde_json::from_slice::<TokenAge>(&kv.value) {
                Ok(r) => at - r.at > ttl,
                Err(_) => true,
            };
            if stale {
                expired.push(kv);
            }
        }
        let removed = weft_store::delete_unchanged(&*self.store, &expired).await?;
        if removed > 0 {
            self.tokens.reset().await;
        }
        Ok(removed)
    }

    /// How many `clientToken` records the cap knows of, and their bytes
    /// (keys included); `(0, 0)` until the first write with a token.
    pub async fn token_usage(&self) -> (usize, usize) {
        self.tokens.usage().await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_model::kind::Kind;

    #[test]
    fn a_token_record_matches_its_request_by_digest() {
        let json = r#"{"meshName":"m","spec":{"a":"x\"y"}}"#;
        let fingerprint = Fingerprint::new(json.to_string());
        let other = Fingerprint::new(r#"{"meshName":"other"}"#.to_string());
        let stored = format!(
            r#"{{"request":"sha256:{}","metadata":{{}},"at":1}}"#,
            fingerprint.digest
        );
        let record: TokenRecord = serde_json::from_str(&stored).unwrap();
        assert!(record.same_request(&fingerprint), "{stored}");
        assert!(!record.same_request(&other), "{stored}");
        // The digest is SHA-256 in lowercase hex.
        assert_eq!(
            Fingerprint::new(String::new()).digest,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_record_without_the_sha256_prefix_matches_no_request() {
        let fingerprint = Fingerprint::new("{}".to_string());
        let stored = format!(r#"{{"request":"{}","at":1}}"#, fingerprint.digest);
        let record: TokenRecord = serde_json::from_str(&stored).unwrap();
        assert!(!record.same_request(&fingerprint));
    }

    #[test]
    fn the_fingerprint_of_a_request_leaves_out_its_client_token() {
        let a = json!({"meshName": "m", "spec": {}, "clientToken": "t1"});
        let b = json!({"meshName": "m", "spec": {}, "clientToken": "t2"});
        let none = json!({"meshName": "m", "spec": {}});
        let other = json!({"meshName": "n", "spec": {}, "clientToken": "t1"});
        let digest = |v: &Value| Fingerprint::of(v).unwrap().digest;
        assert_eq!(digest(&a), digest(&b));
        assert_eq!(digest(&a), digest(&none));
        assert_ne!(digest(&a), digest(&other));
        // The digest is of the input's JSON as serde_json writes it.
        assert_eq!(
            digest(&none),
            Fingerprint::new(r#"{"meshName":"m","spec":{}}"#.to_string()).digest
        );
    }

    #[test]
    fn a_written_token_record_reads_back_with_its_request_metadata_and_time() {
        let request = Fingerprint::new("{}".to_string());
        let bytes = token_record(&request, br#"{"version":1}"#, None, 12.5).unwrap();
        let record: TokenRecord = serde_json::from_slice(&bytes).unwrap();
        assert!(record.same_request(&request));
        assert_eq!(record.metadata.unwrap().get(), r#"{"version":1}"#);
        assert!(record.spec.is_none());
        assert_eq!(record.at, 12.5);
        let kept = token_record(&request, b"{}", Some(br#"{"egressFilter":{}}"#), 1.0).unwrap();
        let record: TokenRecord = serde_json::from_slice(&kept).unwrap();
        assert_eq!(record.spec.unwrap().get(), r#"{"egressFilter":{}}"#);
        let age: TokenAge = serde_json::from_slice(&kept).unwrap();
        assert_eq!(age.at, 1.0);
    }

    #[test]
    fn a_replayed_answer_has_the_kept_spec_else_the_retried_request_s() {
        let id = ResourceId::mesh("m");
        let request = Fingerprint::new("{}".to_string());
        let answer = |kept: Option<&[u8]>, retried: Option<&[u8]>| {
            let bytes = token_record(&request, br#"{"version":2}"#, kept, 1.0).unwrap();
            let record: TokenRecord = serde_json::from_slice(&bytes).unwrap();
            let data: Value =
                serde_json::from_slice(&record.answer(&id, retried).unwrap()).unwrap();
            assert_eq!(data["metadata"], json!({"version": 2}));
            assert_eq!(data["meshName"], "m");
            data["spec"].clone()
        };
        assert_eq!(
            answer(Some(b"{\"k\":1}"), Some(b"{\"r\":1}")),
            json!({"k": 1})
        );
        assert_eq!(answer(None, Some(b"{\"r\":1}")), json!({"r": 1}));
        assert_eq!(answer(None, None), json!({}));
    }

    #[test]
    fn a_record_without_metadata_answers_empty_metadata() {
        let record: TokenRecord = serde_json::from_str(r#"{"request":"sha256:x","at":0}"#).unwrap();
        let id = ResourceId::in_mesh(Kind::VirtualNode, "m", "n");
        let data: Value = serde_json::from_slice(&record.answer(&id, None).unwrap()).unwrap();
        assert_eq!(data["metadata"], json!({}));
        assert_eq!(data["virtualNodeName"], "n");
    }

    #[test]
    fn a_record_without_a_time_counts_as_written_at_the_epoch() {
        let age: TokenAge = serde_json::from_str(r#"{"request":"sha256:x"}"#).unwrap();
        assert_eq!(age.at, 0.0);
    }
}
