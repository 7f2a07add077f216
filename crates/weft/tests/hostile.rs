//! A real `weft server` against clients that hold connections open, send
//! nothing, or trickle bytes, and against a disk that fails: the server keeps
//! serving well-behaved clients through the AWS SDK, never loses an
//! acknowledged write, and always stops on SIGTERM.
//!
//! Some tests mount file systems (the tests run as root, as the README says).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::disks::FailingDisk;
use common::{dns_node_spec, error_code, WeftServer};

/// Opens `count` TCP connections to `addr` (`host:port`) that send nothing.
fn idle_connections(addr: &str, count: usize) -> Vec<TcpStream> {
    (0..count)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect()
}

fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// Open descriptors of a process, from `/proc`.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Whether the server closed `stream` (a read ends or fails) within `bound`.
fn closed_within(stream: &mut TcpStream, bound: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + bound;
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test]
async fn idle_connection_floods_beyond_the_open_file_limit_never_fail_a_write() {
    // 256 descriptors in all, small log segments so that the store must
    // open new files while the floods hold their connections.
    let mut server = WeftServer::start_with_open_file_limit(
        256,
        &[
            "--store-segment-size",
            "131072",
            "--header-read-timeout",
            "30",
        ],
    );
    let client = server.client();
    client
        .create_mesh()
        .mesh_name("flood")
        .send()
        .await
        .unwrap();

    let api_flood = idle_connections(host_port(&server.addr), 600);
    let xds_flood = idle_connections(&server.xds_addr, 600);
    assert!(
        api_flood.len() > 256,
        "the floods got through the accept queue"
    );
    let held = open_descriptors(server.pid());
    assert!(held <= 256, "the server holds {held} descriptors");

    // A well-behaved client still gets every write through, each durable,
    // while the store switches logs.
    let mut acknowledged = Vec::new();
    for i in 0..150 {
        let name = format!("node-{i:03}");
        let host = format!("{name}.{}.example", "h".repeat(900));
        client
            .create_virtual_node()
            .mesh_name("flood")
            .virtual_node_name(&name)
            .spec(dns_node_spec(&host, 8080))
            .send()
            .await
            .unwrap_or_else(|e| panic!("write {i} during the floods: {e:?}"));
        acknowledged.push(name);
    }
    // A new connection while the floods are being shed may be told 503 "try again shortly"
    // (the listener refuses while a quarter of its cap is still closing); a client retrying as
    // the SDKs do is served.
    let mut health = 0;
    for _ in 0..50 {
        health = server.health().await.0;
        if health == 200 {
            break;
        }
        assert_eq!(health, 503, "only the listener's try-again answer");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(health, 200, "healthy while flooded");

    // The floods end; writes go on, and after a kill -9 every acknowledged
    // one is there.
    drop(api_flood);
    drop(xds_flood);
    client
        .create_virtual_node()
        .mesh_name("flood")
        .virtual_node_name("after")
        .spec(dns_node_spec("after.example", 8080))
        .send()
        .await
        .unwrap();
    acknowledged.push("after".into());
    let dir = server.keep_dir().unwrap();
    server.kill9();
    let server = WeftServer::start_in(&dir.path().join("data"), &[]);
    let client = server.client();
    let mut listed = Vec::new();
    let mut pages = client
        .list_virtual_nodes()
        .mesh_name("flood")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for node in page.unwrap().virtual_nodes() {
            listed.push(node.virtual_node_name().to_string());
        }
    }
    listed.sort();
    acknowledged.sort();
    assert_eq!(listed, acknowledged);
}

#[tokio::test]
async fn at_the_connection_cap_idle_connections_make_room_for_a_client_with_requests() {
    let server = WeftServer::start_with(&["--max-connections", "8"]);
    let client = server.client();
    let _idle = idle_connections(host_port(&server.addr), 50);
    for i in 0..10 {
        client
            .create_mesh()
            .mesh_name(format!("m{i}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} at the cap: {e:?}"));
    }
}

#[tokio::test]
async fn a_connection_that_sends_nothing_or_trickles_its_head_is_closed() {
    let server = WeftServer::start_with(&["--idle-timeout", "1", "--header-read-timeout", "1"]);
    let api = host_port(&server.addr);

    // Silent, on both listeners.
    let mut silent = TcpStream::connect(api).unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)),
        "a silent API connection stays"
    );
    let mut silent_xds = TcpStream::connect(&server.xds_addr).unwrap();
    assert!(
        closed_within(&mut silent_xds, Duration::from_secs(5)),
        "a silent xDS connection stays"
    );

    // A request head sent a byte every 300 ms never completes in time.
    let mut slow = TcpStream::connect(api).unwrap();
    let head =
        b"GET /v20190125/meshes HTTP/1.1\r\nHost: weft\r\nX-Pad: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut cut = false;
    for byte in head {
        if slow.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(cut || closed_within(&mut slow, Duration::from_secs(3)));
    assert!(started.elapsed() < Duration::from_secs(20));

    // A keep-alive connection is closed once idle, after its answers.
    let mut kept = TcpStream::connect(api).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: weft\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 256];
    let n = kept.read(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut kept, Duration::from_secs(5)),
        "an idle keep-alive connection stays"
    );

    // Well-behaved clients are served throughout.
    server.client().list_meshes().send().await.unwrap();
}

#[tokio::test]
async fn sigterm_ends_a_server_whose_disk_has_failed() {
    let disk = FailingDisk::mount("6m");
    let data = disk.path().join("data");
    let mut server = WeftServer::start_in(
        &data,
        &[
            "--store-segment-size",
            "0",
            "--quota",
            "virtual-nodes-per-mesh=100000",
        ],
    );
    let client = server.client_without_retries();
    client
        .create_mesh()
        .mesh_name("doomed")
        .send()
        .await
        .unwrap();
    // Write until the disk fails.
    let mut failure = None;
    for i in 0..20_000 {
        let host = format!("node-{i}.{}.example", "f".repeat(900));
        if let Err(e) = client
            .create_virtual_node()
            .mesh_name("doomed")
            .virtual_node_name(format!("node-{i:05}"))
            .spec(dns_node_spec(&host, 8080))
            .send()
            .await
        {
            failure = Some(error_code(&e));
            break;
        }
    }
    assert_eq!(failure.as_deref(), Some("ServiceUnavailableException"));
    // Out of room, the store is degraded: reads go on.
    let (status, body) = server.health().await;
    assert_eq!((status, body.contains("degraded")), (503, true), "{body}");
    client.list_meshes().send().await.unwrap();
    // Then the device fails for good: the store stops serving.
    disk.break_down();
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0.. {
        // Writes keep trying the disk.
        let _ = client
            .create_virtual_node()
            .mesh_name("doomed")
            .virtual_node_name(format!("late-{i}"))
            .spec(dns_node_spec("late.example", 8080))
            .send()
            .await;
        let (status, body) = server.health().await;
        if body.contains("failed") {
            assert_eq!(status, 503);
            break;
        }
        assert!(Instant::now() < deadline, "the store never failed: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = client.list_meshes().send().await.unwrap_err();
    assert_eq!(error_code(&read), "ServiceUnavailableException");

    server.send_sigterm();
    assert!(
        server.exits_within(Duration::from_secs(5)),
        "SIGTERM did not end the server promptly"
    );
}

/// The server's resident memory, in MiB, from `/proc/PID/status`.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

/// Bytes of every file under `dir`.
fn disk_usage(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A virtual node spec of about `size` bytes of JSON, as large as the API
/// allows a single spec to be: a client policy whose SAN list holds many
/// names of nearly the longest allowed length (254).
fn large_node_spec(variant: usize, size: usize) -> serde_json::Value {
    let names: Vec<String> = (0..size / 250)
        .map(|i| format!("{variant}-{i}-{}", "s".repeat(235)))
        .collect();
    serde_json::json!({
        "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
        "serviceDiscovery": {"dns": {"hostname": format!("big-{variant}.example")}},
        "backendDefaults": {"clientPolicy": {"tls": {"validation": {
            "trust": {"file": {"certificateChain": "/certs/ca.pem"}},
            "subjectAlternativeNames": {"match": {"exact": names}}
        }}}}
    })
}

#[tokio::test]
async fn large_updates_and_token_floods_keep_memory_and_disk_bounded() {
    let server = WeftServer::start();
    let node = "/v20190125/meshes/big/virtualNodes/node".to_string();
    server
        .client()
        .create_mesh()
        .mesh_name("big")
        .send()
        .await
        .unwrap();
    let addr = server.addr.clone();
    let send = |method: reqwest::Method, path: String, body: serde_json::Value| {
        let addr = addr.clone();
        async move {
            let response =
                common::signed_request(&addr, method.as_str(), &path, Some(body), "appmesh").await;
            let status = response.status();
            assert!(
                status.is_success(),
                "{status}: {}",
                response.text().await.unwrap()
            );
        }
    };
    let create = "/v20190125/meshes/big/virtualNodes".to_string();
    send(
        reqwest::Method::PUT,
        create,
        serde_json::json!({"virtualNodeName": "node", "spec": large_node_spec(0, 1_000)}),
    )
    .await;
    // Warm up, then 800 updates of ~240 KB each: 190 MB of writes.
    for v in 1..=20 {
        send(
            reqwest::Method::PUT,
            node.clone(),
            serde_json::json!({"spec": large_node_spec(v, 240_000)}),
        )
        .await;
    }
    let before = rss_mib(server.pid());
    for v in 21..=820 {
        send(
            reqwest::Method::PUT,
            node.clone(),
            serde_json::json!({"spec": large_node_spec(v, 240_000)}),
        )
        .await;
    }
    let after = rss_mib(server.pid());
    eprintln!("800 large updates: RSS {before} -> {after} MiB");
    // The change history is capped at 64 MiB; the rest is the allocator's.
    assert!(
        after.saturating_sub(before) <= 128,
        "800 large updates grew the server from {before} to {after} MiB"
    );

    // 12,000 updates, each with a fresh clientToken, 16 at a time.
    let small = server.client();
    let before = rss_mib(server.pid());
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let client = small.clone();
            tokio::spawn(async move {
                for i in 0..750 {
                    client
                        .update_virtual_node()
                        .mesh_name("big")
                        .virtual_node_name("node")
                        .spec(dns_node_spec(&format!("t{t}-{i}.example"), 8080))
                        .client_token(format!("token-{t}-{i}"))
                        .send()
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let after = rss_mib(server.pid());
    eprintln!("12,000 client tokens: RSS {before} -> {after} MiB");
    assert!(
        after.saturating_sub(before) <= 64,
        "12,000 client tokens grew the server from {before} to {after} MiB"
    );
    let disk = disk_usage(&server.data_dir) >> 20;
    assert!(disk <= 200, "the data folder holds {disk} MiB");
}

#[tokio::test]
async fn a_client_flooding_the_connection_cap_loses_its_own_connections_not_another_clients() {
    let server = WeftServer::start_with(&["--max-connections", "16"]);
    // The quiet client has a keep-alive connection in its pool, idle.
    let quiet = server.client_without_retries();
    quiet.create_mesh().mesh_name("quiet").send().await.unwrap();
    // Another client fills the cap twice over with requests in flight.
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(common::stalled_request(&server.addr, "FLOOD").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The quiet client's pooled connection was not the one closed: its
    // requests go through without a retry.
    for i in 0..5 {
        quiet
            .describe_mesh()
            .mesh_name("quiet")
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} of the quiet client: {e:?}"));
    }
    drop(flood);
}
