//! `[line]`: the channels whose tokens are accepted and how the LINE Platform is
//! reached. The ID-token keys are declared here too; `id_token.rs` validates
//! them together with `[nonce]`, because they matter only to `id_token` routes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::Problems;
use super::keys::{Count, Millis, Seconds, choice, section};
use super::url::{HttpUrl, Origin};

/// `line.api_base_url`: the LINE Platform.
pub const DEFAULT_LINE_API_BASE_URL: &str = "https://api.line.me";
/// `line.timeout_ms` (2000 milliseconds).
pub const DEFAULT_LINE_TIMEOUT_MS: u64 = 2_000;
/// `line.max_concurrent_calls` (256 verifications).
pub const DEFAULT_MAX_CONCURRENT_CALLS: u64 = 256;
/// `line.jwks_url`: LINE's ES256 keys.
pub const DEFAULT_JWKS_URL: &str = "https://api.line.me/oauth2/v2.1/certs";
/// `line.max_id_token_age_seconds` (86400 seconds): an ID token whose `iat`
/// is older is refused.
pub const DEFAULT_MAX_ID_TOKEN_AGE_SECONDS: u64 = 86_400;
/// `line.clock_skew_seconds` (60 seconds).
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;

/// `line.id_token_verification`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdTokenVerification {
    /// ES256 against LINE's JWKS, HS256 with the channel secret, in the proxy.
    #[default]
    Local,
    /// Every ID token sent to LINE's `POST /oauth2/v2.1/verify`.
    Remote,
}

impl IdTokenVerification {
    pub fn as_str(self) -> &'static str {
        match self {
            IdTokenVerification::Local => "local",
            IdTokenVerification::Remote => "remote",
        }
    }
}

choice!(IdTokenVerification);

section! {
    /// `[line]`
    pub struct LineSection("line") {
        /// LINE Login channel ids whose tokens are accepted (LINE's `client_id`,
        /// the ID token's `aud`). At least one. Required.
        channel_ids: Vec<String>,
        /// The LINE Platform origin; `http://` only for loopback (tests, `dev`).
        api_base_url: Origin = DEFAULT_LINE_API_BASE_URL,
        /// Timeout of each call to the LINE Platform; past it, 503. Also the
        /// longest a verification waits for one of `max_concurrent_calls`.
        timeout_ms: Millis<1, 600000> = DEFAULT_LINE_TIMEOUT_MS,
        /// Verifications in flight to the LINE Platform at once (each is up to two
        /// calls); more wait, then fail closed with 503 `line_overloaded`.
        max_concurrent_calls: Count<1, 100000> = DEFAULT_MAX_CONCURRENT_CALLS,
        /// How `id_token` routes verify: `local` or `remote`.
        id_token_verification: IdTokenVerification,
        /// LINE's JWKS, for local ES256 checks; `https://` (http only on loopback).
        jwks_url: HttpUrl = DEFAULT_JWKS_URL,
        /// Leeway on `exp` and `iat` for local ID-token checks.
        clock_skew_seconds: Seconds<0, 300> = DEFAULT_CLOCK_SKEW_SECONDS,
        /// An ID token issued (`iat`) longer ago than this is refused, whatever
        /// its `exp` says.
        max_id_token_age_seconds: Seconds<60, 31536000> = DEFAULT_MAX_ID_TOKEN_AGE_SECONDS,
        /// File holding the channel secret for HS256 ID tokens (web login), when
        /// `channel_ids` has one channel.
        channel_secret_file: Option<PathBuf>,
        /// Channel id = file holding that channel's secret, when several channels
        /// take HS256 ID tokens.
        channel_secret_files: BTreeMap<String, PathBuf>,
    }
}

impl LineSection {
    /// Checks the keys; the section itself is what the LINE client reads.
    pub(super) fn validate(&self, p: &mut Problems) -> LineSection {
        if self.channel_ids.is_empty() {
            p.error("line.channel_ids", "needs at least one LINE Login channel id, e.g. [\"1234567890\"]");
        }
        for (i, id) in self.channel_ids.iter().enumerate() {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) || id.len() > 32 {
                p.error(
                    format!("line.channel_ids[{i}]"),
                    format!("{id:?} is not a channel id (digits only, as shown in the LINE Developers Console)"),
                );
            }
        }
        if !self.api_base_url.https_unless_loopback() {
            p.error(
                "line.api_base_url",
                "must be https: the access token travels in the verify request (http is allowed for loopback test servers only)",
            );
        }
        self.clone()
    }
}
