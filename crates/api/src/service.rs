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

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use weft_model::shapes::{
    GatewayRouteSpec, RouteSpec, TagRef, VirtualServiceProvider, VirtualServiceSpec,
};
use weft_model::Arn;
use weft_store::{Compare, KeyValue, Op, Range, Revision, SharedStore, Txn, TxnOutcome};

use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::ledger::{Caps, Ledger};
use crate::throttle::{Admission, ClientId, Limits, Permit};
use weft_model::keys;
use weft_model::kind::{Action, Kind, ResourceId};
use weft_model::StoredRecord as Record;

/// How often a write re-reads and retries after losing a race in its mesh.
const MAX_ATTEMPTS: usize = 64;
/// Default and maximum page size of List operations.
const DEFAULT_LIMIT: usize = 100;
/// Default page size of ListTagsForResource (the model's TagsLimit maximum).
const DEFAULT_TAGS_LIMIT: usize = 50;
/// Tags per resource, as the model's TagList allows.
const MAX_TAGS: usize = 50;

/// The part of a stored record a List answer needs, borrowed from the
/// stored bytes: each member is kept as its raw JSON text and copied to the
/// answer as is. The spec and tags are skipped unparsed.
#[derive(Deserialize)]
struct Listed<'a> {
    #[serde(borrow)]
    data: ListedData<'a>,
}

/// Names and metadata of a stored resource, as raw JSON; every other member
/// is skipped.
#[derive(Deserialize)]
struct ListedData<'a> {
    #[serde(rename = "meshName", borrow)]
    mesh_name: Option<&'a RawValue>,
    #[serde(rename = "virtualNodeName", borrow)]
    virtual_node_name: Option<&'a RawValue>,
    #[serde(rename = "virtualServiceName", borrow)]
    virtual_service_name: Option<&'a RawValue>,
    #[serde(rename = "virtualRouterName", borrow)]
    virtual_router_name: Option<&'a RawValue>,
    #[serde(rename = "routeName", borrow)]
    route_name: Option<&'a RawValue>,
    #[serde(rename = "virtualGatewayName", borrow)]
    virtual_gateway_name: Option<&'a RawValue>,
    #[serde(rename = "gatewayRouteName", borrow)]
    gateway_route_name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: RawMembers<'a>,
}

/// The members of a JSON object in their stored order, each value as raw
/// JSON text borrowed from the input.
#[derive(Default)]
struct RawMembers<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// A member name, borrowed unless it had to be unescaped.
struct MemberName<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for MemberName<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MemberName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MemberName(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawMembers<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawMembers<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((name, value)) =
                    map.next_entry::<MemberName<'de>, &'de RawValue>()?
                {
                    members.push((name.0, value));
                }
                Ok(RawMembers(members))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> ListedData<'a> {
    /// The name member called `member` (`virtualNodeName`, …), if present.
    fn name(&self, member: &str) -> Option<&'a RawValue> {
        match member {
            "meshName" => self.mesh_name,
            "virtualNodeName" => self.virtual_node_name,
            "virtualServiceName" => self.virtual_service_name,
            "virtualRouterName" => self.virtual_router_name,
            "routeName" => self.route_name,
            "virtualGatewayName" => self.virtual_gateway_name,
            "gatewayRouteName" => self.gateway_route_name,
            _ => None,
        }
    }
}

/// What a `clientToken` remembers: the request it came with (see
/// [`Fingerprint`]) and what the answer needs beyond the request, as stored
/// JSON `{"request": "sha256:…", "metadata": {…}, "at": …}`, with `"spec"`
/// only when the answer's spec is not the request's (an UpdateMesh without
/// one keeps the mesh's); read borrowing the stored bytes. A replay rebuilds
/// the answer from the resource's names, this metadata and the retried
/// request's spec (the same request: its digest matched), so a record is a
/// few hundred bytes whatever the spec's size.
///
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
}

/// A request as a `clientToken` remembers it: the SHA-256 of the input's
/// JSON without its `clientToken`. Records store only the digest: a token
/// record is written with every create and update, and the request itself
/// would be a third of its bytes, all of it logged, synced and compacted.
struct Fingerprint {
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
}

/// When a token record was written; the rest of it is skipped.
#[derive(Deserialize)]
struct TokenAge {
    #[serde(default)]
    at: f64,
}

/// A stored record split into its members, each kept as raw JSON borrowed
/// from the stored bytes: what a write that changes a few members needs.
#[derive(Deserialize)]
struct StoredParts<'a> {
    #[serde(borrow)]
    data: RawMembers<'a>,
    #[serde(borrow, default)]
    tags: Option<&'a RawValue>,
}

impl<'a> RawMembers<'a> {
    /// The last member called `name`, as a JSON map would keep it.
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// The JSON text of `value`.
fn json_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Internal(format!("cannot encode: {e}")))
}

/// Writes a JSON object whose member values are already JSON text, members
/// in name order (the order a `serde_json` map serializes in, so records
/// read the same whichever path wrote them); of members with the same name
/// the last one given wins.
fn write_object(out: &mut Vec<u8>, mut members: Vec<(&str, &[u8])>) -> Result<(), ApiError> {
    // Stable: equal names keep the order they were given in.
    members.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    let mut first = true;
    for (i, (name, value)) in members.iter().enumerate() {
        if members.get(i + 1).is_some_and(|next| next.0 == *name) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_json(out, name)?;
        out.push(b':');
        out.extend_from_slice(value);
    }
    out.push(b'}');
    Ok(())
}

/// A stored record (`StoredRecord`'s JSON) from its members' JSON text.
fn record_bytes(data: &[u8], tags: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + tags.len() + 20);
    out.extend_from_slice(b"{\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b",\"tags\":");
    out.extend_from_slice(tags);
    out.push(b'}');
    Bytes::from(out)
}

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

/// Appends `value` to `out` as JSON.
fn write_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), ApiError> {
    serde_json::to_writer(out, value)
        .map_err(|e| ApiError::Internal(format!("cannot encode answer: {e}")))
}

/// The `data` member of a stored record as its raw JSON text, sharing the
/// stored bytes.
fn stored_data(kv: &KeyValue) -> Result<Bytes, ApiError> {
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let data: Data = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("stored record {} is unreadable: {e}", kv.key)))?;
    Ok(kv.value.slice_ref(data.data.get().as_bytes()))
}

/// How many resources of each kind a mesh holds: the value of the mesh's
/// guard key, rewritten by every write in the mesh (which CASes the guard
/// anyway), so the counts always match the keys, even across a crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MeshCounts {
    #[serde(default)]
    vn: u64,
    #[serde(default)]
    vs: u64,
    #[serde(default)]
    vr: u64,
    #[serde(default)]
    rt: u64,
    #[serde(default)]
    vg: u64,
    #[serde(default)]
    gr: u64,
}

impl MeshCounts {
    /// The counts a guard value holds; `None` for a guard written before
    /// counts existed (empty) or one that cannot be read.
    fn decode(value: &[u8]) -> Option<MeshCounts> {
        if value.is_empty() {
            return None;
        }
        serde_json::from_slice(value).ok()
    }

    /// The count of `kind` (meshes are not counted here: 0).
    fn of(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Mesh => 0,
            Kind::VirtualNode => self.vn,
            Kind::VirtualService => self.vs,
            Kind::VirtualRouter => self.vr,
            Kind::Route => self.rt,
            Kind::VirtualGateway => self.vg,
            Kind::GatewayRoute => self.gr,
        }
    }

    fn of_mut(&mut self, kind: Kind) -> &mut u64 {
        match kind {
            // Not counted; a scratch slot keeps the match total.
            Kind::Mesh | Kind::VirtualNode => &mut self.vn,
            Kind::VirtualService => &mut self.vs,
            Kind::VirtualRouter => &mut self.vr,
            Kind::Route => &mut self.rt,
            Kind::VirtualGateway => &mut self.vg,
            Kind::GatewayRoute => &mut self.gr,
        }
    }

    /// Every resource in the mesh.
    fn total(&self) -> u64 {
        self.vn + self.vs + self.vr + self.rt + self.vg + self.gr
    }
}

/// A mesh's guard as one write read it.
struct Guard {
    key: String,
    /// Holds while nothing in the mesh changed since the read.
    compare: Compare,
    /// The mesh's resource counts at the read.
    counts: MeshCounts,
}

impl Guard {
    /// The op that rewrites the guard with `counts`: every write in the
    /// mesh includes it, so that concurrent writes conflict.
    fn bump(&self, counts: MeshCounts) -> Result<Op, ApiError> {
        Ok(Op::Put(self.key.clone(), encode(&counts)?))
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

/// How many locks the meshes' writers are spread over.
const WRITE_LOCKS: usize = 64;

/// At most this many serialized references are kept; past it the cache
/// starts over (entries of deleted resources would otherwise pile up).
const REF_CACHE_MAX: usize = 100_000;

/// The serialized `…Ref` of each listed resource, by store key, with the
/// `mod_revision` of the record it was built from. A revision names one
/// write, so an entry whose revision matches the record read is exact; a
/// changed record simply misses. Spares List re-reading every record's
/// spec (the bulk of its bytes) on each page.
#[derive(Default)]
struct RefCache {
    map: Mutex<HashMap<String, (Revision, Bytes)>>,
}

impl RefCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Revision, Bytes)>> {
        // Every step leaves the map valid, so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached reference of each record, where it is current.
    fn get(&self, kvs: &[KeyValue]) -> Vec<Option<Bytes>> {
        let map = self.lock();
        kvs.iter()
            .map(|kv| match map.get(kv.key.as_str()) {
                Some((revision, bytes)) if *revision == kv.mod_revision => Some(bytes.clone()),
                _ => None,
            })
            .collect()
    }

    /// Appends the references of `kvs`, comma-separated, to `out` if every
    /// one is cached and current; otherwise leaves `out` as it was.
    fn write_all(&self, kvs: &[KeyValue], out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let map = self.lock();
        for (i, kv) in kvs.iter().enumerate() {
            match map.get(kv.key.as_str()) {
                Some((revision, bytes)) if *revision == kv.mod_revision => {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(bytes);
                }
                _ => {
                    out.truncate(start);
                    return false;
                }
            }
        }
        true
    }

    fn insert(&self, fresh: Vec<(String, Revision, Bytes)>) {
        let mut map = self.lock();
        if map.len() + fresh.len() > REF_CACHE_MAX {
            map.clear();
        }
        for (key, revision, bytes) in fresh {
            map.insert(key, (revision, bytes));
        }
    }

    fn remove(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// The current time in epoch seconds.
pub fn now() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // App Mesh timestamps carry millisecond precision.
    (d.as_millis() as f64) / 1000.0
}

fn str_member<'a>(input: &'a Value, member: &str) -> Result<&'a str, ApiError> {
    input
        .get(member)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest(format!("Value at '{member}' must not be null")))
}

fn parse_spec<T: serde::de::DeserializeOwned>(spec: &Value) -> Result<T, ApiError> {
    T::deserialize(spec).map_err(|e| ApiError::BadRequest(format!("spec: {e}")))
}

fn decode_record(kv: &KeyValue) -> Result<Record, ApiError> {
    serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::Internal(format!("stored record {} is unreadable: {e}", kv.key)))
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("cannot encode record: {e}")))
}

/// Every virtual node a route sends traffic to.
fn route_targets(spec: &RouteSpec) -> Vec<&str> {
    let mut out = Vec::new();
    for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
        out.extend(
            http.action
                .weighted_targets
                .iter()
                .map(|t| t.virtual_node.as_str()),
        );
    }
    if let Some(g) = &spec.grpc_route {
        out.extend(
            g.action
                .weighted_targets
                .iter()
                .map(|t| t.virtual_node.as_str()),
        );
    }
    if let Some(t) = &spec.tcp_route {
        out.extend(
            t.action
                .weighted_targets
                .iter()
                .map(|t| t.virtual_node.as_str()),
        );
    }
    out
}

/// The HTTP retry events App Mesh accepts (the model types them as free strings).
/// See the user guide's routes page and Envoy's `x-envoy-retry-on` values.
pub const HTTP_RETRY_EVENTS: &[&str] = &[
    "server-error",
    "gateway-error",
    "client-error",
    "stream-error",
];

/// The first HTTP retry event of a route that App Mesh does not know, if any.
fn unknown_http_retry_events(spec: &RouteSpec) -> Option<String> {
    let mut events: Vec<&String> = Vec::new();
    for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
        if let Some(p) = &http.retry_policy {
            events.extend(p.http_retry_events.iter().flatten());
        }
    }
    if let Some(p) = spec
        .grpc_route
        .as_ref()
        .and_then(|g| g.retry_policy.as_ref())
    {
        events.extend(p.http_retry_events.iter().flatten());
    }
    events
        .into_iter()
        .find(|e| !HTTP_RETRY_EVENTS.contains(&e.as_str()))
        .map(|e| format!("\"{e}\""))
}

/// Whether some route type's weighted targets all have weight 0.
fn zero_total_weight(spec: &RouteSpec) -> bool {
    let mut sums = Vec::new();
    for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
        sums.push(
            http.action
                .weighted_targets
                .iter()
                .map(|t| i64::from(t.weight))
                .sum::<i64>(),
        );
    }
    if let Some(g) = &spec.grpc_route {
        sums.push(
            g.action
                .weighted_targets
                .iter()
                .map(|t| i64::from(t.weight))
                .sum(),
        );
    }
    if let Some(t) = &spec.tcp_route {
        sums.push(
            t.action
                .weighted_targets
                .iter()
                .map(|t| i64::from(t.weight))
                .sum(),
        );
    }
    sums.contains(&0)
}

/// Number of weighted targets of each route type set on a route.
fn route_types(spec: &RouteSpec) -> Vec<usize> {
    let mut out = Vec::new();
    for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
        out.push(http.action.weighted_targets.len());
    }
    if let Some(g) = &spec.grpc_route {
        out.push(g.action.weighted_targets.len());
    }
    if let Some(t) = &spec.tcp_route {
        out.push(t.action.weighted_targets.len());
    }
    out
}

/// The virtual services a gateway route sends traffic to, one per route type set.
fn gateway_route_targets(spec: &GatewayRouteSpec) -> Vec<&str> {
    let mut out = Vec::new();
    for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
        out.push(
            http.action
                .target
                .virtual_service
                .virtual_service_name
                .as_str(),
        );
    }
    if let Some(g) = &spec.grpc_route {
        out.push(
            g.action
                .target
                .virtual_service
                .virtual_service_name
                .as_str(),
        );
    }
    out
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
            write_locks: (0..WRITE_LOCKS)
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
        let result = self.dispatch(operation, input).await;
        if result.is_err() {
            // The answer may rest on a write not yet durable (writes read the
            // latest state): wait for it, so no answer outruns the disk.
            self.store.sync().await?;
        }
        result
    }

    async fn dispatch(&self, operation: &str, input: Value) -> Result<Output, ApiError> {
        match operation {
            "TagResource" => return self.tag_resource(&input).await.map(Output::Value),
            "UntagResource" => return self.untag_resource(&input).await.map(Output::Value),
            "ListTagsForResource" => return self.list_tags(&input).await.map(Output::Value),
            _ => {}
        }
        let (action, kind) = Kind::parse_operation(operation)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown operation {operation}")))?;
        self.check_owner(&input)?;
        match action {
            Action::List => self.list(kind, &input).await,
            action => {
                let id = self.resource_id(kind, &input)?;
                match action {
                    Action::Create => self.create(operation, &id, &input).await,
                    Action::Describe => self.describe(&id).await,
                    Action::Update => self.update(operation, &id, &input).await,
                    _ => self.delete(&id).await.map(Output::Value),
                }
            }
        }
    }

    /// Whether the store can serve: `Err` while writes fail for a reason
    /// that can pass (degraded: reads are served, writes tried again) and
    /// once the disk failed for good (the store then refuses everything
    /// until a restart), so that `GET /healthz` tells a supervisor which.
    pub async fn health(&self) -> Result<(), ApiError> {
        match self.store.health() {
            weft_store::StoreHealth::Ok => {}
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
        }
        self.store.revision().await?;
        Ok(())
    }

    fn check_owner(&self, input: &Value) -> Result<(), ApiError> {
        // Weft serves one account; a mesh "shared from" another account does
        // not exist here.
        match input.get("meshOwner").and_then(Value::as_str) {
            Some(owner) if owner != self.config.account => Err(ApiError::NotFound(format!(
                "No mesh owned by account {owner} is shared with this account"
            ))),
            _ => Ok(()),
        }
    }

    fn resource_id(&self, kind: Kind, input: &Value) -> Result<ResourceId, ApiError> {
        let mesh = str_member(input, "meshName")?;
        let parent = match kind.parent() {
            Some(p) => Some(str_member(input, p.name_member())?.to_string()),
            None => None,
        };
        Ok(ResourceId {
            kind,
            mesh: mesh.to_string(),
            parent,
            name: str_member(input, kind.name_member())?.to_string(),
        })
    }

    fn arn(&self, id: &ResourceId) -> String {
        Arn {
            partition: self.config.partition.clone(),
            region: self.config.region.clone(),
            account: self.config.account.clone(),
            resource: id.path(),
        }
        .to_string()
    }

    /// Reads a resource for a write: the latest accepted state (see
    /// [`weft_store::Store::get_latest`]); the write's commit makes it durable.
    async fn load(&self, id: &ResourceId) -> Result<Option<(Record, KeyValue)>, ApiError> {
        match self.store.get_latest(&keys::resource(id)).await? {
            Some(kv) => Ok(Some((decode_record(&kv)?, kv))),
            None => Ok(None),
        }
    }

    async fn exists(&self, id: &ResourceId) -> Result<bool, ApiError> {
        Ok(self.store.get_latest(&keys::resource(id)).await?.is_some())
    }

    /// Reads a resource for an answer: only durable state.
    async fn load_durable(&self, id: &ResourceId) -> Result<Option<Record>, ApiError> {
        match self.store.get(&keys::resource(id)).await? {
            Some(kv) => Ok(Some(decode_record(&kv)?)),
            None => Ok(None),
        }
    }

    async fn require(&self, id: &ResourceId) -> Result<(), ApiError> {
        if self.exists(id).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("{} not found", id.describe())))
        }
    }

    /// Reads the mesh's guard: the compare every write in the mesh commits
    /// under, and the mesh's resource counts it carries. A guard written
    /// before counts existed (empty) is counted once here; the write's
    /// [`Guard::bump`] then stores the counts.
    async fn guard(&self, mesh: &str) -> Result<Guard, ApiError> {
        let key = keys::guard(mesh);
        let (compare, counts) = match self.store.get_latest(&key).await? {
            Some(kv) => (
                Compare::ModRevision(key.clone(), kv.mod_revision),
                MeshCounts::decode(&kv.value),
            ),
            None => (Compare::Absent(key.clone()), None),
        };
        let counts = match counts {
            Some(counts) => counts,
            None => self.count_mesh(mesh).await?,
        };
        Ok(Guard {
            key,
            compare,
            counts,
        })
    }

    /// Counts the resources of a mesh, kind by kind, in the latest state.
    /// Consistent with a guard read just before: any write in between
    /// changes the guard, so a commit under it fails and the write retries.
    async fn count_mesh(&self, mesh: &str) -> Result<MeshCounts, ApiError> {
        let mut counts = MeshCounts::default();
        for kind in Kind::ALL {
            if kind != Kind::Mesh {
                let n = self.count(keys::scope_prefix(kind, mesh, None)).await?;
                *counts.of_mut(kind) = n as u64;
            }
        }
        Ok(counts)
    }

    /// Replays an earlier answer for the same `clientToken`, or refuses a
    /// token reused for a different request. `member` is the output's
    /// payload member. The first answer may still be on its way to disk: the
    /// caller syncs the store before sending a replay.
    async fn replay(
        &self,
        operation: &str,
        token: Option<&str>,
        request: &Fingerprint,
        id: &ResourceId,
        spec: Option<&[u8]>,
    ) -> Result<Option<Output>, ApiError> {
        let member = id.kind.payload_member();
        let Some(token) = token else { return Ok(None) };
        let Some(kv) = self
            .store
            .get_latest(&keys::token(operation, token))
            .await?
        else {
            return Ok(None);
        };
        let record: TokenRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| ApiError::Internal(format!("token record unreadable: {e}")))?;
        if now() - record.at > self.config.client_token_ttl.as_secs_f64() {
            // An expired token is forgotten: the request runs as a new one.
            return Ok(None);
        }
        if !record.same_request(request) {
            return Err(ApiError::Conflict(format!(
                "clientToken {token} was already used with a different {operation} request"
            )));
        }
        let metadata = record.metadata.map_or("{}", RawValue::get).as_bytes();
        let spec = match (record.spec, spec) {
            (Some(kept), _) => kept.get().as_bytes(),
            (None, Some(spec)) => spec,
            (None, None) => b"{}",
        };
        Ok(Some(Output::Payload {
            member,
            body: Bytes::from(Self::data_bytes(id, metadata, spec)?),
        }))
    }

    /// The op that remembers a `clientToken`'s request and what its answer
    /// needs besides the request (see [`TokenRecord`]): the answer's
    /// `metadata`, and its spec when the request carried none (`kept_spec`).
    fn token_op(
        &self,
        operation: &str,
        token: Option<&str>,
        request: &Fingerprint,
        metadata: &[u8],
        kept_spec: Option<&[u8]>,
    ) -> Result<Option<Op>, ApiError> {
        let Some(token) = token else { return Ok(None) };
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
        write_json(&mut out, &now())?;
        out.push(b'}');
        Ok(Some(Op::Put(
            keys::token(operation, token),
            Bytes::from(out),
        )))
    }

    /// Notes a token record just committed at `revision`, so that the
    /// records stay within their caps (see [`ApiConfig::client_token_max_records`]).
    async fn note_token(&self, op: Option<&Op>, revision: Revision) {
        let Some(Op::Put(key, value)) = op else {
            return;
        };
        let size = key.len() + value.len();
        if let Err(e) = self.tokens.note(&self.store, key, revision, size).await {
            // The write stands; the cap is applied at the next one.
            tracing::warn!(error = %e, "capping client token records failed");
        }
    }

    /// Takes the turn of writers in `mesh`: held from the read of the mesh's
    /// guard to the decision of the write's transaction (not its fsync), so
    /// that writers in one mesh follow each other instead of racing and
    /// retrying. Correctness does not rest on it — the guard's compare does —
    /// it only avoids wasted attempts. Meshes share a fixed set of locks.
    async fn lock_mesh(&self, mesh: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        mesh.hash(&mut hasher);
        let slot = (hasher.finish() % self.write_locks.len() as u64) as usize;
        self.write_locks[slot].lock().await
    }

    /// Commits a write decided under `turn` (see [`Service::lock_mesh`]):
    /// releases the turn as soon as the transaction is decided, then waits
    /// until it is durable. The revision written at; `None` if a compare
    /// failed (nothing written).
    async fn commit_turn(
        &self,
        turn: tokio::sync::MutexGuard<'_, ()>,
        compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> Result<Option<Revision>, ApiError> {
        let (outcome, durable) = self.store.txn_deferred(Txn { compares, ops }).await?;
        drop(turn);
        match outcome {
            TxnOutcome::Committed(revision) => {
                durable.await?;
                Ok(Some(revision))
            }
            // Retried at once: the retry's own commit waits for durability.
            TxnOutcome::Conflict(_) => Ok(None),
        }
    }

    fn contention(id: &ResourceId) -> ApiError {
        ApiError::TooManyRequests(format!(
            "Too many concurrent changes in mesh \"{}\"; retry",
            id.mesh
        ))
    }

    async fn count(&self, prefix: String) -> Result<usize, ApiError> {
        Ok(self.store.count_latest(Range::prefix(prefix)).await?)
    }

    fn quota(&self, kind: Kind) -> usize {
        let q = &self.config.quotas;
        match kind {
            Kind::Mesh => q.meshes,
            Kind::VirtualNode => q.virtual_nodes_per_mesh,
            Kind::VirtualService => q.virtual_services_per_mesh,
            Kind::VirtualRouter => q.virtual_routers_per_mesh,
            Kind::Route => q.routes_per_virtual_router,
            Kind::VirtualGateway => q.virtual_gateways_per_mesh,
            Kind::GatewayRoute => q.gateway_routes_per_virtual_gateway,
        }
    }

    /// Checks what a spec refers to and the per-spec quotas.
    async fn check_spec(&self, id: &ResourceId, spec: &Value) -> Result<(), ApiError> {
        match id.kind {
            Kind::VirtualService => {
                let spec: VirtualServiceSpec = parse_spec(spec)?;
                match &spec.provider {
                    Some(VirtualServiceProvider::VirtualNode(p)) => {
                        self.require(&ResourceId::in_mesh(
                            Kind::VirtualNode,
                            &id.mesh,
                            &p.virtual_node_name,
                        ))
                        .await
                    }
                    Some(VirtualServiceProvider::VirtualRouter(p)) => {
                        self.require(&ResourceId::in_mesh(
                            Kind::VirtualRouter,
                            &id.mesh,
                            &p.virtual_router_name,
                        ))
                        .await
                    }
                    None => Ok(()),
                }
            }
            Kind::Route => {
                let spec: RouteSpec = parse_spec(spec)?;
                let types = route_types(&spec);
                if types.len() != 1 {
                    return Err(ApiError::BadRequest(format!(
                        "Value at 'spec' failed to satisfy constraint: exactly one of \
                         [grpcRoute, http2Route, httpRoute, tcpRoute] must be set, found {}",
                        types.len()
                    )));
                }
                let limit = self.config.quotas.weighted_targets_per_route;
                if types.iter().any(|n| *n > limit) {
                    return Err(ApiError::LimitExceeded(format!(
                        "A route may have at most {limit} weighted targets"
                    )));
                }
                if let Some(events) = unknown_http_retry_events(&spec) {
                    return Err(ApiError::BadRequest(format!(
                        "Value at 'spec' failed to satisfy constraint: httpRetryEvents must be \
                         among [{}], got {events}",
                        HTTP_RETRY_EVENTS.join(", ")
                    )));
                }
                if zero_total_weight(&spec) {
                    // Envoy rejects weighted clusters whose weights add up to 0.
                    return Err(ApiError::BadRequest(
                        "Value at 'spec' failed to satisfy constraint: the weights of a \
                         route's weightedTargets must not all be 0"
                            .into(),
                    ));
                }
                for node in route_targets(&spec) {
                    self.require(&ResourceId::in_mesh(Kind::VirtualNode, &id.mesh, node))
                        .await?;
                }
                Ok(())
            }
            Kind::GatewayRoute => {
                let spec: GatewayRouteSpec = parse_spec(spec)?;
                let targets = gateway_route_targets(&spec);
                if targets.len() != 1 {
                    return Err(ApiError::BadRequest(format!(
                        "Value at 'spec' failed to satisfy constraint: exactly one of \
                         [grpcRoute, http2Route, httpRoute] must be set, found {}",
                        targets.len()
                    )));
                }
                for service in targets {
                    self.require(&ResourceId::in_mesh(
                        Kind::VirtualService,
                        &id.mesh,
                        service,
                    ))
                    .await?;
                }
                Ok(())
            }
            Kind::VirtualNode => {
                // Only the count matters here (the model's validation has
                // checked every backend), so the spec is not decoded into
                // its typed form (that decoding was ~2% of the server's CPU
                // per UpdateVirtualNode).
                let n = spec
                    .get("backends")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                let limit = self.config.quotas.backends_per_virtual_node;
                if n > limit {
                    return Err(ApiError::LimitExceeded(format!(
                        "A virtual node may have at most {limit} backends, got {n}"
                    )));
                }
                Ok(())
            }
            Kind::Mesh | Kind::VirtualRouter | Kind::VirtualGateway => Ok(()),
        }
    }

    fn output(&self, kind: Kind, data: Value) -> Value {
        json!({ kind.payload_member(): data })
    }

    fn tags_from_input(input: &Value) -> Result<Vec<TagRef>, ApiError> {
        let tags: Vec<TagRef> = match input.get("tags") {
            Some(t) if !t.is_null() => Vec::<TagRef>::deserialize(t)
                .map_err(|e| ApiError::BadRequest(format!("tags: {e}")))?,
            _ => Vec::new(),
        };
        let mut seen = std::collections::HashSet::new();
        for t in &tags {
            if !seen.insert(t.key.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "Duplicate tag key \"{}\"",
                    t.key
                )));
            }
        }
        Ok(tags)
    }

    /// The request as an idempotency record remembers it: the input's JSON
    /// without its `clientToken` (written without copying the input).
    fn fingerprint(input: &Value) -> Result<Fingerprint, ApiError> {
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

    /// Creates a resource. The record, the answer and the idempotency record
    /// are written as JSON text straight from the input's spec: no copy of
    /// the spec as a tree, one serialization.
    async fn create(&self, op: &str, id: &ResourceId, input: &Value) -> Result<Output, ApiError> {
        let token = input.get("clientToken").and_then(Value::as_str);
        let request = Self::fingerprint(input)?;
        let tags = json_bytes(&Self::tags_from_input(input)?)?;
        let empty = json!({});
        let spec = input.get("spec").filter(|s| !s.is_null()).unwrap_or(&empty);
        let spec_json = json_bytes(spec)?;
        let member = id.kind.payload_member();
        let key = keys::resource(id);
        // What does not depend on the mesh's state (the new record, its
        // answer, the idempotency record) is built before taking the turn:
        // writers of a mesh wait for each other only while they read and
        // decide.
        let (data, metadata) = self.new_data(id, &spec_json)?;
        let data = Bytes::from(data);
        let record = record_bytes(&data, &tags);
        let token_op = self.token_op(op, token, &request, &metadata, None)?;
        for _ in 0..MAX_ATTEMPTS {
            let turn = self.lock_mesh(&id.mesh).await;
            let guard = self.guard(&id.mesh).await?;
            if let Some(out) = self
                .replay(op, token, &request, id, Some(&spec_json))
                .await?
            {
                drop(turn);
                self.store.sync().await?;
                return Ok(out);
            }
            if id.kind != Kind::Mesh {
                self.require(&ResourceId::mesh(&id.mesh)).await?;
            }
            if let Some(parent) = id.parent_id() {
                self.require(&parent).await?;
            }
            if self.exists(id).await? {
                return Err(ApiError::Conflict(format!(
                    "{} already exists",
                    id.describe()
                )));
            }
            // Read before the count, so that a create counted in between
            // fails this write's compare.
            let meshes_guard = match id.kind {
                Kind::Mesh => Some(match self.store.get_latest(keys::MESHES_GUARD).await? {
                    Some(kv) => Compare::ModRevision(kv.key, kv.mod_revision),
                    None => Compare::Absent(keys::MESHES_GUARD.to_string()),
                }),
                _ => None,
            };
            let quota = self.quota(id.kind);
            let used = match id.kind {
                // Meshes, and routes of one router or gateway, are counted
                // in their (small) scope; the rest come from the guard.
                Kind::Mesh | Kind::Route | Kind::GatewayRoute => {
                    let scope = keys::scope_prefix(id.kind, &id.mesh, id.parent.as_deref());
                    self.count(scope).await?
                }
                kind => usize::try_from(guard.counts.of(kind)).unwrap_or(usize::MAX),
            };
            if used >= quota {
                return Err(ApiError::LimitExceeded(format!(
                    "{} quota of {quota} reached for {}",
                    id.kind.plural(),
                    match id.parent_id() {
                        Some(p) => p.describe(),
                        None if id.kind == Kind::Mesh => "this account".into(),
                        None => format!("mesh \"{}\"", id.mesh),
                    }
                )));
            }
            self.check_spec(id, spec).await?;
            let mut counts = guard.counts;
            if id.kind != Kind::Mesh {
                *counts.of_mut(id.kind) += 1;
            }
            let mut ops = vec![Op::Put(key.clone(), record.clone()), guard.bump(counts)?];
            ops.extend(token_op.clone());
            let mut compares = vec![guard.compare, Compare::Absent(key.clone())];
            if let Some(compare) = meshes_guard {
                compares.push(compare);
                ops.push(Op::Put(keys::MESHES_GUARD.to_string(), Bytes::new()));
            }
            if let Some(revision) = self.commit_turn(turn, compares, ops).await? {
                self.note_token(token_op.as_ref(), revision).await;
                return Ok(Output::Payload { member, body: data });
            }
        }
        Err(Self::contention(id))
    }

    /// The `…Data` shape of a resource created now with spec `spec_json`,
    /// and its `metadata` member.
    fn new_data(&self, id: &ResourceId, spec_json: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ApiError> {
        let t = json_bytes(&now())?;
        let account = json_bytes(&self.config.account)?;
        let arn = json_bytes(&self.arn(id))?;
        let uid = json_bytes(&uuid::Uuid::new_v4().to_string())?;
        let mut metadata = Vec::with_capacity(256);
        write_object(
            &mut metadata,
            vec![
                ("arn", &arn),
                ("createdAt", &t),
                ("lastUpdatedAt", &t),
                ("meshOwner", &account),
                ("resourceOwner", &account),
                ("uid", &uid),
                ("version", b"1"),
            ],
        )?;
        let data = Self::data_bytes(id, &metadata, spec_json)?;
        Ok((data, metadata))
    }

    /// The `…Data` shape of an active resource from its parts, as JSON.
    fn data_bytes(id: &ResourceId, metadata: &[u8], spec_json: &[u8]) -> Result<Vec<u8>, ApiError> {
        let mesh = json_bytes(&id.mesh)?;
        let name = json_bytes(&id.name)?;
        let parent = match &id.parent {
            Some(p) => Some(json_bytes(p)?),
            None => None,
        };
        let mut members: Vec<(&str, &[u8])> = vec![("meshName", &mesh)];
        if let (Some(p), Some(parent)) = (id.kind.parent(), &parent) {
            members.push((p.name_member(), parent));
        }
        members.push((id.kind.name_member(), &name));
        members.push(("metadata", metadata));
        members.push(("spec", spec_json));
        members.push(("status", br#"{"status":"ACTIVE"}"#));
        let mut data = Vec::with_capacity(spec_json.len() + metadata.len() + 128);
        write_object(&mut data, members)?;
        Ok(data)
    }

    /// Answers with the stored `data` member as it is on disk: no parse
    /// into a JSON tree, no re-serialization.
    async fn describe(&self, id: &ResourceId) -> Result<Output, ApiError> {
        let Some(kv) = self.store.get(&keys::resource(id)).await? else {
            return Err(ApiError::NotFound(format!("{} not found", id.describe())));
        };
        Ok(Output::Payload {
            member: id.kind.payload_member(),
            body: stored_data(&kv)?,
        })
    }

    /// Updates a resource's spec. The stored record is rewritten from its
    /// raw members: only `spec`, `metadata.version` and
    /// `metadata.lastUpdatedAt` change, everything else is copied as is.
    async fn update(&self, op: &str, id: &ResourceId, input: &Value) -> Result<Output, ApiError> {
        let token = input.get("clientToken").and_then(Value::as_str);
        let request = Self::fingerprint(input)?;
        let new_spec = input.get("spec").filter(|s| !s.is_null());
        let new_spec_json = new_spec.map(json_bytes).transpose()?;
        let empty = json!({});
        let member = id.kind.payload_member();
        let key = keys::resource(id);
        for _ in 0..MAX_ATTEMPTS {
            let turn = self.lock_mesh(&id.mesh).await;
            let guard = self.guard(&id.mesh).await?;
            if let Some(out) = self
                .replay(op, token, &request, id, new_spec_json.as_deref())
                .await?
            {
                drop(turn);
                self.store.sync().await?;
                return Ok(out);
            }
            let Some(kv) = self.store.get_latest(&key).await? else {
                return Err(ApiError::NotFound(format!("{} not found", id.describe())));
            };
            let malformed = |e: serde_json::Error| {
                ApiError::Internal(format!("stored {} is malformed: {e}", id.describe()))
            };
            let stored: StoredParts = serde_json::from_slice(&kv.value).map_err(malformed)?;
            // UpdateMesh may leave out the spec: the mesh keeps the one it has.
            let (spec_json, kept_spec): (&[u8], Option<Value>) = match (&new_spec_json, new_spec) {
                (Some(json), Some(_)) => (json, None),
                _ => match stored.data.get("spec") {
                    Some(raw) => (
                        raw.get().as_bytes(),
                        Some(serde_json::from_str(raw.get()).map_err(malformed)?),
                    ),
                    None => (b"{}", Some(json!({}))),
                },
            };
            let spec = match (&kept_spec, new_spec) {
                (Some(kept), _) => kept,
                (None, Some(new)) => new,
                (None, None) => &empty,
            };
            self.check_spec(id, spec).await?;
            let mut members: Vec<(&str, &[u8])> = stored
                .data
                .0
                .iter()
                .map(|(name, value)| (name.as_ref(), value.get().as_bytes()))
                .collect();
            members.push(("spec", spec_json));
            let metadata = match stored.data.get("metadata") {
                Some(raw) if raw.get().starts_with('{') => {
                    let meta: RawMembers = serde_json::from_str(raw.get()).map_err(malformed)?;
                    let version = meta
                        .get("version")
                        .and_then(|v| serde_json::from_str::<Value>(v.get()).ok())
                        .and_then(|v| v.as_i64())
                        .unwrap_or(0);
                    let version = json_bytes(&(version + 1))?;
                    let t = json_bytes(&now())?;
                    let mut meta_members: Vec<(&str, &[u8])> = meta
                        .0
                        .iter()
                        .map(|(name, value)| (name.as_ref(), value.get().as_bytes()))
                        .collect();
                    meta_members.push(("version", &version));
                    meta_members.push(("lastUpdatedAt", &t));
                    let mut out = Vec::with_capacity(raw.get().len() + 16);
                    write_object(&mut out, meta_members)?;
                    Some(out)
                }
                _ => None,
            };
            if let Some(metadata) = &metadata {
                members.push(("metadata", metadata));
            }
            let mut data = Vec::with_capacity(kv.value.len() + spec_json.len());
            write_object(&mut data, members)?;
            let data = Bytes::from(data);
            let tags = stored.tags.map_or(&b"[]"[..], |t| t.get().as_bytes());
            let mut ops = vec![
                Op::Put(key.clone(), record_bytes(&data, tags)),
                guard.bump(guard.counts)?,
            ];
            let stored_metadata = stored.data.get("metadata").map(|m| m.get().as_bytes());
            let answered_metadata = metadata.as_deref().or(stored_metadata).unwrap_or(b"{}");
            let kept = kept_spec.is_some().then_some(spec_json);
            let token_op = self.token_op(op, token, &request, answered_metadata, kept)?;
            ops.extend(token_op.clone());
            let compares = vec![
                guard.compare,
                Compare::ModRevision(key.clone(), kv.mod_revision),
            ];
            if let Some(revision) = self.commit_turn(turn, compares, ops).await? {
                self.note_token(token_op.as_ref(), revision).await;
                return Ok(Output::Payload { member, body: data });
            }
        }
        Err(Self::contention(id))
    }

    /// Scans the records under a prefix.
    async fn scan(&self, prefix: String) -> Result<Vec<Record>, ApiError> {
        let result = self.store.range_latest(Range::prefix(prefix)).await?;
        result.kvs.iter().map(decode_record).collect()
    }

    /// Why `id` cannot be deleted yet, if something still uses it.
    async fn in_use(
        &self,
        id: &ResourceId,
        counts: &MeshCounts,
    ) -> Result<Option<String>, ApiError> {
        let mesh = &id.mesh;
        let named = |r: &Record, member: &str| {
            r.data
                .get(member)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match id.kind {
            Kind::Mesh => {
                let n = counts.total();
                Ok((n > 0).then(|| {
                    format!("Mesh \"{mesh}\" still contains {n} resources; delete them first")
                }))
            }
            Kind::VirtualNode => {
                for r in self
                    .scan(keys::scope_prefix(Kind::Route, mesh, None))
                    .await?
                {
                    let spec: RouteSpec = parse_spec(&r.data["spec"])?;
                    if route_targets(&spec).contains(&id.name.as_str()) {
                        return Ok(Some(format!(
                            "{} is a target of route \"{}\" of virtual router \"{}\"",
                            id.describe(),
                            named(&r, "routeName"),
                            named(&r, "virtualRouterName")
                        )));
                    }
                }
                self.provider_of(id).await
            }
            Kind::VirtualRouter => {
                let prefix = keys::scope_prefix(Kind::Route, mesh, Some(&id.name));
                let n = self.count(prefix).await?;
                if n > 0 {
                    return Ok(Some(format!(
                        "{} still has {n} routes; delete them first",
                        id.describe()
                    )));
                }
                self.provider_of(id).await
            }
            Kind::VirtualService => {
                for r in self
                    .scan(keys::scope_prefix(Kind::GatewayRoute, mesh, None))
                    .await?
                {
                    let spec: GatewayRouteSpec = parse_spec(&r.data["spec"])?;
                    if gateway_route_targets(&spec).contains(&id.name.as_str()) {
                        return Ok(Some(format!(
                            "{} is the target of gateway route \"{}\" of virtual gateway \"{}\"",
                            id.describe(),
                            named(&r, "gatewayRouteName"),
                            named(&r, "virtualGatewayName")
                        )));
                    }
                }
                Ok(None)
            }
            Kind::VirtualGateway => {
                let prefix = keys::scope_prefix(Kind::GatewayRoute, mesh, Some(&id.name));
                let n = self.count(prefix).await?;
                Ok((n > 0).then(|| {
                    format!(
                        "{} still has {n} gateway routes; delete them first",
                        id.describe()
                    )
                }))
            }
            Kind::Route | Kind::GatewayRoute => Ok(None),
        }
    }

    /// A virtual service whose provider is the node or router `id`.
    async fn provider_of(&self, id: &ResourceId) -> Result<Option<String>, ApiError> {
        for r in self
            .scan(keys::scope_prefix(Kind::VirtualService, &id.mesh, None))
            .await?
        {
            let spec: VirtualServiceSpec = parse_spec(&r.data["spec"])?;
            let provider = match (&spec.provider, id.kind) {
                (Some(VirtualServiceProvider::VirtualNode(p)), Kind::VirtualNode) => {
                    p.virtual_node_name == id.name
                }
                (Some(VirtualServiceProvider::VirtualRouter(p)), Kind::VirtualRouter) => {
                    p.virtual_router_name == id.name
                }
                _ => false,
            };
            if provider {
                let name = r.data.get("virtualServiceName").and_then(Value::as_str);
                return Ok(Some(format!(
                    "{} is the provider of virtual service \"{}\"",
                    id.describe(),
                    name.unwrap_or_default()
                )));
            }
        }
        Ok(None)
    }

    async fn delete(&self, id: &ResourceId) -> Result<Value, ApiError> {
        let key = keys::resource(id);
        for _ in 0..MAX_ATTEMPTS {
            let turn = self.lock_mesh(&id.mesh).await;
            let guard = self.guard(&id.mesh).await?;
            let Some((mut record, kv)) = self.load(id).await? else {
                return Err(ApiError::NotFound(format!("{} not found", id.describe())));
            };
            if let Some(why) = self.in_use(id, &guard.counts).await? {
                return Err(ApiError::ResourceInUse(why));
            }
            let ops = if id.kind == Kind::Mesh {
                vec![Op::Delete(key.clone()), Op::Delete(guard.key.clone())]
            } else {
                let mut counts = guard.counts;
                let n = counts.of_mut(id.kind);
                *n = n.saturating_sub(1);
                vec![Op::Delete(key.clone()), guard.bump(counts)?]
            };
            let compares = vec![
                guard.compare,
                Compare::ModRevision(key.clone(), kv.mod_revision),
            ];
            if self.commit_turn(turn, compares, ops).await?.is_some() {
                self.refs.remove(&key);
                if let Some(data) = record.data.as_object_mut() {
                    data.insert("status".into(), json!({ "status": "DELETED" }));
                }
                return Ok(self.output(id.kind, record.data));
            }
        }
        Err(Self::contention(id))
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

    fn limit(input: &Value, default: usize) -> usize {
        input
            .get("limit")
            .and_then(Value::as_u64)
            .map_or(default, |l| l as usize)
    }

    /// Decodes a `nextToken`: the last key of the previous page, which must lie
    /// in the listed range.
    fn after_key(input: &Value, prefix: &str) -> Result<Option<String>, ApiError> {
        let Some(token) = input.get("nextToken").and_then(Value::as_str) else {
            return Ok(None);
        };
        let bad = || ApiError::BadRequest("Value at 'nextToken' is not a valid token".into());
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad())?;
        let key = String::from_utf8(bytes).map_err(|_| bad())?;
        if key.starts_with(prefix) {
            Ok(Some(key))
        } else {
            Err(bad())
        }
    }

    fn next_token(key: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    }

    async fn list(&self, kind: Kind, input: &Value) -> Result<Output, ApiError> {
        let (mesh, parent) = if kind == Kind::Mesh {
            (String::new(), None)
        } else {
            let mesh = str_member(input, "meshName")?.to_string();
            self.require(&ResourceId::mesh(&mesh)).await?;
            let parent = match kind.parent() {
                Some(p) => {
                    let name = str_member(input, p.name_member())?.to_string();
                    self.require(&ResourceId::in_mesh(p, &mesh, &name)).await?;
                    Some(name)
                }
                None => None,
            };
            (mesh, parent)
        };
        let prefix = keys::scope_prefix(kind, &mesh, parent.as_deref());
        let limit = Self::limit(input, DEFAULT_LIMIT);
        let mut range = Range::prefix(prefix.clone());
        if let Some(after) = Self::after_key(input, &prefix)? {
            // The smallest key after `after`: continuing from there neither
            // repeats nor skips a key that existed on both pages.
            range.start = format!("{after}\0");
        }
        range.limit = limit;
        let result = self.store.range(range).await?;
        // The page is written straight from the stored bytes: names and
        // metadata are copied as raw JSON, the spec is skipped unparsed.
        let mut body = Vec::with_capacity(64 + 320 * result.kvs.len());
        body.push(b'{');
        if result.more {
            if let Some(last) = result.kvs.last() {
                body.extend_from_slice(b"\"nextToken\":");
                write_json(&mut body, &Self::next_token(&last.key))?;
                body.push(b',');
            }
        }
        body.push(b'"');
        body.extend_from_slice(kind.list_member().as_bytes());
        body.extend_from_slice(b"\":[");
        // Usually every reference is cached and current: copied under one
        // lock, without touching the records.
        if self.refs.write_all(&result.kvs, &mut body) {
            body.extend_from_slice(b"]}");
            return Ok(Output::Json(Bytes::from(body)));
        }
        let mut refs = self.refs.get(&result.kvs);
        let mut fresh = Vec::new();
        for (kv, cached) in result.kvs.iter().zip(&mut refs) {
            if cached.is_none() {
                let listed: Listed = serde_json::from_slice(&kv.value).map_err(|e| {
                    ApiError::Internal(format!("stored record {} is unreadable: {e}", kv.key))
                })?;
                let mut bytes = Vec::with_capacity(320);
                Self::write_reference(&mut bytes, kind, &listed.data)?;
                let bytes = Bytes::from(bytes);
                fresh.push((kv.key.clone(), kv.mod_revision, bytes.clone()));
                *cached = Some(bytes);
            }
        }
        if !fresh.is_empty() {
            self.refs.insert(fresh);
        }
        for (i, reference) in refs.iter().flatten().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(reference);
        }
        body.extend_from_slice(b"]}");
        Ok(Output::Json(Bytes::from(body)))
    }

    /// Writes the `…Ref` shape listed for a resource: its names and metadata
    /// without `uid`, members in name order (as a JSON map would have them).
    fn write_reference(
        out: &mut Vec<u8>,
        kind: Kind,
        data: &ListedData<'_>,
    ) -> Result<(), ApiError> {
        let mut members: Vec<(&str, &RawValue)> = Vec::with_capacity(10);
        for member in ["meshName", kind.name_member()]
            .into_iter()
            .chain(kind.parent().map(Kind::name_member))
        {
            // A mesh's own name member is `meshName`: written once.
            if members.iter().any(|(name, _)| *name == member) {
                continue;
            }
            if let Some(v) = data.name(member) {
                members.push((member, v));
            }
        }
        for (k, v) in &data.metadata.0 {
            if k != "uid" {
                // A later duplicate wins, as in a JSON map.
                match members.iter_mut().find(|(name, _)| *name == k.as_ref()) {
                    Some(slot) => slot.1 = v,
                    None => members.push((k.as_ref(), v)),
                }
            }
        }
        members.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out.push(b'{');
        for (i, (name, value)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json(out, name)?;
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
        Ok(())
    }

    fn resource_from_arn(&self, input: &Value) -> Result<ResourceId, ApiError> {
        let text = str_member(input, "resourceArn")?;
        let arn: Arn = text.parse().map_err(|e: weft_model::arn::ArnError| {
            ApiError::BadRequest(format!("Value at 'resourceArn' is invalid: {e}"))
        })?;
        if arn.partition != self.config.partition
            || arn.region != self.config.region
            || arn.account != self.config.account
        {
            return Err(ApiError::NotFound(format!("Resource {text} not found")));
        }
        Ok(ResourceId::from_path(&arn.resource))
    }

    /// Rewrites a resource's tags under the mesh guard.
    async fn change_tags(
        &self,
        input: &Value,
        change: impl Fn(&mut Vec<TagRef>) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let id = self.resource_from_arn(input)?;
        let key = keys::resource(&id);
        for _ in 0..MAX_ATTEMPTS {
            let turn = self.lock_mesh(&id.mesh).await;
            let guard = self.guard(&id.mesh).await?;
            let Some((mut record, kv)) = self.load(&id).await? else {
                return Err(ApiError::NotFound(format!("{} not found", id.describe())));
            };
            change(&mut record.tags)?;
            let ops = vec![
                Op::Put(key.clone(), encode(&record)?),
                guard.bump(guard.counts)?,
            ];
            let compares = vec![
                guard.compare,
                Compare::ModRevision(key.clone(), kv.mod_revision),
            ];
            if self.commit_turn(turn, compares, ops).await?.is_some() {
                return Ok(json!({}));
            }
        }
        Err(Self::contention(&id))
    }

    async fn tag_resource(&self, input: &Value) -> Result<Value, ApiError> {
        let new = Self::tags_from_input(input)?;
        self.change_tags(input, |tags| {
            for t in &new {
                match tags.iter_mut().find(|x| x.key == t.key) {
                    Some(existing) => existing.value = t.value.clone(),
                    None => tags.push(t.clone()),
                }
            }
            if tags.len() > MAX_TAGS {
                return Err(ApiError::TooManyTags(format!(
                    "A resource may have at most {MAX_TAGS} tags; this request would give it {}",
                    tags.len()
                )));
            }
            Ok(())
        })
        .await
    }

    async fn untag_resource(&self, input: &Value) -> Result<Value, ApiError> {
        let keys: Vec<String> = input
            .get("tagKeys")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        self.change_tags(input, |tags| {
            tags.retain(|t| !keys.contains(&t.key));
            Ok(())
        })
        .await
    }

    async fn list_tags(&self, input: &Value) -> Result<Value, ApiError> {
        let id = self.resource_from_arn(input)?;
        let Some(record) = self.load_durable(&id).await? else {
            return Err(ApiError::NotFound(format!("{} not found", id.describe())));
        };
        let limit = Self::limit(input, DEFAULT_TAGS_LIMIT);
        let start = match input.get("nextToken").and_then(Value::as_str) {
            Some(t) => t.parse::<usize>().map_err(|_| {
                ApiError::BadRequest("Value at 'nextToken' is not a valid token".into())
            })?,
            None => 0,
        };
        let page: Vec<&TagRef> = record.tags.iter().skip(start).take(limit).collect();
        let mut out = json!({ "tags": page });
        if start + page.len() < record.tags.len() {
            out["nextToken"] = json!((start + page.len()).to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
}
