//! One consistent view of a mesh, the input of [`crate::translate`].

use std::collections::BTreeMap;

use crate::CloudMapInstance;
use weft_model::{MeshAuthorization, MeshMtls};

use weft_model::shapes::{
    GatewayRouteData, MeshData, RouteData, VirtualGatewayData, VirtualNodeData, VirtualRouterData,
    VirtualServiceData,
};

/// Every resource of one mesh at one store revision.
///
/// Maps are keyed by resource name (routes and gateway routes by `(parent, name)`), so that
/// iteration order — and therefore the translated output — is deterministic.
/// Translation reads no resource's metadata: the control plane's copy leaves the ARN, uid
/// and owners empty.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshSnapshot {
    /// The mesh itself (egress filter, mesh-wide IP preference).
    pub mesh: MeshData,
    /// Virtual nodes by name.
    pub virtual_nodes: BTreeMap<String, VirtualNodeData>,
    /// Virtual services by name.
    pub virtual_services: BTreeMap<String, VirtualServiceData>,
    /// Virtual routers by name.
    pub virtual_routers: BTreeMap<String, VirtualRouterData>,
    /// Routes by `(virtual router name, route name)`.
    pub routes: BTreeMap<(String, String), RouteData>,
    /// Virtual gateways by name.
    pub virtual_gateways: BTreeMap<String, VirtualGatewayData>,
    /// Gateway routes by `(virtual gateway name, gateway route name)`.
    pub gateway_routes: BTreeMap<(String, String), GatewayRouteData>,
    /// Registered instances by `(namespace name, service name)` — the registry's part of the
    /// input, for virtual nodes discovered through Cloud Map. A service that is absent (or
    /// has no instance) gives its clusters no endpoints.
    pub cloud_map: BTreeMap<(String, String), Vec<CloudMapInstance>>,
    /// Mesh-wide mutual TLS, from the mesh's `weft:mtls` tag (a Weft extension; `Disabled`,
    /// App Mesh's behaviour, without the tag).
    pub mtls: MeshMtls,
    /// The trust domain of Weft's CA, whose SPIFFE ids
    /// (`spiffe://<trust domain>/mesh/<mesh>/virtualNode/<name>`) mesh-wide mutual TLS checks.
    pub trust_domain: String,
    /// Service-to-service authorization, from the mesh's `weft:authorization` tag (a Weft
    /// extension; `Disabled`, App Mesh's behaviour, without the tag).
    pub authorization: MeshAuthorization,
    /// Each virtual node's extra callers, from its `weft:callers` tag (`virtualNode/<name>`,
    /// `virtualGateway/<name>`); nodes without the tag are absent.
    pub extra_callers: BTreeMap<String, Vec<String>>,
}

/// The trust domain of Weft's CA unless `weft server --trust-domain` says otherwise (the
/// control plane sets [`MeshSnapshot::trust_domain`] from the CA it runs).
pub const DEFAULT_TRUST_DOMAIN: &str = "weft.local";

impl MeshSnapshot {
    /// A snapshot of `mesh` with no other resources.
    pub fn new(mesh: MeshData) -> Self {
        Self {
            mesh,
            virtual_nodes: BTreeMap::new(),
            virtual_services: BTreeMap::new(),
            virtual_routers: BTreeMap::new(),
            routes: BTreeMap::new(),
            virtual_gateways: BTreeMap::new(),
            gateway_routes: BTreeMap::new(),
            cloud_map: BTreeMap::new(),
            mtls: MeshMtls::Disabled,
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            authorization: MeshAuthorization::Disabled,
            extra_callers: BTreeMap::new(),
        }
    }

    /// Re-packs the maps after a bulk load. A B-tree filled in key order
    /// leaves its nodes about half empty (each split keeps half), and a node
    /// holds its values inline (a `RouteData` is over 1 KiB); built from a
    /// sorted iterator, every node but the last of a level is full.
    pub fn compact(&mut self) {
        fn repack<K: Ord, V>(map: &mut BTreeMap<K, V>) {
            *map = std::mem::take(map).into_iter().collect();
        }
        repack(&mut self.virtual_nodes);
        repack(&mut self.virtual_services);
        repack(&mut self.virtual_routers);
        repack(&mut self.routes);
        repack(&mut self.virtual_gateways);
        repack(&mut self.gateway_routes);
        repack(&mut self.cloud_map);
    }

    /// The mesh name.
    pub fn mesh_name(&self) -> &str {
        &self.mesh.mesh_name
    }

    /// The routes of one virtual router, in name order.
    pub fn routes_of<'a>(&'a self, router: &'a str) -> impl Iterator<Item = &'a RouteData> + 'a {
        self.routes
            .range((router.to_string(), String::new())..)
            .take_while(move |((r, _), _)| r == router)
            .map(|(_, route)| route)
    }
}
