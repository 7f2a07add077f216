//! Smoke runs of every `weft-bench` subcommand with tiny parameters against
//! the debug `weft` binary, so the benchmarks keep building and running.
//! No timing is asserted: only that each run completes and prints its table.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// Serializes the lazy build of `weft` between the tests of this binary.
static BUILD: Mutex<()> = Mutex::new(());

/// The `weft` binary of the same profile: `target/<profile>/weft`, next to
/// `weft-bench`. `cargo nextest run --workspace` and `cargo test
/// --workspace` build it before running tests; when only this package was
/// built, build it now.
fn weft_bin() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_weft-bench"));
    let weft = bench.with_file_name(format!("weft{}", std::env::consts::EXE_SUFFIX));
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !weft.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "weft", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
            .status()
            .expect("running cargo build -p weft");
        assert!(status.success(), "cargo build -p weft failed");
    }
    weft
}

/// Runs `weft-bench ARGS` with `--weft-bin`; returns stdout, failing with
/// both outputs if the run fails.
fn bench(args: &[&str]) -> String {
    let weft = weft_bin();
    let out = Command::new(env!("CARGO_BIN_EXE_weft-bench"))
        .args(args)
        .arg("--weft-bin")
        .arg(&weft)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running weft-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "weft-bench {args:?} failed: {}\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("machine:"), "{stdout}");
    stdout
}

#[test]
fn xds_scale_delta_and_sotw_run() {
    for protocol in ["delta", "sotw"] {
        let out = bench(&[
            "xds-scale",
            "--proxies",
            "12,30",
            "--services",
            "10",
            "--nodes",
            "10",
            "--backends",
            "3",
            "--repeats",
            "1",
            "--streams-per-connection",
            "8",
            "--protocol",
            protocol,
        ]);
        assert!(out.contains("mesh-wide"), "{out}");
        assert!(out.contains("KiB/proxy"), "{out}");
    }
}

#[test]
fn scoping_runs() {
    let out = bench(&["scoping", "--sizes", "4,8", "--backends", "2"]);
    assert!(out.contains("goal: flat"), "{out}");
}

#[test]
fn envoys_runs() {
    let out = bench(&[
        "envoys",
        "--count",
        "2",
        "--changes",
        "2",
        "--pause-ms",
        "50",
    ]);
    assert!(out.contains("p99 <= 50 ms"), "{out}");
    // The server's histogram beside the Envoys' convergence seen from outside.
    assert!(
        out.contains("convergence histogram: weft_proxy_convergence_time_seconds"),
        "{out}"
    );
}

#[test]
fn telemetry_runs_both_pairs_and_the_telemetry_pair_sends_to_its_sinks() {
    let out = bench(&[
        "telemetry",
        "--rate",
        "50",
        "--warmup",
        "0.2",
        "--duration",
        "1",
        "--flush-interval",
        "0.2s",
        "--xray-sampling-rate",
        "1.00",
    ]);
    let pair = |label: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no {label} row:\n{out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    for label in ["off", "on"] {
        assert_eq!(pair(label)[2], "0", "failed requests of {label}:\n{out}");
    }
    let summary = out
        .lines()
        .find(|l| l.starts_with("telemetry on / off"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(!summary.contains(" 0 DogStatsD"), "{out}");
    assert!(!summary.contains(" 0 X-Ray"), "{out}");
}

#[test]
fn api_replays_presigned_requests_without_an_error() {
    let out = bench(&[
        "api",
        "--nodes",
        "10",
        "--concurrency",
        "2",
        "--warmup",
        "0.1",
        "--duration",
        "0.3",
        "--phases",
        "describe,create",
        "--compare-signing",
        "--presigned",
        "50",
    ]);
    assert!(out.contains("prepared:"), "{out}");
    for op in ["DescribeVirtualNode", "CreateVirtualNode"] {
        // Table rows, not the note on requests signed after the prepared ones ran out.
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with(op) && !l.contains("prepared per task"))
            .collect();
        assert_eq!(rows.len(), 3, "{op}:\n{out}");
        for row in &rows[..2] {
            let cells: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(cells[5], "0", "failed requests of {op}:\n{out}");
        }
    }
}

#[test]
fn dataplane_runs() {
    // On loopback, as before the transparent row (and the only way without root).
    let out = bench(&[
        "dataplane",
        "--rate",
        "50",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--no-transparent",
    ]);
    assert!(out.contains("HTTP/2"), "{out}");
    assert!(out.contains("added"), "{out}");
    assert!(
        out.contains("transparent: skipped (--no-transparent)"),
        "{out}"
    );
    // The minimal static Envoy pair ran next to Weft's.
    assert!(out.contains("bare+") && out.contains("weft+"), "{out}");
    let out = bench(&[
        "dataplane",
        "--rate",
        "50",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--no-bare",
        "--no-transparent",
    ]);
    assert!(out.contains("added"), "{out}");
    assert!(
        !out.lines()
            .any(|l| l.starts_with("HTTP") && l.contains(" bare")),
        "{out}"
    );
}

/// Every path across two network namespaces, transparent mode among them:
/// needs root (CI runs as root); without it the run says why it skipped the row.
#[test]
fn dataplane_transparent_runs() {
    let out = bench(&[
        "dataplane",
        "--rate",
        "50",
        "--duration",
        "1",
        "--warmup",
        "0.5",
    ]);
    if !is_root() {
        assert!(out.contains("transparent: skipped ("), "{out}");
        return;
    }
    let rows = |label: &str| {
        out.lines()
            .filter(|l| l.starts_with("HTTP") && l.split_whitespace().nth(1) == Some(label))
            .count()
    };
    for label in [
        "direct",
        "explicit",
        "transparent",
        "bare",
        "added",
        "transp+",
        "ratio",
    ] {
        assert_eq!(rows(label), 2, "{label}, once per protocol:\n{out}");
    }
    // Every request of every path answered, through both transparent Envoys.
    for line in out.lines().filter(|l| l.starts_with("HTTP")) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if ["direct", "explicit", "transparent", "bare"].contains(&cells[1]) {
            assert_eq!(cells[2], "50", "{line}\n{out}");
            assert_eq!(cells[3], "0", "{line}\n{out}");
        }
    }
    assert!(out.contains("transparent: 100 measured requests"), "{out}");
    assert!(!out.contains("NOT every request"), "{out}");
    // The A/A run: a second explicit-mode pair in place of the transparent path.
    let out = bench(&[
        "dataplane",
        "--rate",
        "50",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--no-bare",
        "--control",
    ]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("HTTP/2") && l.contains(" control+ ")),
        "{out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.starts_with("HTTP") && l.contains(" transparent ")),
        "{out}"
    );
}

/// Whether this test runs as root (`id -u`).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[test]
fn no_drops_runs() {
    let out = bench(&[
        "no-drops",
        "--duration",
        "2",
        "--interval-ms",
        "200",
        "--rate",
        "50",
    ]);
    assert!(out.contains("changes"), "{out}");
}

#[test]
fn compaction_runs_and_compacts() {
    // In-process: no `weft` binary. A small state, a low threshold: the log
    // outgrows twice the live data within the run, so compaction happens.
    let out = Command::new(env!("CARGO_BIN_EXE_weft-bench"))
        .args([
            "compaction",
            "--keys",
            "2000",
            "--hot-keys",
            "50",
            "--write-bytes",
            "2048",
            "--concurrency",
            "4",
            "--duration",
            "2",
            "--compaction-mib",
            "1",
        ])
        .output()
        .expect("running weft-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("compactions"))
        .nth(1)
        .unwrap_or_else(|| panic!("no table row: {stdout}"));
    let compactions: usize = row.split_whitespace().last().unwrap().parse().unwrap();
    assert!(compactions >= 1, "no compaction ran: {stdout}");
}

#[test]
fn api_runs_closed_loop_and_open_loop_at_a_scheduled_rate() {
    let common = [
        "api",
        "--nodes",
        "20",
        "--page-size",
        "10",
        "--concurrency",
        "4",
        "--warmup",
        "0.2",
        "--duration",
        "0.5",
    ];
    // The cells of each phase's row of the table.
    let rows = |out: &str| -> Vec<Vec<String>> {
        [
            "DescribeVirtualNode",
            "ListVirtualNodes",
            "CreateVirtualNode",
            "UpdateVirtualNode",
        ]
        .iter()
        .map(|op| {
            let row = out
                .lines()
                .find(|l| l.starts_with(op))
                .unwrap_or_else(|| panic!("{op} missing:\n{out}"));
            row.split_whitespace().map(str::to_string).collect()
        })
        .collect()
    };
    let out = bench(&common);
    assert!(out.contains("closed loop"), "{out}");
    assert_eq!(rows(&out).len(), 4);
    // Open loop: every request scheduled in the measured half second (200/s
    // from the end of the warm-up) is sent and counted, however fast the
    // server answers.
    let out = bench(&[&common[..], &["--rate", "200"]].concat());
    assert!(out.contains("open loop: 200 requests/s"), "{out}");
    for cells in rows(&out) {
        assert_eq!(cells[1], "100", "requests of {}:\n{out}", cells[0]);
        assert_eq!(cells[5], "0", "errors of {}:\n{out}", cells[0]);
    }
}

#[test]
fn api_compares_signed_requests_with_unsigned_against_a_verifying_server() {
    let out = bench(&[
        "api",
        "--nodes",
        "10",
        "--concurrency",
        "2",
        "--warmup",
        "0.1",
        "--duration",
        "0.3",
        "--phases",
        "describe,create",
        "--compare-signing",
    ]);
    assert!(out.contains("verifying SigV4 on every request"), "{out}");
    // The share table: one row per phase, both with signed requests answered without error.
    for op in ["DescribeVirtualNode", "CreateVirtualNode"] {
        let rows: Vec<&str> = out.lines().filter(|l| l.starts_with(op)).collect();
        assert_eq!(
            rows.len(),
            3,
            "unsigned, signed and share rows of {op}:\n{out}"
        );
        let signed: Vec<&str> = rows[1].split_whitespace().collect();
        assert_eq!(signed[5], "0", "signed requests of {op} failed:\n{out}");
        assert!(rows[2].contains('%'), "{out}");
    }
}

#[test]
fn abuse_runs_every_phase() {
    let out = bench(&[
        "abuse",
        "--duration",
        "0.5",
        "--warmup",
        "0.3",
        "--rate",
        "50",
        "--nodes",
        "5",
        "--slow-connections",
        "10",
        "--slow-byte-ms",
        "100",
        "--idle-api",
        "20",
        "--idle-xds",
        "20",
        "--reconnect-ms",
        "100",
        "--large-workers",
        "2",
        "--token-workers",
        "4",
        "--flood-requests",
        "40",
    ]);
    for phase in [
        "baseline",
        "slow-headers",
        "idle-flood",
        "large-bodies",
        "token-flood",
        "request-flood",
    ] {
        // A row in the table, one after the abuse, one saying what the abusers got.
        let rows = out.lines().filter(|l| l.starts_with(phase)).count();
        assert_eq!(rows, 3, "{phase}:\n{out}");
    }
    // Over the body limit: BadRequestException (400); just under it: stored.
    assert!(out.contains("over 256 KiB: 400×"), "{out}");
    assert!(out.contains("valid, near 256 KiB: 200×"), "{out}");
    assert!(out.contains("fresh tokens: 200×"), "{out}");
    assert!(out.contains("trickling heads: opened 10"), "{out}");
    assert!(!out.contains("first failure"), "{out}");
}

#[test]
fn ca_runs_in_process_over_http_and_a_rotation_wave() {
    let out = bench(&[
        "ca",
        "--inprocess",
        "200",
        "--identities",
        "20",
        "--requests",
        "40",
        "--concurrency",
        "4",
        "--wave",
        "20",
        "--wave-window",
        "0.2",
        "--baseline",
        "1",
        "--client-rate",
        "50",
    ]);
    for row in [
        "sign (parse + issue)",
        "renew checks + sign",
        "join (token + CSR)",
        "renew (cert + proof)",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(row)),
            "{row} missing:\n{out}"
        );
    }
    // Every CSR of the HTTP phases and of the wave signed, none failed.
    assert!(
        out.lines()
            .filter(|l| l.starts_with("join (") || l.starts_with("renew ("))
            // The name is four words; then CSRs, CSRs/s, p50, p99, failed.
            .all(|l| l.split_whitespace().nth(4) == Some("40")
                && l.split_whitespace().nth(8) == Some("0")),
        "{out}"
    );
    assert!(
        out.contains("wave:       20 renewed (20 identities), 0 failed"),
        "{out}"
    );
    assert!(out.contains("client:     DescribeMesh p50"), "{out}");
}

/// The mutual-TLS pair beside the plaintext one, on loopback (no root needed).
#[test]
fn dataplane_mtls_runs() {
    let out = bench(&[
        "dataplane",
        "--rate",
        "50",
        "--duration",
        "0.5",
        "--warmup",
        "0.2",
        "--no-bare",
        "--no-transparent",
        "--mtls",
    ]);
    let rows = |label: &str| {
        out.lines()
            .filter(|l| l.starts_with("HTTP") && l.split_whitespace().nth(1) == Some(label))
            .count()
    };
    for label in ["direct", "explicit", "mtls", "added", "mtls+", "mtls-ratio"] {
        assert_eq!(rows(label), 2, "{label}, once per protocol:\n{out}");
    }
    assert!(out.contains("mtls: 50 measured requests"), "{out}");
    assert!(!out.contains("NOT every request"), "{out}");
}

#[test]
fn replicas_convergence_runs_on_the_embedded_store_and_on_etcd() {
    let out = bench(&[
        "replicas-convergence",
        "--proxies",
        "20",
        "--changes",
        "2",
        "--services",
        "10",
        "--nodes",
        "10",
        "--backends",
        "3",
        "--streams-per-connection",
        "4",
    ]);
    assert!(out.contains("1 replica, embedded"), "{out}");
    assert!(out.contains("2 replicas, etcd (3)"), "{out}");
    assert!(out.contains("ratio"), "{out}");
}
