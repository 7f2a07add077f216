//! Network namespaces for tests ([`weft_intercept::lab`], failing the test on any error).
//! Tests that use them need root; they fail, never skip, without it.

use std::process::Command;

use weft_intercept::lab;

/// Runs `program args` and returns its standard output; panics with its error output.
pub fn sh(program: &str, args: &[&str]) -> String {
    lab::sh(program, args).unwrap_or_else(|e| panic!("{e}"))
}

/// One network namespace, its loopback up; removed with its processes on drop.
pub struct Netns(lab::Netns);

impl Netns {
    /// A fresh namespace named after `role`.
    pub fn new(role: &str) -> Netns {
        Netns(lab::Netns::create("wt", role).unwrap_or_else(|e| {
            panic!("{e} (these tests create network namespaces: run them as root, as CI does)")
        }))
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> String {
        self.0.ip(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `program args` inside the namespace and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        self.0.run(program, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        self.0.command(program)
    }

    /// Gives the namespace a hosts file.
    pub fn hosts(&self, content: &str) {
        self.0.hosts(content).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Gives the namespace a `resolv.conf`.
    pub fn resolv_conf(&self, content: &str) {
        self.0
            .resolv_conf(content)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn within<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.0.within(f).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Hosts on one segment ([`lab::Lan`]).
pub struct Lan {
    /// The hosts, at 10.99.0.2, 10.99.0.3, ...
    pub hosts: Vec<Netns>,
    /// The bridge's namespace, where the control plane runs, at [`Lan::HUB`].
    pub hub: Netns,
}

impl Lan {
    /// The hub's IPv4 address.
    pub const HUB: &str = lab::Lan::HUB;

    /// A segment with one host per role.
    pub fn new(roles: &[&str]) -> Lan {
        let lan = lab::Lan::create("wt", roles).unwrap_or_else(|e| {
            panic!("{e} (these tests create network namespaces: run them as root, as CI does)")
        });
        Lan {
            hosts: lan.hosts.into_iter().map(Netns).collect(),
            hub: Netns(lan.hub),
        }
    }

    /// The IPv4 address of host `i`.
    pub fn v4(i: usize) -> String {
        lab::Lan::v4(i)
    }
}

/// Where the set-up (`scripts/test`, `scripts/demo`) installs a copy of Envoy that any user may
/// execute: `pip install` as root puts Envoy under /root, out of reach of the user Envoy runs as
/// in transparent mode.
pub const SHARED_ENVOY: &str = "/usr/local/lib/weft/envoy";

/// The shared copy of Envoy, installed from the `envoy` on PATH when missing.
pub fn envoy_for_others() -> std::path::PathBuf {
    let shared = std::path::PathBuf::from(SHARED_ENVOY);
    if !shared.exists() {
        let which = Command::new("sh")
            .args(["-c", "command -v envoy"])
            .output()
            .expect("sh");
        let found = String::from_utf8_lossy(&which.stdout).trim().to_string();
        assert!(
            !found.is_empty(),
            "no envoy on PATH (scripts/test installs it)"
        );
        let status = Command::new("sh")
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
