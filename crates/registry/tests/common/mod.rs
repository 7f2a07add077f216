//! The registry served in-process on a free loopback port over a real
//! embedded store, and official AWS SDK clients pointed at it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_servicediscovery::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_servicediscovery::config::{
    BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
};
use aws_sdk_servicediscovery::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_servicediscovery::Client;
use weft_registry::{RegistryConfig, RegistryService};
use weft_store::{EmbeddedOptions, EmbeddedStore, SharedStore};

/// Which wire protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// awsJson 1.1: what aws-sdk-servicediscovery sends by default.
    Json,
    /// Smithy RPC v2 CBOR: the model's first protocol, selected on the same SDK.
    Cbor,
}

/// A running registry.
pub struct Registry {
    pub addr: String,
    pub service: RegistryService,
    pub store: Arc<EmbeddedStore>,
    pub data_dir: PathBuf,
    server: tokio::task::JoinHandle<()>,
    _tmp: Option<tempfile::TempDir>,
}

impl Registry {
    /// Serves a registry on a fresh store.
    pub async fn start() -> Registry {
        Self::start_with(RegistryConfig::default()).await
    }

    /// Serves a registry on a fresh store with the given settings.
    pub async fn start_with(config: RegistryConfig) -> Registry {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut r = Self::start_in(&dir, config).await;
        r._tmp = Some(tmp);
        r
    }

    /// Serves a registry on the store in `dir` (for restart scenarios).
    pub async fn start_in(dir: &Path, config: RegistryConfig) -> Registry {
        let store = EmbeddedStore::open(EmbeddedOptions::new(dir))
            .await
            .unwrap();
        let shared: SharedStore = store.clone();
        let service = RegistryService::new(shared, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let app = weft_registry::router(service.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Registry {
            addr,
            service,
            store,
            data_dir: dir.to_path_buf(),
            server,
            _tmp: None,
        }
    }

    /// An SDK client speaking `protocol` to this registry.
    pub fn client(&self, protocol: Protocol) -> Client {
        client(&self.addr, protocol)
    }

    /// Stops serving; the store folder stays (kept alive by the caller's tempdir).
    pub fn stop(self) -> Option<tempfile::TempDir> {
        self.server.abort();
        self._tmp
    }
}

/// DiscoverInstances carries the model's `hostPrefix: "data-"`, which the SDK
/// prepends to the endpoint's host even when the endpoint is overridden
/// (`data-127.0.0.1` does not resolve). Real deployments point a `data-`
/// name at Weft; the tests undo the prefix just before the request leaves.
///
/// It also checks that each request really travels in the protocol the
/// client was built for, so a scenario cannot pass over the wrong one.
#[derive(Debug)]
struct UndoHostPrefix(Protocol);

impl Intercept for UndoHostPrefix {
    fn name(&self) -> &'static str {
        "UndoHostPrefix"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        let uri = request.uri().to_string();
        let headers = request.headers();
        let on_the_wire = match self.0 {
            Protocol::Json => {
                uri.ends_with('/')
                    && headers.get("content-type") == Some("application/x-amz-json-1.1")
                    && headers
                        .get("x-amz-target")
                        .is_some_and(|t| t.starts_with("Route53AutoNaming_v20170314."))
            }
            Protocol::Cbor => {
                uri.contains("/service/Route53AutoNaming_v20170314/operation/")
                    && headers.get("smithy-protocol") == Some("rpc-v2-cbor")
            }
        };
        if !on_the_wire {
            return Err(format!("{:?} client sent {uri} with {headers:?}", self.0).into());
        }
        if uri.contains("://data-") {
            context
                .request_mut()
                .set_uri(uri.replacen("://data-", "://", 1))?;
        }
        Ok(())
    }
}

/// An official SDK client for the registry at `endpoint`.
pub fn client(endpoint: &str, protocol: Protocol) -> Client {
    let mut config = aws_sdk_servicediscovery::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("weft", "weft", None, None, "static"))
        .endpoint_url(endpoint)
        .interceptor(UndoHostPrefix(protocol));
    if protocol == Protocol::Cbor {
        config = config.protocol(aws_smithy_cbor::protocol::RpcV2CborProtocol::new());
    }
    Client::from_conf(config.build())
}

/// The Cloud Map error code of a failed call (panics on success).
pub fn code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    result: Result<T, SdkError<E, R>>,
) -> String {
    let err = result.expect_err("the call should have failed");
    match err.as_service_error() {
        Some(e) => e.code().unwrap_or("<no code>").to_string(),
        None => panic!("not a service error: {err:?}"),
    }
}

/// The message of a failed call.
pub fn message<
    T: std::fmt::Debug,
    E: ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
>(
    result: Result<T, SdkError<E, R>>,
) -> String {
    let err = result.expect_err("the call should have failed");
    err.as_service_error()
        .and_then(|e| e.message())
        .unwrap_or_default()
        .to_string()
}
