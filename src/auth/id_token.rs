//! LINE ID-token verification: locally (ES256 against LINE's JWKS, HS256 with
//! the channel secret) or remotely (LINE's `POST /oauth2/v2.1/verify`).
//!
//! The accepted algorithm is decided by configuration and key type, never by the
//! token alone: ES256 is checked only against JWKS keys, HS256 only against a
//! channel secret from a file. `alg: none`, RS*/PS*, and key-carrying headers
//! (`jku`, `x5u`, `jwk`, `x5c`, `crit`) are refused before any key is looked up.
//!
//! JWS with ring directly (not jsonwebtoken): jsonwebtoken 10+ ships only the
//! aws-lc-rs or RustCrypto backends, which would add a second crypto stack next
//! to the ring that rustls already links; two algorithms over ring's
//! constant-time primitives are a few dozen lines we control completely.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{hmac, signature};
use serde_json::Value;

use super::jwks::Jwks;
use super::line::{Answer, Endpoint, LineClient, LineError, refusal};
use super::{AuthMethod, Identity, Rejection, is_line_user_id};
use crate::clock::Clock;
use crate::config::{IdTokenConfig, IdTokenVerification, Secret};

/// ID tokens longer than this are refused before any work (8 KiB).
pub const MAX_ID_TOKEN_BYTES: usize = 8 * 1024;
/// The only issuer LINE uses.
pub const LINE_ISSUER: &str = "https://access.line.me";
/// JOSE headers that would let the token choose its own key.
const FORBIDDEN_HEADERS: [&str; 5] = ["jku", "x5u", "jwk", "x5c", "crit"];

/// A verified ID token's claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdClaims {
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nonce: Option<String>,
    pub name: Option<String>,
    pub picture: Option<String>,
    pub email: Option<String>,
    /// `amr` (authentication methods), when LINE gave them.
    pub amr: Vec<String>,
}

impl IdClaims {
    pub fn into_identity(self) -> Identity {
        Identity {
            user_id: self.sub,
            display_name: self.name,
            picture_url: self.picture,
            email: self.email,
            channel_id: self.aud,
            method: AuthMethod::IdToken,
            expires_at: self.exp,
            amr: self.amr,
        }
    }
}

/// A compact JWS split and decoded once per request (signature not yet
/// checked): the proxy reads its nonce, the verifier checks it.
pub struct Jws<'a> {
    token: &'a str,
    header: Value,
    payload: Value,
    signing_input: &'a [u8],
    signature: Vec<u8>,
}

impl Jws<'_> {
    /// The `nonce` claim, unverified: only to refuse a stale or foreign nonce
    /// before any signature work or LINE call. The nonce consumed is this
    /// claim once the signature (or LINE) has vouched for the payload.
    pub fn unverified_nonce(&self) -> Option<&str> {
        self.payload.get("nonce").and_then(Value::as_str)
    }

    /// The token as the verdict cache keys it: one key per signed token.
    /// An ECDSA signature `(r, s)` has a twin `(r, n − s)` that verifies as
    /// well, so an ES256 token with a high `s` is keyed by its low-`s` twin.
    /// (Refusing high-`s` tokens instead would refuse about half of what a
    /// signer that does not normalise issues — ring's signer is one: see the
    /// tests — and LINE does not document that it normalises.)
    pub fn cache_form(&self) -> Cow<'_, str> {
        let es256 = self.header.get("alg").and_then(Value::as_str) == Some("ES256");
        match (es256, low_s(&self.signature)) {
            (true, Some(low)) => {
                let input = std::str::from_utf8(self.signing_input).expect("a prefix of a str at a '.'");
                Cow::Owned(format!("{input}.{}", URL_SAFE_NO_PAD.encode(low)))
            }
            _ => Cow::Borrowed(self.token),
        }
    }
}

/// The order `n` of P-256's base point, big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// For a 64-byte `r ‖ s` whose `s` is above `n / 2`: `r ‖ (n − s)`, the
/// same signature's low-`s` twin. `None` when it is already low (or not 64 bytes).
fn low_s(signature: &[u8]) -> Option<Vec<u8>> {
    if signature.len() != 64 || signature[32..] >= P256_ORDER[..] {
        return None;
    }
    let twin = twin(signature);
    // s > n / 2  ⇔  2s > n  ⇔  n − s < s.
    (twin[32..] < signature[32..]).then_some(twin)
}

/// `r ‖ (n − s)` for a 64-byte `r ‖ s` with `s < n`: the signature's twin.
fn twin(signature: &[u8]) -> Vec<u8> {
    let mut twin = signature.to_vec();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(P256_ORDER[i]) - i16::from(signature[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        twin[32 + i] = d.rem_euclid(256) as u8;
    }
    twin
}

/// Splits and decodes an ID token: over 8 KiB, not three base64url parts, or
/// not JSON objects is refused before any work.
pub fn parse(token: &str) -> Result<Jws<'_>, Rejection> {
    if token.len() > MAX_ID_TOKEN_BYTES {
        return Err(Rejection::IdTokenMalformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Rejection::IdTokenMalformed);
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| Rejection::IdTokenMalformed);
    let json = |bytes: Vec<u8>| {
        serde_json::from_slice::<Value>(&bytes).ok().filter(Value::is_object).ok_or(Rejection::IdTokenMalformed)
    };
    Ok(Jws {
        token,
        header: json(decode(h)?)?,
        payload: json(decode(p)?)?,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature: decode(s)?,
    })
}

pub struct IdTokenVerifier {
    line: Arc<LineClient>,
    jwks: Option<Arc<Jwks>>,
    verification: IdTokenVerification,
    secrets: std::collections::BTreeMap<String, Secret>,
    channel_ids: Vec<String>,
    skew: Duration,
    max_age: Duration,
    /// Web login's `login.max_age`: the token's `auth_time` must be within it
    /// (OpenID Connect Core 3.1.3.7: a client that asks for `max_age` checks it).
    max_auth_age: Option<Duration>,
    clock: Clock,
}

impl IdTokenVerifier {
    pub fn new(
        config: &IdTokenConfig,
        channel_ids: Vec<String>,
        line: Arc<LineClient>,
        jwks: Option<Arc<Jwks>>,
        clock: Clock,
    ) -> Self {
        Self {
            clock,
            line,
            jwks,
            verification: config.verification,
            secrets: config.channel_secrets.clone(),
            channel_ids,
            skew: config.clock_skew,
            max_age: config.max_age,
            max_auth_age: None,
        }
    }

    /// The verifier of web login's ID tokens: local (HS256 with the login
    /// channel's secret, ES256 should LINE issue one), for that channel only.
    pub fn for_login(
        login: &crate::config::LoginConfig,
        line_section: &crate::config::LineSection,
        line: Arc<LineClient>,
        jwks: Option<Arc<Jwks>>,
        clock: Clock,
    ) -> Self {
        Self {
            clock,
            line,
            jwks,
            verification: IdTokenVerification::Local,
            secrets: [(login.channel_id.clone(), login.channel_secret.clone())].into(),
            channel_ids: vec![login.channel_id.clone()],
            skew: line_section.clock_skew_seconds.duration(),
            max_age: line_section.max_id_token_age_seconds.duration(),
            max_auth_age: login.max_age,
        }
    }

    /// The `source` label of the auth-duration metric for a verification.
    pub fn source(&self) -> &'static str {
        match self.verification {
            IdTokenVerification::Local => "local",
            IdTokenVerification::Remote => "line",
        }
    }

    /// `Ok(Ok(claims))` verified; `Ok(Err(r))` definitively refused; `Err` the
    /// LINE Platform (JWKS or remote verify) could not answer.
    pub async fn verify(&self, jws: &Jws<'_>) -> Result<Result<IdClaims, Rejection>, LineError> {
        match self.verification {
            IdTokenVerification::Local => self.verify_local(jws).await,
            IdTokenVerification::Remote => self.verify_remote(jws).await,
        }
    }

    async fn verify_local(&self, jws: &Jws<'_>) -> Result<Result<IdClaims, Rejection>, LineError> {
        let header = jws.header.as_object().expect("checked in parse");
        if FORBIDDEN_HEADERS.iter().any(|h| header.contains_key(*h)) {
            return Ok(Err(Rejection::IdTokenAlgorithm));
        }
        let signed = match header.get("alg").and_then(Value::as_str) {
            Some("ES256") => {
                let Some(kid) = header.get("kid").and_then(Value::as_str) else {
                    return Ok(Err(Rejection::UnknownKey));
                };
                let jwks = self.jwks.as_ref().ok_or(LineError::JwksUnavailable)?;
                let Some(key) = jwks.key(kid).await? else {
                    return Ok(Err(Rejection::UnknownKey));
                };
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &key[..])
                    .verify(jws.signing_input, &jws.signature)
                    .is_ok()
            }
            Some("HS256") => {
                // The secret is chosen by the (unverified) audience; a token for
                // another channel finds no secret, or fails the HMAC.
                let aud = jws.payload.get("aud").and_then(Value::as_str).unwrap_or("");
                let Some(secret) = self.secrets.get(aud) else {
                    return Ok(Err(Rejection::NoChannelSecret));
                };
                let key = hmac::Key::new(hmac::HMAC_SHA256, &secret.0);
                hmac::verify(&key, jws.signing_input, &jws.signature).is_ok()
            }
            _ => return Ok(Err(Rejection::IdTokenAlgorithm)),
        };
        if !signed {
            return Ok(Err(Rejection::BadSignature));
        }
        Ok(self.check_claims(&jws.payload))
    }

    async fn verify_remote(&self, jws: &Jws<'_>) -> Result<Result<IdClaims, Rejection>, LineError> {
        // client_id comes from our channel list, picked by the token's claimed
        // audience: never a value the client chose that we do not accept.
        let Some(client_id) =
            jws.payload.get("aud").and_then(Value::as_str).filter(|aud| self.channel_ids.iter().any(|c| c == aud))
        else {
            return Ok(Err(Rejection::WrongChannel));
        };
        let nonce = jws.payload.get("nonce").and_then(Value::as_str);
        // Same admission as access tokens: bounded, and silent during a 429 back-off.
        let _slot = self.line.admit().await?;
        let mut form = vec![("id_token", jws.token), ("client_id", client_id)];
        // LINE refuses an empty `nonce=`; send it only when the token has one.
        if let Some(n) = nonce.filter(|n| !n.is_empty()) {
            form.push(("nonce", n));
        }
        let (status, body) = self.line.call(Endpoint::VerifyIdToken, self.line.post_verify_id_token(&form)).await?;
        if status != 200 {
            return match refusal::<()>(Endpoint::VerifyIdToken, status, &body)? {
                Answer::Rejected(r) => Ok(Err(r)),
                Answer::Ok(()) => unreachable!("refusal never answers Ok"),
            };
        }
        let answer: Value =
            serde_json::from_slice(&body).map_err(|_| LineError::BadResponse(Endpoint::VerifyIdToken))?;
        if let Err(field) = answer_matches(&answer, &jws.payload, client_id, nonce) {
            // A 200 about some other token, or not a payload at all: LINE's
            // answer cannot be used, which is unavailability, never a 401.
            tracing::warn!(
                endpoint = Endpoint::VerifyIdToken.as_str(),
                field,
                "LINE's ID-token answer does not match the token"
            );
            return Err(LineError::BadResponse(Endpoint::VerifyIdToken));
        }
        Ok(self.check_claims(&answer))
    }

    /// OIDC Core §3.1.3.7 as LINE applies it, plus LINE's user-id shape.
    fn check_claims(&self, payload: &Value) -> Result<IdClaims, Rejection> {
        let text = |k: &str| payload.get(k).and_then(Value::as_str);
        let number = |k: &str| payload.get(k).and_then(Value::as_u64);
        if text("iss") != Some(LINE_ISSUER) {
            return Err(Rejection::WrongIssuer);
        }
        let aud = text("aud").ok_or(Rejection::WrongChannel)?;
        if !self.channel_ids.iter().any(|c| c == aud) {
            return Err(Rejection::WrongChannel);
        }
        let now = self.clock.unix_seconds();
        let skew = self.skew.as_secs();
        let exp = number("exp").ok_or(Rejection::IdTokenMalformed)?;
        if exp.saturating_add(skew) <= now {
            return Err(Rejection::Expired);
        }
        let iat = number("iat").ok_or(Rejection::IdTokenMalformed)?;
        if iat > now.saturating_add(skew) {
            return Err(Rejection::IssuedInFuture);
        }
        if iat.saturating_add(self.max_age.as_secs()).saturating_add(skew) < now {
            return Err(Rejection::TooOld);
        }
        match payload.get("nbf") {
            None => {}
            Some(nbf) => match nbf.as_u64() {
                Some(nbf) if nbf <= now.saturating_add(skew) => {}
                Some(_) => return Err(Rejection::NotYetValid),
                None => return Err(Rejection::IdTokenMalformed),
            },
        }
        if let Some(max_auth_age) = self.max_auth_age {
            // LINE sends `auth_time` when `max_age` was asked for; without it
            // the age of the login is unknown, which is not within the bound.
            let auth_time = number("auth_time").ok_or(Rejection::TooOld)?;
            if auth_time.saturating_add(max_auth_age.as_secs()).saturating_add(skew) < now {
                return Err(Rejection::TooOld);
            }
        }
        let sub = text("sub").filter(|s| is_line_user_id(s)).ok_or(Rejection::BadSubject)?;
        Ok(IdClaims {
            sub: sub.to_owned(),
            aud: aud.to_owned(),
            exp,
            nonce: text("nonce").map(str::to_owned),
            name: text("name").map(str::to_owned),
            picture: text("picture").map(str::to_owned),
            email: text("email").map(str::to_owned),
            amr: payload
                .get("amr")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).take(8).map(str::to_owned).collect())
                .unwrap_or_default(),
        })
    }
}

/// Whether LINE's verify answer is about this token: the payload claims
/// (`iss`, `sub`, `aud`, `exp`, `iat`, well-typed), equal to the token's own
/// `sub`, `aud`, `exp` and `nonce` (decoded, not trusted) and to what was
/// asked (`client_id`, `nonce`). `Err` names the first field that is not.
fn answer_matches(
    answer: &Value,
    token: &Value,
    client_id: &str,
    nonce_sent: Option<&str>,
) -> Result<(), &'static str> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let number = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
    let check = |ok: bool, field: &'static str| if ok { Ok(()) } else { Err(field) };
    check(text(answer, "iss").as_deref() == Some(LINE_ISSUER), "iss")?;
    check(text(answer, "sub").is_some() && text(answer, "sub") == text(token, "sub"), "sub")?;
    check(
        text(answer, "aud").as_deref() == Some(client_id) && text(token, "aud").as_deref() == Some(client_id),
        "aud",
    )?;
    check(number(answer, "exp").is_some() && number(answer, "exp") == number(token, "exp"), "exp")?;
    check(number(answer, "iat").is_some(), "iat")?;
    let nonce = text(answer, "nonce");
    check(nonce == text(token, "nonce") && nonce_sent.is_none_or(|sent| nonce.as_deref() == Some(sent)), "nonce")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_bounds_and_shapes() {
        assert!(matches!(parse("a.b"), Err(Rejection::IdTokenMalformed)));
        assert!(matches!(parse("a.b.c.d"), Err(Rejection::IdTokenMalformed)));
        assert!(matches!(parse("!!.b.c"), Err(Rejection::IdTokenMalformed)));
        let long = "a".repeat(MAX_ID_TOKEN_BYTES + 1);
        assert!(matches!(parse(&long), Err(Rejection::IdTokenMalformed)));
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        let token = format!("{h}.{p}.AAAA");
        let jws = parse(&token).unwrap();
        assert_eq!(jws.signing_input, format!("{h}.{p}").as_bytes());
        assert_eq!(jws.signature, vec![0, 0, 0]);
        // Arrays and strings are not JOSE headers.
        let arr = URL_SAFE_NO_PAD.encode(b"[1]");
        assert!(matches!(parse(&format!("{arr}.{p}.AAAA")), Err(Rejection::IdTokenMalformed)));
    }

    /// ring signs with a high `s` about half the time: a verifier that took
    /// only low-`s` signatures would refuse those tokens. Each twin verifies,
    /// and both are keyed as the low one.
    #[test]
    fn an_es256_signature_and_its_twin_share_one_cache_form() {
        let rng = ring::rand::SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let key = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        use signature::KeyPair;
        let public = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, key.public_key().as_ref());
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k"}"#);
        let (mut high, mut low) = (0, 0);
        for i in 0..64 {
            let p = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"U{i}"}}"#));
            let input = format!("{h}.{p}");
            let sig = key.sign(&rng, input.as_bytes()).unwrap();
            let twin_sig = match low_s(sig.as_ref()) {
                Some(twin) => {
                    high += 1;
                    twin
                }
                None => {
                    low += 1;
                    twin(sig.as_ref())
                }
            };
            public.verify(input.as_bytes(), &twin_sig).expect("the twin verifies too");
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
            let twin = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&twin_sig));
            let (a, b) = (parse(&token).unwrap(), parse(&twin).unwrap());
            assert_eq!(a.cache_form(), b.cache_form(), "two cache keys for one signed token");
            assert!(low_s(&URL_SAFE_NO_PAD.decode(a.cache_form().rsplit('.').next().unwrap()).unwrap()).is_none());
        }
        assert!(high > 0 && low > 0, "ring normalises after all: {high} high, {low} low");
        // HS256 tokens are deterministic: keyed as written.
        let hs = format!("{}.{}.AAAA", URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#), URL_SAFE_NO_PAD.encode(b"{}"));
        assert_eq!(parse(&hs).unwrap().cache_form(), hs);
    }

    #[test]
    fn a_remote_answer_must_be_about_the_token_that_was_asked_about() {
        use serde_json::json;
        let token = json!({"iss": LINE_ISSUER, "sub": "Uabc", "aud": "111", "exp": 2000, "iat": 1000, "nonce": "n1"});
        let ok = |a: &Value| answer_matches(a, &token, "111", Some("n1"));
        assert_eq!(ok(&token), Ok(()));
        let with = |k: &str, v: Value| {
            let mut a = token.clone();
            a[k] = v;
            a
        };
        assert_eq!(ok(&with("sub", json!("Uother"))), Err("sub"));
        assert_eq!(ok(&with("aud", json!("222"))), Err("aud"));
        assert_eq!(ok(&with("exp", json!(999_999))), Err("exp"));
        assert_eq!(ok(&with("nonce", json!("n2"))), Err("nonce"));
        assert_eq!(ok(&with("iss", json!("https://evil"))), Err("iss"));
        assert_eq!(ok(&with("iat", json!("1000"))), Err("iat"));
        let mut no_nonce = token.clone();
        no_nonce.as_object_mut().unwrap().remove("nonce");
        assert_eq!(ok(&no_nonce), Err("nonce"));
        assert_eq!(answer_matches(&json!([]), &token, "111", Some("n1")), Err("iss"));
        // Asked without a nonce, about a token without one.
        assert_eq!(answer_matches(&no_nonce, &no_nonce, "111", None), Ok(()));
    }
}
