//! App Mesh scenarios, each checked on the Envoy resources a proxy would receive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, DnsLookupFamily,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::Duration;
use prost::Message;
use serde_json::json;
use weft_test_support::spec::{HttpMatch, RouteSpec};
use weft_translate::*;

fn secs(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

/// shop: `web` calls `cart.shop.local`, served by router `cart` on 8080 whose routes go to
/// `cart-v1` and `cart-v2`.
fn shop() -> Mesh {
    Mesh::new("shop")
        .node("web", NodeSpec::client(&["cart.shop.local"]))
        .node("cart-v1", NodeSpec::http("cart-v1.shop.local", 8080))
        .node("cart-v2", NodeSpec::http("cart-v2.shop.local", 8080))
        .service("cart.shop.local", ServiceSpec::by_router("cart"))
        .router("cart", RouterSpec::http(8080))
}

fn weighted(targets: &[(&str, u32)]) -> serde_json::Value {
    let targets: Vec<_> = targets
        .iter()
        .map(|(node, w)| json!({"virtualNode": node, "weight": w}))
        .collect();
    json!({"weightedTargets": targets})
}

fn cluster_of(route: &envoy_types::pb::envoy::config::route::v3::Route) -> String {
    match route_action(route).cluster_specifier.as_ref() {
        Some(ClusterSpecifier::Cluster(name)) => name.clone(),
        other => panic!("not a single cluster: {other:?}"),
    }
}

#[test]
fn a_route_with_a_75_25_split_gives_weighted_clusters_75_and_25() {
    let mesh = shop().route(
        "cart",
        "split",
        RouteSpec::split(&[("cart-v1", 75), ("cart-v2", 25)]),
    );
    let res = mesh.explicit("web");
    let route = &vhost(egress_routes(&res), "cart.shop.local").routes[0];
    let Some(ClusterSpecifier::WeightedClusters(wc)) =
        route_action(route).cluster_specifier.as_ref()
    else {
        panic!("expected weighted clusters")
    };
    let split: Vec<(&str, u32)> = wc
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.as_ref().unwrap().value))
        .collect();
    assert_eq!(
        split,
        [
            ("cds_egress_shop_cart-v1_http_8080", 75),
            ("cds_egress_shop_cart-v2_http_8080", 25)
        ]
    );
}

#[test]
fn a_routers_routes_are_ordered_by_priority_then_unprioritized_by_name() {
    let route = |prefix: &str, priority: Option<i32>| {
        let route = RouteSpec::http(HttpMatch::prefix(prefix)).to("cart-v1", 1);
        match priority {
            Some(p) => route.priority(p),
            None => route,
        }
    };
    let mesh = shop()
        .route("cart", "a-catch-all", route("/", None))
        .route("cart", "b-low", route("/low", Some(900)))
        .route("cart", "c-top", route("/top", Some(0)))
        .route("cart", "d-middle", route("/middle", Some(10)))
        .route("cart", "0-unprioritized", route("/z", None));
    let res = mesh.explicit("web");
    let names: Vec<&str> = vhost(egress_routes(&res), "cart.shop.local")
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "c-top",
            "d-middle",
            "b-low",
            "0-unprioritized",
            "a-catch-all"
        ]
    );
}

#[test]
fn a_node_only_gets_clusters_for_its_backends_targets() {
    let mesh = shop()
        .route("cart", "r", RouteSpec::split(&[("cart-v1", 1)]))
        // Elsewhere in the mesh: not this proxy's business.
        .node("billing", NodeSpec::http("billing.shop.local", 9000))
        .service("billing.shop.local", ServiceSpec::by_node("billing"))
        .node("admin", NodeSpec::client(&["billing.shop.local"]));
    let res = mesh.explicit("web");
    assert_eq!(cluster_names(&res), ["cds_egress_shop_cart-v1_http_8080"]);
    let hosts: Vec<&str> = egress_routes(&res)
        .virtual_hosts
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(hosts, ["cart.shop.local"]);
    // cart-v2 is a node of the router's service but no route targets it: no cluster either.
    // The server node sees only its own ingress.
    let server = mesh.explicit("cart-v1");
    assert_eq!(
        cluster_names(&server),
        ["cds_ingress_shop_cart-v1_http_8080"]
    );
}

#[test]
fn a_virtual_host_answers_to_the_service_name_and_name_port() {
    let mesh = shop().route("cart", "r", RouteSpec::split(&[("cart-v1", 1)]));
    let res = mesh.explicit("web");
    assert_eq!(
        vhost(egress_routes(&res), "cart.shop.local").domains,
        ["cart.shop.local", "cart.shop.local:8080"]
    );
}

#[test]
fn a_router_with_two_listeners_gets_a_virtual_host_per_port_and_routes_by_port_match() {
    let mesh = Mesh::new("shop")
        .node("web", NodeSpec::client(&["cart.shop.local"]))
        .node(
            "cart-v1",
            json!({
                "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}},
                              {"portMapping": {"port": 9090, "protocol": "http2"}}],
                "serviceDiscovery": {"dns": {"hostname": "cart-v1.shop.local"}}
            }),
        )
        .service("cart.shop.local", ServiceSpec::by_router("cart"))
        .router(
            "cart",
            json!({"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}},
                                 {"portMapping": {"port": 9090, "protocol": "http2"}}]}),
        )
        .route("cart", "web", json!({"httpRoute": {"match": {"prefix": "/", "port": 8080},
            "action": {"weightedTargets": [{"virtualNode": "cart-v1", "weight": 1, "port": 8080}]}}}))
        .route("cart", "api", json!({"http2Route": {"match": {"prefix": "/", "port": 9090},
            "action": {"weightedTargets": [{"virtualNode": "cart-v1", "weight": 1, "port": 9090}]}}}));
    let res = mesh.explicit("web");
    let rc = egress_routes(&res);
    let web = vhost(rc, "cart.shop.local:8080");
    assert_eq!(web.domains, ["cart.shop.local", "cart.shop.local:8080"]);
    assert_eq!(web.routes.len(), 1);
    assert_eq!(
        cluster_of(&web.routes[0]),
        "cds_egress_shop_cart-v1_http_8080"
    );
    let api = vhost(rc, "cart.shop.local:9090");
    assert_eq!(api.domains, ["cart.shop.local:9090"]);
    assert_eq!(
        cluster_of(&api.routes[0]),
        "cds_egress_shop_cart-v1_http2_9090"
    );
    // The target port chose the listener, and an http2 listener speaks HTTP/2 upstream.
    let h2 = cluster(&res, "cds_egress_shop_cart-v1_http2_9090");
    assert!(h2
        .typed_extension_protocol_options
        .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"));
    assert!(cluster(&res, "cds_egress_shop_cart-v1_http_8080")
        .typed_extension_protocol_options
        .is_empty());
}

#[test]
fn an_unset_timeout_gives_15s_per_request_and_300s_idle() {
    let mesh = shop().route("cart", "r", RouteSpec::split(&[("cart-v1", 1)]));
    let res = mesh.explicit("web");
    let action = route_action(&vhost(egress_routes(&res), "cart.shop.local").routes[0]).clone();
    assert_eq!(action.timeout, secs(15));
    assert_eq!(action.idle_timeout, secs(300));
}

#[test]
fn a_route_timeout_of_0_disables_it_and_milliseconds_are_exact() {
    let mesh = shop().route(
        "cart",
        "r",
        json!({"httpRoute": {"match": {"prefix": "/"}, "action": weighted(&[("cart-v1", 1)]),
            "timeout": {"perRequest": {"unit": "ms", "value": 2500}, "idle": {"unit": "s", "value": 0}}}}),
    );
    let res = mesh.explicit("web");
    let action = route_action(&vhost(egress_routes(&res), "cart.shop.local").routes[0]).clone();
    assert_eq!(
        action.timeout,
        Some(Duration {
            seconds: 2,
            nanos: 500_000_000
        })
    );
    assert_eq!(action.idle_timeout, secs(0));
}

#[test]
fn no_retry_policy_gives_app_mesh_default_retry_policy() {
    let mesh = shop().route("cart", "r", RouteSpec::split(&[("cart-v1", 1)]));
    let res = mesh.explicit("web");
    let retry = route_action(&vhost(egress_routes(&res), "cart.shop.local").routes[0])
        .retry_policy
        .clone()
        .expect("default retry policy");
    // envoy-defaults.md: max 2 retries; HTTP 503; connect-failure and refused-stream; reset;
    // gRPC UNAVAILABLE.
    assert_eq!(retry.num_retries.unwrap().value, 2);
    assert_eq!(retry.retriable_status_codes, [503]);
    let on: Vec<&str> = retry.retry_on.split(',').collect();
    for condition in [
        "connect-failure",
        "refused-stream",
        "reset",
        "retriable-status-codes",
        "unavailable",
    ] {
        assert!(on.contains(&condition), "{condition} missing from {on:?}");
    }
    assert_eq!(retry, default_retry_policy());
}

#[test]
fn a_virtual_node_provider_gets_one_route_with_the_default_retry_policy() {
    let mesh = Mesh::new("shop")
        .node("web", NodeSpec::client(&["cart.shop.local"]))
        .node("cart-v1", NodeSpec::http("cart-v1.shop.local", 8080))
        .service("cart.shop.local", ServiceSpec::by_node("cart-v1"));
    let res = mesh.explicit("web");
    let host = vhost(egress_routes(&res), "cart.shop.local");
    assert_eq!(host.domains, ["cart.shop.local", "cart.shop.local:8080"]);
    assert_eq!(host.routes.len(), 1);
    assert_eq!(
        cluster_of(&host.routes[0]),
        "cds_egress_shop_cart-v1_http_8080"
    );
    let action = route_action(&host.routes[0]);
    assert_eq!(action.retry_policy, Some(default_retry_policy()));
    assert_eq!((action.timeout, action.idle_timeout), (secs(15), secs(300)));
}

#[test]
fn retry_events_map_to_envoy_retry_conditions() {
    let mesh = shop().route(
        "cart",
        "r",
        json!({"httpRoute": {"match": {"prefix": "/"}, "action": weighted(&[("cart-v1", 1)]),
            "retryPolicy": {"maxRetries": 3, "perRetryTimeout": {"unit": "ms", "value": 250},
                "httpRetryEvents": ["server-error", "gateway-error", "client-error", "stream-error"],
                "tcpRetryEvents": ["connection-error"]}}}),
    );
    let res = mesh.explicit("web");
    let retry = route_action(&vhost(egress_routes(&res), "cart.shop.local").routes[0])
        .retry_policy
        .clone()
        .unwrap();
    assert_eq!(
        retry.retry_on,
        "5xx,connect-failure,gateway-error,refused-stream,reset,retriable-4xx"
    );
    assert_eq!(retry.num_retries.unwrap().value, 3);
    assert_eq!(
        retry.per_try_timeout,
        Some(Duration {
            seconds: 0,
            nanos: 250_000_000
        })
    );
}

#[test]
fn a_grpc_route_matches_service_method_and_metadata_and_retries_grpc_events() {
    let mesh = Mesh::new("shop")
        .node("web", NodeSpec::client(&["cart.shop.local"]))
        .node(
            "cart-v1",
            json!({"listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"}}],
                   "serviceDiscovery": {"dns": {"hostname": "cart-v1.shop.local"}}}),
        )
        .service("cart.shop.local", ServiceSpec::by_router("cart"))
        .router("cart", json!({"listeners": [{"portMapping": {"port": 50051, "protocol": "grpc"}}]}))
        .route(
            "cart",
            "checkout",
            json!({"grpcRoute": {
                "match": {"serviceName": "shop.Cart", "methodName": "Checkout",
                          "metadata": [{"name": "x-tenant", "match": {"exact": "acme"}},
                                       {"name": "x-debug", "invert": true}]},
                "action": weighted(&[("cart-v1", 1)]),
                "retryPolicy": {"maxRetries": 1, "perRetryTimeout": {"unit": "s", "value": 1},
                                "grpcRetryEvents": ["unavailable", "deadline-exceeded", "cancelled", "internal", "resource-exhausted"]},
                "timeout": {"perRequest": {"unit": "s", "value": 30}}}}),
        );
    let res = mesh.explicit("web");
    let route = &vhost(egress_routes(&res), "cart.shop.local").routes[0];
    let m = route.r#match.as_ref().unwrap();
    assert_eq!(
        m.path_specifier,
        Some(PathSpecifier::Path("/shop.Cart/Checkout".into()))
    );
    assert!(m.grpc.is_some(), "only gRPC requests match a gRPC route");
    assert_eq!(m.headers.len(), 2);
    assert!(m.headers[1].invert_match);
    let action = route_action(route);
    assert_eq!(
        action.retry_policy.as_ref().unwrap().retry_on,
        "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable"
    );
    assert_eq!(action.timeout, secs(30));
    assert!(cluster(&res, "cds_egress_shop_cart-v1_grpc_50051")
        .typed_extension_protocol_options
        .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"));
}

fn header<'a>(headers: &'a [HeaderMatcher], name: &str) -> &'a HeaderMatcher {
    headers
        .iter()
        .find(|h| h.name == name)
        .unwrap_or_else(|| panic!("no header matcher {name}"))
}

fn string_pattern(h: &HeaderMatcher) -> MatchPattern {
    match h.header_match_specifier.clone() {
        Some(HeaderMatchSpecifier::StringMatch(sm)) => sm.match_pattern.unwrap(),
        other => panic!("{}: not a string match: {other:?}", h.name),
    }
}

#[test]
fn headers_method_scheme_and_query_parameters_match_as_written() {
    let mesh = shop().route(
        "cart",
        "r",
        json!({"http2Route": {
            "match": {
                "prefix": "/api",
                "method": "POST",
                "scheme": "https",
                "headers": [
                    {"name": "x-exact", "match": {"exact": "blue"}},
                    {"name": "x-prefix", "match": {"prefix": "bl"}},
                    {"name": "x-suffix", "match": {"suffix": "ue"}},
                    {"name": "x-regex", "match": {"regex": "b.*e"}},
                    {"name": "x-range", "match": {"range": {"start": 1, "end": 100}}},
                    {"name": "x-not", "invert": true, "match": {"exact": "red"}},
                    {"name": "x-present"}
                ],
                "queryParameters": [{"name": "version", "match": {"exact": "2"}}, {"name": "debug"}]
            },
            "action": weighted(&[("cart-v1", 1)])}}),
    );
    let res = mesh.explicit("web");
    let m = vhost(egress_routes(&res), "cart.shop.local").routes[0]
        .r#match
        .clone()
        .unwrap();
    assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/api".into())));
    let h = &m.headers;
    assert_eq!(
        string_pattern(header(h, ":method")),
        MatchPattern::Exact("POST".into())
    );
    assert_eq!(
        string_pattern(header(h, ":scheme")),
        MatchPattern::Exact("https".into())
    );
    assert_eq!(
        string_pattern(header(h, "x-exact")),
        MatchPattern::Exact("blue".into())
    );
    assert_eq!(
        string_pattern(header(h, "x-prefix")),
        MatchPattern::Prefix("bl".into())
    );
    assert_eq!(
        string_pattern(header(h, "x-suffix")),
        MatchPattern::Suffix("ue".into())
    );
    assert!(
        matches!(string_pattern(header(h, "x-regex")), MatchPattern::SafeRegex(r) if r.regex == "b.*e")
    );
    assert!(matches!(
        header(h, "x-range").header_match_specifier,
        Some(HeaderMatchSpecifier::RangeMatch(ref r)) if r.start == 1 && r.end == 100
    ));
    assert!(header(h, "x-not").invert_match);
    assert!(!header(h, "x-exact").invert_match);
    assert_eq!(
        header(h, "x-present").header_match_specifier,
        Some(HeaderMatchSpecifier::PresentMatch(true))
    );
    assert_eq!(m.query_parameters.len(), 2);
    assert_eq!(m.query_parameters[0].name, "version");
    assert!(matches!(
        &m.query_parameters[0].query_parameter_match_specifier,
        Some(QueryParameterMatchSpecifier::StringMatch(s)) if s.match_pattern == Some(MatchPattern::Exact("2".into()))
    ));
    assert_eq!(
        m.query_parameters[1].query_parameter_match_specifier,
        Some(QueryParameterMatchSpecifier::PresentMatch(true))
    );
}

#[test]
fn exact_and_regex_paths_match_the_whole_path() {
    let route = |path: serde_json::Value, p: i32| json!({"priority": p, "httpRoute": {"match": {"path": path}, "action": weighted(&[("cart-v1", 1)])}});
    let mesh = shop()
        .route("cart", "exact", route(json!({"exact": "/cart/items"}), 1))
        .route("cart", "regex", route(json!({"regex": "/cart/[0-9]+"}), 2))
        .route(
            "cart",
            "broken-regex",
            route(json!({"regex": "/cart/(unclosed"}), 3),
        );
    let res = mesh.explicit("web");
    let routes = &vhost(egress_routes(&res), "cart.shop.local").routes;
    assert_eq!(
        routes[0].r#match.as_ref().unwrap().path_specifier,
        Some(PathSpecifier::Path("/cart/items".into()))
    );
    assert!(matches!(
        &routes[1].r#match.as_ref().unwrap().path_specifier,
        Some(PathSpecifier::SafeRegex(r)) if r.regex == "/cart/[0-9]+"
    ));
    // A regular expression RE2 would reject can never match; it is left out, not NACKed.
    assert_eq!(routes.len(), 2);
}

#[test]
fn dns_response_type_chooses_logical_or_strict_dns_and_ip_preference_the_lookup_family() {
    let mesh = Mesh::with_spec("shop", json!({"serviceDiscovery": {"ipPreference": "IPv4_ONLY"}}))
        .node("web", NodeSpec::client(&["lb.local", "all.local", "v6.local"]))
        .node("lb", NodeSpec::http("lb.internal", 8080))
        .node("all", json!({"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "all.internal", "responseType": "ENDPOINTS"}}}))
        .node("v6", json!({"listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "v6.internal", "responseType": "LOADBALANCER", "ipPreference": "IPv6_PREFERRED"}}}))
        .service("lb.local", ServiceSpec::by_node("lb"))
        .service("all.local", ServiceSpec::by_node("all"))
        .service("v6.local", ServiceSpec::by_node("v6"));
    let res = mesh.explicit("web");
    let kind = |c: &XdsCluster| c.cluster_discovery_type.clone();
    let lb = cluster(&res, "cds_egress_shop_lb_http_8080");
    assert_eq!(
        kind(lb),
        Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32))
    );
    assert_eq!(
        lb.dns_lookup_family,
        DnsLookupFamily::V4Only as i32,
        "the mesh's preference applies"
    );
    let all = cluster(&res, "cds_egress_shop_all_http_8080");
    assert_eq!(
        kind(all),
        Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
    );
    let v6 = cluster(&res, "cds_egress_shop_v6_http_8080");
    assert_eq!(
        kind(v6),
        Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32))
    );
    assert_eq!(
        v6.dns_lookup_family,
        DnsLookupFamily::Auto as i32,
        "the node's preference overrides the mesh's"
    );
    // The endpoint is the DNS name on the listener port.
    let endpoint = &all.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0];
    let Some(HostIdentifier::Endpoint(e)) = &endpoint.host_identifier else {
        panic!()
    };
    let Some(AddressKind::SocketAddress(sa)) = &e.address.as_ref().unwrap().address else {
        panic!()
    };
    assert_eq!(
        (sa.address.as_str(), sa.port_specifier.clone()),
        ("all.internal", Some(PortSpecifier::PortValue(8080)))
    );
}

#[test]
fn every_cluster_carries_app_mesh_circuit_breaker_defaults() {
    let mesh = shop().route("cart", "r", RouteSpec::split(&[("cart-v1", 1)]));
    for res in [mesh.explicit("web"), mesh.explicit("cart-v1")] {
        for c in &res.clusters {
            let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
            for v in [
                &t.max_connections,
                &t.max_pending_requests,
                &t.max_requests,
                &t.max_retries,
            ] {
                assert_eq!(v.as_ref().unwrap().value, 2_147_483_647, "{}", c.name);
            }
        }
    }
}

#[test]
fn explicit_mode_binds_each_node_port_and_forwards_to_the_app_port() {
    let mesh = Mesh::new("shop").node(
        "cart-v1",
        json!({"listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
                              "timeout": {"http": {"perRequest": {"unit": "s", "value": 60}}}},
                             {"portMapping": {"port": 7000, "protocol": "tcp"}}],
               "serviceDiscovery": {"dns": {"hostname": "cart-v1.shop.local"}}}),
    );
    let mut options = ProxyOptions::explicit();
    options.app_ports.insert(8080, 18080);
    let res = mesh.proxy("cart-v1", &options);
    let names: Vec<&str> = res.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "lds_egress_127.0.0.1_15001",
            "lds_ingress_127.0.0.1_7000",
            "lds_ingress_127.0.0.1_8080"
        ]
    );
    // HTTP ingress: RDS rds_ingress_http_8080, everything to the app on 18080 with the
    // listener's timeout (60 s) and the default idle timeout.
    let http = listener(&res, "lds_ingress_127.0.0.1_8080");
    let manager = hcm(&http.filter_chains[0].filters[0]);
    assert!(
        matches!(manager.route_specifier, Some(RouteSpecifier::Rds(ref rds)) if rds.route_config_name == "rds_ingress_http_8080")
    );
    let route = &route_config(&res, "rds_ingress_http_8080").virtual_hosts[0].routes[0];
    assert_eq!(cluster_of(route), "cds_ingress_shop_cart-v1_http_8080");
    assert_eq!(
        (
            route_action(route).timeout,
            route_action(route).idle_timeout
        ),
        (secs(60), secs(300))
    );
    let app = cluster(&res, "cds_ingress_shop_cart-v1_http_8080");
    assert_eq!(
        app.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32))
    );
    let ep = &app.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0];
    let Some(HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
        panic!()
    };
    let Some(AddressKind::SocketAddress(sa)) = &e.address.as_ref().unwrap().address else {
        panic!()
    };
    assert_eq!(
        (sa.address.as_str(), sa.port_specifier.clone()),
        ("127.0.0.1", Some(PortSpecifier::PortValue(18080)))
    );
    // TCP ingress: a TCP proxy with App Mesh's 300 s idle default.
    let tcp = tcp_proxy(&listener(&res, "lds_ingress_127.0.0.1_7000").filter_chains[0].filters[0]);
    assert_eq!(tcp.idle_timeout, secs(300));
}

#[test]
fn transparent_mode_uses_15000_and_15001_with_original_destination() {
    let mesh = shop().route("cart", "r", RouteSpec::split(&[("cart-v1", 1)]));
    let web = mesh.proxy("web", &ProxyOptions::default());
    let names: Vec<&str> = web.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["lds_egress_0.0.0.0_15001"],
        "no listener on the node, no ingress listener"
    );
    let egress = listener(&web, "lds_egress_0.0.0.0_15001");
    assert_eq!(
        egress.listener_filters[0].name,
        "envoy.filters.listener.original_dst"
    );
    let ports: Vec<u32> = egress
        .filter_chains
        .iter()
        .map(|c| {
            c.filter_chain_match
                .as_ref()
                .unwrap()
                .destination_port
                .as_ref()
                .unwrap()
                .value
        })
        .collect();
    assert_eq!(ports, [8080]);
    // DROP_ALL (the default): unknown destinations meet the route table (404), no passthrough.
    assert!(!cluster_names(&web)
        .iter()
        .any(|c| c.contains("passthrough")));
    assert_eq!(
        egress.default_filter_chain.as_ref().unwrap().filters[0].name,
        "envoy.filters.network.http_connection_manager"
    );

    let server = mesh.proxy("cart-v1", &ProxyOptions::default());
    let ingress = listener(&server, "lds_ingress_0.0.0.0_15000");
    assert_eq!(
        ingress.listener_filters[0].name,
        "envoy.filters.listener.original_dst"
    );
    let chain = &ingress.filter_chains[0];
    assert_eq!(
        chain
            .filter_chain_match
            .as_ref()
            .unwrap()
            .destination_port
            .as_ref()
            .unwrap()
            .value,
        8080
    );
}

#[test]
fn allow_all_lets_unknown_destinations_through_in_transparent_mode() {
    let mut mesh = shop();
    mesh.0.mesh.spec.egress_filter = serde_json::from_value(json!({"type": "ALLOW_ALL"})).unwrap();
    let web = mesh.proxy("web", &ProxyOptions::default());
    let passthrough = cluster(&web, "cds_egress_shop_passthrough");
    assert_eq!(
        passthrough.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32
        ))
    );
    let egress = listener(&web, "lds_egress_0.0.0.0_15001");
    let default_chain = egress.default_filter_chain.as_ref().unwrap();
    assert_eq!(
        tcp_proxy(&default_chain.filters[0]).cluster_specifier,
        Some(envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::Cluster("cds_egress_shop_passthrough".into()))
    );
    let catch_all = vhost(egress_routes(&web), "passthrough");
    assert_eq!(catch_all.domains, ["*"]);
    // Explicit mode has no original destination to pass through to: unknown hosts go where
    // their Host says, through the dynamic forward proxy.
    let explicit = mesh.explicit("web");
    assert!(!cluster_names(&explicit)
        .iter()
        .any(|c| c.contains("passthrough")));
    let dfp = cluster(&explicit, "cds_egress_shop_forward_proxy");
    match &dfp.cluster_discovery_type {
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            assert_eq!(custom.name, "envoy.clusters.dynamic_forward_proxy")
        }
        other => panic!("{other:?}"),
    }
    let catch_all = vhost(egress_routes(&explicit), "passthrough");
    assert_eq!(
        route_action(&catch_all.routes[0]).cluster_specifier,
        Some(ClusterSpecifier::Cluster(
            "cds_egress_shop_forward_proxy".into()
        ))
    );
    let hcm = egress_hcm(&explicit);
    assert_eq!(
        hcm.http_filters
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        [
            "envoy.filters.http.dynamic_forward_proxy",
            "envoy.filters.http.router"
        ]
    );
    // DROP_ALL (the default): no forward proxy at all.
    assert!(!cluster_names(&shop().explicit("web"))
        .iter()
        .any(|c| c.contains("forward_proxy")));
}

fn egress_hcm(res: &ProxyResources) -> envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager{
    let egress = res
        .listeners
        .iter()
        .find(|l| l.name.starts_with("lds_egress"))
        .unwrap();
    hcm(&egress.filter_chains[0].filters[0])
}

/// echo: `web` reaches `echo.shop.local` (router `echo`, tcp 7000) whose tcp route splits 75/25.
fn echo() -> Mesh {
    Mesh::new("shop")
        .node("web", NodeSpec::client(&["echo.shop.local"]))
        .node(
            "one",
            json!({"listeners": [{"portMapping": {"port": 7000, "protocol": "tcp"}}],
            "serviceDiscovery": {"dns": {"hostname": "one.shop.local"}}}),
        )
        .node(
            "two",
            json!({"listeners": [{"portMapping": {"port": 7000, "protocol": "tcp"}}],
            "serviceDiscovery": {"dns": {"hostname": "two.shop.local"}}}),
        )
        .service("echo.shop.local", ServiceSpec::by_router("echo"))
        .router(
            "echo",
            json!({"listeners": [{"portMapping": {"port": 7000, "protocol": "tcp"}}]}),
        )
        .route(
            "echo",
            "split",
            json!({"tcpRoute": {"action": weighted(&[("one", 75), ("two", 25)]),
            "timeout": {"idle": {"unit": "s", "value": 2}}}}),
        )
}

#[test]
fn a_tcp_route_is_a_connect_tunnel_in_explicit_mode_and_a_tcp_proxy_in_transparent_mode() {
    let res = echo().explicit("web");
    assert!(egress_hcm(&res)
        .upgrade_configs
        .iter()
        .any(|u| u.upgrade_type == "CONNECT"));
    let host = vhost(egress_routes(&res), "echo.shop.local");
    assert_eq!(
        host.domains,
        ["echo.shop.local:7000"],
        "CONNECT always names a port"
    );
    let route = &host.routes[0];
    assert!(matches!(
        route.r#match.as_ref().unwrap().path_specifier,
        Some(PathSpecifier::ConnectMatcher(_))
    ));
    let action = route_action(route);
    assert_eq!(
        action.timeout,
        secs(0),
        "a tunnel has no per-request timeout"
    );
    assert_eq!(action.idle_timeout, secs(2));
    assert!(action.retry_policy.is_none());
    assert!(action.upgrade_configs[0].connect_config.is_some());
    let Some(ClusterSpecifier::WeightedClusters(w)) = &action.cluster_specifier else {
        panic!("{:?}", action.cluster_specifier)
    };
    let weights: Vec<(String, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.as_ref().unwrap().value))
        .collect();
    assert_eq!(
        weights,
        [
            ("cds_egress_shop_one_tcp_7000".to_string(), 75),
            ("cds_egress_shop_two_tcp_7000".to_string(), 25)
        ]
    );
    // Transparent mode: the original destination port 7000 selects a weighted TCP proxy.
    let res = echo().proxy("web", &ProxyOptions::default());
    let egress = listener(&res, "lds_egress_0.0.0.0_15001");
    let chain = egress
        .filter_chains
        .iter()
        .find(|c| c.name == "egress_tcp_7000")
        .unwrap();
    let proxy = tcp_proxy(&chain.filters[0]);
    assert_eq!(proxy.idle_timeout, secs(2));
    assert!(matches!(
        proxy.cluster_specifier,
        Some(envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::WeightedClusters(_))
    ));
}

#[test]
fn a_health_check_policy_checks_the_local_app_at_its_interval_and_unhealthy_gets_no_traffic() {
    let mesh = Mesh::new("shop").node("api", json!({
        "listeners": [{"portMapping": {"port": 8080, "protocol": "http"},
            "healthCheck": {"protocol": "http2", "path": "/health", "port": 8081, "intervalMillis": 5000,
                "timeoutMillis": 2000, "healthyThreshold": 3, "unhealthyThreshold": 2}}],
        "serviceDiscovery": {"dns": {"hostname": "api.shop.local"}}}));
    let mut options = ProxyOptions::explicit();
    options.app_ports.insert(8080, 18080);
    options.app_ports.insert(8081, 18081);
    let res = mesh.proxy("api", &options);
    let c = cluster(&res, "cds_ingress_shop_api_http_8080");
    let hc = &c.health_checks[0];
    assert_eq!(hc.interval, secs(5));
    assert_eq!(hc.no_traffic_interval, secs(5));
    assert_eq!(hc.timeout, secs(2));
    assert_eq!(
        (
            hc.healthy_threshold.unwrap().value,
            hc.unhealthy_threshold.unwrap().value
        ),
        (3, 2)
    );
    let Some(
        envoy_types::pb::envoy::config::core::v3::health_check::HealthChecker::HttpHealthCheck(
            http,
        ),
    ) = &hc.health_checker
    else {
        panic!("{:?}", hc.health_checker)
    };
    assert_eq!(http.path, "/health");
    assert_eq!(http.codec_client_type, 1, "HTTP/2");
    assert_eq!(
        c.common_lb_config
            .as_ref()
            .unwrap()
            .healthy_panic_threshold
            .unwrap()
            .value,
        0.0
    );
    // The check goes to the app's port for node port 8081.
    let endpoint = &c.load_assignment.as_ref().unwrap().endpoints[0].lb_endpoints[0];
    let Some(HostIdentifier::Endpoint(e)) = &endpoint.host_identifier else {
        panic!()
    };
    assert_eq!(e.health_check_config.as_ref().unwrap().port_value, 18081);
}

#[test]
fn access_logs_go_on_every_ingress_and_egress_filter_in_the_configured_format() {
    let mesh = Mesh::new("shop").node(
        "web",
        json!({
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}},
                          {"portMapping": {"port": 7000, "protocol": "tcp"}}],
            "logging": {"accessLog": {"file": {"path": "/dev/stdout",
                "format": {"json": [{"key": "code", "value": "%RESPONSE_CODE%"}]}}}}}),
    );
    let res = mesh.explicit("web");
    let ingress_http = listener(&res, "lds_ingress_127.0.0.1_8080");
    assert_eq!(
        hcm(&ingress_http.filter_chains[0].filters[0])
            .access_log
            .len(),
        1
    );
    let ingress_tcp = listener(&res, "lds_ingress_127.0.0.1_7000");
    assert_eq!(
        tcp_proxy(&ingress_tcp.filter_chains[0].filters[0])
            .access_log
            .len(),
        1
    );
    let log = &egress_hcm(&res).access_log[0];
    assert_eq!(log.name, "envoy.access_loggers.file");
    let Some(envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(
        any,
    )) = &log.config_type
    else {
        panic!()
    };
    let file = envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog::decode(
        any.value.as_slice(),
    )
    .unwrap();
    assert_eq!(file.path, "/dev/stdout");
    // No logging: no access logs.
    assert!(egress_hcm(&shop().explicit("web")).access_log.is_empty());
}

#[test]
fn missing_references_are_skipped_not_sent() {
    let mesh = shop()
        .node("web", NodeSpec::client(&["cart.shop.local", "ghost.shop.local", "nobody.shop.local", "lost.shop.local"]))
        // A provider router that does not exist, and a service with no provider.
        .service("lost.shop.local", ServiceSpec::by_router("deleted-router"))
        .service("nobody.shop.local", json!({}))
        .route("cart", "half-gone", json!({"priority": 1, "httpRoute": {"match": {"prefix": "/half"},
            "action": weighted(&[("cart-v1", 75), ("deleted-node", 25)])}}))
        .route("cart", "all-gone", json!({"priority": 2, "httpRoute": {"match": {"prefix": "/gone"},
            "action": weighted(&[("deleted-node", 100)])}}))
        .route("cart", "wrong-port", json!({"priority": 3, "httpRoute": {"match": {"prefix": "/port"},
            "action": {"weightedTargets": [{"virtualNode": "cart-v2", "weight": 1, "port": 1234}]}}}));
    let res = mesh.explicit("web");
    let rc = egress_routes(&res);
    let hosts: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        hosts,
        ["cart.shop.local"],
        "only services that lead somewhere get a virtual host"
    );
    let routes = &vhost(rc, "cart.shop.local").routes;
    assert_eq!(
        cluster_of(&routes[0]),
        "cds_egress_shop_cart-v1_http_8080",
        "the reachable target keeps the traffic"
    );
    // A route with no reachable target answers 503 itself instead of falling through.
    for r in &routes[1..] {
        assert!(
            matches!(r.action, Some(Action::DirectResponse(ref d)) if d.status == 503),
            "{}",
            r.name
        );
    }
    assert_eq!(cluster_names(&res), ["cds_egress_shop_cart-v1_http_8080"]);
}

#[test]
fn the_same_mesh_gives_byte_identical_resources_whatever_the_backend_order() {
    let build = |backends: &[&str]| {
        Mesh::new("shop")
            .node("web", NodeSpec::client(backends))
            .node("a", NodeSpec::http("a.local", 8080))
            .node("b", NodeSpec::http("b.local", 8081))
            .service("a.local", ServiceSpec::by_node("a"))
            .service("b.local", ServiceSpec::by_node("b"))
    };
    let encode = |res: &ProxyResources| {
        let mut bytes = Vec::new();
        res.listeners
            .iter()
            .for_each(|r| bytes.extend(r.encode_to_vec()));
        res.route_configurations
            .iter()
            .for_each(|r| bytes.extend(r.encode_to_vec()));
        res.clusters
            .iter()
            .for_each(|r| bytes.extend(r.encode_to_vec()));
        bytes
    };
    let one = encode(&build(&["a.local", "b.local"]).explicit("web"));
    let two = encode(&build(&["b.local", "a.local", "a.local"]).explicit("web"));
    assert_eq!(one, two);
    assert_eq!(one, encode(&build(&["a.local", "b.local"]).explicit("web")));
}

#[test]
fn the_proxy_must_name_an_existing_node_of_this_mesh() {
    let mesh = shop();
    let options = ProxyOptions::default();
    let err = translate(
        &mesh.0,
        &ProxyIdentity::virtual_node("other", "web"),
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, TranslateError::MeshMismatch { .. }));
    let err = translate(
        &mesh.0,
        &ProxyIdentity::virtual_node("shop", "not-yet"),
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, TranslateError::VirtualNodeNotFound { .. }));
    let gateway: ProxyIdentity = "mesh/shop/virtualGateway/gw".parse().unwrap();
    assert!(matches!(
        translate(&mesh.0, &gateway, &options),
        Err(TranslateError::VirtualGatewayNotFound { .. })
    ));
}

#[test]
fn a_node_listener_on_the_egress_port_is_not_bound_twice_in_explicit_mode() {
    let mesh = Mesh::new("shop").node("odd", NodeSpec::http("odd.local", 15001));
    let res = mesh.explicit("odd");
    let names: Vec<&str> = res.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lds_egress_127.0.0.1_15001"]);
}
