//! Redis, for what several replicas must share: nonces and (optionally) verdicts.
//!
//! One [`RedisConn`] per use (`nonce`, `cache`) wraps redis-rs's
//! `ConnectionManager`, which reconnects by itself. Every call has a short
//! timeout of its own and is counted by operation and outcome. Nothing here ever
//! formats the URL (it may hold a password): logs name the redacted address.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::clock::Stopwatch;
use crate::telemetry::{Metrics, RedisLabels, RedisOpLabels};
use crate::traces::{Kind, Span};

/// Where and how to reach Redis for one use (nonces or the shared cache).
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    /// May hold a password: never logged; see [`RedisConfig::redacted`].
    pub url: String,
    pub key_prefix: String,
    pub timeout: Duration,
    /// Seals every value written (`redis_entry`).
    pub mac_keys: crate::config::KeyRing,
    /// `rediss://` only: PEM CA certificates trusted instead of the public
    /// (webpki) roots.
    pub root_certs: Option<Vec<u8>>,
}

impl RedisConfig {
    /// `scheme://host:port/db`, without credentials: the form safe to log.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted())
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("private_ca", &self.root_certs.is_some())
            .finish()
    }
}

/// Drops `user:password@` from a URL.
/// Whatever stands before the last `@` may be `user:password` (also in a
/// mistyped URL: `redis:/:secret@host`), so it is dropped, keeping a scheme when
/// one is recognisable.
pub fn redact_url(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let host = &url[at + 1..];
    match url.find("://") {
        Some(scheme_end) if scheme_end < at => format!("{}{host}", &url[..scheme_end + 3]),
        _ => format!("<redacted>@{host}"),
    }
}

/// A `redis://` or `rediss://` URL with a host, as redis-rs reads it. The
/// message never echoes a password.
pub fn check_url(url: &str) -> Result<(), String> {
    let info = match url.split_once("://") {
        Some(("redis" | "rediss", rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            let info = redis::IntoConnectionInfo::into_connection_info(url).ok();
            info.filter(|_| !host.is_empty() && !host.starts_with('/'))
        }
        _ => None,
    };
    // redis-rs reads `#insecure` (no certificate verification) and then, built
    // without `tls-rustls-insecure`, fails every connection with it.
    if let Some(redis::ConnectionAddr::TcpTls { insecure: true, .. }) = info.as_ref().map(|i| i.addr()) {
        return Err(format!(
            "{:?}: #insecure (no certificate verification) is not supported: Redis over TLS must present a certificate the proxy can verify",
            redact_url(url)
        ));
    }
    info.map(|_| ()).ok_or_else(|| {
        format!(
            "{:?} is not a redis:// or rediss:// URL with a host (e.g. \"redis://:password@10.0.0.5:6379/0\"; unix sockets, Sentinel and Cluster are not supported)",
            redact_url(url)
        )
    })
}

/// Key namespaces are 1 to 128 visible characters.
pub fn check_key_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty()
        || prefix.len() > 128
        || prefix.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("must be 1 to 128 visible characters, e.g. \"line-auth-proxy:nonce:\"".into());
    }
    Ok(())
}

/// rustls's own words when it refused the server's certificate (unknown
/// issuer, expired, wrong name), from a failed call: redis-rs keeps the TLS
/// error only as the text of an I/O error, so it is found by the prefix this
/// rustls version writes (taken from rustls itself, not spelt out here). The
/// text is rustls's alone: certificate reasons and host names, never the URL.
fn certificate_failure(e: &redis::RedisError) -> Option<String> {
    let sample = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer).to_string();
    let prefix = sample.split(':').next().filter(|p| !p.is_empty())?;
    let text = e.to_string();
    text.find(prefix).map(|at| text[at..].to_owned())
}

/// The class of a failed call for the WARN line, as for LINE calls:
/// `connect_refused`, `connection_reset`, `timeout`, `dns`, `auth` (the
/// password or ACL user was refused), `server_error` (Redis answered with an
/// error), `bad_reply`, or `io`. (A refused TLS certificate has its own line,
/// see [`certificate_failure`].) Read from the error's kind and its I/O
/// error; a failed lookup is recognised by the text the standard library
/// writes for it, which is read here and never logged.
fn cause_of(e: &redis::RedisError) -> &'static str {
    use redis::ErrorKind;
    if e.is_connection_refusal() {
        return "connect_refused";
    }
    if e.is_timeout() {
        return "timeout";
    }
    if e.to_string().contains("failed to lookup address") {
        return "dns";
    }
    if let Some(io) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>()) {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        return match io.kind() {
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => "connection_reset",
            _ => "io",
        };
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed => "auth",
        ErrorKind::Server(_) => "server_error",
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => "bad_reply",
        _ => "io",
    }
}

/// How often the health probe PINGs (1 second).
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// A Redis call that did not complete: the caller decides (nonces fail closed,
/// the shared cache falls back to LINE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RedisFailure {
    #[error("Redis did not answer in time")]
    Timeout,
    #[error("Redis call failed")]
    Failed,
}

/// Redis could not be set up at start. Only the error's kind is kept: a
/// `RedisError`'s text can carry server detail, and its URL a password.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the {purpose} Redis at {address} ({kind:?})")]
pub struct RedisSetupError {
    pub purpose: &'static str,
    /// Without credentials.
    pub address: String,
    pub kind: redis::ErrorKind,
}

pub struct RedisConn {
    manager: ConnectionManager,
    /// `nonce` or `cache`: the `use` label of the metrics.
    purpose: &'static str,
    prefix: String,
    timeout: Duration,
    redacted: String,
    healthy: AtomicBool,
    metrics: Arc<Metrics>,
}

impl RedisConn {
    /// Prepares the connection without connecting (Redis may be down at start;
    /// the first call or the health probe connects).
    pub fn new(config: &RedisConfig, purpose: &'static str, metrics: Arc<Metrics>) -> Result<Self, RedisSetupError> {
        let setup_error =
            |e: redis::RedisError| RedisSetupError { purpose, address: config.redacted(), kind: e.kind() };
        let client = match &config.root_certs {
            None => redis::Client::open(config.url.as_str()),
            Some(pem) => redis::Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) },
            ),
        }
        .map_err(setup_error)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, manager_config).map_err(setup_error)?;
        Ok(Self {
            manager,
            purpose,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            redacted: config.redacted(),
            healthy: AtomicBool::new(false),
            metrics,
        })
    }

    /// The namespaced key for `suffix`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// True after the last probe or call succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Runs one command with the per-call timeout; counts it as `op`.
    ///
    /// A call whose connection dropped (reset, broken pipe, closed by the
    /// server: `CLIENT KILL`, a Redis restart, an idle-connection reaper) is
    /// sent once more on the connection the manager opens in its place, within
    /// the same timeout, so that one reset is not a 503. Retrying is safe for
    /// every call this proxy makes, because none can do harm twice:
    /// - reads (`GET`, `PING`) and `cache_set` (a `SET` of the same value) are
    ///   idempotent;
    /// - `nonce_consume` (a script around `GETDEL`): if Redis ran it before the
    ///   connection dropped, the retry finds nothing and the login is refused
    ///   as unknown: it fails closed, never accepts a nonce twice;
    /// - `nonce_issue` (`SET NX` of a fresh random nonce): if Redis ran it, the
    ///   retry issues a second nonce and the first, never handed out, expires
    ///   unused, counted against the store's cap until then.
    ///
    /// After an outage this is also what makes the first call succeed: the
    /// connection the manager holds may be one that broke while Redis was
    /// away, and the retry goes out on the fresh one. While Redis stays
    /// unreachable the retry fails like the first attempt, within the timeout.
    pub async fn run<T: redis::FromRedisValue>(&self, op: &'static str, cmd: &redis::Cmd) -> Result<T, RedisFailure> {
        let stopwatch = Stopwatch::start();
        let span = Span::child("redis", Kind::Client);
        span.attr("db.system.name", "redis");
        span.attr("db.operation.name", op);
        span.attr("line_auth_proxy.redis_purpose", self.purpose);
        let mut conn = self.manager.clone();
        let attempts = async {
            match cmd.query_async::<T>(&mut conn).await {
                Err(e) if e.is_connection_dropped() => {
                    self.metrics.redis_retries.get_or_create(&RedisOpLabels { purpose: self.purpose, op }).inc();
                    tracing::info!(purpose = self.purpose, redis = %self.redacted, op, kind = ?e.kind(), "Redis connection dropped; retrying once");
                    cmd.query_async::<T>(&mut conn).await
                }
                result => result,
            }
        };
        let result = tokio::time::timeout(self.timeout, attempts).await;
        let outcome = match &result {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "error",
            Err(_) => "timeout",
        };
        if outcome != "ok" {
            span.error(outcome);
        }
        span.end();
        self.metrics.redis_requests.get_or_create(&RedisLabels { purpose: self.purpose, op, outcome }).inc();
        self.metrics
            .redis_duration
            .get_or_create(&RedisOpLabels { purpose: self.purpose, op })
            .observe(stopwatch.seconds());
        let result = match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                match certificate_failure(&e) {
                    Some(why) => tracing::warn!(
                        purpose = self.purpose,
                        redis = %self.redacted,
                        op,
                        error = %why,
                        hint = %format_args!(
                            "the server's certificate must chain to a trusted CA and name the URL's host; for a private CA, set {}.redis_ca_file",
                            self.purpose
                        ),
                        "Redis TLS certificate verification failed"
                    ),
                    // The kind and cause class only: a RedisError's text can carry server detail.
                    None => tracing::warn!(
                        purpose = self.purpose,
                        redis = %self.redacted,
                        op,
                        cause = cause_of(&e),
                        kind = ?e.kind(),
                        "Redis call failed"
                    ),
                }
                Err(RedisFailure::Failed)
            }
            Err(_) => {
                tracing::warn!(purpose = self.purpose, redis = %self.redacted, op, cause = "timeout", timeout_ms = self.timeout.as_millis() as u64, "Redis call timed out");
                Err(RedisFailure::Timeout)
            }
        };
        self.set_healthy(result.is_ok());
        result
    }

    fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was != healthy {
            if healthy {
                tracing::info!(purpose = self.purpose, redis = %self.redacted, "Redis reachable");
            } else {
                tracing::warn!(purpose = self.purpose, redis = %self.redacted, "Redis unreachable");
            }
        }
    }

    /// PINGs every [`HEALTH_INTERVAL`] until aborted, keeping [`Self::is_healthy`]
    /// current (readiness follows it for the nonce store).
    pub async fn run_health_probe(self: Arc<Self>) {
        loop {
            let _ = self.run::<String>("ping", &redis::cmd("PING")).await;
            tokio::time::sleep(HEALTH_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_server_certificate_is_recognised_and_other_failures_are_not() {
        let tls = |e: rustls::Error| redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        let unknown = tls(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        assert_eq!(certificate_failure(&unknown).as_deref(), Some("invalid peer certificate: UnknownIssuer"));
        let expired = tls(rustls::Error::InvalidCertificate(rustls::CertificateError::Expired));
        assert!(certificate_failure(&expired).is_some());
        let reset = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(certificate_failure(&reset), None);
        let alert = tls(rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure));
        assert_eq!(certificate_failure(&alert), None);
    }
}
