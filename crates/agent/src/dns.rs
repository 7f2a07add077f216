//! The workload's DNS resolver (the role of Istio's DNS proxying and of
//! Consul DNS): the application's queries go to it (`nameserver` in the
//! workload's `resolv.conf`), and it
//!
//! - asks Weft's DNS server first, which answers the meshes' virtual
//!   service names (each with a virtual IP, so an application's call to
//!   `http://colors.demo.local:8080` resolves with no DNS record of its
//!   own) and the names of Cloud Map's DNS namespaces;
//! - uses Weft's answer when it is authoritative: records, NODATA or
//!   NXDOMAIN inside Weft's zones;
//! - else (Weft refuses: not its name; or Weft cannot be reached) forwards
//!   the query to the host's upstream resolvers, over UDP and, when a TCP
//!   client's answer comes back truncated, over TCP, and returns the answer
//!   as it came (same flags and sections, the client's id).
//!
//! Messages are parsed and built by hickory-proto; what is passed on is the
//! bytes as received, only the 16-bit id replaced on the way out (a random
//! one, so that answers cannot be forged by guessing the client's) and put
//! back on the way in.
//!
//! Bounded: each query has a deadline (then SERVFAIL), at most
//! [`Limits::max_in_flight`] queries are resolved at once (past it UDP
//! queries are dropped, as a busy server's socket would, and TCP ones get
//! SERVFAIL), TCP connections are capped and time out when idle, and there
//! is no queue but the sockets' own buffers. A message that does not parse
//! gets FORMERR, or nothing when it is too short to have an id; either way
//! the resolver goes on answering. The UDP and TCP serving is weft-dns's
//! [`transport`], the same as Weft's DNS server's, under these bounds.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, info, warn};
use weft_dns::transport::{self, frame, InFlight, Protocol, Respond, HEADER_LEN};

use crate::config::XdsEndpoint;
use crate::error::AgentError;

/// The port of Weft's DNS server unless told otherwise: `weft server
/// --dns-listen`'s default.
pub const WEFT_DNS_PORT: u16 = 8600;

/// The port of upstream resolvers given without one, and of `resolv.conf`'s.
pub const DNS_PORT: u16 = 53;

/// The file the host's resolvers are read from when none is given.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The UDP payload a query without EDNS may receive (RFC 1035 §4.2.1).
const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// The payload this resolver offers in the OPT record of the answers it
/// makes itself (DNS Flag Day 2020, <https://www.dnsflagday.net/2020/>).
const OWN_UDP_PAYLOAD: u16 = 1232;

const LISTEN: &str = "WEFT_DNS_LISTEN (--dns-listen)";
const SERVER: &str = "WEFT_AGENT_DNS_SERVER (--dns-server)";
const UPSTREAM: &str = "WEFT_AGENT_DNS_UPSTREAM (--dns-upstream)";

/// Flags and variables of the workload's resolver (off unless
/// `--dns-listen` is given).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DnsArgs {
    /// Serve the workload's DNS on this address, UDP and TCP (e.g.
    /// 127.0.0.1:53 in the workload's network namespace, with `nameserver
    /// 127.0.0.1` in its resolv.conf; port 0 picks a free port, printed on
    /// stdout). Off when unset.
    #[arg(
        long = "dns-listen",
        env = "WEFT_AGENT_DNS_LISTEN",
        value_name = "ADDR"
    )]
    pub dns_listen: Option<SocketAddr>,
    /// Weft's DNS server, host:port (default: the xDS endpoint's host, port 8600).
    #[arg(
        long = "dns-server",
        env = "WEFT_AGENT_DNS_SERVER",
        value_name = "HOST:PORT"
    )]
    pub dns_server: Option<String>,
    /// Where names Weft does not answer go: addresses, comma-separated, each
    /// `IP` (port 53) or `IP:PORT` (default: the nameservers of
    /// /etc/resolv.conf other than this resolver).
    #[arg(
        long = "dns-upstream",
        env = "WEFT_AGENT_DNS_UPSTREAM",
        value_name = "ADDR,..."
    )]
    pub dns_upstream: Option<String>,
}

/// Where Weft's DNS server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeftDns {
    /// An address.
    Address(SocketAddr),
    /// A host name, resolved through the upstream resolvers (the system's
    /// resolver may be this one), again every minute.
    Name {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl WeftDns {
    fn from_endpoint(endpoint: &XdsEndpoint) -> Self {
        match endpoint.host.parse::<IpAddr>() {
            Ok(ip) => WeftDns::Address(SocketAddr::new(ip, endpoint.port)),
            Err(_) => WeftDns::Name {
                host: endpoint.host.clone(),
                port: endpoint.port,
            },
        }
    }
}

/// Bounds of the resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Queries resolved at once; past it UDP queries are dropped (the
    /// client asks again) and TCP ones get SERVFAIL.
    pub max_in_flight: usize,
    /// TCP connections held open at once; past it new ones are closed.
    pub max_tcp_connections: usize,
    /// A TCP connection that sends no complete message for this long is
    /// closed.
    pub tcp_idle_timeout: Duration,
    /// How long one query may take in all; then the client gets SERVFAIL.
    /// Under glibc's 5 s, so that an application hears SERVFAIL rather than
    /// nothing.
    pub query_deadline: Duration,
    /// How long Weft's DNS server has to answer one query.
    pub weft_timeout: Duration,
    /// After Weft's DNS server fails to answer, how long queries go
    /// straight to the upstream resolvers before Weft is asked again.
    pub weft_retry_after: Duration,
    /// How long one upstream resolver has to answer before the next is
    /// asked (the last one has what is left of the deadline).
    pub upstream_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 256,
            max_tcp_connections: 64,
            tcp_idle_timeout: Duration::from_secs(10),
            query_deadline: Duration::from_secs(4),
            weft_timeout: Duration::from_secs(1),
            weft_retry_after: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(2),
        }
    }
}

/// A validated resolver configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Where the resolver listens (UDP and TCP).
    pub listen: SocketAddr,
    /// Weft's DNS server.
    pub weft: WeftDns,
    /// The upstream resolvers, asked in order.
    pub upstreams: Vec<SocketAddr>,
    /// Bounds.
    pub limits: Limits,
}

impl DnsArgs {
    /// The resolver these flags ask for, if any; `xds` gives Weft's host
    /// when `--dns-server` is not set. Reads /etc/resolv.conf when
    /// `--dns-upstream` is not set.
    pub fn resolver(&self, xds: &XdsEndpoint) -> Result<Option<ResolverConfig>, AgentError> {
        let Some(listen) = self.dns_listen else {
            return Ok(None);
        };
        let weft = match &self.dns_server {
            Some(text) => {
                let endpoint: XdsEndpoint = text.trim().parse().map_err(|_| {
                    AgentError::config(
                        SERVER,
                        format!(
                            "{text:?} is not host:port (e.g. 10.0.0.5:8600 or weft.internal:8600)"
                        ),
                    )
                })?;
                WeftDns::from_endpoint(&endpoint)
            }
            None => WeftDns::from_endpoint(&XdsEndpoint {
                host: xds.host.clone(),
                port: WEFT_DNS_PORT,
            }),
        };
        if let WeftDns::Address(addr) = weft {
            if is_self(addr, listen) {
                return Err(AgentError::config(
                    SERVER,
                    format!("{addr} is this resolver's own address ({LISTEN} is {listen})"),
                ));
            }
        }
        let upstreams = match &self.dns_upstream {
            Some(text) => {
                let upstreams =
                    parse_upstreams(text).map_err(|m| AgentError::config(UPSTREAM, m))?;
                if let Some(own) = upstreams.iter().find(|u| is_self(**u, listen)) {
                    return Err(AgentError::config(
                        UPSTREAM,
                        format!("{own} is this resolver's own address ({LISTEN} is {listen}): queries would loop"),
                    ));
                }
                upstreams
            }
            None => {
                let text = std::fs::read_to_string(RESOLV_CONF).map_err(|e| {
                    AgentError::io(
                        format!("reading {RESOLV_CONF} for the upstream resolvers"),
                        e,
                    )
                })?;
                let all = resolv_conf_nameservers(&text);
                let (own, upstreams): (Vec<_>, Vec<_>) =
                    all.into_iter().partition(|u| is_self(*u, listen));
                for own in own {
                    info!(nameserver = %own, "{RESOLV_CONF} names this resolver: not used as an upstream");
                }
                upstreams
            }
        };
        if upstreams.is_empty() {
            return Err(AgentError::config(
                UPSTREAM,
                format!("no upstream resolver: {RESOLV_CONF} names none other than this resolver; set {UPSTREAM}"),
            ));
        }
        Ok(Some(ResolverConfig {
            listen,
            weft,
            upstreams,
            limits: Limits::default(),
        }))
    }
}

/// `10.0.0.2, 10.0.0.3:5353, [fd00::1]:53, fd00::2` → addresses (port 53
/// when none is given).
pub fn parse_upstreams(text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut upstreams = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let addr = match item.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => match item.parse::<IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, DNS_PORT),
                Err(_) => {
                    return Err(format!(
                        "{item:?} is not an IP address or IP:PORT (e.g. 10.0.0.2 or 10.0.0.2:53 or [fd00::2]:53)"
                    ))
                }
            },
        };
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(format!("{item:?} cannot be asked"));
        }
        if !upstreams.contains(&addr) {
            upstreams.push(addr);
        }
    }
    if upstreams.is_empty() {
        return Err("no address given".to_owned());
    }
    Ok(upstreams)
}

/// The `nameserver` addresses of a resolv.conf (resolv.conf(5)), port 53,
/// in order. An IPv6 zone (`fe80::1%eth0`) is dropped with the address:
/// a socket address cannot carry it by name.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    let mut found = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        let addr = SocketAddr::new(ip, DNS_PORT);
        if !found.contains(&addr) {
            found.push(addr);
        }
    }
    found
}

/// Whether asking `addr` would ask the resolver listening on `listen`: the
/// same address, or a loopback one when the resolver listens on every
/// address of its family.
pub fn is_self(addr: SocketAddr, listen: SocketAddr) -> bool {
    if addr.port() != listen.port() {
        return false;
    }
    addr.ip() == listen.ip()
        || (listen.ip().is_unspecified() && addr.ip().is_loopback())
        || (listen.ip().is_loopback() && addr.ip().is_unspecified())
}

/// What a received message calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspected {
    /// Nothing: shorter than a header (no id to answer), or itself a
    /// response (answering responses lets two servers bounce forever).
    Drop,
    /// This answer, made here: FORMERR for a message that does not parse
    /// or asks more or less than one question (RFC 9619), NOTIMP for
    /// opcodes other than QUERY.
    Reply(Vec<u8>),
    /// A well-formed query, to resolve.
    Resolve(Box<Message>),
}

/// Looks at one received message. Pure.
pub fn inspect(message: &[u8]) -> Inspected {
    if message.len() < HEADER_LEN {
        return Inspected::Drop;
    }
    let Ok(header) = Header::read(&mut BinDecoder::new(message)) else {
        return Inspected::Drop;
    };
    let metadata = header.metadata;
    if metadata.message_type == MessageType::Response {
        return Inspected::Drop;
    }
    let reply = |code| match Message::error_msg(metadata.id, metadata.op_code, code).to_vec() {
        Ok(bytes) => Inspected::Reply(bytes),
        Err(_) => Inspected::Drop,
    };
    let query = match Message::from_vec(message) {
        Ok(query) => query,
        Err(error) => {
            debug!(%error, "malformed DNS query");
            return reply(ResponseCode::FormErr);
        }
    };
    if metadata.op_code != OpCode::Query {
        return reply(ResponseCode::NotImp);
    }
    if query.queries.len() != 1 {
        return reply(ResponseCode::FormErr);
    }
    Inspected::Resolve(Box::new(query))
}

/// Whether Weft's answer is the answer: authoritative, with records,
/// NODATA or NXDOMAIN. Anything else (REFUSED for a name outside Weft's
/// zones, an error) sends the query upstream. Pure.
pub fn weft_answers(response: &Message) -> bool {
    response.metadata.authoritative
        && matches!(
            response.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        )
}

/// SERVFAIL for `query`: its id and question, recursion as asked and
/// available, an OPT record when the query had one. Pure.
pub fn servfail(query: &Message) -> Option<Vec<u8>> {
    let metadata = &query.metadata;
    let mut answer = Message::error_msg(metadata.id, metadata.op_code, ResponseCode::ServFail);
    answer.metadata.recursion_desired = metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.metadata.checking_disabled = metadata.checking_disabled;
    answer.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(OWN_UDP_PAYLOAD);
        answer.set_edns(edns);
    }
    answer.to_vec().ok()
}

/// Puts `id` in a message's first two octets, its id.
fn set_id(message: &mut [u8], id: u16) {
    if let Some(slot) = message.get_mut(..2) {
        slot.copy_from_slice(&id.to_be_bytes());
    }
}

/// A query on its way out: the client's bytes under a fresh id.
struct Outgoing {
    id: u16,
    bytes: Vec<u8>,
    queries: Vec<Query>,
    /// The largest UDP answer the client may receive, so the buffer that
    /// receives upstream's answer takes all of it.
    udp_payload: u16,
}

impl Outgoing {
    fn new(message: &[u8], query: &Message) -> Self {
        let id = rand::random::<u16>();
        let mut bytes = message.to_vec();
        set_id(&mut bytes, id);
        Outgoing {
            id,
            bytes,
            queries: query.queries.clone(),
            udp_payload: query.edns.as_ref().map_or(CLASSIC_UDP_PAYLOAD, |e| {
                e.max_payload().max(CLASSIC_UDP_PAYLOAD)
            }),
        }
    }

    /// Whether `bytes` answer this query: a response with its id, asking
    /// its question (or none, as some errors are sent).
    fn answered_by(&self, bytes: &[u8]) -> Option<Message> {
        let message = Message::from_vec(bytes).ok()?;
        let metadata = &message.metadata;
        (metadata.message_type == MessageType::Response
            && metadata.id == self.id
            && (message.queries.is_empty() || message.queries == self.queries))
            .then_some(message)
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no answer in time")
}

/// One UDP exchange with `server` from a fresh socket (a fresh source
/// port), ignoring datagrams that do not answer the query.
async fn exchange_udp(
    server: SocketAddr,
    query: &Outgoing,
    until: Instant,
) -> io::Result<(Vec<u8>, Message)> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    timeout_at(until, socket.send(&query.bytes))
        .await
        .map_err(|_| timed_out())??;
    let mut buffer = vec![0_u8; usize::from(query.udp_payload)];
    loop {
        let len = timeout_at(until, socket.recv(&mut buffer))
            .await
            .map_err(|_| timed_out())??;
        if let Some(answer) = buffer.get(..len).and_then(|b| query.answered_by(b)) {
            return Ok((buffer[..len].to_vec(), answer));
        }
        debug!(%server, "DNS datagram ignored: not an answer to the query");
    }
}

/// One TCP exchange with `server`: the query and its answer, each framed by
/// a two-octet length (RFC 1035 §4.2.2).
async fn exchange_tcp(
    server: SocketAddr,
    query: &Outgoing,
    until: Instant,
) -> io::Result<(Vec<u8>, Message)> {
    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        let framed = frame(&query.bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut answer = vec![0_u8; usize::from(len)];
        stream.read_exact(&mut answer).await?;
        match query.answered_by(&answer) {
            Some(message) => Ok((answer, message)),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not an answer to the query",
            )),
        }
    };
    timeout_at(until, exchange).await.map_err(|_| timed_out())?
}

/// UDP, then TCP when the answer is truncated and the client came over TCP
/// (over UDP, a truncated answer is passed on truncated, and the client asks
/// again over TCP: RFC 7766 §5).
async fn exchange(
    server: SocketAddr,
    query: &Outgoing,
    protocol: Protocol,
    until: Instant,
) -> io::Result<(Vec<u8>, Message)> {
    let answer = exchange_udp(server, query, until).await?;
    if answer.1.metadata.truncation && protocol == Protocol::Tcp {
        return exchange_tcp(server, query, until).await;
    }
    Ok(answer)
}

/// The resolver's state: where Weft's DNS is, the upstream resolvers, and
/// when Weft last failed.
#[derive(Debug)]
pub struct Resolver {
    weft: watch::Receiver<Option<SocketAddr>>,
    upstreams: Vec<SocketAddr>,
    limits: Limits,
    /// Until when Weft is not asked, after it failed to answer.
    weft_resting_until: Mutex<Option<Instant>>,
}

impl Resolver {
    /// A resolver asking the Weft DNS server published on `weft` (none:
    /// not known yet) and then `upstreams`.
    pub fn new(
        weft: watch::Receiver<Option<SocketAddr>>,
        upstreams: Vec<SocketAddr>,
        limits: Limits,
    ) -> Self {
        Resolver {
            weft,
            upstreams,
            limits,
            weft_resting_until: Mutex::new(None),
        }
    }

    /// The answer to one received message, or `None` when it gets none.
    pub async fn answer(&self, message: &[u8], protocol: Protocol) -> Option<Vec<u8>> {
        let query = match inspect(message) {
            Inspected::Drop => return None,
            Inspected::Reply(bytes) => return Some(bytes),
            Inspected::Resolve(query) => query,
        };
        let until = Instant::now() + self.limits.query_deadline;
        let outgoing = Outgoing::new(message, &query);
        let resolved = async {
            match self.ask_weft(&outgoing, protocol, until).await {
                Some(answer) => Some(answer),
                None => self.ask_upstreams(&outgoing, protocol, until).await,
            }
        };
        match timeout_at(until, resolved).await {
            Ok(Some(mut answer)) => {
                set_id(&mut answer, query.metadata.id);
                Some(answer)
            }
            _ => servfail(&query),
        }
    }

    /// SERVFAIL for a well-formed query the resolver has no room for; what
    /// [`Resolver::answer`] gives anything else.
    pub fn answer_busy(message: &[u8]) -> Option<Vec<u8>> {
        match inspect(message) {
            Inspected::Drop => None,
            Inspected::Reply(bytes) => Some(bytes),
            Inspected::Resolve(query) => servfail(&query),
        }
    }

    fn weft_resting(&self) -> bool {
        self.weft_resting_until
            .lock()
            .is_ok_and(|until| until.is_some_and(|until| Instant::now() < until))
    }

    fn rest_weft(&self) {
        if let Ok(mut until) = self.weft_resting_until.lock() {
            *until = Some(Instant::now() + self.limits.weft_retry_after);
        }
    }

    /// Weft's answer, when it is the answer.
    async fn ask_weft(
        &self,
        query: &Outgoing,
        protocol: Protocol,
        until: Instant,
    ) -> Option<Vec<u8>> {
        let server = (*self.weft.borrow())?;
        if self.weft_resting() {
            return None;
        }
        let weft_until = until.min(Instant::now() + self.limits.weft_timeout);
        match exchange(server, query, protocol, weft_until).await {
            Ok((bytes, answer)) => weft_answers(&answer).then_some(bytes),
            Err(error) => {
                debug!(%server, %error, "Weft's DNS server did not answer; asking upstream");
                self.rest_weft();
                None
            }
        }
    }

    /// The first upstream answer that is not SERVFAIL, REFUSED or NOTIMP
    /// (then the next upstream is asked); the last such when every one
    /// gave one.
    async fn ask_upstreams(
        &self,
        query: &Outgoing,
        protocol: Protocol,
        until: Instant,
    ) -> Option<Vec<u8>> {
        let mut fallback = None;
        let count = self.upstreams.len();
        for (i, &upstream) in self.upstreams.iter().enumerate() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            let attempt_until = if i + 1 == count {
                until
            } else {
                until.min(now + self.limits.upstream_timeout)
            };
            match exchange(upstream, query, protocol, attempt_until).await {
                Ok((bytes, answer)) => match answer.metadata.response_code {
                    ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp => {
                        fallback = Some(bytes);
                    }
                    _ => return Some(bytes),
                },
                Err(error) => debug!(%upstream, %error, "upstream resolver did not answer"),
            }
        }
        fallback
    }

    /// Resolves `host` through the upstream resolvers: its first IPv4
    /// address, else its first IPv6 one.
    async fn lookup_upstream(&self, host: &str) -> Option<IpAddr> {
        let mut name = Name::from_ascii(host).ok()?;
        name.set_fqdn(true);
        for record_type in [RecordType::A, RecordType::AAAA] {
            let mut query = Message::query();
            query.metadata.recursion_desired = true;
            query.add_query(Query::query(name.clone(), record_type));
            let Ok(bytes) = query.to_vec() else {
                continue;
            };
            let outgoing = Outgoing::new(&bytes, &query);
            let until = Instant::now() + self.limits.query_deadline;
            let Some(answer) = self.ask_upstreams(&outgoing, Protocol::Tcp, until).await else {
                continue;
            };
            let Ok(answer) = Message::from_vec(&answer) else {
                continue;
            };
            let found = answer.answers.iter().find_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            });
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

impl Respond for Resolver {
    async fn respond(
        &self,
        message: &[u8],
        _src: SocketAddr,
        protocol: Protocol,
    ) -> Option<Vec<u8>> {
        self.answer(message, protocol).await
    }

    fn busy(&self, message: &[u8]) -> Option<Vec<u8>> {
        Resolver::answer_busy(message)
    }
}

/// Binds the resolver's UDP socket and TCP listener on one address; with
/// port 0, on one free port for both (a few tries).
pub async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), AgentError> {
    let context = || format!("binding {addr} (the workload's DNS resolver, {LISTEN})");
    let mut tries = if addr.port() == 0 { 8 } else { 1 };
    loop {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| AgentError::io(context(), e))?;
        let bound = udp.local_addr().map_err(|e| AgentError::io(context(), e))?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(_) if tries > 1 => tries -= 1,
            Err(e) => return Err(AgentError::io(context(), e)),
        }
    }
}

/// A resolver running in the background.
#[derive(Debug)]
pub struct RunningResolver {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: JoinSet<()>,
}

impl RunningResolver {
    /// Stops answering and waits for the resolver's tasks to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Binds and starts the resolver `config` describes: returns once it
/// listens. A Weft DNS server given by name is looked up through the
/// upstream resolvers, again every minute (every 5 s until found).
pub async fn start(config: ResolverConfig) -> Result<RunningResolver, AgentError> {
    let (udp, tcp) = bind(config.listen).await?;
    let addr = udp
        .local_addr()
        .map_err(|e| AgentError::io("reading the DNS resolver's address", e))?;
    let (weft_tx, weft_rx) = watch::channel(match &config.weft {
        WeftDns::Address(addr) => Some(*addr),
        WeftDns::Name { .. } => None,
    });
    let resolver = Arc::new(Resolver::new(weft_rx, config.upstreams, config.limits));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut tasks = JoinSet::new();
    if let WeftDns::Name { host, port } = config.weft {
        let resolver = Arc::clone(&resolver);
        tasks.spawn(async move {
            loop {
                let found = resolver.lookup_upstream(&host).await;
                match found {
                    Some(ip) => {
                        weft_tx.send_if_modified(|current| {
                            let new = Some(SocketAddr::new(ip, port));
                            let changed = *current != new;
                            *current = new;
                            changed
                        });
                    }
                    None => {
                        warn!(%host, "Weft's DNS server name does not resolve upstream; retrying")
                    }
                }
                let wait = if found.is_some() { 60 } else { 5 };
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
        });
    }
    tasks.spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        if let Err(error) = serve(udp, tcp, resolver, config.limits, stopped).await {
            warn!(%error, "the workload's DNS resolver ended with an error");
        }
    });
    Ok(RunningResolver {
        addr,
        stop: Some(stop),
        tasks,
    })
}

/// Serves `resolver` on `udp` and `tcp` until `shutdown` completes, with
/// weft-dns's transport under the resolver's [`Limits`]. Errors only when
/// a socket fails for good; a bad packet or a broken connection costs only
/// itself.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    resolver: Arc<Resolver>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let bounds = transport::Limits {
        in_flight: InFlight::AtMost(limits.max_in_flight),
        max_tcp_connections: limits.max_tcp_connections,
        tcp_idle_timeout: limits.tcp_idle_timeout,
    };
    transport::serve(udp, tcp, resolver, bounds, shutdown)
        .await
        .map_err(|e| AgentError::io("receiving DNS queries", e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::Record;

    fn query(name: &str, record_type: RecordType) -> Message {
        let mut message = Message::query();
        message.metadata.id = 0x1234;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
        message
    }

    fn reply(bytes: Inspected) -> Message {
        match bytes {
            Inspected::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("not a reply: {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_query_is_resolved() {
        let bytes = query("colors.demo.local.", RecordType::A).to_vec().unwrap();
        match inspect(&bytes) {
            Inspected::Resolve(q) => {
                assert_eq!(q.metadata.id, 0x1234);
                assert_eq!(q.queries.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_after_a_header_gets_formerr_with_its_id() {
        let mut bytes = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(b"\x05hello\xff\xff");
        let answer = reply(inspect(&bytes));
        assert_eq!(answer.metadata.id, 0xabcd);
        assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(answer.metadata.message_type, MessageType::Response);
    }

    #[test]
    fn less_than_a_header_and_responses_get_nothing() {
        assert_eq!(inspect(&[]), Inspected::Drop);
        assert_eq!(inspect(&[1, 2, 3, 4, 5]), Inspected::Drop);
        let mut response = query("a.test.", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        assert_eq!(inspect(&response.to_vec().unwrap()), Inspected::Drop);
    }

    #[test]
    fn two_questions_get_formerr_and_other_opcodes_notimp() {
        let mut two = query("a.test.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("b.test.").unwrap(),
            RecordType::A,
        ));
        let answer = reply(inspect(&two.to_vec().unwrap()));
        assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
        let mut notify = query("a.test.", RecordType::SOA);
        notify.metadata.op_code = OpCode::Notify;
        let answer = reply(inspect(&notify.to_vec().unwrap()));
        assert_eq!(answer.metadata.response_code, ResponseCode::NotImp);
    }

    fn response(code: ResponseCode, authoritative: bool) -> Message {
        let mut m = query("colors.demo.local.", RecordType::A);
        m.metadata.message_type = MessageType::Response;
        m.metadata.response_code = code;
        m.metadata.authoritative = authoritative;
        m
    }

    #[test]
    fn weft_answers_authoritative_records_nodata_and_nxdomain_and_nothing_else() {
        assert!(weft_answers(&response(ResponseCode::NoError, true)));
        assert!(weft_answers(&response(ResponseCode::NXDomain, true)));
        assert!(!weft_answers(&response(ResponseCode::Refused, false)));
        assert!(!weft_answers(&response(ResponseCode::NoError, false)));
        assert!(!weft_answers(&response(ResponseCode::ServFail, false)));
        assert!(!weft_answers(&response(ResponseCode::FormErr, true)));
    }

    #[test]
    fn servfail_keeps_the_question_id_and_edns() {
        let mut q = query("example.test.", RecordType::AAAA);
        q.set_edns(Edns::new());
        let answer = Message::from_vec(&servfail(&q).unwrap()).unwrap();
        assert_eq!(answer.metadata.id, 0x1234);
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        assert!(answer.metadata.recursion_desired && answer.metadata.recursion_available);
        assert_eq!(answer.queries, q.queries);
        assert!(answer.edns.is_some());
    }

    #[test]
    fn an_answer_is_matched_by_id_and_question_and_the_client_id_is_put_back() {
        let q = query("example.test.", RecordType::A);
        let bytes = q.to_vec().unwrap();
        let outgoing = Outgoing::new(&bytes, &q);
        assert_eq!(&outgoing.bytes[2..], &bytes[2..]);
        let mut answer = Message::response(outgoing.id, OpCode::Query);
        answer.add_queries(q.queries.clone());
        answer.add_answer(Record::from_rdata(
            Name::from_ascii("example.test.").unwrap(),
            60,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        let mut answer_bytes = answer.to_vec().unwrap();
        assert!(outgoing.answered_by(&answer_bytes).is_some());
        // Another question, or another id, is not this query's answer.
        let mut other = answer.clone();
        other.queries = vec![Query::query(
            Name::from_ascii("other.test.").unwrap(),
            RecordType::A,
        )];
        assert!(outgoing.answered_by(&other.to_vec().unwrap()).is_none());
        other = answer.clone();
        other.metadata.id = outgoing.id.wrapping_add(1);
        assert!(outgoing.answered_by(&other.to_vec().unwrap()).is_none());
        set_id(&mut answer_bytes, 0x1234);
        assert_eq!(
            Message::from_vec(&answer_bytes).unwrap().metadata.id,
            0x1234
        );
    }

    #[test]
    fn upstreams_parse_with_and_without_ports() {
        let parsed =
            parse_upstreams(" 10.0.0.2, 10.0.0.3:5353,[fd00::1]:53, fd00::2 ,10.0.0.2").unwrap();
        let expected: Vec<SocketAddr> = [
            "10.0.0.2:53",
            "10.0.0.3:5353",
            "[fd00::1]:53",
            "[fd00::2]:53",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(parsed, expected);
        assert!(parse_upstreams("dns.google").is_err());
        assert!(parse_upstreams("10.0.0.2:0").is_err());
        assert!(parse_upstreams("0.0.0.0").is_err());
        assert!(parse_upstreams(" , ").is_err());
    }

    #[test]
    fn resolv_conf_gives_its_nameservers_in_order() {
        let text = "# generated\nsearch demo.local\nnameserver 10.0.0.2\n  nameserver   fd00::53 \nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:5\nnameserver 10.0.0.2\n";
        let expected: Vec<SocketAddr> = ["10.0.0.2:53", "[fd00::53]:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(resolv_conf_nameservers(text), expected);
    }

    #[test]
    fn the_resolver_does_not_forward_to_itself() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(is_self(at("127.0.0.1:53"), at("127.0.0.1:53")));
        assert!(is_self(at("127.0.0.1:53"), at("0.0.0.0:53")));
        assert!(is_self(at("[::1]:53"), at("[::]:53")));
        assert!(!is_self(at("127.0.0.53:53"), at("127.0.0.1:53")));
        assert!(!is_self(at("127.0.0.1:5353"), at("127.0.0.1:53")));
        assert!(!is_self(at("10.0.0.2:53"), at("0.0.0.0:53")));
    }

    fn args(listen: &str, server: Option<&str>, upstream: Option<&str>) -> DnsArgs {
        DnsArgs {
            dns_listen: Some(listen.parse().unwrap()),
            dns_server: server.map(str::to_owned),
            dns_upstream: upstream.map(str::to_owned),
        }
    }

    fn xds(host: &str) -> XdsEndpoint {
        XdsEndpoint {
            host: host.to_owned(),
            port: 15010,
        }
    }

    #[test]
    fn the_resolver_is_off_unless_a_listen_address_is_given() {
        assert_eq!(DnsArgs::default().resolver(&xds("10.0.0.5")).unwrap(), None);
    }

    #[test]
    fn weft_dns_defaults_to_the_xds_host_on_port_8600() {
        let config = args("127.0.0.1:53", None, Some("10.0.0.2"))
            .resolver(&xds("10.0.0.5"))
            .unwrap()
            .unwrap();
        assert_eq!(
            config.weft,
            WeftDns::Address("10.0.0.5:8600".parse().unwrap())
        );
        let config = args("127.0.0.1:53", None, Some("10.0.0.2"))
            .resolver(&xds("weft.internal"))
            .unwrap()
            .unwrap();
        assert_eq!(
            config.weft,
            WeftDns::Name {
                host: "weft.internal".into(),
                port: 8600
            }
        );
        let config = args("127.0.0.1:53", Some("[fd00::5]:5300"), Some("10.0.0.2"))
            .resolver(&xds("weft.internal"))
            .unwrap()
            .unwrap();
        assert_eq!(
            config.weft,
            WeftDns::Address("[fd00::5]:5300".parse().unwrap())
        );
    }

    #[test]
    fn an_upstream_or_server_that_is_the_resolver_itself_is_refused() {
        let e = args("127.0.0.1:53", None, Some("10.0.0.2,127.0.0.1"))
            .resolver(&xds("10.0.0.5"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("WEFT_AGENT_DNS_UPSTREAM") && e.contains("loop"),
            "{e}"
        );
        let e = args("127.0.0.1:8600", None, Some("10.0.0.2"))
            .resolver(&xds("127.0.0.1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("WEFT_AGENT_DNS_SERVER"), "{e}");
        let e = args("127.0.0.1:53", Some("nope"), Some("10.0.0.2"))
            .resolver(&xds("127.0.0.1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("WEFT_AGENT_DNS_SERVER"), "{e}");
    }
}
