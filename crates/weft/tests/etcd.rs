//! `weft server --store etcd://...`: the control plane keeps its App Mesh resources in a real
//! 3-member etcd cluster, so a server killed with SIGKILL is replaced by a new one on another
//! machine's folder, and the AWS SDK reads back what it created.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::WeftServer;
use weft_store_etcd::testing::EtcdCluster;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{MeshSpec, NodeSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_created_on_etcd_survives_its_server_being_killed_and_a_new_server_reads_it_back() {
    let etcd = EtcdCluster::start(3).await;
    let store = etcd.store_url();
    let dir = tempfile::tempdir().unwrap();
    let (first_dir, second_dir) = (dir.path().join("first"), dir.path().join("second"));
    // Access keys' secrets are sealed under the key-encryption key, kept outside the store.
    let kek = dir.path().join("auth-kek");
    let flags = [
        "--store",
        store.as_str(),
        "--etcd-prefix",
        "/shop-team/",
        "--auth-kek-file",
        kek.to_str().unwrap(),
    ];

    let mut first = WeftServer::start_in(&first_dir, &flags);
    let mesh = MeshApi::create(&first.client(), "shop", MeshSpec::new()).await;
    let created = mesh
        .node("cart", NodeSpec::http("cart.shop.local", 8080))
        .await;
    first.kill9();

    // Another server, with nothing of the first one's folder but the administrator's
    // credentials (as an operator copies them): everything else comes from etcd.
    std::fs::create_dir_all(&second_dir).unwrap();
    std::fs::copy(
        first_dir.join("admin-credentials"),
        second_dir.join("admin-credentials"),
    )
    .unwrap();
    let second = WeftServer::start_in(&second_dir, &flags);
    let client = second.client();
    let meshes = client.list_meshes().send().await.unwrap();
    let names: Vec<&str> = meshes.meshes().iter().map(|m| m.mesh_name()).collect();
    assert_eq!(names, ["shop"]);
    let node = client
        .describe_virtual_node()
        .mesh_name("shop")
        .virtual_node_name("cart")
        .send()
        .await
        .unwrap()
        .virtual_node
        .unwrap();
    assert_eq!(
        node.metadata().unwrap().arn(),
        created.metadata().unwrap().arn()
    );
    assert_eq!(node.metadata().unwrap().version(), 1);
    let hostname = match node.spec().unwrap().service_discovery().unwrap() {
        aws_sdk_appmesh::types::ServiceDiscovery::Dns(dns) => dns.hostname().to_string(),
        other => panic!("unexpected service discovery {other:?}"),
    };
    assert_eq!(hostname, "cart.shop.local");
    // The name is taken on the shared store: a second create is refused as App Mesh does.
    let again = client
        .create_virtual_node()
        .mesh_name("shop")
        .virtual_node_name("cart")
        .spec(NodeSpec::http("cart.shop.local", 8080).sdk())
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::error_code(&again), "ConflictException");
}

#[test]
fn a_server_whose_etcd_is_unreachable_exits_with_an_error_naming_the_endpoints() {
    // Two loopback ports nobody listens on.
    let ports: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("127.0.0.1:{}", l.local_addr().unwrap().port())
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["server", "--store"])
        .arg(format!("etcd://{}", ports.join(",")))
        .args(["--etcd-connect-timeout", "1", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0"])
        .args(["--dns-listen", "127.0.0.1:0", "--insecure-plaintext-xds"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weft server kept running without its etcd");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains(&ports.join(",")) && stderr.contains("unreachable"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_etcd_is_down_the_api_answers_service_unavailable_and_serves_again_once_it_is_back() {
    let mut etcd = EtcdCluster::start(3).await;
    let store = etcd.store_url();
    let server = WeftServer::start_with(&["--store", store.as_str()]);
    let client = server.client_without_retries();
    MeshApi::create(&client, "before", MeshSpec::new()).await;

    for member in 0..3 {
        etcd.kill(member);
    }
    let refused = client
        .create_mesh()
        .mesh_name("during")
        .send()
        .await
        .unwrap_err();
    assert_eq!(common::error_code(&refused), "ServiceUnavailableException");

    etcd.restart_all().await;
    MeshApi::create(&client, "after", MeshSpec::new()).await;
    let meshes = client.list_meshes().send().await.unwrap();
    let mut names: Vec<&str> = meshes.meshes().iter().map(|m| m.mesh_name()).collect();
    names.sort_unstable();
    // Nothing of the refused create was written.
    assert_eq!(names, ["after", "before"]);
}
