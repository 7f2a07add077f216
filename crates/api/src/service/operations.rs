//! The create, describe, update, delete and list operations of every kind
//! of resource, and the store reads they share.

use std::ops::ControlFlow;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use weft_model::keys;
use weft_model::kind::{Kind, ResourceId};
use weft_model::shapes::{GatewayRouteSpec, RouteSpec, VirtualServiceProvider, VirtualServiceSpec};
use weft_model::Arn;
use weft_model::StoredRecord as Record;
use weft_store::{Compare, KeyValue, Op, Range, ReadAhead};

use super::guard::{Guard, MeshCounts};
use super::records::{
    data_bytes, decode_record, json_bytes, record_bytes, stored_data, updated_metadata,
    with_members, write_json, write_object, write_reference, Listed, RawMembers, StoredParts,
};
use super::tokens::{Fingerprint, Replay};
use super::validate::{
    check_weft_tags, gateway_route_targets, parse_spec, route_targets, spec_references, str_member,
    tags_from_input,
};
use super::{now, Output, Service};
use crate::error::ApiError;

/// How often a write re-reads and retries after losing a race in its mesh.
pub(super) const MAX_ATTEMPTS: usize = 64;
/// Default and maximum page size of List operations.
const DEFAULT_LIMIT: usize = 100;

/// A write's turn in its mesh, or the answer its `clientToken` replays.
enum Turn<'a> {
    /// The token's earlier answer, durable: no turn taken.
    Replayed(Output),
    /// The turn, the mesh's guard, and the compare the token's record is
    /// written under.
    Open {
        turn: tokio::sync::MutexGuard<'a, ()>,
        guard: Guard,
        token_compare: Option<Compare>,
    },
}

/// What a write does after one attempt decided from `ahead`: answer, or
/// try again from a linearizable read.
fn settle(
    outcome: Result<Option<Output>, ApiError>,
    ahead: &ReadAhead,
) -> ControlFlow<Result<Output, ApiError>> {
    match outcome {
        Ok(Some(out)) => ControlFlow::Break(Ok(out)),
        // Lost a race: decided again, from reads that cannot lag behind the
        // write it lost to.
        Ok(None) => ControlFlow::Continue(()),
        // An answer must not rest on a read that may have missed a write
        // acknowledged elsewhere.
        Err(e) if ahead.may_be_stale() && e.rests_on_reads() => ControlFlow::Continue(()),
        Err(e) => ControlFlow::Break(Err(e)),
    }
}

/// The page size an input asks for, else `default`.
pub(super) fn page_limit(input: &Value, default: usize) -> usize {
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

/// The `nextToken` of a page whose last key is `key`.
fn next_token(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

impl Service {
    /// The ARN of resource `id` in this partition, region and account.
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
    pub(super) async fn load(
        &self,
        id: &ResourceId,
        ahead: &ReadAhead,
    ) -> Result<Option<(Record, KeyValue)>, ApiError> {
        match self
            .store
            .get_latest_ahead(&keys::resource(id), ahead)
            .await?
        {
            Some(kv) => Ok(Some((decode_record(&kv)?, kv))),
            None => Ok(None),
        }
    }

    async fn exists(&self, id: &ResourceId, ahead: &ReadAhead) -> Result<bool, ApiError> {
        Ok(self
            .store
            .get_latest_ahead(&keys::resource(id), ahead)
            .await?
            .is_some())
    }

    /// Reads ahead of a write's turn (see [`weft_store::Store::read_ahead`])
    /// what it reads in its turn: the mesh's guard, the resource, its mesh
    /// and parent, its `clientToken`'s record and what its spec refers to.
    /// `fresh`: linearizable, for a write about to answer an error (see
    /// [`weft_store::Store::read_ahead`]).
    pub(super) async fn read_ahead(
        &self,
        id: &ResourceId,
        token: Option<String>,
        references: &[ResourceId],
        fresh: bool,
    ) -> Result<ReadAhead, ApiError> {
        if !self.store.reads_ahead() {
            return Ok(ReadAhead::default());
        }
        let mut keys = vec![keys::guard(&id.mesh), keys::resource(id)];
        if id.kind == Kind::Mesh {
            keys.push(keys::MESHES_GUARD.to_string());
        } else {
            keys.push(keys::resource(&ResourceId::mesh(&id.mesh)));
        }
        if let Some(parent) = id.parent_id() {
            keys.push(keys::resource(&parent));
        }
        keys.extend(token);
        keys.extend(references.iter().map(keys::resource));
        Ok(self.store.read_ahead(&keys, fresh).await?)
    }

    /// Reads a resource for an answer: only durable state.
    pub(super) async fn load_durable(&self, id: &ResourceId) -> Result<Option<Record>, ApiError> {
        match self.store.get(&keys::resource(id)).await? {
            Some(kv) => Ok(Some(decode_record(&kv)?)),
            None => Ok(None),
        }
    }

    /// `NotFoundException` unless `id` exists.
    pub(super) async fn require(&self, id: &ResourceId) -> Result<(), ApiError> {
        self.require_ahead(id, &ReadAhead::default()).await
    }

    /// [`Service::require`], from what was read ahead of the write's turn.
    pub(super) async fn require_ahead(
        &self,
        id: &ResourceId,
        ahead: &ReadAhead,
    ) -> Result<(), ApiError> {
        if self.exists(id, ahead).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("{} not found", id.describe())))
        }
    }

    /// How many keys lie under `prefix`, in the latest state.
    pub(super) async fn count(&self, prefix: String) -> Result<usize, ApiError> {
        Ok(self.store.count_latest(Range::prefix(prefix)).await?)
    }

    /// Scans the records under a prefix.
    async fn scan(&self, prefix: String) -> Result<Vec<Record>, ApiError> {
        let result = self.store.range_latest(Range::prefix(prefix)).await?;
        result.kvs.iter().map(decode_record).collect()
    }

    fn output(&self, kind: Kind, data: Value) -> Value {
        json!({ kind.payload_member(): data })
    }

    /// Creates a resource. The record, the answer and the idempotency record
    /// are written as JSON text straight from the input's spec: no copy of
    /// the spec as a tree, one serialization.
    pub(super) async fn create(
        &self,
        op: &str,
        id: &ResourceId,
        input: &Value,
    ) -> Result<Output, ApiError> {
        let token = input.get("clientToken").and_then(Value::as_str);
        let request = Fingerprint::of(input)?;
        let tags = tags_from_input(input)?;
        check_weft_tags(id.kind, &tags)?;
        let tags = json_bytes(&tags)?;
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
        let token_key = token.map(|t| keys::token(op, t));
        let references = if self.store.reads_ahead() {
            spec_references(id, spec)
        } else {
            Vec::new()
        };
        let mut fresh = false;
        for _ in 0..MAX_ATTEMPTS {
            let ahead = self
                .read_ahead(id, token_key.clone(), &references, fresh)
                .await?;
            let attempt = async {
                let (turn, guard, token_compare) = match self
                    .open_turn(op, token, &request, id, Some(&spec_json), &ahead)
                    .await?
                {
                    Turn::Replayed(out) => return Ok(Some(out)),
                    Turn::Open {
                        turn,
                        guard,
                        token_compare,
                    } => (turn, guard, token_compare),
                };
                if id.kind != Kind::Mesh {
                    self.require_ahead(&ResourceId::mesh(&id.mesh), &ahead)
                        .await?;
                }
                if let Some(parent) = id.parent_id() {
                    self.require_ahead(&parent, &ahead).await?;
                }
                if self.exists(id, &ahead).await? {
                    return Err(ApiError::Conflict(format!(
                        "{} already exists",
                        id.describe()
                    )));
                }
                // Read before the count, so that a create counted in between
                // fails this write's compare.
                let meshes_guard = match id.kind {
                    Kind::Mesh => Some(self.meshes_guard(&ahead).await?),
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
                self.check_spec(id, spec, &ahead).await?;
                let mut counts = guard.counts;
                if id.kind != Kind::Mesh {
                    *counts.of_mut(id.kind) += 1;
                }
                let mut ops = vec![Op::Put(key.clone(), record.clone()), guard.bump(counts)?];
                ops.extend(token_op.clone());
                let mut compares = vec![guard.compare, Compare::Absent(key.clone())];
                compares.extend(token_compare);
                if let Some(compare) = meshes_guard {
                    compares.push(compare);
                    ops.push(Op::Put(keys::MESHES_GUARD.to_string(), Bytes::new()));
                }
                if let Some(revision) = self.commit_turn(turn, compares, ops).await? {
                    self.note_token(token_op.as_ref(), revision).await;
                    return Ok(Some(Output::Payload {
                        member,
                        body: data.clone(),
                    }));
                }
                Ok(None)
            };
            if let ControlFlow::Break(answer) = settle(attempt.await, &ahead) {
                return answer;
            }
            fresh = true;
        }
        Err(Self::contention(id))
    }

    /// Takes the turn of `id`'s mesh and reads its guard, unless the request's
    /// `clientToken` already has an answer, which is then replayed.
    async fn open_turn(
        &self,
        op: &str,
        token: Option<&str>,
        request: &Fingerprint,
        id: &ResourceId,
        spec: Option<&[u8]>,
        ahead: &ReadAhead,
    ) -> Result<Turn<'_>, ApiError> {
        let turn = self.lock_mesh(&id.mesh).await;
        let guard = self.guard(&id.mesh, ahead).await?;
        match self.replay(op, token, request, id, spec, ahead).await? {
            Replay::Answer(out) => {
                drop(turn);
                self.store.sync().await?;
                Ok(Turn::Replayed(out))
            }
            Replay::Fresh(token_compare) => Ok(Turn::Open {
                turn,
                guard,
                token_compare,
            }),
        }
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
        let data = data_bytes(id, &metadata, spec_json)?;
        Ok((data, metadata))
    }

    /// Answers with the stored `data` member as it is on disk: no parse
    /// into a JSON tree, no re-serialization.
    pub(super) async fn describe(&self, id: &ResourceId) -> Result<Output, ApiError> {
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
    pub(super) async fn update(
        &self,
        op: &str,
        id: &ResourceId,
        input: &Value,
    ) -> Result<Output, ApiError> {
        let token = input.get("clientToken").and_then(Value::as_str);
        let request = Fingerprint::of(input)?;
        let new_spec = input.get("spec").filter(|s| !s.is_null());
        let new_spec_json = new_spec.map(json_bytes).transpose()?;
        let empty = json!({});
        let member = id.kind.payload_member();
        let key = keys::resource(id);
        let token_key = token.map(|t| keys::token(op, t));
        // An update without a spec keeps the stored one, whose references
        // are checked in the turn.
        let references = match new_spec {
            Some(spec) if self.store.reads_ahead() => spec_references(id, spec),
            _ => Vec::new(),
        };
        let mut fresh = false;
        for _ in 0..MAX_ATTEMPTS {
            let ahead = self
                .read_ahead(id, token_key.clone(), &references, fresh)
                .await?;
            let attempt = async {
                let (turn, guard, token_compare) = match self
                    .open_turn(op, token, &request, id, new_spec_json.as_deref(), &ahead)
                    .await?
                {
                    Turn::Replayed(out) => return Ok(Some(out)),
                    Turn::Open {
                        turn,
                        guard,
                        token_compare,
                    } => (turn, guard, token_compare),
                };
                let Some(kv) = self.store.get_latest_ahead(&key, &ahead).await? else {
                    return Err(ApiError::NotFound(format!("{} not found", id.describe())));
                };
                let malformed = |e: serde_json::Error| {
                    ApiError::Internal(format!("stored {} is malformed: {e}", id.describe()))
                };
                let stored: StoredParts = serde_json::from_slice(&kv.value).map_err(malformed)?;
                // UpdateMesh may leave out the spec: the mesh keeps the one it has.
                let (spec_json, kept_spec): (&[u8], Option<Value>) =
                    match (&new_spec_json, new_spec) {
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
                self.check_spec(id, spec, &ahead).await?;
                let metadata = match stored.data.get("metadata") {
                    Some(raw) if raw.get().starts_with('{') => {
                        let meta: RawMembers =
                            serde_json::from_str(raw.get()).map_err(malformed)?;
                        Some(updated_metadata(&meta, raw.get().len(), now())?)
                    }
                    _ => None,
                };
                let mut changes: Vec<(&str, &[u8])> = vec![("spec", spec_json)];
                if let Some(metadata) = &metadata {
                    changes.push(("metadata", metadata));
                }
                let capacity = kv.value.len() + spec_json.len();
                let data = Bytes::from(with_members(&stored.data, &changes, capacity)?);
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
                let replaced = stored_metadata.and_then(super::history::version);
                ops.extend(super::history::keep(&key, &kv.value, replaced));
                let mut compares = vec![
                    guard.compare,
                    Compare::ModRevision(key.clone(), kv.mod_revision),
                ];
                compares.extend(token_compare);
                if let Some(revision) = self.commit_turn(turn, compares, ops).await? {
                    self.note_token(token_op.as_ref(), revision).await;
                    return Ok(Some(Output::Payload { member, body: data }));
                }
                Ok(None)
            };
            if let ControlFlow::Break(answer) = settle(attempt.await, &ahead) {
                return answer;
            }
            fresh = true;
        }
        Err(Self::contention(id))
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

    pub(super) async fn delete(&self, id: &ResourceId) -> Result<Value, ApiError> {
        let key = keys::resource(id);
        for _ in 0..MAX_ATTEMPTS {
            let ahead = self.read_ahead(id, None, &[], true).await?;
            let turn = self.lock_mesh(&id.mesh).await;
            let guard = self.guard(&id.mesh, &ahead).await?;
            let Some((mut record, kv)) = self.load(id, &ahead).await? else {
                return Err(ApiError::NotFound(format!("{} not found", id.describe())));
            };
            if let Some(why) = self.in_use(id, &guard.counts).await? {
                return Err(ApiError::ResourceInUse(why));
            }
            let mut ops = if id.kind == Kind::Mesh {
                vec![Op::Delete(key.clone()), Op::Delete(guard.key.clone())]
            } else {
                let mut counts = guard.counts;
                let n = counts.of_mut(id.kind);
                *n = n.saturating_sub(1);
                vec![Op::Delete(key.clone()), guard.bump(counts)?]
            };
            ops.extend(super::history::forget(
                &key,
                record
                    .data
                    .pointer("/metadata/version")
                    .and_then(Value::as_i64),
            ));
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

    pub(super) async fn list(&self, kind: Kind, input: &Value) -> Result<Output, ApiError> {
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
        let limit = page_limit(input, DEFAULT_LIMIT);
        let mut range = Range::prefix(prefix.clone());
        if let Some(after) = after_key(input, &prefix)? {
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
                write_json(&mut body, &next_token(&last.key))?;
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
                write_reference(&mut bytes, kind, &listed.data)?;
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::ApiConfig;
    use weft_store::{
        Revision, SharedStore, Store, StoreError, StoreSnapshot, Txn, TxnOutcome, WatchEvent,
    };

    /// A store whose reads ahead, unless fresh, come from a replica frozen at
    /// one moment (an etcd member that stopped applying), as serializable
    /// reads may; everything else is the embedded store's.
    struct LaggingReplica {
        inner: SharedStore,
        frozen: Mutex<Option<(Revision, HashMap<String, KeyValue>)>>,
        fresh_reads: AtomicUsize,
        /// The next this many syncs report a batch that failed at etcd.
        failed_batches: AtomicUsize,
    }

    impl LaggingReplica {
        /// From now on, reads ahead that may lag show the store as it is now.
        async fn freeze(&self) {
            let all = self.inner.range(Range::prefix("")).await.unwrap();
            let kvs = all.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
            *self.frozen.lock().unwrap() = Some((all.revision, kvs));
        }
    }

    #[async_trait::async_trait]
    impl Store for LaggingReplica {
        async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            self.inner.get(key).await
        }
        async fn range(&self, range: Range) -> Result<weft_store::RangeResult, StoreError> {
            self.inner.range(range).await
        }
        async fn count(&self, range: Range) -> Result<usize, StoreError> {
            self.inner.count(range).await
        }
        async fn read_ahead(&self, keys: &[String], fresh: bool) -> Result<ReadAhead, StoreError> {
            let frozen = self.frozen.lock().unwrap().clone();
            match frozen {
                Some((revision, kvs)) if !fresh => {
                    let read = keys.iter().map(|k| (k.clone(), kvs.get(k).cloned()));
                    Ok(ReadAhead::new(revision, read.collect(), true))
                }
                _ => {
                    self.fresh_reads.fetch_add(1, Ordering::SeqCst);
                    let mut read = HashMap::new();
                    for k in keys {
                        read.insert(k.clone(), self.inner.get_latest(k).await?);
                    }
                    Ok(ReadAhead::new(self.inner.revision().await?, read, false))
                }
            }
        }
        fn reads_ahead(&self) -> bool {
            true
        }
        async fn get_latest_ahead(
            &self,
            key: &str,
            ahead: &ReadAhead,
        ) -> Result<Option<KeyValue>, StoreError> {
            match ahead.get(key) {
                Some(read) => Ok(read.cloned()),
                None => self.inner.get_latest(key).await,
            }
        }
        async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
            self.inner.txn(txn).await
        }
        async fn sync(&self) -> Result<(), StoreError> {
            let failed =
                self.failed_batches
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            match failed {
                Ok(_) => Err(StoreError::Superseded("a batch failed at etcd".into())),
                Err(_) => self.inner.sync().await,
            }
        }
        async fn revision(&self) -> Result<Revision, StoreError> {
            self.inner.revision().await
        }
        async fn snapshot<'a>(&'a self) -> Result<Box<dyn StoreSnapshot + 'a>, StoreError> {
            self.inner.snapshot().await
        }
        async fn watch(
            &self,
            prefix: &str,
            after: Revision,
        ) -> Result<futures::stream::BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError>
        {
            self.inner.watch(prefix, after).await
        }
    }

    async fn lagging_service() -> (tempfile::TempDir, Arc<LaggingReplica>, Service) {
        let dir = tempfile::tempdir().unwrap();
        let inner = weft_store::EmbeddedStore::open(weft_store::EmbeddedOptions::new(dir.path()))
            .await
            .unwrap();
        let replica = Arc::new(LaggingReplica {
            inner,
            frozen: Mutex::new(None),
            fresh_reads: AtomicUsize::new(0),
            failed_batches: AtomicUsize::new(0),
        });
        let shared: SharedStore = replica.clone();
        (dir, replica, Service::new(shared, ApiConfig::default()))
    }

    /// [`lagging_service`] with mesh "apps" created before anything lags.
    async fn lagging_service_with_mesh() -> (tempfile::TempDir, Arc<LaggingReplica>, Service) {
        let (dir, replica, service) = lagging_service().await;
        service
            .call("CreateMesh", json!({"meshName": "apps"}))
            .await
            .unwrap();
        (dir, replica, service)
    }

    fn node(mesh: &str, name: &str) -> Value {
        json!({"meshName": mesh, "virtualNodeName": name, "spec": {}})
    }

    #[tokio::test]
    async fn an_error_answered_while_another_writers_batch_failed_is_decided_again_not_a_503() {
        let (_dir, replica, service) = lagging_service_with_mesh().await;
        replica.failed_batches.store(1, Ordering::SeqCst);
        let missing = json!({"meshName": "apps", "virtualNodeName": "web"});
        let answer = service.call("DescribeVirtualNode", missing.clone()).await;
        assert!(matches!(answer, Err(ApiError::NotFound(_))), "{answer:?}");
        assert_eq!(replica.failed_batches.load(Ordering::SeqCst), 0);

        // Decided again over yet another failed batch: the client is told to retry.
        replica.failed_batches.store(2, Ordering::SeqCst);
        let answer = service.call("DescribeVirtualNode", missing).await;
        assert!(
            matches!(answer, Err(ApiError::ServiceUnavailable(_))),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_name_taken_after_the_lagging_read_is_answered_already_exists_from_a_fresh_read() {
        let (_dir, replica, service) = lagging_service_with_mesh().await;
        replica.freeze().await;
        service
            .call("CreateVirtualNode", node("apps", "web"))
            .await
            .unwrap();
        // The lagging read says "web" is free; the commit's compare says it
        // is not, and the answer comes from a read that cannot lag.
        let again = service.call("CreateVirtualNode", node("apps", "web")).await;
        assert!(matches!(again, Err(ApiError::Conflict(_))), "{again:?}");
        assert!(replica.fresh_reads.load(Ordering::SeqCst) >= 1);
    }

    #[tokio::test]
    async fn a_mesh_the_lagging_read_does_not_show_yet_is_found_by_a_fresh_read() {
        let (_dir, replica, service) = lagging_service().await;
        replica.freeze().await;
        service
            .call("CreateMesh", json!({"meshName": "apps"}))
            .await
            .unwrap();
        let fresh_before = replica.fresh_reads.load(Ordering::SeqCst);
        // "Not found" from the lagging read is not an answer: read again.
        let created = service.call("CreateVirtualNode", node("apps", "web")).await;
        assert!(created.is_ok(), "{created:?}");
        assert!(replica.fresh_reads.load(Ordering::SeqCst) > fresh_before);
        // A mesh missing from both reads is not found.
        let missing = service
            .call("CreateVirtualNode", node("nowhere", "web"))
            .await;
        assert!(matches!(missing, Err(ApiError::NotFound(_))), "{missing:?}");
    }

    #[tokio::test]
    async fn a_route_target_the_lagging_read_does_not_show_yet_is_found_and_a_missing_one_is_not() {
        let (_dir, replica, service) = lagging_service_with_mesh().await;
        let router = json!({"meshName": "apps", "virtualRouterName": "r", "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]}});
        service.call("CreateVirtualRouter", router).await.unwrap();
        replica.freeze().await;
        service
            .call("CreateVirtualNode", node("apps", "web"))
            .await
            .unwrap();
        let route = |name: &str, target: &str| {
            json!({"meshName": "apps", "virtualRouterName": "r", "routeName": name, "spec": {
                "httpRoute": {"match": {"prefix": "/"}, "action": {
                    "weightedTargets": [{"virtualNode": target, "weight": 1}]}}}})
        };
        let to_web = service.call("CreateRoute", route("to-web", "web")).await;
        assert!(to_web.is_ok(), "{to_web:?}");
        let to_ghost = service
            .call("CreateRoute", route("to-ghost", "ghost"))
            .await;
        assert!(
            matches!(to_ghost, Err(ApiError::NotFound(_))),
            "{to_ghost:?}"
        );
    }

    #[tokio::test]
    async fn an_update_from_a_lagging_read_loses_its_compare_and_applies_once() {
        let (_dir, replica, service) = lagging_service_with_mesh().await;
        service
            .call("CreateVirtualNode", node("apps", "web"))
            .await
            .unwrap();
        replica.freeze().await;
        service
            .call("UpdateVirtualNode", node("apps", "web"))
            .await
            .unwrap();
        let out = service
            .call("UpdateVirtualNode", node("apps", "web"))
            .await
            .unwrap();
        assert_eq!(
            out.pointer("/virtualNode/metadata/version"),
            Some(&json!(3))
        );
    }

    #[test]
    fn a_page_is_as_long_as_asked_else_the_default() {
        assert_eq!(page_limit(&json!({"limit": 7}), 100), 7);
        assert_eq!(page_limit(&json!({}), 100), 100);
        assert_eq!(page_limit(&json!({"limit": "7"}), 100), 100);
    }

    #[test]
    fn a_next_token_continues_after_the_key_it_was_made_from() {
        let key = "vn/m/\u{e9}/node";
        let input = json!({ "nextToken": next_token(key) });
        assert_eq!(after_key(&input, "vn/m/").unwrap().as_deref(), Some(key));
        assert_eq!(after_key(&json!({}), "vn/m/").unwrap(), None);
    }

    #[test]
    fn a_next_token_from_another_list_or_not_a_token_is_refused() {
        let elsewhere = json!({ "nextToken": next_token("vn/other/node") });
        let not_base64 = json!({ "nextToken": "!!" });
        let not_utf8 = json!({
            "nextToken": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xff, 0xfe])
        });
        for input in [elsewhere, not_base64, not_utf8] {
            match after_key(&input, "vn/m/") {
                Err(ApiError::BadRequest(why)) => {
                    assert_eq!(why, "Value at 'nextToken' is not a valid token");
                }
                other => panic!("{input}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_update_copies_the_stored_record_and_changes_only_spec_and_metadata() {
        let (_dir, service) = super::super::tests::service().await;
        let id = ResourceId::mesh("m");
        // A member this version does not write is kept as stored, byte for byte.
        let stored = r#"{"data":{"meshName":"m","extra":{"b":1, "a":2},"spec":{},
            "metadata":{"version":4,"uid":"u","lastUpdatedAt":1.0},
            "status":{"status":"ACTIVE"}},"tags":[{"key":"k","value":"v"}]}"#;
        service
            .store
            .txn(weft_store::Txn {
                compares: vec![],
                ops: vec![Op::Put(
                    keys::resource(&id),
                    Bytes::from_static(stored.as_bytes()),
                )],
            })
            .await
            .unwrap();
        let spec = json!({"egressFilter": {"type": "ALLOW_ALL"}});
        let input = json!({"meshName": "m", "spec": spec});
        let Output::Payload { member, body } =
            service.update("UpdateMesh", &id, &input).await.unwrap()
        else {
            panic!("an update answers its payload member");
        };
        assert_eq!(member, "mesh");
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains(r#""extra":{"b":1, "a":2}"#), "{text}");
        let data: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(data["spec"], spec);
        assert_eq!(data["metadata"]["version"], 5);
        assert_eq!(data["metadata"]["uid"], "u");
        assert!(data["metadata"]["lastUpdatedAt"].as_f64().unwrap() > 1.0);
        let record = service.load_durable(&id).await.unwrap().unwrap();
        assert_eq!(record.data, data);
        assert_eq!(record.tags.len(), 1);
    }
}
