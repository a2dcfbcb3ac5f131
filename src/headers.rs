//! The identity-header contract: which names exist, how values are encoded, and the
//! strip-then-set discipline that keeps client-sent identity out of the upstream.
//!
//! Pipeline position: stripping runs first on every request, whatever the route;
//! injection runs last, after hop-by-hop removal, so that a client's `Connection`
//! header can never name (and thereby remove) an injected header.

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

    /// Encodes a verified identity as the exact set of headers to inject.
    pub fn encode(&self, identity: &Identity) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(7);
        out.push((self.user_id.clone(), visible_ascii_or_encoded(&identity.user_id)));
        if let Some(name) = &identity.display_name {
            out.push((self.display_name.clone(), percent_encoded(name)));
        }
        if let Some(url) = &identity.picture_url {
            out.push((self.picture_url.clone(), visible_ascii_or_encoded(url)));
        }
        if let Some(email) = &identity.email {
            out.push((self.email.clone(), visible_ascii_or_encoded(email)));
        }
        out.push((self.channel_id.clone(), visible_ascii_or_encoded(&identity.channel_id)));
        out.push((self.auth_method.clone(), HeaderValue::from_static(identity.method.as_str())));
        out.push((self.expires_at.clone(), HeaderValue::from(identity.expires_at)));
        out
    }
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
    let encoded = utf8_percent_encode(s, NOT_UNRESERVED).to_string();
    HeaderValue::try_from(encoded).expect("percent-encoded text is visible ASCII")
}

/// Sends the value as given when it is visible ASCII (0x21..=0x7E), else percent-encoded.
pub fn visible_ascii_or_encoded(s: &str) -> HeaderValue {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) {
        HeaderValue::try_from(s).expect("visible ASCII is a valid header value")
    } else {
        percent_encoded(s)
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
static HOP_BY_HOP: [HeaderName; 9] = [
    HeaderName::from_static("http2-settings"),
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Removes hop-by-hop headers and the ones the `Connection` header names. When
/// `keep_upgrade` is set (an authenticated upgrade), `Connection: upgrade` and
/// `Upgrade` survive so the upstream can switch protocols. Runs before injection.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Taken first: `Connection: upgrade` itself names the Upgrade header.
    let upgrade = if keep_upgrade { headers.get(header::UPGRADE).cloned() } else { None };
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.trim();
            // Host is never hop-by-hop; everything else a client names goes.
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                && name != header::HOST
            {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(&name);
    }
    let te_trailers = headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
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

/// Client-sent headers that backends and frameworks read as routing, method or
/// scheme decisions (`X-Original-URL` re-routes in IIS and Symfony, method
/// overrides turn a GET into a DELETE, `Forwarded` outranks `X-Forwarded-*` in
/// Spring). The proxy authorised the request line it saw; these would let the
/// backend act on another one, so they never reach it.
static ROUTING_OVERRIDES: [HeaderName; 14] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-original-method"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-scheme"),
];

/// Removes the client's routing and method overrides (see [`ROUTING_OVERRIDES`]).
pub fn strip_routing_overrides(headers: &mut HeaderMap) {
    for name in &ROUTING_OVERRIDES {
        headers.remove(name);
    }
}

/// Response-side hop-by-hop removal (the proxy-authenticate header instead of -authorization).
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip_hop_by_hop(headers, keep_upgrade);
    headers.remove(header::PROXY_AUTHENTICATE);
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
        strip_hop_by_hop(&mut h, false);
        assert!(h.contains_key(header::HOST));
        assert!(!h.contains_key("x-foo"));
        assert!(!h.contains_key("keep-alive"));
        assert!(!h.contains_key(header::UPGRADE));
        assert!(!h.contains_key(header::CONNECTION));
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn authenticated_upgrade_keeps_exactly_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, x-foo"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-foo", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert!(!h.contains_key("x-foo"));
    }
}
