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
//! Evidence for the ordering: `shared/reference/envoy-notes.md`; protocol:
//! <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#eventual-consistency-considerations>.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

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
#[derive(Clone, Debug)]
pub(crate) struct Held {
    pub(crate) version: String,
    /// `None` when only the version is known (delta `initial_resource_versions`).
    pub(crate) resource: Option<Arc<Resource>>,
}

impl Held {
    pub(crate) fn of(resource: &Arc<Resource>) -> Self {
        Self {
            version: resource.version.clone(),
            resource: Some(resource.clone()),
        }
    }
}

/// A response sent and not yet ACKed or NACKed.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) nonce: String,
    pub(crate) version: String,
    /// What Envoy holds once it accepts the response.
    pub(crate) contents: BTreeMap<String, Held>,
}

/// Per-type state of one stream.
#[derive(Clone, Debug, Default)]
pub(crate) struct TypeState {
    pub(crate) wildcard: bool,
    pub(crate) names: BTreeSet<String>,
    /// Envoy has asked for this type on this stream.
    pub(crate) requested: bool,
    /// A request (first one, or changed subscription) wants an answer even if content is equal.
    pub(crate) must_respond: bool,
    pub(crate) last_nonce: Option<String>,
    pub(crate) pending: Option<Pending>,
    pub(crate) sent: BTreeMap<String, Held>,
    pub(crate) sent_version: Option<String>,
    pub(crate) acked: BTreeMap<String, Held>,
    pub(crate) acked_version: Option<String>,
    pub(crate) acked_at: Option<SystemTime>,
    pub(crate) nacked_version: Option<String>,
    pub(crate) responses_sent: u64,
    pub(crate) resources_sent: u64,
}

impl TypeState {
    pub(crate) fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    fn status(&self) -> TypeStatus {
        let mut subscribed: Vec<String> = self.names.iter().cloned().collect();
        if self.wildcard {
            subscribed.insert(0, "*".to_string());
        }
        TypeStatus {
            sent_version: self.sent_version.clone(),
            acked_version: self.acked_version.clone(),
            acked_at: self.acked_at,
            nacked_version: self.nacked_version.clone(),
            pending_nonce: self.pending.as_ref().map(|p| p.nonce.clone()),
            subscribed,
            responses_sent: self.responses_sent,
            resources_sent: self.resources_sent,
        }
    }
}

/// The resources one type should hold on Envoy now.
pub(crate) struct Desired {
    /// The snapshot's resources of the type that Envoy subscribes to.
    pub(crate) items: BTreeMap<String, Arc<Resource>>,
    /// Keep what Envoy already has besides `items` (make-before-break: remove nothing yet).
    pub(crate) keep_others: bool,
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
    pub(crate) types: BTreeMap<String, TypeState>,
    nonce_counter: u64,
    pub(crate) last_nack: Option<NackRecord>,
    pub(crate) nack_count: u64,
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
            types: BTreeMap::new(),
            nonce_counter: 0,
            last_nack: None,
            nack_count: 0,
        }
    }

    /// The nonce the next response will carry (unique within the stream once committed).
    pub(crate) fn next_nonce_peek(&self) -> String {
        (self.nonce_counter + 1).to_string()
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
            .is_some_and(|t| t.version() == snapshot.version())
        {
            return;
        }
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
                }
                _ => break,
            }
        }
    }

    fn acked_at_version(&self, type_url: &str, resource: &Resource) -> bool {
        self.types
            .get(type_url)
            .and_then(|t| t.acked.get(&resource.name))
            .is_some_and(|h| h.version == resource.version)
    }

    /// Envoy has ACKed every target cluster and every load assignment the target's EDS
    /// clusters read.
    fn clusters_ready(&self, target: &Snapshot) -> bool {
        let clusters_ok = target
            .resources(CLUSTER_TYPE_URL)
            .into_iter()
            .flat_map(|m| m.values())
            .all(|r| self.acked_at_version(CLUSTER_TYPE_URL, r));
        clusters_ok
            && target
                .needed_eds()
                .all(|r| self.acked_at_version(ENDPOINT_TYPE_URL, r))
    }

    /// Envoy has ACKed exactly the target's listeners, and the route configurations they read.
    fn routes_ready(&self, target: &Snapshot) -> bool {
        let listeners = target.resources(LISTENER_TYPE_URL);
        let listeners_ok = listeners
            .into_iter()
            .flat_map(|m| m.values())
            .all(|r| self.acked_at_version(LISTENER_TYPE_URL, r));
        let no_extra = self.types.get(LISTENER_TYPE_URL).is_none_or(|t| {
            t.acked
                .keys()
                .all(|n| listeners.is_some_and(|l| l.contains_key(n)))
        });
        listeners_ok
            && no_extra
            && target
                .needed_rds()
                .all(|r| self.acked_at_version(ROUTE_TYPE_URL, r))
    }

    /// The order responses go out in: clusters and endpoints before listeners and routes (as
    /// Envoy asks for them), then any other type.
    pub(crate) fn order(&self) -> Vec<String> {
        let core = [
            CLUSTER_TYPE_URL,
            ENDPOINT_TYPE_URL,
            LISTENER_TYPE_URL,
            ROUTE_TYPE_URL,
        ];
        let mut order: Vec<String> = core.iter().map(|s| s.to_string()).collect();
        order.extend(
            self.types
                .keys()
                .filter(|t| !core.contains(&t.as_str()))
                .cloned(),
        );
        order
    }

    /// What `type_url` should hold on Envoy now, or `None` if nothing is to be sent for it yet.
    pub(crate) fn desired(&self, type_url: &str) -> Option<Desired> {
        let state = self.types.get(type_url)?;
        let (source, keep_others) = match type_url {
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
        let items = source
            .resources(type_url)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(name, _)| state.subscribed(name))
            .map(|(name, r)| (name.clone(), r.clone()))
            .collect();
        Some(Desired { items, keep_others })
    }

    /// Records the answer to the pending response of `type_url`.
    pub(crate) fn reply(&mut self, type_url: &str, error: Option<(i32, String)>) {
        let Some(state) = self.types.get_mut(type_url) else {
            return;
        };
        let Some(pending) = state.pending.take() else {
            return;
        };
        match error {
            None => {
                state.acked = pending.contents;
                state.acked_version = Some(pending.version);
                state.acked_at = Some(SystemTime::now());
            }
            Some((code, message)) => {
                // Envoy keeps what it had before: so do we, and never resend this version.
                state.sent = state.acked.clone();
                state.sent_version = state.acked_version.clone();
                state.nacked_version = Some(pending.version.clone());
                let record = NackRecord {
                    type_url: type_url.to_string(),
                    version: pending.version,
                    nonce: pending.nonce,
                    code,
                    message,
                    at: SystemTime::now(),
                };
                tracing::warn!(
                    node = %self.node_id,
                    snapshot_key = %self.snapshot_key,
                    type_url,
                    version = %record.version,
                    error = %record.message,
                    "Envoy rejected (NACKed) a response; it will not be resent"
                );
                self.nack_count += 1;
                self.last_nack = Some(record);
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
                .map(|(t, s)| (t.clone(), s.status()))
                .collect(),
            last_nack: self.last_nack.clone(),
            nack_count: self.nack_count,
        }
    }

    /// The state of `type_url`, created on first use.
    pub(crate) fn type_state(&mut self, type_url: &str) -> &mut TypeState {
        self.types
            .entry(type_url.to_string())
            .or_insert_with(|| TypeState {
                wildcard: is_wildcard_type(type_url),
                ..TypeState::default()
            })
    }
}
