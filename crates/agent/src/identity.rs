//! The proxy's workload identity: a key that never leaves the host, a certificate from Weft's
//! CA, renewed before it expires.
//!
//! - **The key** is an ECDSA P-256 key generated here, in memory ([`rcgen::KeyPair`]); it is
//!   never written to disk and never logged. Envoy gets it over SDS, inline, through a Unix
//!   socket only Envoy's user can connect to ([`crate::sds`]). Every renewal makes a new key.
//! - **The CSR** names nothing: the CA decides every name in the certificate (the SPIFFE id of
//!   the resource the credential grants, and its DNS names), see [`weft_ca::csr`].
//! - **Who the agent is**: the first time, the operator's join token for this virtual node or
//!   gateway (`WEFT_JOIN_TOKEN` or a file, `WEFT_JOIN_TOKEN_FILE`, read again each time it is
//!   needed so that a replaced file takes effect); afterwards the current certificate and a
//!   proof by its key ([`weft_ca::renewal`]).
//! - **Renewal** at the CA's `renewAfter`, half the certificate's life, and never before half of
//!   what is left when it arrives ([`renew_at`]). A failed renewal is retried with backoff
//!   while the current certificate keeps serving. When the CA no longer accepts the current
//!   certificate (its CA was replaced, or it expired), the agent joins again with the token.
//! - **A refused token at start** (unknown, wrong, expired or revoked, or one for another
//!   resource) ends the agent with an error naming the token by its id: that is a
//!   configuration error, like a wrong ARN. A CA that cannot be reached is waited for.
//!
//! Tokens are logged by their id only (`weft-jt.<id>.…`); keys, token secrets and PEM are never
//! logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use tokio::sync::watch;
use tracing::{error, info, warn};
use weft_ca::http::CertificateJson;

use crate::ca_client::{request_certificate, CaCallError, Credential};
use crate::error::AgentError;
use crate::launch::EnvoyIdentity;
use crate::sds::SdsServer;

/// The SDS secret with the proxy's certificate chain and key (a `tls_certificate`).
pub const IDENTITY_SECRET: &str = "weft-identity";
/// The SDS secret with the CA certificates to trust (a `validation_context`).
pub const TRUST_BUNDLE_SECRET: &str = "weft-trust-bundle";
/// The SDS socket's file name in the run folder when `APPMESH_SDS_SOCKET_PATH` is unset.
pub const SDS_SOCKET_FILE: &str = "sds.sock";
/// The CA's port when `WEFT_CA_SERVER` is unset: `weft server`'s API port.
pub const DEFAULT_CA_PORT: u16 = 9080;

/// First delay before retrying a failed call to the CA; doubles per failure.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between retries while the CA is unavailable.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Longest delay between retries after a refusal (it needs the operator: a new token, a
/// recreated resource).
const MAX_RETRY_REFUSED: Duration = Duration::from_secs(60);
/// The longest single sleep while waiting for a renewal time: the wall clock is read again
/// after it, so a clock step or a suspended host does not push renewal past expiry.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A join token, `weft-jt.<id>.<secret>`. Its `Debug` and `Display` show the id only.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    text: String,
    id: String,
}

impl JoinToken {
    /// Checks the form of a token (the CA checks the rest). The error never repeats the text.
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        let presented = weft_ca::token::parse(text).map_err(|_| {
            "is not a Weft join token (`weft-jt.<id>.<secret>`, as `weft join-token create` \
             prints it)"
                .to_string()
        })?;
        Ok(JoinToken {
            text: text.trim().to_string(),
            id: presented.id,
        })
    }

    /// The token's public id (what `weft join-token list` shows and `revoke` takes).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The whole token, for the `Authorization` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({}, secret hidden)", self.id)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.id)
    }
}

/// Where the join token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Given as a value (`WEFT_JOIN_TOKEN`, `--join-token`).
    Value(JoinToken),
    /// A file holding it (`WEFT_JOIN_TOKEN_FILE`, `--join-token-file`), read each time the agent
    /// joins, so that an operator (or a secret mount) can replace it.
    File(PathBuf),
}

impl TokenSource {
    /// The token now.
    pub fn read(&self) -> Result<JoinToken, String> {
        match self {
            TokenSource::Value(token) => Ok(token.clone()),
            TokenSource::File(path) => read_token_file(path),
        }
    }
}

fn read_token_file(path: &Path) -> Result<JoinToken, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the join token file {}: {e}", path.display()))?;
    JoinToken::parse(&text).map_err(|e| format!("the join token file {}: {e}", path.display()))
}

/// Weft's CA: the server's API address. It speaks plain HTTP (as `weft join-token` does).
/// Several replicas' addresses may be given: a call that cannot reach one tries the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaServer {
    authority: String,
    /// The other replicas' `host:port`, tried in order after `authority`.
    more: Vec<String>,
}

impl CaServer {
    /// `http://host:port`, or `host:port`; several as a comma-separated list.
    pub fn parse(text: &str) -> Result<CaServer, String> {
        let mut all = text
            .split(',')
            .filter(|part| !part.trim().is_empty())
            .map(Self::parse_one);
        let Some(first) = all.next() else {
            return Err(format!(
                "{text:?} names no CA (e.g. http://weft.local:9080)"
            ));
        };
        let mut server = first?;
        for next in all {
            server.more.push(next?.authority);
        }
        Ok(server)
    }

    fn parse_one(text: &str) -> Result<CaServer, String> {
        let t = text.trim();
        if t.starts_with("https://") {
            return Err(format!(
                "{t:?}: the CA is on weft server's API listener, which speaks plain HTTP; \
                 write http://host:port"
            ));
        }
        let authority = t.strip_prefix("http://").unwrap_or(t).trim_end_matches('/');
        let endpoint: crate::config::XdsEndpoint = authority
            .parse()
            .map_err(|_| format!("{t:?} is not http://host:port (e.g. http://weft.local:9080)"))?;
        Ok(CaServer {
            authority: endpoint.to_string(),
            more: Vec::new(),
        })
    }

    /// The CA beside the xDS server: the same host, `weft server`'s API port.
    pub fn beside(xds: &crate::config::XdsEndpoint) -> CaServer {
        let endpoint = crate::config::XdsEndpoint {
            host: xds.host.clone(),
            port: DEFAULT_CA_PORT,
        };
        CaServer {
            authority: endpoint.to_string(),
            more: Vec::new(),
        }
    }

    /// The CA beside each xDS server (replica), in the order given: each host, `weft server`'s
    /// API port, once each.
    pub fn beside_each<'a>(
        xds: impl IntoIterator<Item = &'a crate::config::XdsEndpoint>,
    ) -> CaServer {
        let mut all = xds.into_iter().map(|e| Self::beside(e).authority);
        let authority = all
            .next()
            .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_CA_PORT}"));
        let mut more: Vec<String> = Vec::new();
        for a in all {
            if a != authority && !more.contains(&a) {
                more.push(a);
            }
        }
        CaServer { authority, more }
    }

    /// `host:port` of the first.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Every `host:port`, the first first.
    pub fn authorities(&self) -> impl Iterator<Item = &str> + '_ {
        std::iter::once(self.authority.as_str()).chain(self.more.iter().map(String::as_str))
    }
}

impl std::fmt::Display for CaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority)?;
        for more in &self.more {
            write!(f, ",http://{more}")?;
        }
        Ok(())
    }
}

/// Workload identity settings; present when a join token is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// The join token.
    pub token: TokenSource,
    /// Weft's CA.
    pub ca_server: CaServer,
}

/// What the CA issued, with the key it was issued for.
pub struct Credentials {
    /// 1 for the first certificate, one more per renewal.
    pub generation: u64,
    /// The SPIFFE id in the certificate.
    pub spiffe_id: String,
    /// The certificate's serial number (hex, as the CA gives it).
    pub serial: String,
    /// The leaf certificate (PEM).
    pub certificate: String,
    /// Certificates between the leaf and the trust bundle (PEM, often empty).
    pub chain: String,
    /// The CA certificates to trust (PEM).
    pub trust_bundle: String,
    /// End of validity.
    pub not_after: SystemTime,
    /// When to renew.
    pub renew_at: SystemTime,
    key: rcgen::KeyPair,
}

impl Credentials {
    /// The leaf then its chain (PEM): Envoy's `certificate_chain`.
    pub fn certificate_chain(&self) -> String {
        let mut chain = self.certificate.trim_end().to_string();
        chain.push('\n');
        if !self.chain.trim().is_empty() {
            chain.push_str(self.chain.trim_end());
            chain.push('\n');
        }
        chain
    }

    /// The SDS version of the secrets made of these credentials: `<generation>-<serial>`,
    /// unique to this certificate even across restarts of the agent (an Envoy reconnecting
    /// with the versions it holds never keeps an old certificate for a new one).
    pub fn version(&self) -> String {
        format!("{}-{}", self.generation, self.serial)
    }

    /// The private key (PKCS#8 PEM), for Envoy over SDS only.
    pub(crate) fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("generation", &self.generation)
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("renew_at", &self.renew_at)
            .field("key", &"<hidden>")
            .finish()
    }
}

/// The credentials Envoy gets: `None` until the first certificate arrives.
pub type CredentialsWatch = watch::Receiver<Option<Arc<Credentials>>>;

/// A fresh key and a CSR for it (PEM and DER). The CSR asks for no names: the CA sets them.
fn key_and_csr(resource: &str) -> Result<(rcgen::KeyPair, String, Vec<u8>), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("generating a key: {e}"))?;
    let mut params = rcgen::CertificateParams::default();
    // A plain common name (rcgen's default names itself); never a SPIFFE id, which the CA
    // would check against the one it grants.
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, resource);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("writing a CSR: {e}"))?;
    let pem = csr.pem().map_err(|e| format!("writing a CSR: {e}"))?;
    Ok((key, pem, csr.der().to_vec()))
}

/// When to renew a certificate that arrived at `received`: the CA's `renew_after` (half its
/// life), but never before half of the life left at arrival (a CA that backdates its
/// certificates for clock skew puts `renew_after` of a very short-lived one at the moment of
/// issue), and never at or after expiry.
pub fn renew_at(
    received: SystemTime,
    renew_after: SystemTime,
    not_after: SystemTime,
) -> SystemTime {
    let left = not_after.duration_since(received).unwrap_or_default();
    let half_left = received + left / 2;
    if renew_after >= not_after {
        half_left
    } else {
        renew_after.max(half_left)
    }
}

fn parse_time(what: &str, text: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("the CA's {what} {text:?} is not an RFC 3339 time: {e}"))
}

/// Why getting a certificate failed.
enum Failure {
    /// Retrying may help.
    Unavailable(String),
    /// The CA said no (or answered for another resource): the operator must act.
    Refused(String),
    /// The CA no longer takes the current certificate (401 to a renewal): join again.
    NotRenewable(String),
}

/// Obtains and renews the proxy's certificate, publishing each to the SDS server.
pub struct IdentityAgent {
    config: IdentityConfig,
    /// `mesh/<mesh>/virtualNode/<name>` (or `virtualGateway`): what the certificate must name.
    resource: String,
    credentials: watch::Sender<Option<Arc<Credentials>>>,
    generation: u64,
}

impl IdentityAgent {
    /// An agent for the proxy of `resource` (`mesh/<mesh>/virtualNode/<name>`).
    pub fn new(config: IdentityConfig, resource: String) -> Self {
        let (credentials, _) = watch::channel(None);
        IdentityAgent {
            config,
            resource,
            credentials,
            generation: 0,
        }
    }

    /// The credentials as they change (for the SDS server).
    pub fn credentials(&self) -> CredentialsWatch {
        self.credentials.subscribe()
    }

    /// Joins, then renews forever. Returns only when the first join is refused (the error
    /// names the token by its id); later refusals are logged and retried, while the current
    /// certificate keeps serving.
    pub async fn run(mut self) -> AgentError {
        let mut delay = FIRST_RETRY;
        let mut current = loop {
            match self.join().await {
                Ok(c) => break c,
                Err(Failure::Refused(why) | Failure::NotRenewable(why)) => {
                    return AgentError::Identity { message: why };
                }
                Err(Failure::Unavailable(why)) => {
                    warn!(ca = %self.config.ca_server, error = %why, retry_in = ?delay,
                          "cannot get the proxy's certificate yet; Envoy waits for it");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        };
        loop {
            let serving = self.publish(current);
            sleep_until(serving.renew_at).await;
            current = self.refresh(&serving).await;
        }
    }

    /// Sends `credentials` to the SDS server; a handle on them.
    fn publish(&mut self, credentials: Credentials) -> Arc<Credentials> {
        let credentials = Arc::new(credentials);
        info!(spiffe_id = %credentials.spiffe_id, serial = %credentials.serial,
              generation = credentials.generation,
              not_after = %weft_ca::service::rfc3339(credentials.not_after),
              renew_at = %weft_ca::service::rfc3339(credentials.renew_at),
              "workload certificate ready; serving it to Envoy over SDS");
        self.credentials.send_replace(Some(credentials.clone()));
        credentials
    }

    /// A new certificate to replace `current`: renewed with it while the CA takes it, else
    /// joined again with the token; retried until one is had.
    async fn refresh(&mut self, current: &Credentials) -> Credentials {
        let mut delay = FIRST_RETRY;
        loop {
            let attempt = if SystemTime::now() >= current.not_after {
                warn!(serial = %current.serial, "the workload certificate expired before it could be renewed; joining again with the join token");
                self.join().await
            } else {
                match self.renew(current).await {
                    Err(Failure::NotRenewable(why)) => {
                        warn!(serial = %current.serial, reason = %why,
                              "the CA no longer renews this certificate (its CA changed, or it expired); joining again with the join token");
                        self.join().await
                    }
                    other => other,
                }
            };
            let max = match attempt {
                Ok(next) => return next,
                Err(Failure::Unavailable(why)) => {
                    warn!(ca = %self.config.ca_server, serial = %current.serial, error = %why, retry_in = ?delay,
                          "renewing the workload certificate failed; the current one keeps serving");
                    MAX_RETRY
                }
                Err(Failure::Refused(why) | Failure::NotRenewable(why)) => {
                    error!(ca = %self.config.ca_server, serial = %current.serial,
                           expires = %weft_ca::service::rfc3339(current.not_after), error = %why, retry_in = ?delay,
                           "THE PROXY CANNOT GET A NEW CERTIFICATE: mTLS stops working when the current one expires; give the agent a valid join token (WEFT_JOIN_TOKEN_FILE is read again at each try)");
                    MAX_RETRY_REFUSED
                }
            };
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(max);
        }
    }

    /// A certificate for a new key, with the join token.
    async fn join(&mut self) -> Result<Credentials, Failure> {
        let token = self.config.token.read().map_err(Failure::Refused)?;
        let (key, csr_pem, _) = key_and_csr(&self.resource).map_err(Failure::Unavailable)?;
        info!(ca = %self.config.ca_server, token = %token.id(), resource = %self.resource,
              "asking Weft's CA for the proxy's certificate with join token {}", token.id());
        match request_certificate(&self.config.ca_server, Credential::Token(&token), &csr_pem).await
        {
            Ok(answer) => self.accept(answer, key),
            Err(CaCallError::Unavailable(why)) => Err(Failure::Unavailable(why)),
            Err(CaCallError::Refused {
                status, message, ..
            }) => Err(Failure::Refused(format!(
                "Weft's CA at {} refused join token {} ({status}): {message}",
                self.config.ca_server,
                token.id()
            ))),
        }
    }

    /// A certificate for a new key, proved by `current`'s key.
    async fn renew(&mut self, current: &Credentials) -> Result<Credentials, Failure> {
        let (key, csr_pem, csr_der) = key_and_csr(&self.resource).map_err(Failure::Unavailable)?;
        let proof = weft_ca::renewal::sign(&current.key, &csr_der)
            .map_err(|e| Failure::Unavailable(format!("signing the renewal proof: {e}")))?;
        let credential = Credential::Renewal {
            certificate: &current.certificate,
            proof: base64::engine::general_purpose::STANDARD.encode(proof),
        };
        match request_certificate(&self.config.ca_server, credential, &csr_pem).await {
            Ok(answer) => self.accept(answer, key),
            Err(CaCallError::Unavailable(why)) => Err(Failure::Unavailable(why)),
            Err(CaCallError::Refused {
                status: 401,
                message,
                ..
            }) => Err(Failure::NotRenewable(message)),
            Err(CaCallError::Refused {
                status, message, ..
            }) => Err(Failure::Refused(format!(
                "Weft's CA at {} refused to renew certificate {} ({status}): {message}",
                self.config.ca_server, current.serial
            ))),
        }
    }

    /// Checks an answer (it must name this proxy's resource) and keeps it with its key.
    fn accept(
        &mut self,
        answer: CertificateJson,
        key: rcgen::KeyPair,
    ) -> Result<Credentials, Failure> {
        let expected = format!("/{}", self.resource);
        let names_us = answer
            .spiffe_id
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
            == Some(expected.as_str());
        if !names_us {
            return Err(Failure::Refused(format!(
                "the CA issued a certificate for {}, but this proxy serves {} \
                 (APPMESH_RESOURCE_ARN): the join token is for another virtual node or gateway",
                answer.spiffe_id, self.resource
            )));
        }
        let bad = Failure::Unavailable;
        let not_after = parse_time("notAfter", &answer.not_after).map_err(bad)?;
        let renew_after = parse_time("renewAfter", &answer.renew_after).map_err(bad)?;
        if answer.certificate.trim().is_empty() || answer.trust_bundle.trim().is_empty() {
            return Err(Failure::Unavailable(
                "the CA's answer has no certificate or no trust bundle".into(),
            ));
        }
        self.generation += 1;
        Ok(Credentials {
            generation: self.generation,
            spiffe_id: answer.spiffe_id,
            serial: answer.serial_number,
            certificate: answer.certificate,
            chain: answer.chain,
            trust_bundle: answer.trust_bundle,
            not_after,
            renew_at: renew_at(SystemTime::now(), renew_after, not_after),
            key,
        })
    }
}

/// The identity of a running proxy: the agent getting and renewing its certificate, and the
/// SDS server handing it (and any certificates in files) to Envoy. Dropping it stops both and
/// removes the socket.
pub struct RunningIdentity {
    sds: SdsServer,
    agent: tokio::task::JoinHandle<AgentError>,
}

impl RunningIdentity {
    /// Binds the SDS socket at `socket` for Envoy running as `envoy`, and starts getting the
    /// certificate of `resource` (`mesh/<mesh>/virtualNode/<name>`).
    pub fn start(
        config: &IdentityConfig,
        socket: &Path,
        resource: String,
        envoy: EnvoyIdentity,
        files: crate::file_secrets::FileSecrets,
    ) -> Result<RunningIdentity, AgentError> {
        let agent = IdentityAgent::new(config.clone(), resource);
        let sources = crate::sds::Sources {
            credentials: agent.credentials(),
            files,
        };
        let sds = crate::sds::serve(socket, envoy, sources)?;
        Ok(RunningIdentity {
            sds,
            agent: tokio::spawn(agent.run()),
        })
    }

    /// The SDS socket.
    pub fn socket(&self) -> &Path {
        self.sds.path()
    }

    /// Completes when the proxy cannot have an identity (the first join was refused). Do not
    /// call it again once it has completed.
    pub async fn failed(&mut self) -> AgentError {
        match (&mut self.agent).await {
            Ok(e) => e,
            Err(e) => AgentError::Identity {
                message: format!("the task getting the certificate ended: {e}"),
            },
        }
    }
}

impl Drop for RunningIdentity {
    fn drop(&mut self) {
        self.agent.abort();
    }
}

/// Sleeps until the wall clock reads `at`, reading it again at least every [`MAX_SLEEP`].
async fn sleep_until(at: SystemTime) {
    while let Ok(left) = at.duration_since(SystemTime::now()) {
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(MAX_SLEEP)).await;
    }
}

/// Credentials with a self-signed certificate, for tests of what serves them.
#[cfg(test)]
pub(crate) fn test_credentials(generation: u64) -> Credentials {
    #![allow(clippy::unwrap_used)]
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://weft.local/mesh/m/virtualNode/n"
            .try_into()
            .unwrap(),
    )];
    let cert = params.self_signed(&key).unwrap();
    let now = SystemTime::now();
    Credentials {
        generation,
        spiffe_id: "spiffe://weft.local/mesh/m/virtualNode/n".into(),
        serial: format!("{generation:02x}"),
        certificate: cert.pem(),
        chain: String::new(),
        trust_bundle: cert.pem(),
        not_after: now + Duration::from_secs(3600),
        renew_at: now + Duration::from_secs(1800),
        key,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TOKEN: &str = "weft-jt.0123456789abcdef.c2VjcmV0LXNlY3JldC1zZWNyZXQ";

    #[test]
    fn a_token_shows_its_id_only() {
        let token = JoinToken::parse(&format!(" {TOKEN}\n")).unwrap();
        assert_eq!(token.id(), "0123456789abcdef");
        assert_eq!(token.expose(), TOKEN);
        for shown in [format!("{token}"), format!("{token:?}")] {
            assert!(!shown.contains("c2VjcmV0"), "{shown}");
            assert!(shown.contains("0123456789abcdef"), "{shown}");
        }
        let source = TokenSource::Value(token);
        assert!(!format!("{source:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn a_malformed_token_is_refused_without_being_repeated() {
        for bad in [
            "",
            "secret-value",
            "weft-jt.xyz.secret-value",
            "weft-jt.0123456789abcdef.",
        ] {
            let e = JoinToken::parse(bad).unwrap_err();
            assert!(!e.contains("secret-value"), "{e}");
            assert!(e.contains("weft-jt.<id>.<secret>"), "{e}");
        }
    }

    #[test]
    fn a_token_file_is_read_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = TokenSource::File(path.clone());
        assert!(source.read().unwrap_err().contains("cannot read"));
        std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
        assert_eq!(source.read().unwrap().id(), "0123456789abcdef");
        std::fs::write(&path, "weft-jt.fedcba9876543210.other").unwrap();
        assert_eq!(source.read().unwrap().id(), "fedcba9876543210");
    }

    #[test]
    fn the_ca_server_is_plain_http_host_and_port() {
        assert_eq!(
            CaServer::parse("http://weft.local:9080/")
                .unwrap()
                .authority(),
            "weft.local:9080"
        );
        assert_eq!(
            CaServer::parse("127.0.0.1:9").unwrap().to_string(),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            CaServer::parse("http://[::1]:9080").unwrap().authority(),
            "[::1]:9080"
        );
        assert!(CaServer::parse("https://weft.local:9080")
            .unwrap_err()
            .contains("plain HTTP"));
        assert!(CaServer::parse("weft.local").is_err());
        let xds = "10.0.0.7:15010".parse().unwrap();
        assert_eq!(CaServer::beside(&xds).to_string(), "http://10.0.0.7:9080");
    }

    #[test]
    fn several_ca_servers_are_tried_in_the_order_given() {
        let ca = CaServer::parse("http://10.0.0.1:9080, 10.0.0.2:9081/").unwrap();
        assert_eq!(
            ca.authorities().collect::<Vec<_>>(),
            ["10.0.0.1:9080", "10.0.0.2:9081"]
        );
        assert_eq!(ca.to_string(), "http://10.0.0.1:9080,http://10.0.0.2:9081");
        assert!(CaServer::parse("http://10.0.0.1:9080,https://x:1").is_err());
        // Replicas on one host with different xDS ports share the CA's port: asked once.
        let xds: Vec<crate::config::XdsEndpoint> = ["10.0.0.1:15010", "10.0.0.1:15011"]
            .iter()
            .map(|e| e.parse().unwrap())
            .collect();
        assert_eq!(
            CaServer::beside_each(&xds)
                .authorities()
                .collect::<Vec<_>>(),
            ["10.0.0.1:9080"]
        );
    }

    #[test]
    fn renewal_is_at_half_life_and_never_at_issue_nor_after_expiry() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = Duration::from_secs;
        // 24 h backdated a minute: the CA's renewAfter is 30 s before half of what is left.
        let not_after = t0 + s(86_400);
        assert_eq!(renew_at(t0, t0 + s(43_170), not_after), t0 + s(43_200));
        // A later renewAfter is kept.
        assert_eq!(renew_at(t0, t0 + s(50_000), not_after), t0 + s(50_000));
        // One minute backdated a minute: renewAfter is the moment of issue; half of what is left.
        assert_eq!(renew_at(t0, t0, t0 + s(60)), t0 + s(30));
        // A renewAfter at or past expiry is not taken.
        assert_eq!(renew_at(t0, t0 + s(90), t0 + s(60)), t0 + s(30));
    }

    #[test]
    fn the_csr_names_nothing_but_a_plain_common_name_and_verifies() {
        let (key, pem, der) = key_and_csr("mesh/apps/virtualNode/red").unwrap();
        let parsed = weft_ca::csr::parse(&pem).unwrap();
        assert!(parsed.requested_uris.is_empty() && parsed.requested_dns.is_empty());
        assert_eq!(
            parsed.common_name.as_deref(),
            Some("mesh/apps/virtualNode/red")
        );
        assert_eq!(parsed.der, der);
        assert_eq!(
            rcgen::PublicKeyData::der_bytes(&parsed.public_key),
            rcgen::PublicKeyData::der_bytes(&key)
        );
        // The proof the agent signs is what the CA verifies.
        let proof = weft_ca::renewal::sign(&key, &der).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        weft_ca::renewal::verify(&spki, &der, &proof).unwrap();
    }
}
