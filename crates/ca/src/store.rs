//! What the CA keeps in the store, under a prefix of its own, `ca/`:
//!
//! - [`ROOT_KEY`] (`ca/root`): the root Weft generated, its certificate and its private key
//!   sealed (AES-256-GCM) under the server's key-encryption key, the one access keys' secrets
//!   are sealed under ([`weft_auth::Kek`], kept beside the store or given with
//!   `--auth-kek-file`), so that the store — an etcd cluster, a backup — never holds the key in
//!   clear. Written once, with a compare-and-swap on its absence, so that two servers starting
//!   on one store agree on one root; servers sharing a store must share the key-encryption key.
//!   A record from before sealing (the key in clear, [`RootRecord`]'s JSON) is still read, and
//!   sealed in place when read. An operator's CA (`--ca-cert`) is never stored.
//! - [`TOKENS`] (`ca/join-tokens/<id>`): one [`TokenRecord`] per join token — the resource, the
//!   times, and the SHA-256 of the secret, never the secret.
//!
//! No workload key is ever stored: the server only sees public keys.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use weft_auth::Kek;
use weft_store::{Compare, Op, Range, Revision, Store, Txn, TxnOutcome};

use crate::authority::{Authority, RootRecord};
use crate::identity::TrustDomain;
use crate::token::{epoch_secs, TokenRecord};
use crate::CaError;

/// Every key of the CA starts with this.
pub const PREFIX: &str = "ca/";
/// The generated root.
pub const ROOT_KEY: &str = "ca/root";
/// Join tokens, by id.
pub const TOKENS: &str = "ca/join-tokens/";
/// How long an expired or revoked token's record stays listed before a sweep removes it.
pub const KEEP_ENDED_TOKENS: Duration = Duration::from_secs(86_400);

fn token_key(id: &str) -> String {
    format!("{TOKENS}{id}")
}

fn corrupt(what: &str, e: serde_json::Error) -> CaError {
    CaError::Store(weft_store::StoreError::Corrupt(format!("{what}: {e}")))
}

fn json<T: serde::Serialize>(value: &T) -> Result<Bytes, CaError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| CaError::Crypto(format!("encoding a record: {e}")))
}

/// The root's record as the store holds it: the private key sealed under the key-encryption
/// key with [`ROOT_KEY`] as context, or, in a record written before sealing, in clear.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRoot {
    certificate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_private_key: Option<String>,
    /// Only in records written before sealing; never written now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    private_key: Option<String>,
}

impl std::fmt::Debug for StoredRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredRoot")
            .field("certificate", &self.certificate)
            .finish_non_exhaustive()
    }
}

/// The stored form of `record`, its key sealed under `kek`.
fn seal_root(kek: &Kek, record: &RootRecord) -> Result<Bytes, CaError> {
    let sealed = kek
        .seal(ROOT_KEY, record.private_key.as_bytes())
        .map_err(|e| CaError::Crypto(format!("sealing the CA root's key: {e}")))?;
    json(&StoredRoot {
        certificate: record.certificate.clone(),
        sealed_private_key: Some(sealed),
        private_key: None,
    })
}

/// The root in a stored record, its key opened under `kek`; whether the record held the key in
/// clear (written before sealing).
fn open_root(kek: &Kek, value: &[u8]) -> Result<(RootRecord, bool), CaError> {
    let stored: StoredRoot = serde_json::from_slice(value).map_err(|e| corrupt(ROOT_KEY, e))?;
    match (stored.sealed_private_key, stored.private_key) {
        (Some(sealed), _) => {
            // The auth crate's message would speak of an access key's secret; this one names
            // the record and the file the key must come from.
            let key = kek.open(ROOT_KEY, &sealed).map_err(|_| {
                CaError::Config(format!(
                    "the CA root's private key in the store ({ROOT_KEY}) does not open under this \
                     server's key-encryption key (--auth-kek-file, default <data-dir>/auth-kek): \
                     the store was written with another key-encryption key, and servers sharing \
                     a store must share that file"
                ))
            })?;
            let private_key = String::from_utf8(key).map_err(|_| {
                CaError::Store(weft_store::StoreError::Corrupt(format!(
                    "{ROOT_KEY}: the sealed private key is not text"
                )))
            })?;
            Ok((
                RootRecord {
                    certificate: stored.certificate,
                    private_key,
                },
                false,
            ))
        }
        (None, Some(private_key)) => Ok((
            RootRecord {
                certificate: stored.certificate,
                private_key,
            },
            true,
        )),
        (None, None) => Err(CaError::Store(weft_store::StoreError::Corrupt(format!(
            "{ROOT_KEY}: no private key"
        )))),
    }
}

/// Whether the store holds a root whose private key is sealed, so that it opens only under the
/// key-encryption key it was sealed with: a server must then be given that key's file, not a
/// fresh key. A root stored in clear before sealing is not (any key seals it in place).
pub async fn root_is_sealed(store: &dyn Store) -> Result<bool, CaError> {
    let Some(kv) = store.get(ROOT_KEY).await? else {
        return Ok(false);
    };
    let stored: StoredRoot = serde_json::from_slice(&kv.value).map_err(|e| corrupt(ROOT_KEY, e))?;
    Ok(stored.sealed_private_key.is_some())
}

/// The root kept in the store, created (ECDSA P-256) and stored, its key sealed under `kek`, if
/// there is none yet. A root stored in clear before sealing is loaded and sealed in place.
pub async fn load_or_create_root(
    store: &dyn Store,
    trust_domain: &TrustDomain,
    kek: &Kek,
    now: SystemTime,
) -> Result<Authority, CaError> {
    loop {
        if let Some(kv) = store.get(ROOT_KEY).await? {
            let (record, in_clear) = open_root(kek, &kv.value)?;
            let authority = Authority::from_record(trust_domain, &record, now)?;
            if in_clear {
                reseal_root(store, kek, &record, kv.mod_revision).await;
            }
            return Ok(authority);
        }
        let (authority, record) = Authority::generate_root(trust_domain, now)?;
        let txn = Txn {
            compares: vec![Compare::Absent(ROOT_KEY.to_string())],
            ops: vec![Op::Put(ROOT_KEY.to_string(), seal_root(kek, &record)?)],
        };
        match store.txn(txn).await? {
            TxnOutcome::Committed(_) => {
                tracing::info!(trust_domain = %trust_domain, "generated the CA root and stored it, its key sealed");
                return Ok(authority);
            }
            // Another server stored one first: use it.
            TxnOutcome::Conflict(_) => continue,
        }
    }
}

/// Replaces a root record holding its key in clear with the sealed form, unless it changed
/// since `revision` (another server sealed it first). A failure is logged, not fatal: the root
/// loaded is usable, and the next start tries again.
async fn reseal_root(store: &dyn Store, kek: &Kek, record: &RootRecord, revision: Revision) {
    let sealed = match seal_root(kek, record) {
        Ok(sealed) => sealed,
        Err(e) => {
            tracing::warn!(error = %e, "the CA root's private key is stored unsealed and sealing it failed");
            return;
        }
    };
    let txn = Txn {
        compares: vec![Compare::ModRevision(ROOT_KEY.to_string(), revision)],
        ops: vec![Op::Put(ROOT_KEY.to_string(), sealed)],
    };
    match store.txn(txn).await {
        Ok(TxnOutcome::Committed(_)) => {
            tracing::info!("sealed the CA root's private key, stored unsealed by an earlier version, under the key-encryption key");
        }
        Ok(TxnOutcome::Conflict(_)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "the CA root's private key is stored unsealed and sealing it failed");
        }
    }
}

/// Stores a new token record.
pub async fn put_token(store: &dyn Store, record: &TokenRecord) -> Result<(), CaError> {
    let key = token_key(&record.id);
    let txn = Txn {
        compares: vec![Compare::Absent(key.clone())],
        ops: vec![Op::Put(key, json(record)?)],
    };
    match store.txn(txn).await? {
        TxnOutcome::Committed(_) => Ok(()),
        TxnOutcome::Conflict(_) => Err(CaError::Crypto("join token id collision".into())),
    }
}

async fn get_token_rev(
    store: &dyn Store,
    id: &str,
) -> Result<Option<(TokenRecord, Revision)>, CaError> {
    let Some(kv) = store.get(&token_key(id)).await? else {
        return Ok(None);
    };
    let record = serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e))?;
    Ok(Some((record, kv.mod_revision)))
}

/// One token's record.
pub async fn get_token(store: &dyn Store, id: &str) -> Result<Option<TokenRecord>, CaError> {
    Ok(get_token_rev(store, id).await?.map(|(r, _)| r))
}

/// Every token's record, by id.
pub async fn list_tokens(store: &dyn Store) -> Result<Vec<TokenRecord>, CaError> {
    let found = store.range(Range::prefix(TOKENS)).await?;
    found
        .kvs
        .iter()
        .map(|kv| serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e)))
        .collect()
}

/// Revokes a token (idempotent: a revoked token keeps its first revocation time). `None` if
/// there is no such token.
pub async fn revoke_token(
    store: &dyn Store,
    id: &str,
    now: SystemTime,
) -> Result<Option<TokenRecord>, CaError> {
    loop {
        let Some((mut record, revision)) = get_token_rev(store, id).await? else {
            return Ok(None);
        };
        if record.revoked_at.is_some() {
            return Ok(Some(record));
        }
        record.revoked_at = Some(epoch_secs(now));
        let key = token_key(id);
        let txn = Txn {
            compares: vec![Compare::ModRevision(key.clone(), revision)],
            ops: vec![Op::Put(key, json(&record)?)],
        };
        if let TxnOutcome::Committed(_) = store.txn(txn).await? {
            return Ok(Some(record));
        }
    }
}

/// Removes the records of tokens that expired or were revoked more than `keep` ago. Returns how
/// many were removed.
pub async fn sweep_tokens(
    store: &dyn Store,
    now: SystemTime,
    keep: Duration,
) -> Result<usize, CaError> {
    let cutoff = epoch_secs(now).saturating_sub(keep.as_secs());
    let found = store.range(Range::prefix(TOKENS)).await?;
    let ended: Vec<_> = found
        .kvs
        .into_iter()
        .filter(|kv| {
            serde_json::from_slice::<TokenRecord>(&kv.value)
                .map(|r| r.expires_at.min(r.revoked_at.unwrap_or(u64::MAX)) < cutoff)
                .unwrap_or(false)
        })
        .collect();
    Ok(weft_store::delete_unchanged(store, &ended).await?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::identity::Resource;
    use crate::token;
    use weft_store::{EmbeddedOptions, EmbeddedStore, SharedStore};

    /// The embedded store in `dir`, opened as the server opens it.
    async fn open(dir: &tempfile::TempDir) -> SharedStore {
        EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_root_is_created_once_and_kept_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let td: TrustDomain = "weft.local".parse().unwrap();
        let now = SystemTime::now();
        let (kek, _) = Kek::generate().unwrap();
        let first = {
            let store = open(&dir).await;
            let a = load_or_create_root(&*store, &td, &kek, now).await.unwrap();
            let b = load_or_create_root(&*store, &td, &kek, now).await.unwrap();
            assert_eq!(a.trust_bundle_pem(), b.trust_bundle_pem());
            a.trust_bundle_pem().to_string()
        };
        let store = open(&dir).await;
        let again = load_or_create_root(&*store, &td, &kek, now).await.unwrap();
        assert_eq!(again.trust_bundle_pem(), first);
    }

    #[tokio::test]
    async fn the_root_key_is_stored_sealed_and_opens_only_under_its_kek() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let td: TrustDomain = "weft.local".parse().unwrap();
        let now = SystemTime::now();
        let (kek, _) = Kek::generate().unwrap();
        assert!(!root_is_sealed(&*store).await.unwrap());
        load_or_create_root(&*store, &td, &kek, now).await.unwrap();
        assert!(root_is_sealed(&*store).await.unwrap());
        let raw = store.get(ROOT_KEY).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&raw.value);
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(text.contains("sealedPrivateKey"), "{text}");
        let (other, _) = Kek::generate().unwrap();
        match load_or_create_root(&*store, &td, &other, now).await {
            Err(CaError::Config(message)) => {
                assert!(message.contains("key-encryption key"), "{message}")
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_root_stored_in_clear_is_loaded_and_sealed_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let td: TrustDomain = "weft.local".parse().unwrap();
        let now = SystemTime::now();
        let (authority, record) = Authority::generate_root(&td, now).unwrap();
        // The record exactly as versions before sealing wrote it.
        let txn = Txn {
            compares: vec![],
            ops: vec![Op::Put(ROOT_KEY.to_string(), json(&record).unwrap())],
        };
        store.txn(txn).await.unwrap();
        // Any key-encryption key may seal it: a fresh one may be made for it.
        assert!(!root_is_sealed(&*store).await.unwrap());
        let (kek, _) = Kek::generate().unwrap();
        let loaded = load_or_create_root(&*store, &td, &kek, now).await.unwrap();
        assert_eq!(loaded.trust_bundle_pem(), authority.trust_bundle_pem());
        assert!(root_is_sealed(&*store).await.unwrap());
        let raw = store.get(ROOT_KEY).await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw.value).contains("PRIVATE KEY"));
        let again = load_or_create_root(&*store, &td, &kek, now).await.unwrap();
        assert_eq!(again.trust_bundle_pem(), authority.trust_bundle_pem());
    }

    #[tokio::test]
    async fn tokens_are_stored_without_their_secret_revoked_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let now = SystemTime::now();
        let resource = Resource::parse("mesh/apps/virtualNode/red").unwrap();
        let minted = token::mint(&resource, now, Duration::from_secs(60)).unwrap();
        put_token(&*store, &minted.record).await.unwrap();
        let secret = minted.token.rsplit('.').next().unwrap();
        let stored = store
            .get(&token_key(&minted.record.id))
            .await
            .unwrap()
            .unwrap();
        assert!(!String::from_utf8_lossy(&stored.value).contains(secret));
        let revoked = revoke_token(&*store, &minted.record.id, now)
            .await
            .unwrap()
            .unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(list_tokens(&*store).await.unwrap(), vec![revoked]);
        assert!(revoke_token(&*store, "0000000000000000", now)
            .await
            .unwrap()
            .is_none());
        assert_eq!(
            sweep_tokens(&*store, now, KEEP_ENDED_TOKENS).await.unwrap(),
            0
        );
        let much_later = now + KEEP_ENDED_TOKENS + Duration::from_secs(120);
        assert_eq!(
            sweep_tokens(&*store, much_later, KEEP_ENDED_TOKENS)
                .await
                .unwrap(),
            1
        );
        assert!(list_tokens(&*store).await.unwrap().is_empty());
    }
}
