//! `[upstream]`: the one backend every authorised request goes to.

use http::uri::{Authority, Scheme};
use serde::Deserialize;

use super::keys::{Count, Millis, choice, section};
use super::url::Origin;
use super::{FileConfig, Problems};

/// `upstream.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge on a plain `http://` connection (gRPC backends).
    H2c,
}

impl UpstreamProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

choice!(UpstreamProtocol);

/// `upstream.connect_timeout_ms` (1000 milliseconds).
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// `upstream.timeout_ms` (30000 milliseconds).
pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
/// `upstream.max_idle_connections` (64 connections).
pub const DEFAULT_UPSTREAM_MAX_IDLE_CONNECTIONS: u64 = 64;

section! {
    /// `[upstream]`
    pub struct UpstreamSection("upstream") {
        /// The backend, an `http://` or `https://` origin (no path). Required.
        url: Option<Origin>,
        /// What to speak to an `http://` upstream: `http1`, or `h2c` (HTTP/2 with
        /// prior knowledge, for gRPC). An `https://` upstream negotiates h2 or
        /// HTTP/1.1 by ALPN.
        protocol: UpstreamProtocol,
        /// TCP (and TLS) connect timeout; an unreachable upstream is a 502.
        connect_timeout_ms: Millis<1, 600000> = DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
        /// Time to the upstream's response head; past it, 504.
        timeout_ms: Millis<1, 600000> = DEFAULT_UPSTREAM_TIMEOUT_MS,
        /// Idle upstream connections kept for reuse, like nginx's `keepalive N`;
        /// 0 closes each after its request.
        max_idle_connections: Count<0, 100000> = DEFAULT_UPSTREAM_MAX_IDLE_CONNECTIONS,
    }
}

/// `[upstream]`, validated: the keys as declared, and the required origin.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamConfig {
    pub keys: UpstreamSection,
    pub scheme: Scheme,
    pub authority: Authority,
}

impl UpstreamSection {
    pub(super) fn validate(&self, file: &FileConfig, p: &mut Problems) -> UpstreamConfig {
        let origin = self.url.clone().unwrap_or_else(|| {
            p.error("upstream.url", "is required: the backend to forward to, e.g. \"http://127.0.0.1:3000\"");
            Origin::from("http://127.0.0.1")
        });
        if origin.scheme == Scheme::HTTPS && file.wrote("upstream.protocol") {
            p.warn("upstream.protocol", "has no effect: an https:// upstream negotiates h2 or HTTP/1.1 by ALPN");
        }
        UpstreamConfig { keys: self.clone(), scheme: origin.scheme, authority: origin.authority }
    }
}
