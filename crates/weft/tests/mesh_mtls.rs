//! Mesh-wide mutual TLS, a Weft extension: the mesh tag `weft:mtls` (`STRICT`, `PERMISSIVE`,
//! `DISABLED`), set and removed through the official AWS SDK, turns mutual TLS with Weft
//! identities on between the mesh's proxies without any TLS spec. A real `weft server` (mutual
//! TLS on xDS), real `weft agent`s with join tokens each running a real Envoy 1.40 in explicit
//! mode, real HTTP apps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use aws_sdk_appmesh::error::ProvideErrorMetadata;
use aws_sdk_appmesh::types as t;
use common::mesh::{agent_with_env, free_port, http_get, sample_app, wait_until};
use common::{error_code, WeftServer};
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{NodeSpec, ServiceSpec};

fn tag(key: &str, value: &str) -> t::TagRef {
    t::TagRef::builder().key(key).value(value).build().unwrap()
}

/// The ARN the server gives the mesh (its account is the server's).
async fn arn_of(client: &aws_sdk_appmesh::Client, mesh: &str) -> String {
    client
        .describe_mesh()
        .mesh_name(mesh)
        .send()
        .await
        .unwrap()
        .mesh
        .unwrap()
        .metadata
        .unwrap()
        .arn
}

#[tokio::test]
async fn the_mtls_tag_takes_only_strict_permissive_or_disabled() {
    let server = WeftServer::start();
    let client = server.client();

    let refused = client
        .create_mesh()
        .mesh_name("apps")
        .tags(tag("weft:mtls", "strict"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&refused), "BadRequestException");
    let message = refused.message().unwrap_or_default().to_string();
    assert!(
        message.contains("weft:mtls") && message.contains("STRICT, PERMISSIVE, DISABLED"),
        "{message}"
    );
    assert!(
        client
            .describe_mesh()
            .mesh_name("apps")
            .send()
            .await
            .is_err(),
        "nothing was created"
    );

    client
        .create_mesh()
        .mesh_name("apps")
        .tags(tag("weft:mtls", "STRICT"))
        .send()
        .await
        .unwrap();
    let arn = arn_of(&client, "apps").await;
    let refused = client
        .tag_resource()
        .resource_arn(&arn)
        .tags(tag("weft:mtls", "ON"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&refused), "BadRequestException");
    assert!(refused.message().unwrap_or_default().contains("weft:mtls"));
    for value in ["PERMISSIVE", "DISABLED"] {
        client
            .tag_resource()
            .resource_arn(&arn)
            .tags(tag("weft:mtls", value))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{value}: {e:?}"));
    }
    let tags = client
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .unwrap()
        .tags;
    assert_eq!(
        tags,
        vec![tag("weft:mtls", "DISABLED")],
        "the refused value left no trace"
    );
    client
        .untag_resource()
        .resource_arn(&arn)
        .tag_keys("weft:mtls")
        .send()
        .await
        .unwrap();

    // Only a mesh's tag means something: other resources keep any tag App Mesh allows.
    let api = MeshApi::existing(&client, "apps");
    api.node("red", NodeSpec::http("127.0.0.1", 8080)).await;
    client
        .tag_resource()
        .resource_arn(format!("{arn}/virtualNode/red"))
        .tags(tag("weft:mtls", "anything"))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_mesh_carries_traffic_over_mutual_tls_without_tls_specs_and_untagging_returns_to_plaintext(
) {
    let server = WeftServer::start_with(&["--xds-tls"]);
    let client = server.client();
    client
        .create_mesh()
        .mesh_name("apps")
        .tags(tag("weft:mtls", "STRICT"))
        .send()
        .await
        .unwrap();
    let arn = arn_of(&client, "apps").await;
    let api = MeshApi::existing(&client, "apps");
    let red_port = free_port();
    api.node("red", NodeSpec::http("127.0.0.1", red_port)).await;
    api.service("red.apps.local", ServiceSpec::by_node("red"))
        .await;
    api.node("front", NodeSpec::client(&["red.apps.local"]))
        .await;
    let (_red_app, red_app_port) = sample_app("red");
    let red = common::joined_agent(
        &server,
        "mesh/apps/virtualNode/red",
        &[(red_port, red_app_port)],
    );
    let front = common::joined_agent(&server, "mesh/apps/virtualNode/front", &[]);

    let through = || {
        front
            .get("red.apps.local", "/", &[])
            .map(|(s, b)| s == 200 && b.contains("red"))
            .unwrap_or(false)
    };
    let plaintext = || {
        http_get(red_port, "red.apps.local", "/")
            .map(|(s, _)| s)
            .unwrap_or(0)
    };
    let handshakes = || red.stat_sum(&format!("listener.127.0.0.1_{red_port}.ssl.handshake"));

    // STRICT: front reaches red over mutual TLS, a plaintext client straight to red's listener
    // is refused.
    wait_until(Duration::from_secs(60), through);
    for _ in 0..3 {
        assert!(through());
    }
    assert!(
        handshakes() >= 1,
        "red's listener counted the TLS handshakes"
    );
    assert_eq!(
        red.stat_sum(&format!("listener.127.0.0.1_{red_port}.ssl.no_certificate")),
        0,
        "front presented its certificate"
    );
    assert_eq!(plaintext(), 0, "STRICT: a plaintext client gets no answer");

    // PERMISSIVE: plaintext is served too, and front still comes over TLS.
    client
        .tag_resource()
        .resource_arn(&arn)
        .tags(tag("weft:mtls", "PERMISSIVE"))
        .send()
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), || plaintext() == 200);
    let before = handshakes();
    wait_until(Duration::from_secs(30), || {
        through() && handshakes() > before
    });

    // Untagged (DISABLED): plaintext between the proxies, traffic continuing.
    client
        .untag_resource()
        .resource_arn(&arn)
        .tag_keys("weft:mtls")
        .send()
        .await
        .unwrap();
    // Once front's cluster is plaintext, new connections make no handshake on red.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let before = handshakes();
        let served = (0..5).all(|_| {
            front
                .get("red.apps.local", "/", &[("connection", "close")])
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        });
        if served && handshakes() == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "front never went back to plaintext to red"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(plaintext(), 200);
    assert!(through());

    for envoy in [&red, &front] {
        assert_eq!(
            envoy.stat_sum("update_rejected"),
            0,
            "an Envoy NACKed config"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_an_identity_in_an_mtls_mesh_is_served_plaintext_and_proxy_status_says_why()
{
    // An agent without a join token can only speak plaintext xDS.
    let server = WeftServer::start_with(&["--insecure-plaintext-xds"]);
    let client = server.client();
    client
        .create_mesh()
        .mesh_name("apps")
        .tags(tag("weft:mtls", "STRICT"))
        .send()
        .await
        .unwrap();
    let api = MeshApi::existing(&client, "apps");
    let red_port = free_port();
    api.node("red", NodeSpec::http("127.0.0.1", red_port)).await;
    let (_red_app, red_app_port) = sample_app("red");
    let red = agent_with_env(
        &server.xds_addr,
        "mesh/apps/virtualNode/red",
        &[(red_port, red_app_port)],
        "sotw",
        &[],
    );

    // Its agent has no identity to serve: it gets its listener without TLS, never a secret it
    // could not fetch, and serves.
    wait_until(Duration::from_secs(30), || {
        http_get(red_port, "red.apps.local", "/")
            .map(|(s, b)| s == 200 && b.contains("red"))
            .unwrap_or(false)
    });
    let subscriptions: Vec<String> = red
        .admin("/stats")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("sds."))
        .map(str::to_string)
        .collect();
    assert_eq!(
        subscriptions,
        Vec::<String>::new(),
        "no secret subscribed to"
    );
    assert_eq!(red.stat_sum("update_rejected"), 0);

    let status: serde_json::Value =
        common::signed_request(&server.addr, "GET", "/weft/v1/proxy-status", None, "weft")
            .await
            .json()
            .await
            .unwrap();
    let failure = &status["proxies"][0]["configFailure"];
    let reason = failure["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("weft:mtls=STRICT") && reason.contains("no Weft identity"),
        "{status}"
    );
    assert_eq!(failure["resource"], "virtualNode/red");
    assert_eq!(
        failure["servingVersion"], status["proxies"][0]["snapshotVersion"],
        "it is served the config without mutual TLS"
    );
}
