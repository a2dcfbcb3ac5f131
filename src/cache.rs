//! The verdict cache: bounded, per-entry TTL, single-flight.
//!
//! Keys are SHA-256 digests of (credential kind, token); the raw token is never
//! stored. A valid verdict lives `min(cache.ttl_seconds, token expiry − now)`; a
//! definitive rejection lives `cache.negative_ttl_seconds`; a LINE failure is
//! never stored. Concurrent misses on one key share one verification: moka's
//! `try_get_with` runs a single initialiser and hands its result to every waiter
//! (hand-written single-flight with a map of futures is exactly what it replaces).
//!
//! With `cache.shared = "redis"` a second tier sits behind the in-process one:
//! memory → Redis → LINE, still once per key per replica. Redis holds the
//! identity (never the token) until the same instant memory would; a Redis
//! failure only costs a LINE call, never a request.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use sha2::{Digest, Sha256};

use crate::auth::line::LineError;
use crate::auth::{Identity, Rejection, Verdict, is_line_user_id, unix_now};
use crate::config::CacheConfig;
use crate::headers::{EncodedIdentity, IdentityHeaderNames};
use crate::redis_conn::RedisConn;
use crate::telemetry::Metrics;

/// Shared entries larger than this are ignored (16 KiB): ours are a few hundred bytes.
const MAX_SHARED_VALUE_BYTES: usize = 16 * 1024;

/// Digest of a credential: what the cache is keyed by.
pub type CacheKey = [u8; 32];

/// Credential kinds, mixed into the key so one token string can never be
/// mistaken for another kind of credential.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub enum CredentialKind {
    AccessToken = 1,
    IdToken = 2,
}

pub fn cache_key(kind: CredentialKind, token: &str) -> CacheKey {
    let mut h = Sha256::new();
    h.update([kind as u8]);
    h.update(token.as_bytes());
    h.finalize().into()
}

/// What a cache entry holds: for a valid token only its encoded headers (one
/// buffer, a few hundred bytes), so 100000 identities fit in tens of megabytes.
#[derive(Clone, Debug)]
pub enum Stored {
    Valid(EncodedIdentity),
    Rejected(Rejection),
}

/// A cached verdict with the time it may live, fixed when it was created.
#[derive(Clone, Debug)]
pub struct Cached {
    pub stored: Stored,
    ttl: Duration,
}

/// How a lookup was served, for metrics and the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    /// Waited for another request's verification of the same token.
    Coalesced,
    /// Not in memory; found in the shared (Redis) tier.
    Shared,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Coalesced => "coalesced",
            Lookup::Shared => "shared",
        }
    }
}

struct PerEntryTtl;

impl Expiry<CacheKey, Cached> for PerEntryTtl {
    fn expire_after_create(&self, _key: &CacheKey, value: &Cached, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct VerdictCache {
    /// Entries by value, not `Arc`: a clone is a refcount and 80 bytes, and
    /// 100000 entries save an allocation each.
    inner: moka::future::Cache<CacheKey, Cached>,
    ttl: Duration,
    negative_ttl: Duration,
    names: IdentityHeaderNames,
    shared: Option<SharedTier>,
}

impl VerdictCache {
    pub fn new(config: &CacheConfig, names: IdentityHeaderNames, shared: Option<SharedTier>) -> Self {
        let inner = moka::future::Cache::builder().max_capacity(config.max_entries).expire_after(PerEntryTtl).build();
        Self { inner, ttl: config.ttl, negative_ttl: config.negative_ttl, names, shared }
    }

    /// The compact form a verdict is kept in.
    pub fn store(&self, verdict: &Verdict) -> Stored {
        match verdict {
            Verdict::Valid(identity) => Stored::Valid(self.names.encode(identity)),
            Verdict::Rejected(r) => Stored::Rejected(*r),
        }
    }

    /// The shared tier's connection, if any.
    pub fn shared_redis(&self) -> Option<&Arc<RedisConn>> {
        self.shared.as_ref().map(|s| &s.conn)
    }

    /// The verdict for `key`: from the cache, or from `verify` (run once however
    /// many requests wait for it). `Err` is never cached.
    pub async fn get_or_verify<F>(&self, key: CacheKey, verify: F) -> (Result<Cached, Arc<LineError>>, Lookup)
    where
        F: Future<Output = Result<Verdict, LineError>>,
    {
        let (result, lookup) = match self.inner.get(&key).await {
            Some(hit) => (Ok(hit), Lookup::Hit),
            None => {
                let mut ran = None;
                let result = self
                    .inner
                    .try_get_with(key, async {
                        if let Some(shared) = &self.shared
                            && let Some((verdict, ttl)) = shared.get(&key).await
                        {
                            ran = Some(Lookup::Shared);
                            return Ok(Cached { stored: self.store(&verdict), ttl });
                        }
                        ran = Some(Lookup::Miss);
                        let verdict = verify.await?;
                        let ttl = self.ttl_for(&verdict);
                        if let Some(shared) = &self.shared {
                            shared.put(&key, &verdict, ttl);
                        }
                        Ok::<_, LineError>(Cached { stored: self.store(&verdict), ttl })
                    })
                    .await;
                (result, ran.unwrap_or(Lookup::Coalesced))
            }
        };
        match result {
            // The TTL already ends at the token's expiry; this guards the last
            // second of clock granularity: a stored verdict is never served past
            // expiry. (A fresh verification stands as its verifier decided.)
            Ok(cached) if lookup != Lookup::Miss && !cached.is_live() => {
                self.inner.invalidate(&key).await;
                let expired = Cached { stored: Stored::Rejected(Rejection::Expired), ttl: Duration::ZERO };
                (Ok(expired), lookup)
            }
            other => (other, lookup),
        }
    }

    fn ttl_for(&self, verdict: &Verdict) -> Duration {
        match verdict {
            Verdict::Valid(identity) => {
                let left = identity.expires_at.saturating_sub(unix_now());
                self.ttl.min(Duration::from_secs(left))
            }
            Verdict::Rejected(_) => self.negative_ttl,
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Runs moka's pending housekeeping (tests and the metrics scrape use it so
    /// that `entry_count` is current).
    pub async fn sync(&self) {
        self.inner.run_pending_tasks().await;
    }
}

/// The Redis tier: `{prefix}{hex digest}` → a [`SharedVerdict`] in JSON.
pub struct SharedTier {
    conn: Arc<RedisConn>,
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
    pub fn new(conn: Arc<RedisConn>, metrics: Arc<Metrics>) -> Self {
        Self { conn, metrics }
    }

    fn redis_key(&self, key: &CacheKey) -> String {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        self.conn.key(&hex)
    }

    /// The shared verdict, if Redis has a live one. Failures count and miss.
    async fn get(&self, key: &CacheKey) -> Option<(Verdict, Duration)> {
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
        let found = self.decode(&bytes);
        match &found {
            Some(_) => self.metrics.cache_shared_hits.inc(),
            None => self.metrics.cache_shared_misses.inc(),
        };
        found
    }

    /// Checks everything it reads: a stale, malformed or implausible entry is a miss.
    fn decode(&self, bytes: &[u8]) -> Option<(Verdict, Duration)> {
        if bytes.len() > MAX_SHARED_VALUE_BYTES {
            return None;
        }
        let shared: SharedVerdict = serde_json::from_slice(bytes).ok()?;
        let now_ms = unix_now() * 1000;
        if shared.v != 1 || shared.until_ms <= now_ms {
            return None;
        }
        let ttl = Duration::from_millis(shared.until_ms - now_ms);
        let verdict = match (shared.identity, shared.rejected) {
            (Some(identity), None) if is_line_user_id(&identity.user_id) && identity.expires_at > unix_now() => {
                Verdict::Valid(identity)
            }
            (None, Some(code)) => Verdict::Rejected(Rejection::from_code(&code)?),
            _ => return None,
        };
        Some((verdict, ttl))
    }

    /// Stores the verdict in the background: the request does not wait on Redis.
    fn put(&self, key: &CacheKey, verdict: &Verdict, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let (identity, rejected) = match verdict {
            Verdict::Valid(identity) => (Some(identity.clone()), None),
            Verdict::Rejected(r) => (None, Some(r.as_str().to_owned())),
        };
        let until_ms = unix_now() * 1000 + ttl.as_millis() as u64;
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

impl Cached {
    /// A verdict that is handed out once and never stored (nonce logins).
    pub fn uncached(stored: Stored) -> Self {
        Self { stored, ttl: Duration::ZERO }
    }

    /// A valid verdict whose token has expired is dead whatever its TTL said.
    fn is_live(&self) -> bool {
        match &self.stored {
            Stored::Valid(e) => e.expires_at > unix_now(),
            Stored::Rejected(_) => true,
        }
    }
}
