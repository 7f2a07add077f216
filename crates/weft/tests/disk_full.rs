//! A full disk under a real `weft server`, driven through the AWS SDK: a write
//! that cannot be made durable answers `ServiceUnavailableException` (so the
//! SDKs' retry logic treats it as transient), the server serves only what is
//! durable and `GET /healthz` says it is degraded; once the disk has room
//! again writes work without a restart, and after a `kill -9` every
//! acknowledged write is there.
//!
//! The disk is a small tmpfs mounted for the test (the tests run as root, as
//! the README says).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::disks::SmallDisk;
use common::{dns_node_spec, error_code, WeftServer};

#[tokio::test]
async fn a_full_disk_fails_writes_until_there_is_room_and_loses_no_acknowledged_write() {
    let disk = SmallDisk::mount("256k");
    let data = disk.path().join("data");
    let mut server = WeftServer::start_in(&data, &["--quota", "virtual-nodes-per-mesh=100000"]);
    let client = server.client_without_retries();
    client.create_mesh().mesh_name("full").send().await.unwrap();

    // Create nodes until the disk is full; every one answered with success
    // must survive. Hostnames are long so that the disk fills quickly.
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for i in 0..5_000 {
        let name = format!("node-{i:05}");
        let host = format!("{name}.{}.example", "x".repeat(200));
        match client
            .create_virtual_node()
            .mesh_name("full")
            .virtual_node_name(&name)
            .spec(dns_node_spec(&host, 8080))
            .send()
            .await
        {
            Ok(_) => acknowledged.push(name),
            Err(e) => {
                refusal = Some(error_code(&e));
                break;
            }
        }
    }
    assert!(
        acknowledged.len() > 10,
        "some writes fit: {}",
        acknowledged.len()
    );
    assert_eq!(
        refusal.as_deref(),
        Some("ServiceUnavailableException"),
        "the write that did not fit after {} nodes",
        acknowledged.len()
    );
    // The refused write is not served; what is durable still is.
    let refused = client
        .describe_virtual_node()
        .mesh_name("full")
        .virtual_node_name(format!("node-{:05}", acknowledged.len()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&refused), "NotFoundException");
    let read = client
        .describe_virtual_node()
        .mesh_name("full")
        .virtual_node_name(&acknowledged[0])
        .send()
        .await
        .unwrap();
    assert_eq!(
        read.virtual_node().unwrap().virtual_node_name(),
        acknowledged[0]
    );
    // A supervisor is told the store is degraded, and why.
    let (status, body) = server.health().await;
    assert_eq!(status, 503);
    assert!(
        body.contains("degraded") && body.contains("No space left"),
        "{body}"
    );

    // Room again: writes work without a restart, and the server is healthy.
    disk.resize("16m");
    client
        .create_virtual_node()
        .mesh_name("full")
        .virtual_node_name("after-room")
        .spec(dns_node_spec("after.example", 8080))
        .send()
        .await
        .unwrap();
    acknowledged.push("after-room".into());
    assert_eq!(server.health().await.0, 200);

    // And after a kill -9, every acknowledged node is there.
    server.kill9();
    let server = WeftServer::start_in(&data, &["--quota", "virtual-nodes-per-mesh=100000"]);
    let client = server.client();
    assert_eq!(server.health().await.0, 200);
    for name in &acknowledged {
        let node = client
            .describe_virtual_node()
            .mesh_name("full")
            .virtual_node_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("acknowledged {name} lost: {e:?}"));
        assert_eq!(node.virtual_node().unwrap().virtual_node_name(), name);
    }
    drop(server);
}
