//! The one error type of the translation.

/// Why a translation (or the parsing of a proxy's identity or options) failed.
///
/// Missing references inside a mesh (a backend naming a service that does not exist, a route
/// target whose node was deleted) are *not* errors: translation skips them so that the proxy
/// still gets valid config for everything else.
///
/// A variant about an App Mesh resource carries what names it (mesh and name), and
/// [`TranslateError::resource`] names it as App Mesh does, e.g. `virtualNode/front`.
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
    /// A TLS setting of the proxy's own virtual node or gateway that Envoy would refuse (an
    /// empty secret name or path, a NUL character). Nothing is sent: the proxy keeps its
    /// previous config rather than get a listener without the TLS its spec asks for.
    #[error("{resource}: TLS cannot be translated: {reason}")]
    InvalidTls {
        /// The resource, as App Mesh names it (`virtualNode/front`).
        resource: String,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The proxy's own spec names a certificate or trust served over SDS (`sds`, `acm`), but
    /// the proxy has no Weft identity (`weft.identity` is not true in its node metadata), so
    /// its Envoy has no SDS cluster to fetch it through: the secret would never come and
    /// every handshake would fail. Nothing is sent: the proxy keeps its previous config rather than serve plaintext where its spec
    /// asks for TLS.
    #[error("{resource}: {reason}")]
    NoIdentity {
        /// The resource, as App Mesh names it (`virtualNode/front`).
        resource: String,
        /// Which setting, and what to do.
        reason: String,
    },
    /// A feature that this version of Weft does not translate yet.
    #[error("not supported yet: {0}")]
    Unsupported(String),
}

impl TranslateError {
    /// The App Mesh resource the error is about, in App Mesh's `<kind>/<name>` form
    /// (`virtualNode/front`, `virtualGateway/ingress`), if it names one. The other variants are
    /// about the proxy's own identity or options, or the control plane's use of the
    /// translator (a mesh mismatch), not about a resource of the mesh.
    pub fn resource(&self) -> Option<String> {
        match self {
            Self::VirtualNodeNotFound { name, .. } => Some(format!("virtualNode/{name}")),
            Self::VirtualGatewayNotFound { name, .. } => Some(format!("virtualGateway/{name}")),
            Self::InvalidTls { resource, .. } | Self::NoIdentity { resource, .. } => {
                Some(resource.clone())
            }
            Self::InvalidNodeId { .. }
            | Self::InvalidMetadata { .. }
            | Self::MeshMismatch { .. }
            | Self::Unsupported(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_about_a_missing_node_or_gateway_names_it_as_app_mesh_does() {
        let node = TranslateError::VirtualNodeNotFound {
            mesh: "apps".into(),
            name: "front".into(),
        };
        assert_eq!(node.resource().as_deref(), Some("virtualNode/front"));
        let gateway = TranslateError::VirtualGatewayNotFound {
            mesh: "apps".into(),
            name: "ingress".into(),
        };
        assert_eq!(
            gateway.resource().as_deref(),
            Some("virtualGateway/ingress")
        );
        let metadata = TranslateError::InvalidMetadata {
            key: "weft.egress_port".into(),
            reason: "expected a port number".into(),
        };
        assert_eq!(metadata.resource(), None);
    }
}
