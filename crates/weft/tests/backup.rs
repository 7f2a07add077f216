//! `weft backup` / `weft restore`: a mesh and a Cloud Map namespace, set up through the AWS SDK
//! on one control plane, backed up with one command and restored with another into a second
//! control plane; described there through the SDK, every spec and tag is the same. A second
//! restore changes nothing; a restore over a resource that differs refuses and writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use aws_sdk_appmesh::types::TagRef;
use common::WeftServer;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{
    ms, GatewayRouteSpec, GatewaySpec, HttpMatch, Listener, MeshSpec, NodeSpec, Retry, RouteSpec,
    RouterSpec, ServiceSpec,
};

/// `weft <command> --endpoint-url <server> -f <file>`, signed as the server's administrator.
fn weft_file_command(command: &str, server: &WeftServer, file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([command, "--endpoint-url", &server.addr, "-f"])
        .arg(file)
        .envs(common::aws_env(&server.addr))
        .env("WEFT_LOG", "warn")
        .output()
        .unwrap()
}

/// [`weft_file_command`], which must succeed.
fn weft_file_command_succeeds(command: &str, server: &WeftServer, file: &Path) {
    let out = weft_file_command(command, server, file);
    assert!(
        out.status.success(),
        "weft {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The mesh `apps` of the App Mesh user guide's walkthrough, with a gateway, tags, and a
/// Cloud Map namespace with a service and an instance.
async fn populate(server: &WeftServer) {
    let client = server.client();
    let api = MeshApi::create(&client, "apps", MeshSpec::new().egress_filter("ALLOW_ALL")).await;
    api.node("red", NodeSpec::http("red.apps.local", 8080))
        .await;
    api.node("blue", NodeSpec::http("blue.apps.local", 8080))
        .await;
    api.node(
        "front",
        NodeSpec::http("front.apps.local", 8080).backend("colors.apps.local"),
    )
    .await;
    api.router("colors", RouterSpec::http(8080)).await;
    api.route(
        "colors",
        "main",
        RouteSpec::split(&[("red", 3), ("blue", 1)]).retry(Retry::new(2, ms(250))),
    )
    .await;
    api.service("colors.apps.local", ServiceSpec::by_router("colors"))
        .await;
    api.gateway("ingress", GatewaySpec::new().listener(Listener::http(9000)))
        .await;
    api.gateway_route(
        "ingress",
        "to-colors",
        GatewayRouteSpec::http(HttpMatch::prefix("/"), "colors.apps.local"),
    )
    .await;
    let red = client
        .describe_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .send()
        .await
        .unwrap();
    let arn = red.virtual_node.unwrap().metadata.unwrap().arn;
    client
        .tag_resource()
        .resource_arn(arn)
        .tags(
            TagRef::builder()
                .key("team")
                .value("colors")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let cloud_map = cloud_map_client(server);
    let op = cloud_map
        .create_http_namespace()
        .name("backend")
        .description("the backend's services")
        .send()
        .await
        .unwrap();
    assert!(op.operation_id.is_some());
    let ns = namespace_id(&cloud_map, "backend").await.unwrap();
    let svc = cloud_map
        .create_service()
        .name("orders")
        .namespace_id(ns)
        .send()
        .await
        .unwrap()
        .service
        .unwrap()
        .id
        .unwrap();
    cloud_map
        .register_instance()
        .service_id(svc)
        .instance_id("orders-1")
        .attributes("AWS_INSTANCE_IPV4", "10.0.0.7")
        .attributes("AWS_INSTANCE_PORT", "8080")
        .send()
        .await
        .unwrap();
}

fn cloud_map_client(server: &WeftServer) -> aws_sdk_servicediscovery::Client {
    let config = aws_sdk_servicediscovery::Config::builder()
        .behavior_version(aws_sdk_servicediscovery::config::BehaviorVersion::latest())
        .region(aws_sdk_servicediscovery::config::Region::new("us-east-1"))
        .credentials_provider(common::credentials_for(&server.addr))
        .endpoint_url(&server.addr)
        .build();
    aws_sdk_servicediscovery::Client::from_conf(config)
}

async fn namespace_id(client: &aws_sdk_servicediscovery::Client, name: &str) -> Option<String> {
    let out = client.list_namespaces().send().await.unwrap();
    out.namespaces()
        .iter()
        .find(|n| n.name() == Some(name))
        .and_then(|n| n.id().map(str::to_string))
}

/// Every App Mesh resource of `apps` as the SDK describes it: kind/name, spec and tags (in
/// key order), so that two servers compare equal when their resources do.
async fn described(server: &WeftServer) -> Vec<String> {
    let c = server.client();
    let mut out = Vec::new();
    let tags = |arn: String| {
        let c = c.clone();
        async move {
            let mut tags: Vec<(String, String)> = c
                .list_tags_for_resource()
                .resource_arn(arn)
                .send()
                .await
                .unwrap()
                .tags
                .into_iter()
                .map(|t| (t.key, t.value))
                .collect();
            tags.sort();
            tags
        }
    };
    let m = c
        .describe_mesh()
        .mesh_name("apps")
        .send()
        .await
        .unwrap()
        .mesh
        .unwrap();
    out.push(format!(
        "mesh {:?} {:?}",
        m.spec,
        tags(m.metadata.unwrap().arn).await
    ));
    for n in ["red", "blue", "front"] {
        let d = c
            .describe_virtual_node()
            .mesh_name("apps")
            .virtual_node_name(n)
            .send()
            .await
            .unwrap()
            .virtual_node
            .unwrap();
        out.push(format!(
            "node {n} {:?} {:?}",
            d.spec,
            tags(d.metadata.unwrap().arn).await
        ));
    }
    let r = c
        .describe_virtual_router()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .send()
        .await
        .unwrap()
        .virtual_router
        .unwrap();
    out.push(format!("router {:?}", r.spec));
    let rt = c
        .describe_route()
        .mesh_name("apps")
        .virtual_router_name("colors")
        .route_name("main")
        .send()
        .await
        .unwrap()
        .route
        .unwrap();
    out.push(format!("route {:?}", rt.spec));
    let s = c
        .describe_virtual_service()
        .mesh_name("apps")
        .virtual_service_name("colors.apps.local")
        .send()
        .await
        .unwrap()
        .virtual_service
        .unwrap();
    out.push(format!("service {:?}", s.spec));
    let g = c
        .describe_virtual_gateway()
        .mesh_name("apps")
        .virtual_gateway_name("ingress")
        .send()
        .await
        .unwrap()
        .virtual_gateway
        .unwrap();
    out.push(format!("gateway {:?}", g.spec));
    let gr = c
        .describe_gateway_route()
        .mesh_name("apps")
        .virtual_gateway_name("ingress")
        .gateway_route_name("to-colors")
        .send()
        .await
        .unwrap()
        .gateway_route
        .unwrap();
    out.push(format!("gateway route {:?}", gr.spec));

    let cm = cloud_map_client(server);
    let ns = namespace_id(&cm, "backend").await.unwrap();
    let ns_data = cm
        .get_namespace()
        .id(&ns)
        .send()
        .await
        .unwrap()
        .namespace
        .unwrap();
    out.push(format!(
        "namespace {:?} {:?} {:?}",
        ns_data.name, ns_data.r#type, ns_data.description
    ));
    let services = cm.list_services().send().await.unwrap();
    for s in services.services() {
        let id = s.id().unwrap().to_string();
        out.push(format!("cloud map service {:?}", s.name()));
        let instances = cm.list_instances().service_id(&id).send().await.unwrap();
        for i in instances.instances() {
            let mut attrs: Vec<_> = i.attributes().unwrap().iter().collect();
            attrs.sort();
            out.push(format!("instance {:?} {attrs:?}", i.id()));
        }
    }
    out
}

/// Backs `source` up and restores into `target`; both must then describe the same resources.
async fn backup_and_restore(source: &WeftServer, target: &WeftServer) {
    populate(source).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.json");
    weft_file_command_succeeds("backup", source, &file);
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(document["format"], "weft-backup/1");
    // A route comes after the nodes it targets, a gateway route after its virtual service.
    let kinds: Vec<&str> = document["appMesh"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    let at = |k: &str| kinds.iter().position(|x| *x == k).unwrap();
    assert!(at("Mesh") < at("VirtualNode"));
    assert!(at("VirtualNode") < at("Route") && at("Route") < at("VirtualService"));
    assert!(at("VirtualService") < at("GatewayRoute"));

    weft_file_command_succeeds("restore", target, &file);
    assert_eq!(described(target).await, described(source).await);

    // Again: nothing differs, nothing is written twice.
    weft_file_command_succeeds("restore", target, &file);
    assert_eq!(described(target).await, described(source).await);

    // A route that differs on the target is not overwritten, and nothing else is written.
    let api = MeshApi::existing(&target.client(), "apps");
    api.update_route("colors", "main", RouteSpec::split(&[("blue", 1)]))
        .await;
    target
        .client()
        .delete_gateway_route()
        .mesh_name("apps")
        .virtual_gateway_name("ingress")
        .gateway_route_name("to-colors")
        .send()
        .await
        .unwrap();
    let out = weft_file_command("restore", target, &file);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing") && stderr.contains("Route main of virtual router colors"),
        "{stderr}"
    );
    let gone = target
        .client()
        .describe_gateway_route()
        .mesh_name("apps")
        .virtual_gateway_name("ingress")
        .gateway_route_name("to-colors")
        .send()
        .await;
    assert!(gone.is_err(), "a refused restore wrote nothing");
}

#[tokio::test]
async fn a_backup_of_one_control_plane_restores_into_another_with_identical_specs() {
    let source = WeftServer::start();
    let target = WeftServer::start();
    backup_and_restore(&source, &target).await;
}

#[tokio::test]
async fn a_backup_of_an_embedded_store_server_restores_into_an_etcd_store_server() {
    let etcd = weft_store_etcd::testing::EtcdCluster::start(3).await;
    let source = WeftServer::start();
    let target = WeftServer::start_with(&["--store", &etcd.store_url()]);
    backup_and_restore(&source, &target).await;
}
