//! Authentication: the credential a client presents, the identity the LINE
//! Platform vouches for, and the verdict that joins them.
//!
//! Pipeline position: after routing decided that a credential is needed (or
//! allowed). [`credential`] reads the `Authorization` header; [`line`] asks the
//! LINE Platform; the verdict goes through the [`crate::cache`] on its way back.

pub mod credential;
pub mod id_token;
pub mod jwks;
pub mod line;
pub mod nonce;
pub mod token_endpoint;

pub use crate::identity::{AuthMethod, Identity, is_line_user_id};

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
    /// Not a compact JWS of three base64url parts, over 8 KiB, or unreadable JSON.
    IdTokenMalformed,
    /// `alg` other than ES256/HS256 (`none`, RS256, …) or a key-carrying header
    /// (`jku`, `x5u`, `jwk`, `x5c`, `crit`).
    IdTokenAlgorithm,
    /// ES256 with a `kid` that is not in LINE's JWKS (after one refetch).
    UnknownKey,
    /// HS256 for a channel whose secret this proxy does not hold.
    NoChannelSecret,
    BadSignature,
    /// `iss` is not `https://access.line.me`.
    WrongIssuer,
    /// `iat` is in the future beyond the clock-skew leeway.
    IssuedInFuture,
    /// `nbf` is in the future beyond the clock-skew leeway.
    NotYetValid,
    /// `iat` is older than `line.max_id_token_age_seconds` (and the leeway).
    TooOld,
    /// `sub` is not a LINE user id.
    BadSubject,
    /// The route needs a nonce and the token carries none.
    NonceMissing,
    /// The nonce was never issued here, or was already used.
    NonceUnknown,
    /// The nonce was issued here but its lifetime is over.
    NonceExpired,
    /// LINE's remote verify said the nonce does not match.
    NonceMismatch,
}

impl Rejection {
    /// Every variant, to read a reason code back (the shared cache stores codes).
    pub const ALL: [Rejection; 19] = [
        Rejection::Expired,
        Rejection::Invalid,
        Rejection::WrongChannel,
        Rejection::NotPositiveExpiry,
        Rejection::NoProfileScope,
        Rejection::IdTokenMalformed,
        Rejection::IdTokenAlgorithm,
        Rejection::UnknownKey,
        Rejection::NoChannelSecret,
        Rejection::BadSignature,
        Rejection::WrongIssuer,
        Rejection::IssuedInFuture,
        Rejection::NotYetValid,
        Rejection::TooOld,
        Rejection::BadSubject,
        Rejection::NonceMissing,
        Rejection::NonceUnknown,
        Rejection::NonceExpired,
        Rejection::NonceMismatch,
    ];

    /// The variant whose [`Self::as_str`] is `code`.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == code)
    }

    /// Stable reason code for logs and the `reason` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Expired => "token_expired",
            Rejection::Invalid => "token_invalid",
            Rejection::WrongChannel => "wrong_channel",
            Rejection::NotPositiveExpiry => "expires_in_not_positive",
            Rejection::NoProfileScope => "no_profile_scope",
            Rejection::IdTokenMalformed => "id_token_malformed",
            Rejection::IdTokenAlgorithm => "id_token_algorithm",
            Rejection::UnknownKey => "id_token_unknown_kid",
            Rejection::NoChannelSecret => "id_token_no_channel_secret",
            Rejection::BadSignature => "id_token_bad_signature",
            Rejection::WrongIssuer => "id_token_wrong_issuer",
            Rejection::IssuedInFuture => "id_token_iat_in_future",
            Rejection::NotYetValid => "id_token_not_yet_valid",
            Rejection::TooOld => "id_token_too_old",
            Rejection::BadSubject => "id_token_bad_subject",
            Rejection::NonceMissing => "nonce_missing",
            Rejection::NonceUnknown => "nonce_unknown_or_used",
            Rejection::NonceExpired => "nonce_expired",
            Rejection::NonceMismatch => "nonce_mismatch",
        }
    }

    /// Safe to show the client: says what kind of problem, never echoes the token.
    pub fn describe(self) -> &'static str {
        match self {
            Rejection::Expired => "the token has expired",
            Rejection::Invalid => "the LINE Platform did not accept the token",
            Rejection::WrongChannel => "the token was issued to another channel",
            Rejection::NotPositiveExpiry => "the token has expired",
            Rejection::NoProfileScope => "the access token lacks the profile scope",
            Rejection::IdTokenMalformed => "the ID token is not a well-formed JWT",
            Rejection::IdTokenAlgorithm => "the ID token's algorithm or header is not accepted",
            Rejection::UnknownKey => "the ID token was signed with an unknown key",
            Rejection::NoChannelSecret => "HS256 ID tokens are not accepted for this channel",
            Rejection::BadSignature => "the ID token's signature is invalid",
            Rejection::WrongIssuer => "the ID token was not issued by LINE",
            Rejection::IssuedInFuture => "the ID token is issued in the future",
            Rejection::NotYetValid => "the ID token is not valid yet",
            Rejection::TooOld => "the ID token was issued too long ago",
            Rejection::BadSubject => "the ID token's subject is not a LINE user id",
            Rejection::NonceMissing => "the ID token carries no nonce",
            Rejection::NonceUnknown => "the nonce is unknown or was already used",
            Rejection::NonceExpired => "the nonce has expired",
            Rejection::NonceMismatch => "the ID token's nonce does not match",
        }
    }
}

/// The outcome of a verification that ran to completion.
#[derive(Clone, Debug)]
pub enum Verdict {
    Valid(Identity),
    Rejected(Rejection),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_code_reads_back() {
        for r in Rejection::ALL {
            assert_eq!(Rejection::from_code(r.as_str()), Some(r));
        }
        assert_eq!(Rejection::from_code("nope"), None);
    }
}
