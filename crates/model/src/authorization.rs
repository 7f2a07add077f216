//! Weft's service-to-service authorization, a Weft extension outside App Mesh's spec, carried in
//! tags as mesh-wide mutual TLS is ([`crate::mtls`]) so that App Mesh's clients can set it:
//!
//! - the mesh tag [`AUTHORIZATION_TAG`] (`weft:authorization`): `ENFORCE` (a virtual node accepts
//!   calls only from the nodes and gateways whose specs reach one of its virtual services, and
//!   from its extra callers), `REPORT` (the same decision is counted, nothing is refused), or
//!   `DISABLED` (App Mesh's behaviour, also an absent tag);
//! - the virtual node tag [`CALLERS_TAG`] (`weft:callers`): extra callers the node accepts,
//!   written `virtualNode/<name>` or `virtualGateway/<name>`, separated by commas or spaces.
//!
//! App Mesh's model already says who calls whom: a virtual node lists the virtual services it
//! calls in `backends` (virtual_nodes.md), a gateway the services its routes target.

use crate::shapes::TagRef;

/// The mesh tag that turns authorization on.
pub const AUTHORIZATION_TAG: &str = "weft:authorization";
/// The virtual node tag naming its extra callers.
pub const CALLERS_TAG: &str = "weft:callers";

/// What a mesh's [`AUTHORIZATION_TAG`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MeshAuthorization {
    /// Any caller is accepted, as in App Mesh (also an absent tag).
    #[default]
    Disabled,
    /// Callers that would be refused are counted (Envoy's `rbac.shadow_denied`), not refused.
    Report,
    /// Callers that are not allowed are refused: HTTP 403, gRPC `PERMISSION_DENIED`, TCP closed.
    Enforce,
}

impl MeshAuthorization {
    /// The allowed tag values, as the API's error lists them.
    pub const VALUES: [&'static str; 3] = ["ENFORCE", "REPORT", "DISABLED"];

    /// The mode a tag value names (exactly, upper case as App Mesh's enums), if any.
    pub fn parse(value: &str) -> Option<MeshAuthorization> {
        match value {
            "ENFORCE" => Some(MeshAuthorization::Enforce),
            "REPORT" => Some(MeshAuthorization::Report),
            "DISABLED" => Some(MeshAuthorization::Disabled),
            _ => None,
        }
    }

    /// The mode a mesh's tags ask for; `Err` says why the tag's value is not one.
    pub fn from_tags(tags: &[TagRef]) -> Result<MeshAuthorization, String> {
        match tags.iter().find(|t| t.key == AUTHORIZATION_TAG) {
            None => Ok(MeshAuthorization::Disabled),
            Some(tag) => MeshAuthorization::parse(&tag.value).ok_or_else(|| {
                format!(
                    "Tag \"{AUTHORIZATION_TAG}\" has value \"{}\": allowed values are {}",
                    tag.value,
                    Self::VALUES.join(", ")
                )
            }),
        }
    }
}

/// A caller named in a [`CALLERS_TAG`]: `virtualNode/<name>` or `virtualGateway/<name>`, as
/// written (the resource part of a SPIFFE id of the mesh).
pub fn callers_from_tags(tags: &[TagRef]) -> Result<Vec<String>, String> {
    let Some(tag) = tags.iter().find(|t| t.key == CALLERS_TAG) else {
        return Ok(Vec::new());
    };
    let mut callers = Vec::new();
    for entry in tag
        .value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty())
    {
        let valid = match entry.split_once('/') {
            Some(("virtualNode" | "virtualGateway", name)) => {
                !name.is_empty()
                    && name.len() <= 255
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            }
            _ => false,
        };
        if !valid {
            return Err(format!(
                "Tag \"{CALLERS_TAG}\" has \"{entry}\": write callers as virtualNode/<name> or \
                 virtualGateway/<name>, separated by commas or spaces"
            ));
        }
        if !callers.iter().any(|c| c == entry) {
            callers.push(entry.to_string());
        }
    }
    Ok(callers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tag(key: &str, value: &str) -> TagRef {
        TagRef {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn the_mesh_tag_takes_enforce_report_or_disabled_and_is_off_without_it() {
        assert_eq!(
            MeshAuthorization::from_tags(&[]),
            Ok(MeshAuthorization::Disabled)
        );
        for (value, mode) in [
            ("ENFORCE", MeshAuthorization::Enforce),
            ("REPORT", MeshAuthorization::Report),
            ("DISABLED", MeshAuthorization::Disabled),
        ] {
            assert_eq!(
                MeshAuthorization::from_tags(&[tag(AUTHORIZATION_TAG, value)]),
                Ok(mode)
            );
        }
        let err = MeshAuthorization::from_tags(&[tag(AUTHORIZATION_TAG, "on")]).unwrap_err();
        assert!(err.contains("ENFORCE, REPORT, DISABLED"), "{err}");
    }

    #[test]
    fn extra_callers_are_nodes_or_gateways_by_name() {
        assert_eq!(
            callers_from_tags(&[tag(
                CALLERS_TAG,
                "virtualNode/batch, virtualGateway/edge virtualNode/batch"
            )]),
            Ok(vec![
                "virtualNode/batch".to_string(),
                "virtualGateway/edge".to_string()
            ])
        );
        assert_eq!(callers_from_tags(&[]), Ok(Vec::new()));
        for bad in [
            "batch",
            "virtualRouter/r",
            "virtualNode/",
            "virtualNode/a b/c",
        ] {
            assert!(
                callers_from_tags(&[tag(CALLERS_TAG, bad)]).is_err(),
                "{bad}"
            );
        }
    }
}
