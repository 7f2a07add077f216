//! A pair of Envoys with the smallest static config that proxies HTTP:
//! a listener with an HTTP connection manager and the router filter, one
//! static cluster. `weft-bench dataplane` measures it next to the pair Weft
//! configures, so that what Weft's config choices cost (filters, stats tags,
//! access logs, retries, …) shows apart from what any Envoy pair costs on
//! this machine.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::procs::{self, Place, Proc};

/// Envoy's static bootstrap: listen on `listen`, send everything to `upstream`.
fn bootstrap(listen: SocketAddr, upstream: SocketAddr, http2_upstream: bool) -> Value {
    let mut cluster = json!({
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": {
                    "address": upstream.ip().to_string(),
                    "port_value": upstream.port()
                }
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
                "address": { "socket_address": {
                    "address": listen.ip().to_string(),
                    "port_value": listen.port()
                } },
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

/// Where a pair runs and what it connects.
pub struct Layout {
    /// Where the client-side Envoy runs; it listens on 127.0.0.1:`client_port` there.
    pub client: Place,
    /// The client-side Envoy's port.
    pub client_port: u16,
    /// Where the server-side Envoy runs.
    pub server: Place,
    /// What the server-side Envoy binds.
    pub server_listen: SocketAddr,
    /// Where the client-side Envoy reaches the server-side one.
    pub server_addr: SocketAddr,
    /// Where the server-side Envoy reaches the app.
    pub app: SocketAddr,
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// Run both Envoys as this user and group id (the agents' `APPMESH_IGNORE_UID`).
    pub uid: Option<u32>,
}

impl Layout {
    /// Both Envoys on loopback here, `envoy` from PATH, in front of 127.0.0.1:`app_port`.
    pub fn loopback(app_port: u16) -> Result<Layout> {
        let server_port = procs::free_port()?;
        Ok(Layout {
            client: Place::here(),
            client_port: procs::free_port()?,
            server: Place::here(),
            server_listen: ([127, 0, 0, 1], server_port).into(),
            server_addr: ([127, 0, 0, 1], server_port).into(),
            app: ([127, 0, 0, 1], app_port).into(),
            envoy: "envoy".into(),
            uid: None,
        })
    }
}

/// One Envoy on a static bootstrap in `place`, `--concurrency 1` like the agents' Envoys.
async fn envoy(
    layout: &Layout,
    place: &Place,
    listen: SocketAddr,
    upstream: SocketAddr,
    http2_upstream: bool,
) -> Result<Proc> {
    let config = bootstrap(listen, upstream, http2_upstream).to_string();
    let (program, uid) = (layout.envoy.clone(), layout.uid);
    let child = place
        .run(move || {
            let mut cmd = Command::new(program);
            if let Some(uid) = uid {
                cmd.uid(uid).gid(uid);
            }
            cmd.args([
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
        })?
        .with_context(|| format!("starting {} for the bare pair", layout.envoy.display()))?;
    let proc = Proc(child);
    let local: SocketAddr = ([127, 0, 0, 1], listen.port()).into();
    procs::wait_until(Duration::from_secs(30), "a bare Envoy listening", || {
        procs::connects(place, local)
    })
    .await?;
    Ok(proc)
}

/// A client-side and a server-side bare Envoy in front of an app.
pub struct BarePair {
    /// Where clients send their requests (the client-side Envoy, on 127.0.0.1 of its place).
    pub port: u16,
    _procs: [Proc; 2],
}

/// Starts the pair; `http2` makes both Envoys' upstream connections HTTP/2
/// (as Weft's are for an `http2` listener), the downstream codec is automatic.
pub async fn pair(layout: &Layout, http2: bool) -> Result<BarePair> {
    let server = envoy(
        layout,
        &layout.server,
        layout.server_listen,
        layout.app,
        http2,
    )
    .await?;
    let client_listen = ([127, 0, 0, 1], layout.client_port).into();
    let client = envoy(
        layout,
        &layout.client,
        client_listen,
        layout.server_addr,
        http2,
    )
    .await?;
    Ok(BarePair {
        port: layout.client_port,
        _procs: [client, server],
    })
}
