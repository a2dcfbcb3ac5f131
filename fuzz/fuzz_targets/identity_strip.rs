//! Identity-header stripping over arbitrary header lists.
//!
//! Input (text, one item a line):
//! ```text
//! X-Line-                   identity.header_prefix (the default when refused)
//! X-Line-Identity-Jwt       assertion.header (the default when refused)
//! x_line_user_id: Uevil     request headers, `name: value`, repeats kept
//! accept: */*
//! ```
//!
//! Asserts: `IdentityHeaderNames::new` accepts exactly the prefixes of two or
//! more token characters that cover no standard request header; after
//! `strip_identity`, no header whose name (lower-cased, `_` and `.` read as `-`)
//! starts with the prefix or equals the assertion header survives, and every
//! other header keeps all its values in order (compared with an independent
//! filter); every header the proxy injects is one the strip rule removes.
#![no_main]

use std::collections::BTreeMap;

use fuzz_support::input::{first_line, header_map, lines};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use line_auth_proxy::fuzzing::{
    AuthMethod, Identity, IdentityHeaderNames, parse_header_name, standard_request_headers, strip_identity,
};

const DEFAULT_PREFIX: &str = "X-Line-";
const DEFAULT_ASSERTION: &str = "x-line-identity-jwt";

fuzz_target!(|data: &[u8]| {
    let (prefix, rest) = first_line(data);
    let (assertion, rest) = first_line(rest);
    let prefix = String::from_utf8_lossy(prefix);

    let built = IdentityHeaderNames::new(&prefix);
    let acceptable = prefix.len() >= 2
        && prefix.bytes().all(is_tchar)
        && !standard_request_headers().iter().any(|h| fold(h.as_bytes()).starts_with(&fold(prefix.as_bytes())));
    assert_eq!(built.is_ok(), acceptable, "IdentityHeaderNames::new({prefix:?}) = {:?}", built.as_ref().err());
    let (names, prefix) = match built {
        Ok(names) => (names, prefix.into_owned()),
        Err(_) => (IdentityHeaderNames::new(DEFAULT_PREFIX).unwrap(), DEFAULT_PREFIX.to_owned()),
    };
    let assertion = std::str::from_utf8(assertion)
        .ok()
        .and_then(|a| parse_header_name(a).ok())
        .unwrap_or(HeaderName::from_static(DEFAULT_ASSERTION));

    let (mut headers, sent) = header_map(lines(rest));
    let doomed = |name: &HeaderName| {
        let folded = fold(name.as_str().as_bytes());
        folded.starts_with(&fold(prefix.as_bytes())) || folded == fold(assertion.as_str().as_bytes())
    };
    for (name, _) in &sent {
        let covered = fold(name.as_str().as_bytes()).starts_with(&fold(prefix.as_bytes()));
        assert_eq!(names.is_identity_header(name), covered, "is_identity_header({name}) with prefix {prefix:?}");
    }
    let mut want: BTreeMap<String, Vec<HeaderValue>> = BTreeMap::new();
    for (name, value) in sent.iter().filter(|(n, _)| !doomed(n)) {
        want.entry(name.as_str().to_owned()).or_default().push(value.clone());
    }

    strip_identity(&mut headers, &names, &assertion);
    assert_eq!(contents(&headers), want, "prefix {prefix:?}, assertion {assertion}");

    // What the proxy injects must be what a second proxy in front would strip.
    let injected = [
        &names.user_id,
        &names.display_name,
        &names.picture_url,
        &names.email,
        &names.channel_id,
        &names.auth_method,
        &names.expires_at,
    ];
    for name in injected {
        assert!(names.is_identity_header(name), "{name} is injected but not stripped");
    }
    let identity = Identity {
        user_id: "U1234567890abcdef1234567890abcdef".into(),
        display_name: Some("Brown\r\nX-Line-User-Id: U0".into()),
        picture_url: Some("https://profile.line-scdn.net/0h".into()),
        email: Some("a@example.com".into()),
        channel_id: "1234567890".into(),
        method: AuthMethod::IdToken,
        expires_at: 1_800_000_000,
        amr: vec!["pwd".into()],
    };
    names.inject(&names.encode(&identity), &mut headers);
    strip_identity(&mut headers, &names, &assertion);
    assert_eq!(contents(&headers), want, "stripping after injection left something");
});

/// Every header, by name, with its values in order.
fn contents(headers: &HeaderMap) -> BTreeMap<String, Vec<HeaderValue>> {
    let mut out: BTreeMap<String, Vec<HeaderValue>> = BTreeMap::new();
    for name in headers.keys() {
        out.insert(name.as_str().to_owned(), headers.get_all(name).iter().cloned().collect());
    }
    out
}

/// Lower-case, with `_` and `.` read as `-`: how CGI, PHP and friends fold names.
fn fold(name: &[u8]) -> Vec<u8> {
    name.iter()
        .map(|&b| match b {
            b'A'..=b'Z' => b + 32,
            b'_' | b'.' => b'-',
            b => b,
        })
        .collect()
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}
