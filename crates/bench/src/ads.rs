//! Simulated Envoys: ADS clients (state-of-the-world and delta) over real
//! gRPC that subscribe, follow and ACK like Envoy does, many streams
//! multiplexed over a few HTTP/2 connections.
//!
//! Like Envoy, a proxy subscribes to every cluster and listener (wildcard),
//! then to the endpoints (EDS) of its EDS clusters and the route
//! configurations (RDS) its listeners' HTTP connection managers name, and
//! ACKs every response at once. Per proxy it records how many responses it
//! got, when it sent its last ACK, and (optionally) the encoded size of every
//! resource it holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Type URL of clusters (CDS).
pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of endpoints (EDS).
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of listeners (LDS).
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of route configurations (RDS).
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// HTTP connection manager's type URL inside a listener's filter.
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// gRPC paths of the two ADS methods.
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

// What a simulated proxy reads of a response: the fields an Envoy-like ACK and subscription
// need, with the resources' bodies as shared `Bytes` (no copy, no decoding of the typed
// resource unless a body is seen for the first time, see `NameCache`). Field numbers are
// those of envoy.service.discovery.v3 and google.protobuf.Any; fields not listed are skipped.
// A load generator that fully decoded every response competed with the server for the same
// two cores.

/// `google.protobuf.Any`, body not decoded. The type URL is read as bytes (same wire type):
/// only its length counts, and a SotW CDS response carries every cluster each time.
#[derive(Clone, PartialEq, prost::Message)]
struct LiteAny {
    #[prost(bytes = "bytes", tag = "1")]
    type_url: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// `DiscoveryResponse` (state of the world).
#[derive(Clone, PartialEq, prost::Message)]
struct LiteResponse {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<LiteAny>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

/// `Resource` of a delta response.
#[derive(Clone, PartialEq, prost::Message)]
struct LiteDeltaResource {
    #[prost(string, tag = "1")]
    version: String,
    #[prost(message, optional, tag = "2")]
    resource: Option<LiteAny>,
    #[prost(string, tag = "3")]
    name: String,
}

/// `DeltaDiscoveryResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct LiteDeltaResponse {
    #[prost(string, tag = "1")]
    system_version_info: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<LiteDeltaResource>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
    #[prost(string, repeated, tag = "6")]
    removed_resources: Vec<String>,
}

/// Opens one ADS stream (`path`) sending `requests`, reading lite responses `D`.
async fn open_stream<E, D>(
    channel: Channel,
    path: &'static str,
    requests: mpsc::Receiver<E>,
) -> Result<tonic::Streaming<D>>
where
    E: Message + Send + Sync + 'static,
    D: Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    grpc.ready()
        .await
        .context("the ADS connection is not ready")?;
    let response = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(requests)),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::<E, D>::default(),
        )
        .await?;
    Ok(response.into_inner())
}

/// Which ADS variant the simulated proxies speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AdsProtocol {
    /// Incremental xDS (`DeltaAggregatedResources`), what `weft agent` uses by default.
    Delta,
    /// State of the world (`StreamAggregatedResources`).
    Sotw,
}

impl AdsProtocol {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            AdsProtocol::Delta => "delta",
            AdsProtocol::Sotw => "sotw",
        }
    }
}

fn type_bit(type_url: &str) -> u8 {
    match type_url {
        CDS => 1,
        EDS => 2,
        LDS => 4,
        RDS => 8,
        _ => 0,
    }
}

/// What one simulated proxy saw; updated lock-free by its task.
#[derive(Default)]
pub struct ProxyStats {
    /// Responses received.
    pub responses: AtomicU64,
    /// When the last ACK was sent, in µs since the fleet's epoch.
    pub last_ack_us: AtomicU64,
    /// Bit set of the types received at least once (CDS 1, EDS 2, LDS 4, RDS 8).
    pub types_seen: AtomicU8,
    /// Bit set of the types subscribed to: CDS and LDS, and EDS and RDS once
    /// some cluster or listener references them.
    pub types_wanted: AtomicU8,
    /// Encoded bytes of all resources received, resent ones included.
    pub bytes_received: AtomicU64,
    /// Encoded bytes of the resources currently held (only with `track_held`).
    pub bytes_held: AtomicU64,
    /// Number of resources currently held (only with `track_held`).
    pub resources_held: AtomicU64,
}

impl ProxyStats {
    /// Whether the proxy holds config of every type it subscribed to (at
    /// least clusters and listeners).
    pub fn has_all_types(&self) -> bool {
        let wanted = self.types_wanted.load(Ordering::Relaxed) | 5;
        self.types_seen.load(Ordering::Relaxed) & wanted == wanted
    }
}

/// One proxy to simulate.
#[derive(Clone, Debug)]
pub struct ProxySpec {
    /// `node.id`, e.g. `mesh/scale/virtualNode/node-0001`.
    pub node_id: String,
    /// `node.cluster`.
    pub cluster: String,
}

/// Names a resource's body makes the proxy subscribe to, decoded once for
/// the whole fleet: per delta resource version (the server's versions are
/// content hashes of type and bytes) or per SotW response version (the
/// union over the response's resources), per type. Hits allocate nothing.
#[derive(Default)]
struct NameCache {
    /// Per type (CDS, LDS): key → names.
    maps: Mutex<[HashMap<String, Arc<Vec<String>>>; 2]>,
}

/// Per delta resource held: version, names it references, encoded size.
type HeldResource = (String, Arc<Vec<String>>, usize);

impl NameCache {
    /// The names `key` of `type_url` references, computed with `decode` on a
    /// miss; empty for types that reference nothing (EDS, RDS).
    fn get_or(
        &self,
        type_url: &str,
        key: &str,
        decode: impl FnOnce() -> Vec<String>,
    ) -> Arc<Vec<String>> {
        let slot = match type_url {
            CDS => 0,
            LDS => 1,
            _ => return Arc::default(),
        };
        let hit = self.maps.lock().unwrap_or_else(PoisonError::into_inner)[slot]
            .get(key)
            .cloned();
        if let Some(names) = hit {
            return names;
        }
        let names = Arc::new(decode());
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)[slot]
            .insert(key.to_string(), names.clone());
        names
    }
}

/// The name of an xDS resource inside an `Any` (decoded).
fn resource_name(type_url: &str, body: &LiteAny) -> String {
    match type_url {
        CDS => Cluster::decode(body.value.as_ref())
            .map(|c| c.name)
            .unwrap_or_default(),
        LDS => Listener::decode(body.value.as_ref())
            .map(|l| l.name)
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// EDS names of an EDS cluster, RDS names of a listener's HTTP connection managers.
fn referenced_names(type_url: &str, body: &LiteAny) -> Vec<String> {
    match type_url {
        CDS => {
            let Ok(c) = Cluster::decode(body.value.as_ref()) else {
                return Vec::new();
            };
            let eds = matches!(
                c.cluster_discovery_type,
                Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
            );
            if !eds {
                return Vec::new();
            }
            let service = c
                .eds_cluster_config
                .map(|e| e.service_name)
                .unwrap_or_default();
            vec![if service.is_empty() { c.name } else { service }]
        }
        LDS => {
            let Ok(l) = Listener::decode(body.value.as_ref()) else {
                return Vec::new();
            };
            let mut out = Vec::new();
            for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                for f in &chain.filters {
                    let Some(FilterConfigType::TypedConfig(any)) = &f.config_type else {
                        continue;
                    };
                    if any.type_url != HCM {
                        continue;
                    }
                    if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
                        if let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier {
                            out.push(rds.route_config_name);
                        }
                    }
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// A fleet of simulated proxies sharing a few HTTP/2 connections.
pub struct Fleet {
    epoch: Instant,
    /// Per proxy, in the order they were added.
    pub stats: Vec<Arc<ProxyStats>>,
    /// Per proxy, its spec.
    pub specs: Vec<ProxySpec>,
    channels: Vec<Channel>,
    streams_per_connection: usize,
    protocol: AdsProtocol,
    track_held: bool,
    names: Arc<NameCache>,
    tasks: Vec<JoinHandle<()>>,
    /// Errors of streams that ended (first few).
    pub errors: Arc<Mutex<Vec<String>>>,
}

impl Fleet {
    /// An empty fleet talking to the ADS server at `xds_addr` (`host:port`).
    pub fn new(
        xds_addr: &str,
        protocol: AdsProtocol,
        streams_per_connection: usize,
        track_held: bool,
    ) -> Result<Fleet> {
        let endpoint = Endpoint::from_shared(format!("http://{xds_addr}"))
            .context("the xDS address is not a valid URI")?;
        Ok(Fleet {
            epoch: Instant::now(),
            stats: Vec::new(),
            specs: Vec::new(),
            channels: vec![endpoint.connect_lazy()],
            streams_per_connection: streams_per_connection.max(1),
            protocol,
            track_held,
            names: Arc::new(NameCache::default()),
            tasks: Vec::new(),
            errors: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Converts a fleet timestamp to an `Instant`.
    pub fn instant(&self, us: u64) -> Instant {
        self.epoch + Duration::from_micros(us)
    }

    /// The HTTP/2 connection for the next stream: a new one every
    /// `streams_per_connection` streams.
    fn channel(&mut self, xds_addr: &str) -> Result<Channel> {
        let n = self.stats.len();
        let index = n / self.streams_per_connection;
        while self.channels.len() <= index {
            let endpoint = Endpoint::from_shared(format!("http://{xds_addr}"))
                .context("the xDS address is not a valid URI")?
                .tcp_nodelay(true);
            self.channels.push(endpoint.connect_lazy());
        }
        Ok(self.channels[index].clone())
    }

    /// Number of HTTP/2 connections opened.
    pub fn connections(&self) -> usize {
        self.stats.len().div_ceil(self.streams_per_connection)
    }

    /// Starts one proxy's stream.
    pub fn add(&mut self, xds_addr: &str, spec: ProxySpec) -> Result<()> {
        let channel = self.channel(xds_addr)?;
        let stats = Arc::new(ProxyStats::default());
        let ctx = ProxyCtx {
            epoch: self.epoch,
            stats: stats.clone(),
            names: self.names.clone(),
            track_held: self.track_held,
        };
        let node = Node {
            id: spec.node_id.clone(),
            cluster: spec.cluster.clone(),
            ..Node::default()
        };
        let errors = self.errors.clone();
        let protocol = self.protocol;
        let node_id = spec.node_id.clone();
        self.tasks.push(tokio::spawn(async move {
            let result = match protocol {
                AdsProtocol::Sotw => run_sotw(channel, node, ctx).await,
                AdsProtocol::Delta => run_delta(channel, node, ctx).await,
            };
            if let Err(e) = result {
                let mut errors = errors.lock().unwrap_or_else(PoisonError::into_inner);
                if errors.len() < 10 {
                    errors.push(format!("{node_id}: {e:#}"));
                }
            }
        }));
        self.stats.push(stats);
        self.specs.push(spec);
        Ok(())
    }

    /// Starts one proxy that fails over between several control-plane replicas (`endpoints`,
    /// `host:port`), as Envoy does with several hosts in its xDS cluster: when its stream ends
    /// (its replica died), it waits a jittered backoff below Envoy's 500 ms base interval for
    /// gRPC stream retries and opens a new stream to the next replica, forever. Proxies of one
    /// group of `streams_per_connection` share one HTTP/2 connection per replica. Not mixed with
    /// [`Fleet::add`] in one fleet.
    pub fn add_failover(&mut self, endpoints: &[String], spec: ProxySpec) -> Result<()> {
        let index = self.stats.len();
        let group = index / self.streams_per_connection;
        // Channels after the one `new` made: per group, one per endpoint.
        while self.channels.len() < 1 + (group + 1) * endpoints.len() {
            let e = (self.channels.len() - 1) % endpoints.len();
            let endpoint = Endpoint::from_shared(format!("http://{}", endpoints[e]))
                .context("an xDS address is not a valid URI")?
                .tcp_nodelay(true);
            self.channels.push(endpoint.connect_lazy());
        }
        let channels: Vec<Channel> = (0..endpoints.len())
            .map(|e| self.channels[1 + group * endpoints.len() + e].clone())
            .collect();
        let stats = Arc::new(ProxyStats::default());
        let ctx = ProxyCtx {
            epoch: self.epoch,
            stats: stats.clone(),
            names: self.names.clone(),
            track_held: self.track_held,
        };
        let node = Node {
            id: spec.node_id.clone(),
            cluster: spec.cluster.clone(),
            ..Node::default()
        };
        let protocol = self.protocol;
        // Envoy's first retry waits a random time below the base interval (500 ms); spread the
        // fleet's the same way, deterministically.
        let jitter = Duration::from_millis((index as u64 * 7919) % 500);
        self.tasks.push(tokio::spawn(async move {
            let mut next = 0;
            loop {
                let channel = channels[next % channels.len()].clone();
                let ctx = ProxyCtx {
                    epoch: ctx.epoch,
                    stats: ctx.stats.clone(),
                    names: ctx.names.clone(),
                    track_held: ctx.track_held,
                };
                let _ = match protocol {
                    AdsProtocol::Sotw => run_sotw(channel, node.clone(), ctx).await,
                    AdsProtocol::Delta => run_delta(channel, node.clone(), ctx).await,
                };
                next += 1;
                tokio::time::sleep(jitter).await;
            }
        }));
        self.stats.push(stats);
        self.specs.push(spec);
        Ok(())
    }

    /// Number of streams that ended (none should while the benchmark runs).
    pub fn ended(&self) -> usize {
        self.tasks.iter().filter(|t| t.is_finished()).count()
    }

    /// Waits until every proxy holds config of all four types; fails after `timeout`.
    pub async fn wait_all_configured(&self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let ready = self.stats.iter().filter(|s| s.has_all_types()).count();
            if ready == self.stats.len() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                let errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
                anyhow::bail!(
                    "only {ready} of {} proxies got every type they subscribed to within {timeout:?} \
                     ({} streams ended; first errors: {:?})",
                    self.stats.len(),
                    self.ended(),
                    *errors
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Response counts of all proxies now.
    pub fn response_counts(&self) -> Vec<u64> {
        self.stats
            .iter()
            .map(|s| s.responses.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits until every proxy in `expected` got a response since `before`
    /// and then no proxy got any for `quiet`; returns, per proxy that got
    /// responses, (index, responses since `before`, last ACK time), or fails
    /// after `timeout`.
    pub async fn wait_converged(
        &self,
        before: &[u64],
        expected: &BTreeSet<usize>,
        quiet: Duration,
        timeout: Duration,
    ) -> Result<Vec<(usize, u64, Instant)>> {
        let started = Instant::now();
        let mut last_total = u64::MAX;
        let mut last_change = Instant::now();
        loop {
            let now = self.response_counts();
            let total: u64 = now.iter().sum();
            if total != last_total {
                last_total = total;
                last_change = Instant::now();
            }
            let missing = expected.iter().filter(|&&i| now[i] <= before[i]).count();
            if missing == 0 && last_change.elapsed() >= quiet {
                return Ok(now
                    .iter()
                    .enumerate()
                    .filter(|(i, n)| **n > before[*i])
                    .map(|(i, n)| {
                        let at = self.stats[i].last_ack_us.load(Ordering::Relaxed);
                        (i, n - before[i], self.instant(at))
                    })
                    .collect());
            }
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "{missing} of {} affected proxies got nothing within {timeout:?}",
                    expected.len()
                );
            }
            // Each proxy stamps its own ACKs, so how often this looks only sets
            // when the wait ends, not the times measured; every look walks all
            // N counters on the cores the server needs during the push.
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What a proxy's task needs.
struct ProxyCtx {
    epoch: Instant,
    stats: Arc<ProxyStats>,
    names: Arc<NameCache>,
    track_held: bool,
}

impl ProxyCtx {
    fn received<'a>(&self, type_url: &str, resources: impl Iterator<Item = &'a LiteAny>) {
        self.stats.responses.fetch_add(1, Ordering::Relaxed);
        self.stats
            .types_seen
            .fetch_or(type_bit(type_url), Ordering::Relaxed);
        let bytes: usize = resources.map(|r| r.encoded_len()).sum();
        self.stats
            .bytes_received
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn acked(&self) {
        self.stats
            .last_ack_us
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn set_held(&self, held: &HashMap<&'static str, BTreeMap<String, usize>>) {
        if !self.track_held {
            return;
        }
        let bytes: usize = held.values().flat_map(|m| m.values()).sum();
        let count: usize = held.values().map(|m| m.len()).sum();
        self.stats.bytes_held.store(bytes as u64, Ordering::Relaxed);
        self.stats
            .resources_held
            .store(count as u64, Ordering::Relaxed);
    }
}

fn static_type(type_url: &str) -> Option<&'static str> {
    [CDS, EDS, LDS, RDS].into_iter().find(|t| *t == type_url)
}

/// A state-of-the-world proxy: wildcard CDS and LDS, then EDS and RDS for
/// the names they reference; every request of a type carries the current
/// names, so a request the server drops as stale loses nothing.
async fn run_sotw(channel: Channel, node: Node, ctx: ProxyCtx) -> Result<()> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    let request =
        |type_url: &str, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
            type_url: type_url.to_string(),
            resource_names: names,
            version_info: version,
            response_nonce: nonce,
            ..DiscoveryRequest::default()
        };
    let mut first = request(CDS, Vec::new(), String::new(), String::new());
    first.node = Some(node);
    tx.send(first).await?;
    tx.send(request(LDS, Vec::new(), String::new(), String::new()))
        .await?;
    let mut responses = open_stream::<_, LiteResponse>(channel, SOTW_PATH, rx).await?;
    // Per type: last version and nonce received; names subscribed (EDS, RDS).
    let mut last: HashMap<&'static str, (String, String)> = HashMap::new();
    let mut subscribed: HashMap<&'static str, Vec<String>> = HashMap::new();
    let mut held: HashMap<&'static str, BTreeMap<String, usize>> = HashMap::new();
    while let Some(response) = responses.message().await? {
        let Some(type_url) = static_type(&response.type_url) else {
            continue;
        };
        ctx.received(type_url, response.resources.iter());
        let LiteResponse {
            version_info,
            resources,
            nonce,
            ..
        } = response;
        // Envoy ACKs with the response's version: one it cannot read is a server bug.
        if version_info.is_empty() || nonce.is_empty() {
            anyhow::bail!("a {type_url} response without version_info or nonce");
        }
        // Names this response makes us want (clusters → EDS, listeners → RDS).
        let dependent = match type_url {
            CDS => Some(EDS),
            LDS => Some(RDS),
            _ => None,
        };
        // The response version identifies the set: the union of the names its
        // resources reference, decoded once per version for the fleet.
        let wanted = if dependent.is_some() {
            ctx.names.get_or(type_url, &version_info, || {
                let mut all = BTreeSet::new();
                for r in &resources {
                    all.extend(referenced_names(type_url, r));
                }
                all.into_iter().collect()
            })
        } else {
            Arc::default()
        };
        if ctx.track_held {
            let map = held.entry(type_url).or_default();
            map.clear();
            for (i, r) in resources.iter().enumerate() {
                let name = match type_url {
                    CDS | LDS => resource_name(type_url, r),
                    _ => format!("#{i}"),
                };
                map.insert(name, r.encoded_len());
            }
            ctx.set_held(&held);
        }
        let names = subscribed.get(type_url).cloned().unwrap_or_default();
        last.insert(type_url, (version_info.clone(), nonce.clone()));
        tx.send(request(type_url, names, version_info, nonce))
            .await?;
        ctx.acked();
        if let Some(dep) = dependent {
            if subscribed.get(dep).map(Vec::as_slice) != Some(wanted.as_slice()) {
                if !wanted.is_empty() {
                    ctx.stats
                        .types_wanted
                        .fetch_or(type_bit(dep), Ordering::Relaxed);
                }
                subscribed.insert(dep, wanted.to_vec());
                let (version, nonce) = last.get(dep).cloned().unwrap_or_default();
                tx.send(request(dep, wanted.to_vec(), version, nonce))
                    .await?;
            }
        }
    }
    Ok(())
}

/// A delta proxy: wildcard CDS and LDS, then subscribes to and unsubscribes
/// from EDS and RDS names as clusters and listeners come and go.
async fn run_delta(channel: Channel, node: Node, ctx: ProxyCtx) -> Result<()> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    tx.send(DeltaDiscoveryRequest {
        type_url: CDS.to_string(),
        node: Some(node),
        ..DeltaDiscoveryRequest::default()
    })
    .await?;
    tx.send(DeltaDiscoveryRequest {
        type_url: LDS.to_string(),
        ..DeltaDiscoveryRequest::default()
    })
    .await?;
    let mut responses = open_stream::<_, LiteDeltaResponse>(channel, DELTA_PATH, rx).await?;
    // Per type: name → (version, referenced names, encoded size).
    let mut state: HashMap<&'static str, BTreeMap<String, HeldResource>> = HashMap::new();
    let mut subscribed: HashMap<&'static str, BTreeSet<String>> = HashMap::new();
    let mut held: HashMap<&'static str, BTreeMap<String, usize>> = HashMap::new();
    while let Some(response) = responses.message().await? {
        let Some(type_url) = static_type(&response.type_url) else {
            continue;
        };
        ctx.received(
            type_url,
            response
                .resources
                .iter()
                .filter_map(|r| r.resource.as_ref()),
        );
        let map = state.entry(type_url).or_default();
        let LiteDeltaResponse {
            resources,
            removed_resources,
            nonce,
            ..
        } = response;
        if nonce.is_empty() {
            anyhow::bail!("a {type_url} response without nonce");
        }
        for r in resources {
            let Some(body) = &r.resource else { continue };
            // Envoy keeps each resource's version (sent back after a reconnect): one without
            // is a server bug.
            if r.version.is_empty() {
                anyhow::bail!("{type_url} resource {} without version", r.name);
            }
            let names = ctx
                .names
                .get_or(type_url, &r.version, || referenced_names(type_url, body));
            let size = body.encoded_len();
            map.insert(r.name, (r.version, names, size));
        }
        for name in &removed_resources {
            map.remove(name);
        }
        if ctx.track_held {
            held.insert(
                type_url,
                map.iter()
                    .map(|(n, (_, _, size))| (n.clone(), *size))
                    .collect(),
            );
            ctx.set_held(&held);
        }
        tx.send(DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            response_nonce: nonce,
            ..DeltaDiscoveryRequest::default()
        })
        .await?;
        ctx.acked();
        let dependent = match type_url {
            CDS => Some(EDS),
            LDS => Some(RDS),
            _ => None,
        };
        if let Some(dep) = dependent {
            let wanted: BTreeSet<String> = map
                .values()
                .flat_map(|(_, names, _)| names.iter().cloned())
                .collect();
            let current = subscribed.entry(dep).or_default();
            let add: Vec<String> = wanted.difference(current).cloned().collect();
            let remove: Vec<String> = current.difference(&wanted).cloned().collect();
            if !add.is_empty() || !remove.is_empty() {
                if !wanted.is_empty() {
                    ctx.stats
                        .types_wanted
                        .fetch_or(type_bit(dep), Ordering::Relaxed);
                }
                *current = wanted;
                tx.send(DeltaDiscoveryRequest {
                    type_url: dep.to_string(),
                    resource_names_subscribe: add,
                    resource_names_unsubscribe: remove,
                    ..DeltaDiscoveryRequest::default()
                })
                .await?;
            }
        }
    }
    Ok(())
}
