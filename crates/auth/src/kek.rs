//! The key-encryption key: 32 random bytes in a file the server keeps beside its store
//! (`<data-dir>/auth-kek`, mode 0600, created on a first start, when the store holds nothing
//! sealed yet) or names with `--auth-kek-file` (so that replicas sharing a store share it too).
//! Access keys' secrets, and the private key of the CA root Weft generates (`weft-ca`), are
//! sealed under it with AES-256-GCM, so a copy of the store alone reveals no secret.

use std::io::Write;
use std::path::Path;

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use base64::Engine;

use crate::AuthError;

/// Length of the key, bytes (AES-256).
pub const KEK_LEN: usize = 32;

/// The key-encryption key. Its bytes never appear in `Debug` output or logs.
pub struct Kek {
    key: RandomizedNonceKey,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(redacted)")
    }
}

impl Kek {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Kek, AuthError> {
        if bytes.len() != KEK_LEN {
            return Err(AuthError::Config(format!(
                "the key-encryption key must be {KEK_LEN} bytes, got {}",
                bytes.len()
            )));
        }
        let key = RandomizedNonceKey::new(&AES_256_GCM, bytes)
            .map_err(|_| AuthError::Crypto("cannot use the key-encryption key".into()))?;
        Ok(Kek { key })
    }

    /// A fresh random key.
    pub fn generate() -> Result<(Kek, [u8; KEK_LEN]), AuthError> {
        let mut bytes = [0u8; KEK_LEN];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| AuthError::Crypto("no randomness for a key-encryption key".into()))?;
        Ok((Kek::from_bytes(&bytes)?, bytes))
    }

    /// Reads the key at `path` (base64 of 32 bytes); `None` if the file does not exist. A file
    /// that does not hold a key is an error, never replaced: the stored secrets would be lost
    /// with it. Whether a missing file may be created ([`Kek::create`]) depends on what the
    /// store already holds sealed, which the server decides.
    pub fn load(path: &Path) -> Result<Option<Kek>, AuthError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.trim())
                    .map_err(|e| file_error("reading the key-encryption key in", path, &e))?;
                Kek::from_bytes(&bytes).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(file_error("reading the key-encryption key in", path, &e)),
        }
    }

    /// Creates a fresh key and writes it to `path` (base64, mode 0600).
    pub fn create(path: &Path) -> Result<Kek, AuthError> {
        let (kek, bytes) = Kek::generate()?;
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        write_private(path, format!("{text}\n").as_bytes())
            .map_err(|e| file_error("writing the key-encryption key to", path, &e))?;
        tracing::info!(path = %path.display(), "created the key-encryption key for access keys and the CA root");
        Ok(kek)
    }

    /// Seals `plaintext`, bound to `context` (the access key id, so that a sealed secret moved
    /// to another key's record does not open): base64 of nonce, ciphertext and tag.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<String, AuthError> {
        let mut in_out = plaintext.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| AuthError::Crypto("sealing a secret failed".into()))?;
        let mut sealed = nonce.as_ref().to_vec();
        sealed.extend_from_slice(&in_out);
        Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
    }

    /// Opens what [`Kek::seal`] sealed with the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, AuthError> {
        let unreadable = || {
            AuthError::Crypto(format!(
                "the secret of {context} does not open under this server's key-encryption key"
            ))
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| unreadable())?;
        if bytes.len() < NONCE_LEN {
            return Err(unreadable());
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| unreadable())?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| unreadable())?;
        Ok(plain.to_vec())
    }
}

fn file_error(what: &str, path: &Path, e: &dyn std::fmt::Display) -> AuthError {
    AuthError::Config(format!("{what} {}: {e}", path.display()))
}

/// Writes `contents` to a new file at `path` readable by its owner only (0600), replacing
/// nothing: the file is created exclusively, then renamed into place by the caller's choice of
/// a fresh path. On failure no partial file is left.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)?;
        }
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_under_its_key_and_context() {
        let (kek, _) = Kek::generate().unwrap();
        let sealed = kek.seal("AKIAEXAMPLE", b"the secret").unwrap();
        assert!(!sealed.contains("the secret"));
        assert_eq!(kek.open("AKIAEXAMPLE", &sealed).unwrap(), b"the secret");
        assert!(kek.open("AKIAOTHER", &sealed).is_err());
        let (other, _) = Kek::generate().unwrap();
        assert!(other.open("AKIAEXAMPLE", &sealed).is_err());
        assert_eq!(format!("{kek:?}"), "Kek(redacted)");
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back_and_a_missing_one_is_none() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth-kek");
        assert!(Kek::load(&path).unwrap().is_none());
        assert!(!path.exists(), "loading created the file");
        let first = Kek::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = first.seal("k", b"s").unwrap();
        let again = Kek::load(&path).unwrap().unwrap();
        assert_eq!(again.open("k", &sealed).unwrap(), b"s");
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(Kek::load(&path), Err(AuthError::Config(_))));
    }
}
