//! Which proxy is asking: parsed from the Envoy `node.id` (docs/proxy-contract.md, "Node identity").

use std::fmt;
use std::str::FromStr;

use crate::TranslateError;

/// Whether the proxy stands for a virtual node (a sidecar) or a virtual gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProxyKind {
    /// A sidecar beside a workload: `mesh/<mesh>/virtualNode/<name>`.
    VirtualNode,
    /// An ingress gateway: `mesh/<mesh>/virtualGateway/<name>`.
    VirtualGateway,
}

/// The mesh resource one Envoy represents.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProxyIdentity {
    /// Mesh name.
    pub mesh: String,
    /// Node or gateway.
    pub kind: ProxyKind,
    /// Virtual node or virtual gateway name.
    pub name: String,
}

impl ProxyIdentity {
    /// A virtual node proxy.
    pub fn virtual_node(mesh: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            mesh: mesh.into(),
            kind: ProxyKind::VirtualNode,
            name: name.into(),
        }
    }
}

impl fmt::Display for ProxyIdentity {
    /// The canonical node id, `mesh/<mesh>/virtualNode/<name>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ProxyKind::VirtualNode => "virtualNode",
            ProxyKind::VirtualGateway => "virtualGateway",
        };
        write!(f, "mesh/{}/{}/{}", self.mesh, kind, self.name)
    }
}

impl FromStr for ProxyIdentity {
    type Err = TranslateError;

    /// Accepts `mesh/<mesh>/virtualNode/<name>`, `mesh/<mesh>/virtualGateway/<name>`, or the
    /// full ARN `arn:<partition>:appmesh:<region>:<account>:mesh/...`, which is what App Mesh's
    /// Envoy image puts in `node.id` from `APPMESH_RESOURCE_ARN` (virtual_nodes.md).
    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| TranslateError::InvalidNodeId {
            id: id.to_string(),
            reason: reason.to_string(),
        };
        let resource = if id.starts_with("arn:") {
            let parts: Vec<&str> = id.splitn(6, ':').collect();
            match parts.as_slice() {
                [_, _, "appmesh", _, _, resource] => *resource,
                _ => {
                    return Err(invalid(
                        "an ARN must look like arn:aws:appmesh:<region>:<account>:mesh/...",
                    ))
                }
            }
        } else {
            id
        };
        let parts: Vec<&str> = resource.split('/').collect();
        let (mesh, kind, name) =
            match parts.as_slice() {
                ["mesh", mesh, kind, name] => (*mesh, *kind, *name),
                _ => return Err(invalid(
                    "expected mesh/<mesh>/virtualNode/<name> or mesh/<mesh>/virtualGateway/<name>",
                )),
            };
        let kind = match kind {
            "virtualNode" => ProxyKind::VirtualNode,
            "virtualGateway" => ProxyKind::VirtualGateway,
            _ => {
                return Err(invalid(
                    "the resource type must be virtualNode or virtualGateway",
                ))
            }
        };
        if mesh.is_empty() || name.is_empty() {
            return Err(invalid("mesh and resource names must not be empty"));
        }
        Ok(Self {
            mesh: mesh.to_string(),
            kind,
            name: name.to_string(),
        })
    }
}

impl TryFrom<&str> for ProxyIdentity {
    type Error = TranslateError;

    fn try_from(id: &str) -> Result<Self, Self::Error> {
        id.parse()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_short_node_id_names_mesh_kind_and_node() {
        let id: ProxyIdentity = "mesh/shop/virtualNode/cart-v1".parse().unwrap();
        assert_eq!(id, ProxyIdentity::virtual_node("shop", "cart-v1"));
        assert_eq!(id.to_string(), "mesh/shop/virtualNode/cart-v1");
    }

    #[test]
    fn the_arn_app_mesh_envoy_sends_is_accepted() {
        let id = ProxyIdentity::try_from(
            "arn:aws:appmesh:us-west-2:111122223333:mesh/myMesh/virtualGateway/gw",
        )
        .unwrap();
        assert_eq!(id.mesh, "myMesh");
        assert_eq!(id.kind, ProxyKind::VirtualGateway);
        assert_eq!(id.name, "gw");
    }

    #[test]
    fn malformed_node_ids_are_rejected() {
        for bad in [
            "",
            "mesh/shop",
            "mesh/shop/virtualRouter/r",
            "mesh//virtualNode/x",
            "mesh/shop/virtualNode/a/b",
            "arn:aws:s3:::bucket",
        ] {
            assert!(bad.parse::<ProxyIdentity>().is_err(), "{bad}");
        }
    }
}
