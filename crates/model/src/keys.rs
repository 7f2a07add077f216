//! Store key layout. Names are escaped so that a `/` inside a name can never
//! be confused with a separator:
//!
//! - `mesh/{mesh}`: a mesh
//! - `res/{mesh}/{code}/{name}`: a resource in a mesh (`vn`, `vs`, `vr`, `vg`)
//! - `res/{mesh}/{code}/{parent}/{name}`: a route or gateway route
//! - `guard/{mesh}`: bumped by every write in a mesh, so that a transaction
//!   that read the mesh commits only if nothing in it changed meanwhile
//! - `token/{operation}/{clientToken}`: idempotency records
//! - `hist/{resource key}/{version}`: the last versions of a resource, for the dashboard

use crate::kind::{Kind, ResourceId};

/// Escapes a name for use inside a key.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`escape`].
pub fn unescape(text: &str) -> String {
    text.replace("%2F", "/").replace("%25", "%")
}

/// The key of a resource.
pub fn resource(id: &ResourceId) -> String {
    match (id.kind, &id.parent) {
        (Kind::Mesh, _) => format!("mesh/{}", escape(&id.mesh)),
        (k, Some(p)) => format!(
            "res/{}/{}/{}/{}",
            escape(&id.mesh),
            k.key_code(),
            escape(p),
            escape(&id.name)
        ),
        (k, None) => format!(
            "res/{}/{}/{}",
            escape(&id.mesh),
            k.key_code(),
            escape(&id.name)
        ),
    }
}

/// The prefix under which every resource of `kind` in a scope lives
/// (a mesh, or a router/gateway for routes and gateway routes).
pub fn scope_prefix(kind: Kind, mesh: &str, parent: Option<&str>) -> String {
    match (kind, parent) {
        (Kind::Mesh, _) => "mesh/".to_string(),
        (k, Some(p)) => format!("res/{}/{}/{}/", escape(mesh), k.key_code(), escape(p)),
        (k, None) => format!("res/{}/{}/", escape(mesh), k.key_code()),
    }
}

/// The prefix of every resource inside a mesh.
pub fn mesh_contents(mesh: &str) -> String {
    format!("res/{}/", escape(mesh))
}

/// The per-mesh write guard.
pub fn guard(mesh: &str) -> String {
    format!("guard/{}", escape(mesh))
}

/// The account-wide guard of mesh creation: every mesh has its own guard,
/// so creates of different meshes also commit under this one, which keeps
/// the account's mesh count exact when they race.
pub const MESHES_GUARD: &str = "account/meshes";

/// The prefix of every idempotency record.
pub const TOKEN_PREFIX: &str = "token/";

/// An idempotency record.
pub fn token(operation: &str, token: &str) -> String {
    format!("{TOKEN_PREFIX}{operation}/{}", escape(token))
}

/// The prefix of every kept past version of a resource.
pub const HISTORY_PREFIX: &str = "hist/";

/// Versions of a resource kept under [`history`] (the latest ones; older ones are deleted as
/// new ones are written).
pub const HISTORY_KEPT: i64 = 10;

/// The key of version `version` of the resource stored under `resource_key`. Versions are
/// zero-padded so that keys sort by version.
pub fn history(resource_key: &str, version: i64) -> String {
    format!("{HISTORY_PREFIX}{resource_key}/{version:012}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slash_in_a_name_stays_inside_its_segment() {
        let id = ResourceId::in_mesh(Kind::VirtualNode, "a/b", "c/d");
        assert_eq!(resource(&id), "res/a%2Fb/vn/c%2Fd");
        assert!(resource(&id).starts_with(&scope_prefix(Kind::VirtualNode, "a/b", None)));
        assert!(!resource(&id).starts_with(&mesh_contents("a")));
    }
}
