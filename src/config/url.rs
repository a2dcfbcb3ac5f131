//! URL-shaped key values: an [`Origin`] (`upstream.url`, `line.api_base_url`) and
//! an [`HttpUrl`] with a path (`line.jwks_url`). Neither may carry credentials;
//! messages never echo a `user:password@` part.

use http::Uri;
use http::uri::{Authority, Scheme};

use super::keys::{Kind, Value};
use crate::redis_conn::redact_url as redact;

/// `http(s)://host[:port]`, an optional trailing `/` and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Origin {
    /// `scheme://authority`, without a trailing `/`.
    pub fn as_string(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// True when the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(self.authority.host())
    }

    /// Refuses `http://` for anything but loopback: what travels there (a token)
    /// must not cross a network in clear text.
    pub fn https_unless_loopback(&self) -> bool {
        self.scheme == Scheme::HTTPS || self.is_loopback()
    }
}

/// Only for the constants that are the defaults; a test reads every default back.
impl From<&'static str> for Origin {
    fn from(s: &'static str) -> Self {
        parse_origin(s).expect("a default origin is valid")
    }
}

impl Value for Origin {
    const KIND: Kind = Kind::Str;
    fn read(value: toml::Value) -> Result<Self, String> {
        parse_origin(value.as_str().unwrap_or_default())
    }
    fn show(&self) -> String {
        format!("{:?}", self.as_string())
    }
}

fn parse_origin(s: &str) -> Result<Origin, String> {
    let uri: Uri = s.parse().map_err(|_| format!("{:?} is not a URL, e.g. \"http://127.0.0.1:3000\"", redact(s)))?;
    let scheme = match uri.scheme_str() {
        Some("http" | "https") => uri.scheme().cloned().expect("checked"),
        _ => return Err(format!("{:?} must start with http:// or https://", redact(s))),
    };
    let authority = uri.authority().cloned().ok_or_else(|| format!("{:?} has no host", redact(s)))?;
    if authority.as_str().contains('@') {
        return Err("must not carry credentials (user:password@)".into());
    }
    check_host_and_port(&authority, s)?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!("{:?} must be an origin only (scheme, host, port): no path or query", redact(s)));
    }
    Ok(Origin { scheme, authority })
}

/// A host, and a port that is a number from 1 to 65535 when one is written
/// (`http` parses `:99999` or `:abc` as "no port", which would silently mean 80).
fn check_host_and_port(authority: &Authority, s: &str) -> Result<(), String> {
    if authority.host().is_empty() {
        return Err(format!("{:?} has no host", redact(s)));
    }
    let written = authority.as_str();
    let port = match written.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').and_then(|(_, after)| after.strip_prefix(':')),
        None => written.rsplit_once(':').map(|(_, port)| port),
    };
    match port.map(|p| p.parse::<u16>()) {
        None | Some(Ok(1..)) => Ok(()),
        Some(_) => Err(format!("{:?} has a port that is not a number from 1 to 65535", redact(s))),
    }
}

/// A Redis URL as written: it may hold a password, so it prints redacted
/// (`Debug` included); the Redis module checks its form.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({:?})", redact(&self.0))
    }
}

impl Value for RedisUrl {
    const KIND: Kind = Kind::Str;
    fn read(value: toml::Value) -> Result<Self, String> {
        String::read(value).map(RedisUrl)
    }
    fn show(&self) -> String {
        format!("{:?}", redact(&self.0))
    }
}

/// An absolute `http(s)://` URL with a path, without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    url: String,
    scheme: Scheme,
    host_is_loopback: bool,
}

impl HttpUrl {
    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn https_unless_loopback(&self) -> bool {
        self.scheme == Scheme::HTTPS || self.host_is_loopback
    }
}

impl From<&'static str> for HttpUrl {
    fn from(s: &'static str) -> Self {
        parse_http_url(s).expect("a default URL is valid")
    }
}

impl Value for HttpUrl {
    const KIND: Kind = Kind::Str;
    fn read(value: toml::Value) -> Result<Self, String> {
        parse_http_url(value.as_str().unwrap_or_default())
    }
    fn show(&self) -> String {
        format!("{:?}", self.url)
    }
}

fn parse_http_url(s: &str) -> Result<HttpUrl, String> {
    let uri: Uri = s.parse().map_err(|_| format!("{:?} is not a URL", redact(s)))?;
    let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority()) else {
        return Err(format!("{:?} must be an absolute http:// or https:// URL", redact(s)));
    };
    if !matches!(scheme.as_str(), "http" | "https") || authority.as_str().contains('@') {
        return Err(format!("{:?} must be an http:// or https:// URL without credentials", redact(s)));
    }
    check_host_and_port(authority, s)?;
    Ok(HttpUrl { url: s.to_owned(), scheme, host_is_loopback: is_loopback_host(authority.host()) })
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &str) -> Result<Origin, String> {
        Origin::read(toml::Value::String(s.into()))
    }

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert_eq!(origin("http://127.0.0.1:3000/").unwrap().as_string(), "http://127.0.0.1:3000");
        for bad in [
            "http://x:1/base",
            "http://u:p@x:1",
            "x:1",
            "ftp://x",
            "http://x?q=1",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:abc",
            "http://127.0.0.1:0",
            "http://:80",
            "http://[::1]:70000",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
        for good in ["http://127.0.0.1", "http://127.0.0.1:65535", "http://[::1]:8080", "https://api.line.me"] {
            assert!(origin(good).is_ok(), "{good}");
        }
        for leaky in ["http://u:hunter2@x:1", "http://admin:hunter2/x@backend:8080", "http//admin:hunter2@backend"] {
            assert!(!origin(leaky).unwrap_err().contains("hunter2"), "{leaky}");
        }
    }

    #[test]
    fn http_is_for_loopback_only() {
        assert!(origin("https://api.line.me").unwrap().https_unless_loopback());
        for local in ["http://127.0.0.1:1", "http://[::1]:1", "http://localhost:1"] {
            assert!(origin(local).unwrap().https_unless_loopback(), "{local}");
        }
        assert!(!origin("http://api.line.me").unwrap().https_unless_loopback());
    }
}
