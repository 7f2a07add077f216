//! `weft proxy-status` and the API endpoint behind it
//! (`GET /weft/v1/proxy-status`): every connected proxy, its node, the
//! version it ACKed per resource type, and its last NACK.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_xds::{AdsServer, ProxyStatus};

/// Path of the endpoint on the API listener.
pub const PATH: &str = "/weft/v1/proxy-status";

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Short type name: `type.googleapis.com/envoy.config.cluster.v3.Cluster` → `Cluster`.
fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

fn to_json(p: &ProxyStatus) -> Value {
    let types: serde_json::Map<String, Value> = p
        .types
        .iter()
        .map(|(t, s)| {
            (
                short_type(t).to_string(),
                json!({
                    "typeUrl": t,
                    "sentVersion": s.sent_version,
                    "ackedVersion": s.acked_version,
                    "nackedVersion": s.nacked_version,
                    "pendingNonce": s.pending_nonce,
                    "responsesSent": s.responses_sent,
                }),
            )
        })
        .collect();
    json!({
        "streamId": p.stream_id,
        "nodeId": p.node_id,
        "nodeCluster": p.node_cluster,
        "snapshotKey": p.snapshot_key,
        "protocol": format!("{:?}", p.protocol).to_lowercase(),
        "connectedSince": epoch(p.connected_since),
        "snapshotVersion": p.snapshot_version,
        "rollout": format!("{:?}", p.rollout),
        "types": types,
        "nackCount": p.nack_count,
        "lastNack": p.last_nack.as_ref().map(|n| json!({
            "typeUrl": n.type_url,
            "version": n.version,
            "code": n.code,
            "message": n.message,
            "at": epoch(n.at),
        })),
    })
}

/// The endpoint, served on the API listener.
pub fn router(ads: AdsServer) -> Router {
    Router::new().route(
        PATH,
        get(move || {
            let ads = ads.clone();
            async move {
                let proxies: Vec<Value> = ads.proxy_status().iter().map(to_json).collect();
                Json(json!({ "proxies": proxies, "nackCount": ads.nack_count() }))
            }
        }),
    )
}

/// Arguments of `weft proxy-status`.
#[derive(clap::Args)]
pub struct ProxyStatusArgs {
    /// The control plane's API address.
    #[arg(long, env = "WEFT_ENDPOINT", default_value = "127.0.0.1:9080")]
    endpoint: String,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    json: bool,
}

async fn fetch(endpoint: &str) -> Result<Value> {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the control plane at {addr}"))?;
    let request = format!("GET {PATH} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    conn.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed answer from {addr}");
    };
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "{addr} answered: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    serde_json::from_str(body).context("the answer is not JSON")
}

fn short(v: &Value) -> String {
    v.as_str()
        .map(|s| s.chars().take(12).collect())
        .unwrap_or_else(|| "-".into())
}

/// Runs `weft proxy-status`.
pub async fn run(args: ProxyStatusArgs) -> Result<()> {
    let status = fetch(&args.endpoint).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let empty = Vec::new();
    let proxies = status["proxies"].as_array().unwrap_or(&empty);
    println!(
        "{:<48} {:<6} {:<8} {:<13} {:<13} {:<13} {:<13} LAST NACK",
        "NODE", "ADS", "ROLLOUT", "CDS", "EDS", "LDS", "RDS"
    );
    for p in proxies {
        let acked = |t: &str| short(&p["types"][t]["ackedVersion"]);
        let nack = match &p["lastNack"] {
            Value::Null => "-".to_string(),
            n => format!(
                "{} {}: {}",
                n["typeUrl"].as_str().map(short_type).unwrap_or_default(),
                short(&n["version"]),
                n["message"].as_str().unwrap_or_default()
            ),
        };
        println!(
            "{:<48} {:<6} {:<8} {:<13} {:<13} {:<13} {:<13} {}",
            p["nodeId"].as_str().unwrap_or_default(),
            p["protocol"].as_str().unwrap_or_default(),
            p["rollout"].as_str().unwrap_or_default(),
            acked("Cluster"),
            acked("ClusterLoadAssignment"),
            acked("Listener"),
            acked("RouteConfiguration"),
            nack
        );
    }
    if proxies.is_empty() {
        println!("(no proxies connected)");
    }
    Ok(())
}
