//! `[limits]`: what one client may cost, per client address (the peer's, or the
//! nearest untrusted `X-Forwarded-For` hop when the peer is a trusted proxy).
//! Budgets are token buckets holding one minute's worth; 0 is no limit.

use super::keys::{Count, section};

/// `limits.nonces_per_minute` (600 nonces per client per minute).
pub const DEFAULT_NONCES_PER_MINUTE: u64 = 600;
/// `limits.fresh_tokens_per_minute` (600 verifications per client per minute).
pub const DEFAULT_FRESH_TOKENS_PER_MINUTE: u64 = 600;
/// `limits.connections` (256 concurrent connections per client address).
pub const DEFAULT_CONNECTIONS: u64 = 256;

section! {
    /// `[limits]`
    pub struct LimitsSection("limits") {
        /// `GET nonce.path` per client per minute; beyond it 429 + `Retry-After`.
        nonces_per_minute: Count<0, 1000000> = DEFAULT_NONCES_PER_MINUTE,
        /// Credentials not in the cache (the LINE calls, or local ID-token
        /// checks, one client can cause) per client per minute; beyond it 429.
        /// A credential already in the cache never counts.
        fresh_tokens_per_minute: Count<0, 1000000> = DEFAULT_FRESH_TOKENS_PER_MINUTE,
        /// Concurrent connections from one address (peers in
        /// `server.trusted_proxies` are exempt); beyond it the connection is
        /// answered 429 and closed.
        connections: Count<0, 1000000> = DEFAULT_CONNECTIONS,
    }
}
