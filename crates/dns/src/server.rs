//! The DNS server: [`ZonesHandler`] answers hickory-server requests from
//! the zones of the moment, and [`serve`] carries them over UDP and TCP.
//!
//! hickory-server parses every request, builds every response and
//! truncates UDP answers; this module only moves bytes. It does not use
//! hickory's own `Server` loops because they are not bounded the way Weft's
//! listeners are: hickory 0.26 spawns a task per UDP datagram and accepts
//! any number of TCP connections. Here one task answers UDP datagrams one
//! after another (there is no queue but the socket's own buffer), and TCP
//! connections are capped, each answering one message at a time with an
//! idle timeout.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::op::{Edns, Header, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::{DnsError, Zones};

/// The largest UDP answer this server sends, whatever a client's EDNS
/// buffer: 1232 octets fit any path's MTU without fragmentation (DNS Flag
/// Day 2020, <https://www.dnsflagday.net/2020/>). Larger answers are
/// truncated and the client retries over TCP (RFC 7766 §5).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// A UDP datagram is read whole into a buffer this large (the largest UDP
/// payload), so a long datagram is parsed, and refused, rather than cut.
const UDP_RECEIVE_BUFFER: usize = 65_535;

/// The smallest DNS message: its header (RFC 1035 §4.1.1). Shorter input
/// has no id to answer to, so it is dropped.
const HEADER_LEN: usize = 12;

/// Bounds of the TCP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TCP connections held open at once; past it new ones are closed at
    /// once (RFC 7766 §6.2.2 lets servers limit concurrent connections).
    /// Each holds at most one message of up to 64 KiB.
    pub max_tcp_connections: usize,
    /// A TCP connection that sends no complete message for this long is
    /// closed; it also bounds reading one message and writing its answer.
    pub tcp_idle_timeout: Duration,
}

impl Default for Limits {
    /// 256 connections and 10 s idle: RFC 7766 §6.2.3 asks servers for
    /// idle timeouts "of the order of seconds", and stub resolvers send
    /// one or two queries per connection.
    fn default() -> Self {
        Limits {
            max_tcp_connections: 256,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Answers DNS requests from the latest [`Zones`] published on a watch
/// channel: each request reads the zones of the moment, so an update is
/// served from the next query on.
///
/// It is a hickory-server [`RequestHandler`], usable with [`serve`] or
/// with hickory's own `Server`.
#[derive(Debug, Clone)]
pub struct ZonesHandler {
    zones: watch::Receiver<Arc<Zones>>,
}

impl ZonesHandler {
    /// A handler answering from `zones`.
    pub fn new(zones: watch::Receiver<Arc<Zones>>) -> Self {
        ZonesHandler { zones }
    }
}

#[async_trait]
impl RequestHandler for ZonesHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        // Answers carry an OPT record when the request did (RFC 6891 §7),
        // offering this server's buffer size.
        let edns = request.edns.as_ref().map(|_| {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            edns
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let metadata = &request.metadata;
        let error = if metadata.op_code != OpCode::Query {
            // NOTIFY, UPDATE and the rest are not served (RFC 1035 §4.1.1).
            Some(ResponseCode::NotImp)
        } else if request.queries.len() != 1 {
            // One question per message (RFC 9619).
            Some(ResponseCode::FormErr)
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            // This server speaks EDNS version 0 (RFC 6891 §6.1.3).
            Some(ResponseCode::BADVERS)
        } else {
            None
        };
        let answer = match (error, request.queries.queries().first()) {
            (None, Some(query)) if matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) => {
                let name = Name::from(query.name().clone());
                // The zones are read once per request; the borrow ends with
                // this statement, before any await.
                let zones = Arc::clone(&self.zones.borrow());
                zones.answer(&name, query.query_type(), &mut rand::rng())
            }
            (None, Some(_)) => {
                // CHAOS and other classes hold nothing here.
                let mut metadata = Metadata::response_from_request(metadata);
                metadata.response_code = ResponseCode::Refused;
                let response = builder.build_no_records(metadata);
                return send(&mut response_handle, response, request).await;
            }
            (code, _) => {
                let code = code.unwrap_or(ResponseCode::FormErr);
                let response = builder.error_msg(metadata, code);
                return send(&mut response_handle, response, request).await;
            }
        };
        let mut response_metadata = Metadata::response_from_request(metadata);
        response_metadata.authoritative = answer.authoritative;
        response_metadata.response_code = answer.response_code;
        let response = builder.build(
            response_metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        send(&mut response_handle, response, request).await
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            debug!(%error, src = %request.src(), "DNS answer not sent");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: Default::default(),
            })
        }
    }
}

/// Keeps the encoded answer of one request, for [`serve`]'s loops to send.
#[derive(Clone)]
struct Capture {
    /// The largest message this answer may be; larger ones are truncated
    /// with the TC bit set (RFC 1035 §4.2.1, RFC 6891 §7).
    max_size: u16,
    encoded: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Capture {
    fn new(max_size: u16) -> Self {
        Capture {
            max_size,
            encoded: Arc::default(),
        }
    }

    fn take(&self) -> Option<Vec<u8>> {
        self.encoded.lock().ok().and_then(|mut slot| slot.take())
    }
}

#[async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(self.max_size);
        let info = response.destructive_emit(&mut encoder)?;
        if let Ok(mut slot) = self.encoded.lock() {
            *slot = Some(bytes);
        }
        Ok(info)
    }
}

/// The encoded answer to one raw message, or `None` when it gets none:
/// shorter than a header, or itself a response (answering responses would
/// let two servers bounce packets forever). A message that does not parse
/// gets FORMERR with its id (RFC 1035 §4.1.1).
pub async fn respond(
    handler: &ZonesHandler,
    message: &[u8],
    src: SocketAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    if message.len() < HEADER_LEN {
        return None;
    }
    let header = Header::read(&mut BinDecoder::new(message)).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let tcp_size = u16::MAX;
    match Request::from_bytes(message.to_vec(), src, protocol) {
        Ok(request) => {
            let max_size = match protocol {
                Protocol::Udp => request.max_payload().min(MAX_UDP_PAYLOAD),
                _ => tcp_size,
            };
            let capture = Capture::new(max_size);
            handler
                .handle_request::<_, TokioTime>(&request, capture.clone())
                .await;
            capture.take()
        }
        Err(error) => {
            debug!(%error, %src, "malformed DNS message");
            let queries = Queries::read(&mut BinDecoder::new(&[]), 0).ok()?;
            let response = MessageResponseBuilder::new(&queries, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            let mut capture = Capture::new(512);
            capture.send_response(response).await.ok()?;
            capture.take()
        }
    }
}

/// Serves the zones published on `zones` over `udp` and `tcp` until
/// `shutdown` completes, then closes every connection.
///
/// Errors only when a socket fails for good; a bad packet or a broken
/// connection costs only itself.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    zones: watch::Receiver<Arc<Zones>>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DnsError> {
    let handler = Arc::new(ZonesHandler::new(zones));
    tokio::select! {
        result = serve_udp(&udp, &handler) => result,
        result = serve_tcp(&tcp, &handler, limits) => result,
        () = shutdown => Ok(()),
    }
}

/// Answers datagrams one at a time: a flood fills the socket's receive
/// buffer and the kernel drops the rest, which costs this process nothing.
async fn serve_udp(socket: &UdpSocket, handler: &ZonesHandler) -> Result<(), DnsError> {
    let mut buffer = vec![0_u8; UDP_RECEIVE_BUFFER];
    loop {
        let (len, src) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) if is_transient(&error) => {
                debug!(%error, "DNS UDP receive");
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        // Port 0 cannot be answered (and is a spoofing tell).
        if src.port() == 0 {
            continue;
        }
        let Some(message) = buffer.get(..len) else {
            continue;
        };
        let Some(answer) = respond(handler, message, src, Protocol::Udp).await else {
            continue;
        };
        if let Err(error) = socket.send_to(&answer, src).await {
            debug!(%error, %src, "DNS UDP send");
        }
    }
}

/// Errors a UDP socket reports for one peer, not for itself: Linux
/// reports an ICMP port-unreachable of an earlier answer on the next call.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

async fn serve_tcp(
    listener: &TcpListener,
    handler: &Arc<ZonesHandler>,
    limits: Limits,
) -> Result<(), DnsError> {
    // Dropped with this future when the server shuts down, which aborts
    // every connection.
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset before it was
                // accepted: wait a little rather than spin, then go on.
                warn!(%error, "DNS TCP accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= limits.max_tcp_connections {
            debug!(%peer, "DNS TCP connection refused: at the cap");
            drop(stream);
            continue;
        }
        let handler = Arc::clone(handler);
        connections.spawn(serve_connection(
            stream,
            peer,
            handler,
            limits.tcp_idle_timeout,
        ));
    }
}

/// Answers the messages of one TCP connection in order, each framed by a
/// two-octet length (RFC 1035 §4.2.2, RFC 7766 §8).
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<ZonesHandler>,
    idle: Duration,
) {
    let mut message = Vec::new();
    loop {
        let Ok(Ok(len)) = timeout(idle, stream.read_u16()).await else {
            return;
        };
        let len = usize::from(len);
        if len < HEADER_LEN {
            debug!(%peer, len, "DNS TCP message shorter than a header");
            return;
        }
        // At most 64 KiB: the length prefix is two octets.
        message.resize(len, 0);
        let Ok(Ok(_)) = timeout(idle, stream.read_exact(&mut message)).await else {
            return;
        };
        let Some(answer) = respond(&handler, &message, peer, Protocol::Tcp).await else {
            continue;
        };
        let Ok(answer_len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&answer_len.to_be_bytes());
        framed.extend_from_slice(&answer);
        let Ok(Ok(())) = timeout(idle, stream.write_all(&framed)).await else {
            return;
        };
    }
}
