//! Cloud Map's DNS namespaces as zones: what `weft server` serves on its DNS
//! listener, kept current from the store by [`crate::follow`].
//!
//! Every private or public DNS namespace is a zone; every service in it with
//! a `DnsConfig` gives the records of its instances as Route 53 held them
//! for Cloud Map (<https://docs.aws.amazon.com/cloud-map/latest/dg/services-values.html>):
//! [`weft_registry::dns::service_records`] decides which instances answer and
//! what they give, and [`Zones::answer`] picks per query under the service's
//! routing policy.

use std::collections::HashMap;

use weft_registry::dns::{RecordData, RoutingPolicy as CloudMapRouting};
use weft_registry::{keys, Instance, NamespaceRecord, NamespaceType, ServiceRecord};
use weft_store::{Range, StoreError};

use crate::{Rdata, RecordSet, RoutingPolicy, Soa, Zone, Zones};

/// The registry's contents a DNS server reads, as decoded from the store.
#[derive(Debug, Default)]
pub struct Registry {
    /// Every namespace (HTTP ones give no zone).
    pub namespaces: Vec<NamespaceRecord>,
    /// Every service.
    pub services: Vec<ServiceRecord>,
    /// Each service's instances, by service id.
    pub instances: HashMap<String, Vec<Instance>>,
}

/// The zones the registry's DNS namespaces make, with `serial` in each SOA.
/// A record set DNS cannot hold (which the registry's checks should have
/// refused) is left out and logged, and its zone still served.
pub fn zones(registry: &Registry, serial: u32) -> Zones {
    let mut zones = Zones::new();
    for namespace in &registry.namespaces {
        if !matches!(
            namespace.kind,
            NamespaceType::DnsPrivate | NamespaceType::DnsPublic
        ) {
            continue;
        }
        let ttl = namespace
            .dns
            .as_ref()
            .and_then(|d| u32::try_from(d.soa_ttl).ok())
            .unwrap_or(crate::CLOUD_MAP_SOA_TTL);
        let mut zone = match Zone::new(&namespace.name, Soa::new(serial, ttl)) {
            Ok(zone) => zone,
            Err(e) => {
                tracing::warn!(namespace = %namespace.name, error = %e, "namespace not served as a DNS zone");
                continue;
            }
        };
        for service in registry
            .services
            .iter()
            .filter(|s| s.namespace_id == namespace.id)
        {
            let instances = registry
                .instances
                .get(&service.id)
                .map_or(&[][..], Vec::as_slice);
            let records = weft_registry::dns::service_records(&namespace.name, service, instances);
            let routing = match records.routing_policy {
                CloudMapRouting::Multivalue => RoutingPolicy::Multivalue,
                CloudMapRouting::Weighted => RoutingPolicy::Weighted,
            };
            for group in records.groups() {
                let set = RecordSet {
                    name: group.name,
                    ttl: group.ttl,
                    routing,
                    records: group.data.into_iter().map(rdata).collect(),
                };
                if let Err(e) = zone.insert(set) {
                    tracing::warn!(service = %service.name, namespace = %namespace.name, error = %e, "record set not served");
                }
            }
        }
        if let Err(e) = zones.insert(zone) {
            tracing::warn!(namespace = %namespace.name, error = %e, "namespace not served as a DNS zone");
        }
    }
    zones
}

fn rdata(data: RecordData) -> Rdata {
    match data {
        RecordData::A(ip) => Rdata::A(ip),
        RecordData::Aaaa(ip) => Rdata::Aaaa(ip),
        RecordData::Cname(name) => Rdata::Cname(name),
        RecordData::Srv {
            priority,
            weight,
            port,
            target,
        } => Rdata::Srv {
            priority,
            weight,
            port,
            target,
        },
    }
}

/// Reads the registry from a snapshot of the store. Records that do not
/// decode are skipped (and logged): one bad record must not take every zone
/// down.
pub async fn read(store: &dyn weft_store::StoreSnapshot) -> Result<Registry, StoreError> {
    fn decode<T: serde::de::DeserializeOwned>(kv: &weft_store::KeyValue) -> Option<T> {
        serde_json::from_slice(&kv.value)
            .inspect_err(|e| tracing::warn!(key = %kv.key, error = %e, "registry record skipped"))
            .ok()
    }
    let namespaces = store.range(Range::prefix(keys::NAMESPACES)).await?;
    let services = store.range(Range::prefix(keys::SERVICES)).await?;
    let instances = store.range(Range::prefix(keys::INSTANCES)).await?;
    let mut registry = Registry {
        namespaces: namespaces.kvs.iter().filter_map(decode).collect(),
        services: services.kvs.iter().filter_map(decode).collect(),
        instances: HashMap::new(),
    };
    for instance in instances.kvs.iter().filter_map(decode::<Instance>) {
        registry
            .instances
            .entry(instance.service_id.clone())
            .or_default()
            .push(instance);
    }
    Ok(registry)
}
