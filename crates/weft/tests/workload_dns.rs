//! The workload's DNS resolver (`weft agent --dns-listen`) with real peers: a
//! real `weft server` set up through the official AWS SDKs (App Mesh virtual
//! services, a Cloud Map private DNS namespace with instances), a real
//! `weft agent` (with its Envoy) whose resolver asks that server, an
//! upstream resolver for everything else (a hickory-based server on another
//! loopback port, serving `example.test`), and hickory's resolver asking the
//! agent as an application's stub resolver would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_appmesh::types::{MeshSpec, VirtualServiceSpec};
use aws_sdk_servicediscovery::config::{BehaviorVersion, Region};
use aws_sdk_servicediscovery::types::{DnsConfig, DnsRecord, RecordType as CloudMapRecordType};
use common::mesh::{free_port, Proc};
use common::WeftServer;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;
use weft_dns::mesh::{virtual_ipv4, virtual_ipv6};
use weft_dns::proto::op::{Message, MessageType, Query, ResponseCode};
use weft_dns::proto::rr::{Name, RData, RecordType};
use weft_dns::{Limits, Rdata, RecordSet, RoutingPolicy, Soa, Zone, Zones};

/// How long a test waits for an answer it expects.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure no answer comes.
const SILENCE_WAIT: Duration = Duration::from_millis(300);

/// Binds UDP and TCP on one free loopback port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
}

/// The SRV targets of `_big._tcp.example.test`: long enough that their
/// answer does not fit a 512-octet datagram.
fn big_targets() -> Vec<String> {
    (0..8)
        .map(|i| format!("{}-{i}.{}.example.test", "a".repeat(60), "b".repeat(60)))
        .collect()
}

/// The host's resolver as the agent finds it: a hickory-based server on a
/// loopback port (UDP and TCP) answering `example.test` and refusing the
/// rest.
struct Upstream {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Upstream {
    async fn start() -> Upstream {
        let mut zone = Zone::new("example.test", Soa::new(1, 60)).unwrap();
        let set = |name: &str, records| RecordSet {
            name: name.into(),
            ttl: 60,
            routing: RoutingPolicy::Multivalue,
            records,
        };
        zone.insert(set(
            "www.example.test",
            vec![Rdata::A(Ipv4Addr::new(192, 0, 2, 10))],
        ))
        .unwrap();
        let srv = big_targets()
            .into_iter()
            .enumerate()
            .map(|(i, target)| Rdata::Srv {
                priority: 1,
                weight: 1,
                port: 9000 + i as u16,
                target,
            })
            .collect();
        zone.insert(set("_big._tcp.example.test", srv)).unwrap();
        let mut zones = Zones::new();
        zones.insert(zone).unwrap();
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let (_keep, receiver) = watch::channel(Arc::new(zones));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _keep = _keep;
            weft_dns::serve(udp, tcp, receiver, Limits::default(), async move {
                let _ = stopped.await;
            })
            .await
        });
        Upstream {
            addr,
            stop: Some(stop),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A real `weft agent` for `mesh/demo/virtualNode/front` (explicit mode,
/// free ports, a real Envoy) with its resolver on a free loopback port.
struct Workload {
    _agent: Proc,
    dns: SocketAddr,
}

impl Workload {
    fn start(xds: &str, weft_dns: &str, upstream: SocketAddr) -> Workload {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("agent")
            .env("APPMESH_RESOURCE_ARN", "mesh/demo/virtualNode/front")
            .env("APPMESH_XDS_ENDPOINT", xds)
            .env("ENVOY_ADMIN_ACCESS_PORT", free_port().to_string())
            .env("ENVOY_ADMIN_ACCESS_LOG_FILE", "/dev/null")
            .env("APPMESH_ENVOY_EGRESS_PORT", free_port().to_string())
            .env("APPMESH_ENVOY_INGRESS_PORT", free_port().to_string())
            .env("ENVOY_CONCURRENCY", "1")
            .env("ENVOY_LOG_LEVEL", "warning")
            .env("WEFT_LISTENER_MODE", "explicit")
            .env("LISTENER_DRAIN_WAIT_TIME_S", "0")
            .env("WEFT_ENVOY_STOP_GRACE_S", "2")
            .env("WEFT_AGENT_DNS_LISTEN", "127.0.0.1:0")
            .env("WEFT_AGENT_DNS_SERVER", weft_dns)
            .env("WEFT_AGENT_DNS_UPSTREAM", upstream.to_string())
            .env("WEFT_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn weft agent");
        let stdout = child.stdout.take().unwrap();
        let agent = Proc(child);
        let mut lines = BufReader::new(stdout).lines();
        let dns = loop {
            let line = lines
                .next()
                .expect("weft agent exited before its resolver listened")
                .unwrap();
            if let Some(addr) = line.strip_prefix("weft agent dns listening on ") {
                break addr.parse().unwrap();
            }
        };
        // Keep draining stdout so the agent never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Workload { _agent: agent, dns }
    }
}

/// hickory's resolver asking only `addr`, with no cache, as an
/// application's stub resolver does (UDP, then TCP on truncation).
fn stub(addr: SocketAddr) -> TokioResolver {
    let mut name_server = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut name_server.connections {
        connection.port = addr.port();
    }
    let config = ResolverConfig::from_parts(None, vec![], vec![name_server]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let options = builder.options_mut();
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.attempts = 2;
    options.timeout = Duration::from_secs(3);
    builder.build().unwrap()
}

/// The data `name` has of `record_type` now, rendered, sorted (empty: none).
async fn records(resolver: &TokioResolver, name: &str, record_type: RecordType) -> Vec<String> {
    let mut found: Vec<String> = match resolver.lookup(name, record_type).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter(|r| r.record_type() == record_type)
            .map(|r| match &r.data {
                RData::SRV(srv) => format!("{} {}", srv.target.to_ascii().to_lowercase(), srv.port),
                other => other.to_string(),
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    found.sort();
    found
}

/// Waits (10 s at most) until `name` has exactly `expected`: Weft rebuilds
/// its zones moments after each change.
async fn resolves_to(
    resolver: &TokioResolver,
    name: &str,
    record_type: RecordType,
    expected: &[String],
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = records(resolver, name, record_type).await;
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} {record_type} resolves to {found:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

fn cloud_map(server: &WeftServer) -> aws_sdk_servicediscovery::Client {
    let config = aws_sdk_servicediscovery::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(common::credentials_for(&server.addr))
        .endpoint_url(&server.addr)
        .build();
    aws_sdk_servicediscovery::Client::from_conf(config)
}

/// One query message for `name`, with `id`, recursion desired, no EDNS.
fn query(id: u16, name: &str, record_type: RecordType) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    message.to_vec().unwrap()
}

/// Sends one datagram to `server`; its answer, if one comes in `wait`.
async fn udp_exchange(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buffer = vec![0_u8; 65_535];
    let (len, _) = timeout(wait, socket.recv_from(&mut buffer))
        .await
        .ok()?
        .ok()?;
    Some(Message::from_vec(&buffer[..len]).unwrap())
}

/// One framed message over a fresh TCP connection, and its answer.
async fn tcp_exchange(server: SocketAddr, bytes: &[u8]) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.unwrap();
    let len = timeout(ANSWER_WAIT, stream.read_u16())
        .await
        .unwrap()
        .unwrap();
    let mut answer = vec![0_u8; usize::from(len)];
    stream.read_exact(&mut answer).await.unwrap();
    Message::from_vec(&answer).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_names_and_cloud_map_instances_resolve_through_the_agents_resolver_and_other_names_go_upstream(
) {
    let mut server = WeftServer::start();
    let upstream = Upstream::start().await;
    let workload = Workload::start(&server.xds_addr, &server.dns_addr, upstream.addr);
    let dns = stub(workload.dns);

    // The mesh's virtual services, through the App Mesh SDK.
    let mesh = server.client();
    mesh.create_mesh()
        .mesh_name("demo")
        .spec(MeshSpec::builder().build())
        .send()
        .await
        .unwrap();
    for name in [
        "colors.demo.local",
        "colors.apps.local",
        "shapes.apps.local",
        "api.apps.local",
    ] {
        mesh.create_virtual_service()
            .mesh_name("demo")
            .virtual_service_name(name)
            .spec(VirtualServiceSpec::builder().build())
            .send()
            .await
            .unwrap();
    }
    // A Cloud Map private DNS namespace with an A service, `colors`, and
    // an SRV one, `api`, through the Cloud Map SDK.
    let sd = cloud_map(&server);
    sd.create_private_dns_namespace()
        .name("apps.local")
        .vpc("vpc-1")
        .send()
        .await
        .unwrap();
    let namespace = sd.list_namespaces().send().await.unwrap().namespaces()[0]
        .id()
        .unwrap()
        .to_string();
    let mut services = Vec::new();
    for (name, kind) in [
        ("colors", CloudMapRecordType::A),
        ("api", CloudMapRecordType::Srv),
    ] {
        let record = DnsRecord::builder().r#type(kind).ttl(5).build().unwrap();
        let service = sd
            .create_service()
            .name(name)
            .namespace_id(&namespace)
            .dns_config(DnsConfig::builder().dns_records(record).build().unwrap())
            .send()
            .await
            .unwrap();
        services.push(service.service().unwrap().id().unwrap().to_string());
    }
    let (colors, api) = (&services[0], &services[1]);
    for (service, id, ip, port) in [
        (colors, "red", "10.0.0.1", "8080"),
        (colors, "blue", "10.0.0.2", "8081"),
        (api, "api-1", "10.0.1.1", "50051"),
        (api, "api-2", "10.0.1.2", "50052"),
    ] {
        sd.register_instance()
            .service_id(service)
            .instance_id(id)
            .attributes("AWS_INSTANCE_IPV4", ip)
            .attributes("AWS_INSTANCE_PORT", port)
            .send()
            .await
            .unwrap();
    }

    // A virtual service name resolves to its virtual IPs, with no record
    // anywhere but the mesh.
    let vip4 = virtual_ipv4("colors.demo.local");
    let vip6 = virtual_ipv6("colors.demo.local");
    resolves_to(&dns, "colors.demo.local.", RecordType::A, &strings(&[vip4])).await;
    resolves_to(
        &dns,
        "colors.demo.local.",
        RecordType::AAAA,
        &strings(&[vip6]),
    )
    .await;
    // Every replica and restart of Weft gives the same addresses: they are
    // the name's, not the server's.
    assert_eq!(vip4.octets()[..2], [240, 240]);
    assert_eq!(vip6.segments()[..2], [0xfd00, 0x77ef]);

    // Cloud Map's instances answer A and SRV, and inside the namespace its
    // own addresses win over the virtual IP of a virtual service of the
    // same name; a virtual service it has no records for gets its VIP.
    resolves_to(
        &dns,
        "colors.apps.local.",
        RecordType::A,
        &strings(&["10.0.0.1", "10.0.0.2"]),
    )
    .await;
    resolves_to(
        &dns,
        "api.apps.local.",
        RecordType::SRV,
        &strings(&["api-1.api.apps.local. 50051", "api-2.api.apps.local. 50052"]),
    )
    .await;
    resolves_to(
        &dns,
        "api-2.api.apps.local.",
        RecordType::A,
        &strings(&["10.0.1.2"]),
    )
    .await;
    // The SRV service's name has no address of Cloud Map's: the virtual
    // service of that name gives it its VIP.
    resolves_to(
        &dns,
        "api.apps.local.",
        RecordType::A,
        &strings(&[virtual_ipv4("api.apps.local")]),
    )
    .await;
    resolves_to(
        &dns,
        "shapes.apps.local.",
        RecordType::A,
        &strings(&[virtual_ipv4("shapes.apps.local")]),
    )
    .await;
    // A name in the namespace that nothing has is NXDOMAIN from Weft.
    let missing = dns.lookup("nothing.apps.local.", RecordType::A).await;
    assert!(missing.unwrap_err().is_nx_domain());

    // Everything else is the upstream's: its records, its NXDOMAIN.
    resolves_to(
        &dns,
        "www.example.test.",
        RecordType::A,
        &strings(&["192.0.2.10"]),
    )
    .await;
    let missing = dns.lookup("nothing.example.test.", RecordType::A).await;
    assert!(missing.unwrap_err().is_nx_domain());
    // Names beside a virtual service's are not claimed by Weft: they go upstream.
    let beside = dns.lookup("shapes.demo.local.", RecordType::A).await;
    assert!(!beside.unwrap_err().is_nx_domain());

    // Upstream's answer comes back as upstream gave it: same id, flags and
    // records as when upstream is asked directly.
    let bytes = query(0x5eed, "www.example.test.", RecordType::A);
    let direct = udp_exchange(upstream.addr, &bytes, ANSWER_WAIT)
        .await
        .unwrap();
    let through = udp_exchange(workload.dns, &bytes, ANSWER_WAIT)
        .await
        .unwrap();
    assert_eq!(through.metadata, direct.metadata);
    assert_eq!(through.metadata.id, 0x5eed);
    assert_eq!(through.answers, direct.answers);

    // A truncated UDP answer is passed on truncated; over TCP the resolver
    // fetches it whole from upstream over TCP.
    let bytes = query(7, "_big._tcp.example.test.", RecordType::SRV);
    let udp = udp_exchange(workload.dns, &bytes, ANSWER_WAIT)
        .await
        .unwrap();
    assert!(udp.metadata.truncation);
    let tcp = tcp_exchange(workload.dns, &bytes).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.metadata.id, 7);
    assert_eq!(tcp.answers.len(), big_targets().len());
    // And hickory's stub resolver, which retries over TCP, gets them all.
    assert_eq!(
        records(&dns, "_big._tcp.example.test.", RecordType::SRV)
            .await
            .len(),
        big_targets().len()
    );

    // A deregistered instance disappears.
    for (service, id) in [(colors, "blue"), (api, "api-1")] {
        sd.deregister_instance()
            .service_id(service)
            .instance_id(id)
            .send()
            .await
            .unwrap();
    }
    resolves_to(
        &dns,
        "colors.apps.local.",
        RecordType::A,
        &strings(&["10.0.0.1"]),
    )
    .await;
    resolves_to(
        &dns,
        "api.apps.local.",
        RecordType::SRV,
        &strings(&["api-2.api.apps.local. 50052"]),
    )
    .await;
    resolves_to(&dns, "api-1.api.apps.local.", RecordType::A, &[]).await;
    // A deleted virtual service stops resolving.
    mesh.delete_virtual_service()
        .mesh_name("demo")
        .virtual_service_name("colors.demo.local")
        .send()
        .await
        .unwrap();
    resolves_to(&dns, "colors.demo.local.", RecordType::A, &[]).await;

    // With Weft gone, names still resolve upstream.
    server.kill9();
    resolves_to(
        &dns,
        "www.example.test.",
        RecordType::A,
        &strings(&["192.0.2.10"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_get_formerr_or_nothing_and_the_agents_resolver_keeps_answering() {
    let server = WeftServer::start();
    let upstream = Upstream::start().await;
    let workload = Workload::start(&server.xds_addr, &server.dns_addr, upstream.addr);
    let good = query(42, "www.example.test.", RecordType::A);
    let answers = |message: &Message| {
        message.metadata.id == 42
            && message.metadata.response_code == ResponseCode::NoError
            && message.answers.len() == 1
    };
    assert!(answers(
        &udp_exchange(workload.dns, &good, ANSWER_WAIT)
            .await
            .unwrap()
    ));

    // A header followed by garbage: FORMERR with the query's id.
    let mut garbage = vec![0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0x3f, 0xff, 0xff, 0xff, 0x00, 0x01]);
    let answer = udp_exchange(workload.dns, &garbage, ANSWER_WAIT)
        .await
        .expect("FORMERR");
    assert_eq!(answer.metadata.id, 0xbeef);
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
    // Less than a header, random bytes and responses: FORMERR or nothing.
    assert!(udp_exchange(workload.dns, &[1, 2, 3, 4, 5], SILENCE_WAIT)
        .await
        .is_none());
    let mut response = Message::from_vec(&good).unwrap();
    response.metadata.message_type = MessageType::Response;
    assert!(
        udp_exchange(workload.dns, &response.to_vec().unwrap(), SILENCE_WAIT)
            .await
            .is_none()
    );
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..200 {
        let bytes: Vec<u8> = (0..(round % 64 + 1))
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&bytes, workload.dns).await.unwrap();
        let mut buffer = [0_u8; 4096];
        if let Ok(Ok((len, _))) =
            timeout(Duration::from_millis(20), socket.recv_from(&mut buffer)).await
        {
            // Whatever comes back is a response to that id, never an answer
            // to a question that was not asked well.
            let answer = Message::from_vec(&buffer[..len]).unwrap();
            assert_eq!(answer.metadata.message_type, MessageType::Response);
            assert!(bytes.len() >= 12);
            assert_eq!(answer.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
        }
    }

    // TCP: a huge length prefix with a few octets behind it holds only its
    // own connection; a prefix shorter than a header closes it.
    let mut stalled = TcpStream::connect(workload.dns).await.unwrap();
    stalled.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    let mut short = TcpStream::connect(workload.dns).await.unwrap();
    short.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5]).await.unwrap();
    let mut rest = Vec::new();
    let closed = timeout(ANSWER_WAIT, short.read_to_end(&mut rest)).await;
    // Closed (reset, as its unread octets are dropped), with no answer.
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
    // Garbage framed over TCP: FORMERR.
    let answer = tcp_exchange(workload.dns, &garbage).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);

    // The resolver keeps answering good queries, over both transports.
    assert!(answers(
        &udp_exchange(workload.dns, &good, ANSWER_WAIT)
            .await
            .unwrap()
    ));
    assert!(answers(&tcp_exchange(workload.dns, &good).await));
    drop(stalled);
}
