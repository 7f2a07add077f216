//! [`Mesh`]: a mesh snapshot built resource by resource from App Mesh JSON (or the builders of
//! [`crate::spec`]), and translated into the Envoy resources of one proxy: how the translation
//! tests state a scenario.
//!
//! ```
//! use weft_test_support::mesh::Mesh;
//! use weft_test_support::spec::{NodeSpec, ServiceSpec};
//!
//! let mesh = Mesh::new("shop")
//!     .node("web", NodeSpec::client(&["cart.shop.local"]))
//!     .node("cart", NodeSpec::http("cart.shop.local", 8080))
//!     .service("cart.shop.local", ServiceSpec::by_node("cart"));
//! assert_eq!(mesh.explicit("web").clusters.len(), 1);
//! ```

use serde_json::{json, Value};
use weft_translate::{translate, MeshSnapshot, ProxyIdentity, ProxyOptions, ProxyResources};

/// The account every resource of a [`Mesh`] belongs to.
pub const ACCOUNT: &str = "111122223333";

/// The region of every resource's ARN.
pub const REGION: &str = "us-west-2";

fn metadata(arn: String) -> Value {
    json!({
        "arn": arn, "createdAt": 0.0, "lastUpdatedAt": 0.0, "meshOwner": ACCOUNT,
        "resourceOwner": ACCOUNT, "uid": "00000000-0000-0000-0000-000000000000", "version": 1
    })
}

/// A mesh under construction: each resource is added with its App Mesh spec, as JSON or as a
/// builder of [`crate::spec`] (anything that is `Into<serde_json::Value>`); a spec that is not
/// valid App Mesh JSON panics, naming the resource. The snapshot itself is public, for what the
/// builder has no method for (Cloud Map instances, …).
#[derive(Clone)]
pub struct Mesh(pub MeshSnapshot);

impl Mesh {
    /// The mesh `name` with an empty spec.
    pub fn new(name: &str) -> Self {
        Self::with_spec(name, json!({}))
    }

    /// The mesh `name` with `spec`.
    pub fn with_spec(name: &str, spec: impl Into<Value>) -> Self {
        let arn = format!("arn:aws:appmesh:{REGION}:{ACCOUNT}:mesh/{name}");
        let mesh = serde_json::from_value(json!({
            "meshName": name, "metadata": metadata(arn), "spec": spec.into(),
            "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("mesh {name} JSON: {e}"));
        Self(MeshSnapshot::new(mesh))
    }

    /// The mesh's name.
    pub fn name(&self) -> String {
        self.0.mesh.mesh_name.clone()
    }

    fn arn(&self, path: &str) -> String {
        format!(
            "arn:aws:appmesh:{REGION}:{ACCOUNT}:mesh/{}/{path}",
            self.name()
        )
    }

    /// With the virtual node `name`.
    pub fn node(mut self, name: &str, spec: impl Into<Value>) -> Self {
        let node = serde_json::from_value(json!({
            "meshName": self.name(), "virtualNodeName": name,
            "metadata": metadata(self.arn(&format!("virtualNode/{name}"))),
            "spec": spec.into(), "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("virtual node {name} JSON: {e}"));
        self.0.virtual_nodes.insert(name.to_string(), node);
        self
    }

    /// With the virtual service `name`.
    pub fn service(mut self, name: &str, spec: impl Into<Value>) -> Self {
        let service = serde_json::from_value(json!({
            "meshName": self.name(), "virtualServiceName": name,
            "metadata": metadata(self.arn(&format!("virtualService/{name}"))),
            "spec": spec.into(), "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("virtual service {name} JSON: {e}"));
        self.0.virtual_services.insert(name.to_string(), service);
        self
    }

    /// With the virtual router `name`.
    pub fn router(mut self, name: &str, spec: impl Into<Value>) -> Self {
        let router = serde_json::from_value(json!({
            "meshName": self.name(), "virtualRouterName": name,
            "metadata": metadata(self.arn(&format!("virtualRouter/{name}"))),
            "spec": spec.into(), "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("virtual router {name} JSON: {e}"));
        self.0.virtual_routers.insert(name.to_string(), router);
        self
    }

    /// With the route `name` of the virtual router `router`.
    pub fn route(mut self, router: &str, name: &str, spec: impl Into<Value>) -> Self {
        let route = serde_json::from_value(json!({
            "meshName": self.name(), "virtualRouterName": router, "routeName": name,
            "metadata": metadata(self.arn(&format!("virtualRouter/{router}/route/{name}"))),
            "spec": spec.into(), "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("route {name} JSON: {e}"));
        self.0
            .routes
            .insert((router.to_string(), name.to_string()), route);
        self
    }

    /// With the virtual gateway `name`.
    pub fn gateway(mut self, name: &str, spec: impl Into<Value>) -> Self {
        let gateway = serde_json::from_value(json!({
            "meshName": self.name(), "virtualGatewayName": name,
            "metadata": metadata(self.arn(&format!("virtualGateway/{name}"))),
            "spec": spec.into(), "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("virtual gateway {name} JSON: {e}"));
        self.0.virtual_gateways.insert(name.to_string(), gateway);
        self
    }

    /// With the gateway route `name` of the virtual gateway `gateway`.
    pub fn gateway_route(mut self, gateway: &str, name: &str, spec: impl Into<Value>) -> Self {
        let route = serde_json::from_value(json!({
            "meshName": self.name(), "virtualGatewayName": gateway, "gatewayRouteName": name,
            "metadata": metadata(self.arn(&format!("virtualGateway/{gateway}/gatewayRoute/{name}"))),
            "spec": spec.into(), "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("gateway route {name} JSON: {e}"));
        self.0
            .gateway_routes
            .insert((gateway.to_string(), name.to_string()), route);
        self
    }

    /// The translation for the virtual gateway `gateway` with `options`; panics if it fails.
    pub fn gateway_proxy(&self, gateway: &str, options: &ProxyOptions) -> ProxyResources {
        let id: ProxyIdentity = format!("mesh/{}/virtualGateway/{gateway}", self.name())
            .parse()
            .unwrap_or_else(|e| panic!("gateway identity of {gateway}: {e}"));
        translate(&self.0, &id, options).unwrap_or_else(|e| panic!("translate {gateway}: {e}"))
    }

    /// The translation for the virtual node `node` with `options`; panics if it fails.
    pub fn proxy(&self, node: &str, options: &ProxyOptions) -> ProxyResources {
        translate(
            &self.0,
            &ProxyIdentity::virtual_node(self.name(), node),
            options,
        )
        .unwrap_or_else(|e| panic!("translate {node}: {e}"))
    }

    /// The translation for the virtual node `node` in explicit mode (loopback, egress 15001).
    pub fn explicit(&self, node: &str) -> ProxyResources {
        self.proxy(node, &ProxyOptions::explicit())
    }
}
