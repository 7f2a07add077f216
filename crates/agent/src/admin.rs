//! A tiny HTTP/1.1 client for Envoy's admin interface on 127.0.0.1 — enough for drain and
//! readiness, without pulling an HTTP client stack into the agent.
//!
//! Admin reference: <https://www.envoyproxy.io/docs/envoy/latest/operations/admin>.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::AgentError;

/// An admin response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    /// HTTP status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

/// Sends `method path` to the admin interface on `127.0.0.1:port` and reads the whole response
/// (`Connection: close`), all within `timeout`.
pub async fn admin_request(
    port: u16,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<AdminResponse, AgentError> {
    let fail = |message: String| AgentError::Admin { port, message };
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| fail(format!("connect: {e}")))?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| fail(format!("{method} {path}: {e}")))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| fail(format!("{method} {path}: {e}")))?;
        parse_response(&raw).ok_or_else(|| fail(format!("{method} {path}: malformed response")))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| fail(format!("{method} {path}: no answer within {timeout:?}")))?
}

fn parse_response(raw: &[u8]) -> Option<AdminResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Some(AdminResponse { status, body })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Waits until the admin interface answers `GET /server_info` with 200 (Envoy is up; it may
/// still be waiting for its first config, which `/ready` would report as 503).
pub async fn wait_for_admin(port: u16, timeout: Duration) -> Result<(), AgentError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match admin_request(
            port,
            "GET",
            "/server_info",
            left.min(Duration::from_secs(2)),
        )
        .await
        {
            Ok(r) if r.status == 200 => return Ok(()),
            result if tokio::time::Instant::now() >= deadline => {
                let why = match result {
                    Ok(r) => format!("status {}", r.status),
                    Err(e) => e.to_string(),
                };
                return Err(AgentError::Admin {
                    port,
                    message: format!("not answering /server_info after {timeout:?}: {why}"),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Starts a graceful drain of all listeners (`POST /drain_listeners?graceful`): for the drain
/// time Envoy keeps accepting but closes connections after their current request; then it stops
/// the listeners.
pub async fn drain_listeners(port: u16) -> Result<(), AgentError> {
    let r = admin_request(
        port,
        "POST",
        "/drain_listeners?graceful",
        Duration::from_secs(2),
    )
    .await?;
    if r.status == 200 {
        Ok(())
    } else {
        Err(AgentError::Admin {
            port,
            message: format!("/drain_listeners answered {}: {}", r.status, r.body.trim()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_responses_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nOK\n");
        assert_eq!(
            r,
            Some(AdminResponse {
                status: 200,
                body: "OK\n".into()
            })
        );
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n4\r\nPRE_\r\n5\r\nINIT\n\r\n0\r\n\r\n",
        );
        assert_eq!(
            r,
            Some(AdminResponse {
                status: 503,
                body: "PRE_INIT\n".into()
            })
        );
    }
}
