//! `envoy.service.metrics.v3.MetricsService`: each Envoy's `metrics_service` stat sink opens one
//! client stream and sends a `StreamMetricsMessage` per flush, its node named in the first
//! (<https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/metrics/v3/metrics_service.proto>).
//! Served on the xDS listener, so a stream carries the TLS identity the listener authenticated
//! ([`weft_xds::PeerIdentity`]) and is refused when its node names another resource, as ADS
//! refuses it.

use std::time::Instant;

use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use tonic::{Request, Response, Status, Streaming};
use weft_xds::PeerIdentity;

use crate::error::TrafficError;
use crate::history::Source;
use crate::snapshot::ProxyKind;
use crate::store::TrafficStore;

mod generated {
    #![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.service.metrics.v3.MetricsService.rs"
    ));
}

pub use generated::metrics_service_server::{MetricsService, MetricsServiceServer};

/// The node metadata key where `weft agent` says how often its Envoy flushes stats, in seconds.
pub const FLUSH_INTERVAL_METADATA: &str = "weft.stats_flush_interval_seconds";

/// Envoy's default flush interval, for a node that does not say its own.
const DEFAULT_FLUSH_SECONDS: f64 = 5.0;

/// The largest message taken: a full flush of a proxy with hundreds of clusters is a few MB
/// (tonic's default limit is 4 MB).
const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// The stats intake: a [`MetricsService`] writing into a [`TrafficStore`].
#[derive(Clone)]
pub struct StatsIntake {
    store: TrafficStore,
}

impl StatsIntake {
    /// An intake feeding `store`.
    pub fn new(store: TrafficStore) -> Self {
        StatsIntake { store }
    }

    /// The gRPC service, to add beside ADS.
    pub fn service(self) -> MetricsServiceServer<StatsIntake> {
        MetricsServiceServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The service as routes, for `weft_xds::AdsServer::serve_incoming_with`.
    pub fn routes(self) -> tonic::service::Routes {
        tonic::service::Routes::new(self.service())
    }
}

/// The source a node id names (`mesh/<m>/virtualNode/<n>`, `mesh/<m>/virtualGateway/<n>`, or
/// an ARN ending so).
pub fn source_of(node_id: &str) -> Result<Source, TrafficError> {
    let resource = weft_xds::node_resource(node_id);
    let unknown = || TrafficError::UnknownNode(node_id.to_string());
    let mut parts = resource.split('/');
    let (Some("mesh"), Some(mesh), Some(kind), Some(name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(unknown());
    };
    let kind = match kind {
        "virtualNode" => ProxyKind::VirtualNode,
        "virtualGateway" => ProxyKind::VirtualGateway,
        _ => return Err(unknown()),
    };
    if mesh.is_empty() || name.is_empty() {
        return Err(unknown());
    }
    Ok(Source {
        mesh: mesh.to_string(),
        kind,
        name: name.to_string(),
        proxy_id: node_id.to_string(),
    })
}

/// The proxy a stream's first message names, checked against the connection's identity.
fn identify(
    first: &StreamMetricsMessage,
    peer: Option<&PeerIdentity>,
) -> Result<(Source, f64), TrafficError> {
    let node = first
        .identifier
        .as_ref()
        .and_then(|i| i.node.as_ref())
        .filter(|n| !n.id.is_empty())
        .ok_or(TrafficError::Unidentified)?;
    let source = source_of(&node.id)?;
    if let Some(peer) = peer {
        let claimed = weft_xds::node_resource(&node.id);
        if claimed != peer.resource {
            return Err(TrafficError::WrongIdentity {
                claimed: claimed.to_string(),
                certified: peer.resource.clone(),
            });
        }
    }
    let interval = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(FLUSH_INTERVAL_METADATA))
        .and_then(|v| match v.kind {
            Some(envoy_types::pb::google::protobuf::value::Kind::NumberValue(n)) => Some(n),
            _ => None,
        })
        .filter(|n| n.is_finite() && *n > 0.0 && *n <= 300.0)
        .unwrap_or(DEFAULT_FLUSH_SECONDS);
    Ok((source, interval))
}

#[tonic::async_trait]
impl MetricsService for StatsIntake {
    async fn stream_metrics(
        &self,
        request: Request<Streaming<StreamMetricsMessage>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        let peer = request.extensions().get::<PeerIdentity>().cloned();
        let mut stream = request.into_inner();
        let mut source: Option<(Source, f64)> = None;
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(Response::new(StreamMetricsResponse {})),
                Err(status) => {
                    // Undecodable data or a broken connection: the stream ends, counted; the
                    // Envoy opens another at its next flush.
                    if status.code() != tonic::Code::Cancelled {
                        self.store.count_refused(true);
                    }
                    tracing::debug!(%status, "a metrics stream ended with an error");
                    return Err(status);
                }
            };
            let (who, interval) = match &source {
                Some(s) => s,
                None => match identify(&message, peer.as_ref()) {
                    Ok(s) => source.insert(s),
                    Err(e) => {
                        self.store.count_refused(false);
                        let status = match e {
                            TrafficError::WrongIdentity { .. } => Status::permission_denied,
                            _ => Status::invalid_argument,
                        };
                        return Err(status(e.to_string()));
                    }
                },
            };
            let started = Instant::now();
            let flush = crate::parse::read(&message.envoy_metrics);
            self.store.ingest(who, &flush, *interval);
            tracing::trace!(took = ?started.elapsed(), proxy = %who.proxy_id, "stats ingested");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn node_ids_name_their_mesh_kind_and_name() {
        let s = source_of("mesh/apps/virtualGateway/edge").unwrap();
        assert_eq!(
            (s.mesh.as_str(), s.kind, s.name.as_str()),
            ("apps", ProxyKind::VirtualGateway, "edge")
        );
        let arn = "arn:aws:appmesh:us-east-1:000000000000:mesh/apps/virtualNode/front";
        assert_eq!(source_of(arn).unwrap().name, "front");
        assert!(source_of("mesh/apps/route/x").is_err());
        assert!(source_of("garbage").is_err());
    }
}
