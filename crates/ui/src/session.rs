//! Dashboard sessions. A browser cannot sign requests with SigV4, so an administrator's signed
//! call (`weft dashboard`) gets a one-time login token, short-lived; the page trades it for a
//! session cookie that is `HttpOnly` (scripts cannot read it) and `SameSite=Strict` (other
//! sites cannot make the browser send it), following OWASP's session management advice
//! (<https://cheatsheetseries.owasp.org/cheatsheets/Session_Management_Cheat_Sheet.html>).
//! Both are held in memory, bounded in number, and never logged.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::UiError;

/// How long a login token may wait to be used.
pub const LOGIN_TTL: Duration = Duration::from_secs(120);
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Login tokens waiting at once; past it the oldest is dropped.
pub const MAX_LOGINS: usize = 32;
/// Sessions open at once; past it the oldest is dropped.
pub const MAX_SESSIONS: usize = 64;
/// The session cookie's name.
pub const COOKIE: &str = "weft_ui_session";

/// The login tokens waiting and the sessions open.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    logins: HashMap<[u8; 32], Instant>,
    sessions: HashMap<[u8; 32], Instant>,
}

/// What a token is kept and looked up by: its SHA-256 digest, so that the maps hold no usable
/// secret and a lookup's timing tells nothing about the secret's bytes.
fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn token() -> Result<String, UiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| UiError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Drops what expired, then the oldest entries past `cap - 1` (room for one more).
fn prune(map: &mut HashMap<[u8; 32], Instant>, now: Instant, cap: usize) {
    map.retain(|_, expiry| *expiry > now);
    while map.len() >= cap {
        let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind, still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new one-time login token, valid for [`LOGIN_TTL`].
    pub fn issue_login(&self, now: Instant) -> Result<String, UiError> {
        let token = token()?;
        let mut inner = self.lock();
        prune(&mut inner.logins, now, MAX_LOGINS);
        inner.logins.insert(digest(&token), now + LOGIN_TTL);
        Ok(token)
    }

    /// Uses up a login token: a new session id, valid for [`SESSION_TTL`].
    pub fn redeem(&self, login: &str, now: Instant) -> Result<String, UiError> {
        let mut inner = self.lock();
        match inner.logins.remove(&digest(login)) {
            Some(expiry) if expiry > now => {}
            _ => return Err(UiError::BadLoginToken),
        }
        let session = token()?;
        prune(&mut inner.sessions, now, MAX_SESSIONS);
        inner.sessions.insert(digest(&session), now + SESSION_TTL);
        Ok(session)
    }

    /// Whether `session` is open.
    pub fn is_open(&self, session: &str, now: Instant) -> bool {
        self.lock()
            .sessions
            .get(&digest(session))
            .is_some_and(|expiry| *expiry > now)
    }

    /// The session cookie's `Set-Cookie` value.
    pub fn cookie(session: &str) -> String {
        cookie::Cookie::build((COOKIE, session.to_string()))
            .path("/ui")
            .http_only(true)
            .same_site(cookie::SameSite::Strict)
            .max_age(cookie::time::Duration::seconds(SESSION_TTL.as_secs() as i64))
            .build()
            .to_string()
    }

    /// The session id a request's `Cookie` headers carry, if any.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<String> {
        headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == COOKIE)
            .map(|c| c.value().to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_login_token_opens_one_session_once_and_not_after_it_expired() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let login = sessions.issue_login(now).unwrap();
        let session = sessions.redeem(&login, now).unwrap();
        assert!(sessions.is_open(&session, now));
        assert!(matches!(
            sessions.redeem(&login, now),
            Err(UiError::BadLoginToken)
        ));
        let late = sessions.issue_login(now).unwrap();
        assert!(sessions.redeem(&late, now + LOGIN_TTL).is_err());
        assert!(!sessions.is_open(&session, now + SESSION_TTL));
        assert!(!sessions.is_open("made-up", now));
    }

    #[test]
    fn sessions_past_the_cap_push_out_the_oldest() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let mut opened = Vec::new();
        for i in 0..=MAX_SESSIONS {
            let at = start + Duration::from_millis(i as u64);
            let login = sessions.issue_login(at).unwrap();
            opened.push(sessions.redeem(&login, at).unwrap());
        }
        let now = start + Duration::from_secs(1);
        assert!(!sessions.is_open(&opened[0], now));
        assert!(sessions.is_open(&opened[MAX_SESSIONS], now));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_scoped_to_the_dashboard() {
        let cookie = Sessions::cookie("abc");
        assert!(cookie.starts_with("weft_ui_session=abc"));
        assert!(cookie.contains("HttpOnly"));
        assert!(cookie.contains("SameSite=Strict"));
        assert!(cookie.contains("Path=/ui"));
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            "a=1; weft_ui_session=abc".parse().unwrap(),
        );
        assert_eq!(Sessions::from_headers(&headers).as_deref(), Some("abc"));
    }
}
