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
use crate::telemetry::{Metrics, ReasonLabels};

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

    /// Takes over the key set `old` holds when it reads the same URL: a JWKS
    /// built anew by a reload (other LINE settings) is ready at once, and its
    /// refresher fetches on.
    pub fn with_keys_of(self, old: Option<&Jwks>) -> Self {
        if let Some(old) = old.filter(|old| old.url == self.url) {
            let keys = crate::sync::read(&old.keys).clone();
            *crate::sync::write(&self.keys) = keys;
        }
        self
    }

    /// The key set's URL.
    pub fn url(&self) -> &str {
        &self.url
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
        } else if self.current().is_some_and(|set| !set.contains_key(kid)) {
            // A refetch could still find this kid (a key LINE rotated in after
            // someone's random kid spent this window's refetch): not a verdict
            // on the token yet, so 503, and the client retries.
            return Err(LineError::JwksUnavailable);
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
        // JSON), with a key that is no P-256 point, or naming a kid twice would
        // lock ES256 logins out or pick a key by order: keep the last good set.
        let set = match parse_jwks(&body) {
            Ok(set) => set,
            Err(refused) => {
                self.metrics.jwks_refused.get_or_create(&ReasonLabels { reason: refused.as_str() }).inc();
                tracing::warn!(reason = refused.as_str(), "LINE's JWKS refused; keeping the last good key set");
                return Err(LineError::BadResponse(Endpoint::Jwks));
            }
        };
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

/// Why a fetched key set was not taken: the `reason` of
/// `line_auth_proxy_jwks_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwksRefusal {
    /// Not a JWK set (`{"keys": [...]}`) at all.
    NotJwks,
    /// No EC P-256 signing key in it.
    NoUsableKey,
    /// A P-256 signing key whose coordinates are not a point on the curve.
    InvalidKey,
    /// Two entries with one `kid`: which one verifies would be up to order.
    DuplicateKid,
}

impl JwksRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            JwksRefusal::NotJwks => "not_jwks",
            JwksRefusal::NoUsableKey => "no_usable_key",
            JwksRefusal::InvalidKey => "invalid_key",
            JwksRefusal::DuplicateKid => "duplicate_kid",
        }
    }
}

/// Every `reason` label of `line_auth_proxy_jwks_refused_total`.
pub const REFUSAL_REASONS: [&str; 4] = ["not_jwks", "no_usable_key", "invalid_key", "duplicate_kid"];

/// The EC P-256 signing keys of a JWK set, each checked to be a point on the
/// curve; the whole set is refused if one is not, if a `kid` appears twice
/// (among any keys), or if none is usable.
fn parse_jwks(body: &[u8]) -> Result<KeySet, JwksRefusal> {
    let v: Value = serde_json::from_slice(body).map_err(|_| JwksRefusal::NotJwks)?;
    let keys = v.get("keys").and_then(Value::as_array).ok_or(JwksRefusal::NotJwks)?;
    let mut set = KeySet::new();
    let mut kids = std::collections::HashSet::new();
    for k in keys {
        let field = |name: &str| k.get(name).and_then(Value::as_str);
        if let Some(kid) = field("kid")
            && !kids.insert(kid)
        {
            return Err(JwksRefusal::DuplicateKid);
        }
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
            return Err(JwksRefusal::InvalidKey);
        };
        if x.len() != 32 || y.len() != 32 {
            return Err(JwksRefusal::InvalidKey);
        }
        let mut point = Vec::with_capacity(65);
        point.push(0x04);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        if !on_curve(&point) {
            return Err(JwksRefusal::InvalidKey);
        }
        set.insert(kid.to_owned(), Arc::from(point));
    }
    if set.is_empty() {
        return Err(JwksRefusal::NoUsableKey);
    }
    Ok(set)
}

/// True when `point` (`0x04 || x || y`) is a point of P-256 other than
/// infinity: ring checks exactly that of an ECDH peer's public key, so one
/// key agreement with a throwaway private key is the check.
fn on_curve(point: &[u8]) -> bool {
    use ring::agreement;
    let rng = ring::rand::SystemRandom::new();
    let Ok(private) = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng) else {
        return false;
    };
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, point);
    agreement::agree_ephemeral(private, &peer, |_| ()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    /// A real P-256 public key's (x, y), base64url.
    fn point() -> (String, String) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let public = pair.public_key().as_ref();
        (URL_SAFE_NO_PAD.encode(&public[1..33]), URL_SAFE_NO_PAD.encode(&public[33..]))
    }

    #[test]
    fn keeps_only_p256_signing_keys() {
        let (x, y) = point();
        let (x2, y2) = point();
        let body = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "a", "x": x, "y": y},
            {"kty": "EC", "crv": "P-256", "kid": "no-alg", "x": x2, "y": y2},
            {"kty": "RSA", "alg": "RS256", "kid": "rsa", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": x, "y": y},
            {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "enc", "kid": "enc", "x": x, "y": y},
        ]});
        let set = parse_jwks(body.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = set.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, vec!["a", "no-alg"]);
        assert_eq!(set["a"].len(), 65);
        assert_eq!(parse_jwks(b"{}"), Err(JwksRefusal::NotJwks));
        assert_eq!(parse_jwks(br#"{"keys":[]}"#), Err(JwksRefusal::NoUsableKey));
        assert_eq!(parse_jwks(b"<html>"), Err(JwksRefusal::NotJwks));
    }

    #[test]
    fn a_set_with_a_key_off_the_curve_or_a_kid_twice_is_refused_whole() {
        let (x, y) = point();
        let good = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "good", "x": x, "y": y});
        let with = |other: serde_json::Value| serde_json::json!({"keys": [good.clone(), other]}).to_string();
        let off_curve = URL_SAFE_NO_PAD.encode([2u8; 32]);
        for bad in [
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "off", "x": x, "y": off_curve}),
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "zero", "x": URL_SAFE_NO_PAD.encode([0u8; 32]), "y": URL_SAFE_NO_PAD.encode([0u8; 32])}),
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "short", "x": "AQ", "y": y}),
            serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "not-b64", "x": "!!", "y": y}),
        ] {
            assert_eq!(parse_jwks(with(bad.clone()).as_bytes()), Err(JwksRefusal::InvalidKey), "{bad}");
        }
        let twice = serde_json::json!({"kty": "RSA", "kid": "good", "n": "AQAB", "e": "AQAB"});
        assert_eq!(parse_jwks(with(twice).as_bytes()), Err(JwksRefusal::DuplicateKid));
        assert!(parse_jwks(serde_json::json!({"keys": [good]}).to_string().as_bytes()).is_ok());
    }
}
