//! Reading a request body under a size limit, so that an oversized body is
//! answered in the protocol's own error format (the callers turn a
//! [`BodyRefusal`] into `BadRequestException` or `InvalidInput`), never
//! with a plain-text 413.
//!
//! An oversized body is still read to its end, up to [`DRAIN_MAX`] bytes,
//! and thrown away: a client writing its body while the server answers and
//! closes would otherwise see the connection reset instead of the answer.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use futures::StreamExt;

/// Bytes of an oversized body read and discarded before answering; past
/// this the answer is sent at once and the connection closes.
pub const DRAIN_MAX: u64 = 8 * 1024 * 1024;

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRefusal {
    /// The body is larger than `limit` bytes.
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The connection failed while the body was read.
    Unreadable(String),
}

impl BodyRefusal {
    /// What the error message says.
    pub fn message(&self) -> String {
        match self {
            BodyRefusal::TooLarge { limit } => {
                format!("The request body is larger than the {limit} bytes this endpoint accepts")
            }
            BodyRefusal::Unreadable(e) => format!("The request body could not be read: {e}"),
        }
    }
}

/// Reads `body`, refusing one larger than `limit` bytes.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, BodyRefusal> {
    let limit_u64 = u64::try_from(limit).unwrap_or(u64::MAX);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit_u64) {
        // A client waiting for `100 Continue` has sent nothing yet, and one
        // announcing more than can be drained is not worth reading.
        let waits = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if waits || n > DRAIN_MAX {
            return Err(BodyRefusal::TooLarge { limit });
        }
    }
    let mut stream = body.into_data_stream();
    let capacity = declared.map_or(0, |n| n.min(limit_u64) as usize);
    let mut out = Vec::with_capacity(capacity);
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyRefusal::Unreadable(e.to_string()))?;
        total = total.saturating_add(chunk.len() as u64);
        if total > limit_u64 {
            drop(out);
            drain(&mut stream, total).await;
            return Err(BodyRefusal::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// Reads and discards the rest of a body, up to [`DRAIN_MAX`] bytes in all.
async fn drain(stream: &mut axum::body::BodyDataStream, mut total: u64) {
    while total <= DRAIN_MAX {
        match stream.next().await {
            Some(Ok(chunk)) => total = total.saturating_add(chunk.len() as u64),
            _ => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chunked(parts: Vec<Vec<u8>>) -> Body {
        let stream = futures::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from(p))),
        );
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let body = chunked(vec![b"{\"a\":".to_vec(), b"1}".to_vec()]);
        let read = read_limited(&HeaderMap::new(), body, 7).await.unwrap();
        assert_eq!(&read[..], b"{\"a\":1}");
    }

    #[tokio::test]
    async fn a_body_one_byte_over_the_limit_is_refused() {
        let body = chunked(vec![vec![b' '; 5], vec![b' '; 3]]);
        let refused = read_limited(&HeaderMap::new(), body, 7).await;
        assert_eq!(refused, Err(BodyRefusal::TooLarge { limit: 7 }));
    }

    #[tokio::test]
    async fn a_declared_length_past_the_limit_is_refused_before_reading_when_the_client_waits() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "100".parse().unwrap());
        headers.insert(header::EXPECT, "100-continue".parse().unwrap());
        // A body that would fail if it were read.
        let body = Body::from_stream(futures::stream::iter(vec![Err::<Bytes, _>(
            std::io::Error::other("not to be read"),
        )]));
        let refused = read_limited(&headers, body, 10).await;
        assert_eq!(refused, Err(BodyRefusal::TooLarge { limit: 10 }));
    }
}
