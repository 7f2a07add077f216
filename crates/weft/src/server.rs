//! `weft server`: the control plane — the App Mesh API on an embedded store,
//! and the xDS server that turns the store's contents into Envoy config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_api::{ApiConfig, Quotas, RateLimit, Service};
use weft_store::SharedStore;

use crate::proxy_status;

/// Flags of `weft server`.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// Address of the App Mesh REST API (port 0 picks a free port).
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:9080")]
    pub listen: SocketAddr,
    /// Address of the xDS (ADS over gRPC) server Envoys connect to.
    #[arg(long, env = "WEFT_XDS_LISTEN", default_value = "127.0.0.1:15010")]
    pub xds_listen: SocketAddr,
    /// Address (UDP and TCP) of the DNS server answering Cloud Map's DNS
    /// namespaces and the meshes' virtual service names (port 0 picks a free
    /// port, printed on stdout).
    #[arg(long, env = "WEFT_DNS_LISTEN", default_value = DEFAULT_DNS_LISTEN)]
    pub dns_listen: SocketAddr,
    /// Folder of the embedded store (created if missing).
    #[arg(long, env = "WEFT_DATA_DIR", default_value = "./weft-data")]
    pub data_dir: PathBuf,
    /// The store: embedded in --data-dir, or an etcd cluster.
    #[command(flatten)]
    pub store: crate::store_backend::StoreArgs,
    /// Region written into ARNs.
    #[arg(long, env = "WEFT_REGION", default_value = "us-east-1")]
    pub region: String,
    /// The 12-digit account that owns every resource (meshOwner, resourceOwner).
    #[arg(long, env = "WEFT_ACCOUNT_ID", default_value = "000000000000")]
    pub account_id: String,
    /// Override an App Mesh quota, e.g. `--quota virtual-nodes-per-mesh=500` (repeatable).
    #[arg(long = "quota", value_name = "NAME=VALUE")]
    pub quotas: Vec<String>,
    /// Throttle the App Mesh API to this many requests per second for the
    /// account, answering `TooManyRequestsException` past it (0: no limit).
    #[arg(long, env = "WEFT_API_RATE_LIMIT", default_value_t = 0.0)]
    pub api_rate_limit: f64,
    /// Requests admitted at once under `--api-rate-limit` (default: one
    /// second's worth).
    #[arg(long, env = "WEFT_API_BURST")]
    pub api_burst: Option<u32>,
    /// Requests one client (an access key, else a peer address) may have in
    /// flight at once on the App Mesh and Cloud Map APIs; past it, the
    /// API's throttling error at once (0: no limit).
    #[arg(long, env = "WEFT_MAX_REQUESTS_PER_CLIENT", default_value_t = weft_api::config::DEFAULT_MAX_IN_FLIGHT_PER_CLIENT)]
    pub max_requests_per_client: usize,
    /// Seconds a proxy class (a virtual node or gateway with the options its
    /// Envoys announce) keeps its computed config after its last Envoy
    /// disconnects; then it is forgotten, and an Envoy of it that connects
    /// later waits for its config to be computed again (at least 1).
    #[arg(long, env = "WEFT_PROXY_IDLE_TTL", default_value_t = weft_control::DEFAULT_IDLE_CLASS_TTL.as_secs_f64())]
    pub proxy_idle_ttl: f64,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` also works.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,
    /// Connections the App Mesh / Cloud Map API listener holds at once. At
    /// the cap, the connection idle the longest is closed to make room; if
    /// every one is busy, a new one is answered 503. Lowered to fit the
    /// process's open-file limit.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Connections (Envoys) the xDS listener holds at once; past it new
    /// ones are closed and Envoy retries. Lowered to fit the open-file limit.
    #[arg(long, env = "WEFT_XDS_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub xds_max_connections: usize,
    /// Seconds an API connection may stay open with no request in flight.
    #[arg(long, env = "WEFT_IDLE_TIMEOUT", default_value_t = 60.0)]
    pub idle_timeout: f64,
    /// Seconds a client has to send a whole request head (API) or its first
    /// HTTP/2 frames (xDS) before its connection is closed.
    #[arg(long, env = "WEFT_HEADER_READ_TIMEOUT", default_value_t = 10.0)]
    pub header_read_timeout: f64,
    /// Bytes the store's log segments are zero-filled ahead of use (0: logs
    /// grow by appending). A tuning knob for benchmarks, not for users.
    #[arg(long, env = "WEFT_STORE_SEGMENT_SIZE", default_value_t = weft_store::DEFAULT_SEGMENT_SIZE, hide = true)]
    pub store_segment_size: u64,
    /// The certificate authority: trust domain, root, certificate and token lifetimes.
    #[command(flatten)]
    pub ca: weft_ca::CaArgs,
    /// Mutual TLS on the xDS listener, the default: the server presents a certificate from
    /// Weft's CA (naming the --xds-listen IP and every --xds-server-name), each proxy must
    /// present its workload certificate (its agent joins with a join token), and gets only the
    /// config of the resource that certificate names. Accepted so that scripts can say so.
    #[arg(long, env = "WEFT_XDS_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    pub xds_tls: bool,
    /// Plaintext, unauthenticated xDS (any client reaching the port gets any node's config,
    /// and agents need no join token): for local experiments only. Said loudly in the log and
    /// in proxy-status.
    #[arg(long, env = "WEFT_INSECURE_PLAINTEXT_XDS", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_plaintext_xds: bool,
    /// A DNS name or IP address the xDS server's certificate holds beside the --xds-listen IP
    /// (the name proxies reach it by). Repeatable.
    #[arg(long = "xds-server-name", value_name = "NAME")]
    pub xds_server_names: Vec<String>,
    /// Accept every App Mesh, Cloud Map and admin request whatever its signature, or none: for
    /// local experiments only. Said loudly in the log. Without it, requests must be signed
    /// (SigV4) with an access key the server holds.
    #[arg(long, env = "WEFT_INSECURE_NO_AUTH", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_no_auth: bool,
    /// The key-encryption key access keys' secrets and the generated CA root's private key are
    /// sealed under (created, mode 0600, if missing while the store holds nothing sealed yet).
    /// Default: `<data-dir>/auth-kek`. Replicas sharing a store share this file.
    #[arg(long, env = "WEFT_AUTH_KEK_FILE", value_name = "FILE")]
    pub auth_kek_file: Option<PathBuf>,
}

/// The file the administrator's access key is written to on first start, in the data folder.
pub const ADMIN_CREDENTIALS: &str = "admin-credentials";

/// Where the DNS server listens unless told otherwise: loopback, on the
/// port Consul's DNS interface made familiar (a port under 1024 needs
/// privileges).
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.1:8600";

/// A running control plane.
pub struct ControlPlane {
    /// The App Mesh API's behaviour, for in-process callers such as `weft demo`.
    pub service: Service,
    /// Weft's CA, for in-process callers (`weft demo` makes its agents' join tokens).
    pub ca: weft_ca::CaService,
    /// Where the App Mesh REST API listens.
    pub api_addr: SocketAddr,
    /// Where the ADS server listens.
    pub xds_addr: SocketAddr,
    /// Where the DNS server listens (UDP and TCP).
    pub dns_addr: SocketAddr,
    /// The AWS credentials file holding the administrator's key, if the server wrote one (on
    /// the first start of its store).
    pub admin_credentials: Option<PathBuf>,
    /// The dashboard at /ui, for in-process callers (`weft demo` prints a login link).
    pub dashboard: weft_ui::Dashboard,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ServerArgs {
    /// The defaults of `weft server` with another data folder and addresses.
    pub fn with(
        data_dir: PathBuf,
        listen: SocketAddr,
        xds_listen: SocketAddr,
        dns_listen: SocketAddr,
    ) -> Self {
        ServerArgs {
            listen,
            xds_listen,
            dns_listen,
            data_dir,
            store: Default::default(),
            region: "us-east-1".into(),
            account_id: "000000000000".into(),
            quotas: Vec::new(),
            api_rate_limit: 0.0,
            api_burst: None,
            max_requests_per_client: weft_api::config::DEFAULT_MAX_IN_FLIGHT_PER_CLIENT,
            log: "info".into(),
            proxy_idle_ttl: weft_control::DEFAULT_IDLE_CLASS_TTL.as_secs_f64(),
            max_connections: 1024,
            xds_max_connections: 20_000,
            idle_timeout: 60.0,
            header_read_timeout: 10.0,
            store_segment_size: weft_store::DEFAULT_SEGMENT_SIZE,
            ca: weft_ca::CaArgs::default(),
            xds_tls: false,
            insecure_plaintext_xds: false,
            xds_server_names: Vec::new(),
            insecure_no_auth: false,
            auth_kek_file: None,
        }
    }
}

fn config(args: &ServerArgs) -> Result<ApiConfig> {
    if args.account_id.len() != 12 || !args.account_id.bytes().all(|b| b.is_ascii_digit()) {
        bail!("--account-id must be 12 digits, got {:?}", args.account_id);
    }
    let rate = args.api_rate_limit;
    if !rate.is_finite() || rate < 0.0 {
        bail!("--api-rate-limit must be a number of requests per second, 0 for none, got {rate}");
    }
    let rate_limit = (rate > 0.0).then(|| RateLimit {
        per_second: rate,
        burst: args.api_burst.unwrap_or(rate.ceil() as u32).max(1),
    });
    Ok(ApiConfig {
        region: args.region.clone(),
        account: args.account_id.clone(),
        quotas: parse_quotas(&args.quotas)?,
        rate_limit,
        max_in_flight_per_client: args.max_requests_per_client,
        ..ApiConfig::default()
    })
}

/// The limits of the API and xDS listeners under the process's open-file
/// limit (raised to its hard limit first).
fn listener_limits(args: &ServerArgs) -> Result<(weft_listen::Limits, weft_listen::Limits)> {
    let seconds = |flag: &str, value: f64| {
        Duration::try_from_secs_f64(value)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                anyhow::anyhow!("--{flag} must be a positive number of seconds, got {value}")
            })
    };
    let idle_timeout = seconds("idle-timeout", args.idle_timeout)?;
    let header_read_timeout = seconds("header-read-timeout", args.header_read_timeout)?;
    if args.max_connections == 0 || args.xds_max_connections == 0 {
        bail!("--max-connections and --xds-max-connections must be at least 1");
    }
    let limit = weft_listen::descriptors::raise_descriptor_limit();
    let (api, xds) = weft_listen::descriptors::connection_caps(
        limit,
        args.max_connections,
        args.xds_max_connections,
    );
    if api < args.max_connections {
        tracing::warn!(
            open_file_limit = limit,
            api_connections = api,
            "the open-file limit is too low for --max-connections; lowered it"
        );
    }
    tracing::info!(
        open_file_limit = limit,
        api_connections = api,
        xds_connections = xds,
        "connection caps"
    );
    let api = weft_listen::Limits {
        max_connections: api,
        max_connections_per_client: (api / 4).max(1),
        idle_timeout,
        header_read_timeout,
        ..weft_listen::Limits::default()
    };
    let xds = weft_listen::Limits {
        max_connections: xds,
        header_read_timeout,
        ..weft_listen::Limits::default()
    };
    Ok((api, xds))
}

/// The sockets Envoys and workloads reach: the xDS listener and the DNS server's UDP socket and
/// TCP listener. Bound apart from the API's so that `weft demo` can open them inside another
/// network namespace: a socket stays in the namespace it was created in, whichever thread then
/// serves it.
pub struct PeerSockets {
    xds: tokio::net::TcpListener,
    dns_udp: tokio::net::UdpSocket,
    dns_tcp: tokio::net::TcpListener,
    ca: Option<tokio::net::TcpListener>,
}

impl PeerSockets {
    /// Binds the xDS listener on `xds` and the DNS server on `dns` (UDP and TCP).
    pub async fn bind(xds: SocketAddr, dns: SocketAddr) -> Result<PeerSockets> {
        let xds = weft_listen::bind(xds)
            .with_context(|| format!("binding {xds} (the xDS address, --xds-listen)"))?;
        let (dns_udp, dns_tcp) = bind_dns(dns).await?;
        Ok(PeerSockets {
            xds,
            dns_udp,
            dns_tcp,
            ca: None,
        })
    }

    /// Also binds `ca`, where agents reach the CA (certificates and the trust bundle only) when
    /// the API listener is out of their reach.
    pub fn with_ca(mut self, ca: SocketAddr) -> Result<PeerSockets> {
        self.ca = Some(
            weft_listen::bind(ca)
                .with_context(|| format!("binding {ca} (the CA's address for agents)"))?,
        );
        Ok(self)
    }
}

/// Opens the store, binds the listeners and starts serving.
pub async fn start(args: &ServerArgs) -> Result<ControlPlane> {
    start_with(args, None).await
}

/// Like [`start`], serving xDS and DNS on `peers` when given instead of binding
/// `args.xds_listen` and `args.dns_listen`.
pub async fn start_with(args: &ServerArgs, peers: Option<PeerSockets>) -> Result<ControlPlane> {
    let config = config(args)?;
    let ca_config = args.ca.config()?;
    let (api_limits, xds_limits) = listener_limits(args)?;
    let store =
        crate::store_backend::open(&args.store, &args.data_dir, args.store_segment_size).await?;
    let metrics = weft_metrics::ServerMetrics::new();
    let store: SharedStore = metrics.metered(store);
    // One key-encryption key seals both the access keys' secrets and the CA root's private
    // key, so that neither is in the store in clear.
    let kek_path = kek_path(args);
    let kek = std::sync::Arc::new(key_encryption_key(&kek_path, &store).await?);
    let ca = weft_ca::CaService::start(store.clone(), ca_config, &kek)
        .await
        .with_context(|| {
            format!(
                "starting the certificate authority (key-encryption key {})",
                kek_path.display()
            )
        })?;
    let listener = weft_listen::bind(args.listen)
        .with_context(|| format!("binding {} (the API address, --listen)", args.listen))?;
    let api_addr = listener.local_addr()?;
    let (auth, admin_credentials) = authenticator(args, api_addr, &config, &store, kek).await?;
    let audit = audit_log(args)?;
    let auth = auth.with_audit(audit.clone());
    let peers = match peers {
        Some(peers) => peers,
        None => PeerSockets::bind(args.xds_listen, args.dns_listen).await?,
    };
    let PeerSockets {
        xds: xds_listener,
        dns_udp,
        dns_tcp,
        ca: ca_listener,
    } = peers;
    let xds_addr = xds_listener.local_addr()?;
    let dns_addr = dns_udp.local_addr()?;

    let cache = weft_xds::SnapshotCache::new();
    let (resolver, runtime) = weft_control::new(store.clone(), cache.clone());
    let idle_ttl = Duration::try_from_secs_f64(args.proxy_idle_ttl).map_err(|_| {
        anyhow::anyhow!(
            "--proxy-idle-ttl must be a number of seconds, got {}",
            args.proxy_idle_ttl
        )
    })?;
    let runtime = runtime
        .with_idle_class_ttl(idle_ttl)
        .with_trust_domain(ca.authority().trust_domain().as_str());
    let failures = runtime.failures();
    let readiness = crate::readiness::router(store.clone(), runtime.progress());
    let ads = weft_xds::AdsServer::new(cache, Arc::new(resolver));
    // The mesh's traffic as the Envoys' stats sinks report it: /metrics, /weft/v1/traffic and
    // the dashboard read it.
    let traffic = weft_traffic::TrafficStore::new();
    if args.xds_tls && args.insecure_plaintext_xds {
        bail!("--xds-tls (WEFT_XDS_TLS) and --insecure-plaintext-xds (WEFT_INSECURE_PLAINTEXT_XDS) exclude each other: set one");
    }
    let xds_tls = if args.insecure_plaintext_xds {
        tracing::warn!(
            "xDS is plaintext and unauthenticated (--insecure-plaintext-xds): any client \
             reaching {xds_addr} gets any proxy's config. For local experiments only; without \
             the flag proxies present the workload certificates their agents get with join tokens"
        );
        None
    } else {
        let mut names = args.xds_server_names.clone();
        if !xds_addr.ip().is_unspecified() {
            names.push(xds_addr.ip().to_string());
        }
        let config = crate::xds_tls::server_config(ca.authority(), &names)?;
        tracing::info!(
            ?names,
            "xDS over mutual TLS: proxies present their workload certificates"
        );
        Some((config, ca.clone()))
    };
    let xds_security = if xds_tls.is_some() {
        "mTLS"
    } else {
        "plaintext (unauthenticated)"
    };
    let (stop, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(runtime.run(stopped(stop_rx.clone()))));
    {
        let ads = ads.clone();
        let stop = stopped(stop_rx.clone());
        // Envoys' metrics_service stat sinks stream to the xDS port, with the same identity.
        let intake = weft_traffic::grpc::StatsIntake::new(traffic.clone()).routes();
        tasks.push(tokio::spawn(async move {
            let incoming = weft_listen::grpc::incoming(xds_listener, xds_limits);
            let served = match xds_tls {
                Some((config, ca)) => {
                    let incoming = crate::xds_tls::incoming(incoming, config, ca);
                    ads.serve_incoming_with(Box::pin(incoming), intake, stop)
                        .await
                }
                None => ads.serve_incoming_with(incoming, intake, stop).await,
            };
            if let Err(e) = served {
                tracing::warn!(error = %e, "xDS server ended with an error");
            }
        }));
    }
    {
        let (zones_tx, zones_rx) = watch::channel(Arc::new(weft_dns::Zones::new()));
        let follow = weft_dns::follow(store.clone(), zones_tx, stopped(stop_rx.clone()));
        tasks.push(tokio::spawn(follow));
        let stop = stopped(stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let limits = weft_dns::Limits::default();
            if let Err(e) = weft_dns::serve(dns_udp, dns_tcp, zones_rx, limits, stop).await {
                tracing::warn!(error = %e, "DNS server ended with an error");
            }
        }));
    }
    let registry = weft_registry::RegistryService::new(
        store.clone(),
        weft_registry::RegistryConfig {
            region: config.region.clone(),
            account: config.account.clone(),
            rate_limit: config.rate_limit,
            max_in_flight_per_client: config.max_in_flight_per_client,
            ..Default::default()
        },
    );
    // The dashboard at /ui (see crate::dashboard).
    let dashboard = crate::dashboard::start(
        store.clone(),
        ads.clone(),
        weft_ui::TrafficSource::new(
            {
                let traffic = traffic.clone();
                move || serde_json::to_value(traffic.snapshot()).unwrap_or_default()
            },
            traffic.subscribe(),
        ),
        args.insecure_no_auth,
        &mut tasks,
        stopped(stop_rx.clone()),
    );
    let service = Service::new(store, config);
    {
        let sweeper = service.clone();
        let registry_sweeper = registry.clone();
        let stop = stopped(stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tick.tick() => {}
                }
                match sweeper.sweep_expired_tokens(weft_api::service::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "expired client tokens swept"),
                    Err(e) => tracing::warn!(error = %e, "sweeping client tokens failed"),
                }
                if let Err(e) = registry_sweeper
                    .sweep_expired(weft_registry::service::now())
                    .await
                {
                    tracing::warn!(error = %e, "sweeping registry request records failed");
                }
            }
        }));
    }
    // One listener serves App Mesh (under /v20190125), Cloud Map (POST / and
    // /service/…) and Weft's own endpoints (proxy status; the CA's join tokens,
    // certificates and trust bundle).
    let metrics = metrics
        .with_collector(Box::new(weft_traffic::collector::TrafficCollector::new(
            traffic.clone(),
        )))
        .with_xds(ads.clone());
    let app = weft_api::router(service.clone())
        .merge(weft_registry::router(registry))
        .merge(proxy_status::router(
            ads,
            failures,
            xds_security,
            match auth.mode() {
                weft_auth::Mode::Verify => "SigV4",
                weft_auth::Mode::Insecure => "none (--insecure-no-auth)",
            },
            traffic.clone(),
        ))
        .merge(weft_ca::http::router(ca.clone()))
        .merge(weft_auth::admin::router(auth.clone()))
        .merge(weft_auth::audit::router(audit))
        .merge(weft_traffic::http::router(traffic.clone()));
    let app = app.merge(dashboard.admin_router());
    // Prometheus scrapes /metrics unsigned, as it scrapes any target; every request, served or
    // refused, is counted by the operation the authenticator named.
    let app = auth
        .wrap(app)
        .merge(weft_metrics::router(metrics.clone()))
        .merge(readiness)
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let metrics = metrics.clone();
                async move {
                    let started = std::time::Instant::now();
                    // The URI's parts are shared, not copied; the path is read only for an
                    // open endpoint's name.
                    let uri = request.uri().clone();
                    let response = next.run(request).await;
                    let named = response.extensions().get::<weft_auth::layer::Operation>();
                    let operation = match named {
                        Some(o) => std::borrow::Cow::Borrowed(o.0.as_str()),
                        None => std::borrow::Cow::Owned(open_operation(uri.path())),
                    };
                    metrics.observe_request(&operation, &outcome(&response), started.elapsed());
                    response
                }
            },
        ));
    // Its page is public (no data in it); its data needs a session the signed endpoint opens.
    let app = app.merge(dashboard.router());
    if let Some(listener) = ca_listener {
        let stop = stopped(stop_rx.clone());
        let app = weft_ca::http::workload_router(ca.clone());
        tasks.push(tokio::spawn(weft_listen::http::serve(
            listener, app, api_limits, stop,
        )));
    }
    {
        let stop = stopped(stop_rx);
        tasks.push(tokio::spawn(weft_listen::http::serve(
            listener, app, api_limits, stop,
        )));
    }
    tracing::info!(%api_addr, %xds_addr, %dns_addr, data_dir = %args.data_dir.display(), "control plane listening");
    Ok(ControlPlane {
        service,
        ca,
        api_addr,
        xds_addr,
        dns_addr,
        admin_credentials,
        dashboard,
        stop,
        tasks,
    })
}

/// The key-encryption key's file: `--auth-kek-file`, else `<data-dir>/auth-kek` (created on
/// first start).
fn kek_path(args: &ServerArgs) -> PathBuf {
    args.auth_kek_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("auth-kek"))
}

/// The key-encryption key in `path`. A missing file is created with a fresh key only on a
/// store that holds nothing sealed yet: what the store holds sealed (the CA root's private key,
/// access keys' secrets) opens only under the key it was sealed with, the one the other servers
/// on the store were given, so a new key would leave a stray file and a server that cannot
/// start (or serve any access key), its error naming the wrong cause.
async fn key_encryption_key(path: &std::path::Path, store: &SharedStore) -> Result<weft_auth::Kek> {
    if let Some(kek) = weft_auth::Kek::load(path)? {
        return Ok(kek);
    }
    let reading = "reading what the store holds sealed under a key-encryption key";
    let root = weft_ca::store::root_is_sealed(&**store)
        .await
        .context(reading)?;
    let keys = !weft_auth::keys::list(&**store)
        .await
        .context(reading)?
        .is_empty();
    let sealed = match (root, keys) {
        (false, false) => return Ok(weft_auth::Kek::create(path)?),
        (true, false) => "the store's CA root was",
        (false, true) => "the store's access keys' secrets were",
        (true, true) => "the store's CA root (and its access keys' secrets) was",
    };
    bail!(
        "the key-encryption key file {} does not exist, but {sealed} sealed under a \
         key-encryption key: the key that file should hold, the one the other servers on this \
         store use (their --auth-kek-file). Copy their file there (mode 0600); no new key was \
         created, since nothing sealed would open under it",
        path.display()
    )
}

/// The API's authentication: the administrator's key and its credentials file on a store
/// without keys, and whether requests are verified; secrets sealed under `kek`.
async fn authenticator(
    args: &ServerArgs,
    api_addr: SocketAddr,
    config: &ApiConfig,
    store: &SharedStore,
    kek: std::sync::Arc<weft_auth::Kek>,
) -> Result<(weft_auth::Authenticator, Option<PathBuf>)> {
    let credentials = args.data_dir.join(ADMIN_CREDENTIALS);
    let created =
        weft_auth::keys::bootstrap(&**store, &kek, &credentials, std::time::SystemTime::now())
            .await
            .context("creating the administrator's access key")?;
    if let Some(id) = &created {
        tracing::info!(key_id = %id, path = %credentials.display(), "created the administrator's access key; its credentials file is at the path");
    }
    let mode = if args.insecure_no_auth {
        tracing::warn!(
            "the API accepts every request unauthenticated (--insecure-no-auth): anyone who \
             reaches {api_addr} can read, change and delete every mesh, and create join tokens. For \
             local experiments only; without the flag requests must be signed (SigV4) with an \
             access key the server holds"
        );
        weft_auth::Mode::Insecure
    } else {
        weft_auth::Mode::Verify
    };
    let auth = weft_auth::Authenticator::new(
        mode,
        store.clone(),
        kek,
        &config.region,
        &config.account,
        config.max_body_bytes,
    );
    Ok((auth, created.map(|_| credentials)))
}

/// The operation label of a request the authenticator did not name: one of Weft's open
/// endpoints by path, anything else `other` (labels stay few whatever clients send).
fn open_operation(path: &str) -> String {
    match path {
        "/healthz"
        | "/readyz"
        | "/metrics"
        | "/weft/v1/proxy-status"
        | "/weft/v1/certificates"
        | "/weft/v1/trust-bundle" => format!("weft:{path}"),
        _ => "other".into(),
    }
}

/// `Success`, or the error's name as AWS's answer carries it (`x-amzn-ErrorType`), else the
/// HTTP status.
fn outcome(response: &axum::response::Response) -> String {
    let status = response.status();
    if status.is_success() {
        return "Success".into();
    }
    response
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.split(':').next().unwrap_or(t).to_string())
        .unwrap_or_else(|| status.as_u16().to_string())
}

/// The audit log in the data folder (every write and refused request; see `weft_auth::audit`).
fn audit_log(args: &ServerArgs) -> Result<std::sync::Arc<weft_auth::audit::AuditLog>> {
    let log = weft_auth::audit::AuditLog::open(&args.data_dir.join(weft_auth::audit::AUDIT_FILE))
        .context("opening the audit log")?;
    Ok(std::sync::Arc::new(log))
}

/// How long a stopping control plane waits for its tasks: past this, what
/// is still running (a request stuck on a hung disk, say) is abandoned, so
/// that SIGTERM always ends the process.
pub const STOP_BOUND: Duration = Duration::from_secs(10);

impl ControlPlane {
    /// Stops serving and waits for every task to end, for at most
    /// [`STOP_BOUND`].
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let tasks = self.tasks;
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(STOP_BOUND, all).await.is_err() {
            tracing::warn!(
                bound_secs = STOP_BOUND.as_secs(),
                "some tasks did not stop in time; exiting without them"
            );
        }
    }
}

/// `weft server`: serves until `shutdown` resolves.
pub async fn run(args: ServerArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let cp = start(&args).await?;
    // Plain lines on stdout so scripts and tests can find ports chosen with :0.
    println!("weft api listening on http://{}", cp.api_addr);
    println!("weft xds listening on {}", cp.xds_addr);
    println!("weft dns listening on {}", cp.dns_addr);
    if let Some(path) = &cp.admin_credentials {
        // The path only: the secret stays in the file.
        println!(
            "weft admin credentials written to {} (AWS_SHARED_CREDENTIALS_FILE={} aws appmesh …)",
            path.display(),
            path.display()
        );
    }
    if args.insecure_no_auth {
        println!("weft api UNAUTHENTICATED (--insecure-no-auth): any request is accepted");
    }
    shutdown.await;
    cp.stop().await;
    Ok(())
}

/// Binds the DNS server's UDP socket and TCP listener on one address; with
/// port 0, on one free port for both (a few tries: the port UDP got may be
/// taken for TCP).
async fn bind_dns(addr: SocketAddr) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let context = || format!("binding {addr} (the DNS address, --dns-listen)");
    let mut tries = if addr.port() == 0 { 8 } else { 1 };
    loop {
        let udp = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(context)?;
        let bound = udp.local_addr()?;
        match weft_listen::bind(bound) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(_) if tries > 1 => tries -= 1,
            Err(e) => return Err(e).with_context(context),
        }
    }
}

fn parse_quotas(items: &[String]) -> Result<Quotas> {
    let mut quotas = Quotas::default();
    for item in items {
        let Some((name, value)) = item.split_once('=') else {
            bail!("--quota expects NAME=VALUE, got {item:?}");
        };
        let value: usize = value
            .parse()
            .with_context(|| format!("quota {name}: {value:?} is not a number"))?;
        if !quotas.set(name, value) {
            bail!(
                "unknown quota {name:?}; known: {}",
                Quotas::NAMES.join(", ")
            );
        }
    }
    Ok(quotas)
}
