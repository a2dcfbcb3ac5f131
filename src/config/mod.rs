//! Configuration: the TOML file, the `LINE_AUTH_PROXY__…` environment overlay,
//! and the validation that turns both into an immutable [`Config`].
//!
//! Every key is declared once, in its section's file ([`keys::section!`]): name,
//! type (which carries the unit and range), default constant and doc. Loading
//! reads the merged tree key by key against those declarations, so that every
//! unknown key and every wrongly typed value is reported, not just the first;
//! then each section validates itself and the rules that span sections run.
//!
//! Problems carry dotted key paths (`server.listen`, `routes[0].auth`). Errors
//! stop the proxy (exit 2); warnings (a setting that has no effect) do not.

mod assertion;
mod cache;
mod file;
mod forward_auth;
mod id_token;
mod identity;
pub(crate) mod key_ring;
pub(crate) mod keys;
mod limits;
mod line;
mod log;
mod login;
mod nonce;
mod otel;
mod reload;
mod routes;
mod secret;
mod server;
mod session;
mod upstream;
mod url;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub(crate) use assertion::AssertionConfig;
pub(crate) use cache::CacheConfig;
pub(crate) use cache::CacheSection;
pub(crate) use file::FileConfig;
pub(crate) use forward_auth::ForwardAuthConfig;
pub(crate) use id_token::IdTokenConfig;
pub(crate) use identity::IdentityConfig;
pub(crate) use key_ring::KeyRing;
pub(crate) use limits::LimitsSection;
pub(crate) use line::{IdTokenVerification, LineSection};
pub(crate) use log::UserIdLogging;
pub(crate) use login::LoginConfig;
pub(crate) use otel::OtelConfig;
pub(crate) use reload::{changed_sections, reload};
pub(crate) use secret::{Secret, read_regular_file};
pub(crate) use server::{ServerConfig, TlsFiles};
pub(crate) use session::{DEFAULT_SESSION_COOKIE_NAME, SessionConfig};
pub(crate) use upstream::{UpstreamConfig, UpstreamProtocol};

use crate::routes::RouteTable;

/// Environment variable that may name the configuration file instead of `--config`.
pub const CONFIG_FILE_ENV: &str = "LINE_AUTH_PROXY_CONFIG";
/// Prefix of the environment overlay: `LINE_AUTH_PROXY__SECTION__KEY`.
pub const ENV_PREFIX: &str = "LINE_AUTH_PROXY__";

/// The validated, immutable configuration the proxy runs with.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub(crate) server: ServerConfig,
    pub(crate) upstream: UpstreamConfig,
    pub(crate) line: LineSection,
    pub(crate) cache: CacheConfig,
    pub(crate) identity: IdentityConfig,
    /// Present when some route has `auth = "id_token"`.
    pub(crate) id_token: Option<IdTokenConfig>,
    pub(crate) routes: RouteTable,
    pub(crate) limits: LimitsSection,
    /// Present when `forward_auth.enabled`.
    pub(crate) forward_auth: Option<ForwardAuthConfig>,
    /// Present when `assertion.enabled`.
    pub(crate) assertion: Option<AssertionConfig>,
    /// Present when a route has `auth = "session"` or `login.enabled`.
    pub(crate) session: Option<SessionConfig>,
    /// Present when `login.enabled`.
    pub(crate) login: Option<LoginConfig>,
    /// `log.user_id`.
    pub(crate) log_user_id: log::UserIdLogging,
    /// `log.audit_file`.
    pub(crate) audit_file: Option<PathBuf>,
    /// Present when `otel.endpoint` is set.
    pub(crate) otel: Option<OtelConfig>,
    /// The hash `line_auth_proxy_config_info` shows (comments and layout do
    /// not change it; URL passwords are left out of it).
    pub(crate) fingerprint: String,
    /// The settings only a restart applies, as read (a reload compares them).
    pub(crate) restart_only: reload::RestartOnly,
}

impl Config {
    /// `log.audit_file`: where the audit stream goes, when not with the rest.
    pub fn audit_file(&self) -> Option<&Path> {
        self.audit_file.as_deref()
    }

    /// Whether `other` has the same settings, whatever its hash says (a file
    /// whose restart-only changes stand in for the running values is
    /// otherwise the running configuration).
    pub(crate) fn same_settings(&self, other: &Config) -> bool {
        Config { fingerprint: other.fingerprint.clone(), ..self.clone() } == *other
    }

    /// `server.workers`, when set.
    pub fn workers(&self) -> Option<usize> {
        self.server.keys.workers.map(|w| w.get())
    }
}

/// Where the running configuration came from, for its reloads: the file
/// (`None`: the environment alone) and the environment overlay as read at
/// start (a process's environment does not change). No `Debug`: the
/// environment may hold secrets.
#[derive(Clone)]
pub struct Source {
    path: Option<PathBuf>,
    env: Vec<(String, String)>,
    /// The file as it was just before it was first read: a change after
    /// that, even one before the proxy serves, is a change to reload.
    pub(crate) seen: Option<crate::file_stamp::FileStamp>,
}

impl Source {
    /// Call before reading the file.
    pub fn new(path: Option<PathBuf>, env: Vec<(String, String)>) -> Self {
        let seen = path.as_deref().and_then(crate::file_stamp::FileStamp::of);
        Self { path, env, seen }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }
}

/// A configuration that loaded, and what in it has no effect.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

/// One finding: the dotted key path and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Everything found while loading: errors (the configuration is refused) and
/// warnings (settings that have no effect). `check` and start-up print all of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// Keys whose value could not be read at all: validation of the default
    /// that stood in for them is not reported on top.
    refused: std::collections::BTreeSet<String>,
}

impl Problems {
    /// A value that could not be read (unknown key, wrong type or range).
    pub(crate) fn refuse(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        self.refused.insert(key.clone());
        self.errors.push(Problem { key, message: message.into() });
    }

    /// A value that was read but does not work.
    pub(crate) fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        if !self.is_refused(&key) {
            self.errors.push(Problem { key, message: message.into() });
        }
    }

    /// True when `key`, or the table it belongs to, could not be read.
    pub(crate) fn is_refused(&self, key: &str) -> bool {
        self.refused
            .iter()
            .any(|r| key == r || key.strip_prefix(r.as_str()).is_some_and(|rest| rest.starts_with(['.', '['])))
    }

    pub(crate) fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem { key: key.into(), message: message.into() });
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The key paths of the errors, in order (tests and tools).
    pub fn error_keys(&self) -> Vec<&str> {
        self.errors.iter().map(|p| p.key.as_str()).collect()
    }

    /// The key paths of the warnings, in order.
    pub fn warning_keys(&self) -> Vec<&str> {
        self.warnings.iter().map(|p| p.key.as_str()).collect()
    }
}

/// One error per line.
impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The process environment for [`load`]: our variables must be UTF-8 (an error
/// names any that is not); other variables that are not are skipped, never a crash.
pub fn process_environment() -> Result<Vec<(String, String)>, Problems> {
    let mut problems = Problems::default();
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => env.push((name, value)),
            (name, _) => {
                let shown = name.unwrap_or_else(|n| n.to_string_lossy().into_owned());
                if shown.starts_with("LINE_AUTH_PROXY") {
                    problems.refuse(shown, "is not valid UTF-8");
                }
            }
        }
    }
    if problems.has_errors() { Err(problems) } else { Ok(env) }
}

/// Configuration files larger than this are refused unread (1 MiB).
const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// Reads the file (when given; without one, the environment must supply every
/// required key), applies the environment overlay from `env`, and validates.
/// `env` is passed in so tests do not touch the process environment.
pub fn load<I>(path: Option<&Path>, env: I) -> Result<Loaded, Problems>
where
    I: IntoIterator<Item = (String, String)>,
{
    let text = read_text(path)?;
    load_str(&text, env).map_err(|problems| syntax_at(path, problems))
}

/// The configuration file's text (empty without a file), or the one problem
/// that it cannot be read, under the file's name.
fn read_text(path: Option<&Path>) -> Result<String, Problems> {
    let Some(path) = path else {
        return Ok(String::new());
    };
    secret::read_regular_file(path, MAX_CONFIG_FILE_BYTES, "configuration file")
        .and_then(|bytes| String::from_utf8(bytes).map_err(|_| "is not valid UTF-8".to_owned()))
        .map_err(|why| {
            // The problem's key is the path already.
            let shown = path.display().to_string();
            let why = why
                .strip_prefix(&format!("{shown} "))
                .map(str::to_owned)
                .unwrap_or_else(|| why.replace(&format!("cannot read {shown}:"), "cannot read:"));
            let mut problems = Problems::default();
            problems.refuse(shown, why);
            problems
        })
}

/// TOML syntax errors named by the file they are in.
fn syntax_at(path: Option<&Path>, mut problems: Problems) -> Problems {
    if let Some(path) = path {
        for p in &mut problems.errors {
            if p.key == file::TOML_SYNTAX_KEY {
                p.key = path.display().to_string();
            }
        }
    }
    problems
}

/// [`load`] for configuration text already in memory.
pub fn load_str<I>(text: &str, env: I) -> Result<Loaded, Problems>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut problems = Problems::default();
    let Some(file) = FileConfig::read(text, env, &mut problems) else {
        return Err(problems);
    };
    let config = validate(&file, &mut problems);
    if problems.has_errors() { Err(problems) } else { Ok(Loaded { config, warnings: problems.warnings }) }
}

/// Each section validates itself; the rules that span sections run here.
/// The result is meaningful only when `problems` holds no errors.
fn validate(file: &FileConfig, p: &mut Problems) -> Config {
    let server = file.server.validate(p);
    let upstream = file.upstream.validate(file, p);
    let line = file.line.validate(p);
    let cache = file.cache.validate(file, p);
    let identity = file.identity.validate(&file.assertion, p);
    let forward_auth = file.forward_auth.validate(file, p);
    let assertion = file.assertion.validate(file, p);
    let routes = routes::validate(file, p);
    let id_token = id_token::validate(file, routes.has(crate::routes::RouteAuth::IdToken), p);
    let session_routes = routes.has(crate::routes::RouteAuth::Session);
    let login = file.login.validate(file, p);
    if login.is_some() && !session_routes {
        p.warn(
            "login.enabled",
            "no route has auth = \"session\": the sessions web login issues are accepted on such routes only",
        );
    }
    let session = file.session.validate(file, session_routes || file.login.enabled, p);
    let limits = file.limits.clone();
    Config {
        server,
        upstream,
        line,
        cache,
        identity,
        id_token,
        routes,
        limits,
        forward_auth,
        assertion,
        session,
        login,
        log_user_id: file.log.user_id,
        audit_file: file.log.audit_file(p),
        otel: file.otel.validate(p),
        fingerprint: file.fingerprint.clone(),
        restart_only: reload::RestartOnly::of(file),
    }
}

/// Collapses a library's multi-line message into one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The valid values of a `serde` enum of unit variants, as its own derive names
/// them (`none, access_token, optional`): read from the error serde gives for a
/// value that is none of them, so the list can never drift from the enum.
pub(crate) fn variants<T: for<'de> serde::Deserialize<'de>>() -> String {
    let message = match T::deserialize(toml::Value::String("\u{0}".into())) {
        Ok(_) => return String::new(),
        Err(e) => e.to_string(),
    };
    // serde says "expected `a`", "expected `a` or `b`" or "expected one of `a`, `b`, `c`".
    let listed = message.rsplit_once("expected ").map_or(message.as_str(), |(_, rest)| rest);
    let listed = listed.trim().trim_start_matches("one of ").replace(" or ", ", ");
    listed.replace('`', "")
}

/// One use of Redis (nonces or the shared cache), as the Redis module checks
/// its URL and key prefix. `url_key` is the key the URL was written under (the
/// shared cache may borrow `nonce.redis_url`). Problems never echo a password.
pub(crate) struct RedisUse<'a> {
    pub url_key: &'static str,
    pub url: &'a url::RedisUrl,
    pub prefix_key: &'static str,
    pub key_prefix: &'a str,
    pub timeout: std::time::Duration,
    /// The key the MAC key file was written under, and the file (required).
    pub mac_key: (&'static str, Option<&'a Path>),
    /// What this Redis holds, for the "required" message: `nonce.store = "redis"`.
    pub required_by: &'static str,
    /// The private CA: the key it was written under, the file, and whether it
    /// was written for this use (false: borrowed from `nonce.redis_ca_file`).
    pub ca_file: Option<(&'static str, &'a Path, bool)>,
}

/// CA certificate files larger than this are refused unread (1 MiB; the whole
/// Mozilla bundle is about 220 KB).
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

fn redis_config(r: RedisUse<'_>, p: &mut Problems) -> Option<crate::redis_conn::RedisConfig> {
    let url_ok = crate::redis_conn::check_url(r.url.as_str()).map_err(|why| p.error(r.url_key, why));
    let prefix_ok = crate::redis_conn::check_key_prefix(r.key_prefix).map_err(|why| p.error(r.prefix_key, why));
    let (mac_key, mac_path) = r.mac_key;
    let mac_keys = match mac_path {
        None => {
            p.error(
                mac_key,
                format!(
                    "is required with {}: a file of 32 random bytes shared by the replicas (`head -c 32 /dev/urandom > FILE`), so that nobody who can write to the Redis can forge what it holds",
                    r.required_by
                ),
            );
            None
        }
        Some(path) => {
            secret::check_permissions(mac_key, path, p);
            key_ring::read_key_ring(path).map_err(|why| p.error(mac_key, why)).ok()
        }
    };
    let tls = r.url.as_str().starts_with("rediss://");
    let root_certs = match r.ca_file {
        Some((key, _, true)) if url_ok.is_ok() && !tls => {
            p.warn(key, format!("has no effect: {} is redis://, not rediss:// (TLS)", r.url_key));
            Ok(None)
        }
        Some((key, path, _)) if tls => read_ca_file(path).map(Some).map_err(|why| p.error(key, why)),
        _ => Ok(None),
    };
    let mac_keys = mac_keys?;
    (url_ok.is_ok() && prefix_ok.is_ok() && root_certs.is_ok()).then(|| crate::redis_conn::RedisConfig {
        url: r.url.as_str().to_owned(),
        key_prefix: r.key_prefix.to_owned(),
        timeout: r.timeout,
        mac_keys,
        root_certs: root_certs.ok().flatten(),
    })
}

/// Reads a PEM bundle of CA certificates: at least one, each usable as a
/// trust anchor, nothing else but comments and whitespace between them.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = secret::read_regular_file(path, MAX_CA_FILE_BYTES, "CA certificate file")?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| format!("{}: certificate {} is not valid PEM ({e})", path.display(), i + 1))?;
        roots.add(cert).map_err(|e| {
            format!("{}: certificate {} is not a CA certificate rustls can use ({e})", path.display(), i + 1)
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----): name the CA bundle that signed the Redis server's certificate",
            path.display()
        ));
    }
    Ok(pem)
}
