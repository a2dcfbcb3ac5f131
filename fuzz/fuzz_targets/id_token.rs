//! ID-token parsing, signature and claim checks, local and remote.
//!
//! Input (text): the first line names the mode.
//! ```text
//! raw                       the rest is the token as the client sent it
//! eyJhbGciOi...
//!
//! signed                    header JSON, payload JSON, then how to sign:
//! {"alg":"HS256"}           hs256 (the channel secret), es256 (the JWKS key),
//! {"iss":"https://access.line.me","aud":"1234567890",...}
//! hs256                     hs256-other / es256-other (another key), or the
//!                           signature bytes themselves
//!
//! remote                    claims of the token sent to LINE, LINE's status
//! {"aud":"1234567890","nonce":"n"}    [Retry-After], then LINE's answer body
//! 200
//! {"iss":"https://access.line.me",...}
//! ```
//!
//! The harness accepts channels 1234567890 (with an HS256 secret) and
//! 1657000000 (without), with 60 seconds of clock skew, on a clock that stands still.
//!
//! Asserts: `parse` accepts exactly compact JWS of three base64url parts with
//! JSON-object header and payload, at most 8 KiB; local verification gives
//! exactly the verdict of an independent model (forbidden header keys and other
//! algorithms refused before any key; ES256 only with the JWKS key, HS256 only
//! with the audience's secret; a bad signature never passes; then issuer,
//! audience, expiry, issue time, age, `nbf` and subject, in that order); remote
//! verification sends LINE the token, an accepted `client_id` and the nonce only
//! when there is one, and turns LINE's answer into exactly the verdict or
//! error the model says (a 200 that is not about the token sent is unavailability).
//! Nothing panics.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fuzz_support::input::{first_line, number};
use fuzz_support::mock_line::{Answer, CHANNEL_IDS, CHANNEL_SECRET, CLOCK_SKEW_SECONDS, Harness, KID, status};
use libfuzzer_sys::fuzz_target;
use line_auth_proxy::fuzzing::{
    Endpoint, IdClaims, LineError, Rejection, UNKNOWN_KID_REFETCH_INTERVAL, parse_id_token,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair, UnparsedPublicKey};
use ring::{hmac, signature};
use serde_json::Value;

const ISSUER: &str = "https://access.line.me";
const MAX_TOKEN_BYTES: usize = 8192;
/// `line.max_id_token_age_seconds` as the harness configures it (the default).
const MAX_ID_TOKEN_AGE_SECONDS: u64 = 86_400;

fuzz_target!(|data: &[u8]| {
    let harness = Harness::get();
    let (mode, rest) = first_line(data);
    match mode {
        b"raw" => raw(harness, rest),
        b"signed" => signed(harness, rest),
        b"remote" => remote(harness, rest),
        other => match other.iter().map(|&b| b as usize).sum::<usize>() % 3 {
            0 => raw(harness, rest),
            1 => signed(harness, rest),
            _ => remote(harness, rest),
        },
    }
});

fn raw(harness: &Harness, rest: &[u8]) {
    let token = String::from_utf8_lossy(rest.strip_suffix(b"\n").unwrap_or(rest));
    check_local(harness, &token);
}

fn signed(harness: &Harness, rest: &[u8]) {
    let (header, rest) = first_line(rest);
    let (payload, how) = first_line(rest);
    let how = how.strip_suffix(b"\n").unwrap_or(how);
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let hs256 =
        |secret: &[u8]| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes()).as_ref().to_vec();
    let signature = match how {
        b"hs256" => hs256(CHANNEL_SECRET),
        b"hs256-other" => hs256(b"another channel's secret"),
        b"es256" => harness.es256.sign(&SystemRandom::new(), input.as_bytes()).expect("signing").as_ref().to_vec(),
        b"es256-other" => {
            let rng = SystemRandom::new();
            let pkcs8 =
                signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let other =
                signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            other.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
        }
        bytes => bytes.to_vec(),
    };
    check_local(harness, &format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)));
}

/// A compact JWS split and decoded as RFC 7515 §7.1 says, or `None`.
struct Parts<'a> {
    header: Value,
    payload: Value,
    signing_input: &'a [u8],
    signature: Vec<u8>,
}

fn reference_parse(token: &str) -> Option<Parts<'_>> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else { return None };
    let object = |part: &str| {
        let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
        serde_json::from_slice::<Value>(&bytes).ok().filter(Value::is_object)
    };
    Some(Parts {
        header: object(h)?,
        payload: object(p)?,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature: URL_SAFE_NO_PAD.decode(s).ok()?,
    })
}

fn check_local(harness: &Harness, token: &str) {
    let parsed = parse_id_token(token);
    let reference = reference_parse(token);
    assert_eq!(parsed.is_ok(), reference.is_some(), "parse({token:?}) = {:?}", parsed.as_ref().err());
    let (Ok(jws), Some(parts)) = (parsed, reference) else { return };
    assert_eq!(jws.unverified_nonce(), parts.payload.get("nonce").and_then(Value::as_str), "the unverified nonce");
    let verifier = harness.local.id_tokens.as_ref().unwrap();
    // An unknown kid is refetched at most once per window, and a kid unknown
    // while the window's refetch is spent is a 503, not a verdict: let every
    // input's refetch be due, so that the verdict below is the proxy's last
    // word (the model reads the same clock).
    if parts.header.get("kid").and_then(Value::as_str) != Some(KID) {
        harness.clock.advance(UNKNOWN_KID_REFETCH_INTERVAL);
    }
    let got = harness.runtime.block_on(verifier.verify(&jws));
    let want = reference_local(harness, &parts);
    assert_eq!(got, Ok(want), "local verification of {token:?}");
    // Only an unknown kid makes the proxy ask LINE, and then only for the JWKS.
    for call in harness.take_calls() {
        assert_eq!(call.endpoint, "jwks", "local verification called LINE: {call:?}");
    }
}

/// The local verifier's contract, written out.
fn reference_local(harness: &Harness, parts: &Parts<'_>) -> Result<IdClaims, Rejection> {
    let header = parts.header.as_object().unwrap();
    if ["jku", "x5u", "jwk", "x5c", "crit"].iter().any(|k| header.contains_key(*k)) {
        return Err(Rejection::IdTokenAlgorithm);
    }
    let signed = match header.get("alg").and_then(Value::as_str) {
        Some("ES256") => {
            if header.get("kid").and_then(Value::as_str) != Some(KID) {
                return Err(Rejection::UnknownKey);
            }
            let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, harness.es256.public_key().as_ref());
            key.verify(parts.signing_input, &parts.signature).is_ok()
        }
        Some("HS256") => {
            if parts.payload.get("aud").and_then(Value::as_str) != Some(CHANNEL_IDS[0]) {
                return Err(Rejection::NoChannelSecret);
            }
            let key = hmac::Key::new(hmac::HMAC_SHA256, CHANNEL_SECRET);
            hmac::verify(&key, parts.signing_input, &parts.signature).is_ok()
        }
        _ => return Err(Rejection::IdTokenAlgorithm),
    };
    if !signed {
        return Err(Rejection::BadSignature);
    }
    reference_claims(&parts.payload, harness.clock.unix_seconds())
}

/// OIDC Core §3.1.3.7 as the proxy applies it, in its order.
fn reference_claims(p: &Value, now: u64) -> Result<IdClaims, Rejection> {
    let text = |k: &str| p.get(k).and_then(Value::as_str);
    let whole = |k: &str| p.get(k).and_then(Value::as_u64);
    if text("iss") != Some(ISSUER) {
        return Err(Rejection::WrongIssuer);
    }
    let aud = text("aud").filter(|a| CHANNEL_IDS.contains(a)).ok_or(Rejection::WrongChannel)?;
    let exp = whole("exp").ok_or(Rejection::IdTokenMalformed)?;
    if u128::from(exp) + u128::from(CLOCK_SKEW_SECONDS) <= u128::from(now) {
        return Err(Rejection::Expired);
    }
    let iat = whole("iat").ok_or(Rejection::IdTokenMalformed)?;
    if u128::from(iat) > u128::from(now) + u128::from(CLOCK_SKEW_SECONDS) {
        return Err(Rejection::IssuedInFuture);
    }
    if u128::from(iat) + u128::from(MAX_ID_TOKEN_AGE_SECONDS) + u128::from(CLOCK_SKEW_SECONDS) < u128::from(now) {
        return Err(Rejection::TooOld);
    }
    if let Some(nbf) = p.get("nbf") {
        match nbf.as_u64() {
            None => return Err(Rejection::IdTokenMalformed),
            Some(nbf) if u128::from(nbf) > u128::from(now) + u128::from(CLOCK_SKEW_SECONDS) => {
                return Err(Rejection::NotYetValid);
            }
            Some(_) => {}
        }
    }
    let sub = text("sub")
        .filter(|s| s.len() == 33 && s.starts_with('U') && s[1..].chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')))
        .ok_or(Rejection::BadSubject)?;
    Ok(IdClaims {
        sub: sub.to_owned(),
        aud: aud.to_owned(),
        exp,
        nonce: text("nonce").map(str::to_owned),
        name: text("name").map(str::to_owned),
        picture: text("picture").map(str::to_owned),
        email: text("email").map(str::to_owned),
        amr: match p.get("amr").and_then(Value::as_array) {
            Some(list) => list.iter().filter_map(Value::as_str).take(8).map(str::to_owned).collect(),
            None => Vec::new(),
        },
    })
}

/// Whether LINE's 200 is about the token that was sent: its `iss` is LINE's,
/// `sub`, `exp` and `nonce` are the token's own, `aud` is the `client_id`
/// asked (the token's), `iat` is a number, and a nonce that was sent is the one
/// answered.
fn answer_is_about(answer: &Value, token: &Value, client_id: &str) -> bool {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let whole = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
    let sent_nonce = text(token, "nonce").filter(|n| !n.is_empty());
    text(answer, "iss").as_deref() == Some(ISSUER)
        && text(answer, "sub").is_some()
        && text(answer, "sub") == text(token, "sub")
        && text(answer, "aud").as_deref() == Some(client_id)
        && whole(answer, "exp").is_some()
        && whole(answer, "exp") == whole(token, "exp")
        && whole(answer, "iat").is_some()
        && text(answer, "nonce") == text(token, "nonce")
        && (sent_nonce.is_none() || text(answer, "nonce") == sent_nonce)
}

fn remote(harness: &Harness, rest: &[u8]) {
    let (claims, rest) = first_line(rest);
    let (status_line, body) = first_line(rest);
    let mut words = status_line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let answer = Answer {
        status: status(words.next().and_then(number).unwrap_or(200)),
        body: body.to_vec(),
        retry_after: words.next().map(<[u8]>::to_vec),
    };
    let token = format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#), URL_SAFE_NO_PAD.encode(claims));
    let parsed = parse_id_token(&token);
    let payload = serde_json::from_slice::<Value>(claims).ok().filter(Value::is_object);
    assert_eq!(parsed.is_ok(), payload.is_some() && token.len() <= MAX_TOKEN_BYTES, "parse({token:?})");
    let (Ok(jws), Some(payload)) = (parsed, payload) else { return };

    let mut script = harness.healthy_script();
    script.verify_id_token = answer.clone();
    harness.set_script(script);
    harness.take_calls();
    let verifier = harness.remote.id_tokens.as_ref().unwrap();
    let got = harness.runtime.block_on(verifier.verify(&jws));
    let calls = harness.take_calls();

    let Some(aud) = payload.get("aud").and_then(Value::as_str).filter(|a| CHANNEL_IDS.contains(a)) else {
        assert_eq!(got, Ok(Err(Rejection::WrongChannel)), "a foreign audience");
        assert!(calls.is_empty(), "LINE was asked about a foreign audience: {calls:?}");
        return;
    };
    let [call] = calls.as_slice() else { panic!("one call to LINE expected: {calls:?}") };
    assert_eq!(call.endpoint, "verify_id_token");
    let mut form = form_fields(&call.body);
    form.sort();
    let mut want_form = vec![("client_id".to_owned(), aud.to_owned()), ("id_token".to_owned(), token.clone())];
    if let Some(nonce) = payload.get("nonce").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        want_form.push(("nonce".to_owned(), nonce.to_owned()));
    }
    want_form.sort();
    assert_eq!(form, want_form, "the form sent to LINE");

    let want = match answer.status {
        429 => Err(LineError::RateLimited { endpoint: Endpoint::VerifyIdToken, retry_after: retry_after(&answer) }),
        200 => match serde_json::from_slice::<Value>(answer.body_sent()).ok().filter(Value::is_object) {
            Some(body) if answer_is_about(&body, &payload, aud) => {
                Ok(reference_claims(&body, harness.clock.unix_seconds()))
            }
            Some(_) => Err(LineError::BadResponse(Endpoint::VerifyIdToken)),
            None => Err(LineError::BadResponse(Endpoint::VerifyIdToken)),
        },
        s => reference_refusal(Endpoint::VerifyIdToken, s, answer.body_sent()).map(Err),
    };
    assert_eq!(got, want, "LINE answered {} {:?}", answer.status, String::from_utf8_lossy(&answer.body));
    if answer.counts_as_failure() {
        harness.forget_failures();
    }
}

/// LINE's `Retry-After` as the proxy reads it: whole seconds, else none.
fn retry_after(answer: &Answer) -> Option<u64> {
    let value = answer.retry_after.as_deref()?;
    http::HeaderValue::from_bytes(value).ok()?;
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// How a refusal (any status but 200 and 429) is read.
fn reference_refusal(endpoint: Endpoint, status: u16, body: &[u8]) -> Result<Rejection, LineError> {
    if status == 403 && endpoint == Endpoint::Profile {
        return Ok(Rejection::NoProfileScope);
    }
    if status != 400 && status != 401 {
        return Err(LineError::Status { endpoint, status });
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| LineError::BadResponse(endpoint))?;
    let Some(object) =
        v.as_object().filter(|o| ["error", "error_description", "message"].iter().any(|k| o.contains_key(*k)))
    else {
        return Err(LineError::BadResponse(endpoint));
    };
    let text = match object.get("error_description") {
        Some(d) => d.as_str(),
        None => object.get("message").and_then(Value::as_str),
    };
    Ok(match (endpoint, text) {
        (Endpoint::VerifyIdToken, Some("Invalid IdToken Issuer.")) => Rejection::WrongIssuer,
        (Endpoint::VerifyIdToken, Some("IdToken expired.")) => Rejection::Expired,
        (Endpoint::VerifyIdToken, Some("Invalid IdToken Audience.")) => Rejection::WrongChannel,
        (Endpoint::VerifyIdToken, Some("Invalid IdToken Nonce.")) => Rejection::NonceMismatch,
        (Endpoint::VerifyIdToken, Some("Invalid IdToken Subject Identifier.")) => Rejection::BadSubject,
        (Endpoint::VerifyIdToken, _) => Rejection::Invalid,
        (_, Some(t)) if t.to_ascii_lowercase().contains("expired") => Rejection::Expired,
        _ => Rejection::Invalid,
    })
}

/// `application/x-www-form-urlencoded` fields, decoded.
fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &[u8]| {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    out.push(u8::from_str_radix(std::str::from_utf8(&s[i + 1..i + 3]).unwrap(), 16).unwrap());
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
    };
    body.split(|&b| b == b'&')
        .filter(|f| !f.is_empty())
        .map(|f| match f.iter().position(|&b| b == b'=') {
            Some(i) => (decode(&f[..i]), decode(&f[i + 1..])),
            None => (decode(f), String::new()),
        })
        .collect()
}
