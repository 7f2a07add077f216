//! Starting and stopping the `weft server` under test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How long the server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `weft` binary built in the same profile as this benchmark: it sits next
/// to our own executable (`target/release/weft` for a release run).
pub fn default_weft_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the weft-bench executable")?;
    let dir = exe
        .parent()
        .context("the weft-bench executable has no parent folder")?;
    Ok(dir.join(format!("weft{}", std::env::consts::EXE_SUFFIX)))
}

/// The `weft` binary a subcommand was given (`--weft-bin`), else
/// [`default_weft_binary`].
pub fn weft_binary(given: &Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(binary) => Ok(binary.clone()),
        None => default_weft_binary(),
    }
}

/// A running `weft server` child process; killed when dropped.
pub struct Server {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// Address of the xDS (ADS) server, e.g. `127.0.0.1:40124`.
    pub xds_addr: String,
}

impl Server {
    /// Starts `binary server` on free loopback ports over `data_dir`, with
    /// `extra` flags, and waits until it listens.
    pub fn start(binary: &Path, data_dir: &Path, extra: &[String]) -> Result<Server> {
        Server::start_xds_on(binary, data_dir, "127.0.0.1:0", extra)
    }

    /// [`Server::start`] with the xDS listener on `xds_listen` (`ADDRESS:0`
    /// for a free port), for proxies in other network namespaces. Started
    /// from a thread inside a namespace, the server runs there.
    pub fn start_xds_on(
        binary: &Path,
        data_dir: &Path,
        xds_listen: &str,
        extra: &[String],
    ) -> Result<Server> {
        Server::start_on(binary, data_dir, "127.0.0.1:0", xds_listen, extra)
    }

    /// [`Server::start`] with the API listener on `listen` and the xDS
    /// listener on `xds_listen` (`ADDRESS:0` for free ports): agents in
    /// other network namespaces reach Weft's CA on the API listener.
    ///
    /// Unless `extra` says how xDS is secured (`--xds-tls` or
    /// `--insecure-plaintext-xds`), the server gets
    /// `--insecure-plaintext-xds`: the benchmarks' simulated proxies and
    /// most of their agents hold no join token, and `weft server` requires
    /// mutual TLS on the xDS port by default (issue 19), which they could
    /// not speak. Agents that do hold a token still get their certificates
    /// and SDS from such a server.
    ///
    /// Likewise, unless `extra` has `--insecure-no-auth`, the server gets it:
    /// `weft server` verifies a SigV4 signature on every API request by
    /// default, and the benchmarks' API clients do not sign theirs (yet), so
    /// their API figures are of the API without signature verification. A
    /// `weft` older than these flags (`--weft-bin`) refuses them.
    pub fn start_on(
        binary: &Path,
        data_dir: &Path,
        listen: &str,
        xds_listen: &str,
        extra: &[String],
    ) -> Result<Server> {
        Server::launch(binary, data_dir, listen, xds_listen, extra, false)
    }

    /// [`Server::start`] verifying SigV4 on every API request, as `weft server` does by default:
    /// clients sign with the administrator's key it writes to `<data_dir>/admin-credentials`
    /// ([`Server::admin_credentials`]).
    pub fn start_verifying(binary: &Path, data_dir: &Path, extra: &[String]) -> Result<Server> {
        Server::launch(binary, data_dir, "127.0.0.1:0", "127.0.0.1:0", extra, true)
    }

    /// The administrator's key the server at `data_dir` wrote on its first start.
    pub fn admin_credentials(data_dir: &Path) -> Result<weft_auth::client::ClientCredentials> {
        let path = data_dir.join("admin-credentials");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let (key_id, secret) = weft_auth::client::read_profile(&text, "default")
            .with_context(|| format!("no [default] key in {}", path.display()))?;
        Ok(weft_auth::client::ClientCredentials {
            key_id,
            secret,
            region: "us-east-1".into(),
        })
    }

    fn launch(
        binary: &Path,
        data_dir: &Path,
        listen: &str,
        xds_listen: &str,
        extra: &[String],
        verify_signatures: bool,
    ) -> Result<Server> {
        if !binary.exists() {
            bail!(
                "no weft binary at {}: build it first with `cargo build --release -p weft` \
                 (or pass --weft-bin PATH)",
                binary.display()
            );
        }
        let mut child = Command::new(binary)
            .arg("server")
            .arg("--listen")
            .arg(listen)
            // Never collide with another server on the fixed default port.
            .arg("--xds-listen")
            .arg(xds_listen)
            .arg("--dns-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--log")
            .arg("warn")
            .args(extra)
            .args(default_flags(extra, verify_signatures))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("the server's stdout is not piped")?;
        let (tx, rx) = mpsc::channel();
        // Reads the two listening lines, then keeps draining stdout so the
        // server never blocks on a full pipe.
        std::thread::spawn(move || {
            let (mut url, mut xds) = (None, None);
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sent {
                    continue;
                }
                if let Some(u) = line.strip_prefix("weft api listening on ") {
                    url = Some(u.trim().to_string());
                }
                if let Some(a) = line.strip_prefix("weft xds listening on ") {
                    xds = Some(a.trim().to_string());
                }
                if let (Some(u), Some(a)) = (&url, &xds) {
                    let _ = tx.send((u.clone(), a.clone()));
                    sent = true;
                }
            }
        });
        let mut server = Server {
            child,
            url: String::new(),
            xds_addr: String::new(),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok((url, xds)) => {
                server.url = url;
                server.xds_addr = xds;
            }
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                bail!(
                    "weft server did not start listening within {START_TIMEOUT:?} (exit status: {})",
                    status.map_or("still running".to_string(), |s| s.to_string())
                );
            }
        }
        Ok(server)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the server has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("weft server exited during the benchmark: {status}"),
            Err(e) => bail!("cannot check the weft server process: {e}"),
        }
    }
}

/// The flags that keep the xDS port plaintext and the API unauthenticated,
/// each unless `extra` already says otherwise (see [`Server::start_on`]).
fn default_flags(extra: &[String], verify_signatures: bool) -> Vec<&'static str> {
    let has = |flags: &[&str]| extra.iter().any(|a| flags.contains(&a.as_str()));
    let mut flags = Vec::new();
    if !has(&["--xds-tls", "--insecure-plaintext-xds"]) {
        flags.push("--insecure-plaintext-xds");
    }
    if !verify_signatures && !has(&["--insecure-no-auth"]) {
        flags.push("--insecure-no-auth");
    }
    flags
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
