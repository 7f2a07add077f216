//! The crate's errors.

/// Why a stats stream or report was refused.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The stream's first message named no node.
    #[error("the first StreamMetricsMessage names no node (identifier.node.id)")]
    Unidentified,
    /// The node id does not name a virtual node or virtual gateway.
    #[error(
        "node id {0:?} names no virtual node or virtual gateway (mesh/<mesh>/virtualNode/<name>)"
    )]
    UnknownNode(String),
    /// The node id names another resource than the TLS peer's certificate.
    #[error("node id names {claimed} but the client's certificate names {certified}")]
    WrongIdentity {
        /// What the stream's node id says.
        claimed: String,
        /// What the connection's certificate says.
        certified: String,
    },
}
