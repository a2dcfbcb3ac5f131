//! Single-use nonces for ID-token login.
//!
//! `GET {nonce.path}` issues one (256 random bits, base64url); an ID token whose
//! `nonce` claim names it consumes it — atomically, once, and only after the
//! token's signature and claims verified, so a forged token cannot burn a
//! nonce.
//!
//! Two stores: [`MemoryNonces`] for one replica — bounded, with one client's
//! share of it capped (429 beyond); when full, the nonces of its heaviest
//! holders give way, never an ordinary user's (503 when only those are left);
//! swept lazily and by a background task —
//! and Redis for several, where `SET NX EX` issues and `GETDEL` consumes, so two
//! replicas racing on one nonce cannot both win. Redis failing is a 503: nonces
//! fail closed, never "accept without checking".

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::clock::Clock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use rand::RngCore;

use crate::limits::ClientKey;
use crate::redis_conn::RedisConn;
use crate::redis_entry::{BOUNDED_GET_SCRIPT, Bounded, RedisMac};
use crate::telemetry::{Metrics, NonceLabels};

/// Live nonces held at most (100000): at the default 300 s TTL that is a
/// sustained 333 logins a second (48 bytes each in the table; the full-store
/// flood of `benches/nonce_flood.sh` measured +12.8 MiB RSS, request path included).
pub const MAX_NONCES: usize = 100_000;
/// Random bytes per nonce (32 bytes = 256 bits, 43 base64url characters).
const NONCE_BYTES: usize = 32;
/// When full, an inline sweep runs at most this often (1 second).
const INLINE_SWEEP_INTERVAL_MS: u64 = 1_000;
/// The lightest holder a full store evicts (16 nonces): far above what an
/// ordinary user holds plus what hash collisions add (100000 clients put about 3
/// on a counter on average), so that filling the store out of its reach takes
/// thousands of addresses.
const EVICTABLE_WEIGHT: u32 = 16;
/// `last_inline_sweep_ms` before the first.
const NEVER: u64 = u64::MAX;

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
    /// Not the store's failure: this client holds its share (429).
    #[error("this client holds its share of the nonce store")]
    ClientShare,
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

    /// A fresh nonce for `holder`. The Redis store (shared, bounded by Redis's
    /// own memory) counts no shares: there the per-client budget is the bound.
    pub async fn issue(&self, holder: ClientKey) -> Result<String, NonceError> {
        match self {
            NonceStore::Memory(m) => m.issue(holder).map_err(|refused| match refused {
                IssueRefused::Full => NonceError::Full,
                IssueRefused::ClientShare => NonceError::ClientShare,
            }),
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

/// A nonce for the Redis store (the memory store keeps the bytes instead).
fn fresh_nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    // ThreadRng is a CSPRNG (ChaCha) seeded from the OS.
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Nonces in Redis: the value is the expiry (unix ms) sealed with the
/// deployment's MAC ([`RedisMac`]: a record nobody could have written without
/// the key is unknown), the key lives a grace period longer so that an expired
/// nonce reads as expired, not unknown.
///
/// The store is bounded across replicas: issuing counts into
/// `{prefix}count:{window}`, one counter per key lifetime (TTL + grace), and
/// refuses (`nonce_store_full`) while this window's and the last one's count
/// reach [`MAX_NONCES`] — every live key was issued within those two, so live
/// keys never exceed the cap; consuming a nonce takes it off its window's count.
/// `:` is no base64url character: a counter never shares a nonce's key.
/// Both steps are one Lua script each, atomic in Redis.
pub struct RedisNonces {
    conn: Arc<RedisConn>,
    mac: RedisMac,
    ttl: Duration,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl RedisNonces {
    pub fn new(conn: Arc<RedisConn>, mac: RedisMac, ttl: Duration, clock: Clock, metrics: Arc<Metrics>) -> Self {
        Self { conn, mac, ttl, clock, metrics }
    }

    async fn issue(&self) -> Result<String, NonceError> {
        let nonce = fresh_nonce();
        let now_ms = self.clock.unix_millis();
        let expires = now_ms + self.ttl.as_millis() as u64;
        let window = self.window_seconds();
        let current = now_ms / 1000 / window;
        let key = self.conn.key(&nonce);
        let record = self.mac.seal(&key, expires.to_string().as_bytes());
        let issue = redis::cmd("EVAL")
            .arg(ISSUE_SCRIPT)
            .arg(3)
            .arg(key)
            .arg(self.conn.key(&format!("count:{current}")))
            .arg(self.conn.key(&format!("count:{}", current.saturating_sub(1))))
            .arg(record)
            .arg(window)
            .arg(MAX_NONCES)
            .arg(2 * window)
            .clone();
        // 1: issued; 0: a (2^-256-unlikely) collision, never an overwrite; -1: full.
        match self.conn.run::<i64>("nonce_issue", &issue).await {
            Ok(1) => {
                self.count("issued");
                Ok(nonce)
            }
            Ok(-1) => {
                self.count("store_full");
                Err(NonceError::Full)
            }
            Ok(_) | Err(_) => Err(NonceError::Unavailable),
        }
    }

    /// How long a nonce's key lives (its TTL and the grace after it), in whole
    /// seconds: the length of one counting window.
    fn window_seconds(&self) -> u64 {
        (self.ttl + EXPIRED_GRACE).as_secs().max(1)
    }

    async fn peek(&self, nonce: &str) -> Result<Consumed, NonceError> {
        let key = self.conn.key(nonce);
        let get = redis::cmd("EVAL").arg(BOUNDED_GET_SCRIPT).arg(1).arg(&key).arg(MAX_RECORD_BYTES).clone();
        let reply = self.conn.run::<redis::Value>("nonce_peek", &get).await.map_err(|_| NonceError::Unavailable)?;
        Ok(classify(self.expiry(&key, reply)?, self.clock.unix_millis()))
    }

    /// The expiry a bounded read found, if the record is this deployment's.
    /// A reply that is no reply of the scripts is unavailability.
    fn expiry(&self, key: &str, reply: redis::Value) -> Result<Option<u64>, NonceError> {
        Ok(match Bounded::from_reply(reply).ok_or(NonceError::Unavailable)? {
            Bounded::Missing => None,
            Bounded::TooLarge => {
                self.mac.refused("too_large");
                None
            }
            Bounded::Found { value, .. } => self.mac.open(key, &value).and_then(|payload| {
                let expiry = std::str::from_utf8(payload).ok().and_then(|s| s.parse().ok());
                if expiry.is_none() {
                    self.mac.refused("malformed");
                }
                expiry
            }),
        })
    }

    async fn consume(&self, nonce: &str) -> Result<Consumed, NonceError> {
        // GETDEL is the atomic step (Redis >= 6.2): one caller gets the value;
        // the same script gives the nonce back to its window's count.
        let key = self.conn.key(nonce);
        let consume = redis::cmd("EVAL")
            .arg(CONSUME_SCRIPT)
            .arg(1)
            .arg(&key)
            .arg(self.ttl.as_millis() as u64)
            .arg(self.window_seconds())
            .arg(self.conn.key("count:"))
            .arg(MAX_RECORD_BYTES)
            .clone();
        let reply =
            self.conn.run::<redis::Value>("nonce_consume", &consume).await.map_err(|_| NonceError::Unavailable)?;
        let outcome = classify(self.expiry(&key, reply)?, self.clock.unix_millis());
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

/// KEYS: nonce, this window's count, the last window's count. ARGV: the
/// sealed record, key lifetime (s), cap, count lifetime (s).
const ISSUE_SCRIPT: &str = r"
local live = tonumber(redis.call('GET', KEYS[2]) or '0') + tonumber(redis.call('GET', KEYS[3]) or '0')
if live >= tonumber(ARGV[3]) then return -1 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
";

/// A nonce record is a sealed expiry: about 60 bytes. Anything longer than
/// this (256 bytes) is deleted unread when consumed, and never read whole.
const MAX_RECORD_BYTES: usize = 256;

/// KEYS: nonce. ARGV: TTL (ms), key lifetime (s), count key prefix, the
/// largest record (bytes). Answers as `BOUNDED_GET_SCRIPT` does (`{0}` no
/// such nonce, `{1}` too large: deleted unread, `{2, 0, record}`), the record
/// gone from Redis either way. The record's leading expiry finds its count; the
/// MAC is checked by the caller (a forged record can only lower a count).
const CONSUME_SCRIPT: &str = r"
local n = redis.call('STRLEN', KEYS[1])
if n == 0 then return {0} end
if n > tonumber(ARGV[4]) then redis.call('DEL', KEYS[1]) return {1} end
local record = redis.call('GETDEL', KEYS[1])
local expires = tonumber(string.match(record, '^(%d+)%.'))
if expires then
  local issued_s = math.floor((expires - tonumber(ARGV[1])) / 1000)
  local count = ARGV[3] .. math.floor(issued_s / tonumber(ARGV[2]))
  if tonumber(redis.call('GET', count) or '0') > 0 then redis.call('DECR', count) end
end
return {2, 0, record}
";

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

/// One nonce's random bytes: the memory store's key (no allocation per nonce).
type NonceBytes = [u8; NONCE_BYTES];

/// What the memory store keeps per nonce: 48 bytes in the table with its key,
/// nothing on the heap (a `String` key cost about 380 bytes per nonce, and the
/// freed strings of a swept flood stayed in the allocator's heap).
#[derive(Clone, Copy)]
struct Live {
    /// When it expires, in milliseconds since the store's epoch.
    expires_ms: u64,
    /// Its holder's two counters in [`Shares`].
    slots: [u16; 2],
}

/// Nonces held per client, counted in a fixed table rather than a map of
/// clients (which grows with every address of a flood and, freed, stays in the
/// allocator's heap): each client adds to two of [`SHARE_SLOTS`] counters
/// picked by a keyed hash that differs per process, and holds its share when
/// both are at the share. A counter is the sum over the clients hashed to it,
/// so two clients that share one slot count together there; another client is
/// refused only when both of its slots are full, which a few flooding
/// addresses cannot arrange (the hash key is secret) and many cannot either
/// before the store itself is full.
struct Shares {
    counts: Box<[AtomicU32]>,
    hasher: std::hash::RandomState,
    share: u32,
}

/// Counters in [`Shares`] (65536, 256 KiB).
const SHARE_SLOTS: usize = 1 << 16;

impl Shares {
    fn new(share: u32) -> Self {
        Self {
            counts: (0..SHARE_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            hasher: std::hash::RandomState::new(),
            share,
        }
    }

    fn slots(&self, holder: ClientKey) -> [u16; 2] {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(holder);
        // Two 16-bit slots from one 64-bit hash, never the same one (a counter
        // counted twice would halve the holder's share).
        let (a, b) = (h as u16, (h >> 16) as u16);
        [a, if a == b { b ^ 1 } else { b }]
    }

    /// Counts one more nonce for `holder`, unless it holds its share.
    fn take(&self, holder: ClientKey) -> Option<[u16; 2]> {
        let slots = self.slots(holder);
        let [a, b] = slots.map(|s| &self.counts[s as usize]);
        if a.load(Ordering::Relaxed) >= self.share && b.load(Ordering::Relaxed) >= self.share {
            return None;
        }
        a.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(1, Ordering::Relaxed);
        Some(slots)
    }

    fn give_back(&self, slots: [u16; 2]) {
        for s in slots {
            // Never below zero, whatever the order of concurrent updates.
            let _ = self.counts[s as usize].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| c.load(Ordering::Relaxed) == 0)
    }
}

/// Why the memory store issued nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssueRefused {
    /// The store is full of live nonces, none of them a heavy holder's (503).
    #[error("the nonce store is full")]
    Full,
    /// This client already holds its share of the store (429).
    #[error("this client holds its share of the nonce store")]
    ClientShare,
}

pub struct MemoryNonces {
    live: DashMap<NonceBytes, Live>,
    /// Unconsumed, unswept nonces per client; at most a
    /// [`CLIENT_SHARE_DIVISOR`]th of `capacity` each.
    shares: Shares,
    ttl: Duration,
    capacity: usize,
    last_inline_sweep_ms: AtomicU64,
    epoch: Instant,
    clock: Clock,
    metrics: Arc<Metrics>,
}

/// One client (an address, an IPv6 /64) may hold at most a hundredth of the
/// store's capacity (1000 of 100000): filling the store takes a hundred
/// addresses at once, and a flood from one leaves room for everyone else.
pub const CLIENT_SHARE_DIVISOR: usize = 100;

impl MemoryNonces {
    pub fn new(ttl: Duration, capacity: usize, clock: Clock, metrics: Arc<Metrics>) -> Self {
        Self {
            live: DashMap::new(),
            shares: Shares::new((capacity / CLIENT_SHARE_DIVISOR).clamp(1, u32::MAX as usize) as u32),
            ttl,
            capacity,
            last_inline_sweep_ms: AtomicU64::new(NEVER),
            epoch: clock.now(),
            clock,
            metrics,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn now_ms(&self) -> u64 {
        self.clock.now().saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Issues a fresh nonce to `holder`, unless the store is full or the
    /// holder already holds its share.
    pub fn issue(&self, holder: ClientKey) -> Result<String, IssueRefused> {
        if self.live.len() >= self.capacity {
            self.sweep_if_due();
            if self.live.len() >= self.capacity {
                self.count("store_full");
                return Err(IssueRefused::Full);
            }
        }
        let Some(slots) = self.shares.take(holder) else {
            self.count("client_share");
            return Err(IssueRefused::ClientShare);
        };
        let mut bytes = [0u8; NONCE_BYTES];
        // ThreadRng is a CSPRNG (ChaCha) seeded from the OS.
        rand::rng().fill_bytes(&mut bytes);
        let expires_ms = self.now_ms() + self.ttl.as_millis() as u64;
        self.live.insert(bytes, Live { expires_ms, slots });
        self.count("issued");
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// What consuming `nonce` would find, without consuming it: a peek to
    /// refuse a foreign nonce before verification work. [`Self::consume`] decides.
    pub fn peek(&self, nonce: &str) -> Consumed {
        let Some(key) = decode(nonce) else { return Consumed::Unknown };
        let expires_ms = self.live.get(&key).map(|live| live.expires_ms);
        self.classify(expires_ms)
    }

    /// Consumes `nonce`: the removal is the atomic step, so of two concurrent
    /// consumers exactly one sees [`Consumed::Fresh`].
    pub fn consume(&self, nonce: &str) -> Consumed {
        let removed = decode(nonce).and_then(|key| self.live.remove(&key)).map(|(_, live)| live);
        if let Some(live) = removed {
            self.shares.give_back(live.slots);
        }
        let outcome = self.classify(removed.map(|live| live.expires_ms));
        self.count(match outcome {
            Consumed::Fresh => "consumed",
            Consumed::Expired => "expired",
            Consumed::Unknown => "rejected",
        });
        outcome
    }

    fn classify(&self, expires_ms: Option<u64>) -> Consumed {
        match expires_ms {
            Some(expires) if expires > self.now_ms() => Consumed::Fresh,
            Some(_) => Consumed::Expired,
            None => Consumed::Unknown,
        }
    }

    /// Removes nonces expired for longer than `grace`; returns how many. The
    /// table shrinks once mostly empty, so that memory a flood took is given
    /// back once its nonces expire.
    pub fn sweep(&self, grace: Duration) -> usize {
        let now_ms = self.now_ms();
        let grace_ms = grace.as_millis() as u64;
        let before = self.live.len();
        self.live.retain(|_, live| {
            let keep = live.expires_ms + grace_ms > now_ms;
            if !keep {
                self.shares.give_back(live.slots);
            }
            keep
        });
        let removed = before.saturating_sub(self.live.len());
        if removed > 0 {
            self.metrics.nonces.get_or_create(&NonceLabels { event: "expired" }).inc_by(removed as u64);
        }
        // A table keeps its capacity after removals; one a quarter full (and
        // not small) is shrunk, which hands its old allocation back.
        if self.live.capacity() > 1024 && self.live.capacity() / 4 > self.live.len() {
            self.live.shrink_to_fit();
        }
        removed
    }

    fn sweep_if_due(&self) {
        let now_ms = self.now_ms();
        let last = self.last_inline_sweep_ms.load(Ordering::Relaxed);
        if (last == NEVER || now_ms.saturating_sub(last) >= INLINE_SWEEP_INTERVAL_MS)
            && self.last_inline_sweep_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            // Full: the grace that tells expired from unknown is a luxury now.
            self.sweep(Duration::ZERO);
            if self.live.len() >= self.capacity {
                self.evict_heaviest();
            }
        }
    }

    /// Full of live nonces: those of the heaviest holders give way, so that a
    /// store filled from a few addresses does not lock out everyone else. A
    /// holder's weight is the smaller of its two share counters (its own
    /// count, plus whatever other clients hash to both slots); the nonces of
    /// every holder weighing at least half the heaviest, and at least
    /// [`EVICTABLE_WEIGHT`], are dropped. An ordinary user, holding a nonce or
    /// two, is never evicted, so a store filled from thousands of light
    /// holders stays full (503) until they expire. Returns how many were dropped.
    fn evict_heaviest(&self) -> usize {
        // Weights as they stand now: evicting lowers them as it goes.
        let counts: Vec<u32> = self.shares.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let weight = |slots: [u16; 2]| counts[slots[0] as usize].min(counts[slots[1] as usize]);
        let heaviest = self.live.iter().map(|entry| weight(entry.slots)).max().unwrap_or(0);
        if heaviest < EVICTABLE_WEIGHT {
            return 0;
        }
        let bar = (heaviest / 2).max(EVICTABLE_WEIGHT);
        let before = self.live.len();
        self.live.retain(|_, live| {
            let keep = weight(live.slots) < bar;
            if !keep {
                self.shares.give_back(live.slots);
            }
            keep
        });
        let evicted = before.saturating_sub(self.live.len());
        if evicted > 0 {
            self.metrics.nonces.get_or_create(&NonceLabels { event: "evicted" }).inc_by(evicted as u64);
            tracing::warn!(evicted, heaviest, "nonce store full: the nonces of its heaviest holders were dropped");
        }
        evicted
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.live.is_empty() && self.shares.is_empty()
    }

    fn count(&self, event: &'static str) {
        self.metrics.nonces.get_or_create(&NonceLabels { event }).inc();
    }
}

/// A nonce's bytes, when it is one this store could have issued.
fn decode(nonce: &str) -> Option<NonceBytes> {
    let mut bytes = [0u8; NONCE_BYTES];
    // 43 characters decode to exactly 32 bytes; anything else was never issued here.
    match URL_SAFE_NO_PAD.decode_slice(nonce, &mut bytes) {
        Ok(NONCE_BYTES) if nonce.len() == ISSUED_NONCE_CHARS => Some(bytes),
        _ => None,
    }
}

/// Characters of an issued nonce: 32 bytes in unpadded base64url.
const ISSUED_NONCE_CHARS: usize = 43;

#[cfg(test)]
mod tests {
    use super::*;

    /// A client of its own each call (in these small stores a share is 1).
    fn me() -> ClientKey {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        ClientKey::of(std::net::Ipv4Addr::from(0x0a00_0000 | n).into())
    }

    fn store(ttl_ms: u64, capacity: usize) -> MemoryNonces {
        MemoryNonces::new(Duration::from_millis(ttl_ms), capacity, Clock::manual(), Arc::new(Metrics::new()))
    }

    #[test]
    fn nonces_are_long_random_and_single_use() {
        let s = store(60_000, 10);
        let a = s.issue(me()).unwrap();
        let b = s.issue(me()).unwrap();
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
        let a = s.issue(me()).unwrap();
        let _b = s.issue(me()).unwrap();
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
        let live: Vec<String> = (0..3).map(|_| s.issue(me()).unwrap()).collect();
        assert_eq!(s.issue(me()), Err(IssueRefused::Full));
        // Every live nonce still works.
        for n in &live {
            assert_eq!(s.consume(n), Consumed::Fresh);
        }
        assert!(s.issue(me()).is_ok());
    }

    #[test]
    fn concurrent_consumers_have_one_winner() {
        let s = Arc::new(store(60_000, 10));
        let n = s.issue(me()).unwrap();
        let winners: usize = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..16).map(|_| scope.spawn(|| (s.consume(&n) == Consumed::Fresh) as usize)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1);
    }

    #[test]
    fn one_client_holds_at_most_its_share_and_others_still_get_nonces() {
        // Capacity 300: a share of 3.
        let s = store(60_000, 300);
        let [one, two] = apart(&s, 2)[..] else { unreachable!() };
        let held: Vec<String> = (0..3).map(|_| s.issue(one).unwrap()).collect();
        assert_eq!(s.issue(one), Err(IssueRefused::ClientShare));
        assert!(s.issue(two).is_ok(), "another client is not refused");
        // A consumed nonce frees its holder's share.
        assert_eq!(s.consume(&held[0]), Consumed::Fresh);
        assert!(s.issue(one).is_ok());
        assert_eq!(s.issue(one), Err(IssueRefused::ClientShare));
        // So does an expired, swept one.
        s.clock.advance(Duration::from_secs(60));
        assert_eq!(s.sweep(Duration::ZERO), 4);
        assert!(s.is_empty(), "no holder is left counted");
        assert!(s.issue(one).is_ok());
    }

    #[test]
    fn only_nonces_of_the_issued_shape_are_looked_up() {
        let s = store(60_000, 10);
        let n = s.issue(me()).unwrap();
        assert_eq!(decode(&n).map(|b| URL_SAFE_NO_PAD.encode(b)), Some(n.clone()));
        // The same bytes with padding, a character short, or one more: unknown.
        for other in [format!("{n}="), n[..42].to_string(), format!("{n}A")] {
            assert_eq!(s.peek(&other), Consumed::Unknown, "{other}");
        }
        assert_eq!(s.consume(&n), Consumed::Fresh);
    }

    #[test]
    fn a_swept_flood_gives_its_table_back() {
        let s = store(1_000, 100_000);
        for i in 0..50_000u32 {
            let holder = ClientKey::of(std::net::Ipv4Addr::from(i).into());
            s.issue(holder).unwrap();
        }
        let full = s.live.capacity();
        assert!(full >= 50_000);
        s.clock.advance(Duration::from_secs(2));
        assert_eq!(s.sweep(Duration::ZERO), 50_000);
        assert!(s.live.capacity() < full / 4, "{} of {full}", s.live.capacity());
        assert!(s.is_empty());
    }

    #[test]
    fn a_full_store_drops_its_heaviest_holders_nonces_never_an_ordinary_users() {
        // Capacity 3200, a share of 32: 99 holders of 32, one of 15, and 17
        // users with one each.
        let s = store(60_000, 3200);
        let clients = apart(&s, 99 + 1 + 17 + 1);
        let (heavy_holders, rest) = clients.split_at(99);
        let (light_holder, users, newcomer) = (rest[0], &rest[1..18], rest[18]);
        let heavy: Vec<String> =
            heavy_holders.iter().flat_map(|&c| (0..32).map(move |_| c)).map(|c| s.issue(c).unwrap()).collect();
        let light: Vec<String> = (0..15).map(|_| s.issue(light_holder).unwrap()).collect();
        let users: Vec<String> = users.iter().map(|&c| s.issue(c).unwrap()).collect();
        assert_eq!(s.live.len(), 3200);
        // Someone new: the heavy holders' nonces give way, the others' stay.
        assert!(s.issue(newcomer).is_ok());
        assert_eq!(s.live.len(), 15 + 17 + 1);
        for n in users.iter().chain(&light) {
            assert_eq!(s.peek(n), Consumed::Fresh);
        }
        assert_eq!(s.peek(&heavy[0]), Consumed::Unknown);
        assert_eq!(metric(&s, "evicted"), 99 * 32);
        // Evicted nonces gave their shares back.
        assert!(s.issue(heavy_holders[0]).is_ok());
    }

    #[test]
    fn a_store_full_of_light_holders_refuses_the_newcomer() {
        // 300 holders of 15 (a share of 45): none is heavy enough to evict.
        let s = store(60_000, 4500);
        let clients = apart(&s, 301);
        let held: Vec<String> =
            clients[..300].iter().flat_map(|&c| (0..15).map(move |_| c)).map(|c| s.issue(c).unwrap()).collect();
        assert_eq!(s.live.len(), 4500);
        assert_eq!(s.issue(clients[300]), Err(IssueRefused::Full), "evicted {}", metric(&s, "evicted"));
        assert!(held.iter().all(|n| s.peek(n) == Consumed::Fresh), "no light holder loses one");
        assert_eq!(metric(&s, "evicted"), 0);
    }

    /// `n` clients none of whose share counters another one uses: what each
    /// holds is then its own count exactly (collisions are a matter of chance,
    /// and this store's hash key is random).
    fn apart(s: &MemoryNonces, n: usize) -> Vec<ClientKey> {
        let mut used = std::collections::HashSet::new();
        (0..u32::MAX)
            .map(|i| ClientKey::of(std::net::Ipv4Addr::from(0xc000_0000 + i).into()))
            .filter(|&c| {
                let [a, b] = s.shares.slots(c);
                !used.contains(&a) && !used.contains(&b) && used.insert(a) && used.insert(b)
            })
            .take(n)
            .collect()
    }

    fn metric(s: &MemoryNonces, event: &'static str) -> u64 {
        s.metrics.nonces.get_or_create(&NonceLabels { event }).get()
    }
}
