//! What `weft server` serves, kept current from the store: Cloud Map's DNS
//! namespaces ([`crate::cloud_map`]) and the meshes' virtual service names
//! ([`crate::mesh`]), rebuilt together after each burst of changes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use weft_registry::keys;
use weft_store::{SharedStore, StoreError};

use crate::{cloud_map, mesh, Zones};

/// How long changes are gathered before the zones are rebuilt: a burst of
/// registrations makes one rebuild.
const GATHER: Duration = Duration::from_millis(20);

/// The prefix of every App Mesh resource of every mesh in the store.
const RESOURCES: &str = "res/";

/// Every zone the store's contents make: Cloud Map's namespaces, then the
/// virtual service names, which defer to the namespaces' own records. Both
/// are read from one snapshot, so the zones are the store at exactly the
/// returned revision (the one to watch from), never a mix of two.
async fn build(store: &dyn weft_store::Store) -> Result<(Zones, i64), StoreError> {
    let snapshot = store.snapshot().await?;
    let registry = cloud_map::read(&*snapshot).await?;
    let names = mesh::read(&*snapshot).await?;
    let revision = snapshot.revision();
    let serial = revision as u32;
    let mut zones = cloud_map::zones(&registry, serial);
    mesh::add_virtual_services(&mut zones, names.iter().map(String::as_str), serial);
    Ok((zones, revision))
}

/// Whether a changed key can change what DNS answers.
fn relevant(key: &str) -> bool {
    key.starts_with(keys::NAMESPACES)
        || key.starts_with(keys::SERVICES)
        || key.starts_with(keys::INSTANCES)
        || mesh::is_virtual_service_key(key)
}

/// Keeps `zones` current with the store until `shutdown` resolves: rebuilds
/// every zone after each burst of changes to namespaces, services,
/// instances, health or virtual services (each rebuild reads them whole,
/// which at Cloud Map's and App Mesh's quotas is thousands of records, not
/// millions).
pub async fn follow(
    store: SharedStore,
    zones: watch::Sender<Arc<Zones>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    'reload: loop {
        let (built, revision) = match build(&*store).await {
            Ok(built) => built,
            Err(e) => {
                tracing::warn!(error = %e, "reading the registry and meshes for DNS failed; retrying");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        zones.send_replace(Arc::new(built));
        let feeds = tokio::try_join!(
            store.watch(keys::PREFIX, revision),
            store.watch(RESOURCES, revision)
        );
        let (mut registry_feed, mut resource_feed) = match feeds {
            Ok(feeds) => feeds,
            Err(e) => {
                tracing::warn!(error = %e, "watching the registry and meshes for DNS failed; reloading");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue 'reload,
                }
            }
        };
        loop {
            let event = tokio::select! {
                _ = &mut shutdown => return,
                event = registry_feed.next() => event,
                event = resource_feed.next() => event,
            };
            match event {
                Some(Ok(event)) if relevant(&event.key) => {
                    // Gather the rest of the burst, then rebuild once.
                    let until = tokio::time::Instant::now() + GATHER;
                    let mut both = futures::stream::select(&mut registry_feed, &mut resource_feed);
                    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(until, both.next()).await {}
                    continue 'reload;
                }
                Some(Ok(_)) => {}
                ended => {
                    if let Some(Err(e)) = ended {
                        tracing::debug!(error = %e, "store watch ended; reloading");
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

#[cfg(test)]
mod tests {
    use super::relevant;

    #[test]
    fn changes_to_registry_records_and_virtual_services_are_relevant_and_others_not() {
        assert!(relevant("cloudmap/ns/ns-1"));
        assert!(relevant("cloudmap/svc/srv-1"));
        assert!(relevant("cloudmap/inst/srv-1/i-1"));
        assert!(relevant("res/apps/vs/colors.apps.local"));
        assert!(!relevant("cloudmap/req/abc"));
        assert!(!relevant("res/apps/vn/colors"));
        assert!(!relevant("token/CreateMesh/abc"));
    }
}
