//! Signed identity assertions, checked by an independent verifier (the
//! `jsonwebtoken` crate) with nothing but the keys the admin listener
//! publishes: what an upstream does. Expired and wrong-audience assertions are
//! refused by that verifier; a client-sent assertion never survives; rotation
//! publishes both keys; anonymous requests carry none; a forward-auth 200
//! carries one; and one verdict's assertion is reused, not re-signed.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use support::signing_keys::{ed25519_key, es256_key, key_file};
use support::*;

const HEADER: &str = "x-line-identity-jwt";

async fn assertion_env(keys: &std::path::Path, extra: &str) -> Env {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let text = config_text(
        &line.base_url(),
        &upstream.url(),
        &format!(
            "[assertion]\nenabled = true\nkey_file = {keys:?}\n{extra}\
             [[routes]]\npath_prefix = \"/public/\"\nauth = \"none\"\n\
             [[routes]]\npath_prefix = \"/maybe/\"\nauth = \"optional\"\n"
        ),
    );
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    Env { clock, line, upstream, proxy }
}

async fn jwks(e: &Env) -> JwkSet {
    let r = client().get(e.proxy.admin_url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "public, max-age=300");
    r.json().await.unwrap()
}

/// Verifies like an upstream: key by `kid` from the published set, the
/// algorithm pinned to the key's, `aud` and `iss` required.
fn verify(set: &JwkSet, jws: &str, aud: &str, now: u64) -> Result<serde_json::Value, String> {
    let header = jsonwebtoken::decode_header(jws).map_err(|e| e.to_string())?;
    let jwk = set.find(header.kid.as_deref().ok_or("no kid")?).ok_or("unknown kid")?;
    let alg = match jwk.common.key_algorithm {
        Some(jsonwebtoken::jwk::KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        other => return Err(format!("unexpected key algorithm {other:?}")),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = Validation::new(alg);
    v.set_audience(&[aud]);
    v.set_issuer(&["line-auth-proxy"]);
    v.set_required_spec_claims(&["exp", "iat", "aud", "iss", "sub"]);
    v.leeway = 0;
    // The proxy's clock is a test clock: validate `exp` against it ourselves.
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(jws, &key, &v).map_err(|e| e.to_string())?.claims;
    if claims["exp"].as_u64().unwrap() <= now {
        return Err("expired".into());
    }
    Ok(claims)
}

#[tokio::test]
async fn upstreams_verify_the_assertion_with_the_published_keys_es256_and_eddsa() {
    for key in [es256_key(), ed25519_key()] {
        let e = assertion_env(&key_file(&[&key]), "").await;
        let r = client().get(e.proxy.url("/api/x")).bearer_auth(TOKEN).header(HEADER, "forged.client.jwt").send().await;
        assert_eq!(r.unwrap().status(), 200);
        let seen = e.upstream.last();
        let jws = seen.headers[HEADER].to_str().unwrap().to_owned();
        assert_ne!(jws, "forged.client.jwt", "the client's assertion reached the upstream");
        assert_eq!(seen.headers.get_all(HEADER).iter().count(), 1);
        let set = jwks(&e).await;
        let now = e.clock.unix_seconds();
        let claims = verify(&set, &jws, &e.upstream.url(), now).unwrap();
        assert_eq!(claims["sub"], USER);
        assert_eq!(claims["line_channel_id"], CHANNEL);
        assert_eq!(claims["auth_method"], "access_token");
        assert!(claims.get("name").is_none(), "name without include_name");
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
        let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
        assert!(iat == now && exp - iat <= 300, "{iat} {exp}");
        // Refused by the verifier: another audience, and once expired.
        assert!(verify(&set, &jws, "http://another-backend", now).unwrap_err().contains("Audience"));
        assert_eq!(verify(&set, &jws, &e.upstream.url(), exp).unwrap_err(), "expired");
        // A tampered payload does not verify.
        let mut parts: Vec<String> = jws.split('.').map(str::to_owned).collect();
        let forged = serde_json::json!({"sub": "Uffffffffffffffffffffffffffffffff", "aud": e.upstream.url(), "iss": "line-auth-proxy", "iat": now, "exp": now + 60});
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string());
        assert!(verify(&set, &parts.join("."), &e.upstream.url(), now).is_err());
    }
}

#[tokio::test]
async fn one_verdicts_assertion_is_reused_until_a_minute_before_it_expires() {
    let e =
        assertion_env(&key_file(&[&ed25519_key()]), "audience = \"https://orders.internal\"\ninclude_name = true\n")
            .await;
    let sent = || async {
        assert_eq!(e.status("/api/x", TOKEN).await, 200);
        e.upstream.last().headers[HEADER].to_str().unwrap().to_owned()
    };
    let first = sent().await;
    assert_eq!(sent().await, first, "signed again for a cached verdict");
    let claims = verify(&jwks(&e).await, &first, "https://orders.internal", e.clock.unix_seconds()).unwrap();
    assert_eq!(claims["name"], "Brown");
    e.clock.advance(Duration::from_secs(241));
    // The verdict's cache entry (60 s) is gone by now: a new verdict, a new assertion.
    let later = sent().await;
    assert_ne!(later, first);
    let claims = verify(&jwks(&e).await, &later, "https://orders.internal", e.clock.unix_seconds()).unwrap();
    assert_eq!(claims["iat"].as_u64(), Some(e.clock.unix_seconds()));
}

#[tokio::test]
async fn anonymous_requests_carry_no_assertion_and_forward_auth_answers_carry_one() {
    let key = key_file(&[&es256_key()]);
    let e = assertion_env(&key, "[forward_auth]\nenabled = true\n").await;
    for path in ["/public/x", "/maybe/x"] {
        let r = client().get(e.proxy.url(path)).header(HEADER, "forged").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(e.upstream.last().headers.get(HEADER).is_none(), "{path}: an anonymous request carried an assertion");
    }
    let r = client().get(e.proxy.url("/_auth/verify")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let jws = r.headers()[HEADER].to_str().unwrap().to_owned();
    let claims = verify(&jwks(&e).await, &jws, &e.upstream.url(), e.clock.unix_seconds()).unwrap();
    assert_eq!(claims["sub"], USER);
}

#[tokio::test]
async fn rotation_publishes_both_keys_and_the_first_signs() {
    let (old, new) = (es256_key(), ed25519_key());
    let before = assertion_env(&key_file(&[&old]), "").await;
    assert_eq!(before.status("/api/x", TOKEN).await, 200);
    let old_jws = before.upstream.last().headers[HEADER].to_str().unwrap().to_owned();
    // Step 2 of a rotation: the new key first, the old one still published.
    let during = assertion_env(&key_file(&[&new, &old]), "").await;
    let set = jwks(&during).await;
    assert_eq!(set.keys.len(), 2);
    assert_eq!(during.status("/api/x", TOKEN).await, 200);
    let new_jws = during.upstream.last().headers[HEADER].to_str().unwrap().to_owned();
    assert_eq!(jsonwebtoken::decode_header(&new_jws).unwrap().alg, Algorithm::EdDSA, "the first key signs");
    let now = during.clock.unix_seconds();
    verify(&set, &new_jws, &during.upstream.url(), now).unwrap();
    // An assertion of the old key still verifies against the rotated set...
    verify(&set, &old_jws, &before.upstream.url(), before.clock.unix_seconds()).unwrap();
    // ...until the old key is removed.
    let after = assertion_env(&key_file(&[&new]), "").await;
    let err = verify(&jwks(&after).await, &old_jws, &before.upstream.url(), now).unwrap_err();
    assert_eq!(err, "unknown kid");
}
