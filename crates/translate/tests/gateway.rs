//! Virtual gateway translation as App Mesh scenarios (virtual_gateways.md, gateway-routes.md):
//! a gateway Envoy applies the gateway routes on its listeners, then reaches the target virtual
//! service through the mesh's routing for it, via its own egress listener (the self-redirect
//! cluster of envoy-metrics.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, Route};
use envoy_types::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfigType;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use prost::Message;
use serde_json::{json, Value};
use weft_translate::*;

/// Mesh `apps`: service `color.apps.local` behind router `color` (http 8080) with a 100/0
/// split between nodes `blue` and `green`, service `rpc.apps.local` provided by the gRPC node
/// `rpc`, and gateway `edge` with one http listener on 9080.
fn apps() -> Mesh {
    Mesh::new("apps")
        .node("blue", NodeSpec::http("blue.apps.local", 8080))
        .node("green", NodeSpec::http("green.apps.local", 8080))
        .node(
            "rpc",
            json!({"listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"}}],
                   "serviceDiscovery": {"dns": {"hostname": "rpc.apps.local"}}}),
        )
        .router("color", RouterSpec::http(8080))
        .route(
            "color",
            "split",
            json!({"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
                {"virtualNode": "blue", "weight": 100}, {"virtualNode": "green", "weight": 0}]}}}),
        )
        .service("color.apps.local", ServiceSpec::by_router("color"))
        .service("rpc.apps.local", ServiceSpec::by_node("rpc"))
        .gateway(
            "edge",
            json!({"listeners": [{"portMapping": {"port": 9080, "protocol": "http"}}]}),
        )
}

fn to_color(m: Value) -> Value {
    json!({"httpRoute": {"match": m, "action": {"target": {"virtualService": {"virtualServiceName": "color.apps.local"}}}}})
}

fn edge(mesh: &Mesh) -> ProxyResources {
    mesh.gateway_proxy("edge", &ProxyOptions::explicit())
}

fn gateway_routes(res: &ProxyResources) -> Vec<Route> {
    route_config(res, "rds_ingress_http_9080").virtual_hosts[0]
        .routes
        .clone()
}

fn named<'a>(routes: &'a [Route], name: &str) -> &'a Route {
    routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no route {name}"))
}

fn target_header(route: &Route) -> String {
    route
        .request_headers_to_add
        .iter()
        .find_map(|h| h.header.as_ref().filter(|h| h.key == GATEWAY_TARGET_HEADER))
        .map(|h| h.value.clone())
        .unwrap_or_default()
}

fn host_literal(route: &Route) -> Option<String> {
    match &route_action(route).host_rewrite_specifier {
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h.clone()),
        _ => None,
    }
}

fn header<'a>(m: &'a [HeaderMatcher], name: &str) -> &'a HeaderMatcher {
    m.iter()
        .find(|h| h.name == name)
        .unwrap_or_else(|| panic!("no header matcher {name}"))
}

fn endpoint(cluster: &XdsCluster) -> (String, u32) {
    let la = cluster.load_assignment.as_ref().unwrap();
    let Some(HostIdentifier::Endpoint(e)) = &la.endpoints[0].lb_endpoints[0].host_identifier else {
        panic!()
    };
    let Some(AddressKind::SocketAddress(sa)) = &e.address.as_ref().unwrap().address else {
        panic!()
    };
    let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
        panic!()
    };
    (sa.address.clone(), port)
}

fn thresholds(cluster: &XdsCluster) -> Thresholds {
    cluster.circuit_breakers.as_ref().unwrap().thresholds[0]
}

#[test]
fn a_gateway_listens_on_its_port_and_reaches_the_mesh_through_its_own_egress_listener() {
    let mesh = apps().gateway_route("edge", "all", to_color(json!({"prefix": "/"})));
    let res = edge(&mesh);
    let names: Vec<&str> = res.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["lds_egress_127.0.0.1_15001", "lds_ingress_127.0.0.1_9080"]
    );
    let redirect = cluster(&res, "cds_ingress_apps_edge_self_redirect_http_15001");
    assert_eq!(endpoint(redirect), ("127.0.0.1".to_string(), 15001));
    let all = named(&gateway_routes(&res), "all").clone();
    assert_eq!(
        route_action(&all).cluster_specifier,
        Some(ClusterSpecifier::Cluster(redirect.name.clone()))
    );
    assert_eq!(target_header(&all), "color.apps.local");
    // Only what the targets need: the router's target nodes, no gRPC node.
    assert_eq!(
        cluster_names(&res),
        [
            "cds_egress_apps_blue_http_8080",
            "cds_egress_apps_green_http_8080",
            "cds_ingress_apps_edge_self_redirect_http_15001"
        ]
    );
}

#[test]
fn the_egress_hop_applies_the_target_services_router_routes_and_weights() {
    let mesh = apps().gateway_route("edge", "all", to_color(json!({"prefix": "/"})));
    let res = edge(&mesh);
    let egress = route_config(&res, "rds_egress_http_15001");
    assert_eq!(egress.request_headers_to_remove, [GATEWAY_TARGET_HEADER]);
    let routes = &egress.virtual_hosts[0].routes;
    // The router's route once per name the service is known by.
    let targets: Vec<String> = routes
        .iter()
        .map(|r| {
            match &header(&r.r#match.as_ref().unwrap().headers, GATEWAY_TARGET_HEADER)
                .header_match_specifier
            {
                Some(HeaderMatchSpecifier::StringMatch(s)) => match &s.match_pattern {
                    Some(MatchPattern::Exact(v)) => v.clone(),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(targets, ["color.apps.local", "color.apps.local:8080"]);
    // 100/0: the 0-weight node is left out, and the route keeps App Mesh's default retries.
    let action = route_action(&routes[0]);
    assert_eq!(
        action.cluster_specifier,
        Some(ClusterSpecifier::Cluster(
            "cds_egress_apps_blue_http_8080".into()
        ))
    );
    assert_eq!(action.retry_policy, Some(default_retry_policy()));
}

#[test]
fn a_prefix_match_rewrites_the_prefix_to_slash_and_the_host_to_the_service_by_default() {
    let mesh = apps().gateway_route("edge", "chapter", to_color(json!({"prefix": "/chapter"})));
    let res = edge(&mesh);
    let route = named(&gateway_routes(&res), "chapter").clone();
    assert_eq!(
        route.r#match.as_ref().unwrap().path_specifier,
        Some(PathSpecifier::Prefix("/chapter".into()))
    );
    let rewrite = route_action(&route).regex_rewrite.clone().unwrap();
    assert_eq!(rewrite.pattern.unwrap().regex, "^/chapter/*");
    assert_eq!(rewrite.substitution, "/");
    assert_eq!(host_literal(&route).as_deref(), Some("color.apps.local"));
}

#[test]
fn prefix_and_hostname_rewrites_can_be_disabled_or_given_a_value() {
    let route = |m: Value, rewrite: Value| {
        json!({"httpRoute": {"match": m, "action": {"rewrite": rewrite,
            "target": {"virtualService": {"virtualServiceName": "color.apps.local"}}}}})
    };
    let mesh = apps()
        .gateway_route(
            "edge",
            "keep",
            route(
                json!({"prefix": "/keep"}),
                json!({"prefix": {"defaultPrefix": "DISABLED"}, "hostname": {"defaultTargetHostname": "DISABLED"}}),
            ),
        )
        .gateway_route(
            "books",
            "x",
            to_color(json!({"prefix": "/"})), // another gateway: ignored
        )
        .gateway_route(
            "edge",
            "value",
            route(
                json!({"prefix": "/old/"}),
                json!({"prefix": {"value": "/new/"}, "hostname": {"defaultTargetHostname": "ENABLED"}}),
            ),
        )
        .gateway_route(
            "edge",
            "exact",
            route(
                json!({"path": {"exact": "/a"}}),
                json!({"path": {"exact": "/b"}}),
            ),
        )
        .gateway_route(
            "edge",
            "regex",
            route(json!({"path": {"regex": "/r/[0-9]+"}}), json!({})),
        );
    let res = edge(&mesh);
    let routes = gateway_routes(&res);
    assert_eq!(routes.len(), 4);
    let keep = route_action(named(&routes, "keep"));
    assert!(keep.regex_rewrite.is_none() && keep.prefix_rewrite.is_empty());
    assert_eq!(host_literal(named(&routes, "keep")), None);
    let value = route_action(named(&routes, "value"));
    assert_eq!(value.prefix_rewrite, "/new/");
    assert_eq!(
        host_literal(named(&routes, "value")).as_deref(),
        Some("color.apps.local")
    );
    let exact = route_action(named(&routes, "exact"))
        .regex_rewrite
        .clone()
        .unwrap();
    assert_eq!(
        (exact.pattern.unwrap().regex, exact.substitution),
        ("^.*$".to_string(), "/b".to_string())
    );
    // An exact or regex path has no path rewrite unless one is given.
    let regex = named(&routes, "regex");
    assert!(route_action(regex).regex_rewrite.is_none());
    assert!(matches!(
        regex.r#match.as_ref().unwrap().path_specifier,
        Some(PathSpecifier::SafeRegex(_))
    ));
}

#[test]
fn hostname_headers_method_and_query_parameters_all_become_conditions() {
    let mesh = apps().gateway_route(
        "edge",
        "picky",
        to_color(json!({"prefix": "/", "hostname": {"suffix": ".example.com"}, "method": "POST",
            "headers": [{"name": "x-canary", "match": {"exact": "yes"}}, {"name": "x-debug", "invert": true}],
            "queryParameters": [{"name": "v", "match": {"exact": "2"}}]})),
    );
    let res = edge(&mesh);
    let m = named(&gateway_routes(&res), "picky")
        .r#match
        .clone()
        .unwrap();
    let names: Vec<&str> = m.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, [":method", "x-canary", "x-debug", ":authority"]);
    assert!(header(&m.headers, "x-debug").invert_match);
    assert_eq!(m.query_parameters[0].name, "v");
}

#[test]
fn routes_go_by_priority_then_the_longest_prefix() {
    let mesh = apps()
        .gateway_route("edge", "a-root", to_color(json!({"prefix": "/"})))
        .gateway_route("edge", "b-long", to_color(json!({"prefix": "/chapter"})))
        .gateway_route(
            "edge",
            "c-exact",
            to_color(json!({"path": {"exact": "/chapter/1"}})),
        )
        .gateway_route("edge", "z-first", {
            let mut r = to_color(json!({"prefix": "/"}));
            r["priority"] = json!(0);
            r
        });
    let res = edge(&mesh);
    let order: Vec<String> = gateway_routes(&res)
        .iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(order, ["z-first", "c-exact", "b-long", "a-root"]);
}

#[test]
fn a_route_to_a_service_the_mesh_cannot_route_answers_503_instead_of_falling_through() {
    let mesh = apps()
        .gateway_route(
            "edge",
            "ghost",
            json!({"priority": 0, "httpRoute": {"match": {"prefix": "/"}, "action": {"target": {"virtualService": {"virtualServiceName": "ghost.apps.local"}}}}}),
        )
        .gateway_route("edge", "wrong-port", {
            let mut r = to_color(json!({"prefix": "/p"}));
            r["httpRoute"]["action"]["target"]["port"] = json!(9999);
            r
        });
    let res = edge(&mesh);
    for name in ["ghost", "wrong-port"] {
        match &named(&gateway_routes(&res), name).action {
            Some(Action::DirectResponse(d)) => assert_eq!(d.status, 503),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn a_grpc_route_matches_service_and_metadata_on_grpc_listeners_only() {
    let mesh = apps()
        .gateway(
            "edge",
            json!({"listeners": [{"portMapping": {"port": 9080, "protocol": "http"}},
                                 {"portMapping": {"port": 9090, "protocol": "grpc"}}]}),
        )
        .gateway_route(
            "edge",
            "rpc",
            json!({"grpcRoute": {"match": {"serviceName": "weft.Colors", "hostname": {"exact": "rpc.example.com"},
                "metadata": [{"name": "x-tier", "match": {"prefix": "gold"}}]},
                "action": {"target": {"virtualService": {"virtualServiceName": "rpc.apps.local"}}}}}),
        );
    let res = edge(&mesh);
    assert!(gateway_routes(&res).is_empty(), "not on the http listener");
    let rc = route_config(&res, "rds_ingress_grpc_9090");
    let route = &rc.virtual_hosts[0].routes[0];
    let m = route.r#match.as_ref().unwrap();
    assert_eq!(
        m.path_specifier,
        Some(PathSpecifier::Prefix("/weft.Colors/".into()))
    );
    assert!(m.grpc.is_some());
    header(&m.headers, "x-tier");
    header(&m.headers, ":authority");
    assert_eq!(host_literal(route).as_deref(), Some("rpc.apps.local"));
    assert_eq!(
        route_action(route).cluster_specifier,
        Some(ClusterSpecifier::Cluster(
            "cds_ingress_apps_edge_self_redirect_9090_grpc_15001".into()
        ))
    );
    // Two listeners: the self-redirect clusters carry the listener port.
    cluster(&res, "cds_ingress_apps_edge_self_redirect_9080_http_15001");
    cluster(&res, "cds_egress_apps_rpc_grpc_50051");
}

#[test]
fn a_route_with_a_port_match_serves_only_that_listener() {
    let mesh = apps()
        .gateway(
            "edge",
            json!({"listeners": [{"portMapping": {"port": 9080, "protocol": "http"}},
                                 {"portMapping": {"port": 9081, "protocol": "http"}}]}),
        )
        .gateway_route(
            "edge",
            "only-9081",
            to_color(json!({"prefix": "/", "port": 9081})),
        );
    let res = edge(&mesh);
    assert!(gateway_routes(&res).is_empty());
    assert_eq!(
        route_config(&res, "rds_ingress_http_9081").virtual_hosts[0].routes[0].name,
        "only-9081"
    );
}

#[test]
fn connection_pools_limit_what_the_gateway_sends_into_the_mesh() {
    let mesh = apps()
        .gateway(
            "edge",
            json!({"listeners": [
                {"portMapping": {"port": 9080, "protocol": "http"},
                 "connectionPool": {"http": {"maxConnections": 3, "maxPendingRequests": 1}}},
                {"portMapping": {"port": 9082, "protocol": "http2"},
                 "connectionPool": {"http2": {"maxRequests": 7}}},
                {"portMapping": {"port": 9090, "protocol": "grpc"},
                 "connectionPool": {"grpc": {"maxRequests": 9}}}]}),
        )
        .gateway_route("edge", "all", to_color(json!({"prefix": "/"})));
    let res = edge(&mesh);
    let http = thresholds(cluster(
        &res,
        "cds_ingress_apps_edge_self_redirect_9080_http_15001",
    ));
    assert_eq!(http.max_connections.unwrap().value, 3);
    assert_eq!(http.max_pending_requests.unwrap().value, 1);
    assert_eq!(http.max_requests.unwrap().value, CIRCUIT_BREAKER_MAX);
    let h2 = cluster(&res, "cds_ingress_apps_edge_self_redirect_9082_http2_15001");
    assert_eq!(thresholds(h2).max_requests.unwrap().value, 7);
    // HTTP/2 to the egress hop, as the listener speaks.
    assert!(!h2.typed_extension_protocol_options.is_empty());
    let grpc = thresholds(cluster(
        &res,
        "cds_ingress_apps_edge_self_redirect_9090_grpc_15001",
    ));
    assert_eq!(grpc.max_requests.unwrap().value, 9);
    assert_eq!(grpc.max_connections.unwrap().value, CIRCUIT_BREAKER_MAX);
}

#[test]
fn a_listener_health_check_is_answered_in_pass_through_mode_and_logging_is_on_the_listener() {
    let mesh = apps()
        .gateway(
            "edge",
            json!({"logging": {"accessLog": {"file": {"path": "/dev/stdout", "format": {"text": "%RESPONSE_CODE%"}}}},
                   "listeners": [{"portMapping": {"port": 9080, "protocol": "http"},
                "healthCheck": {"protocol": "http", "path": "/ping", "healthyThreshold": 2, "unhealthyThreshold": 3,
                                "intervalMillis": 5000, "timeoutMillis": 2000, "port": 9080}}]}),
        )
        .gateway_route("edge", "all", to_color(json!({"prefix": "/"})));
    let res = edge(&mesh);
    let hcm = hcm(&listener(&res, "lds_ingress_127.0.0.1_9080").filter_chains[0].filters[0]);
    assert_eq!(hcm.access_log.len(), 1);
    let filter = &hcm.http_filters[0];
    assert_eq!(filter.name, "envoy.filters.http.health_check");
    let Some(HttpFilterConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!()
    };
    let hc = HealthCheck::decode(any.value.as_slice()).unwrap();
    assert_eq!(hc.pass_through_mode.map(|b| b.value), Some(true));
    assert_eq!(hc.headers[0].name, ":path");
    // The egress hop logs nothing: one line per request.
    let egress = hcm_of(&res, "lds_egress_127.0.0.1_15001");
    assert!(egress.access_log.is_empty());
    assert_eq!(egress.http_filters.len(), 1);
}

fn hcm_of(
    res: &ProxyResources,
    name: &str,
) -> envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager{
    hcm(&listener(res, name).filter_chains[0].filters[0])
}

#[test]
fn transparent_options_still_bind_the_gateway_ports_and_keep_the_hop_on_loopback() {
    let mesh = apps().gateway_route("edge", "all", to_color(json!({"prefix": "/"})));
    let res = mesh.gateway_proxy("edge", &ProxyOptions::default());
    let names: Vec<&str> = res.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["lds_egress_127.0.0.1_15001", "lds_ingress_0.0.0.0_9080"]
    );
    assert!(res.listeners.iter().all(|l| l.listener_filters.is_empty()));
}

#[test]
fn a_gateway_that_does_not_exist_keeps_its_proxy_waiting() {
    let mesh = apps();
    let id: ProxyIdentity = "mesh/apps/virtualGateway/nope".parse().unwrap();
    let err = translate(&mesh.0, &id, &ProxyOptions::explicit()).unwrap_err();
    assert!(
        matches!(err, TranslateError::VirtualGatewayNotFound { .. }),
        "{err}"
    );
}

#[test]
fn the_same_gateway_gives_byte_identical_resources() {
    let mesh = apps()
        .gateway_route("edge", "b", to_color(json!({"prefix": "/b"})))
        .gateway_route("edge", "a", to_color(json!({"prefix": "/a"})));
    let (x, y) = (edge(&mesh), edge(&mesh.clone()));
    let bytes = |r: &ProxyResources| {
        (
            r.listeners
                .iter()
                .map(|l| l.encode_to_vec())
                .collect::<Vec<_>>(),
            r.route_configurations
                .iter()
                .map(|l| l.encode_to_vec())
                .collect::<Vec<_>>(),
            r.clusters
                .iter()
                .map(|l| l.encode_to_vec())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(bytes(&x), bytes(&y));
}

/// One `Translator` for several proxies of a snapshot gives each exactly what `translate`
/// gives it, and the proxies reaching the same target share that target's cluster.
#[test]
fn a_shared_translator_gives_what_translate_gives_and_shares_target_clusters() {
    let mesh = apps()
        .node(
            "front",
            NodeSpec::client(&["color.apps.local", "rpc.apps.local"]),
        )
        .node("back", NodeSpec::client(&["color.apps.local"]))
        .gateway_route("edge", "all", to_color(json!({"prefix": "/"})));
    let gateway: ProxyIdentity = "mesh/apps/virtualGateway/edge".parse().unwrap();
    let front = ProxyIdentity::virtual_node("apps", "front");
    let back = ProxyIdentity::virtual_node("apps", "back");
    let mut translator = Translator::new(&mesh.0);
    let mut shared = Vec::new();
    for (proxy, options) in [
        (&front, ProxyOptions::default()),
        (&back, ProxyOptions::explicit()),
        (&gateway, ProxyOptions::explicit()),
        (&front, ProxyOptions::explicit()),
    ] {
        let one = translator.translate_shared(proxy, &options).unwrap();
        assert_eq!(
            one.clone().into_owned(),
            translate(&mesh.0, proxy, &options).unwrap()
        );
        shared.push(one);
    }
    let blue = |r: &SharedResources| {
        r.clusters
            .iter()
            .find(|c| c.name.contains("_blue_"))
            .cloned()
            .unwrap()
    };
    assert!(std::sync::Arc::ptr_eq(&blue(&shared[0]), &blue(&shared[1])));
    assert!(std::sync::Arc::ptr_eq(&blue(&shared[0]), &blue(&shared[2])));
}
