//! Signed identity assertions (`[assertion]`): a compact JWS the upstream can
//! verify with the proxy's published keys, so that a backend reachable by some
//! other route can tell the proxy's identity from a forged header.
//!
//! ES256 or EdDSA (Ed25519), with ring like the rest of the project. Keys come
//! from one PEM file of PKCS#8 blocks: the first signs, all are published at
//! `GET /.well-known/jwks.json` on the admin listener (rotation: add the new
//! key second, let verifiers fetch it, move it first, later drop the old one).
//!
//! Signing is not paid per request: an assertion is made once per cached
//! verdict (its claims are the verdict's) and reused until a minute before it
//! expires; it lives [`ASSERTION_LIFETIME`] at most, never past the token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::HeaderValue;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use serde_json::json;

use crate::clock::Clock;
use crate::identity::Identity;

/// The longest an assertion lives (5 minutes).
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);
/// An assertion is re-signed when it has less than this left (60 seconds), so
/// that the upstream always receives one with at least a minute to run.
pub const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// `Cache-Control: max-age` of the published key set (300 seconds).
pub const JWKS_MAX_AGE_SECONDS: u64 = 300;

/// A key of the ring.
enum Pair {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

pub struct SigningKey {
    /// RFC 7638 thumbprint of the public key: stable across restarts.
    kid: String,
    pair: Pair,
    /// The public JWK, as published.
    jwk: serde_json::Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({} {})", self.alg(), self.kid)
    }
}

impl SigningKey {
    fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Es256(_) => "ES256",
            Pair::EdDsa(_) => "EdDSA",
        }
    }
}

/// Reads every PKCS#8 `PRIVATE KEY` block of a PEM file: P-256 ECDSA or
/// Ed25519. Errors say which block and what to do, never key material.
pub fn parse_keys(pem: &[u8]) -> Result<Vec<SigningKey>, String> {
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::pki_types::pem::PemObject;
    let text = String::from_utf8_lossy(pem);
    if text.contains("ENCRYPTED PRIVATE KEY") {
        return Err(
            "holds an encrypted key: the proxy cannot ask for a passphrase (openssl pkcs8 -topk8 -nocrypt)".into()
        );
    }
    if text.contains("BEGIN EC PRIVATE KEY") {
        return Err(
            "holds a SEC1 \"EC PRIVATE KEY\": convert it to PKCS#8 (openssl pkcs8 -topk8 -nocrypt -in KEY)".into()
        );
    }
    let rng = SystemRandom::new();
    let mut keys = Vec::new();
    for (i, block) in PrivatePkcs8KeyDer::pem_slice_iter(pem).enumerate() {
        let der = block.map_err(|_| format!("PEM block {} is not readable", i + 1))?;
        let der = der.secret_pkcs8_der();
        let key = if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng) {
            let point = pair.public_key().as_ref();
            let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..65]));
            let kid = thumbprint(&format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#));
            let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"});
            SigningKey { kid, pair: Pair::Es256(pair), jwk }
        } else if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            let kid = thumbprint(&format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
            SigningKey { kid, pair: Pair::EdDsa(pair), jwk }
        } else {
            return Err(format!(
                "PEM block {} is neither a P-256 ECDSA nor an Ed25519 PKCS#8 key (make one with `openssl genpkey -algorithm ed25519`)",
                i + 1
            ));
        };
        if keys.iter().any(|k: &SigningKey| k.kid == key.kid) {
            return Err(format!("PEM block {} repeats an earlier key", i + 1));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("holds no \"PRIVATE KEY\" PEM block (PKCS#8)".into());
    }
    Ok(keys)
}

fn thumbprint(canonical_jwk: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, canonical_jwk.as_bytes()))
}

/// What one verdict asserts, and the assertion made for it (reused).
pub struct Subject {
    claims: serde_json::Map<String, serde_json::Value>,
    /// Token expiry, unix seconds: no assertion outlives it.
    expires_at: u64,
    signed: Mutex<Option<Signed>>,
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Signed {
    value: HeaderValue,
    exp: u64,
}

/// The configured signer.
pub struct Signer {
    /// The first signs.
    keys: Vec<SigningKey>,
    issuer: String,
    audience: String,
    include_name: bool,
    /// `{"keys": [...]}`, every key, as served.
    jwks: Bytes,
    rng: SystemRandom,
    clock: Clock,
}

impl Signer {
    pub fn new(config: &crate::config::AssertionConfig, clock: Clock) -> Result<Self, String> {
        let keys = parse_keys(&config.keys_pem.0)?;
        let jwks = serde_json::to_vec(&json!({ "keys": keys.iter().map(|k| &k.jwk).collect::<Vec<_>>() }))
            .expect("serialisable");
        Ok(Self {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            include_name: config.include_name,
            jwks: Bytes::from(jwks),
            rng: SystemRandom::new(),
            clock,
        })
    }

    /// The published key set (`application/json`).
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The claims a verdict's assertions carry (all but `iat`, `exp`, `jti`).
    pub fn subject(&self, identity: &Identity) -> Arc<Subject> {
        let mut claims = serde_json::Map::new();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("sub".into(), identity.user_id.clone().into());
        claims.insert("line_channel_id".into(), identity.channel_id.clone().into());
        claims.insert("auth_method".into(), identity.method.as_str().into());
        if !identity.amr.is_empty() {
            claims.insert("amr".into(), identity.amr.clone().into());
        }
        if self.include_name
            && let Some(name) = &identity.display_name
        {
            claims.insert("name".into(), name.clone().into());
        }
        Arc::new(Subject { claims, expires_at: identity.expires_at, signed: Mutex::new(None) })
    }

    /// The assertion for `subject`: the one made earlier while it has more
    /// than [`RENEW_BEFORE`] left (or lives until the token's own expiry),
    /// else a new one.
    pub fn assertion(&self, subject: &Subject) -> HeaderValue {
        let now = self.clock.unix_seconds();
        let usable = |s: &Signed| now + RENEW_BEFORE.as_secs() < s.exp || (s.exp == subject.expires_at && now < s.exp);
        if let Some(signed) = subject.signed.lock().expect("not poisoned").as_ref().filter(|s| usable(s)) {
            return signed.value.clone();
        }
        let signed = self.sign(subject, now);
        let value = signed.value.clone();
        *subject.signed.lock().expect("not poisoned") = Some(signed);
        value
    }

    /// A new assertion for `subject`, never reused (what a cache miss costs;
    /// for the benchmarks).
    pub fn sign_fresh(&self, subject: &Subject) -> HeaderValue {
        self.sign(subject, self.clock.unix_seconds()).value
    }

    fn sign(&self, subject: &Subject, now: u64) -> Signed {
        let key = &self.keys[0];
        let exp = (now + ASSERTION_LIFETIME.as_secs()).min(subject.expires_at).max(now + 1);
        let mut jti = [0u8; 16];
        self.rng.fill(&mut jti).expect("the system random source works");
        let mut claims = subject.claims.clone();
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), exp.into());
        claims.insert("jti".into(), URL_SAFE_NO_PAD.encode(jti).into());
        let header = json!({"alg": key.alg(), "kid": key.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(serde_json::Value::Object(claims).to_string())
        );
        let sig = match &key.pair {
            Pair::Es256(pair) => pair.sign(&self.rng, input.as_bytes()).expect("ECDSA signing works").as_ref().to_vec(),
            Pair::EdDsa(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        let jws = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
        Signed { value: HeaderValue::try_from(jws).expect("base64url is a valid header value"), exp }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthMethod;

    fn pem(der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
    }

    fn keys() -> String {
        let rng = SystemRandom::new();
        let ec = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        format!("{}{}", pem(ec.as_ref()), pem(ed.as_ref()))
    }

    fn identity() -> Identity {
        Identity {
            user_id: "U1234567890abcdef1234567890abcdef".into(),
            display_name: Some("Brown".into()),
            picture_url: None,
            email: None,
            channel_id: "1234567890".into(),
            method: AuthMethod::IdToken,
            expires_at: 1_000_000,
            amr: vec!["pwd".into()],
        }
    }

    fn signer(pem: &str, clock: &Clock) -> Signer {
        let config = crate::config::AssertionConfig {
            issuer: "line-auth-proxy".into(),
            audience: "http://backend".into(),
            include_name: false,
            keys_pem: crate::config::Secret(pem.as_bytes().to_vec()),
        };
        Signer::new(&config, clock.clone()).unwrap()
    }

    fn claims(jws: &HeaderValue) -> serde_json::Value {
        let payload = jws.to_str().unwrap().split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[test]
    fn both_key_kinds_are_read_and_published_and_the_first_signs() {
        let clock = Clock::manual();
        let s = signer(&keys(), &clock);
        let now = clock.unix_seconds();
        let mut id = identity();
        id.expires_at = now + 3600;
        let jwks: serde_json::Value = serde_json::from_slice(&s.jwks()).unwrap();
        let published: Vec<&str> =
            jwks["keys"].as_array().unwrap().iter().map(|k| k["alg"].as_str().unwrap()).collect();
        assert_eq!(published, ["ES256", "EdDSA"]);
        let subject = s.subject(&id);
        let jws = s.assertion(&subject);
        let header = jws.to_str().unwrap().split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!((header["alg"].as_str(), header["kid"].as_str()), (Some("ES256"), jwks["keys"][0]["kid"].as_str()));
        let c = claims(&jws);
        assert_eq!(c["sub"], "U1234567890abcdef1234567890abcdef");
        assert_eq!(c["amr"], json!(["pwd"]));
        assert!(c.get("name").is_none(), "name only when configured");
        assert_eq!((c["iat"].as_u64(), c["exp"].as_u64()), (Some(now), Some(now + 300)));
    }

    #[test]
    fn an_assertion_is_reused_until_a_minute_before_it_expires() {
        let clock = Clock::manual();
        let s = signer(&keys(), &clock);
        let mut id = identity();
        id.expires_at = clock.unix_seconds() + 3600;
        let subject = s.subject(&id);
        let first = s.assertion(&subject);
        clock.advance(Duration::from_secs(239));
        assert_eq!(s.assertion(&subject), first, "re-signed with 61 s left");
        clock.advance(Duration::from_secs(1));
        let second = s.assertion(&subject);
        assert_ne!(second, first);
        assert_ne!(claims(&second)["jti"], claims(&first)["jti"]);
        // Near the token's own expiry the assertion ends with it, and is reused until then.
        clock.advance(Duration::from_secs(3600 - 240 - 30));
        let last = s.assertion(&subject);
        assert_eq!(claims(&last)["exp"].as_u64(), Some(id.expires_at));
        clock.advance(Duration::from_secs(20));
        assert_eq!(s.assertion(&subject), last);
    }

    #[test]
    fn keys_that_cannot_sign_are_refused_by_block() {
        assert!(parse_keys(b"nothing").unwrap_err().contains("no \"PRIVATE KEY\""));
        let rsa_like = pem(&[0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(parse_keys(rsa_like.as_bytes()).unwrap_err().contains("PEM block 1"));
        assert!(
            parse_keys(b"-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n")
                .unwrap_err()
                .contains("PKCS#8")
        );
        assert!(parse_keys(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n").unwrap_err().contains("encrypted"));
        let one = keys();
        let twice = format!("{one}{one}");
        assert!(parse_keys(twice.as_bytes()).unwrap_err().contains("repeats"));
    }
}
