//! Configuration: the TOML file, the `LINE_AUTH_PROXY__…` environment overlay, and
//! the validation that turns both into an immutable [`Config`].
//!
//! Loading happens in three passes so that an operator sees every problem at once:
//! 1. the merged TOML tree is walked against [`SCHEMA`] (unknown keys, wrong types);
//! 2. serde fills [`FileConfig`] (defaults come from the named constants below);
//! 3. [`FileConfig::validate`] checks values and cross-key rules.
//!
//! Every problem carries its dotted key path (`server.listen`, `routes[0].auth`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use serde::Deserialize;

use crate::headers::IdentityHeaderNames;
use crate::routes::{Route, RouteAuth, RouteTable};

/// Environment variable that may name the configuration file instead of `--config`.
pub const CONFIG_FILE_ENV: &str = "LINE_AUTH_PROXY_CONFIG";
/// Prefix of the environment overlay: `LINE_AUTH_PROXY__SECTION__KEY`.
pub const ENV_PREFIX: &str = "LINE_AUTH_PROXY__";

/// Proxy listener (`0.0.0.0:8080`).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Admin listener for `/healthz`, `/readyz`, `/metrics` (`127.0.0.1:9901`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// Time in-flight requests get to finish after SIGTERM (20 seconds).
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 20;
/// Request line plus headers above this answer 431 (16384 bytes).
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
/// Concurrent client connections on the proxy listener; more wait in the accept queue (10000).
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// Time a client gets to send a complete request head (10000 milliseconds).
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Upstream TCP (and TLS) connect timeout (1000 milliseconds).
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Upstream response-head timeout; past it the client gets 504 (30000 milliseconds).
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
/// The LINE Platform API origin (`https://api.line.me`).
pub const DEFAULT_LINE_API_BASE_URL: &str = "https://api.line.me";
/// Timeout of each call to the LINE Platform (2000 milliseconds).
pub const DEFAULT_LINE_TIMEOUT_MS: u64 = 2_000;
/// Positive verdicts live at most this long, and never past the token (60 seconds).
pub const DEFAULT_CACHE_TTL_SECONDS: u64 = 60;
/// Definitive rejections are remembered this long (10 seconds).
pub const DEFAULT_CACHE_NEGATIVE_TTL_SECONDS: u64 = 10;
/// Verdict cache capacity (100000 entries).
pub const DEFAULT_CACHE_MAX_ENTRIES: u64 = 100_000;
/// Prefix of the trusted identity headers (`X-Line-`).
pub const DEFAULT_HEADER_PREFIX: &str = "X-Line-";
/// ID tokens are verified locally (JWKS / channel secret) by default (`local`).
pub const DEFAULT_ID_TOKEN_VERIFICATION: &str = "local";
/// LINE's JWKS (`https://api.line.me/oauth2/v2.1/certs`).
pub const DEFAULT_JWKS_URL: &str = "https://api.line.me/oauth2/v2.1/certs";
/// Leeway on `exp` and `iat` for local ID-token checks (60 seconds).
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
/// Where nonces are issued on the proxy listener (`/auth/nonce`).
pub const DEFAULT_NONCE_PATH: &str = "/auth/nonce";
/// Nonce lifetime (300 seconds).
pub const DEFAULT_NONCE_TTL_SECONDS: u64 = 300;
/// Namespace of nonce keys in Redis (`line-auth-proxy:nonce:`).
pub const DEFAULT_NONCE_REDIS_KEY_PREFIX: &str = "line-auth-proxy:nonce:";
/// Namespace of shared verdicts in Redis (`line-auth-proxy:verdict:`).
pub const DEFAULT_CACHE_REDIS_KEY_PREFIX: &str = "line-auth-proxy:verdict:";
/// Per-call Redis timeout for nonces: past it, 503 (250 milliseconds).
pub const DEFAULT_NONCE_REDIS_TIMEOUT_MS: u64 = 250;
/// Per-call Redis timeout for the shared cache: past it, ask LINE (100 milliseconds).
pub const DEFAULT_CACHE_REDIS_TIMEOUT_MS: u64 = 100;
/// Header of the signed identity assertion; always stripped from clients (`X-Line-Identity-Jwt`).
pub const DEFAULT_ASSERTION_HEADER: &str = "X-Line-Identity-Jwt";

/// The longest timeout any `*_ms` key accepts (10 minutes).
const MAX_TIMEOUT_MS: u64 = 600_000;
/// The longest TTL any `*_seconds` key accepts (1 day).
const MAX_TTL_SECONDS: u64 = 86_400;

/// The type a configuration key holds, for the schema walk and for typing
/// environment overrides (which arrive as strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    /// A table of string values keyed by the operator (`line.channel_secret_files`).
    StrMap,
}

/// Every key the file may hold; `routes.*` are the keys of each `[[routes]]` entry.
const SCHEMA: &[(&str, Kind)] = &[
    ("server.listen", Kind::Str),
    ("server.admin_listen", Kind::Str),
    ("server.shutdown_grace_seconds", Kind::Int),
    ("server.max_header_bytes", Kind::Int),
    ("server.max_connections", Kind::Int),
    ("server.header_read_timeout_ms", Kind::Int),
    ("server.tls_cert_file", Kind::Str),
    ("server.tls_key_file", Kind::Str),
    ("upstream.url", Kind::Str),
    ("upstream.connect_timeout_ms", Kind::Int),
    ("upstream.timeout_ms", Kind::Int),
    ("line.channel_ids", Kind::StrList),
    ("line.api_base_url", Kind::Str),
    ("line.timeout_ms", Kind::Int),
    ("line.id_token_verification", Kind::Str),
    ("line.jwks_url", Kind::Str),
    ("line.clock_skew_seconds", Kind::Int),
    ("line.channel_secret_file", Kind::Str),
    ("line.channel_secret_files", Kind::StrMap),
    ("cache.ttl_seconds", Kind::Int),
    ("cache.negative_ttl_seconds", Kind::Int),
    ("cache.max_entries", Kind::Int),
    ("identity.header_prefix", Kind::Str),
    ("identity.forward_authorization", Kind::Bool),
    ("nonce.path", Kind::Str),
    ("nonce.ttl_seconds", Kind::Int),
    ("nonce.store", Kind::Str),
    ("nonce.redis_url", Kind::Str),
    ("nonce.redis_key_prefix", Kind::Str),
    ("nonce.redis_timeout_ms", Kind::Int),
    ("cache.shared", Kind::Str),
    ("cache.redis_url", Kind::Str),
    ("cache.redis_key_prefix", Kind::Str),
    ("cache.redis_timeout_ms", Kind::Int),
    ("forward_auth.enabled", Kind::Bool),
    ("forward_auth.path", Kind::Str),
    ("forward_auth.trusted_proxies", Kind::StrList),
    ("assertion.enabled", Kind::Bool),
    ("assertion.header", Kind::Str),
    ("assertion.audience", Kind::Str),
    ("assertion.issuer", Kind::Str),
    ("assertion.key_file", Kind::Str),
    ("routes.path_prefix", Kind::Str),
    ("routes.auth", Kind::Str),
    ("routes.methods", Kind::StrList),
    ("routes.require_nonce", Kind::Bool),
    ("routes.allow_cors_preflight", Kind::Bool),
];

const SECTIONS: &[&str] = &["server", "upstream", "line", "cache", "identity", "nonce", "forward_auth", "assertion"];

/// One configuration problem: the dotted key path and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Every problem found while loading; printed one per line by `check` and at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { key: key.into(), message: message.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The file as written, with every default filled in. `deny_unknown_fields` is the
/// last line of defence; the schema walk reports unknown keys first, all of them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerSection,
    pub upstream: UpstreamSection,
    pub line: LineSection,
    pub cache: CacheSection,
    pub identity: IdentitySection,
    /// Set only when written: its presence without an `id_token` route is an error.
    pub nonce: Option<NonceSection>,
    pub forward_auth: ForwardAuthSection,
    pub assertion: AssertionSection,
    pub routes: Vec<RouteSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Proxy listener address, `IP:port` (default [`DEFAULT_LISTEN`]).
    pub listen: String,
    /// Admin listener address, `IP:port` (default [`DEFAULT_ADMIN_LISTEN`]).
    pub admin_listen: String,
    /// Drain time after SIGTERM, seconds (default [`DEFAULT_SHUTDOWN_GRACE_SECONDS`]).
    pub shutdown_grace_seconds: u64,
    /// Request head limit, bytes (default [`DEFAULT_MAX_HEADER_BYTES`]).
    pub max_header_bytes: u64,
    /// Concurrent proxy connections (default [`DEFAULT_MAX_CONNECTIONS`]).
    pub max_connections: u64,
    /// Time to receive a request head, milliseconds (default [`DEFAULT_HEADER_READ_TIMEOUT_MS`]).
    pub header_read_timeout_ms: u64,
    /// PEM certificate chain for TLS on `listen` (default: none, plain HTTP).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for TLS on `listen` (default: none).
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            shutdown_grace_seconds: DEFAULT_SHUTDOWN_GRACE_SECONDS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout_ms: DEFAULT_HEADER_READ_TIMEOUT_MS,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    /// The backend, `http://host:port` or `https://host:port` (required).
    pub url: Option<String>,
    /// Connect timeout, milliseconds (default [`DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS`]).
    pub connect_timeout_ms: u64,
    /// Response-head timeout, milliseconds (default [`DEFAULT_UPSTREAM_TIMEOUT_MS`]).
    pub timeout_ms: u64,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            url: None,
            connect_timeout_ms: DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
            timeout_ms: DEFAULT_UPSTREAM_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LineSection {
    /// Accepted channel ids (`client_id` / `aud`), at least one (required).
    pub channel_ids: Vec<String>,
    /// LINE Platform origin (default [`DEFAULT_LINE_API_BASE_URL`]).
    pub api_base_url: String,
    /// Per-call timeout, milliseconds (default [`DEFAULT_LINE_TIMEOUT_MS`]).
    pub timeout_ms: u64,
    /// `local` (JWKS ES256, HS256 with the channel secret) or `remote` (LINE's
    /// `POST /oauth2/v2.1/verify`) (default [`DEFAULT_ID_TOKEN_VERIFICATION`]).
    pub id_token_verification: String,
    /// JWKS for local ES256 checks (default [`DEFAULT_JWKS_URL`]).
    pub jwks_url: String,
    /// Leeway on `exp`/`iat`, seconds (default [`DEFAULT_CLOCK_SKEW_SECONDS`]).
    pub clock_skew_seconds: u64,
    /// File holding the channel secret for HS256 ID tokens, when there is one channel.
    pub channel_secret_file: Option<PathBuf>,
    /// Channel id → file holding that channel's secret, when several use HS256.
    pub channel_secret_files: Option<BTreeMap<String, PathBuf>>,
}

impl Default for LineSection {
    fn default() -> Self {
        Self {
            channel_ids: Vec::new(),
            api_base_url: DEFAULT_LINE_API_BASE_URL.into(),
            timeout_ms: DEFAULT_LINE_TIMEOUT_MS,
            id_token_verification: DEFAULT_ID_TOKEN_VERIFICATION.into(),
            jwks_url: DEFAULT_JWKS_URL.into(),
            clock_skew_seconds: DEFAULT_CLOCK_SKEW_SECONDS,
            channel_secret_file: None,
            channel_secret_files: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Positive verdict TTL, seconds, capped by the token's expiry (default [`DEFAULT_CACHE_TTL_SECONDS`]).
    pub ttl_seconds: u64,
    /// Rejection TTL, seconds (default [`DEFAULT_CACHE_NEGATIVE_TTL_SECONDS`]).
    pub negative_ttl_seconds: u64,
    /// Capacity, entries (default [`DEFAULT_CACHE_MAX_ENTRIES`]).
    pub max_entries: u64,
    /// `none` (default) or `redis`: a second tier shared by replicas.
    pub shared: String,
    /// Redis for the shared tier (default: `nonce.redis_url`).
    pub redis_url: Option<String>,
    /// Key namespace (default [`DEFAULT_CACHE_REDIS_KEY_PREFIX`]).
    pub redis_key_prefix: String,
    /// Per-call timeout, milliseconds (default [`DEFAULT_CACHE_REDIS_TIMEOUT_MS`]).
    pub redis_timeout_ms: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            ttl_seconds: DEFAULT_CACHE_TTL_SECONDS,
            negative_ttl_seconds: DEFAULT_CACHE_NEGATIVE_TTL_SECONDS,
            max_entries: DEFAULT_CACHE_MAX_ENTRIES,
            shared: "none".into(),
            redis_url: None,
            redis_key_prefix: DEFAULT_CACHE_REDIS_KEY_PREFIX.into(),
            redis_timeout_ms: DEFAULT_CACHE_REDIS_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    /// Prefix of injected (and stripped) headers (default [`DEFAULT_HEADER_PREFIX`]).
    pub header_prefix: String,
    /// Pass the client's `Authorization` upstream (default false).
    pub forward_authorization: bool,
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self { header_prefix: DEFAULT_HEADER_PREFIX.into(), forward_authorization: false }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NonceSection {
    /// Path on the proxy listener that issues nonces (default [`DEFAULT_NONCE_PATH`]).
    pub path: String,
    /// Nonce lifetime, seconds (default [`DEFAULT_NONCE_TTL_SECONDS`]).
    pub ttl_seconds: u64,
    /// `memory` (default, one replica) or `redis` (shared by replicas).
    pub store: String,
    /// `redis://` or `rediss://` URL, with password and database (required with `redis`).
    pub redis_url: Option<String>,
    /// Key namespace (default [`DEFAULT_NONCE_REDIS_KEY_PREFIX`]).
    pub redis_key_prefix: String,
    /// Per-call timeout, milliseconds (default [`DEFAULT_NONCE_REDIS_TIMEOUT_MS`]).
    pub redis_timeout_ms: u64,
}

impl Default for NonceSection {
    fn default() -> Self {
        Self {
            path: DEFAULT_NONCE_PATH.into(),
            ttl_seconds: DEFAULT_NONCE_TTL_SECONDS,
            store: "memory".into(),
            redis_url: None,
            redis_key_prefix: DEFAULT_NONCE_REDIS_KEY_PREFIX.into(),
            redis_timeout_ms: DEFAULT_NONCE_REDIS_TIMEOUT_MS,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardAuthSection {
    /// Must stay false in this version.
    pub enabled: bool,
    pub path: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssertionSection {
    /// Must stay false in this version.
    pub enabled: bool,
    /// Always stripped from client requests (default [`DEFAULT_ASSERTION_HEADER`]).
    pub header: String,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub key_file: Option<PathBuf>,
}

impl Default for AssertionSection {
    fn default() -> Self {
        Self { enabled: false, header: DEFAULT_ASSERTION_HEADER.into(), audience: None, issuer: None, key_file: None }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub path_prefix: Option<String>,
    pub auth: Option<String>,
    pub methods: Option<Vec<String>>,
    pub require_nonce: Option<bool>,
    #[serde(default)]
    pub allow_cors_preflight: bool,
}

/// The validated, immutable configuration the proxy runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub line: LineConfig,
    pub cache: CacheConfig,
    pub identity: IdentityConfig,
    /// Present when some route has `auth = "id_token"`.
    pub id_token: Option<IdTokenConfig>,
    pub routes: RouteTable,
}

/// How ID tokens are verified, and where nonces come from.
#[derive(Clone, Debug)]
pub struct IdTokenConfig {
    pub verification: IdTokenVerification,
    pub jwks_url: String,
    pub clock_skew: Duration,
    /// Channel id → HS256 secret.
    pub channel_secrets: BTreeMap<String, Secret>,
    pub nonce: NonceConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdTokenVerification {
    Local,
    Remote,
}

#[derive(Clone, Debug)]
pub struct NonceConfig {
    pub path: String,
    pub ttl: Duration,
    /// `None`: in memory.
    pub redis: Option<RedisConfig>,
}

/// Where and how to reach Redis for one use (nonces or the shared cache).
#[derive(Clone)]
pub struct RedisConfig {
    /// May hold a password: never logged; see [`RedisConfig::redacted`].
    pub url: String,
    pub key_prefix: String,
    pub timeout: Duration,
}

impl RedisConfig {
    /// `scheme://host:port/db`, without credentials: the form safe to log.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted())
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Drops `user:password@` from a URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => format!("{}{}", &url[..scheme_end + 3], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Secret bytes that never show in `Debug` output.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub shutdown_grace: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub tls: Option<TlsFiles>,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// `scheme://authority`, no path.
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct LineConfig {
    pub channel_ids: Vec<String>,
    /// Without a trailing `/`.
    pub api_base_url: String,
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: u64,
    /// The shared second tier, when `cache.shared = "redis"`.
    pub shared: Option<RedisConfig>,
}

#[derive(Clone, Debug)]
pub struct IdentityConfig {
    pub names: IdentityHeaderNames,
    pub forward_authorization: bool,
    pub assertion_header: HeaderName,
}

/// Reads the file (when given), applies the environment overlay from `env`, and
/// validates. `env` is passed in so tests do not touch the process environment.
pub fn load<I>(file: Option<&Path>, env: I) -> Result<Config, Problems>
where
    I: IntoIterator<Item = (String, String)>,
{
    let text = match file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                let mut problems = Problems::default();
                problems.push(path.display().to_string(), format!("cannot read: {e}"));
                return Err(problems);
            }
        },
        None => String::new(),
    };
    load_str(&text, env).map_err(|mut problems| {
        if let Some(path) = file {
            for p in &mut problems.0 {
                if p.key == TOML_SYNTAX_KEY {
                    p.key = path.display().to_string();
                }
            }
        }
        problems
    })
}

/// Where TOML syntax errors are reported (replaced by the file name in [`load`]).
const TOML_SYNTAX_KEY: &str = "<toml>";

/// [`load`] for configuration text already in memory.
pub fn load_str<I>(text: &str, env: I) -> Result<Config, Problems>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut problems = Problems::default();
    let mut tree = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => {
            problems.push(TOML_SYNTAX_KEY, one_line(&e.to_string()));
            return Err(problems);
        }
    };
    apply_env(&mut tree, env, &mut problems);
    check_schema(&mut tree, &mut problems);
    let file_config: FileConfig = match serde_path_to_error::deserialize(toml::Value::Table(tree)) {
        Ok(c) => c,
        Err(e) => {
            problems.push(e.path().to_string(), one_line(&e.inner().to_string()));
            return Err(problems);
        }
    };
    match (file_config.validate(), problems.is_empty()) {
        (Ok(config), true) => Ok(config),
        (Ok(_), false) => Err(problems),
        (Err(more), _) => {
            // A key already reported (say, removed for its type) is not reported twice.
            for p in more.0 {
                if !problems.0.iter().any(|q| q.key == p.key) {
                    problems.0.push(p);
                }
            }
            Err(problems)
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Applies `LINE_AUTH_PROXY__SECTION__KEY=value` overrides, typed by the schema.
fn apply_env<I>(tree: &mut toml::Table, env: I, problems: &mut Problems)
where
    I: IntoIterator<Item = (String, String)>,
{
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let (path, kind, map_key) = match parts.as_slice() {
            [section, key] => (format!("{section}.{key}"), schema_kind(&format!("{section}.{key}")), None),
            [section, key, entry] => {
                let path = format!("{section}.{key}");
                match schema_kind(&path) {
                    Some(Kind::StrMap) => (path, Some(Kind::StrMap), Some(entry.clone())),
                    _ => (path, None, None),
                }
            }
            _ => (rest.to_ascii_lowercase(), None, None),
        };
        let kind = kind.filter(|_| !path.starts_with("routes."));
        let Some(kind) = kind else {
            problems.push(
                name.clone(),
                "unknown configuration key in the environment (use LINE_AUTH_PROXY__SECTION__KEY; [[routes]] come from the file only)",
            );
            continue;
        };
        let value = match kind {
            Kind::Str => toml::Value::String(raw),
            Kind::Int => match raw.trim().parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => {
                    problems.push(path, format!("{name} must be a whole number"));
                    continue;
                }
            },
            Kind::Bool => match raw.trim() {
                "true" => toml::Value::Boolean(true),
                "false" => toml::Value::Boolean(false),
                _ => {
                    problems.push(path, format!("{name} must be true or false"));
                    continue;
                }
            },
            Kind::StrList => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
            Kind::StrMap => toml::Value::String(raw),
        };
        let (section, key) = path.split_once('.').expect("schema paths have a section");
        let section_table = tree.entry(section.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = section_table.as_table_mut() else {
            problems.push(section, "must be a table");
            continue;
        };
        match map_key {
            Some(entry) => {
                let map = section_table.entry(key.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                match map.as_table_mut() {
                    Some(map) => {
                        map.insert(entry, value);
                    }
                    None => problems.push(path, "must be a table"),
                }
            }
            None => {
                section_table.insert(key.to_owned(), value);
            }
        }
    }
}

fn schema_kind(path: &str) -> Option<Kind> {
    SCHEMA.iter().find(|(p, _)| *p == path).map(|(_, k)| *k)
}

/// Reports every unknown key and every value of the wrong type, and removes
/// them from the tree, so that value validation can still run on the rest and
/// report its problems too.
fn check_schema(tree: &mut toml::Table, problems: &mut Problems) {
    tree.retain(|section, value| {
        if section == "routes" {
            let Some(routes) = value.as_array_mut() else {
                problems.push("routes", "must be an array of tables: [[routes]]");
                return false;
            };
            for (i, route) in routes.iter_mut().enumerate() {
                let Some(route) = route.as_table_mut() else {
                    problems.push(format!("routes[{i}]"), "must be a table");
                    *route = toml::Value::Table(toml::Table::new());
                    continue;
                };
                route.retain(|key, value| {
                    check_key(&format!("routes.{key}"), &format!("routes[{i}].{key}"), value, problems)
                });
            }
            return true;
        }
        if !SECTIONS.contains(&section) {
            problems.push(section, format!("unknown section; known sections: {}, routes", SECTIONS.join(", ")));
            return false;
        }
        let Some(table) = value.as_table_mut() else {
            problems.push(section, "must be a table");
            return false;
        };
        table.retain(|key, value| {
            let path = format!("{section}.{key}");
            check_key(&path, &path, value, problems)
        });
        true
    });
}

/// True when the key is known and its value has the right type; else reports why.
fn check_key(schema_path: &str, shown: &str, value: &toml::Value, problems: &mut Problems) -> bool {
    let Some(kind) = schema_kind(schema_path) else {
        problems.push(shown, "unknown key (see config/example.toml for every key)");
        return false;
    };
    let ok = match kind {
        Kind::Str => value.is_str(),
        Kind::Int => value.as_integer().is_some_and(|n| n >= 0),
        Kind::Bool => value.is_bool(),
        Kind::StrList => value.as_array().is_some_and(|a| a.iter().all(toml::Value::is_str)),
        Kind::StrMap => value.as_table().is_some_and(|t| t.values().all(toml::Value::is_str)),
    };
    if !ok {
        let expected = match kind {
            Kind::Str => "a string",
            Kind::Int => "a whole number, 0 or more",
            Kind::Bool => "true or false",
            Kind::StrList => "a list of strings, e.g. [\"1234567890\"]",
            Kind::StrMap => "a table of strings",
        };
        problems.push(shown, format!("must be {expected}"));
    }
    ok
}

impl FileConfig {
    /// Checks every value and cross-key rule, collecting all problems.
    pub fn validate(self) -> Result<Config, Problems> {
        let mut p = Problems::default();

        let listen = parse_addr(&self.server.listen, "server.listen", &mut p);
        let admin_listen = parse_addr(&self.server.admin_listen, "server.admin_listen", &mut p);
        if let (Some(a), Some(b)) = (listen, admin_listen)
            && a.port() != 0
            && a.port() == b.port()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        {
            p.push(
                "server.admin_listen",
                "must differ from server.listen: /metrics and /readyz are never served on the proxy port",
            );
        }
        let shutdown_grace =
            range_secs(self.server.shutdown_grace_seconds, 0, 3_600, "server.shutdown_grace_seconds", &mut p);
        if !(1_024..=1_048_576).contains(&self.server.max_header_bytes) {
            p.push("server.max_header_bytes", "must be between 1024 and 1048576 bytes");
        }
        if !(1..=1_000_000).contains(&self.server.max_connections) {
            p.push("server.max_connections", "must be between 1 and 1000000");
        }
        let header_read_timeout = range_ms(self.server.header_read_timeout_ms, "server.header_read_timeout_ms", &mut p);
        let tls = match (&self.server.tls_cert_file, &self.server.tls_key_file) {
            (Some(cert), Some(key)) => {
                for (path, key_name) in [(cert, "server.tls_cert_file"), (key, "server.tls_key_file")] {
                    if !path.is_file() {
                        p.push(key_name, format!("{} is not a readable file", path.display()));
                    }
                }
                Some(TlsFiles { cert_file: cert.clone(), key_file: key.clone() })
            }
            (None, None) => None,
            (Some(_), None) => {
                p.push("server.tls_key_file", "is required when server.tls_cert_file is set");
                None
            }
            (None, Some(_)) => {
                p.push("server.tls_cert_file", "is required when server.tls_key_file is set");
                None
            }
        };

        let upstream = match &self.upstream.url {
            None => {
                p.push("upstream.url", "is required: the backend to forward to, e.g. \"http://127.0.0.1:3000\"");
                None
            }
            Some(url) => parse_origin(url, "upstream.url", &mut p),
        };
        let upstream_connect_timeout =
            range_ms(self.upstream.connect_timeout_ms, "upstream.connect_timeout_ms", &mut p);
        let upstream_timeout = range_ms(self.upstream.timeout_ms, "upstream.timeout_ms", &mut p);

        if self.line.channel_ids.is_empty() {
            p.push("line.channel_ids", "needs at least one LINE Login channel id, e.g. [\"1234567890\"]");
        }
        for (i, id) in self.line.channel_ids.iter().enumerate() {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || id.len() > 32 {
                p.push(
                    format!("line.channel_ids[{i}]"),
                    format!("{id:?} is not a channel id (digits only, as shown in the LINE Developers Console)"),
                );
            }
        }
        let api_base_url = self.line.api_base_url.trim_end_matches('/').to_owned();
        if let Some((scheme, authority)) = parse_origin(&api_base_url, "line.api_base_url", &mut p)
            && scheme == http::uri::Scheme::HTTP
            && !is_loopback_host(authority.host())
        {
            p.push(
                "line.api_base_url",
                "must be https: the access token travels in the verify request (http is allowed for loopback test servers only)",
            );
        }
        let line_timeout = range_ms(self.line.timeout_ms, "line.timeout_ms", &mut p);
        if self.forward_auth.enabled {
            p.push("forward_auth.enabled", "forward-auth mode is not supported in this version; set it to false");
        }
        if self.assertion.enabled {
            p.push(
                "assertion.enabled",
                "signed identity assertions are not supported in this version; set it to false",
            );
        }

        let ttl = range_secs(self.cache.ttl_seconds, 1, MAX_TTL_SECONDS, "cache.ttl_seconds", &mut p);
        let negative_ttl =
            range_secs(self.cache.negative_ttl_seconds, 1, MAX_TTL_SECONDS, "cache.negative_ttl_seconds", &mut p);
        if !(1..=10_000_000).contains(&self.cache.max_entries) {
            p.push("cache.max_entries", "must be between 1 and 10000000");
        }
        let shared_cache = match self.cache.shared.as_str() {
            "none" => None,
            "redis" => {
                let url =
                    self.cache.redis_url.clone().or_else(|| self.nonce.as_ref().and_then(|n| n.redis_url.clone()));
                match url {
                    None => {
                        p.push("cache.redis_url", "is required with cache.shared = \"redis\" (or set nonce.redis_url)");
                        None
                    }
                    Some(url) => {
                        redis_config(&url, &self.cache.redis_key_prefix, self.cache.redis_timeout_ms, "cache", &mut p)
                    }
                }
            }
            other => {
                p.push("cache.shared", format!("{other:?} is not one of none, redis"));
                None
            }
        };

        let names = match IdentityHeaderNames::new(&self.identity.header_prefix) {
            Ok(n) => Some(n),
            Err(why) => {
                p.push("identity.header_prefix", why);
                None
            }
        };
        let assertion_header = match HeaderName::try_from(self.assertion.header.as_str()) {
            Ok(h) => Some(h),
            Err(_) => {
                p.push("assertion.header", format!("{:?} is not a valid header name", self.assertion.header));
                None
            }
        };

        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.iter().enumerate() {
            if let Some(route) = validate_route(i, r, &mut p) {
                routes.push(route);
            }
        }
        let id_token_routes = self.routes.iter().any(|r| r.auth.as_deref() == Some("id_token"));
        let id_token = validate_id_token(&self.line, self.nonce.as_ref(), id_token_routes, &mut p);

        if !p.is_empty() {
            return Err(p);
        }
        let (scheme, authority) = upstream.expect("checked above");
        Ok(Config {
            server: ServerConfig {
                listen: listen.expect("checked above"),
                admin_listen: admin_listen.expect("checked above"),
                shutdown_grace,
                max_header_bytes: self.server.max_header_bytes as usize,
                max_connections: self.server.max_connections as usize,
                header_read_timeout,
                tls,
            },
            upstream: UpstreamConfig {
                scheme,
                authority,
                connect_timeout: upstream_connect_timeout,
                timeout: upstream_timeout,
            },
            line: LineConfig { channel_ids: self.line.channel_ids, api_base_url, timeout: line_timeout },
            cache: CacheConfig { ttl, negative_ttl, max_entries: self.cache.max_entries, shared: shared_cache },
            identity: IdentityConfig {
                names: names.expect("checked above"),
                forward_authorization: self.identity.forward_authorization,
                assertion_header: assertion_header.expect("checked above"),
            },
            id_token,
            routes: RouteTable::new(routes),
        })
    }
}

fn validate_route(i: usize, r: &RouteSection, p: &mut Problems) -> Option<Route> {
    let before = p.0.len();
    let key = |k: &str| format!("routes[{i}].{k}");
    let prefix = match &r.path_prefix {
        None => {
            p.push(key("path_prefix"), "is required, e.g. \"/public/\"");
            None
        }
        Some(prefix) => {
            if !prefix.starts_with('/') {
                p.push(key("path_prefix"), "must start with /");
            } else if crate::routes::normalize_path(prefix).ok().as_deref() != Some(prefix.as_str()) {
                p.push(
                    key("path_prefix"),
                    "must be a normalised path (no //, no . or .. segments, no percent-escapes): requests are matched after normalisation",
                );
            }
            Some(prefix.clone())
        }
    };
    let auth = match r.auth.as_deref() {
        None => {
            p.push(key("auth"), "is required: none, access_token or optional");
            None
        }
        Some("none") => Some(RouteAuth::None),
        Some("access_token") => Some(RouteAuth::AccessToken),
        Some("optional") => Some(RouteAuth::Optional),
        Some("id_token") => Some(RouteAuth::IdToken),
        Some(other) => {
            p.push(key("auth"), format!("{other:?} is not one of none, access_token, optional"));
            None
        }
    };
    let require_nonce = match (r.auth.as_deref(), r.require_nonce) {
        (Some("id_token"), setting) => setting.unwrap_or(true),
        (_, Some(_)) => {
            p.push(key("require_nonce"), "applies to auth = \"id_token\" routes only");
            false
        }
        (_, None) => false,
    };
    let methods = match &r.methods {
        None => None,
        Some(list) if list.is_empty() => {
            p.push(key("methods"), "must name at least one method, or be left out to match every method");
            None
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (j, m) in list.iter().enumerate() {
                let upper = m.to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if !m.is_empty() => out.push(method),
                    _ => p.push(format!("routes[{i}].methods[{j}]"), format!("{m:?} is not an HTTP method")),
                }
            }
            Some(out)
        }
    };
    if p.0.len() > before {
        return None;
    }
    Some(Route {
        path_prefix: prefix?,
        auth: auth?,
        methods,
        allow_cors_preflight: r.allow_cors_preflight,
        require_nonce,
    })
}

/// Checks the ID-token keys and `[nonce]`, reads the channel secrets.
fn validate_id_token(
    line: &LineSection,
    nonce: Option<&NonceSection>,
    id_token_routes: bool,
    p: &mut Problems,
) -> Option<IdTokenConfig> {
    let verification = match line.id_token_verification.as_str() {
        "local" => IdTokenVerification::Local,
        "remote" => IdTokenVerification::Remote,
        other => {
            p.push("line.id_token_verification", format!("{other:?} is not one of local, remote"));
            IdTokenVerification::Local
        }
    };
    if let Some((scheme, authority)) = parse_origin_and_path(&line.jwks_url, "line.jwks_url", p)
        && scheme == http::uri::Scheme::HTTP
        && !is_loopback_host(authority.host())
    {
        p.push("line.jwks_url", "must be https (http is allowed for loopback test servers only)");
    }
    if line.clock_skew_seconds > 300 {
        p.push("line.clock_skew_seconds", "must be between 0 and 300 seconds");
    }
    let mut channel_secrets = BTreeMap::new();
    match (&line.channel_secret_file, &line.channel_secret_files) {
        (Some(_), Some(_)) => p.push(
            "line.channel_secret_file",
            "set either channel_secret_file or [line.channel_secret_files], not both",
        ),
        (Some(path), None) => {
            if line.channel_ids.len() != 1 {
                p.push(
                    "line.channel_secret_file",
                    "names one secret but line.channel_ids has several channels: use [line.channel_secret_files] to say which channel it belongs to",
                );
            } else if let Some(secret) = read_secret(path, "line.channel_secret_file", p) {
                channel_secrets.insert(line.channel_ids[0].clone(), secret);
            }
        }
        (None, Some(files)) => {
            for (channel, path) in files {
                let key = format!("line.channel_secret_files.{channel}");
                if !line.channel_ids.contains(channel) {
                    p.push(key.clone(), "is not one of line.channel_ids");
                }
                if let Some(secret) = read_secret(path, &key, p) {
                    channel_secrets.insert(channel.clone(), secret);
                }
            }
        }
        (None, None) => {}
    }
    let nonce_given = nonce.is_some();
    let nonce = nonce.cloned().unwrap_or_default();
    if nonce.path != DEFAULT_NONCE_PATH
        && (!nonce.path.starts_with('/')
            || crate::routes::normalize_path(&nonce.path).ok().as_deref() != Some(nonce.path.as_str()))
    {
        p.push("nonce.path", "must be a normalised path starting with /, e.g. \"/auth/nonce\"");
    }
    let nonce_ttl = range_secs(nonce.ttl_seconds, 1, 3_600, "nonce.ttl_seconds", p);
    let redis = match (nonce.store.as_str(), &nonce.redis_url) {
        ("memory", None) => None,
        ("memory", Some(_)) => {
            p.push("nonce.redis_url", "is set but nonce.store is \"memory\": set nonce.store = \"redis\" or remove it");
            None
        }
        ("redis", None) => {
            p.push("nonce.redis_url", "is required with nonce.store = \"redis\", e.g. \"redis://10.0.0.5:6379/0\"");
            None
        }
        ("redis", Some(url)) => redis_config(url, &nonce.redis_key_prefix, nonce.redis_timeout_ms, "nonce", p),
        (other, _) => {
            p.push("nonce.store", format!("{other:?} is not one of memory, redis"));
            None
        }
    };
    if !id_token_routes {
        // Settings that only ID-token routes use would silently do nothing.
        let unused = [
            ("nonce", nonce_given),
            ("line.id_token_verification", line.id_token_verification != DEFAULT_ID_TOKEN_VERIFICATION),
            ("line.jwks_url", line.jwks_url != DEFAULT_JWKS_URL),
            ("line.clock_skew_seconds", line.clock_skew_seconds != DEFAULT_CLOCK_SKEW_SECONDS),
            ("line.channel_secret_file", line.channel_secret_file.is_some()),
            ("line.channel_secret_files", line.channel_secret_files.is_some()),
        ];
        for (key, set) in unused {
            if set {
                p.push(key, "has no effect: no route has auth = \"id_token\"; remove it or add an id_token route");
            }
        }
    }
    id_token_routes.then(|| IdTokenConfig {
        verification,
        jwks_url: line.jwks_url.clone(),
        clock_skew: Duration::from_secs(line.clock_skew_seconds),
        channel_secrets,
        nonce: NonceConfig { path: nonce.path.clone(), ttl: nonce_ttl, redis },
    })
}

/// Checks a Redis URL (`redis://` or `rediss://`, host required), key prefix and
/// timeout for `section` (`nonce` or `cache`). Problems never echo the URL: it
/// may hold a password.
fn redis_config(url: &str, prefix: &str, timeout_ms: u64, section: &str, p: &mut Problems) -> Option<RedisConfig> {
    let key = |k: &str| format!("{section}.{k}");
    let ok_url = match url.split_once("://") {
        Some(("redis" | "rediss", rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            !host.is_empty() && !host.starts_with('/') && redis::IntoConnectionInfo::into_connection_info(url).is_ok()
        }
        _ => false,
    };
    if !ok_url {
        p.push(
            key("redis_url"),
            format!(
                "{:?} is not a redis:// or rediss:// URL with a host (e.g. \"redis://:password@10.0.0.5:6379/0\"; unix sockets, Sentinel and Cluster are not supported)",
                redact_url(url)
            ),
        );
    }
    if prefix.is_empty()
        || prefix.len() > 128
        || prefix.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        p.push(key("redis_key_prefix"), "must be 1 to 128 visible characters, e.g. \"line-auth-proxy:nonce:\"");
    }
    if !(1..=10_000).contains(&timeout_ms) {
        p.push(key("redis_timeout_ms"), "must be between 1 and 10000 milliseconds");
    }
    ok_url.then(|| RedisConfig {
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// Reads a secret file: trimmed of surrounding whitespace, never empty.
fn read_secret(path: &Path, key: &str, p: &mut Problems) -> Option<Secret> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let secret = bytes.trim_ascii().to_vec();
            if secret.is_empty() {
                p.push(key, format!("{} is empty", path.display()));
                return None;
            }
            Some(Secret(secret))
        }
        Err(e) => {
            p.push(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

fn parse_addr(s: &str, key: &str, p: &mut Problems) -> Option<SocketAddr> {
    match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(key, format!("{s:?} is not an IP:port address, e.g. \"0.0.0.0:8080\" or \"[::]:8080\""));
            None
        }
    }
}

/// Accepts an `http(s)://host[:port]/path` URL (no credentials, no fragment).
fn parse_origin_and_path(s: &str, key: &str, p: &mut Problems) -> Option<(http::uri::Scheme, http::uri::Authority)> {
    let uri: Uri = match s.parse() {
        Ok(u) => u,
        Err(_) => {
            p.push(key, format!("{s:?} is not a URL"));
            return None;
        }
    };
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned()) else {
        p.push(key, format!("{s:?} must be an absolute http:// or https:// URL"));
        return None;
    };
    if !matches!(scheme.as_str(), "http" | "https") || authority.as_str().contains('@') {
        p.push(key, format!("{s:?} must be an http:// or https:// URL without credentials"));
        return None;
    }
    Some((scheme, authority))
}

/// Accepts `http(s)://host[:port]` with an optional trailing `/` and nothing else.
fn parse_origin(s: &str, key: &str, p: &mut Problems) -> Option<(http::uri::Scheme, http::uri::Authority)> {
    let uri: Uri = match s.parse() {
        Ok(u) => u,
        Err(_) => {
            p.push(key, format!("{s:?} is not a URL, e.g. \"http://127.0.0.1:3000\""));
            return None;
        }
    };
    let scheme = match uri.scheme_str() {
        Some("http") | Some("https") => uri.scheme().cloned(),
        _ => {
            p.push(key, format!("{s:?} must start with http:// or https://"));
            return None;
        }
    };
    let Some(authority) = uri.authority().cloned() else {
        p.push(key, format!("{s:?} has no host"));
        return None;
    };
    if authority.as_str().contains('@') {
        p.push(key, "must not carry credentials (user:password@)");
        return None;
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        p.push(key, format!("{s:?} must be an origin only (scheme, host, port): no path or query"));
        return None;
    }
    Some((scheme?, authority))
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn range_ms(ms: u64, key: &str, p: &mut Problems) -> Duration {
    if !(1..=MAX_TIMEOUT_MS).contains(&ms) {
        p.push(key, format!("must be between 1 and {MAX_TIMEOUT_MS} milliseconds"));
    }
    Duration::from_millis(ms)
}

fn range_secs(s: u64, min: u64, max: u64, key: &str, p: &mut Problems) -> Duration {
    if !(min..=max).contains(&s) {
        p.push(key, format!("must be between {min} and {max} seconds"));
    }
    Duration::from_secs(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Config, Problems> {
        super::load_str(toml, env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn keys(p: &Problems) -> Vec<&str> {
        p.0.iter().map(|x| x.key.as_str()).collect()
    }

    const MINIMAL: &str = "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[line]\nchannel_ids = [\"1234567890\"]\n";

    #[test]
    fn minimal_file_gets_every_default() {
        let c = load_str(MINIMAL, &[]).unwrap();
        assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.server.max_header_bytes, 16384);
        assert_eq!(c.cache.ttl, Duration::from_secs(60));
        assert_eq!(c.line.api_base_url, "https://api.line.me");
        assert_eq!(c.identity.names.user_id.as_str(), "x-line-user-id");
    }

    #[test]
    fn example_config_is_valid_and_names_every_key() {
        let text = include_str!("../config/example.toml");
        let c = load_str(text, &[]).expect("config/example.toml must load");
        assert!(!c.routes.routes().is_empty());
        for (path, _) in SCHEMA {
            let key = path.rsplit('.').next().unwrap();
            assert!(text.contains(key), "config/example.toml does not document {path}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let file = r#"
[server]
listen = "nonsense"
listn = "x"
max_header_bytes = 10
[upstream]
url = "ftp://x"
[line]
channel_ids = []
[cache]
ttl_seconds = 0
[identity]
header_prefix = "X Line"
[[routes]]
path_prefix = "public"
auth = "maybe"
[[routes]]
path_prefix = "/a//b"
auth = "none"
methods = ["G ET"]
"#;
        let p = load_str(file, &[]).unwrap_err();
        let k = keys(&p);
        assert!(k.contains(&"server.listn"), "{k:?}");
        for expected in [
            "server.listen",
            "server.max_header_bytes",
            "upstream.url",
            "line.channel_ids",
            "cache.ttl_seconds",
            "identity.header_prefix",
            "routes[0].path_prefix",
            "routes[0].auth",
            "routes[1].path_prefix",
            "routes[1].methods[0]",
        ] {
            assert!(k.contains(&expected), "{expected} missing from {k:?}");
        }
    }

    #[test]
    fn unknown_keys_and_types_are_all_reported() {
        let p = load_str("[server]\nfoo = 1\nlisten = 5\n[bogus]\nx = 1\n[[routes]]\npath = \"/\"\n", &[]).unwrap_err();
        let k = keys(&p);
        assert!(k.contains(&"server.foo"));
        assert!(k.contains(&"server.listen"));
        assert!(k.contains(&"bogus"));
        assert!(k.contains(&"routes[0].path"));
    }

    #[test]
    fn env_overrides_scalars_and_lists() {
        let c = load_str(
            MINIMAL,
            &[
                ("LINE_AUTH_PROXY__LINE__CHANNEL_IDS", "111, 222"),
                ("LINE_AUTH_PROXY__SERVER__LISTEN", "127.0.0.1:9999"),
                ("LINE_AUTH_PROXY__CACHE__TTL_SECONDS", "5"),
                ("LINE_AUTH_PROXY__IDENTITY__FORWARD_AUTHORIZATION", "true"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.line.channel_ids, vec!["111", "222"]);
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.cache.ttl, Duration::from_secs(5));
        assert!(c.identity.forward_authorization);
    }

    #[test]
    fn env_typos_and_bad_values_are_errors() {
        let p = load_str(
            MINIMAL,
            &[
                ("LINE_AUTH_PROXY__SERVER__LISTN", "x"),
                ("LINE_AUTH_PROXY__CACHE__TTL_SECONDS", "soon"),
                ("LINE_AUTH_PROXY__ROUTES__AUTH", "none"),
            ],
        )
        .unwrap_err();
        let k = keys(&p);
        assert!(k.contains(&"LINE_AUTH_PROXY__SERVER__LISTN"), "{k:?}");
        assert!(k.contains(&"cache.ttl_seconds"), "{k:?}");
        assert!(k.contains(&"LINE_AUTH_PROXY__ROUTES__AUTH"), "{k:?}");
    }

    #[test]
    fn not_yet_supported_features_are_refused_not_ignored() {
        let file = format!("{MINIMAL}[forward_auth]\nenabled = true\n[assertion]\nenabled = true\n");
        let k = keys_of(&load_str(&file, &[]).unwrap_err());
        assert_eq!(k, vec!["forward_auth.enabled", "assertion.enabled"]);
        // Disabled sections are accepted as written.
        let ok = format!("{MINIMAL}[forward_auth]\nenabled = false\n[assertion]\nenabled = false\nheader = \"X-Id\"\n");
        assert_eq!(load_str(&ok, &[]).unwrap().identity.assertion_header.as_str(), "x-id");
    }

    fn keys_of(p: &Problems) -> Vec<String> {
        p.0.iter().map(|x| x.key.clone()).collect()
    }

    const LOGIN: &str = "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n";

    #[test]
    fn id_token_routes_get_nonce_and_verification_defaults() {
        let c = load_str(&format!("{MINIMAL}{LOGIN}"), &[]).unwrap();
        let id = c.id_token.expect("id_token config");
        assert_eq!(id.verification, IdTokenVerification::Local);
        assert_eq!(id.jwks_url, DEFAULT_JWKS_URL);
        assert_eq!(id.clock_skew, Duration::from_secs(60));
        assert_eq!(id.nonce.path, "/auth/nonce");
        assert_eq!(id.nonce.ttl, Duration::from_secs(300));
        assert!(c.routes.routes()[0].require_nonce, "require_nonce defaults to true");
        let c = load_str(&format!("{MINIMAL}{LOGIN}require_nonce = false\n"), &[]).unwrap();
        assert!(!c.routes.routes()[0].require_nonce);
        assert!(load_str(MINIMAL, &[]).unwrap().id_token.is_none());
    }

    #[test]
    fn id_token_settings_without_an_id_token_route_are_errors() {
        let file = format!("{MINIMAL}[nonce]\nttl_seconds = 60\n");
        let p = load_str(&file, &[("LINE_AUTH_PROXY__LINE__ID_TOKEN_VERIFICATION", "remote")]).unwrap_err();
        assert_eq!(keys_of(&p), vec!["nonce", "line.id_token_verification"]);
        let p = load_str(
            &format!("{MINIMAL}[[routes]]\npath_prefix = \"/\"\nauth = \"none\"\nrequire_nonce = true\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(keys_of(&p), vec!["routes[0].require_nonce"]);
    }

    #[test]
    fn id_token_values_are_checked() {
        let file = format!(
            "{MINIMAL}id_token_verification = \"sometimes\"\njwks_url = \"http://evil.example/certs\"\nclock_skew_seconds = 3600\n\
             [nonce]\npath = \"nonce\"\nttl_seconds = 0\nstore = \"disk\"\n{LOGIN}"
        );
        let k = keys_of(&load_str(&file, &[]).unwrap_err());
        for expected in [
            "line.id_token_verification",
            "line.jwks_url",
            "line.clock_skew_seconds",
            "nonce.path",
            "nonce.ttl_seconds",
            "nonce.store",
        ] {
            assert!(k.iter().any(|x| x == expected), "{expected} missing from {k:?}");
        }
    }

    #[test]
    fn redis_settings_are_checked_and_passwords_never_echoed() {
        let redis =
            format!("{MINIMAL}{LOGIN}[nonce]\nstore = \"redis\"\nredis_url = \"redis://:hunter2@10.0.0.5:6379/3\"\n");
        let c = load_str(&redis, &[]).unwrap();
        let r = c.id_token.unwrap().nonce.redis.unwrap();
        assert_eq!(r.key_prefix, "line-auth-proxy:nonce:");
        assert_eq!(r.timeout, Duration::from_millis(250));
        assert_eq!(r.redacted(), "redis://10.0.0.5:6379/3");
        assert!(!format!("{r:?}").contains("hunter2"));
        let missing = format!("{MINIMAL}{LOGIN}[nonce]\nstore = \"redis\"\n");
        assert_eq!(keys_of(&load_str(&missing, &[]).unwrap_err()), vec!["nonce.redis_url"]);
        let stray = format!("{MINIMAL}{LOGIN}[nonce]\nredis_url = \"redis://x:1\"\n");
        assert_eq!(keys_of(&load_str(&stray, &[]).unwrap_err()), vec!["nonce.redis_url"]);
        let bad = redis.replace("redis://:hunter2@10.0.0.5:6379/3", "http://:hunter2@x/");
        let p = load_str(&bad, &[]).unwrap_err();
        assert_eq!(keys_of(&p), vec!["nonce.redis_url"]);
        assert!(!p.to_string().contains("hunter2"), "{p}");
        // The shared cache falls back to the nonce URL, or names its own.
        let shared = format!("{redis}[cache]\nshared = \"redis\"\n");
        let c = load_str(&shared, &[]).unwrap();
        assert_eq!(c.cache.shared.unwrap().key_prefix, "line-auth-proxy:verdict:");
        let alone = format!("{MINIMAL}[cache]\nshared = \"redis\"\n");
        assert_eq!(keys_of(&load_str(&alone, &[]).unwrap_err()), vec!["cache.redis_url"]);
        let own = format!(
            "{MINIMAL}[cache]\nshared = \"redis\"\nredis_url = \"rediss://cache.internal:6380\"\nredis_timeout_ms = 50\n"
        );
        assert_eq!(load_str(&own, &[]).unwrap().cache.shared.unwrap().timeout, Duration::from_millis(50));
    }

    #[test]
    fn channel_secrets_are_read_from_files_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("lap-secret-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cr3t-value\n").unwrap();
        let file = format!("{MINIMAL}channel_secret_file = {secret:?}\n{LOGIN}");
        let c = load_str(&file, &[]).unwrap();
        let id = c.id_token.unwrap();
        assert_eq!(id.channel_secrets["1234567890"].0, b"s3cr3t-value");
        assert!(!format!("{id:?}").contains("s3cr3t"));
        // One file, several channels: ambiguous.
        let two = file.replace("[\"1234567890\"]", "[\"1234567890\", \"222\"]");
        assert_eq!(keys_of(&load_str(&two, &[]).unwrap_err()), vec!["line.channel_secret_file"]);
        // Per-channel files must name our channels; missing files are reported.
        let map = format!(
            "{MINIMAL}{LOGIN}[line.channel_secret_files]\n\"1234567890\" = {secret:?}\n\"999\" = \"/nonexistent\"\n"
        );
        let k = keys_of(&load_str(&map, &[]).unwrap_err());
        assert_eq!(k, vec!["line.channel_secret_files.999"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn line_api_must_be_https_except_on_loopback() {
        let with = |url: &str| load_str(&format!("{MINIMAL}api_base_url = \"{url}\"\n"), &[]);
        assert!(with("https://api.line.me").is_ok());
        assert!(with("http://127.0.0.1:1234").is_ok());
        assert!(with("http://[::1]:1234").is_ok());
        assert!(with("http://localhost:1234").is_ok());
        assert_eq!(keys(&with("http://api.line.me").unwrap_err()), vec!["line.api_base_url"]);
        assert_eq!(keys(&with("https://api.line.me/v2").unwrap_err()), vec!["line.api_base_url"]);
    }

    #[test]
    fn admin_port_cannot_be_the_proxy_port() {
        let file = format!("{MINIMAL}[server]\nlisten = \"0.0.0.0:8080\"\nadmin_listen = \"127.0.0.1:8080\"\n");
        assert_eq!(keys(&load_str(&file, &[]).unwrap_err()), vec!["server.admin_listen"]);
    }

    #[test]
    fn upstream_url_must_be_an_origin() {
        for bad in ["http://x:1/base", "http://u:p@x:1", "x:1", "ftp://x", "http://x?q=1"] {
            let file = MINIMAL.replace("http://127.0.0.1:3000", bad);
            assert_eq!(keys(&load_str(&file, &[]).unwrap_err()), vec!["upstream.url"], "{bad}");
        }
    }
}
