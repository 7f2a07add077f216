//! End-to-end: Cloud Map service discovery in the mesh, with a real `weft server`, real
//! `weft agent`s each running a real Envoy 1.40, and real apps (`weft sample-app`).
//!
//! Topology: `front` (client, backend `red.apps.local`) → virtual node `red`, discovered through
//! Cloud Map (`apps.local` / `red`). Every red instance is a sample app behind its own agent and
//! Envoy (explicit mode), which binds red's listener port on the instance's own loopback address
//! (127.0.0.2, 127.0.0.3, …, via `WEFT_LISTEN_ADDRESS`) — as tasks have their own IPs — and is
//! registered with `AWS_INSTANCE_IPV4` = that address and `AWS_INSTANCE_PORT` = the listener port.
//! So a request goes front's Envoy → (EDS endpoint) red instance's Envoy → its app, and the body
//! names the instance that answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aws_sdk_appmesh::types::{
    AwsCloudMapInstanceAttribute, AwsCloudMapServiceDiscovery, Backend, Listener, PortMapping,
    PortProtocol, ServiceDiscovery, VirtualNodeSpec, VirtualServiceBackend,
};
use common::mesh::{agent, agent_with_env, free_port, sample_app, Agent, Proc};
use common::{service_by_node, WeftServer};
use serde_json::{json, Value};
use weft_agent::registration::call;

const SERVICE: &str = "red.apps.local";

/// `red`'s node spec: one HTTP listener on `port`, discovered through Cloud Map with `filters`.
fn red_spec(port: u16, filters: &[(&str, &str)]) -> VirtualNodeSpec {
    let mut discovery = AwsCloudMapServiceDiscovery::builder()
        .namespace_name("apps.local")
        .service_name("red");
    for (key, value) in filters {
        discovery = discovery.attributes(
            AwsCloudMapInstanceAttribute::builder()
                .key(*key)
                .value(*value)
                .build()
                .unwrap(),
        );
    }
    VirtualNodeSpec::builder()
        .listeners(
            Listener::builder()
                .port_mapping(
                    PortMapping::builder()
                        .port(i32::from(port))
                        .protocol(PortProtocol::Http)
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .service_discovery(ServiceDiscovery::AwsCloudMap(discovery.build().unwrap()))
        .build()
}

/// One red instance: its app and its agent (Envoy) on its own loopback address.
struct Instance {
    name: String,
    address: String,
    agent: Agent,
    _app: Proc,
}

/// The registry's API (awsJson 1.1, what Cloud Map clients speak).
struct Registry {
    endpoint: String,
    service_id: String,
}

impl Registry {
    /// Creates namespace `apps.local` and service `red` (with custom health, so that
    /// UpdateInstanceCustomHealthStatus applies).
    async fn create(server: &WeftServer) -> Registry {
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
        let service = call(
            &endpoint,
            "CreateService",
            json!({"Name": "red", "NamespaceId": ns_id, "HealthCheckCustomConfig": {}}),
        )
        .await
        .unwrap();
        Registry {
            endpoint,
            service_id: service["Service"]["Id"].as_str().unwrap().to_string(),
        }
    }

    async fn register(&self, instance: &Instance, port: u16, version: &str) {
        call(
            &self.endpoint,
            "RegisterInstance",
            json!({"ServiceId": self.service_id, "InstanceId": instance.name, "Attributes": {
                "AWS_INSTANCE_IPV4": instance.address, "AWS_INSTANCE_PORT": port.to_string(),
                "version": version}}),
        )
        .await
        .unwrap();
    }

    async fn deregister(&self, instance: &Instance) {
        call(
            &self.endpoint,
            "DeregisterInstance",
            json!({"ServiceId": self.service_id, "InstanceId": instance.name}),
        )
        .await
        .unwrap();
    }

    async fn set_health(&self, instance: &Instance, status: &str) {
        call(
            &self.endpoint,
            "UpdateInstanceCustomHealthStatus",
            json!({"ServiceId": self.service_id, "InstanceId": instance.name, "Status": status}),
        )
        .await
        .unwrap();
    }

    async fn instances(&self) -> Vec<Value> {
        let answer = call(
            &self.endpoint,
            "ListInstances",
            json!({"ServiceId": self.service_id}),
        )
        .await
        .unwrap();
        answer["Instances"].as_array().cloned().unwrap_or_default()
    }
}

/// Starts red instance `name` (app + agent) on loopback `address`; `extra` adds agent settings
/// (self-registration).
fn red_instance(
    server: &WeftServer,
    name: &str,
    address: &str,
    port: u16,
    extra: &[(&str, &str)],
) -> Instance {
    let (app, app_port) = sample_app(name);
    let mut env = vec![("WEFT_LISTEN_ADDRESS", address)];
    env.extend_from_slice(extra);
    let agent = agent_with_env(
        &server.xds_addr,
        "mesh/apps/virtualNode/red",
        &[(port, app_port)],
        "delta",
        &env,
    );
    // Ready once its Envoy forwards to the app on the instance's address.
    wait_for(
        &format!("{name}'s Envoy forwards to its app on {address}:{port}"),
        Duration::from_secs(20),
        || get_at(address, port).is_ok_and(|(status, body)| status == 200 && body.trim() == name),
        || format!("last answer {:?}", get_at(address, port)),
    );
    Instance {
        name: name.to_string(),
        address: address.to_string(),
        agent,
        _app: app,
    }
}

/// Like `wait_until`, but a timeout names what was awaited and the state (`state()`) it
/// ended in, so that a failure explains itself.
fn wait_for(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; {}",
            state()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A GET to `address:port` (the harness's helpers reach 127.0.0.1 only).
fn get_at(address: &str, port: u16) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect((address, port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: red\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad answer {answer:?}")))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Requests through front's Envoy in a loop, counting who answered and every failure.
struct Load {
    counts: Arc<Mutex<HashMap<String, u64>>>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Load {
    fn start(egress_port: u16) -> Load {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counts, failures, stop) = (counts.clone(), failures.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    match common::mesh::request(egress_port, "GET", SERVICE, "/", &[]) {
                        Ok((200, body)) => {
                            *counts
                                .lock()
                                .unwrap()
                                .entry(body.trim().to_string())
                                .or_insert(0) += 1
                        }
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                }
                sent
            })
        };
        Load {
            counts,
            failures,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self, name: &str) -> u64 {
        self.counts.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// Requests each instance received during `window`.
    fn during(&self, window: Duration) -> HashMap<String, u64> {
        let before = self.counts.lock().unwrap().clone();
        std::thread::sleep(window);
        let after = self.counts.lock().unwrap().clone();
        after
            .into_iter()
            .map(|(k, v)| {
                let delta = v - before.get(&k).copied().unwrap_or(0);
                (k, delta)
            })
            .filter(|(_, v)| *v > 0)
            .collect()
    }

    /// Waits until `name` gets no request for a whole 500 ms window (in-flight requests may
    /// still land right after the change), then checks a further second with none.
    fn assert_stops_receiving(&self, name: &str) {
        wait_for(
            &format!("{name} stops receiving"),
            Duration::from_secs(10),
            || !self.during(Duration::from_millis(500)).contains_key(name),
            || {
                format!(
                    "counts {:?}, failures {:?}",
                    self.counts.lock().unwrap(),
                    self.failures()
                )
            },
        );
        let window = self.during(Duration::from_secs(1));
        assert!(
            !window.contains_key(name),
            "{name} still receives: {window:?}"
        );
        assert!(!window.is_empty(), "no traffic at all: {window:?}");
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Who answered `n` requests through front; `None` if any request failed (while waiting for
/// a change to reach Envoy, e.g. before the first instance is registered: no endpoint, 503).
fn try_split(front: &Agent, n: usize) -> Option<HashMap<String, usize>> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        match front.get(SERVICE, "/", &[]) {
            Ok((200, body)) => *counts.entry(body.trim().to_string()).or_insert(0) += 1,
            _ => return None,
        }
    }
    Some(counts)
}

/// Who answered `n` requests through front, all of which must succeed.
fn split(front: &Agent, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (status, body) = front.get(SERVICE, "/", &[]).unwrap();
        assert_eq!(status, 200, "{body}");
        *counts.entry(body.trim().to_string()).or_insert(0) += 1;
    }
    counts
}

/// Waits until `n` requests all succeed and are answered by exactly `expected` (sorted).
fn wait_for_split(front: &Agent, n: usize, expected: &[&str]) {
    wait_for(
        &format!("only {expected:?} answer"),
        Duration::from_secs(10),
        || try_split(front, n).is_some_and(|counts| names(&counts) == expected),
        || format!("last: {:?}", try_split(front, n)),
    );
}

/// The instance ids the registry lists (from a thread outside the test's runtime).
fn registry_ids(registry: &Registry) -> Vec<String> {
    let (endpoint, service_id) = (registry.endpoint.clone(), registry.service_id.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = runtime
            .block_on(call(
                &endpoint,
                "ListInstances",
                json!({"ServiceId": service_id}),
            ))
            .unwrap_or_default();
        answer["Instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| format!("{}", i["Id"]))
            .collect()
    })
    .join()
    .unwrap()
}

fn names(counts: &HashMap<String, usize>) -> Vec<&str> {
    let mut names: Vec<&str> = counts.keys().map(String::as_str).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_map_instances_receive_traffic_filters_select_and_changes_lose_no_request() {
    let server = WeftServer::start();
    let c = server.client();
    let registry = Registry::create(&server).await;
    let port = free_port();
    c.create_mesh().mesh_name("apps").send().await.unwrap();
    c.create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .spec(red_spec(port, &[]))
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
    c.create_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("front")
        .spec(
            VirtualNodeSpec::builder()
                .backends(Backend::VirtualService(
                    VirtualServiceBackend::builder()
                        .virtual_service_name(SERVICE)
                        .build()
                        .unwrap(),
                ))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let front = agent(&server.xds_addr, "apps", "front", &[], "delta");

    // Two instances registered through the API both receive traffic.
    let a = red_instance(&server, "red-a", "127.0.0.2", port, &[]);
    let b = red_instance(&server, "red-b", "127.0.0.3", port, &[]);
    registry.register(&a, port, "v1").await;
    registry.register(&b, port, "v2").await;
    wait_for_split(&front, 20, &["red-a", "red-b"]);
    let counts = split(&front, 200);
    eprintln!("two registered instances: {counts:?}");
    assert_eq!(names(&counts), ["red-a", "red-b"]);
    assert!(
        counts.values().all(|n| *n >= 60),
        "round robin over both: {counts:?}"
    );

    // An attribute filter on the node selects only the matching instance; removing it brings
    // both back.
    c.update_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .spec(red_spec(port, &[("version", "v2")]))
        .send()
        .await
        .unwrap();
    wait_for_split(&front, 20, &["red-b"]);
    assert_eq!(names(&split(&front, 100)), ["red-b"], "version=v2 only");
    c.update_virtual_node()
        .mesh_name("apps")
        .virtual_node_name("red")
        .spec(red_spec(port, &[]))
        .send()
        .await
        .unwrap();
    wait_for_split(&front, 20, &["red-a", "red-b"]);

    // Under continuous load from here on.
    let load = Load::start(front.egress_port);
    wait_for(
        "both instances receive the load",
        Duration::from_secs(5),
        || load.count("red-a") > 0 && load.count("red-b") > 0,
        || {
            format!(
                "counts {:?}, failures {:?}",
                load.counts.lock().unwrap(),
                load.failures()
            )
        },
    );

    // A new instance starts receiving within a second of its registration.
    let c3 = red_instance(&server, "red-c", "127.0.0.4", port, &[]);
    let registered = Instant::now();
    registry.register(&c3, port, "v1").await;
    let deadline = registered + Duration::from_millis(1500);
    while load.count("red-c") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let first_traffic = registered.elapsed();
    eprintln!(
        "red-c: first request {} ms after RegisterInstance returned (polled every 10 ms)",
        first_traffic.as_millis()
    );
    assert!(
        load.count("red-c") > 0,
        "red-c got no traffic within 1.5 s of registering"
    );

    // Deregistered: red-a stops receiving while the others carry the load, with no failure.
    registry.deregister(&a).await;
    load.assert_stops_receiving("red-a");
    assert!(load.failures().is_empty(), "{:?}", load.failures());

    // Unhealthy: red-b stops receiving, with no failure; healthy again, it is back.
    registry.set_health(&b, "UNHEALTHY").await;
    load.assert_stops_receiving("red-b");
    assert!(load.failures().is_empty(), "{:?}", load.failures());
    registry.set_health(&b, "HEALTHY").await;
    wait_for(
        "red-b receives again once healthy",
        Duration::from_secs(5),
        || {
            load.during(Duration::from_millis(200))
                .contains_key("red-b")
        },
        || format!("counts {:?}", load.counts.lock().unwrap()),
    );

    // An instance registered by its own `weft agent` (self-registration) receives traffic.
    let endpoint = registry.endpoint.clone();
    let port_text = port.to_string();
    let d = red_instance(
        &server,
        "red-d",
        "127.0.0.5",
        port,
        &[
            ("WEFT_REGISTER_NAMESPACE", "apps.local"),
            ("WEFT_REGISTER_SERVICE", "red"),
            ("WEFT_INSTANCE_ID", "red-d"),
            ("WEFT_INSTANCE_ADDRESS", "127.0.0.5"),
            ("WEFT_INSTANCE_PORT", &port_text),
            ("WEFT_INSTANCE_ATTRIBUTES", "version=v1"),
            ("WEFT_HEALTH_INTERVAL_MS", "200"),
            ("WEFT_REGISTRY_ENDPOINT", &endpoint),
        ],
    );
    wait_for(
        "the self-registered red-d receives traffic",
        Duration::from_secs(10),
        || load.count("red-d") > 0,
        || {
            format!(
                "counts {:?}, registry {:?}",
                load.counts.lock().unwrap(),
                registry_ids(&registry)
            )
        },
    );
    let listed: Vec<String> = registry
        .instances()
        .await
        .iter()
        .map(|i| i["Id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(listed.contains(&"red-d".to_string()), "{listed:?}");
    let window = load.during(Duration::from_secs(1));
    eprintln!("after self-registration, one second of load: {window:?}");
    let mut receiving: Vec<&str> = window.keys().map(String::as_str).collect();
    receiving.sort();
    assert_eq!(receiving, ["red-b", "red-c", "red-d"]);

    let failures = load.failures();
    let sent = load.stop();
    eprintln!("{sent} requests under load, {} failed", failures.len());
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    for (name, envoy) in [
        ("front", &front),
        ("red-a", &a.agent),
        ("red-b", &b.agent),
        ("red-c", &c3.agent),
        ("red-d", &d.agent),
    ] {
        assert_eq!(
            envoy.stat_sum("update_rejected"),
            0,
            "{name}'s Envoy NACKed config"
        );
    }
}
