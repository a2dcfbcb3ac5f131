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

/// The `Sec-WebSocket-Protocol` entry that carries an access token, for
/// browsers (which cannot set `Authorization` on a WebSocket).
pub const WEBSOCKET_BEARER_PREFIX: &str = "bearer.line-auth-proxy.";

/// The access token of a `Sec-WebSocket-Protocol: bearer.line-auth-proxy.<token>`
/// entry (other entries are the page's real subprotocols). `None` when there is
/// no such entry; more than one, or a malformed one, is refused.
pub fn websocket_bearer(headers: &HeaderMap, max_bytes: usize) -> Result<Option<&str>, CredentialError> {
    let mut found = None;
    for value in headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for entry in value.split(',').map(str::trim) {
            let Some(token) = entry.strip_prefix(WEBSOCKET_BEARER_PREFIX) else { continue };
            if found.is_some() {
                return Err(CredentialError::Multiple);
            }
            if token.len() > max_bytes {
                return Err(CredentialError::TooLong);
            }
            if !is_b64token(token.as_bytes()) {
                return Err(CredentialError::Malformed);
            }
            found = Some(token);
        }
    }
    Ok(found)
}

/// Removes every bearer entry from `Sec-WebSocket-Protocol` (and the header,
/// if nothing else is left): a credential never reaches the upstream.
pub fn strip_websocket_bearer(headers: &mut HeaderMap) {
    let name = http::header::SEC_WEBSOCKET_PROTOCOL;
    let values: Vec<_> = headers.get_all(&name).iter().cloned().collect();
    if !values
        .iter()
        .any(|v| v.as_bytes().windows(WEBSOCKET_BEARER_PREFIX.len()).any(|w| w == WEBSOCKET_BEARER_PREFIX.as_bytes()))
    {
        return;
    }
    let kept: Vec<&str> = values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty() && !entry.starts_with(WEBSOCKET_BEARER_PREFIX))
        .collect();
    headers.remove(&name);
    if !kept.is_empty()
        && let Ok(value) = http::HeaderValue::from_str(&kept.join(", "))
    {
        headers.insert(name, value);
    }
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
    fn reads_the_websocket_bearer_entry_among_real_subprotocols() {
        let mut h = HeaderMap::new();
        assert_eq!(websocket_bearer(&h, MAX_TOKEN_BYTES), Ok(None));
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat, bearer.line-auth-proxy.abc.DEF-_~, v2"),
        );
        assert_eq!(websocket_bearer(&h, MAX_TOKEN_BYTES), Ok(Some("abc.DEF-_~")));
        h.append(http::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("bearer.line-auth-proxy.other"));
        assert_eq!(websocket_bearer(&h, MAX_TOKEN_BYTES), Err(CredentialError::Multiple));
        let mut h = HeaderMap::new();
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("bearer.line-auth-proxy."));
        assert_eq!(websocket_bearer(&h, MAX_TOKEN_BYTES), Err(CredentialError::Malformed));
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat"));
        assert_eq!(websocket_bearer(&h, MAX_TOKEN_BYTES), Ok(None));
    }

    #[test]
    fn the_bearer_entry_is_removed_and_the_real_subprotocols_stay() {
        let mut h = HeaderMap::new();
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat, bearer.line-auth-proxy.secret"));
        h.append(http::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("v2"));
        strip_websocket_bearer(&mut h);
        assert_eq!(h.get_all(http::header::SEC_WEBSOCKET_PROTOCOL).iter().collect::<Vec<_>>(), vec!["chat, v2"]);
        let mut h = HeaderMap::new();
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("bearer.line-auth-proxy.secret"));
        strip_websocket_bearer(&mut h);
        assert!(h.is_empty());
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
