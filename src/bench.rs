//! The internal pieces the criterion benchmarks (`benches/hot_path.rs`) measure
//! one by one. Not an API: nothing here is stable, and it is hidden from the docs.

pub use crate::assertion::Signer;
pub use crate::auth::{AuthMethod, Identity, Verdict};
pub use crate::cache::{CredentialKind, VerdictCache, cache_key};
pub use crate::headers::{IdentityHeaderNames, percent_encoded, strip_for_upstream, strip_identity};
pub use crate::proxy::session::Sessions;
pub use crate::routes::{Route, RouteAuth, RouteTable, normalize_path};
pub use crate::session::Session;

/// A verdict cache whose entries live an hour (longer than any benchmark fills
/// it for), on the real clock.
pub fn verdict_cache(max_entries: u64) -> VerdictCache {
    let keys =
        crate::config::CacheSection { max_entries: max_entries.into(), ttl_seconds: 3600.into(), ..Default::default() };
    let config = crate::config::CacheConfig { keys, shared: None };
    let names = IdentityHeaderNames::new("X-Line-").expect("the default prefix is valid");
    VerdictCache::new(&config, names, None, crate::Clock::system())
}

/// An assertion signer over a fresh key of `alg` (`"ES256"` or `"EdDSA"`), on the real clock.
pub fn assertion_signer(alg: &str) -> Signer {
    use base64::Engine;
    let rng = ring::rand::SystemRandom::new();
    let der = match alg {
        "ES256" => {
            ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .expect("key generation works")
                .as_ref()
                .to_vec()
        }
        _ => ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key generation works").as_ref().to_vec(),
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
    let config = crate::config::AssertionConfig {
        issuer: "line-auth-proxy".into(),
        audience: "http://127.0.0.1:3000".into(),
        include_name: false,
        keys_pem: crate::config::Secret(pem.into_bytes()),
    };
    Signer::new(&config, crate::Clock::system()).expect("a fresh key signs")
}

/// Sessions sealed under one fresh key, with the default cookie name and lifetimes.
pub fn sessions() -> Sessions {
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).expect("the system random source works");
    Sessions::new(crate::config::SessionConfig {
        cookie_name: crate::config::DEFAULT_SESSION_COOKIE_NAME.into(),
        keys: crate::config::key_ring::KeyRing::from_keys(vec![key]),
        max_age: std::time::Duration::from_secs(86_400),
        revalidate: std::time::Duration::from_secs(300),
        exchange_path: "/auth/session".into(),
    })
}
