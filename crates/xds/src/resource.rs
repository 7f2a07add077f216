//! Content-versioned resources and immutable snapshots.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType as XdsClusterDiscoveryType, DiscoveryType as XdsDiscoveryType,
};
use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as XdsClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as XdsFilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as XdsRouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier as XdsRouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager as XdsHttpConnectionManager;
#[cfg(any(test, feature = "testing"))]
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use prost::{Message, Name};
use sha2::{Digest, Sha256};

use crate::packed::PackedAny;
use crate::{XdsError, CLUSTER_TYPE_URL, ENDPOINT_TYPE_URL, LISTENER_TYPE_URL, ROUTE_TYPE_URL};

/// One named Envoy resource, packed as a protobuf `Any`, with a content-derived version.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    /// The resource name Envoy addresses it by (listener, cluster, route configuration name, or
    /// the cluster name of a load assignment).
    pub name: String,
    /// A hash of the resource's type and encoded bytes: equal content, equal version, across
    /// restarts of the control plane (so delta reconnects send only differences).
    pub version: String,
    /// The resource itself.
    pub body: PackedAny,
}

impl Resource {
    /// A resource whose version is the hash of its content.
    ///
    /// Prost encodes protobuf `map` fields from a `HashMap`, whose order varies between
    /// encodings: callers that put several entries in such maps should build them identically or
    /// give their own version with [`Resource::with_version`] to avoid spurious updates.
    pub fn new(name: impl Into<String>, body: impl Into<PackedAny>) -> Self {
        let body = body.into();
        let mut hasher = Sha256::new();
        hasher.update(body.type_url().as_bytes());
        hasher.update([0u8]);
        for chunk in body.chunks() {
            hasher.update(chunk);
        }
        Self {
            name: name.into(),
            version: hex16(&hasher.finalize()),
            body,
        }
    }

    /// A resource with a version chosen by the caller.
    pub fn with_version(
        name: impl Into<String>,
        version: impl Into<String>,
        body: impl Into<PackedAny>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            body: body.into(),
        }
    }

    /// Packs a typed message into a resource.
    pub fn from_message<M: Message + Name>(name: impl Into<String>, message: M) -> Self {
        Self::new(name, pack_any(message))
    }

    /// The resource's type URL.
    pub fn type_url(&self) -> &str {
        self.body.type_url()
    }
}

/// Hex of the first 16 bytes of a digest (128 bits is plenty to tell configs apart).
fn hex16(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for &b in bytes.iter().take(16) {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// A content version: the first 128 bits of a SHA-256, kept as bytes (no allocation) and shown
/// as 32 hex digits, the form Envoy sees in `version_info` / `system_version_info`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Version([u8; 16]);

impl Version {
    /// The 16 bytes.
    pub(crate) fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The 32 hex digits.
    pub(crate) fn hex(&self) -> String {
        hex16(&self.0)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The version of a set of resources: a hash of their sorted (name, version) pairs.
pub(crate) fn content_version<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> Version {
    let mut hasher = Sha256::new();
    for (name, version) in items {
        hasher.update(name.as_bytes());
        hasher.update([0u8]);
        hasher.update(version.as_bytes());
        hasher.update([b'\n']);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Version(bytes)
}

/// All resources of one type in a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TypeResources {
    /// The type URL, borrowed for the four types Weft serves.
    pub(crate) type_url: Cow<'static, str>,
    /// The hash of the items' sorted (name, version) pairs: a stream sending exactly these
    /// items uses it instead of hashing them again, and Envoy sees it as 32 hex digits.
    pub(crate) content: Version,
    pub(crate) items: TypeItems,
}

/// The resources of one type in a snapshot, sorted by name, found by binary search.
///
/// A slice of the shared resources rather than a map: a map keyed by name would copy every
/// name and allocate nodes of eleven entries for a type that often has two, ~2.5 KiB per proxy
/// class in all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeItems(Box<[Arc<Resource>]>);

impl TypeItems {
    /// The resource called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.0
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.0.get(i))
    }

    /// The resources, in name order.
    pub fn values(&self) -> std::slice::Iter<'_, Arc<Resource>> {
        self.0.iter()
    }

    /// (name, resource) pairs, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Resource>)> {
        self.0.iter().map(|r| (r.name.as_str(), r))
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An immutable set of typed Envoy resources for one snapshot key (e.g. one virtual node).
///
/// Shared as `Arc<Snapshot>` between all proxies of a key. Versions are content-derived: per
/// resource, per type, and for the whole snapshot.
///
/// Held once per proxy class, so kept small: its types in a boxed slice sorted by type URL
/// (a map would allocate a node of eleven entries for four), and the names its clusters and
/// listeners read as sorted boxed slices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    types: Box<[TypeResources]>,
    version: String,
    /// EDS names that the snapshot's EDS clusters read (`eds_cluster_config.service_name` or the
    /// cluster name): the make-before-break rollout waits for them before switching routes.
    eds_names: Box<[String]>,
    /// RDS names that the snapshot's listeners read through an HTTP connection manager.
    rds_names: Box<[String]>,
    /// When the change it carries reached the control plane (see [`Snapshot::with_origin`]).
    origin: Origin,
}

/// When a snapshot's change arrived; not part of what a snapshot is (equal content is an equal
/// snapshot whenever it was made).
#[derive(Clone, Copy, Debug, Default)]
struct Origin(Option<std::time::Instant>);

impl PartialEq for Origin {
    fn eq(&self, _: &Origin) -> bool {
        true
    }
}

impl Snapshot {
    /// Builds a snapshot from resources of any types (grouped by their `Any` type URL).
    pub fn from_typed(resources: impl IntoIterator<Item = Resource>) -> Result<Self, XdsError> {
        Self::build(resources.into_iter().map(Arc::new), None)
    }

    /// Like [`Snapshot::from_typed`], for resources already shared.
    ///
    /// Passing the same `Arc<Resource>` for an unchanged resource in successive snapshots lets
    /// every stream recognise it by pointer (no name or version comparison) when it rolls the
    /// new snapshot out.
    pub fn from_shared(
        resources: impl IntoIterator<Item = Arc<Resource>>,
    ) -> Result<Self, XdsError> {
        Self::build(resources, None)
    }

    /// Like [`Snapshot::from_shared`], with the EDS names the clusters read and the RDS names
    /// the listeners read given by a caller that knows them from the typed messages
    /// ([`cluster_eds_name`], [`listener_rds_names`]), so nothing is decoded back.
    pub fn from_shared_with_references(
        resources: impl IntoIterator<Item = Arc<Resource>>,
        eds_names: BTreeSet<String>,
        rds_names: BTreeSet<String>,
    ) -> Result<Self, XdsError> {
        Self::build(resources, Some((eds_names, rds_names)))
    }

    /// Builds a snapshot; `references` are the EDS and RDS names the clusters and listeners
    /// read when the caller knows them (else they are decoded from the resources).
    fn build(
        resources: impl IntoIterator<Item = Arc<Resource>>,
        references: Option<(BTreeSet<String>, BTreeSet<String>)>,
    ) -> Result<Self, XdsError> {
        let mut by_type: BTreeMap<String, Vec<Arc<Resource>>> = BTreeMap::new();
        for resource in resources {
            if resource.name.is_empty() {
                return Err(XdsError::EmptyName {
                    type_url: resource.type_url().to_string(),
                });
            }
            match by_type.get_mut(resource.type_url()) {
                Some(items) => items.push(resource),
                None => {
                    by_type.insert(resource.type_url().to_string(), vec![resource]);
                }
            }
        }
        let mut types = Vec::with_capacity(by_type.len());
        for (type_url, mut items) in by_type {
            items.sort_by(|a, b| a.name.cmp(&b.name));
            if let Some(pair) = items.windows(2).find(|w| w[0].name == w[1].name) {
                return Err(XdsError::DuplicateResource {
                    name: pair[0].name.clone(),
                    type_url,
                });
            }
            types.push(TypeResources {
                type_url: static_type_url(&type_url),
                content: content_version(
                    items.iter().map(|r| (r.name.as_str(), r.version.as_str())),
                ),
                items: TypeItems(items.into_boxed_slice()),
            });
        }
        let hexes: Vec<String> = types.iter().map(|t| t.content.hex()).collect();
        let version = content_version(
            types
                .iter()
                .zip(&hexes)
                .map(|(t, hex)| (t.type_url.as_ref(), hex.as_str())),
        )
        .hex();
        let (eds_names, rds_names) = match references {
            Some(known) => known,
            None => {
                let of = |type_url: &str| types.iter().find(|t| t.type_url == type_url);
                (
                    of(CLUSTER_TYPE_URL)
                        .map(|t| {
                            t.items
                                .values()
                                .filter_map(|r| eds_name(&r.body.value()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    of(LISTENER_TYPE_URL)
                        .map(|t| {
                            t.items
                                .values()
                                .flat_map(|r| rds_names(&r.body.value()))
                                .collect()
                        })
                        .unwrap_or_default(),
                )
            }
        };
        Ok(Self {
            types: types.into_boxed_slice(),
            version,
            eds_names: eds_names.into_iter().collect(),
            rds_names: rds_names.into_iter().collect(),
            origin: Origin::default(),
        })
    }

    /// This snapshot, marked with when the change it carries reached the control plane: a
    /// stream that rolls it out to an Envoy already holding an older one reports the time from
    /// then to that Envoy's last ACK ([`crate::AdsServer::on_convergence`]).
    pub fn with_origin(mut self, at: std::time::Instant) -> Snapshot {
        self.origin = Origin(Some(at));
        self
    }

    /// When the change it carries reached the control plane, if marked.
    pub fn origin(&self) -> Option<std::time::Instant> {
        self.origin.0
    }

    /// Builds a snapshot from the four core types, named as Envoy names them.
    pub fn from_resources(
        listeners: Vec<XdsListener>,
        route_configs: Vec<XdsRouteConfiguration>,
        clusters: Vec<XdsCluster>,
        load_assignments: Vec<XdsClusterLoadAssignment>,
    ) -> Result<Self, XdsError> {
        // The EDS/RDS names are read from the typed messages here, not decoded back from
        // the packed bytes.
        let eds_names = clusters.iter().filter_map(cluster_eds_name).collect();
        let rds_names = listeners.iter().flat_map(listener_rds_names).collect();
        let mut all = Vec::with_capacity(
            listeners.len() + route_configs.len() + clusters.len() + load_assignments.len(),
        );
        all.extend(
            listeners
                .into_iter()
                .map(|l| Resource::from_message(l.name.clone(), l)),
        );
        all.extend(
            route_configs
                .into_iter()
                .map(|r| Resource::from_message(r.name.clone(), r)),
        );
        all.extend(
            clusters
                .into_iter()
                .map(|c| Resource::from_message(c.name.clone(), c)),
        );
        all.extend(
            load_assignments
                .into_iter()
                .map(|c| Resource::from_message(c.cluster_name.clone(), c)),
        );
        Self::build(all.into_iter().map(Arc::new), Some((eds_names, rds_names)))
    }

    /// The version of the whole snapshot (hash of the per-type versions).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The version of one type (hash of its sorted (name, version) pairs), if the snapshot has
    /// resources of that type.
    pub fn type_version(&self, type_url: &str) -> Option<String> {
        self.type_resources(type_url).map(|t| t.content.hex())
    }

    /// The content version of one type as bytes (what [`Snapshot::type_version`] shows).
    pub(crate) fn type_content(&self, type_url: &str) -> Option<Version> {
        self.type_resources(type_url).map(|t| t.content)
    }

    /// The resources of one type, by name.
    pub fn resources(&self, type_url: &str) -> Option<&TypeItems> {
        self.type_resources(type_url).map(|t| &t.items)
    }

    fn type_resources(&self, type_url: &str) -> Option<&TypeResources> {
        self.types.iter().find(|t| t.type_url == type_url)
    }

    /// The type URLs present in this snapshot, in order.
    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(|t| t.type_url.as_ref())
    }

    /// EDS names read by the snapshot's EDS clusters that the snapshot also provides.
    pub(crate) fn needed_eds(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.needed(ENDPOINT_TYPE_URL, &self.eds_names)
    }

    /// Route configurations read by the snapshot's listeners that the snapshot also provides.
    pub(crate) fn needed_rds(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.needed(ROUTE_TYPE_URL, &self.rds_names)
    }

    fn needed<'a>(
        &'a self,
        type_url: &str,
        names: &'a [String],
    ) -> impl Iterator<Item = &'a Arc<Resource>> {
        let items = self.resources(type_url);
        names
            .iter()
            .filter_map(move |n| items.and_then(|items| items.get(n)))
    }
}

/// A type URL borrowed from the constants when it is one of the four core types.
pub(crate) fn static_type_url(type_url: &str) -> Cow<'static, str> {
    match [
        CLUSTER_TYPE_URL,
        ENDPOINT_TYPE_URL,
        LISTENER_TYPE_URL,
        ROUTE_TYPE_URL,
    ]
    .into_iter()
    .find(|t| *t == type_url)
    {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(type_url.to_string()),
    }
}

/// The EDS service name an EDS cluster reads, if the resource is one.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn eds_name_of(body: &Any) -> Option<String> {
    eds_name(&body.value)
}

/// The RDS names a listener reads.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn rds_names_of(body: &Any) -> Vec<String> {
    rds_names(&body.value)
}

fn eds_name(value: &[u8]) -> Option<String> {
    cluster_eds_name(&XdsCluster::decode(value).ok()?)
}

/// The EDS service name of a cluster (its `eds_cluster_config.service_name`, else its name), if
/// it is an EDS cluster.
pub fn cluster_eds_name(cluster: &XdsCluster) -> Option<String> {
    match cluster.cluster_discovery_type {
        Some(XdsClusterDiscoveryType::Type(t)) if t == XdsDiscoveryType::Eds as i32 => {
            let service = cluster
                .eds_cluster_config
                .as_ref()
                .map(|c| c.service_name.as_str())
                .unwrap_or_default();
            Some(if service.is_empty() {
                cluster.name.clone()
            } else {
                service.to_string()
            })
        }
        _ => None,
    }
}

/// The RDS route configuration names a listener's HTTP connection managers read.
fn rds_names(value: &[u8]) -> Vec<String> {
    match XdsListener::decode(value) {
        Ok(listener) => listener_rds_names(&listener),
        Err(_) => Vec::new(),
    }
}

/// The RDS route configuration names a listener's HTTP connection managers read.
pub fn listener_rds_names(listener: &XdsListener) -> Vec<String> {
    let hcm_type_url = XdsHttpConnectionManager::type_url();
    listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.iter())
        .flat_map(|chain| chain.filters.iter())
        .filter_map(|filter| match &filter.config_type {
            Some(XdsFilterConfigType::TypedConfig(any)) if any.type_url == hcm_type_url => {
                XdsHttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(XdsRouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}
