//! Connection hygiene for Weft's listeners, so that a client holding or
//! flooding connections costs itself and not the others:
//!
//! - [`descriptors`]: the process's descriptor limit is raised to its hard
//!   limit at start, and a share of it is kept back for the store and the
//!   process itself; listeners get the rest as connection caps.
//! - [`http`]: the App Mesh and Cloud Map API listener (HTTP/1.1): a
//!   request head must arrive within a deadline, idle keep-alive
//!   connections are closed, a request (body included) has a deadline, and
//!   at the cap the longest-idle connection makes room for a new one, or
//!   the new one is refused with `503 ServiceUnavailableException`.
//! - [`grpc`]: the xDS listener (HTTP/2): a connection must send its first
//!   request bytes within a deadline, and past the cap new connections are
//!   closed at once (Envoy reconnects with backoff).

pub mod descriptors;
pub mod grpc;
pub mod http;

use std::time::Duration;

/// Limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held open at once.
    pub max_connections: usize,
    /// HTTP/1.1: connections one client (an access key, else an address)
    /// may hold; a request on one more is answered and its connection
    /// closed.
    pub max_connections_per_client: usize,
    /// HTTP/1.1: time to send a whole request head. HTTP/2: time to send the
    /// connection preface and the first frame header.
    pub header_read_timeout: Duration,
    /// HTTP/1.1: a connection with no request in flight for this long is
    /// closed. (HTTP/2 streams of xDS are long-lived; dead peers there are
    /// found by keepalive pings instead.)
    pub idle_timeout: Duration,
    /// HTTP/1.1: time to read a request's body and answer it.
    pub request_timeout: Duration,
}

impl Default for Limits {
    /// 1,024 connections, a quarter of them per client, 10 s for a request
    /// head, 60 s idle (what AWS's load balancers allow by default), 30 s
    /// per request.
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_client: 256,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The longest access key id kept (AWS's are 16 to 128 characters): a
/// longer one is cut, so that tables keyed by it hold short strings.
const MAX_KEY_ID_CHARS: usize = 128;

/// The access key id of a SigV4 `Authorization` header:
/// `AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/appmesh/aws4_request, …`.
pub fn access_key_id(authorization: &str) -> Option<&str> {
    let (_, rest) = authorization.split_once("Credential=")?;
    let end = rest.find(['/', ',', ' ']).unwrap_or(rest.len());
    let key = rest.get(..end)?;
    if key.is_empty() {
        return None;
    }
    let cut = key
        .char_indices()
        .nth(MAX_KEY_ID_CHARS)
        .map_or(key.len(), |(i, _)| i);
    key.get(..cut)
}

/// The listen backlog: connections the kernel queues before they are
/// accepted (capped by `net.core.somaxconn`, 4,096 by default). Tokio's
/// default of 128 overflows in a burst of connections, and a dropped SYN
/// is only resent after a second or three.
pub const BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` with [`BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's and tokio's own bind do: a restarted server can bind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Logs at most one warning per period for a recurring condition (a full
/// listener, a failing `accept`), so that a flood cannot flood the log too.
#[derive(Debug)]
pub struct Throttled {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
    period: Duration,
}

impl Throttled {
    /// At most one line per `period`.
    pub fn new(period: Duration) -> Self {
        Throttled {
            last: std::sync::Mutex::new(None),
            suppressed: std::sync::atomic::AtomicU64::new(0),
            period,
        }
    }

    /// Returns how many were suppressed since the last one if it is time to
    /// log again, else `None`.
    pub fn due(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = std::time::Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *last {
            Some(at) if now.duration_since(at) < self.period => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

/// Pause after a failed `accept` (out of descriptors, most likely) before
/// the next: the listener stays readable, so retrying at once would spin.
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
