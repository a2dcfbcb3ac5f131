//! Login with LINE ID tokens: local (ES256 via JWKS, HS256 with the channel
//! secret) and remote verification, single-use nonces, and every refusal — each
//! proving the upstream was not reached.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn nonce_endpoint_issues_long_random_single_use_nonces() {
    let e = login_env("", "").await;
    let r = client().get(e.proxy.url("/auth/nonce")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v: Value = r.json().await.unwrap();
    let nonce = v["nonce"].as_str().unwrap();
    assert!(nonce.len() >= 22, "{nonce}");
    assert!(nonce.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(v["expires_in"], 300);
    assert_ne!(e.nonce().await, e.nonce().await);
    // Served by the proxy itself, never forwarded; only GET.
    let r = client().post(e.proxy.url("/auth/nonce")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "GET");
    assert_eq!(json_error(r, 405).await, "invalid_request");
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn the_nonce_endpoints_405_counts_as_a_bad_request() {
    let e = login_env("", "").await;
    for method in [reqwest::Method::POST, reqwest::Method::HEAD, reqwest::Method::DELETE] {
        let r = client().request(method.clone(), e.proxy.url("/auth/nonce")).send().await.unwrap();
        assert_eq!(r.status(), 405, "{method}");
    }
    let m = e.proxy.metrics().await;
    let series = |outcome: &str| format!("line_auth_proxy_requests_total{{outcome=\"{outcome}\",auth=\"none\"}}");
    assert_eq!(metric(&m, &series("bad_request")), 3.0, "{m}");
    assert_eq!(metric(&m, &series("internal_error")), 0.0, "{m}");
    assert!(!m.contains("outcome=\"internal_error\",auth=\"none\"} 1"), "{m}");
}

#[tokio::test]
async fn es256_login_passes_once_with_lines_identity() {
    let e = login_env("", "").await;
    let nonce = e.nonce().await;
    let mut c = e.claims(Some(&nonce));
    c["email"] = "taro.line@example.com".into();
    c["name"] = "山田 太郎".into();
    let token = e.line.sign_es256(&c);
    let r = client()
        .post(e.proxy.url("/login"))
        .bearer_auth(&token)
        .header("X-Line-User-Id", "Uattacker")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = e.upstream.last();
    assert_eq!(seen.headers["x-line-user-id"], USER);
    assert_eq!(seen.headers["x-line-auth-method"], "id_token");
    assert_eq!(seen.headers["x-line-channel-id"], CHANNEL);
    assert_eq!(seen.headers["x-line-email"], "taro.line@example.com");
    assert_eq!(seen.headers["x-line-display-name"], "%E5%B1%B1%E7%94%B0%20%E5%A4%AA%E9%83%8E");
    assert_eq!(seen.headers["x-line-picture-url"], "https://profile.line-scdn.net/0hID");
    assert_eq!(seen.headers["x-line-expires-at"], c["exp"].to_string().as_str());
    assert!(seen.headers.get("authorization").is_none());
    // Replay: the same token again is refused, and so is another token with that nonce.
    assert_eq!(e.login(&token).await, 401);
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(Some(&nonce)))).await, 401);
    assert_eq!(e.upstream.hits(), 1);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"nonce_unknown_or_used\"}"), 2.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_nonces_total{event=\"consumed\"}"), 1.0, "{m}");
    // Local mode never calls LINE's verify endpoint.
    assert_eq!(e.line.verify_id_token_calls(), 0);
}

#[tokio::test]
async fn unknown_and_missing_nonces_are_refused() {
    let e = login_env("", "").await;
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(Some("never-issued-by-the-proxy")))).await, 401);
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(None))).await, 401);
    assert_eq!(e.upstream.hits(), 0);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"nonce_missing\"}"), 1.0, "{m}");
}

#[tokio::test]
async fn expired_nonce_is_refused() {
    let e = login_env("", "[nonce]\nttl_seconds = 1\n").await;
    let nonce = e.nonce().await;
    e.clock.advance(Duration::from_secs(1));
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(Some(&nonce)))).await, 401);
    assert_eq!(e.upstream.hits(), 0);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"nonce_expired\"}"), 1.0, "{m}");
}

#[tokio::test]
async fn a_forged_token_cannot_burn_a_nonce() {
    let e = login_env("", "").await;
    let nonce = e.nonce().await;
    let good = e.line.sign_es256(&e.claims(Some(&nonce)));
    // Same claims, signature of another token.
    let other = e.line.sign_es256(&e.claims(Some("x")));
    let forged = format!("{}.{}", good.rsplit_once('.').unwrap().0, other.rsplit_once('.').unwrap().1);
    assert_eq!(e.login(&forged).await, 401);
    assert_eq!(e.upstream.hits(), 0);
    assert_eq!(e.login(&good).await, 200);
}

#[tokio::test]
async fn concurrent_replays_have_exactly_one_winner() {
    let e = login_env("", "").await;
    let token = e.line.sign_es256(&e.claims(Some(&e.nonce().await)));
    let token: &'static str = Box::leak(token.into_boxed_str());
    let c = client();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (c, url) = (c.clone(), e.proxy.url("/login"));
            tokio::spawn(async move { c.post(url).bearer_auth(token).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            401 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(e.upstream.hits(), 1);
}

async fn assert_refused(e: &Env, token: &str, reason: &str) {
    let nonce_hits = e.upstream.hits();
    let r = client().post(e.proxy.url("/login")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_eq!(json_error(r, 401).await, "invalid_token");
    assert_eq!(e.upstream.hits(), nonce_hits, "a refused token reached the upstream");
    let m = e.proxy.metrics().await;
    assert!(
        metric(&m, &format!("line_auth_proxy_auth_rejections_total{{reason=\"{reason}\"}}")) >= 1.0,
        "no rejection counted as {reason}:\n{m}"
    );
}

#[tokio::test]
async fn wrong_claims_are_refused() {
    let e = login_env("", "").await;
    let now = e.clock.unix_seconds();
    // One live nonce serves every case: a refused token never consumes it.
    let nonce = e.nonce().await;
    let with = |k: &str, v: Value| {
        let mut c = e.claims(Some(&nonce));
        c[k] = v;
        c
    };
    assert_refused(&e, &e.line.sign_es256(&with("aud", OTHER_CHANNEL.into())), "wrong_channel").await;
    assert_refused(&e, &e.line.sign_es256(&with("aud", json!(1234567890))), "wrong_channel").await;
    assert_refused(&e, &e.line.sign_es256(&with("iss", "https://evil.example".into())), "id_token_wrong_issuer").await;
    assert_refused(&e, &e.line.sign_es256(&with("exp", json!(now - 3600))), "token_expired").await;
    assert_refused(&e, &e.line.sign_es256(&with("iat", json!(now + 3600))), "id_token_iat_in_future").await;
    assert_refused(&e, &e.line.sign_es256(&with("sub", "U1234".into())), "id_token_bad_subject").await;
    assert_refused(&e, &e.line.sign_es256(&with("sub", format!("{USER} ").into())), "id_token_bad_subject").await;
}

#[tokio::test]
async fn clock_skew_leeway_applies_to_exp_and_iat() {
    let e = login_env("clock_skew_seconds = 60\n", "").await;
    let now = e.clock.unix_seconds();
    let mut c = e.claims(Some(&e.nonce().await));
    c["exp"] = json!(now - 10);
    c["iat"] = json!(now + 10);
    assert_eq!(e.login(&e.line.sign_es256(&c)).await, 200);
    let mut c = e.claims(Some(&e.nonce().await));
    c["exp"] = json!(now - 120);
    assert_eq!(e.login(&e.line.sign_es256(&c)).await, 401);
}

#[tokio::test]
async fn algorithm_tricks_are_refused() {
    let e = login_env("", "").await;
    let nonce = e.nonce().await;
    let c = e.claims(Some(&nonce));
    let b64 = |v: &Value| base64_url(v.to_string().as_bytes());
    // alg: none, unsigned.
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&c));
    assert_refused(&e, &none, "id_token_algorithm").await;
    let none_sig = format!("{}.{}.AA", b64(&json!({"alg": "none"})), b64(&c));
    assert_refused(&e, &none_sig, "id_token_algorithm").await;
    // HS256 "signed" with the public key's bytes (classic RS/ES → HS confusion).
    let jwks: Value = client().get(e.line.jwks_url()).send().await.unwrap().json().await.unwrap();
    let jwk = jwks["keys"][0].to_string();
    let confused =
        MockLine::sign_hs256_with_header(&json!({"alg": "HS256", "kid": e.line.current_kid()}), jwk.as_bytes(), &c);
    assert_refused(&e, &confused, "id_token_no_channel_secret").await;
    // RS256 / PS256 headers.
    for alg in ["RS256", "PS256", "ES384", "HS512"] {
        let t = e.line.sign_es256_with_header(&json!({"alg": alg, "kid": e.line.current_kid()}), &c);
        assert_refused(&e, &t, "id_token_algorithm").await;
    }
    // Key-carrying headers, even with a valid signature.
    for (h, v) in [
        ("jku", json!("https://evil.example/jwks")),
        ("x5u", json!("https://evil.example/cert")),
        ("jwk", json!({"kty": "EC"})),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
    ] {
        let mut header = json!({"alg": "ES256", "kid": e.line.current_kid()});
        header[h] = v;
        assert_refused(&e, &e.line.sign_es256_with_header(&header, &c), "id_token_algorithm").await;
    }
    // Tampered payload and signature.
    let good = e.line.sign_es256(&c);
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    let mut tampered = c.clone();
    tampered["sub"] = "Uffffffffffffffffffffffffffffffff".into();
    parts[1] = b64(&tampered);
    assert_refused(&e, &parts.join("."), "id_token_bad_signature").await;
    let mut sig: Vec<char> = good.rsplit_once('.').unwrap().1.chars().collect();
    sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
    let bad_sig = format!("{}.{}", good.rsplit_once('.').unwrap().0, sig.into_iter().collect::<String>());
    assert_refused(&e, &bad_sig, "id_token_bad_signature").await;
    // After all that, the nonce is still live: the genuine token passes.
    assert_eq!(e.login(&good).await, 200);
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn oversized_and_malformed_tokens_are_refused_before_any_work() {
    let e = login_env("", "").await;
    let jwks_before = e.line.jwks_calls();
    let big = format!("{}.{}.{}", "a".repeat(4000), "b".repeat(4000), "c".repeat(400));
    let r = client().post(e.proxy.url("/login")).bearer_auth(&big).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_refused(&e, "only.two", "id_token_malformed").await;
    assert_refused(&e, "a.b.c.d", "id_token_malformed").await;
    // Well-formed but without a nonce: refused before any signature work.
    assert_refused(&e, "e30.e30.e30", "nonce_missing").await;
    assert_eq!(e.line.jwks_calls(), jwks_before);
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn hs256_web_login_uses_the_channel_secret_from_a_file() {
    let dir = std::env::temp_dir().join(format!("lap-hs-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("channel-secret");
    std::fs::write(&secret_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let e = login_env(&format!("channel_secret_file = {secret_file:?}\n"), "").await;
    let secret = b"0123456789abcdef0123456789abcdef";
    let token = MockLine::sign_hs256(secret, &e.claims(Some(&e.nonce().await)));
    assert_eq!(e.login(&token).await, 200);
    assert_eq!(e.upstream.last().headers["x-line-user-id"], USER);
    // Wrong secret, and a secret-less channel: refused.
    let wrong = MockLine::sign_hs256(b"not-the-secret", &e.claims(Some(&e.nonce().await)));
    assert_refused(&e, &wrong, "id_token_bad_signature").await;
    std::fs::remove_dir_all(&dir).ok();
    let e = login_env("", "").await;
    let token = MockLine::sign_hs256(secret, &e.claims(Some(&e.nonce().await)));
    assert_refused(&e, &token, "id_token_no_channel_secret").await;
}

#[tokio::test]
async fn remote_mode_asks_line_and_still_consumes_the_nonce() {
    let e = login_env("id_token_verification = \"remote\"\n", "").await;
    e.line.set_channel_secret(CHANNEL, b"web-secret");
    let nonce = e.nonce().await;
    let token = e.line.sign_es256(&e.claims(Some(&nonce)));
    assert_eq!(e.login(&token).await, 200);
    assert_eq!(e.line.verify_id_token_calls(), 1);
    assert_eq!(e.upstream.last().headers["x-line-auth-method"], "id_token");
    assert_eq!(e.login(&token).await, 401, "replay in remote mode");
    // HS256 web-login tokens are checked by LINE with the channel's secret.
    let hs = MockLine::sign_hs256(b"web-secret", &e.claims(Some(&e.nonce().await)));
    assert_eq!(e.login(&hs).await, 200);
    // LINE's documented refusals map to reasons.
    let now = e.clock.unix_seconds();
    let mut expired = e.claims(Some(&e.nonce().await));
    expired["exp"] = json!(now - 10);
    assert_refused(&e, &e.line.sign_es256(&expired), "token_expired").await;
    let mut wrong_iss = e.claims(Some(&e.nonce().await));
    wrong_iss["iss"] = "https://evil.example".into();
    assert_refused(&e, &e.line.sign_es256(&wrong_iss), "id_token_wrong_issuer").await;
    let live = e.nonce().await;
    assert_refused(&e, &MockLine::sign_hs256(b"bad", &e.claims(Some(&live))), "token_invalid").await;
    // A token for another channel never reaches LINE: client_id is ours only.
    let calls = e.line.verify_id_token_calls();
    let mut other = e.claims(Some(&live));
    other["aud"] = OTHER_CHANNEL.into();
    assert_refused(&e, &e.line.sign_es256(&other), "wrong_channel").await;
    assert_eq!(e.line.verify_id_token_calls(), calls);
    assert_eq!(e.upstream.hits(), 2);
}

#[tokio::test]
async fn remote_mode_fails_closed_when_line_fails() {
    let e = login_env("id_token_verification = \"remote\"\n", "").await;
    let nonce = e.nonce().await;
    let token = e.line.sign_es256(&e.claims(Some(&nonce)));
    for fault in [Fault::Status(500), Fault::Garbage, Fault::RateLimitedRetryAfter(1)] {
        e.line.set_faults(Faults { verify_id_token: Some(fault), ..Faults::default() });
        let r = client().post(e.proxy.url("/login")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 503, "{fault:?}");
        assert!(r.headers().contains_key("retry-after"));
    }
    assert_eq!(e.upstream.hits(), 0);
    // LINE recovers, but it rate-limited us a moment ago: no call until the back-off ends.
    e.line.set_faults(Faults::default());
    let calls = e.line.verify_id_token_calls();
    assert_eq!(e.login(&token).await, 503);
    assert_eq!(e.line.verify_id_token_calls(), calls);
    e.clock.advance(Duration::from_secs(1));
    // The nonce was never consumed by the failed attempts.
    assert_eq!(e.login(&token).await, 200);
}

#[tokio::test]
async fn liff_routes_without_nonce_cache_the_verdict_until_exp() {
    let e = login_env(
        "id_token_verification = \"remote\"\n",
        "[[routes]]\npath_prefix = \"/liff/\"\nauth = \"id_token\"\nrequire_nonce = false\n",
    )
    .await;
    let token = e.line.sign_es256(&e.claims(None));
    for _ in 0..3 {
        let r = client().get(e.proxy.url("/liff/me")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(e.line.verify_id_token_calls(), 1, "verdict not cached");
    assert_eq!(e.upstream.last().headers["x-line-user-id"], USER);
    // The nonce route still insists on a nonce for the same token.
    assert_eq!(e.login(&token).await, 401);
    // An access token never unlocks an id_token route.
    e.line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let r = client().get(e.proxy.url("/liff/me")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn id_token_route_without_credential_is_401() {
    let e = login_env("", "").await;
    let r = client().post(e.proxy.url("/login")).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(json_error(r, 401).await, "unauthorized");
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_fails_even_with_a_secret_configured() {
    let dir = std::env::temp_dir().join(format!("lap-hs-confusion-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("channel-secret");
    std::fs::write(&secret_file, "the-real-channel-secret").unwrap();
    let e = login_env(&format!("channel_secret_file = {secret_file:?}\n"), "").await;
    let nonce = e.nonce().await;
    let jwks: Value = client().get(e.line.jwks_url()).send().await.unwrap().json().await.unwrap();
    let jwk = &jwks["keys"][0];
    // Every encoding of the public key an attacker might try as the HMAC key.
    let x = jwk["x"].as_str().unwrap();
    for key in [jwk.to_string(), x.to_string(), format!("{x}{}", jwk["y"].as_str().unwrap())] {
        let t = MockLine::sign_hs256_with_header(
            &json!({"alg": "HS256", "kid": e.line.current_kid()}),
            key.as_bytes(),
            &e.claims(Some(&nonce)),
        );
        assert_refused(&e, &t, "id_token_bad_signature").await;
    }
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(Some(&nonce)))).await, 200);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn remote_refusals_map_to_reasons() {
    let e = login_env("id_token_verification = \"remote\"\n", "").await;
    let nonce = e.nonce().await;
    let token = e.line.sign_es256(&e.claims(Some(&nonce)));
    for (description, reason) in [
        ("Invalid IdToken.", "token_invalid"),
        ("Invalid IdToken Issuer.", "id_token_wrong_issuer"),
        ("IdToken expired.", "token_expired"),
        ("Invalid IdToken Audience.", "wrong_channel"),
        ("Invalid IdToken Nonce.", "nonce_mismatch"),
        ("Invalid IdToken Subject Identifier.", "id_token_bad_subject"),
        ("JWS verification failed", "token_invalid"),
    ] {
        e.line.set_faults(Faults { verify_id_token: Some(Fault::Refuse(description)), ..Faults::default() });
        assert_refused(&e, &token, reason).await;
    }
    // None of those refusals consumed the nonce.
    e.line.set_faults(Faults::default());
    assert_eq!(e.login(&token).await, 200);
}

#[tokio::test]
async fn remote_mode_picks_client_id_from_our_channels_by_audience() {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let text = config_text_line(
        &line.base_url(),
        &upstream.url(),
        "id_token_verification = \"remote\"\n",
        "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n",
    )
    .replace(&format!("channel_ids = [\"{CHANNEL}\"]"), &format!("channel_ids = [\"{CHANNEL}\", \"{OTHER_CHANNEL}\"]"));
    let e = Env { proxy: spawn_proxy_with(config(&text), &clock).await, clock, line, upstream };
    let mut c = e.line.id_claims(OTHER_CHANNEL, USER, Some(&e.nonce().await));
    c["name"] = "Second channel".into();
    // The mock checks aud == client_id, as LINE does.
    assert_eq!(e.login(&e.line.sign_es256(&c)).await, 200);
    assert_eq!(e.upstream.last().headers["x-line-channel-id"], OTHER_CHANNEL);
}

#[tokio::test]
async fn empty_nonce_claims_never_match() {
    let e = login_env("", "").await;
    let _live = e.nonce().await;
    assert_refused(&e, &e.line.sign_es256(&e.claims(Some(""))), "nonce_unknown_or_used").await;
    let e = login_env("id_token_verification = \"remote\"\n", "").await;
    assert_refused(&e, &e.line.sign_es256(&e.claims(Some(""))), "nonce_unknown_or_used").await;
    assert_eq!(e.line.verify_id_token_calls(), 0);
}

#[tokio::test]
async fn nonce_metrics_count_every_event() {
    let e = login_env("", "[nonce]\nttl_seconds = 1\n").await;
    let used = e.nonce().await;
    let _expiring = e.nonce().await;
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(Some(&used)))).await, 200);
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(Some(&used)))).await, 401);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_nonces_total{event=\"issued\"}"), 2.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_nonces_total{event=\"consumed\"}"), 1.0, "{m}");
    // The replay was refused at the peek, before any verification.
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"nonce_unknown_or_used\"}"), 1.0, "{m}");
    // The sweeper runs every min(ttl, 30 s) = 1 s of the proxy's clock and
    // drops nonces 60 s past their expiry (until then they read as expired).
    let expired = "line_auth_proxy_nonces_total{event=\"expired\"}";
    assert_eq!(e.proxy.metric(expired).await, 0.0);
    e.clock.advance(Duration::from_secs(61));
    assert!(eventually(Duration::from_secs(5), || async { e.proxy.metric(expired).await == 1.0 }).await);
}

const LIFF: &str = "[[routes]]\npath_prefix = \"/liff/\"\nauth = \"id_token\"\nrequire_nonce = false\n";

#[tokio::test]
async fn a_spent_login_token_does_not_replay_on_a_liff_route() {
    let e = login_env("", LIFF).await;
    let token = e.line.sign_es256(&e.claims(Some(&e.nonce().await)));
    assert_eq!(e.login(&token).await, 200);
    let r = client().get(e.proxy.url("/liff/session")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 401, "a nonce-bearing token replayed on a require_nonce = false route");
    // A fresh nonce-bearing token works there once, like on /login.
    let fresh = e.line.sign_es256(&e.claims(Some(&e.nonce().await)));
    assert_eq!(client().get(e.proxy.url("/liff/session")).bearer_auth(&fresh).send().await.unwrap().status(), 200);
    assert_eq!(client().get(e.proxy.url("/liff/session")).bearer_auth(&fresh).send().await.unwrap().status(), 401);
    assert_eq!(e.upstream.hits(), 2);
}

#[tokio::test]
async fn liff_verdicts_are_never_served_past_exp() {
    let e = login_env("", LIFF).await;
    let mut c = e.claims(None);
    let exp = e.clock.unix_seconds() + 2;
    c["exp"] = json!(exp);
    let token = e.line.sign_es256(&c);
    assert_eq!(client().get(e.proxy.url("/liff/me")).bearer_auth(&token).send().await.unwrap().status(), 200);
    assert_eq!(client().get(e.proxy.url("/liff/me")).bearer_auth(&token).send().await.unwrap().status(), 200);
    e.clock.advance(Duration::from_secs(3));
    // Past exp the cached verdict is gone; the 60 s leeway of a fresh local check
    // still admits it until exp + 60, which is the verifier's rule, not the cache's.
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_cache_hits_total"), 1.0, "{m}");
    let _ = client().get(e.proxy.url("/liff/me")).bearer_auth(&token).send().await.unwrap();
    let m = e.proxy.metrics().await;
    assert_eq!(
        metric(&m, "line_auth_proxy_cache_hits_total"),
        1.0,
        "a verdict was served from the cache past exp:\n{m}"
    );
}

/// LINE's verify answer is checked against the token it is about: a 200
/// naming another user, channel, expiry or nonce, or one that is not a
/// payload at all, is unavailability (503, nothing cached, no nonce spent),
/// never an identity and never a 401.
#[tokio::test]
async fn remote_answers_that_do_not_match_the_token_are_unavailability() {
    let e = login_env("id_token_verification = \"remote\"\n", LIFF).await;
    let nonce = e.nonce().await;
    // Another live nonce: a hostile answer naming it must not spend it.
    let other_nonce = e.nonce().await;
    let claims = e.claims(Some(&nonce));
    let token = e.line.sign_es256(&claims);
    let answer = |k: &str, v: Value| -> &'static str {
        let mut a = claims.clone();
        a[k] = v;
        Box::leak(a.to_string().into_boxed_str())
    };
    let exp = claims["exp"].as_u64().unwrap();
    let bodies = [
        answer("sub", json!("Uffffffffffffffffffffffffffffffff")),
        answer("aud", json!(OTHER_CHANNEL)),
        answer("exp", json!(exp + 3600)),
        answer("nonce", json!(other_nonce)),
        answer("iss", json!("https://evil.example")),
        r#"{"iss":"https://access.line.me"}"#,
        "{}",
    ];
    for body in bodies {
        e.line.set_faults(Faults { verify_id_token: Some(Fault::Body(body)), ..Faults::default() });
        let r = client().post(e.proxy.url("/login")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 503, "{body}");
        assert!(r.headers().contains_key("retry-after"));
    }
    // A malformed 200 on a cached (LIFF) route is not remembered as a 401.
    let liff = e.line.sign_es256(&e.claims(None));
    e.line.set_faults(Faults { verify_id_token: Some(Fault::Body("{}")), ..Faults::default() });
    let r = client().get(e.proxy.url("/liff/me")).bearer_auth(&liff).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(e.upstream.hits(), 0, "a mismatched answer reached the upstream");
    e.line.set_faults(Faults::default());
    assert_eq!(client().get(e.proxy.url("/liff/me")).bearer_auth(&liff).send().await.unwrap().status(), 200);
    // Neither nonce was spent: each still logs in once.
    assert_eq!(e.login(&token).await, 200);
    assert_eq!(e.upstream.last().headers["x-line-user-id"], USER);
    assert_eq!(e.login(&e.line.sign_es256(&e.claims(Some(&other_nonce)))).await, 200);
}

#[tokio::test]
async fn nbf_and_the_age_bound_apply_with_the_leeway() {
    let e = login_env("max_id_token_age_seconds = 3600\n", "").await;
    let now = e.clock.unix_seconds();
    let nonce = e.nonce().await;
    let with = |k: &str, v: Value| {
        let mut c = e.claims(Some(&nonce));
        c[k] = v;
        c["exp"] = json!(now + 3600);
        e.line.sign_es256(&c)
    };
    assert_refused(&e, &with("nbf", json!(now + 120)), "id_token_not_yet_valid").await;
    assert_refused(&e, &with("nbf", json!("soon")), "id_token_malformed").await;
    assert_refused(&e, &with("iat", json!(now - 3600 - 61)), "id_token_too_old").await;
    assert_eq!(e.login(&with("iat", json!(now - 3600 - 30))).await, 200, "within the leeway");
    assert_eq!(e.login(&with("nbf", json!(now + 30))).await, 401, "nonce spent by the login above");
    let fresh = e.nonce().await;
    let mut c = e.claims(Some(&fresh));
    c["nbf"] = json!(now + 30);
    assert_eq!(e.login(&e.line.sign_es256(&c)).await, 200, "nbf within the leeway");
    // The default bound is a day, in remote mode too.
    let e = login_env("id_token_verification = \"remote\"\n", "").await;
    let now = e.clock.unix_seconds();
    let mut c = e.claims(Some(&e.nonce().await));
    c["iat"] = json!(now - 25 * 3600);
    c["exp"] = json!(now + 3600);
    assert_refused(&e, &e.line.sign_es256(&c), "id_token_too_old").await;
}

/// An ECDSA signature `r ‖ s` has a twin `r ‖ (n − s)` that verifies too.
fn twin(token: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6,
        0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
    ];
    let (input, sig) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(sig[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        sig[32 + i] = d.rem_euclid(256) as u8;
    }
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

#[tokio::test]
async fn an_es256_token_and_its_signature_twin_are_one_cache_entry() {
    let e = login_env("", LIFF).await;
    let token = e.line.sign_es256(&e.claims(None));
    let other = twin(&token);
    assert_ne!(token, other);
    for t in [&token, &other, &token, &other] {
        assert_eq!(client().get(e.proxy.url("/liff/me")).bearer_auth(t).send().await.unwrap().status(), 200);
    }
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_cache_hits_total"), 3.0, "the twin was verified as a new token:\n{m}");
    assert_eq!(metric(&m, "line_auth_proxy_cache_entries"), 1.0, "{m}");
}
