//! Envoy's admin interface on 127.0.0.1, for drain and readiness.
//!
//! Admin reference: <https://www.envoyproxy.io/docs/envoy/latest/operations/admin>.

use std::time::Duration;

use bytes::Bytes;

use crate::error::AgentError;
use crate::http_client;

/// An admin response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminResponse {
    /// HTTP status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

/// Sends `method path` to the admin interface on `127.0.0.1:port` and reads the whole response,
/// all within `timeout`.
pub async fn admin_request(
    port: u16,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<AdminResponse, AgentError> {
    let fail = |message: String| AgentError::Admin { port, message };
    let authority = format!("127.0.0.1:{port}");
    let exchange = http_client::exchange(&authority, method, path, &[], Bytes::new());
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| fail(format!("{method} {path}: no answer within {timeout:?}")))?
        .map_err(fail)?;
    Ok(AdminResponse {
        status: answer.status,
        body: String::from_utf8_lossy(&answer.body).into_owned(),
    })
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
