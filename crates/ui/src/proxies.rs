//! The proxies view: each Envoy connected to the xDS server, the version it ACKed per resource
//! type, its last NACK with Envoy's message, and the config its class holds.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use prost::Message;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{Dashboard, UiError};

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// `GET /ui/api/proxies`: every connected proxy.
pub async fn list(State(ui): State<Dashboard>) -> Result<Response, UiError> {
    let proxies: Vec<Value> = ui
        .ads()
        .proxy_status()
        .iter()
        .map(|p| {
            let types: serde_json::Map<String, Value> = p
                .types
                .iter()
                .map(|(t, s)| {
                    (
                        short_type(t).to_string(),
                        json!({
                            "ackedVersion": s.acked_version,
                            "sentVersion": s.sent_version,
                            "nackedVersion": s.nacked_version,
                            "pending": s.pending_nonce.is_some(),
                        }),
                    )
                })
                .collect();
            json!({
                "nodeId": p.node_id,
                "nodeCluster": p.node_cluster,
                "snapshotKey": p.snapshot_key,
                "connectedSince": epoch(p.connected_since),
                "snapshotVersion": p.snapshot_version,
                "rollout": format!("{:?}", p.rollout),
                "types": types,
                "nackCount": p.nack_count,
                "lastNack": p.last_nack.as_ref().map(|n| json!({
                    "type": short_type(&n.type_url),
                    "version": n.version,
                    "message": n.message,
                    "at": epoch(n.at),
                })),
            })
        })
        .collect();
    Ok(Json(json!({ "proxies": proxies })).into_response())
}

#[derive(Deserialize)]
pub struct ConfigQuery {
    key: String,
}

/// A resource's message in protobuf's text-like debug form: Envoy's config types carry no JSON
/// mapping in the Rust crate Weft uses, and this is what the proxy holds, field by field.
fn render(type_url: &str, bytes: &[u8]) -> String {
    use envoy_types::pb::envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
        route::v3::RouteConfiguration,
    };
    let decoded = match short_type(type_url) {
        "Cluster" => Cluster::decode(bytes).map(|m| format!("{m:#?}")),
        "ClusterLoadAssignment" => ClusterLoadAssignment::decode(bytes).map(|m| format!("{m:#?}")),
        "Listener" => Listener::decode(bytes).map(|m| format!("{m:#?}")),
        "RouteConfiguration" => RouteConfiguration::decode(bytes).map(|m| format!("{m:#?}")),
        _ => return format!("({} bytes)", bytes.len()),
    };
    decoded.unwrap_or_else(|e| format!("(does not decode: {e})"))
}

/// `GET /ui/api/proxy-config?key=`: the config of one proxy class (by snapshot key): every
/// resource of every type but secrets, which hold private keys and never leave the server.
pub async fn config(
    State(ui): State<Dashboard>,
    Query(q): Query<ConfigQuery>,
) -> Result<Response, UiError> {
    let Some(snapshot) = ui.ads().cache().snapshot(&q.key) else {
        return Err(UiError::NotFound(format!("config of {}", q.key)));
    };
    let mut types = Vec::new();
    for type_url in snapshot.type_urls() {
        if short_type(type_url) == "Secret" {
            continue;
        }
        let resources: Vec<Value> = snapshot
            .resources(type_url)
            .into_iter()
            .flat_map(|items| items.values())
            .map(|r| {
                json!({
                    "name": r.name,
                    "version": r.version,
                    "config": render(type_url, &r.body.value()),
                })
            })
            .collect();
        types.push(json!({
            "type": short_type(type_url),
            "version": snapshot.type_version(type_url),
            "resources": resources,
        }));
    }
    Ok(Json(json!({"key": q.key, "version": snapshot.version(), "types": types})).into_response())
}
