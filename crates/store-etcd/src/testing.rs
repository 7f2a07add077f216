//! A real etcd cluster for tests: members on free loopback ports in a
//! temporary folder, killed and removed on drop.
//!
//! It runs Debian's `etcd` 3.4 (`/usr/bin/etcd`, installed by `scripts/test`),
//! with the static bootstrap of
//! <https://etcd.io/docs/v3.4/op-guide/clustering/#static>.

// Test code: a fixture that cannot start has nothing better to do than fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, CompactionOptions, GetOptions};

use crate::{EtcdOptions, EtcdStore, EtcdTls};

/// Where Debian's `etcd-server` package puts the binary.
pub const ETCD: &str = "/usr/bin/etcd";

/// A running etcd cluster on loopback.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    tls: Option<ClusterTls>,
    /// Held for the cluster's life: see [`reserve_ports`].
    _port_locks: Vec<std::fs::File>,
}

/// PEM files for a cluster that serves its clients over TLS and asks for
/// their certificates (etcd's `--client-cert-auth`,
/// <https://etcd.io/docs/v3.4/op-guide/security/>).
#[derive(Debug, Clone)]
pub struct ClusterTls {
    /// The CA that signed both the members' and the client's certificates.
    pub ca: PathBuf,
    /// The members' certificate (for 127.0.0.1) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate and key the members accept.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// Ports below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768–60999 by
/// default): the kernel never hands these out for another test's `bind(port 0)` or outgoing
/// connection, so a member that is stopped and started again finds its port still free (a
/// kernel-picked port was taken by another test while its member was down). Below the range
/// `weft_xds::test_helpers::free_port` hands out (20000–32000), which checks that a port binds
/// but cannot know a stopped member's, and above the ports App Mesh's Envoy listens on by
/// default (15000, 15001).
const PORTS: std::ops::Range<u16> = 16_000..20_000;

/// Where the reservations of [`PORTS`] live: one lock file per port, shared by every test
/// process on the machine.
const PORT_LOCKS: &str = "/tmp/weft-test-ports";

/// `count` distinct ports of [`PORTS`] nobody listens on now, each reserved by an exclusive lock
/// on its file for as long as the returned files are open (the kernel drops the locks when the
/// process dies), so that no other cluster on this machine picks them while a member is down.
fn reserve_ports(count: usize) -> (Vec<u16>, Vec<std::fs::File>) {
    std::fs::create_dir_all(PORT_LOCKS).unwrap();
    // Start at a different place in each process, so that concurrent tests rarely contend.
    let span = u32::from(PORTS.end - PORTS.start);
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
    let mut ports = Vec::with_capacity(count);
    let mut locks = Vec::with_capacity(count);
    for step in 0..span {
        if ports.len() == count {
            break;
        }
        let port = PORTS.start + u16::try_from((seed.wrapping_add(step)) % span).unwrap();
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("{PORT_LOCKS}/{port}"))
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        ports.push(port);
        locks.push(file);
    }
    assert_eq!(ports.len(), count, "no {count} free ports in {PORTS:?}");
    (ports, locks)
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster serves writes.
    /// Panics (naming the log folder) if etcd is missing or does not come up.
    pub async fn start(size: usize) -> EtcdCluster {
        Self::start_with(size, None).await
    }

    /// [`EtcdCluster::start`] serving clients over TLS with client certificates.
    pub async fn start_tls(size: usize, tls: ClusterTls) -> EtcdCluster {
        Self::start_with(size, Some(tls)).await
    }

    async fn start_with(size: usize, tls: Option<ClusterTls>) -> EtcdCluster {
        assert!(
            std::path::Path::new(ETCD).exists(),
            "{ETCD} is missing: scripts/test installs Debian's etcd-server (install_etcd in scripts/lib/setup.sh)"
        );
        let dir = tempfile::Builder::new()
            .prefix("weft-etcd-")
            .tempdir()
            .unwrap();
        let (ports, port_locks) = reserve_ports(2 * size);
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            dir,
            members,
            initial_cluster,
            tls,
            _port_locks: port_locks,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster.wait_ready().await;
        cluster
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let client = format!("{}://127.0.0.1:{}", self.scheme(), m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        // util-linux's setpriv makes the kernel kill the member if the test
        // process dies without dropping the cluster (a timeout's SIGKILL), so
        // no member outlives its test (prctl PR_SET_PDEATHSIG,
        // https://man7.org/linux/man-pages/man1/setpriv.1.html).
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", "--", ETCD]);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "weft-test"])
            .args(["--initial-cluster-state", "new"])
            // Faster leader elections than the defaults (100 ms / 1 s), for the
            // tests that kill a member.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {ETCD}: {e}"));
        self.members[i].child = Some(child);
    }

    /// Waits until a write through each live member's own endpoint succeeds.
    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        for endpoint in self.live_endpoints() {
            loop {
                let ready = async {
                    let mut client = Client::connect([&endpoint], self.connect_options())
                        .await
                        .ok()?;
                    client.put("weft-test/ready", "1", None).await.ok()?;
                    Some(())
                };
                if tokio::time::timeout(Duration::from_secs(2), ready)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    // The folder goes with the cluster when the panic drops it: say what the
                    // members logged.
                    let logs: String = (0..self.members.len())
                        .map(|i| {
                            let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                            let tail: Vec<&str> = log.lines().rev().take(8).collect();
                            let tail: Vec<&str> = tail.into_iter().rev().collect();
                            format!("--- {}:\n{}\n", self.members[i].name, tail.join("\n"))
                        })
                        .collect();
                    panic!("etcd member {endpoint} did not come up within 20 s; its members logged:\n{logs}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// `127.0.0.1:port` of every member, dead or alive.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// How a plain client reaches the members: with the client certificate
    /// when they serve TLS.
    fn connect_options(&self) -> Option<etcd_client::ConnectOptions> {
        let tls = self.tls.as_ref()?;
        let read = |p: &PathBuf| std::fs::read(p).unwrap();
        Some(
            etcd_client::ConnectOptions::new().with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)))
                    .identity(etcd_client::Identity::from_pem(
                        read(&tls.client_cert),
                        read(&tls.client_key),
                    )),
            ),
        )
    }

    /// The `--store` value of `weft server` for this cluster: `etcd://a,b,c`.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// Options for a backend on this cluster under `prefix`, with short timeouts.
    pub fn options(&self, prefix: &str) -> EtcdOptions {
        EtcdOptions {
            prefix: prefix.to_string(),
            request_timeout: Duration::from_secs(3),
            connect_for: Duration::from_secs(10),
            tls: self.tls.as_ref().map(|tls| EtcdTls {
                ca_file: Some(tls.ca.clone()),
                cert_file: Some(tls.client_cert.clone()),
                key_file: Some(tls.client_key.clone()),
            }),
            ..EtcdOptions::new(self.endpoints())
        }
    }

    /// A backend on this cluster under `prefix`.
    pub async fn store(&self, prefix: &str) -> Arc<EtcdStore> {
        EtcdStore::connect(self.options(prefix))
            .await
            .unwrap_or_else(|e| panic!("connecting to the test etcd cluster: {e}"))
    }

    /// A plain etcd client on the live members, for what Weft never does
    /// itself (writing foreign keys, compacting).
    pub async fn client(&self) -> Client {
        Client::connect(self.live_endpoints(), self.connect_options())
            .await
            .unwrap()
    }

    /// The index of the member that leads the cluster now.
    pub async fn leader(&self) -> usize {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let endpoint = format!("{}://127.0.0.1:{}", self.scheme(), m.client_port);
            let Ok(mut client) = Client::connect([endpoint], self.connect_options()).await else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            if status.header().map(|h| h.member_id()) == Some(status.leader()) {
                return i;
            }
        }
        panic!("no live etcd member leads the cluster");
    }

    /// An endpoint list of only these members (a backend that knows only them).
    pub fn endpoints_of(&self, members: &[usize]) -> Vec<String> {
        let all = self.endpoints();
        members.iter().map(|&i| all[i].clone()).collect()
    }

    /// Kills member `i` with SIGKILL, as a crash would.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data folder (it rejoins the cluster);
    /// returns once every live member serves writes.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_ready().await;
    }

    /// Starts every killed member again (all at once, since a lone member of
    /// a cluster that lost its quorum cannot serve); returns once they serve.
    pub async fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_ready().await;
    }

    /// Compacts the whole history up to the current revision (physically, so
    /// that reads and watches from before it fail at once); returns it.
    pub async fn compact(&self) -> i64 {
        let mut client = self.client().await;
        let revision = client
            .get("weft-test/ready", Some(GetOptions::new().with_count_only()))
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        client
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
            .unwrap();
        revision
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
