//! What the control plane knows about each connected proxy.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::RolloutPhase;

/// Which ADS variant a stream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// State of the world (`StreamAggregatedResources`).
    Sotw,
    /// Incremental (`DeltaAggregatedResources`).
    Delta,
}

/// One NACK received from Envoy.
#[derive(Clone, Debug, PartialEq)]
pub struct NackRecord {
    /// The type URL of the rejected response.
    pub type_url: String,
    /// The version of the rejected response.
    pub version: String,
    /// The nonce of the rejected response.
    pub nonce: String,
    /// Envoy's gRPC status code for the rejection.
    pub code: i32,
    /// Envoy's error message.
    pub message: String,
    /// When the NACK arrived.
    pub at: SystemTime,
}

/// Per-type state of one stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeStatus {
    /// The version of the last response sent (`version_info` / `system_version_info`).
    pub sent_version: Option<String>,
    /// The version of the last response Envoy ACKed.
    pub acked_version: Option<String>,
    /// When that ACK arrived.
    pub acked_at: Option<SystemTime>,
    /// The version Envoy last NACKed (never resent).
    pub nacked_version: Option<String>,
    /// The nonce of a response not yet ACKed or NACKed.
    pub pending_nonce: Option<String>,
    /// Names Envoy subscribes to (`["*"]` for a wildcard subscription).
    pub subscribed: Vec<String>,
    /// Number of responses sent for this type on this stream.
    pub responses_sent: u64,
    /// Number of resources sent for this type on this stream (delta sends only differences).
    pub resources_sent: u64,
}

/// One connected ADS stream, as reported by [`crate::AdsServer::proxy_status`].
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyStatus {
    /// Unique id of the stream within the server.
    pub stream_id: u64,
    /// Envoy's `node.id`.
    pub node_id: String,
    /// Envoy's `node.cluster`.
    pub node_cluster: String,
    /// The snapshot key the node resolved to.
    pub snapshot_key: String,
    /// SotW or delta.
    pub protocol: Protocol,
    /// When the stream was opened.
    pub connected_since: SystemTime,
    /// The version of the snapshot the stream is rolling out or has rolled out, if any.
    pub snapshot_version: Option<String>,
    /// Where the rollout of that snapshot stands.
    pub rollout: RolloutPhase,
    /// Per type URL.
    pub types: BTreeMap<String, TypeStatus>,
    /// The last NACK on this stream.
    pub last_nack: Option<NackRecord>,
    /// NACKs received on this stream.
    pub nack_count: u64,
}

impl ProxyStatus {
    /// The ACKed version of a type, if any.
    pub fn acked_version(&self, type_url: &str) -> Option<&str> {
        self.types
            .get(type_url)
            .and_then(|t| t.acked_version.as_deref())
    }

    /// Whether the stream has fully rolled out the snapshot of this version.
    pub fn is_synced_to(&self, snapshot_version: &str) -> bool {
        self.rollout == RolloutPhase::Steady
            && self.snapshot_version.as_deref() == Some(snapshot_version)
            && self.types.values().all(|t| t.pending_nonce.is_none())
    }
}
