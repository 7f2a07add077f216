//! An open-loop HTTP load generator: requests leave on a fixed schedule
//! whatever the latency of earlier ones, and each latency is measured from
//! the request's *intended* send time, so a stall counts against every
//! request it delays (no coordinated omission).
//!
//! A dedicated thread keeps the schedule with the OS's high-resolution sleep
//! (tokio's timer has 1 ms granularity) and hands each due request to the
//! async runtime, which sends it over pooled keep-alive connections (HTTP/1.1)
//! or one multiplexed connection (HTTP/2 with prior knowledge).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

/// One stream of requests.
#[derive(Clone, Debug)]
pub struct Target {
    /// Label in the report.
    pub label: String,
    /// `address:port` to connect to.
    pub addr: String,
    /// `Host` / `:authority` to send.
    pub host: String,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    pub http2: bool,
}

/// What one target saw.
#[derive(Clone, Debug, Default)]
pub struct TargetResult {
    /// Latencies (from intended send time) of measured successful requests, sorted.
    pub latencies: Vec<Duration>,
    /// Measured requests that failed (error or non-200).
    pub failed: u64,
    /// Measured requests sent.
    pub sent: u64,
    /// The first failures, described.
    pub failures: Vec<String>,
}

struct Shared {
    results: Vec<TargetResult>,
}

/// How requests of one target leave.
#[derive(Clone)]
enum Sender {
    /// Pooled keep-alive HTTP/1.1 connections (a new one when all are busy).
    Http1(Box<Client<HttpConnector, Empty<Bytes>>>),
    /// One HTTP/2 connection (prior knowledge), requests multiplexed.
    Http2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn sender(target: &Target) -> Result<Sender> {
    if !target.http2 {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(connector);
        return Ok(Sender::Http1(Box::new(client)));
    }
    let stream = tokio::net::TcpStream::connect(&target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Sender::Http2(send))
}

/// Starts a thread that yields a send time every `1 / rate` s from `start`
/// until `end`, each when it is due (the OS's high-resolution sleep:
/// tokio's timer has 1 ms granularity, coarser than the 0.1–1 ms between
/// requests).
pub fn schedule(rate: f64, start: Instant, end: Instant) -> mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = mpsc::unbounded_channel();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    std::thread::spawn(move || {
        let mut i: u32 = 0;
        loop {
            let at = start + interval * i;
            if at >= end {
                break;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send(at).is_err() {
                break;
            }
            i = i.saturating_add(1);
        }
    });
    rx
}

/// In which order the targets take the ticks of one round (one tick each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Always the targets' order: target `k`'s schedule is offset by `k /
    /// (rate × targets)`.
    Fixed,
    /// A fresh random order every round, so that no target always follows
    /// the same other one (with three or more targets a fixed order would
    /// give each its own neighbour's load just before it).
    Shuffled,
}

/// Sends `rate` requests per second to each target for `warmup + duration`
/// (the warm-up, rounded to whole rounds of one request per target, is not
/// counted); target `k`'s schedule is offset by `k / (rate × targets)` so
/// the streams interleave evenly. Waits up to 15 s for requests still in
/// flight at the end.
pub async fn run(
    targets: &[Target],
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> Result<Vec<TargetResult>> {
    run_in_order(targets, rate, warmup, duration, Order::Fixed).await
}

/// [`run`], the targets taking the ticks of each round in `order`.
pub async fn run_in_order(
    targets: &[Target],
    rate: f64,
    warmup: Duration,
    duration: Duration,
    order: Order,
) -> Result<Vec<TargetResult>> {
    let mut clients = Vec::new();
    for t in targets {
        clients.push(sender(t).await?);
    }
    let shared = Arc::new(Mutex::new(Shared {
        results: vec![TargetResult::default(); targets.len()],
    }));
    // One schedule at n × rate, dealt to the targets in turn: each gets
    // `rate`, offset from the previous one by 1 / (rate × n).
    let n = targets.len().max(1);
    // Whole rounds, counted in ticks rather than compared as times (a tick
    // interval is rounded to the nanosecond): each target gets exactly as
    // many measured requests as the others.
    let per_second = rate * n as f64;
    let first_measured = ((warmup.as_secs_f64() * per_second).round() as usize).div_ceil(n) * n;
    let total = first_measured + (duration.as_secs_f64() * rate).round() as usize * n;
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + warmup + duration + Duration::from_secs(1);
    let mut ticks = schedule(per_second, start, end);
    let mut inflight = tokio::task::JoinSet::new();
    let mut i = 0;
    let mut round: Vec<usize> = (0..n).collect();
    let mut rng = Rng::seeded();
    while let Some(intended) = ticks.recv().await {
        if i >= total {
            break;
        }
        if i % n == 0 && order == Order::Shuffled {
            rng.shuffle(&mut round);
        }
        let k = round[i % n];
        let measured = i >= first_measured;
        i += 1;
        let client = clients[k].clone();
        let target = targets[k].clone();
        let shared = shared.clone();
        inflight.spawn(async move {
            let outcome = send(&client, &target).await;
            let latency = intended.elapsed();
            if !measured {
                return;
            }
            let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
            let r = &mut s.results[k];
            r.sent += 1;
            match outcome {
                Ok(()) => r.latencies.push(latency),
                Err(e) => {
                    r.failed += 1;
                    if r.failures.len() < 5 {
                        r.failures.push(format!("{e:#}"));
                    }
                }
            }
        });
        // Reap finished tasks so the set stays small.
        while inflight.try_join_next().is_some() {}
    }
    // The schedule's thread stops at its next tick.
    drop(ticks);
    let drain = tokio::time::timeout(Duration::from_secs(15), async {
        while inflight.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        inflight.abort_all();
    }
    let mut results = std::mem::take(
        &mut shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .results,
    );
    for r in &mut results {
        r.latencies.sort();
    }
    Ok(results)
}

/// xorshift64*: enough to shuffle a handful of targets, no dependency.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fisher–Yates.
    fn shuffle(&mut self, items: &mut [usize]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

async fn send(sender: &Sender, target: &Target) -> Result<()> {
    let exchange = async {
        let resp = match sender {
            Sender::Http1(client) => {
                let req = Request::builder()
                    .uri(format!("http://{}/", target.addr))
                    .header(HOST, &target.host)
                    .body(Empty::new())
                    .context("building the request")?;
                client.request(req).await?
            }
            Sender::Http2(send) => {
                // The authority of the URI becomes `:authority`.
                let req = Request::builder()
                    .uri(format!("http://{}/", target.host))
                    .body(Empty::new())
                    .context("building the request")?;
                send.clone().send_request(req).await?
            }
        };
        let status = resp.status();
        resp.into_body().collect().await?;
        anyhow::Ok(status)
    };
    let status = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("timed out after 10 s")??;
    if status != hyper::StatusCode::OK {
        anyhow::bail!("HTTP {status}");
    }
    Ok(())
}
