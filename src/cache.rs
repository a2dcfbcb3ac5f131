//! The verdict cache: bounded, per-entry TTL, single-flight.
//!
//! Keys are SHA-256 digests of (credential kind, token); the raw token is never
//! stored. A valid verdict lives `min(cache.ttl_seconds, token expiry − now)`; a
//! definitive rejection lives `cache.negative_ttl_seconds`; a LINE failure is
//! never stored. Concurrent misses on one key share one verification: the first
//! runs it inside a `tokio::sync::OnceCell`, every other waiter gets its result
//! (a failure included, which is then forgotten).
//!
//! With `cache.shared = "redis"` a second tier sits behind the in-process one:
//! memory → Redis → LINE, still once per key per replica. Redis holds the
//! identity (never the token) until the same instant memory would; a Redis
//! failure only costs a LINE call, never a request.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Shards of the in-process tier: each a short `std` mutex, never held across an
/// `.await`. Keys are SHA-256 digests, so their first byte spreads them evenly.
const SHARDS: usize = 16;

struct Entry {
    cached: Cached,
    until: Instant,
}

/// Hashes a digest key by its first eight bytes: it is already uniformly random.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

type Shard = HashMap<CacheKey, Entry, BuildHasherDefault<DigestHasher>>;
type Flight = Arc<tokio::sync::OnceCell<Result<Cached, Arc<LineError>>>>;

/// The verdict cache. Hand-written rather than moka: moka's bookkeeping costs
/// about 330 bytes per entry (measured: 100000 small entries, 53.8 MB in moka,
/// 20.9 MB in a HashMap), which put 100000 cached identities over 64 MB.
/// A verdict cache needs neither TinyLFU admission nor precise LRU: expiry is
/// per entry, eviction drops expired entries first, then arbitrary ones.
pub struct VerdictCache {
    shards: Box<[Mutex<Shard>]>,
    /// Entries in all shards, kept within `max_entries`.
    len: AtomicUsize,
    max_entries: usize,
    /// Verifications in flight, so that concurrent misses on one key share one.
    inflight: Mutex<HashMap<CacheKey, Flight, BuildHasherDefault<DigestHasher>>>,
    ttl: Duration,
    negative_ttl: Duration,
    names: IdentityHeaderNames,
    shared: Option<SharedTier>,
}

impl VerdictCache {
    pub fn new(config: &CacheConfig, names: IdentityHeaderNames, shared: Option<SharedTier>) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        Self {
            shards,
            len: AtomicUsize::new(0),
            max_entries: config.max_entries.max(1) as usize,
            inflight: Mutex::new(HashMap::default()),
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
            names,
            shared,
        }
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

    fn shard(&self, key: &CacheKey) -> std::sync::MutexGuard<'_, Shard> {
        self.lock(key[0] as usize % SHARDS)
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[shard].lock().expect("cache shard poisoned")
    }

    /// A live entry for `key`; a stale one is dropped on the way.
    fn lookup(&self, key: &CacheKey) -> Option<Cached> {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(e) if e.until > Instant::now() => Some(e.cached.clone()),
            Some(_) => {
                shard.remove(key);
                self.len.fetch_sub(1, Ordering::Relaxed);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: CacheKey, cached: &Cached) {
        if cached.ttl.is_zero() {
            return;
        }
        let home = key[0] as usize % SHARDS;
        if self.len.load(Ordering::Relaxed) >= self.max_entries {
            self.make_room(home);
        }
        let now = Instant::now();
        if self.lock(home).insert(key, Entry { cached: cached.clone(), until: now + cached.ttl }).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frees room below `max_entries`: expired entries first, then arbitrary
    /// ones, a batch at a time so that the next inserts do not scan again. One
    /// shard lock at a time, starting with the shard the new entry goes to.
    fn make_room(&self, home: usize) {
        let now = Instant::now();
        let batch = self.max_entries.div_ceil(64);
        for step in 0..SHARDS * 2 {
            if self.len.load(Ordering::Relaxed) < self.max_entries {
                return;
            }
            let mut shard = self.lock((home + step) % SHARDS);
            let before = shard.len();
            if step < SHARDS {
                shard.retain(|_, e| e.until > now);
            } else {
                let doomed: Vec<CacheKey> = shard.keys().take(batch).copied().collect();
                for k in doomed {
                    shard.remove(&k);
                }
            }
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    /// The verdict for `key`: from the cache, or from `verify` (run once however
    /// many requests wait for it). `Err` is never cached.
    pub async fn get_or_verify<F>(&self, key: CacheKey, verify: F) -> (Result<Cached, Arc<LineError>>, Lookup)
    where
        F: Future<Output = Result<Verdict, LineError>>,
    {
        let (result, lookup) = match self.lookup(&key) {
            Some(hit) => (Ok(hit), Lookup::Hit),
            None => {
                let flight = self.inflight.lock().expect("poisoned").entry(key).or_default().clone();
                let mut ran = None;
                let result = flight
                    .get_or_init(|| async {
                        // The flight before this one may have filled the cache.
                        if let Some(hit) = self.lookup(&key) {
                            ran = Some(Lookup::Hit);
                            return Ok(hit);
                        }
                        if let Some(shared) = &self.shared
                            && let Some((verdict, ttl)) = shared.get(&key).await
                        {
                            ran = Some(Lookup::Shared);
                            let cached = Cached { stored: self.store(&verdict), ttl };
                            self.insert(key, &cached);
                            return Ok(cached);
                        }
                        ran = Some(Lookup::Miss);
                        let verdict = verify.await.map_err(Arc::new)?;
                        let ttl = self.ttl_for(&verdict);
                        if let Some(shared) = &self.shared {
                            shared.put(&key, &verdict, ttl);
                        }
                        let cached = Cached { stored: self.store(&verdict), ttl };
                        self.insert(key, &cached);
                        Ok(cached)
                    })
                    .await
                    .clone();
                // This flight is over: later misses (after a failure) start anew.
                let mut inflight = self.inflight.lock().expect("poisoned");
                if inflight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                    inflight.remove(&key);
                }
                (result, ran.unwrap_or(Lookup::Coalesced))
            }
        };
        match result {
            // The TTL already ends at the token's expiry; this guards the last
            // second of clock granularity: a stored verdict is never served past
            // expiry. (A fresh verification stands as its verifier decided.)
            Ok(cached) if lookup != Lookup::Miss && !cached.is_live() => {
                if self.shard(&key).remove(&key).is_some() {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
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
        self.len.load(Ordering::Relaxed) as u64
    }

    /// Drops expired entries (the metrics scrape runs it, so `entry_count` is current).
    pub async fn sync(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().expect("cache shard poisoned");
            let before = shard.len();
            shard.retain(|_, e| e.until > now);
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;

    fn cache(max_entries: u64) -> VerdictCache {
        let config = CacheConfig {
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(1),
            max_entries,
            shared: None,
        };
        VerdictCache::new(&config, IdentityHeaderNames::new("X-Line-").unwrap(), None)
    }

    fn valid() -> Verdict {
        Verdict::Valid(Identity {
            user_id: "U1234567890abcdef1234567890abcdef".into(),
            display_name: None,
            picture_url: None,
            email: None,
            channel_id: "1".into(),
            method: AuthMethod::AccessToken,
            expires_at: unix_now() + 3600,
        })
    }

    #[tokio::test]
    async fn stays_within_max_entries_when_full_of_live_entries() {
        let c = cache(100);
        for i in 0..1000u32 {
            let key = cache_key(CredentialKind::AccessToken, &i.to_string());
            let (r, lookup) = c.get_or_verify(key, async { Ok(valid()) }).await;
            assert!(r.is_ok());
            assert_eq!(lookup, Lookup::Miss);
            assert!(c.entry_count() <= 100);
        }
        // The latest entry survived its own insertion.
        let key = cache_key(CredentialKind::AccessToken, "999");
        assert_eq!(c.get_or_verify(key, async { unreachable!() }).await.1, Lookup::Hit);
    }

    #[tokio::test]
    async fn kinds_never_share_an_entry_and_rejections_expire() {
        let c = cache(10);
        let access = cache_key(CredentialKind::AccessToken, "t");
        let id = cache_key(CredentialKind::IdToken, "t");
        assert_ne!(access, id);
        let _ = c.get_or_verify(access, async { Ok(Verdict::Rejected(Rejection::Invalid)) }).await;
        assert_eq!(c.get_or_verify(access, async { unreachable!() }).await.1, Lookup::Hit);
        assert_eq!(c.get_or_verify(id, async { Ok(valid()) }).await.1, Lookup::Miss);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.sync().await;
        assert_eq!(c.entry_count(), 1, "the rejection outlived its negative TTL");
    }
}
