//! The DNS names a proxy's certificate carries beside its SPIFFE id: the names its clients
//! reach it by, which are what App Mesh users list in a client policy's
//! `validation.subjectAlternativeNames`. Read from the mesh at signing time, so a renewed
//! certificate follows the mesh:
//!
//! - a virtual node: its DNS service-discovery hostname (`serviceDiscovery.dns.hostname`), and
//!   the name of every virtual service it provides, directly (`provider.virtualNode`) or through
//!   a virtual router one of whose routes targets it;
//! - a virtual gateway: the exact hostnames its gateway routes match (`match.hostname.exact`).
//!
//! Names are lowercased, deduplicated and sorted; names a certificate cannot carry are left out.

use serde_json::Value;
use weft_model::{keys, Kind, ResourceId, StoredRecord};
use weft_store::{Range, Store};

use crate::identity::{ProxyKind, Resource};
use crate::CaError;

fn record(value: &[u8]) -> Option<Value> {
    serde_json::from_slice::<StoredRecord>(value)
        .ok()
        .map(|r| r.data)
}

async fn records(store: &dyn Store, prefix: String) -> Result<Vec<Value>, CaError> {
    let found = store.range(Range::prefix(prefix)).await?;
    Ok(found
        .kvs
        .iter()
        .filter_map(|kv| record(&kv.value))
        .collect())
}

fn route_targets(route: &Value, node: &str) -> bool {
    ["httpRoute", "http2Route", "grpcRoute", "tcpRoute"]
        .iter()
        .filter_map(|kind| route["spec"][kind]["action"]["weightedTargets"].as_array())
        .flatten()
        .any(|t| t["virtualNode"].as_str() == Some(node))
}

fn usable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'*'))
}

/// The DNS names `resource`'s certificate carries, or `None` if the resource does not exist.
pub async fn dns_names(
    store: &dyn Store,
    resource: &Resource,
) -> Result<Option<Vec<String>>, CaError> {
    let mesh = resource.mesh.as_str();
    let mut names = Vec::new();
    match resource.kind {
        ProxyKind::VirtualNode => {
            let key = keys::resource(&ResourceId::in_mesh(
                Kind::VirtualNode,
                mesh,
                &resource.name,
            ));
            let Some(node) = store.get(&key).await?.and_then(|kv| record(&kv.value)) else {
                return Ok(None);
            };
            let discovery = &node["spec"]["serviceDiscovery"];
            if let Some(host) = discovery["dns"]["hostname"].as_str() {
                names.push(host.to_string());
            }
            // A Cloud Map node's clients validate `<service>.<namespace>` when they name no
            // SAN (tls.md, "Certificate requirements"), as for a DNS hostname.
            if let (Some(service), Some(namespace)) = (
                discovery["awsCloudMap"]["serviceName"].as_str(),
                discovery["awsCloudMap"]["namespaceName"].as_str(),
            ) {
                names.push(format!("{service}.{namespace}"));
            }
            for service in
                records(store, keys::scope_prefix(Kind::VirtualService, mesh, None)).await?
            {
                let Some(service_name) = service["virtualServiceName"].as_str() else {
                    continue;
                };
                let provider = &service["spec"]["provider"];
                let provides = if let Some(n) = provider["virtualNode"]["virtualNodeName"].as_str()
                {
                    n == resource.name
                } else if let Some(r) = provider["virtualRouter"]["virtualRouterName"].as_str() {
                    records(store, keys::scope_prefix(Kind::Route, mesh, Some(r)))
                        .await?
                        .iter()
                        .any(|route| route_targets(route, &resource.name))
                } else {
                    false
                };
                if provides {
                    names.push(service_name.to_string());
                }
            }
        }
        ProxyKind::VirtualGateway => {
            let key = keys::resource(&ResourceId::in_mesh(
                Kind::VirtualGateway,
                mesh,
                &resource.name,
            ));
            if store.get(&key).await?.is_none() {
                return Ok(None);
            }
            let prefix = keys::scope_prefix(Kind::GatewayRoute, mesh, Some(&resource.name));
            for route in records(store, prefix).await? {
                for kind in ["httpRoute", "http2Route", "grpcRoute"] {
                    if let Some(host) = route["spec"][kind]["match"]["hostname"]["exact"].as_str() {
                        names.push(host.to_string());
                    }
                }
            }
        }
    }
    let mut names: Vec<String> = names
        .into_iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .filter(|n| usable(n))
        .collect();
    names.sort();
    names.dedup();
    Ok(Some(names))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;
    use serde_json::json;
    use weft_store::{EmbeddedOptions, EmbeddedStore, Op, Txn};

    async fn put(store: &dyn Store, key: String, data: Value) {
        let value = serde_json::to_vec(&json!({ "data": data })).unwrap();
        store
            .txn(Txn {
                compares: Vec::new(),
                ops: vec![Op::Put(key, Bytes::from(value))],
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_node_gets_its_hostname_and_the_services_it_provides_directly_or_through_a_router() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
            .await
            .unwrap();
        let store: &dyn Store = &*store;
        let id = |kind, name: &str| keys::resource(&ResourceId::in_mesh(kind, "apps", name));
        put(
            store,
            id(Kind::VirtualNode, "red"),
            json!({"spec": {"serviceDiscovery": {"dns": {"hostname": "Red.apps.local"}}}}),
        )
        .await;
        put(
            store,
            id(Kind::VirtualService, "red.svc"),
            json!({"virtualServiceName": "red.svc", "spec": {"provider": {"virtualNode": {"virtualNodeName": "red"}}}}),
        )
        .await;
        put(
            store,
            id(Kind::VirtualService, "blue.svc"),
            json!({"virtualServiceName": "blue.svc", "spec": {"provider": {"virtualNode": {"virtualNodeName": "blue"}}}}),
        )
        .await;
        put(
            store,
            id(Kind::VirtualService, "colors.svc"),
            json!({"virtualServiceName": "colors.svc", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "colors"}}}}),
        )
        .await;
        let route = ResourceId {
            kind: Kind::Route,
            mesh: "apps".into(),
            parent: Some("colors".into()),
            name: "split".into(),
        };
        put(
            store,
            keys::resource(&route),
            json!({"spec": {"httpRoute": {"action": {"weightedTargets": [{"virtualNode": "red", "weight": 1}]}}}}),
        )
        .await;
        let red = Resource::parse("mesh/apps/virtualNode/red").unwrap();
        assert_eq!(
            dns_names(store, &red).await.unwrap().unwrap(),
            vec!["colors.svc", "red.apps.local", "red.svc"]
        );
        put(
            store,
            id(Kind::VirtualNode, "teller"),
            json!({"spec": {"serviceDiscovery": {"awsCloudMap": {"namespaceName": "apps.local", "serviceName": "colorteller"}}}}),
        )
        .await;
        let teller = Resource::parse("mesh/apps/virtualNode/teller").unwrap();
        assert_eq!(
            dns_names(store, &teller).await.unwrap().unwrap(),
            vec!["colorteller.apps.local"]
        );
        let ghost = Resource::parse("mesh/apps/virtualNode/ghost").unwrap();
        assert_eq!(dns_names(store, &ghost).await.unwrap(), None);
    }
}
