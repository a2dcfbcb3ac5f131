//! The shared tier behind the in-process cache (`cache.shared = "redis"`):
//! `{prefix}{hex digest}` → a [`SharedVerdict`] in JSON, sealed with the
//! deployment's MAC ([`RedisMac`]). Redis holds the identity (never the token)
//! until the same instant memory would; a Redis failure only costs a LINE
//! call, never a request. Everything read back is checked as if it came from
//! an untrusted peer: a value without this deployment's MAC, a stale,
//! malformed, oversized or implausible one is a miss, and what memory keeps of
//! it lives no longer than `cache.ttl_seconds`, the value's own expiry or the
//! Redis key's TTL, whichever ends first.

use std::sync::Arc;
use std::time::Duration;

use super::{CacheKey, CredentialKind};
use crate::auth::{AuthMethod, Identity, Rejection, Verdict, is_line_user_id};
use crate::clock::Clock;
use crate::redis_conn::RedisConn;
use crate::redis_entry::{BOUNDED_GET_SCRIPT, Bounded, RedisMac};
use crate::telemetry::Metrics;

/// Shared entries larger than this are ignored (16 KiB): ours are a few hundred bytes.
const MAX_SHARED_VALUE_BYTES: usize = 16 * 1024;

pub struct SharedTier {
    conn: Arc<RedisConn>,
    mac: RedisMac,
    /// `cache.ttl_seconds` and `cache.negative_ttl_seconds`: no verdict from
    /// Redis is kept longer, whatever the replica that wrote it was configured with.
    max_ttl: Duration,
    max_negative_ttl: Duration,
    /// `line.channel_ids`: a verdict read back is re-checked against them.
    channel_ids: Vec<String>,
    /// 16 hex of the settings verdicts depend on, in every key (see
    /// `generation::verdict_scope`): a reload that changes them, or a replica
    /// configured otherwise, never reads verdicts made under other rules.
    scope: String,
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
    /// Unix ms at which the verdict was made: a session verdict is used only
    /// within this replica's `session.revalidate_seconds` of it, whatever
    /// bound the replica that wrote it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at_ms: Option<u64>,
}

impl SharedTier {
    pub fn new(
        conn: Arc<RedisConn>,
        mac: RedisMac,
        channel_ids: Vec<String>,
        scope: String,
        (max_ttl, max_negative_ttl): (Duration, Duration),
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { conn, mac, max_ttl, max_negative_ttl, channel_ids, scope, clock, metrics }
    }

    pub fn conn(&self) -> &Arc<RedisConn> {
        &self.conn
    }

    fn redis_key(&self, key: &CacheKey) -> String {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        self.conn.key(&format!("{}:{hex}", self.scope))
    }

    /// The shared verdict for a credential of `kind`, if Redis has a live one
    /// sealed by this deployment, judged by this deployment's rules, and (with
    /// `max_age`, for sessions) made no longer ago than that. Failures count
    /// and miss.
    pub async fn get(
        &self,
        key: &CacheKey,
        kind: CredentialKind,
        max_age: Option<Duration>,
    ) -> Option<(Verdict, Duration)> {
        let redis_key = self.redis_key(key);
        let get = redis::cmd("EVAL").arg(BOUNDED_GET_SCRIPT).arg(1).arg(&redis_key).arg(MAX_SHARED_VALUE_BYTES).clone();
        let found = match self.conn.run::<redis::Value>("cache_get", &get).await.map(Bounded::from_reply) {
            Ok(Some(Bounded::Found { value, pttl_ms })) => {
                self.mac.open(&redis_key, &value).and_then(|payload| self.decode(payload, kind, max_age)).map(
                    |(verdict, ttl)| {
                        let cap = match verdict {
                            Verdict::Valid(_) => self.max_ttl,
                            Verdict::Rejected(_) => self.max_negative_ttl,
                        };
                        let ttl = ttl.min(cap);
                        (verdict, pttl_ms.map_or(ttl, |ms| ttl.min(Duration::from_millis(ms))))
                    },
                )
            }
            Ok(Some(Bounded::Missing)) => None,
            Ok(Some(Bounded::TooLarge)) => {
                self.mac.refused("too_large");
                None
            }
            Ok(None) | Err(_) => {
                self.metrics.cache_shared_errors.inc();
                return None;
            }
        };
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
    fn decode(&self, bytes: &[u8], kind: CredentialKind, max_age: Option<Duration>) -> Option<(Verdict, Duration)> {
        let Ok(shared) = serde_json::from_slice::<SharedVerdict>(bytes) else {
            // Sealed by this deployment yet unreadable: another version's format.
            self.mac.refused("malformed");
            return None;
        };
        let now_ms = self.clock.unix_millis();
        if shared.v != 1 || shared.until_ms <= now_ms {
            return None;
        }
        let mut ttl = Duration::from_millis(shared.until_ms - now_ms);
        if let Some(max_age) = max_age {
            // Without the time it was made (an older format), the age is unknown: a miss.
            let age = Duration::from_millis(now_ms.saturating_sub(shared.at_ms?));
            ttl = ttl.min(max_age.checked_sub(age).filter(|left| !left.is_zero())?);
        }
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

    /// Deletes the shared verdict for `key`; a failure is counted.
    pub async fn remove(&self, key: &CacheKey) {
        let del = redis::cmd("DEL").arg(self.redis_key(key)).clone();
        if self.conn.run::<()>("cache_del", &del).await.is_err() {
            self.metrics.cache_shared_errors.inc();
        }
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
        let at_ms = Some(self.clock.unix_millis());
        let payload =
            serde_json::to_vec(&SharedVerdict { v: 1, until_ms, identity, rejected, at_ms }).expect("serialisable");
        let redis_key = self.redis_key(key);
        let value = self.mac.seal(&redis_key, &payload);
        let set = redis::cmd("SET").arg(redis_key).arg(value).arg("PX").arg(ttl.as_millis() as u64).clone();
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
        CredentialKind::Session => AuthMethod::Session,
    }
}
