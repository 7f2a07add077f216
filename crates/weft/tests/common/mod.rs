//! A real `weft server` process for integration tests, and an official AWS
//! SDK client pointed at it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod certs;
pub mod disks;
pub mod failover;
pub mod mesh;
pub mod netns;
pub mod prometheus;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use aws_sdk_appmesh::config::{BehaviorVersion, Credentials, Region};
use weft_test_support::spec::{NodeSpec, RouterSpec, ServiceSpec};

/// A `weft server` child process on a free loopback port with its own data dir.
pub struct WeftServer {
    child: Child,
    pub addr: String,
    /// The xDS (ADS) address Envoys connect to, `127.0.0.1:PORT`.
    pub xds_addr: String,
    /// The DNS server's address (UDP and TCP), `127.0.0.1:PORT`.
    pub dns_addr: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl WeftServer {
    /// Starts a server on a fresh data dir.
    pub fn start() -> WeftServer {
        Self::start_with(&[])
    }

    /// Starts a server on a fresh data dir with extra flags.
    pub fn start_with(extra: &[&str]) -> WeftServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut s = Self::start_in(&dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on an existing data dir (for restart tests).
    pub fn start_in(dir: &Path, extra: &[&str]) -> WeftServer {
        Self::start_from(Command::new(env!("CARGO_BIN_EXE_weft")), dir, extra)
    }

    /// Starts a server on a fresh data dir whose process may open at most
    /// `open_files` descriptors (soft and hard limit, set with util-linux's
    /// `prlimit`, which then becomes the server process).
    pub fn start_with_open_file_limit(open_files: u64, extra: &[&str]) -> WeftServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={open_files}:{open_files}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_weft"));
        let mut s = Self::start_from(command, &dir, extra);
        s._tmp = Some(tmp);
        s
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `bound` for the process to exit; whether it did.
    pub fn exits_within(&mut self, bound: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + bound;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    fn start_from(mut command: Command, dir: &Path, extra: &[&str]) -> WeftServer {
        let mut child = command
            .arg("server")
            .args(if extra.contains(&"--listen") {
                vec![]
            } else {
                vec!["--listen", "127.0.0.1:0"]
            })
            .args(if extra.contains(&"--xds-listen") {
                vec![]
            } else {
                vec!["--xds-listen", "127.0.0.1:0"]
            })
            .args(if extra.contains(&"--dns-listen") {
                vec![]
            } else {
                vec!["--dns-listen", "127.0.0.1:0"]
            })
            .arg("--data-dir")
            .arg(dir)
            // Tests of routing, protocols and the API run agents without join tokens, which
            // only a plaintext xDS port serves; tests of identities say `--xds-tls`, the
            // server's default, and get the secure port.
            .args(
                if extra.contains(&"--xds-tls") || extra.contains(&"--insecure-plaintext-xds") {
                    vec![]
                } else {
                    vec!["--insecure-plaintext-xds"]
                },
            )
            .args(extra)
            .env("WEFT_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn weft server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut xds_addr = None;
        let mut dns_addr = None;
        while addr.is_none() || xds_addr.is_none() || dns_addr.is_none() {
            let line = lines
                .next()
                .expect("weft server exited before listening")
                .expect("read stdout");
            if let Some(url) = line.strip_prefix("weft api listening on ") {
                addr = Some(url.to_string());
            }
            if let Some(a) = line.strip_prefix("weft xds listening on ") {
                xds_addr = Some(a.to_string());
            }
            if let Some(a) = line.strip_prefix("weft dns listening on ") {
                dns_addr = Some(a.to_string());
            }
        }
        let (addr, xds_addr, dns_addr) = (addr.unwrap(), xds_addr.unwrap(), dns_addr.unwrap());
        remember_admin_credentials(&addr, dir);
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        WeftServer {
            child,
            addr,
            xds_addr,
            dns_addr,
            data_dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    /// An App Mesh client signing with the server's administrator key, the endpoint overridden.
    pub fn client(&self) -> aws_sdk_appmesh::Client {
        client_for(&self.addr)
    }

    /// Like [`WeftServer::client`], but a failed request is never retried
    /// (so one interrupted by a crash is an error, not a later success) and
    /// every operation gives up after 10 s.
    pub fn client_without_retries(&self) -> aws_sdk_appmesh::Client {
        use aws_sdk_appmesh::config::retry::RetryConfig;
        use aws_sdk_appmesh::config::timeout::TimeoutConfig;
        let config = aws_sdk_appmesh::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(credentials_for(&self.addr))
            .endpoint_url(&self.addr)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(std::time::Duration::from_secs(10))
                    .build(),
            )
            .build();
        aws_sdk_appmesh::Client::from_conf(config)
    }

    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `GET /healthz`: its status and body.
    pub async fn health(&self) -> (u16, String) {
        let response = reqwest::get(format!("{}/healthz", self.addr))
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        let _ = weft_agent::signal::send(self.child.id(), weft_agent::signal::Signal::TERM);
    }

    /// Sends SIGTERM and waits for a graceful exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let _ = weft_agent::signal::send(self.child.id(), weft_agent::signal::Signal::TERM);
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Takes the temporary dir so it outlives this server (for restarts).
    pub fn keep_dir(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
    }
}

impl Drop for WeftServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The exception name an SDK error carries (`NotFoundException`, …).
pub fn error_code<E, R>(err: &aws_sdk_appmesh::error::SdkError<E, R>) -> String
where
    E: aws_sdk_appmesh::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    match err {
        aws_sdk_appmesh::error::SdkError::ServiceError(s) => {
            s.err().code().unwrap_or("<no code>").to_string()
        }
        other => format!("<not a service error: {other:?}>"),
    }
}

/// A virtual node spec as most tests need one: one HTTP listener on `port`,
/// DNS discovery at `host` (weft-test-support's `NodeSpec::http`).
pub fn dns_node_spec(host: &str, port: i32) -> aws_sdk_appmesh::types::VirtualNodeSpec {
    NodeSpec::http(host, port).sdk()
}

/// `spec` with the virtual services `backends` added as its backends.
pub fn with_backends(
    mut spec: aws_sdk_appmesh::types::VirtualNodeSpec,
    backends: &[&str],
) -> aws_sdk_appmesh::types::VirtualNodeSpec {
    if let Some(more) = NodeSpec::client(backends).sdk().backends {
        spec.backends.get_or_insert_with(Vec::new).extend(more);
    }
    spec
}

/// A virtual service provided by the virtual node `node`.
pub fn service_by_node(node: &str) -> aws_sdk_appmesh::types::VirtualServiceSpec {
    ServiceSpec::by_node(node).sdk()
}

/// A virtual service provided by the virtual router `router`.
pub fn service_by_router(router: &str) -> aws_sdk_appmesh::types::VirtualServiceSpec {
    ServiceSpec::by_router(router).sdk()
}

/// A virtual router with one listener on `port`.
pub fn router_spec(
    port: i32,
    protocol: aws_sdk_appmesh::types::PortProtocol,
) -> aws_sdk_appmesh::types::VirtualRouterSpec {
    RouterSpec::new().listener(port, protocol.as_str()).sdk()
}

/// Opens a request of client `key` that sends its head and half its body,
/// then stalls: it stays in flight until the connection is dropped.
pub async fn stalled_request(addr: &str, key: &str) -> tokio::net::TcpStream {
    let host = addr.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "PUT /v20190125/meshes HTTP/1.1\r\nhost: weft\r\ncontent-type: application/json\r\n\
         content-length: 20\r\nauthorization: AWS4-HMAC-SHA256 \
         Credential={key}/20250101/us-east-1/appmesh/aws4_request, SignedHeaders=host, \
         Signature=0\r\n\r\n{{\"meshName\""
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes())
        .await
        .unwrap();
    s
}

/// The administrator keys of the servers started by this test process, by API address: each
/// server writes its own to `<data-dir>/admin-credentials` on first start.
static ADMIN_KEYS: std::sync::Mutex<Vec<(String, String, String)>> =
    std::sync::Mutex::new(Vec::new());

/// Reads the administrator's key a server wrote into `dir` (if it did: a restarted server keeps
/// its first key) and remembers it for clients of `addr`.
pub fn remember_admin_credentials(addr: &str, dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("admin-credentials")) else {
        return;
    };
    let value = |name: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    if let (Some(id), Some(secret)) = (value("aws_access_key_id"), value("aws_secret_access_key")) {
        // What the environment's AWS credentials sign (agents' self-registration, in this
        // process and in the agents it starts) is the last started server's administrator.
        std::env::set_var("AWS_ACCESS_KEY_ID", &id);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", &secret);
        std::env::set_var("AWS_DEFAULT_REGION", "us-east-1");
        let mut keys = ADMIN_KEYS.lock().unwrap();
        keys.retain(|(a, _, _)| a != addr);
        keys.push((addr.to_string(), id, secret));
    }
}

/// The administrator's access key id and secret of the server at `addr` (throwaway ones for an
/// address no server of this process wrote a key for).
pub fn admin_key(addr: &str) -> (String, String) {
    ADMIN_KEYS
        .lock()
        .unwrap()
        .iter()
        .find(|(a, _, _)| a == addr)
        .map(|(_, id, secret)| (id.clone(), secret.clone()))
        .unwrap_or_else(|| ("AKIDTEST".into(), "secret".into()))
}

/// SDK credentials of the administrator of the server at `addr`.
pub fn credentials_for(addr: &str) -> Credentials {
    let (id, secret) = admin_key(addr);
    Credentials::new(id, secret, None, None, "weft-tests")
}

/// The environment that makes AWS tools (and `weft` commands) sign as the administrator of the
/// server at `addr`, with no user configuration read.
pub fn aws_env(addr: &str) -> Vec<(&'static str, String)> {
    let (id, secret) = admin_key(addr);
    vec![
        ("AWS_ACCESS_KEY_ID", id),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_CONFIG_FILE", "/dev/null".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".into()),
    ]
}

/// An App Mesh client for the API at `addr`, signing as its administrator.
pub fn client_for(addr: &str) -> aws_sdk_appmesh::Client {
    let config = aws_sdk_appmesh::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(credentials_for(addr))
        .endpoint_url(addr)
        .build();
    aws_sdk_appmesh::Client::from_conf(config)
}

/// `weft join-token create` for `resource` against the API at `addr`: the token.
pub fn join_token(addr: &str, resource: &str, ttl: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["join-token", "create", "--resource", resource, "--ttl", ttl])
        .args(["--server", addr])
        .envs(aws_env(addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Subject alternative names matched exactly, as a TLS spec's `subjectAlternativeNames`.
pub fn exact_sans(names: &[&str]) -> aws_sdk_appmesh::types::SubjectAlternativeNames {
    use aws_sdk_appmesh::types::{SubjectAlternativeNameMatchers, SubjectAlternativeNames};
    SubjectAlternativeNames::builder()
        .r#match(
            SubjectAlternativeNameMatchers::builder()
                .set_exact(Some(names.iter().map(|s| s.to_string()).collect()))
                .build()
                .unwrap(),
        )
        .build()
}

/// Runs `aws appmesh <args>` (the AWS CLI, installed by scripts/test) against the server at
/// `endpoint` as its administrator, with no user configuration; its JSON output, or its error
/// text.
pub fn aws_appmesh(endpoint: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = Command::new("aws")
        .arg("appmesh")
        .args(args)
        .args(["--endpoint-url", endpoint, "--output", "json"])
        .envs(aws_env(endpoint))
        .env("AWS_MAX_ATTEMPTS", "1")
        .env_remove("AWS_PROFILE")
        .output()
        .map_err(|e| format!("running the AWS CLI (`aws`; scripts/test installs it): {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
}

/// `method path` with `body` to the server at `addr`, signed (SigV4, for `service`: `appmesh`,
/// `servicediscovery` or `weft`) as its administrator, as the AWS SDKs sign; JSON bodies.
pub async fn signed_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    service: &str,
) -> reqwest::Response {
    let (id, secret) = admin_key(addr);
    let creds = weft_auth::client::ClientCredentials {
        key_id: id,
        secret: weft_auth::Secret::new(secret),
        region: "us-east-1".into(),
    };
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let headers = [("content-type", "application/json")];
    let signature = weft_auth::client::signature_headers(
        method,
        addr.trim_start_matches("http://"),
        path,
        &headers,
        &body,
        &creds,
        service,
        std::time::SystemTime::now(),
    )
    .unwrap();
    let mut request = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{addr}{path}"))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in signature {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

/// `weft agent` for `resource` (`mesh/<mesh>/virtualNode/<name>` or a gateway) joined with a
/// fresh join token: its Envoy gets the proxy's Weft identity over SDS and speaks mutual TLS
/// to the server's xDS port (start the server with `--xds-tls`).
pub fn joined_agent(server: &WeftServer, resource: &str, app_ports: &[(u16, u16)]) -> mesh::Agent {
    joined_agent_of(&server.addr, &server.xds_addr, resource, app_ports)
}

/// [`joined_agent`] with extra environment variables for the agent (e.g.
/// `ENVOY_STATS_FLUSH_INTERVAL`).
pub fn joined_agent_with_env(
    server: &WeftServer,
    resource: &str,
    app_ports: &[(u16, u16)],
    env: &[(&str, &str)],
) -> mesh::Agent {
    let token = join_token(&server.addr, resource, "1h");
    let mut all = vec![
        ("WEFT_JOIN_TOKEN", token.as_str()),
        ("WEFT_CA_SERVER", server.addr.as_str()),
    ];
    all.extend_from_slice(env);
    mesh::agent_with_env(&server.xds_addr, resource, app_ports, "sotw", &all)
}

/// [`joined_agent`] for a server known by its API address `addr` and its `xds_addr`.
pub fn joined_agent_of(
    addr: &str,
    xds_addr: &str,
    resource: &str,
    app_ports: &[(u16, u16)],
) -> mesh::Agent {
    let token = join_token(addr, resource, "1h");
    mesh::agent_with_env(
        xds_addr,
        resource,
        app_ports,
        "sotw",
        &[("WEFT_JOIN_TOKEN", &token), ("WEFT_CA_SERVER", addr)],
    )
}
