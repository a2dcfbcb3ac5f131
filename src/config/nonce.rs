//! `[nonce]`: the nonce endpoint and where nonces live. Validated with the
//! ID-token keys in `id_token.rs`: nonces matter only to `id_token` routes.

use std::path::PathBuf;

use serde::Deserialize;

use super::keys::{Millis, Seconds, choice, section};
use super::url::RedisUrl;

/// `nonce.path`: served on the proxy listener.
pub const DEFAULT_NONCE_PATH: &str = "/auth/nonce";
/// `nonce.ttl_seconds` (300 seconds).
pub const DEFAULT_NONCE_TTL_SECONDS: u64 = 300;
/// `nonce.redis_key_prefix`: the namespace of nonces in Redis.
pub const DEFAULT_NONCE_REDIS_KEY_PREFIX: &str = "line-auth-proxy:nonce:";
/// `nonce.redis_timeout_ms` (250 milliseconds): past it, 503.
pub const DEFAULT_NONCE_REDIS_TIMEOUT_MS: u64 = 250;

/// `nonce.store`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonceStoreKind {
    /// In the process: one replica.
    #[default]
    Memory,
    /// In Redis: several replicas, each nonce consumable once by any of them.
    Redis,
}

impl NonceStoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NonceStoreKind::Memory => "memory",
            NonceStoreKind::Redis => "redis",
        }
    }
}

choice!(NonceStoreKind);

section! {
    /// `[nonce]`
    pub struct NonceSection("nonce") {
        /// `GET` here answers `{"nonce": …, "expires_in": …}`, before routing and
        /// without a credential.
        path: String = DEFAULT_NONCE_PATH,
        /// Nonce lifetime.
        ttl_seconds: Seconds<1, 3600> = DEFAULT_NONCE_TTL_SECONDS,
        /// `memory` (one replica) or `redis` (several).
        store: NonceStoreKind,
        /// With `store = "redis"`: `redis://` or `rediss://`, password and database
        /// in the URL; never logged with its password.
        redis_url: Option<RedisUrl>,
        /// Namespace of nonces in Redis.
        redis_key_prefix: String = DEFAULT_NONCE_REDIS_KEY_PREFIX,
        /// Timeout of each Redis call; past it the nonce route answers 503.
        redis_timeout_ms: Millis<1, 10000> = DEFAULT_NONCE_REDIS_TIMEOUT_MS,
        /// With `store = "redis"` (required): 32 random bytes, raw or base64, shared
        /// by the replicas; every nonce record is MAC'd with it, and one that does
        /// not verify is unknown. Several base64 lines: the first signs, all verify.
        redis_mac_key_file: Option<PathBuf>,
        /// With a `rediss://` URL: PEM file of the CA certificates that the
        /// server's certificate must chain to, trusted instead of the public
        /// (webpki) roots: a private CA.
        redis_ca_file: Option<PathBuf>,
    }
}
