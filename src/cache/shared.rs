//! The shared tier behind the in-process cache (`cache.shared = "redis"`):
//! `{prefix}{hex digest}` → a [`SharedVerdict`] in JSON. Redis holds the
//! identity (never the token) until the same instant memory would; a Redis
//! failure only costs a LINE call, never a request. Everything read back is
//! checked as if it came from an untrusted peer: a stale, malformed or
//! implausible entry is a miss.

use std::sync::Arc;
use std::time::Duration;

use super::{CacheKey, CredentialKind};
use crate::auth::{AuthMethod, Identity, Rejection, Verdict, is_line_user_id};
use crate::clock::Clock;
use crate::redis_conn::RedisConn;
use crate::telemetry::Metrics;

/// Shared entries larger than this are ignored (16 KiB): ours are a few hundred bytes.
const MAX_SHARED_VALUE_BYTES: usize = 16 * 1024;

pub struct SharedTier {
    conn: Arc<RedisConn>,
    /// `line.channel_ids`: a verdict read back is re-checked against them.
    channel_ids: Vec<String>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

/// What Redis holds for one credential digest.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedVerdict {
    /// Format version.
    v: u8,
    /// Unix ms until which the verdict may be used (the memory tier's expiry).
    until_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identity: Option<Identity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rejected: Option<String>,
}

impl SharedTier {
    pub fn new(conn: Arc<RedisConn>, channel_ids: Vec<String>, clock: Clock, metrics: Arc<Metrics>) -> Self {
        Self { conn, channel_ids, clock, metrics }
    }

    pub fn conn(&self) -> &Arc<RedisConn> {
        &self.conn
    }

    fn redis_key(&self, key: &CacheKey) -> String {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        self.conn.key(&hex)
    }

    /// The shared verdict for a credential of `kind`, if Redis has a live one,
    /// judged by this deployment's rules. Failures count and miss.
    pub async fn get(&self, key: &CacheKey, kind: CredentialKind) -> Option<(Verdict, Duration)> {
        let get = redis::cmd("GET").arg(self.redis_key(key)).clone();
        let bytes = match self.conn.run::<Option<Vec<u8>>>("cache_get", &get).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                self.metrics.cache_shared_misses.inc();
                return None;
            }
            Err(_) => {
                self.metrics.cache_shared_errors.inc();
                return None;
            }
        };
        let found = self.decode(&bytes, kind);
        match &found {
            Some(_) => self.metrics.cache_shared_hits.inc(),
            None => self.metrics.cache_shared_misses.inc(),
        };
        found
    }

    /// A stored verdict, re-judged as a fresh one would be here: an identity of
    /// another credential kind is a miss, one of a channel this deployment
    /// does not accept is `wrong_channel`, and a `wrong_channel` rejection (a
    /// verdict about some other deployment's channels) is a miss.
    fn decode(&self, bytes: &[u8], kind: CredentialKind) -> Option<(Verdict, Duration)> {
        if bytes.len() > MAX_SHARED_VALUE_BYTES {
            return None;
        }
        let shared: SharedVerdict = serde_json::from_slice(bytes).ok()?;
        let now_ms = self.clock.unix_millis();
        if shared.v != 1 || shared.until_ms <= now_ms {
            return None;
        }
        let ttl = Duration::from_millis(shared.until_ms - now_ms);
        let verdict = match (shared.identity, shared.rejected) {
            (Some(identity), None)
                if is_line_user_id(&identity.user_id)
                    && identity.expires_at > self.clock.unix_seconds()
                    && identity.method == method_of(kind) =>
            {
                if self.channel_ids.contains(&identity.channel_id) {
                    Verdict::Valid(identity)
                } else {
                    Verdict::Rejected(Rejection::WrongChannel)
                }
            }
            (None, Some(code)) => match Rejection::from_code(&code)? {
                Rejection::WrongChannel => return None,
                rejection => Verdict::Rejected(rejection),
            },
            _ => return None,
        };
        Some((verdict, ttl))
    }

    /// Stores the verdict in the background: the request does not wait on Redis.
    pub fn put(&self, key: &CacheKey, verdict: &Verdict, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let (identity, rejected) = match verdict {
            Verdict::Valid(identity) => (Some(identity.clone()), None),
            Verdict::Rejected(r) => (None, Some(r.as_str().to_owned())),
        };
        let until_ms = self.clock.unix_millis() + ttl.as_millis() as u64;
        let value = serde_json::to_vec(&SharedVerdict { v: 1, until_ms, identity, rejected }).expect("serialisable");
        let set = redis::cmd("SET").arg(self.redis_key(key)).arg(value).arg("PX").arg(ttl.as_millis() as u64).clone();
        let conn = self.conn.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if conn.run::<()>("cache_set", &set).await.is_err() {
                metrics.cache_shared_errors.inc();
            }
        });
    }
}

/// The identity a credential of `kind` yields.
fn method_of(kind: CredentialKind) -> AuthMethod {
    match kind {
        CredentialKind::AccessToken => AuthMethod::AccessToken,
        CredentialKind::IdToken => AuthMethod::IdToken,
    }
}
