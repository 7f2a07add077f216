//! Who a workload certificate names: a proxy's App Mesh resource (a virtual node or a virtual
//! gateway) and its SPIFFE id, `spiffe://<trust-domain>/mesh/<mesh>/virtualNode/<name>` (or
//! `…/virtualGateway/<name>`).

use std::fmt;
use std::str::FromStr;

use crate::CaError;

/// The longest trust domain SPIFFE allows.
const MAX_TRUST_DOMAIN: usize = 255;
/// The longest App Mesh resource name.
const MAX_NAME: usize = 255;

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-` and `_` (the SPIFFE ID
/// specification's rule), such as `weft.local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain as written in SPIFFE ids.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE id, `spiffe://<trust-domain>`, carried by the CA
    /// certificate Weft generates.
    pub fn id(&self) -> String {
        format!("spiffe://{}", self.0)
    }

    /// The SPIFFE id of Weft's own server (its xDS endpoint): `spiffe://<domain>/weft/server`.
    pub fn server_id(&self) -> String {
        format!("{}/weft/server", self.id())
    }
}

/// The default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "weft.local";

impl Default for TrustDomain {
    /// [`DEFAULT_TRUST_DOMAIN`].
    fn default() -> Self {
        TrustDomain(DEFAULT_TRUST_DOMAIN.to_string())
    }
}

impl FromStr for TrustDomain {
    type Err = CaError;

    fn from_str(s: &str) -> Result<Self, CaError> {
        let valid = !s.is_empty()
            && s.len() <= MAX_TRUST_DOMAIN
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if !valid {
            return Err(CaError::InvalidInput(format!(
                "trust domain {s:?} is not a SPIFFE trust domain: 1 to {MAX_TRUST_DOMAIN} \
                 lowercase letters, digits, '.', '-' or '_'"
            )));
        }
        Ok(TrustDomain(s.to_string()))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kinds of App Mesh resources that run a proxy, and so get certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProxyKind {
    /// `virtualNode`
    VirtualNode,
    /// `virtualGateway`
    VirtualGateway,
}

impl ProxyKind {
    /// The kind as written in resource paths, ARNs and SPIFFE ids.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyKind::VirtualNode => "virtualNode",
            ProxyKind::VirtualGateway => "virtualGateway",
        }
    }

    fn parse(s: &str) -> Option<ProxyKind> {
        match s {
            "virtualNode" => Some(ProxyKind::VirtualNode),
            "virtualGateway" => Some(ProxyKind::VirtualGateway),
            _ => None,
        }
    }
}

/// A proxy's App Mesh resource, `mesh/<mesh>/virtualNode/<name>` or
/// `mesh/<mesh>/virtualGateway/<name>`.
///
/// Names are limited to what a SPIFFE id's path may hold unescaped (letters, digits, `.`, `-`,
/// `_`), so that the SPIFFE id and the resource map one to one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resource {
    /// The mesh's name.
    pub mesh: String,
    /// Virtual node or virtual gateway.
    pub kind: ProxyKind,
    /// The virtual node's or gateway's name.
    pub name: String,
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl Resource {
    /// A resource from its parts, checking the names.
    pub fn new(mesh: &str, kind: ProxyKind, name: &str) -> Result<Resource, CaError> {
        for (what, value) in [("mesh", mesh), (kind.as_str(), name)] {
            if !valid_segment(value) {
                return Err(CaError::InvalidInput(format!(
                    "{what} name {value:?} cannot be part of a SPIFFE id: use 1 to {MAX_NAME} \
                     letters, digits, '.', '-' or '_'"
                )));
            }
        }
        Ok(Resource {
            mesh: mesh.to_string(),
            kind,
            name: name.to_string(),
        })
    }

    /// Parses `mesh/<mesh>/virtualNode/<name>` (or `virtualGateway`), or the same as an App
    /// Mesh ARN (`arn:aws:appmesh:<region>:<account>:mesh/…`), as `APPMESH_RESOURCE_ARN` holds.
    pub fn parse(text: &str) -> Result<Resource, CaError> {
        let path = if text.starts_with("arn:") {
            text.splitn(6, ':').nth(5).unwrap_or_default()
        } else {
            text
        };
        let bad = || {
            CaError::InvalidInput(format!(
                "resource {text:?} is not mesh/<mesh>/virtualNode/<name> or \
                 mesh/<mesh>/virtualGateway/<name>"
            ))
        };
        let parts: Vec<&str> = path.split('/').collect();
        let [first, mesh, kind, name] = parts[..] else {
            return Err(bad());
        };
        if first != "mesh" {
            return Err(bad());
        }
        let kind = ProxyKind::parse(kind).ok_or_else(bad)?;
        Resource::new(mesh, kind, name)
    }

    /// `mesh/<mesh>/virtualNode/<name>`: how Weft names the proxy everywhere (xDS node ids,
    /// `weft proxy-status`, join tokens).
    pub fn path(&self) -> String {
        format!("mesh/{}/{}/{}", self.mesh, self.kind.as_str(), self.name)
    }

    /// `spiffe://<trust-domain>/mesh/<mesh>/virtualNode/<name>`.
    pub fn spiffe_id(&self, trust_domain: &TrustDomain) -> String {
        format!("spiffe://{}/{}", trust_domain.as_str(), self.path())
    }

    /// The resource a SPIFFE id of `trust_domain` names, if it names one.
    pub fn from_spiffe_id(id: &str, trust_domain: &TrustDomain) -> Option<Resource> {
        let rest = id.strip_prefix("spiffe://")?;
        let (domain, path) = rest.split_once('/')?;
        if domain != trust_domain.as_str() {
            return None;
        }
        Resource::parse(path).ok().filter(|r| r.path() == path)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_resource_path_and_its_arn_parse_to_the_same_resource() {
        let a = Resource::parse("mesh/apps/virtualNode/red").unwrap();
        let b = Resource::parse("arn:aws:appmesh:us-east-1:000000000000:mesh/apps/virtualNode/red")
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.path(), "mesh/apps/virtualNode/red");
        let gw = Resource::parse("mesh/apps/virtualGateway/in").unwrap();
        assert_eq!(gw.kind, ProxyKind::VirtualGateway);
    }

    #[test]
    fn other_kinds_and_unusable_names_are_refused() {
        for bad in [
            "mesh/apps/virtualService/red",
            "mesh/apps/virtualNode",
            "mesh/apps/virtualNode/red/x",
            "apps/virtualNode/red",
            "mesh/apps/virtualNode/r d",
            "mesh/apps/virtualNode/..",
            "mesh//virtualNode/red",
            "",
        ] {
            assert!(Resource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_spiffe_id_maps_back_to_its_resource_only_in_its_own_trust_domain() {
        let td: TrustDomain = "weft.local".parse().unwrap();
        let r = Resource::parse("mesh/apps/virtualNode/red").unwrap();
        let id = r.spiffe_id(&td);
        assert_eq!(id, "spiffe://weft.local/mesh/apps/virtualNode/red");
        assert_eq!(Resource::from_spiffe_id(&id, &td), Some(r));
        let other: TrustDomain = "other.local".parse().unwrap();
        assert_eq!(Resource::from_spiffe_id(&id, &other), None);
        assert_eq!(
            Resource::from_spiffe_id("spiffe://weft.local/mesh/apps/virtualNode/red/", &td),
            None
        );
        assert!("Weft.Local".parse::<TrustDomain>().is_err());
    }
}
