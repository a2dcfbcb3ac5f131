//! Path normalisation and route matching.
//!
//! Input (text, one item a line):
//! ```text
//! GET                       request method
//! /public/%2e%2e/admin      request path, as it arrives
//! POST                      Access-Control-Request-Method of a preflight; empty: none
//! /public/ none GET         routes: prefix, auth, methods (`*` or a,b), flags (cors, nonce)
//! /admin/ access_token *
//! ```
//!
//! Asserts: `normalize_path` agrees exactly with an independent reference (the
//! same error for refused paths); what it returns is normal (normalising again
//! changes nothing, and is free when it can be) and is what a backend that
//! decodes every escape and resolves dot segments reads from the raw path;
//! `RouteTable::policy` is the first route whose prefix and method match; a
//! prefix `check_path_prefix` accepts is a normal path.
#![no_main]

use fuzz_support::input::{first_line, lines};
use http::Method;
use libfuzzer_sys::fuzz_target;
use line_auth_proxy::fuzzing::{
    DEFAULT_POLICY, PathError, Policy, Route, RouteAuth, RouteTable, check_path_prefix, normalize_path, parse_method,
};
use std::borrow::Cow;

fuzz_target!(|data: &[u8]| {
    let (method, rest) = first_line(data);
    let (raw, rest) = first_line(rest);
    let (preflight, rest) = first_line(rest);
    let method = Method::from_bytes(method).unwrap_or(Method::GET);
    let raw = String::from_utf8_lossy(raw);
    let preflight = (!preflight.is_empty()).then_some(preflight);

    let got = normalize_path(&raw);
    let want = reference_normalize(&raw);
    match (&got, &want) {
        (Ok(g), Ok(w)) => assert_eq!(g.as_ref(), w, "normalize_path({raw:?})"),
        (Err(g), Err(w)) => assert_eq!(g, w, "normalize_path({raw:?}) refused it for another reason"),
        _ => panic!("normalize_path({raw:?}) = {got:?}, the reference says {want:?}"),
    }
    if let Ok(out) = &got {
        if let Cow::Borrowed(b) = out {
            assert_eq!(*b, raw, "a borrowed result must be the input");
        }
        check_normal(&raw, out);
    }

    let routes: Vec<Route> = lines(rest).take(16).filter_map(route).collect();
    for r in &routes {
        // The loader refuses any other prefix: it could never match.
        let again = normalize_path(&r.path_prefix).expect("an accepted prefix normalises");
        assert_eq!(again, r.path_prefix.as_str(), "accepted prefix {:?} is not normal", r.path_prefix);
    }
    let table = RouteTable::new(routes.clone());
    if let Ok(path) = &got {
        let policy = table.policy(&method, path, preflight);
        assert_eq!(policy, reference_policy(&routes, &method, path, preflight), "policy for {method} {path:?}");
        if let Some(route) = table.route(&policy) {
            assert!(path.starts_with(route.path_prefix.as_str()), "{path:?} matched {:?}", route.path_prefix);
        }
    }
});

/// A route line, as the configuration loader would accept it; `None` otherwise.
fn route(line: &[u8]) -> Option<Route> {
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    let prefix = words.next()?;
    let auth = match words.next()? {
        "none" => RouteAuth::None,
        "access_token" => RouteAuth::AccessToken,
        "optional" => RouteAuth::Optional,
        "id_token" => RouteAuth::IdToken,
        "session" => RouteAuth::Session,
        _ => return None,
    };
    let methods = match words.next().unwrap_or("*") {
        "*" => None,
        list => Some(list.split(',').map(parse_method).collect::<Result<Vec<_>, _>>().ok()?),
    };
    let flags = words.next().unwrap_or("");
    check_path_prefix(prefix).ok()?;
    Some(Route {
        path_prefix: prefix.to_owned(),
        auth,
        methods,
        allow_cors_preflight: flags.contains("cors"),
        require_nonce: flags.contains("nonce"),
        cors_allow_origins: Vec::new(),
    })
}

/// What an already-normal result must satisfy.
fn check_normal(raw: &str, out: &str) {
    assert!(out.starts_with('/'), "{out:?} does not start with /");
    assert!(!out.contains("//"), "{out:?} keeps an empty segment");
    for segment in out[1..].split('/') {
        assert!(segment != "." && segment != "..", "{out:?} keeps a dot segment");
    }
    assert!(!out.contains(['\\', ';']), "{out:?} keeps a backslash or ;");
    // Escapes left are upper-case and never of an unreserved byte, `/`, `\`, `;` or NUL.
    let bytes = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).unwrap_or_else(|| panic!("{out:?} ends in a cut escape"));
        assert!(hex.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)), "{out:?}: escape {hex:?}");
        let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(!is_unreserved(v) && !matches!(v, b'/' | b'\\' | b';' | 0), "{out:?} keeps %{v:02X}");
    }
    let again = normalize_path(out).expect("a normal path normalises");
    assert_eq!(again.as_ref(), out, "normalising {raw:?} twice changed it");
    if out.is_ascii() && !out.contains('%') {
        assert!(matches!(again, Cow::Borrowed(_)), "normal {out:?} was copied");
    }
    // The backend's reading: every escape decoded, dots resolved, from the raw path.
    assert_eq!(decode_all(out), backend_view(raw), "the backend reads {raw:?} otherwise than {out:?}");
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 §6.2.2 normalisation with this proxy's refusals, scanned in one pass.
fn reference_normalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let b = raw.as_bytes();
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::PathParameter),
            b'%' => {
                let (Some(h), Some(l)) =
                    (b.get(i + 1).copied().and_then(hex_value), b.get(i + 2).copied().and_then(hex_value))
                else {
                    return Err(PathError::BadEscape);
                };
                let v = h * 16 + l;
                match v {
                    b'/' | b'\\' | 0 => return Err(PathError::EncodedSeparator),
                    b';' => return Err(PathError::PathParameter),
                    v if is_unreserved(v) => decoded.push(v),
                    v => decoded.extend(format!("%{v:02X}").bytes()),
                }
                i += 3;
            }
            c => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    let out = resolve(decoded.split(|&b| b == b'/').skip(1));
    Ok(String::from_utf8(out).expect("only ASCII was added to UTF-8"))
}

/// Joins segments after dropping empty and `.` ones and letting `..` remove
/// its predecessor; a trailing slash when the last segment was a directory.
fn resolve<'a>(segments: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut directory = true;
    for s in segments {
        directory = matches!(s, b"" | b"." | b"..");
        match s {
            b"" | b"." => {}
            b".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let mut out = Vec::new();
    for s in &kept {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if directory {
        out.push(b'/');
    }
    out
}

fn decode_all(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) =
                (b.get(i + 1).copied().and_then(hex_value), b.get(i + 2).copied().and_then(hex_value))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// How a backend that decodes first reads the raw path (only for paths the proxy accepted).
fn backend_view(raw: &str) -> Vec<u8> {
    let segments: Vec<Vec<u8>> = raw[1..].split('/').map(decode_all).collect();
    resolve(segments.iter().map(Vec::as_slice))
}

/// The first route whose prefix the path starts with and whose methods allow
/// the request (or, on a preflight route, the method the preflight asks about).
fn reference_policy(routes: &[Route], method: &Method, path: &str, preflight: Option<&[u8]>) -> Policy {
    for (index, r) in routes.iter().enumerate() {
        if path.len() < r.path_prefix.len() || &path.as_bytes()[..r.path_prefix.len()] != r.path_prefix.as_bytes() {
            continue;
        }
        let preflight_pass = r.allow_cors_preflight && preflight.is_some();
        let allowed = match &r.methods {
            None => true,
            Some(list) => {
                list.iter().any(|m| m == method)
                    || (preflight_pass
                        && list.iter().any(|m| {
                            m.as_str().to_ascii_lowercase().as_bytes() == preflight.unwrap().to_ascii_lowercase()
                        }))
            }
        };
        if allowed {
            return Policy { auth: r.auth, preflight_pass, require_nonce: r.require_nonce, route: Some(index) };
        }
    }
    DEFAULT_POLICY
}
