//! The delta (incremental) ADS stream machine.
//!
//! Protocol: <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds>.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest as XdsDeltaDiscoveryRequest;

use crate::rollout::{parse_nonce, Core, Desired, Held, HeldSet};
use crate::status::{Protocol, ProxyStatus};
use crate::wire::DeltaResponse;
use crate::{is_wildcard_type, Resource, Snapshot, XdsNode};

/// One delta ADS stream: a synchronous state machine without I/O.
///
/// It tracks, per type, the version of every resource Envoy holds (seeded from
/// `initial_resource_versions` when Envoy reconnects) and sends only differences:
/// changed or new resources, and `removed_resources`. Responses hold the snapshot's resources
/// (`DeltaDiscoveryResponse::from` makes an owned message of one).
#[derive(Debug)]
pub struct DeltaStream {
    core: Core,
}

impl DeltaStream {
    /// A stream for `node` (from its first request), serving the snapshots of `snapshot_key`.
    pub fn new(node: &XdsNode, snapshot_key: impl Into<String>) -> Self {
        Self {
            core: Core::new(node, snapshot_key.into(), Protocol::Delta),
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

    /// Handles one request from Envoy: initial request, ACK/NACK, subscribe/unsubscribe.
    ///
    /// A request carrying a nonce that is not the latest sent for its type is stale as an
    /// ACK/NACK and ignored as such; unlike SotW its subscription changes still apply, because
    /// delta subscriptions are incremental and Envoy never repeats them.
    pub fn handle_request(&mut self, request: XdsDeltaDiscoveryRequest) -> Vec<DeltaResponse> {
        let type_url = request.type_url.as_str();
        if type_url.is_empty() {
            tracing::debug!(node = %self.core.node_id, "request without type_url ignored");
            return Vec::new();
        }
        let index = self.core.type_index(type_url);
        if !request.response_nonce.is_empty() {
            let state = &self.core.types[index];
            let current =
                state.pending.is_some() && parse_nonce(&request.response_nonce) == state.pending;
            if current {
                let error = request
                    .error_detail
                    .as_ref()
                    .map(|e| (e.code, e.message.clone()));
                self.core.reply(index, error);
            } else {
                tracing::debug!(
                    node = %self.core.node_id,
                    type_url,
                    nonce = %request.response_nonce,
                    "stale ACK/NACK ignored"
                );
            }
        }
        let state = &mut self.core.types[index];
        let first = !state.requested;
        let was_wildcard = state.wildcard;
        if !state.requested {
            // First request of this type on the stream: what Envoy already holds (after a
            // reconnect) counts as sent and accepted, so only differences go out.
            if !request.initial_resource_versions.is_empty() {
                let held: Vec<Held> = state
                    .sent
                    .iter()
                    .cloned()
                    .chain(
                        request
                            .initial_resource_versions
                            .iter()
                            .map(|(n, v)| Held::Known(Box::new((n.clone(), v.clone())))),
                    )
                    .collect();
                state.sent = HeldSet::from_unsorted(held);
                state.acked = state.sent.clone();
                let version = state.sent.version();
                state.sent_version = Some(version);
                state.acked_version = Some(version);
                state.acked_at = Some(std::time::SystemTime::now());
            }
            // Legacy wildcard: a first LDS/CDS request subscribing to nothing means everything.
            state.wildcard =
                is_wildcard_type(type_url) && request.resource_names_subscribe.is_empty();
            state.must_respond = state.wildcard;
            state.requested = true;
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
            }
        }
        // Envoy forgets what it unsubscribed from. Only a request that can have dropped a
        // name filters: filtering on every ACK would cost a name lookup per held resource.
        let narrowed = first || was_wildcard || !request.resource_names_unsubscribe.is_empty();
        if !state.wildcard && narrowed {
            let names = &state.names;
            let keep = |n: &str| names.contains(n);
            state.sent.retain(keep);
            state.acked.retain(keep);
        }
        self.reconcile()
    }

    /// Takes a new snapshot for the stream's key and returns what to send now.
    pub fn handle_snapshot_update(&mut self, snapshot: Arc<Snapshot>) -> Vec<DeltaResponse> {
        self.core.set_snapshot(snapshot);
        self.reconcile()
    }

    /// Sends, per type with no response in flight, the differences between what Envoy holds
    /// and what it should hold.
    fn reconcile(&mut self) -> Vec<DeltaResponse> {
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
            // Sent the whole type already: nothing changed or removed, whatever `keep_others`
            // says.
            if !state.must_respond && state.sent_whole_type(&source) {
                continue;
            }
            let desired = Desired::of(&source, state, keep_others);
            let changed: Vec<&Arc<Resource>> = state
                .sent
                .lookup(desired.items.iter().copied())
                .filter(|(r, held)| !held.is_some_and(|h| h.is(r)))
                .map(|(r, _)| r)
                .collect();
            let removed: Vec<&Held> = if desired.keep_others {
                Vec::new()
            } else {
                state.sent.not_in(&desired.items)
            };
            if changed.is_empty() && removed.is_empty() && !state.must_respond {
                continue;
            }
            state.must_respond = false;
            let contents = if changed.is_empty() && removed.is_empty() {
                state.sent.clone()
            } else {
                // What Envoy holds once it accepts: sent, minus removed, with changed ones.
                let mut held: Vec<Held> = state
                    .sent
                    .iter()
                    .filter(|h| {
                        removed
                            .binary_search_by(|r| r.name().cmp(h.name()))
                            .is_err()
                            && changed
                                .binary_search_by(|c| c.name.as_str().cmp(h.name()))
                                .is_err()
                    })
                    .cloned()
                    .collect();
                held.extend(changed.iter().map(|r| Held::Sent(Arc::clone(r))));
                held.sort_by(|a, b| a.name().cmp(b.name()));
                HeldSet::from_sorted(held)
            };
            let version = desired
                .known_version_of_held(&contents)
                .unwrap_or_else(|| contents.version());
            if state.nacked_version == Some(version) {
                continue;
            }
            let resources: Vec<Arc<Resource>> = changed.iter().map(|r| Arc::clone(r)).collect();
            let removed_resources = removed.iter().map(|h| h.name().to_string()).collect();
            state.responses_sent += 1;
            state.resources_sent += changed.len() as u64;
            state.last_nonce = Some(nonce);
            state.pending = Some(nonce);
            state.sent = contents;
            state.sent_version = Some(version);
            out.push(DeltaResponse {
                version: Some(version),
                resources,
                type_url: state.type_url.clone(),
                removed: removed_resources,
                nonce,
            });
            self.core.commit_nonce();
        }
        out
    }
}
