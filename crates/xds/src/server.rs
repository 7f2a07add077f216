//! The ADS server: one state machine per gRPC stream, driven by one `select!` loop, behind the
//! two methods of the generated service ([`crate::grpc`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest as XdsDeltaDiscoveryRequest, DiscoveryRequest as XdsDiscoveryRequest,
};
use futures::StreamExt;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Status, Streaming};

use crate::grpc::AggregatedDiscoveryService;
use crate::transport::{AdsService, Responses};
use crate::wire::{DeltaResponse, Encode, SharedEncodings, SotwResponse};
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

/// Told, for each proxy a changed snapshot reached, the time from the snapshot's origin to the
/// proxy's ACK of it.
pub type ConvergenceObserver = Box<dyn Fn(std::time::Duration) + Send + Sync>;

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
    /// Told each convergence (see [`AdsServer::on_convergence`]).
    convergence: std::sync::OnceLock<ConvergenceObserver>,
    /// Resources sections being sent, shared by the streams that send the same resources.
    shared: Arc<SharedEncodings>,
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
    type Response: Encode + Send + 'static;
    fn node(request: &Self::Request) -> Option<&XdsNode>;
    fn create(node: &XdsNode, key: String, id: u64) -> Self;
    fn on_request(&mut self, request: Self::Request) -> Vec<Self::Response>;
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<Self::Response>;
    fn status(&self) -> ProxyStatus;
    fn nack_count(&self) -> u64;
    /// Time from a rolled-out snapshot's origin to its rollout, once, if one was just reached.
    fn take_convergence(&mut self) -> Option<std::time::Duration>;
}

impl StreamMachine for SotwStream {
    type Request = XdsDiscoveryRequest;
    type Response = SotwResponse;
    fn node(request: &Self::Request) -> Option<&XdsNode> {
        request.node.as_ref()
    }
    fn create(node: &XdsNode, key: String, id: u64) -> Self {
        let mut s = SotwStream::new(node, key);
        s.set_stream_id(id);
        s
    }
    fn on_request(&mut self, request: Self::Request) -> Vec<Self::Response> {
        self.handle_request(request)
    }
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<Self::Response> {
        self.handle_snapshot_update(snapshot)
    }
    fn status(&self) -> ProxyStatus {
        SotwStream::status(self)
    }
    fn nack_count(&self) -> u64 {
        SotwStream::nack_count(self)
    }
    fn take_convergence(&mut self) -> Option<std::time::Duration> {
        self.take_convergence()
    }
}

impl StreamMachine for DeltaStream {
    type Request = XdsDeltaDiscoveryRequest;
    type Response = DeltaResponse;
    fn node(request: &Self::Request) -> Option<&XdsNode> {
        request.node.as_ref()
    }
    fn create(node: &XdsNode, key: String, id: u64) -> Self {
        let mut s = DeltaStream::new(node, key);
        s.set_stream_id(id);
        s
    }
    fn on_request(&mut self, request: Self::Request) -> Vec<Self::Response> {
        self.handle_request(request)
    }
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<Self::Response> {
        self.handle_snapshot_update(snapshot)
    }
    fn status(&self) -> ProxyStatus {
        DeltaStream::status(self)
    }
    fn nack_count(&self) -> u64 {
        DeltaStream::nack_count(self)
    }
    fn take_convergence(&mut self) -> Option<std::time::Duration> {
        self.take_convergence()
    }
}

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
                convergence: std::sync::OnceLock::new(),
                shared: Arc::default(),
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

    /// Calls `observe` for each proxy a changed snapshot reached, with the time from the
    /// snapshot's origin ([`Snapshot::with_origin`]) to the proxy's ACK of its listeners and
    /// routes; set once (later calls are ignored).
    pub fn on_convergence(&self, observe: ConvergenceObserver) {
        let _ = self.inner.convergence.set(observe);
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
        AdsService::new(self.clone())
    }

    /// Serves ADS on `listener` until `shutdown` completes; then ends all streams and returns.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError> {
        self.serve_incoming(TcpListenerStream::new(listener), shutdown)
            .await
    }

    /// Serves ADS on the connections `incoming` yields (a listener with
    /// limits of its own) until `shutdown` completes; then ends all streams
    /// and returns.
    pub async fn serve_incoming<I, IO, IE>(
        &self,
        incoming: I,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError>
    where
        I: futures::Stream<Item = Result<IO, IE>> + Send,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.serve_incoming_with(incoming, tonic::service::Routes::default(), shutdown)
            .await
    }

    /// [`AdsServer::serve_incoming`] with more gRPC services on the same connections (the
    /// stats intake): they see the same listener's identity in their requests' extensions.
    pub async fn serve_incoming_with<I, IO, IE>(
        &self,
        incoming: I,
        more: tonic::service::Routes,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), XdsError>
    where
        I: futures::Stream<Item = Result<IO, IE>> + Send,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let this = self.clone();
        let shutdown = async move {
            shutdown.await;
            // Streams never end on their own: end them, or graceful shutdown waits forever.
            this.close_streams();
        };
        tonic::transport::Server::builder()
            // Detect dead peers on long-lived streams: a ping every 30 s,
            // and the connection closed if one goes unanswered for 20 s.
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            .add_routes(more)
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }

    /// The responses of one ADS call. No task and no channel of its own: the stream machine
    /// runs inside the response body's `poll_next` (in the HTTP/2 stream's task), so each
    /// response is computed when the connection can take it.
    fn open<M: StreamMachine>(
        &self,
        request: tonic::Request<Streaming<M::Request>>,
    ) -> tonic::Response<Responses<M::Response>> {
        let peer = request.extensions().get::<PeerIdentity>().cloned();
        let requests = request.into_inner();
        let driver = Driver::<M> {
            peer,
            inner: self.inner.clone(),
            requests,
            stream: None,
            queue: Vec::new().into_iter(),
            done: false,
        };
        let responses = futures::stream::unfold(driver, |mut driver| async move {
            let item = driver.next().await?;
            Some((item, driver))
        });
        crate::transport::offer(Box::pin(responses), self.inner.shared.clone())
    }
}

/// The two ADS methods, called by the generated service with requests decoded.
#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = Responses<SotwResponse>;
    type DeltaAggregatedResourcesStream = Responses<DeltaResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<Streaming<XdsDiscoveryRequest>>,
    ) -> Result<tonic::Response<Responses<SotwResponse>>, Status> {
        Ok(self.open::<SotwStream>(request))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<Streaming<XdsDeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Responses<DeltaResponse>>, Status> {
        Ok(self.open::<DeltaStream>(request))
    }
}

/// Who is at the other end of an xDS connection, as the listener authenticated it: put in
/// each request's extensions (as a listener's `ConnectInfo`). When present, a stream whose
/// node names another resource than `resource` is refused with PERMISSION_DENIED.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// The peer's address.
    pub remote: Option<std::net::SocketAddr>,
    /// The resource its certificate names (`mesh/<m>/virtualNode/<n>` or
    /// `mesh/<m>/virtualGateway/<n>`).
    pub resource: String,
}

/// The resource path in a node id: the id itself, or what follows the last `:` of an ARN.
pub fn node_resource(node_id: &str) -> &str {
    if node_id.starts_with("arn:") {
        node_id.rsplit(':').next().unwrap_or(node_id)
    } else {
        node_id
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
    /// The authenticated peer, when the listener authenticates.
    peer: Option<PeerIdentity>,
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
            if let Some(peer) = &self.peer {
                if node_resource(&node.id) != peer.resource {
                    tracing::warn!(
                        node = %node.id,
                        certificate = %peer.resource,
                        remote = ?peer.remote,
                        "ADS stream refused: the node is not the resource its certificate names"
                    );
                    return Err(Status::permission_denied(format!(
                        "node {} is not {}, the resource this connection's certificate names",
                        node.id, peer.resource
                    )));
                }
            }
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
        if let Some(took) = machine.take_convergence() {
            if let Some(observe) = inner.convergence.get() {
                observe(took);
            }
        }
        let nacks = machine.nack_count() - nacks_before;
        if nacks > 0 {
            inner.nacks.fetch_add(nacks, Ordering::Relaxed);
        }
        responses
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse as XdsDiscoveryResponse;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::codegen::http;

    use super::*;
    use crate::test_helpers::{eds_cluster, node, sotw_request};
    use crate::{Resource, CLUSTER_TYPE_URL};

    const SOTW_PATH: &str =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

    /// A server on a free loopback port, serving `cache`.
    async fn start(cache: SnapshotCache) -> (AdsServer, tonic::transport::Channel) {
        let server = AdsServer::new(cache, Arc::new(NodeIdResolver));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = server.clone();
        tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        (server, channel)
    }

    /// Opens a SotW stream: the sender of its requests and the stream of its responses.
    async fn open_sotw(
        channel: tonic::transport::Channel,
    ) -> (
        mpsc::Sender<XdsDiscoveryRequest>,
        Streaming<XdsDiscoveryResponse>,
    ) {
        let (tx, rx) = mpsc::channel(4);
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let responses = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(rx)),
                http::uri::PathAndQuery::from_static(SOTW_PATH),
                tonic_prost::ProstCodec::<XdsDiscoveryRequest, XdsDiscoveryResponse>::default(),
            )
            .await
            .unwrap()
            .into_inner();
        (tx, responses)
    }

    async fn next(responses: &mut Streaming<XdsDiscoveryResponse>) -> XdsDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .expect("a response in time")
            .unwrap()
            .expect("the stream is open")
    }

    #[tokio::test]
    async fn ten_proxies_of_one_node_each_receive_all_forty_clusters_over_grpc() {
        let cache = SnapshotCache::new();
        let clusters: Vec<Resource> = (0..40)
            .map(|i| {
                let name = format!("backend-{i:02}");
                Resource::from_message(&name, eds_cluster(&name))
            })
            .collect();
        cache.set_snapshot(
            "red",
            Arc::new(Snapshot::from_typed(clusters.clone()).unwrap()),
        );
        let (server, channel) = start(cache).await;
        let mut streams = Vec::new();
        for _ in 0..10 {
            let (tx, mut responses) = open_sotw(channel.clone()).await;
            let mut request = sotw_request(CLUSTER_TYPE_URL, &[], "", "");
            request.node = Some(node("red"));
            tx.send(request).await.unwrap();
            streams.push((tx, next(&mut responses).await, responses));
        }
        for (_, response, _) in &streams {
            // The resources section (shared between the streams) and the stream's own fields
            // arrive as one message: every cluster, in name order, and a version and nonce.
            let bodies = response.resources.clone();
            let expected: Vec<_> = clusters.iter().map(|r| r.body.to_any()).collect();
            assert_eq!(bodies, expected);
            assert_eq!(response.type_url, CLUSTER_TYPE_URL);
            assert!(!response.version_info.is_empty() && !response.nonce.is_empty());
        }
        assert_eq!(server.proxy_status().len(), 10);
    }

    #[tokio::test]
    async fn a_stream_without_a_node_ends_with_invalid_argument_and_shutdown_with_unavailable() {
        let cache = SnapshotCache::new();
        let (server, channel) = start(cache).await;

        let (tx, mut responses) = open_sotw(channel.clone()).await;
        let mut request = sotw_request(CLUSTER_TYPE_URL, &[], "", "");
        request.node = None;
        tx.send(request).await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("must carry node"), "{status:?}");

        let (tx, mut responses) = open_sotw(channel).await;
        tx.send(sotw_request(CLUSTER_TYPE_URL, &[], "", ""))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while server.proxy_status().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        server.close_streams();
        let status = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }

    /// A TCP connection the listener says is `mesh/m/virtualNode/a`'s.
    struct AsNodeA(tokio::net::TcpStream);

    impl tokio::io::AsyncRead for AsNodeA {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for AsNodeA {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }

    impl tonic::transport::server::Connected for AsNodeA {
        type ConnectInfo = PeerIdentity;
        fn connect_info(&self) -> PeerIdentity {
            PeerIdentity {
                remote: self.0.peer_addr().ok(),
                resource: "mesh/m/virtualNode/a".into(),
            }
        }
    }

    #[tokio::test]
    async fn a_peer_whose_certificate_names_node_a_gets_node_a_and_is_refused_node_b() {
        let cache = SnapshotCache::new();
        let a = "arn:aws:appmesh:us-east-1:000000000000:mesh/m/virtualNode/a";
        let b = "mesh/m/virtualNode/b";
        for key in [a, b] {
            let cluster = Resource::from_message("backend", eds_cluster("backend"));
            cache.set_snapshot(key, Arc::new(Snapshot::from_typed(vec![cluster]).unwrap()));
        }
        let server = AdsServer::new(cache, Arc::new(NodeIdResolver));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = futures::stream::unfold(listener, |l| async move {
            let accepted = l.accept().await.map(|(io, _)| AsNodeA(io));
            Some((accepted, l))
        });
        let serving = server.clone();
        tokio::spawn(async move {
            serving
                .serve_incoming(Box::pin(incoming), std::future::pending())
                .await
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();

        let (tx, mut responses) = open_sotw(channel.clone()).await;
        let mut request = sotw_request(CLUSTER_TYPE_URL, &[], "", "");
        request.node = Some(node(a));
        tx.send(request).await.unwrap();
        assert_eq!(next(&mut responses).await.resources.len(), 1);

        let (tx, mut responses) = open_sotw(channel).await;
        let mut request = sotw_request(CLUSTER_TYPE_URL, &[], "", "");
        request.node = Some(node(b));
        tx.send(request).await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("virtualNode/b"), "{status:?}");
        assert_eq!(server.proxy_status().len(), 1);
    }
}
