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
    assert_eq!(server.health().await.0, 200);

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
