//! Single-use nonces for ID-token login.
//!
//! `GET {nonce.path}` issues one (256 random bits, base64url); an ID token whose
//! `nonce` claim names it consumes it — atomically, once, and only after the
//! token's signature and claims verified, so a forged token cannot burn a
//! nonce.
//!
//! Two stores: [`MemoryNonces`] for one replica — bounded, answering 503 when
//! full rather than evicting live nonces, swept lazily and by a background task —
//! and Redis for several, where `SET NX EX` issues and `GETDEL` consumes, so two
//! replicas racing on one nonce cannot both win. Redis failing is a 503: nonces
//! fail closed, never "accept without checking".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock::Clock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use rand::RngCore;

use crate::redis_conn::RedisConn;
use crate::telemetry::{Metrics, NonceLabels};

/// Live nonces held at most (100000): at the default 300 s TTL that is a
/// sustained 333 logins a second, and about 10 MB.
pub const MAX_NONCES: usize = 100_000;
/// Random bytes per nonce (32 bytes = 256 bits, 43 base64url characters).
const NONCE_BYTES: usize = 32;
/// When full, an inline sweep runs at most this often (1 second).
const INLINE_SWEEP_INTERVAL_MS: u64 = 1_000;

/// The store is full of live nonces: 503, never eviction of a live one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the nonce store is full")]
pub struct NonceStoreFull;

/// The longest nonce the stores will look up (ours are 43 characters): anything
/// longer, or not base64url, is unknown without a lookup.
const MAX_NONCE_CHARS: usize = 64;
/// Both stores keep a nonce this much past its TTL, so that an expired one can
/// still be told from one never issued (`nonce_expired`, not
/// `nonce_unknown_or_used`) (60 seconds). A full memory store drops them early.
const EXPIRED_GRACE: Duration = Duration::from_secs(60);

/// Why the store could not answer: 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("the nonce store is full")]
    Full,
    #[error("the nonce store is unreachable")]
    Unavailable,
}

/// Where nonces live.
pub enum NonceStore {
    Memory(MemoryNonces),
    Redis(RedisNonces),
}

impl NonceStore {
    pub fn ttl(&self) -> Duration {
        match self {
            NonceStore::Memory(m) => m.ttl(),
            NonceStore::Redis(r) => r.ttl,
        }
    }

    pub async fn issue(&self) -> Result<String, NonceError> {
        match self {
            NonceStore::Memory(m) => m.issue().map_err(|_| NonceError::Full),
            NonceStore::Redis(r) => r.issue().await,
        }
    }

    /// What [`Self::consume`] would find, without consuming.
    pub async fn peek(&self, nonce: &str) -> Result<Consumed, NonceError> {
        if !plausible(nonce) {
            return Ok(Consumed::Unknown);
        }
        match self {
            NonceStore::Memory(m) => Ok(m.peek(nonce)),
            NonceStore::Redis(r) => r.peek(nonce).await,
        }
    }

    /// Consumes `nonce` atomically: of any number of concurrent consumers, on
    /// any number of replicas sharing the store, one sees [`Consumed::Fresh`].
    pub async fn consume(&self, nonce: &str) -> Result<Consumed, NonceError> {
        if !plausible(nonce) {
            return Ok(Consumed::Unknown);
        }
        match self {
            NonceStore::Memory(m) => Ok(m.consume(nonce)),
            NonceStore::Redis(r) => r.consume(nonce).await,
        }
    }

    /// Background upkeep until aborted: sweeping expired nonces in memory, or
    /// probing Redis health (readiness follows it).
    pub async fn run_maintenance(self: Arc<Self>) {
        let period = self.ttl().min(Duration::from_secs(30));
        match &*self {
            NonceStore::Memory(m) => loop {
                m.clock.sleep(period).await;
                m.sweep(EXPIRED_GRACE);
            },
            NonceStore::Redis(r) => r.conn.clone().run_health_probe().await,
        }
    }

    /// The Redis connection, when nonces live there (readiness follows it).
    pub fn redis(&self) -> Option<&Arc<RedisConn>> {
        match self {
            NonceStore::Memory(_) => None,
            NonceStore::Redis(r) => Some(&r.conn),
        }
    }
}

fn plausible(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce.len() <= MAX_NONCE_CHARS
        && nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn fresh_nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    // ThreadRng is a CSPRNG (ChaCha) seeded from the OS.
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Nonces in Redis: the value is the expiry (unix ms), the key lives a grace
/// period longer so that an expired nonce reads as expired, not unknown.
pub struct RedisNonces {
    conn: Arc<RedisConn>,
    ttl: Duration,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl RedisNonces {
    pub fn new(conn: Arc<RedisConn>, ttl: Duration, clock: Clock, metrics: Arc<Metrics>) -> Self {
        Self { conn, ttl, clock, metrics }
    }

    async fn issue(&self) -> Result<String, NonceError> {
        let nonce = fresh_nonce();
        let expires = self.clock.unix_millis() + self.ttl.as_millis() as u64;
        let set = redis::cmd("SET")
            .arg(self.conn.key(&nonce))
            .arg(expires)
            .arg("NX")
            .arg("EX")
            .arg((self.ttl + EXPIRED_GRACE).as_secs())
            .clone();
        // NX: a (2^-256-unlikely) collision answers nil rather than overwrite.
        match self.conn.run::<Option<String>>("nonce_issue", &set).await {
            Ok(Some(_)) => {
                self.count("issued");
                Ok(nonce)
            }
            Ok(None) | Err(_) => Err(NonceError::Unavailable),
        }
    }

    async fn peek(&self, nonce: &str) -> Result<Consumed, NonceError> {
        let get = redis::cmd("GET").arg(self.conn.key(nonce)).clone();
        let value = self.conn.run::<Option<u64>>("nonce_peek", &get).await.map_err(|_| NonceError::Unavailable)?;
        Ok(classify(value, self.clock.unix_millis()))
    }

    async fn consume(&self, nonce: &str) -> Result<Consumed, NonceError> {
        // GETDEL is the atomic step (Redis >= 6.2): one caller gets the value.
        let getdel = redis::cmd("GETDEL").arg(self.conn.key(nonce)).clone();
        let value =
            self.conn.run::<Option<u64>>("nonce_consume", &getdel).await.map_err(|_| NonceError::Unavailable)?;
        let outcome = classify(value, self.clock.unix_millis());
        self.count(match outcome {
            Consumed::Fresh => "consumed",
            Consumed::Expired => "expired",
            Consumed::Unknown => "rejected",
        });
        Ok(outcome)
    }

    fn count(&self, event: &'static str) {
        self.metrics.nonces.get_or_create(&NonceLabels { event }).inc();
    }
}

fn classify(expires_ms: Option<u64>, now_ms: u64) -> Consumed {
    match expires_ms {
        Some(expires) if expires > now_ms => Consumed::Fresh,
        Some(_) => Consumed::Expired,
        None => Consumed::Unknown,
    }
}

/// What consuming a nonce found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consumed {
    /// Issued here, unexpired, unused: now used.
    Fresh,
    /// Never issued here, or already used.
    Unknown,
    /// Issued here, but past its TTL.
    Expired,
}

pub struct MemoryNonces {
    live: DashMap<String, Instant>,
    ttl: Duration,
    capacity: usize,
    last_inline_sweep_ms: AtomicU64,
    started: Instant,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl MemoryNonces {
    pub fn new(ttl: Duration, capacity: usize, clock: Clock, metrics: Arc<Metrics>) -> Self {
        Self {
            live: DashMap::new(),
            ttl,
            capacity,
            last_inline_sweep_ms: AtomicU64::new(0),
            started: clock.now(),
            clock,
            metrics,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a fresh nonce.
    pub fn issue(&self) -> Result<String, NonceStoreFull> {
        if self.live.len() >= self.capacity {
            self.sweep_if_due();
            if self.live.len() >= self.capacity {
                self.count("store_full");
                return Err(NonceStoreFull);
            }
        }
        let nonce = fresh_nonce();
        self.live.insert(nonce.clone(), self.clock.now() + self.ttl);
        self.count("issued");
        Ok(nonce)
    }

    /// What consuming `nonce` would find, without consuming it: a peek to
    /// refuse a foreign nonce before verification work. [`Self::consume`] decides.
    pub fn peek(&self, nonce: &str) -> Consumed {
        match self.live.get(nonce) {
            Some(expires) if *expires > self.clock.now() => Consumed::Fresh,
            Some(_) => Consumed::Expired,
            None => Consumed::Unknown,
        }
    }

    /// Consumes `nonce`: the removal is the atomic step, so of two concurrent
    /// consumers exactly one sees [`Consumed::Fresh`].
    pub fn consume(&self, nonce: &str) -> Consumed {
        let outcome = match self.live.remove(nonce) {
            Some((_, expires)) if expires > self.clock.now() => Consumed::Fresh,
            Some(_) => Consumed::Expired,
            None => Consumed::Unknown,
        };
        self.count(match outcome {
            Consumed::Fresh => "consumed",
            Consumed::Expired => "expired",
            Consumed::Unknown => "rejected",
        });
        outcome
    }

    /// Removes nonces expired for longer than `grace`; returns how many.
    pub fn sweep(&self, grace: Duration) -> usize {
        let now = self.clock.now();
        let before = self.live.len();
        self.live.retain(|_, expires| *expires + grace > now);
        let removed = before.saturating_sub(self.live.len());
        if removed > 0 {
            self.metrics.nonces.get_or_create(&NonceLabels { event: "expired" }).inc_by(removed as u64);
        }
        removed
    }

    fn sweep_if_due(&self) {
        let now_ms = self.clock.now().duration_since(self.started).as_millis() as u64;
        let last = self.last_inline_sweep_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= INLINE_SWEEP_INTERVAL_MS
            && self.last_inline_sweep_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            // Full: the grace that tells expired from unknown is a luxury now.
            self.sweep(Duration::ZERO);
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    fn count(&self, event: &'static str) {
        self.metrics.nonces.get_or_create(&NonceLabels { event }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(ttl_ms: u64, capacity: usize) -> MemoryNonces {
        MemoryNonces::new(Duration::from_millis(ttl_ms), capacity, Clock::manual(), Arc::new(Metrics::new()))
    }

    #[test]
    fn nonces_are_long_random_and_single_use() {
        let s = store(60_000, 10);
        let a = s.issue().unwrap();
        let b = s.issue().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_eq!(s.peek(&a), Consumed::Fresh);
        assert_eq!(s.consume(&a), Consumed::Fresh);
        assert_eq!(s.peek(&a), Consumed::Unknown);
        assert_eq!(s.consume(&a), Consumed::Unknown);
        assert_eq!(s.consume("never-issued"), Consumed::Unknown);
    }

    #[tokio::test]
    async fn implausible_nonces_are_unknown_without_a_lookup() {
        let s = NonceStore::Memory(store(60_000, 10));
        for bad in ["", "a b", "x".repeat(65).as_str(), "ab/cd", "ab%2F"] {
            assert_eq!(s.consume(bad).await, Ok(Consumed::Unknown), "{bad:?}");
        }
    }

    #[test]
    fn expired_nonces_are_refused_and_swept() {
        let s = store(1, 10);
        let a = s.issue().unwrap();
        let _b = s.issue().unwrap();
        s.clock.advance(Duration::from_millis(1));
        assert_eq!(s.consume(&a), Consumed::Expired);
        // Within the grace an expired nonce still reads as expired; then it goes.
        assert_eq!(s.sweep(EXPIRED_GRACE), 0);
        assert_eq!(s.peek(&_b), Consumed::Expired);
        s.clock.advance(EXPIRED_GRACE);
        assert_eq!(s.sweep(EXPIRED_GRACE), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn a_full_store_refuses_instead_of_evicting() {
        let s = store(60_000, 3);
        let live: Vec<String> = (0..3).map(|_| s.issue().unwrap()).collect();
        assert_eq!(s.issue(), Err(NonceStoreFull));
        // Every live nonce still works.
        for n in &live {
            assert_eq!(s.consume(n), Consumed::Fresh);
        }
        assert!(s.issue().is_ok());
    }

    #[test]
    fn concurrent_consumers_have_one_winner() {
        let s = Arc::new(store(60_000, 10));
        let n = s.issue().unwrap();
        let winners: usize = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..16).map(|_| scope.spawn(|| (s.consume(&n) == Consumed::Fresh) as usize)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1);
    }
}
