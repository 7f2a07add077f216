//! The crate's one error type.

/// Errors of the xDS control plane.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// Two resources of one type share a name in a snapshot.
    #[error("duplicate {type_url} resource named {name:?} in snapshot")]
    DuplicateResource {
        /// The resource type.
        type_url: String,
        /// The duplicated name.
        name: String,
    },
    /// A resource has an empty name (Envoy could not address it).
    #[error("{type_url} resource with an empty name")]
    EmptyName {
        /// The resource type.
        type_url: String,
    },
    /// The gRPC transport failed (binding, serving).
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// An I/O error (sockets, files, processes in test helpers).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A test peer (Envoy, fake client) misbehaved or timed out.
    #[error("{0}")]
    Peer(String),
}
