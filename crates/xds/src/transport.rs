//! How ADS responses reach HTTP/2: gRPC messages whose resources section other streams share,
//! then the `grpc-status` trailers.
//!
//! The generated service ([`crate::grpc`]) hands each call's responses to tonic's response
//! body, which encodes every message into a buffer of its own stream: the same resources, sent
//! to the ten proxies of a class, would be copied ten times and held ten times until each proxy
//! reads them, and each stream's buffer would keep the capacity of the largest response it sent
//! for as long as the stream lives. A codec cannot avoid this (tonic's encoder writes into that
//! buffer). So [`AdsService`] takes the responses over before tonic's body is first polled and
//! writes them with [`AdsBody`]: each response as its stream's own fields and the resources
//! section that [`SharedEncodings`] shares. A service without it in front would still send the
//! same messages, copied ([`crate::grpc::AdsCodec`]).
//!
//! Framing: <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md#responses>.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes};
use futures::{Stream, StreamExt};
use http_body::{Body, Frame};
use tonic::codegen::http::{self, HeaderMap};
use tonic::codegen::{BoxFuture, Service, StdError};
use tonic::server::NamedService;
use tonic::Status;

use crate::grpc::AggregatedDiscoveryServiceServer;
use crate::wire::{Encode, SharedEncodings};
use crate::AdsServer;

/// A stream of responses, ended by `None` (OK) or an error status.
pub(crate) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The ADS gRPC service of an [`AdsServer`], to add to a `tonic::transport::Server`: the service
/// tonic-build generates, whose response bodies this transport writes.
#[derive(Clone)]
pub struct AdsService {
    generated: AggregatedDiscoveryServiceServer<AdsServer>,
}

impl AdsService {
    pub(crate) fn new(server: AdsServer) -> Self {
        Self {
            generated: AggregatedDiscoveryServiceServer::new(server),
        }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = <AggregatedDiscoveryServiceServer<AdsServer> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<B>>::poll_ready(&mut self.generated, cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = self.generated.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            // Calls that failed before reaching the service (an unknown method, an unsupported
            // encoding) carry no responses: tonic's body is theirs.
            let body = response
                .extensions_mut()
                .remove::<Offer>()
                .and_then(|offer| offer.0.take_body());
            if let Some(body) = body {
                *response.body_mut() = body;
            }
            Ok(response)
        })
    }
}

/// The responses of one call, as the generated service returns them to tonic: tonic's body
/// polls them only if [`AdsService`] did not take them first (see [`offer`]). Public only as the
/// generated trait's stream type; the crate does not export it.
pub struct Responses<T> {
    slot: Arc<Slot<T>>,
    taken: Option<ResponseStream<T>>,
}

struct Slot<T> {
    responses: Mutex<Option<ResponseStream<T>>>,
    shared: Arc<SharedEncodings>,
}

impl<T> Slot<T> {
    fn take_responses(&self) -> Option<ResponseStream<T>> {
        self.responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// What a response's extensions carry to [`AdsService`]: its body, once.
#[derive(Clone)]
struct Offer(Arc<dyn TakeBody>);

trait TakeBody: Send + Sync {
    fn take_body(&self) -> Option<tonic::body::Body>;
}

impl<T: Encode + Send + 'static> TakeBody for Slot<T> {
    fn take_body(&self) -> Option<tonic::body::Body> {
        let responses = self.take_responses()?;
        Some(tonic::body::Body::new(AdsBody::new(
            responses,
            self.shared.clone(),
        )))
    }
}

/// The response of the generated service to one call: `responses`, offered to [`AdsService`]
/// in the response's extensions.
pub(crate) fn offer<T: Encode + Send + 'static>(
    responses: ResponseStream<T>,
    shared: Arc<SharedEncodings>,
) -> tonic::Response<Responses<T>> {
    let slot = Arc::new(Slot {
        responses: Mutex::new(Some(responses)),
        shared,
    });
    let mut response = tonic::Response::new(Responses {
        slot: slot.clone(),
        taken: None,
    });
    response.extensions_mut().insert(Offer(slot));
    response
}

impl<T> Stream for Responses<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.taken.is_none() {
            this.taken = this.slot.take_responses();
        }
        match &mut this.taken {
            Some(responses) => responses.poll_next_unpin(cx),
            // Taken by the transport: nothing for tonic's body (dropped unpolled anyway).
            None => Poll::Ready(None),
        }
    }
}

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

/// The length of the gRPC message prefix.
const PREFIX_LEN: usize = 5;

impl<T: Encode> AdsBody<T> {
    pub(crate) fn new(responses: ResponseStream<T>, shared: Arc<SharedEncodings>) -> Self {
        Self {
            responses,
            shared,
            chunks: VecDeque::new(),
            end: End::Open,
        }
    }

    /// Queues `response` as one gRPC message: the prefix (not compressed, then the length as a
    /// big-endian u32) in the same chunk as the response's first bytes.
    fn push(&mut self, response: &T) {
        let (mut head, section) = response.encode_shared(&self.shared, PREFIX_LEN);
        let len = head.len() - PREFIX_LEN + section.as_ref().map_or(0, Bytes::len);
        let mut prefix = &mut head[..PREFIX_LEN];
        prefix.put_u8(0);
        // A response over 4 GiB cannot be framed; Envoy refuses far smaller ones anyway.
        prefix.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
        self.chunks.push_back(head.freeze());
        self.chunks.extend(section);
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

impl<T: Encode> Body for AdsBody<T> {
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
                Some(Ok(response)) => this.push(&response),
                Some(Err(status)) => this.end = End::Trailers(trailers(&status)),
                None => this.end = End::Trailers(trailers(&Status::ok(""))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.end, End::Done) && self.chunks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use bytes::BytesMut;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse as XdsDiscoveryResponse;
    use http_body_util::{BodyExt, StreamBody};
    use prost::Message;

    use super::*;
    use crate::test_helpers::{eds_cluster, node, sotw_request};
    use crate::{NodeIdResolver, Resource, Snapshot, SnapshotCache, CLUSTER_TYPE_URL};

    /// One SotW call whose first request subscribes to every cluster of node `red`, and whose
    /// request stream then stays open (as Envoy's does).
    fn request() -> http::Request<impl Body<Data = Bytes, Error = Infallible>> {
        let mut request = sotw_request(CLUSTER_TYPE_URL, &[], "", "");
        request.node = Some(node("red"));
        let message = request.encode_to_vec();
        let mut first = BytesMut::new();
        first.put_u8(0);
        first.put_u32(u32::try_from(message.len()).unwrap());
        first.extend_from_slice(&message);
        let frames = futures::stream::iter([Ok(Frame::data(first.freeze()))])
            .chain(futures::stream::pending());
        http::Request::builder()
            .uri("/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources")
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(StreamBody::new(frames))
            .unwrap()
    }

    /// The data chunks of the first gRPC message of `response`.
    async fn first_message(response: http::Response<tonic::body::Body>) -> Vec<Bytes> {
        let mut body = response.into_body();
        let mut chunks: Vec<Bytes> = Vec::new();
        loop {
            let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            if all.len() >= PREFIX_LEN {
                let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
                if all.len() >= PREFIX_LEN + len {
                    return chunks;
                }
            }
            let frame = body.frame().await.expect("a message").unwrap();
            chunks.push(frame.into_data().expect("data, not trailers"));
        }
    }

    /// The one gRPC message of `chunks`, decoded.
    fn message(chunks: &[Bytes]) -> XdsDiscoveryResponse {
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(all[0], 0, "not compressed");
        let len = u32::from_be_bytes([all[1], all[2], all[3], all[4]]) as usize;
        assert_eq!(len, all.len() - PREFIX_LEN);
        XdsDiscoveryResponse::decode(&all[PREFIX_LEN..]).unwrap()
    }

    #[tokio::test]
    async fn the_transport_sends_the_resources_uncopied_and_tonic_alone_the_same_message() {
        let cache = SnapshotCache::new();
        let clusters: Vec<Resource> = (0..40)
            .map(|i| {
                let name = format!("backend-{i:02}");
                Resource::from_message(&name, eds_cluster(&name))
            })
            .collect();
        cache.set_snapshot("red", Arc::new(Snapshot::from_typed(clusters).unwrap()));
        let server = AdsServer::new(cache, Arc::new(NodeIdResolver));

        let framed = first_message(
            AdsService::new(server.clone())
                .call(request())
                .await
                .unwrap(),
        );
        let copied = AggregatedDiscoveryServiceServer::new(server).call(request());
        let (framed, copied) = (framed.await, first_message(copied.await.unwrap()).await);
        // The stream's own fields, then the resources section (shared, over 1 KiB); tonic's
        // body copies both into one buffer.
        assert_eq!(framed.len(), 2);
        assert!(framed[1].len() > 1024);
        assert_eq!(copied.len(), 1);
        let response = message(&framed);
        assert_eq!(response.resources.len(), 40);
        assert_eq!(response, message(&copied));
    }
}
