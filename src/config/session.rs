//! `[session]`: proxy-issued sessions, sealed cookies that stand in for a LINE
//! access token in a browser (`auth = "session"` routes, and the exchange
//! endpoint that turns a verified access token into one).

use std::time::Duration;

use super::key_ring::{KeyRing, read_key_ring};
use super::keys::{Seconds, section};
use super::{FileConfig, Problems};

/// `session.cookie_name`: `__Host-` makes browsers insist on `Secure`,
/// `Path=/` and no `Domain`.
pub const DEFAULT_SESSION_COOKIE_NAME: &str = "__Host-line-auth-session";
/// `session.max_age_seconds` (one day).
pub const DEFAULT_SESSION_MAX_AGE_SECONDS: u64 = 86_400;
/// `session.revalidate_seconds` (five minutes).
pub const DEFAULT_SESSION_REVALIDATE_SECONDS: u64 = 300;
/// `session.exchange_path`.
pub const DEFAULT_SESSION_EXCHANGE_PATH: &str = "/auth/session";
/// Key files one ring may hold.
const MAX_KEY_FILES: usize = 8;

section! {
    /// `[session]`
    pub struct SessionSection("session") {
        /// The cookie holding the sealed session.
        cookie_name: String = DEFAULT_SESSION_COOKIE_NAME,
        /// Files of 32 random bytes (raw or base64): the first seals, all open.
        key_files: Vec<String>,
        /// A session's absolute lifetime.
        max_age_seconds: Seconds<60, 31_536_000> = DEFAULT_SESSION_MAX_AGE_SECONDS,
        /// The sealed LINE access token is re-verified with LINE at most this often.
        revalidate_seconds: Seconds<1, 86_400> = DEFAULT_SESSION_REVALIDATE_SECONDS,
        /// `POST` with `Authorization: Bearer <access token>` → 204 + `Set-Cookie`.
        exchange_path: String = DEFAULT_SESSION_EXCHANGE_PATH,
    }
}

/// `[session]`, validated: present when a route has `auth = "session"`.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionConfig {
    pub cookie_name: String,
    /// Every key of every file, in order: the first seals.
    pub keys: KeyRing,
    pub max_age: Duration,
    pub revalidate: Duration,
    pub exchange_path: String,
}

impl SessionSection {
    pub(super) fn validate(&self, file: &FileConfig, used: bool, p: &mut Problems) -> Option<SessionConfig> {
        if !used {
            for key in Self::KEYS.iter().map(|k| format!("session.{}", k.name)) {
                if file.wrote(&key) {
                    p.warn(key, "has no effect: no route has auth = \"session\"");
                }
            }
            return None;
        }
        if !is_cookie_name(&self.cookie_name) {
            p.error("session.cookie_name", "must be 1 to 64 letters, digits or -_.!#$%&'*+^`|~ (a cookie name)");
        } else if !self.cookie_name.starts_with("__Host-") {
            p.warn(
                "session.cookie_name",
                "does not start with __Host-: a sibling subdomain (or http:// on the same host) can then set a cookie                  of this name, such as its own valid session, and the browser sends it to this app",
            );
        }
        if let Err(why) = crate::routes::check_path_prefix(&self.exchange_path) {
            p.error("session.exchange_path", format!("{why} (a path such as \"/auth/session\")"));
        } else if [&file.nonce.path, &file.forward_auth.path].contains(&&self.exchange_path) {
            p.error("session.exchange_path", "is also another endpoint's path: give each endpoint its own path");
        }
        if self.revalidate_seconds.0 > self.max_age_seconds.0 {
            p.warn(
                "session.revalidate_seconds",
                "is longer than session.max_age_seconds: every session ends before its token is re-verified",
            );
        }
        let keys = self.key_ring(p)?;
        Some(SessionConfig {
            cookie_name: self.cookie_name.clone(),
            keys,
            max_age: self.max_age_seconds.duration(),
            revalidate: self.revalidate_seconds.duration(),
            exchange_path: self.exchange_path.clone(),
        })
    }

    fn key_ring(&self, p: &mut Problems) -> Option<KeyRing> {
        if self.key_files.is_empty() {
            p.error(
                "session.key_files",
                "is required with auth = \"session\" routes and with login.enabled: files of 32 random bytes (`head -c 32 /dev/urandom > FILE`), the same on every replica",
            );
            return None;
        }
        if self.key_files.len() > MAX_KEY_FILES {
            p.error("session.key_files", format!("names more than {MAX_KEY_FILES} files"));
            return None;
        }
        let mut keys = Vec::new();
        for (i, path) in self.key_files.iter().enumerate() {
            let key = format!("session.key_files[{i}]");
            let path = std::path::Path::new(path);
            super::secret::check_permissions(&key, path, p);
            match read_key_ring(path) {
                Ok(ring) => keys.extend_from_slice(ring.keys()),
                Err(why) => p.error(key, why),
            }
        }
        if keys.iter().enumerate().any(|(i, k)| keys[..i].contains(k)) {
            p.error("session.key_files", "hold the same key twice");
            return None;
        }
        (!keys.is_empty()).then(|| KeyRing::from_keys(keys))
    }
}

/// An RFC 6265 cookie name (an RFC 9110 token), at most 64 bytes.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
