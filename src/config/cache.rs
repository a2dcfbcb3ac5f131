//! `[cache]`: how long verdicts are reused, how many are kept, and the optional
//! Redis tier shared by replicas.

use std::path::PathBuf;

use serde::Deserialize;

use super::keys::{Count, Millis, Seconds, choice, section};
use super::url::RedisUrl;
use super::{FileConfig, Problems, RedisUse, redis_config};
use crate::redis_conn::RedisConfig;

/// `cache.ttl_seconds` (60 seconds).
pub const DEFAULT_CACHE_TTL_SECONDS: u64 = 60;
/// `cache.negative_ttl_seconds` (10 seconds).
pub const DEFAULT_CACHE_NEGATIVE_TTL_SECONDS: u64 = 10;
/// `cache.ttl_jitter_percent` (10 %): verdicts made in the same second do not
/// all expire in the same second.
pub const DEFAULT_CACHE_TTL_JITTER_PERCENT: u64 = 10;
/// `cache.max_entries` (100000 entries).
pub const DEFAULT_CACHE_MAX_ENTRIES: u64 = 100_000;
/// `cache.redis_key_prefix`: the namespace of shared verdicts.
pub const DEFAULT_CACHE_REDIS_KEY_PREFIX: &str = "line-auth-proxy:verdict:";
/// `cache.redis_timeout_ms` (100 milliseconds): past it, ask LINE instead.
pub const DEFAULT_CACHE_REDIS_TIMEOUT_MS: u64 = 100;

/// `cache.shared`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedCache {
    /// Each replica keeps its own verdicts.
    #[default]
    None,
    /// memory → Redis → LINE: a verdict one replica verified serves the others.
    Redis,
}

impl SharedCache {
    pub fn as_str(self) -> &'static str {
        match self {
            SharedCache::None => "none",
            SharedCache::Redis => "redis",
        }
    }
}

choice!(SharedCache);

section! {
    /// `[cache]`
    pub struct CacheSection("cache") {
        /// A valid verdict is reused this long, never past the token's own expiry.
        ttl_seconds: Seconds<1, 86400> = DEFAULT_CACHE_TTL_SECONDS,
        /// A definitive rejection is remembered this long; LINE errors never are.
        negative_ttl_seconds: Seconds<1, 86400> = DEFAULT_CACHE_NEGATIVE_TTL_SECONDS,
        /// Each verdict's TTL is shortened by up to this share of it, a fraction
        /// fixed per credential: verdicts made together expire spread out, not
        /// in one burst of LINE calls. Only ever shorter.
        ttl_jitter_percent: Count<0, 50> = DEFAULT_CACHE_TTL_JITTER_PERCENT,
        /// Cache capacity; when full, an arbitrary entry makes room.
        max_entries: Count<1, 10000000> = DEFAULT_CACHE_MAX_ENTRIES,
        /// `none`, or `redis`: a second tier shared by the replicas.
        shared: SharedCache,
        /// The shared tier's Redis, `redis://` or `rediss://` (default: `nonce.redis_url`).
        redis_url: Option<RedisUrl>,
        /// Namespace of the shared verdicts in Redis.
        redis_key_prefix: String = DEFAULT_CACHE_REDIS_KEY_PREFIX,
        /// Timeout of each Redis call; past it, the verdict comes from LINE.
        redis_timeout_ms: Millis<1, 10000> = DEFAULT_CACHE_REDIS_TIMEOUT_MS,
        /// With `shared = "redis"` (required; default: `nonce.redis_mac_key_file`):
        /// every shared verdict is MAC'd with this key ring, and one that does not
        /// verify is a miss.
        redis_mac_key_file: Option<PathBuf>,
        /// The shared tier's private CA for `rediss://`, as `nonce.redis_ca_file`
        /// (default: `nonce.redis_ca_file`).
        redis_ca_file: Option<PathBuf>,
    }
}

/// The default shared-verdict namespace of a deployment accepting
/// `channel_ids`: [`DEFAULT_CACHE_REDIS_KEY_PREFIX`] followed by the first 8
/// bytes, in hex, of SHA-256 over the sorted, de-duplicated ids joined by `,`,
/// and a `:` (`line-auth-proxy:verdict:3f2a…:`). Replicas of one deployment
/// agree on it whatever order they list their channels in.
pub fn deployment_key_prefix(channel_ids: &[String]) -> String {
    let mut ids: Vec<&str> = channel_ids.iter().map(String::as_str).collect();
    ids.sort_unstable();
    ids.dedup();
    let digest = ring::digest::digest(&ring::digest::SHA256, ids.join(",").as_bytes());
    let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{DEFAULT_CACHE_REDIS_KEY_PREFIX}{hex}:")
}

/// `[cache]`, validated: the keys as declared, and the shared tier's Redis.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    pub keys: CacheSection,
    /// The shared second tier, when `cache.shared = "redis"`.
    pub shared: Option<RedisConfig>,
}

impl CacheSection {
    pub(super) fn validate(&self, file: &FileConfig, p: &mut Problems) -> CacheConfig {
        let shared = match self.shared {
            SharedCache::None => {
                for key in [
                    "cache.redis_url",
                    "cache.redis_key_prefix",
                    "cache.redis_timeout_ms",
                    "cache.redis_mac_key_file",
                    "cache.redis_ca_file",
                ] {
                    if file.wrote(key) {
                        p.warn(key, "has no effect: cache.shared is \"none\"");
                    }
                }
                None
            }
            SharedCache::Redis => {
                let url = match (&self.redis_url, &file.nonce.redis_url) {
                    (Some(own), _) => Some(("cache.redis_url", own)),
                    (None, Some(borrowed)) => Some(("nonce.redis_url", borrowed)),
                    (None, None) => None,
                };
                match url {
                    None => {
                        p.error(
                            "cache.redis_url",
                            "is required with cache.shared = \"redis\" (or set nonce.redis_url)",
                        );
                        None
                    }
                    Some((url_key, url)) => {
                        // Unless written, the namespace names the deployment:
                        // two sets of channels on one Redis never share keys.
                        let key_prefix = if file.wrote("cache.redis_key_prefix") {
                            self.redis_key_prefix.clone()
                        } else {
                            deployment_key_prefix(&file.line.channel_ids)
                        };
                        redis_config(
                            RedisUse {
                                url_key,
                                url,
                                prefix_key: "cache.redis_key_prefix",
                                key_prefix: &key_prefix,
                                timeout: self.redis_timeout_ms.duration(),
                                mac_key: match (&self.redis_mac_key_file, &file.nonce.redis_mac_key_file) {
                                    (Some(own), _) => ("cache.redis_mac_key_file", Some(own.as_path())),
                                    (None, Some(borrowed)) => ("nonce.redis_mac_key_file", Some(borrowed.as_path())),
                                    (None, None) => ("cache.redis_mac_key_file", None),
                                },
                                required_by: "cache.shared = \"redis\" (or set nonce.redis_mac_key_file)",
                                ca_file: match (&self.redis_ca_file, &file.nonce.redis_ca_file) {
                                    (Some(own), _) => Some(("cache.redis_ca_file", own.as_path(), true)),
                                    (None, Some(borrowed)) => Some(("nonce.redis_ca_file", borrowed.as_path(), false)),
                                    (None, None) => None,
                                },
                            },
                            p,
                        )
                    }
                }
            }
        };
        CacheConfig { keys: self.clone(), shared }
    }
}
