//! The load generator: a keep-alive HTTP/1.1 client, the four App Mesh
//! operations measured, and the time-bounded phase runner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use crate::openloop;

/// API version prefix of every App Mesh path.
pub const PREFIX: &str = "/v20190125";

/// A pooled keep-alive HTTP/1.1 client bound to one server.
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    /// Sent with every request: a SigV4-style `Authorization` header whose
    /// access key id names the client (the server's per-client limits).
    authorization: Option<HeaderValue>,
    /// Signs every request with SigV4 for `appmesh`, as the AWS SDKs do, when set.
    credentials: Option<weft_auth::client::ClientCredentials>,
}

impl Api {
    /// A client for the server at `base` (`http://host:port`) keeping up to
    /// `connections` idle connections, one per concurrent task.
    pub fn new(base: &str, connections: usize) -> Api {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Api {
            client,
            base: base.trim_end_matches('/').to_string(),
            authorization: None,
            credentials: None,
        }
    }

    /// Like [`Api::new`], signing every request with SigV4 (service `appmesh`) with `creds`,
    /// for a server that verifies signatures: the signing is the client's own cost, as it is
    /// an SDK's.
    pub fn signing(
        base: &str,
        connections: usize,
        creds: weft_auth::client::ClientCredentials,
    ) -> Api {
        Api {
            credentials: Some(creds),
            ..Api::new(base, connections)
        }
    }

    /// Like [`Api::new`], with every request carrying an `Authorization`
    /// header in the SigV4 form (`Credential=KEY/...`) for `access_key`:
    /// the server tells clients apart by it. The signature is not real;
    /// the server does not verify signatures.
    pub fn signed(base: &str, connections: usize, access_key: &str) -> Result<Api> {
        let value = format!(
            "AWS4-HMAC-SHA256 Credential={access_key}/20261207/us-east-1/appmesh/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature=0000000000000000"
        );
        Ok(Api {
            authorization: Some(
                HeaderValue::from_str(&value).context("an access key fit for a header")?,
            ),
            ..Api::new(base, connections)
        })
    }

    /// Sends one request and reads the whole response body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes)> {
        let prepared = self.prepare(method, path, body)?;
        self.send(&prepared).await
    }

    /// One request ready to send, signed now if this client signs: a signature stays valid for
    /// the five minutes a server allows either side of its clock, so it can be sent later, and
    /// sent again.
    pub fn prepare(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Prepared> {
        let mut headers = Vec::with_capacity(4);
        if body.is_some() {
            headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
        }
        if let Some(value) = &self.authorization {
            headers.push((AUTHORIZATION, value.clone()));
        }
        let body = body.unwrap_or_default();
        if let Some(creds) = &self.credentials {
            let authority = self.base.strip_prefix("http://").unwrap_or(&self.base);
            let signed: &[(&str, &str)] = if body.is_empty() {
                &[]
            } else {
                &[("content-type", "application/json")]
            };
            for (name, value) in weft_auth::client::signature_headers(
                method.as_str(),
                authority,
                path,
                signed,
                &body,
                creds,
                "appmesh",
                std::time::SystemTime::now(),
            )? {
                headers.push((
                    hyper::header::HeaderName::from_bytes(name.as_bytes())?,
                    HeaderValue::from_str(&value)?,
                ));
            }
        }
        Ok(Prepared {
            method,
            uri: format!("{}{path}", self.base),
            headers,
            body,
        })
    }

    /// Sends a prepared request as it is and reads the whole response body.
    pub async fn send(&self, prepared: &Prepared) -> Result<(StatusCode, Bytes)> {
        let mut req = Request::builder()
            .method(prepared.method.clone())
            .uri(prepared.uri.as_str());
        for (name, value) in &prepared.headers {
            req = req.header(name, value.clone());
        }
        let req = req.body(Full::new(prepared.body.clone()))?;
        let resp = self.client.request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// Sends a prepared request and fails unless the answer is 200.
    pub async fn send_ok(&self, prepared: &Prepared) -> Result<Bytes> {
        let (status, bytes) = self.send(prepared).await?;
        if status != StatusCode::OK {
            bail!("HTTP {status}: {}", snippet(&bytes));
        }
        Ok(bytes)
    }

    /// Sends one request and fails unless the answer is 200.
    pub async fn call_ok(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Bytes> {
        let (status, bytes) = self.call(method, path, body).await?;
        if status != StatusCode::OK {
            bail!("HTTP {status}: {}", snippet(&bytes));
        }
        Ok(bytes)
    }
}

/// A request built (and signed, by a signing client) ahead of its sending.
#[derive(Debug, Clone)]
pub struct Prepared {
    method: Method,
    uri: String,
    headers: Vec<(hyper::header::HeaderName, HeaderValue)>,
    body: Bytes,
}

/// The start of a response body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(300).collect()
}

/// The name of the `i`-th pre-created virtual node.
pub fn node_name(i: usize) -> String {
    format!("node-{i:04}")
}

/// A realistic virtual node spec: one HTTP listener with a health check and a
/// timeout, DNS service discovery, a few virtual-service backends and an
/// access log. `variant` changes the port and a backend, so that successive
/// updates differ. Written as text, not built as a `serde_json::Value`: the
/// load generator shares the machine's two cores with the server, and the
/// tree cost it a fifth of its CPU. `mesh` and `name` need no JSON escaping
/// (App Mesh names are letters, digits, `-`, `_` and `.`).
pub fn node_spec(mesh: &str, name: &str, variant: u64) -> String {
    let port = 8080 + (variant % 100);
    let svc = variant % 7;
    format!(
        concat!(
            r#"{{"listeners":[{{"portMapping":{{"port":{port},"protocol":"http"}},"#,
            r#""healthCheck":{{"protocol":"http","path":"/healthz","healthyThreshold":2,"#,
            r#""unhealthyThreshold":3,"timeoutMillis":2000,"intervalMillis":5000}},"#,
            r#""timeout":{{"http":{{"perRequest":{{"unit":"s","value":15}}}}}}}}],"#,
            r#""serviceDiscovery":{{"dns":{{"hostname":"{name}.{mesh}.svc.cluster.local"}}}},"#,
            r#""backends":[{{"virtualService":{{"virtualServiceName":"orders.{mesh}.local"}}}},"#,
            r#"{{"virtualService":{{"virtualServiceName":"payments.{mesh}.local"}}}},"#,
            r#"{{"virtualService":{{"virtualServiceName":"svc-{svc}.{mesh}.local"}}}}],"#,
            r#""logging":{{"accessLog":{{"file":{{"path":"/dev/stdout"}}}}}}}}"#
        ),
        port = port,
        name = name,
        mesh = mesh,
        svc = svc,
    )
}

/// A fresh idempotency token, as the AWS SDKs send with every create and
/// update: unique per request (a random per-process prefix and a counter),
/// without a getrandom call each time. At most 33 characters, within the 36
/// the API allows (16 hex digits, `-`, the counter in hex).
pub fn client_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut random = uuid::Uuid::new_v4().simple().to_string();
        random.truncate(16);
        random
    });
    format!("{prefix}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The body of a CreateVirtualNode request, with a fresh `clientToken`.
pub fn create_body(mesh: &str, name: &str, variant: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"virtualNodeName":"{name}","clientToken":"{}","spec":{}}}"#,
        client_token(),
        node_spec(mesh, name, variant)
    ))
}

/// The body of an UpdateVirtualNode request, with a fresh `clientToken`.
pub fn update_body(mesh: &str, name: &str, variant: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"clientToken":"{}","spec":{}}}"#,
        client_token(),
        node_spec(mesh, name, variant)
    ))
}

/// Path of the virtual nodes of `mesh`.
pub fn nodes_path(mesh: &str) -> String {
    format!("{PREFIX}/meshes/{mesh}/virtualNodes")
}

/// Creates a mesh.
pub async fn create_mesh(api: &Api, mesh: &str) -> Result<()> {
    let body = json!({ "meshName": mesh, "clientToken": uuid::Uuid::new_v4().to_string() });
    api.call_ok(
        Method::PUT,
        &format!("{PREFIX}/meshes"),
        Some(Bytes::from(body.to_string())),
    )
    .await
    .with_context(|| format!("creating mesh {mesh}"))?;
    Ok(())
}

/// Creates virtual nodes `node-0000` … in `mesh`, `concurrency` at a time.
pub async fn create_nodes(
    api: Arc<Api>,
    mesh: &str,
    nodes: usize,
    concurrency: usize,
) -> Result<()> {
    let mut tasks = Vec::new();
    for t in 0..concurrency.max(1) {
        let api = api.clone();
        let mesh = mesh.to_string();
        tasks.push(tokio::spawn(async move {
            for i in (t..nodes).step_by(concurrency.max(1)) {
                let name = node_name(i);
                api.call_ok(
                    Method::PUT,
                    &nodes_path(&mesh),
                    Some(create_body(&mesh, &name, i as u64)),
                )
                .await
                .with_context(|| format!("creating virtual node {name} in mesh {mesh}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a setup task panicked")??;
    }
    Ok(())
}

/// One measured operation.
#[derive(Debug, Clone)]
pub enum Workload {
    /// DescribeVirtualNode over the pre-created nodes.
    Describe { mesh: String, nodes: usize },
    /// ListVirtualNodes, walking every page with `nextToken`; one request is one page.
    List {
        mesh: String,
        nodes: usize,
        limit: usize,
    },
    /// CreateVirtualNode with a new name each time; task `t` creates in
    /// `meshes[t % meshes.len()]`.
    Create { meshes: Vec<String> },
    /// UpdateVirtualNode spread over the pre-created nodes.
    Update { mesh: String, nodes: usize },
}

impl Workload {
    /// The App Mesh operation name.
    pub fn operation(&self) -> &'static str {
        match self {
            Workload::Describe { .. } => "DescribeVirtualNode",
            Workload::List { .. } => "ListVirtualNodes",
            Workload::Create { .. } => "CreateVirtualNode",
            Workload::Update { .. } => "UpdateVirtualNode",
        }
    }

    /// The `i`-th request of task `task` of `tasks`, for the workloads whose requests do not
    /// depend on earlier answers (all but List), and after how many requests a task's repeat
    /// (Describe's: its nodes), if they do.
    fn request(
        &self,
        task: usize,
        tasks: usize,
        i: u64,
    ) -> Option<(Method, String, Option<Bytes>, Option<u64>)> {
        let spread = |nodes: usize| (task + tasks * i as usize) % nodes.max(1);
        match self {
            Workload::Describe { mesh, nodes } => Some((
                Method::GET,
                format!("{}/{}", nodes_path(mesh), node_name(spread(*nodes))),
                None,
                Some(*nodes as u64),
            )),
            Workload::List { .. } => None,
            Workload::Create { meshes } => {
                let mesh = &meshes[task % meshes.len().max(1)];
                let name = format!("c-{task:02}-{i:08}");
                Some((
                    Method::PUT,
                    nodes_path(mesh),
                    Some(create_body(mesh, &name, i)),
                    None,
                ))
            }
            Workload::Update { mesh, nodes } => {
                let name = node_name(spread(*nodes));
                let path = format!("{}/{name}", nodes_path(mesh));
                Some((
                    Method::PUT,
                    path,
                    Some(update_body(mesh, &name, i + 1)),
                    None,
                ))
            }
        }
    }

    /// Task `task`'s first `count` requests (one round of Describe's at most), prepared (and
    /// signed) now, and after how many they repeat; empty for List.
    pub fn prepare(
        &self,
        api: &Api,
        task: usize,
        tasks: usize,
        count: usize,
    ) -> Result<(Vec<Prepared>, Option<u64>)> {
        let mut prepared = Vec::new();
        let mut period = None;
        for i in 0..count as u64 {
            let Some((method, path, body, repeat)) = self.request(task, tasks, i) else {
                break;
            };
            if repeat.is_some_and(|r| i >= r) {
                break;
            }
            period = repeat;
            prepared.push(api.prepare(method, &path, body)?);
        }
        Ok((prepared, period))
    }

    /// Sends the `state.i`-th request of task `task` of `tasks`, and checks the answer.
    async fn step(
        &self,
        api: &Api,
        task: usize,
        tasks: usize,
        state: &mut TaskState,
    ) -> Result<()> {
        let i = state.i;
        state.i += 1;
        let at = match state.period {
            Some(period) if period > 0 => i % period,
            _ => i,
        };
        if let Some(prepared) = usize::try_from(at)
            .ok()
            .and_then(|at| state.prepared.get(at))
        {
            api.send_ok(prepared).await?;
            return Ok(());
        }
        if !state.prepared.is_empty() {
            state.prepared_out += 1;
        }
        // Task t touches nodes t, t + tasks, t + 2·tasks, …: spread, and
        // rarely two tasks on one node at a time.
        let spread = |nodes: usize| (task + tasks * i as usize) % nodes.max(1);
        match self {
            Workload::Describe { mesh, nodes } => {
                let path = format!("{}/{}", nodes_path(mesh), node_name(spread(*nodes)));
                api.call_ok(Method::GET, &path, None).await?;
            }
            Workload::List { mesh, nodes, limit } => {
                let mut path = format!("{}?limit={limit}", nodes_path(mesh));
                if let Some(token) = &state.next_token {
                    path.push_str("&nextToken=");
                    path.push_str(&percent_encode(token));
                }
                let checked = check_page(
                    &api.call_ok(Method::GET, &path, None).await?,
                    state,
                    *nodes,
                    *limit,
                );
                if checked.is_err() {
                    state.next_token = None;
                    state.listed = 0;
                }
                checked?;
            }
            Workload::Create { meshes } => {
                let mesh = &meshes[task % meshes.len().max(1)];
                let name = format!("c-{task:02}-{i:08}");
                api.call_ok(
                    Method::PUT,
                    &nodes_path(mesh),
                    Some(create_body(mesh, &name, i)),
                )
                .await?;
            }
            Workload::Update { mesh, nodes } => {
                let name = node_name(spread(*nodes));
                let path = format!("{}/{name}", nodes_path(mesh));
                api.call_ok(Method::PUT, &path, Some(update_body(mesh, &name, i + 1)))
                    .await?;
            }
        }
        Ok(())
    }
}

/// Checks one ListVirtualNodes page against the pre-created nodes and
/// advances the task's position in the listing.
fn check_page(body: &[u8], state: &mut TaskState, nodes: usize, limit: usize) -> Result<()> {
    let page = match state.i % FULL_SCAN_EVERY {
        0 => scan_page(body, "virtualNodes")?,
        _ => quick_page(body)?,
    };
    let got = page.items;
    let expected = limit.min(nodes - state.listed.min(nodes));
    if got != expected {
        bail!(
            "list page at offset {} has {got} nodes, expected {expected}",
            state.listed
        );
    }
    state.listed += got;
    match page.next_token {
        Some(token) if state.listed < nodes => state.next_token = Some(token),
        Some(_) => bail!(
            "list page ends at {} of {nodes} nodes but has a nextToken",
            state.listed
        ),
        None if state.listed == nodes => {
            state.next_token = None;
            state.listed = 0;
        }
        None => bail!("listing stopped at {} of {nodes} nodes", state.listed),
    }
    Ok(())
}

/// One List page in this many gets the full structural scan of
/// [`scan_page`]; the others are read by [`quick_page`]. Even the scan cost
/// the client 40% of its CPU, on the cores the server it measures runs on.
const FULL_SCAN_EVERY: u64 = 8;

/// Reads a ListVirtualNodes page with substring searches: one
/// `"virtualNodeName":` per reference, and the `nextToken`'s value. Neither
/// can match inside a string (the quotes would be escaped there), and the
/// server writes compact JSON; a page that is not what the full scan would
/// read shows up as a wrong count or a broken listing, never as a pass.
fn quick_page(body: &[u8]) -> Result<PageSummary> {
    use memchr::memmem;
    let trimmed = body.trim_ascii();
    if !(trimmed.starts_with(b"{") && trimmed.ends_with(b"}")) {
        bail!("list page is not a JSON object");
    }
    let items = memmem::find_iter(body, b"\"virtualNodeName\":").count();
    const TOKEN: &[u8] = b"\"nextToken\":\"";
    let next_token = match memmem::find(body, TOKEN) {
        None => None,
        Some(at) => {
            let rest = &body[at + TOKEN.len()..];
            let end =
                memchr::memchr(b'"', rest).context("list page has an unterminated nextToken")?;
            let token = std::str::from_utf8(&rest[..end]).context("nextToken is not UTF-8")?;
            if token.contains('\\') {
                bail!("nextToken {token:?} has escapes");
            }
            Some(token.to_string())
        }
    };
    Ok(PageSummary { items, next_token })
}

/// What a List page holds, as far as the benchmark checks it.
#[derive(Debug, PartialEq, Eq)]
struct PageSummary {
    /// Objects in the list member's array.
    items: usize,
    /// The `nextToken`, if any.
    next_token: Option<String>,
}

/// Reads a List page with a structural scan of its JSON (strings, nesting,
/// the top-level members) instead of building a `serde_json::Value` tree:
/// the tree of 100 references costs the client as much CPU as the server
/// spends answering, and client and server share the machine's cores.
/// Fails on unbalanced nesting, an unterminated string, or anything but
/// whitespace after the top-level object.
fn scan_page(body: &[u8], list_member: &str) -> Result<PageSummary> {
    let mut depth = 0usize;
    let mut expecting_key = false;
    let mut key: &[u8] = b"";
    let mut in_list = false;
    let mut saw_list = false;
    let mut items = 0;
    let mut next_token = None;
    let mut closed = false;
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if closed {
            if !c.is_ascii_whitespace() {
                bail!("list page has data after its JSON object");
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                let start = i + 1;
                i = start;
                loop {
                    match find_quote_or_backslash(body.get(i..).unwrap_or_default()) {
                        None => bail!("list page has an unterminated string"),
                        Some(at) if body[i + at] == b'\\' => i += at + 2,
                        Some(at) => {
                            i += at;
                            break;
                        }
                    }
                }
                let text = &body[start..i];
                if depth == 1 {
                    if expecting_key {
                        key = text;
                        expecting_key = false;
                    } else if key == b"nextToken" {
                        let token = std::str::from_utf8(text).context("nextToken is not UTF-8")?;
                        if token.contains('\\') {
                            bail!("nextToken {token:?} has escapes");
                        }
                        next_token = Some(token.to_string());
                    }
                }
            }
            b'{' | b'[' => {
                if depth == 0 && c != b'{' {
                    bail!("list page is not a JSON object");
                }
                if depth == 2 && in_list && c == b'{' {
                    items += 1;
                }
                if depth == 1 && c == b'[' && key == list_member.as_bytes() {
                    in_list = true;
                    saw_list = true;
                }
                depth += 1;
                if depth == 1 {
                    expecting_key = true;
                }
            }
            b'}' | b']' => {
                depth = depth
                    .checked_sub(1)
                    .context("list page closes more than it opens")?;
                if depth == 1 && c == b']' {
                    in_list = false;
                }
                closed = depth == 0;
            }
            b',' if depth == 1 => expecting_key = true,
            _ => {}
        }
        i += 1;
    }
    if !closed {
        bail!("list page is not a complete JSON object");
    }
    if !saw_list {
        bail!("list page has no {list_member} array");
    }
    Ok(PageSummary { items, next_token })
}

/// The position of the first `"` or `\\` in `s`, eight bytes at a time
/// (most of a page is string contents, skipped here).
fn find_quote_or_backslash(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let quotes = ONES * u64::from(b'"');
    let backslashes = ONES * u64::from(b'\\');
    // A byte of `v` is flagged if it is zero; a false flag can only follow a
    // true one, so the lowest flag is always a real match.
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(chunk);
        let found = zero_bytes(x ^ quotes) | zero_bytes(x ^ backslashes);
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s.get(i..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .map(|p| i + p)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Default)]
struct TaskState {
    i: u64,
    next_token: Option<String>,
    listed: usize,
    /// Requests prepared before the phase, sent instead of building and signing each.
    prepared: Vec<Prepared>,
    /// After how many requests the prepared ones are sent again (Describe's round).
    period: Option<u64>,
    /// Requests built and signed during the phase because the prepared ones ran out.
    prepared_out: u64,
}

#[derive(Default)]
struct TaskStats {
    latencies: Vec<Duration>,
    errors: u64,
    warmup_requests: u64,
    warmup_errors: u64,
    first_error: Option<String>,
    last_done: Option<Instant>,
    prepared_out: u64,
}

/// The measurements of one phase.
pub struct PhaseResult {
    /// The App Mesh operation.
    pub operation: &'static str,
    /// Requests completed in the measured window (after the warm-up).
    pub requests: u64,
    /// Of those, how many failed (transport error, status other than 200,
    /// or a wrong answer).
    pub errors: u64,
    /// Requests and failures during the warm-up, not in the figures.
    pub warmup_requests: u64,
    /// Failures during the warm-up.
    pub warmup_errors: u64,
    /// Wall time from the end of the warm-up to the last completion.
    pub elapsed: Duration,
    /// Latencies of the measured requests, sorted.
    latencies: Vec<Duration>,
    /// The first error seen, as an example.
    pub first_error: Option<String>,
    /// Requests prepared (and signed) before the phase, per task; 0 if none were.
    pub prepared: usize,
    /// Requests built and signed during the phase after the prepared ones ran out.
    pub prepared_out: u64,
}

impl PhaseResult {
    /// Completed requests per second in the measured window.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// The `q`-quantile latency (0 < q ≤ 1), nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let n = self.latencies.len();
        let rank = ((n as f64 * q).ceil() as usize).clamp(1, n);
        self.latencies[rank - 1]
    }
}

/// When requests start: as soon as a task is free (closed loop), or at a
/// fixed rate whatever the latency of earlier requests (open loop).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Each task sends its next request as soon as the previous one is
    /// answered: the server is kept saturated, and latency is what a
    /// request waits behind the `concurrency - 1` others.
    Closed,
    /// Requests are scheduled at this many per second and sent over the
    /// `concurrency` connections; each latency runs from the request's
    /// scheduled time, so a request that waits for a free connection (or
    /// behind a stall) counts that wait: no coordinated omission.
    Rate(f64),
}

/// Runs `workload` from `concurrency` tasks: a `warmup` whose requests are
/// not counted, then `duration` during which tasks keep starting requests,
/// as `pace` says.
///
/// With `prepare` set, each task's first `prepare` requests (Describe's: one round of its
/// nodes) are built and signed before the phase starts, and the phase sends them as they are:
/// the client's per-request cost is then the same whether the server verifies signatures or
/// not (see [`Api::prepare`]).
pub async fn run_phase(
    api: Arc<Api>,
    workload: Workload,
    concurrency: usize,
    pace: Pace,
    warmup: Duration,
    duration: Duration,
    prepare: Option<usize>,
) -> Result<PhaseResult> {
    let workload = Arc::new(workload);
    let mut prepared = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        prepared.push(match prepare {
            Some(count) => workload.prepare(&api, task, concurrency, count)?,
            None => (Vec::new(), None),
        });
    }
    let prepared_count = prepared.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + duration;
    // An open loop's scheduled start times, shared by its tasks.
    let schedule = match pace {
        Pace::Closed => None,
        Pace::Rate(rate) => Some(Arc::new(tokio::sync::Mutex::new(openloop::schedule(
            rate, started, end,
        )))),
    };
    let mut tasks = Vec::with_capacity(concurrency);
    for (task, (prepared, period)) in prepared.into_iter().enumerate() {
        let api = api.clone();
        let workload = workload.clone();
        let schedule = schedule.clone();
        tasks.push(tokio::spawn(async move {
            let mut state = TaskState {
                prepared,
                period,
                ..TaskState::default()
            };
            let mut stats = TaskStats {
                latencies: Vec::with_capacity(1 << 14),
                ..TaskStats::default()
            };
            loop {
                // When this request should have left: now (closed loop) or
                // its scheduled time, which may be past if every
                // connection was busy.
                let sent = match &schedule {
                    None => Instant::now(),
                    Some(s) => match s.lock().await.recv().await {
                        Some(at) => at,
                        None => break,
                    },
                };
                if sent >= end {
                    break;
                }
                let outcome = workload.step(&api, task, concurrency, &mut state).await;
                let done = Instant::now();
                let failed = outcome.is_err();
                if sent >= measure_from {
                    stats.latencies.push(done - sent);
                    stats.last_done = Some(done);
                    stats.errors += u64::from(failed);
                } else {
                    stats.warmup_requests += 1;
                    stats.warmup_errors += u64::from(failed);
                }
                if let Err(e) = outcome {
                    stats.first_error.get_or_insert_with(|| format!("{e:#}"));
                    // Do not spin if the server is gone.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            stats.prepared_out = state.prepared_out;
            stats
        }));
    }
    let mut result = PhaseResult {
        operation: workload.operation(),
        requests: 0,
        errors: 0,
        warmup_requests: 0,
        warmup_errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        first_error: None,
        prepared: prepared_count,
        prepared_out: 0,
    };
    let mut last_done = measure_from;
    for task in tasks {
        let stats = task.await.context("a load task panicked")?;
        result.requests += stats.latencies.len() as u64;
        result.errors += stats.errors;
        result.warmup_requests += stats.warmup_requests;
        result.warmup_errors += stats.warmup_errors;
        result.prepared_out += stats.prepared_out;
        result.latencies.extend(stats.latencies);
        if result.first_error.is_none() {
            result.first_error = stats.first_error;
        }
        if let Some(done) = stats.last_done {
            last_done = last_done.max(done);
        }
    }
    result.latencies.sort_unstable();
    result.elapsed = last_done - measure_from;
    Ok(result)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn request_bodies_are_the_json_the_sdks_would_send() {
        let body: Value = serde_json::from_slice(&create_body("bench", "node-0001", 103)).unwrap();
        assert_eq!(body["virtualNodeName"], "node-0001");
        let spec = &body["spec"];
        assert_eq!(spec["listeners"][0]["portMapping"]["port"], 8083);
        assert_eq!(spec["listeners"][0]["healthCheck"]["intervalMillis"], 5000);
        assert_eq!(
            spec["serviceDiscovery"]["dns"]["hostname"],
            "node-0001.bench.svc.cluster.local"
        );
        assert_eq!(
            spec["backends"][2]["virtualService"]["virtualServiceName"],
            "svc-5.bench.local"
        );
        assert_eq!(spec["logging"]["accessLog"]["file"]["path"], "/dev/stdout");
        let update: Value =
            serde_json::from_slice(&update_body("bench", "node-0001", 104)).unwrap();
        assert_eq!(update["spec"]["listeners"][0]["portMapping"]["port"], 8084);
        // Every request carries its own token.
        assert_ne!(body["clientToken"], update["clientToken"]);
        assert!(body["clientToken"].as_str().unwrap().len() > 16);
        // Within the API's 36 characters however many were sent.
        for _ in 0..5000 {
            client_token();
        }
        let token = client_token();
        assert!(token.len() <= 36, "{token}");
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn the_quick_page_read_agrees_with_the_full_scan() {
        let refs: Vec<Value> = (0..3)
            .map(|i| {
                json!({
                    "arn": format!("arn:aws:appmesh:us-east-1:000000000000:mesh/m/virtualNode/n{i}"),
                    "meshName": "m",
                    "version": 1,
                    // A name that holds the key's text, quotes escaped.
                    "virtualNodeName": format!("n{i}\"virtualNodeName\":"),
                })
            })
            .collect();
        for page in [
            json!({"nextToken": "cmVzL2JlbmNo", "virtualNodes": refs}),
            json!({"virtualNodes": refs}),
            json!({"virtualNodes": []}),
        ] {
            let body = page.to_string();
            assert_eq!(
                quick_page(body.as_bytes()).unwrap(),
                scan_page(body.as_bytes(), "virtualNodes").unwrap(),
                "{body}"
            );
        }
        assert!(quick_page(b"{\"virtualNodes\": [").is_err());
    }

    #[test]
    fn a_page_scan_counts_the_references_and_reads_the_token() {
        let page = json!({
            "nextToken": "cmVzL2JlbmNoL3ZuL25vZGUtMDA5OQ",
            "virtualNodes": [
                {"arn": "a", "meshName": "m", "version": 1, "virtualNodeName": "x{[\"]}"},
                {"arn": "b", "meshName": "m", "version": 2, "virtualNodeName": "y"}
            ]
        });
        let scanned = scan_page(page.to_string().as_bytes(), "virtualNodes").unwrap();
        assert_eq!(
            scanned,
            PageSummary {
                items: 2,
                next_token: Some("cmVzL2JlbmNoL3ZuL25vZGUtMDA5OQ".into())
            }
        );
        let last = json!({"virtualNodes": [{"nested": {"virtualNodes": [{}, {}]}}]});
        let scanned = scan_page(last.to_string().as_bytes(), "virtualNodes").unwrap();
        assert_eq!(
            scanned,
            PageSummary {
                items: 1,
                next_token: None
            }
        );
    }

    #[test]
    fn the_string_skip_finds_the_first_quote_or_backslash() {
        for text in [
            &b""[..],
            b"abc",
            b"\"",
            b"abcdefgh\"",
            b"abcdefghij\\k\"",
            b"\xc3\xa9\xc3\xa9 long enough to span chunks \" x",
            b"0123456789abcdef0123456789abcdef\\",
        ] {
            let expected = text.iter().position(|&b| b == b'"' || b == b'\\');
            assert_eq!(find_quote_or_backslash(text), expected, "{text:?}");
        }
    }

    #[test]
    fn a_malformed_page_fails_the_scan() {
        for bad in [
            &b"{\"virtualNodes\": [{}"[..],
            b"{\"virtualNodes\": [\"open]}",
            b"{\"virtualNodes\": []}}",
            b"{\"virtualNodes\": []} x",
            b"[]",
            b"{\"meshes\": []}",
        ] {
            assert!(
                scan_page(bad, "virtualNodes").is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
