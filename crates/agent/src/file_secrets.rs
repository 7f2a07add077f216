//! Certificates in files on the proxy's host (App Mesh's `file` TLS sources), served to Envoy
//! over the agent's SDS server instead of being named in the config Envoy gets from Weft.
//!
//! Envoy reads a file named in a listener's or cluster's TLS context when that config arrives,
//! and refuses (NACKs) the whole update when the file is missing or unreadable, which would hold
//! back every other change for the proxy. Named as SDS secrets, the config is always accepted:
//! the agent reads the files (it may read what Envoy's own user may not), serves them once they
//! hold a certificate (and key), logs by path what is wrong until then, and keeps Envoy waiting
//! for that secret only. The agent also reads the files again every few seconds and pushes a
//! changed certificate, which Envoy applies to new connections: a certificate rotated on disk (a
//! mounted Kubernetes secret, cert-manager) takes effect without restarting Envoy, which App
//! Mesh's Envoy did not do (tls.md: "Envoy will not automatically reload the certificate").
//!
//! Secret names (the proxy contract, `docs/proxy-contract.md`), paths percent-encoded for `%`
//! and `|`:
//! - `file-certificate:<certificateChain>|<privateKey>`: a `tls_certificate`;
//! - `file-trust:<certificateChain>`: a `validation_context` trusting those certificates.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSpecifier;
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tracing::{info, warn};

/// The prefix of a certificate-and-key secret's name.
pub const CERTIFICATE_PREFIX: &str = "file-certificate:";
/// The prefix of a trust (validation context) secret's name.
pub const TRUST_PREFIX: &str = "file-trust:";
/// How often the files are read again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What a file secret's name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSecret {
    /// A certificate chain and its private key.
    Certificate { chain: PathBuf, key: PathBuf },
    /// CA certificates to trust.
    Trust { chain: PathBuf },
}

fn decode(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "7C" | "7c" => '|',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

impl FileSecret {
    /// The file secret `name` stands for; `None` for any other name.
    pub fn parse(name: &str) -> Option<FileSecret> {
        if let Some(rest) = name.strip_prefix(CERTIFICATE_PREFIX) {
            let (chain, key) = rest.split_once('|')?;
            Some(FileSecret::Certificate {
                chain: decode(chain)?.into(),
                key: decode(key)?.into(),
            })
        } else {
            let chain = decode(name.strip_prefix(TRUST_PREFIX)?)?;
            Some(FileSecret::Trust {
                chain: chain.into(),
            })
        }
    }

    /// Reads the files: the secret named `name`, and a version that changes with their content.
    fn load(&self, name: &str) -> Result<(String, Secret), String> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
        };
        let certificates = |path: &PathBuf, bytes: &[u8]| {
            let count = CertificateDer::pem_slice_iter(bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?
                .len();
            if count == 0 {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
            Ok(())
        };
        let inline = |bytes: Vec<u8>| {
            Some(DataSource {
                specifier: Some(DataSpecifier::InlineBytes(bytes)),
                ..Default::default()
            })
        };
        let (digest, r#type) = match self {
            FileSecret::Certificate { chain, key } => {
                let (chain_bytes, key_bytes) = (read(chain)?, read(key)?);
                certificates(chain, &chain_bytes)?;
                PrivateKeyDer::from_pem_slice(&key_bytes)
                    .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
                let digest = content_digest(&[&chain_bytes, &key_bytes]);
                (
                    digest,
                    SecretType::TlsCertificate(TlsCertificate {
                        certificate_chain: inline(chain_bytes),
                        private_key: inline(key_bytes),
                        ..Default::default()
                    }),
                )
            }
            FileSecret::Trust { chain } => {
                let bytes = read(chain)?;
                certificates(chain, &bytes)?;
                let digest = content_digest(&[&bytes]);
                (
                    digest,
                    SecretType::ValidationContext(CertificateValidationContext {
                        trusted_ca: inline(bytes),
                        ..Default::default()
                    }),
                )
            }
        };
        Ok((
            format!("file-{digest:016x}"),
            Secret {
                name: name.to_string(),
                r#type: Some(r#type),
            },
        ))
    }
}

/// A digest of the files' content that changes when any of them does (FNV-1a: not a security
/// measure, only a version).
fn content_digest(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0xff)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

struct Entry {
    secret: FileSecret,
    state: Result<(String, Secret), String>,
}

/// The file secrets Envoy asked for, each as last read; a generation that moves whenever one
/// of them changes (read anew, or failing differently).
#[derive(Clone)]
pub struct FileSecrets {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    generation: Arc<watch::Sender<u64>>,
}

impl Default for FileSecrets {
    fn default() -> Self {
        FileSecrets {
            entries: Arc::default(),
            generation: Arc::new(watch::channel(0).0),
        }
    }
}

impl FileSecrets {
    /// Whether `name` is a file secret's name.
    pub fn serves(name: &str) -> bool {
        FileSecret::parse(name).is_some()
    }

    /// A receiver that sees the generation move when a secret changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The secret `name` and its version, read now the first time it is asked for (and kept
    /// fresh from then on); `None` for another name, or while its files do not hold one.
    pub fn get(&self, name: &str) -> Option<(String, Secret)> {
        let mut entries = self.entries.lock().ok()?;
        if !entries.contains_key(name) {
            let secret = FileSecret::parse(name)?;
            let state = secret.load(name);
            match &state {
                Ok((version, _)) => {
                    info!(secret = %name, %version, "serving a certificate from files")
                }
                Err(e) => warn!(secret = %name, error = %e,
                    "cannot serve the certificate Envoy asked for yet; whatever needs it waits, and the files are read again every few seconds"),
            }
            entries.insert(name.to_string(), Entry { secret, state });
        }
        entries.get(name)?.state.as_ref().ok().cloned()
    }

    /// Reads every secret's files again; moves the generation if any changed.
    pub fn refresh(&self) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let mut changed = false;
        for (name, entry) in entries.iter_mut() {
            let state = entry.secret.load(name);
            let same = match (&state, &entry.state) {
                (Ok((new, _)), Ok((old, _))) => new == old,
                (Err(new), Err(old)) => new == old,
                _ => false,
            };
            if same {
                continue;
            }
            match &state {
                Ok((version, _)) => {
                    info!(secret = %name, %version, "the certificate files changed: sending them to Envoy")
                }
                Err(e) => warn!(secret = %name, error = %e,
                    "cannot read the certificate files; Envoy keeps the last good certificate"),
            }
            // The last good certificate stays served while the files are unreadable (a rotation
            // replacing them one by one); a failure is only logged.
            if state.is_ok() || entry.state.is_err() {
                entry.state = state;
            }
            changed = true;
        }
        drop(entries);
        if changed {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Reads the files again every `every` until dropped (the task ends with the returned
    /// handle's abort).
    pub fn spawn_refresh(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let secrets = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let secrets = secrets.clone();
                // File reads block: off the runtime's workers.
                let _ = tokio::task::spawn_blocking(move || secrets.refresh()).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn pem_pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["red.apps.local".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn names_carry_their_paths_with_percent_and_bar_encoded() {
        assert_eq!(
            FileSecret::parse("file-certificate:/keys/a%7Cb.pem|/keys/100%25.key"),
            Some(FileSecret::Certificate {
                chain: "/keys/a|b.pem".into(),
                key: "/keys/100%.key".into()
            })
        );
        assert_eq!(
            FileSecret::parse("file-trust:/keys/ca.pem"),
            Some(FileSecret::Trust {
                chain: "/keys/ca.pem".into()
            })
        );
        for other in [
            "weft-identity",
            "file-certificate:/only-one-path",
            "file-trust:",
            "file-trust:/bad%41",
        ] {
            assert_eq!(FileSecret::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_missing_file_is_not_served_until_it_appears_and_a_rotated_one_gets_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = (dir.path().join("red.pem"), dir.path().join("red.key"));
        let name = format!("{CERTIFICATE_PREFIX}{}|{}", chain.display(), key.display());
        let secrets = FileSecrets::default();
        let generation = secrets.subscribe();
        assert!(secrets.get(&name).is_none(), "no files yet");

        let (cert_pem, key_pem) = pem_pair();
        std::fs::write(&chain, &cert_pem).unwrap();
        std::fs::write(&key, "not a key").unwrap();
        secrets.refresh();
        assert!(secrets.get(&name).is_none(), "a key that is not one");

        std::fs::write(&key, &key_pem).unwrap();
        secrets.refresh();
        let (first, secret) = secrets.get(&name).unwrap();
        assert_eq!(secret.name, name);
        let Some(SecretType::TlsCertificate(tls)) = secret.r#type else {
            panic!("a certificate")
        };
        assert_eq!(
            tls.certificate_chain.and_then(|d| d.specifier),
            Some(DataSpecifier::InlineBytes(cert_pem.into_bytes()))
        );
        assert!(*generation.borrow() >= 2);

        // Unchanged files: same version, no new generation.
        let before = *generation.borrow();
        secrets.refresh();
        assert_eq!(*generation.borrow(), before);
        assert_eq!(secrets.get(&name).unwrap().0, first);

        // Rotated on disk: a new version. Deleted: the last good one stays.
        let (cert_pem, key_pem) = pem_pair();
        std::fs::write(&chain, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        secrets.refresh();
        let (second, _) = secrets.get(&name).unwrap();
        assert_ne!(first, second);
        std::fs::remove_file(&key).unwrap();
        secrets.refresh();
        assert_eq!(secrets.get(&name).unwrap().0, second);
    }
}
