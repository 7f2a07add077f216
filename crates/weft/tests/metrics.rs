//! Weft's own Prometheus metrics (`GET /metrics`), read by a real Prometheus parser: the
//! official Python client's OpenMetrics parser (`prometheus_client`, which scripts/test
//! installs), after real requests through the AWS SDK and a real Envoy on the xDS port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use aws_sdk_appmesh::config::{BehaviorVersion, Credentials, Region};
use common::mesh::{agent, free_port, wait_until};
use common::WeftServer;
use serde_json::Value;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{MeshSpec, NodeSpec};

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append({"name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(samples))
"#;

/// The server's exposition, parsed by Prometheus's own client: every sample.
async fn scrape(server: &WeftServer) -> Vec<Value> {
    let answer = reqwest::get(format!("{}/metrics", server.addr))
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let content_type = answer.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = answer.text().await.unwrap();
    let mut parser = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test installs prometheus_client)");
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = parser.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s["name"] == name
                && labels
                    .iter()
                    .all(|(k, v)| s["labels"][*k].as_str() == Some(*v))
        })
        .and_then(|s| s["value"].as_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_by_operation_and_outcome_and_connected_proxies_are_exposed_to_prometheus() {
    let server = WeftServer::start();
    let client = server.client();
    let api = MeshApi::create(&client, "apps", MeshSpec::new()).await;
    api.node("red", NodeSpec::http("127.0.0.1", free_port()))
        .await;
    for _ in 0..3 {
        client
            .describe_virtual_node()
            .mesh_name("apps")
            .virtual_node_name("red")
            .send()
            .await
            .unwrap();
    }
    assert!(client
        .describe_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("ghost")
        .send()
        .await
        .is_err());
    // A key the server never issued: refused before any handler, counted all the same.
    let stranger = aws_sdk_appmesh::Client::from_conf(
        aws_sdk_appmesh::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "AKIAWEFTUNKNOWN00000",
                "secret",
                None,
                None,
                "metrics-tests",
            ))
            .endpoint_url(&server.addr)
            .retry_config(aws_sdk_appmesh::config::retry::RetryConfig::disabled())
            .build(),
    );
    assert!(stranger.list_meshes().send().await.is_err());
    let envoy = agent(&server.xds_addr, "apps", "red", &[], "sotw");
    wait_until(Duration::from_secs(30), || {
        envoy.stat_sum("cluster_manager.cds.update_success") > 0
    });

    // A change to red reaches its Envoy: one convergence observed.
    api.client()
        .update_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .spec(NodeSpec::http("127.0.0.1", free_port()).sdk())
        .send()
        .await
        .unwrap();
    let converged = || async {
        sample(
            &scrape(&server).await,
            "weft_proxy_convergence_time_seconds_count",
            &[],
        )
        .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while converged().await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no convergence observed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let samples = scrape(&server).await;
    let sum = sample(&samples, "weft_proxy_convergence_time_seconds_sum", &[]).unwrap();
    assert!(sum > 0.0 && sum < 30.0, "convergence took {sum} s");
    let requests = |operation: &str, outcome: &str| {
        sample(
            &samples,
            "weft_api_requests_total",
            &[("operation", operation), ("outcome", outcome)],
        )
    };
    assert_eq!(
        requests("appmesh:DescribeVirtualNode", "Success"),
        Some(3.0)
    );
    assert_eq!(
        requests("appmesh:DescribeVirtualNode", "NotFoundException"),
        Some(1.0)
    );
    assert_eq!(
        requests("appmesh:ListMeshes", "UnrecognizedClientException"),
        Some(1.0)
    );
    assert_eq!(requests("appmesh:CreateVirtualNode", "Success"), Some(1.0));
    assert_eq!(requests("appmesh:UpdateVirtualNode", "Success"), Some(1.0));
    assert_eq!(
        sample(
            &samples,
            "weft_api_request_duration_seconds_count",
            &[("operation", "appmesh:DescribeVirtualNode")]
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &samples,
            "weft_xds_connected_proxies",
            &[("protocol", "sotw")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&samples, "weft_xds_nacks_total", &[]), Some(0.0));
    // The mesh, the node and the admin's key went through the store's commits.
    assert!(
        sample(&samples, "weft_store_commit_duration_seconds_count", &[]).unwrap_or(0.0) >= 2.0
    );
    assert!(
        sample(&samples, "weft_xds_responses_sent", &[("type", "Cluster")]).unwrap_or(0.0) >= 1.0
    );
    drop(envoy);
}
