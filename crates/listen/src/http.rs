//! The API listener: HTTP/1.1 with a connection cap, request-head, idle and
//! request deadlines (see the crate docs).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::{Limits, Throttled, ACCEPT_ERROR_PAUSE};

/// Refusals answered at once; past this, a refused connection is closed
/// without an answer.
const REFUSALS: usize = 64;
/// Time a refused connection gets to send its request head and read the
/// answer.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// Time a closing connection gets to finish what is in flight, past its
/// request deadline.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One open connection as the listener sees it.
struct Conn {
    /// Requests in flight.
    busy: usize,
    /// When the last request ended (or the connection opened).
    idle_since: Instant,
    /// Told to close (the connection finishes what is in flight first).
    close: Arc<Notify>,
}

/// Every open connection that counts toward the cap.
#[derive(Default)]
struct Table {
    conns: HashMap<u64, Conn>,
    next_id: u64,
}

type SharedTable = Arc<Mutex<Table>>;

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Table {
    /// Admits a new connection if there is room, making room by closing the
    /// connection idle the longest if need be: at the cap, a client that
    /// keeps connections open without using them loses them to one that
    /// has a request to make.
    fn admit(&mut self, max: usize) -> Option<(u64, Arc<Notify>)> {
        if self.conns.len() >= max {
            let (&victim, _) = self
                .conns
                .iter()
                .filter(|(_, c)| c.busy == 0)
                .min_by_key(|(_, c)| c.idle_since)?;
            if let Some(conn) = self.conns.remove(&victim) {
                conn.close.notify_one();
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let close = Arc::new(Notify::new());
        self.conns.insert(
            id,
            Conn {
                busy: 0,
                idle_since: Instant::now(),
                close: close.clone(),
            },
        );
        Some((id, close))
    }

    /// When the connection becomes idle-expired, or `None` if it is now.
    fn idle_deadline(&self, id: u64, idle_timeout: Duration) -> Option<Instant> {
        let now = Instant::now();
        match self.conns.get(&id) {
            Some(c) if c.busy > 0 => Some(now + idle_timeout),
            Some(c) if now.duration_since(c.idle_since) < idle_timeout => {
                Some(c.idle_since + idle_timeout)
            }
            // Idle too long, or already evicted.
            _ => None,
        }
    }
}

/// Marks a request in flight on a connection for as long as it lives.
struct Busy {
    table: SharedTable,
    id: u64,
}

impl Busy {
    fn start(table: SharedTable, id: u64) -> Self {
        if let Some(c) = lock(&table).conns.get_mut(&id) {
            c.busy += 1;
        }
        Busy { table, id }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.table).conns.get_mut(&self.id) {
            c.busy = c.busy.saturating_sub(1);
            c.idle_since = Instant::now();
        }
    }
}

/// An answer in the AWS error shape that closes the connection.
fn error_response(status: StatusCode, error_type: &'static str, message: &str) -> Response {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-amzn-ErrorType", HeaderValue::from_static(error_type));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves,
/// then lets the open connections finish what is in flight (for at most
/// the request deadline and a short grace) and returns.
///
/// Handlers can read the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let table: SharedTable = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let full = Throttled::new(Duration::from_secs(10));
    let failing = Throttled::new(Duration::from_secs(10));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if let Some(suppressed) = failing.due() {
                        tracing::warn!(error = %e, suppressed, "accepting an API connection failed");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // An answer is written whole, and must not wait for the ACK of a
        // previous segment (Nagle) when it spans several.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let admitted = lock(&table).admit(limits.max_connections);
        match admitted {
            Some((id, close)) => {
                let connection = Connection {
                    table: table.clone(),
                    id,
                    close,
                    stop: stop_rx.clone(),
                    limits,
                    peer,
                };
                tasks.spawn(connection.run(stream, router.clone()));
            }
            None => {
                if let Some(suppressed) = full.due() {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        suppressed,
                        "API listener full with every connection busy: refusing connections"
                    );
                }
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    tasks.spawn(async move {
                        refuse(stream).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let bound = limits.request_timeout + CLOSE_GRACE;
    let _ = tokio::time::timeout(bound, async { while tasks.join_next().await.is_some() {} }).await;
}

/// Answers a connection past the cap with 503, then closes it.
async fn refuse(stream: TcpStream) {
    let service = hyper::service::service_fn(|_request: Request<Incoming>| async {
        Ok::<_, Infallible>(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "The server has too many open connections; try again shortly",
        ))
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_TIME)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_TIME, connection).await;
}

/// One admitted connection.
struct Connection {
    table: SharedTable,
    id: u64,
    close: Arc<Notify>,
    stop: watch::Receiver<bool>,
    limits: Limits,
    peer: SocketAddr,
}

impl Connection {
    async fn run(mut self, stream: TcpStream, router: Router) {
        let (table, id, peer, limits) = (self.table.clone(), self.id, self.peer, self.limits);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let busy = Busy::start(table.clone(), id);
            let router = router.clone();
            async move {
                let answer = tokio::time::timeout(limits.request_timeout, router.oneshot(request));
                let response = match answer.await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => error_response(
                        StatusCode::REQUEST_TIMEOUT,
                        "RequestTimeoutException",
                        "The request was not received and answered in time",
                    ),
                };
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let idle = tokio::time::sleep(limits.idle_timeout);
        tokio::pin!(idle);
        let hard_stop = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(hard_stop);
        let mut closing = false;
        loop {
            let close_now = tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %self.peer, error = %e, "API connection ended");
                    }
                    break;
                }
                _ = self.close.notified(), if !closing => true,
                _ = self.stop.changed(), if !closing => true,
                _ = &mut idle, if !closing => {
                    let deadline = lock(&self.table).idle_deadline(self.id, self.limits.idle_timeout);
                    match deadline {
                        Some(at) => {
                            idle.as_mut().reset(at.into());
                            false
                        }
                        None => true,
                    }
                }
                _ = &mut hard_stop, if closing => break,
            };
            if close_now {
                closing = true;
                connection.as_mut().graceful_shutdown();
                let bound = self.limits.request_timeout + CLOSE_GRACE;
                hard_stop.as_mut().reset((Instant::now() + bound).into());
            }
        }
        lock(&self.table).conns.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room() {
        let mut table = Table::default();
        let (first, first_close) = table.admit(2).unwrap_or_else(|| unreachable!());
        std::thread::sleep(Duration::from_millis(2));
        let (second, _) = table.admit(2).unwrap_or_else(|| unreachable!());
        let (_third, _) = table.admit(2).unwrap_or_else(|| unreachable!());
        assert!(
            !table.conns.contains_key(&first),
            "the oldest idle one went"
        );
        assert!(table.conns.contains_key(&second));
        assert_eq!(table.conns.len(), 2);
        // It was told to close.
        let notified = first_close.notified();
        futures::pin_mut!(notified);
        assert!(futures::FutureExt::now_or_never(notified).is_some());
    }

    #[test]
    fn at_the_cap_with_every_connection_busy_a_new_one_is_refused() {
        let table: SharedTable = Arc::default();
        let (a, _) = lock(&table).admit(1).unwrap_or_else(|| unreachable!());
        let busy = Busy::start(table.clone(), a);
        assert!(lock(&table).admit(1).is_none());
        drop(busy);
        assert!(lock(&table).admit(1).is_some());
    }
}
