//! The CA as the server runs it: the signer, the store, and the rules for who gets what.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use weft_store::SharedStore;

use crate::authority::{Authority, Issued, Source};
use crate::identity::{Resource, TrustDomain};
use crate::token::{self, Minted, TokenRecord};
use crate::{csr, names, renewal, store, CaError};

/// Default lifetime of workload certificates.
pub const DEFAULT_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default lifetime of join tokens.
pub const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Shortest workload certificate lifetime accepted: agents renew at half life, so ten seconds
/// is a renewal every five, short enough to watch rotation happen in a test or a demo.
pub const MIN_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(10);
/// Longest workload certificate lifetime accepted.
pub const MAX_WORKLOAD_CERT_TTL: Duration = Duration::from_secs(365 * 86_400);

/// How the CA is set up.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// The trust domain of every SPIFFE id issued.
    pub trust_domain: TrustDomain,
    /// How long workload certificates live.
    pub workload_cert_ttl: Duration,
    /// How long join tokens live unless their creator says otherwise.
    pub join_token_ttl: Duration,
    /// The operator's CA certificate (chain) and key files; `None`: the root in the store.
    pub operator_ca: Option<(PathBuf, PathBuf)>,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            trust_domain: TrustDomain::default(),
            workload_cert_ttl: DEFAULT_WORKLOAD_CERT_TTL,
            join_token_ttl: DEFAULT_JOIN_TOKEN_TTL,
            operator_ca: None,
        }
    }
}

/// The CA of a running server. Cheap to clone.
#[derive(Clone)]
pub struct CaService {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    authority: Authority,
    config: CaConfig,
}

/// RFC 3339 (UTC) text of a time.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl CaService {
    /// Loads the signer — the operator's CA files, else the root in the store (generated on the
    /// first start, its private key sealed under `kek`, the server's key-encryption key) — and
    /// serves from `store`.
    pub async fn start(
        store: SharedStore,
        config: CaConfig,
        kek: &weft_auth::Kek,
    ) -> Result<CaService, CaError> {
        let now = SystemTime::now();
        let authority = match &config.operator_ca {
            Some((cert, key)) => {
                let read = |path: &PathBuf, what: &str| {
                    std::fs::read_to_string(path).map_err(|e| {
                        CaError::Config(format!("reading {what} {}: {e}", path.display()))
                    })
                };
                let cert_pem = read(cert, "the CA certificate (--ca-cert)")?;
                let key_pem = read(key, "the CA key (--ca-key)")?;
                let authority = Authority::from_pem(
                    &config.trust_domain,
                    &cert_pem,
                    &key_pem,
                    Source::Operator,
                    now,
                )?;
                tracing::info!(cert = %cert.display(), trust_domain = %config.trust_domain, "CA: the operator's certificate and key");
                authority
            }
            None => {
                let authority =
                    store::load_or_create_root(&*store, &config.trust_domain, kek, now).await?;
                tracing::info!(trust_domain = %config.trust_domain, "CA: Weft's root from the store");
                authority
            }
        };
        Ok(CaService {
            inner: Arc::new(Inner {
                store,
                authority,
                config,
            }),
        })
    }

    /// The signer.
    pub fn authority(&self) -> &Authority {
        &self.inner.authority
    }

    /// The configuration.
    pub fn config(&self) -> &CaConfig {
        &self.inner.config
    }

    /// The DNS names `resource` is granted, or 404 if it does not exist.
    async fn granted_names(&self, resource: &Resource) -> Result<Vec<String>, CaError> {
        names::dns_names(&*self.inner.store, resource)
            .await?
            .ok_or_else(|| {
                CaError::NotFound(format!(
                    "{} {:?} does not exist in mesh {:?}",
                    resource.kind.as_str(),
                    resource.name,
                    resource.mesh
                ))
            })
    }

    /// Creates a join token for `resource` (which must exist), living `ttl` or the configured
    /// default. The returned token string is its only copy.
    pub async fn create_token(
        &self,
        resource: &str,
        ttl: Option<Duration>,
        now: SystemTime,
    ) -> Result<Minted, CaError> {
        let resource = Resource::parse(resource)?;
        self.granted_names(&resource).await?;
        let ttl = ttl.unwrap_or(self.inner.config.join_token_ttl);
        let minted = token::mint(&resource, now, ttl)?;
        store::put_token(&*self.inner.store, &minted.record).await?;
        tracing::info!(id = %minted.record.id, resource = %resource, ttl_secs = ttl.as_secs(), "join token created");
        // Records of tokens that ended a day ago go; a failed sweep is tried at the next create.
        if let Err(e) = store::sweep_tokens(&*self.inner.store, now, store::KEEP_ENDED_TOKENS).await
        {
            tracing::warn!(error = %e, "sweeping ended join tokens failed");
        }
        Ok(minted)
    }

    /// Every join token's record (ended ones stay listed for a day).
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, CaError> {
        store::list_tokens(&*self.inner.store).await
    }

    /// Revokes a join token.
    pub async fn revoke_token(&self, id: &str, now: SystemTime) -> Result<TokenRecord, CaError> {
        let not_found = || CaError::NotFound(format!("no join token {id:?}"));
        if !token::valid_id(id) {
            return Err(not_found());
        }
        let record = store::revoke_token(&*self.inner.store, &id.to_ascii_lowercase(), now)
            .await?
            .ok_or_else(not_found)?;
        tracing::info!(id = %record.id, resource = %record.resource, "join token revoked");
        Ok(record)
    }

    /// Signs `csr_pem` for the resource a join token grants.
    pub async fn issue_with_token(
        &self,
        bearer: &str,
        csr_pem: &str,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let presented = token::parse(bearer)?;
        let record = store::get_token(&*self.inner.store, &presented.id)
            .await?
            .ok_or_else(|| CaError::Unauthenticated("unknown join token".into()))?;
        let resource = record.admit(&presented, now)?;
        let csr = csr::parse(csr_pem)?;
        let issued = self.issue(&csr, &resource, now).await?;
        tracing::info!(token = %record.id, spiffe_id = %issued.spiffe_id, serial = %issued.serial, "certificate issued for a join token");
        Ok(issued)
    }

    /// Signs `csr_pem` for the holder of `current_pem`, a certificate this CA issued, given a
    /// renewal proof by its key (see [`crate::renewal`]).
    pub async fn renew(
        &self,
        current_pem: &str,
        proof_base64: &str,
        csr_pem: &str,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let holder = self.inner.authority.verify_issued(current_pem, now)?;
        let proof = base64::engine::general_purpose::STANDARD
            .decode(proof_base64.trim())
            .map_err(|_| CaError::InvalidInput("proof is not base64".into()))?;
        let csr = csr::parse(csr_pem)?;
        renewal::verify(&holder.public_key_der, &csr.der, &proof)?;
        let issued = self.issue(&csr, &holder.resource, now).await?;
        tracing::info!(previous = %holder.serial, spiffe_id = %issued.spiffe_id, serial = %issued.serial, "certificate renewed");
        Ok(issued)
    }

    async fn issue(
        &self,
        csr: &csr::VerifiedCsr,
        resource: &Resource,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let names = self.granted_names(resource).await.map_err(|e| match e {
            CaError::NotFound(m) => CaError::Forbidden(m),
            e => e,
        })?;
        self.inner.authority.issue(
            csr,
            resource,
            &names,
            now,
            self.inner.config.workload_cert_ttl,
        )
    }
}
