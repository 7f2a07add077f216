//! Service-to-service authorization (the mesh tag `weft:authorization`, a Weft extension) in
//! the translated config: who may call a node, and where Envoy's RBAC filters go. Envoy itself
//! enforces it in `crates/weft/tests/authorization.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as XdsFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as XdsHttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as XdsHttpFilterConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as XdsHcm;
use prost::Message;
use weft_model::MeshAuthorization;
use weft_test_support::mesh::Mesh;
use weft_test_support::spec::{
    GatewayRouteSpec, GatewaySpec, HttpMatch, Listener, NodeSpec, RouteSpec, RouterSpec,
    ServiceSpec,
};

/// red provides red.svc directly and colors.svc through a router; front calls red.svc, web
/// calls colors.svc, bystander only blue.svc; edge's gateway route targets red.svc; red's
/// `weft:callers` tag names batch.
fn mesh(mode: MeshAuthorization) -> Mesh {
    let mut mesh = Mesh::new("apps")
        .node(
            "red",
            NodeSpec::http("red.local", 8080).listener(Listener::tcp(9000)),
        )
        .node("blue", NodeSpec::http("blue.local", 8080))
        .service("red.svc", ServiceSpec::by_node("red"))
        .service("blue.svc", ServiceSpec::by_node("blue"))
        .router("colors", RouterSpec::http(8080))
        .route(
            "colors",
            "split",
            RouteSpec::http(HttpMatch::prefix("/")).to("red", 1),
        )
        .service("colors.svc", ServiceSpec::by_router("colors"))
        .node("front", NodeSpec::client(&["red.svc"]))
        .node("web", NodeSpec::client(&["colors.svc"]))
        .node("bystander", NodeSpec::client(&["blue.svc"]))
        .gateway("edge", GatewaySpec::new().listener(Listener::http(8443)))
        .gateway_route(
            "edge",
            "to-red",
            GatewayRouteSpec::http(HttpMatch::prefix("/"), "red.svc"),
        );
    mesh.0.authorization = mode;
    mesh.0
        .extra_callers
        .insert("red".into(), vec!["virtualNode/batch".into()]);
    mesh
}

/// The HTTP filters of `node`'s ingress connection managers, and the network filters of each
/// ingress filter chain, by name; the decoded HTTP RBAC configs.
fn ingress(mesh: &Mesh, node: &str) -> (Vec<String>, Vec<Vec<String>>, Vec<XdsHttpRbac>) {
    let resources = mesh.explicit(node);
    let (mut http, mut chains, mut rbac) = (Vec::new(), Vec::new(), Vec::new());
    for listener in resources
        .listeners
        .iter()
        .filter(|l| l.name.starts_with("lds_ingress"))
    {
        for chain in &listener.filter_chains {
            chains.push(chain.filters.iter().map(|f| f.name.clone()).collect());
            for f in &chain.filters {
                let Some(XdsFilterConfigType::TypedConfig(any)) = &f.config_type else {
                    continue;
                };
                let Ok(hcm) = XdsHcm::decode(any.value.as_slice()) else {
                    continue;
                };
                for h in &hcm.http_filters {
                    http.push(h.name.clone());
                    if let Some(XdsHttpFilterConfigType::TypedConfig(any)) = &h.config_type {
                        if h.name == "envoy.filters.http.rbac" {
                            rbac.push(XdsHttpRbac::decode(any.value.as_slice()).unwrap());
                        }
                    }
                }
            }
        }
    }
    (http, chains, rbac)
}

fn principals(rbac: &XdsHttpRbac) -> String {
    let rules = rbac.rules.as_ref().or(rbac.shadow_rules.as_ref()).unwrap();
    format!("{:?}", rules.policies)
}

#[test]
fn a_node_s_callers_are_who_reaches_its_services_directly_through_a_router_or_a_gateway_and_its_extra_callers(
) {
    let (_, _, rbac) = ingress(&mesh(MeshAuthorization::Enforce), "red");
    let principals = principals(&rbac[0]);
    for caller in [
        "virtualNode/front",
        "virtualNode/web",
        "virtualGateway/edge",
        "virtualNode/batch",
    ] {
        assert!(
            principals.contains(&format!("spiffe://weft.local/mesh/apps/{caller}\"")),
            "{caller}: {principals}"
        );
    }
    assert!(!principals.contains("bystander"), "{principals}");
    let (_, _, blue) = ingress(&mesh(MeshAuthorization::Enforce), "blue");
    let blue = self::principals(&blue[0]);
    assert!(blue.contains("virtualNode/bystander") && !blue.contains("virtualNode/front"));
}

#[test]
fn enforce_puts_rbac_before_the_router_and_the_tcp_proxy_report_only_shadows_it_and_off_adds_none()
{
    let (http, chains, rbac) = ingress(&mesh(MeshAuthorization::Enforce), "red");
    assert_eq!(
        http,
        ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    );
    assert!(
        chains.contains(&vec![
            "envoy.filters.network.rbac".to_string(),
            "envoy.filters.network.tcp_proxy".to_string()
        ]),
        "{chains:?}"
    );
    assert!(rbac[0].rules.is_some() && rbac[0].shadow_rules.is_none());

    let (_, _, rbac) = ingress(&mesh(MeshAuthorization::Report), "red");
    assert!(rbac[0].rules.is_none() && rbac[0].shadow_rules.is_some());

    let (http, chains, _) = ingress(&mesh(MeshAuthorization::Disabled), "red");
    assert_eq!(http, ["envoy.filters.http.router"]);
    assert!(chains
        .iter()
        .all(|c| !c.contains(&"envoy.filters.network.rbac".to_string())));
}

#[test]
fn a_node_nobody_calls_refuses_everyone_when_enforced() {
    let mesh = mesh(MeshAuthorization::Enforce).node("lonely", NodeSpec::http("l.local", 8080));
    let (_, _, rbac) = ingress(&mesh, "lonely");
    assert!(rbac[0].rules.as_ref().unwrap().policies.is_empty());
}
