//! Hosts on one machine: network namespaces joined on one segment, for `weft demo`, the
//! benchmarks and the tests of transparent mode. Each namespace is removed, with every process
//! still in it, when its [`Netns`] is dropped.
//!
//! Uses `ip` (iproute2), as an operator would; needs root.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::InterceptError;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `program args`; its standard output, or an error naming the command.
pub fn sh(program: &str, args: &[&str]) -> Result<String, InterceptError> {
    let line = || format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| InterceptError::Lab {
            command: line(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(InterceptError::Lab {
            command: line(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Whether this process can make namespaces: it runs as root and `ip` (iproute2) is installed.
pub fn check() -> Result<(), InterceptError> {
    require_root()?;
    sh("ip", &["-V"]).map(|_| ())
}

fn require_root() -> Result<(), InterceptError> {
    if rustix::process::geteuid().is_root() {
        return Ok(());
    }
    Err(InterceptError::Lab {
        command: "ip netns add".into(),
        detail: "network namespaces need root".into(),
    })
}

/// Removes namespace `name`, killing every process still in it, if it exists: what dropping its
/// [`Netns`] does, for a namespace whose owner was killed before it could.
pub fn remove(name: &str) {
    let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
    if let Ok(pids) = sh("ip", &["netns", "pids", name]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
    let _ = sh("ip", &["netns", "del", name]);
}

/// One network namespace with its loopback up.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace named `<prefix>-<role>-<pid>-<n>` (so that several runs coexist).
    pub fn create(prefix: &str, role: &str) -> Result<Netns, InterceptError> {
        let name = format!(
            "{prefix}-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Netns::create_exact(&name)
    }

    /// A fresh namespace named exactly `name`, for names people type (`weft demo`'s); fails if
    /// one by that name exists.
    pub fn create_exact(name: &str) -> Result<Netns, InterceptError> {
        require_root()?;
        let name = name.to_string();
        sh("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (`ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> Result<String, InterceptError> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Runs `program args` inside the namespace; its output.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, InterceptError> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Gives the namespace a hosts file (`ip netns exec` bind-mounts `/etc/netns/NAME/hosts`
    /// over `/etc/hosts`).
    pub fn hosts(&self, content: &str) -> Result<(), InterceptError> {
        self.etc_file("hosts", content)
    }

    /// Gives the namespace a `resolv.conf` (bind-mounted like [`Netns::hosts`]).
    pub fn resolv_conf(&self, content: &str) -> Result<(), InterceptError> {
        self.etc_file("resolv.conf", content)
    }

    fn etc_file(&self, file: &str, content: &str) -> Result<(), InterceptError> {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(format!("{dir}/{file}"), content))
            .map_err(|e| InterceptError::Lab {
                command: format!("writing {dir}/{file}"),
                detail: e.to_string(),
            })
    }

    /// Moves the calling thread into the namespace: sockets it opens and processes it starts
    /// from then on live there.
    pub fn enter(&self) -> Result<(), InterceptError> {
        let path = format!("/run/netns/{}", self.name);
        let fail = |e: std::io::Error| InterceptError::Lab {
            command: format!("setns {path}"),
            detail: e.to_string(),
        };
        let file = File::open(&path).map_err(fail)?;
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| fail(e.into()))
    }

    /// Runs `f` on a new thread inside the namespace and returns its result.
    pub fn within<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, InterceptError> {
        let path = format!("/run/netns/{}", self.name);
        let ns = Netns {
            name: self.name.clone(),
        };
        let handle = std::thread::spawn(move || {
            let entered = ns.enter();
            // This handle must not delete the namespace: only its owner does.
            std::mem::forget(ns);
            entered.map(|()| f())
        });
        handle.join().map_err(|_| InterceptError::Lab {
            command: format!("a thread in {path}"),
            detail: "panicked".into(),
        })?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Machines on one network segment: a `hub` namespace holding the bridge (and whatever plays
/// the network's own services, such as the control plane, at [`Lan::HUB`] / `fd99::1`), and one
/// namespace per host with an `eth0` on the bridge, IPv4 and IPv6 addresses, and its default
/// routes through the hub.
#[derive(Debug)]
pub struct Lan {
    /// The hosts, in the order given, at 10.99.0.2, 10.99.0.3, ... and fd99::2, fd99::3, ...
    pub hosts: Vec<Netns>,
    /// The bridge's namespace (declared last, so dropped after the hosts).
    pub hub: Netns,
}

impl Lan {
    /// The hub's IPv4 address.
    pub const HUB: &'static str = "10.99.0.1";

    /// A segment with one host per role; namespace names start with `prefix`.
    pub fn create(prefix: &str, roles: &[&str]) -> Result<Lan, InterceptError> {
        Lan::build(roles, |role| Netns::create(prefix, role))
    }

    /// A segment whose namespaces are named exactly `<prefix>-hub` and `<prefix>-<role>`, for
    /// names people type; fails if one of them exists.
    pub fn create_exact(prefix: &str, roles: &[&str]) -> Result<Lan, InterceptError> {
        Lan::build(roles, |role| {
            Netns::create_exact(&format!("{prefix}-{role}"))
        })
    }

    fn build(
        roles: &[&str],
        create: impl Fn(&str) -> Result<Netns, InterceptError>,
    ) -> Result<Lan, InterceptError> {
        let hub = create("hub")?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["addr", "add", "10.99.0.1/24", "dev", "br0"])?;
        hub.ip(&["addr", "add", "fd99::1/64", "dev", "br0", "nodad"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        let mut hosts = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            let host = create(role)?;
            let port = format!("p{i}");
            sh(
                "ip",
                &[
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    host.name(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    hub.name(),
                ],
            )?;
            hub.ip(&["link", "set", &port, "master", "br0", "up"])?;
            host.ip(&["addr", "add", &format!("{}/24", Lan::v4(i)), "dev", "eth0"])?;
            host.ip(&[
                "addr",
                "add",
                &format!("{}/64", Lan::v6(i)),
                "dev",
                "eth0",
                "nodad",
            ])?;
            host.ip(&["link", "set", "eth0", "up"])?;
            host.ip(&["route", "add", "default", "via", "10.99.0.1"])?;
            host.ip(&["-6", "route", "add", "default", "via", "fd99::1"])?;
            hosts.push(host);
        }
        Ok(Lan { hosts, hub })
    }

    /// The IPv4 address of host `i`.
    pub fn v4(i: usize) -> String {
        format!("10.99.0.{}", i + 2)
    }

    /// The IPv6 address of host `i`.
    pub fn v6(i: usize) -> String {
        format!("fd99::{}", i + 2)
    }
}
