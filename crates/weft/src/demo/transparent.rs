//! The transparent-mode demo: each workload on its own host, as App Mesh users ran them.
//!
//! Hosts are network namespaces on one segment ([`weft_intercept::lab::Lan`]), named so that
//! people can type them: `weft-front` (10.99.0.2), `weft-red` (10.99.0.3), `weft-blue`
//! (10.99.0.4), and `weft-hub` (10.99.0.1), which holds the segment's bridge. In each host a
//! `weft agent` applies App Mesh's redirection (`APPMESH_START_ENABLED=1`) and runs Envoy as
//! uid/gid 65534 (`nobody`/`nogroup`, the ignored identity, so that Envoy's own connections are
//! let through); `red` and `blue` run the sample app on 0.0.0.0:8080, and `front`'s agent runs
//! the workload's resolver on 127.0.0.1:53, which front's `resolv.conf` names. So a plain
//! `curl http://colors.demo.local/` in `front` resolves the virtual service's virtual IP, and its
//! connection goes through front's Envoy, then red's or blue's, to the app.
//!
//! The control plane runs in this process and is reached from both sides without touching the
//! host's own network: its API listens on this host (`--listen`, 127.0.0.1:9080, for the AWS
//! CLI and `weft proxy-status`), while its xDS and DNS sockets are opened by a thread that has
//! entered `weft-hub`, on 10.99.0.1:15010 and 10.99.0.1:8600, where every host reaches them
//! directly on the segment. A socket belongs to the namespace it was created in, whichever
//! thread later serves it, so one runtime serves all three. (The other way, running the control
//! plane on the host and routing the segment to it, would add addresses and routes to the
//! host's own network, which the demo should leave alone.)
//!
//! Everything is removed on the way out (Ctrl-C, SIGTERM, a failed check): the agents remove
//! their rules and stop their Envoys, then the namespaces go with whatever still runs in them.
//! A demo killed outright leaves its namespaces; the next one removes them before starting,
//! after making sure, through a lock on [`LOCK`], that no other demo is using them.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};
use weft_agent::launch::{check_executable_by, EnvoyIdentity};
use weft_agent::redirect::{Backend, Preference};
use weft_intercept::lab::{self, Lan, Netns};

use super::{create_mesh, exited_early, Children, DemoArgs, Placement, MESH, SERVICE};
use crate::server::{self, PeerSockets, ServerArgs};

/// Namespace names are `weft-<role>`.
const PREFIX: &str = "weft";
/// The hosts, in address order (10.99.0.2, .3, .4).
const ROLES: [&str; 3] = ["front", "red", "blue"];
/// The hub's address on the segment, where the control plane's xDS and DNS listen.
const HUB: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// Where the sample apps listen, and the virtual nodes' listener port.
const APP_PORT: u16 = 8080;
/// The user and group Envoy runs as (`nobody` / `nogroup`), which the rules let through.
const ENVOY_ID: u32 = 65534;
/// The copy of Envoy `scripts/demo` installs for users other than root.
const SHARED_ENVOY: &str = "/usr/local/lib/weft/envoy";
/// Held (flock) while a transparent demo runs: the namespace names are fixed, so one at a time.
const LOCK: &str = "/run/weft-demo.lock";
/// What the front host asks for.
const URL: &str = "http://colors.demo.local/";

/// The Envoy binary transparent mode would use, or why transparent mode cannot run here: it
/// needs root and `ip` (network namespaces), a netfilter front end (the redirection), curl (what
/// the front host runs), and an Envoy that uid 65534 may execute.
pub(super) fn envoy_if_possible(explicit: Option<&PathBuf>) -> Result<PathBuf, String> {
    lab::check().map_err(|e| e.to_string())?;
    Backend::choose(Preference::Auto).map_err(|e| e.to_string())?;
    let curl = std::process::Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !curl.is_ok_and(|s| s.success()) {
        return Err("curl is not installed (the front host's client)".into());
    }
    let envoy = explicit.cloned().unwrap_or_else(|| SHARED_ENVOY.into());
    if !envoy.exists() {
        return Err(format!(
            "{} does not exist (scripts/demo installs a copy of Envoy there that Envoy's user, \
             uid {ENVOY_ID}, may run; or name one with --envoy-bin)",
            envoy.display()
        ));
    }
    check_executable_by(&envoy, identity())?;
    Ok(envoy)
}

fn identity() -> EnvoyIdentity {
    EnvoyIdentity {
        uid: Some(ENVOY_ID),
        gid: Some(ENVOY_ID),
    }
}

/// Runs the transparent-mode demo until `shutdown` resolves (or once, with `--check`), then
/// removes everything it made.
pub(super) async fn run(
    args: &DemoArgs,
    envoy: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    if let Err(e) = std::net::TcpListener::bind(args.listen) {
        bail!(
            "{} is not free ({e}); pick another with --listen",
            args.listen
        );
    }
    let _lock = claim_names()?;
    let names: Vec<String> = ROLES.iter().map(|r| format!("{PREFIX}-{r}")).collect();
    println!(
        "Starting the demo in transparent mode: hosts {} (network namespaces), each with its \
         agent and Envoy …",
        names.join(", ")
    );
    let lan = tokio::task::block_in_place(|| Lan::create_exact(PREFIX, &ROLES))
        .context("creating the demo's network namespaces")?;
    let data = tempfile::tempdir().context("creating the demo's data folder")?;
    let mut children = Children(Vec::new());
    let mut control_plane = None;
    tokio::pin!(shutdown);
    // Ctrl-C or SIGTERM at any moment, setting up included, ends in the clean-up below.
    let result = tokio::select! {
        result = up(args, &envoy, &lan, data.path(), &mut children, &mut control_plane) => result,
        () = &mut shutdown => Ok(()),
    };
    children.stop().await;
    if let Some(cp) = control_plane {
        cp.stop().await;
    }
    tokio::task::block_in_place(|| drop(lan));
    result
}

/// Takes [`LOCK`], then removes namespaces by the demo's names that a demo killed outright
/// left behind.
fn claim_names() -> Result<std::fs::File> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .with_context(|| format!("opening {LOCK}"))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another `weft demo` in transparent mode is running (it holds {LOCK}); stop it, or \
             run this one with --explicit"
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {LOCK}"))
        }
    }
    for role in std::iter::once("hub").chain(ROLES) {
        let name = format!("{PREFIX}-{role}");
        if Path::new("/run/netns").join(&name).exists()
            || Path::new("/etc/netns").join(&name).exists()
        {
            eprintln!(
                "weft demo: removing network namespace {name}, left by a demo that did not stop"
            );
            tokio::task::block_in_place(|| lab::remove(&name));
        }
    }
    Ok(lock)
}

/// Sets the demo up in `lan`, waits until the whole path answers, prints the guide, and then
/// checks (`--check`) or runs until dropped.
async fn up(
    args: &DemoArgs,
    envoy: &Path,
    lan: &Lan,
    data: &Path,
    children: &mut Children,
    control_plane: &mut Option<server::ControlPlane>,
) -> Result<()> {
    let [front, red, blue] = [&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]];
    let xds = SocketAddr::new(IpAddr::V4(HUB), 15010);
    let dns = SocketAddr::new(IpAddr::V4(HUB), weft_agent::dns::WEFT_DNS_PORT);
    let runtime = tokio::runtime::Handle::current();
    // Agents reach the CA where they reach xDS, on the port they look for it by default
    // (`http://<xDS host>:9080`): the API itself stays on the host's loopback.
    let ca = SocketAddr::new(IpAddr::V4(HUB), 9080);
    let peers = tokio::task::block_in_place(|| {
        lan.hub.within(move || {
            runtime.block_on(async { PeerSockets::bind(xds, dns).await?.with_ca(ca) })
        })
    })
    .context("entering the hub's namespace")??;
    let cp = server::start_with(
        &ServerArgs::with(data.join("data"), args.listen, xds, dns),
        Some(peers),
    )
    .await?;
    let service = cp.service.clone();
    let authority = cp.ca.clone();
    let api = cp.api_addr;
    let credentials = super::credentials_hint(cp.admin_credentials.as_deref());
    let dashboard = super::load::dashboard_lines(&cp, &credentials);
    *control_plane = Some(cp);

    let at = |i| (Lan::v4(i), APP_PORT);
    create_mesh(
        &service,
        &Placement {
            front: at(0),
            red: at(1),
            blue: at(2),
        },
    )
    .await?;

    if args.no_workload_dns {
        let vip = weft_dns::mesh::virtual_ipv4(SERVICE);
        front.hosts(&format!(
            "127.0.0.1 localhost\n::1 localhost\n{vip} {SERVICE}\n"
        ))?;
    } else {
        front.resolv_conf("nameserver 127.0.0.1\n")?;
    }
    let exe = std::env::current_exe().context("locating the weft binary")?;
    for (ns, name) in [(red, "red"), (blue, "blue")] {
        let mut app = Command::from(ns.command(&exe));
        app.args(["sample-app", "--name", name, "--listen"])
            .arg(format!("0.0.0.0:{APP_PORT}"))
            .env("WEFT_LOG", "warn");
        children.0.push(spawn(app, name)?);
    }
    for (ns, name) in [(red, "red"), (blue, "blue"), (front, "front")] {
        let resolver = name == "front" && !args.no_workload_dns;
        let token = super::join_token(&authority, name).await?;
        children
            .0
            .push(agent(ns, &exe, envoy, xds, &token, name, resolver)?);
    }

    // Up when front reaches both colours, each through both Envoys.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut red_up, mut blue_up) = (false, false);
    while !(red_up && blue_up) {
        red_up |= curl(front, 1, None).await?.iter().any(|(_, a)| a == "red");
        blue_up |= curl(front, 1, Some("x-canary: true"))
            .await?
            .iter()
            .any(|(_, a)| a == "blue");
        exited_early(children)?;
        if Instant::now() > deadline {
            bail!("the mesh did not come up within 90 s; see the messages above");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    print_guide(args, front, api, &credentials);
    println!("\n{dashboard}");
    if args.check {
        return check(front).await;
    }
    super::load::steady(|| curl(front, 1, None)).await;
    Ok(())
}

/// `--check`: requests from the front host through curl, as a user would send them.
async fn check(front: &Netns) -> Result<()> {
    let answers = curl(front, 200, None).await?;
    let count = |app: &str| answers.iter().filter(|(_, a)| a == app).count();
    let (red, blue) = (count("red"), count("blue"));
    let failed = answers.iter().filter(|(code, _)| code != "200").count();
    let canary = curl(front, 10, Some("x-canary: true")).await?;
    let canary_blue = canary
        .iter()
        .filter(|(code, a)| code == "200" && a == "blue")
        .count();
    println!(
        "check: {} requests from {}: red {red}, blue {blue}, failed {failed}; with x-canary: \
         true, blue {canary_blue} of {}",
        answers.len(),
        front.name(),
        canary.len()
    );
    if answers.len() != 200 || failed > 0 || red == 0 || blue == 0 {
        bail!("check failed: every request must succeed, and both colours must answer");
    }
    if canary.len() != 10 || canary_blue != 10 {
        bail!("check failed: every request with x-canary: true must reach blue");
    }
    Ok(())
}

/// Runs `curl` in `ns`, fetching [`URL`] `count` times in one process (with `header`): each
/// answer's HTTP status and the app that answered (`x-weft-app`, "-" for none).
async fn curl(ns: &Netns, count: usize, header: Option<&str>) -> Result<Vec<(String, String)>> {
    let mut cmd = Command::from(ns.command("curl"));
    cmd.args(["-s", "-m", "5", "-w", "%{http_code} %header{x-weft-app}\\n"]);
    if let Some(header) = header {
        cmd.args(["-H", header]);
    }
    for _ in 0..count {
        cmd.args(["-o", "/dev/null", URL]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running curl in {}", ns.name()))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (code, app) = line.split_once(' ').unwrap_or((line, ""));
            let app = if app.is_empty() { "-" } else { app };
            (code.to_string(), app.to_string())
        })
        .collect())
}

/// Starts `cmd` in a process group of its own: Ctrl-C in the terminal reaches the demo alone,
/// which then stops its children in order (agents drain and stop their Envoys).
fn spawn(mut cmd: Command, what: &str) -> Result<Child> {
    cmd.stdout(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {what}"))
}

/// `weft agent` for node `name` in `ns`, in transparent mode: the redirection applied at start
/// and removed at exit, Envoy as [`ENVOY_ID`]; with `resolver`, the workload's resolver on
/// 127.0.0.1:53.
fn agent(
    ns: &Netns,
    exe: &Path,
    envoy: &Path,
    xds: SocketAddr,
    token: &str,
    name: &str,
    resolver: bool,
) -> Result<Child> {
    let id = ENVOY_ID.to_string();
    let mut cmd = Command::from(ns.command(exe));
    cmd.arg("agent")
        .env(
            "APPMESH_RESOURCE_ARN",
            format!("mesh/{MESH}/virtualNode/{name}"),
        )
        .env("APPMESH_XDS_ENDPOINT", xds.to_string())
        .env("WEFT_JOIN_TOKEN", token)
        .env("APPMESH_START_ENABLED", "1")
        .env("APPMESH_IGNORE_UID", &id)
        .env("APPMESH_IGNORE_GID", &id)
        .env("APPMESH_ENABLE_IPV6", "1")
        // The control plane is no mesh destination: the agent's resolver asks it over TCP too.
        .env("APPMESH_EGRESS_IGNORED_IP", HUB.to_string())
        .env("ENVOY_BIN", envoy)
        .env("ENVOY_ADMIN_ACCESS_LOG_FILE", "/dev/null")
        .env("ENVOY_CONCURRENCY", "1")
        .env("ENVOY_LOG_LEVEL", "error")
        .env("LISTENER_DRAIN_WAIT_TIME_S", "1")
        .env("WEFT_LISTENER_MODE", "transparent")
        .env("WEFT_LOG", "warn");
    if name != "front" {
        cmd.env("APPMESH_APP_PORTS", APP_PORT.to_string());
    }
    if resolver {
        // The segment has no way out, so names outside the mesh have nowhere to go: they are
        // sent to the hub, where nothing answers DNS, and fail at once.
        cmd.args(["--dns-listen", "127.0.0.1:53", "--dns-upstream"])
            .arg(HUB.to_string());
    }
    spawn(cmd, &format!("the agent of {name}"))
}

fn print_guide(args: &DemoArgs, front: &Netns, api: SocketAddr, credentials: &str) {
    let f = front.name();
    let names = if args.no_workload_dns {
        "finds colors.demo.local in its hosts file"
    } else {
        "resolves names through its agent (nameserver 127.0.0.1)"
    };
    println!(
        r#"
Weft demo is up (transparent mode): mesh "{MESH}", virtual service {SERVICE} → router "colors" →
  route "split" (red 75 / blue 25) and route "canary" (x-canary: true → blue).
Three hosts on one network, 10.99.0.0/24, each a network namespace with its weft agent, whose
redirection rules carry every TCP connection through its Envoy (run as uid {ENVOY_ID}):
  {f:<11} 10.99.0.2  a client, which {names}
  weft-red    10.99.0.3  sample app "red" on port {APP_PORT}
  weft-blue   10.99.0.4  sample app "blue" on port {APP_PORT}
The control plane's xDS and DNS listen at 10.99.0.1 (namespace weft-hub), its API on http://{api}.
A request goes curl → front's Envoy → red's or blue's Envoy → the app; no program knows of a proxy.

Try:
  ip netns exec {f} curl {URL}                     # red 3 times in 4
  ip netns exec {f} curl -H 'x-canary: true' {URL}  # always blue
  ip netns exec {f} getent hosts {SERVICE}                # its virtual IP
  ip netns exec {f} sh -c 'for i in $(seq 20); do curl -s {URL}; done' | sort | uniq -c
  ip netns exec weft-red curl -s 127.0.0.1:9901/stats | grep 'ingress.*downstream_rq_2xx'  # red's Envoy

Shift the weights live with the AWS CLI, signing with the demo's administrator key:
  {credentials}
  aws appmesh update-route --endpoint-url http://{api} --mesh-name {MESH} \
    --virtual-router-name colors --route-name split --spec \
    '{{"priority":10,"httpRoute":{{"match":{{"prefix":"/"}},"action":{{"weightedTargets":[{{"virtualNode":"red","weight":0}},{{"virtualNode":"blue","weight":100}}]}}}}}}'

See the proxies and what they ACKed:
  weft proxy-status --endpoint {api}

Ctrl-C stops everything and removes the namespaces."#
    );
}
