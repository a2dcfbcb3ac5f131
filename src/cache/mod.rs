//! The verdict cache: bounded, per-entry TTL, single-flight.
//!
//! Keys are SHA-256 digests of (credential kind, token); the raw token is never
//! stored. A valid verdict lives `min(cache.ttl_seconds, token expiry − now)`; a
//! definitive rejection lives `cache.negative_ttl_seconds`; a LINE failure is
//! never stored. Either TTL is then shortened by up to
//! `cache.ttl_jitter_percent` of it, a share fixed per key by its digest: the
//! verdicts of a burst of logins (or of a warm-up) expire spread out instead of
//! sending LINE a burst of re-verifications together. Concurrent misses on one key share one verification: the first
//! runs it inside a `tokio::sync::OnceCell`, every other waiter gets its result
//! (a failure included, which is then forgotten).
//!
//! Expired entries are dropped when met, and by a background sweep every
//! second (so a full cache holds dead entries for about a second at most).
//! When the cache is full, one arbitrary entry of the new entry's shard makes
//! room: no search for expired entries on the request path. (A shard's table is rebuilt at its
//! size, on an insert, once per eighth of its capacity; a shard past its share
//! of `max_entries` then drops the few entries beyond it, see `shard`.) The entry count is kept as entries come
//! and go, so a metrics scrape reads one number.
//!
//! With `cache.shared = "redis"` a second tier ([`shared`]) sits behind this
//! one: memory → Redis → LINE, still once per key per replica.

mod shard;
mod shared;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::Instrument;

use shard::{DigestMap, Shard};
pub use shared::SharedTier;

use crate::auth::line::LineError;
use crate::auth::{Rejection, Verdict};
use crate::clock::Clock;
use crate::config::CacheConfig;
use crate::headers::{EncodedIdentity, IdentityHeaderNames};
use crate::redis_conn::RedisConn;

/// Digest of a credential: what the cache is keyed by.
pub type CacheKey = [u8; 32];

/// How often the background sweep drops expired entries (1 second): at
/// 10 s, a cache taking 1500 new verdicts a second held up to 15000 dead
/// ones between sweeps, and the soak's RSS grew by that peak after its 60 s
/// sample (12.4 % in 300 s at 16500 req/s; 4.5 % with 1 s).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Credential kinds, mixed into the key so one token string can never be
/// mistaken for another kind of credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CredentialKind {
    AccessToken = 1,
    IdToken = 2,
    /// The access token sealed in a session: its own entries, so that their
    /// lifetime can be bounded by `session.revalidate_seconds`.
    Session = 3,
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
/// The verdict is shared with the cache entry: a hit costs one reference
/// count, not a copy.
#[derive(Clone, Debug)]
pub struct Cached {
    pub stored: Arc<Stored>,
    ttl: Duration,
}

impl Cached {
    fn new(stored: Stored, ttl: Duration) -> Self {
        Self { stored: Arc::new(stored), ttl }
    }

    /// A verdict that is handed out once and never stored (nonce logins).
    pub fn uncached(stored: Stored) -> Self {
        Self::new(stored, Duration::ZERO)
    }
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

/// A hash-table slot holds the 32-byte key and these 16 bytes; the verdict
/// lives behind the pointer. Each shard's table is sized to a power of two
/// and may be half empty, so every byte of a slot counts twice: 1000000
/// identities in 160-byte slots (the verdict inline, `Instant` expiry) took
/// 536 MB.
struct Entry {
    /// When the entry dies, in milliseconds after the cache's `epoch`.
    until: u64,
    stored: Arc<Stored>,
}

type FlightResult = Result<Cached, Arc<LineError>>;
type Flight = Arc<tokio::sync::OnceCell<FlightResult>>;

/// The verdict cache. Hand-written rather than moka: moka's bookkeeping costs
/// about 330 bytes per entry (measured: 100000 small entries, 53.8 MB in moka,
/// 20.9 MB in a HashMap), which put 100000 cached identities over 64 MB.
/// A verdict cache needs neither TinyLFU admission nor precise LRU: expiry is
/// per entry, and a full cache drops an arbitrary entry (as Redis's
/// `allkeys-random` does).
pub struct VerdictCache {
    shards: Box<[Mutex<Shard>]>,
    /// Entries in all shards (expired ones included until met or swept).
    len: AtomicUsize,
    max_entries: usize,
    /// Verifications in flight, so that concurrent misses on one key share one.
    inflight: Mutex<DigestMap<Flight>>,
    ttl: Duration,
    negative_ttl: Duration,
    /// `cache.ttl_jitter_percent`.
    jitter_percent: u64,
    /// `session.revalidate_seconds`: what session verdicts live at most.
    session_ttl: Duration,
    names: IdentityHeaderNames,
    shared: Option<SharedTier>,
    /// Makes the assertion claims of valid verdicts (`[assertion]`).
    signer: Option<Arc<crate::assertion::Signer>>,
    clock: Clock,
    /// What entries' expiry is counted from.
    epoch: Instant,
}

impl VerdictCache {
    pub fn new(config: &CacheConfig, names: IdentityHeaderNames, shared: Option<SharedTier>, clock: Clock) -> Self {
        let max_entries = config.keys.max_entries.get().max(1);
        let share = max_entries.div_ceil(SHARDS);
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::new(share))).collect();
        Self {
            shards,
            len: AtomicUsize::new(0),
            max_entries,
            inflight: Mutex::new(DigestMap::default()),
            ttl: config.keys.ttl_seconds.duration(),
            negative_ttl: config.keys.negative_ttl_seconds.duration(),
            jitter_percent: config.keys.ttl_jitter_percent.get() as u64,
            session_ttl: Duration::MAX,
            names,
            shared,
            signer: None,
            epoch: clock.now(),
            clock,
        }
    }

    /// Now, in milliseconds after `epoch`.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// With `[assertion]`: every valid verdict kept carries its assertion's claims.
    pub fn with_assertions(mut self, signer: Option<Arc<crate::assertion::Signer>>) -> Self {
        self.signer = signer;
        self
    }

    /// The compact form a verdict is kept in.
    pub fn store(&self, verdict: &Verdict) -> Stored {
        match verdict {
            Verdict::Valid(identity) => {
                let mut encoded = self.names.encode(identity);
                encoded.subject = self.signer.as_ref().map(|s| s.subject(identity));
                Stored::Valid(encoded)
            }
            Verdict::Rejected(r) => Stored::Rejected(*r),
        }
    }

    /// The shared tier's connection, if any.
    pub fn shared_redis(&self) -> Option<&Arc<RedisConn>> {
        self.shared.as_ref().map(SharedTier::conn)
    }

    /// Entries held: kept up to date as entries come and go (never by walking).
    pub fn entry_count(&self) -> u64 {
        self.len.load(Ordering::Relaxed) as u64
    }

    /// Locks shard `i`. A shard poisoned by a panic elsewhere is emptied and
    /// used again: a cache may always forget, it must never fail for good.
    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        match self.shards[i].lock() {
            Ok(shard) => shard,
            Err(poisoned) => {
                let mut shard = poisoned.into_inner();
                self.forget(shard.len());
                shard.clear();
                self.shards[i].clear_poison();
                tracing::error!(shard = i, "a verdict cache shard was poisoned by a panic; it was emptied");
                shard
            }
        }
    }

    fn home(key: &CacheKey) -> usize {
        key[0] as usize % SHARDS
    }

    fn forget(&self, n: usize) {
        let _ = self.len.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |len| Some(len.saturating_sub(n)));
    }

    /// A live entry for `key`; a stale one is dropped on the way.
    fn lookup(&self, key: &CacheKey) -> Option<Cached> {
        let mut shard = self.lock(Self::home(key));
        match shard.get(key) {
            // The TTL is not needed again: a hit is never stored anew.
            Some(e) if e.until > self.now_ms() => Some(Cached { stored: e.stored.clone(), ttl: Duration::ZERO }),
            Some(_) => {
                shard.remove(key);
                self.forget(1);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: CacheKey, cached: &Cached) {
        if cached.ttl.is_zero() {
            return;
        }
        let home = Self::home(&key);
        if self.len.load(Ordering::Relaxed) >= self.max_entries {
            self.evict_one(home);
        }
        let ttl_ms = u64::try_from(cached.ttl.as_millis()).unwrap_or(u64::MAX);
        let entry = Entry { until: self.now_ms().saturating_add(ttl_ms), stored: cached.stored.clone() };
        let mut shard = self.lock(home);
        // Counted under the shard lock: a removal of this entry by another
        // thread (which takes the same lock) can only come after the count.
        let inserted = shard.insert(key, entry);
        if inserted.new {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        if inserted.evicted > 0 {
            self.forget(inserted.evicted);
        }
    }

    /// Makes room for one entry: any entry of the first non-empty shard from
    /// `home` on. No scan: the first occupied slot of a hash map is found in
    /// constant expected time, and the sweep has dropped what expired more
    /// than a second ago.
    fn evict_one(&self, home: usize) {
        for step in 0..SHARDS {
            let mut shard = self.lock((home + step) % SHARDS);
            if let Some(victim) = shard.any_key() {
                shard.remove(&victim);
                self.forget(1);
                return;
            }
        }
    }

    /// Forgets the verdict for `key` in this replica's memory and, with the
    /// shared tier, in Redis (awaited: logout answers once it is gone; a Redis
    /// failure is counted, and the entry ends with its TTL).
    pub async fn remove(&self, key: &CacheKey) {
        if self.lock(Self::home(key)).remove(key).is_some() {
            self.forget(1);
        }
        if let Some(shared) = &self.shared {
            shared.remove(key).await;
        }
    }

    /// Drops the expired entries of every shard, one shard lock at a time.
    pub fn sweep(&self) {
        let now = self.now_ms();
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            let dropped = shard.drop_expired(now);
            self.forget(dropped);
        }
    }

    /// Sweeps every [`SWEEP_INTERVAL`] (on the cache's clock) until aborted.
    pub async fn run_sweeper(self: Arc<Self>) {
        loop {
            self.clock.sleep(SWEEP_INTERVAL).await;
            self.sweep();
        }
    }

    /// The verdict for `key`: from the cache, or from `verify` (run once however
    /// many requests wait for it). `Err` is never cached.
    /// (The benchmarks and tests use it, for access tokens.)
    pub async fn get_or_verify<F>(&self, key: CacheKey, verify: F) -> (FlightResult, Lookup)
    where
        F: Future<Output = Result<Verdict, LineError>>,
    {
        let admit = || Ok::<_, std::convert::Infallible>(tracing::Span::none());
        match self.get_or_verify_admitted(key, CredentialKind::AccessToken, admit, || verify).await {
            Ok(found) => found,
        }
    }

    /// [`Self::get_or_verify`], with `admit` asked first whenever a new
    /// verification would start (not for a hit, nor for joining one already in
    /// flight): its `Err` is returned and nothing is verified. Per-client
    /// budgets hook in here, so that only the client that causes a verification
    /// pays for it. Its `Ok` is the span the flight (shared-tier lookup and
    /// verification) runs in: the request that started it names the Redis
    /// and LINE calls' log lines, and no span is made for a hit.
    ///
    /// `verify` makes the verification only when one starts, and the flight
    /// is boxed: a verification's future (LINE calls, Redis) is kilobytes,
    /// and held inline it would be copied with every hit's future.
    pub async fn get_or_verify_admitted<V, F, A, E>(
        &self,
        key: CacheKey,
        kind: CredentialKind,
        admit: A,
        verify: V,
    ) -> Result<(FlightResult, Lookup), E>
    where
        V: FnOnce() -> F,
        F: Future<Output = Result<Verdict, LineError>>,
        A: FnOnce() -> Result<tracing::Span, E>,
    {
        let (result, lookup) = match self.lookup(&key) {
            Some(hit) => (Ok(hit), Lookup::Hit),
            None => Box::pin(self.fly(key, kind, admit, verify)).await?,
        };
        Ok(match result {
            // The TTL already ends at the token's expiry; this guards clock
            // granularity and entries from elsewhere: a stored verdict is never
            // served past its token's expiry. (A fresh verification stands as its
            // verifier decided.)
            Ok(cached) if lookup != Lookup::Miss && !self.is_live(&cached) => {
                if self.lock(Self::home(&key)).remove(&key).is_some() {
                    self.forget(1);
                }
                let expired = Cached::uncached(Stored::Rejected(Rejection::Expired));
                (Ok(expired), lookup)
            }
            other => (other, lookup),
        })
    }

    /// Joins (or, when `admit` allows, starts) the one verification in flight for `key`.
    async fn fly<V, F, A, E>(
        &self,
        key: CacheKey,
        kind: CredentialKind,
        admit: A,
        verify: V,
    ) -> Result<(FlightResult, Lookup), E>
    where
        V: FnOnce() -> F,
        F: Future<Output = Result<Verdict, LineError>>,
        A: FnOnce() -> Result<tracing::Span, E>,
    {
        let mut span = tracing::Span::none();
        let flight = {
            let mut inflight = crate::sync::lock(&self.inflight);
            match inflight.get(&key) {
                Some(flight) => flight.clone(),
                None => {
                    span = admit()?;
                    inflight.entry(key).or_default().clone()
                }
            }
        };
        // Leaves the map when the flight is over or its last waiter gave up,
        // whether this request completes or is cancelled mid-flight. The guard
        // holds this waiter's only reference to the flight.
        let guard = FlightGuard { cache: self, key, flight: Some(flight) };
        let mut ran = None;
        let result = guard
            .flight()
            .get_or_init(|| {
                async {
                    // The flight before this one may have filled the cache.
                    if let Some(hit) = self.lookup(&key) {
                        ran = Some(Lookup::Hit);
                        return Ok(hit);
                    }
                    if let Some(shared) = &self.shared
                        && let Some((verdict, ttl)) = shared.get(&key, kind, self.max_age(kind)).await
                    {
                        ran = Some(Lookup::Shared);
                        let cached = Cached::new(self.store(&verdict), ttl);
                        self.insert(key, &cached);
                        return Ok(cached);
                    }
                    ran = Some(Lookup::Miss);
                    let verdict = verify().await.map_err(Arc::new)?;
                    let ttl = self.ttl_for(&key, kind, &verdict);
                    if let Some(shared) = &self.shared {
                        shared.put(&key, &verdict, ttl);
                    }
                    let cached = Cached::new(self.store(&verdict), ttl);
                    self.insert(key, &cached);
                    Ok(cached)
                }
                .instrument(span)
            })
            .await
            .clone();
        drop(guard);
        Ok((result, ran.unwrap_or(Lookup::Coalesced)))
    }

    fn ttl_for(&self, key: &CacheKey, kind: CredentialKind, verdict: &Verdict) -> Duration {
        let ttl = match verdict {
            Verdict::Valid(identity) => {
                let left = identity.expires_at.saturating_sub(self.clock.unix_seconds());
                self.ttl.min(Duration::from_secs(left))
            }
            Verdict::Rejected(_) => self.negative_ttl,
        };
        let ttl = if kind == CredentialKind::Session { ttl.min(self.session_ttl) } else { ttl };
        self.jittered(key, ttl)
    }

    /// `ttl` less this key's share of `cache.ttl_jitter_percent` of it. The
    /// share (0 to 65535/65536) is two bytes of the digest, which is uniform
    /// over keys and fixed per key, so the cut is never random per request and
    /// never lengthens anything: a verdict still ends no later than its token.
    fn jittered(&self, key: &CacheKey, ttl: Duration) -> Duration {
        let share = u128::from(u16::from_le_bytes([key[30], key[31]]));
        let cut_ns = ttl.as_nanos() * u128::from(self.jitter_percent) * share / (100 * 65536);
        ttl.saturating_sub(Duration::from_nanos(u64::try_from(cut_ns).unwrap_or(u64::MAX)))
    }

    /// With `[session]`: session verdicts live at most `revalidate`, so a
    /// token revoked at LINE ends its session within that bound.
    pub fn with_session_revalidation(mut self, revalidate: Option<std::time::Duration>) -> Self {
        if let Some(r) = revalidate {
            self.session_ttl = r;
        }
        self
    }

    /// How long ago a shared verdict of `kind` may have been made: session
    /// verdicts, `session.revalidate_seconds`.
    fn max_age(&self, kind: CredentialKind) -> Option<Duration> {
        (kind == CredentialKind::Session).then_some(self.session_ttl)
    }

    /// A valid verdict whose token has expired is dead whatever its TTL said.
    fn is_live(&self, cached: &Cached) -> bool {
        match &*cached.stored {
            Stored::Valid(e) => e.expires_at > self.clock.unix_seconds(),
            Stored::Rejected(_) => true,
        }
    }

    /// Verifications currently in flight (tests: cancelled requests leave none).
    pub fn inflight_count(&self) -> usize {
        crate::sync::lock(&self.inflight).len()
    }
}

/// One waiter's hold on a flight. Dropping it (on completion or cancellation)
/// removes the flight from the map once it has a result, or once no waiter is
/// left: a result is never reused from the map (a failure must not stick), and
/// an abandoned flight must not stay forever.
struct FlightGuard<'a> {
    cache: &'a VerdictCache,
    key: CacheKey,
    flight: Option<Flight>,
}

impl FlightGuard<'_> {
    fn flight(&self) -> &Flight {
        self.flight.as_ref().expect("present until dropped")
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut inflight = crate::sync::lock(&self.cache.inflight);
        let Some(mine) = self.flight.take() else { return };
        if !inflight.get(&self.key).is_some_and(|current| Arc::ptr_eq(current, &mine)) {
            return;
        }
        let done = mine.initialized();
        // Released under the lock, so that the last waiter to leave sees only
        // the map's reference left.
        drop(mine);
        if done || inflight.get(&self.key).is_some_and(|current| Arc::strong_count(current) == 1) {
            inflight.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests;
