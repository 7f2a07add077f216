//! The one error type of the translation.

/// Why a translation (or the parsing of a proxy's identity or options) failed.
///
/// Missing references inside a mesh (a backend naming a service that does not exist, a route
/// target whose node was deleted) are *not* errors: translation skips them so that the proxy
/// still gets valid config for everything else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The Envoy `node.id` is neither `mesh/<mesh>/virtualNode|virtualGateway/<name>` nor an
    /// App Mesh ARN of that shape.
    #[error("invalid proxy node id {id:?}: {reason}")]
    InvalidNodeId {
        /// The node id as received.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `weft.*` key of the node metadata has the wrong type or an invalid value.
    #[error("invalid node metadata {key:?}: {reason}")]
    InvalidMetadata {
        /// The metadata key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The proxy names a mesh other than the snapshot's.
    #[error("proxy belongs to mesh {proxy_mesh:?} but the snapshot is of mesh {snapshot_mesh:?}")]
    MeshMismatch {
        /// The mesh in the proxy identity.
        proxy_mesh: String,
        /// The mesh of the snapshot.
        snapshot_mesh: String,
    },
    /// The proxy's virtual node does not exist (yet). The ADS server keeps such a proxy
    /// waiting with no config until the node is created.
    #[error("virtual node {name:?} does not exist in mesh {mesh:?}")]
    VirtualNodeNotFound {
        /// Mesh name.
        mesh: String,
        /// Virtual node name.
        name: String,
    },
    /// The proxy's virtual gateway does not exist (yet). Like a missing virtual node, the ADS
    /// server keeps such a proxy waiting with no config until the gateway is created.
    #[error("virtual gateway {name:?} does not exist in mesh {mesh:?}")]
    VirtualGatewayNotFound {
        /// Mesh name.
        mesh: String,
        /// Virtual gateway name.
        name: String,
    },
    /// A feature that this version of Weft does not translate yet.
    #[error("not supported yet: {0}")]
    Unsupported(String),
}
