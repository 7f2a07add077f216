//! One HTTP/1.1 exchange on a fresh connection, through hyper's client: how tests talk to an
//! Envoy's listeners and admin interface and to sample apps.
//!
//! [`exchange`] is async; [`exchange_blocking`] runs it on a runtime of its own, so it may be
//! called from plain threads and from async tests alike (it blocks the calling thread, as a
//! blocking socket would).

use std::collections::BTreeMap;
use std::io;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long an exchange may take, connecting included.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer: its status, headers and whole body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, by lower-case name (the last value of a repeated header).
    pub headers: BTreeMap<String, String>,
    /// The body, de-chunked, as text (lossy).
    pub body: String,
}

impl Response {
    /// The header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Sends `method target` to 127.0.0.1:`port` with `Host: host`, `headers` and no body, on a
/// new connection (`Connection: close`), and reads the whole answer. `target` is sent as
/// written: a path, or an absolute URI as a client of an HTTP proxy sends. An error says which
/// step failed.
pub async fn exchange(
    port: u16,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    let what = format!("{method} {target} on 127.0.0.1:{port}");
    tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        exchange_untimed(port, method, host, target, headers),
    )
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: no answer within {EXCHANGE_TIMEOUT:?}"),
        )
    })?
}

async fn exchange_untimed(
    port: u16,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    let what = format!("{method} {target} on 127.0.0.1:{port}");
    let fail = |e: &dyn std::fmt::Display| io::Error::other(format!("{what}: {e}"));
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(&e))?;
    // The connection is driven beside the request and ends with it.
    let driver = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONNECTION, "close");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::new()))
        .map_err(|e| fail(&e))?;
    let answer = async {
        let response = sender.send_request(request).await.map_err(|e| fail(&e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(&format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
    .await;
    driver.abort();
    answer
}

/// The runtime [`exchange_blocking`] runs exchanges on, started on first use.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-http")
            .enable_all()
            .build()
            .expect("the test HTTP client's runtime")
    })
}

/// [`exchange`], blocking the calling thread until it is done. Callable from any thread,
/// inside an async runtime or not.
pub fn exchange_blocking(
    port: u16,
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    let (method, host, target) = (method.to_string(), host.to_string(), target.to_string());
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    runtime().spawn(async move {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let _ = tx.send(exchange(port, &method, &host, &target, &headers).await);
    });
    rx.recv()
        .map_err(|_| io::Error::other("the test HTTP client's task ended without an answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that answers one request with `answer`, written as raw bytes, and hands back the
    /// head of the request it read.
    async fn peer(answer: &'static [u8]) -> (u16, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let head = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                conn.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            conn.write_all(answer).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (port, head)
    }

    #[tokio::test]
    async fn a_chunked_answer_is_read_whole_with_its_headers() {
        let (port, head) = peer(
            b"HTTP/1.1 503 Service Unavailable\r\nx-weft-app: red\r\ntransfer-encoding: chunked\r\n\r\n4\r\nPRE_\r\n5\r\nINIT\n\r\n0\r\n\r\n",
        )
        .await;
        let answer = exchange(
            port,
            "POST",
            "colors.local:8080",
            "/drain",
            &[("x-color", "blue")],
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(answer.body, "PRE_INIT\n");
        assert_eq!(answer.header("x-weft-app"), Some("red"));
        let head = head.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /drain http/1.1\r\n"), "{head}");
        assert!(head.contains("host: colors.local:8080\r\n"), "{head}");
        assert!(head.contains("x-color: blue\r\n"), "{head}");
    }

    #[tokio::test]
    async fn an_absolute_uri_is_sent_as_written_for_a_proxy() {
        let (port, head) = peer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let answer = exchange(port, "GET", "red.local", "http://red.local/hello", &[])
            .await
            .unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
        let head = head.await.unwrap();
        assert!(
            head.starts_with("GET http://red.local/hello HTTP/1.1\r\n"),
            "{head}"
        );
    }

    #[test]
    fn a_blocking_exchange_works_outside_and_inside_a_runtime() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for conn in server.incoming().take(2) {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).unwrap();
                conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nyes")
                    .unwrap();
            }
        });
        let plain = exchange_blocking(port, "GET", "x", "/", &[]).unwrap();
        assert_eq!(plain.body, "yes");
        let inside = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { exchange_blocking(port, "GET", "x", "/", &[]) })
            .unwrap();
        assert_eq!(inside.status, 200);
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = exchange_blocking(port, "GET", "x", "/", &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    }
}
