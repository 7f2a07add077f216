//! State shared by the SotW and delta stream machines: per-type subscription, nonce, sent and
//! ACKed content, and the make-before-break rollout of snapshots.
//!
//! Rollout of a new snapshot (the *target*), in three phases, each waiting for Envoy's ACKs:
//!
//! 1. [`RolloutPhase::Clusters`]: CDS holds the clusters Envoy already has **plus** the target's
//!    (new and changed ones added, nothing removed), EDS the target's load assignments (older ones
//!    kept). Listeners and routes stay as they were. The phase ends when Envoy has ACKed every
//!    target cluster and every load assignment the target's EDS clusters read.
//! 2. [`RolloutPhase::Routes`]: listeners and route configurations of the target. The phase ends
//!    when Envoy has ACKed the target's listeners and the route configurations they read.
//! 3. [`RolloutPhase::Steady`]: CDS and EDS of exactly the target: unused clusters go last.
//!
//! A newer snapshot arriving mid-way restarts at phase 1 towards it, from whatever Envoy holds, so
//! no route ever references a cluster Envoy does not have. A NACK stops the rollout where it is
//! (the NACKed content is not resent) until a newer snapshot arrives: moving on would point routes
//! at clusters Envoy refused, or remove clusters that the routes Envoy kept still use.
//! The ordering follows the xDS protocol's eventual consistency considerations:
//! <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#eventual-consistency-considerations>.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use crate::resource::{content_version, static_type_url, Version};
use crate::status::{NackRecord, Protocol, ProxyStatus, TypeStatus};
use crate::{
    is_wildcard_type, Resource, Snapshot, XdsNode, CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL,
    LISTENER_TYPE_URL, ROUTE_TYPE_URL,
};

/// Where a stream stands in rolling out its latest snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutPhase {
    /// No snapshot for the stream's key yet: Envoy gets no config and waits.
    Waiting,
    /// Adding the new snapshot's clusters and endpoints, old ones kept.
    Clusters,
    /// Switching listeners and routes to the new snapshot.
    Routes,
    /// Routes switched; CDS/EDS are exactly the snapshot's (unused ones removed).
    Steady,
}

/// What Envoy holds (or was sent) for one resource name.
///
/// Sent resources are the snapshot's own `Arc<Resource>`: a stream keeps no copy of names,
/// versions or bodies, only a pointer per resource.
#[derive(Clone, Debug)]
pub(crate) enum Held {
    /// A resource this stream sent.
    Sent(Arc<Resource>),
    /// Only the name and version are known (delta `initial_resource_versions`).
    Known(Box<(String, String)>),
}

impl Held {
    pub(crate) fn name(&self) -> &str {
        match self {
            Held::Sent(r) => &r.name,
            Held::Known(k) => &k.0,
        }
    }

    pub(crate) fn version(&self) -> &str {
        match self {
            Held::Sent(r) => &r.version,
            Held::Known(k) => &k.1,
        }
    }

    /// Whether Envoy holds `resource` at its version.
    pub(crate) fn is(&self, resource: &Arc<Resource>) -> bool {
        match self {
            Held::Sent(r) => Arc::ptr_eq(r, resource) || r.version == resource.version,
            Held::Known(k) => k.1 == resource.version,
        }
    }
}

/// The resources of one type that Envoy holds (or was sent), sorted by name, unique.
///
/// Immutable and shared: after an ACK, the ACKed set and the sent set are the same allocation.
#[derive(Clone, Debug)]
pub(crate) struct HeldSet(Arc<[Held]>);

impl Default for HeldSet {
    fn default() -> Self {
        HeldSet(Arc::from(Vec::new()))
    }
}

impl HeldSet {
    /// A set of `items` already sorted by name without duplicates.
    pub(crate) fn from_sorted(items: Vec<Held>) -> Self {
        debug_assert!(items.windows(2).all(|w| w[0].name() < w[1].name()));
        HeldSet(Arc::from(items))
    }

    /// A set of `items` in any order; a later item of a name wins over an earlier one.
    pub(crate) fn from_unsorted(mut items: Vec<Held>) -> Self {
        // Stable sort keeps the input order among equal names: keep the last of each.
        items.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out: Vec<Held> = Vec::with_capacity(items.len());
        for item in items {
            match out.last_mut() {
                Some(last) if last.name() == item.name() => *last = item,
                _ => out.push(item),
            }
        }
        HeldSet(Arc::from(out))
    }

    /// Pairs each of `items` (sorted by name, unique) with what the set holds of its name, in
    /// one merge walk. A held entry that is the very same `Arc` matches without comparing
    /// names: after an ACK of a snapshot's resources that is every entry.
    pub(crate) fn lookup<'s, 'r>(
        &'s self,
        items: impl IntoIterator<Item = &'r Arc<Resource>>,
    ) -> impl Iterator<Item = (&'r Arc<Resource>, Option<&'s Held>)> {
        let mut rest: &'s [Held] = &self.0;
        items.into_iter().map(move |r| {
            if let Some((first, tail)) = rest.split_first() {
                if matches!(first, Held::Sent(h) if Arc::ptr_eq(h, r)) {
                    rest = tail;
                    return (r, Some(first));
                }
            }
            let skip = rest
                .iter()
                .take_while(|h| h.name() < r.name.as_str())
                .count();
            rest = rest.get(skip..).unwrap_or_default();
            match rest.split_first() {
                Some((first, tail)) if first.name() == r.name => {
                    rest = tail;
                    (r, Some(first))
                }
                _ => (r, None),
            }
        })
    }

    /// The entries whose names are not among `items` (sorted by name, unique), in one merge
    /// walk.
    pub(crate) fn not_in<'s>(&'s self, items: &[&Arc<Resource>]) -> Vec<&'s Held> {
        let mut out = Vec::new();
        let mut rest = items;
        for held in self.0.iter() {
            if let Some((first, tail)) = rest.split_first() {
                if matches!(held, Held::Sent(h) if Arc::ptr_eq(h, first)) {
                    rest = tail;
                    continue;
                }
            }
            let skip = rest
                .iter()
                .take_while(|r| r.name.as_str() < held.name())
                .count();
            rest = rest.get(skip..).unwrap_or_default();
            match rest.split_first() {
                Some((first, tail)) if first.name == held.name() => rest = tail,
                _ => out.push(held),
            }
        }
        out
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Held> {
        self.0.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The content version of the set (hash of its sorted (name, version) pairs).
    pub(crate) fn version(&self) -> Version {
        content_version(self.0.iter().map(|h| (h.name(), h.version())))
    }

    /// Drops the entries `keep` refuses; shares the allocation when nothing is dropped.
    pub(crate) fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        if self.0.iter().all(|h| keep(h.name())) {
            return;
        }
        let kept: Vec<Held> = self.0.iter().filter(|h| keep(h.name())).cloned().collect();
        *self = HeldSet(Arc::from(kept));
    }
}

/// Per-type state of one stream.
///
/// The response in flight (if any) always carries exactly `sent`: a response is only sent when
/// none is pending, and a NACK resets `sent` to `acked`. So the pending response needs no copy
/// of its contents, only its nonce; its version is `sent_version`.
#[derive(Clone, Debug)]
pub(crate) struct TypeState {
    pub(crate) type_url: Cow<'static, str>,
    pub(crate) wildcard: bool,
    pub(crate) names: BTreeSet<String>,
    /// Envoy has asked for this type on this stream.
    pub(crate) requested: bool,
    /// A request (first one, or changed subscription) wants an answer even if content is equal.
    pub(crate) must_respond: bool,
    /// The nonce of the latest response sent.
    pub(crate) last_nonce: Option<u64>,
    /// The nonce of the response sent and not yet ACKed or NACKed.
    pub(crate) pending: Option<u64>,
    pub(crate) sent: HeldSet,
    pub(crate) sent_version: Option<Version>,
    pub(crate) acked: HeldSet,
    pub(crate) acked_version: Option<Version>,
    pub(crate) acked_at: Option<SystemTime>,
    pub(crate) nacked_version: Option<Version>,
    pub(crate) responses_sent: u64,
    pub(crate) resources_sent: u64,
}

impl TypeState {
    fn new(type_url: &str) -> Self {
        Self {
            type_url: static_type_url(type_url),
            wildcard: is_wildcard_type(type_url),
            names: BTreeSet::new(),
            requested: false,
            must_respond: false,
            last_nonce: None,
            pending: None,
            sent: HeldSet::default(),
            sent_version: None,
            acked: HeldSet::default(),
            acked_version: None,
            acked_at: None,
            nacked_version: None,
            responses_sent: 0,
            resources_sent: 0,
        }
    }

    pub(crate) fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Whether this wildcard type was sent exactly all of `source`'s resources of the type
    /// (its sent set has the snapshot's type version): then it holds nothing else either, so
    /// there is nothing to add, change or remove, in any rollout phase. Known from the two
    /// versions alone, without walking the resources.
    pub(crate) fn sent_whole_type(&self, source: &Snapshot) -> bool {
        self.wildcard
            && self.sent_version.is_some()
            && self.sent_version == source.type_content(&self.type_url)
    }

    fn status(&self) -> TypeStatus {
        let mut subscribed: Vec<String> = Vec::with_capacity(self.names.len() + 1);
        if self.wildcard {
            subscribed.push("*".to_string());
        }
        subscribed.extend(self.names.iter().cloned());
        TypeStatus {
            sent_version: self.sent_version.map(|v| v.to_string()),
            acked_version: self.acked_version.map(|v| v.to_string()),
            acked_at: self.acked_at,
            nacked_version: self.nacked_version.map(|v| v.to_string()),
            pending_nonce: self.pending.map(|n| n.to_string()),
            subscribed,
            responses_sent: self.responses_sent,
            resources_sent: self.resources_sent,
        }
    }
}

/// Position of a type in the order responses go out in: clusters and endpoints before
/// listeners and routes (as Envoy asks for them), then any other type.
fn rank(type_url: &str) -> u8 {
    match type_url {
        CLUSTER_TYPE_URL => 0,
        ENDPOINT_TYPE_URL => 1,
        LISTENER_TYPE_URL => 2,
        ROUTE_TYPE_URL => 3,
        _ => 4,
    }
}

/// Parses a nonce this server sent (a decimal counter from 1, no sign or leading zero).
pub(crate) fn parse_nonce(nonce: &str) -> Option<u64> {
    if nonce.starts_with('0') || !nonce.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    nonce.parse().ok()
}

/// The resources one type should hold on Envoy now.
///
/// Borrowed from the snapshot: working out what to send clones no `Arc` (every stream of a
/// class touching the same shared resources' reference counts on every message would make the
/// cores contend for them); only what is sent is cloned.
pub(crate) struct Desired<'a> {
    /// The snapshot's resources of the type that Envoy subscribes to, sorted by name.
    pub(crate) items: Vec<&'a Arc<Resource>>,
    /// Keep what Envoy already has besides `items` (make-before-break: remove nothing yet).
    pub(crate) keep_others: bool,
    /// The content version of `items` when they are all of the type's resources in the
    /// snapshot (a wildcard subscription): known without hashing them again.
    pub(crate) full_version: Option<Version>,
}

impl<'a> Desired<'a> {
    /// What `state`'s type should hold, from `source` (see [`Core::source`]).
    pub(crate) fn of(source: &'a Snapshot, state: &TypeState, keep_others: bool) -> Self {
        let type_url: &str = &state.type_url;
        let mut full_version = None;
        let items = match source.resources(type_url) {
            None => Vec::new(),
            Some(all) if state.wildcard => {
                full_version = source.type_content(type_url);
                all.values().collect()
            }
            Some(all) if state.names.len() < all.len() => {
                state.names.iter().filter_map(|n| all.get(n)).collect()
            }
            Some(all) => all
                .iter()
                .filter(|(name, _)| state.names.contains(*name))
                .map(|(_, r)| r)
                .collect(),
        };
        Desired {
            items,
            keep_others,
            full_version,
        }
    }

    /// The content version of what a stream holds if it is exactly the desired items (the
    /// same `Arc`s) and that version is known, without hashing: the common case of a stream
    /// sending a whole type.
    pub(crate) fn known_version_of_held(&self, held: &HeldSet) -> Option<Version> {
        let version = self.full_version?;
        (held.len() == self.items.len()
            && held
                .iter()
                .zip(&self.items)
                .all(|(h, r)| matches!(h, Held::Sent(s) if Arc::ptr_eq(s, r))))
        .then_some(version)
    }
}

/// The protocol-independent part of a stream.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) stream_id: u64,
    pub(crate) node_id: String,
    pub(crate) node_cluster: String,
    pub(crate) snapshot_key: String,
    pub(crate) protocol: Protocol,
    pub(crate) connected_since: SystemTime,
    pub(crate) target: Option<Arc<Snapshot>>,
    /// The snapshot whose listeners and routes are (being) rolled out.
    pub(crate) routes_snapshot: Option<Arc<Snapshot>>,
    pub(crate) phase: RolloutPhase,
    /// Per type, in the order responses go out in (see [`rank`]).
    pub(crate) types: Vec<TypeState>,
    nonce_counter: u64,
    pub(crate) last_nack: Option<Box<NackRecord>>,
    pub(crate) nack_count: u64,
    /// The target replaced one the Envoy already held: its convergence is worth reporting.
    replacing: bool,
    /// Time from the target's origin to its rollout, once reached and not yet taken.
    pub(crate) converged: Option<std::time::Duration>,
}

impl Core {
    pub(crate) fn new(node: &XdsNode, snapshot_key: String, protocol: Protocol) -> Self {
        Self {
            stream_id: 0,
            node_id: node.id.clone(),
            node_cluster: node.cluster.clone(),
            snapshot_key,
            protocol,
            connected_since: SystemTime::now(),
            target: None,
            routes_snapshot: None,
            phase: RolloutPhase::Waiting,
            types: Vec::new(),
            nonce_counter: 0,
            last_nack: None,
            nack_count: 0,
            replacing: false,
            converged: None,
        }
    }

    /// The nonce the next response will carry (unique within the stream once committed).
    pub(crate) fn next_nonce_peek(&self) -> u64 {
        self.nonce_counter + 1
    }

    /// Consumes the nonce returned by [`Core::next_nonce_peek`].
    pub(crate) fn commit_nonce(&mut self) {
        self.nonce_counter += 1;
    }

    /// Takes a new target snapshot; equal content changes nothing.
    pub(crate) fn set_snapshot(&mut self, snapshot: Arc<Snapshot>) {
        if self
            .target
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, &snapshot) || t.version() == snapshot.version())
        {
            return;
        }
        // A first snapshot (a proxy connecting) is no change reaching the proxy.
        self.replacing = self.target.is_some();
        self.target = Some(snapshot);
        self.phase = RolloutPhase::Clusters;
    }

    /// Moves through the rollout phases as far as Envoy's ACKs allow.
    pub(crate) fn advance(&mut self) {
        let Some(target) = self.target.clone() else {
            self.phase = RolloutPhase::Waiting;
            return;
        };
        loop {
            match self.phase {
                RolloutPhase::Clusters if self.clusters_ready(&target) => {
                    self.phase = RolloutPhase::Routes;
                    self.routes_snapshot = Some(target.clone());
                }
                RolloutPhase::Routes if self.routes_ready(&target) => {
                    self.phase = RolloutPhase::Steady;
                    if std::mem::take(&mut self.replacing) {
                        self.converged = target.origin().map(|at| at.elapsed());
                    }
                }
                _ => break,
            }
        }
    }

    fn state(&self, type_url: &str) -> Option<&TypeState> {
        self.types.iter().find(|t| t.type_url == type_url)
    }

    /// Envoy has ACKed each of `items` (sorted by name) at its version.
    fn acked_all<'r>(
        state: Option<&TypeState>,
        items: impl IntoIterator<Item = &'r Arc<Resource>>,
    ) -> bool {
        let mut items = items.into_iter().peekable();
        match state {
            Some(state) => state
                .acked
                .lookup(items)
                .all(|(r, held)| held.is_some_and(|h| h.is(r))),
            None => items.peek().is_none(),
        }
    }

    /// Envoy has ACKed every target cluster and every load assignment the target's EDS
    /// clusters read.
    fn clusters_ready(&self, target: &Snapshot) -> bool {
        let state = self.state(CLUSTER_TYPE_URL);
        (Self::acked_exactly(state, target, CLUSTER_TYPE_URL)
            || Self::acked_all(
                state,
                target
                    .resources(CLUSTER_TYPE_URL)
                    .into_iter()
                    .flat_map(|m| m.values()),
            ))
            && Self::acked_all(self.state(ENDPOINT_TYPE_URL), target.needed_eds())
    }

    /// Envoy has ACKed exactly the target's resources of `type_url` (the ACKed set has the
    /// target's type version): known without walking them, the common case once a phase's
    /// responses are ACKed.
    fn acked_exactly(state: Option<&TypeState>, target: &Snapshot, type_url: &str) -> bool {
        state.is_some_and(|s| {
            s.acked_version.is_some() && s.acked_version == target.type_content(type_url)
        })
    }

    /// Envoy has ACKed exactly the target's listeners, and the route configurations they read.
    fn routes_ready(&self, target: &Snapshot) -> bool {
        let listeners = target.resources(LISTENER_TYPE_URL);
        let state = self.state(LISTENER_TYPE_URL);
        let count = listeners.map_or(0, |l| l.len());
        // Every target listener ACKed, each matching a distinct entry: nothing else is held
        // exactly when the counts agree.
        let listeners_ok = Self::acked_exactly(state, target, LISTENER_TYPE_URL)
            || (Self::acked_all(state, listeners.into_iter().flat_map(|m| m.values()))
                && state.is_none_or(|t| t.acked.len() == count));
        listeners_ok && Self::acked_all(self.state(ROUTE_TYPE_URL), target.needed_rds())
    }

    /// The snapshot the type at `index` takes its resources from now, and whether Envoy
    /// keeps others besides them; `None` if nothing is to be sent for it yet.
    pub(crate) fn source(&self, index: usize) -> Option<(Arc<Snapshot>, bool)> {
        let state = self.types.get(index)?;
        let (source, keep_others) = match &*state.type_url {
            CLUSTER_TYPE_URL | ENDPOINT_TYPE_URL => {
                (self.target.as_ref()?, self.phase != RolloutPhase::Steady)
            }
            LISTENER_TYPE_URL | ROUTE_TYPE_URL => {
                let source = if self.phase == RolloutPhase::Clusters {
                    self.routes_snapshot.as_ref()?
                } else {
                    self.target.as_ref()?
                };
                (source, false)
            }
            _ => (self.target.as_ref()?, false),
        };
        Some((source.clone(), keep_others))
    }

    /// Records the answer to the pending response of `type_url`.
    pub(crate) fn reply(&mut self, index: usize, error: Option<(i32, String)>) {
        let Some(state) = self.types.get_mut(index) else {
            return;
        };
        let Some(nonce) = state.pending.take() else {
            return;
        };
        match error {
            None => {
                state.acked = state.sent.clone();
                state.acked_version = state.sent_version;
                state.acked_at = Some(SystemTime::now());
            }
            Some((code, message)) => {
                // Envoy keeps what it had before: so do we, and never resend this version.
                let version = state.sent_version;
                state.nacked_version = version;
                state.sent = state.acked.clone();
                state.sent_version = state.acked_version;
                let record = NackRecord {
                    type_url: state.type_url.to_string(),
                    version: version.map(|v| v.to_string()).unwrap_or_default(),
                    nonce: nonce.to_string(),
                    code,
                    message,
                    at: SystemTime::now(),
                };
                tracing::warn!(
                    node = %self.node_id,
                    snapshot_key = %self.snapshot_key,
                    type_url = %record.type_url,
                    version = %record.version,
                    error = %record.message,
                    "Envoy rejected (NACKed) a response; it will not be resent"
                );
                self.nack_count += 1;
                self.last_nack = Some(Box::new(record));
            }
        }
    }

    /// The stream's state for `proxy-status`.
    pub(crate) fn status(&self) -> ProxyStatus {
        ProxyStatus {
            stream_id: self.stream_id,
            node_id: self.node_id.clone(),
            node_cluster: self.node_cluster.clone(),
            snapshot_key: self.snapshot_key.clone(),
            protocol: self.protocol,
            connected_since: self.connected_since,
            snapshot_version: self.target.as_ref().map(|t| t.version().to_string()),
            rollout: self.phase,
            types: self
                .types
                .iter()
                .map(|s| (s.type_url.to_string(), s.status()))
                .collect::<BTreeMap<_, _>>(),
            last_nack: self.last_nack.as_deref().cloned(),
            nack_count: self.nack_count,
        }
    }

    /// The index of the state of `type_url` in [`Core::types`], created on first use.
    pub(crate) fn type_index(&mut self, type_url: &str) -> usize {
        if let Some(i) = self.types.iter().position(|t| t.type_url == type_url) {
            return i;
        }
        let key = (rank(type_url), type_url);
        let at = self
            .types
            .iter()
            .position(|t| (rank(&t.type_url), &*t.type_url) > key)
            .unwrap_or(self.types.len());
        self.types.insert(at, TypeState::new(type_url));
        at
    }
}
