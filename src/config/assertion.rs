//! `[assertion]`: the signed identity (a compact JWS) sent upstream and in
//! forward-auth answers, for backends that must not trust the network.

use std::path::PathBuf;

use super::keys::section;
use super::secret::{Secret, read_regular_file};
use super::{FileConfig, Problems};

/// `assertion.header`: always stripped from client requests.
pub const DEFAULT_ASSERTION_HEADER: &str = "X-Line-Identity-Jwt";
/// `assertion.issuer`: the `iss` claim.
pub const DEFAULT_ASSERTION_ISSUER: &str = "line-auth-proxy";
/// Key files larger than this are refused unread (64 KiB).
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

section! {
    /// `[assertion]`
    pub struct AssertionSection("assertion") {
        /// Sign an assertion for every authenticated request sent upstream and
        /// every forward-auth 200.
        enabled: bool,
        /// The assertion's header, stripped from every client request even while
        /// assertions are off, so that no client can pose as the proxy.
        header: String = DEFAULT_ASSERTION_HEADER,
        /// The `aud` claim (default: `upstream.url`).
        audience: Option<String>,
        /// The `iss` claim.
        issuer: String = DEFAULT_ASSERTION_ISSUER,
        /// PEM file of PKCS#8 keys (P-256 ECDSA or Ed25519): the first signs, all
        /// are published.
        key_file: Option<PathBuf>,
        /// Put the display name in a `name` claim (personal data: off unless asked).
        include_name: bool,
    }
}

/// `[assertion]`, validated: present when enabled.
#[derive(Clone, Debug, PartialEq)]
pub struct AssertionConfig {
    pub issuer: String,
    pub audience: String,
    pub include_name: bool,
    /// The key file's PEM (parsed again by the signer).
    pub keys_pem: Secret,
}

impl AssertionSection {
    pub(super) fn validate(&self, file: &FileConfig, p: &mut Problems) -> Option<AssertionConfig> {
        if !self.enabled {
            for key in ["assertion.audience", "assertion.issuer", "assertion.key_file", "assertion.include_name"] {
                if file.wrote(key) {
                    p.warn(key, "has no effect: assertion.enabled is false");
                }
            }
            return None;
        }
        let Some(path) = &self.key_file else {
            p.error(
                "assertion.key_file",
                "is required with assertion.enabled: a PEM file of PKCS#8 keys (`openssl genpkey -algorithm ed25519 -out FILE`)",
            );
            return None;
        };
        super::secret::check_permissions("assertion.key_file", path, p);
        let pem = match read_regular_file(path, MAX_KEY_FILE_BYTES, "key file") {
            Ok(pem) => pem,
            Err(why) => {
                p.error("assertion.key_file", why);
                return None;
            }
        };
        if let Err(why) = crate::assertion::parse_keys(&pem) {
            p.error("assertion.key_file", format!("{}: {why}", path.display()));
            return None;
        }
        for (key, value) in [
            ("assertion.issuer", self.issuer.as_str()),
            ("assertion.audience", self.audience.as_deref().unwrap_or("-")),
        ] {
            if value.is_empty() || value.len() > 512 || value.chars().any(char::is_control) {
                p.error(key, "must be 1 to 512 characters without control characters");
            }
        }
        Some(AssertionConfig {
            issuer: self.issuer.clone(),
            audience: self
                .audience
                .clone()
                .unwrap_or_else(|| file.upstream.url.as_ref().map_or_else(String::new, super::url::Origin::as_string)),
            include_name: self.include_name,
            keys_pem: Secret(pem),
        })
    }
}
