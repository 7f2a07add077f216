//! Access keys in the store, under `auth/access-keys/<id>`: one [`KeyRecord`] each — a name,
//! the times, the policy, and the secret sealed under the server's [`Kek`]. The secret is shown
//! once, when the key is created; revoking a key keeps its record (listed as revoked) so that
//! its id is never handed out again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weft_store::{Compare, Op, Range, Revision, Store, Txn, TxnOutcome};

use crate::policy::Policy;
use crate::{AuthError, Kek};

/// Every access key is stored under this prefix.
pub const KEYS: &str = "auth/access-keys/";
/// Characters of an id after its `AKIA` prefix, from the base-32 alphabet AWS ids use.
const ID_SUFFIX_LEN: usize = 16;
const ID_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Bytes of randomness in a secret: 30 bytes are 40 base64 characters, the length of AWS's.
const SECRET_BYTES: usize = 30;
/// The longest key name accepted.
pub const MAX_NAME_CHARS: usize = 128;

/// A secret access key. Never shown in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, for signing or showing once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// What the store keeps of one access key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    /// `AKIA` and 16 characters.
    pub id: String,
    /// A name for people (`admin`, `ci`, …).
    pub name: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Seconds since the epoch, once revoked.
    #[serde(default)]
    pub revoked_at: Option<u64>,
    /// What the key may do.
    pub policy: Policy,
    /// The secret, sealed under the key-encryption key with the id as context (base64).
    pub sealed_secret: String,
}

/// A usable key: its id, its secret and its policy.
#[derive(Debug, Clone)]
pub struct AccessKey {
    /// The access key id.
    pub id: String,
    /// The secret.
    pub secret: Secret,
    /// What the key may do.
    pub policy: Policy,
}

/// Seconds since the epoch.
pub fn epoch_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn random(bytes: &mut [u8]) -> Result<(), AuthError> {
    aws_lc_rs::rand::fill(bytes).map_err(|_| AuthError::Crypto("no randomness".into()))
}

fn new_id() -> Result<String, AuthError> {
    let mut bytes = [0u8; ID_SUFFIX_LEN];
    random(&mut bytes)?;
    let suffix: String = bytes
        .iter()
        .map(|b| char::from(ID_ALPHABET[usize::from(b % 32)]))
        .collect();
    Ok(format!("AKIA{suffix}"))
}

fn new_secret() -> Result<Secret, AuthError> {
    let mut bytes = [0u8; SECRET_BYTES];
    random(&mut bytes)?;
    Ok(Secret(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}

/// Whether `id` can be a key's: an id that cannot is never looked up (nor put into a store key).
fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn key_path(id: &str) -> String {
    format!("{KEYS}{id}")
}

fn corrupt(key: &str, e: serde_json::Error) -> AuthError {
    AuthError::Store(weft_store::StoreError::Corrupt(format!("{key}: {e}")))
}

fn json(record: &KeyRecord) -> Result<Bytes, AuthError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(|e| AuthError::Crypto(format!("encoding an access key record: {e}")))
}

/// Checks a key name: 1 to 128 printable characters.
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(AuthError::InvalidInput(format!(
            "An access key name must be 1 to {MAX_NAME_CHARS} printable characters"
        )));
    }
    Ok(())
}

/// Creates a key: its record is stored, and the secret is returned (the only time it is).
pub async fn create(
    store: &dyn Store,
    kek: &Kek,
    name: &str,
    policy: Policy,
    now: SystemTime,
) -> Result<(KeyRecord, Secret), AuthError> {
    check_name(name)?;
    loop {
        let id = new_id()?;
        let secret = new_secret()?;
        let record = KeyRecord {
            sealed_secret: kek.seal(&id, secret.expose().as_bytes())?,
            id: id.clone(),
            name: name.to_string(),
            created_at: epoch_secs(now),
            revoked_at: None,
            policy: policy.clone(),
        };
        let path = key_path(&id);
        let txn = Txn {
            compares: vec![Compare::Absent(path.clone())],
            ops: vec![Op::Put(path, json(&record)?)],
        };
        // An id collision (one in 2^80) just draws again.
        if let TxnOutcome::Committed(_) = store.txn(txn).await? {
            return Ok((record, secret));
        }
    }
}

async fn get_rev(store: &dyn Store, id: &str) -> Result<Option<(KeyRecord, Revision)>, AuthError> {
    let path = key_path(id);
    let Some(kv) = store.get(&path).await? else {
        return Ok(None);
    };
    let record = serde_json::from_slice(&kv.value).map_err(|e| corrupt(&path, e))?;
    Ok(Some((record, kv.mod_revision)))
}

/// One key's record.
pub async fn get(store: &dyn Store, id: &str) -> Result<Option<KeyRecord>, AuthError> {
    if !plausible_id(id) {
        return Ok(None);
    }
    Ok(get_rev(store, id).await?.map(|(r, _)| r))
}

/// The key `id` with its secret opened, if it exists and is not revoked.
pub async fn lookup(
    store: &dyn Store,
    kek: &Kek,
    id: &str,
) -> Result<Option<AccessKey>, AuthError> {
    let Some(record) = get(store, id).await? else {
        return Ok(None);
    };
    open(record, kek)
}

/// Keys already opened, by id, each with the store revision of the record it was opened
/// from: a request reads the record's revision from the store as before (so a revocation or a
/// new policy counts at once), and decodes and opens it only when that revision changed.
#[derive(Debug, Default)]
pub struct KeyCache {
    opened: std::sync::Mutex<HashMap<String, (Revision, Arc<AccessKey>)>>,
}

/// Keys held at most; past it the cache starts over (keys are few, ids are checked before a
/// lookup, so this only bounds what a flood of made-up ids could cost).
const KEY_CACHE_ENTRIES: usize = 4096;

impl KeyCache {
    /// [`lookup`], skipping the decoding and opening of a record already opened at the same
    /// revision.
    pub async fn lookup(
        &self,
        store: &dyn Store,
        kek: &Kek,
        id: &str,
    ) -> Result<Option<Arc<AccessKey>>, AuthError> {
        if !plausible_id(id) {
            return Ok(None);
        }
        let path = key_path(id);
        let Some(kv) = store.get(&path).await? else {
            return Ok(None);
        };
        let cached = self.opened.lock().ok().and_then(|m| {
            m.get(id)
                .filter(|(rev, _)| *rev == kv.mod_revision)
                .cloned()
        });
        if let Some((_, key)) = cached {
            return Ok(Some(key));
        }
        let record: KeyRecord = serde_json::from_slice(&kv.value).map_err(|e| corrupt(&path, e))?;
        let Some(key) = open(record, kek)? else {
            return Ok(None);
        };
        let key = Arc::new(key);
        if let Ok(mut m) = self.opened.lock() {
            if m.len() >= KEY_CACHE_ENTRIES {
                m.clear();
            }
            m.insert(id.to_string(), (kv.mod_revision, key.clone()));
        }
        Ok(Some(key))
    }
}

/// A record's usable key: `None` once revoked.
fn open(record: KeyRecord, kek: &Kek) -> Result<Option<AccessKey>, AuthError> {
    if record.revoked_at.is_some() {
        return Ok(None);
    }
    let secret = kek.open(&record.id, &record.sealed_secret)?;
    let secret = String::from_utf8(secret)
        .map_err(|_| AuthError::Crypto(format!("the secret of {} is not text", record.id)))?;
    Ok(Some(AccessKey {
        id: record.id,
        secret: Secret(secret),
        policy: record.policy,
    }))
}

/// Every key's record, by id.
pub async fn list(store: &dyn Store) -> Result<Vec<KeyRecord>, AuthError> {
    let found = store.range(Range::prefix(KEYS)).await?;
    found
        .kvs
        .iter()
        .map(|kv| serde_json::from_slice(&kv.value).map_err(|e| corrupt(&kv.key, e)))
        .collect()
}

/// Revokes a key (idempotent: it keeps its first revocation time). `None` if unknown.
pub async fn revoke(
    store: &dyn Store,
    id: &str,
    now: SystemTime,
) -> Result<Option<KeyRecord>, AuthError> {
    loop {
        if !plausible_id(id) {
            return Ok(None);
        }
        let Some((mut record, revision)) = get_rev(store, id).await? else {
            return Ok(None);
        };
        if record.revoked_at.is_some() {
            return Ok(Some(record));
        }
        record.revoked_at = Some(epoch_secs(now));
        let path = key_path(id);
        let txn = Txn {
            compares: vec![Compare::ModRevision(path.clone(), revision)],
            ops: vec![Op::Put(path, json(&record)?)],
        };
        if let TxnOutcome::Committed(_) = store.txn(txn).await? {
            return Ok(Some(record));
        }
    }
}

/// An AWS shared credentials file (`[default]` profile) holding one key, as the AWS CLI and
/// SDKs read it (<https://docs.aws.amazon.com/cli/latest/userguide/cli-configure-files.html>).
pub fn credentials_file(id: &str, secret: &Secret, comment: &str) -> String {
    format!(
        "# {comment}\n[default]\naws_access_key_id = {id}\naws_secret_access_key = {}\n",
        secret.expose()
    )
}

/// On a store without any access key (first start): creates an administrator key and writes
/// it to `credentials` (mode 0600) as an AWS credentials file. Returns the new key's id, or
/// `None` if the store already held keys (the file is then left as it is).
pub async fn bootstrap(
    store: &dyn Store,
    kek: &Kek,
    credentials: &std::path::Path,
    now: SystemTime,
) -> Result<Option<String>, AuthError> {
    if !list(store).await?.is_empty() {
        return Ok(None);
    }
    let (record, secret) = create(
        store,
        kek,
        "admin",
        Policy::managed("AdministratorAccess")?,
        now,
    )
    .await?;
    let text = credentials_file(
        &record.id,
        &secret,
        "Weft's administrator access key, created on the server's first start. \
         Use it with AWS_SHARED_CREDENTIALS_FILE=<this file>; revoke it with \
         `weft access-key revoke` once you have made others.",
    );
    crate::kek::write_private(credentials, text.as_bytes()).map_err(|e| {
        AuthError::Config(format!(
            "writing the administrator's credentials to {}: {e}",
            credentials.display()
        ))
    })?;
    Ok(Some(record.id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use weft_store::{EmbeddedOptions, EmbeddedStore};

    #[tokio::test]
    async fn keys_are_stored_sealed_looked_up_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("s")))
            .await
            .unwrap();
        let (kek, _) = Kek::generate().unwrap();
        let now = SystemTime::now();
        let (record, secret) = create(
            &*store,
            &kek,
            "ci",
            Policy::managed("AWSAppMeshReadOnly").unwrap(),
            now,
        )
        .await
        .unwrap();
        assert!(record.id.starts_with("AKIA") && record.id.len() == 20);
        assert_eq!(secret.expose().len(), 40);
        assert_eq!(format!("{secret:?}"), "Secret(redacted)");
        let raw = store.get(&key_path(&record.id)).await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw.value).contains(secret.expose()));
        let found = lookup(&*store, &kek, &record.id).await.unwrap().unwrap();
        assert_eq!(found.secret, secret);
        revoke(&*store, &record.id, now).await.unwrap().unwrap();
        assert!(lookup(&*store, &kek, &record.id).await.unwrap().is_none());
        assert!(lookup(&*store, &kek, "AKIANOPE").await.unwrap().is_none());
        assert!(lookup(&*store, &kek, "../x").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_first_start_writes_an_administrator_credentials_file_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("s")))
            .await
            .unwrap();
        let (kek, _) = Kek::generate().unwrap();
        let path = dir.path().join("admin-credentials");
        let id = bootstrap(&*store, &kek, &path, SystemTime::now())
            .await
            .unwrap()
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[default]") && text.contains(&format!("aws_access_key_id = {id}")));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(bootstrap(&*store, &kek, &path, SystemTime::now())
            .await
            .unwrap()
            .is_none());
    }
}
