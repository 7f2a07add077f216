//! The state-of-the-world ADS stream machine.
//!
//! Protocol: <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack-nack-and-resource-type-instance-version>.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest as XdsDiscoveryRequest;

use crate::resource::content_version;
use crate::rollout::{parse_nonce, Core, Desired, Held, HeldSet};
use crate::status::{Protocol, ProxyStatus};
use crate::wire::SotwResponse;
use crate::{is_wildcard_type, Resource, Snapshot, XdsNode};

/// One SotW ADS stream: a synchronous state machine without I/O.
///
/// Feed it Envoy's requests and snapshot changes; send what it returns, in order. Responses hold
/// the snapshot's resources (`DiscoveryResponse::from` makes an owned message of one).
#[derive(Debug)]
pub struct SotwStream {
    core: Core,
}

impl SotwStream {
    /// A stream for `node` (from its first request), serving the snapshots of `snapshot_key`.
    pub fn new(node: &XdsNode, snapshot_key: impl Into<String>) -> Self {
        Self {
            core: Core::new(node, snapshot_key.into(), Protocol::Sotw),
        }
    }

    pub(crate) fn set_stream_id(&mut self, id: u64) {
        self.core.stream_id = id;
    }

    /// The stream's state, for `proxy-status`.
    /// Time from a rolled-out snapshot's origin to its rollout, once, if one was just reached
    /// (a change reaching an Envoy that held an older snapshot).
    pub fn take_convergence(&mut self) -> Option<std::time::Duration> {
        self.core.converged.take()
    }

    pub fn status(&self) -> ProxyStatus {
        self.core.status()
    }

    /// NACKs received on this stream (cheap: no status copy).
    pub(crate) fn nack_count(&self) -> u64 {
        self.core.nack_count
    }

    /// Handles one request from Envoy: an initial request, an ACK, a NACK or a subscription
    /// change. A request whose `response_nonce` is not the latest nonce sent for its type is
    /// stale and ignored entirely, its `resource_names` included: Envoy follows it with a
    /// current one (after a CDS change it sends EDS requests with an older nonce; see
    /// `envoy-notes.md`).
    pub fn handle_request(&mut self, request: XdsDiscoveryRequest) -> Vec<SotwResponse> {
        let type_url = request.type_url.as_str();
        if type_url.is_empty() {
            tracing::debug!(node = %self.core.node_id, "request without type_url ignored");
            return Vec::new();
        }
        let index = self.core.type_index(type_url);
        if !request.response_nonce.is_empty() {
            let state = &self.core.types[index];
            if state.last_nonce.is_none()
                || parse_nonce(&request.response_nonce) != state.last_nonce
            {
                tracing::debug!(
                    node = %self.core.node_id,
                    type_url,
                    nonce = %request.response_nonce,
                    "stale request ignored"
                );
                return Vec::new();
            }
            if state.pending.is_some() {
                let error = request
                    .error_detail
                    .as_ref()
                    .map(|e| (e.code, e.message.clone()));
                self.core.reply(index, error);
            }
        }
        let state = &mut self.core.types[index];
        let wildcard = is_wildcard_type(type_url)
            && (request.resource_names.is_empty()
                || request.resource_names.iter().any(|n| n == "*"));
        // An empty nonce is a (re)subscription: answer it even if nothing changed. A changed
        // name set alone needs no answer unless content changes (added names we have), which
        // reconcile sees; answering anyway makes Envoy ACK again and loops on every change.
        if !state.requested || request.response_nonce.is_empty() {
            state.must_respond = true;
        }
        // Envoy repeats its names in every request: rebuild the set only when it changed.
        let requested = request.resource_names.iter().filter(|n| n.as_str() != "*");
        if !requested.clone().eq(state.names.iter()) {
            state.names = requested.cloned().collect::<BTreeSet<String>>();
        }
        state.wildcard = wildcard;
        state.requested = true;
        self.reconcile()
    }

    /// Takes a new snapshot for the stream's key and returns what to send now.
    pub fn handle_snapshot_update(&mut self, snapshot: Arc<Snapshot>) -> Vec<SotwResponse> {
        self.core.set_snapshot(snapshot);
        self.reconcile()
    }

    /// Sends, per type with no response in flight, what Envoy should hold and does not.
    fn reconcile(&mut self) -> Vec<SotwResponse> {
        self.core.advance();
        let mut out = Vec::new();
        for index in 0..self.core.types.len() {
            // Nothing goes out for a type not asked for or with a response in flight: skip
            // it before computing what it should hold.
            if self
                .core
                .types
                .get(index)
                .is_none_or(|t| !t.requested || t.pending.is_some())
            {
                continue;
            }
            let Some((source, keep_others)) = self.core.source(index) else {
                continue;
            };
            let nonce = self.core.next_nonce_peek();
            let Some(state) = self.core.types.get_mut(index) else {
                continue;
            };
            if !state.requested || state.pending.is_some() {
                continue;
            }
            // Sent the whole type already: unchanged, whatever `keep_others` says.
            if !state.must_respond && state.sent_whole_type(&source) {
                continue;
            }
            let desired = Desired::of(&source, state, keep_others);
            // Without others added, `items` are exactly the desired ones, whose version the
            // snapshot may already know.
            let known_version = desired.full_version;
            let desired_len = desired.items.len();
            let mut items = desired.items;
            if desired.keep_others {
                // One merge walk of the two sorted lists (equal `Arc`s match without
                // comparing names), not a name search per held resource.
                let others: Vec<&Arc<Resource>> = state
                    .sent
                    .not_in(&items)
                    .into_iter()
                    .filter_map(|held| match held {
                        Held::Sent(r) if state.subscribed(&r.name) => Some(r),
                        _ => None,
                    })
                    .collect();
                if !others.is_empty() {
                    items.extend(others);
                    items.sort_by(|a, b| a.name.cmp(&b.name));
                }
            }
            // Same (name, version) pairs as sent: same content version, no hashing needed.
            let unchanged = state.sent_version.is_some()
                && items.len() == state.sent.len()
                && items.iter().zip(state.sent.iter()).all(|(r, h)| h.is(r));
            if unchanged && !state.must_respond {
                continue;
            }
            let version = if unchanged { state.sent_version } else { None }
                .or(known_version.filter(|_| items.len() == desired_len))
                .unwrap_or_else(|| {
                    content_version(items.iter().map(|r| (r.name.as_str(), r.version.as_str())))
                });
            // Owned from here: `items` may borrow from `state.sent`, replaced below.
            let sent = HeldSet::from_sorted(items.into_iter().cloned().map(Held::Sent).collect());
            state.must_respond = false;
            if state.nacked_version == Some(version) {
                continue;
            }
            // RDS/EDS (not wildcard): an empty answer could read as "no such resource"; Envoy
            // waits for resources we do not have.
            if !state.wildcard && sent.len() == 0 {
                continue;
            }
            state.responses_sent += 1;
            state.resources_sent += sent.len() as u64;
            state.last_nonce = Some(nonce);
            state.pending = Some(nonce);
            state.sent_version = Some(version);
            state.sent = sent.clone();
            out.push(SotwResponse {
                version: Some(version),
                resources: sent,
                type_url: state.type_url.clone(),
                nonce,
            });
            self.core.commit_nonce();
        }
        out
    }
}
