//! The HTTP/2 response body of an ADS stream: gRPC messages, then the `grpc-status` trailers.
//!
//! tonic's own response body encodes every message into a buffer of its stream, so the same
//! resources, sent to the ten proxies of a class, are copied ten times and held ten times until
//! each proxy reads them. This body writes each response as [`Framed`] chunks instead, whose
//! resources section is shared ([`SharedEncodings`]).
//!
//! Framing: <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md#responses>.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body::{Body, Frame};
use tonic::codegen::http::HeaderMap;
use tonic::Status;

use crate::wire::{Framed, SharedEncodings};

/// A stream of responses, ended by `None` (OK) or an error status.
pub(crate) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The body of one ADS response stream.
pub(crate) struct AdsBody<T> {
    responses: ResponseStream<T>,
    shared: Arc<SharedEncodings>,
    /// Chunks of the responses taken from `responses` and not yet handed to HTTP/2.
    chunks: VecDeque<Bytes>,
    end: End,
}

enum End {
    /// More responses may come.
    Open,
    /// The responses ended: these trailers go out after the last chunk.
    Trailers(HeaderMap),
    /// The trailers went out.
    Done,
}

impl<T> AdsBody<T> {
    pub(crate) fn new(responses: ResponseStream<T>, shared: Arc<SharedEncodings>) -> Self {
        Self {
            responses,
            shared,
            chunks: VecDeque::new(),
            end: End::Open,
        }
    }
}

/// The trailers that end a stream with `status`.
fn trailers(status: &Status) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        // Only a message that cannot be a header value fails: send the code alone.
        headers.clear();
        // Infallible for a bare code (an ASCII integer).
        let _ = Status::new(status.code(), "").add_header(&mut headers);
    }
    headers
}

impl<T: Framed> Body for AdsBody<T> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            match std::mem::replace(&mut this.end, End::Done) {
                End::Done => return Poll::Ready(None),
                End::Trailers(headers) => return Poll::Ready(Some(Ok(Frame::trailers(headers)))),
                End::Open => this.end = End::Open,
            }
            // HTTP/2 polls the body only when the stream may send: a response is computed and
            // encoded when the connection can take it (see `AdsServer::open`).
            match ready!(this.responses.poll_next_unpin(cx)) {
                Some(Ok(response)) => response.frames(&this.shared, &mut this.chunks),
                Some(Err(status)) => this.end = End::Trailers(trailers(&status)),
                None => this.end = End::Trailers(trailers(&Status::ok(""))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.end, End::Done) && self.chunks.is_empty()
    }
}
