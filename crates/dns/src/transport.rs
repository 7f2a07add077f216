//! DNS over UDP and TCP, bounded, for any [`Respond`]er: Weft's DNS server
//! (`ZonesHandler`, with the `server` feature) and the workload's resolver
//! in weft-agent both serve through [`serve`].
//!
//! This module only moves bytes: what a message gets (an answer, FORMERR,
//! or nothing) is the responder's to say. Its bounds ([`Limits`]):
//!
//! - UDP: datagrams are read whole; with [`InFlight::Serial`] they are
//!   answered one after another by the task that receives them (there is no
//!   queue but the socket's own buffer), with [`InFlight::AtMost`] each in a
//!   task of its own up to the cap, past which a datagram is dropped (the
//!   client asks again). A datagram from port 0 is not answered.
//! - TCP: connections are capped (past the cap a new one is closed at
//!   once), each answers its messages in order, framed by a two-octet length
//!   (RFC 1035 §4.2.2, RFC 7766 §8), and is closed when it sends no complete
//!   message for the idle timeout, which also bounds reading one message and
//!   writing its answer. With [`InFlight::AtMost`], a message that arrives
//!   when the cap is reached gets [`Respond::busy`]'s answer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, warn};

/// The smallest DNS message: its header (RFC 1035 §4.1.1). Shorter input
/// has no id to answer to.
pub const HEADER_LEN: usize = 12;

/// A UDP datagram is read whole into a buffer this large (the largest UDP
/// payload), so a long datagram is parsed, and refused, rather than cut.
const UDP_RECEIVE_BUFFER: usize = 65_535;

/// How a message came in, and so how it may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A datagram: an answer too large for the client is truncated, and
    /// the client asks again over TCP (RFC 7766 §5).
    Udp,
    /// A TCP connection: answers of up to 64 KiB.
    Tcp,
}

/// What answers the messages [`serve`] receives.
pub trait Respond: Send + Sync + 'static {
    /// The answer to one message received from `src` over `protocol`, or
    /// `None` when it gets none.
    fn respond(
        &self,
        message: &[u8],
        src: SocketAddr,
        protocol: Protocol,
    ) -> impl Future<Output = Option<Vec<u8>>> + Send;

    /// The answer to a TCP message that arrives when [`InFlight::AtMost`]
    /// messages are already being answered (a UDP one is dropped). None by
    /// default: the message is passed over and the connection goes on.
    fn busy(&self, message: &[u8]) -> Option<Vec<u8>> {
        let _ = message;
        None
    }
}

/// How many messages are answered at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// One UDP datagram at a time, by the task that receives it, and one
    /// message at a time on each TCP connection: for responders that answer
    /// at once, from memory.
    Serial,
    /// Each UDP datagram in a task of its own, and at most this many
    /// messages, UDP and TCP together, at once: for responders that wait on
    /// others (a forwarding resolver).
    AtMost(usize),
}

/// Bounds of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How many messages are answered at once.
    pub in_flight: InFlight,
    /// TCP connections held open at once; past it new ones are closed at
    /// once (RFC 7766 §6.2.2 lets servers limit concurrent connections).
    /// Each holds at most one message of up to 64 KiB.
    pub max_tcp_connections: usize,
    /// A TCP connection that sends no complete message for this long is
    /// closed; it also bounds reading one message and writing its answer.
    pub tcp_idle_timeout: Duration,
}

impl Default for Limits {
    /// Serial, 256 connections and 10 s idle: RFC 7766 §6.2.3 asks servers
    /// for idle timeouts "of the order of seconds", and stub resolvers send
    /// one or two queries per connection.
    fn default() -> Self {
        Limits {
            in_flight: InFlight::Serial,
            max_tcp_connections: 256,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// `message` behind its two-octet length (RFC 1035 §4.2.2), as sent over
/// TCP; `None` when it is longer than 65,535 octets.
pub fn frame(message: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(message.len()).ok()?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Some(framed)
}

/// Answers the messages received on `udp` and `tcp` with `responder` until
/// `shutdown` completes, then drops every connection and every message in
/// flight.
///
/// Errors only when the UDP socket fails for good; a bad packet or a
/// broken connection costs only itself.
pub async fn serve<R: Respond>(
    udp: UdpSocket,
    tcp: TcpListener,
    responder: Arc<R>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let in_flight = match limits.in_flight {
        InFlight::Serial => None,
        InFlight::AtMost(cap) => Some(Arc::new(Semaphore::new(cap))),
    };
    tokio::select! {
        result = serve_udp(Arc::new(udp), &responder, in_flight.as_ref()) => result,
        () = serve_tcp(&tcp, &responder, in_flight.as_ref(), limits) => Ok(()),
        () = shutdown => Ok(()),
    }
}

async fn serve_udp<R: Respond>(
    socket: Arc<UdpSocket>,
    responder: &Arc<R>,
    in_flight: Option<&Arc<Semaphore>>,
) -> io::Result<()> {
    // Dropped with this future, which aborts every message in flight.
    let mut queries = JoinSet::new();
    let mut buffer = vec![0_u8; UDP_RECEIVE_BUFFER];
    loop {
        let (len, src) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) if is_transient(&error) => {
                debug!(%error, "DNS UDP receive");
                continue;
            }
            Err(error) => return Err(error),
        };
        while queries.try_join_next().is_some() {}
        // Port 0 cannot be answered (and is a spoofing tell).
        if src.port() == 0 {
            continue;
        }
        let Some(message) = buffer.get(..len) else {
            continue;
        };
        let Some(in_flight) = in_flight else {
            answer_datagram(&socket, responder.as_ref(), message, src).await;
            continue;
        };
        let Ok(permit) = Arc::clone(in_flight).try_acquire_owned() else {
            debug!(%src, "DNS query dropped: at the in-flight cap");
            continue;
        };
        let message = message.to_vec();
        let responder = Arc::clone(responder);
        let socket = Arc::clone(&socket);
        queries.spawn(async move {
            let _permit = permit;
            answer_datagram(&socket, responder.as_ref(), &message, src).await;
        });
    }
}

async fn answer_datagram<R: Respond>(
    socket: &UdpSocket,
    responder: &R,
    message: &[u8],
    src: SocketAddr,
) {
    let Some(answer) = responder.respond(message, src, Protocol::Udp).await else {
        return;
    };
    if let Err(error) = socket.send_to(&answer, src).await {
        debug!(%error, %src, "DNS UDP send");
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

async fn serve_tcp<R: Respond>(
    listener: &TcpListener,
    responder: &Arc<R>,
    in_flight: Option<&Arc<Semaphore>>,
    limits: Limits,
) {
    // Dropped with this future, which closes every connection.
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
        connections.spawn(serve_connection(
            stream,
            peer,
            Arc::clone(responder),
            in_flight.cloned(),
            limits.tcp_idle_timeout,
        ));
    }
}

/// Answers the messages of one TCP connection in order.
async fn serve_connection<R: Respond>(
    mut stream: TcpStream,
    peer: SocketAddr,
    responder: Arc<R>,
    in_flight: Option<Arc<Semaphore>>,
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
        let answer = match in_flight.as_deref().map(Semaphore::try_acquire) {
            None => responder.respond(&message, peer, Protocol::Tcp).await,
            Some(Ok(_permit)) => responder.respond(&message, peer, Protocol::Tcp).await,
            Some(Err(_)) => responder.busy(&message),
        };
        let Some(answer) = answer else {
            continue;
        };
        let Some(framed) = frame(&answer) else {
            return;
        };
        let Ok(Ok(())) = timeout(idle, stream.write_all(&framed)).await else {
            return;
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::{oneshot, Notify};

    use super::*;

    /// Echoes each message back, after `release` is notified when `hold`
    /// is set; `busy` answers with the message reversed.
    #[derive(Default)]
    struct Echo {
        hold: bool,
        release: Notify,
        started: AtomicUsize,
    }

    impl Respond for Echo {
        async fn respond(
            &self,
            message: &[u8],
            _src: SocketAddr,
            _protocol: Protocol,
        ) -> Option<Vec<u8>> {
            self.started.fetch_add(1, Ordering::SeqCst);
            if self.hold {
                self.release.notified().await;
            }
            (message.first() != Some(&0xff)).then(|| message.to_vec())
        }

        fn busy(&self, message: &[u8]) -> Option<Vec<u8>> {
            Some(message.iter().rev().copied().collect())
        }
    }

    struct Running {
        udp: SocketAddr,
        tcp: SocketAddr,
        _stop: oneshot::Sender<()>,
    }

    async fn start(echo: Arc<Echo>, limits: Limits) -> Running {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running_at = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(udp, tcp, echo, limits, async move {
            let _ = stopped.await;
        }));
        Running {
            udp: running_at.0,
            tcp: running_at.1,
            _stop: stop,
        }
    }

    fn message(tag: u8) -> Vec<u8> {
        let mut message = vec![0_u8; HEADER_LEN];
        message[0] = tag;
        message[HEADER_LEN - 1] = 0x01;
        message
    }

    async fn ask_udp(server: SocketAddr, message: &[u8]) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(message, server).await.unwrap();
        let mut buffer = vec![0_u8; 512];
        let (len, _) = timeout(Duration::from_millis(300), socket.recv_from(&mut buffer))
            .await
            .ok()?
            .unwrap();
        Some(buffer[..len].to_vec())
    }

    async fn ask_tcp(stream: &mut TcpStream, message: &[u8]) -> Option<Vec<u8>> {
        stream.write_all(&frame(message).unwrap()).await.ok()?;
        let len = timeout(Duration::from_secs(2), stream.read_u16())
            .await
            .ok()?
            .ok()?;
        let mut answer = vec![0_u8; usize::from(len)];
        stream.read_exact(&mut answer).await.ok()?;
        Some(answer)
    }

    #[test]
    fn a_frame_is_the_length_then_the_message() {
        assert_eq!(frame(&[7, 8, 9]).unwrap(), [0, 3, 7, 8, 9]);
        assert_eq!(frame(&vec![0; 65_535]).unwrap().len(), 65_537);
        assert!(frame(&vec![0; 65_536]).is_none());
    }

    #[tokio::test]
    async fn messages_are_answered_over_udp_and_tcp_and_unanswered_ones_are_passed_over() {
        let server = start(Arc::default(), Limits::default()).await;
        assert_eq!(ask_udp(server.udp, &message(1)).await.unwrap(), message(1));
        assert!(ask_udp(server.udp, &message(0xff)).await.is_none());
        let mut stream = TcpStream::connect(server.tcp).await.unwrap();
        assert_eq!(ask_tcp(&mut stream, &message(2)).await.unwrap(), message(2));
        // No answer, and the connection goes on.
        stream
            .write_all(&frame(&message(0xff)).unwrap())
            .await
            .unwrap();
        assert_eq!(ask_tcp(&mut stream, &message(3)).await.unwrap(), message(3));
        // Shorter than a header: the connection is closed.
        assert!(ask_tcp(&mut stream, &[1, 2, 3]).await.is_none());
    }

    #[tokio::test]
    async fn past_the_in_flight_cap_datagrams_are_dropped_and_tcp_messages_get_busy() {
        let echo = Arc::new(Echo {
            hold: true,
            ..Echo::default()
        });
        let limits = Limits {
            in_flight: InFlight::AtMost(2),
            ..Limits::default()
        };
        let server = start(Arc::clone(&echo), limits).await;
        let held = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        held.send_to(&message(1), server.udp).await.unwrap();
        held.send_to(&message(2), server.udp).await.unwrap();
        while echo.started.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(ask_udp(server.udp, &message(3)).await.is_none());
        let mut stream = TcpStream::connect(server.tcp).await.unwrap();
        let busy = ask_tcp(&mut stream, &message(4)).await.unwrap();
        assert_eq!(busy, message(4).into_iter().rev().collect::<Vec<_>>());
        assert_eq!(echo.started.load(Ordering::SeqCst), 2);
        // Once the two held ones are answered, there is room again.
        echo.release.notify_waiters();
        let mut buffer = [0_u8; 64];
        for _ in 0..2 {
            let (len, _) = held.recv_from(&mut buffer).await.unwrap();
            assert_eq!(len, HEADER_LEN);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let answered = tokio::spawn(async move { ask_tcp(&mut stream, &message(5)).await });
        while echo.started.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        echo.release.notify_waiters();
        assert_eq!(answered.await.unwrap().unwrap(), message(5));
    }
}
