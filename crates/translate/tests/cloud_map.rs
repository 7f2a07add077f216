//! App Mesh scenarios with Cloud Map service discovery (Weft's instance registry): the target
//! node's cluster reads its endpoints over EDS, and translation emits the matching load
//! assignment from the registered instances.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::ApiVersion;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use prost::Message;
use serde_json::{json, Value};
use weft_translate::*;

/// An instance at `ipv4:port` with custom attributes.
fn instance(
    id: &str,
    ipv4: &str,
    port: Option<u16>,
    attributes: &[(&str, &str)],
) -> CloudMapInstance {
    let mut all: BTreeMap<String, String> = attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.insert("AWS_INSTANCE_IPV4".into(), ipv4.into());
    if let Some(port) = port {
        all.insert("AWS_INSTANCE_PORT".into(), port.to_string());
    }
    CloudMapInstance {
        id: id.to_string(),
        ipv4: Some(ipv4.to_string()),
        ipv6: None,
        port,
        attributes: all,
        healthy: true,
    }
}

/// A node listening for HTTP on `port`, discovered through Cloud Map.
fn cloud_map_node(port: u16, discovery: Value) -> Value {
    json!({
        "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
        "serviceDiscovery": {"awsCloudMap": discovery}
    })
}

/// colors: `web` calls `color.local`, provided by node `red`, which is registered as service
/// `red` of namespace `apps.local` (with the given discovery settings).
fn colors(discovery: Value) -> Mesh {
    Mesh::new("colors")
        .node("web", NodeSpec::client(&["color.local"]))
        .node("red", cloud_map_node(8080, discovery))
        .service("color.local", ServiceSpec::by_node("red"))
}

fn with_instances(mut mesh: Mesh, instances: Vec<CloudMapInstance>) -> Mesh {
    mesh.0
        .cloud_map
        .insert(("apps.local".into(), "red".into()), instances);
    mesh
}

fn red() -> Value {
    json!({"namespaceName": "apps.local", "serviceName": "red"})
}

/// The `address:port` endpoints of the one load assignment of `res`, in order.
fn endpoints(res: &ProxyResources) -> Vec<String> {
    assert_eq!(
        res.cluster_load_assignments.len(),
        1,
        "one load assignment expected: {:?}",
        res.cluster_load_assignments
    );
    res.cluster_load_assignments[0]
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let Some(HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else {
                panic!("not an endpoint")
            };
            let Some(AddressKind::SocketAddress(sa)) =
                endpoint.address.as_ref().unwrap().address.as_ref()
            else {
                panic!("not a socket address")
            };
            let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                panic!("no port")
            };
            format!("{}:{port}", sa.address)
        })
        .collect()
}

#[test]
fn a_cloud_map_target_is_an_eds_cluster_over_ads_with_its_registered_instances() {
    let mesh = with_instances(
        colors(red()),
        vec![
            instance("red-2", "10.0.0.2", Some(9000), &[]),
            instance("red-1", "10.0.0.1", Some(9000), &[]),
        ],
    );
    let res = mesh.explicit("web");
    let c = cluster(&res, "cds_egress_colors_red_http_8080");
    assert_eq!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
    );
    assert!(c.load_assignment.is_none(), "endpoints come over EDS");
    let eds = c.eds_cluster_config.as_ref().unwrap();
    let source = eds.eds_config.as_ref().unwrap();
    assert!(matches!(
        source.config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    assert_eq!(source.resource_api_version, ApiVersion::V3 as i32);
    assert_eq!(eds.service_name, "cloudmap/apps.local/red/8080/default");
    assert_eq!(
        res.cluster_load_assignments[0].cluster_name, eds.service_name,
        "the assignment is published under the name the cluster reads"
    );
    assert_eq!(
        endpoints(&res),
        ["10.0.0.1:9000", "10.0.0.2:9000"],
        "ordered by instance id"
    );
    // The route goes to the cluster like any target's.
    let route = &vhost(egress_routes(&res), "color.local").routes[0];
    assert_eq!(
        route_action(route).cluster_specifier,
        Some(ClusterSpecifier::Cluster(
            "cds_egress_colors_red_http_8080".into()
        ))
    );
    // The target's own proxy gets no egress cluster for itself, hence no assignment.
    assert!(mesh.explicit("red").cluster_load_assignments.is_empty());
}

#[test]
fn attribute_filters_select_only_instances_matching_every_filter() {
    let discovery = json!({"namespaceName": "apps.local", "serviceName": "red",
        "attributes": [{"key": "version", "value": "v2"}, {"key": "zone", "value": "a"}]});
    let mesh = with_instances(
        colors(discovery),
        vec![
            instance(
                "v1-a",
                "10.0.0.1",
                Some(80),
                &[("version", "v1"), ("zone", "a")],
            ),
            instance(
                "v2-a",
                "10.0.0.2",
                Some(80),
                &[("version", "v2"), ("zone", "a")],
            ),
            instance(
                "v2-b",
                "10.0.0.3",
                Some(80),
                &[("version", "v2"), ("zone", "b")],
            ),
            instance("v2", "10.0.0.4", Some(80), &[("version", "v2")]),
            instance(
                "v2-a-extra",
                "10.0.0.5",
                Some(80),
                &[("version", "v2"), ("zone", "a"), ("x", "y")],
            ),
        ],
    );
    let res = mesh.explicit("web");
    assert_eq!(endpoints(&res), ["10.0.0.2:80", "10.0.0.5:80"]);
    let c = cluster(&res, "cds_egress_colors_red_http_8080");
    assert_eq!(
        c.eds_cluster_config.as_ref().unwrap().service_name,
        "cloudmap/apps.local/red/8080/default?version=v2&zone=a",
        "filters are part of the EDS name, sorted"
    );
}

#[test]
fn an_unhealthy_instance_gets_no_traffic_and_no_instance_gives_an_empty_assignment() {
    let mut sick = instance("red-1", "10.0.0.1", Some(80), &[]);
    sick.healthy = false;
    let mesh = with_instances(
        colors(red()),
        vec![sick.clone(), instance("red-2", "10.0.0.2", Some(80), &[])],
    );
    assert_eq!(endpoints(&mesh.explicit("web")), ["10.0.0.2:80"]);

    // All unhealthy, or the service not registered at all: an empty assignment, still sent so
    // that the cluster does not wait for endpoints forever.
    let all_sick = with_instances(colors(red()), vec![sick]);
    assert!(endpoints(&all_sick.explicit("web")).is_empty());
    let unknown = colors(red());
    let res = unknown.explicit("web");
    assert!(endpoints(&res).is_empty());
    assert_eq!(
        res.cluster_load_assignments[0].cluster_name,
        "cloudmap/apps.local/red/8080/default"
    );
}

#[test]
fn an_instance_without_a_port_is_reached_on_the_target_listeners_port() {
    let mesh = with_instances(
        colors(red()),
        vec![instance("red-1", "10.0.0.1", None, &[])],
    );
    assert_eq!(endpoints(&mesh.explicit("web")), ["10.0.0.1:8080"]);
}

#[test]
fn ip_preference_picks_the_address_family_and_the_node_overrides_the_mesh() {
    let dual = |id: &str, v4: Option<&str>, v6: Option<&str>| CloudMapInstance {
        id: id.into(),
        ipv4: v4.map(Into::into),
        ipv6: v6.map(Into::into),
        port: Some(80),
        attributes: BTreeMap::new(),
        healthy: true,
    };
    let instances = vec![
        dual("a-dual", Some("10.0.0.1"), Some("fd00::1")),
        dual("b-v4", Some("10.0.0.2"), None),
        dual("c-v6", None, Some("fd00::3")),
        dual("d-bad", Some("not-an-ip"), None),
    ];
    let run = |mesh_spec: Value, node_preference: Option<&str>| {
        let mut discovery = red();
        if let Some(p) = node_preference {
            discovery["ipPreference"] = json!(p);
        }
        let mesh = Mesh::with_spec("colors", mesh_spec)
            .node("web", NodeSpec::client(&["color.local"]))
            .node("red", cloud_map_node(8080, discovery))
            .service("color.local", ServiceSpec::by_node("red"));
        endpoints(&with_instances(mesh, instances.clone()).explicit("web"))
    };
    // Default: IPv4 if available, else IPv6; an address that does not parse is never sent.
    assert_eq!(
        run(json!({}), None),
        ["10.0.0.1:80", "10.0.0.2:80", "fd00::3:80"]
    );
    assert_eq!(
        run(json!({}), Some("IPv6_PREFERRED")),
        ["fd00::1:80", "10.0.0.2:80", "fd00::3:80"]
    );
    assert_eq!(
        run(json!({}), Some("IPv4_ONLY")),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );
    assert_eq!(
        run(json!({}), Some("IPv6_ONLY")),
        ["fd00::1:80", "fd00::3:80"]
    );
    let mesh_v6_only = json!({"serviceDiscovery": {"ipPreference": "IPv6_ONLY"}});
    assert_eq!(
        run(mesh_v6_only.clone(), None),
        ["fd00::1:80", "fd00::3:80"]
    );
    assert_eq!(
        run(mesh_v6_only, Some("IPv4_PREFERRED")),
        ["10.0.0.1:80", "10.0.0.2:80", "fd00::3:80"],
        "the node's preference overrides the mesh's"
    );
}

#[test]
fn a_route_splits_between_a_dns_target_and_a_cloud_map_target() {
    let mesh = with_instances(
        Mesh::new("colors")
            .node("web", NodeSpec::client(&["color.local"]))
            .node("blue", NodeSpec::http("blue.local", 8080))
            .node("red", cloud_map_node(8080, red()))
            .service("color.local", ServiceSpec::by_router("color"))
            .router("color", RouterSpec::http(8080))
            .route(
                "color",
                "split",
                json!({"httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [
                    {"virtualNode": "blue", "weight": 50}, {"virtualNode": "red", "weight": 50}]}}}),
            ),
        vec![instance("red-1", "10.0.0.1", Some(80), &[])],
    );
    let res = mesh.explicit("web");
    assert_eq!(
        cluster_names(&res),
        [
            "cds_egress_colors_blue_http_8080",
            "cds_egress_colors_red_http_8080"
        ]
    );
    assert_eq!(endpoints(&res), ["10.0.0.1:80"]);
}

#[test]
fn two_nodes_naming_the_same_service_and_filters_share_one_assignment() {
    let mesh = with_instances(
        Mesh::new("colors")
            .node("web", NodeSpec::client(&["color.local", "crimson.local"]))
            .node("red", cloud_map_node(8080, red()))
            .node("crimson", cloud_map_node(8080, red()))
            .service("color.local", ServiceSpec::by_node("red"))
            .service("crimson.local", ServiceSpec::by_node("crimson")),
        vec![instance("red-1", "10.0.0.1", Some(80), &[])],
    );
    let res = mesh.explicit("web");
    assert_eq!(res.clusters.len(), 2);
    assert_eq!(endpoints(&res), ["10.0.0.1:80"]);
}

#[test]
fn the_same_registry_gives_byte_identical_assignments_whatever_the_instance_order() {
    let a = instance("a", "10.0.0.1", Some(80), &[]);
    let b = instance("b", "10.0.0.2", Some(80), &[]);
    let one = with_instances(colors(red()), vec![a.clone(), b.clone()]).explicit("web");
    let two = with_instances(colors(red()), vec![b, a]).explicit("web");
    assert_eq!(
        one.cluster_load_assignments[0].encode_to_vec(),
        two.cluster_load_assignments[0].encode_to_vec()
    );
}

#[test]
fn instances_registered_twice_at_one_address_are_one_endpoint() {
    let mesh = with_instances(
        colors(red()),
        vec![
            instance("a", "10.0.0.1", Some(80), &[]),
            instance("b", "10.0.0.1", Some(80), &[]),
        ],
    );
    assert_eq!(endpoints(&mesh.explicit("web")), ["10.0.0.1:80"]);
}
