//! The xDS listener's incoming connections: a cap, and a deadline for a
//! connection's first request bytes (see the crate docs).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{Limits, Throttled, ACCEPT_ERROR_PAUSE};

/// The bytes a real HTTP/2 client sends first: the 24-byte connection
/// preface and at least one 9-byte frame header (its SETTINGS).
const FIRST_BYTES: usize = 24 + 9;

/// An accepted connection that counts toward the cap while it lives and
/// fails its reads once its first bytes are overdue.
pub struct Guarded {
    io: TcpStream,
    /// Until the first bytes are in.
    deadline: Option<Pin<Box<Sleep>>>,
    seen: usize,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection sent no request in time",
                )));
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.seen += buf.filled().len() - before;
            if this.seen >= FIRST_BYTES {
                this.deadline = None;
            }
        }
        result
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

/// The listener's state between accepted connections.
struct Acceptor {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limits: Limits,
    full: Throttled,
    failing: Throttled,
}

/// The connections accepted on `listener` under `limits`, for tonic's
/// `serve_with_incoming`: past `max_connections` a new connection is closed
/// at once; a failed `accept` (out of descriptors) is retried after a pause
/// and never ends the stream.
pub fn incoming(
    listener: TcpListener,
    limits: Limits,
) -> impl Stream<Item = io::Result<Guarded>> + Send + 'static {
    let acceptor = Acceptor {
        listener,
        permits: Arc::new(Semaphore::new(
            limits.max_connections.min(Semaphore::MAX_PERMITS),
        )),
        limits,
        full: Throttled::new(Duration::from_secs(10)),
        failing: Throttled::new(Duration::from_secs(10)),
    };
    futures::stream::unfold(acceptor, |a| async move {
        let guarded = a.next().await;
        Some((Ok(guarded), a))
    })
}

impl Acceptor {
    async fn next(&self) -> Guarded {
        loop {
            let (io, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    if let Some(suppressed) = self.failing.due() {
                        tracing::warn!(error = %e, suppressed, "accepting an xDS connection failed");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                if let Some(suppressed) = self.full.due() {
                    tracing::warn!(
                        %peer,
                        max_connections = self.limits.max_connections,
                        suppressed,
                        "xDS listener full: closing new connections"
                    );
                }
                continue;
            };
            return Guarded {
                io,
                deadline: Some(Box::pin(tokio::time::sleep(
                    self.limits.header_read_timeout,
                ))),
                seen: 0,
                _permit: permit,
            };
        }
    }
}
