//! A DNS server on loopback ports of the kernel's choosing, and clients of
//! it: hickory's resolver, and single DNS messages over UDP and TCP.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use weft_dns::proto::op::{Message, MessageType, OpCode, Query};
use weft_dns::proto::rr::{Name, RData, Record, RecordType};
use weft_dns::{DnsError, Limits, Rdata, RecordSet, RoutingPolicy, Soa, Zone, Zones};

/// How long a test waits for an answer it expects.
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long a test waits to be sure no answer comes.
pub const SILENCE_WAIT: Duration = Duration::from_millis(300);

/// A running server and the means to change what it serves.
pub struct Server {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub zones: watch::Sender<Arc<Zones>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), DnsError>>>,
}

impl Server {
    pub async fn start(zones: Zones) -> Server {
        Server::start_with(zones, Limits::default()).await
    }

    pub async fn start_with(zones: Zones, limits: Limits) -> Server {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let udp_addr = udp.local_addr().unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let (sender, receiver) = watch::channel(Arc::new(zones));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(weft_dns::serve(udp, tcp, receiver, limits, async move {
            let _ = stopped.await;
        }));
        Server {
            udp: udp_addr,
            tcp: tcp_addr,
            zones: sender,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Publishes new zones, as the registry does when an instance
    /// registers, changes health or deregisters.
    pub fn publish(&self, zones: Zones) {
        self.zones.send_replace(Arc::new(zones));
    }

    /// Stops the server and returns what `serve` returned.
    pub async fn stop(mut self) -> Result<(), DnsError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        timeout(ANSWER_WAIT, task).await.unwrap().unwrap()
    }

    /// hickory's resolver pointed at this server alone, with no cache, so
    /// that each lookup asks the server.
    pub fn resolver(&self) -> TokioResolver {
        let mut server = NameServerConfig::udp_and_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST));
        for connection in &mut server.connections {
            connection.port = match connection.protocol {
                ProtocolConfig::Udp => self.udp.port(),
                _ => self.tcp.port(),
            };
        }
        let config = ResolverConfig::from_parts(None, vec![], vec![server]);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let options = builder.options_mut();
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.attempts = 1;
        options.timeout = ANSWER_WAIT;
        // Mixed-case questions (draft-vixie-dnsext-dns0x20): the server must
        // answer them as it answers lower case.
        options.case_randomization = true;
        builder.build().unwrap()
    }

    /// Sends one question over UDP and returns the answer.
    pub async fn ask_udp(&self, name: &str, record_type: RecordType) -> Message {
        let answer = exchange_udp(self.udp, &query(name, record_type).to_vec().unwrap())
            .await
            .expect("an answer over UDP");
        Message::from_vec(&answer).unwrap()
    }

    /// Sends one question over a new TCP connection and returns the answer.
    pub async fn ask_tcp(&self, name: &str, record_type: RecordType) -> Message {
        let mut stream = TcpStream::connect(self.tcp).await.unwrap();
        let answer = exchange_tcp(&mut stream, &query(name, record_type).to_vec().unwrap())
            .await
            .expect("an answer over TCP");
        Message::from_vec(&answer).unwrap()
    }
}

/// A query for `name` (absolute) of `record_type`, without EDNS.
pub fn query(name: &str, record_type: RecordType) -> Message {
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    message
}

/// Sends a datagram from a new socket and waits for one reply.
pub async fn exchange_udp(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    receive_udp(&socket, ANSWER_WAIT).await
}

/// Whether a datagram sent from a new socket goes unanswered.
pub async fn unanswered_udp(server: SocketAddr, bytes: &[u8]) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    receive_udp(&socket, SILENCE_WAIT).await.is_none()
}

/// One datagram, if one comes within `wait`.
pub async fn receive_udp(socket: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    let mut buffer = vec![0_u8; 65_535];
    match timeout(wait, socket.recv(&mut buffer)).await {
        Ok(Ok(len)) => {
            buffer.truncate(len);
            Some(buffer)
        }
        _ => None,
    }
}

/// Sends one length-prefixed message and reads one length-prefixed answer;
/// `None` when the server closes the connection instead.
pub async fn exchange_tcp(stream: &mut TcpStream, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut framed = u16::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.ok()?;
    read_tcp(stream).await
}

/// One length-prefixed message from the server, or `None` at its close.
pub async fn read_tcp(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let len = timeout(ANSWER_WAIT, stream.read_u16()).await.ok()?.ok()?;
    let mut answer = vec![0_u8; usize::from(len)];
    timeout(ANSWER_WAIT, stream.read_exact(&mut answer))
        .await
        .ok()?
        .ok()?;
    Some(answer)
}

/// Whether the server has closed `stream` (reads end) within `wait`.
pub async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut byte = [0_u8; 1];
    matches!(
        timeout(wait, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The IPv4 and IPv6 addresses of `records`, sorted.
pub fn addresses(records: &[Record]) -> Vec<String> {
    let mut found: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    found.sort();
    found
}

/// A Cloud Map instance: an id and its IPv4 address.
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub ipv4: Ipv4Addr,
    pub port: u16,
}

pub fn instance(n: u8) -> Instance {
    Instance {
        id: format!("i-{n}"),
        ipv4: Ipv4Addr::new(10, 0, 0, n),
        port: 8000 + u16::from(n),
    }
}

/// A private DNS namespace `example.local` holding one service,
/// `backend`, whose `DnsConfig` has A and SRV records of TTL 60 under
/// `routing`, as Cloud Map writes them: A records at the service name,
/// SRV records `1 1 <port> <id>.backend.example.local` and each target's A
/// record. No instances means no records, so the name does not exist.
pub fn namespace(routing: RoutingPolicy, instances: &[Instance]) -> Zones {
    let mut zone = Zone::new("example.local", Soa::new(1, weft_dns::CLOUD_MAP_SOA_TTL)).unwrap();
    if !instances.is_empty() {
        let mut records: Vec<Rdata> = instances.iter().map(|i| Rdata::A(i.ipv4)).collect();
        records.extend(instances.iter().map(|i| Rdata::Srv {
            priority: 1,
            weight: 1,
            port: i.port,
            target: format!("{}.backend.example.local", i.id),
        }));
        zone.insert(RecordSet {
            name: "backend.example.local".to_owned(),
            ttl: 60,
            routing,
            records,
        })
        .unwrap();
        for i in instances {
            zone.insert(RecordSet {
                name: format!("{}.backend.example.local", i.id),
                ttl: 60,
                routing: RoutingPolicy::Multivalue,
                records: vec![Rdata::A(i.ipv4)],
            })
            .unwrap();
        }
    }
    let mut zones = Zones::new();
    zones.insert(zone).unwrap();
    zones
}
