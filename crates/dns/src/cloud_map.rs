//! Cloud Map's DNS namespaces as zones: what `weft server` serves on its DNS
//! listener, kept current from the store.
//!
//! Every private or public DNS namespace is a zone; every service in it with
//! a `DnsConfig` gives the records of its instances as Route 53 held them
//! for Cloud Map (<https://docs.aws.amazon.com/cloud-map/latest/dg/services-values.html>):
//! [`weft_registry::dns::service_records`] decides which instances answer and
//! what they give, and [`Zones::answer`] picks per query under the service's
//! routing policy.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use weft_registry::dns::{RecordData, RoutingPolicy as CloudMapRouting};
use weft_registry::{keys, Instance, NamespaceRecord, NamespaceType, ServiceRecord};
use weft_store::{Range, SharedStore, StoreError};

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

/// Reads the registry from the store; returns it with the revision it was
/// read at. Records that do not decode are skipped (and logged): one bad
/// record must not take every zone down.
pub async fn read(store: &dyn weft_store::Store) -> Result<(Registry, i64), StoreError> {
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
    Ok((registry, namespaces.revision))
}

/// How long changes are gathered before the zones are rebuilt: a burst of
/// registrations makes one rebuild.
const GATHER: Duration = Duration::from_millis(20);

/// Keeps `zones` current with the store until `shutdown` resolves: rebuilds
/// every zone after each burst of changes to namespaces, services,
/// instances or health (each rebuild reads the registry whole, which at
/// Cloud Map's quotas is thousands of records, not millions).
pub async fn follow(
    store: SharedStore,
    zones: watch::Sender<Arc<Zones>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let relevant = |key: &str| {
        key.starts_with(keys::NAMESPACES)
            || key.starts_with(keys::SERVICES)
            || key.starts_with(keys::INSTANCES)
    };
    'reload: loop {
        let (registry, revision) = match read(&*store).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "reading the registry for DNS failed; retrying");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        zones.send_replace(Arc::new(self::zones(&registry, revision as u32)));
        let mut feed = match store.watch(keys::PREFIX, revision).await {
            Ok(feed) => feed,
            Err(e) => {
                tracing::warn!(error = %e, "watching the registry for DNS failed; reloading");
                continue 'reload;
            }
        };
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => return,
                event = feed.next() => event,
            };
            match event {
                Some(Ok(event)) if relevant(&event.key) => {
                    // Gather the rest of the burst, then rebuild once.
                    let until = tokio::time::Instant::now() + GATHER;
                    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, feed.next()).await {}
                    continue 'reload;
                }
                Some(Ok(_)) => {}
                ended => {
                    if let Some(Err(e)) = ended {
                        tracing::debug!(error = %e, "registry watch ended; reloading");
                    }
                    // A store that ends every watch at once must not spin.
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue 'reload,
                    }
                }
            }
        }
    }
}
