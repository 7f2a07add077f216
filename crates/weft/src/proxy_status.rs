//! `weft proxy-status` and the API endpoint behind it
//! (`GET /weft/v1/proxy-status`): every connected proxy, its node, the
//! version it ACKed per resource type, and its last NACK.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use weft_xds::{AdsServer, Protocol, ProxyStatus};

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

/// One type's row of a proxy, as the endpoint shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TypeJson<'a> {
    type_url: &'a str,
    sent_version: Option<&'a str>,
    acked_version: Option<&'a str>,
    /// When the server received that ACK (seconds since the epoch), so that
    /// a tool can time convergence without polling back to back.
    acked_at: Option<f64>,
    nacked_version: Option<&'a str>,
    pending_nonce: Option<&'a str>,
    responses_sent: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NackJson<'a> {
    type_url: &'a str,
    version: &'a str,
    code: i32,
    message: &'a str,
    at: f64,
}

/// One proxy as the endpoint shows it. Serialized straight from the status
/// (no intermediate `serde_json::Value`): the endpoint is polled back to back
/// by tools waiting for convergence, so it should cost the server little.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProxyJson<'a> {
    stream_id: u64,
    node_id: &'a str,
    node_cluster: &'a str,
    snapshot_key: &'a str,
    protocol: &'static str,
    connected_since: f64,
    snapshot_version: Option<&'a str>,
    rollout: String,
    types: BTreeMap<&'a str, TypeJson<'a>>,
    nack_count: u64,
    last_nack: Option<NackJson<'a>>,
}

fn to_json(p: &ProxyStatus) -> ProxyJson<'_> {
    ProxyJson {
        stream_id: p.stream_id,
        node_id: &p.node_id,
        node_cluster: &p.node_cluster,
        snapshot_key: &p.snapshot_key,
        protocol: match p.protocol {
            Protocol::Sotw => "sotw",
            Protocol::Delta => "delta",
        },
        connected_since: epoch(p.connected_since),
        snapshot_version: p.snapshot_version.as_deref(),
        rollout: format!("{:?}", p.rollout),
        types: p
            .types
            .iter()
            .map(|(t, s)| {
                (
                    short_type(t),
                    TypeJson {
                        type_url: t,
                        sent_version: s.sent_version.as_deref(),
                        acked_version: s.acked_version.as_deref(),
                        acked_at: s.acked_at.map(epoch),
                        nacked_version: s.nacked_version.as_deref(),
                        pending_nonce: s.pending_nonce.as_deref(),
                        responses_sent: s.responses_sent,
                    },
                )
            })
            .collect(),
        nack_count: p.nack_count,
        last_nack: p.last_nack.as_ref().map(|n| NackJson {
            type_url: &n.type_url,
            version: &n.version,
            code: n.code,
            message: &n.message,
            at: epoch(n.at),
        }),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson<'a> {
    proxies: Vec<ProxyJson<'a>>,
    nack_count: u64,
    /// Every snapshot key (proxy class) the server holds a computed config
    /// for: those with a connected proxy, and those whose last proxy left
    /// less than `--proxy-idle-ttl` ago.
    snapshot_keys: Vec<String>,
}

/// The endpoint, served on the API listener.
pub fn router(ads: AdsServer) -> Router {
    Router::new().route(
        PATH,
        get(move || {
            let ads = ads.clone();
            async move {
                let statuses = ads.proxy_status();
                let body = StatusJson {
                    proxies: statuses.iter().map(to_json).collect(),
                    nack_count: ads.nack_count(),
                    snapshot_keys: ads.cache().keys(),
                };
                Json(body).into_response()
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
    let exchange = weft_agent::http_client::exchange(addr, "GET", PATH, &[], Default::default());
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("the control plane at {addr} did not answer in 10 s"))?
        .map_err(|e| anyhow::anyhow!("asking the control plane at {addr}: {e}"))?;
    if answer.status != 200 {
        bail!(
            "{addr} answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    serde_json::from_slice(&answer.body).context("the answer is not JSON")
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
