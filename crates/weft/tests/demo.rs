//! `weft demo` as a user runs it: in transparent mode (the default as root: each workload in its
//! own network namespace, plain curl in the front one), and in explicit mode (`--explicit`, the
//! way without root). Transparent mode needs root (CI runs as root), nftables and Envoy 1.40.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::netns::envoy_for_others;

/// The namespaces transparent mode makes, by the names its guide prints.
const NAMESPACES: [&str; 4] = ["weft-hub", "weft-front", "weft-red", "weft-blue"];

fn demo(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.arg("demo")
        .args(args)
        .env_remove("ENVOY_BIN")
        .env("WEFT_LOG", "warn");
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn leftover_namespaces() -> Vec<&'static str> {
    NAMESPACES
        .into_iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .collect()
}

#[test]
fn the_check_passes_in_transparent_mode_with_curl_in_the_front_host() {
    let envoy = envoy_for_others();
    let out = demo(&["--check", "--listen", "127.0.0.1:0", "--envoy-bin"])
        .arg(&envoy)
        .output()
        .unwrap_or_else(|e| panic!("weft demo: {e}"));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("(transparent mode)"), "{all}");
    assert!(!all.contains("transparent mode cannot run here"), "{all}");
    assert!(
        all.contains("check: 200 requests from weft-front:"),
        "{all}"
    );
    assert!(all.contains("with x-canary: true, blue 10 of 10"), "{all}");
    assert_eq!(leftover_namespaces(), Vec::<&str>::new(), "{all}");
}

/// The command the guide prints works as pasted, with no hosts entry (the front host's agent
/// resolves the name), and SIGTERM removes everything, a namespace left by an earlier demo
/// that was killed included.
#[test]
fn the_printed_curl_command_works_and_sigterm_removes_everything() {
    let envoy = envoy_for_others();
    // As if a demo had been killed outright: its namespace is still there.
    common::netns::sh("ip", &["netns", "add", "weft-blue"]);
    let mut child = demo(&["--listen", "127.0.0.1:0", "--envoy-bin"])
        .arg(&envoy)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("weft demo: {e}"));
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        panic!("weft demo's output is piped");
    };
    let mut stdout = BufReader::new(stdout);
    // Read all along, so that the demo and its children never block on a full pipe.
    let stderr = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let mut guide = String::new();
    let mut line = String::new();
    while !guide.contains("Ctrl-C stops everything") {
        line.clear();
        if stdout.read_line(&mut line).unwrap_or(0) == 0 {
            let _ = child.kill();
            let err = stderr.join().unwrap_or_default();
            panic!("weft demo ended before it was up:\n{guide}\n{err}");
        }
        guide.push_str(&line);
    }
    let command = guide
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ip netns exec weft-front curl http://colors.demo.local/"))
        .unwrap_or_else(|| panic!("no curl command in the guide:\n{guide}"));
    let command = command.split('#').next().unwrap_or_default().trim();
    assert!(
        !Path::new("/etc/netns/weft-front/hosts").exists(),
        "no hosts entry: the name resolves through the agent"
    );
    let mut seen = Vec::new();
    for _ in 0..20 {
        let out = Command::new("sh")
            .args(["-c", &format!("{command} -s -m 5")])
            .output()
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        assert!(out.status.success(), "{command}: {}", text(&out));
        seen.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    assert!(seen.iter().all(|s| s == "red" || s == "blue"), "{seen:?}");

    // The secure way: every proxy joined with a join token and holds its xDS stream over mutual
    // TLS, as the printed proxy-status command shows.
    let status = guide
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("weft proxy-status --endpoint "))
        .unwrap_or_else(|| panic!("no proxy-status command in the guide:\n{guide}"));
    let endpoint = status
        .trim_start_matches("weft proxy-status --endpoint ")
        .trim();
    // Signed as the guide says: with the administrator's key the demo's server wrote.
    let credentials = guide
        .split_whitespace()
        .find_map(|w| w.strip_prefix("AWS_SHARED_CREDENTIALS_FILE="))
        .unwrap_or_else(|| panic!("no credentials file in the guide:\n{guide}"));
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["proxy-status", "--endpoint", endpoint])
        .env("AWS_SHARED_CREDENTIALS_FILE", credentials)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap_or_else(|e| panic!("weft proxy-status: {e}"));
    let table = text(&out);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("xDS: mTLS"), "{table}");
    assert!(!table.contains("WARNING"), "{table}");
    for node in ["front", "red", "blue"] {
        assert!(
            table.contains(&format!("virtualNode/{node}")),
            "{node} is connected: {table}"
        );
    }

    let _ = weft_agent::signal::send(child.id(), weft_agent::signal::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap_or(None) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "weft demo did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = stderr.join().unwrap_or_default();
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("removing network namespace weft-blue"),
        "the stale namespace was named: {err}"
    );
    assert_eq!(leftover_namespaces(), Vec::<&str>::new());
    assert!(!Path::new("/etc/netns/weft-front").exists());
}

#[test]
fn the_check_passes_in_explicit_mode() {
    let egress = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let out = demo(&[
        "--check",
        "--explicit",
        "--listen",
        "127.0.0.1:0",
        "--xds-listen",
        "127.0.0.1:0",
        "--dns-listen",
        "127.0.0.1:0",
        "--egress-port",
        &egress.to_string(),
    ])
    .output()
    .unwrap_or_else(|e| panic!("weft demo: {e}"));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("(explicit mode)"), "{all}");
    assert!(all.contains("check: 200 requests: red "), "{all}");
    assert!(all.contains("with x-canary: blue"), "{all}");
}
