//! Mutual TLS on the xDS listener (`weft server --xds-tls`): the server presents a certificate
//! from Weft's own CA, every client must present a workload certificate the CA's trust bundle
//! verifies, and the resource its SPIFFE id names goes with each request (as
//! [`weft_xds::PeerIdentity`]) so that a proxy only ever gets its own config.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context as _, Result};
use futures::{Stream, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;
use weft_ca::{Authority, CaService, Resource};
use weft_listen::grpc::Guarded;
use weft_xds::PeerIdentity;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long the xDS server's own certificate is valid (it is made again at each start).
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; more wait their turn.
const CONCURRENT_HANDSHAKES: usize = 256;

/// The TLS configuration of the xDS listener: a server certificate from `authority` naming
/// `names` (and the server's SPIFFE id), client certificates required and verified against
/// the authority's trust bundle, HTTP/2 only.
pub fn server_config(authority: &Authority, names: &[String]) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let (chain_pem, key_pem) = authority
        .issue_server(names, SystemTime::now(), SERVER_CERT_LIFETIME)
        .context("issuing the xDS server's certificate")?;
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("the xDS server's certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| anyhow!("the xDS server's key: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(authority.trust_bundle_pem().as_bytes()) {
        let cert = cert.map_err(|e| anyhow!("the CA's trust bundle: {e}"))?;
        roots
            .add(cert)
            .context("the CA's trust bundle holds a certificate rustls refuses")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("the client certificate verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("the xDS server's certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The resource a workload certificate's SPIFFE id names (if it has one of `authority`'s trust
/// domain) and the end of its validity.
fn certificate_holder(authority: &Authority, der: &[u8]) -> Option<(Resource, SystemTime)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .ok()
        .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))?;
    let san = cert.subject_alternative_name().ok()??;
    let resource = san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => Resource::from_spiffe_id(uri, authority.trust_domain()),
        _ => None,
    })?;
    Some((resource, not_after))
}

/// An authenticated xDS connection: TLS over a guarded TCP connection, and who is at the
/// other end. It ends when the client's certificate expires: a proxy's identity is checked
/// again at least once per certificate lifetime (its Envoy reconnects with the certificate it
/// renewed at half life, keeping its config meanwhile), and a proxy whose resource was
/// deleted, which the CA no longer renews, is shut out once its last certificate ends.
pub struct TlsConn {
    io: TlsStream<Guarded>,
    peer: PeerIdentity,
    expiry: Pin<Box<tokio::time::Sleep>>,
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expiry.as_mut().poll(cx).is_ready() {
            tracing::info!(resource = %this.peer.resource, remote = ?this.peer.remote,
                "closing an xDS connection: the client's certificate expired");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client's certificate expired",
            )));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

/// One handshake: the connection with its peer's identity, or why it was dropped.
async fn accept(acceptor: TlsAcceptor, ca: CaService, conn: Guarded) -> Result<TlsConn, String> {
    let remote = conn.connect_info().remote_addr();
    let io = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn))
        .await
        .map_err(|_| format!("{remote:?}: TLS handshake timed out"))?
        .map_err(|e| format!("{remote:?}: TLS handshake failed: {e}"))?;
    let (resource, not_after) = io
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| certificate_holder(ca.authority(), leaf.as_ref()))
        .ok_or_else(|| {
            format!("{remote:?}: the client certificate names no proxy of this trust domain")
        })?;
    let left = not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Ok(TlsConn {
        io,
        peer: PeerIdentity {
            remote,
            resource: resource.path(),
        },
        expiry: Box::pin(tokio::time::sleep(left)),
    })
}

/// The authenticated connections of `incoming`: each TLS handshake runs beside the others
/// (bounded in time and number); a failed one is logged and the connection dropped.
pub fn incoming(
    incoming: impl Stream<Item = io::Result<Guarded>> + Send + 'static,
    config: Arc<ServerConfig>,
    ca: CaService,
) -> impl Stream<Item = io::Result<TlsConn>> + Send + 'static {
    let acceptor = TlsAcceptor::from(config);
    // A client retrying (or flooding) the port with bad handshakes costs it, not the log: at
    // most one line a second, with how many were left out.
    let refusals = Arc::new(weft_listen::Throttled::new(Duration::from_secs(1)));
    incoming
        .filter_map(|conn| async move { conn.ok() })
        .map(move |conn| accept(acceptor.clone(), ca.clone(), conn))
        .buffer_unordered(CONCURRENT_HANDSHAKES)
        .filter_map(move |accepted| {
            let refusals = refusals.clone();
            async move {
                match accepted {
                    Ok(conn) => Some(Ok(conn)),
                    Err(why) => {
                        if let Some(suppressed) = refusals.due() {
                            tracing::info!(suppressed, "xDS connection refused: {why}");
                        }
                        None
                    }
                }
            }
        })
}
