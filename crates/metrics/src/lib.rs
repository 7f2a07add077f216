//! Weft's own metrics, for Prometheus: `GET /metrics` on the API listener answers the
//! OpenMetrics text exposition (<https://prometheus.io/docs/specs/om/open_metrics_spec/>),
//! written by the official Prometheus Rust client (`prometheus-client`).
//!
//! - `weft_api_requests_total{operation, outcome}`: App Mesh, Cloud Map and Weft admin requests
//!   by operation (`appmesh:CreateVirtualNode`, `servicediscovery:RegisterInstance`, …) and
//!   outcome (`Success` or the error's name, as AWS names it);
//! - `weft_api_request_duration_seconds{operation}`: their latency, a histogram;
//! - `weft_xds_connected_proxies{protocol}`: ADS streams open now (SotW, delta);
//! - `weft_xds_proxies_converging`: streams whose latest snapshot is not fully ACKed;
//! - `weft_xds_responses_sent{type}`: responses sent on the open streams, per resource type;
//! - `weft_xds_nacks_total`: NACKs since the server started.
//!
//! The xDS figures are read from the ADS server at each scrape, as `weft proxy-status` reads
//! them, so they cost nothing between scrapes.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use weft_xds::AdsServer;

/// Where the metrics are served.
pub const METRICS_PATH: &str = "/metrics";

/// The labels of a request count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    outcome: String,
}

/// The label of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

/// The server's metrics: what requests record, and the registry a scrape encodes.
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<OperationLabel, Histogram>,
}

impl ServerMetrics {
    /// The metrics of a server whose ADS server is `ads`.
    pub fn new(ads: AdsServer) -> Arc<ServerMetrics> {
        let mut registry = Registry::with_prefix("weft");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "App Mesh, Cloud Map and Weft admin API requests, by operation and outcome",
            requests.clone(),
        );
        // 100 µs to about 3 s: a describe answers in well under a millisecond, a write waits
        // for the disk.
        let durations = Family::<OperationLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register(
            "api_request_duration_seconds",
            "Time from a request's arrival to its answer, by operation",
            durations.clone(),
        );
        registry.register_collector(Box::new(XdsCollector { ads }));
        Arc::new(ServerMetrics {
            registry,
            requests,
            durations,
        })
    }

    /// Records one answered request.
    pub fn observe_request(&self, operation: &str, outcome: &str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                operation: operation.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.durations
            .get_or_create(&OperationLabel {
                operation: operation.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The exposition, OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The ADS server's figures, read at each scrape.
struct XdsCollector {
    ads: AdsServer,
}

impl std::fmt::Debug for XdsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XdsCollector")
    }
}

impl Collector for XdsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let streams = self.ads.proxy_status();
        let mut by_protocol: std::collections::BTreeMap<String, i64> = Default::default();
        let mut by_type: std::collections::BTreeMap<String, i64> = Default::default();
        let mut converging = 0i64;
        for s in &streams {
            *by_protocol
                .entry(format!("{:?}", s.protocol).to_lowercase())
                .or_default() += 1;
            for (type_url, t) in &s.types {
                let short = type_url.rsplit('.').next().unwrap_or(type_url).to_string();
                *by_type.entry(short).or_default() +=
                    i64::try_from(t.responses_sent).unwrap_or(i64::MAX);
            }
            let acked = s
                .types
                .values()
                .all(|t| t.pending_nonce.is_none() && t.sent_version == t.acked_version);
            if !acked {
                converging += 1;
            }
        }
        let connected = encoder.encode_descriptor(
            "xds_connected_proxies",
            "ADS streams open now, by protocol",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let mut connected = connected;
        for (protocol, n) in &by_protocol {
            let labels = [("protocol", protocol.as_str())];
            ConstGauge::new(*n).encode(connected.encode_family(&labels)?)?;
        }
        let gauge = ConstGauge::new(converging);
        gauge.encode(encoder.encode_descriptor(
            "xds_proxies_converging",
            "ADS streams with a response not yet ACKed",
            None,
            gauge.metric_type(),
        )?)?;
        let mut sent = encoder.encode_descriptor(
            "xds_responses_sent",
            "Responses sent on the open ADS streams, by resource type",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (type_name, n) in &by_type {
            let labels = [("type", type_name.as_str())];
            ConstGauge::new(*n).encode(sent.encode_family(&labels)?)?;
        }
        let nacks = ConstCounter::new(self.ads.nack_count());
        nacks.encode(encoder.encode_descriptor(
            "xds_nacks",
            "Responses Envoys rejected (NACKed) since the server started",
            None,
            nacks.metric_type(),
        )?)?;
        Ok(())
    }
}

/// `GET /metrics`.
pub fn router(metrics: Arc<ServerMetrics>) -> Router {
    Router::new().route(
        METRICS_PATH,
        get(move || {
            let metrics = metrics.clone();
            async move {
                match metrics.encode() {
                    Ok(text) => (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    )
}
