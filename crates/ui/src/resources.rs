//! The resource browser: every resource of a mesh with its spec, version and status, its
//! references both ways, and the versions the store kept of it.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_model::keys;
use weft_store::{Range, SharedStore};

use crate::graph::{self, Resource};
use crate::{Dashboard, UiError};

/// Reads every resource of `mesh` (one range read).
pub async fn of_mesh(store: &SharedStore, mesh: &str) -> Result<Vec<Resource>, UiError> {
    let prefix = keys::mesh_contents(mesh);
    let found = store.range(Range::prefix(prefix.clone())).await?;
    let mut out = Vec::with_capacity(found.kvs.len());
    for kv in &found.kvs {
        let Some(rest) = kv.key.strip_prefix(&prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (code, parent, name) = match parts.as_slice() {
            [code, name] => (*code, None, *name),
            [code, parent, name] => (*code, Some(keys::unescape(parent)), *name),
            _ => continue,
        };
        let record: weft_model::StoredRecord = serde_json::from_slice(&kv.value)?;
        out.push(Resource {
            code: code.to_string(),
            parent,
            name: keys::unescape(name),
            data: record.data,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
pub struct MeshQuery {
    mesh: String,
}

/// One row of the browser's list.
#[derive(Serialize)]
struct Row {
    kind: &'static str,
    code: String,
    parent: Option<String>,
    name: String,
    version: i64,
    status: String,
}

fn kind_name(code: &str) -> &'static str {
    match code {
        "vn" => "virtualNode",
        "vs" => "virtualService",
        "vr" => "virtualRouter",
        "rt" => "route",
        "vg" => "virtualGateway",
        "gr" => "gatewayRoute",
        _ => "unknown",
    }
}

fn version(data: &Value) -> i64 {
    data.pointer("/metadata/version")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// `GET /ui/api/resources?mesh=`: every resource of the mesh.
pub async fn list(
    State(ui): State<Dashboard>,
    Query(q): Query<MeshQuery>,
) -> Result<Response, UiError> {
    let resources = of_mesh(ui.store(), &q.mesh).await?;
    let rows: Vec<Row> = resources
        .iter()
        .map(|r| Row {
            kind: kind_name(&r.code),
            code: r.code.clone(),
            parent: r.parent.clone(),
            name: r.name.clone(),
            version: version(&r.data),
            status: r
                .data
                .pointer("/status/status")
                .and_then(Value::as_str)
                .unwrap_or("ACTIVE")
                .to_string(),
        })
        .collect();
    Ok(Json(serde_json::json!({"mesh": q.mesh, "resources": rows})).into_response())
}

#[derive(Deserialize)]
pub struct OneQuery {
    mesh: String,
    code: String,
    name: String,
    parent: Option<String>,
}

/// A reference to or from a resource.
#[derive(Serialize)]
struct Reference {
    code: String,
    name: String,
    parent: Option<String>,
    how: &'static str,
}

/// The kind code of the router or gateway holding a route or gateway route.
fn parent_code(code: &str) -> Option<&'static str> {
    match code {
        "rt" => Some("vr"),
        "gr" => Some("vg"),
        _ => None,
    }
}

/// The graph node id a resource stands for: a route or gateway route counts as its parent.
fn node_of(code: &str, parent: Option<&str>, name: &str) -> String {
    match (code, parent) {
        ("rt", Some(p)) => format!("vr:{p}"),
        ("gr", Some(p)) => format!("vg:{p}"),
        _ => format!("{code}:{name}"),
    }
}

/// `GET /ui/api/resource?mesh=&code=&name=[&parent=]`: the resource, what it references, what
/// references it, and its kept versions.
pub async fn one(
    State(ui): State<Dashboard>,
    Query(q): Query<OneQuery>,
) -> Result<Response, UiError> {
    let resources = of_mesh(ui.store(), &q.mesh).await?;
    let Some(found) = resources
        .iter()
        .find(|r| r.code == q.code && r.name == q.name && r.parent == q.parent)
    else {
        return Err(UiError::NotFound(format!(
            "{} {}",
            kind_name(&q.code),
            q.name
        )));
    };
    let graph = graph::build(&q.mesh, &resources);
    let me = node_of(&found.code, found.parent.as_deref(), &found.name);
    let split = |id: &str| {
        let (code, name) = id.split_once(':').unwrap_or(("", id));
        (code.to_string(), name.to_string())
    };
    let mut references = Vec::new();
    let mut referenced_by = Vec::new();
    for e in &graph.edges {
        // A route's own edges are its references; its router's other routes are not.
        if (found.code == "rt" || found.code == "gr")
            && (e.route.as_deref() != Some(found.name.as_str()) || e.source != me)
        {
            continue;
        }
        if e.source == me {
            let (code, name) = split(&e.target);
            references.push(Reference {
                code,
                name,
                parent: None,
                how: e.kind,
            });
        }
        if e.target == me {
            let (code, name) = split(&e.source);
            referenced_by.push(Reference {
                code,
                name,
                parent: None,
                how: e.kind,
            });
        }
    }
    // A route or gateway route belongs to its router or gateway, which holds it.
    if let (Some(parent), Some(code)) = (&found.parent, parent_code(&found.code)) {
        referenced_by.push(Reference {
            code: code.to_string(),
            name: parent.clone(),
            parent: None,
            how: "contains",
        });
    }
    // A router's or gateway's routes belong to it.
    if found.code == "vr" || found.code == "vg" {
        let child = if found.code == "vr" { "rt" } else { "gr" };
        for r in resources
            .iter()
            .filter(|r| r.code == child && r.parent.as_deref() == Some(found.name.as_str()))
        {
            references.push(Reference {
                code: r.code.clone(),
                name: r.name.clone(),
                parent: r.parent.clone(),
                how: "contains",
            });
        }
    }
    let history = history(ui.store(), &q.mesh, found).await?;
    Ok(Json(serde_json::json!({
        "kind": kind_name(&found.code),
        "data": found.data,
        "references": references,
        "referencedBy": referenced_by,
        "history": history,
    }))
    .into_response())
}

/// The versions the store kept of a resource, oldest first (see `weft_model::keys::history`),
/// its current one included.
async fn history(store: &SharedStore, mesh: &str, found: &Resource) -> Result<Vec<Value>, UiError> {
    let kind = match found.code.as_str() {
        "vn" => weft_model::Kind::VirtualNode,
        "vs" => weft_model::Kind::VirtualService,
        "vr" => weft_model::Kind::VirtualRouter,
        "rt" => weft_model::Kind::Route,
        "vg" => weft_model::Kind::VirtualGateway,
        _ => weft_model::Kind::GatewayRoute,
    };
    let id = weft_model::ResourceId {
        kind,
        mesh: mesh.to_string(),
        parent: found.parent.clone(),
        name: found.name.clone(),
    };
    let prefix = format!("{}{}/", keys::HISTORY_PREFIX, keys::resource(&id));
    let kept = store.range(Range::prefix(prefix)).await?;
    let mut versions = Vec::with_capacity(kept.kvs.len() + 1);
    for kv in &kept.kvs {
        let record: weft_model::StoredRecord = serde_json::from_slice(&kv.value)?;
        versions.push(record.data);
    }
    if versions.last().map(version) != Some(version(&found.data)) {
        versions.push(found.data.clone());
    }
    Ok(versions)
}
