//! End-to-end: outlier detection at the clients of a node. Virtual node `red`
//! has two endpoints (two instances registered in Weft's registry, reached
//! directly by the client's Envoy): one healthy app and one that answers 503
//! to everything. Consecutive server errors eject the failing endpoint for the
//! base ejection duration; then it is tried again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use aws_sdk_appmesh::types::{
    AwsCloudMapServiceDiscovery, Backend, Duration, DurationUnit, Listener, OutlierDetection,
    PortMapping, PortProtocol, ServiceDiscovery, VirtualNodeSpec, VirtualServiceBackend,
};
use common::mesh::{agent, sample_app, wait_until};
use common::{service_by_node, WeftServer};
use serde_json::json;
use weft_agent::registration::call;

const SERVICE: &str = "red.apps.local";

/// An HTTP server that answers 503 to every request and counts them.
fn failing_upstream() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    // Read one request head; keep-alive connections carry many.
                    let mut line = String::new();
                    let mut content_length = 0usize;
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            content_length = v.trim().parse().unwrap_or(0);
                        }
                        if h == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; content_length];
                    let _ = std::io::Read::read_exact(&mut reader, &mut body);
                    counter.fetch_add(1, Ordering::Relaxed);
                    let resp = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nbroke";
                    if conn.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_server_errors_eject_an_endpoint_until_the_ejection_time_passes() {
    let server = WeftServer::start();
    let c = server.client();
    let endpoint = server.addr.trim_start_matches("http://").to_string();
    call(
        &endpoint,
        "CreateHttpNamespace",
        json!({"Name": "apps.local"}),
    )
    .await
    .unwrap();
    let ns = call(&endpoint, "ListNamespaces", json!({})).await.unwrap();
    let ns_id = ns["Namespaces"][0]["Id"].as_str().unwrap().to_string();
    let svc = call(
        &endpoint,
        "CreateService",
        json!({"Name": "red", "NamespaceId": ns_id}),
    )
    .await
    .unwrap();
    let service_id = svc["Service"]["Id"].as_str().unwrap().to_string();

    let (_good, good_port) = sample_app("good");
    let (bad_port, bad_hits) = failing_upstream();
    for (id, port) in [("good", good_port), ("bad", bad_port)] {
        call(
            &endpoint,
            "RegisterInstance",
            json!({"ServiceId": service_id, "InstanceId": id, "Attributes": {
                "AWS_INSTANCE_IPV4": "127.0.0.1", "AWS_INSTANCE_PORT": port.to_string()}}),
        )
        .await
        .unwrap();
    }

    c.create_mesh().mesh_name("apps").send().await.unwrap();
    // red: 3 consecutive 5xx eject an endpoint for 3 s, at most half of them.
    let red = VirtualNodeSpec::builder()
        .listeners(
            Listener::builder()
                .port_mapping(
                    PortMapping::builder()
                        .port(8080)
                        .protocol(PortProtocol::Http)
                        .build()
                        .unwrap(),
                )
                .outlier_detection(
                    OutlierDetection::builder()
                        .max_server_errors(3)
                        .interval(
                            Duration::builder()
                                .unit(DurationUnit::Ms)
                                .value(500)
                                .build(),
                        )
                        .base_ejection_duration(
                            Duration::builder().unit(DurationUnit::S).value(3).build(),
                        )
                        .max_ejection_percent(50)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .service_discovery(ServiceDiscovery::AwsCloudMap(
            AwsCloudMapServiceDiscovery::builder()
                .namespace_name("apps.local")
                .service_name("red")
                .build()
                .unwrap(),
        ))
        .build();
    c.create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .spec(red)
        .send()
        .await
        .unwrap();
    c.create_virtual_service()
        .mesh_name("apps")
        .virtual_service_name(SERVICE)
        .spec(service_by_node("red"))
        .send()
        .await
        .unwrap();
    let front_spec = VirtualNodeSpec::builder()
        .backends(Backend::VirtualService(
            VirtualServiceBackend::builder()
                .virtual_service_name(SERVICE)
                .build()
                .unwrap(),
        ))
        .build();
    c.create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("front")
        .spec(front_spec)
        .send()
        .await
        .unwrap();
    let front = agent(&server.xds_addr, "apps", "front", &[], "delta");
    wait_until(
        StdDuration::from_secs(20),
        || matches!(front.get(SERVICE, "/", &[]), Ok((200, b)) if b.contains("good")),
    );

    // Traffic until the failing endpoint is ejected.
    let ejected = || front.stat_sum("outlier_detection.ejections_active");
    let deadline = Instant::now() + StdDuration::from_secs(10);
    while ejected() == 0 {
        assert!(
            Instant::now() < deadline,
            "the failing endpoint was never ejected"
        );
        let _ = front.get(SERVICE, "/", &[]);
    }
    // While ejected, every request goes to the healthy endpoint: 100% success,
    // and the failing one sees nothing.
    let before = bad_hits.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut ok = 0;
    while started.elapsed() < StdDuration::from_millis(1500) {
        let (status, body) = front.get(SERVICE, "/", &[]).unwrap();
        assert_eq!((status, body.trim()), (200, "good"));
        ok += 1;
    }
    assert!(ok > 20, "load ran ({ok} requests)");
    assert_eq!(
        bad_hits.load(Ordering::Relaxed),
        before,
        "an ejected endpoint got traffic"
    );

    // After the base ejection duration it is tried again.
    let deadline = Instant::now() + StdDuration::from_secs(10);
    while bad_hits.load(Ordering::Relaxed) == before {
        assert!(
            Instant::now() < deadline,
            "the endpoint never came back after its ejection time"
        );
        let _ = front.get(SERVICE, "/", &[]);
        std::thread::sleep(StdDuration::from_millis(20));
    }
    let back_after = started.elapsed();
    assert!(
        back_after >= StdDuration::from_millis(1500),
        "{back_after:?}"
    );
    assert_eq!(front.stat_sum("update_rejected"), 0);
}
