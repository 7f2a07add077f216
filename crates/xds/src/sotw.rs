//! The state-of-the-world ADS stream machine.
//!
//! Protocol: <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack-nack-and-resource-type-instance-version>.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest as XdsDiscoveryRequest, DiscoveryResponse as XdsDiscoveryResponse,
};

use crate::resource::content_version;
use crate::rollout::{Core, Held, Pending};
use crate::status::{Protocol, ProxyStatus};
use crate::{is_wildcard_type, Snapshot, XdsNode};

/// One SotW ADS stream: a synchronous state machine without I/O.
///
/// Feed it Envoy's requests and snapshot changes; send what it returns, in order.
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
    pub fn status(&self) -> ProxyStatus {
        self.core.status()
    }

    /// Handles one request from Envoy: an initial request, an ACK, a NACK or a subscription
    /// change. A request whose `response_nonce` is not the latest nonce sent for its type is
    /// stale and ignored entirely, its `resource_names` included: Envoy follows it with a
    /// current one (after a CDS change it sends EDS requests with an older nonce; see
    /// `envoy-notes.md`).
    pub fn handle_request(&mut self, request: XdsDiscoveryRequest) -> Vec<XdsDiscoveryResponse> {
        let type_url = request.type_url.as_str();
        if type_url.is_empty() {
            tracing::debug!(node = %self.core.node_id, "request without type_url ignored");
            return Vec::new();
        }
        let state = self.core.type_state(type_url);
        if !request.response_nonce.is_empty() {
            if state.last_nonce.as_deref() != Some(request.response_nonce.as_str()) {
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
                self.core.reply(type_url, error);
            }
        }
        let state = self.core.type_state(type_url);
        let names: BTreeSet<String> = request
            .resource_names
            .iter()
            .filter(|n| n.as_str() != "*")
            .cloned()
            .collect();
        let wildcard = is_wildcard_type(type_url)
            && (request.resource_names.is_empty()
                || request.resource_names.iter().any(|n| n == "*"));
        // An empty nonce is a (re)subscription: answer it even if nothing changed. A changed
        // name set alone needs no answer unless content changes (added names we have), which
        // reconcile sees; answering anyway makes Envoy ACK again and loops on every change.
        if !state.requested || request.response_nonce.is_empty() {
            state.must_respond = true;
        }
        state.wildcard = wildcard;
        state.names = names;
        state.requested = true;
        self.reconcile()
    }

    /// Takes a new snapshot for the stream's key and returns what to send now.
    pub fn handle_snapshot_update(&mut self, snapshot: Arc<Snapshot>) -> Vec<XdsDiscoveryResponse> {
        self.core.set_snapshot(snapshot);
        self.reconcile()
    }

    /// Sends, per type with no response in flight, what Envoy should hold and does not.
    fn reconcile(&mut self) -> Vec<XdsDiscoveryResponse> {
        self.core.advance();
        let mut out = Vec::new();
        for type_url in self.core.order() {
            let Some(desired) = self.core.desired(&type_url) else {
                continue;
            };
            let nonce_if_sent = self.core.next_nonce_peek();
            let Some(state) = self.core.types.get_mut(&type_url) else {
                continue;
            };
            if !state.requested || state.pending.is_some() {
                continue;
            }
            let mut items = desired.items;
            if desired.keep_others {
                for (name, held) in &state.sent {
                    if state.subscribed(name) && !items.contains_key(name) {
                        if let Some(r) = &held.resource {
                            items.insert(name.clone(), r.clone());
                        }
                    }
                }
            }
            let version = content_version(items.iter().map(|(n, r)| (n, &r.version)));
            let unchanged = state.sent_version.as_deref() == Some(version.as_str());
            if unchanged && !state.must_respond {
                continue;
            }
            state.must_respond = false;
            if state.nacked_version.as_deref() == Some(version.as_str()) {
                continue;
            }
            // RDS/EDS (not wildcard): an empty answer could read as "no such resource"; Envoy
            // waits for resources we do not have.
            if !state.wildcard && items.is_empty() {
                continue;
            }
            let nonce = nonce_if_sent;
            state.responses_sent += 1;
            state.resources_sent += items.len() as u64;
            state.last_nonce = Some(nonce.clone());
            state.sent = items
                .iter()
                .map(|(n, r)| (n.clone(), Held::of(r)))
                .collect();
            state.sent_version = Some(version.clone());
            state.pending = Some(Pending {
                nonce: nonce.clone(),
                version: version.clone(),
                contents: state.sent.clone(),
            });
            out.push(XdsDiscoveryResponse {
                version_info: version,
                resources: items.values().map(|r| r.body.clone()).collect(),
                type_url: type_url.clone(),
                nonce,
                ..XdsDiscoveryResponse::default()
            });
            self.core.commit_nonce();
        }
        out
    }
}
