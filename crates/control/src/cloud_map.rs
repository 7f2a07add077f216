//! The instance registry (the Cloud Map role) as translation needs it: its
//! namespaces, services and instances (`cloudmap/ns/`, `cloudmap/svc/`,
//! `cloudmap/inst/`), kept from the change feed, and which services a mesh's
//! virtual nodes name (App Mesh's `awsCloudMap` service discovery:
//! <https://docs.aws.amazon.com/app-mesh/latest/userguide/virtual_nodes.html>).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::de::DeserializeOwned;
use weft_model::shapes::{ServiceDiscovery, VirtualNodeData};
use weft_registry::keys as registry_keys;
use weft_registry::{Instance, NamespaceRecord, ServiceRecord};
use weft_translate::{CloudMapInstance, MeshSnapshot};

/// `(namespace name, service name)`: how a virtual node names a Cloud Map service.
pub(crate) type ServiceName = (String, String);

/// The registry as translation needs it, kept from the change feed.
///
/// Instances are keyed by service id (as in the store) so that an instance
/// change costs a map update; names are resolved only when a mesh snapshot
/// is (re)built.
#[derive(Default)]
pub(crate) struct CloudMap {
    /// Namespace id → name.
    namespaces: HashMap<String, String>,
    /// Service id → (namespace id, service name).
    services: HashMap<String, (String, String)>,
    /// Service id → instance id → instance.
    instances: HashMap<String, BTreeMap<String, CloudMapInstance>>,
}

/// What a registry change may have changed, to find the meshes to recompute.
#[derive(Default)]
pub(crate) struct Touched {
    /// Services whose instances (or existence) changed.
    services: HashSet<ServiceName>,
    /// Namespaces that appeared or went: every service named in them.
    namespaces: HashSet<String>,
}

impl Touched {
    pub(crate) fn is_empty(&self) -> bool {
        self.services.is_empty() && self.namespaces.is_empty()
    }

    pub(crate) fn hits(&self, name: &ServiceName) -> bool {
        self.namespaces.contains(&name.0) || self.services.contains(name)
    }
}

fn registry_record<T: DeserializeOwned>(key: &str, value: &[u8]) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(%key, error = %e, "unreadable registry record skipped");
            None
        }
    }
}

/// An instance as translation takes it.
fn cloud_map_instance(instance: &Instance) -> CloudMapInstance {
    CloudMapInstance {
        id: instance.id.clone(),
        ipv4: instance.ipv4().map(|a| a.to_string()),
        ipv6: instance.ipv6().map(|a| a.to_string()),
        port: instance.port(),
        attributes: instance.attributes.clone(),
        healthy: instance.is_healthy(),
    }
}

impl CloudMap {
    /// The names of a service, once both it and its namespace are known.
    fn service_name(&self, service_id: &str) -> Option<ServiceName> {
        let (namespace_id, name) = self.services.get(service_id)?;
        let namespace = self.namespaces.get(namespace_id)?;
        Some((namespace.clone(), name.clone()))
    }

    /// Applies one change of a registry key (`value` `None` for a delete) and
    /// records what it touched. Keys the control plane does not need (name
    /// indexes, guards, operations, idempotency records) are ignored.
    pub(crate) fn apply(&mut self, key: &str, value: Option<&[u8]>, touched: &mut Touched) {
        if let Some((service_id, instance_id)) = registry_keys::parse_instance(key) {
            self.apply_instance(key, service_id, instance_id, value, touched);
        } else if let Some(id) = key.strip_prefix(registry_keys::SERVICES) {
            if let Some(name) = self.service_name(id) {
                touched.services.insert(name);
            }
            match value.and_then(|v| registry_record::<ServiceRecord>(key, v)) {
                Some(service) => {
                    self.services
                        .insert(id.to_string(), (service.namespace_id, service.name));
                }
                None => {
                    self.services.remove(id);
                }
            }
            if let Some(name) = self.service_name(id) {
                touched.services.insert(name);
            }
        } else if let Some(id) = key.strip_prefix(registry_keys::NAMESPACES) {
            if let Some(name) = self.namespaces.get(id) {
                touched.namespaces.insert(name.clone());
            }
            match value.and_then(|v| registry_record::<NamespaceRecord>(key, v)) {
                Some(namespace) => {
                    touched.namespaces.insert(namespace.name.clone());
                    self.namespaces.insert(id.to_string(), namespace.name);
                }
                None => {
                    self.namespaces.remove(id);
                }
            }
        }
    }

    /// Applies one change of an instance record (see [`CloudMap::apply`]).
    fn apply_instance(
        &mut self,
        key: &str,
        service_id: String,
        instance_id: String,
        value: Option<&[u8]>,
        touched: &mut Touched,
    ) {
        let changed = match value.and_then(|v| registry_record::<Instance>(key, v)) {
            Some(instance) => {
                let instance = cloud_map_instance(&instance);
                let instances = self.instances.entry(service_id.clone()).or_default();
                instances.insert(instance_id, instance.clone()) != Some(instance)
            }
            None => {
                let removed = match self.instances.get_mut(&service_id) {
                    Some(instances) => instances.remove(&instance_id).is_some(),
                    None => false,
                };
                if self
                    .instances
                    .get(&service_id)
                    .is_some_and(BTreeMap::is_empty)
                {
                    self.instances.remove(&service_id);
                }
                removed
            }
        };
        // An instance of a service not known yet is picked up when the
        // service record arrives (which touches the service).
        if changed {
            if let Some(name) = self.service_name(&service_id) {
                touched.services.insert(name);
            }
        }
    }

    /// The healthy and unhealthy instances of each named service (translation
    /// filters them), with an entry — possibly empty — for every name, so
    /// that the snapshot also records which services it depends on.
    pub(crate) fn instances_of<'a>(
        &self,
        names: impl Iterator<Item = &'a ServiceName>,
    ) -> BTreeMap<ServiceName, Vec<CloudMapInstance>> {
        let wanted: BTreeSet<&ServiceName> = names.collect();
        let mut out: BTreeMap<ServiceName, Vec<CloudMapInstance>> = wanted
            .iter()
            .map(|name| ((*name).clone(), Vec::new()))
            .collect();
        if wanted.is_empty() {
            return out;
        }
        // One pass over the services (few) rather than a name index to keep
        // consistent: names are resolved only when a snapshot is built.
        for service_id in self.services.keys() {
            let Some(name) = self.service_name(service_id) else {
                continue;
            };
            if let (Some(list), Some(instances)) =
                (out.get_mut(&name), self.instances.get(service_id))
            {
                list.extend(instances.values().cloned());
            }
        }
        out
    }
}

/// Whether a virtual node is discovered through Cloud Map (Weft's registry).
pub(crate) fn uses_cloud_map(node: &VirtualNodeData) -> bool {
    matches!(
        node.spec.service_discovery,
        Some(ServiceDiscovery::AwsCloudMap(_))
    )
}

/// The Cloud Map services the virtual nodes of a mesh name.
pub(crate) fn cloud_map_names(snapshot: &MeshSnapshot) -> BTreeSet<ServiceName> {
    snapshot
        .virtual_nodes
        .values()
        .filter_map(|node| match node.spec.service_discovery.as_ref()? {
            ServiceDiscovery::AwsCloudMap(cm) => {
                Some((cm.namespace_name.clone(), cm.service_name.clone()))
            }
            ServiceDiscovery::Dns(_) => None,
        })
        .collect()
}
