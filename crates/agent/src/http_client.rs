//! One HTTP/1.1 exchange on a fresh connection, through hyper's client: how
//! the agent talks to its local peers (Envoy's admin interface, the app's
//! health path, the registry).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// An answer: its status and whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Bytes,
}

/// Sends `method target` to `authority` (`host:port`) with `headers` and
/// `body` on a new connection and reads the whole answer. The error is a
/// message saying which step failed. Callers bound it with a timeout.
pub async fn exchange(
    authority: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Answer, String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{method} {target}: {e}"))?;
    // The connection is driven beside the request and ends with it.
    let driver = tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .header(hyper::header::HOST, authority);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| format!("{method} {target}: {e}"))?;
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{method} {target}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{method} {target}: reading the answer: {e}"))?
            .to_bytes();
        Ok(Answer { status, body })
    }
    .await;
    driver.abort();
    answer
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that answers one request with `answer`, written as raw bytes
    /// (as Envoy's admin interface writes a chunked answer).
    async fn peer(answer: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                conn.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            assert!(head.starts_with(b"POST /drain_listeners?graceful HTTP/1.1\r\n"));
            conn.write_all(answer).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn a_chunked_answer_is_read_whole() {
        let addr = peer(
            b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n4\r\nPRE_\r\n5\r\nINIT\n\r\n0\r\n\r\n",
        )
        .await;
        let answer = exchange(
            &addr,
            "POST",
            "/drain_listeners?graceful",
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 503);
        assert_eq!(answer.body, "PRE_INIT\n");
    }

    #[tokio::test]
    async fn a_peer_that_is_not_there_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let err = exchange(&addr, "GET", "/", &[], Bytes::new())
            .await
            .unwrap_err();
        assert!(err.starts_with("connect"), "{err}");
    }
}
