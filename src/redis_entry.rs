//! What this deployment keeps in Redis, authenticated and read with a bound.
//!
//! Anyone who can write to the Redis must not be able to plant a verdict or
//! revive a nonce, so every value is sealed: `{payload}.{tag}`, the tag being
//! HMAC-SHA256 (base64url) under the deployment's key ring over the use
//! (`cache`, `nonce`), the Redis key and the payload. A value is therefore
//! bound to the key it was written under; a value whose tag no key of the ring
//! verifies is a miss, counted in `line_auth_proxy_redis_entries_refused_total`.
//!
//! Reads never pull an unbounded value into memory: a Lua script asks
//! `STRLEN` first and answers "too large" instead of the value.
//!
//! What a MAC cannot stop: a writer who also read a genuine value earlier can
//! put it back under its own key (a consumed nonce restored). Every sealed
//! payload carries its own expiry, so such a rollback is bounded by the
//! lifetime the proxy gave the value when it wrote it.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use crate::config::KeyRing;
use crate::telemetry::{Metrics, RedisRefusedLabels};

/// Characters of a tag: 32 bytes in base64url without padding.
const TAG_CHARS: usize = 43;
/// Domain separation: these tags are never valid for any other protocol.
const CONTEXT: &[u8] = b"line-auth-proxy redis entry v1\0";

/// Why a value read from Redis was not used.
pub const REFUSAL_REASONS: [&str; 3] = ["bad_mac", "too_large", "malformed"];

/// The key ring that seals and opens Redis values for one use.
#[derive(Clone)]
pub struct RedisMac {
    /// `cache` or `nonce`: part of what is MAC'd, and the `use` label.
    purpose: &'static str,
    /// The first signs; all verify.
    keys: Arc<[hmac::Key]>,
    metrics: Arc<Metrics>,
}

impl RedisMac {
    pub fn new(purpose: &'static str, ring: &KeyRing, metrics: Arc<Metrics>) -> Self {
        let keys = ring.keys().iter().map(|k| hmac::Key::new(hmac::HMAC_SHA256, k)).collect();
        for reason in REFUSAL_REASONS {
            let _ = metrics.redis_entries_refused.get_or_create(&RedisRefusedLabels { purpose, reason });
        }
        Self { purpose, keys, metrics }
    }

    fn message(&self, redis_key: &str, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(CONTEXT.len() + self.purpose.len() + redis_key.len() + payload.len() + 10);
        m.extend_from_slice(CONTEXT);
        m.extend_from_slice(self.purpose.as_bytes());
        m.push(0);
        m.extend_from_slice(&(redis_key.len() as u64).to_be_bytes());
        m.extend_from_slice(redis_key.as_bytes());
        m.extend_from_slice(payload);
        m
    }

    /// `payload.tag`, for `redis_key` only.
    pub fn seal(&self, redis_key: &str, payload: &[u8]) -> Vec<u8> {
        let tag = hmac::sign(&self.keys[0], &self.message(redis_key, payload));
        let mut value = Vec::with_capacity(payload.len() + 1 + TAG_CHARS);
        value.extend_from_slice(payload);
        value.push(b'.');
        value.extend_from_slice(URL_SAFE_NO_PAD.encode(tag.as_ref()).as_bytes());
        value
    }

    /// The payload of a value sealed for `redis_key` under any key of the
    /// ring; anything else is `None`, and counted.
    pub fn open<'v>(&self, redis_key: &str, value: &'v [u8]) -> Option<&'v [u8]> {
        let opened = value.len().checked_sub(TAG_CHARS + 1).filter(|&dot| value[dot] == b'.').and_then(|dot| {
            let tag = URL_SAFE_NO_PAD.decode(&value[dot + 1..]).ok()?;
            let payload = &value[..dot];
            let message = self.message(redis_key, payload);
            self.keys.iter().any(|k| hmac::verify(k, &message, &tag).is_ok()).then_some(payload)
        });
        if opened.is_none() {
            self.refused("bad_mac");
        }
        opened
    }

    /// Counts a value not used, by reason (one of [`REFUSAL_REASONS`]).
    pub fn refused(&self, reason: &'static str) {
        self.metrics.redis_entries_refused.get_or_create(&RedisRefusedLabels { purpose: self.purpose, reason }).inc();
    }
}

/// Lua: `KEYS[1]`'s value and remaining TTL, unless it is longer than
/// `ARGV[1]` bytes. Answers `{0}` (no key), `{1}` (too large, not read) or
/// `{2, pttl_ms, value}`. A key of another type is an error (WRONGTYPE).
pub const BOUNDED_GET_SCRIPT: &str = r"
local n = redis.call('STRLEN', KEYS[1])
if n == 0 then return {0} end
if n > tonumber(ARGV[1]) then return {1} end
return {2, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[1])}
";

/// What a bounded read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Bounded {
    Missing,
    TooLarge,
    /// The value and the key's remaining TTL (`None`: the key has no expiry).
    Found {
        value: Vec<u8>,
        pttl_ms: Option<u64>,
    },
}

impl Bounded {
    /// Reads a script's `{0}` / `{1}` / `{2, pttl, value}` answer; anything
    /// else is an error.
    pub fn from_reply(reply: redis::Value) -> Option<Bounded> {
        use redis::Value;
        let Value::Array(items) = reply else { return None };
        match items.as_slice() {
            [Value::Int(0)] => Some(Bounded::Missing),
            [Value::Int(1)] => Some(Bounded::TooLarge),
            // PTTL -2: the key vanished between the calls (cannot happen in
            // one script, but a reply is not trusted to be well formed).
            [Value::Int(2), Value::Int(-2), _] => Some(Bounded::Missing),
            [Value::Int(2), Value::Int(pttl), Value::BulkString(value)] => {
                Some(Bounded::Found { value: value.clone(), pttl_ms: u64::try_from(*pttl).ok() })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(purpose: &'static str, keys: &[[u8; 32]]) -> (RedisMac, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (RedisMac::new(purpose, &KeyRing::for_tests(keys), metrics.clone()), metrics)
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_key_its_use_and_its_ring() {
        let (m, _) = mac("verdict", &[[1; 32]]);
        let sealed = m.seal("p:abc", b"{\"v\":2}");
        assert_eq!(m.open("p:abc", &sealed), Some(&b"{\"v\":2}"[..]));
        assert_eq!(m.open("p:abd", &sealed), None, "moved to another key");
        let (nonce, _) = mac("nonce", &[[1; 32]]);
        assert_eq!(nonce.open("p:abc", &sealed), None, "read as another use");
        let (other, _) = mac("verdict", &[[2; 32]]);
        assert_eq!(other.open("p:abc", &sealed), None, "another deployment's ring");
        let mut flipped = sealed.clone();
        flipped[3] ^= 1;
        assert_eq!(m.open("p:abc", &flipped), None, "payload changed");
        assert_eq!(m.open("p:abc", b"{\"v\":2}"), None, "no tag at all");
    }

    #[test]
    fn every_key_of_the_ring_opens_the_first_seals_and_refusals_count() {
        let (old, _) = mac("nonce", &[[1; 32]]);
        let (rotated, metrics) = mac("nonce", &[[2; 32], [1; 32]]);
        assert_eq!(rotated.open("k", &old.seal("k", b"1")), Some(&b"1"[..]));
        assert_eq!(old.open("k", &rotated.seal("k", b"1")), None, "the new first key signs");
        let refused = || {
            metrics
                .redis_entries_refused
                .get_or_create(&RedisRefusedLabels { purpose: "nonce", reason: "bad_mac" })
                .get()
        };
        assert_eq!(refused(), 0);
        assert_eq!(rotated.open("k", b"1.AAAA"), None);
        assert_eq!(refused(), 1);
    }

    #[test]
    fn bounded_replies_are_read_strictly() {
        use redis::Value;
        assert_eq!(Bounded::from_reply(Value::Array(vec![Value::Int(0)])), Some(Bounded::Missing));
        assert_eq!(Bounded::from_reply(Value::Array(vec![Value::Int(1)])), Some(Bounded::TooLarge));
        let found = Value::Array(vec![Value::Int(2), Value::Int(5000), Value::BulkString(b"x".to_vec())]);
        assert_eq!(Bounded::from_reply(found), Some(Bounded::Found { value: b"x".to_vec(), pttl_ms: Some(5000) }));
        let persistent = Value::Array(vec![Value::Int(2), Value::Int(-1), Value::BulkString(b"x".to_vec())]);
        assert_eq!(Bounded::from_reply(persistent), Some(Bounded::Found { value: b"x".to_vec(), pttl_ms: None }));
        assert_eq!(Bounded::from_reply(Value::BulkString(b"x".to_vec())), None);
        assert_eq!(Bounded::from_reply(Value::Array(vec![Value::Int(2), Value::Int(5)])), None);
    }
}
