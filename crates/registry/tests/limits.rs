//! The registry as careless and hostile clients meet it, through the
//! official AWS SDK over both protocols: bodies past the limit, a client
//! holding many requests in flight or sending past its rate, and a flood of
//! registrations each with a fresh `CreatorRequestId`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use aws_sdk_servicediscovery::config::retry::RetryConfig;
use aws_sdk_servicediscovery::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_servicediscovery::Client;
use common::{code, Protocol, Registry};
use tokio::io::AsyncWriteExt;
use weft_api::RateLimit;
use weft_registry::RegistryConfig;
use weft_store::{Range, Store};

/// An SDK client signing with access key `key`, never retrying, so that
/// each throttled answer is seen as it is.
fn client_of(registry: &Registry, key: &str, protocol: Protocol) -> Client {
    let mut config = aws_sdk_servicediscovery::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(key, "secret", None, None, "static"))
        .endpoint_url(&registry.addr)
        .retry_config(RetryConfig::disabled());
    if protocol == Protocol::Cbor {
        config = config.protocol(aws_smithy_cbor::protocol::RpcV2CborProtocol::new());
    }
    Client::from_conf(config.build())
}

async fn namespace_and_service(client: &Client) -> String {
    client
        .create_http_namespace()
        .name("apps")
        .send()
        .await
        .unwrap();
    let ns = client.list_namespaces().send().await.unwrap().namespaces()[0]
        .id()
        .unwrap()
        .to_string();
    client
        .create_service()
        .name("colors")
        .namespace_id(ns)
        .send()
        .await
        .unwrap()
        .service()
        .unwrap()
        .id()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn an_oversized_registration_is_invalid_input_over_both_protocols() {
    let registry = Registry::start().await;
    let svc = namespace_and_service(&registry.client(Protocol::Json)).await;
    for protocol in [Protocol::Json, Protocol::Cbor] {
        let client = registry.client(protocol);
        // 300 attributes of 1,000 characters: 300 KB, past the 256 KiB limit.
        let mut req = client
            .register_instance()
            .service_id(&svc)
            .instance_id("big");
        for i in 0..300 {
            req = req.attributes(format!("attr{i}"), "v".repeat(1000));
        }
        assert_eq!(code(req.send().await), "InvalidInput", "{protocol:?}");
        // A registration of real size is served.
        client
            .register_instance()
            .service_id(&svc)
            .instance_id("small")
            .attributes("AWS_INSTANCE_IPV4", "10.0.0.1")
            .attributes("AWS_INSTANCE_PORT", "8080")
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn one_client_past_its_requests_in_flight_gets_request_limit_exceeded_while_another_is_served(
) {
    let registry = Registry::start_with(RegistryConfig {
        max_in_flight_per_client: 3,
        ..RegistryConfig::default()
    })
    .await;
    let host = registry.addr.trim_start_matches("http://").to_string();
    // The greedy client holds 3 requests in flight, each stalled mid-body.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
        let head = "POST / HTTP/1.1\r\nhost: weft\r\ncontent-type: application/x-amz-json-1.1\r\n\
             x-amz-target: Route53AutoNaming_v20170314.ListNamespaces\r\ncontent-length: 2\r\n\
             authorization: AWS4-HMAC-SHA256 Credential=GREEDY/20250101/us-east-1/servicediscovery/aws4_request, \
             SignedHeaders=host, Signature=0\r\n\r\n{";
        s.write_all(head.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for protocol in [Protocol::Json, Protocol::Cbor] {
        let greedy = client_of(&registry, "GREEDY", protocol);
        for _ in 0..5 {
            assert_eq!(
                code(greedy.list_namespaces().send().await),
                "RequestLimitExceeded",
                "{protocol:?}"
            );
        }
        let polite = client_of(&registry, "POLITE", protocol);
        for _ in 0..5 {
            polite.list_namespaces().send().await.unwrap();
        }
    }
    drop(stalled);
    // Once its stalled requests are gone, the greedy client is served again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client_of(&registry, "GREEDY", Protocol::Json)
        .list_namespaces()
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn one_client_past_its_rate_does_not_throttle_another() {
    let registry = Registry::start_with(RegistryConfig {
        rate_limit: Some(RateLimit {
            per_second: 0.5,
            burst: 3,
        }),
        ..RegistryConfig::default()
    })
    .await;
    let greedy = client_of(&registry, "GREEDY", Protocol::Json);
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(match greedy.list_namespaces().send().await {
            Ok(_) => "ok".to_string(),
            Err(e) => code::<(), _, _>(Err(e)),
        });
    }
    assert_eq!(&answers[..3], ["ok", "ok", "ok"], "the burst is admitted");
    assert!(
        answers[3..].iter().all(|a| a == "RequestLimitExceeded"),
        "{answers:?}"
    );
    let polite = client_of(&registry, "POLITE", Protocol::Cbor);
    for _ in 0..3 {
        polite.list_namespaces().send().await.unwrap();
    }
}

#[tokio::test]
async fn a_flood_of_creator_request_ids_keeps_the_records_small_and_within_their_cap() {
    let registry = Registry::start_with(RegistryConfig {
        max_records: 10,
        ..RegistryConfig::default()
    })
    .await;
    let client = registry.client(Protocol::Json);
    let svc = namespace_and_service(&client).await;
    let marker = "m".repeat(900);
    let mut last = None;
    for i in 0..60 {
        let cri = format!("register-{i}");
        let out = client
            .register_instance()
            .service_id(&svc)
            .instance_id("i-1")
            .creator_request_id(&cri)
            .attributes("AWS_INSTANCE_IPV4", "10.0.0.1")
            .attributes("note", &marker)
            .send()
            .await
            .unwrap();
        last = Some((cri, out.operation_id().unwrap().to_string()));
    }
    let store = &registry.store;
    let requests = store
        .range(Range::prefix(weft_registry::keys::REQUESTS))
        .await
        .unwrap()
        .kvs;
    let operations = store
        .count(Range::prefix(weft_registry::keys::OPERATIONS))
        .await
        .unwrap();
    assert!(requests.len() <= 10, "{} request records", requests.len());
    assert!(operations <= 10, "{operations} operation records");
    for kv in &requests {
        let text = String::from_utf8_lossy(&kv.value);
        assert!(!text.contains(&marker), "the request is kept whole: {text}");
    }
    // The latest CreatorRequestId still replays its answer.
    let (cri, op) = last.unwrap();
    let again = client
        .register_instance()
        .service_id(&svc)
        .instance_id("i-1")
        .creator_request_id(&cri)
        .attributes("AWS_INSTANCE_IPV4", "10.0.0.1")
        .attributes("note", &marker)
        .send()
        .await
        .unwrap();
    assert_eq!(again.operation_id(), Some(op.as_str()));
}
