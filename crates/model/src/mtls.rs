//! Weft's mesh-wide mutual TLS, a Weft extension outside App Mesh's spec: the mesh tag
//! [`MTLS_TAG`] (`weft:mtls`). A tag rather than a spec member so that the AWS SDKs, the AWS CLI
//! and CloudFormation, which know only App Mesh's shapes, can set it (CreateMesh `tags`,
//! TagResource and UntagResource on the mesh's ARN).
//!
//! Values follow App Mesh's listener TLS modes (`STRICT`, `PERMISSIVE`, `DISABLED`; App Mesh
//! user guide, tls.md); an absent tag is `DISABLED`, App Mesh's behaviour.

use crate::shapes::TagRef;

/// The mesh tag that turns mesh-wide mutual TLS on.
pub const MTLS_TAG: &str = "weft:mtls";

/// The mesh-wide mutual TLS mode a mesh's [`MTLS_TAG`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MeshMtls {
    /// No mesh-wide TLS: what the specs say, as in App Mesh (also an absent tag).
    #[default]
    Disabled,
    /// Node listeners without their own `tls` accept mutual TLS with Weft identities and
    /// plaintext alike (a migration step, as Istio's PeerAuthentication `PERMISSIVE`).
    Permissive,
    /// Node listeners without their own `tls` accept mutual TLS with Weft identities only.
    Strict,
}

impl MeshMtls {
    /// The allowed tag values, as the API's error lists them.
    pub const VALUES: [&'static str; 3] = ["STRICT", "PERMISSIVE", "DISABLED"];

    /// The mode a tag value names (exactly, upper case as App Mesh's enums), if any.
    pub fn parse(value: &str) -> Option<MeshMtls> {
        match value {
            "STRICT" => Some(MeshMtls::Strict),
            "PERMISSIVE" => Some(MeshMtls::Permissive),
            "DISABLED" => Some(MeshMtls::Disabled),
            _ => None,
        }
    }

    /// The tag value of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            MeshMtls::Strict => "STRICT",
            MeshMtls::Permissive => "PERMISSIVE",
            MeshMtls::Disabled => "DISABLED",
        }
    }

    /// Whether mesh-wide mutual TLS is on (`STRICT` or `PERMISSIVE`).
    pub fn is_on(self) -> bool {
        self != MeshMtls::Disabled
    }

    /// The mode a mesh's tags ask for; `Err` says why a [`MTLS_TAG`] value is not one, naming
    /// the tag and the allowed values.
    pub fn from_tags(tags: &[TagRef]) -> Result<MeshMtls, String> {
        match tags.iter().find(|t| t.key == MTLS_TAG) {
            None => Ok(MeshMtls::Disabled),
            Some(tag) => MeshMtls::parse(&tag.value).ok_or_else(|| {
                format!(
                    "Tag \"{MTLS_TAG}\" has value \"{}\": allowed values are {}",
                    tag.value,
                    Self::VALUES.join(", ")
                )
            }),
        }
    }
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
    fn the_mtls_tag_names_a_mode_and_its_absence_is_app_mesh_behaviour() {
        assert_eq!(MeshMtls::from_tags(&[]), Ok(MeshMtls::Disabled));
        assert_eq!(
            MeshMtls::from_tags(&[tag("team", "x"), tag(MTLS_TAG, "STRICT")]),
            Ok(MeshMtls::Strict)
        );
        assert_eq!(
            MeshMtls::from_tags(&[tag(MTLS_TAG, "PERMISSIVE")]),
            Ok(MeshMtls::Permissive)
        );
        for value in MeshMtls::VALUES {
            assert_eq!(MeshMtls::parse(value).unwrap().as_str(), value);
        }
    }

    #[test]
    fn another_mtls_value_is_refused_naming_the_tag_and_the_allowed_values() {
        let why = MeshMtls::from_tags(&[tag(MTLS_TAG, "strict")]).unwrap_err();
        assert_eq!(
            why,
            "Tag \"weft:mtls\" has value \"strict\": allowed values are STRICT, PERMISSIVE, DISABLED"
        );
    }
}
