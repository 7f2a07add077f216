//! The supervisor drives a real Envoy: start, restart after a crash, drain and stop, and
//! several agents side by side.

mod common;

use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::{timeout, Instant};
use weft_agent::admin::{admin_request, wait_for_admin};
use weft_agent::{AgentConfig, EnvoyState, Outcome, Supervisor};

const BOUND: Duration = Duration::from_secs(60);

struct Running {
    state: watch::Receiver<EnvoyState>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<Outcome, weft_agent::AgentError>>,
}

fn start(config: AgentConfig) -> Running {
    let supervisor = Supervisor::new(config);
    let state = supervisor.state();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(supervisor.run(async {
        let _ = stopped.await;
    }));
    Running { state, stop, task }
}

/// Waits until Envoy runs with a PID other than `not`.
async fn wait_for_pid(state: &mut watch::Receiver<EnvoyState>, not: Option<u32>) -> u32 {
    let seen = timeout(BOUND, state.wait_for(|s| s.pid.is_some() && s.pid != not))
        .await
        .unwrap_or_else(|_| panic!("no Envoy (other than {not:?}) started within {BOUND:?}"))
        .unwrap_or_else(|e| panic!("supervisor gone: {e}"));
    seen.pid.unwrap_or_default()
}

fn kill(signal: &str, pid: u32) {
    use weft_agent::signal::Signal;
    let sig = match signal {
        "-KILL" | "-9" => Signal::KILL,
        "-TERM" => Signal::TERM,
        "-INT" => Signal::INT,
        other => panic!("no signal {other} in these tests"),
    };
    weft_agent::signal::send(pid, sig).unwrap_or_else(|e| panic!("kill {signal} {pid}: {e}"));
}

#[tokio::test]
async fn envoy_killed_with_sigkill_is_restarted_and_shutdown_drains_then_stops_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = common::agent_config("mesh/apps/virtualNode/red", dir.path());
    let (admin, drain, grace) = (config.admin_port, config.drain_wait, config.stop_grace);
    let access_log = config.admin_access_log.clone();
    let mut run = start(config);

    let first = wait_for_pid(&mut run.state, None).await;
    wait_for_admin(admin, BOUND)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    kill("-KILL", first);
    let second = wait_for_pid(&mut run.state, Some(first)).await;
    assert_ne!(first, second);
    wait_for_admin(admin, BOUND)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !common::process_exists(first),
        "the killed Envoy {first} is still there"
    );
    let state = run.state.borrow().clone();
    assert_eq!(state.starts, 2);
    assert!(state.last_exit.is_some_and(|s| !s.success()));

    let asked = Instant::now();
    let _ = run.stop.send(());
    // Envoy keeps running (draining) for the drain wait before it is stopped.
    tokio::time::sleep(drain / 2).await;
    let during = admin_request(admin, "GET", "/server_info", Duration::from_secs(2)).await;
    assert!(
        during.is_ok_and(|r| r.status == 200),
        "Envoy should still answer while draining"
    );

    let outcome = timeout(BOUND, run.task)
        .await
        .unwrap_or_else(|_| panic!("supervisor did not stop within {BOUND:?}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let took = asked.elapsed();
    assert_eq!(outcome, Outcome::Stopped { restarts: 1 });
    assert_eq!(outcome.exit_code(), 0);
    assert!(
        took >= drain,
        "stopped after {took:?}, before the drain wait {drain:?}"
    );
    assert!(
        took < drain + grace,
        "stop took {took:?}, above drain {drain:?} + grace {grace:?}"
    );
    assert!(
        !common::process_exists(second),
        "Envoy {second} survived shutdown"
    );
    assert!(
        admin_request(admin, "GET", "/ready", Duration::from_secs(1))
            .await
            .is_err()
    );
    let log = std::fs::read_to_string(&access_log).unwrap_or_default();
    assert!(
        log.contains("/drain_listeners?graceful"),
        "no drain in the admin log:\n{log}"
    );
}

#[tokio::test]
async fn with_a_restart_limit_of_zero_envoys_exit_ends_the_run_with_its_status() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = common::agent_config("mesh/apps/virtualNode/red", dir.path());
    config.restart_limit = Some(0);
    let admin = config.admin_port;
    let mut run = start(config);
    let pid = wait_for_pid(&mut run.state, None).await;
    wait_for_admin(admin, BOUND)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    kill("-KILL", pid);
    let outcome = timeout(BOUND, run.task)
        .await
        .unwrap_or_else(|_| panic!("supervisor did not end"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(outcome, Outcome::EnvoyExited { restarts: 0, .. }),
        "{outcome:?}"
    );
    assert_eq!(outcome.exit_code(), 128 + 9);
}

#[tokio::test]
async fn two_supervisors_side_by_side_with_distinct_admin_ports_both_run() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let red = common::agent_config("mesh/apps/virtualNode/red", dir.path());
    let blue = common::agent_config(
        "arn:aws:appmesh:us-east-1:111122223333:mesh/apps/virtualNode/blue",
        dir.path(),
    );
    let ports = [red.admin_port, blue.admin_port];
    let mut runs = [start(red), start(blue)];
    for run in &mut runs {
        wait_for_pid(&mut run.state, None).await;
    }
    for (port, node) in ports
        .into_iter()
        .zip(["virtualNode/red", "virtualNode/blue"])
    {
        wait_for_admin(port, BOUND)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let info = admin_request(port, "GET", "/server_info", Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            info.body.contains(node),
            "admin {port} is not {node}'s Envoy"
        );
    }
    // Both still alive after both started: neither knocked the other out.
    for run in &runs {
        let pid = run.state.borrow().pid.unwrap_or_default();
        assert!(common::process_exists(pid));
    }
    for run in runs {
        let _ = run.stop.send(());
        let outcome = timeout(BOUND, run.task)
            .await
            .unwrap_or_else(|_| panic!("supervisor did not stop"))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(outcome, Outcome::Stopped { restarts: 0 });
    }
}

#[tokio::test]
async fn a_missing_envoy_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = common::agent_config("mesh/apps/virtualNode/red", dir.path());
    config.envoy_bin = Some(dir.path().join("no-envoy-here"));
    let result = weft_agent::run(config, std::future::pending()).await;
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("cannot find Envoy") && message.contains("ENVOY_BIN"),
        "{message}"
    );
}
