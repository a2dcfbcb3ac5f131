//! Web login (`[login]`): what LINE Login's authorization code flow with PKCE
//! needs besides HTTP — the pre-login flow a browser carries between
//! `login.path` and the callback, the `return_to` rule, the authorize URL, and
//! the form values of LINE's answers. The endpoints are in `proxy::login`.
//!
//! A flow is sealed (AEAD, the session key ring, its own purpose label) in a
//! cookie of its own, `<session cookie>.login.<id>`, the id being part of the
//! flow's `state`: logins started in several tabs do not overwrite each
//! other, and the callback finds its flow by the `state` LINE sends back. At
//! most [`MAX_FLOWS`] are kept; each lives [`FLOW_LIFETIME_SECONDS`].
//!
//! The `state` says which attempt it belongs to (its first character): LINE's
//! auto-login can come back with a `state` that is not the one sent, and the
//! flow is restarted once with `disable_auto_login=true` — a second mismatch
//! is an error, never another redirect, even for a browser that keeps no
//! cookies at all.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::config::LoginConfig;

/// The purpose label of sealed pre-login flows (a session never opens as one).
pub const FLOW_PURPOSE: &str = "line-auth-proxy pre-login v1";
/// How long a login may take between `login.path` and the callback (LINE's
/// codes live 10 minutes too).
pub const FLOW_LIFETIME_SECONDS: u64 = 600;
/// Pre-login flows one browser may hold at once (tabs); the oldest go first.
pub const MAX_FLOWS: usize = 4;
/// A `return_to` longer than this becomes `/` (bytes).
pub const MAX_RETURN_TO_BYTES: usize = 2048;
/// Characters of the `state` that name its flow cookie (64 bits of it).
const FLOW_ID_LEN: usize = 16;
/// Hex characters of randomness in a `state` (256 bits), after its attempt digit.
const STATE_RANDOM_LEN: usize = 64;

/// `application/x-www-form-urlencoded` values: everything but unreserved escaped.
pub const FORM_VALUE: &AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
/// What a `return_to` keeps as it is in a `Location`: RFC 3986 path and query
/// characters and existing escapes; a space, `\`, quotes, brackets and
/// anything beyond ASCII are escaped, so no browser reads a backslash as `/`.
const LOCATION: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}')
    .add(b'#');

/// Which try of a login a `state` belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The first redirect to LINE.
    First,
    /// The restart with `disable_auto_login=true` after a `state` mismatch.
    Retry,
}

impl Attempt {
    fn digit(self) -> char {
        match self {
            Attempt::First => '1',
            Attempt::Retry => '2',
        }
    }

    /// The attempt a `state` of ours names; `None` for anything else.
    pub fn of(state: &str) -> Option<Self> {
        // Bytes, not characters: the state comes from the URL, and slicing
        // a string at a byte that is not a character boundary panics.
        let bytes = state.as_bytes();
        if bytes.len() != 1 + STATE_RANDOM_LEN || !bytes[1..].iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        match bytes[0] {
            b'1' => Some(Attempt::First),
            b'2' => Some(Attempt::Retry),
            _ => None,
        }
    }
}

/// One login in progress: sealed in its cookie, never shown to the client.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// Sent to LINE and checked when it comes back (CSRF).
    #[serde(rename = "s")]
    pub state: String,
    /// Sent to LINE; the ID token must carry it (replay).
    #[serde(rename = "n")]
    pub nonce: String,
    /// The PKCE `code_verifier`; LINE saw only its S256 challenge.
    #[serde(rename = "v")]
    pub verifier: String,
    /// Where the browser goes once logged in (already validated).
    #[serde(rename = "r")]
    pub return_to: String,
    /// Unix seconds.
    #[serde(rename = "i")]
    pub issued_at: u64,
}

impl fmt::Debug for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flow")
            .field("return_to", &self.return_to)
            .field("issued_at", &self.issued_at)
            .finish_non_exhaustive()
    }
}

impl Flow {
    /// A new flow with fresh `state`, `nonce` and verifier.
    pub fn new(return_to: String, attempt: Attempt, now: u64) -> Self {
        let rng = SystemRandom::new();
        let random = |n: usize| {
            let mut bytes = vec![0u8; n];
            rng.fill(&mut bytes).expect("the system random source works");
            bytes
        };
        let hex: String = random(STATE_RANDOM_LEN / 2).iter().map(|b| format!("{b:02x}")).collect();
        Self {
            state: format!("{}{hex}", attempt.digit()),
            nonce: URL_SAFE_NO_PAD.encode(random(32)),
            // 43 characters: RFC 7636's minimum length, 256 bits.
            verifier: URL_SAFE_NO_PAD.encode(random(32)),
            return_to,
            issued_at: now,
        }
    }

    /// Whether the flow is still usable at `now`.
    pub fn live(&self, now: u64) -> bool {
        now < self.issued_at.saturating_add(FLOW_LIFETIME_SECONDS) && self.issued_at <= now.saturating_add(60)
    }

    /// The PKCE S256 challenge of the verifier.
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, self.verifier.as_bytes()))
    }
}

/// The part of a `state` its flow cookie is named by (`None`: not our state).
pub fn flow_id(state: &str) -> Option<&str> {
    Attempt::of(state).map(|_| &state[1..1 + FLOW_ID_LEN])
}

/// What every flow cookie's name starts with.
pub fn flow_cookie_prefix(session_cookie: &str) -> String {
    format!("{session_cookie}.login.")
}

/// The cookie that holds the flow of `state`.
pub fn flow_cookie_name(session_cookie: &str, state: &str) -> Option<String> {
    Some(format!("{}{}", flow_cookie_prefix(session_cookie), flow_id(state)?))
}

/// Where to go after login: a path on this origin, else `/`. A relative path
/// is `/` followed by neither `/` nor `\` (`//host` and `/\host` are other
/// hosts to a browser), with no control character (browsers drop tabs and
/// newlines, so `/\t/host` is `//host`); it is escaped for a `Location`.
pub fn return_to(raw: Option<&str>) -> String {
    let Some(raw) = raw else { return "/".to_owned() };
    let bytes = raw.as_bytes();
    let relative = bytes.first() == Some(&b'/') && !matches!(bytes.get(1), Some(b'/' | b'\\'));
    if !relative || raw.len() > MAX_RETURN_TO_BYTES || raw.chars().any(char::is_control) {
        return "/".to_owned();
    }
    utf8_percent_encode(raw, LOCATION).to_string()
}

/// `login.path?return_to=…` for a browser that needs to log in first.
pub fn login_location(login: &LoginConfig, path_and_query: &str) -> String {
    format!("{}?return_to={}", login.path, utf8_percent_encode(path_and_query, FORM_VALUE))
}

/// LINE's authorize URL for `flow`, with every parameter the contract names.
pub fn authorize_location(login: &LoginConfig, flow: &Flow) -> String {
    let challenge = flow.challenge();
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", &login.channel_id),
        ("redirect_uri", &login.redirect_uri),
        ("state", &flow.state),
        ("scope", &login.scope),
        ("nonce", &flow.nonce),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    params.extend(login.extra.iter().map(|(k, v)| (*k, v.as_str())));
    if Attempt::of(&flow.state) == Some(Attempt::Retry) {
        params.push(("disable_auto_login", "true"));
    }
    let separator = if login.authorize_url.contains('?') { '&' } else { '?' };
    format!("{}{separator}{}", login.authorize_url, form(&params))
}

/// `k=v&k=v`, form-encoded.
pub fn form(params: &[(&str, &str)]) -> String {
    params.iter().map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, FORM_VALUE))).collect::<Vec<_>>().join("&")
}

/// A query parameter named twice: the proxy does not guess which one counts.
#[derive(Debug, PartialEq, Eq)]
pub struct Repeated;

/// The form-decoded value of `key` in `query`, if present exactly once.
pub fn query_value<'q>(query: &'q str, key: &str) -> Result<Option<Cow<'q, str>>, Repeated> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(k).as_deref() != Some(key) {
            continue;
        }
        if found.is_some() {
            return Err(Repeated);
        }
        found = Some(decode(v).unwrap_or(Cow::Borrowed("")));
    }
    Ok(found)
}

/// Form decoding (`+` is a space); `None` for bytes that are not UTF-8.
fn decode(s: &str) -> Option<Cow<'_, str>> {
    let spaced: Cow<'_, str> = if s.contains('+') { Cow::Owned(s.replace('+', " ")) } else { Cow::Borrowed(s) };
    let decoded = percent_encoding::percent_decode_str(&spaced).decode_utf8().ok()?;
    Some(Cow::Owned(decoded.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_on_the_origin() {
        for (raw, expected) in [
            ("/", "/"),
            ("/app/page?x=1&y=2", "/app/page?x=1&y=2"),
            ("/a\\b", "/a%5Cb"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a b", "/a%20b"),
            ("/%2F%2Fevil.example", "/%2F%2Fevil.example"),
            ("/%09/evil.example", "/%09/evil.example"),
        ] {
            assert_eq!(return_to(Some(raw)), expected, "{raw:?}");
        }
        for hostile in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/evil.example",
            "https://evil.example",
            "javascript:alert(1)",
            "evil.example",
            "",
            "\\\\evil.example",
            " /evil",
            "/x\u{85}y",
            "/x\u{7f}",
        ] {
            assert_eq!(return_to(Some(hostile)), "/", "{hostile:?}");
        }
        assert_eq!(return_to(None), "/");
        assert_eq!(return_to(Some(&format!("/{}", "a".repeat(MAX_RETURN_TO_BYTES)))), "/");
    }

    #[test]
    fn states_name_their_attempt_and_flow_cookie() {
        let first = Flow::new("/".into(), Attempt::First, 1_000);
        let retry = Flow::new("/".into(), Attempt::Retry, 1_000);
        assert_eq!(Attempt::of(&first.state), Some(Attempt::First));
        assert_eq!(Attempt::of(&retry.state), Some(Attempt::Retry));
        assert!(first.state.bytes().all(|b| b.is_ascii_alphanumeric()), "LINE asks for an alphanumeric state");
        assert_ne!(first.state, Flow::new("/".into(), Attempt::First, 1_000).state);
        // A character of several bytes where a digit or hex is expected, at
        // the right length in bytes: none is ours, and none panics.
        let multibyte =
            [format!("é{}", "0".repeat(63)), format!("1{}é", "0".repeat(62)), format!("1ａ{}", "0".repeat(61))];
        for junk in multibyte.iter().map(String::as_str) {
            assert_eq!(junk.len(), 65);
            assert_eq!(Attempt::of(junk), None, "{junk}");
            assert_eq!(flow_cookie_name("s", junk), None);
        }
        for junk in ["", "1", "3abc", &format!("1{}", "g".repeat(64)), &format!("1{}", "a".repeat(65))] {
            assert_eq!(Attempt::of(junk), None, "{junk}");
            assert_eq!(flow_id(junk), None);
        }
        let name = flow_cookie_name("__Host-s", &first.state).unwrap();
        assert_eq!(name, format!("__Host-s.login.{}", &first.state[1..17]));
        assert_eq!(first.verifier.len(), 43);
        assert!(first.live(1_599) && !first.live(1_600) && !first.live(900));
    }

    #[test]
    fn pkce_challenge_is_rfc_7636_s256() {
        // RFC 7636 appendix B.
        let mut flow = Flow::new("/".into(), Attempt::First, 0);
        flow.verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into();
        assert_eq!(flow.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn query_values_are_decoded_and_never_guessed() {
        let q = "code=a%2Bb&state=1+2&empty=&bare";
        assert_eq!(query_value(q, "code").unwrap().as_deref(), Some("a+b"));
        assert_eq!(query_value(q, "state").unwrap().as_deref(), Some("1 2"));
        assert_eq!(query_value(q, "empty").unwrap().as_deref(), Some(""));
        assert_eq!(query_value(q, "bare").unwrap().as_deref(), Some(""));
        assert_eq!(query_value(q, "missing").unwrap(), None);
        assert_eq!(query_value("state=a&state=b", "state"), Err(Repeated));
        assert_eq!(query_value("state=a&st%61te=b", "state"), Err(Repeated));
    }
}
