//! App Mesh resources written through the REST API of `weft server`, as
//! the AWS SDKs send them: virtual nodes, routers, routes, services, and the
//! generated meshes of the xDS benchmarks.

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use hyper::Method;
use serde_json::{json, Value};

use crate::load::{Api, PREFIX};

/// Sends `body` (with a fresh `clientToken`) with `method` to `path` and
/// fails unless the answer is 200.
pub async fn send(api: &Api, method: Method, path: &str, mut body: Value) -> Result<Bytes> {
    if let Some(map) = body.as_object_mut() {
        map.insert(
            "clientToken".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
    }
    api.call_ok(
        method,
        &format!("{PREFIX}{path}"),
        Some(Bytes::from(body.to_string())),
    )
    .await
}

/// CreateMesh.
pub async fn create_mesh(api: &Api, mesh: &str) -> Result<()> {
    send(api, Method::PUT, "/meshes", json!({ "meshName": mesh }))
        .await
        .with_context(|| format!("creating mesh {mesh}"))?;
    Ok(())
}

/// UpdateMesh: sets the egress filter (`ALLOW_ALL` or `DROP_ALL`), a change
/// that reaches every proxy of the mesh.
pub async fn set_egress_filter(api: &Api, mesh: &str, allow_all: bool) -> Result<()> {
    let kind = if allow_all { "ALLOW_ALL" } else { "DROP_ALL" };
    send(
        api,
        Method::PUT,
        &format!("/meshes/{mesh}"),
        json!({ "spec": { "egressFilter": { "type": kind } } }),
    )
    .await
    .with_context(|| format!("updating mesh {mesh}"))?;
    Ok(())
}

/// A virtual node: one listener (`protocol` on `port`), DNS discovery of
/// `hostname`, and virtual-service backends.
pub fn node_body(
    name: &str,
    port: u16,
    protocol: &str,
    hostname: &str,
    backends: &[String],
) -> Value {
    node_body_listeners(name, &[(port, protocol)], hostname, backends)
}

/// A virtual node with several listeners (`(port, protocol)`), DNS
/// discovery of `hostname`, and virtual-service backends.
pub fn node_body_listeners(
    name: &str,
    listeners: &[(u16, &str)],
    hostname: &str,
    backends: &[String],
) -> Value {
    let listeners: Vec<Value> = listeners
        .iter()
        .map(|(port, protocol)| json!({ "portMapping": { "port": port, "protocol": protocol } }))
        .collect();
    let backends: Vec<Value> = backends
        .iter()
        .map(|b| json!({ "virtualService": { "virtualServiceName": b } }))
        .collect();
    json!({
        "virtualNodeName": name,
        "spec": {
            "listeners": listeners,
            "serviceDiscovery": { "dns": { "hostname": hostname } },
            "backends": backends,
        }
    })
}

/// CreateVirtualNode.
pub async fn create_node(api: &Api, mesh: &str, body: Value) -> Result<()> {
    send(
        api,
        Method::PUT,
        &format!("/meshes/{mesh}/virtualNodes"),
        body,
    )
    .await
    .with_context(|| format!("creating a virtual node in {mesh}"))?;
    Ok(())
}

/// CreateVirtualRouter with one listener (`protocol` on `port`).
pub async fn create_router(
    api: &Api,
    mesh: &str,
    router: &str,
    port: u16,
    protocol: &str,
) -> Result<()> {
    let body = json!({
        "virtualRouterName": router,
        "spec": { "listeners": [{ "portMapping": { "port": port, "protocol": protocol } }] }
    });
    send(
        api,
        Method::PUT,
        &format!("/meshes/{mesh}/virtualRouters"),
        body,
    )
    .await
    .with_context(|| format!("creating virtual router {router}"))?;
    Ok(())
}

/// A route spec sending every request (prefix `/`) over weighted targets.
/// `protocol` is `http` or `http2`.
pub fn route_spec(protocol: &str, targets: &[(String, u32)]) -> Value {
    let targets: Vec<Value> = targets
        .iter()
        .map(|(node, weight)| json!({ "virtualNode": node, "weight": weight }))
        .collect();
    let key = if protocol == "http2" {
        "http2Route"
    } else {
        "httpRoute"
    };
    json!({ key: { "match": { "prefix": "/" }, "action": { "weightedTargets": targets } } })
}

/// A route spec sending every request (prefix `/`) to `node`'s listener on
/// `port` (App Mesh asks for the port when the node has several listeners).
pub fn route_to_port(protocol: &str, node: &str, port: u16) -> Value {
    let key = if protocol == "http2" {
        "http2Route"
    } else {
        "httpRoute"
    };
    let target = json!({ "virtualNode": node, "weight": 1, "port": port });
    json!({ key: { "match": { "prefix": "/" }, "action": { "weightedTargets": [target] } } })
}

/// CreateRoute.
pub async fn create_route(
    api: &Api,
    mesh: &str,
    router: &str,
    route: &str,
    spec: Value,
) -> Result<()> {
    send(
        api,
        Method::PUT,
        &format!("/meshes/{mesh}/virtualRouter/{router}/routes"),
        json!({ "routeName": route, "spec": spec }),
    )
    .await
    .with_context(|| format!("creating route {router}/{route}"))?;
    Ok(())
}

/// UpdateRoute.
pub async fn update_route(
    api: &Api,
    mesh: &str,
    router: &str,
    route: &str,
    spec: Value,
) -> Result<()> {
    send(
        api,
        Method::PUT,
        &format!("/meshes/{mesh}/virtualRouter/{router}/routes/{route}"),
        json!({ "spec": spec }),
    )
    .await
    .with_context(|| format!("updating route {router}/{route}"))?;
    Ok(())
}

/// CreateVirtualService provided by a virtual router.
pub async fn create_service(api: &Api, mesh: &str, service: &str, router: &str) -> Result<()> {
    let body = json!({
        "virtualServiceName": service,
        "spec": { "provider": { "virtualRouter": { "virtualRouterName": router } } }
    });
    send(
        api,
        Method::PUT,
        &format!("/meshes/{mesh}/virtualServices"),
        body,
    )
    .await
    .with_context(|| format!("creating virtual service {service}"))?;
    Ok(())
}

/// The shape of a generated mesh: `services` virtual services, each
/// provided by its own router whose route splits 50/50 between two virtual
/// nodes; `nodes` virtual nodes, node `i` with the `backends` services
/// `i+1 … i+backends` (mod `services`) as backends.
#[derive(Clone, Copy, Debug)]
pub struct MeshShape {
    /// Virtual services (and routers, one route each).
    pub services: usize,
    /// Virtual nodes.
    pub nodes: usize,
    /// Backends per virtual node.
    pub backends: usize,
}

impl MeshShape {
    /// Name of virtual node `i`.
    pub fn node(&self, i: usize) -> String {
        format!("node-{i:05}")
    }

    /// Name of router `j` (provider of service `j`).
    pub fn router(&self, j: usize) -> String {
        format!("router-{j:05}")
    }

    /// Name of virtual service `j`.
    pub fn service(&self, j: usize) -> String {
        format!("svc-{j:05}.scale.local")
    }

    /// The backends of node `i` (service indices).
    pub fn backends_of(&self, i: usize) -> Vec<usize> {
        (1..=self.backends)
            .map(|k| (i + k) % self.services.max(1))
            .collect()
    }

    /// Route `main` of router `j`: 50/50 (or `weight`/100-`weight`) over
    /// nodes `j` and `j+1`.
    pub fn route(&self, j: usize, weight: u32) -> Value {
        route_spec(
            "http",
            &[
                (self.node(j % self.nodes), weight),
                (self.node((j + 1) % self.nodes), 100 - weight),
            ],
        )
    }

    /// Creates the mesh's resources (the mesh itself must exist), with up
    /// to `concurrency` requests in flight.
    pub async fn create(&self, api: &Arc<Api>, mesh: &str, concurrency: usize) -> Result<()> {
        let run = |futs: Vec<futures::future::BoxFuture<'static, Result<()>>>| async move {
            stream::iter(futs)
                .buffer_unordered(concurrency.max(1))
                .try_collect::<Vec<()>>()
                .await
        };
        let shape = *self;
        let mut futs: Vec<futures::future::BoxFuture<'static, Result<()>>> = Vec::new();
        for i in 0..self.nodes {
            let api = api.clone();
            let mesh = mesh.to_string();
            let backends: Vec<String> = shape
                .backends_of(i)
                .into_iter()
                .map(|j| shape.service(j))
                .collect();
            let body = node_body(
                &shape.node(i),
                8080,
                "http",
                &format!("{}.scale.local", shape.node(i)),
                &backends,
            );
            futs.push(Box::pin(
                async move { create_node(&api, &mesh, body).await },
            ));
        }
        for j in 0..self.services {
            let api = api.clone();
            let mesh = mesh.to_string();
            futs.push(Box::pin(async move {
                create_router(&api, &mesh, &shape.router(j), 8080, "http").await
            }));
        }
        run(std::mem::take(&mut futs)).await?;
        for j in 0..self.services {
            let api = api.clone();
            let mesh = mesh.to_string();
            futs.push(Box::pin(async move {
                create_route(&api, &mesh, &shape.router(j), "main", shape.route(j, 50)).await?;
                create_service(&api, &mesh, &shape.service(j), &shape.router(j)).await
            }));
        }
        run(futs).await?;
        Ok(())
    }
}

/// Quotas for `weft server` large enough for any generated mesh.
pub fn big_quotas() -> Vec<String> {
    [
        "virtual-nodes-per-mesh=1000000",
        "virtual-services-per-mesh=1000000",
        "virtual-routers-per-mesh=1000000",
        "meshes=1000",
    ]
    .iter()
    .flat_map(|q| ["--quota".to_string(), q.to_string()])
    .collect()
}
