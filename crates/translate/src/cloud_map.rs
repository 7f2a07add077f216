//! Cloud Map service discovery (Weft's instance registry): a target virtual node with
//! `serviceDiscovery.awsCloudMap` becomes an EDS cluster, and its endpoints are the registered
//! instances of the named service that match every attribute filter (virtual_nodes.md,
//! "Service discovery method" and "IP version preference").
//!
//! The registry's instances reach translation as plain [`CloudMapInstance`]s in
//! [`MeshSnapshot::cloud_map`], so translation stays pure: the control plane reads the
//! registry, this module only maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType as XdsClusterDiscoveryType, DiscoveryType as XdsDiscoveryType,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier as XdsHostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment as XdsClusterLoadAssignment, Endpoint as XdsEndpoint,
    LbEndpoint as XdsLbEndpoint, LocalityLbEndpoints as XdsLocalityLbEndpoints,
};
use weft_model::shapes::{AwsCloudMapServiceDiscovery, IpPreference, ServiceDiscovery};

use crate::{route, MeshSnapshot, XdsCluster};

/// One registered instance of a Cloud Map service, as translation needs it.
///
/// Built by the control plane from the registry's records (`AWS_INSTANCE_IPV4`,
/// `AWS_INSTANCE_IPV6` and `AWS_INSTANCE_PORT` are also kept in `attributes`, where attribute
/// filters may name them, as Cloud Map's `DiscoverInstances` allows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudMapInstance {
    /// The instance id (unique within its service); endpoints are ordered by it.
    pub id: String,
    /// `AWS_INSTANCE_IPV4`, as registered.
    pub ipv4: Option<String>,
    /// `AWS_INSTANCE_IPV6`, as registered.
    pub ipv6: Option<String>,
    /// `AWS_INSTANCE_PORT`; without it the target listener's port is used.
    pub port: Option<u16>,
    /// Every attribute of the instance, custom ones included.
    pub attributes: BTreeMap<String, String>,
    /// `false` once the instance is reported `UNHEALTHY`; it then gets no traffic.
    pub healthy: bool,
}

/// What one EDS name stands for: a service, the filters, the port to fall back on and the IP
/// preference. Everything that shapes the load assignment is in the name, so that two
/// clusters with the same EDS name always want the same endpoints.
struct EdsTarget<'a> {
    namespace: &'a str,
    service: &'a str,
    /// Sorted and deduplicated `(key, value)` filters.
    filters: BTreeSet<(&'a str, &'a str)>,
    fallback_port: u16,
    preference: Option<IpPreference>,
}

impl<'a> EdsTarget<'a> {
    fn new(
        discovery: &'a AwsCloudMapServiceDiscovery,
        fallback_port: u16,
        mesh_preference: Option<IpPreference>,
    ) -> Self {
        Self {
            namespace: &discovery.namespace_name,
            service: &discovery.service_name,
            filters: discovery
                .attributes
                .iter()
                .flatten()
                .map(|a| (a.key.as_str(), a.value.as_str()))
                .collect(),
            fallback_port,
            // The node's preference overrides the mesh's (virtual_nodes.md: "Setting the IP
            // preference on the virtual node only overrides the IP preference set for the
            // mesh on this specific node").
            preference: discovery.ip_preference.or(mesh_preference),
        }
    }

    /// `cloudmap/<namespace>/<service>/<port>/<preference>[?<key>=<value>&…]`, filters sorted.
    /// Names and filters are escaped so that distinct targets never share a name.
    fn name(&self) -> String {
        let mut name = format!(
            "cloudmap/{}/{}/{}/{}",
            escape(self.namespace),
            escape(self.service),
            self.fallback_port,
            preference_name(self.preference)
        );
        for (i, (key, value)) in self.filters.iter().enumerate() {
            name.push(if i == 0 { '?' } else { '&' });
            name.push_str(&escape(key));
            name.push('=');
            name.push_str(&escape(value));
        }
        name
    }

    /// The load assignment for `name`: every healthy instance matching all filters, by id.
    fn load_assignment(&self, name: String, snapshot: &MeshSnapshot) -> XdsClusterLoadAssignment {
        let mut instances: Vec<&CloudMapInstance> = snapshot
            .cloud_map
            .get(&(self.namespace.to_string(), self.service.to_string()))
            .into_iter()
            .flatten()
            // Unhealthy instances are left out rather than sent as `UNHEALTHY`: with most hosts
            // unhealthy, Envoy's panic routing (healthy_panic_threshold, 50 % by default) would
            // send traffic to them again; leaving them out is what Cloud Map's
            // DiscoverInstances(HealthStatus=HEALTHY) gave App Mesh's Envoys.
            .filter(|instance| instance.healthy)
            .filter(|instance| {
                self.filters.iter().all(|(key, value)| {
                    instance.attributes.get(*key).map(String::as_str) == Some(*value)
                })
            })
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        let mut seen = BTreeSet::new();
        let lb_endpoints = instances
            .into_iter()
            .filter_map(|instance| {
                let address = self.address(instance)?;
                let port = instance
                    .port
                    .filter(|p| *p != 0)
                    .unwrap_or(self.fallback_port);
                // Two instances registered at one address and port are one host to Envoy.
                seen.insert((address.clone(), port))
                    .then_some((address, port))
            })
            .map(|(address, port)| XdsLbEndpoint {
                host_identifier: Some(XdsHostIdentifier::Endpoint(XdsEndpoint {
                    address: Some(crate::cluster::socket_address(&address, port)),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect::<Vec<_>>();
        XdsClusterLoadAssignment {
            cluster_name: name,
            // No locality at all when there is no instance: an empty assignment is valid and
            // leaves the cluster with no hosts (requests get 503 `no_healthy_upstream`).
            endpoints: if lb_endpoints.is_empty() {
                Vec::new()
            } else {
                vec![XdsLocalityLbEndpoints {
                    lb_endpoints,
                    ..Default::default()
                }]
            },
            ..Default::default()
        }
    }

    /// The address to use per the IP preference (virtual_nodes.md, "IP version preference"):
    /// by default and with `IPv4_PREFERRED`, IPv4 falling back to IPv6; `IPv6_PREFERRED` the
    /// reverse; `*_ONLY` that family or nothing. Addresses that do not parse are ignored, since
    /// Envoy would reject the whole assignment for one bad address.
    fn address(&self, instance: &CloudMapInstance) -> Option<String> {
        let v4 = || {
            instance
                .ipv4
                .as_deref()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
                .map(|a| a.to_string())
        };
        let v6 = || {
            instance
                .ipv6
                .as_deref()
                .and_then(|a| a.parse::<Ipv6Addr>().ok())
                .map(|a| a.to_string())
        };
        match self.preference {
            None | Some(IpPreference::Ipv4Preferred) => v4().or_else(v6),
            Some(IpPreference::Ipv6Preferred) => v6().or_else(v4),
            Some(IpPreference::Ipv4Only) => v4(),
            Some(IpPreference::Ipv6Only) => v6(),
        }
    }
}

fn preference_name(preference: Option<IpPreference>) -> &'static str {
    match preference {
        None => "default",
        Some(IpPreference::Ipv4Preferred) => "ipv4_preferred",
        Some(IpPreference::Ipv6Preferred) => "ipv6_preferred",
        Some(IpPreference::Ipv4Only) => "ipv4_only",
        Some(IpPreference::Ipv6Only) => "ipv6_only",
    }
}

/// Escapes the separators of [`EdsTarget::name`] (and `%` itself).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '?' => out.push_str("%3F"),
            '&' => out.push_str("%26"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

/// The mesh-wide IP preference (`mesh.spec.serviceDiscovery.ipPreference`).
fn mesh_preference(snapshot: &MeshSnapshot) -> Option<IpPreference> {
    snapshot
        .mesh
        .spec
        .service_discovery
        .as_ref()
        .and_then(|sd| sd.ip_preference)
}

/// The EDS name of a Cloud Map target listening on `port`.
pub(crate) fn eds_service_name(
    snapshot: &MeshSnapshot,
    discovery: &AwsCloudMapServiceDiscovery,
    port: u16,
) -> String {
    EdsTarget::new(discovery, port, mesh_preference(snapshot)).name()
}

/// The load assignments of the Cloud Map (EDS) clusters among `clusters`, sorted by name.
///
/// The assignments are derived from the EDS names the clusters read: every Cloud Map node
/// listener of the mesh is considered, and those whose name some cluster reads are built. This
/// keeps the cluster builders (routes, gateways) free of endpoint bookkeeping.
pub(crate) fn load_assignments<'c>(
    snapshot: &MeshSnapshot,
    clusters: impl IntoIterator<Item = &'c XdsCluster>,
) -> Vec<XdsClusterLoadAssignment> {
    let wanted: BTreeSet<&str> = clusters
        .into_iter()
        .filter(|c| {
            c.cluster_discovery_type
                == Some(XdsClusterDiscoveryType::Type(XdsDiscoveryType::Eds as i32))
        })
        .filter_map(|c| c.eds_cluster_config.as_ref())
        .map(|eds| eds.service_name.as_str())
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let mesh_preference = mesh_preference(snapshot);
    let mut out: BTreeMap<String, XdsClusterLoadAssignment> = BTreeMap::new();
    for node in snapshot.virtual_nodes.values() {
        let Some(ServiceDiscovery::AwsCloudMap(discovery)) = node.spec.service_discovery.as_ref()
        else {
            continue;
        };
        for listener in node.spec.listeners.iter().flatten() {
            let Some(port) = route::port(listener.port_mapping.port) else {
                continue;
            };
            let target = EdsTarget::new(discovery, port, mesh_preference);
            let name = target.name();
            if wanted.contains(name.as_str()) && !out.contains_key(&name) {
                let assignment = target.load_assignment(name.clone(), snapshot);
                out.insert(name, assignment);
            }
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn discovery(attributes: &[(&str, &str)]) -> AwsCloudMapServiceDiscovery {
        serde_json::from_value(serde_json::json!({
            "namespaceName": "apps.local",
            "serviceName": "red",
            "attributes": attributes.iter().map(|(k, v)| serde_json::json!({"key": k, "value": v})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn eds_names_sort_filters_and_escape_separators() {
        let (d1, d2) = (
            discovery(&[("version", "v2"), ("az", "a")]),
            discovery(&[("az", "a"), ("version", "v2")]),
        );
        let a = EdsTarget::new(&d1, 8080, None).name();
        assert_eq!(a, "cloudmap/apps.local/red/8080/default?az=a&version=v2");
        assert_eq!(a, EdsTarget::new(&d2, 8080, None).name());
        let tricky = discovery(&[("a&b", "c=d")]);
        assert_eq!(
            EdsTarget::new(&tricky, 1, None).name(),
            "cloudmap/apps.local/red/1/default?a%26b=c%3Dd"
        );
    }
}
