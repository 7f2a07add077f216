//! Real data-plane peers for end-to-end tests: sample apps and `weft agent`s
//! (each starting a real Envoy 1.40) in explicit mode on free loopback ports.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use weft_xds::test_helpers::free_port;

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so an agent stops its Envoy, then make sure.
        let _ = weft_agent::signal::send(self.0.id(), weft_agent::signal::Signal::TERM);
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

/// `weft sample-app --name NAME` on a free port.
pub fn sample_app(name: &str) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "sample-app",
            "--name",
            name,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (Proc(child), port)
}

/// One `weft agent` and its Envoy, in explicit mode.
pub struct Agent {
    pub proc: Proc,
    pub admin_port: u16,
    pub egress_port: u16,
}

/// Starts `weft agent` for `mesh/<mesh>/virtualNode/<node>`; `app_ports` maps
/// the node's listener ports to where its app really listens.
pub fn agent(xds: &str, mesh: &str, node: &str, app_ports: &[(u16, u16)], protocol: &str) -> Agent {
    agent_with_id(
        xds,
        &format!("mesh/{mesh}/virtualNode/{node}"),
        app_ports,
        protocol,
    )
}

/// Starts `weft agent` with `APPMESH_RESOURCE_ARN` set to `id` verbatim.
pub fn agent_with_id(xds: &str, id: &str, app_ports: &[(u16, u16)], protocol: &str) -> Agent {
    agent_with_env(xds, id, app_ports, protocol, &[])
}

/// Like [`agent_with_id`], with extra environment variables for the agent (and so its Envoy),
/// e.g. `WEFT_LISTEN_ADDRESS` or `CARES_HOSTS` (the hosts file Envoy's c-ares resolver reads).
pub fn agent_with_env(
    xds: &str,
    id: &str,
    app_ports: &[(u16, u16)],
    protocol: &str,
    env: &[(&str, &str)],
) -> Agent {
    let admin_port = free_port();
    let egress_port = free_port();
    let ports: Vec<String> = app_ports.iter().map(|(l, a)| format!("{l}={a}")).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.arg("agent")
        .env("APPMESH_RESOURCE_ARN", id)
        .env("APPMESH_XDS_ENDPOINT", xds)
        .env("ENVOY_ADMIN_ACCESS_PORT", admin_port.to_string())
        .env("ENVOY_ADMIN_ACCESS_LOG_FILE", "/dev/null")
        .env("APPMESH_ENVOY_EGRESS_PORT", egress_port.to_string())
        .env("APPMESH_ENVOY_INGRESS_PORT", free_port().to_string())
        .env("ENVOY_CONCURRENCY", "1")
        .env("ENVOY_LOG_LEVEL", "warning")
        .env("WEFT_LISTENER_MODE", "explicit")
        .env("WEFT_XDS_PROTOCOL", protocol)
        .env("LISTENER_DRAIN_WAIT_TIME_S", "0")
        .env("WEFT_ENVOY_STOP_GRACE_S", "2")
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::null());
    if !ports.is_empty() {
        cmd.env("WEFT_APP_PORTS", ports.join(","));
    }
    cmd.envs(env.iter().copied());
    let child = cmd.spawn().unwrap();
    let agent = Agent {
        proc: Proc(child),
        admin_port,
        egress_port,
    };
    wait_until(Duration::from_secs(20), || {
        agent.admin("/server_info").is_some()
    });
    agent
}

impl Agent {
    /// GET on Envoy's admin interface; `None` if it does not answer 200.
    pub fn admin(&self, path: &str) -> Option<String> {
        let (status, body) = http_get(self.admin_port, "127.0.0.1", path).ok()?;
        (status == 200).then_some(body)
    }

    /// The sum of Envoy's counters whose name contains `needle`.
    pub fn stat_sum(&self, needle: &str) -> u64 {
        let stats = self
            .admin(&format!("/stats?filter={needle}"))
            .unwrap_or_default();
        stats
            .lines()
            .filter_map(|l| l.rsplit_once(": "))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    }

    /// A request through this proxy's egress with the given Host and headers.
    pub fn get(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, String)> {
        request(self.egress_port, "GET", host, path, headers)
    }
}

/// Polls `f` until true or the timeout; panics on timeout.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("condition not met within {timeout:?}");
}

/// A plain HTTP/1.1 GET; returns status and body.
pub fn http_get(port: u16, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    request(port, "GET", host, path, &[])
}

/// One HTTP/1.1 request to 127.0.0.1:`port` on a fresh connection (`Connection: close`),
/// through hyper's client; returns status and body. Blocks the calling thread (any thread).
pub fn request(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let response = weft_test_support::http::exchange_blocking(port, method, host, path, headers)?;
    Ok((response.status, response.body))
}

/// A backend in trouble: an HTTP/1.1 server on a free port answering every request `500`,
/// keeping connections open as Envoy expects; it runs until the test process ends.
pub fn failing_app() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    // GET requests without bodies: one answer per header block.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\n\r\nfail\n";
                        if conn.write_all(answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}
