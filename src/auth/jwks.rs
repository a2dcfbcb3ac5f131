//! LINE's JWKS: the ES256 public keys local ID-token verification checks against.
//!
//! Fetched at start (`/readyz` stays 503 until the first set loads), refreshed
//! every [`REFRESH_INTERVAL`], and refetched on an unknown `kid` at most once per
//! [`UNKNOWN_KID_REFETCH_INTERVAL`] however many unknown kids arrive. A failed
//! fetch keeps the last good set. Only EC P-256 keys are kept; LINE's set may
//! also list RSA keys, which no ID token uses today.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::clock::Clock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::line::{Endpoint, LineClient, LineError};
use crate::telemetry::Metrics;

/// Periodic refresh of a loaded key set (15 minutes).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Retry interval while no key set has loaded yet (5 seconds).
pub const INITIAL_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Unknown `kid`s trigger at most one refetch per this interval (30 seconds).
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// `kid` → uncompressed P-256 point (`0x04 || x || y`, 65 bytes).
type KeySet = HashMap<String, Arc<[u8]>>;

pub struct Jwks {
    line: Arc<LineClient>,
    url: String,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// When the last unknown-kid refetch started; guards their rate. Start-up
    /// and periodic fetches do not count: a rotation right after start is
    /// still picked up at once.
    last_unknown_kid_fetch: std::sync::Mutex<Option<Instant>>,
    /// The last fetch (of any kind) failed: unknown kids are then a 503, not a 401.
    last_fetch_failed: AtomicBool,
    /// Serialises fetches: concurrent unknown kids share one.
    fetching: tokio::sync::Mutex<()>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Jwks {
    pub fn new(line: Arc<LineClient>, url: String, clock: Clock, metrics: Arc<Metrics>) -> Self {
        Self {
            clock,
            line,
            url,
            keys: RwLock::new(None),
            last_unknown_kid_fetch: std::sync::Mutex::new(None),
            last_fetch_failed: AtomicBool::new(false),
            fetching: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// True once a key set has loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        crate::sync::read(&self.keys).is_some()
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        crate::sync::read(&self.keys).clone()
    }

    /// The key for `kid`. An unknown kid triggers one rate-limited refetch;
    /// `Ok(None)` means LINE does not know the kid either. `Err` means no key
    /// set could ever be loaded: verification cannot run (503).
    pub async fn key(&self, kid: &str) -> Result<Option<Arc<[u8]>>, LineError> {
        if let Some(set) = self.current()
            && let Some(key) = set.get(kid)
        {
            return Ok(Some(key.clone()));
        }
        let _one_fetch = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(set) = self.current()
            && let Some(key) = set.get(kid)
        {
            return Ok(Some(key.clone()));
        }
        let due = {
            let mut last = crate::sync::lock(&self.last_unknown_kid_fetch);
            let now = self.clock.now();
            let due = last.is_none_or(|t| now.duration_since(t) >= UNKNOWN_KID_REFETCH_INTERVAL);
            if due {
                *last = Some(now);
            }
            due
        };
        if due {
            let fetched = self.fetch_locked().await;
            self.last_fetch_failed.store(fetched.is_err(), Ordering::Relaxed);
        }
        // LINE failing while a kid is unknown is LINE being unavailable (503),
        // not a verdict on the token — until a fetch succeeds again.
        if self.last_fetch_failed.load(Ordering::Relaxed) {
            return Err(LineError::JwksUnavailable);
        }
        match self.current() {
            Some(set) => Ok(set.get(kid).cloned()),
            None => Err(LineError::JwksUnavailable),
        }
    }

    /// Fetches now (serialised with other fetches); keeps the old set on failure.
    pub async fn refresh(&self) -> Result<usize, LineError> {
        let _one_fetch = self.fetching.lock().await;
        let fetched = self.fetch_locked().await;
        self.last_fetch_failed.store(fetched.is_err(), Ordering::Relaxed);
        fetched
    }

    async fn fetch_locked(&self) -> Result<usize, LineError> {
        let (status, body) = self.line.call(Endpoint::Jwks, self.line.get(&self.url)).await?;
        if status != 200 {
            tracing::warn!(status, "JWKS fetch failed; keeping the last good key set");
            return Err(LineError::Status { endpoint: Endpoint::Jwks, status });
        }
        // A set without one usable key (`{"keys":[]}`, RSA only, someone else's
        // JSON) would lock every ES256 login out: keep the last good set instead.
        let set = parse_jwks(&body).filter(|s| !s.is_empty()).ok_or(LineError::BadResponse(Endpoint::Jwks))?;
        let count = set.len();
        self.metrics.jwks_keys.set(count as i64);
        *crate::sync::write(&self.keys) = Some(Arc::new(set));
        tracing::info!(keys = count, "loaded LINE JWKS");
        Ok(count)
    }

    /// Loads the set at start (retrying), then refreshes it periodically. Runs
    /// until its task is aborted.
    pub async fn run_refresher(self: Arc<Self>) {
        loop {
            let wait = match self.refresh().await {
                Ok(_) => REFRESH_INTERVAL,
                Err(_) if self.is_loaded() => REFRESH_INTERVAL,
                Err(_) => INITIAL_RETRY_INTERVAL,
            };
            self.clock.sleep(wait).await;
        }
    }
}

/// Keeps the EC P-256 signing keys of a JWK set; `None` when it is not one.
fn parse_jwks(body: &[u8]) -> Option<KeySet> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let keys = v.get("keys")?.as_array()?;
    let mut set = KeySet::new();
    for k in keys {
        let field = |name: &str| k.get(name).and_then(Value::as_str);
        let usable = field("kty") == Some("EC")
            && field("crv") == Some("P-256")
            && field("alg").is_none_or(|a| a == "ES256")
            && field("use").is_none_or(|u| u == "sig");
        let (Some(kid), Some(x), Some(y)) = (field("kid"), field("x"), field("y")) else {
            continue;
        };
        if !usable {
            continue;
        }
        let (Ok(x), Ok(y)) = (URL_SAFE_NO_PAD.decode(x), URL_SAFE_NO_PAD.decode(y)) else {
            continue;
        };
        if x.len() != 32 || y.len() != 32 {
            continue;
        }
        let mut point = Vec::with_capacity(65);
        point.push(0x04);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        set.insert(kid.to_owned(), Arc::from(point));
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_p256_signing_keys() {
        let x = URL_SAFE_NO_PAD.encode([1u8; 32]);
        let y = URL_SAFE_NO_PAD.encode([2u8; 32]);
        let body = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "a", "x": x, "y": y},
            {"kty": "EC", "crv": "P-256", "kid": "no-alg", "x": x, "y": y},
            {"kty": "RSA", "alg": "RS256", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": x, "y": y},
            {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "enc", "kid": "enc", "x": x, "y": y},
            {"kty": "EC", "crv": "P-256", "kid": "short", "x": "AQ", "y": y},
        ]});
        let set = parse_jwks(body.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = set.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, vec!["a", "no-alg"]);
        assert_eq!(set["a"].len(), 65);
        assert!(parse_jwks(b"{}").is_none());
        assert!(parse_jwks(br#"{"keys":[]}"#).unwrap().is_empty());
        assert!(parse_jwks(b"<html>").is_none());
    }
}
