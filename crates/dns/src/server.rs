//! The DNS server: [`ZonesHandler`] answers hickory-server requests from
//! the zones of the moment, and [`serve`] carries them over UDP and TCP
//! with [`crate::transport`].
//!
//! hickory-server parses every request, builds every response and
//! truncates UDP answers; the transport only moves bytes. It does not use
//! hickory's own `Server` loops because they are not bounded the way Weft's
//! listeners are: hickory 0.26 spawns a task per UDP datagram and accepts
//! any number of TCP connections. Here (with [`Limits::default`], whose
//! in-flight bound is [`transport::InFlight::Serial`]) one task answers
//! UDP datagrams one after another (there is no queue but the socket's own
//! buffer), and TCP connections are capped, each answering one message at
//! a time with an idle timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use hickory_proto::op::{Edns, Header, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::net::runtime::{Time, TokioTime};
use hickory_server::net::xfer::Protocol as HickoryProtocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tracing::debug;

use crate::transport::{self, Limits, Protocol, Respond, HEADER_LEN};
use crate::{DnsError, Zones};

/// The largest UDP answer this server sends, whatever a client's EDNS
/// buffer: 1232 octets fit any path's MTU without fragmentation (DNS Flag
/// Day 2020, <https://www.dnsflagday.net/2020/>). Larger answers are
/// truncated and the client retries over TCP (RFC 7766 §5).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// Answers DNS requests from the latest [`Zones`] published on a watch
/// channel: each request reads the zones of the moment, so an update is
/// served from the next query on.
///
/// It is a hickory-server [`RequestHandler`], usable with hickory's own
/// `Server`, and a [`Respond`]er, usable with [`transport::serve`].
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

impl Respond for ZonesHandler {
    /// The encoded answer to one raw message, or `None` when it gets none:
    /// shorter than a header, or itself a response (answering responses
    /// would let two servers bounce packets forever). A message that does
    /// not parse gets FORMERR with its id (RFC 1035 §4.1.1).
    async fn respond(
        &self,
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
        let hickory_protocol = match protocol {
            Protocol::Udp => HickoryProtocol::Udp,
            Protocol::Tcp => HickoryProtocol::Tcp,
        };
        match Request::from_bytes(message.to_vec(), src, hickory_protocol) {
            Ok(request) => {
                let max_size = match protocol {
                    Protocol::Udp => request.max_payload().min(MAX_UDP_PAYLOAD),
                    Protocol::Tcp => u16::MAX,
                };
                let capture = Capture::new(max_size);
                self.handle_request::<_, TokioTime>(&request, capture.clone())
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
    Ok(transport::serve(udp, tcp, handler, limits, shutdown).await?)
}
