//! `weft agent` registers its workload in Weft's instance registry (the Cloud
//! Map role) once the app answers, reports its health, and deregisters on
//! shutdown — against a real `weft server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::mesh::{free_port, wait_until, Proc};
use common::WeftServer;
use serde_json::{json, Value};
use weft_agent::registration::call;

async fn discover(endpoint: &str, status: &str) -> Vec<Value> {
    let answer = call(
        endpoint,
        "DiscoverInstances",
        json!({"NamespaceName": "apps.local", "ServiceName": "red", "HealthStatus": status}),
    )
    .await
    .unwrap();
    answer["Instances"].as_array().cloned().unwrap_or_default()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn an_agent_registers_its_instance_reports_health_and_deregisters_on_shutdown() {
    let server = WeftServer::start();
    let endpoint = server.addr.trim_start_matches("http://").to_string();
    block_on(async {
        let op = call(
            &endpoint,
            "CreateHttpNamespace",
            json!({"Name": "apps.local"}),
        )
        .await
        .unwrap();
        assert!(op["OperationId"].is_string());
        let ns = call(&endpoint, "ListNamespaces", json!({})).await.unwrap();
        let ns_id = ns["Namespaces"][0]["Id"].as_str().unwrap().to_string();
        call(
            &endpoint,
            "CreateService",
            json!({"Name": "red", "NamespaceId": ns_id, "HealthCheckCustomConfig": {}}),
        )
        .await
        .unwrap();
    });

    // The app is not up yet: the agent must not register it.
    let app_port = free_port();
    let agent = Proc(
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("agent")
            .env("APPMESH_RESOURCE_ARN", "mesh/apps/virtualNode/red")
            .env("APPMESH_XDS_ENDPOINT", &server.xds_addr)
            .env("ENVOY_ADMIN_ACCESS_PORT", free_port().to_string())
            .env("ENVOY_ADMIN_ACCESS_LOG_FILE", "/dev/null")
            .env("APPMESH_ENVOY_EGRESS_PORT", free_port().to_string())
            .env("APPMESH_ENVOY_INGRESS_PORT", free_port().to_string())
            .env("WEFT_LISTENER_MODE", "explicit")
            .env("LISTENER_DRAIN_WAIT_TIME_S", "0")
            .env("WEFT_REGISTER_NAMESPACE", "apps.local")
            .env("WEFT_REGISTER_SERVICE", "red")
            .env("WEFT_INSTANCE_PORT", app_port.to_string())
            .env("WEFT_INSTANCE_ATTRIBUTES", "version=v1,zone=a")
            .env("WEFT_HEALTH_INTERVAL_MS", "200")
            .env("WEFT_REGISTRY_ENDPOINT", &endpoint)
            .env("WEFT_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        block_on(discover(&endpoint, "ALL")).is_empty(),
        "registered before the app answered"
    );

    // The app comes up (on the port the agent probes): the instance appears, healthy,
    // with its address, port and attributes.
    let app = Proc(
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "sample-app",
                "--name",
                "red",
                "--listen",
                &format!("127.0.0.1:{app_port}"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), || {
        block_on(discover(&endpoint, "HEALTHY")).len() == 1
    });
    let instance = &block_on(discover(&endpoint, "HEALTHY"))[0];
    assert_eq!(instance["Attributes"]["AWS_INSTANCE_IPV4"], "127.0.0.1");
    assert_eq!(
        instance["Attributes"]["AWS_INSTANCE_PORT"],
        app_port.to_string()
    );
    assert_eq!(instance["Attributes"]["version"], "v1");

    // The app dies: the instance turns unhealthy. It comes back: healthy again.
    drop(app);
    wait_until(Duration::from_secs(10), || {
        block_on(discover(&endpoint, "UNHEALTHY")).len() == 1
    });
    let (_app, _) = {
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "sample-app",
                "--name",
                "red",
                "--listen",
                &format!("127.0.0.1:{app_port}"),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        (Proc(child), ())
    };
    wait_until(Duration::from_secs(10), || {
        block_on(discover(&endpoint, "HEALTHY")).len() == 1
    });

    // SIGTERM: the agent deregisters before stopping.
    drop(agent);
    assert!(
        block_on(discover(&endpoint, "ALL")).is_empty(),
        "deregistered on shutdown"
    );
}
