//! `weft-bench ca`: Weft's certificate authority (issue 19) under load.
//!
//! 1. **Signing bound, in process**: pre-generated ECDSA P-256 CSRs signed by
//!    a [`weft_ca::Authority`] of this process on every core, as the server
//!    signs them (the CSR parsed and its signature checked, the certificate
//!    written and signed), then the same with the renewal checks before it
//!    (the current certificate verified against the CA, the proof by its key
//!    over the new CSR).
//! 2. **Through the release `weft server`'s HTTP API, as agents use it**:
//!    `POST /weft/v1/certificates` with a join token (first issuance) and
//!    with the current certificate and a renewal proof (renewal), each on a
//!    fresh connection as `weft agent` sends it, `--concurrency` requests in
//!    flight. The CSRs, proofs and tokens are all made before the clock
//!    starts.
//! 3. **A rotation wave**: `--wave` simulated agents that all renew within
//!    `--wave-window` seconds (their start times spread evenly over it, open
//!    loop), while a well-behaved API client sends DescribeMesh at a steady
//!    rate: the wave's wall time, each renewal's latency from its scheduled
//!    start, the server's CPU seconds for the wave, and the client's p99
//!    during the wave beside its baseline just before.
//!
//! The goal (issue 19): at least 2,000 CSRs signed per second with ECDSA
//! P-256 on this machine. The wave has no numeric goal; its figures are its
//! cost to the server and to other clients.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use weft_ca::{Authority, ProxyKind, Resource, TrustDomain};

use crate::load::{self, Api, PREFIX};
use crate::machine::{self, quantile, CpuMark};
use crate::server::{self, Server};
use crate::{appmesh, millis, thousands, usage};

/// The mesh whose virtual nodes are the identities.
const MESH: &str = "ca";
/// CSRs signed per second, at least (issue 19).
const GOAL_RATE: f64 = 2_000.0;
/// The longest one CA request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `weft-bench ca`.
#[derive(clap::Args)]
pub struct CaArgs {
    /// CSRs signed in process (each of the two in-process rows).
    #[arg(long, default_value_t = 20_000)]
    pub inprocess: usize,
    /// Threads signing in process (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Virtual nodes, each with its join token: the identities the HTTP
    /// phases cycle over and the agents of the rotation wave.
    #[arg(long, default_value_t = 1000)]
    pub identities: usize,
    /// CSRs sent in each HTTP phase (join, renew); at least --identities.
    #[arg(long, default_value_t = 6000)]
    pub requests: usize,
    /// Requests in flight at once in the HTTP phases (each on a fresh connection).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Agents in the rotation wave (at most --identities).
    #[arg(long, default_value_t = 1000)]
    pub wave: usize,
    /// Seconds over which the wave's renewals start, evenly spread.
    #[arg(long, default_value_t = 1.0)]
    pub wave_window: f64,
    /// DescribeMesh requests per second of the well-behaved client (open loop).
    #[arg(long, default_value_t = 200.0)]
    pub client_rate: f64,
    /// Seconds of the client's baseline before the wave (the first half
    /// second is a warm-up, not counted).
    #[arg(long, default_value_t = 3.0)]
    pub baseline: f64,
    /// The `weft` binary (default: the one next to this executable).
    #[arg(long, env = "WEFT_BENCH_WEFT_BIN")]
    pub weft_bin: Option<PathBuf>,
    /// Parent folder of the server's fresh data folder (default: the system temp folder).
    #[arg(long)]
    pub data_parent: Option<PathBuf>,
}

/// A key and its CSR, made before any clock starts.
struct Csr {
    key: rcgen::KeyPair,
    pem: String,
    der: Vec<u8>,
}

/// A fresh P-256 key and a CSR for it, as `weft agent` makes them: a plain
/// common name, no SANs (the CA sets every name).
fn new_csr(common_name: &str) -> Result<Csr> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let csr = params.serialize_request(&key)?;
    Ok(Csr {
        pem: csr.pem()?,
        der: csr.der().to_vec(),
        key,
    })
}

/// `n` CSRs for the identities `name(i % identities)`, made on every core.
fn make_csrs(n: usize, identities: usize, threads: usize) -> Result<Vec<Csr>> {
    let chunks: Vec<Result<Vec<Csr>>> = std::thread::scope(|s| {
        let per = n.div_ceil(threads.max(1));
        let handles: Vec<_> = (0..threads.max(1))
            .map(|t| {
                s.spawn(move || {
                    (t * per..((t + 1) * per).min(n))
                        .map(|i| new_csr(&load::node_name(i % identities.max(1))))
                        .collect::<Result<Vec<Csr>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a CSR thread panicked")))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for chunk in chunks {
        out.extend(chunk?);
    }
    Ok(out)
}

/// A renewal as an agent sends it: the new CSR, the current certificate,
/// the proof by the current key (base64).
struct Renewal {
    identity: usize,
    csr_pem: String,
    certificate: String,
    proof: String,
}

/// A proof by `current` over `csr`'s DER, as the agent signs it.
fn proof(current: &rcgen::KeyPair, csr: &Csr) -> Result<String> {
    let signature = weft_ca::renewal::sign(current, &csr.der)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(signature))
}

/// Latencies (sorted) and failures of one measured phase.
struct Phase {
    name: &'static str,
    latencies: Vec<Duration>,
    failed: usize,
    first_error: Option<String>,
    wall: Duration,
    cpu: [String; 4],
}

impl Phase {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Signs every CSR on `threads` threads; `renewals` adds the renewal checks.
fn sign_in_process(
    authority: &Authority,
    csrs: &[Csr],
    renewals: Option<&[(String, String)]>,
    identities: usize,
    threads: usize,
) -> Result<(Vec<Duration>, Duration)> {
    let now = SystemTime::now();
    let lifetime = Duration::from_secs(24 * 3600);
    let resources: Vec<(Resource, Vec<String>)> = (0..identities.max(1))
        .map(|i| {
            let name = load::node_name(i);
            let dns = vec![format!("{name}.{MESH}.svc.cluster.local")];
            Resource::new(MESH, ProxyKind::VirtualNode, &name).map(|r| (r, dns))
        })
        .collect::<Result<_, _>>()?;
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let results: Vec<Result<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<Vec<Duration>> {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(csr) = csrs.get(i) else {
                            return Ok(lat);
                        };
                        let t0 = Instant::now();
                        let resource = match renewals {
                            // What CaService::renew checks before it signs.
                            Some(r) => {
                                let (current, proof) = &r[i];
                                let holder = authority.verify_issued(current, now)?;
                                let proof = base64::engine::general_purpose::STANDARD
                                    .decode(proof)
                                    .context("a proof in base64")?;
                                let parsed = weft_ca::csr::parse(&csr.pem)?;
                                weft_ca::renewal::verify(
                                    &holder.public_key_der,
                                    &parsed.der,
                                    &proof,
                                )?;
                                let (_, dns) = &resources[i % resources.len()];
                                authority.issue(&parsed, &holder.resource, dns, now, lifetime)?;
                                lat.push(t0.elapsed());
                                continue;
                            }
                            None => &resources[i % resources.len()],
                        };
                        let parsed = weft_ca::csr::parse(&csr.pem)?;
                        authority.issue(&parsed, &resource.0, &resource.1, now, lifetime)?;
                        lat.push(t0.elapsed());
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a signing thread panicked")))
            })
            .collect()
    });
    let wall = started.elapsed();
    let mut all = Vec::with_capacity(csrs.len());
    for r in results {
        all.extend(r?);
    }
    all.sort();
    Ok((all, wall))
}

/// `POST path` with a JSON body on a fresh connection to `addr`
/// (`host:port`), as `weft agent` calls the CA; the status and body.
async fn post_fresh(
    addr: &str,
    path: &str,
    bearer: Option<&str>,
    body: Bytes,
) -> Result<(StatusCode, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(HOST, addr)
        .header(CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = sender.send_request(request.body(Full::new(body))?).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// One certificate request: the token's or the renewal's body.
enum CertRequest {
    Join { token: String, csr_pem: String },
    Renew(Renewal),
}

impl CertRequest {
    fn identity_body(&self) -> (Option<&str>, Bytes) {
        match self {
            CertRequest::Join { token, csr_pem } => (
                Some(token.as_str()),
                Bytes::from(json!({ "csr": csr_pem }).to_string()),
            ),
            CertRequest::Renew(r) => (
                None,
                Bytes::from(
                    json!({ "csr": r.csr_pem, "certificate": r.certificate, "proof": r.proof })
                        .to_string(),
                ),
            ),
        }
    }
}

/// Sends one certificate request; its latency (from `since`) and the
/// certificate issued, or what went wrong.
async fn certify(
    addr: &str,
    request: &CertRequest,
    since: Instant,
) -> Result<(Duration, String), String> {
    let (bearer, body) = request.identity_body();
    let path = weft_ca::http::CERTIFICATES;
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, post_fresh(addr, path, bearer, body)).await;
    let latency = since.elapsed();
    match answer {
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Ok(Ok((status, body))) if status != StatusCode::OK => Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        )),
        Ok(Ok((_, body))) => {
            let answer: weft_ca::http::CertificateJson =
                serde_json::from_slice(&body).map_err(|e| format!("the answer: {e}"))?;
            Ok((latency, answer.certificate))
        }
    }
}

/// Sends every request with `concurrency` in flight (closed loop); the
/// certificates issued, by request.
async fn http_phase(
    name: &'static str,
    addr: &str,
    pid: u32,
    requests: Vec<CertRequest>,
    concurrency: usize,
) -> Result<(Phase, Vec<Option<String>>)> {
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let before = CpuMark::now(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (requests, next, addr) = (requests.clone(), next.clone(), addr.to_string());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = requests.get(i) else {
                    return out;
                };
                out.push((i, certify(&addr, request, Instant::now()).await));
            }
        }));
    }
    let mut certificates = vec![None; requests.len()];
    let (mut latencies, mut failed, mut first_error) = (Vec::new(), 0, None);
    for task in tasks {
        for (i, outcome) in task.await.context("a request task panicked")? {
            match outcome {
                Ok((latency, certificate)) => {
                    latencies.push(latency);
                    certificates[i] = Some(certificate);
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let wall = started.elapsed();
    let cpu = usage(&before, &CpuMark::now(pid));
    latencies.sort();
    Ok((
        Phase {
            name,
            latencies,
            failed,
            first_error,
            wall,
            cpu,
        },
        certificates,
    ))
}

/// Creates a join token for each identity (one hour), `concurrency` at a time.
async fn join_tokens(api: &Arc<Api>, identities: usize, concurrency: usize) -> Result<Vec<String>> {
    let mut tokens = vec![String::new(); identities];
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (api, next) = (api.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= identities {
                    return anyhow::Ok(out);
                }
                let body = json!({
                    "resource": format!("mesh/{MESH}/virtualNode/{}", load::node_name(i)),
                    "ttlSeconds": 3600,
                });
                let (status, bytes) = api
                    .call(
                        Method::POST,
                        weft_ca::http::JOIN_TOKENS,
                        Some(Bytes::from(body.to_string())),
                    )
                    .await?;
                if status != StatusCode::CREATED {
                    bail!(
                        "creating a join token: HTTP {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
                let token: weft_ca::http::TokenJson = serde_json::from_slice(&bytes)?;
                out.push((i, token.token.context("no token in the answer")?));
            }
        }));
    }
    for task in tasks {
        for (i, token) in task.await.context("a token task panicked")?? {
            tokens[i] = token;
        }
    }
    Ok(tokens)
}

/// What the well-behaved client saw: each request's scheduled time and
/// its latency (`None`: failed).
type Samples = Vec<(Instant, Option<Duration>)>;

/// DescribeMesh at `rate` per second from `start` (open loop, latency from
/// each scheduled time) until `stop` is set.
async fn steady_client(
    api: Arc<Api>,
    rate: f64,
    start: Instant,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Samples {
    // An hour at most: the wave ends long before.
    let mut ticks = crate::openloop::schedule(rate, start, start + Duration::from_secs(3600));
    let path = format!("{PREFIX}/meshes/{MESH}");
    let mut tasks = Vec::new();
    while let Some(at) = ticks.recv().await {
        if *stop.borrow() {
            break;
        }
        let (api, path) = (api.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let ok = matches!(
                tokio::time::timeout(REQUEST_TIMEOUT, api.call(Method::GET, &path, None)).await,
                Ok(Ok((StatusCode::OK, _)))
            );
            (at, ok.then(|| at.elapsed()))
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(s) = t.await {
            samples.push(s);
        }
    }
    samples
}

/// Sorted latencies of the samples scheduled in `[from, to)`, and how many failed.
fn window(samples: &Samples, from: Instant, to: Instant) -> (Vec<Duration>, usize) {
    let mut lat = Vec::new();
    let mut failed = 0;
    for (at, l) in samples {
        if *at >= from && *at < to {
            match l {
                Some(l) => lat.push(*l),
                None => failed += 1,
            }
        }
    }
    lat.sort();
    (lat, failed)
}

fn verdict(rate: f64, failed: usize) -> String {
    let mut missed = Vec::new();
    if rate < GOAL_RATE {
        missed.push("rate");
    }
    if failed > 0 {
        missed.push("errors");
    }
    match missed.is_empty() {
        true => "met".into(),
        false => format!("MISSED ({})", missed.join(", ")),
    }
}

fn row(cells: [&str; 10]) -> String {
    let [phase, csrs, rate, p50, p99, failed, srv, cli, steal, oth] = cells;
    format!(
        "{phase:<22} {csrs:>7} {rate:>8} {p50:>7} {p99:>7} {failed:>6} {srv:>7} {cli:>7} {steal:>6} {oth:>7}"
    )
}

/// Runs `weft-bench ca` and prints its tables.
pub async fn run(args: CaArgs) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = args.threads.unwrap_or(cores).max(1);
    if args.identities == 0 || args.requests < args.identities {
        bail!("--identities must be at least 1 and --requests at least --identities");
    }
    if args.wave == 0 || args.wave > args.identities {
        bail!("--wave must be between 1 and --identities");
    }
    if !(args.wave_window > 0.0 && args.client_rate > 0.0 && args.baseline > 0.5) {
        bail!("--wave-window and --client-rate must be positive, --baseline over 0.5 s");
    }
    let binary = server::weft_binary(&args.weft_bin)?;

    println!("weft-bench ca: Weft's certificate authority, ECDSA P-256 CSRs");
    println!("date:       {}", machine::utc_now());
    println!("machine:    {}", machine::describe());
    if let Some(load) = machine::load_average() {
        println!("load avg:   {load:.2} (1 min, before the run; other work on the machine skews the figures)");
    }

    // 1. The signing bound, in process.
    let made = Instant::now();
    let csrs = make_csrs(args.inprocess, args.identities, threads)?;
    let (authority, _) = Authority::generate_root(&TrustDomain::default(), SystemTime::now())?;
    // The renewal row: a current certificate per CSR, and a proof by its key.
    let mut renewals = Vec::with_capacity(csrs.len());
    let currents = make_csrs(
        args.identities.min(args.inprocess),
        args.identities,
        threads,
    )?;
    for (i, csr) in csrs.iter().enumerate() {
        let current = &currents[i % currents.len()];
        let name = load::node_name(i % args.identities);
        let resource = Resource::new(MESH, ProxyKind::VirtualNode, &name)?;
        let issued = authority.issue(
            &weft_ca::csr::parse(&current.pem)?,
            &resource,
            &[],
            SystemTime::now(),
            Duration::from_secs(24 * 3600),
        )?;
        renewals.push((issued.certificate_pem, proof(&current.key, csr)?));
    }
    println!(
        "prepared:   {} CSRs (P-256 keys) and {} renewal proofs in {:.1} s, not timed",
        thousands(csrs.len() as f64),
        thousands(renewals.len() as f64),
        made.elapsed().as_secs_f64()
    );
    println!();
    println!("in process: weft_ca::Authority on {threads} threads (no store, no HTTP): the signing bound");
    println!(
        "{:<22} {:>7} {:>8} {:>7} {:>7}  {:<16} verdict",
        "operation", "CSRs", "CSRs/s", "p50 ms", "p99 ms", "goal"
    );
    for (label, r) in [
        ("sign (parse + issue)", None),
        ("renew checks + sign", Some(renewals.as_slice())),
    ] {
        // No server here: the "server" column of the marks is this process too.
        let before = CpuMark::now(std::process::id());
        let (lat, wall) = sign_in_process(&authority, &csrs, r, args.identities, threads)?;
        let after = CpuMark::now(std::process::id());
        let steal = before.steal_percent(&after);
        let other = match (before.machine, after.machine, before.client, after.client) {
            (Some(m0), Some(m1), Some(c0), Some(c1)) => {
                let busy = m1.saturating_sub(m0).as_secs_f64();
                let own = c1.saturating_sub(c0).as_secs_f64();
                let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
                100.0 * (busy - own).max(0.0) / wall - steal
            }
            _ => f64::NAN,
        };
        let rate = lat.len() as f64 / wall.as_secs_f64().max(1e-9);
        println!(
            "{:<22} {:>7} {:>8.0} {:>7} {:>7}  {:<16} {}   (steal {:.0}%, other work {:.0}% of a core)",
            label,
            lat.len(),
            rate,
            millis(quantile(&lat, 0.5)),
            millis(quantile(&lat, 0.99)),
            ">= 2,000/s",
            verdict(rate, 0),
            steal,
            other.max(0.0)
        );
    }
    drop((csrs, renewals, currents));
    println!();

    // 2. Through the release server's HTTP API.
    let data = match &args.data_parent {
        Some(parent) => tempfile::Builder::new()
            .prefix("weft-bench-ca-")
            .tempdir_in(parent),
        None => tempfile::Builder::new().prefix("weft-bench-ca-").tempdir(),
    }
    .context("creating a temporary data folder")?;
    let mut server = Server::start(&binary, &data.path().join("data"), &appmesh::big_quotas())?;
    let pid = server.pid();
    let addr = server.url.trim_start_matches("http://").to_string();
    let api = Arc::new(Api::new(&server.url, 16));
    let setup = Instant::now();
    load::create_mesh(&api, MESH).await?;
    load::create_nodes(api.clone(), MESH, args.identities, 8).await?;
    let tokens = join_tokens(&api, args.identities, 8).await?;
    let setup = setup.elapsed();
    let made = Instant::now();
    let join_csrs = make_csrs(args.requests, args.identities, threads)?;
    let renew_csrs = make_csrs(args.requests, args.identities, threads)?;
    let wave_csrs = make_csrs(args.wave, args.identities, threads)?;
    let made = made.elapsed();
    println!(
        "server:     {} (pid {pid}), the CA's root generated on its first start",
        binary.display()
    );
    println!(
        "setup:      mesh {MESH:?} with {} virtual nodes and a join token each in {:.1} s; {} + {} + {} \
         CSRs (P-256) and the renewal proofs made in {:.1} s, not timed",
        args.identities,
        setup.as_secs_f64(),
        args.requests,
        args.requests,
        args.wave,
        made.as_secs_f64()
    );
    println!(
        "load:       POST {} as `weft agent` sends it, each request on a fresh connection, {} in \
         flight (closed loop), cycling over the {} identities",
        weft_ca::http::CERTIFICATES,
        args.concurrency,
        args.identities
    );
    println!();

    let joins: Vec<CertRequest> = join_csrs
        .iter()
        .enumerate()
        .map(|(i, csr)| CertRequest::Join {
            token: tokens[i % args.identities].clone(),
            csr_pem: csr.pem.clone(),
        })
        .collect();
    let (join, certificates) =
        http_phase("join (token + CSR)", &addr, pid, joins, args.concurrency).await?;
    server.check_alive()?;
    // Each identity renews from the certificate of its first join.
    let mut current: Vec<(String, &rcgen::KeyPair)> = Vec::with_capacity(args.identities);
    for i in 0..args.identities {
        let certificate = certificates[i]
            .clone()
            .with_context(|| format!("identity {i} got no certificate in the join phase"))?;
        current.push((certificate, &join_csrs[i].key));
    }
    let renewal = |i: usize, csr: &Csr| -> Result<Renewal> {
        let identity = i % args.identities;
        let (certificate, key) = &current[identity];
        Ok(Renewal {
            identity,
            csr_pem: csr.pem.clone(),
            certificate: certificate.clone(),
            proof: proof(key, csr)?,
        })
    };
    let renews = renew_csrs
        .iter()
        .enumerate()
        .map(|(i, csr)| renewal(i, csr).map(CertRequest::Renew))
        .collect::<Result<Vec<_>>>()?;
    let (renew, _) =
        http_phase("renew (cert + proof)", &addr, pid, renews, args.concurrency).await?;
    server.check_alive()?;
    println!(
        "{}  {:<16} verdict",
        row([
            "operation",
            "CSRs",
            "CSRs/s",
            "p50 ms",
            "p99 ms",
            "failed",
            "srv CPU",
            "cli CPU",
            "steal",
            "oth CPU"
        ]),
        "goal"
    );
    for p in [&join, &renew] {
        println!(
            "{}  {:<16} {}",
            row([
                p.name,
                &p.latencies.len().to_string(),
                &format!("{:.0}", p.rate()),
                &millis(quantile(&p.latencies, 0.5)),
                &millis(quantile(&p.latencies, 0.99)),
                &p.failed.to_string(),
                &p.cpu[0],
                &p.cpu[1],
                &p.cpu[2],
                &p.cpu[3],
            ]),
            ">= 2,000/s",
            verdict(p.rate(), p.failed)
        );
        if let Some(e) = &p.first_error {
            println!("  first error: {e}");
        }
    }
    println!(
        "CPU columns: CPU time of the server, of this benchmark (client), taken by the hypervisor \
         (steal) and of everything else, over the phase, in % of one core; {cores} cores in all."
    );
    println!();

    // 3. The rotation wave.
    let wave: Vec<Renewal> = wave_csrs
        .iter()
        .enumerate()
        .map(|(i, csr)| renewal(i, csr))
        .collect::<Result<_>>()?;
    let client_api = Arc::new(Api::new(&server.url, 16));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let client_start = Instant::now() + Duration::from_millis(50);
    let client = tokio::spawn(steady_client(
        client_api,
        args.client_rate,
        client_start,
        stop_rx,
    ));
    let wave_start = client_start + Duration::from_secs_f64(args.baseline);
    let spacing = Duration::from_secs_f64(args.wave_window / args.wave as f64);
    tokio::time::sleep_until(tokio::time::Instant::from_std(wave_start)).await;
    let before = CpuMark::now(pid);
    let mut tasks = Vec::with_capacity(wave.len());
    for (k, r) in wave.into_iter().enumerate() {
        let at = wave_start + spacing * k as u32;
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            let identity = r.identity;
            let outcome = certify(&addr, &CertRequest::Renew(r), at).await;
            (identity, outcome, Instant::now())
        }));
    }
    let (mut lat, mut failed, mut first_error, mut last) = (Vec::new(), 0, None, wave_start);
    let mut renewed = std::collections::BTreeSet::new();
    for task in tasks {
        let (identity, outcome, done) = task.await.context("a wave task panicked")?;
        last = last.max(done);
        match outcome {
            Ok((l, _)) => {
                lat.push(l);
                renewed.insert(identity);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let after = CpuMark::now(pid);
    let _ = stop_tx.send(true);
    let samples = client.await.context("the client task panicked")?;
    server.check_alive()?;
    lat.sort();
    let wall = last.duration_since(wave_start);
    let server_cpu = match (before.process, after.process) {
        (Some(a), Some(b)) => format!("{:.2} s", b.saturating_sub(a).as_secs_f64()),
        _ => "?".into(),
    };
    let steal = before.steal_percent(&after);
    let (base, base_failed) = window(
        &samples,
        client_start + Duration::from_millis(500),
        wave_start,
    );
    let (during, during_failed) = window(&samples, wave_start, last);
    println!(
        "rotation wave: {} agents renew (current certificate + proof, fresh connection each), their \
         starts spread evenly over {:.1} s (open loop, latency from each scheduled start); a \
         well-behaved client sends DescribeMesh at {} req/s (keep-alive, open loop) throughout: \
         {:.1} s baseline before the wave (first 0.5 s not counted), then during it",
        args.wave, args.wave_window, args.client_rate, args.baseline
    );
    println!(
        "wave:       {} renewed ({} identities), {} failed; wall {:.3} s (first scheduled start to \
         last answer); renewal p50 {} ms, p99 {} ms, max {} ms; server CPU {} for the wave; steal \
         {:.0}% of a core",
        lat.len(),
        renewed.len(),
        failed,
        wall.as_secs_f64(),
        millis(quantile(&lat, 0.5)),
        millis(quantile(&lat, 0.99)),
        millis(quantile(&lat, 1.0)),
        server_cpu,
        steal
    );
    if let Some(e) = &first_error {
        println!("  first error: {e}");
    }
    println!(
        "client:     DescribeMesh p50 {} ms, p99 {} ms over {} requests ({} failed) before the \
         wave; p50 {} ms, p99 {} ms over {} requests ({} failed) during it: p99 x{:.2} the baseline",
        millis(quantile(&base, 0.5)),
        millis(quantile(&base, 0.99)),
        base.len(),
        base_failed,
        millis(quantile(&during, 0.5)),
        millis(quantile(&during, 0.99)),
        during.len(),
        during_failed,
        quantile(&during, 0.99).as_secs_f64() / quantile(&base, 0.99).as_secs_f64().max(1e-9)
    );
    println!(
        "goal:       >= 2,000 CSRs signed per second with ECDSA P-256 (issue 19); the wave has no \
         numeric goal (its cost: wall time, server CPU, the client's p99 beside its baseline)"
    );
    drop(server);
    Ok(())
}
