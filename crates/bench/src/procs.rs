//! Real data-plane peers: `weft sample-app`s and `weft agent`s (each
//! supervising a real Envoy with `--concurrency 1`) in explicit mode, on free
//! loopback ports, like the dataplane tests start them; or, for `weft-bench
//! dataplane`'s transparent row, in network namespaces ([`Place`]).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use weft_intercept::lab::Netns;

/// Where a process runs and a socket is opened: this process's network
/// namespace, or one of a lab's ([`weft_intercept::lab`]).
#[derive(Clone, Debug, Default)]
pub struct Place(Option<Arc<Netns>>);

impl Place {
    /// This process's own network namespace.
    pub fn here() -> Place {
        Place(None)
    }

    /// Inside `ns`.
    pub fn inside(ns: Arc<Netns>) -> Place {
        Place(Some(ns))
    }

    /// The namespace's name, or `None` for this process's own.
    pub fn name(&self) -> Option<&str> {
        self.0.as_deref().map(Netns::name)
    }

    /// Runs `f` here, or on a thread inside the namespace (sockets it
    /// opens and processes it starts live there).
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R> {
        match &self.0 {
            None => Ok(f()),
            Some(ns) => ns.within(f).map_err(anyhow::Error::from),
        }
    }

    /// A command that runs `program` here (`ip netns exec NAME program`
    /// inside a namespace).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.0 {
            None => Command::new(program),
            Some(ns) => ns.command(program),
        }
    }
}

/// First and last port handed out by [`free_port`]: below Linux's default
/// ephemeral range (32768–60999), so a port checked free here is not taken
/// a moment later as the source port of some outgoing connection (with a
/// hundred Envoys connecting, ports picked with `bind(:0)` collided).
const PORTS: (u16, u16) = (20_000, 32_000);

/// The next port to try.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A free loopback port from a range outside the ephemeral ports, starting
/// at an offset that depends on this process so concurrent runs rarely meet.
pub fn free_port() -> Result<u16> {
    let span = PORTS.1 - PORTS.0;
    let _ = NEXT_PORT.compare_exchange(
        0,
        PORTS.0 + (std::process::id() % u32::from(span / 100)) as u16 * 100,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let mut port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        if port >= PORTS.1 {
            NEXT_PORT.store(PORTS.0 + 1, Ordering::Relaxed);
            port = PORTS.0;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {}..{}", PORTS.0, PORTS.1)
}

/// A child process, stopped with SIGTERM (then SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so an agent stops its Envoy, then make sure.
        let pid = i32::try_from(self.0.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `f` every 20 ms until it is true; fails after `timeout`.
pub async fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `weft sample-app --name NAME` on a free port; returns it and its port.
pub async fn sample_app(weft: &Path, name: &str) -> Result<(Proc, u16)> {
    let port = free_port()?;
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let app = sample_app_at(&Place::here(), weft, name, listen).await?;
    Ok((app, port))
}

/// `weft sample-app --name NAME --listen LISTEN` in `place`, once it accepts connections.
pub async fn sample_app_at(
    place: &Place,
    weft: &Path,
    name: &str,
    listen: SocketAddr,
) -> Result<Proc> {
    let child = place
        .command(weft)
        .args([
            "sample-app",
            "--name",
            name,
            "--listen",
            &listen.to_string(),
        ])
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} sample-app", weft.display()))?;
    let app = Proc(child);
    let local: SocketAddr = ([127, 0, 0, 1], listen.port()).into();
    wait_until(Duration::from_secs(10), "sample app listening", || {
        connects(place, local)
    })
    .await?;
    Ok(app)
}

/// Whether a TCP connection to `addr` from `place` succeeds.
pub fn connects(place: &Place, addr: SocketAddr) -> bool {
    place
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
        .unwrap_or(false)
}

/// One `weft agent` and its Envoy.
pub struct Agent {
    /// The agent process (its Envoy is its child).
    pub proc: Proc,
    /// Envoy's admin port (on 127.0.0.1 of [`Agent::place`]).
    pub admin_port: u16,
    /// Envoy's egress listener port (explicit mode).
    pub egress_port: u16,
    /// Where the agent and its Envoy run.
    pub place: Place,
    /// Its virtual node's name.
    pub node: String,
}

/// Ports and settings of one `weft agent` beyond its virtual node.
pub struct AgentSpec<'a> {
    /// Where it runs.
    pub place: Place,
    /// Envoy's admin port.
    pub admin_port: u16,
    /// Envoy's egress listener port.
    pub egress_port: u16,
    /// Envoy's ingress listener port (transparent mode).
    pub ingress_port: u16,
    /// More variables: the listener mode and what goes with it.
    pub env: Vec<(&'a str, String)>,
}

/// Starts `weft agent` for `mesh/<mesh>/virtualNode/<node>` in explicit
/// mode; `app_ports` maps the node's listener ports to where its app
/// listens. Does not wait for Envoy (see [`Agent::wait_ready`]).
pub fn agent(
    weft: &Path,
    xds: &str,
    mesh: &str,
    node: &str,
    app_ports: &[(u16, u16)],
    protocol: &str,
) -> Result<Agent> {
    let ports: Vec<String> = app_ports.iter().map(|(l, a)| format!("{l}={a}")).collect();
    let mut env = vec![("WEFT_LISTENER_MODE", "explicit".to_string())];
    if !ports.is_empty() {
        env.push(("WEFT_APP_PORTS", ports.join(",")));
    }
    let spec = AgentSpec {
        place: Place::here(),
        admin_port: free_port()?,
        egress_port: free_port()?,
        ingress_port: free_port()?,
        env,
    };
    agent_with(weft, xds, mesh, node, protocol, spec)
}

/// Starts `weft agent` for `mesh/<mesh>/virtualNode/<node>` as `spec` says.
/// Does not wait for Envoy (see [`Agent::wait_ready`]).
pub fn agent_with(
    weft: &Path,
    xds: &str,
    mesh: &str,
    node: &str,
    protocol: &str,
    spec: AgentSpec<'_>,
) -> Result<Agent> {
    let mut cmd = spec.place.command(weft);
    cmd.arg("agent")
        .env(
            "APPMESH_RESOURCE_ARN",
            format!("mesh/{mesh}/virtualNode/{node}"),
        )
        .env("APPMESH_XDS_ENDPOINT", xds)
        .env("ENVOY_ADMIN_ACCESS_PORT", spec.admin_port.to_string())
        .env("ENVOY_ADMIN_ACCESS_LOG_FILE", "/dev/null")
        .env("APPMESH_ENVOY_EGRESS_PORT", spec.egress_port.to_string())
        .env("APPMESH_ENVOY_INGRESS_PORT", spec.ingress_port.to_string())
        .env("ENVOY_CONCURRENCY", "1")
        .env("ENVOY_LOG_LEVEL", "error")
        .env("WEFT_XDS_PROTOCOL", protocol)
        .env("LISTENER_DRAIN_WAIT_TIME_S", "0")
        .env("WEFT_ENVOY_STOP_GRACE_S", "2")
        .env("WEFT_LOG", "warn")
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {} agent for {node}", weft.display()))?;
    Ok(Agent {
        proc: Proc(child),
        admin_port: spec.admin_port,
        egress_port: spec.egress_port,
        place: spec.place,
        node: node.to_string(),
    })
}

impl Agent {
    /// Whether Envoy's admin interface answers.
    pub fn admin_up(&self) -> bool {
        let port = self.admin_port;
        self.place
            .run(move || http_status(port, "/ready").is_some())
            .unwrap_or(false)
    }

    /// Waits until Envoy's admin interface answers.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        wait_until(timeout, "Envoy admin interface", || self.admin_up()).await
    }

    /// CPU time of the agent's children (its Envoy), read from
    /// `/proc/<agent>/task/*/children` (the agent may start Envoy from any
    /// of its threads); `None` if unreadable.
    pub fn envoy_cpu(&self) -> Option<Duration> {
        let pid = self.proc.pid();
        let mut total = Duration::ZERO;
        let mut found = false;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let Ok(task) = task else { continue };
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                total += crate::machine::cpu_time(child)?;
                found = true;
            }
        }
        found.then_some(total)
    }

    /// The sum of Envoy's stats whose name contains `needle`.
    pub fn stat_sum(&self, needle: &str) -> u64 {
        let (port, path) = (self.admin_port, format!("/stats?filter={needle}"));
        let body = self
            .place
            .run(move || http_body(port, &path))
            .ok()
            .flatten()
            .unwrap_or_default();
        body.lines()
            .filter_map(|l| l.rsplit_once(": "))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    }
}

/// Status of a `GET` on a fresh HTTP/1.0 connection to 127.0.0.1:`port`.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let text = http_raw(port, path, "127.0.0.1")?;
    text.split_whitespace().nth(1)?.parse().ok()
}

fn http_body(port: u16, path: &str) -> Option<String> {
    let text = http_raw(port, path, "127.0.0.1")?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// A blocking `GET` to 127.0.0.1:`port` with `Host: host`, whole response as text.
pub fn http_raw(port: u16, path: &str, host: &str) -> Option<String> {
    http_raw_to(([127, 0, 0, 1], port).into(), path, host)
}

/// A blocking `GET` to `addr` with `Host: host`, whole response as text.
pub fn http_raw_to(addr: SocketAddr, path: &str, host: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out).ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Whether a request with `Host: host` through 127.0.0.1:`port` answers 200.
pub fn answers_200(port: u16, host: &str) -> bool {
    http_raw(port, "/", host).is_some_and(|t| t.starts_with("HTTP/1.1 200"))
}

/// Whether a request with `Host: host` sent from `place` to `addr` answers 200.
pub fn answers_200_from(place: &Place, addr: SocketAddr, host: &str) -> bool {
    let host = host.to_string();
    place
        .run(move || http_raw_to(addr, "/", &host).is_some_and(|t| t.starts_with("HTTP/1.1 200")))
        .unwrap_or(false)
}

/// `MemAvailable` of `/proc/meminfo` in MiB.
pub fn mem_available_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
