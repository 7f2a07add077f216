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
//! - `weft_xds_nacks_total`: NACKs since the server started;
//! - `weft_store_commit_duration_seconds`: from a transaction's submission to its outcome being
//!   durable (the group commit's fsync included), a histogram, for every part that writes;
//! - `weft_proxy_convergence_time_seconds`: from a store change reaching the control plane to
//!   each affected Envoy's ACK of it, a histogram (Istio's `pilot_proxy_convergence_time`).
//!
//! The xDS figures are read from the ADS server at each scrape, as `weft proxy-status` reads
//! them, so they cost nothing between scrapes.

use std::collections::HashMap;
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
    commits: Histogram,
    handles: RequestHandles,
}

/// Each operation's latency histogram and its counters by outcome, as handles into the
/// families: a request finds its own under a read lock by `&str`, where the families would
/// take two freshly allocated label sets per request to look it up.
#[derive(Debug, Default)]
struct RequestHandles {
    by_operation: std::sync::RwLock<HashMap<String, OperationHandles>>,
}

#[derive(Debug)]
struct OperationHandles {
    duration: Histogram,
    outcomes: HashMap<String, Counter>,
}

impl ServerMetrics {
    /// The metrics before the ADS server exists (see [`ServerMetrics::with_xds`]): the store
    /// can be metered from its opening.
    pub fn new() -> ServerMetrics {
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
        let commits = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "store_commit_duration_seconds",
            "Time from a store transaction's submission to its outcome being durable",
            commits.clone(),
        );
        ServerMetrics {
            registry,
            requests,
            durations,
            commits,
            handles: RequestHandles::default(),
        }
    }

    /// `store`, timing every transaction into `weft_store_commit_duration_seconds`.
    pub fn metered(&self, store: weft_store::SharedStore) -> weft_store::SharedStore {
        Arc::new(MeteredStore {
            inner: store,
            commits: self.commits.clone(),
        })
    }

    /// These metrics with `collector`'s (another part's figures, read at each scrape).
    pub fn with_collector(mut self, collector: Box<dyn Collector>) -> ServerMetrics {
        self.registry.register_collector(collector);
        self
    }

    /// These metrics with the ADS server's figures, read at each scrape.
    pub fn with_xds(mut self, ads: AdsServer) -> Arc<ServerMetrics> {
        // 1 ms to about 18 s, each bucket 1.25 times the last: a change reaches a quiet mesh's
        // Envoys in milliseconds, and histogram_quantile interpolates linearly within a
        // bucket, so a p99 read from doubling buckets could be off by up to half its value
        // (weft-bench envoys compares it with the Envoys' ACKs seen from outside).
        let convergence = Histogram::new(exponential_buckets(0.001, 1.25, 45));
        self.registry.register(
            "proxy_convergence_time_seconds",
            "From a store change reaching the control plane to each affected Envoy's ACK of the \
             listeners and routes it changed (Istio's pilot_proxy_convergence_time)",
            convergence.clone(),
        );
        ads.on_convergence(Box::new(move |took| {
            convergence.observe(took.as_secs_f64())
        }));
        self.registry
            .register_collector(Box::new(XdsCollector { ads }));
        Arc::new(self)
    }

    /// Records one answered request.
    pub fn observe_request(&self, operation: &str, outcome: &str, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Ok(known) = self.handles.by_operation.read() {
            if let Some(op) = known.get(operation) {
                if let Some(counter) = op.outcomes.get(outcome) {
                    counter.inc();
                    op.duration.observe(seconds);
                    return;
                }
            }
        }
        // A pair not seen before: its handles from the families, kept for the next requests.
        let counter = self
            .requests
            .get_or_create(&RequestLabels {
                operation: operation.to_string(),
                outcome: outcome.to_string(),
            })
            .clone();
        let duration = self
            .durations
            .get_or_create(&OperationLabel {
                operation: operation.to_string(),
            })
            .clone();
        counter.inc();
        duration.observe(seconds);
        if let Ok(mut known) = self.handles.by_operation.write() {
            known
                .entry(operation.to_string())
                .or_insert_with(|| OperationHandles {
                    duration,
                    outcomes: HashMap::new(),
                })
                .outcomes
                .entry(outcome.to_string())
                .or_insert(counter);
        }
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

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics::new()
    }
}

/// A store whose transactions are timed.
struct MeteredStore {
    inner: weft_store::SharedStore,
    commits: Histogram,
}

#[async_trait::async_trait]
impl weft_store::Store for MeteredStore {
    async fn get(&self, key: &str) -> Result<Option<weft_store::KeyValue>, weft_store::StoreError> {
        self.inner.get(key).await
    }
    async fn range(
        &self,
        range: weft_store::Range,
    ) -> Result<weft_store::RangeResult, weft_store::StoreError> {
        self.inner.range(range).await
    }
    async fn count(&self, range: weft_store::Range) -> Result<usize, weft_store::StoreError> {
        self.inner.count(range).await
    }
    async fn get_latest(
        &self,
        key: &str,
    ) -> Result<Option<weft_store::KeyValue>, weft_store::StoreError> {
        self.inner.get_latest(key).await
    }
    async fn range_latest(
        &self,
        range: weft_store::Range,
    ) -> Result<weft_store::RangeResult, weft_store::StoreError> {
        self.inner.range_latest(range).await
    }
    async fn count_latest(
        &self,
        range: weft_store::Range,
    ) -> Result<usize, weft_store::StoreError> {
        self.inner.count_latest(range).await
    }
    async fn snapshot<'a>(
        &'a self,
    ) -> Result<Box<dyn weft_store::StoreSnapshot + 'a>, weft_store::StoreError> {
        self.inner.snapshot().await
    }
    async fn sync(&self) -> Result<(), weft_store::StoreError> {
        self.inner.sync().await
    }
    async fn read_ahead(
        &self,
        keys: &[String],
        fresh: bool,
    ) -> Result<weft_store::ReadAhead, weft_store::StoreError> {
        self.inner.read_ahead(keys, fresh).await
    }
    fn reads_ahead(&self) -> bool {
        self.inner.reads_ahead()
    }
    async fn get_latest_ahead(
        &self,
        key: &str,
        ahead: &weft_store::ReadAhead,
    ) -> Result<Option<weft_store::KeyValue>, weft_store::StoreError> {
        self.inner.get_latest_ahead(key, ahead).await
    }
    async fn txn(
        &self,
        txn: weft_store::Txn,
    ) -> Result<weft_store::TxnOutcome, weft_store::StoreError> {
        let started = std::time::Instant::now();
        let outcome = self.inner.txn(txn).await;
        self.commits.observe(started.elapsed().as_secs_f64());
        outcome
    }
    async fn txn_deferred(
        &self,
        txn: weft_store::Txn,
    ) -> Result<(weft_store::TxnOutcome, weft_store::Durability), weft_store::StoreError> {
        let started = std::time::Instant::now();
        let (outcome, durable) = self.inner.txn_deferred(txn).await?;
        let commits = self.commits.clone();
        let durable: weft_store::Durability = Box::pin(async move {
            let done = durable.await;
            commits.observe(started.elapsed().as_secs_f64());
            done
        });
        Ok((outcome, durable))
    }
    async fn revision(&self) -> Result<weft_store::Revision, weft_store::StoreError> {
        self.inner.revision().await
    }
    fn health(&self) -> weft_store::StoreHealth {
        self.inner.health()
    }
    async fn watch(
        &self,
        prefix: &str,
        after: weft_store::Revision,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<weft_store::WatchEvent, weft_store::StoreError>>,
        weft_store::StoreError,
    > {
        self.inner.watch(prefix, after).await
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
