//! The SDS server Envoy reads the proxy's certificate, key and trust bundle from: gRPC
//! `envoy.service.secret.v3.SecretDiscoveryService` on a Unix socket
//! (`APPMESH_SDS_SOCKET_PATH`, as App Mesh's SPIRE integration used), reached through the
//! bootstrap's static cluster [`crate::bootstrap::SDS_CLUSTER`].
//!
//! It serves, with a workload identity (a join token), two secrets ([`SERVED`]):
//! - [`IDENTITY_SECRET`] (`weft-identity`): a `tls_certificate`, the certificate chain and the
//!   private key, inline;
//! - [`TRUST_BUNDLE_SECRET`] (`weft-trust-bundle`): a `validation_context`, the CA
//!   certificates to trust, inline;
//!
//! and, with or without one, the certificates of App Mesh's `file` TLS sources read from the
//! proxy's host ([`crate::file_secrets`]: `file-certificate:…`, `file-trust:…`).
//!
//! Both the state-of-the-world `StreamSecrets` (what Envoy uses for an `api_config_source` of
//! type `GRPC`) and the incremental `DeltaSecrets` are served, and `FetchSecrets` answers once.
//! Each renewal pushes the new secrets to every open stream (version: the certificate's
//! generation and serial, unique to it); Envoy swaps them for new connections and lets open
//! ones finish, so no request is dropped. Until the first certificate arrives nothing is sent
//! and Envoy waits (its listeners and clusters that need the secret stay warming). A secret
//! nobody serves is logged by name and left unanswered: Envoy waits for it, as it would for a
//! SPIRE agent that has no such entry.
//!
//! The socket is the key's only way out of the agent: it is `0600`, owned by Envoy's user
//! (`APPMESH_IGNORE_UID`/`GID`) when Envoy runs as another, and a connection from any user but
//! Envoy's, the agent's own or root is closed unanswered (the peer's credentials,
//! `SO_PEERCRED`, are checked at accept).

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSpecifier;
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use futures::StreamExt;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, warn};

use crate::error::AgentError;
use crate::file_secrets::FileSecrets;
use crate::identity::{Credentials, CredentialsWatch, IDENTITY_SECRET, TRUST_BUNDLE_SECRET};
use crate::launch::EnvoyIdentity;

/// The type URL of SDS resources.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The secrets this server has.
pub const SERVED: [&str; 2] = [IDENTITY_SECRET, TRUST_BUNDLE_SECRET];
/// The longest path a Unix socket address holds (`sun_path`, with its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

fn inline(text: String) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(DataSpecifier::InlineBytes(text.into_bytes())),
        ..Default::default()
    })
}

/// The secret `name` made of `credentials`; `None` for a name this server does not have.
pub fn secret(name: &str, credentials: &Credentials) -> Option<Secret> {
    let r#type = match name {
        IDENTITY_SECRET => SecretType::TlsCertificate(TlsCertificate {
            certificate_chain: inline(credentials.certificate_chain()),
            private_key: inline(credentials.private_key_pem()),
            ..Default::default()
        }),
        TRUST_BUNDLE_SECRET => SecretType::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(credentials.trust_bundle.clone()),
            ..Default::default()
        }),
        _ => return None,
    };
    Some(Secret {
        name: name.to_string(),
        r#type: Some(r#type),
    })
}

fn pack(secret: Secret) -> Any {
    envoy_types::util::pack_any(secret)
}

/// Whether this server has (or will have) a secret of that name.
fn serves(name: &str) -> bool {
    SERVED.contains(&name) || FileSecrets::serves(name)
}

/// Logs, once per stream, each requested secret this server does not have.
fn note_unknown<'a>(names: impl IntoIterator<Item = &'a String>, warned: &mut BTreeSet<String>) {
    for name in names {
        if !serves(name) && warned.insert(name.clone()) {
            warn!(secret = %name,
                  "Envoy asked for the SDS secret {name:?}, which this agent does not serve (it serves {IDENTITY_SECRET} and {TRUST_BUNDLE_SECRET}); Envoy waits for it, and whatever needs it stays unready");
        }
    }
}

/// Where the served secrets come from: the identity agent's credentials (never published
/// without a join token) and the files `file` TLS sources name.
#[derive(Clone)]
pub struct Sources {
    /// The workload identity, as the identity agent publishes it.
    pub credentials: CredentialsWatch,
    /// Certificates read from files.
    pub files: FileSecrets,
}

impl Sources {
    /// The secret `name` with its version, if it is there now.
    fn lookup(&self, name: &str, credentials: Option<&Credentials>) -> Option<(String, Secret)> {
        if SERVED.contains(&name) {
            let credentials = credentials?;
            return Some((credentials.version(), secret(name, credentials)?));
        }
        self.files.get(name)
    }

    /// Each of `names` that is there now, with its version, in order.
    fn available(&self, names: &[String]) -> Vec<(String, Secret)> {
        let credentials = self.credentials.borrow().clone();
        names
            .iter()
            .filter_map(|n| self.lookup(n, credentials.as_deref()))
            .collect()
    }
}

/// One response's version: its secrets' distinct versions together (the identity's two
/// secrets share theirs).
fn version_of<'a>(versions: impl IntoIterator<Item = &'a str>) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for v in versions {
        if !distinct.contains(&v) {
            distinct.push(v);
        }
    }
    distinct.join("/")
}

/// The gRPC service over [`Sources`].
#[derive(Clone)]
pub struct SdsService {
    sources: Sources,
}

impl SdsService {
    /// A service serving `sources` as they change.
    pub fn new(sources: Sources) -> Self {
        SdsService { sources }
    }
}

type Responses<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = Responses<DeltaDiscoveryResponse>;
    type StreamSecretsStream = Responses<DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(sotw(request.into_inner(), self.sources.clone(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(delta(request.into_inner(), self.sources.clone(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let request = request.into_inner();
        note_unknown(&request.resource_names, &mut BTreeSet::new());
        let available = self.sources.available(&wanted(&request.resource_names));
        if available.is_empty() {
            return Err(Status::unavailable(
                "none of these secrets is there yet: the agent is still getting the proxy's \
                 certificate from Weft's CA, or cannot read the files named",
            ));
        }
        Ok(Response::new(DiscoveryResponse {
            version_info: version_of(available.iter().map(|(v, _)| v.as_str())),
            resources: available.into_iter().map(|(_, s)| pack(s)).collect(),
            type_url: SECRET_TYPE_URL.into(),
            nonce: "fetch".into(),
            ..Default::default()
        }))
    }
}

/// The served secrets among `names`, in order; all of them for an empty list (a wildcard).
fn wanted(names: &[String]) -> Vec<String> {
    if names.is_empty() {
        return SERVED.iter().map(|n| n.to_string()).collect();
    }
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if serves(name) && !out.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

fn wrong_type(type_url: &str) -> Option<Status> {
    (!type_url.is_empty() && type_url != SECRET_TYPE_URL).then(|| {
        warn!(
            type_url,
            "an SDS client asked for another type than secrets"
        );
        Status::invalid_argument(format!(
            "this is an SDS server: it serves {SECRET_TYPE_URL}, not {type_url}"
        ))
    })
}

/// Waits for a new certificate or a changed certificate file; `false` once either source is
/// gone.
async fn sources_changed(
    credentials: &mut CredentialsWatch,
    files: &mut tokio::sync::watch::Receiver<u64>,
) -> bool {
    tokio::select! {
        changed = credentials.changed() => changed.is_ok(),
        changed = files.changed() => changed.is_ok(),
    }
}

/// One `StreamSecrets` call: answers each change of the requested names, and each new
/// certificate (a renewal, a file changed on disk), with every requested secret it has.
async fn sotw(
    mut requests: Streaming<DiscoveryRequest>,
    sources: Sources,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
    let mut credentials = sources.credentials.clone();
    let mut files = sources.files.subscribe();
    let mut names: Option<Vec<String>> = None;
    let mut sent: Option<Vec<(String, String)>> = None;
    let mut nonce = 0u64;
    let mut warned = BTreeSet::new();
    loop {
        tokio::select! {
            request = requests.message() => {
                let request = match request {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(status) => {
                        debug!(%status, "SDS stream ended");
                        return;
                    }
                };
                if let Some(status) = wrong_type(&request.type_url) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                if let Some(e) = &request.error_detail {
                    warn!(secrets = ?request.resource_names, version = %request.version_info,
                          error = %e.message, "Envoy rejected the secrets it was sent");
                } else if !request.response_nonce.is_empty() {
                    debug!(secrets = ?request.resource_names, version = %request.version_info,
                           "Envoy took the secrets");
                }
                note_unknown(&request.resource_names, &mut warned);
                names = Some(wanted(&request.resource_names));
            }
            live = sources_changed(&mut credentials, &mut files) => {
                if !live {
                    // The identity agent or the file watcher stopped: the agent is going away.
                    return;
                }
            }
            _ = tx.closed() => return,
        }
        let Some(wanted) = &names else { continue };
        credentials.borrow_and_update();
        files.borrow_and_update();
        let available = sources.available(wanted);
        let key: Vec<(String, String)> = available
            .iter()
            .map(|(v, s)| (s.name.clone(), v.clone()))
            .collect();
        if available.is_empty() || sent.as_ref() == Some(&key) {
            continue;
        }
        nonce += 1;
        let version = version_of(available.iter().map(|(v, _)| v.as_str()));
        debug!(secrets = ?wanted, %version, "sending secrets to Envoy");
        let response = DiscoveryResponse {
            version_info: version,
            resources: available.into_iter().map(|(_, s)| pack(s)).collect(),
            type_url: SECRET_TYPE_URL.into(),
            nonce: nonce.to_string(),
            ..Default::default()
        };
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
        sent = Some(key);
    }
}

/// One `DeltaSecrets` call: sends each subscribed secret whose version Envoy does not have.
async fn delta(
    mut requests: Streaming<DeltaDiscoveryRequest>,
    sources: Sources,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let mut credentials = sources.credentials.clone();
    let mut files = sources.files.subscribe();
    let mut subscribed: BTreeSet<String> = BTreeSet::new();
    let mut wildcard = false;
    let mut first = true;
    // The version of each secret Envoy holds.
    let mut held: HashMap<String, String> = HashMap::new();
    let mut nonce = 0u64;
    let mut warned = BTreeSet::new();
    loop {
        tokio::select! {
            request = requests.message() => {
                let request = match request {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(status) => {
                        debug!(%status, "SDS stream ended");
                        return;
                    }
                };
                if let Some(status) = wrong_type(&request.type_url) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                if let Some(e) = &request.error_detail {
                    warn!(error = %e.message, "Envoy rejected the secrets it was sent");
                }
                if first {
                    wildcard = request.resource_names_subscribe.is_empty();
                    held.extend(request.initial_resource_versions.clone());
                    first = false;
                }
                for name in &request.resource_names_subscribe {
                    if name == "*" {
                        wildcard = true;
                    } else {
                        subscribed.insert(name.clone());
                    }
                }
                for name in &request.resource_names_unsubscribe {
                    if name == "*" {
                        wildcard = false;
                    } else {
                        subscribed.remove(name);
                    }
                    held.remove(name);
                }
                note_unknown(&request.resource_names_subscribe, &mut warned);
            }
            live = sources_changed(&mut credentials, &mut files) => {
                if !live {
                    // The identity agent or the file watcher stopped: the agent is going away.
                    return;
                }
            }
            _ = tx.closed() => return,
        }
        credentials.borrow_and_update();
        files.borrow_and_update();
        let names: Vec<String> = if wildcard {
            SERVED
                .iter()
                .map(|n| n.to_string())
                .chain(subscribed.iter().cloned())
                .collect()
        } else {
            subscribed.iter().cloned().collect()
        };
        if names.is_empty() {
            continue;
        }
        let resources: Vec<DeltaResource> = sources
            .available(&wanted(&names))
            .into_iter()
            .filter(|(version, s)| held.get(&s.name) != Some(version))
            .map(|(version, s)| DeltaResource {
                name: s.name.clone(),
                version,
                resource: Some(pack(s)),
                ..Default::default()
            })
            .collect();
        if resources.is_empty() {
            continue;
        }
        nonce += 1;
        for r in &resources {
            held.insert(r.name.clone(), r.version.clone());
        }
        let response = DeltaDiscoveryResponse {
            system_version_info: version_of(resources.iter().map(|r| r.version.as_str())),
            resources,
            type_url: SECRET_TYPE_URL.into(),
            nonce: nonce.to_string(),
            ..Default::default()
        };
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
}

/// The SDS server on its socket; stopping it (dropping it) removes the socket.
pub struct SdsServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
    refresh: tokio::task::JoinHandle<()>,
    _stop: oneshot::Sender<()>,
    /// Without a workload identity, the credentials' sender: kept, never used, so that the
    /// streams watching it stay open.
    _no_identity: Option<tokio::sync::watch::Sender<Option<Arc<Credentials>>>>,
}

impl SdsServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SdsServer {
    fn drop(&mut self) {
        self.task.abort();
        self.refresh.abort();
        if is_socket(&self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

/// Binds the socket at `path` for Envoy running as `envoy` (see the module's doc for who may
/// connect) and serves `credentials` on it.
pub fn serve(path: &Path, envoy: EnvoyIdentity, sources: Sources) -> Result<SdsServer, AgentError> {
    const SETTING: &str = "APPMESH_SDS_SOCKET_PATH (--sds-socket-path)";
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(AgentError::config(
            SETTING,
            format!(
                "{} is longer than a Unix socket path may be ({MAX_SOCKET_PATH} bytes)",
                path.display()
            ),
        ));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| AgentError::io(format!("creating {}", parent.display()), e))?;
    }
    // A socket left by an agent that was killed is replaced; anything else is not ours.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .map_err(|e| AgentError::io(format!("removing the stale {}", path.display()), e))?,
        Ok(_) => {
            return Err(AgentError::config(
                SETTING,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| AgentError::io(format!("binding the SDS socket {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| AgentError::io(format!("restricting {}", path.display()), e))?;
    if !envoy.is_unchanged() {
        std::os::unix::fs::chown(path, envoy.uid, envoy.gid).map_err(|e| {
            AgentError::io(format!("giving {} to Envoy's identity", path.display()), e)
        })?;
    }
    let own = nix::unistd::geteuid().as_raw();
    let allowed: Arc<[u32]> = [Some(0), Some(own), envoy.uid]
        .into_iter()
        .flatten()
        .collect();
    let incoming = UnixListenerStream::new(listener).filter_map(move |conn| {
        let allowed = allowed.clone();
        async move {
            let conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    warn!(error = %e, "accepting an SDS connection failed");
                    return None;
                }
            };
            match conn.peer_cred() {
                Ok(peer) if allowed.contains(&peer.uid()) => Some(Ok::<_, std::io::Error>(conn)),
                Ok(peer) => {
                    warn!(uid = peer.uid(), pid = ?peer.pid(),
                          "closed an SDS connection from a user that is not Envoy's: only Envoy gets the proxy's key");
                    None
                }
                Err(e) => {
                    warn!(error = %e, "closed an SDS connection whose peer is unknown");
                    None
                }
            }
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let files = sources.files.clone();
    let service = SecretDiscoveryServiceServer::new(SdsService::new(sources));
    let shown = path.display().to_string();
    let task = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            error!(socket = %shown, error = %e, "the SDS server stopped");
        }
    });
    info!(socket = %path.display(), "SDS server listening for Envoy");
    Ok(SdsServer {
        path: path.to_path_buf(),
        task,
        refresh: files.spawn_refresh(crate::file_secrets::POLL_INTERVAL),
        _stop: stop,
        _no_identity: None,
    })
}

/// [`serve`] for a proxy without a workload identity: only the certificates in files.
pub fn serve_without_identity(
    path: &Path,
    envoy: EnvoyIdentity,
    files: FileSecrets,
) -> Result<SdsServer, AgentError> {
    let (sender, credentials) = tokio::sync::watch::channel(None);
    let mut server = serve(path, envoy, Sources { credentials, files })?;
    server._no_identity = Some(sender);
    Ok(server)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Duration;

    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    use prost::Message;
    use tokio::sync::watch;
    use tonic::transport::Channel;

    use crate::identity::test_credentials;

    type Publish = watch::Sender<Option<Arc<Credentials>>>;

    fn server(dir: &Path) -> (SdsServer, Publish) {
        let (publish, credentials) = watch::channel(None);
        let sources = Sources {
            credentials,
            files: FileSecrets::default(),
        };
        let server = serve(&dir.join("sds.sock"), EnvoyIdentity::default(), sources).unwrap();
        (server, publish)
    }

    async fn client(path: &Path) -> SecretDiscoveryServiceClient<Channel> {
        let path = path.to_path_buf();
        let channel = tonic::transport::Endpoint::from_static("http://sds.local")
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        SecretDiscoveryServiceClient::new(channel)
    }

    fn request(names: &[&str], nonce: &str, version: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: SECRET_TYPE_URL.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn secrets(resources: &[Any]) -> Vec<Secret> {
        resources
            .iter()
            .map(|any| {
                assert_eq!(any.type_url, SECRET_TYPE_URL);
                Secret::decode(any.value.as_slice()).unwrap()
            })
            .collect()
    }

    fn inline_text(source: &Option<DataSource>) -> String {
        match source.as_ref().and_then(|s| s.specifier.as_ref()) {
            Some(DataSpecifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("not inline: {other:?}"),
        }
    }

    async fn nothing_within<T: std::fmt::Debug>(stream: &mut Streaming<T>, wait: Duration) {
        if let Ok(got) = tokio::time::timeout(wait, stream.message()).await {
            panic!("expected nothing, got {got:?}");
        }
    }

    #[tokio::test]
    async fn stream_secrets_waits_for_the_certificate_then_pushes_each_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let (server, publish) = server(dir.path());
        let mut client = client(server.path()).await;
        let (tx, rx) = mpsc::channel(4);
        tx.send(request(
            &[IDENTITY_SECRET, TRUST_BUNDLE_SECRET, "spiffe://apps/other"],
            "",
            "",
        ))
        .await
        .unwrap();
        let mut responses = client
            .stream_secrets(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        // No certificate yet: Envoy waits.
        nothing_within(&mut responses, Duration::from_millis(300)).await;

        let first = Arc::new(test_credentials(1));
        publish.send_replace(Some(first.clone()));
        let response = responses.message().await.unwrap().unwrap();
        assert_eq!(response.version_info, "1-01");
        let got = secrets(&response.resources);
        assert_eq!(got.len(), 2, "the unknown name is not answered");
        assert_eq!(got[0].name, IDENTITY_SECRET);
        let Some(SecretType::TlsCertificate(tls)) = &got[0].r#type else {
            panic!("{:?}", got[0])
        };
        assert_eq!(
            inline_text(&tls.certificate_chain),
            first.certificate_chain()
        );
        assert!(inline_text(&tls.private_key).contains("BEGIN PRIVATE KEY"));
        let Some(SecretType::ValidationContext(trust)) = &got[1].r#type else {
            panic!("{:?}", got[1])
        };
        assert_eq!(inline_text(&trust.trusted_ca), first.trust_bundle);

        // The ACK asks for nothing new.
        tx.send(request(
            &[IDENTITY_SECRET, TRUST_BUNDLE_SECRET, "spiffe://apps/other"],
            &response.nonce,
            "1",
        ))
        .await
        .unwrap();
        nothing_within(&mut responses, Duration::from_millis(300)).await;

        // A renewal is pushed.
        let second = Arc::new(test_credentials(2));
        publish.send_replace(Some(second.clone()));
        let response = responses.message().await.unwrap().unwrap();
        assert_eq!(response.version_info, "2-02");
        let got = secrets(&response.resources);
        let Some(SecretType::TlsCertificate(tls)) = &got[0].r#type else {
            panic!("{:?}", got[0])
        };
        assert_eq!(
            inline_text(&tls.certificate_chain),
            second.certificate_chain()
        );
    }

    #[tokio::test]
    async fn delta_secrets_sends_what_is_subscribed_and_not_yet_held() {
        let dir = tempfile::tempdir().unwrap();
        let (server, publish) = server(dir.path());
        publish.send_replace(Some(Arc::new(test_credentials(1))));
        let mut client = client(server.path()).await;
        let (tx, rx) = mpsc::channel(4);
        let subscribe = |names: &[&str], nonce: &str| DeltaDiscoveryRequest {
            type_url: SECRET_TYPE_URL.into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        tx.send(subscribe(&[IDENTITY_SECRET], "")).await.unwrap();
        let mut responses = client
            .delta_secrets(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        let names: Vec<_> = response.resources.iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, [IDENTITY_SECRET]);
        assert_eq!(response.resources[0].version, "1-01");
        tx.send(subscribe(&[TRUST_BUNDLE_SECRET], &response.nonce))
            .await
            .unwrap();
        let response = responses.message().await.unwrap().unwrap();
        let names: Vec<_> = response.resources.iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, [TRUST_BUNDLE_SECRET]);
        publish.send_replace(Some(Arc::new(test_credentials(2))));
        let response = responses.message().await.unwrap().unwrap();
        let names: Vec<_> = response.resources.iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, [IDENTITY_SECRET, TRUST_BUNDLE_SECRET]);
        assert_eq!(response.system_version_info, "2-02");
    }

    #[tokio::test]
    async fn fetch_answers_once_and_is_unavailable_before_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (server, publish) = server(dir.path());
        let mut client = client(server.path()).await;
        let status = client
            .fetch_secrets(request(&[IDENTITY_SECRET], "", ""))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        publish.send_replace(Some(Arc::new(test_credentials(3))));
        let response = client
            .fetch_secrets(request(&[TRUST_BUNDLE_SECRET], "", ""))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.version_info, "3-03");
        assert_eq!(secrets(&response.resources)[0].name, TRUST_BUNDLE_SECRET);
    }

    #[tokio::test]
    async fn the_socket_is_private_replaces_a_stale_one_and_goes_with_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sds.sock");
        // A socket left behind by a killed agent.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        let (server, _publish) = server(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        drop(server);
        assert!(
            !path.exists(),
            "the socket is removed when the server stops"
        );
        // A file that is not a socket is never removed.
        std::fs::write(&path, "data").unwrap();
        let (_, credentials) = watch::channel(None);
        let sources = Sources {
            credentials,
            files: FileSecrets::default(),
        };
        let err = serve(&path, EnvoyIdentity::default(), sources)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }
}
