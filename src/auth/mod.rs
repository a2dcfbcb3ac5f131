//! Authentication: the credential a client presents, the identity the LINE
//! Platform vouches for, and the verdict that joins them.
//!
//! Pipeline position: after routing decided that a credential is needed (or
//! allowed). [`credential`] reads the `Authorization` header; [`line`] asks the
//! LINE Platform; the verdict goes through the [`crate::cache`] on its way back.

pub mod credential;
pub mod line;

use http::{HeaderName, HeaderValue};

/// How the client proved who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    AccessToken,
}

/// An identity the LINE Platform vouched for. Nothing here comes from the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `U` + 32 hex, from `/v2/profile`.
    pub user_id: String,
    pub display_name: Option<String>,
    pub picture_url: Option<String>,
    pub email: Option<String>,
    /// The channel the token was issued to (`client_id`), one of `line.channel_ids`.
    pub channel_id: String,
    pub method: AuthMethod,
    /// Token expiry, unix seconds.
    pub expires_at: u64,
}

/// A verified identity with its headers encoded once, at verification time, so a
/// cache hit only clones ready-made header values.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub identity: Identity,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why a credential was definitively refused. Rejections are verdicts, cached
/// briefly; LINE being unreachable is an error and never cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// LINE says the token expired.
    Expired,
    /// LINE refused the token (unknown, revoked, malformed).
    Invalid,
    /// The token belongs to a channel that is not in `line.channel_ids`.
    WrongChannel,
    /// LINE answered `expires_in` ≤ 0.
    NotPositiveExpiry,
    /// The profile endpoint refused the token (403): it lacks the `profile` scope.
    NoProfileScope,
}

impl Rejection {
    /// Stable reason code for logs and the `reason` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Expired => "token_expired",
            Rejection::Invalid => "token_invalid",
            Rejection::WrongChannel => "wrong_channel",
            Rejection::NotPositiveExpiry => "expires_in_not_positive",
            Rejection::NoProfileScope => "no_profile_scope",
        }
    }

    /// Safe to show the client: says what kind of problem, never echoes the token.
    pub fn describe(self) -> &'static str {
        match self {
            Rejection::Expired => "the access token has expired",
            Rejection::Invalid => "the LINE Platform did not accept the access token",
            Rejection::WrongChannel => "the access token was issued to another channel",
            Rejection::NotPositiveExpiry => "the access token has expired",
            Rejection::NoProfileScope => "the access token lacks the profile scope",
        }
    }
}

/// The outcome of a verification that ran to completion.
#[derive(Clone, Debug)]
pub enum Verdict {
    Valid(Authenticated),
    Rejected(Rejection),
}

/// Current unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `U` followed by 32 lower-case hex digits, the only shape a LINE user id has.
pub fn is_line_user_id(s: &str) -> bool {
    s.len() == 33
        && s.starts_with('U')
        && s[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_shape() {
        assert!(is_line_user_id("U1234567890abcdef1234567890abcdef"));
        assert!(!is_line_user_id("U1234567890ABCDEF1234567890abcdef"));
        assert!(!is_line_user_id("U1234567890abcdef1234567890abcdef "));
        assert!(!is_line_user_id("X1234567890abcdef1234567890abcdef"));
        assert!(!is_line_user_id("U123"));
    }
}
