//! How the proxy reads the LINE Platform's answers: access-token verify and
//! profile (asked concurrently for one verification), and the JWKS.
//!
//! Input (text):
//! ```text
//! 200 200 [Retry-After]                         verify and profile statuses
//! {"client_id":"1234567890","expires_in":2591659}        the verify body (one line)
//! {"userId":"U4af4980629aaaaaaaaaaaaaaaaaaaaaa","displayName":"Brown"}
//! ```
//! (the rest is the profile body), or
//! ```text
//! jwks 200 [Retry-After]
//! {"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"…","y":"…"}]}
//! ```
//!
//! The harness accepts channels 1234567890 and 1657000000, on a clock that stands still.
//!
//! Asserts: `verify_access_token` sends the token to both endpoints and returns
//! exactly what an independent model of LINE's documented answers says:
//! valid only when verify names one of our channels with a positive
//! `expires_in` and the profile has a LINE user id (the identity then carries
//! exactly LINE's values, `expires_in` clamped to 30 days); a 400/401 with LINE's JSON is a rejection, one
//! without it or any other status is an error, never a verdict; a definitive
//! rejection from either call settles it. `Jwks::refresh` keeps exactly the
//! usable P-256 keys and serves them, refuses a set with a `kid` twice or a
//! key off the curve, and a failed or refused refresh keeps the last good
//! set. Nothing panics.
#![no_main]

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fuzz_support::input::{first_line, number};
use fuzz_support::mock_line::{Answer, CHANNEL_IDS, Harness, KID, MAX_ANSWER_BYTES, status};
use libfuzzer_sys::fuzz_target;
use line_auth_proxy::fuzzing::{
    AuthMethod, Endpoint, Identity, LineError, MAX_ACCESS_TOKEN_LIFETIME_SECONDS, Rejection, Verdict,
};
use ring::signature::KeyPair;
use serde_json::Value;

const TOKEN: &str = "fuzz-access-token";

fuzz_target!(|data: &[u8]| {
    let harness = Harness::get();
    let (statuses, rest) = first_line(data);
    let words: Vec<&[u8]> = statuses.split(|&b| b == b' ').filter(|w| !w.is_empty()).collect();
    let line_failed = if words.first() == Some(&&b"jwks"[..]) {
        jwks(harness, &words[1..], rest)
    } else {
        access_token(harness, &words, rest)
    };
    if line_failed {
        harness.forget_failures();
    }
});

/// A verdict, comparable.
#[derive(Debug, PartialEq)]
enum Outcome {
    Valid(Identity),
    Rejected(Rejection),
}

fn answer(status_word: Option<&&[u8]>, retry_after: Option<&&[u8]>, body: &[u8]) -> Answer {
    Answer {
        status: status(status_word.and_then(|w| number(w)).unwrap_or(200)),
        body: body.to_vec(),
        retry_after: retry_after.map(|w| w.to_vec()),
    }
}

/// Returns true when a call to LINE failed (counted toward the back-off).
fn access_token(harness: &Harness, words: &[&[u8]], rest: &[u8]) -> bool {
    let (verify_body, profile_body) = first_line(rest);
    let verify = answer(words.first(), words.get(2), verify_body);
    let profile = answer(words.get(1), words.get(2), profile_body);
    let mut script = harness.healthy_script();
    script.verify = verify.clone();
    script.profile = profile.clone();
    harness.set_script(script);
    harness.take_calls();

    let got = harness.runtime.block_on(harness.local.client.verify_access_token(TOKEN)).map(|v| match v {
        Verdict::Valid(identity) => Outcome::Valid(identity),
        Verdict::Rejected(r) => Outcome::Rejected(r),
    });
    let want = reference_access_token(&verify, &profile, harness.clock.unix_seconds());
    assert_eq!(got, want, "verify {verify:?}, profile {profile:?}");

    let mut calls: Vec<_> = harness.take_calls().into_iter().map(|c| (c.endpoint, c.query, c.authorization)).collect();
    calls.sort();
    let bearer = format!("Bearer {TOKEN}").into_bytes();
    assert_eq!(
        calls,
        [("profile", None, Some(bearer)), ("verify", Some(format!("access_token={TOKEN}")), None)],
        "the calls to LINE"
    );
    verify.counts_as_failure() || profile.counts_as_failure()
}

/// What one LINE call yields: LINE's answer, its rejection, or no answer.
enum Read<T> {
    Answer(T),
    Rejected(Rejection),
}

fn reference_access_token(verify: &Answer, profile: &Answer, now: u64) -> Result<Outcome, LineError> {
    let verify = read(Endpoint::Verify, verify, |v| {
        let client_id = match v.get("client_id")? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let Value::Number(n) = v.get("expires_in")? else { return None };
        let expires_in = n.as_i64().unwrap_or_else(|| n.as_f64().unwrap() as i64);
        Some((client_id, expires_in))
    });
    let profile = read(Endpoint::Profile, profile, |v| {
        let user_id = v.get("userId")?.as_str().filter(|u| is_line_user_id(u))?.to_owned();
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some((user_id, text("displayName"), text("pictureUrl")))
    });
    let (client_id, expires_in) = match verify {
        Ok(Read::Answer(v)) => v,
        Ok(Read::Rejected(r)) => return Ok(Outcome::Rejected(r)),
        // A rejection from the profile call settles it even when verify failed.
        Err(e) => {
            return match profile {
                Ok(Read::Rejected(r)) => Ok(Outcome::Rejected(r)),
                _ => Err(e),
            };
        }
    };
    if !CHANNEL_IDS.contains(&client_id.as_str()) {
        return Ok(Outcome::Rejected(Rejection::WrongChannel));
    }
    if expires_in <= 0 {
        return Ok(Outcome::Rejected(Rejection::NotPositiveExpiry));
    }
    let (user_id, display_name, picture_url) = match profile? {
        Read::Answer(p) => p,
        Read::Rejected(r) => return Ok(Outcome::Rejected(r)),
    };
    Ok(Outcome::Valid(Identity {
        user_id,
        display_name,
        picture_url,
        email: None,
        channel_id: client_id,
        method: AuthMethod::AccessToken,
        // LINE documents at most 30 days; a longer lifetime is clamped to it.
        expires_at: now.saturating_add((expires_in as u64).min(MAX_ACCESS_TOKEN_LIFETIME_SECONDS)),
        amr: Vec::new(),
    }))
}

/// One call's answer: 429 is a rate limit, 200 is parsed by `parse` (`None`:
/// not LINE's documented JSON), anything else a refusal or an error.
fn read<T>(endpoint: Endpoint, answer: &Answer, parse: impl Fn(&Value) -> Option<T>) -> Result<Read<T>, LineError> {
    let body = answer.body_sent();
    let bad = LineError::BadResponse(endpoint);
    if body.len() > MAX_ANSWER_BYTES {
        return Err(bad);
    }
    match answer.status {
        429 => Err(LineError::RateLimited { endpoint, retry_after: retry_after(answer) }),
        200 => {
            let v: Value = serde_json::from_slice(body).map_err(|_| bad.clone())?;
            parse(&v).map(Read::Answer).ok_or(bad)
        }
        403 if endpoint == Endpoint::Profile => Ok(Read::Rejected(Rejection::NoProfileScope)),
        400 | 401 => {
            let v: Value = serde_json::from_slice(body).map_err(|_| bad.clone())?;
            let Some(o) = v.as_object().filter(|o| {
                o.contains_key("error") || o.contains_key("error_description") || o.contains_key("message")
            }) else {
                return Err(bad);
            };
            let text = match o.get("error_description") {
                Some(d) => d.as_str(),
                None => o.get("message").and_then(Value::as_str),
            };
            let expired = text.is_some_and(|t| t.to_ascii_lowercase().contains("expired"));
            Ok(Read::Rejected(if expired { Rejection::Expired } else { Rejection::Invalid }))
        }
        status => Err(LineError::Status { endpoint, status }),
    }
}

fn retry_after(answer: &Answer) -> Option<u64> {
    let value = answer.retry_after.as_deref()?;
    http::HeaderValue::from_bytes(value).ok()?;
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

fn is_line_user_id(s: &str) -> bool {
    s.len() == 33 && s.starts_with('U') && s[1..].chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Returns true when the call to LINE failed (counted toward the back-off).
fn jwks(harness: &Harness, words: &[&[u8]], body: &[u8]) -> bool {
    let fuzzed = answer(words.first(), words.get(1), body);
    let jwks = harness.local.jwks.as_ref().unwrap();
    let mut script = harness.healthy_script();
    harness.set_script(script.clone());
    assert_eq!(harness.runtime.block_on(jwks.refresh()), Ok(1), "the good set loads");
    script.jwks = fuzzed.clone();
    harness.set_script(script);

    let got = harness.runtime.block_on(jwks.refresh());
    let want = match fuzzed.status {
        429 => Err(LineError::RateLimited { endpoint: Endpoint::Jwks, retry_after: retry_after(&fuzzed) }),
        200 => match reference_jwks(fuzzed.body_sent()) {
            Some(set) if !set.is_empty() => Ok(set),
            _ => Err(LineError::BadResponse(Endpoint::Jwks)),
        },
        status => Err(LineError::Status { endpoint: Endpoint::Jwks, status }),
    };
    assert_eq!(got, want.as_ref().map(HashMap::len).map_err(Clone::clone), "JWKS answer {fuzzed:?}");
    let served = |kid: &str| harness.runtime.block_on(jwks.key(kid)).map(|k| k.map(|k| k.to_vec()));
    match want {
        Ok(set) => {
            for (kid, point) in set {
                assert_eq!(served(&kid), Ok(Some(point)), "key {kid:?}");
            }
        }
        Err(_) => {
            let good = harness.es256.public_key().as_ref().to_vec();
            assert_eq!(served(KID), Ok(Some(good)), "a failed refresh dropped the last good set");
        }
    }
    harness.take_calls();
    fuzzed.counts_as_failure()
}

/// The EC P-256 signing keys of a JWK set (RFC 7517, RFC 7518 §6.2), by
/// `kid`; `None` when the body is not a JWK set or the set must be refused
/// whole: a `kid` twice (among any entries), or a P-256 signing key whose
/// coordinates are not two 32-byte base64url values naming a point of the curve.
fn reference_jwks(body: &[u8]) -> Option<HashMap<String, Vec<u8>>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let mut set = HashMap::new();
    let mut kids = std::collections::HashSet::new();
    for k in v.get("keys")?.as_array()? {
        let field = |name: &str| k.get(name).and_then(Value::as_str);
        if let Some(kid) = field("kid")
            && !kids.insert(kid.to_owned())
        {
            return None;
        }
        if field("kty") != Some("EC") || field("crv") != Some("P-256") {
            continue;
        }
        if field("alg").is_some_and(|a| a != "ES256") || field("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let (Some(kid), Some(x), Some(y)) = (field("kid"), field("x"), field("y")) else { continue };
        let (Ok(x), Ok(y)) = (URL_SAFE_NO_PAD.decode(x), URL_SAFE_NO_PAD.decode(y)) else { return None };
        if x.len() != 32 || y.len() != 32 {
            return None;
        }
        let point = [&[4u8][..], &x, &y].concat();
        if !on_curve(&point) {
            return None;
        }
        set.insert(kid.to_owned(), point);
    }
    Some(set)
}

/// Whether `point` is a point of P-256 other than infinity, as ring's ECDH
/// checks a peer's public key. (The proxy uses the same check: this model has
/// no big-integer arithmetic of its own for it.)
fn on_curve(point: &[u8]) -> bool {
    use ring::agreement;
    let rng = ring::rand::SystemRandom::new();
    let private = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).unwrap();
    agreement::agree_ephemeral(private, &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, point), |_| ())
        .is_ok()
}
