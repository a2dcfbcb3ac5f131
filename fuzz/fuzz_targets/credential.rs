//! Reading the credential: `Authorization: Bearer`, the WebSocket subprotocol
//! entry, and removing that entry before the upstream.
//!
//! Input (text, one item a line):
//! ```text
//! 4096                                          the token length limit
//! Authorization: Bearer abc.DEF-_~+/==          request headers, `name: value`
//! Sec-WebSocket-Protocol: chat, bearer.line-auth-proxy.abc
//! ```
//!
//! Asserts: `bearer_token` and `websocket_bearer` return exactly what an
//! independent reading of RFC 6750 (one header, `Bearer` in any case, one or more
//! spaces, a `b64token` within the limit) and of the subprotocol list returns; a
//! token read is a slice of the header it came from; after
//! `strip_websocket_bearer` no credential entry is left, the page's own
//! subprotocols are kept in order, and no other header changes.
#![no_main]

use fuzz_support::input::{first_line, header_map, lines, number};
use http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use line_auth_proxy::fuzzing::{
    CredentialError, MAX_TOKEN_BYTES, WEBSOCKET_BEARER_PREFIX, bearer_token, strip_websocket_bearer, websocket_bearer,
};

fuzz_target!(|data: &[u8]| {
    let (limit, rest) = first_line(data);
    let limit = number(limit).map_or(MAX_TOKEN_BYTES, |n| n.min(2 * MAX_TOKEN_BYTES as u64) as usize);
    let (headers, _) = header_map(lines(rest));

    let got = bearer_token(&headers, limit);
    assert_eq!(got, reference_bearer(&headers, limit), "bearer_token with limit {limit}");
    if let Ok(Some(token)) = got {
        let value = headers[AUTHORIZATION].as_bytes().as_ptr_range();
        assert!(value.contains(&token.as_ptr()), "the token is not read from the header");
        let mut again = HeaderMap::new();
        again.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        assert_eq!(bearer_token(&again, limit), Ok(Some(token)), "Bearer {token} does not read back");
    }

    let got = websocket_bearer(&headers, limit);
    assert_eq!(got, reference_websocket(&headers, limit), "websocket_bearer with limit {limit}");

    let mut stripped = headers.clone();
    strip_websocket_bearer(&mut stripped);
    assert_eq!(websocket_bearer(&stripped, usize::MAX), Ok(None), "a bearer entry survived: {stripped:?}");
    let mut others = headers.clone();
    others.remove(SEC_WEBSOCKET_PROTOCOL);
    let mut stripped_others = stripped.clone();
    stripped_others.remove(SEC_WEBSOCKET_PROTOCOL);
    assert_eq!(stripped_others, others, "stripping the subprotocol entry changed another header");
    let before: Vec<&HeaderValue> = headers.get_all(SEC_WEBSOCKET_PROTOCOL).iter().collect();
    let after: Vec<&HeaderValue> = stripped.get_all(SEC_WEBSOCKET_PROTOCOL).iter().collect();
    let mentions = |v: &&HeaderValue| contains(v.as_bytes(), WEBSOCKET_BEARER_PREFIX.as_bytes());
    if !before.iter().any(mentions) {
        assert_eq!(after, before, "nothing to strip, yet the subprotocols changed");
    } else {
        // The page's own subprotocols, in order, in one header.
        let kept: Vec<&str> = before
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|e| e.trim_matches([' ', '\t']))
            .filter(|e| !e.is_empty() && !e.starts_with(WEBSOCKET_BEARER_PREFIX))
            .collect();
        let want: Vec<String> = if kept.is_empty() { Vec::new() } else { vec![kept.join(", ")] };
        let after: Vec<&str> = after.iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(after, want, "the subprotocols after stripping");
    }
});

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &[u8]) -> bool {
    let padding = t.iter().rev().take_while(|&&b| b == b'=').count();
    let body = &t[..t.len() - padding];
    !body.is_empty() && body.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

fn reference_bearer(headers: &HeaderMap, limit: usize) -> Result<Option<&str>, CredentialError> {
    let values: Vec<&HeaderValue> = headers.get_all(AUTHORIZATION).iter().collect();
    let value = match values.as_slice() {
        [] => return Ok(None),
        [one] => one.as_bytes(),
        _ => return Err(CredentialError::Multiple),
    };
    // `Bearer` then at least one space; a bare `Bearer` has an empty token.
    let scheme_ok =
        value.len() >= 6 && value[..6].eq_ignore_ascii_case(b"bearer") && (value.len() == 6 || value[6] == b' ');
    if !scheme_ok {
        return Err(CredentialError::NotBearer);
    }
    let token = value[6..].trim_ascii();
    if token.len() > limit {
        return Err(CredentialError::TooLong);
    }
    if !is_b64token(token) {
        return Err(CredentialError::Malformed);
    }
    Ok(Some(std::str::from_utf8(token).unwrap()))
}

fn reference_websocket(headers: &HeaderMap, limit: usize) -> Result<Option<&str>, CredentialError> {
    let mut found = None;
    // Values that are not visible ASCII are not read (a browser never sends them).
    let entries = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter(|v| v.as_bytes().iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .flat_map(|v| std::str::from_utf8(v.as_bytes()).unwrap().split(','))
        .map(|e| e.trim_matches([' ', '\t']));
    for entry in entries {
        let Some(token) = entry.strip_prefix(WEBSOCKET_BEARER_PREFIX) else { continue };
        if found.is_some() {
            return Err(CredentialError::Multiple);
        }
        if token.len() > limit {
            return Err(CredentialError::TooLong);
        }
        if !is_b64token(token.as_bytes()) {
            return Err(CredentialError::Malformed);
        }
        found = Some(token);
    }
    Ok(found)
}
