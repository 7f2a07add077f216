//! `weft proxy-status` and the API endpoint behind it
//! (`GET /weft/v1/proxy-status`): every connected proxy, its node, the
//! version it ACKed per resource type, its last NACK, and why its config is
//! not updated when the control plane could not translate it.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use weft_control::{ClassFailure, ClassFailures};
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
    /// Why the proxy's class's config is not updated, if it is not.
    config_failure: Option<FailureJson>,
    /// Requests its RBAC filter refused (or, report-only, would have) per caller, as its stats
    /// sink reported them.
    authorization_denials: Vec<DenialJson>,
}

/// One caller's denied requests at one proxy.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DenialJson {
    /// `virtualNode/<name>`, `virtualGateway/<name>`, another URI SAN, or `unauthenticated`.
    caller: String,
    /// `ENFORCE` (refused) or `REPORT` (would have been).
    mode: &'static str,
    count: u64,
}

/// Why a proxy class's config is not updated: the App Mesh resource and the
/// reason, like the rejected resources of a NACK, and what its proxies are
/// still served.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailureJson {
    snapshot_key: String,
    /// The class's node or gateway, `mesh/<mesh>/virtualNode/<name>`.
    proxy: String,
    /// The options its proxies announce.
    options: String,
    /// The resource the failure names, `virtualNode/<name>`.
    resource: String,
    reason: String,
    at: f64,
    /// The version the class's proxies keep being served, if any.
    serving_version: Option<String>,
}

fn failure_json(snapshot_key: &str, f: ClassFailure) -> FailureJson {
    FailureJson {
        snapshot_key: snapshot_key.to_string(),
        proxy: f.proxy,
        options: f.options,
        resource: f.resource,
        reason: f.reason,
        at: epoch(f.at),
        serving_version: f.serving_version,
    }
}

fn to_json<'a>(
    p: &'a ProxyStatus,
    failures: &ClassFailures,
    denials: &[weft_traffic::DenialCount],
) -> ProxyJson<'a> {
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
        config_failure: failures
            .get(&p.snapshot_key)
            .map(|f| failure_json(&p.snapshot_key, f)),
        authorization_denials: denials
            .iter()
            .filter(|d| d.proxy_id == p.node_id)
            .map(|d| DenialJson {
                caller: d.caller.clone(),
                mode: d.mode,
                count: d.count,
            })
            .collect(),
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
    /// Every proxy class whose config is not updated, connected proxy or
    /// not, by snapshot key.
    config_failures: Vec<FailureJson>,
    /// How the xDS listener is secured: `mTLS`, or `plaintext (unauthenticated)`.
    xds_security: &'static str,
    /// How the API checks its callers: `SigV4`, or `none (--insecure-no-auth)`.
    api_authentication: &'static str,
}

/// The endpoint, served on the API listener; `failures` are the control
/// plane's, shown beside the proxies of each failing class.
pub fn router(
    ads: AdsServer,
    failures: ClassFailures,
    xds_security: &'static str,
    api_authentication: &'static str,
    traffic: weft_traffic::TrafficStore,
) -> Router {
    Router::new().route(
        PATH,
        get(move || {
            let ads = ads.clone();
            let failures = failures.clone();
            let traffic = traffic.clone();
            async move {
                let statuses = ads.proxy_status();
                let denials = traffic.denials();
                let body = StatusJson {
                    proxies: statuses
                        .iter()
                        .map(|p| to_json(p, &failures, &denials))
                        .collect(),
                    nack_count: ads.nack_count(),
                    snapshot_keys: ads.cache().keys(),
                    config_failures: failures
                        .all()
                        .into_iter()
                        .map(|(key, f)| failure_json(&key, f))
                        .collect(),
                    xds_security,
                    api_authentication,
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
    // An administrator's call (`weft:GetProxyStatus`), signed with the credentials the AWS CLI
    // would use; unsigned without any, which only a server with --insecure-no-auth answers.
    let creds = weft_auth::client::from_environment()?;
    let exchange = weft_auth::client::exchange(addr, "GET", PATH, None, creds.as_ref());
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

/// A class failure of the endpoint as one line: `config not updated:
/// translation of virtualNode/x failed: <reason>; serving version V`.
fn failure_line(f: &Value) -> String {
    let serving = match f["servingVersion"].as_str() {
        Some(_) => format!("serving version {}", short(&f["servingVersion"])),
        None => "no config served yet".to_string(),
    };
    format!(
        "config not updated: translation of {} failed: {}; {serving}",
        f["resource"].as_str().unwrap_or("?"),
        f["reason"].as_str().unwrap_or_default(),
    )
}

/// A caller's denied requests at a proxy, as `weft proxy-status` prints them.
fn denial_line(d: &Value) -> String {
    let count = d["count"].as_u64().unwrap_or_default();
    let caller = d["caller"].as_str().unwrap_or_default();
    match d["mode"].as_str() {
        Some("REPORT") => format!("would deny (REPORT): {caller} × {count}"),
        _ => format!("denied: {caller} × {count}"),
    }
}

/// Runs `weft proxy-status`.
pub async fn run(args: ProxyStatusArgs) -> Result<()> {
    let status = fetch(&args.endpoint).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    if let Some(security) = status["xdsSecurity"].as_str() {
        if security == "mTLS" {
            println!("xDS: mTLS (each proxy gets only its own certificate's config)");
        } else {
            println!(
                "WARNING: xDS is {security}: any client reaching the xDS port gets any \
                 proxy's config (weft server --xds-tls for mutual TLS)"
            );
        }
    }
    if let Some(auth) = status["apiAuthentication"].as_str() {
        if auth != "SigV4" {
            println!(
                "WARNING: the API authenticates {auth}: anyone reaching it can change every mesh \
                 (weft server without --insecure-no-auth checks SigV4 signatures)"
            );
        }
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
        if !p["configFailure"].is_null() {
            println!("    {}", failure_line(&p["configFailure"]));
        }
        for d in p["authorizationDenials"].as_array().unwrap_or(&empty) {
            println!("    {}", denial_line(d));
        }
    }
    if proxies.is_empty() {
        println!("(no proxies connected)");
    }
    // The failing classes no connected proxy belongs to (whose last proxy
    // left less than `--proxy-idle-ttl` ago).
    let unconnected: Vec<&Value> = status["configFailures"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter(|f| !proxies.iter().any(|p| p["snapshotKey"] == f["snapshotKey"]))
        .collect();
    if !unconnected.is_empty() {
        println!("\nWith no proxy connected:");
        for f in unconnected {
            println!(
                "{}\n    {}",
                f["snapshotKey"].as_str().unwrap_or_default(),
                failure_line(f)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failure_line_names_the_resource_the_reason_and_the_version_still_served() {
        let failure = json!({
            "resource": "virtualNode/front",
            "reason": "virtual node \"front\" does not exist in mesh \"apps\"",
            "servingVersion": "0123456789abcdef0123",
        });
        assert_eq!(
            failure_line(&failure),
            "config not updated: translation of virtualNode/front failed: \
             virtual node \"front\" does not exist in mesh \"apps\"; serving version 0123456789ab"
        );
        let never_served =
            json!({"resource": "virtualGateway/in", "reason": "r", "servingVersion": null});
        assert_eq!(
            failure_line(&never_served),
            "config not updated: translation of virtualGateway/in failed: r; no config served yet"
        );
    }
}
