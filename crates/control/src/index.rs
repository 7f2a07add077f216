//! The meshes kept from the store: every mesh a proxy has asked for, typed
//! and kept up to date record by record from the change feed (each changed
//! record is decoded once, straight from its stored bytes, never rebuilt from
//! scratch), and every other mesh held undecoded until its first proxy
//! connects.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use weft_model::shapes::{
    GatewayRouteData, MeshData, ResourceMetadata, RouteData, TagRef, VirtualGatewayData,
    VirtualNodeData, VirtualRouterData, VirtualServiceData,
};
use weft_model::{keys, Kind, MeshAuthorization, MeshMtls};
use weft_translate::MeshSnapshot;

use crate::cloud_map::{cloud_map_names, uses_cloud_map, CloudMap, Touched};

/// Every mesh, by escaped name: typed if a proxy wants it, else dormant.
#[derive(Default)]
pub(crate) struct MeshIndex {
    /// The typed meshes.
    meshes: HashMap<String, Arc<MeshSnapshot>>,
    /// Meshes a proxy has asked for (by escaped name): their records are
    /// applied to `meshes` as they come. Never shrinks: a mesh whose proxies
    /// all left only keeps costing the decoding of its writes.
    wanted: HashSet<String>,
    /// The records of every other mesh, not decoded: the latest value of each
    /// key (`None`: deleted), applied by [`MeshIndex::want`].
    dormant: HashMap<String, BTreeMap<String, Option<Bytes>>>,
    /// The trust domain of the server's CA, set on every typed mesh (its SPIFFE ids are what
    /// mesh-wide mutual TLS checks); empty until [`MeshIndex::set_trust_domain`]: the
    /// translation's default.
    trust_domain: String,
}

/// The mesh-wide mutual TLS mode a stored mesh record's tags ask for (`weft:mtls`). The API
/// refuses other values; one stored before it did (or written around it) is taken as
/// `DISABLED`, App Mesh's behaviour, and logged.
fn mesh_mtls(key: &str, value: &[u8]) -> MeshMtls {
    #[derive(serde::Deserialize)]
    struct Tags {
        #[serde(default)]
        tags: Vec<TagRef>,
    }
    match serde_json::from_slice::<Tags>(value) {
        Ok(t) => MeshMtls::from_tags(&t.tags).unwrap_or_else(|why| {
            tracing::warn!(%key, %why, "mesh-wide mutual TLS left off");
            MeshMtls::Disabled
        }),
        Err(e) => {
            tracing::warn!(%key, error = %e, "stored mesh tags do not decode; mesh-wide mutual TLS left off");
            MeshMtls::Disabled
        }
    }
}

/// The service-to-service authorization a stored mesh record's tags ask for
/// (`weft:authorization`); an unknown value (which the API refuses) is `DISABLED`, logged.
fn mesh_authorization(key: &str, value: &[u8]) -> MeshAuthorization {
    match record_tags(value) {
        Ok(tags) => MeshAuthorization::from_tags(&tags).unwrap_or_else(|why| {
            tracing::warn!(%key, %why, "service-to-service authorization left off");
            MeshAuthorization::Disabled
        }),
        Err(e) => {
            tracing::warn!(%key, error = %e, "stored mesh tags do not decode; authorization left off");
            MeshAuthorization::Disabled
        }
    }
}

/// The extra callers a stored virtual node record's `weft:callers` tag names; none when it
/// names something else (which the API refuses), logged.
fn node_callers(key: &str, value: &[u8]) -> Vec<String> {
    let tags = match record_tags(value) {
        Ok(tags) => tags,
        Err(e) => {
            tracing::warn!(%key, error = %e, "stored node tags do not decode; no extra callers");
            return Vec::new();
        }
    };
    weft_model::authorization::callers_from_tags(&tags).unwrap_or_else(|why| {
        tracing::warn!(%key, %why, "extra callers left out");
        Vec::new()
    })
}

fn record_tags(value: &[u8]) -> Result<Vec<TagRef>, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Tags {
        #[serde(default)]
        tags: Vec<TagRef>,
    }
    serde_json::from_slice::<Tags>(value).map(|t| t.tags)
}

/// The `data` member of a stored record (`StoredRecord`), decoded straight
/// into its typed shape; the tags are not needed here.
fn typed<T: DeserializeOwned + Stored>(key: &str, value: &[u8]) -> Option<T> {
    #[derive(serde::Deserialize)]
    struct Data<T> {
        data: T,
    }
    match serde_json::from_slice::<Data<T>>(value) {
        Ok(mut v) => {
            // Translation never reads a resource's ARN, uid or owners, and
            // every resource of a served mesh is held: ~0.2 KiB each.
            let metadata = v.data.metadata_mut();
            metadata.arn = String::new();
            metadata.uid = String::new();
            metadata.mesh_owner = String::new();
            metadata.resource_owner = String::new();
            Some(v.data)
        }
        Err(e) => {
            tracing::warn!(%key, error = %e, "stored resource does not match its shape; skipped");
            None
        }
    }
}

/// A stored App Mesh resource: what [`typed`] trims before the typed mesh
/// holds it.
trait Stored {
    fn metadata_mut(&mut self) -> &mut ResourceMetadata;
}

macro_rules! stored {
    ($($shape:ty),*) => {$(
        impl Stored for $shape {
            fn metadata_mut(&mut self) -> &mut ResourceMetadata {
                &mut self.metadata
            }
        }
    )*};
}

stored!(
    MeshData,
    VirtualNodeData,
    VirtualServiceData,
    VirtualRouterData,
    RouteData,
    VirtualGatewayData,
    GatewayRouteData
);

/// The mesh a `mesh/` or `res/` key belongs to (escaped), and the kind.
fn classify(key: &str) -> Option<(String, Kind)> {
    let mut parts = key.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("mesh"), Some(mesh), None) => Some((mesh.to_string(), Kind::Mesh)),
        (Some("res"), Some(mesh), Some(code)) => {
            let kind = Kind::ALL.into_iter().find(|k| k.key_code() == code)?;
            Some((mesh.to_string(), kind))
        }
        _ => None,
    }
}

/// Sets one resource in a map of its typed mesh, under the names its record
/// gives, or (`value` `None`) removes the one under `removed`, the names in
/// its key. A record that does not decode changes nothing.
fn set<K: Ord, T: DeserializeOwned + Stored>(
    map: &mut BTreeMap<K, T>,
    key: &str,
    value: Option<&[u8]>,
    removed: Option<K>,
    names: impl FnOnce(&T) -> K,
) {
    match value {
        Some(v) => {
            if let Some(d) = typed::<T>(key, v) {
                map.insert(names(&d), d);
            }
        }
        None => {
            if let Some(removed) = removed {
                map.remove(&removed);
            }
        }
    }
}

/// Sets or removes a virtual node (see [`set`]); returns whether one
/// discovered through Cloud Map came or went, the only change that can
/// change which registry services the mesh names.
fn set_virtual_node(
    snap: &mut MeshSnapshot,
    key: &str,
    value: Option<&[u8]>,
    name: String,
) -> bool {
    match value {
        Some(v) => match typed::<VirtualNodeData>(key, v) {
            Some(d) => {
                let callers = node_callers(key, v);
                if callers.is_empty() {
                    snap.extra_callers.remove(&d.virtual_node_name);
                } else {
                    snap.extra_callers
                        .insert(d.virtual_node_name.clone(), callers);
                }
                let named = uses_cloud_map(&d);
                let old = snap.virtual_nodes.insert(d.virtual_node_name.clone(), d);
                named || old.as_ref().is_some_and(uses_cloud_map)
            }
            None => false,
        },
        None => {
            snap.extra_callers.remove(&name);
            snap.virtual_nodes
                .remove(&name)
                .as_ref()
                .is_some_and(uses_cloud_map)
        }
    }
}

impl MeshIndex {
    /// Sets the trust domain given to every typed mesh (before the first load).
    pub(crate) fn set_trust_domain(&mut self, trust_domain: &str) {
        self.trust_domain = trust_domain.to_string();
    }

    /// Forgets every mesh (before a reload); which meshes are wanted is kept.
    pub(crate) fn clear(&mut self) {
        self.meshes.clear();
        self.dormant.clear();
    }

    /// The typed snapshot of a mesh.
    pub(crate) fn mesh(&self, escaped: &str) -> Option<Arc<MeshSnapshot>> {
        self.meshes.get(escaped).cloned()
    }

    /// The escaped names of the typed meshes.
    pub(crate) fn names(&self) -> impl Iterator<Item = &String> {
        self.meshes.keys()
    }

    /// Applies one stored `mesh/` or `res/` record (`None`: deleted) to its
    /// typed mesh. Returns whether a virtual node discovered through Cloud
    /// Map changed, which can change the registry services the mesh names.
    ///
    /// The snapshot is changed in place (`Arc::make_mut`): between refreshes
    /// nobody else holds it strongly, so nothing is copied (a dependency
    /// memo's weak reference makes the first change move it, not clone it).
    pub(crate) fn upsert(&mut self, key: &str, value: Option<&[u8]>) -> bool {
        let Some((escaped, kind)) = classify(key) else {
            return false;
        };
        if kind == Kind::Mesh {
            self.upsert_mesh(escaped, key, value);
            return false;
        }
        let Some(snap) = self.meshes.get_mut(&escaped) else {
            return false;
        };
        let snap = Arc::make_mut(snap);
        // `res/{m}/{code}/{name}` or `res/{m}/{code}/{parent}/{name}`.
        let mut names = key.split('/').skip(3).map(keys::unescape);
        let (Some(first), second) = (names.next(), names.next()) else {
            return false;
        };
        let pair = second.map(|second| (first.clone(), second));
        match kind {
            Kind::VirtualNode => return set_virtual_node(snap, key, value, first),
            Kind::VirtualService => set(
                &mut snap.virtual_services,
                key,
                value,
                Some(first),
                |d: &VirtualServiceData| d.virtual_service_name.clone(),
            ),
            Kind::VirtualRouter => set(
                &mut snap.virtual_routers,
                key,
                value,
                Some(first),
                |d: &VirtualRouterData| d.virtual_router_name.clone(),
            ),
            Kind::Route => set(&mut snap.routes, key, value, pair, |d: &RouteData| {
                (d.virtual_router_name.clone(), d.route_name.clone())
            }),
            Kind::VirtualGateway => set(
                &mut snap.virtual_gateways,
                key,
                value,
                Some(first),
                |d: &VirtualGatewayData| d.virtual_gateway_name.clone(),
            ),
            Kind::GatewayRoute => set(
                &mut snap.gateway_routes,
                key,
                value,
                pair,
                |d: &GatewayRouteData| {
                    (d.virtual_gateway_name.clone(), d.gateway_route_name.clone())
                },
            ),
            Kind::Mesh => {}
        }
        false
    }

    /// Applies a `mesh/{m}` record: the mesh's own settings, or its deletion
    /// with everything it held.
    fn upsert_mesh(&mut self, escaped: String, key: &str, value: Option<&[u8]>) {
        let decoded = value.and_then(|v| Some((typed::<MeshData>(key, v)?, mesh_mtls(key, v))));
        match decoded {
            Some((mesh, mtls)) => {
                let snap = match self.meshes.get_mut(&escaped) {
                    Some(snap) => {
                        let snap = Arc::make_mut(snap);
                        snap.mesh = mesh;
                        snap
                    }
                    None => Arc::make_mut(
                        self.meshes
                            .entry(escaped)
                            .or_insert_with(|| Arc::new(MeshSnapshot::new(mesh))),
                    ),
                };
                snap.mtls = mtls;
                if let Some(v) = value {
                    snap.authorization = mesh_authorization(key, v);
                }
                if !self.trust_domain.is_empty() {
                    snap.trust_domain.clone_from(&self.trust_domain);
                }
            }
            None => {
                self.meshes.remove(&escaped);
            }
        }
    }

    /// Takes in one stored `mesh/` or `res/` record: applied at once if a
    /// proxy wants its mesh, else held undecoded until one does. A deleted
    /// mesh that nobody wants takes its held records with it.
    pub(crate) fn follow(&mut self, key: &str, value: Option<Bytes>) {
        let Some((escaped, kind)) = classify(key) else {
            return;
        };
        if self.wanted.contains(&escaped) {
            self.upsert(key, value.as_deref());
        } else {
            self.hold(escaped, kind, key, value);
        }
    }

    /// Takes in one record from the change feed (see [`MeshIndex::follow`]);
    /// when it changed a typed mesh, also names the mesh's Cloud Map services
    /// anew if they may have changed, and returns the mesh.
    pub(crate) fn apply(
        &mut self,
        key: &str,
        value: Option<Bytes>,
        cloud_map: &CloudMap,
    ) -> Option<String> {
        let (mesh, kind) = classify(key)?;
        if !self.wanted.contains(&mesh) {
            self.hold(mesh, kind, key, value);
            return None;
        }
        if self.upsert(key, value.as_deref()) {
            self.refresh_cloud_map(&mesh, cloud_map);
        }
        Some(mesh)
    }

    /// Holds a record of a mesh nobody wants (see [`MeshIndex::follow`]).
    fn hold(&mut self, escaped: String, kind: Kind, key: &str, value: Option<Bytes>) {
        if kind == Kind::Mesh && value.is_none() {
            self.dormant.remove(&escaped);
        } else {
            self.dormant
                .entry(escaped)
                .or_default()
                .insert(key.to_string(), value);
        }
    }

    /// Marks a mesh as wanted by a proxy; the first time, applies the records
    /// held for it and names its Cloud Map services.
    pub(crate) fn want(&mut self, escaped: &str, cloud_map: &CloudMap) {
        if !self.wanted.insert(escaped.to_string()) {
            return;
        }
        let Some(records) = self.dormant.remove(escaped) else {
            return;
        };
        // In key order `mesh/…` comes before `res/…`, so the mesh record is
        // applied first (a resource of an unknown mesh would be skipped).
        for (key, value) in &records {
            self.upsert(key, value.as_deref());
        }
        self.refresh_cloud_map(escaped, cloud_map);
        if let Some(snap) = self.meshes.get_mut(escaped) {
            Arc::make_mut(snap).compact();
        }
    }

    /// Sets the instances of the Cloud Map services a mesh's nodes name.
    pub(crate) fn refresh_cloud_map(&mut self, escaped: &str, cloud_map: &CloudMap) {
        let Some(snap) = self.meshes.get_mut(escaped) else {
            return;
        };
        let names = cloud_map_names(snap);
        if names.iter().eq(snap.cloud_map.keys()) {
            // Same services: their instances are kept current by
            // `refresh_instances`.
            return;
        }
        let instances = cloud_map.instances_of(names.iter());
        Arc::make_mut(snap).cloud_map = instances;
    }

    /// Names the Cloud Map services of every typed mesh and compacts it:
    /// after a (re)load.
    pub(crate) fn settle(&mut self, cloud_map: &CloudMap) {
        let meshes: Vec<String> = self.meshes.keys().cloned().collect();
        for escaped in meshes {
            self.refresh_cloud_map(&escaped, cloud_map);
        }
        for snap in self.meshes.values_mut() {
            Arc::make_mut(snap).compact();
        }
    }

    /// Replaces the instances of the typed meshes naming a service a
    /// registry change touched; returns those meshes.
    ///
    /// Only typed meshes can be out of date (the others are built from the
    /// current registry when first needed), and only those naming a touched
    /// service. Their App Mesh part is unchanged: only the instances are
    /// replaced, in place when nobody else holds the snapshot.
    pub(crate) fn refresh_instances(
        &mut self,
        cloud_map: &CloudMap,
        touched: &Touched,
    ) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        if touched.is_empty() {
            return changed;
        }
        for (escaped, snap) in self.meshes.iter_mut() {
            if snap.cloud_map.keys().any(|name| touched.hits(name)) {
                let instances = cloud_map.instances_of(snap.cloud_map.keys());
                Arc::make_mut(snap).cloud_map = instances;
                changed.insert(escaped.clone());
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::test_support::{meta, record};
    use serde_json::json;

    #[test]
    fn the_typed_mesh_follows_creates_updates_and_deletes_record_by_record() {
        let mut index = MeshIndex::default();
        let cloud_map = CloudMap::default();
        let m = meta();
        let node = |name: &str, backend: &str| {
            record(
                json!({"meshName": "apps", "virtualNodeName": name, "metadata": m,
                "spec": {"backends": [{"virtualService": {"virtualServiceName": backend}}]},
                "status": {"status": "ACTIVE"}}),
            )
        };
        // A resource of an unknown mesh is skipped (the feed brings it back after the mesh).
        assert!(!index.upsert("res/apps/vn/front", Some(&node("front", "a"))));
        assert!(index.mesh("apps").is_none());
        index.upsert(
            "mesh/apps",
            Some(&record(
                json!({"meshName": "apps", "metadata": meta(), "spec": {}, "status": {}}),
            )),
        );
        // A node without Cloud Map discovery does not change the registry services named.
        assert!(!index.upsert("res/apps/vn/front", Some(&node("front", "a"))));
        index.upsert(
            "res/apps/rt/r/split",
            Some(&record(
                json!({"meshName": "apps", "virtualRouterName": "r", "routeName": "split",
                "metadata": meta(), "spec": {"tcpRoute": {"action": {"weightedTargets": [
                    {"virtualNode": "front", "weight": 1}]}}}, "status": {"status": "ACTIVE"}}),
            )),
        );
        let held = index.mesh("apps").unwrap();
        // An update replaces the node; a snapshot handed out earlier is not changed under its holder.
        index.upsert("res/apps/vn/front", Some(&node("front", "b")));
        let now = index.mesh("apps").unwrap();
        let backend = |s: &MeshSnapshot| {
            let weft_model::shapes::Backend::VirtualService(vs) =
                &s.virtual_nodes["front"].spec.backends.as_ref().unwrap()[0];
            vs.virtual_service_name.clone()
        };
        assert_eq!(backend(&held), "a");
        assert_eq!(backend(&now), "b");
        assert_eq!(now.routes_of("r").count(), 1);
        // Translation does not read the metadata strings, so the typed mesh does not hold them.
        let metadata = &now.virtual_nodes["front"].metadata;
        assert!(metadata.arn.is_empty() && metadata.uid.is_empty());
        assert_eq!(metadata.version, 1);
        // Deletes are found by the names in the key.
        assert!(!index.upsert("res/apps/vn/front", None));
        // One discovered through Cloud Map does, when it comes and when it goes.
        let cm = record(
            json!({"meshName": "apps", "virtualNodeName": "cm", "metadata": meta(),
            "spec": {"serviceDiscovery": {"awsCloudMap": {"namespaceName": "ns", "serviceName": "s"}}},
            "status": {"status": "ACTIVE"}}),
        );
        assert!(index.upsert("res/apps/vn/cm", Some(&cm)));
        index.refresh_cloud_map("apps", &cloud_map);
        assert!(index
            .mesh("apps")
            .unwrap()
            .cloud_map
            .contains_key(&("ns".to_string(), "s".to_string())));
        assert!(index.upsert("res/apps/vn/cm", None));
        index.refresh_cloud_map("apps", &cloud_map);
        assert!(index.mesh("apps").unwrap().cloud_map.is_empty());
        index.upsert("res/apps/rt/r/split", None);
        let now = index.mesh("apps").unwrap();
        assert!(now.virtual_nodes.is_empty());
        assert_eq!(now.routes_of("r").count(), 0);
        index.upsert("mesh/apps", None);
        assert!(index.mesh("apps").is_none());
    }

    #[test]
    fn every_kind_is_set_under_its_record_names_and_removed_under_its_key_names() {
        let mut index = MeshIndex::default();
        index.upsert(
            "mesh/apps",
            Some(&record(
                json!({"meshName": "apps", "metadata": meta(), "spec": {}, "status": {}}),
            )),
        );
        let active = json!({"status": "ACTIVE"});
        let records = [
            (
                "res/apps/vs/a%2Fb",
                json!({"meshName": "apps", "virtualServiceName": "a/b", "metadata": meta(),
                    "spec": {}, "status": active}),
            ),
            (
                "res/apps/vr/r",
                json!({"meshName": "apps", "virtualRouterName": "r", "metadata": meta(),
                    "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]},
                    "status": active}),
            ),
            (
                "res/apps/vg/edge",
                json!({"meshName": "apps", "virtualGatewayName": "edge", "metadata": meta(),
                    "spec": {"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}]},
                    "status": active}),
            ),
            (
                "res/apps/gr/edge/g1",
                json!({"meshName": "apps", "virtualGatewayName": "edge", "gatewayRouteName": "g1",
                    "metadata": meta(), "spec": {"httpRoute": {"match": {"prefix": "/"},
                    "action": {"target": {"virtualService": {"virtualServiceName": "a/b"}}}}},
                    "status": active}),
            ),
        ];
        for (key, data) in &records {
            assert!(!index.upsert(key, Some(&record(data.clone()))), "{key}");
        }
        let snap = index.mesh("apps").unwrap();
        assert!(snap.virtual_services.contains_key("a/b"));
        assert!(snap.virtual_routers.contains_key("r"));
        assert!(snap.virtual_gateways.contains_key("edge"));
        assert!(snap
            .gateway_routes
            .contains_key(&("edge".to_string(), "g1".to_string())));
        // A record that does not match its shape changes nothing.
        index.upsert("res/apps/vr/r", Some(b"{\"data\": 1}"));
        assert!(index
            .mesh("apps")
            .unwrap()
            .virtual_routers
            .contains_key("r"));
        for (key, _) in &records {
            index.upsert(key, None);
        }
        let snap = index.mesh("apps").unwrap();
        assert!(snap.virtual_services.is_empty() && snap.virtual_routers.is_empty());
        assert!(snap.virtual_gateways.is_empty() && snap.gateway_routes.is_empty());
    }

    #[test]
    fn a_mesh_no_proxy_wants_is_decoded_only_when_its_first_proxy_connects() {
        let mut index = MeshIndex::default();
        let cloud_map = CloudMap::default();
        let mesh = |name: &str| {
            Bytes::from(record(
                json!({"meshName": name, "metadata": meta(), "spec": {}, "status": {}}),
            ))
        };
        let node = |name: &str, backend: &str| {
            Bytes::from(record(
                json!({"meshName": "apps", "virtualNodeName": name, "metadata": meta(),
                "spec": {"backends": [{"virtualService": {"virtualServiceName": backend}}]},
                "status": {"status": "ACTIVE"}}),
            ))
        };
        let backend = |s: &MeshSnapshot, node: &str| {
            let weft_model::shapes::Backend::VirtualService(vs) =
                &s.virtual_nodes[node].spec.backends.as_ref().unwrap()[0];
            vs.virtual_service_name.clone()
        };
        // Writes to a mesh no proxy wants are held as they were stored.
        index.follow("mesh/apps", Some(mesh("apps")));
        index.follow("res/apps/vn/front", Some(node("front", "a")));
        index.follow("res/apps/vn/back", Some(node("back", "x")));
        index.follow("res/apps/vn/front", Some(node("front", "b")));
        index.follow("res/apps/vn/back", None);
        assert!(index.mesh("apps").is_none());
        assert_eq!(index.dormant["apps"].len(), 3);

        // Its first proxy: the latest of every record is applied.
        index.want("apps", &cloud_map);
        let snap = index.mesh("apps").unwrap();
        assert_eq!(backend(&snap, "front"), "b");
        assert!(!snap.virtual_nodes.contains_key("back"));
        assert!(!index.dormant.contains_key("apps"));

        // From then on its writes are applied as they come.
        index.follow("res/apps/vn/later", Some(node("later", "c")));
        assert_eq!(backend(&index.mesh("apps").unwrap(), "later"), "c");

        // A mesh deleted while nobody wanted it leaves nothing behind.
        index.follow("mesh/gone", Some(mesh("gone")));
        index.follow("mesh/gone", None);
        assert!(!index.dormant.contains_key("gone"));
        index.want("gone", &cloud_map);
        assert!(index.mesh("gone").is_none());
    }
}
