//! The verdict cache: bounded, per-entry TTL, single-flight.
//!
//! Keys are SHA-256 digests of (credential kind, token); the raw token is never
//! stored. A valid verdict lives `min(cache.ttl_seconds, token expiry − now)`; a
//! definitive rejection lives `cache.negative_ttl_seconds`; a LINE failure is
//! never stored. Concurrent misses on one key share one verification: moka's
//! `try_get_with` runs a single initialiser and hands its result to every waiter
//! (hand-written single-flight with a map of futures is exactly what it replaces).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use sha2::{Digest, Sha256};

use crate::auth::line::LineError;
use crate::auth::{Rejection, Verdict, unix_now};
use crate::config::CacheConfig;

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

/// A cached verdict with the time it may live, fixed when it was created.
#[derive(Debug)]
pub struct Cached {
    pub verdict: Verdict,
    ttl: Duration,
}

/// How a lookup was served, for metrics and the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    /// Waited for another request's verification of the same token.
    Coalesced,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Coalesced => "coalesced",
        }
    }
}

struct PerEntryTtl;

impl Expiry<CacheKey, Arc<Cached>> for PerEntryTtl {
    fn expire_after_create(&self, _key: &CacheKey, value: &Arc<Cached>, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct VerdictCache {
    inner: moka::future::Cache<CacheKey, Arc<Cached>>,
    ttl: Duration,
    negative_ttl: Duration,
}

impl VerdictCache {
    pub fn new(config: &CacheConfig) -> Self {
        let inner = moka::future::Cache::builder().max_capacity(config.max_entries).expire_after(PerEntryTtl).build();
        Self { inner, ttl: config.ttl, negative_ttl: config.negative_ttl }
    }

    /// The verdict for `key`: from the cache, or from `verify` (run once however
    /// many requests wait for it). `Err` is never cached.
    pub async fn get_or_verify<F>(&self, key: CacheKey, verify: F) -> (Result<Arc<Cached>, Arc<LineError>>, Lookup)
    where
        F: Future<Output = Result<Verdict, LineError>>,
    {
        let (result, lookup) = match self.inner.get(&key).await {
            Some(hit) => (Ok(hit), Lookup::Hit),
            None => {
                let mut ran = false;
                let result = self
                    .inner
                    .try_get_with(key, async {
                        ran = true;
                        let verdict = verify.await?;
                        let ttl = self.ttl_for(&verdict);
                        Ok::<_, LineError>(Arc::new(Cached { verdict, ttl }))
                    })
                    .await;
                (result, if ran { Lookup::Miss } else { Lookup::Coalesced })
            }
        };
        match result {
            // The TTL already ends at the token's expiry; this guards the last
            // second of clock granularity: a stored verdict is never served past
            // expiry. (A fresh verification stands as its verifier decided.)
            Ok(cached) if lookup != Lookup::Miss && !cached.is_live() => {
                self.inner.invalidate(&key).await;
                let expired = Cached { verdict: Verdict::Rejected(Rejection::Expired), ttl: Duration::ZERO };
                (Ok(Arc::new(expired)), lookup)
            }
            other => (other, lookup),
        }
    }

    fn ttl_for(&self, verdict: &Verdict) -> Duration {
        match verdict {
            Verdict::Valid(a) => {
                let left = a.identity.expires_at.saturating_sub(unix_now());
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

impl Cached {
    /// A verdict that is handed out once and never stored (nonce logins).
    pub fn uncached(verdict: Verdict) -> Self {
        Self { verdict, ttl: Duration::ZERO }
    }

    /// A valid verdict whose token has expired is dead whatever its TTL said.
    fn is_live(&self) -> bool {
        match &self.verdict {
            Verdict::Valid(a) => a.identity.expires_at > unix_now(),
            Verdict::Rejected(_) => true,
        }
    }
}
