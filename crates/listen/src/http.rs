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
    /// Who it belongs to: the access key id of its first signed request,
    /// else its peer's address.
    client: Arc<str>,
    /// Requests in flight.
    busy: usize,
    /// When the last request ended (or the connection opened).
    idle_since: Instant,
    /// Told to close (the connection finishes what is in flight first).
    close: Arc<Notify>,
}

/// Every open connection that counts toward the cap, and those told to
/// close that have not yet.
#[derive(Default)]
struct Table {
    conns: HashMap<u64, Conn>,
    /// How many of `conns` each client holds.
    held: HashMap<Arc<str>, usize>,
    closing: usize,
    next_id: u64,
}

type SharedTable = Arc<Mutex<Table>>;

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Table {
    /// Admits a new connection from `peer` if there is room. At the cap it
    /// makes room by closing a connection of the client holding the most
    /// (its longest-idle one, else its oldest busy one, which finishes its
    /// request first): a client that floods the listener loses its own
    /// connections, not another client's. A new connection is refused only
    /// while a quarter of the cap is still closing.
    fn admit(&mut self, max: usize, peer: SocketAddr) -> Option<(u64, Arc<Notify>)> {
        if self.conns.len() >= max {
            if self.closing >= (max / 4).max(1) {
                return None;
            }
            let heaviest: Arc<str> = self
                .held
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(client, _)| client.clone())?;
            let (&victim, _) = self
                .conns
                .iter()
                .filter(|(_, c)| c.client == heaviest)
                .min_by_key(|(id, c)| {
                    (c.busy > 0, if c.busy > 0 { **id } else { 0 }, c.idle_since)
                })?;
            self.close(victim);
        }
        let id = self.next_id;
        self.next_id += 1;
        let close = Arc::new(Notify::new());
        let client: Arc<str> = Arc::from(peer.ip().to_string());
        *self.held.entry(client.clone()).or_default() += 1;
        self.conns.insert(
            id,
            Conn {
                client,
                busy: 0,
                idle_since: Instant::now(),
                close: close.clone(),
            },
        );
        Some((id, close))
    }

    /// Tells a connection to close once what is in flight is answered; it
    /// no longer counts toward the cap, but toward those closing.
    fn close(&mut self, id: u64) {
        if let Some(conn) = self.conns.remove(&id) {
            self.release(&conn.client);
            conn.close.notify_one();
            self.closing += 1;
        }
    }

    fn release(&mut self, client: &Arc<str>) {
        if let Some(n) = self.held.get_mut(client) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(client);
            }
        }
    }

    /// Forgets a connection that ended.
    fn remove(&mut self, id: u64) {
        match self.conns.remove(&id) {
            Some(conn) => self.release(&conn.client),
            // It had been told to close.
            None => self.closing = self.closing.saturating_sub(1),
        }
    }

    /// A request of `client` (its access key id, if signed) arrives on
    /// connection `id`: the connection belongs to that client from now on.
    /// If the client then holds more than `per_client` connections, this
    /// one closes once the request is answered: one client may not take
    /// the listener's whole cap, and what it opens beyond its share costs
    /// it a connection set-up per request.
    fn request(&mut self, id: u64, client: Option<&str>, per_client: usize) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.busy += 1;
        let Some(key) = client.filter(|key| *key != &*conn.client) else {
            return;
        };
        let previous = std::mem::replace(&mut conn.client, Arc::from(key));
        let current = conn.client.clone();
        self.release(&previous);
        let held = self.held.entry(current).or_default();
        *held += 1;
        if *held > per_client {
            self.close(id);
        }
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
    /// `client`: the access key id the request is signed with, if any; the
    /// connection belongs to it from then on.
    fn start(table: SharedTable, id: u64, client: Option<&str>, per_client: usize) -> Self {
        lock(&table).request(id, client, per_client);
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
        let admitted = lock(&table).admit(limits.max_connections, peer);
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
                        "API listener full and still closing connections: refusing new ones"
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
            let client = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(crate::access_key_id);
            let busy = Busy::start(table.clone(), id, client, limits.max_connections_per_client);
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
        lock(&self.table).remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 40000))
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_of_the_client_holding_most_makes_room() {
        let mut table = Table::default();
        let (quiet, _) = table.admit(3, peer(1)).unwrap_or_else(|| unreachable!());
        std::thread::sleep(Duration::from_millis(2));
        let (first, first_close) = table.admit(3, peer(2)).unwrap_or_else(|| unreachable!());
        let (second, _) = table.admit(3, peer(2)).unwrap_or_else(|| unreachable!());
        let (_third, _) = table.admit(3, peer(3)).unwrap_or_else(|| unreachable!());
        // The quiet client's connection is the oldest idle one, but peer 2
        // held two of the three.
        assert!(table.conns.contains_key(&quiet));
        assert!(
            !table.conns.contains_key(&first),
            "the flooder's oldest idle one went"
        );
        assert!(table.conns.contains_key(&second));
        assert_eq!((table.conns.len(), table.closing), (3, 1));
        let notified = first_close.notified();
        futures::pin_mut!(notified);
        assert!(
            futures::FutureExt::now_or_never(notified).is_some(),
            "it was told to close"
        );
        table.remove(first);
        assert_eq!(table.closing, 0);
    }

    #[test]
    fn a_busy_connection_of_the_heaviest_client_is_closed_before_anyone_elses_idle_one() {
        let table: SharedTable = Arc::default();
        let (quiet, _) = lock(&table)
            .admit(3, peer(1))
            .unwrap_or_else(|| unreachable!());
        let (a, _) = lock(&table)
            .admit(3, peer(9))
            .unwrap_or_else(|| unreachable!());
        let (b, _) = lock(&table)
            .admit(3, peer(8))
            .unwrap_or_else(|| unreachable!());
        // Both flood connections are signed with one key, and busy.
        let _busy_a = Busy::start(table.clone(), a, Some("FLOOD"), 3);
        let _busy_b = Busy::start(table.clone(), b, Some("FLOOD"), 3);
        assert!(lock(&table).admit(3, peer(1)).is_some());
        let t = lock(&table);
        assert!(t.conns.contains_key(&quiet));
        assert_eq!(
            t.conns.values().filter(|c| &*c.client == "FLOOD").count(),
            1
        );
    }

    #[test]
    fn while_a_quarter_of_the_cap_is_closing_new_connections_are_refused() {
        let mut table = Table::default();
        for n in 0..4 {
            table.admit(4, peer(n)).unwrap_or_else(|| unreachable!());
        }
        // Each admission past the cap closes one; the first makes closing 1 = 4 / 4.
        assert!(table.admit(4, peer(9)).is_some());
        assert!(table.admit(4, peer(9)).is_none());
    }

    #[test]
    fn a_client_past_its_share_of_connections_loses_the_one_it_just_used() {
        let mut table = Table::default();
        let mut closes = Vec::new();
        for n in 0..3 {
            let (id, close) = table.admit(8, peer(n)).unwrap_or_else(|| unreachable!());
            table.request(id, Some("FLOOD"), 2);
            closes.push((id, close));
        }
        // The third connection of FLOOD is past its share of 2.
        assert_eq!(table.held.get("FLOOD").copied(), Some(2));
        assert_eq!(table.closing, 1);
        assert!(!table.conns.contains_key(&closes[2].0));
        let notified = closes[2].1.notified();
        futures::pin_mut!(notified);
        assert!(futures::FutureExt::now_or_never(notified).is_some());
        // Another client still gets in.
        let (quiet, _) = table.admit(8, peer(9)).unwrap_or_else(|| unreachable!());
        table.request(quiet, Some("QUIET"), 2);
        assert!(table.conns.contains_key(&quiet));
    }
}
