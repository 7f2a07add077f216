//! Test support: meshes written as App Mesh JSON (what `aws appmesh create-*` takes), and
//! accessors into translated Envoy resources.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use prost::Message;
use serde_json::{json, Value};
use weft_translate::{
    translate, MeshSnapshot, ProxyIdentity, ProxyOptions, ProxyResources, XdsCluster,
};

fn metadata(arn: String) -> Value {
    json!({
        "arn": arn, "createdAt": 0.0, "lastUpdatedAt": 0.0, "meshOwner": "111122223333",
        "resourceOwner": "111122223333", "uid": "00000000-0000-0000-0000-000000000000", "version": 1
    })
}

/// A mesh under construction; specs are App Mesh JSON.
#[derive(Clone)]
pub struct Mesh(pub MeshSnapshot);

impl Mesh {
    pub fn new(name: &str) -> Self {
        Self::with_spec(name, json!({}))
    }

    pub fn with_spec(name: &str, spec: Value) -> Self {
        let arn = format!("arn:aws:appmesh:us-west-2:111122223333:mesh/{name}");
        let mesh = serde_json::from_value(json!({
            "meshName": name, "metadata": metadata(arn), "spec": spec, "status": {"status": "ACTIVE"}
        }))
        .expect("mesh JSON");
        Self(MeshSnapshot::new(mesh))
    }

    pub fn name(&self) -> String {
        self.0.mesh.mesh_name.clone()
    }

    pub fn node(mut self, name: &str, spec: Value) -> Self {
        let arn = format!(
            "arn:aws:appmesh:us-west-2:111122223333:mesh/{}/virtualNode/{name}",
            self.name()
        );
        let node = serde_json::from_value(json!({
            "meshName": self.name(), "virtualNodeName": name, "metadata": metadata(arn),
            "spec": spec, "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("virtual node {name} JSON: {e}"));
        self.0.virtual_nodes.insert(name.to_string(), node);
        self
    }

    pub fn service(mut self, name: &str, spec: Value) -> Self {
        let arn = format!(
            "arn:aws:appmesh:us-west-2:111122223333:mesh/{}/virtualService/{name}",
            self.name()
        );
        let service = serde_json::from_value(json!({
            "meshName": self.name(), "virtualServiceName": name, "metadata": metadata(arn),
            "spec": spec, "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("virtual service {name} JSON: {e}"));
        self.0.virtual_services.insert(name.to_string(), service);
        self
    }

    pub fn router(mut self, name: &str, spec: Value) -> Self {
        let arn = format!(
            "arn:aws:appmesh:us-west-2:111122223333:mesh/{}/virtualRouter/{name}",
            self.name()
        );
        let router = serde_json::from_value(json!({
            "meshName": self.name(), "virtualRouterName": name, "metadata": metadata(arn),
            "spec": spec, "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("virtual router {name} JSON: {e}"));
        self.0.virtual_routers.insert(name.to_string(), router);
        self
    }

    pub fn route(mut self, router: &str, name: &str, spec: Value) -> Self {
        let arn = format!(
            "arn:aws:appmesh:us-west-2:111122223333:mesh/{}/virtualRouter/{router}/route/{name}",
            self.name()
        );
        let route = serde_json::from_value(json!({
            "meshName": self.name(), "virtualRouterName": router, "routeName": name,
            "metadata": metadata(arn), "spec": spec, "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("route {name} JSON: {e}"));
        self.0
            .routes
            .insert((router.to_string(), name.to_string()), route);
        self
    }

    pub fn gateway(mut self, name: &str, spec: Value) -> Self {
        let arn = format!(
            "arn:aws:appmesh:us-west-2:111122223333:mesh/{}/virtualGateway/{name}",
            self.name()
        );
        let gateway = serde_json::from_value(json!({
            "meshName": self.name(), "virtualGatewayName": name, "metadata": metadata(arn),
            "spec": spec, "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("virtual gateway {name} JSON: {e}"));
        self.0.virtual_gateways.insert(name.to_string(), gateway);
        self
    }

    pub fn gateway_route(mut self, gateway: &str, name: &str, spec: Value) -> Self {
        let arn = format!(
            "arn:aws:appmesh:us-west-2:111122223333:mesh/{}/virtualGateway/{gateway}/gatewayRoute/{name}",
            self.name()
        );
        let route = serde_json::from_value(json!({
            "meshName": self.name(), "virtualGatewayName": gateway, "gatewayRouteName": name,
            "metadata": metadata(arn), "spec": spec, "status": {"status": "ACTIVE"}
        }))
        .unwrap_or_else(|e| panic!("gateway route {name} JSON: {e}"));
        self.0
            .gateway_routes
            .insert((gateway.to_string(), name.to_string()), route);
        self
    }

    /// Translation for the virtual gateway `gateway` with `options`.
    pub fn gateway_proxy(&self, gateway: &str, options: &ProxyOptions) -> ProxyResources {
        let id: ProxyIdentity = format!("mesh/{}/virtualGateway/{gateway}", self.name())
            .parse()
            .expect("gateway identity");
        translate(&self.0, &id, options).unwrap_or_else(|e| panic!("translate {gateway}: {e}"))
    }

    /// Translation for `node` with `options`.
    pub fn proxy(&self, node: &str, options: &ProxyOptions) -> ProxyResources {
        translate(
            &self.0,
            &ProxyIdentity::virtual_node(self.name(), node),
            options,
        )
        .unwrap_or_else(|e| panic!("translate {node}: {e}"))
    }

    /// Translation for `node` in explicit mode (loopback, egress 15001).
    pub fn explicit(&self, node: &str) -> ProxyResources {
        self.proxy(node, &ProxyOptions::explicit())
    }
}

/// An HTTP virtual node listening on `port`, discovered by DNS at `hostname`.
pub fn http_node(hostname: &str, port: u16) -> Value {
    json!({
        "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
        "serviceDiscovery": {"dns": {"hostname": hostname}}
    })
}

/// A node with no listener that calls `backends`.
pub fn client_node(backends: &[&str]) -> Value {
    let backends: Vec<Value> = backends
        .iter()
        .map(|b| json!({"virtualService": {"virtualServiceName": b}}))
        .collect();
    json!({ "backends": backends })
}

pub fn router_provider(router: &str) -> Value {
    json!({"provider": {"virtualRouter": {"virtualRouterName": router}}})
}

pub fn node_provider(node: &str) -> Value {
    json!({"provider": {"virtualNode": {"virtualNodeName": node}}})
}

pub fn http_router(port: u16) -> Value {
    json!({"listeners": [{"portMapping": {"port": port, "protocol": "http"}}]})
}

// ---- accessors ----

pub fn route_config<'a>(res: &'a ProxyResources, name: &str) -> &'a RouteConfiguration {
    res.route_configurations
        .iter()
        .find(|rc| rc.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no route configuration {name}; have {:?}",
                res.route_configurations
                    .iter()
                    .map(|r| &r.name)
                    .collect::<Vec<_>>()
            )
        })
}

pub fn egress_routes(res: &ProxyResources) -> &RouteConfiguration {
    route_config(res, "rds_egress_http_15001")
}

pub fn vhost<'a>(rc: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    rc.virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no virtual host {name}; have {:?}",
                rc.virtual_hosts.iter().map(|v| &v.name).collect::<Vec<_>>()
            )
        })
}

pub fn route_action(route: &Route) -> &RouteAction {
    match route.action.as_ref() {
        Some(Action::Route(action)) => action,
        other => panic!("route {} has no forwarding action: {other:?}", route.name),
    }
}

pub fn cluster<'a>(res: &'a ProxyResources, name: &str) -> &'a XdsCluster {
    res.clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}; have {:?}", cluster_names(res)))
}

pub fn cluster_names(res: &ProxyResources) -> Vec<String> {
    res.clusters.iter().map(|c| c.name.clone()).collect()
}

pub fn listener<'a>(res: &'a ProxyResources, name: &str) -> &'a Listener {
    res.listeners
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no listener {name}; have {:?}",
                res.listeners.iter().map(|l| &l.name).collect::<Vec<_>>()
            )
        })
}

pub fn hcm(filter: &Filter) -> HttpConnectionManager {
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("filter {} has no typed_config", filter.name)
    };
    HttpConnectionManager::decode(any.value.as_slice()).expect("an HttpConnectionManager")
}

pub fn tcp_proxy(filter: &Filter) -> TcpProxy {
    let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("filter {} has no typed_config", filter.name)
    };
    assert!(any.type_url.ends_with("TcpProxy"), "{}", any.type_url);
    TcpProxy::decode(any.value.as_slice()).expect("a TcpProxy")
}
