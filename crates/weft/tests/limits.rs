//! A real `weft server` held to its limits through the official AWS SDK for
//! Rust, as careless scripts and hostile clients would try it: names that
//! break ARNs, List answers read by a parser that refuses repeated keys,
//! bodies and fields far past what any real spec needs, and one client
//! flooding the API while another keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use aws_sdk_appmesh::config::retry::RetryConfig;
use aws_sdk_appmesh::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_appmesh::types::{
    Backend, DnsServiceDiscovery, ServiceDiscovery, VirtualNodeSpec, VirtualServiceBackend,
};
use aws_sdk_appmesh::Client;
use common::{
    dns_node_spec, error_code, router_spec, service_by_router, stalled_request, WeftServer,
};

/// An SDK client signing with access key `key` that never retries, so that
/// each throttled answer is seen as it is.
fn client_of(server: &WeftServer, key: &str) -> Client {
    keyed_client(server, key, "secret")
}

/// Like [`client_of`], with the key's secret.
fn keyed_client(server: &WeftServer, key: &str, secret: &str) -> Client {
    let config = aws_sdk_appmesh::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(key, secret, None, None, "limits"))
        .endpoint_url(&server.addr)
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

/// A client of a second key the administrator creates with `weft access-key`.
async fn other_key_client(server: &WeftServer) -> Client {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "access-key",
            "create",
            "--name",
            "polite",
            "--server",
            &server.addr,
        ])
        .envs(common::aws_env(&server.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = String::from_utf8(out.stdout).unwrap();
    let value = |k: &str| {
        file.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(n, _)| n.trim() == k)
            .map(|(_, v)| v.trim().to_string())
            .unwrap()
    };
    keyed_client(
        server,
        &value("aws_access_key_id"),
        &value("aws_secret_access_key"),
    )
}

#[tokio::test]
async fn names_with_a_slash_or_nul_are_refused_and_nothing_is_stored() {
    let server = WeftServer::start();
    let c = server.client();
    // Mesh `x/virtualNode/y` would share its ARN with node `y` of mesh `x`.
    let e = c
        .create_mesh()
        .mesh_name("x/virtualNode/y")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");
    let message = e.as_service_error().and_then(|s| s.meta().message());
    assert_eq!(
        message,
        Some("Value at 'meshName' failed to satisfy constraint: Member must not contain '/'")
    );
    let e = c.create_mesh().mesh_name("a\0b").send().await.unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");
    c.create_mesh().mesh_name("x").send().await.unwrap();
    for name in ["a/b", "nul\0", "tab\there", "del\u{7f}"] {
        let e = c
            .create_virtual_node()
            .mesh_name("x")
            .virtual_node_name(name)
            .spec(dns_node_spec("a.x.local", 8080))
            .send()
            .await
            .unwrap_err();
        assert_eq!(error_code(&e), "BadRequestException", "{name:?}");
    }
    // In a path label too (the SDK percent-encodes it).
    let e = c
        .describe_virtual_node()
        .mesh_name("x")
        .virtual_node_name("a/b")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");
    let meshes = c.list_meshes().send().await.unwrap().meshes;
    assert_eq!(meshes.len(), 1);
    let nodes = c
        .list_virtual_nodes()
        .mesh_name("x")
        .send()
        .await
        .unwrap()
        .virtual_nodes;
    assert!(nodes.is_empty(), "{nodes:?}");
}

#[tokio::test]
async fn list_answers_are_json_without_a_repeated_key() {
    let server = WeftServer::start();
    let c = server.client();
    c.create_mesh().mesh_name("m1").send().await.unwrap();
    c.create_virtual_node()
        .mesh_name("m1")
        .virtual_node_name("vn")
        .spec(dns_node_spec("vn.m1.local", 8080))
        .send()
        .await
        .unwrap();
    c.create_virtual_router()
        .mesh_name("m1")
        .virtual_router_name("vr")
        .spec(router_spec(
            8080,
            aws_sdk_appmesh::types::PortProtocol::Http,
        ))
        .send()
        .await
        .unwrap();
    c.create_virtual_service()
        .mesh_name("m1")
        .virtual_service_name("vs.m1.local")
        .spec(service_by_router("vr"))
        .send()
        .await
        .unwrap();
    for (path, member) in [
        ("/v20190125/meshes", "meshes"),
        ("/v20190125/meshes/m1/virtualNodes", "virtualNodes"),
        ("/v20190125/meshes/m1/virtualRouters", "virtualRouters"),
        ("/v20190125/meshes/m1/virtualServices", "virtualServices"),
    ] {
        // Twice: the second answer comes from the cache of references.
        for _ in 0..2 {
            let body = common::signed_request(&server.addr, "GET", path, None, "appmesh")
                .await
                .bytes()
                .await
                .unwrap();
            let page =
                weft_api::testing::strict_json(&body).unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert_eq!(page[member].as_array().map(Vec::len), Some(1), "{path}");
        }
    }
    // And the SDK reads the same page.
    let meshes = c.list_meshes().send().await.unwrap().meshes;
    assert_eq!(meshes[0].mesh_name(), "m1");
}

#[tokio::test]
async fn an_oversized_body_is_a_bad_request_through_the_sdk() {
    let server = WeftServer::start();
    let c = server.client();
    c.create_mesh().mesh_name("apps").send().await.unwrap();
    // 6,000 backends, each well-formed: some 400 KB, past the 256 KiB limit.
    let mut spec = VirtualNodeSpec::builder();
    for i in 0..6000 {
        spec = spec.backends(Backend::VirtualService(
            VirtualServiceBackend::builder()
                .virtual_service_name(format!("backend-{i:05}.apps.svc.cluster.local"))
                .build()
                .unwrap(),
        ));
    }
    let e = c
        .create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("big")
        .spec(spec.build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");
    // The server is unharmed: a real-sized request is served at once.
    c.create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("small")
        .spec(dns_node_spec("small.apps.local", 8080))
        .send()
        .await
        .unwrap();
}

fn dns_spec(hostname: String) -> VirtualNodeSpec {
    VirtualNodeSpec::builder()
        .service_discovery(ServiceDiscovery::Dns(
            DnsServiceDiscovery::builder()
                .hostname(hostname)
                .build()
                .unwrap(),
        ))
        .build()
}

#[tokio::test]
async fn a_1_5_mb_hostname_is_refused_and_a_5_000_character_one_is_refused_naming_the_field() {
    let server = WeftServer::start();
    let c = server.client();
    c.create_mesh().mesh_name("apps").send().await.unwrap();
    c.create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("n")
        .spec(dns_node_spec("n.apps.local", 8080))
        .send()
        .await
        .unwrap();
    let huge = "h".repeat(1_500_000);
    let e = c
        .update_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("n")
        .spec(dns_spec(huge))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");
    // Small enough for the body limit, still far past any DNS name.
    let e = c
        .update_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("n")
        .spec(dns_spec("h".repeat(5000)))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "BadRequestException");
    let message = e
        .as_service_error()
        .and_then(|s| s.meta().message())
        .unwrap_or_default()
        .to_string();
    assert!(
        message.starts_with("Value at 'spec.serviceDiscovery.dns.hostname'")
            && message.contains("4096"),
        "{message}"
    );
    let node = c
        .describe_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("n")
        .send()
        .await
        .unwrap()
        .virtual_node
        .unwrap();
    assert_eq!(node.metadata.unwrap().version, 1, "no update was stored");
}

#[tokio::test]
async fn one_client_over_its_concurrency_limit_is_throttled_while_another_is_answered() {
    // Requests whose bodies never finish are never verified, so they never count as in flight
    // with verification on: without it, as here, clients are the keys they claim.
    let server = WeftServer::start_with(&["--insecure-no-auth"]);
    let setup = server.client();
    setup.create_mesh().mesh_name("apps").send().await.unwrap();
    // The greedy client holds 64 requests in flight (the default limit).
    let mut stalled = Vec::new();
    for _ in 0..64 {
        stalled.push(stalled_request(&server.addr, "AKIDGREEDY").await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let greedy = client_of(&server, "AKIDGREEDY");
    let polite = client_of(&server, "AKIDPOLITE");
    let attempts = 50;
    let (greedy_answers, polite_answers) = tokio::join!(
        futures::future::join_all((0..attempts).map(|_| greedy.list_meshes().send())),
        futures::future::join_all((0..attempts).map(|i| {
            polite
                .create_virtual_node()
                .mesh_name("apps")
                .virtual_node_name(format!("polite-{i}"))
                .spec(dns_node_spec("polite.apps.local", 8080))
                .send()
        })),
    );
    let throttled = greedy_answers
        .iter()
        .filter(|r| {
            r.as_ref()
                .err()
                .is_some_and(|e| error_code(e) == "TooManyRequestsException")
        })
        .count();
    assert_eq!(
        throttled, attempts,
        "every request past the greedy client's limit"
    );
    let failed: Vec<String> = polite_answers
        .iter()
        .filter_map(|r| r.as_ref().err().map(error_code))
        .collect();
    assert!(
        failed.is_empty(),
        "the polite client was refused: {failed:?}"
    );
    // Its stalled requests gone, the greedy client is served again.
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    greedy.list_meshes().send().await.unwrap();
}

#[tokio::test]
async fn the_rate_limit_holds_each_client_to_its_own_bucket() {
    let server = WeftServer::start_with(&["--api-rate-limit", "0.5", "--api-burst", "3"]);
    // Clients are verified keys: the administrator's, and a second one.
    let (admin_id, admin_secret) = common::admin_key(&server.addr);
    let greedy = keyed_client(&server, &admin_id, &admin_secret);
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(match greedy.list_meshes().send().await {
            Ok(_) => "ok".to_string(),
            Err(e) => error_code(&e),
        });
    }
    assert_eq!(&answers[..3], ["ok", "ok", "ok"], "the burst is admitted");
    assert!(
        answers[3..].iter().all(|a| a == "TooManyRequestsException"),
        "{answers:?}"
    );
    // Another client has its own bucket, and a request claiming the greedy key with a wrong
    // secret is refused before it reaches, or drains, that key's bucket.
    let forged = keyed_client(&server, &admin_id, "not-the-secret");
    let e = forged.list_meshes().send().await.unwrap_err();
    assert_eq!(error_code(&e), "InvalidSignatureException");
    let polite = other_key_client(&server).await;
    for _ in 0..3 {
        polite.list_meshes().send().await.unwrap();
    }
}
