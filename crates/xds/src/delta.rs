//! The delta (incremental) ADS stream machine.
//!
//! Protocol: <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds>.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest as XdsDeltaDiscoveryRequest,
    DeltaDiscoveryResponse as XdsDeltaDiscoveryResponse, Resource as XdsDeltaResource,
};

use crate::resource::content_version;
use crate::rollout::{Core, Held, Pending};
use crate::status::{Protocol, ProxyStatus};
use crate::{is_wildcard_type, Snapshot, XdsNode};

/// One delta ADS stream: a synchronous state machine without I/O.
///
/// It tracks, per type, the version of every resource Envoy holds (seeded from
/// `initial_resource_versions` when Envoy reconnects) and sends only differences:
/// changed or new resources, and `removed_resources`.
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
    pub fn status(&self) -> ProxyStatus {
        self.core.status()
    }

    /// Handles one request from Envoy: initial request, ACK/NACK, subscribe/unsubscribe.
    ///
    /// A request carrying a nonce that is not the latest sent for its type is stale as an
    /// ACK/NACK and ignored as such; unlike SotW its subscription changes still apply, because
    /// delta subscriptions are incremental and Envoy never repeats them.
    pub fn handle_request(
        &mut self,
        request: XdsDeltaDiscoveryRequest,
    ) -> Vec<XdsDeltaDiscoveryResponse> {
        let type_url = request.type_url.as_str();
        if type_url.is_empty() {
            tracing::debug!(node = %self.core.node_id, "request without type_url ignored");
            return Vec::new();
        }
        let state = self.core.type_state(type_url);
        if !request.response_nonce.is_empty() {
            let current = state
                .pending
                .as_ref()
                .is_some_and(|p| p.nonce == request.response_nonce);
            if current {
                let error = request
                    .error_detail
                    .as_ref()
                    .map(|e| (e.code, e.message.clone()));
                self.core.reply(type_url, error);
            } else {
                tracing::debug!(
                    node = %self.core.node_id,
                    type_url,
                    nonce = %request.response_nonce,
                    "stale ACK/NACK ignored"
                );
            }
        }
        let state = self.core.type_state(type_url);
        if !state.requested {
            // First request of this type on the stream: what Envoy already holds (after a
            // reconnect) counts as sent and accepted, so only differences go out.
            for (name, version) in &request.initial_resource_versions {
                let held = Held {
                    version: version.clone(),
                    resource: None,
                };
                state.sent.insert(name.clone(), held.clone());
                state.acked.insert(name.clone(), held);
            }
            if !request.initial_resource_versions.is_empty() {
                let version = content_version(state.sent.iter().map(|(n, h)| (n, &h.version)));
                state.sent_version = Some(version.clone());
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
        // Envoy forgets what it unsubscribed from.
        let (wildcard, names) = (state.wildcard, state.names.clone());
        let keep = |n: &String| wildcard || names.contains(n);
        state.sent.retain(|n, _| keep(n));
        state.acked.retain(|n, _| keep(n));
        if let Some(p) = state.pending.as_mut() {
            p.contents.retain(|n, _| keep(n));
        }
        self.reconcile()
    }

    /// Takes a new snapshot for the stream's key and returns what to send now.
    pub fn handle_snapshot_update(
        &mut self,
        snapshot: Arc<Snapshot>,
    ) -> Vec<XdsDeltaDiscoveryResponse> {
        self.core.set_snapshot(snapshot);
        self.reconcile()
    }

    /// Sends, per type with no response in flight, the differences between what Envoy holds
    /// and what it should hold.
    fn reconcile(&mut self) -> Vec<XdsDeltaDiscoveryResponse> {
        self.core.advance();
        let mut out = Vec::new();
        for type_url in self.core.order() {
            let Some(desired) = self.core.desired(&type_url) else {
                continue;
            };
            let nonce = self.core.next_nonce_peek();
            let Some(state) = self.core.types.get_mut(&type_url) else {
                continue;
            };
            if !state.requested || state.pending.is_some() {
                continue;
            }
            let changed: Vec<_> = desired
                .items
                .values()
                .filter(|r| state.sent.get(&r.name).map(|h| &h.version) != Some(&r.version))
                .cloned()
                .collect();
            let removed: Vec<String> = if desired.keep_others {
                Vec::new()
            } else {
                state
                    .sent
                    .keys()
                    .filter(|n| !desired.items.contains_key(*n))
                    .cloned()
                    .collect()
            };
            if changed.is_empty() && removed.is_empty() && !state.must_respond {
                continue;
            }
            state.must_respond = false;
            let mut contents = state.sent.clone();
            for r in &changed {
                contents.insert(r.name.clone(), Held::of(r));
            }
            for n in &removed {
                contents.remove(n);
            }
            let version = content_version(contents.iter().map(|(n, h)| (n, &h.version)));
            if state.nacked_version.as_deref() == Some(version.as_str()) {
                continue;
            }
            state.responses_sent += 1;
            state.resources_sent += changed.len() as u64;
            state.last_nonce = Some(nonce.clone());
            state.sent = contents.clone();
            state.sent_version = Some(version.clone());
            state.pending = Some(Pending {
                nonce: nonce.clone(),
                version: version.clone(),
                contents,
            });
            out.push(XdsDeltaDiscoveryResponse {
                system_version_info: version,
                resources: changed
                    .iter()
                    .map(|r| XdsDeltaResource {
                        name: r.name.clone(),
                        version: r.version.clone(),
                        resource: Some(r.body.clone()),
                        ..XdsDeltaResource::default()
                    })
                    .collect(),
                type_url: type_url.clone(),
                removed_resources: removed,
                nonce,
                ..XdsDeltaDiscoveryResponse::default()
            });
            self.core.commit_nonce();
        }
        out
    }
}
