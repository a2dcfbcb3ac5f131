//! `[limits]`: what one client may cost. A client is an address — the peer's,
//! or, when the peer is a trusted proxy, the nearest untrusted hop of
//! `X-Forwarded-For` — with IPv6 taken by its /64, the block one subscriber
//! holds (per address, an IPv6 client would have 2^64 budgets).
//!
//! - [`Budget`]: a token bucket per client holding one minute's budget, refilled
//!   evenly (GCRA: one `u64` per client, the time its bucket is full again).
//!   Nonces issued and fresh credentials verified each draw on one.
//! - [`ConnectionCounts`]: concurrent connections per peer address.
//!
//! Both are bounded: at most [`MAX_CLIENTS`] tracked clients each. A client
//! whose bucket has refilled costs nothing and is swept; when the table is
//! full of clients still owing, newcomers share one overflow bucket, so a flood
//! of addresses degrades those newcomers only, never the clients already known.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::clock::Clock;
use crate::config::LimitsSection;
use crate::telemetry::Metrics;

/// Clients tracked per budget and for connection counts (100000): about 5 MB
/// at most per table.
pub const MAX_CLIENTS: usize = 100_000;

/// A full table is swept for refilled buckets at most this often (1 second),
/// so that a table kept full costs one sweep per second, not one per request.
const SWEEP_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Refilled buckets are forgotten this often (10 seconds).
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The budgets and counts of `[limits]`; each `None` when its key is 0.
pub struct Limits {
    pub nonces: Option<Budget>,
    pub fresh_tokens: Option<Budget>,
    pub connections: Option<std::sync::Arc<ConnectionCounts>>,
    clock: Clock,
}

/// Which limit refused: the `[limits]` key (or `live_nonces`), also the refusal's reason code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Nonces,
    FreshTokens,
    Connections,
    /// Not a key: the memory nonce store's per-client share (see `auth::nonce`);
    /// no `limit_clients` gauge (the shares are not counted per address).
    LiveNonces,
}

impl Limit {
    pub const ALL: [Limit; 4] = [Limit::Nonces, Limit::FreshTokens, Limit::Connections, Limit::LiveNonces];

    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Nonces => "nonces_per_minute",
            Limit::FreshTokens => "fresh_tokens_per_minute",
            Limit::Connections => "connections",
            Limit::LiveNonces => "live_nonces",
        }
    }
}

impl Limits {
    pub fn new(config: &LimitsSection, clock: Clock) -> Self {
        Self {
            nonces: Budget::per_minute(config.nonces_per_minute.get() as u64, clock.clone()),
            fresh_tokens: Budget::per_minute(config.fresh_tokens_per_minute.get() as u64, clock.clone()),
            connections: ConnectionCounts::new(config.connections.get() as u64).map(std::sync::Arc::new),
            clock,
        }
    }

    /// Forgets refilled buckets every [`SWEEP_INTERVAL`] and reports how many
    /// clients each limit tracks.
    pub async fn run_sweeper(self: std::sync::Arc<Self>, metrics: std::sync::Arc<Metrics>) {
        loop {
            self.clock.sleep(SWEEP_INTERVAL).await;
            for (limit, budget) in [(Limit::Nonces, &self.nonces), (Limit::FreshTokens, &self.fresh_tokens)] {
                if let Some(budget) = budget {
                    budget.sweep();
                    metrics.set_limit_clients(limit, budget.clients());
                }
            }
            if let Some(connections) = &self.connections {
                metrics.set_limit_clients(Limit::Connections, connections.clients());
            }
        }
    }
}

/// Who a budget belongs to: an IPv4 address, or an IPv6 /64, in eight bytes
/// (every table keyed by client is as small as it can be). An IPv4 address is
/// its 32 bits; an IPv6 /64 its prefix, whose upper half is never zero for a
/// routable address (`::/32` holds only the loopback and the IPv4-compatible
/// and -mapped forms, and mapped ones are read as IPv4 first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(u64);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(u64::from(u32::from(v4))),
            IpAddr::V6(v6) => Self((u128::from(v6) >> 64) as u64),
        }
    }
}

/// A refused draw: when the client may try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spent {
    pub retry_after: Duration,
}

/// `per_minute` draws per client, in a bucket that holds one minute's worth.
pub struct Budget {
    /// Time one draw takes to refill (a minute / per_minute), in nanoseconds.
    interval: u64,
    /// How far ahead of now a bucket may owe: a minute minus one interval.
    tolerance: u64,
    /// Per client: when its bucket is full again, in nanoseconds since `epoch`.
    buckets: DashMap<ClientKey, u64>,
    /// The bucket clients share while the table is full.
    overflow: AtomicU64,
    last_sweep: AtomicU64,
    clock: Clock,
    epoch: Instant,
    max_clients: usize,
}

impl Budget {
    /// `None` when `per_minute` is 0: no limit.
    pub fn per_minute(per_minute: u64, clock: Clock) -> Option<Self> {
        Self::bounded(per_minute, clock, MAX_CLIENTS)
    }

    fn bounded(per_minute: u64, clock: Clock, max_clients: usize) -> Option<Self> {
        let minute = Duration::from_secs(60).as_nanos() as u64;
        let interval = minute.checked_div(per_minute)?.max(1);
        let epoch = clock.now();
        Some(Self {
            interval,
            tolerance: minute - interval,
            buckets: DashMap::new(),
            overflow: AtomicU64::new(0),
            last_sweep: AtomicU64::new(0),
            clock,
            epoch,
            max_clients,
        })
    }

    fn now(&self) -> u64 {
        self.clock.now().saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Takes one draw for `client`, or says when one will be there.
    pub fn take(&self, client: ClientKey) -> Result<(), Spent> {
        let now = self.now();
        if let Some(mut full_at) = self.buckets.get_mut(&client) {
            return self.draw(&mut full_at, now);
        }
        if self.buckets.len() >= self.max_clients {
            self.sweep_if_due(now);
        }
        if self.buckets.len() >= self.max_clients {
            let mut drawn = Ok(());
            let _ = self.overflow.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mut full_at| {
                drawn = self.draw(&mut full_at, now);
                drawn.is_ok().then_some(full_at)
            });
            return drawn;
        }
        let mut full_at = self.buckets.entry(client).or_insert(0);
        self.draw(&mut full_at, now)
    }

    /// GCRA: allowed while the bucket owes at most `tolerance`; each draw owes
    /// one more `interval`.
    fn draw(&self, full_at: &mut u64, now: u64) -> Result<(), Spent> {
        let from = (*full_at).max(now);
        let owed = from - now;
        if owed > self.tolerance {
            let wait = owed - self.tolerance;
            return Err(Spent { retry_after: Duration::from_nanos(wait) });
        }
        *full_at = from + self.interval;
        Ok(())
    }

    fn sweep_if_due(&self, now: u64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= SWEEP_AT_MOST_EVERY.as_nanos() as u64;
        if due && self.last_sweep.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            self.sweep_at(now);
        }
    }

    /// Forgets clients whose bucket is full again: they cost nothing to re-create.
    pub fn sweep(&self) {
        self.sweep_at(self.now());
    }

    fn sweep_at(&self, now: u64) {
        self.buckets.retain(|_, full_at| *full_at > now);
        if self.buckets.capacity() > 2 * self.buckets.len().max(1024) {
            self.buckets.shrink_to_fit();
        }
    }

    /// Clients currently owing (tracked).
    pub fn clients(&self) -> usize {
        self.buckets.len()
    }
}

/// Concurrent connections per peer address, with a bound per address.
pub struct ConnectionCounts {
    max_per_client: u64,
    counts: DashMap<ClientKey, u64>,
}

impl ConnectionCounts {
    /// `None` when `max_per_client` is 0: no limit.
    pub fn new(max_per_client: u64) -> Option<Self> {
        (max_per_client > 0).then(|| Self { max_per_client, counts: DashMap::new() })
    }

    /// One more connection for `client`, or `None` when it already has its
    /// share (or the table is full of other clients' connections).
    pub fn open(self: &std::sync::Arc<Self>, client: ClientKey) -> Option<OpenConnection> {
        if !self.counts.contains_key(&client) && self.counts.len() >= MAX_CLIENTS {
            return None;
        }
        let mut count = self.counts.entry(client).or_insert(0);
        if *count >= self.max_per_client {
            return None;
        }
        *count += 1;
        Some(OpenConnection { counts: self.clone(), client })
    }

    /// Addresses with at least one connection open.
    pub fn clients(&self) -> usize {
        self.counts.len()
    }

    fn close(&self, client: ClientKey) {
        // Removed at zero, under the entry's own lock: nothing left behind.
        self.counts.remove_if_mut(&client, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// One counted connection; dropping it gives the count back.
pub struct OpenConnection {
    counts: std::sync::Arc<ConnectionCounts>,
    client: ClientKey,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.counts.close(self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> ClientKey {
        ClientKey::of(ip.parse().unwrap())
    }

    #[test]
    fn a_bucket_holds_a_minute_and_refills_evenly() {
        let clock = Clock::manual();
        let budget = Budget::per_minute(60, clock.clone()).unwrap();
        let a = key("192.0.2.1");
        for i in 0..60 {
            assert_eq!(budget.take(a), Ok(()), "draw {i}");
        }
        let spent = budget.take(a).unwrap_err();
        assert_eq!(spent.retry_after, Duration::from_secs(1));
        // Another client has its own bucket.
        assert_eq!(budget.take(key("192.0.2.2")), Ok(()));
        clock.advance(Duration::from_millis(999));
        assert!(budget.take(a).is_err());
        clock.advance(Duration::from_millis(1));
        assert_eq!(budget.take(a), Ok(()));
        assert!(budget.take(a).is_err());
        // A whole minute refills it whole, and no more than whole.
        clock.advance(Duration::from_secs(600));
        for _ in 0..60 {
            assert_eq!(budget.take(a), Ok(()));
        }
        assert!(budget.take(a).is_err());
    }

    #[test]
    fn zero_is_no_limit() {
        assert!(Budget::per_minute(0, Clock::manual()).is_none());
        assert!(ConnectionCounts::new(0).is_none());
    }

    #[test]
    fn ipv6_clients_are_their_slash_64_and_mapped_ones_ipv4() {
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        // No IPv4 address shares a key with a routable IPv6 /64.
        assert_ne!(key("192.0.2.1"), key("2001:db8::"));
        assert_ne!(key("192.0.2.1"), key("c000:201::"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }

    #[test]
    fn refilled_clients_are_swept_and_a_full_table_makes_newcomers_share() {
        let clock = Clock::manual();
        let budget = Budget::bounded(2, clock.clone(), 3).unwrap();
        for i in 1..=3 {
            budget.take(key(&format!("192.0.2.{i}"))).unwrap();
        }
        assert_eq!(budget.clients(), 3);
        // Full: two newcomers share the overflow bucket (2 per minute).
        assert!(budget.take(key("198.51.100.1")).is_ok());
        assert!(budget.take(key("198.51.100.2")).is_ok());
        assert!(budget.take(key("198.51.100.3")).is_err());
        // The known clients keep their own buckets.
        assert!(budget.take(key("192.0.2.1")).is_ok());
        // Once their buckets have refilled they are swept and cost nothing.
        clock.advance(Duration::from_secs(61));
        budget.sweep();
        assert_eq!(budget.clients(), 0);
    }

    #[test]
    fn connections_are_counted_per_address_and_given_back() {
        let counts = std::sync::Arc::new(ConnectionCounts::new(2).unwrap());
        let a = key("192.0.2.1");
        let first = counts.open(a).unwrap();
        let second = counts.open(a).unwrap();
        assert!(counts.open(a).is_none());
        assert!(counts.open(key("192.0.2.2")).is_some());
        drop(first);
        let third = counts.open(a).unwrap();
        drop((second, third));
        assert_eq!(counts.clients(), 0, "an address with no connection left is forgotten");
    }
}
