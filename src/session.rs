//! Proxy-issued sessions (`[session]`): what a browser holds instead of a LINE
//! token. The cookie value is sealed with AES-256-GCM (ring) under the first
//! key of `session.key_files`; every key of the ring opens. Nothing in it is
//! readable or changeable by the client: a flipped bit, a cookie sealed under
//! another ring, one past its expiry or one that is not ours at all is simply
//! no session, never an error that says which.
//!
//! The value is `v1.` + base64url(key id (4) ‖ nonce (12) ‖ ciphertext ‖ tag),
//! the key id being the first bytes of SHA-256 of the key so that opening tries
//! one key, not the ring. The additional data binds the value to its purpose
//! and cookie name. A session's plaintext starts with what every request
//! needs — issue time, expiry (8 bytes each, big-endian) and the verdict-cache
//! key of its access token (32) — followed by JSON of the rest, which is read
//! only when the verdict is not cached: a request with a cached verdict costs
//! one base64 decode, one AEAD open and no parsing.
//! Stateless: replicas that share the key files share the sessions.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheKey, CredentialKind, cache_key};
use crate::config::key_ring::{KEY_BYTES, KeyRing};

/// The version prefix of every sealed value.
const PREFIX: &str = "v1.";
const KEY_ID_LEN: usize = 4;
/// A sealed value longer than this is no session, unread (a browser keeps
/// 4096 bytes per cookie; an access token is a few hundred).
pub const MAX_SEALED_BYTES: usize = 4096;

/// What a session holds. Sealed; the client sees none of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// The LINE access token, re-verified with LINE at most every
    /// `session.revalidate_seconds`.
    pub access_token: String,
    pub user_id: String,
    pub channel_id: String,
    /// From the verified ID token (web login); empty after an exchange.
    pub amr: Vec<String>,
    pub email: Option<String>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds: `issued_at + session.max_age_seconds`.
    pub expires_at: u64,
}

/// The JSON part of a session's plaintext (after the fixed header).
#[derive(Serialize, Deserialize)]
struct Body<'a> {
    #[serde(rename = "t", borrow)]
    access_token: std::borrow::Cow<'a, str>,
    #[serde(rename = "u", borrow)]
    user_id: std::borrow::Cow<'a, str>,
    #[serde(rename = "c", borrow)]
    channel_id: std::borrow::Cow<'a, str>,
    #[serde(rename = "a", default, skip_serializing_if = "Vec::is_empty")]
    amr: Vec<String>,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
}

/// issued_at (8) ‖ expires_at (8) ‖ verdict key (32).
const HEADER_LEN: usize = 8 + 8 + 32;

/// A session cookie that opened: its fixed header is read, the rest is
/// parsed by [`Opened::session`] only when it is needed (a cache miss).
pub struct Opened {
    plain: Vec<u8>,
}

impl Opened {
    fn read(plain: Vec<u8>) -> Option<Self> {
        (plain.len() > HEADER_LEN).then_some(Self { plain })
    }

    fn number(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.plain[at..at + 8].try_into().expect("8 bytes of a checked header"))
    }

    pub fn issued_at(&self) -> u64 {
        self.number(0)
    }

    pub fn expires_at(&self) -> u64 {
        self.number(8)
    }

    /// The verdict-cache key of the access token inside (computed when it
    /// was sealed; authenticated with the rest).
    pub fn verdict_key(&self) -> CacheKey {
        self.plain[16..HEADER_LEN].try_into().expect("32 bytes of a checked header")
    }

    /// The whole session (`None` if the JSON part does not read, which a
    /// value this ring sealed never does).
    pub fn session(&self) -> Option<Session> {
        let body: Body = serde_json::from_slice(&self.plain[HEADER_LEN..]).ok()?;
        Some(Session {
            access_token: body.access_token.into_owned(),
            user_id: body.user_id.into_owned(),
            channel_id: body.channel_id.into_owned(),
            amr: body.amr,
            email: body.email,
            issued_at: self.issued_at(),
            expires_at: self.expires_at(),
        })
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.user_id)
            .field("channel_id", &self.channel_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What a sealed value is for, first in the additional data: a value sealed
/// for another purpose under the same keys (the pre-login cookie of web
/// login, say) never opens as a session.
const SESSION_PURPOSE: &str = "line-auth-proxy session v1";

/// Seals with the first key, opens with any.
pub struct Sealer {
    keys: Vec<([u8; KEY_ID_LEN], LessSafeKey)>,
    rng: SystemRandom,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer({} keys, <redacted>)", self.keys.len())
    }
}

impl Sealer {
    /// # Panics
    /// On an empty ring (the configuration refuses one).
    pub fn new(ring: &KeyRing) -> Self {
        assert!(!ring.keys().is_empty(), "a session key ring has a key");
        let keys = ring.keys().iter().map(|k| (key_id(k), aead_key(k))).collect();
        Self { keys, rng: SystemRandom::new() }
    }

    /// The sealed value of `plain` for `purpose` under the cookie `name`.
    fn seal_bytes(&self, purpose: &str, name: &str, plain: &[u8]) -> String {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system random source works");
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(purpose, name, id), &mut sealed)
            .expect("a session fits AES-256-GCM's bounds");
        let mut out = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// The plaintext of a value this ring sealed for `purpose` and `name`, or
    /// `None` for anything else.
    fn open_bytes(&self, purpose: &str, name: &str, value: &[u8]) -> Option<Vec<u8>> {
        if value.len() > MAX_SEALED_BYTES {
            return None;
        }
        const HEADER: usize = KEY_ID_LEN + NONCE_LEN;
        // base64-simd: a quarter of the base64 crate's time for a session's
        // few hundred characters (75 vs 290 ns, measured); it refuses what
        // the base64 crate refuses (padding, non-canonical trailing bits).
        let mut raw = base64_simd::URL_SAFE_NO_PAD.decode_to_vec(value.strip_prefix(PREFIX.as_bytes())?).ok()?;
        if raw.len() < HEADER + AES_256_GCM.tag_len() {
            return None;
        }
        let (head, sealed) = raw.split_at_mut(HEADER);
        let (id, key) = self.keys.iter().find(|(k, _)| k[..] == head[..KEY_ID_LEN])?;
        let nonce = Nonce::try_assume_unique_for_key(&head[KEY_ID_LEN..]).ok()?;
        // Opened where it was decoded: the plaintext is the front of `sealed`.
        let plain = key.open_in_place(nonce, aad(purpose, name, id), sealed).ok()?.len();
        raw.drain(..HEADER);
        raw.truncate(plain);
        Some(raw)
    }

    /// The cookie value of a session.
    pub fn seal(&self, name: &str, session: &Session) -> String {
        let body = Body {
            access_token: session.access_token.as_str().into(),
            user_id: session.user_id.as_str().into(),
            channel_id: session.channel_id.as_str().into(),
            amr: session.amr.clone(),
            email: session.email.clone(),
        };
        let mut plain = Vec::with_capacity(HEADER_LEN + 64 + session.access_token.len());
        plain.extend_from_slice(&session.issued_at.to_be_bytes());
        plain.extend_from_slice(&session.expires_at.to_be_bytes());
        plain.extend_from_slice(&cache_key(CredentialKind::Session, &session.access_token));
        serde_json::to_writer(&mut plain, &body).expect("a session serialises");
        self.seal_bytes(SESSION_PURPOSE, name, &plain)
    }

    /// The session in a cookie value, if this ring sealed it and it is live
    /// at `now` (unix seconds); its JSON part is not read yet.
    pub fn open(&self, name: &str, value: &[u8], now: u64) -> Option<Opened> {
        let opened = Opened::read(self.open_bytes(SESSION_PURPOSE, name, value)?)?;
        (now < opened.expires_at() && opened.issued_at() <= now.saturating_add(60)).then_some(opened)
    }

    /// The sealed JSON of `value`, for `purpose` (a label no other kind of
    /// sealed value uses) under the cookie `name`.
    pub(crate) fn seal_json<T: Serialize>(&self, purpose: &str, name: &str, value: &T) -> String {
        let plain = serde_json::to_vec(value).expect("a sealed value serialises");
        self.seal_bytes(purpose, name, &plain)
    }

    /// What [`Sealer::seal_json`] sealed for `purpose` and `name`, or `None`.
    pub(crate) fn open_json<T: serde::de::DeserializeOwned>(
        &self,
        purpose: &str,
        name: &str,
        value: &str,
    ) -> Option<T> {
        serde_json::from_slice(&self.open_bytes(purpose, name, value.as_bytes())?).ok()
    }
}

fn key_id(key: &[u8; KEY_BYTES]) -> [u8; KEY_ID_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    digest.as_ref()[..KEY_ID_LEN].try_into().expect("SHA-256 is longer than a key id")
}

fn aead_key(key: &[u8; KEY_BYTES]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32 bytes are an AES-256 key"))
}

/// `purpose label ‖ 0 ‖ cookie name ‖ 0 ‖ key id`.
fn aad(purpose: &str, name: &str, id: &[u8; KEY_ID_LEN]) -> Aad<Vec<u8>> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(purpose.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad.push(0);
    aad.extend_from_slice(id);
    Aad::from(aad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "__Host-line-auth-session";

    fn session(now: u64) -> Session {
        Session {
            access_token: "eyJhbGciOiJIUzI1NiJ9.access".into(),
            user_id: "U1234567890abcdef1234567890abcdef".into(),
            channel_id: "1234567890".into(),
            amr: vec!["pwd".into()],
            email: Some("brown@example.com".into()),
            issued_at: now,
            expires_at: now + 86_400,
        }
    }

    #[test]
    fn a_sealed_session_opens_and_shows_nothing() {
        let sealer = Sealer::new(&KeyRing::for_tests(&[[1; 32]]));
        let s = session(1_000);
        let value = sealer.seal(NAME, &s);
        assert!(value.starts_with("v1."));
        assert!(!value.contains("access") && !value.contains("U1234"), "{value}");
        let opened = sealer.open(NAME, value.as_bytes(), 1_001).unwrap();
        assert_eq!(opened.session(), Some(s.clone()));
        assert_eq!(opened.verdict_key(), cache_key(CredentialKind::Session, &s.access_token));
        assert_eq!((opened.issued_at(), opened.expires_at()), (1_000, 1_000 + 86_400));
        // Two seals of one session differ (a fresh nonce each).
        assert_ne!(sealer.seal(NAME, &s), value);
        // The cookie's value is valid in a Set-Cookie header and never needs quoting.
        assert!(value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        // The debug form names no secret.
        assert!(!format!("{s:?}").contains("access"));
        assert!(!format!("{sealer:?}").contains('\u{1}'));
    }

    #[test]
    fn any_flipped_bit_another_ring_purpose_name_or_expiry_is_no_session() {
        let sealer = Sealer::new(&KeyRing::for_tests(&[[1; 32]]));
        let value = sealer.seal(NAME, &session(1_000));
        let raw = URL_SAFE_NO_PAD.decode(&value[3..]).unwrap();
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut flipped = raw.clone();
                flipped[i] ^= 1 << bit;
                let forged = format!("v1.{}", URL_SAFE_NO_PAD.encode(&flipped));
                assert!(sealer.open(NAME, forged.as_bytes(), 1_001).is_none(), "byte {i} bit {bit}");
            }
        }
        let other = Sealer::new(&KeyRing::for_tests(&[[2; 32]]));
        assert!(other.open(NAME, value.as_bytes(), 1_001).is_none(), "another key ring");
        assert!(sealer.open("other-cookie", value.as_bytes(), 1_001).is_none(), "another cookie name");
        let plain = sealer.open_bytes(SESSION_PURPOSE, NAME, value.as_bytes()).unwrap();
        let other_purpose = sealer.seal_bytes("line-auth-proxy pre-login v1", NAME, &plain);
        assert!(sealer.open(NAME, other_purpose.as_bytes(), 1_001).is_none(), "a value sealed for another purpose");
        assert!(sealer.open(NAME, value.as_bytes(), 1_000 + 86_400).is_none(), "at its expiry");
        assert!(sealer.open(NAME, value.as_bytes(), 900).is_none(), "issued in the future");
        // Sealed by this ring but shorter than the header: no session.
        let short = sealer.seal_bytes(SESSION_PURPOSE, NAME, &plain[..HEADER_LEN]);
        assert!(sealer.open(NAME, short.as_bytes(), 1_001).is_none());
        for junk in ["", "v1.", "v2.AAAA", "v1.!!!!", &"A".repeat(5000)] {
            assert!(sealer.open(NAME, junk.as_bytes(), 1_001).is_none(), "{junk:.10}");
        }
    }

    #[test]
    fn rotation_the_first_key_seals_and_every_key_opens() {
        let (old, new) = ([1u8; 32], [2u8; 32]);
        let before = Sealer::new(&KeyRing::for_tests(&[old]));
        let during = Sealer::new(&KeyRing::for_tests(&[new, old]));
        let after = Sealer::new(&KeyRing::for_tests(&[new]));
        let old_cookie = before.seal(NAME, &session(1_000));
        let new_cookie = during.seal(NAME, &session(1_000));
        assert!(during.open(NAME, old_cookie.as_bytes(), 1_001).is_some(), "the old key still opens");
        assert!(after.open(NAME, new_cookie.as_bytes(), 1_001).is_some(), "the new key sealed");
        assert!(before.open(NAME, new_cookie.as_bytes(), 1_001).is_none());
        assert!(after.open(NAME, old_cookie.as_bytes(), 1_001).is_none(), "a dropped key opens nothing");
    }
}
