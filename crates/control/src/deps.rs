//! Dependency tracking: what each proxy class's config was computed from, so
//! that a burst of store changes recomputes only the classes it can affect.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};

use weft_model::{keys, Kind};
use weft_translate::{MeshSnapshot, ProxyIdentity};

/// A resource a proxy's config can depend on: a virtual node, service,
/// router (with its routes) or gateway (with its gateway routes), by name.
pub(crate) type Dep = (Kind, String);

/// What changed in one mesh during a burst of store events.
#[derive(Debug, Default)]
pub(crate) struct MeshChanges {
    /// The mesh record itself changed (egress filter, …): every proxy of it.
    pub(crate) mesh_wide: bool,
    pub(crate) names: HashSet<Dep>,
}

impl MeshChanges {
    /// A change that reaches every proxy of the mesh.
    pub(crate) fn mesh_wide() -> Self {
        Self {
            mesh_wide: true,
            ..Default::default()
        }
    }

    /// Records the change of one stored key of the mesh.
    pub(crate) fn record(&mut self, key: &str) {
        match dep_of_key(key) {
            Some(dep) => {
                self.names.insert(dep);
            }
            None => self.mesh_wide = true,
        }
    }
}

/// Which dependency a changed store key is: `res/{m}/rt/{router}/{route}`
/// counts as its router, `res/{m}/gr/{gateway}/{route}` as its gateway.
fn dep_of_key(key: &str) -> Option<Dep> {
    let mut parts = key.split('/');
    let (Some("res"), Some(_mesh), Some(code), Some(name)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let kind = match code {
        "rt" => Kind::VirtualRouter,
        "gr" => Kind::VirtualGateway,
        code => Kind::ALL.into_iter().find(|k| k.key_code() == code)?,
    };
    Some((kind, keys::unescape(name)))
}

/// Everything the config of a class is computed from, inside its mesh (the
/// mesh record aside): its own node or gateway, and for every virtual service
/// it reaches, that service's part ([`service_deps`], shared by all classes
/// that reach the service). A write that touches none of these cannot change
/// the proxy's config.
#[derive(Debug)]
pub(crate) struct ClassDeps {
    own: Dep,
    services: Vec<Arc<[Dep]>>,
    /// A virtual node of a mesh with service-to-service authorization: who may call it is
    /// decided by the other nodes' backends and the gateways' routes, so any change of the
    /// mesh may change its config.
    whole_mesh: bool,
}

impl ClassDeps {
    pub(crate) fn contains(&self, dep: &Dep) -> bool {
        self.whole_mesh || self.own == *dep || self.services.iter().any(|s| s.contains(dep))
    }
}

/// What one virtual service brings into the config of a class that reaches
/// it: the service, and its provider — a virtual node, or a virtual router
/// with its routes and their target nodes.
fn service_deps(mesh: &MeshSnapshot, service: &str) -> Arc<[Dep]> {
    use weft_model::shapes::VirtualServiceProvider;
    let mut deps = vec![(Kind::VirtualService, service.to_string())];
    if let Some(vs) = mesh.virtual_services.get(service) {
        match &vs.spec.provider {
            Some(VirtualServiceProvider::VirtualNode(p)) => {
                deps.push((Kind::VirtualNode, p.virtual_node_name.clone()));
            }
            Some(VirtualServiceProvider::VirtualRouter(p)) => {
                let router = p.virtual_router_name.clone();
                for route in mesh.routes_of(&router) {
                    for t in route.spec.weighted_targets() {
                        deps.push((Kind::VirtualNode, t.virtual_node.clone()));
                    }
                }
                deps.push((Kind::VirtualRouter, router));
            }
            None => {}
        }
    }
    Arc::from(deps)
}

/// The dependencies of each virtual service of one mesh snapshot, computed
/// once: every class reaching a service shares them, whether it is
/// published in a refresh or on its first connection.
#[derive(Default)]
pub(crate) struct DepsMemo {
    /// The snapshot they were computed from. Every change of a mesh goes
    /// through `Arc::make_mut`, which leaves a weakly held snapshot behind
    /// in its old allocation: a memo of an older snapshot is never taken
    /// for the current one.
    snapshot: Weak<MeshSnapshot>,
    services: HashMap<String, Arc<[Dep]>>,
}

impl DepsMemo {
    fn of(mesh: &Arc<MeshSnapshot>) -> Self {
        Self {
            snapshot: Arc::downgrade(mesh),
            services: HashMap::new(),
        }
    }

    fn is_of(&self, mesh: &Arc<MeshSnapshot>) -> bool {
        std::ptr::eq(self.snapshot.as_ptr(), Arc::as_ptr(mesh))
    }

    fn service(&mut self, mesh: &MeshSnapshot, service: &str) -> Arc<[Dep]> {
        if let Some(deps) = self.services.get(service) {
            return deps.clone();
        }
        let deps = service_deps(mesh, service);
        self.services.insert(service.to_string(), deps.clone());
        deps
    }
}

/// Everything the config of the proxy `identity` is computed from (see
/// [`ClassDeps`]).
pub(crate) fn dependencies(
    mesh: &MeshSnapshot,
    identity: &ProxyIdentity,
    memo: &mut DepsMemo,
) -> ClassDeps {
    use weft_model::shapes::Backend;
    use weft_translate::ProxyKind;
    let mut services: BTreeSet<&str> = BTreeSet::new();
    let own = match identity.kind {
        ProxyKind::VirtualNode => {
            if let Some(node) = mesh.virtual_nodes.get(&identity.name) {
                for b in node.spec.backends.iter().flatten() {
                    let Backend::VirtualService(vs) = b;
                    services.insert(&vs.virtual_service_name);
                }
            }
            (Kind::VirtualNode, identity.name.clone())
        }
        ProxyKind::VirtualGateway => {
            for ((gateway, _), gr) in &mesh.gateway_routes {
                if gateway != &identity.name {
                    continue;
                }
                let spec = &gr.spec;
                for http in [&spec.http_route, &spec.http2_route].into_iter().flatten() {
                    services.insert(&http.action.target.virtual_service.virtual_service_name);
                }
                if let Some(g) = &spec.grpc_route {
                    services.insert(&g.action.target.virtual_service.virtual_service_name);
                }
            }
            (Kind::VirtualGateway, identity.name.clone())
        }
    };
    ClassDeps {
        whole_mesh: identity.kind == ProxyKind::VirtualNode
            && mesh.authorization != weft_model::MeshAuthorization::Disabled,
        own,
        services: services
            .into_iter()
            .map(|service| memo.service(mesh, service))
            .collect(),
    }
}

/// The dependencies of every published class, and the per-mesh memos they
/// are computed with.
#[derive(Default)]
pub(crate) struct Dependencies {
    /// What each proxy class's last published config was computed from.
    classes: HashMap<String, ClassDeps>,
    /// The service dependencies of each mesh (by escaped name), for the
    /// snapshot each was computed from (see [`Dependencies::take_memo`]).
    memos: HashMap<String, DepsMemo>,
}

impl Dependencies {
    /// Records what the config of class `key` was computed from.
    pub(crate) fn set(&mut self, key: &str, deps: ClassDeps) {
        self.classes.insert(key.to_string(), deps);
    }

    /// What the config of class `key` was last computed from.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<&ClassDeps> {
        self.classes.get(key)
    }

    /// Forgets a class.
    pub(crate) fn remove(&mut self, key: &str) {
        self.classes.remove(key);
    }

    /// Forgets every class's dependencies (the memos stay: they check their
    /// snapshot themselves).
    pub(crate) fn clear_classes(&mut self) {
        self.classes.clear();
    }

    /// Whether `changes` in its mesh can change the config of class `key`:
    /// a mesh-wide change, a change of something it depends on, or any
    /// change while its dependencies are unknown.
    pub(crate) fn affected(&self, key: &str, changes: &MeshChanges) -> bool {
        changes.mesh_wide
            || match self.classes.get(key) {
                Some(deps) => changes.names.iter().any(|n| deps.contains(n)),
                None => true,
            }
    }

    /// The service dependencies kept for `mesh` (the mesh's current
    /// snapshot), or a fresh memo if they were computed from an older one.
    pub(crate) fn take_memo(&mut self, escaped: &str, mesh: &Arc<MeshSnapshot>) -> DepsMemo {
        self.memos
            .remove(escaped)
            .filter(|memo| memo.is_of(mesh))
            .unwrap_or_else(|| DepsMemo::of(mesh))
    }

    /// Keeps the memo of a mesh for the next publication.
    pub(crate) fn keep_memo(&mut self, escaped: String, memo: DepsMemo) {
        self.memos.insert(escaped, memo);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::test_support::{data, meta};
    use serde_json::json;

    /// front → service colors → router colors → routes to red and blue; green is unrelated.
    fn mesh() -> MeshSnapshot {
        let mut m = MeshSnapshot::new(data(
            json!({"meshName": "apps", "metadata": meta(), "spec": {}, "status": {}}),
        ));
        for (name, backends) in [
            ("front", vec!["colors"]),
            ("red", vec![]),
            ("blue", vec![]),
            ("green", vec![]),
        ] {
            let backends: Vec<_> = backends
                .iter()
                .map(|b| json!({"virtualService": {"virtualServiceName": b}}))
                .collect();
            m.virtual_nodes.insert(
                name.into(),
                data(
                    json!({"meshName": "apps", "virtualNodeName": name, "metadata": meta(),
                    "spec": {"backends": backends}, "status": {"status": "ACTIVE"}}),
                ),
            );
        }
        m.virtual_services.insert(
            "colors".into(),
            data(json!({"meshName": "apps", "virtualServiceName": "colors", "metadata": meta(),
                "spec": {"provider": {"virtualRouter": {"virtualRouterName": "r"}}}, "status": {"status": "ACTIVE"}})),
        );
        m.routes.insert(
            ("r".into(), "split".into()),
            data(json!({"meshName": "apps", "virtualRouterName": "r", "routeName": "split", "metadata": meta(),
                "spec": {"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
                    {"virtualNode": "red", "weight": 1}, {"virtualNode": "blue", "weight": 1}]}}},
                "status": {"status": "ACTIVE"}})),
        );
        m
    }

    #[test]
    fn a_client_depends_on_its_services_routers_and_their_targets_only() {
        let identity = ProxyIdentity::virtual_node("apps", "front");
        let deps = dependencies(&mesh(), &identity, &mut DepsMemo::default());
        for dep in [
            (Kind::VirtualNode, "front"),
            (Kind::VirtualService, "colors"),
            (Kind::VirtualRouter, "r"),
            (Kind::VirtualNode, "red"),
            (Kind::VirtualNode, "blue"),
        ] {
            assert!(deps.contains(&(dep.0, dep.1.to_string())), "{dep:?}");
        }
        assert!(!deps.contains(&(Kind::VirtualNode, "green".to_string())));
    }

    #[test]
    fn a_route_key_counts_as_its_router_and_a_gateway_route_as_its_gateway() {
        assert_eq!(
            dep_of_key("res/apps/rt/r/split"),
            Some((Kind::VirtualRouter, "r".into()))
        );
        assert_eq!(
            dep_of_key("res/apps/gr/edge/g1"),
            Some((Kind::VirtualGateway, "edge".into()))
        );
        assert_eq!(
            dep_of_key("res/apps/vn/a%2Fb"),
            Some((Kind::VirtualNode, "a/b".into()))
        );
        assert_eq!(dep_of_key("mesh/apps"), None);
    }
}
