//! Weft's own Prometheus metrics (`GET /metrics`), read by a real Prometheus parser: the
//! official Python client's OpenMetrics parser (`prometheus_client`, which scripts/test
//! installs), after real requests through the AWS SDK and a real Envoy on the xDS port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use aws_sdk_appmesh::config::{BehaviorVersion, Credentials, Region};
use common::mesh::{agent, free_port, wait_until};
use common::prometheus::{self, sample};
use common::WeftServer;
use serde_json::Value;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{MeshSpec, NodeSpec};

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
    prometheus::parse(&text)
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

/// A Prometheus server (Debian's, which scripts/test installs) on a free loopback port, scraping
/// `target` (`host:port`) every second; killed when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn scraping(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: weft\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package; scripts/test installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The value of the instant `query`, if it has one sample.
    async fn query(&self, query: &str) -> Option<f64> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_server_scrapes_weft_and_answers_queries_on_its_metrics() {
    let server = WeftServer::start();
    let client = server.client();
    let api = MeshApi::create(&client, "apps", MeshSpec::new()).await;
    api.node("red", NodeSpec::http("127.0.0.1", free_port()))
        .await;
    let target = server.addr.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::scraping(&target);

    // The target is up, and the writes are there under their operations.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let up = prometheus.query("up{job=\"weft\"}").await;
        let created = prometheus
            .query("sum(weft_api_requests_total{operation=\"appmesh:CreateVirtualNode\",outcome=\"Success\"})")
            .await;
        if up == Some(1.0) && created == Some(1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus never scraped weft: up {up:?}, creates {created:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A histogram Prometheus computes quantiles from.
    let p99 = prometheus
        .query(
            "histogram_quantile(0.99, sum by (le) (weft_api_request_duration_seconds_bucket{operation=\"appmesh:CreateVirtualNode\"}))",
        )
        .await;
    assert!(p99.is_some_and(|s| s > 0.0 && s < 10.0), "{p99:?}");
}
