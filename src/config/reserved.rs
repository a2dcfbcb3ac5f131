//! `[forward_auth]` and `[assertion]`: sections the contract reserves for
//! features this version does not build. Their keys are accepted so that one
//! configuration can serve several versions; turning either on is refused at
//! load time rather than silently ignored.

use std::path::PathBuf;

use super::keys::section;
use super::{FileConfig, Problems};

/// `forward_auth.path`.
pub const DEFAULT_FORWARD_AUTH_PATH: &str = "/_auth/verify";
/// `assertion.header`: always stripped from client requests.
pub const DEFAULT_ASSERTION_HEADER: &str = "X-Line-Identity-Jwt";

section! {
    /// `[forward_auth]`
    pub struct ForwardAuthSection("forward_auth") {
        /// Forward-auth mode (nginx `auth_request`, Traefik, Envoy ext_authz);
        /// not built in this version: must stay `false`.
        enabled: bool,
        /// Where the forward-auth endpoint will answer.
        path: String = DEFAULT_FORWARD_AUTH_PATH,
        /// Superseded by `server.trusted_proxies`, the one list of trusted peers.
        trusted_proxies: Vec<String>,
    }
}

section! {
    /// `[assertion]`
    pub struct AssertionSection("assertion") {
        /// Signed identity assertions; not built in this version: must stay `false`.
        enabled: bool,
        /// The assertion's header, stripped from every client request even while
        /// assertions are off, so that no client can pose as the proxy.
        header: String = DEFAULT_ASSERTION_HEADER,
        /// The assertion's `aud` claim.
        audience: Option<String>,
        /// The assertion's `iss` claim.
        issuer: Option<String>,
        /// The signing key (PEM).
        key_file: Option<PathBuf>,
    }
}

impl ForwardAuthSection {
    pub(super) fn validate(&self, file: &FileConfig, p: &mut Problems) {
        if self.enabled {
            p.error("forward_auth.enabled", "forward-auth mode is not supported in this version; set it to false");
        }
        if file.wrote("forward_auth.path") {
            p.warn("forward_auth.path", "has no effect: forward-auth is not built in this version");
        }
        if file.wrote("forward_auth.trusted_proxies") {
            p.warn(
                "forward_auth.trusted_proxies",
                "has no effect: the one list of trusted peers is server.trusted_proxies",
            );
        }
    }
}

impl AssertionSection {
    pub(super) fn validate(&self, file: &FileConfig, p: &mut Problems) {
        if self.enabled {
            p.error(
                "assertion.enabled",
                "signed identity assertions are not supported in this version; set it to false",
            );
        }
        for key in ["assertion.audience", "assertion.issuer", "assertion.key_file"] {
            if file.wrote(key) {
                p.warn(key, "has no effect: signed assertions are not built in this version");
            }
        }
    }
}
