//! `weft sample-app`: a tiny HTTP server for demos and tests.
//!
//! Every request gets `200`, the body `<name>\n` and the header `x-weft-app: <name>`, so a client
//! sees which app (which virtual node) answered. Test behaviours, given as path segments anywhere
//! in the path (so they survive route prefixes: `/red/status/503`) or as query parameters:
//!
//! | path | query | effect |
//! |---|---|---|
//! | `/status/<code>` | `status=<code>` | answer with that code (200–599) |
//! | `/delay/<ms>` | `delay=<ms>` | sleep that long before answering (at most 10 minutes) |
//! | `/fail-every/<n>` | `fail_every=<n>` | every n-th such request to this app answers 503 |
//!
//! Health, for the health checks a virtual node listener may configure (virtual_nodes.md,
//! "Health check policy"): `/health` answers 200 `healthy`, or 503 `unhealthy` after
//! `/health-fail`, until `/health-recover` (both answer 200 and only flip the state).
//!
//! HTTP/1.1 with keep-alive and HTTP/2 (prior knowledge, as Envoy speaks to an `http2` or `grpc`
//! listener's app), many connections at once: it carries load tests.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::error::AgentError;

/// The header naming the app that answered.
pub const APP_HEADER: &str = "x-weft-app";
/// The header echoing the request path the app saw (to check prefix rewrites through Envoy).
pub const PATH_HEADER: &str = "x-weft-path";
/// The header echoing the `Host` (HTTP/1.1) or `:authority` (HTTP/2) the app saw (to check
/// hostname rewrites through Envoy).
pub const HOST_HEADER: &str = "x-weft-host";
/// The longest `/delay/<ms>` honoured.
const MAX_DELAY_MS: u64 = 600_000;

/// `weft sample-app` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SampleAppArgs {
    /// The name the app answers with (body and `x-weft-app` header).
    #[arg(long, env = "WEFT_SAMPLE_APP_NAME")]
    pub name: String,
    /// Address to listen on.
    #[arg(long, env = "WEFT_SAMPLE_APP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

/// Binds `args.listen` and serves until `shutdown` completes.
pub async fn run_sample_app(
    args: &SampleAppArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| AgentError::io(format!("sample app: binding {}", args.listen), e))?;
    serve_sample_app(&args.name, listener, shutdown).await
}

struct App {
    name: Bytes,
    header: HeaderValue,
    fail_counter: AtomicU64,
    /// Set by `/health-fail`, cleared by `/health-recover`: `/health` then answers 503.
    unhealthy: AtomicBool,
}

/// Serves the sample app named `name` on an already bound `listener` (tests bind port 0 and
/// pass the listener, so there is no race for a free port) until `shutdown` completes; open
/// connections are closed then.
pub async fn serve_sample_app(
    name: &str,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let header = HeaderValue::from_str(name).map_err(|_| AgentError::Config {
        setting: "WEFT_SAMPLE_APP_NAME (--name)",
        message: format!("{name:?} cannot be an HTTP header value"),
    })?;
    let app = Arc::new(App {
        name: Bytes::from(format!("{name}\n")),
        header,
        fail_counter: AtomicU64::new(0),
        unhealthy: AtomicBool::new(false),
    });
    let local = listener
        .local_addr()
        .map_err(|e| AgentError::io("sample app: local address", e))?;
    info!(name, listen = %local, "sample app serving");

    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connection tasks so the set does not grow under load.
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly, keep serving.
                warn!(error = %e, "sample app: accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(Arc::clone(&app), req));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "sample app: connection ended with an error");
            }
        });
    }
    connections.shutdown().await;
    info!(name, "sample app stopped");
    Ok(())
}

/// The test behaviours a request asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Behaviour {
    status: Option<u16>,
    delay_ms: Option<u64>,
    fail_every: Option<u64>,
}

impl Behaviour {
    fn from_request(path: &str, query: Option<&str>) -> Result<Self, String> {
        let mut b = Behaviour::default();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let pairs = segments.windows(2).map(|w| (w[0], w[1]));
        let query_pairs = query
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='));
        for (key, value) in pairs.chain(query_pairs) {
            // A path segment followed by a non-number is just a path (`/status/page`).
            let Ok(n) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "status" => {
                    if !(200..=599).contains(&n) {
                        return Err(format!("status {n} is not 200-599"));
                    }
                    b.status = u16::try_from(n).ok();
                }
                "delay" => {
                    if n > MAX_DELAY_MS {
                        return Err(format!("delay {n} ms is above {MAX_DELAY_MS} ms"));
                    }
                    b.delay_ms = Some(n);
                }
                "fail-every" | "fail_every" => {
                    if n == 0 {
                        return Err("fail-every 0: n must be at least 1".into());
                    }
                    b.fail_every = Some(n);
                }
                _ => {}
            }
        }
        Ok(b)
    }
}

async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Read the request body to its end so the connection can carry the next request.
    let _ = body.collect().await;
    let path = parts.uri.path();
    let health = match path {
        "/health-fail" => {
            app.unhealthy.store(true, Ordering::Relaxed);
            Some((StatusCode::OK, Bytes::from_static(b"now unhealthy\n")))
        }
        "/health-recover" => {
            app.unhealthy.store(false, Ordering::Relaxed);
            Some((StatusCode::OK, Bytes::from_static(b"now healthy\n")))
        }
        "/health" if app.unhealthy.load(Ordering::Relaxed) => Some((
            StatusCode::SERVICE_UNAVAILABLE,
            Bytes::from_static(b"unhealthy\n"),
        )),
        "/health" => Some((StatusCode::OK, Bytes::from_static(b"healthy\n"))),
        _ => None,
    };
    let (status, body) = if let Some(answer) = health {
        answer
    } else {
        behave(&app, path, parts.uri.query()).await
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(APP_HEADER, app.header.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Ok(p) = HeaderValue::from_str(path) {
        headers.insert(PATH_HEADER, p);
    }
    let host = parts.headers.get(hyper::header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(host) = host {
        headers.insert(HOST_HEADER, host);
    }
    Ok(response)
}

/// Answers an ordinary request, honouring the test behaviours it asks for.
async fn behave(app: &App, path: &str, query: Option<&str>) -> (StatusCode, Bytes) {
    match Behaviour::from_request(path, query) {
        Err(message) => (StatusCode::BAD_REQUEST, Bytes::from(format!("{message}\n"))),
        Ok(b) => {
            if let Some(ms) = b.delay_ms {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut status = b
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            if let Some(n) = b.fail_every {
                let count = app.fail_counter.fetch_add(1, Ordering::Relaxed) + 1;
                if count.is_multiple_of(n) {
                    status = StatusCode::SERVICE_UNAVAILABLE;
                }
            }
            (status, app.name.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviours_come_from_path_segments_anywhere_or_the_query() {
        let b = Behaviour::from_request("/red/status/503", None);
        assert_eq!(
            b,
            Ok(Behaviour {
                status: Some(503),
                ..Default::default()
            })
        );
        let b = Behaviour::from_request("/delay/20/fail-every/3", None);
        assert_eq!(
            b,
            Ok(Behaviour {
                delay_ms: Some(20),
                fail_every: Some(3),
                ..Default::default()
            })
        );
        let b = Behaviour::from_request("/", Some("status=404&fail_every=2"));
        assert_eq!(
            b,
            Ok(Behaviour {
                status: Some(404),
                fail_every: Some(2),
                ..Default::default()
            })
        );
        assert_eq!(
            Behaviour::from_request("/status/page", None),
            Ok(Behaviour::default())
        );
    }

    #[test]
    fn out_of_range_behaviours_are_refused() {
        assert!(Behaviour::from_request("/status/99", None).is_err());
        assert!(Behaviour::from_request("/fail-every/0", None).is_err());
        assert!(Behaviour::from_request("/delay/999999999", None).is_err());
    }
}
