//! The ADS gRPC service: one state machine per stream, driven by one `select!` loop.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService as XdsAggregatedDiscoveryService,
    AggregatedDiscoveryServiceServer as XdsAggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest as XdsDeltaDiscoveryRequest,
    DeltaDiscoveryResponse as XdsDeltaDiscoveryResponse, DiscoveryRequest as XdsDiscoveryRequest,
    DiscoveryResponse as XdsDiscoveryResponse,
};
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

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

struct Inner {
    cache: SnapshotCache,
    resolver: Arc<dyn NodeResolver>,
    streams: Mutex<HashMap<u64, ProxyStatus>>,
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

/// Removes a stream from the status table when its task ends, however it ends.
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

/// What the driver loop needs from a stream machine, SotW or delta.
trait StreamMachine: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    fn node(request: &Self::Request) -> Option<&XdsNode>;
    fn create(node: &XdsNode, key: String, id: u64) -> Self;
    fn on_request(&mut self, request: Self::Request) -> Vec<Self::Response>;
    fn on_snapshot(&mut self, snapshot: Arc<Snapshot>) -> Vec<Self::Response>;
    fn status(&self) -> ProxyStatus;
}

impl StreamMachine for SotwStream {
    type Request = XdsDiscoveryRequest;
    type Response = XdsDiscoveryResponse;
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
}

impl StreamMachine for DeltaStream {
    type Request = XdsDeltaDiscoveryRequest;
    type Response = XdsDeltaDiscoveryResponse;
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
    pub fn proxy_status(&self) -> Vec<ProxyStatus> {
        let streams = self
            .inner
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<ProxyStatus> = streams.values().cloned().collect();
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

    /// The tonic service, to add to a `tonic::transport::Server`.
    pub fn service(&self) -> XdsAggregatedDiscoveryServiceServer<AdsServer> {
        XdsAggregatedDiscoveryServiceServer::new(self.clone())
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

    fn open<M: StreamMachine>(
        &self,
        mut requests: Streaming<M::Request>,
    ) -> ResponseStream<M::Response> {
        let (tx, rx) = mpsc::channel::<Result<M::Response, Status>>(16);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(status) = drive::<M>(inner, &mut requests, &tx).await {
                // The client may be gone already; nothing more to do then.
                let _ = tx.send(Err(status)).await;
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

/// Runs one stream: resolves the node from the first request, then one `select!` loop over
/// Envoy's requests, snapshot changes for the key, and server shutdown.
async fn drive<M: StreamMachine>(
    inner: Arc<Inner>,
    requests: &mut Streaming<M::Request>,
    tx: &mpsc::Sender<Result<M::Response, Status>>,
) -> Result<(), Status> {
    let Some(first) = requests.next().await.transpose()? else {
        return Ok(());
    };
    let node = M::node(&first)
        .cloned()
        .ok_or_else(|| Status::invalid_argument("the first request of a stream must carry node"))?;
    let key = inner.resolver.snapshot_key(&node)?;
    let id = inner.next_stream_id.fetch_add(1, Ordering::Relaxed);
    let mut machine = M::create(&node, key.clone(), id);
    let _guard = StreamGuard {
        inner: inner.clone(),
        id,
    };
    tracing::info!(node = %node.id, snapshot_key = %key, stream = id, "ADS stream opened");
    let mut snapshots = inner.cache.watch(&key);
    let mut closing = inner.closing.subscribe();
    let mut pending_request = Some(first);
    loop {
        let nacks_before = machine.status().nack_count;
        let responses = if let Some(request) = pending_request.take() {
            machine.on_request(request)
        } else {
            tokio::select! {
                request = requests.next() => match request {
                    Some(Ok(request)) => machine.on_request(request),
                    Some(Err(status)) => {
                        tracing::info!(node = %node.id, stream = id, %status, "ADS stream failed");
                        return Ok(());
                    }
                    None => {
                        tracing::info!(node = %node.id, stream = id, "ADS stream closed by the proxy");
                        return Ok(());
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("snapshot cache dropped"));
                    }
                    let snapshot = snapshots.borrow_and_update().clone();
                    match snapshot {
                        Some(snapshot) => machine.on_snapshot(snapshot),
                        None => Vec::new(),
                    }
                }
                _ = closing.wait_for(|c| *c) => {
                    return Err(Status::unavailable("control plane shutting down"));
                }
            }
        };
        let status = machine.status();
        inner
            .nacks
            .fetch_add(status.nack_count - nacks_before, Ordering::Relaxed);
        inner
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, status);
        for response in responses {
            if tx.send(Ok(response)).await.is_err() {
                return Ok(());
            }
        }
    }
}

#[tonic::async_trait]
impl XdsAggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<XdsDiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<XdsDeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<XdsDiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(self.open::<SotwStream>(request.into_inner())))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<XdsDeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(
            self.open::<DeltaStream>(request.into_inner()),
        ))
    }
}
