//! A pair of Envoys with the smallest static config that proxies HTTP:
//! a listener with an HTTP connection manager and the router filter, one
//! static cluster. `weft-bench dataplane` measures it next to the pair Weft
//! configures, so that what Weft's config choices cost (filters, stats tags,
//! access logs, retries, …) shows apart from what any Envoy pair costs on
//! this machine.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::procs::{self, Proc};

/// Envoy's static bootstrap: listen on `port`, send everything to `upstream`.
fn bootstrap(port: u16, upstream: u16, http2_upstream: bool) -> Value {
    let mut cluster = json!({
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": upstream }
            }}}]}]
        }
    });
    if http2_upstream {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        });
    }
    json!({
        "static_resources": {
            "listeners": [{
                "name": "bare",
                "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
                "filter_chains": [{ "filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "bare",
                        "codec_type": "AUTO",
                        "route_config": {
                            "virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "upstream" } }]
                            }]
                        },
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
                        }]
                    }
                }]}]
            }],
            "clusters": [cluster]
        }
    })
}

/// One Envoy on a static bootstrap, `--concurrency 1` like the agents' Envoys.
async fn envoy(port: u16, upstream: u16, http2_upstream: bool) -> Result<Proc> {
    let config = bootstrap(port, upstream, http2_upstream).to_string();
    let child = Command::new("envoy")
        .args([
            "--config-yaml",
            &config,
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting envoy (from PATH) for the bare pair")?;
    let proc = Proc(child);
    procs::wait_until(Duration::from_secs(30), "a bare Envoy listening", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await?;
    Ok(proc)
}

/// A client-side and a server-side bare Envoy in front of `app_port`.
pub struct BarePair {
    /// Where clients send their requests (the client-side Envoy).
    pub port: u16,
    _procs: [Proc; 2],
}

/// Starts the pair; `http2` makes both Envoys' upstream connections HTTP/2
/// (as Weft's are for an `http2` listener), the downstream codec is automatic.
pub async fn pair(app_port: u16, http2: bool) -> Result<BarePair> {
    let server_port = procs::free_port()?;
    let server = envoy(server_port, app_port, http2).await?;
    let client_port = procs::free_port()?;
    let client = envoy(client_port, server_port, http2).await?;
    Ok(BarePair {
        port: client_port,
        _procs: [client, server],
    })
}
