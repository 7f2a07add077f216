//! The ADS gRPC service: one state machine per stream, driven by one `select!` loop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest as XdsDeltaDiscoveryRequest, DiscoveryRequest as XdsDiscoveryRequest,
};
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Status, Streaming};

use crate::wire::{DeltaOut, SotwOut};
use crate::{DeltaStream, ProxyStatus, Snapshot, SnapshotCache, SotwStream, XdsError, XdsNode};

/// Maps a connecting proxy to the snapshot key whose snapshots it receives.
pub trait NodeResolver: Send + Sync + 'static {
    /// The snapshot key of `node`, or a gRPC status refusing the stream (e.g. a malformed id).
    fn snapshot_key(&self, node: &XdsNode) -> Result<String, Status>;
}

/// The simplest resolver: the snapshot key is `node.id` itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeIdResolver;

impl NodeResolver for NodeIdResolver {
    fn snapshot_key(&self, node: &XdsNode) -> Result<String, Status> {
        if node.id.is_empty() {
            return Err(Status::invalid_argument("node.id is empty"));
        }
        Ok(node.id.clone())
    }
}

/// A stream's state machine, shared between its driver and `proxy_status` (which reads it only
/// when asked: nothing is copied per message).
type SharedMachine = Arc<dyn StatusSource>;

/// What `proxy_status` needs from a stream.
trait StatusSource: Send + Sync {
    fn status(&self) -> ProxyStatus;
}

impl<M: StreamMachine> StatusSource for Mutex<M> {
    fn status(&self) -> ProxyStatus {
        self.lock().unwrap_or_else(PoisonError::into_inner).status()
    }
}

struct Inner {
    cache: SnapshotCache,
    resolver: Arc<dyn NodeResolver>,
    streams: Mutex<HashMap<u64, SharedMachine>>,
    next_stream_id: AtomicU64,
    nacks: AtomicU64,
    /// Flips to `true` to end every stream (server shutdown).
    closing: watch::Sender<bool>,
}

/// The Aggregated Discovery Service: SotW and delta ADS for CDS, EDS, LDS, RDS (and any other
/// type a snapshot holds), serving the snapshots of a [`SnapshotCache`].
#[derive(Clone)]
pub struct AdsServer {
    inner: Arc<Inner>,
}

/// Removes a stream from the status table when its stream ends, however it ends.
struct StreamGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut streams = self
            .inner
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        streams.remove(&self.id);
    }
}

/// What the driver needs from a stream machine, SotW or delta.
trait StreamMachine: Send + 'static {
    type Request: Message + Default + Send + 'static;
    type Response: Message + Send + 'static;
    fn node(request: &Self::Request) -> Option<&XdsNode>;
    fn create(node: &XdsNode, key: String, id: u64) -> Self;
    fn on_request(&mut self, request: Self::Request) -> Vec<Self::Response>;
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<Self::Response>;
    fn status(&self) -> ProxyStatus;
    fn nack_count(&self) -> u64;
}

impl StreamMachine for SotwStream {
    type Request = XdsDiscoveryRequest;
    type Response = SotwOut;
    fn node(request: &Self::Request) -> Option<&XdsNode> {
        request.node.as_ref()
    }
    fn create(node: &XdsNode, key: String, id: u64) -> Self {
        let mut s = SotwStream::new(node, key);
        s.set_stream_id(id);
        s
    }
    fn on_request(&mut self, request: Self::Request) -> Vec<Self::Response> {
        SotwStream::on_request(self, request)
    }
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<Self::Response> {
        SotwStream::on_snapshot(self, snapshot)
    }
    fn status(&self) -> ProxyStatus {
        SotwStream::status(self)
    }
    fn nack_count(&self) -> u64 {
        SotwStream::nack_count(self)
    }
}

impl StreamMachine for DeltaStream {
    type Request = XdsDeltaDiscoveryRequest;
    type Response = DeltaOut;
    fn node(request: &Self::Request) -> Option<&XdsNode> {
        request.node.as_ref()
    }
    fn create(node: &XdsNode, key: String, id: u64) -> Self {
        let mut s = DeltaStream::new(node, key);
        s.set_stream_id(id);
        s
    }
    fn on_request(&mut self, request: Self::Request) -> Vec<Self::Response> {
        DeltaStream::on_request(self, request)
    }
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<Self::Response> {
        DeltaStream::on_snapshot(self, snapshot)
    }
    fn status(&self) -> ProxyStatus {
        DeltaStream::status(self)
    }
    fn nack_count(&self) -> u64 {
        DeltaStream::nack_count(self)
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl AdsServer {
    /// A server for the snapshots of `cache`, with keys chosen by `resolver`.
    pub fn new(cache: SnapshotCache, resolver: Arc<dyn NodeResolver>) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache,
                resolver,
                streams: Mutex::new(HashMap::new()),
                next_stream_id: AtomicU64::new(1),
                nacks: AtomicU64::new(0),
                closing: watch::channel(false).0,
            }),
        }
    }

    /// The cache the server serves.
    pub fn cache(&self) -> &SnapshotCache {
        &self.inner.cache
    }

    /// Every connected stream: node, snapshot key, protocol, connected since, versions sent and
    /// ACKed per type, rollout phase, last NACK. Sorted by stream id.
    ///
    /// Computed on demand from each stream's state machine (briefly locking each in turn).
    pub fn proxy_status(&self) -> Vec<ProxyStatus> {
        let machines: Vec<SharedMachine> = self
            .inner
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut all: Vec<ProxyStatus> = machines.iter().map(|m| m.status()).collect();
        all.sort_by_key(|s| s.stream_id);
        all
    }

    /// NACKs received since the server started, all streams together.
    pub fn nack_count(&self) -> u64 {
        self.inner.nacks.load(Ordering::Relaxed)
    }

    /// Ends every open stream with `UNAVAILABLE` (Envoy keeps its config and reconnects).
    pub fn close_streams(&self) {
        self.inner.closing.send_replace(true);
    }

    /// The gRPC service (`envoy.service.discovery.v3.AggregatedDiscoveryService`), to add to a
    /// `tonic::transport::Server`.
    pub fn service(&self) -> AdsService {
        AdsService {
            server: self.clone(),
        }
    }

    /// Serves ADS on `listener` until `shutdown` completes; then ends all streams and returns.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        let this = self.clone();
        let shutdown = async move {
            shutdown.await;
            // Streams never end on their own: end them, or graceful shutdown waits forever.
            this.close_streams();
        };
        tonic::transport::Server::builder()
            // Detect dead peers on long-lived streams.
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .add_service(self.service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    }

    /// The response stream of one ADS stream. No task and no channel of its own: the stream
    /// machine runs inside the response body's `poll_next` (in the HTTP/2 stream's task), so
    /// each response is computed when the connection can take it.
    fn open<M: StreamMachine>(
        &self,
        requests: Streaming<M::Request>,
    ) -> ResponseStream<M::Response> {
        let driver = Driver::<M> {
            inner: self.inner.clone(),
            requests,
            stream: None,
            queue: Vec::new().into_iter(),
            done: false,
        };
        Box::pin(futures::stream::unfold(driver, |mut driver| async move {
            let item = driver.next().await?;
            Some((item, driver))
        }))
    }
}

/// A stream once its node is known.
struct Opened<M> {
    machine: Arc<Mutex<M>>,
    node_id: String,
    id: u64,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    closing: watch::Receiver<bool>,
    _guard: StreamGuard,
}

/// Drives one stream: resolves the node from the first request, then waits on Envoy's
/// requests, snapshot changes for the key and server shutdown, and hands out responses.
struct Driver<M: StreamMachine> {
    inner: Arc<Inner>,
    requests: Streaming<M::Request>,
    stream: Option<Opened<M>>,
    /// Responses computed and not yet handed to the encoder, in order.
    queue: std::vec::IntoIter<M::Response>,
    done: bool,
}

impl<M: StreamMachine> Driver<M> {
    /// The next item of the response stream; `None` ends it.
    async fn next(&mut self) -> Option<Result<M::Response, Status>> {
        loop {
            if let Some(response) = self.queue.next() {
                return Some(Ok(response));
            }
            if self.done {
                return None;
            }
            // Free the spent buffer (a stream spends most of its life idle).
            self.queue = Vec::new().into_iter();
            match self.step().await {
                Ok(Some(responses)) => self.queue = responses.into_iter(),
                Ok(None) => {
                    self.done = true;
                }
                Err(status) => {
                    self.done = true;
                    return Some(Err(status));
                }
            }
        }
    }

    /// Waits for one event and returns the responses it causes, `None` at the end of the
    /// stream.
    async fn step(&mut self) -> Result<Option<Vec<M::Response>>, Status> {
        let Some(stream) = &mut self.stream else {
            let Some(first) = self.requests.next().await.transpose()? else {
                return Ok(None);
            };
            let node = M::node(&first).cloned().ok_or_else(|| {
                Status::invalid_argument("the first request of a stream must carry node")
            })?;
            let key = self.inner.resolver.snapshot_key(&node)?;
            // Watched at once, with no await in between: a resolver may forget
            // keys nobody watches, but not one it resolved a moment ago.
            let snapshots = self.inner.cache.watch(&key);
            let id = self.inner.next_stream_id.fetch_add(1, Ordering::Relaxed);
            let machine = Arc::new(Mutex::new(M::create(&node, key.clone(), id)));
            self.inner
                .streams
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, machine.clone());
            tracing::info!(node = %node.id, snapshot_key = %key, stream = id, "ADS stream opened");
            let stream = Opened {
                machine,
                node_id: node.id,
                id,
                snapshots,
                closing: self.inner.closing.subscribe(),
                _guard: StreamGuard {
                    inner: self.inner.clone(),
                    id,
                },
            };
            let responses = stream.run(&self.inner, |m| m.on_request(first));
            self.stream = Some(stream);
            return Ok(Some(responses));
        };
        enum Event<R> {
            Request(R),
            Snapshot(Option<Arc<Snapshot>>),
        }
        let event = tokio::select! {
            request = self.requests.next() => match request {
                Some(Ok(request)) => Event::Request(request),
                Some(Err(status)) => {
                    tracing::info!(node = %stream.node_id, stream = stream.id, %status, "ADS stream failed");
                    return Ok(None);
                }
                None => {
                    tracing::info!(node = %stream.node_id, stream = stream.id, "ADS stream closed by the proxy");
                    return Ok(None);
                }
            },
            changed = stream.snapshots.changed() => {
                if changed.is_err() {
                    return Err(Status::unavailable("snapshot cache dropped"));
                }
                Event::Snapshot(stream.snapshots.borrow_and_update().clone())
            }
            _ = stream.closing.wait_for(|c| *c) => {
                return Err(Status::unavailable("control plane shutting down"));
            }
        };
        Ok(Some(match event {
            Event::Request(request) => stream.run(&self.inner, |m| m.on_request(request)),
            Event::Snapshot(Some(snapshot)) => stream.run(&self.inner, |m| m.on_snapshot(snapshot)),
            Event::Snapshot(None) => Vec::new(),
        }))
    }
}

impl<M: StreamMachine> Opened<M> {
    /// Runs `f` on the machine (never across an await) and counts its NACKs.
    fn run(&self, inner: &Inner, f: impl FnOnce(&mut M) -> Vec<M::Response>) -> Vec<M::Response> {
        let mut machine = self.machine.lock().unwrap_or_else(PoisonError::into_inner);
        let nacks_before = machine.nack_count();
        let responses = f(&mut machine);
        let nacks = machine.nack_count() - nacks_before;
        if nacks > 0 {
            inner.nacks.fetch_add(nacks, Ordering::Relaxed);
        }
        responses
    }
}

/// Initial capacity of a stream's encode and decode buffers. tonic's default is 8 KiB each,
/// held for the life of the stream; ADS streams are long-lived and, after the first
/// responses, carry small messages (the buffers grow as a message needs).
const CODEC_BUFFER_SIZE: usize = 512;
/// Encoded responses are handed to HTTP/2 once this many bytes are buffered (tonic's default).
const CODEC_YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER_SIZE, CODEC_YIELD_THRESHOLD)
}

/// The protobuf codec of the ADS streams, with small buffers.
struct AdsCodec<E, D>(PhantomData<fn() -> (E, D)>);

impl<E, D> Default for AdsCodec<E, D> {
    fn default() -> Self {
        AdsCodec(PhantomData)
    }
}

struct AdsEncoder<E>(PhantomData<fn(E)>);
struct AdsDecoder<D>(PhantomData<fn() -> D>);

impl<E, D> Codec for AdsCodec<E, D>
where
    E: Message + Send + 'static,
    D: Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = AdsEncoder<E>;
    type Decoder = AdsDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        AdsEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        AdsDecoder(PhantomData)
    }
}

impl<E: Message> Encoder for AdsEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a response: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

impl<D: Message + Default> Decoder for AdsDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("decoding a request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// One ADS method (SotW or delta) as a tonic streaming service.
struct Method<M>(AdsServer, PhantomData<fn() -> M>);

impl<M: StreamMachine> StreamingService<M::Request> for Method<M> {
    type Response = M::Response;
    type ResponseStream = ResponseStream<M::Response>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<M::Request>>) -> Self::Future {
        let stream = self.0.open::<M>(request.into_inner());
        Box::pin(async move { Ok(tonic::Response::new(stream)) })
    }
}

/// gRPC service name of ADS.
const SERVICE_NAME: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS gRPC service of an [`AdsServer`] (what `tonic-build` would generate, with a codec
/// whose per-stream buffers start small).
#[derive(Clone)]
pub struct AdsService {
    server: AdsServer,
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> tonic::codegen::Service<http::Request<B>> for AdsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        match request.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(AdsCodec::<SotwOut, XdsDiscoveryRequest>::default());
                Ok(grpc
                    .streaming(Method::<SotwStream>(server, PhantomData), request)
                    .await)
            }),
            DELTA_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(AdsCodec::<DeltaOut, XdsDeltaDiscoveryRequest>::default());
                Ok(grpc
                    .streaming(Method::<DeltaStream>(server, PhantomData), request)
                    .await)
            }),
            _ => Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            }),
        }
    }
}
