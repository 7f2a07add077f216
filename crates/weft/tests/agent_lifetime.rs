//! An agent's Envoy lives exactly as long as its agent: killed with the agent (`kill -9`
//! included), it leaves no orphan holding the agent's ports.

mod common;

use std::time::Duration;

use common::mesh::{agent, wait_until};

/// The process ids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A zombie has exited: only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn killing_the_agent_with_sigkill_takes_its_envoy_down_and_frees_its_ports() {
    let server = common::WeftServer::start();
    let mut agent = agent(&server.xds_addr, "m", "front", &[], "delta");
    let agent_pid = agent.proc.0.id();
    let envoy = children(agent_pid);
    assert_eq!(envoy.len(), 1, "one Envoy under the agent: {envoy:?}");
    let envoy = envoy[0];
    assert!(
        command_line(envoy).contains("envoy") && command_line(envoy).contains("-c"),
        "the agent's child is Envoy itself (the launch step executes it): {}",
        command_line(envoy)
    );
    agent
        .proc
        .0
        .kill()
        .unwrap_or_else(|e| panic!("kill -9 the agent: {e}"));
    let _ = agent.proc.0.wait();
    wait_until(Duration::from_secs(5), || !alive(envoy));
    assert!(!alive(envoy), "Envoy {envoy} outlived its agent");
    wait_until(Duration::from_secs(5), || {
        agent.admin("/server_info").is_none()
    });
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", agent.egress_port)).is_ok(),
        "the egress port is free again"
    );
}

#[test]
fn an_agent_started_with_envoy_as_another_user_runs_it_as_that_user() {
    let server = common::WeftServer::start();
    let envoy_bin = common::netns::envoy_for_others();
    let agent = common::mesh::agent_with_env(
        &server.xds_addr,
        "mesh/m/virtualNode/front",
        &[],
        "delta",
        &[
            ("APPMESH_IGNORE_UID", "65534"),
            ("APPMESH_IGNORE_GID", "65534"),
            ("ENVOY_BIN", envoy_bin.to_str().unwrap_or_default()),
        ],
    );
    let envoy = children(agent.proc.0.id());
    assert_eq!(envoy.len(), 1);
    let status = std::fs::read_to_string(format!("/proc/{}/status", envoy[0])).unwrap_or_default();
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default();
    let gid_line = status
        .lines()
        .find(|l| l.starts_with("Gid:"))
        .unwrap_or_default();
    assert!(
        uid_line.split_whitespace().skip(1).all(|id| id == "65534"),
        "{uid_line}"
    );
    assert!(
        gid_line.split_whitespace().skip(1).all(|id| id == "65534"),
        "{gid_line}"
    );
    assert!(
        agent.admin("/server_info").is_some(),
        "Envoy as nobody serves its admin"
    );
}
