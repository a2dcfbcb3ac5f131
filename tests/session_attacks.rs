//! Attacks on proxy-issued sessions (security review of 0398d56). Each test
//! states what must hold; the ones named in the review report fail on 0398d56.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use support::sessions::{COOKIE, cookie_pair, key_file, session_config};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn session_env(extra: &str) -> Env {
    env(&session_config(&[&key_file([1; 32])], extra)).await
}

fn trusted(text: String) -> String {
    text.replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\ntrusted_proxies = [\"127.0.0.1/32\"]")
}

async fn exchange(proxy: &TestProxy, token: &str) -> reqwest::Response {
    client().post(proxy.url("/auth/session")).bearer_auth(token).send().await.unwrap()
}

/// The `name=value` pair of a successful exchange.
async fn session_cookie(proxy: &TestProxy) -> String {
    let r = exchange(proxy, TOKEN).await;
    assert_eq!(r.status(), 204);
    cookie_pair(r.headers()["set-cookie"].to_str().unwrap())
}

fn value_of(pair: &str) -> String {
    pair.split_once('=').unwrap().1.to_owned()
}

async fn get_with_cookie(proxy: &TestProxy, path: &str, cookie: &str) -> reqwest::Response {
    client().get(proxy.url(path)).header("cookie", cookie).send().await.unwrap()
}

/// Every `Cookie` header the upstream received last, as lossy text.
fn upstream_cookies(e: &Env) -> Vec<String> {
    e.upstream
        .last()
        .headers
        .get_all("cookie")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Sends `request` and reads the answer's head only (a 101 keeps the connection open).
async fn raw_head(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------

/// FINDING: forward-auth. Traefik and Caddy send the check as a GET and name
/// the original method in `X-Forwarded-Method`; the same-origin rule reads the
/// check request's own method, so every cross-site POST passes.
#[tokio::test]
async fn forward_auth_a_cross_site_post_with_the_cookie_is_refused() {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let extra = format!("{}[forward_auth]\nenabled = true\n", session_config(&[&key_file([1; 32])], ""));
    let proxy =
        spawn_proxy_with(config(&trusted(config_text(&line.base_url(), &upstream.url(), &extra))), &clock).await;
    let cookie = session_cookie(&proxy).await;
    // The route and method are believed (the policy is the POST's): a GET check with the cookie passes.
    let check = |method: &'static str, site: &'static str| {
        client()
            .get(proxy.url("/_auth/verify"))
            .header("x-forwarded-method", method)
            .header("x-forwarded-uri", "/app/transfer")
            .header("cookie", &cookie)
            .header("sec-fetch-site", site)
            .header("origin", "https://evil.example")
            .send()
    };
    assert_eq!(check("GET", "cross-site").await.unwrap().status(), 200, "a cross-site GET is allowed");
    let r = check("POST", "cross-site").await.unwrap();
    assert_eq!(r.status(), 403, "a cross-site POST riding the cookie was allowed through forward-auth");
}

/// FINDING: Cross-Site WebSocket Hijacking. A WebSocket handshake is a GET,
/// exempt from the same-origin rule, yet it opens a two-way channel that acts
/// with the cookie. A sibling subdomain (same-site, so a SameSite=Lax cookie
/// rides along) opens the socket as the victim.
#[tokio::test]
async fn a_websocket_handshake_with_the_cookie_from_another_origin_is_refused() {
    let e = session_env("").await;
    let cookie = session_cookie(&e.proxy).await;
    let handshake = |site: &str, origin: &str| {
        format!(
            "GET /app/ws HTTP/1.1\r\nHost: app.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Origin: {origin}\r\nSec-Fetch-Mode: websocket\r\nSec-Fetch-Site: {site}\r\nCookie: {cookie}\r\n\r\n"
        )
    };
    // The app's own page may open its socket.
    let own = raw_head(e.proxy.addr, handshake("same-origin", "https://app.example.com").as_bytes()).await;
    assert!(own.starts_with("HTTP/1.1 101"), "{own}");
    let hits = e.upstream.hits();
    for site in ["same-site", "cross-site"] {
        let head = raw_head(e.proxy.addr, handshake(site, "https://evil.example.com").as_bytes()).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{site}: a cross-origin WebSocket rode the session cookie:\n{head}");
    }
    assert_eq!(e.upstream.hits(), hits, "a cross-origin handshake reached the upstream");
}

/// FINDING: a Cookie header that is not visible ASCII (any cookie of the site
/// holding UTF-8, which browsers send as raw bytes) is passed to the upstream
/// whole, session cookie included: `strip_cookie` keeps what `to_str` refuses.
#[tokio::test]
async fn a_session_cookie_next_to_a_utf8_cookie_never_reaches_the_upstream() {
    let e = session_env("").await;
    let cookie = session_cookie(&e.proxy).await;
    let sealed = value_of(&cookie);
    let request = [
        b"GET /public/page HTTP/1.1\r\nHost: x\r\nCookie: name=Jos\xc3\xa9; ".as_slice(),
        cookie.as_bytes(),
        b"; lang=ja\r\n\r\n",
    ]
    .concat();
    let answer = raw(e.proxy.addr, &request).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream_cookies(&e);
    assert!(!seen.iter().any(|c| c.contains(&sealed)), "the session cookie reached the upstream: {seen:?}");
    assert_eq!(seen, ["name=José; lang=ja"]);

    // Two Cookie headers (HTTP/2 splits them; HTTP/1.1 clients may send two):
    // the session authenticates from the ASCII one, and the other one carries
    // it to the upstream.
    let request = [
        b"GET /app/orders HTTP/1.1\r\nHost: x\r\nCookie: ".as_slice(),
        cookie.as_bytes(),
        b"\r\nCookie: name=Jos\xc3\xa9; ",
        cookie.as_bytes(),
        b"\r\n\r\n",
    ]
    .concat();
    let answer = raw(e.proxy.addr, &request).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = upstream_cookies(&e);
    assert!(!seen.iter().any(|c| c.contains(&sealed)), "the session cookie reached the upstream: {seen:?}");
}

/// FINDING (availability): a browser that holds any UTF-8 cookie for the site
/// sends one Cookie header with raw bytes; the session in it is never read.
#[tokio::test]
async fn a_session_is_read_next_to_a_utf8_cookie() {
    let e = session_env("").await;
    let cookie = session_cookie(&e.proxy).await;
    let request = [
        b"GET /app/orders HTTP/1.1\r\nHost: x\r\nCookie: name=Jos\xc3\xa9; ".as_slice(),
        cookie.as_bytes(),
        b"\r\n\r\n",
    ]
    .concat();
    let answer = raw(e.proxy.addr, &request).await;
    assert_eq!(raw_status(&answer), 200, "a valid session next to a UTF-8 cookie is refused:\n{answer}");
}

/// FINDING (low): session verdicts read back from the shared Redis tier are
/// capped by `cache.ttl_seconds` but not by this replica's
/// `session.revalidate_seconds`, so a replica configured (or reconfigured) for
/// a shorter bound serves a revoked session for as long as the writer allowed.
#[tokio::test]
async fn a_shared_session_verdict_lives_no_longer_than_this_replicas_revalidate_seconds() {
    let redis = RedisServer::start().await;
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let key = key_file([1; 32]);
    let proxy_with = |revalidate: u64| {
        let extra = format!(
            "revalidate_seconds = {revalidate}\n[cache]\nttl_seconds = 600\nshared = \"redis\"\nredis_url = \"{}\"\n{}",
            redis.url(3),
            mac_key_line()
        );
        config(&config_text(&line.base_url(), &upstream.url(), &session_config(&[&key], &extra)))
    };
    let a = spawn_proxy_with(proxy_with(600), &clock).await;
    let b = spawn_proxy_with(proxy_with(30), &clock).await;
    let cookie = session_cookie(&a).await;
    assert_eq!(get_with_cookie(&a, "/app/x", &cookie).await.status(), 200);
    // Wait for the background SET.
    assert!(eventually(Duration::from_secs(5), || async { !redis.keys(3, "*").await.is_empty() }).await);
    line.remove_token(TOKEN);
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        get_with_cookie(&b, "/app/x", &cookie).await.status(),
        401,
        "a revoked session outlived revalidate_seconds = 30 on this replica"
    );
}

// ---------------------------------------------------------------------------
// Attacks that held
// ---------------------------------------------------------------------------

/// Unsafe methods in any spelling, custom methods, and duplicate
/// `Sec-Fetch-Site` (the first one counts) are held to the same-origin rule.
#[tokio::test]
async fn held_method_spellings_and_sec_fetch_site_tricks() {
    let e = session_env("").await;
    let cookie = session_cookie(&e.proxy).await;
    for method in ["POST", "post", "PUT", "DELETE", "PATCH", "PURGE", "get", "PROPFIND"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for site in
            [None, Some("cross-site"), Some("same-site"), Some("none"), Some("Same-Origin"), Some("same-origin ")]
        {
            let mut r = client().request(m.clone(), e.proxy.url("/app/x")).header("cookie", &cookie);
            if let Some(site) = site {
                r = r.header("sec-fetch-site", site);
            }
            let r = r.send().await.unwrap();
            // "same-origin " is trimmed by the HTTP parser: allowed, like same-origin.
            if site == Some("same-origin ") {
                assert_eq!(r.status(), 200, "{method} {site:?}");
            } else {
                assert_eq!(r.status(), 403, "{method} {site:?}");
            }
        }
    }
    let r = client()
        .post(e.proxy.url("/app/x"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(e.upstream.hits(), 8, "only the same-origin ones passed");
}

/// Cookie header parsing: nothing but an exact, unquoted, sealed value of
/// the exact name opens; a junk copy of the cookie in either order never
/// blocks nor leaks; other cookies pass.
#[tokio::test]
async fn held_cookie_parsing_tricks() {
    let e = session_env("").await;
    let pair = session_cookie(&e.proxy).await;
    let sealed = value_of(&pair);
    let lower = COOKIE.to_ascii_lowercase();
    for refused in [
        format!("{COOKIE}=\"{sealed}\""),
        format!("{lower}={sealed}"),
        format!("{COOKIE} ={sealed}"),
        format!("other={COOKIE}={sealed}"),
        format!("{COOKIE}={sealed}x"),
        format!("{COOKIE}={}", &sealed[..sealed.len() - 1]),
        format!("{COOKIE}={sealed}, other=1"),
        format!("a=1, {COOKIE}={sealed}"),
    ] {
        assert_eq!(get_with_cookie(&e.proxy, "/app/x", &refused).await.status(), 401, "{refused}");
    }
    assert_eq!(e.upstream.hits(), 0);
    for accepted in [
        format!("{COOKIE}=junk; {pair}; a=1"),
        format!("a=1;{pair};{COOKIE}=junk"),
        format!("  {COOKIE}= {sealed} ;a=1"),
        format!("a=1;\t{pair}\t"),
    ] {
        let r = get_with_cookie(&e.proxy, "/app/x", &accepted).await;
        assert_eq!(r.status(), 200, "{accepted}");
        let seen = upstream_cookies(&e);
        assert!(!seen.iter().any(|c| c.contains(&sealed) || c.contains("junk")), "{accepted}: {seen:?}");
        assert_eq!(seen, ["a=1"], "{accepted}");
    }
    // Split across headers (HTTP/2 style).
    let r = client()
        .get(e.proxy.url("/app/x"))
        .header("cookie", "a=1")
        .header("cookie", &pair)
        .header("cookie", format!("{COOKIE}=junk"))
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream_cookies(&e), ["a=1", "b=2"]);
    // Very long Cookie headers: refused before any work, never a 200.
    let long = format!("{}; {pair}", (0..4000).map(|i| format!("c{i}=v")).collect::<Vec<_>>().join("; "));
    let status = get_with_cookie(&e.proxy, "/app/x", &long).await.status();
    assert_eq!(status, 431, "a 64 KiB Cookie header");
    let many = (0..12).map(|_| format!("{COOKIE}=v1.{}", &sealed[3..])).collect::<Vec<_>>().join("; ");
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &many).await.status(), 200);
}

/// A token whose owner or channel changes at LINE ends its session at the
/// next revalidation; a session past max_age fails even with a live verdict;
/// a cookie sealed for another cookie name does not open.
#[tokio::test]
async fn held_owner_change_expiry_and_cookie_name_binding() {
    let e = session_env("revalidate_seconds = 30\nmax_age_seconds = 120\n").await;
    let cookie = session_cookie(&e.proxy).await;
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &cookie).await.status(), 200);
    e.line.add_token(TOKEN, MockToken::new(CHANNEL, "Uffffffffffffffffffffffffffffffff", "Mallory"));
    e.clock.advance(Duration::from_secs(31));
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &cookie).await.status(), 401, "another owner");
    e.line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    e.clock.advance(Duration::from_secs(31));
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &cookie).await.status(), 200);
    // Expired session with a live cached verdict (the Bearer one and the session one).
    assert_eq!(client().get(e.proxy.url("/app/x")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    e.clock.advance(Duration::from_secs(60));
    assert_eq!(get_with_cookie(&e.proxy, "/app/x", &cookie).await.status(), 401, "past max_age");

    // The same key under another cookie name.
    let key = key_file([7; 32]);
    let a = spawn_proxy_with(
        config(&config_text(&e.line.base_url(), &e.upstream.url(), &session_config(&[&key], "cookie_name = \"sid\""))),
        &e.clock,
    )
    .await;
    let b = spawn_proxy_with(
        config(&config_text(&e.line.base_url(), &e.upstream.url(), &session_config(&[&key], ""))),
        &e.clock,
    )
    .await;
    let sid = session_cookie(&a).await;
    assert!(sid.starts_with("sid="));
    assert_eq!(get_with_cookie(&a, "/app/x", &sid).await.status(), 200);
    let renamed = format!("{COOKIE}={}", value_of(&sid));
    assert_eq!(get_with_cookie(&b, "/app/x", &renamed).await.status(), 401, "sealed for another cookie name");
}

/// The exchange: only POST, only a token LINE vouches for now (a cached
/// verdict is not enough), only this deployment's channels; nothing forwarded.
#[tokio::test]
async fn held_exchange_methods_channels_revocation_and_paths() {
    let e = session_env("").await;
    for m in ["HEAD", "OPTIONS", "GET", "PUT", "post"] {
        let r = client()
            .request(reqwest::Method::from_bytes(m.as_bytes()).unwrap(), e.proxy.url("/auth/session"))
            .bearer_auth(TOKEN)
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{m}");
        assert!(r.headers().get("set-cookie").is_none() && r.headers().get("access-control-allow-origin").is_none());
    }
    e.line.add_token("other-channel-token-0123456789", MockToken::new(OTHER_CHANNEL, USER, "Brown"));
    let r = exchange(&e.proxy, "other-channel-token-0123456789").await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    // Cached as valid, then revoked: the exchange asks LINE again.
    assert_eq!(client().get(e.proxy.url("/app/x")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    e.line.remove_token(TOKEN);
    let r = exchange(&e.proxy, TOKEN).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
    // Path spellings normalised to the exchange path are the exchange; others are routing, never a cookie.
    e.line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    for p in ["/auth/./session", "/auth//session", "/x/../auth/session", "/auth/%73ession", "/auth/session?x=1"] {
        let r = client().post(e.proxy.url(p)).bearer_auth(TOKEN).send().await.unwrap();
        let s = r.status().as_u16();
        assert!(s == 204 || s == 400 || s == 200, "{p}: {s}");
        if s == 204 {
            assert!(r.headers().contains_key("set-cookie"));
        }
    }
    for p in ["/auth/session/", "/AUTH/session", "/auth/session%2F"] {
        let r = client().post(e.proxy.url(p)).bearer_auth(TOKEN).send().await.unwrap();
        assert!(r.headers().get("set-cookie").is_none(), "{p}");
    }
    // The refused answers never reached the upstream.
    let before = e.upstream.hits();
    let r = get_with_cookie(&e.proxy, "/app/x", &format!("{COOKIE}=v1.AAAA")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(e.upstream.hits(), before);
}

/// Session and access-token verdicts stay apart in the shared tier: one token
/// used both ways is two Redis entries, and each identity keeps its method.
#[tokio::test]
async fn held_shared_tier_keeps_session_and_access_token_verdicts_apart() {
    let redis = RedisServer::start().await;
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let key = key_file([1; 32]);
    let extra = format!("[cache]\nshared = \"redis\"\nredis_url = \"{}\"\n{}", redis.url(4), mac_key_line());
    let text = config_text(&line.base_url(), &upstream.url(), &session_config(&[&key], &extra));
    let a = spawn_proxy_with(config(&text), &clock).await;
    let b = spawn_proxy_with(config(&text), &clock).await;
    let cookie = session_cookie(&a).await;
    assert_eq!(client().get(a.url("/app/x")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    assert_eq!(upstream.last().headers["x-line-auth-method"], "access_token");
    assert!(eventually(Duration::from_secs(5), || async { redis.keys(4, "*").await.len() == 1 }).await);
    let calls = line.verify_calls();
    assert_eq!(get_with_cookie(&b, "/app/x", &cookie).await.status(), 200);
    assert_eq!(upstream.last().headers["x-line-auth-method"], "session");
    assert_eq!(line.verify_calls(), calls + 1, "the session took the access-token verdict from Redis");
    assert!(eventually(Duration::from_secs(5), || async { redis.keys(4, "*").await.len() == 2 }).await);
    let c = spawn_proxy_with(config(&text), &clock).await;
    assert_eq!(client().get(c.url("/app/x")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    assert_eq!(upstream.last().headers["x-line-auth-method"], "access_token");
    assert_eq!(get_with_cookie(&c, "/app/x", &cookie).await.status(), 200);
    assert_eq!(upstream.last().headers["x-line-auth-method"], "session");
    assert_eq!(line.verify_calls(), calls + 1, "both came from Redis, each of its own kind");
}
