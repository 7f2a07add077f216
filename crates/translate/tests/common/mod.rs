//! Test support: meshes come from weft-test-support's `Mesh` builder, with specs written as
//! App Mesh JSON (what `aws appmesh create-*` takes) or with its spec builders; here are the
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
pub use weft_test_support::mesh::Mesh;
pub use weft_test_support::spec::{NodeSpec, RouterSpec, ServiceSpec};
use weft_translate::{ProxyResources, XdsCluster};

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
