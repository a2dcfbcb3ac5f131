//! Reading the credential: exactly one `Authorization: Bearer <token>` header.
//!
//! RFC 6750 §2.1: `Bearer` (matched case-insensitively), one or more spaces, a
//! `b64token`. Anything else is a malformed credential and answered 401 before
//! any work; the token itself is never copied, logged or echoed.

use http::HeaderMap;
use http::header::AUTHORIZATION;

/// Access tokens are opaque; LINE's are a few hundred bytes. Anything longer is
/// refused before it reaches the cache or the LINE Platform (4096 bytes).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why the `Authorization` header could not be read as one bearer token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialError {
    Multiple,
    NotBearer,
    Malformed,
    TooLong,
}

impl CredentialError {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialError::Multiple => "multiple_authorization_headers",
            CredentialError::NotBearer => "not_bearer",
            CredentialError::Malformed => "malformed_token",
            CredentialError::TooLong => "token_too_long",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            CredentialError::Multiple => "more than one Authorization header",
            CredentialError::NotBearer => "the Authorization scheme must be Bearer",
            CredentialError::Malformed => "the bearer token is empty or has characters a token cannot have",
            CredentialError::TooLong => "the bearer token is too long",
        }
    }
}

/// Returns the bearer token (at most `max_bytes`), `None` when there is no
/// `Authorization` header.
pub fn bearer_token(headers: &HeaderMap, max_bytes: usize) -> Result<Option<&str>, CredentialError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CredentialError::Multiple);
    }
    let bytes = value.as_bytes();
    let scheme_end = bytes.iter().position(|&b| b == b' ').unwrap_or(bytes.len());
    if !bytes[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Err(CredentialError::NotBearer);
    }
    let token = bytes[scheme_end..].trim_ascii();
    if token.len() > max_bytes {
        return Err(CredentialError::TooLong);
    }
    if !is_b64token(token) {
        return Err(CredentialError::Malformed);
    }
    // b64token is ASCII, so this cannot fail.
    std::str::from_utf8(token).map(Some).map_err(|_| CredentialError::Malformed)
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &[u8]) -> bool {
    let body_end = t.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    body_end > 0
        && t[..body_end]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn bearer_token_default(h: &HeaderMap) -> Result<Option<&str>, CredentialError> {
        bearer_token(h, MAX_TOKEN_BYTES)
    }

    fn with(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_one_bearer_token() {
        assert_eq!(bearer_token_default(&with(&[])), Ok(None));
        assert_eq!(bearer_token_default(&with(&["Bearer abc.DEF-_~+/=="])), Ok(Some("abc.DEF-_~+/==")));
        assert_eq!(bearer_token_default(&with(&["bearer abc"])), Ok(Some("abc")));
        assert_eq!(bearer_token_default(&with(&["BEARER   abc"])), Ok(Some("abc")));
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(bearer_token_default(&with(&["Bearer a", "Bearer b"])), Err(CredentialError::Multiple));
        assert_eq!(bearer_token_default(&with(&["Basic YTpi"])), Err(CredentialError::NotBearer));
        assert_eq!(bearer_token_default(&with(&["Bearerabc"])), Err(CredentialError::NotBearer));
        assert_eq!(bearer_token_default(&with(&["Bearer"])), Err(CredentialError::Malformed));
        assert_eq!(bearer_token_default(&with(&["Bearer a b"])), Err(CredentialError::Malformed));
        assert_eq!(bearer_token_default(&with(&["Bearer ==="])), Err(CredentialError::Malformed));
        assert_eq!(bearer_token_default(&with(&["Bearer a=b"])), Err(CredentialError::Malformed));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(bearer_token_default(&with(&[&long])), Err(CredentialError::TooLong));
    }
}
