//! The App Mesh API driven through the official AWS SDK for Rust against a
//! real `weft server`: every operation, every error type Weft can be made to
//! answer, idempotency, pagination, versions, tags and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;

use aws_sdk_appmesh::types::{
    EgressFilterType, MeshStatusCode, PortProtocol, TagRef, VirtualNodeStatusCode,
    VirtualServiceProvider,
};
use aws_sdk_appmesh::Client;
use common::{error_code, WeftServer};
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{
    ms, GatewayRouteSpec, GatewaySpec, HttpMatch, Listener, MeshSpec, NodeSpec, Retry, RouteSpec,
    RouterSpec, ServiceSpec,
};

fn tag(k: &str, v: &str) -> TagRef {
    TagRef::builder().key(k).value(v).build().unwrap()
}

async fn mesh(client: &Client, name: &str) {
    MeshApi::create(client, name, MeshSpec::new()).await;
}

async fn node(client: &Client, mesh: &str, name: &str) {
    MeshApi::existing(client, mesh)
        .node(name, NodeSpec::http(format!("{name}.local"), 8080))
        .await;
}

async fn router(client: &Client, mesh: &str, name: &str) {
    MeshApi::existing(client, mesh)
        .router(name, RouterSpec::http(8080))
        .await;
}

const COLORS: &str = "colors.apps.local";

/// Mesh `apps`: nodes `red` and `blue` and router `colors` (HTTP on 8080).
async fn apps(client: &Client) -> MeshApi {
    let api = MeshApi::create(client, "apps", MeshSpec::new()).await;
    for name in ["red", "blue"] {
        api.node(name, NodeSpec::http(format!("{name}.local"), 8080))
            .await;
    }
    api.router("colors", RouterSpec::http(8080)).await;
    api
}

/// [`apps`] with one resource of every other kind: route `split` (75/25 red/blue), service
/// `colors.apps.local` provided by the router, gateway `edge` (HTTP on 8443) and its gateway
/// route `to-colors` to the service.
async fn apps_with_every_kind(client: &Client) -> MeshApi {
    let api = apps(client).await;
    api.route(
        "colors",
        "split",
        RouteSpec::split(&[("red", 75), ("blue", 25)]),
    )
    .await;
    api.service(COLORS, ServiceSpec::by_router("colors")).await;
    api.gateway("edge", GatewaySpec::new().listener(Listener::http(8443)))
        .await;
    api.gateway_route(
        "edge",
        "to-colors",
        GatewayRouteSpec::http(HttpMatch::prefix("/"), COLORS),
    )
    .await;
    api
}

#[tokio::test]
async fn a_mesh_goes_through_its_whole_life() {
    let server = WeftServer::start();
    let c = server.client();
    let created = c
        .create_mesh()
        .mesh_name("apps")
        .spec(MeshSpec::allow_all().sdk())
        .send()
        .await
        .unwrap();
    let mesh = created.mesh.unwrap();
    let meta = mesh.metadata.unwrap();
    assert_eq!(meta.version, 1);
    assert_eq!(meta.arn, "arn:aws:appmesh:us-east-1:000000000000:mesh/apps");
    assert_eq!(meta.mesh_owner, "000000000000");
    assert_eq!(meta.resource_owner, "000000000000");
    assert!(!meta.uid.is_empty());
    assert_eq!(mesh.status.unwrap().status, Some(MeshStatusCode::Active));

    let described = c
        .describe_mesh()
        .mesh_name("apps")
        .send()
        .await
        .unwrap()
        .mesh
        .unwrap();
    assert_eq!(described.metadata.as_ref().unwrap().uid, meta.uid);
    assert_eq!(
        described.spec.unwrap().egress_filter.unwrap().r#type,
        EgressFilterType::AllowAll
    );

    let updated = c
        .update_mesh()
        .mesh_name("apps")
        .spec(MeshSpec::drop_all().sdk())
        .send()
        .await
        .unwrap()
        .mesh
        .unwrap();
    let umeta = updated.metadata.unwrap();
    assert_eq!(umeta.version, 2);
    assert!(umeta.last_updated_at.as_secs_f64() >= umeta.created_at.as_secs_f64());
    assert_eq!(umeta.created_at, meta.created_at);

    let list = c.list_meshes().send().await.unwrap();
    assert_eq!(list.meshes.len(), 1);
    assert_eq!(list.meshes[0].mesh_name, "apps");
    assert_eq!(list.meshes[0].version, 2);
    assert!(list.next_token.is_none());

    let deleted = c
        .delete_mesh()
        .mesh_name("apps")
        .send()
        .await
        .unwrap()
        .mesh
        .unwrap();
    assert_eq!(
        deleted.status.unwrap().status,
        Some(MeshStatusCode::Deleted)
    );
    let gone = c
        .describe_mesh()
        .mesh_name("apps")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&gone), "NotFoundException");
}

#[tokio::test]
async fn a_route_update_replaces_its_weights_and_bumps_its_version() {
    let server = WeftServer::start();
    let c = server.client();
    apps(&c).await;
    let route = c
        .create_route()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .route_name("split")
        .spec(RouteSpec::split(&[("red", 75), ("blue", 25)]).sdk())
        .send()
        .await
        .unwrap()
        .route
        .unwrap();
    assert_eq!(route.virtual_router_name, "colors");
    assert_eq!(
        route.metadata.unwrap().arn,
        "arn:aws:appmesh:us-east-1:000000000000:mesh/apps/virtualRouter/colors/route/split"
    );
    let route = c
        .update_route()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .route_name("split")
        .spec(RouteSpec::split(&[("red", 50), ("blue", 50)]).sdk())
        .send()
        .await
        .unwrap()
        .route
        .unwrap();
    assert_eq!(route.metadata.unwrap().version, 2);
    let targets = c
        .describe_route()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .route_name("split")
        .send()
        .await
        .unwrap()
        .route
        .unwrap()
        .spec
        .unwrap()
        .http_route
        .unwrap()
        .action
        .unwrap()
        .weighted_targets;
    assert_eq!(
        targets.iter().map(|t| t.weight).collect::<Vec<_>>(),
        vec![50, 50]
    );
    let routes = c
        .list_routes()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .send()
        .await
        .unwrap()
        .routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].route_name, "split");
}

#[tokio::test]
async fn a_virtual_service_provided_by_a_router_can_be_provided_by_a_node_instead() {
    let server = WeftServer::start();
    let c = server.client();
    apps(&c).await;
    let svc = c
        .create_virtual_service()
        .mesh_name("apps")
        .virtual_service_name(COLORS)
        .spec(ServiceSpec::by_router("colors").sdk())
        .send()
        .await
        .unwrap()
        .virtual_service
        .unwrap();
    assert_eq!(svc.virtual_service_name, COLORS);
    let svc = c
        .update_virtual_service()
        .mesh_name("apps")
        .virtual_service_name(COLORS)
        .spec(ServiceSpec::by_node("red").sdk())
        .send()
        .await
        .unwrap()
        .virtual_service
        .unwrap();
    assert!(matches!(
        svc.spec.unwrap().provider,
        Some(VirtualServiceProvider::VirtualNode(_))
    ));
}

#[tokio::test]
async fn a_node_updated_with_a_service_as_backend_keeps_it_and_stays_active() {
    let server = WeftServer::start();
    let c = server.client();
    let api = apps(&c).await;
    api.service(COLORS, ServiceSpec::by_router("colors")).await;
    let n = c
        .update_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("blue")
        .spec(NodeSpec::http("blue.local", 8080).backend(COLORS).sdk())
        .send()
        .await
        .unwrap()
        .virtual_node
        .unwrap();
    assert_eq!(n.spec.unwrap().backends.unwrap().len(), 1);
    assert_eq!(n.status.unwrap().status, VirtualNodeStatusCode::Active);
}

#[tokio::test]
async fn a_gateway_route_gets_its_arn_and_each_update_bumps_its_version() {
    let server = WeftServer::start();
    let c = server.client();
    let api = apps(&c).await;
    api.service(COLORS, ServiceSpec::by_router("colors")).await;
    let gateway = GatewaySpec::new().listener(Listener::http(8443));
    c.create_virtual_gateway()
        .mesh_name("apps")
        .virtual_gateway_name("edge")
        .spec(gateway.sdk())
        .send()
        .await
        .unwrap();
    let route = GatewayRouteSpec::http(HttpMatch::prefix("/"), COLORS);
    let gr = c
        .create_gateway_route()
        .mesh_name("apps")
        .virtual_gateway_name("edge")
        .gateway_route_name("to-colors")
        .spec(route.sdk())
        .send()
        .await
        .unwrap()
        .gateway_route
        .unwrap();
    assert_eq!(
        gr.metadata.unwrap().arn,
        "arn:aws:appmesh:us-east-1:000000000000:mesh/apps/virtualGateway/edge/gatewayRoute/to-colors"
    );
    c.update_gateway_route()
        .mesh_name("apps")
        .virtual_gateway_name("edge")
        .gateway_route_name("to-colors")
        .spec(route.sdk())
        .send()
        .await
        .unwrap();
    let updated = c
        .update_virtual_gateway()
        .mesh_name("apps")
        .virtual_gateway_name("edge")
        .spec(gateway.sdk())
        .send()
        .await
        .unwrap()
        .virtual_gateway
        .unwrap();
    assert_eq!(updated.metadata.unwrap().version, 2);
    let grs = c
        .list_gateway_routes()
        .mesh_name("apps")
        .virtual_gateway_name("edge")
        .send()
        .await
        .unwrap()
        .gateway_routes;
    assert_eq!(grs.len(), 1);
    assert_eq!(grs[0].gateway_route_name, "to-colors");
    assert_eq!(grs[0].version, 2);
}

#[tokio::test]
async fn a_router_update_replaces_its_listener() {
    let server = WeftServer::start();
    let c = server.client();
    apps(&c).await;
    c.update_virtual_router()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .spec(RouterSpec::new().listener(9090, "http2").sdk())
        .send()
        .await
        .unwrap();
    let router = c
        .describe_virtual_router()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .send()
        .await
        .unwrap()
        .virtual_router
        .unwrap();
    assert_eq!(router.metadata.unwrap().version, 2);
    let listeners = router.spec.unwrap().listeners.unwrap();
    let mapping = listeners[0].port_mapping.as_ref().unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(
        (mapping.port, &mapping.protocol),
        (9090, &PortProtocol::Http2)
    );
}

#[tokio::test]
async fn every_resource_kind_is_listed_and_described_by_name() {
    let server = WeftServer::start();
    let c = server.client();
    apps_with_every_kind(&c).await;
    assert_eq!(
        c.list_virtual_nodes()
            .mesh_name("apps")
            .send()
            .await
            .unwrap()
            .virtual_nodes
            .len(),
        2
    );
    assert_eq!(
        c.list_virtual_routers()
            .mesh_name("apps")
            .send()
            .await
            .unwrap()
            .virtual_routers
            .len(),
        1
    );
    assert_eq!(
        c.list_virtual_services()
            .mesh_name("apps")
            .send()
            .await
            .unwrap()
            .virtual_services
            .len(),
        1
    );
    assert_eq!(
        c.list_virtual_gateways()
            .mesh_name("apps")
            .send()
            .await
            .unwrap()
            .virtual_gateways
            .len(),
        1
    );
    assert_eq!(
        c.list_gateway_routes()
            .mesh_name("apps")
            .virtual_gateway_name("edge")
            .send()
            .await
            .unwrap()
            .gateway_routes
            .len(),
        1
    );

    let node = c
        .describe_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .send()
        .await
        .unwrap();
    assert_eq!(node.virtual_node.unwrap().virtual_node_name, "red");
    let router = c
        .describe_virtual_router()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .send()
        .await
        .unwrap();
    assert_eq!(router.virtual_router.unwrap().virtual_router_name, "colors");
    let service = c
        .describe_virtual_service()
        .mesh_name("apps")
        .virtual_service_name(COLORS)
        .send()
        .await
        .unwrap();
    assert_eq!(
        service.virtual_service.unwrap().virtual_service_name,
        COLORS
    );
    let gateway = c
        .describe_virtual_gateway()
        .mesh_name("apps")
        .virtual_gateway_name("edge")
        .send()
        .await
        .unwrap();
    assert_eq!(
        gateway.virtual_gateway.unwrap().virtual_gateway_name,
        "edge"
    );
    let route = c
        .describe_gateway_route()
        .mesh_name("apps")
        .virtual_gateway_name("edge")
        .gateway_route_name("to-colors")
        .send()
        .await
        .unwrap();
    assert_eq!(route.gateway_route.unwrap().gateway_route_name, "to-colors");
}

#[tokio::test]
async fn deleting_every_kind_in_dependency_order_answers_deleted_and_leaves_no_mesh() {
    let server = WeftServer::start();
    let c = server.client();
    apps_with_every_kind(&c).await;
    let d = c
        .delete_gateway_route()
        .mesh_name("apps")
        .virtual_gateway_name("edge")
        .gateway_route_name("to-colors")
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.gateway_route.unwrap().status.unwrap().status.as_str(),
        "DELETED"
    );
    c.delete_virtual_gateway()
        .mesh_name("apps")
        .virtual_gateway_name("edge")
        .send()
        .await
        .unwrap();
    c.delete_virtual_service()
        .mesh_name("apps")
        .virtual_service_name(COLORS)
        .send()
        .await
        .unwrap();
    c.delete_route()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .route_name("split")
        .send()
        .await
        .unwrap();
    c.delete_virtual_router()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .send()
        .await
        .unwrap();
    let d = c
        .delete_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.virtual_node.unwrap().status.unwrap().status,
        VirtualNodeStatusCode::Deleted
    );
    c.delete_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("blue")
        .send()
        .await
        .unwrap();
    c.delete_mesh().mesh_name("apps").send().await.unwrap();
    assert!(c.list_meshes().send().await.unwrap().meshes.is_empty());
}

#[tokio::test]
async fn references_must_exist_and_resources_in_use_cannot_be_deleted() {
    let server = WeftServer::start();
    let c = server.client();
    mesh(&c, "apps").await;
    node(&c, "apps", "red").await;
    router(&c, "apps", "colors").await;

    // A route to a node that does not exist.
    let e = c
        .create_route()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .route_name("r")
        .spec(RouteSpec::split(&[("ghost", 100)]).sdk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "NotFoundException");
    // A route in a router that does not exist.
    let e = c
        .create_route()
        .mesh_name("apps")
        .virtual_router_name("nope")
        .route_name("r")
        .spec(RouteSpec::split(&[("red", 100)]).sdk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "NotFoundException");
    // A node in a mesh that does not exist.
    let e = c
        .create_virtual_node()
        .mesh_name("nomesh")
        .virtual_node_name("x")
        .spec(NodeSpec::http("x", 8080).sdk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "NotFoundException");
    // A service whose provider does not exist.
    let e = c
        .create_virtual_service()
        .mesh_name("apps")
        .virtual_service_name("s")
        .spec(ServiceSpec::by_node("ghost").sdk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "NotFoundException");

    c.create_route()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .route_name("r")
        .spec(RouteSpec::split(&[("red", 100)]).sdk())
        .send()
        .await
        .unwrap();
    c.create_virtual_service()
        .mesh_name("apps")
        .virtual_service_name("s")
        .spec(ServiceSpec::by_router("colors").sdk())
        .send()
        .await
        .unwrap();

    // The node is a route target; the router has routes and provides a service;
    // the mesh is not empty.
    let e = c
        .delete_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ResourceInUseException");
    let e = c
        .delete_virtual_router()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ResourceInUseException");
    let e = c.delete_mesh().mesh_name("apps").send().await.unwrap_err();
    assert_eq!(error_code(&e), "ResourceInUseException");

    // Once the route is gone, the router is still in use as a provider.
    c.delete_route()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .route_name("r")
        .send()
        .await
        .unwrap();
    let e = c
        .delete_virtual_router()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ResourceInUseException");
    c.delete_virtual_service()
        .mesh_name("apps")
        .virtual_service_name("s")
        .send()
        .await
        .unwrap();
    c.delete_virtual_router()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .send()
        .await
        .unwrap();
    c.delete_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .send()
        .await
        .unwrap();
    c.delete_mesh().mesh_name("apps").send().await.unwrap();
}

#[tokio::test]
async fn names_are_unique_per_scope_and_missing_things_are_not_found() {
    let server = WeftServer::start();
    let c = server.client();
    mesh(&c, "apps").await;
    let e = c.create_mesh().mesh_name("apps").send().await.unwrap_err();
    assert_eq!(error_code(&e), "ConflictException");
    node(&c, "apps", "red").await;
    let e = c
        .create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .spec(NodeSpec::http("red", 8080).sdk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ConflictException");
    // The same name in another mesh is fine.
    mesh(&c, "other").await;
    node(&c, "other", "red").await;

    for e in [
        error_code(
            &c.describe_virtual_node()
                .mesh_name("apps")
                .virtual_node_name("x")
                .send()
                .await
                .unwrap_err(),
        ),
        error_code(
            &c.describe_virtual_router()
                .mesh_name("apps")
                .virtual_router_name("x")
                .send()
                .await
                .unwrap_err(),
        ),
        error_code(
            &c.describe_virtual_service()
                .mesh_name("apps")
                .virtual_service_name("x")
                .send()
                .await
                .unwrap_err(),
        ),
        error_code(
            &c.describe_virtual_gateway()
                .mesh_name("apps")
                .virtual_gateway_name("x")
                .send()
                .await
                .unwrap_err(),
        ),
        error_code(
            &c.describe_route()
                .mesh_name("apps")
                .virtual_router_name("x")
                .route_name("y")
                .send()
                .await
                .unwrap_err(),
        ),
        error_code(
            &c.describe_gateway_route()
                .mesh_name("apps")
                .virtual_gateway_name("x")
                .gateway_route_name("y")
                .send()
                .await
                .unwrap_err(),
        ),
        error_code(
            &c.update_virtual_node()
                .mesh_name("apps")
                .virtual_node_name("x")
                .spec(NodeSpec::http("x", 8080).sdk())
                .send()
                .await
                .unwrap_err(),
        ),
        error_code(
            &c.delete_virtual_node()
                .mesh_name("apps")
                .virtual_node_name("x")
                .send()
                .await
                .unwrap_err(),
        ),
        error_code(
            &c.list_virtual_nodes()
                .mesh_name("nomesh")
                .send()
                .await
                .unwrap_err(),
        ),
        error_code(
            &c.list_routes()
                .mesh_name("apps")
                .virtual_router_name("x")
                .send()
                .await
                .unwrap_err(),
        ),
    ] {
        assert_eq!(e, "NotFoundException");
    }
    // Another account's mesh is not visible.
    let e = c
        .describe_mesh()
        .mesh_name("apps")
        .mesh_owner("111122223333")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "NotFoundException");
    c.describe_mesh()
        .mesh_name("apps")
        .mesh_owner("000000000000")
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn invalid_input_is_a_bad_request_that_names_the_field() {
    let server = WeftServer::start();
    let c = server.client();
    mesh(&c, "apps").await;
    let bad_port = NodeSpec::new().listener(Listener::http(70000)).sdk();
    let e = c
        .create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .spec(bad_port)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");
    let msg = e.into_service_error().to_string();
    assert!(msg.contains("spec.listeners[0].portMapping.port"), "{msg}");

    let long_name = "x".repeat(256);
    let e = c
        .create_mesh()
        .mesh_name(long_name)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");

    // A route that sets two route types.
    let http_route = RouteSpec::split(&[("red", 1)]).sdk().http_route;
    let two = aws_sdk_appmesh::types::RouteSpec::builder()
        .set_http_route(http_route.clone())
        .set_http2_route(http_route)
        .build();
    node(&c, "apps", "red").await;
    router(&c, "apps", "r").await;
    let e = c
        .create_route()
        .mesh_name("apps")
        .virtual_router_name("r")
        .route_name("two")
        .spec(two)
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");

    // Weights that add up to 0, which Envoy could not serve.
    let e = c
        .create_route()
        .mesh_name("apps")
        .virtual_router_name("r")
        .route_name("zero")
        .spec(RouteSpec::split(&[("red", 0)]).sdk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");

    // An HTTP retry event App Mesh does not know.
    let retrying =
        RouteSpec::split(&[("red", 1)]).retry(Retry::new(2, ms(100)).http_events(&["sometimes"]));
    let e = c
        .create_route()
        .mesh_name("apps")
        .virtual_router_name("r")
        .route_name("retry")
        .spec(retrying.sdk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");
    assert!(e.into_service_error().to_string().contains("sometimes"));

    // An unknown enum value sent by a newer client.
    let e = c
        .create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("v")
        .spec(NodeSpec::new().listener(Listener::new(80, "quic")).sdk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");

    // Page sizes outside 1..=100.
    for limit in [0, 101] {
        let e = c.list_meshes().limit(limit).send().await.unwrap_err();
        assert_eq!(error_code(&e), "BadRequestException");
    }
    let e = c
        .list_meshes()
        .next_token("not-a-token!")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");
}

#[tokio::test]
async fn the_same_client_token_returns_the_same_result_without_a_second_write() {
    let server = WeftServer::start();
    let c = server.client();
    mesh(&c, "apps").await;
    let create = || {
        c.create_virtual_node()
            .mesh_name("apps")
            .virtual_node_name("red")
            .spec(NodeSpec::http("red.local", 8080).sdk())
            .client_token("token-1")
    };
    let first = create().send().await.unwrap().virtual_node.unwrap();
    let again = create().send().await.unwrap().virtual_node.unwrap();
    assert_eq!(first.metadata, again.metadata);

    // Same token, different request.
    let e = c
        .create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("blue")
        .spec(NodeSpec::http("blue.local", 8080).sdk())
        .client_token("token-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ConflictException");

    // A retried update is applied once.
    for _ in 0..3 {
        let v = c
            .update_virtual_node()
            .mesh_name("apps")
            .virtual_node_name("red")
            .spec(NodeSpec::http("red2.local", 8080).sdk())
            .client_token("update-1")
            .send()
            .await
            .unwrap()
            .virtual_node
            .unwrap();
        assert_eq!(v.metadata.unwrap().version, 2);
    }
    let now = c
        .describe_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .send()
        .await
        .unwrap();
    assert_eq!(now.virtual_node.unwrap().metadata.unwrap().version, 2);
    // Without a token the SDK generates a fresh one, so each update counts.
    c.update_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .spec(NodeSpec::http("red3.local", 8080).sdk())
        .send()
        .await
        .unwrap();
    let now = c
        .describe_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .send()
        .await
        .unwrap();
    assert_eq!(now.virtual_node.unwrap().metadata.unwrap().version, 3);
}

#[tokio::test]
async fn concurrent_updates_of_one_node_never_lose_a_version() {
    let server = WeftServer::start();
    let c = server.client();
    mesh(&c, "apps").await;
    node(&c, "apps", "red").await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.update_virtual_node()
                .mesh_name("apps")
                .virtual_node_name("red")
                .spec(NodeSpec::http(format!("red{i}.local"), 8080).sdk())
                .send()
                .await
                .unwrap()
                .virtual_node
                .unwrap()
                .metadata
                .unwrap()
                .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (2..=17).collect::<Vec<i64>>());
    let now = c
        .describe_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .send()
        .await
        .unwrap();
    assert_eq!(now.virtual_node.unwrap().metadata.unwrap().version, 17);
}

#[tokio::test]
async fn listing_pages_through_every_item_once_even_while_items_are_added() {
    let server = WeftServer::start();
    let c = server.client();
    mesh(&c, "apps").await;
    for i in 0..25 {
        node(&c, "apps", &format!("n{i:02}")).await;
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = c
            .list_virtual_nodes()
            .mesh_name("apps")
            .limit(10)
            .set_next_token(token.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        assert!(page.virtual_nodes.len() <= 10);
        seen.extend(
            page.virtual_nodes
                .iter()
                .map(|n| n.virtual_node_name.clone()),
        );
        // Add items between pages, before and after the cursor.
        node(&c, "apps", &format!("a{pages}")).await;
        node(&c, "apps", &format!("z{pages}")).await;
        match page.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an item was repeated: {seen:?}");
    for i in 0..25 {
        assert!(seen.contains(&format!("n{i:02}")), "n{i:02} was skipped");
    }
    // The SDK's paginator walks every page too.
    let all: Vec<_> = c
        .list_virtual_nodes()
        .mesh_name("apps")
        .limit(7)
        .into_paginator()
        .items()
        .send()
        .collect::<Vec<_>>()
        .await;
    assert_eq!(all.len(), 25 + 2 * pages);
}

#[tokio::test]
async fn quotas_answer_limit_exceeded() {
    let server = WeftServer::start_with(&[
        "--quota",
        "virtual-nodes-per-mesh=2",
        "--quota",
        "meshes=1",
        "--quota",
        "backends-per-virtual-node=1",
    ]);
    // The SDKs treat LimitExceededException as throttling and retry it with
    // backoff; without retries the test sees the first answer at once.
    let c = server.client_without_retries();
    mesh(&c, "apps").await;
    let e = c
        .create_mesh()
        .mesh_name("second")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "LimitExceededException");
    node(&c, "apps", "a").await;
    let e = c
        .create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("b")
        .spec(NodeSpec::http("b", 8080).backends(&["s1", "s2"]).sdk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "LimitExceededException");
    node(&c, "apps", "b").await;
    let e = c
        .create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("c")
        .spec(NodeSpec::http("c", 8080).sdk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "LimitExceededException");
}

#[tokio::test]
async fn concurrent_mesh_creates_never_exceed_the_mesh_quota() {
    let server = WeftServer::start_with(&["--quota", "meshes=3"]);
    let c = server.client_without_retries();
    // Each mesh has its own guard, so nothing but an account-wide one keeps
    // forty racing creates of different meshes from all counting 0.
    let answers = futures::future::join_all((0..40).map(|i| {
        let c = c.clone();
        async move {
            match c.create_mesh().mesh_name(format!("m{i}")).send().await {
                Ok(_) => "ok".to_string(),
                Err(e) => error_code(&e),
            }
        }
    }))
    .await;
    let ok = answers.iter().filter(|a| *a == "ok").count();
    assert_eq!(ok, 3, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|a| a == "ok" || a == "LimitExceededException"),
        "{answers:?}"
    );
    let listed = c.list_meshes().send().await.unwrap().meshes.len();
    assert_eq!(listed, 3);
}

#[tokio::test]
async fn requests_past_the_rate_limit_answer_too_many_requests() {
    let server = WeftServer::start_with(&["--api-rate-limit", "2", "--api-burst", "3"]);
    // The SDKs retry throttling with backoff; without retries each answer
    // is seen as it is.
    let c = server.client_without_retries();
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(match c.list_meshes().send().await {
            Ok(_) => "ok".to_string(),
            Err(e) => error_code(&e),
        });
    }
    assert_eq!(&answers[..3], ["ok", "ok", "ok"], "the burst is admitted");
    assert!(
        answers[3..].iter().all(|a| a == "TooManyRequestsException"),
        "past the burst, throttled: {answers:?}"
    );
    // The health check is not an App Mesh request: never throttled.
    let health = reqwest::get(format!("{}/healthz", server.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // 2 requests per second: one more is admitted after half a second.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    c.list_meshes().send().await.unwrap();
    let e = c.list_meshes().send().await.unwrap_err();
    assert_eq!(error_code(&e), "TooManyRequestsException");
}

#[tokio::test]
async fn tags_are_added_listed_paged_and_removed() {
    let server = WeftServer::start();
    let c = server.client();
    let arn = c
        .create_mesh()
        .mesh_name("apps")
        .tags(tag("team", "payments"))
        .send()
        .await
        .unwrap()
        .mesh
        .unwrap()
        .metadata
        .unwrap()
        .arn;
    let tags = c
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .unwrap()
        .tags;
    assert_eq!(tags, vec![tag("team", "payments")]);

    let mut req = c
        .tag_resource()
        .resource_arn(&arn)
        .tags(tag("team", "search"));
    for i in 0..9 {
        req = req.tags(tag(&format!("k{i}"), "v"));
    }
    req.send().await.unwrap();
    let mut all = Vec::new();
    let mut token = None;
    loop {
        let page = c
            .list_tags_for_resource()
            .resource_arn(&arn)
            .limit(4)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        assert!(page.tags.len() <= 4);
        all.extend(page.tags);
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(all.len(), 10);
    assert!(
        all.contains(&tag("team", "search")),
        "tagging overwrites a key's value"
    );

    c.untag_resource()
        .resource_arn(&arn)
        .tag_keys("team")
        .tag_keys("k0")
        .send()
        .await
        .unwrap();
    let tags = c
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .unwrap()
        .tags;
    assert_eq!(tags.len(), 8);
    assert!(!tags.iter().any(|t| t.key == "team"));

    // More than 50 tags in total.
    let mut req = c.tag_resource().resource_arn(&arn);
    for i in 0..45 {
        req = req.tags(tag(&format!("more{i}"), "v"));
    }
    let e = req.send().await.unwrap_err();
    assert_eq!(error_code(&e), "TooManyTagsException");

    // Tagging does not change the resource's version.
    let v = c.describe_mesh().mesh_name("apps").send().await.unwrap();
    assert_eq!(v.mesh.unwrap().metadata.unwrap().version, 1);

    let e = c
        .list_tags_for_resource()
        .resource_arn("arn:aws:appmesh:us-east-1:000000000000:mesh/ghost")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "NotFoundException");
    let e = c
        .list_tags_for_resource()
        .resource_arn("arn:aws:s3:::bucket")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");
}

#[tokio::test]
async fn a_restart_keeps_every_resource() {
    let mut server = WeftServer::start();
    let dir = server.keep_dir().unwrap();
    let c = server.client();
    mesh(&c, "apps").await;
    node(&c, "apps", "red").await;
    let before = c
        .update_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .spec(NodeSpec::http("red2.local", 8080).sdk())
        .send()
        .await
        .unwrap()
        .virtual_node
        .unwrap();
    assert!(server.terminate(), "SIGTERM is a graceful, successful exit");

    let server = WeftServer::start_in(&dir.path().join("data"), &[]);
    let c = server.client();
    let after = c
        .describe_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .send()
        .await
        .unwrap()
        .virtual_node
        .unwrap();
    assert_eq!(before, after);
    // Writes continue from where they were.
    let next = c
        .update_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .spec(NodeSpec::http("red3.local", 8080).sdk())
        .send()
        .await
        .unwrap();
    assert_eq!(next.virtual_node.unwrap().metadata.unwrap().version, 3);
}
