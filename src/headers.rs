//! The identity-header contract: which names exist, how values are encoded, and the
//! strip-then-set discipline that keeps client-sent identity out of the upstream.
//!
//! Pipeline position: stripping runs first on every request, whatever the route;
//! injection runs last, after hop-by-hop removal, so that a client's `Connection`
//! header can never name (and thereby remove) an injected header.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::auth::Identity;

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) is escaped.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The injected header names, built once from `identity.header_prefix`.
#[derive(Clone, Debug)]
pub struct IdentityHeaderNames {
    /// Lower-cased prefix with `_` and `.` read as `-`: the strip rule compares against it.
    strip_prefix: Vec<u8>,
    pub user_id: HeaderName,
    pub display_name: HeaderName,
    pub picture_url: HeaderName,
    pub email: HeaderName,
    pub channel_id: HeaderName,
    pub auth_method: HeaderName,
    pub expires_at: HeaderName,
}

impl IdentityHeaderNames {
    /// Builds the names from a prefix such as `X-Line-`; explains what is wrong otherwise.
    pub fn new(prefix: &str) -> Result<Self, String> {
        if prefix.len() < 2 {
            return Err("must be at least two characters, e.g. \"X-Line-\"".into());
        }
        if !prefix.bytes().all(is_tchar) {
            return Err(format!(
                "{prefix:?} is not a valid header-name prefix (letters, digits and -, no spaces or colons)"
            ));
        }
        let make = |suffix: &str| {
            HeaderName::try_from(format!("{prefix}{suffix}"))
                .map_err(|_| format!("{prefix:?} does not form valid header names"))
        };
        Ok(Self {
            strip_prefix: prefix.bytes().map(fold_byte).collect(),
            user_id: make("User-Id")?,
            display_name: make("Display-Name")?,
            picture_url: make("Picture-Url")?,
            email: make("Email")?,
            channel_id: make("Channel-Id")?,
            auth_method: make("Auth-Method")?,
            expires_at: make("Expires-At")?,
        })
    }

    /// True when `name`, lower-cased with `_` and `.` read as `-`, starts with the prefix.
    pub fn is_identity_header(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        name.len() >= self.strip_prefix.len() && name.iter().zip(&self.strip_prefix).all(|(&n, &p)| fold_byte(n) == p)
    }

    /// Encodes a verified identity once: every header value, back to back, in
    /// one buffer. A cached identity costs that buffer and nothing per header.
    pub fn encode(&self, identity: &Identity) -> EncodedIdentity {
        let mut blob = Vec::with_capacity(160);
        let mut ends = [0u32; IDENTITY_HEADERS];
        let mut end = |blob: &Vec<u8>, i: usize| ends[i] = blob.len() as u32;
        push_visible_or_encoded(&mut blob, &identity.user_id);
        end(&blob, 0);
        if let Some(name) = &identity.display_name {
            push_percent_encoded(&mut blob, name);
        }
        end(&blob, 1);
        if let Some(url) = &identity.picture_url {
            push_visible_or_encoded(&mut blob, url);
        }
        end(&blob, 2);
        if let Some(email) = &identity.email {
            push_visible_or_encoded(&mut blob, email);
        }
        end(&blob, 3);
        push_visible_or_encoded(&mut blob, &identity.channel_id);
        end(&blob, 4);
        blob.extend_from_slice(identity.method.as_str().as_bytes());
        end(&blob, 5);
        blob.extend_from_slice(identity.expires_at.to_string().as_bytes());
        end(&blob, 6);
        // Exactly sized: a cache of 100000 identities pays for every spare byte.
        EncodedIdentity { blob: Bytes::from(blob.into_boxed_slice()), ends, expires_at: identity.expires_at }
    }

    /// Inserts the encoded identity's headers (replacing any of the same name).
    /// Values are zero-copy slices of the shared buffer; a header whose value
    /// LINE did not give is absent.
    pub fn inject(&self, encoded: &EncodedIdentity, headers: &mut HeaderMap) {
        let names = [
            &self.user_id,
            &self.display_name,
            &self.picture_url,
            &self.email,
            &self.channel_id,
            &self.auth_method,
            &self.expires_at,
        ];
        let mut start = 0;
        for (name, &end) in names.into_iter().zip(&encoded.ends) {
            let (from, to) = (start as usize, end as usize);
            start = end;
            if from == to {
                continue;
            }
            // Built from visible ASCII only (encode), so this cannot fail.
            if let Ok(value) = HeaderValue::from_maybe_shared(encoded.blob.slice(from..to)) {
                headers.insert(name.clone(), value);
            }
        }
    }
}

/// How many identity headers there are.
const IDENTITY_HEADERS: usize = 7;

/// A verified identity's header values, encoded once, in one buffer: what the
/// verdict cache holds for a valid token.
#[derive(Clone, Debug)]
pub struct EncodedIdentity {
    blob: Bytes,
    /// End offset in `blob` of each header's value, in the order of
    /// [`IdentityHeaderNames::inject`]; equal to the previous end when absent.
    ends: [u32; IDENTITY_HEADERS],
    /// Token expiry, unix seconds.
    pub expires_at: u64,
}

fn fold_byte(b: u8) -> u8 {
    match b.to_ascii_lowercase() {
        b'_' | b'.' => b'-',
        other => other,
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Percent-encodes everything but unreserved characters; the result is always a
/// valid header value (no CR, LF, NUL or other control byte can survive).
pub fn percent_encoded(s: &str) -> HeaderValue {
    let mut out = Vec::with_capacity(s.len());
    push_percent_encoded(&mut out, s);
    HeaderValue::from_bytes(&out).expect("percent-encoded text is visible ASCII")
}

/// Sends the value as given when it is visible ASCII (0x21..=0x7E), else percent-encoded.
pub fn visible_ascii_or_encoded(s: &str) -> HeaderValue {
    let mut out = Vec::with_capacity(s.len());
    push_visible_or_encoded(&mut out, s);
    HeaderValue::from_bytes(&out).expect("visible ASCII is a valid header value")
}

fn push_percent_encoded(out: &mut Vec<u8>, s: &str) {
    for chunk in utf8_percent_encode(s, NOT_UNRESERVED) {
        out.extend_from_slice(chunk.as_bytes());
    }
}

fn push_visible_or_encoded(out: &mut Vec<u8>, s: &str) {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) {
        out.extend_from_slice(s.as_bytes());
    } else {
        push_percent_encoded(out, s);
    }
}

/// Removes every client-sent identity header and the assertion header.
pub fn strip_identity(headers: &mut HeaderMap, names: &IdentityHeaderNames, assertion: &HeaderName) {
    // Collect first: HeaderMap cannot remove while iterating. The common case is
    // no match at all, which allocates nothing.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if names.is_identity_header(name) || name == assertion {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(&name);
    }
}

/// RFC 9110 §7.6.1 hop-by-hop fields, the proxy-auth pair (§11.7), and h2c's
/// `HTTP2-Settings` (RFC 7540 §3.2.1), which only means something with `Upgrade: h2c`.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "http2-settings"
    )
}

/// Client-sent headers that backends and frameworks read as routing, method or
/// scheme decisions (`X-Original-URL` re-routes in IIS and Symfony, method
/// overrides turn a GET into a DELETE, `Forwarded` outranks `X-Forwarded-*` in
/// Spring). The proxy authorised the request line it saw; these would let the
/// backend act on another one, so they never reach it.
fn is_routing_override(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-original-url"
            | "x-original-uri"
            | "x-original-method"
            | "x-rewrite-url"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "x-forwarded-prefix"
            | "x-forwarded-uri"
            | "x-forwarded-method"
            | "x-forwarded-port"
            | "x-forwarded-ssl"
            | "x-forwarded-scheme"
    )
}

/// Before the upstream: removes hop-by-hop headers and those `Connection`
/// names, routing and method overrides, and (unless `forward_authorization`)
/// `Authorization`, in one pass over the names. `TE: trailers` survives; with
/// `keep_upgrade` (an authenticated WebSocket) so do exactly `Connection:
/// upgrade` and `Upgrade`. Runs before injection, so nothing here can remove an
/// injected header.
pub fn strip_for_upstream(headers: &mut HeaderMap, keep_upgrade: bool, forward_authorization: bool) {
    strip(headers, keep_upgrade, |name| {
        is_routing_override(name) || (!forward_authorization && name == "authorization")
    });
}

/// On the way back: hop-by-hop headers and those the upstream's `Connection`
/// names; with `keep_upgrade` (a 101), `Connection: upgrade` and `Upgrade` stay.
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip(headers, keep_upgrade, |_| false);
}

fn strip(headers: &mut HeaderMap, keep_upgrade: bool, also: impl Fn(&str) -> bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    let mut te_trailers = false;
    let mut upgrade = None;
    for (name, value) in headers.iter() {
        let n = name.as_str();
        if n == "connection" {
            // `Connection: upgrade` itself names Upgrade: it is put back below.
            for token in value.to_str().unwrap_or("").split(',') {
                // Host is never hop-by-hop; everything else a client names goes.
                if let Ok(named) = HeaderName::from_bytes(token.trim().as_bytes())
                    && named != header::HOST
                {
                    doomed.push(named);
                }
            }
        } else if n == "te" {
            te_trailers |= value.as_bytes().eq_ignore_ascii_case(b"trailers");
        } else if n == "upgrade" && keep_upgrade {
            upgrade = Some(value.clone());
        }
        if is_hop_by_hop(n) || also(n) {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> IdentityHeaderNames {
        IdentityHeaderNames::new("X-Line-").unwrap()
    }

    #[test]
    fn strip_rule_folds_case_underscore_and_dot() {
        let n = names();
        for spoof in ["x-line-user-id", "X_LINE_USER_ID", "x.line.user.id", "X-Line_Anything", "x-line-"] {
            assert!(n.is_identity_header(&HeaderName::from_bytes(spoof.as_bytes()).unwrap()), "{spoof}");
        }
        for fine in ["x-lin", "x-linear", "line-user-id", "x-request-id"] {
            assert!(!n.is_identity_header(&HeaderName::from_bytes(fine.as_bytes()).unwrap()), "{fine}");
        }
    }

    #[test]
    fn strip_removes_every_value_of_every_variant() {
        let n = names();
        let mut h = HeaderMap::new();
        h.append("x-line-user-id", HeaderValue::from_static("Uevil"));
        h.append("x-line-user-id", HeaderValue::from_static("Uevil2"));
        h.append("x_line_email", HeaderValue::from_static("a@b"));
        h.append("x-line-identity-jwt", HeaderValue::from_static("jwt"));
        h.append("accept", HeaderValue::from_static("*/*"));
        strip_identity(&mut h, &n, &HeaderName::from_static("x-line-identity-jwt"));
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn encoded_identity_injects_exactly_the_present_headers() {
        let n = names();
        let identity = Identity {
            user_id: "U1234567890abcdef1234567890abcdef".into(),
            display_name: Some("山田\r\nX: y".into()),
            picture_url: None,
            email: Some("a b@example.com".into()),
            channel_id: "1234567890".into(),
            method: crate::auth::AuthMethod::IdToken,
            expires_at: 1_800_000_000,
        };
        let mut h = HeaderMap::new();
        h.insert("x-line-picture-url", HeaderValue::from_static("https://stale.example"));
        let encoded = n.encode(&identity);
        n.inject(&encoded, &mut h);
        assert_eq!(h["x-line-user-id"], "U1234567890abcdef1234567890abcdef");
        assert_eq!(h["x-line-display-name"], "%E5%B1%B1%E7%94%B0%0D%0AX%3A%20y");
        assert_eq!(h["x-line-email"], "a%20b%40example.com");
        assert_eq!(h["x-line-channel-id"], "1234567890");
        assert_eq!(h["x-line-auth-method"], "id_token");
        assert_eq!(h["x-line-expires-at"], "1800000000");
        // inject never removes: stripping (which runs first) does.
        assert_eq!(h["x-line-picture-url"], "https://stale.example");
        assert_eq!(h.len(), 7);
    }

    #[test]
    fn prefix_must_be_a_token() {
        assert!(IdentityHeaderNames::new("X Line").is_err());
        assert!(IdentityHeaderNames::new("X-Line:").is_err());
        assert!(IdentityHeaderNames::new("").is_err());
        assert!(IdentityHeaderNames::new("X-Auth-").is_ok());
    }

    #[test]
    fn display_names_are_percent_encoded_and_cannot_inject() {
        assert_eq!(percent_encoded("Brown ブラウン").to_str().unwrap(), "Brown%20%E3%83%96%E3%83%A9%E3%82%A6%E3%83%B3");
        assert_eq!(percent_encoded("a\r\nX-Line-User-Id: U0").to_str().unwrap(), "a%0D%0AX-Line-User-Id%3A%20U0");
        assert_eq!(percent_encoded("a-b.c_d~e").to_str().unwrap(), "a-b.c_d~e");
    }

    #[test]
    fn urls_pass_as_given_when_visible_ascii() {
        let url = "https://profile.line-scdn.net/0h8pWW?x=1&y=%20";
        assert_eq!(visible_ascii_or_encoded(url).to_str().unwrap(), url);
        assert_eq!(visible_ascii_or_encoded("a b").to_str().unwrap(), "a%20b");
        assert_eq!(visible_ascii_or_encoded("ü@x").to_str().unwrap(), "%C3%BC%40x");
    }

    #[test]
    fn connection_cannot_remove_host_and_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-foo, host"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_for_upstream(&mut h, false, true);
        assert!(h.contains_key(header::HOST));
        assert!(!h.contains_key("x-foo"));
        assert!(!h.contains_key("keep-alive"));
        assert!(!h.contains_key(header::UPGRADE));
        assert!(!h.contains_key(header::CONNECTION));
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn one_pass_drops_overrides_and_authorization_unless_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.insert("x-original-url", HeaderValue::from_static("/admin"));
        h.insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        let mut kept = h.clone();
        strip_for_upstream(&mut h, false, false);
        assert_eq!(h.len(), 1);
        strip_for_upstream(&mut kept, false, true);
        assert_eq!(kept.len(), 2);
        assert!(kept.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn response_side_drops_proxy_authenticate() {
        let mut h = HeaderMap::new();
        h.insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Basic"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-upstream", HeaderValue::from_static("1"));
        strip_response_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn authenticated_upgrade_keeps_exactly_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, x-foo"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        strip_for_upstream(&mut h, true, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert!(!h.contains_key("x-foo"));
    }
}
