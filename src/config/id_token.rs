//! The settings only `id_token` routes use — the ID-token keys of `[line]` and
//! all of `[nonce]` — validated together: with such a route they must form a
//! working verifier; without one they have no effect, which is a warning (a base
//! configuration shared by many deployments may carry them).

use std::collections::BTreeMap;
use std::time::Duration;

use super::line::IdTokenVerification;
use super::nonce::NonceStoreKind;
use super::secret::{Secret, read_secret};
use super::{FileConfig, Problems, RedisUse, redis_config};
use crate::redis_conn::RedisConfig;

/// The `[line]` keys that only ID-token verification reads.
const LINE_ID_TOKEN_KEYS: [&str; 6] = [
    "line.id_token_verification",
    "line.jwks_url",
    "line.clock_skew_seconds",
    "line.max_id_token_age_seconds",
    "line.channel_secret_file",
    "line.channel_secret_files",
];

/// How ID tokens are verified, and where nonces come from.
#[derive(Clone, Debug, PartialEq)]
pub struct IdTokenConfig {
    pub verification: IdTokenVerification,
    pub jwks_url: String,
    pub clock_skew: Duration,
    /// `line.max_id_token_age_seconds`.
    pub max_age: Duration,
    /// Channel id → HS256 secret.
    pub channel_secrets: BTreeMap<String, Secret>,
    pub nonce: NonceConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NonceConfig {
    pub path: String,
    pub ttl: Duration,
    /// `None`: in memory.
    pub redis: Option<RedisConfig>,
}

/// The `line.` keys web login's ID-token check reads as well.
const LOGIN_ID_TOKEN_KEYS: [&str; 3] = ["line.jwks_url", "line.clock_skew_seconds", "line.max_id_token_age_seconds"];

pub(super) fn validate(file: &FileConfig, id_token_routes: bool, p: &mut Problems) -> Option<IdTokenConfig> {
    let login = file.login.enabled;
    if login && !id_token_routes && !file.line.jwks_url.https_unless_loopback() {
        p.error("line.jwks_url", "must be https (http is allowed for loopback test servers only)");
    }
    if !id_token_routes {
        let unused =
            LINE_ID_TOKEN_KEYS.iter().copied().filter(|k| file.wrote(k) && !(login && LOGIN_ID_TOKEN_KEYS.contains(k)));
        let nonce_keys: Vec<&str> = file
            .written
            .iter()
            .map(String::as_str)
            .filter(|k| k.starts_with("nonce.") && !feeds_cache(file, k))
            .collect();
        // An empty [nonce] table is named by its section.
        let written_empty = file.written.contains("nonce") && !file.written.iter().any(|k| k.starts_with("nonce."));
        let nonce_section = written_empty.then_some("nonce");
        for key in unused.chain(nonce_keys).chain(nonce_section) {
            p.warn(key, "has no effect: no route has auth = \"id_token\"");
        }
        return None;
    }
    let line = &file.line;
    let local = line.id_token_verification == IdTokenVerification::Local;
    if local && !line.jwks_url.https_unless_loopback() {
        p.error("line.jwks_url", "must be https (http is allowed for loopback test servers only)");
    }
    if !local {
        for key in ["line.jwks_url", "line.channel_secret_file", "line.channel_secret_files"] {
            if file.wrote(key) {
                p.warn(key, "has no effect: line.id_token_verification is \"remote\" (LINE checks the signature)");
            }
        }
    }
    let channel_secrets = if local { channel_secrets(file, p) } else { BTreeMap::new() };
    Some(IdTokenConfig {
        verification: line.id_token_verification,
        jwks_url: line.jwks_url.as_str().to_owned(),
        clock_skew: line.clock_skew_seconds.duration(),
        max_age: line.max_id_token_age_seconds.duration(),
        channel_secrets,
        nonce: nonce(file, p),
    })
}

/// Reads the HS256 secrets: one file for the one channel, or one per channel.
fn channel_secrets(file: &FileConfig, p: &mut Problems) -> BTreeMap<String, Secret> {
    let line = &file.line;
    let mut secrets = BTreeMap::new();
    if line.channel_secret_file.is_some() && !line.channel_secret_files.is_empty() {
        p.error("line.channel_secret_file", "set either channel_secret_file or [line.channel_secret_files], not both");
        return secrets;
    }
    if let Some(path) = &line.channel_secret_file {
        if line.channel_ids.len() != 1 {
            p.error(
                "line.channel_secret_file",
                "names one secret but line.channel_ids has several channels: use [line.channel_secret_files] to say which channel it belongs to",
            );
        } else {
            if let Some(secret) = read_secret("line.channel_secret_file", path, p) {
                secrets.insert(line.channel_ids[0].clone(), secret);
            }
        }
    }
    for (channel, path) in &line.channel_secret_files {
        let key = format!("line.channel_secret_files.{channel}");
        if !line.channel_ids.contains(channel) {
            p.error(key.clone(), "is not one of line.channel_ids");
        }
        if let Some(secret) = read_secret(&key, path, p) {
            secrets.insert(channel.clone(), secret);
        }
    }
    secrets
}

fn nonce(file: &FileConfig, p: &mut Problems) -> NonceConfig {
    let nonce = &file.nonce;
    if let Err(why) = crate::routes::check_path_prefix(&nonce.path) {
        p.error("nonce.path", format!("{why} (a path such as \"/auth/nonce\")"));
    }
    let redis = match (nonce.store, &nonce.redis_url) {
        (NonceStoreKind::Memory, _) => {
            for key in [
                "nonce.redis_url",
                "nonce.redis_key_prefix",
                "nonce.redis_timeout_ms",
                "nonce.redis_mac_key_file",
                "nonce.redis_ca_file",
            ] {
                if file.wrote(key) && !feeds_cache(file, key) {
                    p.warn(
                        key,
                        "has no effect: nonce.store is \"memory\" (set nonce.store = \"redis\" to share nonces)",
                    );
                }
            }
            None
        }
        (NonceStoreKind::Redis, None) => {
            p.error("nonce.redis_url", "is required with nonce.store = \"redis\", e.g. \"redis://10.0.0.5:6379/0\"");
            None
        }
        (NonceStoreKind::Redis, Some(url)) => redis_config(
            RedisUse {
                url_key: "nonce.redis_url",
                url,
                prefix_key: "nonce.redis_key_prefix",
                key_prefix: &nonce.redis_key_prefix,
                timeout: nonce.redis_timeout_ms.duration(),
                mac_key: ("nonce.redis_mac_key_file", nonce.redis_mac_key_file.as_deref()),
                required_by: "nonce.store = \"redis\"",
                ca_file: nonce.redis_ca_file.as_deref().map(|path| ("nonce.redis_ca_file", path, true)),
            },
            p,
        ),
    };
    NonceConfig { path: nonce.path.clone(), ttl: nonce.ttl_seconds.duration(), redis }
}

/// `nonce.redis_url`, `nonce.redis_mac_key_file` and `nonce.redis_ca_file`
/// are also the shared cache's when the cache's own are unset.
fn feeds_cache(file: &FileConfig, key: &str) -> bool {
    let cache = &file.cache;
    cache.shared == super::cache::SharedCache::Redis
        && match key {
            "nonce.redis_url" => cache.redis_url.is_none(),
            "nonce.redis_mac_key_file" => cache.redis_mac_key_file.is_none(),
            "nonce.redis_ca_file" => cache.redis_ca_file.is_none(),
            _ => false,
        }
}
