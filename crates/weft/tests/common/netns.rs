//! Network namespaces for tests: created with `ip netns`, removed (with every process left in
//! them) on drop. Tests that use them need root; they fail, never skip, without it.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails the test with a clear message unless it runs as root.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test creates network namespaces and netfilter rules: run it as root (CI does)"
    );
}

/// Runs `program args` and returns its standard output; panics with its error output.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One network namespace, its loopback up.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace named after `role`, this process and a counter (tests run in parallel).
    pub fn new(role: &str) -> Netns {
        require_root();
        let name = format!(
            "wt-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (`ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// Runs `program args` inside the namespace and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens, and processes it
    /// starts, live there.
    pub fn within<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("entering {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

impl Netns {
    /// Gives the namespace a hosts file (`ip netns exec` bind-mounts `/etc/netns/NAME/hosts`
    /// over `/etc/hosts`); removed with the namespace.
    pub fn hosts(&self, content: &str) {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        std::fs::write(format!("{dir}/hosts"), content).unwrap_or_else(|e| panic!("{dir}: {e}"));
    }
}

/// Machines on one network segment: a `hub` namespace holding the bridge (and the control
/// plane, reached at [`Lan::HUB`]), and one namespace per host, each with an `eth0` on the bridge,
/// an IPv4 and an IPv6 address, and its default routes through the hub.
pub struct Lan {
    /// The bridge's namespace.
    pub hub: Netns,
    /// The hosts, in the order given, at 10.99.0.2, 10.99.0.3, ... and fd99::2, fd99::3, ...
    pub hosts: Vec<Netns>,
}

impl Lan {
    /// The hub's IPv4 address.
    pub const HUB: &str = "10.99.0.1";

    /// A segment with one host per role.
    pub fn new(roles: &[&str]) -> Lan {
        let hub = Netns::new("hub");
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["addr", "add", "10.99.0.1/24", "dev", "br0"]);
        hub.ip(&["addr", "add", "fd99::1/64", "dev", "br0", "nodad"]);
        hub.ip(&["link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            let host = Netns::new(role);
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
            );
            hub.ip(&["link", "set", &port, "master", "br0", "up"]);
            let v4 = format!("10.99.0.{}/24", i + 2);
            let v6 = format!("fd99::{}/64", i + 2);
            host.ip(&["addr", "add", &v4, "dev", "eth0"]);
            host.ip(&["addr", "add", &v6, "dev", "eth0", "nodad"]);
            host.ip(&["link", "set", "eth0", "up"]);
            host.ip(&["route", "add", "default", "via", "10.99.0.1"]);
            host.ip(&["-6", "route", "add", "default", "via", "fd99::1"]);
            hosts.push(host);
        }
        Lan { hub, hosts }
    }

    /// The IPv4 address of host `i`.
    pub fn v4(i: usize) -> String {
        format!("10.99.0.{}", i + 2)
    }
}

use std::process::Command as ShellCommand;
/// Where the set-up (`scripts/test`, `scripts/demo`) installs a copy of Envoy that any user may
/// execute: `pip install` as root puts Envoy under /root, out of reach of the user Envoy runs as
/// in transparent mode.
pub const SHARED_ENVOY: &str = "/usr/local/lib/weft/envoy";

/// The shared copy of Envoy, installed from the `envoy` on PATH when missing.
pub fn envoy_for_others() -> std::path::PathBuf {
    let shared = std::path::PathBuf::from(SHARED_ENVOY);
    if !shared.exists() {
        let which = ShellCommand::new("sh")
            .args(["-c", "command -v envoy"])
            .output()
            .expect("sh");
        let found = String::from_utf8_lossy(&which.stdout).trim().to_string();
        assert!(
            !found.is_empty(),
            "no envoy on PATH (scripts/test installs it)"
        );
        let status = ShellCommand::new("sh")
            .args([
                "-c",
                &format!(
                    "real=$(python3 -c 'import envoy._bin,os;print(os.path.join(os.path.dirname(envoy._bin.__file__),\"envoy\"))' 2>/dev/null || echo {found}); \
                     install -D -m 0755 \"$real\" {SHARED_ENVOY}.tmp.$$ && mv {SHARED_ENVOY}.tmp.$$ {SHARED_ENVOY}"
                ),
            ])
            .status()
            .expect("install");
        assert!(status.success(), "installing {SHARED_ENVOY}");
    }
    shared
}
