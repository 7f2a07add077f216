//! App Mesh ARNs: `arn:{partition}:appmesh:{region}:{account}:mesh/{mesh}[/{kind}/{name}[/{kind}/{name}]]`.
//!
//! Names are ResourceName strings (1–255 characters, no pattern in the model);
//! ARNs carry them verbatim, as App Mesh does.

use std::fmt;

/// Which resource an ARN (or a store key) names, without region or account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourcePath {
    Mesh {
        mesh: String,
    },
    VirtualNode {
        mesh: String,
        name: String,
    },
    VirtualService {
        mesh: String,
        name: String,
    },
    VirtualRouter {
        mesh: String,
        name: String,
    },
    Route {
        mesh: String,
        router: String,
        name: String,
    },
    VirtualGateway {
        mesh: String,
        name: String,
    },
    GatewayRoute {
        mesh: String,
        gateway: String,
        name: String,
    },
}

impl ResourcePath {
    /// The mesh the resource belongs to.
    pub fn mesh(&self) -> &str {
        match self {
            ResourcePath::Mesh { mesh }
            | ResourcePath::VirtualNode { mesh, .. }
            | ResourcePath::VirtualService { mesh, .. }
            | ResourcePath::VirtualRouter { mesh, .. }
            | ResourcePath::Route { mesh, .. }
            | ResourcePath::VirtualGateway { mesh, .. }
            | ResourcePath::GatewayRoute { mesh, .. } => mesh,
        }
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourcePath::Mesh { mesh } => write!(f, "mesh/{mesh}"),
            ResourcePath::VirtualNode { mesh, name } => write!(f, "mesh/{mesh}/virtualNode/{name}"),
            ResourcePath::VirtualService { mesh, name } => {
                write!(f, "mesh/{mesh}/virtualService/{name}")
            }
            ResourcePath::VirtualRouter { mesh, name } => {
                write!(f, "mesh/{mesh}/virtualRouter/{name}")
            }
            ResourcePath::Route { mesh, router, name } => {
                write!(f, "mesh/{mesh}/virtualRouter/{router}/route/{name}")
            }
            ResourcePath::VirtualGateway { mesh, name } => {
                write!(f, "mesh/{mesh}/virtualGateway/{name}")
            }
            ResourcePath::GatewayRoute {
                mesh,
                gateway,
                name,
            } => {
                write!(
                    f,
                    "mesh/{mesh}/virtualGateway/{gateway}/gatewayRoute/{name}"
                )
            }
        }
    }
}

impl std::str::FromStr for ResourcePath {
    type Err = ArnError;

    /// Parses `mesh/{mesh}[/{kind}/{name}[/{kind}/{name}]]`.
    fn from_str(s: &str) -> Result<Self, ArnError> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || ArnError(format!("'{s}' is not an App Mesh resource"));
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let own = |x: &str| x.to_string();
        Ok(match parts.as_slice() {
            ["mesh", m] => ResourcePath::Mesh { mesh: own(m) },
            ["mesh", m, "virtualNode", n] => ResourcePath::VirtualNode {
                mesh: own(m),
                name: own(n),
            },
            ["mesh", m, "virtualService", n] => ResourcePath::VirtualService {
                mesh: own(m),
                name: own(n),
            },
            ["mesh", m, "virtualRouter", n] => ResourcePath::VirtualRouter {
                mesh: own(m),
                name: own(n),
            },
            ["mesh", m, "virtualRouter", r, "route", n] => ResourcePath::Route {
                mesh: own(m),
                router: own(r),
                name: own(n),
            },
            ["mesh", m, "virtualGateway", n] => ResourcePath::VirtualGateway {
                mesh: own(m),
                name: own(n),
            },
            ["mesh", m, "virtualGateway", g, "gatewayRoute", n] => ResourcePath::GatewayRoute {
                mesh: own(m),
                gateway: own(g),
                name: own(n),
            },
            _ => return Err(bad()),
        })
    }
}

/// A string that is not a valid App Mesh ARN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArnError(pub String);

/// A full App Mesh ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arn {
    pub partition: String,
    pub region: String,
    pub account: String,
    pub resource: ResourcePath,
}

impl fmt::Display for Arn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:appmesh:{}:{}:{}",
            self.partition, self.region, self.account, self.resource
        )
    }
}

impl std::str::FromStr for Arn {
    type Err = ArnError;

    fn from_str(s: &str) -> Result<Self, ArnError> {
        let mut it = s.splitn(6, ':');
        let fields: Vec<&str> = it.by_ref().collect();
        match fields.as_slice() {
            ["arn", partition, "appmesh", region, account, resource] => Ok(Arn {
                partition: partition.to_string(),
                region: region.to_string(),
                account: account.to_string(),
                resource: resource.parse()?,
            }),
            _ => Err(ArnError(format!("'{s}' is not an App Mesh ARN"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_arn_round_trips() {
        let text = "arn:aws:appmesh:us-west-2:111122223333:mesh/apps/virtualRouter/r/route/blue";
        let arn: Arn = text.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            arn.resource,
            ResourcePath::Route {
                mesh: "apps".into(),
                router: "r".into(),
                name: "blue".into()
            }
        );
        assert_eq!(arn.to_string(), text);
    }

    #[test]
    fn foreign_arns_are_rejected() {
        for bad in [
            "arn:aws:s3:::bucket",
            "arn:aws:appmesh:us-west-2:111122223333:mesh/",
            "arn:aws:appmesh:us-west-2:111122223333:mesh/a/virtualThing/b",
            "nonsense",
        ] {
            assert!(bad.parse::<Arn>().is_err(), "{bad}");
        }
    }
}
