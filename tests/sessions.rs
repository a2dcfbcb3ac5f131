//! Proxy sessions over real sockets: the exchange of a Bearer access token for
//! a sealed cookie, `auth = "session"` routes, and every way a cookie can be
//! wrong — tampered, sealed under another key ring, expired, sent with a
//! Bearer token, riding a cross-site POST — each refused without the upstream
//! being reached. Revocation at LINE ends a session within
//! `session.revalidate_seconds` on the paused clock; the session cookie never
//! reaches the upstream while other cookies do.
#![cfg(feature = "dev")]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::sessions::{COOKIE, cookie_pair, key_file, session_config};
use support::*;

/// A proxy with sessions sealed under `keys` (the first seals), on its own
/// LINE mock and recording upstream.
async fn session_env(keys: &[&PathBuf], extra: &str) -> Env {
    env(&session_config(keys, extra)).await
}

/// A second proxy on the same clock, LINE and upstream as `e`, with other keys.
async fn replica(e: &Env, keys: &[&PathBuf]) -> TestProxy {
    let text = config_text(&e.line.base_url(), &e.upstream.url(), &session_config(keys, ""));
    spawn_proxy_with(config(&text), &e.clock).await
}

/// `POST /auth/session` with `TOKEN`: the `Set-Cookie` value.
async fn exchange(proxy: &TestProxy) -> String {
    let r = client().post(proxy.url("/auth/session")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    r.headers()["set-cookie"].to_str().unwrap().to_owned()
}

async fn get_with_cookie(proxy: &TestProxy, path: &str, cookie: &str) -> reqwest::Response {
    client().get(proxy.url(path)).header("cookie", cookie).send().await.unwrap()
}

#[tokio::test]
async fn an_exchanged_session_reaches_the_upstream_as_session_identity_without_its_cookie() {
    let e = session_env(&[&key_file([1; 32])], "").await;
    let set_cookie = exchange(&e.proxy).await;
    let attributes: Vec<&str> = set_cookie.split("; ").skip(1).collect();
    assert_eq!(attributes, ["Path=/", "Max-Age=86400", "HttpOnly", "Secure", "SameSite=Lax"], "{set_cookie}");
    let cookie = cookie_pair(&set_cookie);
    assert!(cookie.starts_with(&format!("{COOKIE}=v1.")), "{cookie}");
    assert!(!cookie.contains(TOKEN) && !cookie.contains(USER), "the cookie shows what it seals");
    assert_eq!(e.upstream.hits(), 0, "the exchange forwarded something");

    let r = client()
        .get(e.proxy.url("/app/orders"))
        .header("cookie", format!("theme=dark; {cookie}; lang=ja"))
        .header("x-line-user-id", "Uattacker")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = e.upstream.last();
    assert_eq!(seen.headers["x-line-user-id"], USER);
    assert_eq!(seen.headers["x-line-auth-method"], "session");
    assert_eq!(seen.headers["x-line-channel-id"], CHANNEL);
    assert_eq!(seen.headers.get_all("cookie").iter().collect::<Vec<_>>(), ["theme=dark; lang=ja"]);
    assert!(seen.headers.get("authorization").is_none());
    // The cookie is kept from the upstream on routes that do not read it, too.
    let r = get_with_cookie(&e.proxy, "/public/page", &cookie).await;
    assert_eq!(r.status(), 200);
    assert!(e.upstream.last().headers.get("cookie").is_none());
    // A session route also takes a Bearer access token, as an access-token route.
    let r = client().get(e.proxy.url("/app/orders")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.upstream.last().headers["x-line-auth-method"], "access_token");
    let m = e.proxy.metrics().await;
    let series = "line_auth_proxy_requests_total{outcome=\"session_issued\",auth=\"access_token\"}";
    assert_eq!(metric(&m, series), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_requests_total{outcome=\"forwarded\",auth=\"session\"}"), 2.0, "{m}");
}

#[tokio::test]
async fn the_exchange_refuses_without_a_valid_token_and_fails_closed() {
    let e = session_env(&[&key_file([1; 32])], "").await;
    let r = client().post(e.proxy.url("/auth/session")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert!(r.headers().get("set-cookie").is_none());
    let r = client().post(e.proxy.url("/auth/session")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    let r = client().get(e.proxy.url("/auth/session")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    e.line.set_faults(verify_fails(Fault::Status(500)));
    let r = client().post(e.proxy.url("/auth/session")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn a_tampered_foreign_or_expired_cookie_is_no_session() {
    let key = key_file([1; 32]);
    let e = session_env(&[&key], "").await;
    let cookie = cookie_pair(&exchange(&e.proxy).await);
    let value = cookie.split_once('=').unwrap().1.to_owned();
    // Each character of the sealed part changed in turn (a sample: every 7th).
    let sealed_from = "v1.".len();
    for i in (sealed_from..value.len()).step_by(7) {
        let mut forged = value.clone().into_bytes();
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let r = get_with_cookie(&e.proxy, "/app/x", &format!("{COOKIE}={forged}")).await;
        assert_eq!(r.status(), 401, "byte {i} changed");
    }
    // A cookie of a deployment with other keys.
    let other = replica(&e, &[&key_file([9; 32])]).await;
    let foreign = cookie_pair(&exchange(&other).await);
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &foreign).await.status(), 401);
    // Not a session at all, and the right value under another cookie name.
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &format!("{COOKIE}=admin")).await.status(), 401);
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &format!("other={value}")).await.status(), 401);
    // Past max_age_seconds (86400) on the paused clock.
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &cookie).await.status(), 200);
    let hits = e.upstream.hits();
    e.clock.advance(Duration::from_secs(86_400));
    let r = get_with_cookie(&e.proxy, "/app/x", &cookie).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(e.upstream.hits(), hits, "a request without a session reached the upstream");
    let m = e.proxy.metrics().await;
    assert!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"missing_credential\"}") >= 20.0, "{m}");
}

#[tokio::test]
async fn key_rotation_the_new_key_seals_and_the_old_one_still_opens() {
    let (old, new) = (key_file([1; 32]), key_file([2; 32]));
    let e = session_env(&[&old], "").await;
    let old_cookie = cookie_pair(&exchange(&e.proxy).await);
    // Step 2 of a rotation: the new key first, the old one still listed.
    let during = replica(&e, &[&new, &old]).await;
    assert_eq!(get_with_cookie(&during, "/app/x", &old_cookie).await.status(), 200, "the old key no longer opens");
    let new_cookie = cookie_pair(&exchange(&during).await);
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &new_cookie).await.status(), 401, "the old key sealed");
    // Step 3: the old key dropped.
    let after = replica(&e, &[&new]).await;
    assert_eq!(get_with_cookie(&after, "/app/x", &new_cookie).await.status(), 200);
    assert_eq!(get_with_cookie(&after, "/app/x", &old_cookie).await.status(), 401);
}

#[tokio::test]
async fn a_token_revoked_at_line_ends_its_session_within_revalidate_seconds() {
    // Verdicts would live 600 s; session verdicts live at most 30 s.
    let e = session_env(&[&key_file([1; 32])], "revalidate_seconds = 30\n[cache]\nttl_seconds = 600\n").await;
    let cookie = cookie_pair(&exchange(&e.proxy).await);
    let calls = e.line.verify_calls();
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &cookie).await.status(), 200);
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &cookie).await.status(), 200);
    assert_eq!(e.line.verify_calls(), calls + 1, "a session is re-verified at most every revalidate_seconds");
    e.line.remove_token(TOKEN);
    // The TTL jitter (10 % by default) may end it up to 3 s early, never late.
    e.clock.advance(Duration::from_secs(26));
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &cookie).await.status(), 200, "within the bound");
    e.clock.advance(Duration::from_secs(5));
    let hits = e.upstream.hits();
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &cookie).await.status(), 401, "the revoked token still opens");
    assert_eq!(e.upstream.hits(), hits);
    // LINE down past the bound: 503, not the stale verdict.
    e.line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    e.clock.advance(Duration::from_secs(31));
    e.line.set_faults(verify_fails(Fault::Status(500)));
    let r = get_with_cookie(&e.proxy, "/app/x", &cookie).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(e.upstream.hits(), hits);
}

#[tokio::test]
async fn a_cookie_with_a_bearer_token_or_on_a_cross_site_post_is_refused() {
    let e = session_env(&[&key_file([1; 32])], "").await;
    let cookie = cookie_pair(&exchange(&e.proxy).await);
    let r = client().get(e.proxy.url("/app/x")).header("cookie", &cookie).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 400);
    // A form POSTed from another site rides the browser's cookie: refused.
    for site in [None, Some("cross-site"), Some("same-site"), Some("none")] {
        let mut r = client().post(e.proxy.url("/app/transfer")).header("cookie", &cookie).body("amount=100");
        if let Some(site) = site {
            r = r.header("sec-fetch-site", site);
        }
        let r = r.header("origin", "https://evil.example").send().await.unwrap();
        assert_eq!(r.status(), 403, "{site:?}");
        assert_eq!(json_error(r, 403).await, "access_denied");
    }
    // A WebSocket handshake is a GET, but it opens a channel both ways: a page
    // of another site must not open one on the user's cookie.
    let handshake = |site: &str| {
        format!(
            "GET /app/ws HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Origin: https://evil.example\r\nSec-Fetch-Site: {site}\r\nCookie: {cookie}\r\n\r\n"
        )
    };
    let answer = raw(e.proxy.addr, handshake("cross-site").as_bytes()).await;
    assert_eq!(raw_status(&answer), 403, "{answer}");
    assert_eq!(e.upstream.hits(), 0, "a refused request reached the upstream");
    let answer = raw(e.proxy.addr, handshake("same-origin").as_bytes()).await;
    assert_eq!(raw_status(&answer), 101, "{answer}");
    assert_eq!(e.upstream.hits(), 1);
    // The app's own page: allowed.
    let r = client()
        .post(e.proxy.url("/app/transfer"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "same-origin")
        .body("amount=100")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.upstream.last().method, "POST");
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"cross_site_request\"}"), 5.0, "{m}");
}

#[test]
fn session_keys_are_checked_at_load() {
    let short = std::env::temp_dir().join(format!("lap-session-short-{}", rand::random::<u64>()));
    std::fs::write(&short, [1u8; 16]).unwrap();
    std::fs::set_permissions(&short, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let text = config_text("http://127.0.0.1:1", "http://127.0.0.1:2", &session_config(&[&short], ""));
    let problems = line_auth_proxy::config::load_str(&text, std::iter::empty()).unwrap_err().to_string();
    assert!(problems.contains("session.key_files[0]") && problems.contains(&short.display().to_string()), "{problems}");
    let missing = config_text("http://127.0.0.1:1", "http://127.0.0.1:2", &session_config(&[], ""));
    let problems = line_auth_proxy::config::load_str(&missing, std::iter::empty()).unwrap_err().to_string();
    assert!(problems.contains("session.key_files") && problems.contains("required"), "{problems}");
    let key = key_file([1; 32]);
    let twice = config_text("http://127.0.0.1:1", "http://127.0.0.1:2", &session_config(&[&key, &key], ""));
    let problems = line_auth_proxy::config::load_str(&twice, std::iter::empty()).unwrap_err().to_string();
    assert!(problems.contains("the same key twice"), "{problems}");
    // Web login switched on with nothing else: every key it needs is named.
    let login = config_text("http://127.0.0.1:1", "http://127.0.0.1:2", "[login]\nenabled = true\n");
    let problems = line_auth_proxy::config::load_str(&login, std::iter::empty()).unwrap_err().to_string();
    for key in ["login.channel_id", "login.channel_secret_file", "login.redirect_uri", "session.key_files"] {
        assert!(problems.contains(&format!("{key}: is required")), "{key}: {problems}");
    }
}
