//! Weft's etcd backend: the [`Store`] trait over an etcd v3 cluster, so that
//! several `weft server` replicas can share one store.
//!
//! The trait was modelled on etcd's data model, so the mapping is direct
//! (<https://etcd.io/docs/v3.4/learning/data_model/>, <https://etcd.io/docs/v3.4/learning/api/>):
//! - a [`Revision`] is etcd's cluster revision, and a key's create and mod
//!   revisions and version are etcd's own;
//! - a transaction is decided at once against etcd's state overlaid with the
//!   writes this replica decided but etcd has not yet applied, and goes out
//!   with the others decided meanwhile as one etcd `Txn` whose compares are
//!   theirs and whose success branch is their ops (the `pipeline` module): it is
//!   durable once etcd answers, because etcd answers after the Raft commit;
//! - reads are etcd's default (linearizable) reads; the `_latest` reads add
//!   the writes decided and not yet applied;
//! - [`Store::read_ahead`] (what a write decides from) reads this replica's
//!   own copy of its prefix, kept by one watch (the `mirror` module), with no
//!   round trip; the write's compares still go to etcd;
//! - [`Store::watch`] is an etcd watch from `after + 1`, resumed from the last
//!   revision seen when its connection breaks; a compacted start revision is
//!   [`StoreError::Compacted`].
//!
//! Every key lives under a prefix (`<prefix>kv/<key>`), so that several Weft
//! installations share one cluster; `<prefix>layout` holds the key layout's
//! version, written on first use: a backend finding another value refuses to
//! start rather than misread (or overwrite) data laid out differently.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions,
    Txn as EtcdTxn, TxnOp, WatchOptions, WatchStream,
};
use futures::stream::BoxStream;
use tokio::sync::{oneshot, watch, Notify};
use weft_store::{
    Compare, Durability, KeyValue, Op, Range, RangeResult, ReadAhead, Revision, Store, StoreError,
    StoreHealth, StoreSnapshot, Txn, TxnOutcome, WatchEvent,
};

use mirror::Mirror;
use pipeline::{Batch, Decision, Expect, Pipeline, Settled};

mod mirror;
mod pipeline;
#[cfg(feature = "testing")]
pub mod testing;

/// The value of the layout marker this version of Weft writes and accepts.
pub const LAYOUT: &str = "weft-store-v1";

/// Keys read per request of a range read: a range of a large mesh is read in
/// pages rather than one response that could outgrow a gRPC message.
const RANGE_PAGE: usize = 500;

/// The largest response accepted from etcd: a page of [`RANGE_PAGE`] keys of
/// records up to etcd's 1.5 MiB request limit would not fit tonic's default of
/// 4 MiB (<https://etcd.io/docs/v3.4/dev-guide/limit/>).
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// The default key prefix (`--etcd-prefix`).
pub const DEFAULT_PREFIX: &str = "/weft/";

/// Everything that can keep the etcd backend from starting.
#[derive(Debug, thiserror::Error)]
pub enum EtcdStoreError {
    /// The options do not make sense (no endpoint, an empty prefix…).
    #[error("invalid etcd options: {0}")]
    Options(String),
    /// A TLS file could not be read.
    #[error("reading {what} {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// No endpoint answered before the start-up deadline.
    #[error("etcd at {endpoints} is unreachable (tried for {waited:?}): {last}")]
    Unreachable {
        endpoints: String,
        waited: Duration,
        last: String,
    },
    /// etcd answered but refused (bad credentials, missing permissions…).
    #[error("etcd at {endpoints} refused: {message}")]
    Refused { endpoints: String, message: String },
    /// The prefix lies inside another installation's, or around one.
    #[error(
        "the etcd prefix {prefix:?} nests with the Weft installation at {other:?}: one \
         installation's keys would be read as the other's data; give each an --etcd-prefix \
         that is not inside the other"
    )]
    Nested { prefix: String, other: String },
    /// The prefix holds data of another key layout.
    #[error(
        "the etcd prefix {prefix:?} holds a Weft store with key layout {found:?}, but this \
         version of Weft reads layout {expected:?}: use another --etcd-prefix, or the Weft \
         version that wrote it"
    )]
    Layout {
        prefix: String,
        found: String,
        expected: &'static str,
    },
}

/// How [`EtcdStore::connect`] found the prefix.
enum Claim {
    /// Ours, or free and now ours.
    Ours,
    /// Holds another key layout (the marker's value).
    Layout(Vec<u8>),
    /// Nested in, or around, another installation's prefix.
    Nested(String),
}

/// Files for a TLS connection to etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// PEM CA bundle that signed etcd's server certificates (else the system's trust).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// How to reach etcd and where Weft's keys live in it.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `host:port` (or `http(s)://host:port`) of one or more cluster members.
    pub endpoints: Vec<String>,
    /// Every key Weft writes starts with this (`/` is appended if missing).
    /// Prefixes of different installations must not nest (`/a/` and
    /// `/a/kv/`): a prefix that does is refused at start.
    pub prefix: String,
    /// TLS to etcd (`https://` endpoints); `None` for plaintext.
    pub tls: Option<EtcdTls>,
    /// User name and password, for etcd's authentication.
    pub user: Option<(String, String)>,
    /// How long one request (or one connection attempt) may take.
    pub request_timeout: Duration,
    /// How long [`EtcdStore::connect`] keeps retrying an unreachable cluster.
    pub connect_for: Duration,
}

impl EtcdOptions {
    /// Plaintext, no authentication, the default prefix, 5 s requests and 30 s of
    /// retrying at start.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            tls: None,
            user: None,
            request_timeout: Duration::from_secs(5),
            connect_for: Duration::from_secs(30),
        }
    }
}

/// The [`Store`] backend over etcd. A clone shares the connection and the
/// group-commit state (the task that sends batches holds one).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// `<prefix>kv/`: what every data key starts with.
    data: Vec<u8>,
    link: Link,
    /// Writes decided and not yet applied, and the batch in flight.
    pipeline: Arc<Mutex<Pipeline>>,
    /// The last batch completed and the last failed, for [`Store::sync`].
    progress: Arc<watch::Sender<(u64, u64)>>,
    /// Woken whenever a batch completes, for writes waiting for room.
    room: Arc<Notify>,
    /// The prefix as the watch of `follower` last told it.
    mirror: Arc<Mutex<Mirror>>,
    /// Shared by every handle on the store; `None` in the following task's
    /// own handle, so that the task ends when the last other one is dropped.
    follower: Option<Arc<Follower>>,
}

/// The task that keeps [`EtcdStore::mirror`] up to date: started by the
/// first read ahead (a server's API, not a one-off command such as
/// `weft backup`), ended when every handle on the store is gone.
struct Follower {
    started: AtomicBool,
    /// Never sent on: dropped with the last handle, which the task sees.
    alive: watch::Sender<()>,
}

/// How far behind this replica's last applied batch the mirror may be and
/// still be read ahead from. Behind by less, a write of this replica it does
/// not show yet is still overlaid from the pipeline (which keeps applied
/// writes for longer); behind by more, its watch is stuck, and etcd is asked.
const MIRROR_LAG: Duration = Duration::from_secs(1);

/// What every request shares: where it goes (for messages), how long it may
/// take, and the health it reports.
#[derive(Clone)]
struct Link {
    /// The endpoints as given, for error messages.
    endpoints: Arc<str>,
    request_timeout: Duration,
    /// Why the last request failed, until one succeeds.
    unhealthy: Arc<Mutex<Option<String>>>,
}

/// The smallest key greater than every key starting with `prefix`, as etcd
/// computes a prefix's range end
/// (<https://etcd.io/docs/v3.4/learning/api/#key-ranges>); `[0]` (to the end
/// of the key space) when no such key exists.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The endpoint as the client wants it: with a scheme.
fn endpoint_url(endpoint: &str, tls: bool) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    }
}

/// Which failed requests [`EtcdStore::call`] sends again.
#[derive(Debug, Clone, Copy)]
enum Resend {
    /// A read: after any failure to reach a member.
    Unreachable,
    /// A write: only when it certainly never reached a member (its
    /// connection could not be made), since a write that reached one may have
    /// been applied.
    NotSent,
}

/// Whether a request failed before it left: its connection could not be made
/// (tonic's "tcp connect error" for a member that is down).
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("connect")
        }
        _ => false,
    }
}

/// Whether an etcd error means the cluster could not be reached (try again)
/// rather than that it refused the request.
fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

fn read_tls_file(what: &'static str, path: &PathBuf) -> Result<Vec<u8>, EtcdStoreError> {
    std::fs::read(path).map_err(|source| EtcdStoreError::TlsFile {
        what,
        path: path.clone(),
        source,
    })
}

fn connect_options(options: &EtcdOptions) -> Result<ConnectOptions, EtcdStoreError> {
    let mut connect = ConnectOptions::new()
        .with_connect_timeout(options.request_timeout)
        // A member cut off from the leader cancels our watches instead of
        // leaving them silent (https://etcd.io/docs/v3.4/dev-guide/interacting_v3/).
        .with_require_leader(true)
        .with_keep_alive(Duration::from_secs(5), options.request_timeout);
    if let Some((user, password)) = &options.user {
        // etcd's simple auth tokens expire (`--auth-token-ttl`, 300 s by default,
        // https://etcd.io/docs/v3.4/op-guide/configuration/): a long-lived server
        // must get a new one rather than fail every request once it lapses.
        connect = connect
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &options.tls {
        let mut config = etcd_client::TlsOptions::new();
        if let Some(ca) = &tls.ca_file {
            config = config.ca_certificate(etcd_client::Certificate::from_pem(read_tls_file(
                "the etcd CA file",
                ca,
            )?));
        } else {
            config = config.with_enabled_roots();
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                config = config.identity(etcd_client::Identity::from_pem(
                    read_tls_file("the etcd client certificate", cert)?,
                    read_tls_file("the etcd client key", key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(EtcdStoreError::Options(
                    "a client certificate needs both --etcd-cert-file and --etcd-key-file".into(),
                ))
            }
        }
        connect = connect.with_tls(config);
    }
    Ok(connect)
}

impl EtcdStore {
    /// Connects to etcd, retrying with backoff for [`EtcdOptions::connect_for`]
    /// while no endpoint answers, then checks (or, on first use, writes) the
    /// prefix's layout marker.
    pub async fn connect(mut options: EtcdOptions) -> Result<Arc<Self>, EtcdStoreError> {
        if options.endpoints.is_empty() {
            return Err(EtcdStoreError::Options("no etcd endpoint given".into()));
        }
        if options.prefix.is_empty() {
            return Err(EtcdStoreError::Options(
                "the etcd prefix must not be empty (several installations share a cluster by \
                 their prefixes)"
                    .into(),
            ));
        }
        // `/weft` and `/weft/` are one prefix: a prefix that is not a whole path
        // segment would share keys with its neighbours (`/weft` with `/weftkv/`).
        if !options.prefix.ends_with('/') {
            options.prefix.push('/');
        }
        let endpoints: Arc<str> = options.endpoints.join(",").into();
        let urls: Vec<String> = options
            .endpoints
            .iter()
            .map(|e| endpoint_url(e, options.tls.is_some()))
            .collect();
        let connect = connect_options(&options)?;
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = async {
                let client = Client::connect(&urls, Some(connect.clone())).await?;
                let store = EtcdStore {
                    client,
                    data: format!("{}kv/", options.prefix).into_bytes(),
                    link: Link {
                        endpoints: endpoints.clone(),
                        request_timeout: options.request_timeout,
                        unhealthy: Arc::new(Mutex::new(None)),
                    },
                    // A read may take a request timeout: an applied write
                    // stays overlaid a little longer than that (see
                    // `Pipeline::new`).
                    pipeline: Arc::new(Mutex::new(Pipeline::new(
                        options.request_timeout + Duration::from_secs(1),
                    ))),
                    progress: Arc::new(watch::channel((0, 0)).0),
                    room: Arc::new(Notify::new()),
                    mirror: Arc::new(Mutex::new(Mirror::default())),
                    follower: Some(Arc::new(Follower {
                        started: AtomicBool::new(false),
                        alive: watch::channel(()).0,
                    })),
                };
                // Checked before the marker is written: a nested prefix's
                // marker would be a foreign key in the other's data.
                let claim = match store.nested_with(&options.prefix).await? {
                    Some(other) => Claim::Nested(other),
                    None => {
                        let found = store.claim_layout(&options.prefix).await?;
                        if found == LAYOUT.as_bytes() {
                            Claim::Ours
                        } else {
                            Claim::Layout(found)
                        }
                    }
                };
                Ok::<_, etcd_client::Error>((store, claim))
            };
            let last = match tokio::time::timeout(options.request_timeout, attempt).await {
                Ok(Ok((store, claim))) => match claim {
                    Claim::Ours => return Ok(Arc::new(store)),
                    Claim::Layout(found) => {
                        return Err(EtcdStoreError::Layout {
                            prefix: options.prefix.clone(),
                            found: String::from_utf8_lossy(&found).into_owned(),
                            expected: LAYOUT,
                        })
                    }
                    Claim::Nested(other) => {
                        return Err(EtcdStoreError::Nested {
                            prefix: options.prefix.clone(),
                            other,
                        })
                    }
                },
                Ok(Err(e)) if !unreachable(&e) => {
                    return Err(EtcdStoreError::Refused {
                        endpoints: endpoints.to_string(),
                        message: e.to_string(),
                    })
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:?}", options.request_timeout),
            };
            let waited = started.elapsed();
            if waited >= options.connect_for {
                return Err(EtcdStoreError::Unreachable {
                    endpoints: endpoints.to_string(),
                    waited,
                    last,
                });
            }
            // The last wait ends at the deadline, for one last attempt there.
            let pause = backoff.min(options.connect_for - waited);
            tracing::warn!(endpoints = %endpoints, error = %last, retry_in = ?pause, "etcd is unreachable; retrying");
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Writes the layout marker if the prefix has none; returns the marker's value.
    async fn claim_layout(&self, prefix: &str) -> Result<Vec<u8>, etcd_client::Error> {
        let marker = format!("{prefix}layout");
        let txn = EtcdTxn::new()
            .when([EtcdCompare::create_revision(
                marker.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(marker.clone(), LAYOUT, None)])
            .or_else([TxnOp::get(marker, None)]);
        let resp = self.client.kv_client().txn(txn).await?;
        if resp.succeeded() {
            return Ok(LAYOUT.as_bytes().to_vec());
        }
        for op in resp.op_responses() {
            if let etcd_client::TxnOpResponse::Get(get) = op {
                if let Some(kv) = get.kvs().first() {
                    return Ok(kv.value().to_vec());
                }
            }
        }
        Ok(Vec::new())
    }

    /// Another installation's prefix that `prefix` lies in (a layout marker
    /// at one of its parent paths) or that lies in `prefix` (a marker under
    /// it besides its own), if any.
    async fn nested_with(&self, prefix: &str) -> Result<Option<String>, etcd_client::Error> {
        let mut kv = self.client.kv_client();
        let parents: Vec<&str> = prefix
            .char_indices()
            .filter(|&(i, c)| c == '/' && i + 1 < prefix.len())
            .map(|(i, _)| &prefix[..=i])
            .collect();
        for parent in parents {
            let marker = format!("{parent}layout");
            match kv.get(marker, None).await {
                Ok(found) if !found.kvs().is_empty() => return Ok(Some(parent.to_string())),
                Ok(_) => {}
                // A user whose role holds only its own prefix cannot look
                // outside it; the operator who scoped the role drew the line.
                Err(etcd_client::Error::GRpcStatus(s))
                    if s.code() == tonic::Code::PermissionDenied => {}
                Err(e) => return Err(e),
            }
        }
        // Markers inside: every key under the prefix, keys only, in pages.
        let own = format!("{prefix}layout");
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_keys_only()
                .with_limit(i64::try_from(RANGE_PAGE).unwrap_or(i64::MAX));
            let resp = kv.get(from.clone(), Some(options)).await?;
            for found in resp.kvs() {
                let key = found.key();
                if key.ends_with(b"/layout") && key != own.as_bytes() {
                    let value = kv.get(key.to_vec(), None).await?;
                    let marker = value.kvs().first().map(|kv| kv.value());
                    if marker.is_some_and(|v| v.starts_with(b"weft-store-")) {
                        let other = &key[..key.len() - "layout".len()];
                        return Ok(Some(String::from_utf8_lossy(other).into_owned()));
                    }
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(None),
            }
        }
    }

    fn key(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.data.len() + key.len());
        k.extend_from_slice(&self.data);
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// The trait's view of an etcd key-value, or `None` (logged) for a key
    /// outside the prefix or not UTF-8, which Weft never writes.
    fn decode(&self, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
        decode(&self.data, kv)
    }

    /// See [`Link::call`].
    async fn call<T, Fut>(
        &self,
        what: &str,
        resend: Resend,
        request: impl FnMut() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.link.call(what, resend, request).await
    }

    fn lock_mirror(&self) -> MutexGuard<'_, Mirror> {
        // Every change to the mirror is made in one call that does not panic.
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts following the prefix into the mirror, once per store.
    fn start_following(&self) {
        let Some(follower) = &self.follower else {
            return;
        };
        if follower.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let alive = follower.alive.subscribe();
        let own = EtcdStore {
            follower: None,
            ..self.clone()
        };
        tokio::spawn(own.follow(alive));
    }

    /// Loads the prefix into the mirror and follows it, again after each
    /// break (with backoff), until `alive`'s sender is dropped.
    async fn follow(self, mut alive: watch::Receiver<()>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let loaded = tokio::select! {
                _ = alive.changed() => return,
                loaded = self.follow_once() => loaded,
            };
            self.lock_mirror().lose();
            if loaded {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                _ = alive.changed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Reads the whole prefix into the mirror, then applies the watch's
    /// events from that revision on until the watch fails (it reopens by
    /// itself for a while; a compaction past its revision fails it at once).
    /// Whether the prefix was loaded.
    async fn follow_once(&self) -> bool {
        let loaded = match self.range_at(Range::prefix(""), None).await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::debug!(error = %e, "loading the etcd prefix to read ahead from failed");
                return false;
            }
        };
        let mut feed = self.feed("", loaded.revision);
        if let Err(e) = feed.open().await {
            tracing::debug!(error = %e, "watching the etcd prefix to read ahead from failed");
            return false;
        }
        self.lock_mirror().load(loaded.revision, loaded.kvs);
        while let Some(events) = feed.next_response().await {
            match events {
                Ok(events) => self.lock_mirror().apply(&events),
                Err(e) => {
                    tracing::debug!(error = %e, "the watch to read ahead from ended; loading again");
                    break;
                }
            }
        }
        true
    }

    /// The revision this replica's copy of its prefix, which writes read
    /// ahead from, is up to; `None` before the first read ahead starts
    /// following the prefix, and while its watch is broken.
    pub fn mirrored_revision(&self) -> Option<Revision> {
        self.lock_mirror().revision()
    }

    /// `keys` from the mirror, unless it is not followed or is more than
    /// [`MIRROR_LAG`] behind this replica's last applied batch.
    fn read_mirrored(
        &self,
        keys: &[String],
    ) -> Option<(
        Revision,
        std::collections::HashMap<String, Option<KeyValue>>,
    )> {
        let applied = self.lock_pipeline().last_applied();
        let mirror = self.lock_mirror();
        let revision = mirror.revision()?;
        if let Some((last, at)) = applied {
            if revision < last && at.elapsed() > MIRROR_LAG {
                return None;
            }
        }
        mirror.read(keys)
    }

    /// A watch of `prefix` from `after + 1`, not opened yet.
    fn feed(&self, prefix: &str, after: Revision) -> Feed {
        let key = self.key(prefix);
        let end = prefix_end(&key);
        Feed {
            client: self.client.clone(),
            data: self.data.clone(),
            key,
            end,
            last: after,
            stream: None,
            pending: VecDeque::new(),
            endpoints: self.link.endpoints.clone(),
            request_timeout: self.link.request_timeout,
            done: false,
        }
    }

    fn lock_pipeline(&self) -> MutexGuard<'_, Pipeline> {
        // The pipeline's state stays whole across a panic elsewhere: every
        // change to it is made in one call that does not panic.
        self.pipeline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides `txn` (see [`Pipeline::decide`]), waiting while it cannot be
    /// yet, and sends the batch it starts. `None`: a compare does not hold.
    async fn decide(
        &self,
        txn: &Txn,
    ) -> Result<Option<(Revision, oneshot::Receiver<Settled>)>, StoreError> {
        let deadline = tokio::time::Instant::now() + self.link.request_timeout * 2;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before deciding, so a batch completing in between wakes it.
            room.as_mut().enable();
            let decision = self.lock_pipeline().decide(txn);
            match decision {
                Decision::Conflict => return Ok(None),
                Decision::Accepted {
                    provisional,
                    settled,
                    send,
                } => {
                    if let Some(batch) = send {
                        tokio::spawn(self.clone().commit_batches(batch));
                    }
                    return Ok(Some((provisional, settled)));
                }
                Decision::Wait => {
                    if tokio::time::timeout_at(deadline, room).await.is_err() {
                        return Err(self.waited_too_long());
                    }
                }
            }
        }
    }

    fn waited_too_long(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "etcd at {}: a write waited {:?} for the writes before it",
            self.link.endpoints,
            self.link.request_timeout * 2
        ))
    }

    /// Sends batches, one at a time, until none is pending: what a write
    /// that finds no batch in flight spawns (on a clone of the store).
    async fn commit_batches(self, mut batch: Batch) {
        loop {
            let outcome = self.send(&batch).await;
            let (next, progress) = {
                let mut pipeline = self.lock_pipeline();
                let next = pipeline.complete(batch, outcome, std::time::Instant::now());
                (next, pipeline.completed())
            };
            self.progress.send_replace(progress);
            self.room.notify_waiters();
            match next {
                Some(b) => batch = b,
                None => return,
            }
        }
    }

    /// One etcd transaction: the batch's compares, then its ops.
    async fn send(&self, batch: &Batch) -> Result<TxnOutcome, StoreError> {
        self.send_parts(batch.compares.iter(), batch.ops.iter())
            .await
    }

    /// One etcd transaction of these compares and ops, in this order.
    async fn send_parts<'a>(
        &self,
        expected: impl Iterator<Item = (&'a String, &'a Expect)>,
        writes: impl Iterator<Item = &'a (String, Option<Bytes>)>,
    ) -> Result<TxnOutcome, StoreError> {
        let mut compares = Vec::new();
        for (key, expect) in expected {
            match expect {
                // A missing key compares as create revision 0
                // (https://etcd.io/docs/v3.4/learning/api/#transaction).
                Expect::Absent => compares.push(EtcdCompare::create_revision(
                    self.key(key),
                    CompareOp::Equal,
                    0,
                )),
                Expect::ModRevision(revision) => {
                    compares.push(EtcdCompare::mod_revision(
                        self.key(key),
                        CompareOp::Equal,
                        *revision,
                    ));
                    if *revision <= 0 {
                        // "The key exists": a missing key's mod revision is 0 too.
                        compares.push(EtcdCompare::version(self.key(key), CompareOp::Greater, 0));
                    }
                }
            }
        }
        let mut ops: Vec<TxnOp> = writes
            .map(|(key, value)| match value {
                Some(value) => TxnOp::put(self.key(key), value.to_vec(), None),
                None => TxnOp::delete(self.key(key), None),
            })
            .collect();
        if ops.is_empty() {
            // etcd 3.4 serves a transaction without ops as a serializable read
            // (its `isTxnSerializable` holds for no ops at all), which may
            // answer from a member behind the leader; a linearizable read op
            // makes it linearizable like every other read.
            ops.push(TxnOp::get(
                self.data.clone(),
                Some(GetOptions::new().with_count_only()),
            ));
        }
        let request = EtcdTxn::new().when(compares).and_then(ops);
        let resp = self
            .link
            .txn(&self.client, "a transaction", Resend::NotSent, request)
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(if resp.succeeded() {
            TxnOutcome::Committed(revision)
        } else {
            TxnOutcome::Conflict(revision)
        })
    }

    /// etcd's (linearizable) answer for one key.
    async fn get_one(&self, key: &str) -> Result<etcd_client::GetResponse, StoreError> {
        self.call("reading a key", Resend::Unreachable, || {
            let mut kv = self.client.kv_client();
            let k = self.key(key);
            async move { kv.get(k, None).await }
        })
        .await
    }

    /// The current revision, from the cheapest linearizable read.
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .call("reading the revision", Resend::Unreachable, || {
                let mut kv = self.client.kv_client();
                let key = self.data.clone();
                async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Reads a range as of `revision`, or the latest state with `None`.
    /// A read at a compacted revision fails with [`StoreError::Compacted`].
    async fn range_at(
        &self,
        range: Range,
        revision: Option<Revision>,
    ) -> Result<RangeResult, StoreError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.range_pages(&range, revision).await {
                // A latest read compacted between its pages: read again,
                // at the new latest revision.
                Err(StoreError::Compacted { .. }) if revision.is_none() && attempts < 5 => {}
                other => return other,
            }
        }
    }

    /// [`EtcdStore::range_at`] in pages of [`RANGE_PAGE`] keys, every page at
    /// the revision of the first, so that a large range neither outgrows a
    /// gRPC message nor mixes two revisions.
    async fn range_pages(
        &self,
        range: &Range,
        revision: Option<Revision>,
    ) -> Result<RangeResult, StoreError> {
        let mut from = self.key(&range.start);
        let end = match &range.end {
            Some(end) => self.key(end),
            None => prefix_end(&self.data),
        };
        let mut at = revision;
        let mut kvs = Vec::new();
        loop {
            let page = match range.limit {
                0 => RANGE_PAGE,
                wanted => RANGE_PAGE.min(wanted.saturating_sub(kvs.len()).max(1)),
            };
            let resp = self
                .call("reading a range", Resend::Unreachable, || {
                    let mut kv = self
                        .client
                        .kv_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES);
                    let mut options = GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(i64::try_from(page).unwrap_or(i64::MAX));
                    if let Some(revision) = at {
                        options = options.with_revision(revision);
                    }
                    let from = from.clone();
                    // A compacted revision is an answer, not a failure to resend
                    // or to mark the store unhealthy for.
                    async move {
                        match kv.get(from, Some(options)).await {
                            Err(e) if is_compacted(&e) => Ok(Err(e)),
                            other => other.map(Ok),
                        }
                    }
                })
                .await?;
            let resp = match resp {
                Ok(resp) => resp,
                Err(_) => {
                    let requested = at.unwrap_or(0);
                    let oldest = self
                        .compacted_from(requested)
                        .await
                        .unwrap_or(requested + 1);
                    return Err(StoreError::Compacted { requested, oldest });
                }
            };
            let revision =
                *at.get_or_insert_with(|| resp.header().map(|h| h.revision()).unwrap_or(0));
            kvs.extend(resp.kvs().iter().filter_map(|kv| self.decode(kv)));
            let full = range.limit != 0 && kvs.len() >= range.limit;
            match resp.kvs().last() {
                Some(last) if resp.more() && !full => {
                    // The next page starts right after this one's last key.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    return Ok(RangeResult {
                        kvs,
                        more: resp.more(),
                        revision,
                    })
                }
            }
        }
    }

    /// The oldest revision a watch can start from, when `revision` was
    /// compacted away: asks a watch from `revision`, which etcd cancels with
    /// the compaction revision.
    async fn compacted_from(&self, revision: Revision) -> Option<Revision> {
        let mut watch = self.client.watch_client();
        let key = self.data.clone();
        let end = prefix_end(&key);
        let ask = async move {
            let mut stream = watch
                .watch(
                    key,
                    Some(
                        WatchOptions::new()
                            .with_range(end)
                            .with_start_revision(revision.max(1)),
                    ),
                )
                .await
                .ok()?;
            loop {
                let resp = stream.message().await.ok()??;
                if resp.compact_revision() != 0 {
                    return Some(resp.compact_revision());
                }
            }
        };
        tokio::time::timeout(self.link.request_timeout, ask)
            .await
            .ok()
            .flatten()
    }
}

impl Link {
    /// One etcd transaction through [`Link::call`].
    async fn txn(
        &self,
        client: &Client,
        what: &str,
        resend: Resend,
        request: EtcdTxn,
    ) -> Result<etcd_client::TxnResponse, StoreError> {
        self.call(what, resend, || {
            let mut kv = client.kv_client();
            let request = request.clone();
            async move { kv.txn(request).await }
        })
        .await
    }

    /// Runs one request within the request timeout, sending it again (to
    /// another member, as the client balances) after the failures `resend`
    /// allows; turns failures into [`StoreError::Unavailable`] and keeps
    /// [`Store::health`] up to date.
    async fn call<T, Fut>(
        &self,
        what: &str,
        resend: Resend,
        mut request: impl FnMut() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let mut backoff = Duration::from_millis(10);
        let outcome = loop {
            match tokio::time::timeout_at(deadline, request()).await {
                Ok(Ok(v)) => {
                    *self
                        .unhealthy
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = None;
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    let again = match resend {
                        Resend::Unreachable => unreachable(&e),
                        Resend::NotSent => not_sent(&e),
                    };
                    if again && tokio::time::Instant::now() + backoff < deadline {
                        tracing::debug!(error = %e, "etcd request failed; sending it again");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(200));
                        continue;
                    }
                    break e.to_string();
                }
                Err(_) => break format!("no answer within {:?}", self.request_timeout),
            }
        };
        let message = format!("etcd at {}: {what} failed: {outcome}", self.endpoints);
        *self
            .unhealthy
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(message.clone());
        Err(StoreError::Unavailable(message))
    }
}

/// The error a writer gets when its batch's task is gone (the runtime is
/// shutting down).
fn stopped() -> StoreError {
    StoreError::Unavailable("the etcd backend stopped before the write was applied".into())
}

/// The store at one revision: etcd keeps every revision since the last
/// compaction, so each range is read with that revision.
struct EtcdSnapshot<'a> {
    store: &'a EtcdStore,
    revision: Revision,
}

#[async_trait::async_trait]
impl StoreSnapshot for EtcdSnapshot<'_> {
    fn revision(&self) -> Revision {
        self.revision
    }

    async fn range(&self, range: Range) -> Result<RangeResult, StoreError> {
        self.store.range_at(range, Some(self.revision)).await
    }
}

/// See [`EtcdStore::decode`].
fn decode(data: &[u8], kv: &etcd_client::KeyValue) -> Option<KeyValue> {
    let Some(key) = kv.key().strip_prefix(data) else {
        tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "skipping an etcd key outside the store's prefix");
        return None;
    };
    let Ok(key) = std::str::from_utf8(key) else {
        tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "skipping an etcd key that is not UTF-8");
        return None;
    };
    Some(KeyValue {
        key: key.to_string(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    })
}

/// Whether an error answers a read at a revision that was compacted.
fn is_compacted(e: &etcd_client::Error) -> bool {
    // etcd's ErrCompacted: "etcdserver: mvcc: required revision has been compacted"
    // (https://etcd.io/docs/v3.4/dev-guide/api_reference_v3/), OutOfRange in gRPC.
    e.to_string()
        .contains("required revision has been compacted")
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self.get_one(key).await?;
        Ok(resp.kvs().first().and_then(|kv| self.decode(kv)))
    }

    async fn range(&self, range: Range) -> Result<RangeResult, StoreError> {
        self.range_at(range, None).await
    }

    async fn count(&self, range: Range) -> Result<usize, StoreError> {
        let start = self.key(&range.start);
        let end = match &range.end {
            Some(end) => self.key(end),
            None => prefix_end(&self.data),
        };
        let resp = self
            .call("counting a range", Resend::Unreachable, || {
                let mut kv = self.client.kv_client();
                let options = GetOptions::new().with_range(end.clone()).with_count_only();
                let start = start.clone();
                async move { kv.get(start, Some(options)).await }
            })
            .await?;
        // Every key in the range, whatever `range.limit` says, as the embedded store counts.
        Ok(usize::try_from(resp.count()).unwrap_or(0))
    }

    async fn get_latest(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        // A write decided and not yet applied is the answer whatever etcd
        // holds: no round trip (a busy mesh's guard is read so every write).
        if let Some(decided) = self.lock_pipeline().decided(key) {
            return Ok(decided);
        }
        let resp = self.get_one(key).await?;
        let read_at = resp.header().map(|h| h.revision()).unwrap_or(0);
        let etcd = resp.kvs().first().and_then(|kv| self.decode(kv));
        Ok(self.lock_pipeline().merge_one(key, etcd, read_at))
    }

    /// Unless `fresh`, from this replica's mirror of the prefix (no round
    /// trip: as stale as its watch is late, as a serializable read is as
    /// stale as its member); `fresh`, or while the mirror is not followed,
    /// one read-only etcd transaction of a get per key, at one revision
    /// (<https://etcd.io/docs/v3.4/learning/api/#transaction>), serializable
    /// unless `fresh`: the member answers from what it has applied, without a
    /// Raft read index (<https://etcd.io/docs/v3.4/learning/api_guarantees/>).
    async fn read_ahead(&self, keys: &[String], fresh: bool) -> Result<ReadAhead, StoreError> {
        if keys.is_empty() {
            return Ok(ReadAhead::default());
        }
        if !fresh {
            self.start_following();
            if let Some((revision, kvs)) = self.read_mirrored(keys) {
                return Ok(ReadAhead::new(revision, kvs, true));
            }
        }
        let options = (!fresh).then(|| GetOptions::new().with_serializable());
        let gets: Vec<TxnOp> = keys
            .iter()
            .map(|k| TxnOp::get(self.key(k), options.clone()))
            .collect();
        let request = EtcdTxn::new().and_then(gets);
        let resp = self
            .link
            .txn(&self.client, "reading ahead", Resend::Unreachable, request)
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut kvs = std::collections::HashMap::with_capacity(keys.len());
        for (key, op) in keys.iter().zip(resp.op_responses()) {
            if let etcd_client::TxnOpResponse::Get(get) = op {
                kvs.insert(
                    key.clone(),
                    get.kvs().first().and_then(|kv| self.decode(kv)),
                );
            }
        }
        Ok(ReadAhead::new(revision, kvs, !fresh))
    }

    fn reads_ahead(&self) -> bool {
        true
    }

    async fn get_latest_ahead(
        &self,
        key: &str,
        ahead: &ReadAhead,
    ) -> Result<Option<KeyValue>, StoreError> {
        match ahead.get(key) {
            Some(read) => Ok(self
                .lock_pipeline()
                .merge_one(key, read.cloned(), ahead.revision())),
            None => self.get_latest(key).await,
        }
    }

    async fn range_latest(&self, range: Range) -> Result<RangeResult, StoreError> {
        let extra = self
            .lock_pipeline()
            .count_in(&range.start, range.end.as_deref());
        if extra == 0 {
            return self.range_at(range, None).await;
        }
        // Decided deletes may hide up to `extra` of etcd's keys.
        let wanted = range.limit;
        let read = Range {
            limit: if wanted == 0 { 0 } else { wanted + extra },
            ..range.clone()
        };
        let result = self.range_at(read, None).await?;
        let mut kvs = self.lock_pipeline().merge_range(
            result.kvs,
            &range.start,
            range.end.as_deref(),
            result.revision,
        );
        let mut more = result.more;
        if wanted != 0 && kvs.len() > wanted {
            kvs.truncate(wanted);
            more = true;
        }
        Ok(RangeResult {
            kvs,
            more,
            revision: result.revision,
        })
    }

    async fn count_latest(&self, range: Range) -> Result<usize, StoreError> {
        if self
            .lock_pipeline()
            .touches(&range.start, range.end.as_deref())
        {
            let all = Range { limit: 0, ..range };
            return Ok(self.range_latest(all).await?.kvs.len());
        }
        self.count(range).await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let (target, from) = {
            let pipeline = self.lock_pipeline();
            (pipeline.last_decided(), pipeline.completed().0 + 1)
        };
        let mut progress = self.progress.subscribe();
        let (_, failed) = *progress
            .wait_for(|(completed, _)| *completed >= target)
            .await
            .map_err(|_| StoreError::Unavailable("the etcd backend stopped".into()))?;
        if failed >= from {
            return Err(StoreError::Superseded(
                "a write decided before this answer was not applied".into(),
            ));
        }
        Ok(())
    }

    /// Sent to etcd on its own, so that its outcome (and revision) is its
    /// own: after any write decided on a key it touches is applied, so that
    /// it is judged, and ordered, after it.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let deadline = tokio::time::Instant::now() + self.link.request_timeout * 2;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !self.lock_pipeline().busy(&txn) {
                break;
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(self.waited_too_long());
            }
        }
        let compares: Vec<(String, Expect)> = txn
            .compares
            .into_iter()
            .map(|compare| match compare {
                Compare::Absent(key) => (key, Expect::Absent),
                Compare::ModRevision(key, revision) => (key, Expect::ModRevision(revision)),
            })
            .collect();
        let ops: Vec<(String, Option<Bytes>)> = txn
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put(key, value) => (key, Some(value)),
                Op::Delete(key) => (key, None),
            })
            .collect();
        self.send_parts(compares.iter().map(|(k, e)| (k, e)), ops.iter())
            .await
    }

    async fn txn_deferred(&self, txn: Txn) -> Result<(TxnOutcome, Durability), StoreError> {
        let Some((provisional, settled)) = self.decide(&txn).await? else {
            let revision = self.lock_pipeline().last_revision();
            let durable: Durability = Box::pin(futures::future::ready(Ok(revision)));
            return Ok((TxnOutcome::Conflict(revision), durable));
        };
        let durable: Durability = Box::pin(async move {
            match settled.await {
                Ok(Ok(TxnOutcome::Committed(revision))) => Ok(revision),
                Ok(Ok(TxnOutcome::Conflict(_))) => Err(StoreError::Superseded(
                    "its compares did not hold at etcd".into(),
                )),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(stopped()),
            }
        });
        Ok((TxnOutcome::Committed(provisional), durable))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.current_revision().await
    }

    async fn snapshot<'a>(&'a self) -> Result<Box<dyn StoreSnapshot + 'a>, StoreError> {
        let revision = self.current_revision().await?;
        Ok(Box::new(EtcdSnapshot {
            store: self,
            revision,
        }))
    }

    fn health(&self) -> StoreHealth {
        match &*self
            .link
            .unhealthy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            None => StoreHealth::Ok,
            Some(why) => StoreHealth::Unreachable(why.clone()),
        }
    }

    async fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> Result<BoxStream<'static, Result<WatchEvent, StoreError>>, StoreError> {
        let after = after.max(0);
        let mut feed = self.feed(prefix, after);
        let head = feed.open().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "etcd at {}: watching failed: {e}",
                self.link.endpoints
            ))
        })?;
        if after < head {
            // A watch from a compacted revision is created, then cancelled with
            // the compaction revision; a read at that revision fails at once,
            // which tells the caller now rather than on its first event.
            let mut kv = self.client.kv_client();
            let probe = self.data.clone();
            let read = tokio::time::timeout(
                self.link.request_timeout,
                kv.get(
                    probe,
                    Some(GetOptions::new().with_count_only().with_revision(after + 1)),
                ),
            )
            .await;
            match read {
                Ok(Err(e)) if is_compacted(&e) => {
                    let oldest = self.compacted_from(after + 1).await.unwrap_or(head);
                    return Err(StoreError::Compacted {
                        requested: after,
                        oldest,
                    });
                }
                Ok(Err(e)) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {}: watching failed: {e}",
                        self.link.endpoints
                    )))
                }
                Err(_) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {}: watching failed: no answer within {:?}",
                        self.link.endpoints, self.link.request_timeout
                    )))
                }
                Ok(Ok(_)) => {}
            }
        }
        Ok(Box::pin(futures::stream::unfold(
            feed,
            |mut feed| async move {
                let item = feed.next().await?;
                Some((item, feed))
            },
        )))
    }
}

/// One watch: the etcd watch stream, reopened from the last revision seen
/// when it breaks.
struct Feed {
    client: Client,
    data: Vec<u8>,
    key: Vec<u8>,
    end: Vec<u8>,
    /// Every event up to this revision was received.
    last: Revision,
    stream: Option<WatchStream>,
    pending: VecDeque<WatchEvent>,
    endpoints: Arc<str>,
    request_timeout: Duration,
    /// The stream ended with an error; nothing more comes.
    done: bool,
}

/// How long a broken watch keeps trying to reopen before it fails (the caller then reloads).
const REOPEN_FOR: Duration = Duration::from_secs(10);

impl Feed {
    /// Opens the etcd watch from `last + 1` and waits for etcd to confirm it;
    /// returns the cluster revision at that moment.
    async fn open(&mut self) -> Result<Revision, String> {
        // One response may carry the events of several large transactions.
        let mut watch = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let options = WatchOptions::new()
            .with_range(self.end.clone())
            .with_start_revision(self.last + 1);
        let key = self.key.clone();
        let opened = async move {
            let mut stream = watch.watch(key, Some(options)).await?;
            loop {
                match stream.message().await? {
                    Some(resp) if resp.created() => {
                        let head = resp.header().map(|h| h.revision()).unwrap_or(0);
                        return Ok((stream, head));
                    }
                    Some(_) => continue,
                    None => {
                        return Err(etcd_client::Error::WatchError(
                            "the watch stream closed before it was created".into(),
                        ))
                    }
                }
            }
        };
        match tokio::time::timeout(self.request_timeout, opened).await {
            Ok(Ok((stream, head))) => {
                self.stream = Some(stream);
                Ok(head)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.request_timeout)),
        }
    }

    /// The events of the next watch response: etcd sends all of one
    /// revision's events in one response, so a reader applying them together
    /// never shows half a transaction.
    async fn next_response(&mut self) -> Option<Result<Vec<WatchEvent>, StoreError>> {
        let first = match self.next().await? {
            Ok(event) => event,
            Err(e) => return Some(Err(e)),
        };
        let mut events = vec![first];
        events.extend(self.pending.drain(..));
        Some(Ok(events))
    }

    async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let Some(stream) = self.stream.as_mut() else {
                if let Err(e) = self.reopen().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.compact_revision() != 0 {
                        self.done = true;
                        return Some(Err(StoreError::Compacted {
                            requested: self.last,
                            oldest: resp.compact_revision(),
                        }));
                    }
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        let revision = kv.mod_revision();
                        let Some(decoded) = decode(&self.data, kv) else {
                            continue;
                        };
                        self.pending.push_back(WatchEvent {
                            revision,
                            key: decoded.key,
                            value: match event.event_type() {
                                EventType::Put => Some(decoded.value),
                                EventType::Delete => None,
                            },
                        });
                    }
                    if let Some(last) = self.pending.back() {
                        self.last = self.last.max(last.revision);
                    }
                    if resp.canceled() {
                        tracing::debug!(
                            reason = resp.cancel_reason(),
                            "etcd cancelled a watch; reopening"
                        );
                        self.stream = None;
                    }
                }
                Ok(None) => {
                    tracing::debug!("etcd watch stream ended; reopening");
                    self.stream = None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "etcd watch stream broke; reopening");
                    self.stream = None;
                }
            }
        }
    }

    /// Reopens the watch from the last revision seen, with backoff, for up to
    /// [`REOPEN_FOR`].
    async fn reopen(&mut self) -> Result<(), StoreError> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.open().await {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() + backoff > REOPEN_FOR => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd at {}: the watch broke and could not be reopened: {e}",
                        self.endpoints
                    )))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reopening an etcd watch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_after_its_last_byte_that_can_grow() {
        assert_eq!(prefix_end(b"/weft/kv/"), b"/weft/kv0".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn endpoints_without_a_scheme_get_the_one_tls_asks_for() {
        assert_eq!(
            endpoint_url("127.0.0.1:2379", false),
            "http://127.0.0.1:2379"
        );
        assert_eq!(endpoint_url("etcd:2379", true), "https://etcd:2379");
        assert_eq!(endpoint_url("https://e:1", false), "https://e:1");
    }
}
