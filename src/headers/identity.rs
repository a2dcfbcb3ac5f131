//! The identity headers: their names (built once from `identity.header_prefix`),
//! how a verified identity is encoded (once per verification, into one buffer the
//! cache keeps), how it is injected, and the strip rule that removes every
//! client-sent spelling of the prefix.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::identity::Identity;

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) is escaped.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The injected header names, built once from `identity.header_prefix`.
#[derive(Clone, Debug, PartialEq)]
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
        let strip_prefix: Vec<u8> = prefix.bytes().map(fold_byte).collect();
        // Stripping runs before authentication: a prefix that covered
        // `Authorization` would refuse every credential, one that covered
        // `Content-Type` or `Cookie` would silently change every request.
        if let Some(swallowed) =
            super::STANDARD_REQUEST_HEADERS.iter().find(|h| h.as_bytes().starts_with(&strip_prefix))
        {
            return Err(format!(
                "{prefix:?} would strip the standard header {swallowed:?} from every request: choose a prefix no standard header starts with, e.g. \"X-Line-\""
            ));
        }
        let make = |suffix: &str| {
            HeaderName::try_from(format!("{prefix}{suffix}"))
                .map_err(|_| format!("{prefix:?} does not form valid header names"))
        };
        Ok(Self {
            strip_prefix,
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
        EncodedIdentity {
            blob: Bytes::from(blob.into_boxed_slice()),
            ends,
            expires_at: identity.expires_at,
            user_hash: user_hash(&identity.user_id),
            subject: None,
        }
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

/// The first 16 hex digits of SHA-256 of `user_id`.
pub fn user_hash(user_id: &str) -> [u8; 16] {
    let digest = ring::digest::digest(&ring::digest::SHA256, user_id.as_bytes());
    super::lower_hex(&digest.as_ref()[..8])
}

impl EncodedIdentity {
    /// The user id as the `X-Line-User-Id` header carries it (a zero-copy slice).
    pub fn user_id(&self) -> Bytes {
        self.blob.slice(..self.ends[0] as usize)
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
    /// The first 16 hex digits of SHA-256 of the user id (`log.user_id =
    /// "hashed"`), computed once per verdict rather than per access line.
    pub user_hash: [u8; 16],
    /// With `[assertion]`: the claims of this identity's assertion, and the
    /// assertion last signed for it (reused for its lifetime).
    pub subject: Option<std::sync::Arc<crate::assertion::Subject>>,
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
#[cfg(test)]
fn visible_ascii_or_encoded(s: &str) -> HeaderValue {
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

/// True when the two names are one once `_` and `.` are read as `-` (names are
/// lower-case already): `X_Line_Identity_Jwt` is the assertion header to a CGI
/// backend, so it is stripped as one.
fn same_folded(name: &HeaderName, assertion: &HeaderName) -> bool {
    let (a, b) = (name.as_str().as_bytes(), assertion.as_str().as_bytes());
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| fold_byte(x) == fold_byte(y))
}

/// Removes every client-sent identity header and the assertion header, in
/// every spelling a backend may fold into the same name.
pub fn strip_identity(headers: &mut HeaderMap, names: &IdentityHeaderNames, assertion: &HeaderName) {
    // Collect first: HeaderMap cannot remove while iterating. The common case is
    // no match at all, which allocates nothing.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if names.is_identity_header(name) || same_folded(name, assertion) {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        headers.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> IdentityHeaderNames {
        IdentityHeaderNames::new("X-Line-").unwrap()
    }

    #[test]
    fn the_assertion_header_is_stripped_in_every_folded_spelling() {
        let assertion = HeaderName::from_static("x-identity-assertion");
        let mut h = HeaderMap::new();
        for spoof in ["x-identity-assertion", "X_Identity_Assertion", "x.identity.assertion", "x-identity_assertion"] {
            h.append(HeaderName::from_bytes(spoof.as_bytes()).unwrap(), "forged".parse().unwrap());
        }
        h.insert("x-identity-assertions", "kept".parse().unwrap());
        strip_identity(&mut h, &names(), &assertion);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-identity-assertions"]);
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
            method: crate::identity::AuthMethod::IdToken,
            expires_at: 1_800_000_000,
            amr: Vec::new(),
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
    fn prefix_must_not_swallow_standard_headers() {
        for greedy in ["Au", "authorization", "Co", "Content-", "X-", "x_forwarded", "Sec-", "Ho", "TE", "Tra"] {
            let why = IdentityHeaderNames::new(greedy).err().unwrap_or_else(|| panic!("{greedy} accepted"));
            assert!(why.contains("would strip the standard header"), "{why}");
        }
        for fine in ["X-Line-", "X-Auth-", "X-User-", "Line-"] {
            assert!(IdentityHeaderNames::new(fine).is_ok(), "{fine}");
        }
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
}
