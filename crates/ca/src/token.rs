//! Join tokens: how a proxy proves who it is the first time.
//!
//! The operator creates a token for one virtual node or virtual gateway (`weft join-token
//! create`, `POST /weft/v1/join-tokens`) and hands it to that resource's deployment. The token is
//! `weft-jt.<id>.<secret>`: the id names its record, the secret (256 random bits) proves it is
//! the token. The secret is shown once, at creation; the store keeps only its SHA-256, so
//! neither the store nor its backups can be used to join.
//!
//! A token is **reusable until it expires** (default one hour, at most [`MAX_TTL`]): App Mesh
//! users deploy a virtual node as many replicas of one task definition or pod template, and
//! each replica joins with the same token. It can be **revoked** at any time (`weft join-token
//! revoke ID`), after which it is refused (403); an expired token is refused (401). Revoking a
//! token does not revoke the certificates issued with it: they expire on their own (24 hours by
//! default), and renewal needs the resource to still exist.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::identity::Resource;
use crate::CaError;

/// What every join token starts with.
pub const TOKEN_PREFIX: &str = "weft-jt";
/// The longest a join token may live.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

/// A join token as the store keeps it: no secret, only the secret's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// The token's public id.
    pub id: String,
    /// The resource it grants, `mesh/<mesh>/virtualNode/<name>`.
    pub resource: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Seconds since the epoch.
    pub expires_at: u64,
    /// Seconds since the epoch, once revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
}

/// Where a token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// Usable.
    Active,
    /// Past its expiry.
    Expired,
    /// Revoked by the operator.
    Revoked,
}

impl TokenState {
    /// `active`, `expired` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
        }
    }
}

/// A new token: the string to hand out (shown once) and the record to store.
pub struct Minted {
    /// `weft-jt.<id>.<secret>`.
    pub token: String,
    /// What the store keeps.
    pub record: TokenRecord,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("token", &"<secret>")
            .field("record", &self.record)
            .finish()
    }
}

/// A token as a client presented it, split into id and secret.
pub struct Presented {
    /// The record to look up.
    pub id: String,
    secret: String,
}

pub(crate) fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random(n: usize) -> Result<Vec<u8>, CaError> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Crypto("no randomness".into()))?;
    Ok(bytes)
}

fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equality that takes as long whatever the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a token lifetime: at least a second, at most [`MAX_TTL`].
pub fn check_ttl(ttl: Duration) -> Result<Duration, CaError> {
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        return Err(CaError::InvalidInput(format!(
            "join token ttl must be between 1 second and {} days, got {} seconds",
            MAX_TTL.as_secs() / 86_400,
            ttl.as_secs()
        )));
    }
    Ok(ttl)
}

/// Creates a token for `resource`, valid from `now` for `ttl`.
pub fn mint(resource: &Resource, now: SystemTime, ttl: Duration) -> Result<Minted, CaError> {
    let ttl = check_ttl(ttl)?;
    let id: String = random(8)?.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random(32)?);
    let created_at = epoch_secs(now);
    let record = TokenRecord {
        id: id.clone(),
        resource: resource.path(),
        created_at,
        expires_at: created_at + ttl.as_secs(),
        revoked_at: None,
        secret_sha256: sha256_hex(secret.as_bytes()),
    };
    Ok(Minted {
        token: format!("{TOKEN_PREFIX}.{id}.{secret}"),
        record,
    })
}

/// Splits a presented token; a string that is not a join token is refused (401).
pub fn parse(token: &str) -> Result<Presented, CaError> {
    let bad = || CaError::Unauthenticated("the bearer token is not a Weft join token".into());
    let mut parts = token.trim().splitn(3, '.');
    let (Some(prefix), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let id_ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if prefix != TOKEN_PREFIX || !id_ok || secret.is_empty() || secret.len() > 128 {
        return Err(bad());
    }
    Ok(Presented {
        id: id.to_ascii_lowercase(),
        secret: secret.to_string(),
    })
}

/// Whether `id` could be a token id (what `DELETE /weft/v1/join-tokens/{id}` accepts).
pub fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl TokenRecord {
    /// Where the token stands at `now`.
    pub fn state(&self, now: SystemTime) -> TokenState {
        if self.revoked_at.is_some() {
            TokenState::Revoked
        } else if epoch_secs(now) >= self.expires_at {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }

    /// Checks a presented token against this record: the right secret (else 401), not expired
    /// (401) and not revoked (403). Returns the resource it grants.
    pub fn admit(&self, presented: &Presented, now: SystemTime) -> Result<Resource, CaError> {
        let digest = sha256_hex(presented.secret.as_bytes());
        if presented.id != self.id || !same(digest.as_bytes(), self.secret_sha256.as_bytes()) {
            return Err(CaError::Unauthenticated("unknown join token".into()));
        }
        match self.state(now) {
            TokenState::Active => {}
            TokenState::Expired => {
                return Err(CaError::Unauthenticated(format!(
                    "join token {} expired; ask the operator for a new one",
                    self.id
                )))
            }
            TokenState::Revoked => {
                return Err(CaError::Forbidden(format!(
                    "join token {} was revoked",
                    self.id
                )))
            }
        }
        Resource::parse(&self.resource)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_token_admits_its_resource_until_it_expires_or_is_revoked() {
        let now = SystemTime::now();
        let resource = Resource::parse("mesh/apps/virtualNode/red").unwrap();
        let minted = mint(&resource, now, Duration::from_secs(60)).unwrap();
        assert!(!format!("{minted:?}").contains(minted.token.rsplit('.').next().unwrap()));
        assert!(!minted.record.secret_sha256.is_empty());
        let presented = parse(&minted.token).unwrap();
        assert_eq!(presented.id, minted.record.id);
        assert_eq!(minted.record.admit(&presented, now).unwrap(), resource);
        // Reusable: a second replica joins with the same token.
        assert_eq!(minted.record.admit(&presented, now).unwrap(), resource);
        let later = now + Duration::from_secs(61);
        assert!(matches!(
            minted.record.admit(&presented, later),
            Err(CaError::Unauthenticated(_))
        ));
        let mut revoked = minted.record.clone();
        revoked.revoked_at = Some(epoch_secs(now));
        assert!(matches!(
            revoked.admit(&presented, now),
            Err(CaError::Forbidden(_))
        ));
    }

    #[test]
    fn a_wrong_secret_or_a_malformed_token_is_refused() {
        let now = SystemTime::now();
        let resource = Resource::parse("mesh/apps/virtualNode/red").unwrap();
        let minted = mint(&resource, now, Duration::from_secs(60)).unwrap();
        let forged = format!("{TOKEN_PREFIX}.{}.AAAA", minted.record.id);
        assert!(matches!(
            minted.record.admit(&parse(&forged).unwrap(), now),
            Err(CaError::Unauthenticated(_))
        ));
        for bad in [
            "",
            "weft-jt",
            "weft-jt.xyz.abc",
            "other.0123456789abcdef.s",
            "weft-jt.0123456789abcdef.",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(mint(&resource, now, Duration::ZERO).is_err());
        assert!(mint(&resource, now, MAX_TTL + Duration::from_secs(1)).is_err());
    }
}
