//! `[forward_auth]`: the endpoint an ingress (nginx `auth_request`, Traefik
//! ForwardAuth, Caddy `forward_auth`, Envoy `ext_authz`) asks before it
//! forwards a request itself.

use super::keys::section;
use super::{FileConfig, Problems};

/// `forward_auth.path`: served on the proxy listener.
pub const DEFAULT_FORWARD_AUTH_PATH: &str = "/_auth/verify";

section! {
    /// `[forward_auth]`
    pub struct ForwardAuthSection("forward_auth") {
        /// Serve the forward-auth endpoint at `path`.
        enabled: bool,
        /// Where the endpoint answers; with Envoy's `path_prefix`, the original
        /// path follows it (`/_auth/verify/api/x`).
        path: String = DEFAULT_FORWARD_AUTH_PATH,
        /// Superseded by `server.trusted_proxies`, the one list of trusted peers.
        trusted_proxies: Vec<String>,
    }
}

/// `[forward_auth]`, validated: present when enabled.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardAuthConfig {
    /// Normalised, without a trailing `/`.
    pub path: String,
}

impl ForwardAuthSection {
    pub(super) fn validate(&self, file: &FileConfig, p: &mut Problems) -> Option<ForwardAuthConfig> {
        if file.wrote("forward_auth.trusted_proxies") {
            p.warn(
                "forward_auth.trusted_proxies",
                "has no effect: the one list of trusted peers is server.trusted_proxies",
            );
        }
        if !self.enabled {
            if file.wrote("forward_auth.path") {
                p.warn("forward_auth.path", "has no effect: forward_auth.enabled is false");
            }
            return None;
        }
        if let Err(why) = crate::routes::check_path_prefix(&self.path) {
            p.error("forward_auth.path", format!("{why} (a path such as \"/_auth/verify\")"));
        } else if self.path.len() > 1 && self.path.ends_with('/') || self.path == "/" {
            p.error("forward_auth.path", "must not end with / (Envoy's path_prefix appends the original path to it)");
        } else if self.path == file.nonce.path {
            p.error("forward_auth.path", "is also nonce.path: give each endpoint its own path");
        }
        if file.server.trusted_proxies.is_empty() {
            p.warn(
                "server.trusted_proxies",
                "is empty: forward-auth ignores every peer's X-Forwarded-Uri / X-Original-URI and requires a credential for every request; list the ingress's addresses",
            );
        }
        Some(ForwardAuthConfig { path: self.path.clone() })
    }
}
