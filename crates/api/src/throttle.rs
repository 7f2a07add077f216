//! Fair admission of requests, client by client, as AWS APIs throttle: each
//! client has its own token bucket (the rate limit, if one is set) and its
//! own count of requests in flight. A request past either is answered at
//! once with the protocol's throttling error (App Mesh's
//! `TooManyRequestsException`, Cloud Map's `RequestLimitExceeded`, both
//! HTTP 429), which the SDKs and the CLI back off from and retry. One client
//! flooding the API therefore waits on its own limits, not everyone's.
//!
//! A client is the access key id of the request's SigV4 `Authorization`
//! header; unsigned requests are told apart by the peer's IP address when
//! the server records it (`ConnectInfo`), and are otherwise one anonymous
//! client. Behind `weft server`'s authentication layer, a request only gets
//! here once its signature is verified, so the key id is the verified key's;
//! with `--insecure-no-auth` it is the client's claim, which keeps careless
//! clients from starving others but does not stop one that invents a key per
//! request. The table of clients is bounded: a
//! client whose state is back to a fresh one (nothing in flight, a full
//! bucket) is forgotten, and past [`MAX_CLIENTS`] the clients that do not fit
//! share one entry.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::config::RateLimit;

/// Clients tracked at once; past it, new clients share one entry.
pub const MAX_CLIENTS: usize = 10_000;

/// The key of the entry shared by the clients that do not fit the table.
const OVERFLOW: &str = "(overflow)";

/// How often a full table is searched for clients to forget.
const EVICTION_PERIOD: Duration = Duration::from_millis(100);

/// Who sent a request, for per-client limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(String);

impl ClientId {
    /// The client of a request with these headers, arriving from `peer`.
    pub fn of(headers: &HeaderMap, peer: Option<SocketAddr>) -> ClientId {
        if let Some(key) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(weft_listen::access_key_id)
        {
            return ClientId(format!("key:{key}"));
        }
        match peer.map(|p| p.ip()) {
            Some(ip) => ClientId(format!("ip:{}", canonical(ip))),
            None => ClientId("anonymous".into()),
        }
    }

    /// The client's name, as logs and errors show it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IPv4 peer reached over an IPv6 socket counts as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client's token bucket is empty.
    RateExceeded,
    /// The client already has `limit` requests in flight.
    TooManyInFlight {
        /// The per-client limit in force.
        limit: usize,
    },
}

impl Refusal {
    /// What the throttling error's message says.
    pub fn message(&self) -> String {
        match self {
            Refusal::RateExceeded => "Rate exceeded".into(),
            Refusal::TooManyInFlight { limit } => format!(
                "Too many requests in flight from this client (at most {limit}); retry later"
            ),
        }
    }
}

/// The limits applied to every client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Each client's request rate; `None`: no rate limit.
    pub rate: Option<RateLimit>,
    /// Requests one client may have in flight at once; 0: no limit.
    pub max_in_flight: usize,
}

/// A token bucket refilled at `per_second`, holding at most `burst` tokens.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(f64::from(limit.burst));
        self.at = self.at.max(now);
    }

    /// Takes a token; `false`: none left.
    fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, limit: RateLimit, now: Instant) -> bool {
        let mut b = *self;
        b.refill(limit, now);
        b.tokens >= f64::from(limit.burst)
    }
}

/// One client's state.
#[derive(Debug)]
struct Client {
    bucket: Option<Bucket>,
    in_flight: usize,
}

impl Client {
    /// Whether forgetting the client changes nothing: a new entry would
    /// start from the same state.
    fn is_fresh(&self, limits: &Limits, now: Instant) -> bool {
        self.in_flight == 0
            && match (self.bucket, limits.rate) {
                (Some(b), Some(rate)) => b.is_full(rate, now),
                _ => true,
            }
    }
}

#[derive(Debug)]
struct Table {
    clients: HashMap<Arc<str>, Client>,
    last_eviction: Option<Instant>,
}

/// Per-client admission. Cheap to share: clone the `Arc`.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    table: Mutex<Table>,
}

/// A request admitted: counts as in flight until dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Option<Arc<Admission>>,
    client: Arc<str>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            admission.release(&self.client);
        }
    }
}

impl Admission {
    /// Admission under `limits`.
    pub fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            table: Mutex::new(Table {
                clients: HashMap::new(),
                last_eviction: None,
            }),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every step leaves the table valid, so a poisoned lock is usable.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits one request of `client` arriving now, or says why not.
    pub fn admit(self: &Arc<Self>, client: &ClientId) -> Result<Permit, Refusal> {
        self.admit_at(client, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, client: &ClientId, now: Instant) -> Result<Permit, Refusal> {
        if self.limits.rate.is_none() && self.limits.max_in_flight == 0 {
            return Ok(Permit {
                admission: None,
                client: Arc::from(""),
            });
        }
        let mut table = self.lock();
        let key = self.slot(&mut table, client.as_str(), now);
        let entry = table.clients.entry(key.clone()).or_insert_with(|| Client {
            bucket: self.limits.rate.map(|r| Bucket::full(r, now)),
            in_flight: 0,
        });
        let limit = self.limits.max_in_flight;
        if limit > 0 && entry.in_flight >= limit {
            return Err(Refusal::TooManyInFlight { limit });
        }
        if let (Some(bucket), Some(rate)) = (entry.bucket.as_mut(), self.limits.rate) {
            if !bucket.take(rate, now) {
                return Err(Refusal::RateExceeded);
            }
        }
        entry.in_flight += 1;
        Ok(Permit {
            admission: Some(self.clone()),
            client: key,
        })
    }

    /// The table key `client` counts under: its own, or the shared
    /// overflow entry when the table is full of clients still active.
    fn slot(&self, table: &mut Table, client: &str, now: Instant) -> Arc<str> {
        if let Some((key, _)) = table.clients.get_key_value(client) {
            return key.clone();
        }
        if table.clients.len() >= MAX_CLIENTS {
            // A scan costs the whole table: at most one per period.
            let due = table
                .last_eviction
                .is_none_or(|at| now.saturating_duration_since(at) >= EVICTION_PERIOD);
            if due {
                table.last_eviction = Some(now);
                let limits = self.limits;
                table
                    .clients
                    .retain(|key, c| &**key == OVERFLOW || !c.is_fresh(&limits, now));
            }
            if table.clients.len() >= MAX_CLIENTS {
                return Arc::from(OVERFLOW);
            }
        }
        Arc::from(client)
    }

    fn release(&self, client: &str) {
        let now = Instant::now();
        let mut table = self.lock();
        let Some(entry) = table.clients.get_mut(client) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        // Without a rate limit, an idle client's entry holds nothing.
        if self.limits.rate.is_none() && entry.is_fresh(&self.limits, now) {
            table.clients.remove(client);
        }
    }

    /// Clients currently tracked.
    pub fn tracked_clients(&self) -> usize {
        self.lock().clients.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn signed(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let value = format!(
            "AWS4-HMAC-SHA256 Credential={key}/20250101/us-east-1/appmesh/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=abc"
        );
        h.insert("authorization", value.parse().unwrap());
        h
    }

    fn client(key: &str) -> ClientId {
        ClientId::of(&signed(key), None)
    }

    #[test]
    fn the_client_is_the_access_key_id_else_the_peer_else_anonymous() {
        let peer: SocketAddr = "10.0.0.7:5555".parse().unwrap();
        assert_eq!(
            ClientId::of(&signed("AKIDEXAMPLE"), Some(peer)).as_str(),
            "key:AKIDEXAMPLE"
        );
        assert_eq!(
            ClientId::of(&HeaderMap::new(), Some(peer)).as_str(),
            "ip:10.0.0.7"
        );
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:1".parse().unwrap();
        assert_eq!(
            ClientId::of(&HeaderMap::new(), Some(mapped)).as_str(),
            "ip:10.0.0.7"
        );
        assert_eq!(ClientId::of(&HeaderMap::new(), None).as_str(), "anonymous");
        let long = "K".repeat(1000);
        assert_eq!(client(&long).as_str().len(), "key:".len() + 128);
    }

    #[test]
    fn a_burst_is_admitted_then_requests_pass_at_the_sustained_rate() {
        let a = Admission::new(Limits {
            rate: Some(RateLimit {
                per_second: 10.0,
                burst: 3,
            }),
            max_in_flight: 0,
        });
        let c = client("A");
        let start = Instant::now();
        let admitted = (0..5).filter(|_| a.admit_at(&c, start).is_ok()).count();
        assert_eq!(admitted, 3, "the burst, then nothing");
        // 10/s: one token every 100 ms.
        assert!(a.admit_at(&c, start + Duration::from_millis(50)).is_err());
        assert!(a.admit_at(&c, start + Duration::from_millis(110)).is_ok());
        assert!(a.admit_at(&c, start + Duration::from_millis(120)).is_err());
        // A long quiet spell refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| a.admit_at(&c, later).is_ok()).count(), 3);
    }

    #[test]
    fn one_client_out_of_tokens_does_not_throttle_another() {
        let a = Admission::new(Limits {
            rate: Some(RateLimit {
                per_second: 1.0,
                burst: 2,
            }),
            max_in_flight: 0,
        });
        let now = Instant::now();
        let greedy = client("GREEDY");
        let polite = client("POLITE");
        let greedy_admitted = (0..50).filter(|_| a.admit_at(&greedy, now).is_ok()).count();
        assert_eq!(greedy_admitted, 2);
        assert_eq!(a.admit_at(&greedy, now).err(), Some(Refusal::RateExceeded));
        assert!(a.admit_at(&polite, now).is_ok());
        assert!(a.admit_at(&polite, now).is_ok());
    }

    #[test]
    fn a_client_past_its_requests_in_flight_is_refused_until_one_ends() {
        let a = Admission::new(Limits {
            rate: None,
            max_in_flight: 2,
        });
        let greedy = client("GREEDY");
        let first = a.admit(&greedy).unwrap();
        let _second = a.admit(&greedy).unwrap();
        assert_eq!(
            a.admit(&greedy).err(),
            Some(Refusal::TooManyInFlight { limit: 2 })
        );
        // Another client is not affected.
        let _other = a.admit(&client("POLITE")).unwrap();
        drop(first);
        assert!(a.admit(&greedy).is_ok());
    }

    #[test]
    fn idle_clients_are_forgotten_and_the_table_stays_bounded() {
        let a = Admission::new(Limits {
            rate: None,
            max_in_flight: 4,
        });
        for i in 0..(MAX_CLIENTS * 2) {
            drop(a.admit(&client(&format!("K{i}"))).unwrap());
        }
        assert_eq!(a.tracked_clients(), 0, "no limit state left behind");

        let rated = Admission::new(Limits {
            rate: Some(RateLimit {
                per_second: 1000.0,
                burst: 100,
            }),
            max_in_flight: 100,
        });
        let start = Instant::now();
        let mut held = Vec::new();
        for i in 0..(MAX_CLIENTS + 10) {
            held.push(rated.admit_at(&client(&format!("K{i}")), start).unwrap());
        }
        assert!(rated.tracked_clients() <= MAX_CLIENTS + 1);
        drop(held);
        // Once their buckets refill, the old clients make room for new ones.
        let later = start + Duration::from_secs(10);
        let newcomer = rated.admit_at(&client("NEW"), later).unwrap();
        assert_eq!(&*newcomer.client, "key:NEW");
        assert!(rated.tracked_clients() <= 2);
    }
}
