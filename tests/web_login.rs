//! LINE web login over real sockets, driven step by step as a browser would
//! (every redirect followed by hand, cookies kept in a jar): `login.path` →
//! the mock LINE's authorize page → the callback → the page, and logout.
//! Then every way the flow can be attacked or fail — a code replayed or
//! injected into another flow (PKCE), a wrong or stale `state`, an ID token
//! with another nonce, secret, audience or expiry, LINE refusing or down —
//! each ending without a session and without the upstream being reached;
//! `return_to` against the open-redirect payloads of the oauth2-proxy and
//! Vouch advisories; fixation; tabs; the same-origin rule on logout.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use line_auth_proxy::dev::MockLoginUser;
use support::sessions::COOKIE;
use support::web_login::{APP, Jar, SECRET, web_login_config};
use support::*;

const CALLBACK: &str = "/auth/callback";

/// A proxy with web login on its own mock LINE and recording upstream
/// (`login_extra` in `[login]`, `session_extra` in `[session]`).
async fn web_env(login_extra: &str, session_extra: &str) -> Env {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.set_login_user(MockLoginUser::new(USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let extra = web_login_config(&line, &format!("{APP}{CALLBACK}"), login_extra, session_extra);
    let proxy = spawn_proxy_with(config(&config_text(&line.base_url(), &upstream.url(), &extra)), &clock).await;
    Env { clock, line, upstream, proxy }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers().get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

/// A GET from the browser: its cookies, navigation headers.
async fn navigate(url: &str, jar: &mut Jar) -> reqwest::Response {
    let mut request = no_redirects()
        .get(url)
        .header("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")
        .header("sec-fetch-mode", "navigate");
    if !jar.0.is_empty() {
        request = request.header("cookie", jar.header());
    }
    let r = request.send().await.unwrap();
    jar.update(r.headers());
    r
}

/// `GET login.path?{query}`: the authorize URL the proxy sends the browser to.
async fn start(e: &Env, query: &str, jar: &mut Jar) -> String {
    let r = navigate(&e.proxy.url(&format!("/auth/login?{query}")), jar).await;
    assert_eq!(r.status(), 302, "login.path");
    let to = location(&r);
    assert!(to.starts_with(&e.line.authorize_url()), "{to}");
    to
}

/// The mock's authorize page: the callback query LINE sends the browser back with.
async fn authorize(authorize_url: &str) -> String {
    let r = no_redirects().get(authorize_url).send().await.unwrap();
    assert_eq!(r.status(), 302, "the mock's authorize page");
    let to = location(&r);
    let query = to.strip_prefix(&format!("{APP}{CALLBACK}?")).unwrap_or_else(|| panic!("back to the callback: {to}"));
    query.to_owned()
}

/// The callback with `query`, as the browser follows LINE's redirect.
async fn callback(e: &Env, query: &str, jar: &mut Jar) -> reqwest::Response {
    navigate(&e.proxy.url(&format!("{CALLBACK}?{query}")), jar).await
}

/// A whole login from `login.path?{query}`: the callback's answer.
async fn log_in(e: &Env, query: &str, jar: &mut Jar) -> reqwest::Response {
    let to = start(e, query, jar).await;
    let back = authorize(&to).await;
    callback(e, &back, jar).await
}

fn param(url: &str, key: &str) -> Option<String> {
    reqwest::Url::parse(url).unwrap().query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

async fn logout(e: &Env, jar: &mut Jar, origin: &str, query: &str) -> reqwest::Response {
    let r = no_redirects()
        .post(e.proxy.url(&format!("/auth/logout{query}")))
        .header("cookie", jar.header())
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    jar.update(r.headers());
    r
}

#[tokio::test]
async fn a_browser_logs_in_reaches_the_app_as_the_line_user_and_logs_out() {
    let e =
        web_env("scope = [\"openid\", \"profile\", \"email\"]\nbot_prompt = \"normal\"\nui_locales = \"ja-JP\"", "")
            .await;
    let mut user = MockLoginUser::new(USER, "Brown");
    user.email = Some("brown@example.com".into());
    e.line.set_login_user(user);
    let mut jar = Jar::default();
    // A navigation to a session route without a session is sent to log in.
    let r = navigate(&e.proxy.url("/app/orders?page=2"), &mut jar).await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), "/auth/login?return_to=%2Fapp%2Forders%3Fpage%3D2");
    let to = start(&e, "return_to=%2Fapp%2Forders%3Fpage%3D2", &mut jar).await;
    // Every parameter LINE's authorize endpoint takes for this flow.
    for (key, value) in [
        ("response_type", "code"),
        ("client_id", CHANNEL),
        ("redirect_uri", &format!("{APP}{CALLBACK}")),
        ("scope", "openid profile email"),
        ("code_challenge_method", "S256"),
        ("bot_prompt", "normal"),
        ("ui_locales", "ja-JP"),
    ] {
        assert_eq!(param(&to, key).as_deref(), Some(value), "{key} in {to}");
    }
    for key in ["state", "nonce", "code_challenge"] {
        assert!(param(&to, key).is_some_and(|v| v.len() >= 43), "{key} in {to}");
    }
    assert_eq!(param(&to, "disable_auto_login"), None);
    // The pre-login flow is a cookie of its own, sealed, short-lived.
    let flows: Vec<&str> = jar.names().into_iter().filter(|n| n.starts_with(&format!("{COOKIE}.login."))).collect();
    assert_eq!(flows.len(), 1, "{:?}", jar.names());
    let nonce = param(&to, "nonce").unwrap();
    assert!(!jar.header().contains(&nonce), "the flow cookie shows its nonce");

    let back = authorize(&to).await;
    let r = callback(&e, &back, &mut jar).await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), "/app/orders?page=2");
    let session = set_cookies(&r).into_iter().find(|c| c.starts_with(&format!("{COOKIE}=v1."))).expect("a session");
    let attributes: Vec<&str> = session.split("; ").skip(1).collect();
    assert_eq!(attributes, ["Path=/", "Max-Age=86400", "HttpOnly", "Secure", "SameSite=Lax"], "{session}");
    assert_eq!(jar.names(), [COOKIE], "the flow cookie was cleared");
    assert_eq!(e.line.token_calls(), 1);
    assert_eq!(e.upstream.hits(), 0, "the login forwarded something");

    // The page, as the LINE user, with the email of the ID token.
    let r = navigate(&e.proxy.url("/app/orders?page=2"), &mut jar).await;
    assert_eq!(r.status(), 200);
    let seen = e.upstream.last();
    assert_eq!(seen.headers["x-line-user-id"], USER);
    assert_eq!(seen.headers["x-line-auth-method"], "session");
    assert_eq!(seen.headers["x-line-channel-id"], CHANNEL);
    assert_eq!(seen.headers["x-line-email"], "brown@example.com");
    assert!(seen.headers.get("cookie").is_none(), "a cookie of the proxy reached the upstream");
    // Reloads ride the cached verdict: no LINE call.
    let verifies = e.line.verify_calls();
    for _ in 0..3 {
        assert_eq!(navigate(&e.proxy.url("/app/orders"), &mut jar).await.status(), 200);
    }
    assert_eq!(e.line.verify_calls(), verifies, "a reload called LINE");

    // Logout: revoked at LINE, cookie cleared, 204.
    let cookie_before = jar.clone();
    let r = logout(&e, &mut jar, APP, "").await;
    assert_eq!(r.status(), 204);
    assert_eq!(e.line.revoke_calls(), 1);
    assert!(set_cookies(&r).iter().any(|c| c.starts_with(&format!("{COOKIE}=;")) && c.contains("Max-Age=0")));
    assert!(jar.0.is_empty());
    // The next navigation starts a new login.
    let r = navigate(&e.proxy.url("/app/orders"), &mut jar).await;
    assert_eq!(r.status(), 302);
    assert!(location(&r).starts_with("/auth/login?"));
    // A copy of the old cookie is dead at once: its cached verdict was dropped
    // and LINE says the token is revoked.
    let hits = e.upstream.hits();
    let mut stolen = cookie_before;
    let r = no_redirects()
        .get(e.proxy.url("/app/orders"))
        .header("cookie", stolen.header())
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    stolen.update(r.headers());
    assert_eq!(r.status(), 401);
    assert!(stolen.0.is_empty(), "the dead session's cookie is cleared");
    assert_eq!(e.upstream.hits(), hits);
    let m = e.proxy.metrics().await;
    for outcome in ["login_started", "session_issued", "logged_out", "login_redirect"] {
        let series = format!("line_auth_proxy_requests_total{{outcome=\"{outcome}\",auth=\"session\"}}");
        assert!(metric(&m, &series) >= 1.0, "{series}\n{m}");
    }
}

#[tokio::test]
async fn api_calls_are_never_redirected_and_other_routes_never_see_the_flow() {
    let e = web_env("", "").await;
    let r = client().get(e.proxy.url("/app/data")).header("accept", "application/json").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("location").is_none());
    let r = client().post(e.proxy.url("/app/data")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(r.status(), 401, "a form POST without a session is not sent to log in");
    let r = no_redirects().get(e.proxy.url("/app/data")).header("sec-fetch-mode", "cors").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // A flow cookie never reaches the upstream, not even on a public route.
    let mut jar = Jar::default();
    start(&e, "", &mut jar).await;
    let r = client().get(e.proxy.url("/public/x")).header("cookie", format!("{}; a=1", jar.header())).send().await;
    assert_eq!(r.unwrap().status(), 200);
    assert_eq!(e.upstream.last().headers["cookie"], "a=1");
    assert_eq!(e.upstream.hits(), 1);
}

#[tokio::test]
async fn a_replayed_or_injected_code_is_refused_by_line_and_gives_no_session() {
    let e = web_env("", "").await;
    // Replay: the callback URL and the flow cookie copied before the browser used them.
    let mut jar = Jar::default();
    let to = start(&e, "", &mut jar).await;
    let back = authorize(&to).await;
    let mut copy = jar.clone();
    assert_eq!(callback(&e, &back, &mut jar).await.status(), 302);
    // Replayed by a script (JSON answers), so that the error code shows.
    let r = no_redirects()
        .get(e.proxy.url(&format!("{CALLBACK}?{back}")))
        .header("cookie", copy.header())
        .send()
        .await
        .unwrap();
    copy.update(r.headers());
    assert!(copy.get(COOKIE).is_none());
    assert_eq!(json_error(r, 401).await, "access_denied", "a used code logged in again");
    // Injection: a code issued for one flow delivered with another flow's
    // state and cookie (the attacker's code in the victim's browser): the
    // verifier is not the one the code was bound to.
    let (mut a, mut b) = (Jar::default(), Jar::default());
    let to_a = start(&e, "", &mut a).await;
    let to_b = start(&e, "", &mut b).await;
    let back_a = authorize(&to_a).await;
    let code_a = param(&format!("{APP}/?{back_a}"), "code").unwrap();
    let state_b = param(&to_b, "state").unwrap();
    let r = callback(&e, &format!("code={code_a}&state={state_b}"), &mut b).await;
    assert_eq!(r.status(), 401, "PKCE did not bind the code to its flow");
    assert!(b.get(COOKIE).is_none());
    assert_eq!(e.upstream.hits(), 0);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"login_code_refused\"}"), 2.0, "{m}");
}

#[tokio::test]
async fn a_state_that_matches_no_flow_restarts_once_without_auto_login_then_fails() {
    let e = web_env("", "").await;
    // LINE's auto-login failure: back with a state that is not the one sent.
    e.line.fail_next_auto_login();
    let mut jar = Jar::default();
    let to = start(&e, "return_to=/app/x", &mut jar).await;
    let back = authorize(&to).await;
    let r = callback(&e, &back, &mut jar).await;
    assert_eq!(r.status(), 302, "restarted");
    let retry = location(&r);
    assert!(retry.starts_with(&e.line.authorize_url()), "{retry}");
    assert_eq!(param(&retry, "disable_auto_login").as_deref(), Some("true"));
    assert!(jar.get(COOKIE).is_none());
    // The retry completes.
    let back = authorize(&retry).await;
    let r = callback(&e, &back, &mut jar).await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), "/");
    assert!(jar.get(COOKIE).is_some());

    // A retry's state that again matches nothing is a 400, never another redirect.
    let mut jar = Jar::default();
    e.line.fail_next_auto_login();
    let back = authorize(&start(&e, "", &mut jar).await).await;
    let retry = location(&callback(&e, &back, &mut jar).await);
    let state = param(&retry, "state").unwrap();
    // (Its first character changed, so that it can never be the state itself.)
    let first = if state.starts_with('2') { "3" } else { "2" };
    let r = callback(&e, &format!("code=x&state={first}{}", &state[1..].replace('a', "b")), &mut jar).await;
    assert_eq!(r.status(), 400);
    assert!(r.headers().get("location").is_none());
    let page = r.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>") && page.contains("/auth/login"), "a page for the browser: {page}");
    // A state that is none of ours, or none at all: 400.
    // A state of the right length in bytes whose first character is not one
    // byte (once a panic: slicing a string inside a character).
    let multibyte = format!("code=x&state=%C3%A9{}", "0".repeat(63));
    for query in ["code=x&state=forged", "code=x", "state=1&state=2", "", &multibyte] {
        let r = callback(&e, query, &mut Jar::default()).await;
        assert_eq!(r.status(), 400, "{query}");
    }
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn a_pre_login_flow_expires_after_ten_minutes() {
    let e = web_env("", "").await;
    let mut jar = Jar::default();
    let to = start(&e, "return_to=/app/x", &mut jar).await;
    let back = authorize(&to).await;
    e.clock.advance(Duration::from_secs(601));
    let r = callback(&e, &back, &mut jar).await;
    assert_eq!(r.status(), 302);
    assert!(location(&r).starts_with(&e.line.authorize_url()), "an expired flow is started again, not used");
    assert!(jar.get(COOKIE).is_none());
    assert_eq!(e.line.token_calls(), 0, "the code of an expired flow was exchanged");
}

/// An ID token that fails one check, served by the mock's token endpoint.
fn token_answer(id_token: &str) -> Faults {
    let body = serde_json::json!({
        "access_token": TOKEN, "expires_in": 2_592_000, "id_token": id_token,
        "refresh_token": "r", "scope": "openid profile", "token_type": "Bearer",
    });
    Faults { token: Some(Fault::Body(Box::leak(body.to_string().into_boxed_str()))), ..Faults::default() }
}

#[tokio::test]
async fn an_id_token_with_another_nonce_secret_audience_or_expiry_gives_no_session() {
    let e = web_env("", "").await;
    e.line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let claims = |nonce: &str| e.line.id_claims(CHANNEL, USER, Some(nonce));
    let mut jar = Jar::default();
    let to = start(&e, "", &mut jar).await;
    let nonce = param(&to, "nonce").unwrap();
    let mut expired = claims(&nonce);
    expired["exp"] = serde_json::json!(e.clock.unix_seconds() - 3600);
    expired["iat"] = serde_json::json!(e.clock.unix_seconds() - 7200);
    let mut other_audience = claims(&nonce);
    other_audience["aud"] = serde_json::json!(OTHER_CHANNEL);
    let cases = [
        ("another nonce", MockLine::sign_hs256(SECRET.as_bytes(), &claims("a-nonce-of-another-login"))),
        ("no nonce", MockLine::sign_hs256(SECRET.as_bytes(), &e.line.id_claims(CHANNEL, USER, None))),
        ("another secret", MockLine::sign_hs256(b"not-the-channel-secret", &claims(&nonce))),
        ("another audience", MockLine::sign_hs256(SECRET.as_bytes(), &other_audience)),
        ("expired", MockLine::sign_hs256(SECRET.as_bytes(), &expired)),
        ("not a JWT", "not-a-jwt".to_owned()),
    ];
    let back = authorize(&to).await;
    for (case, id_token) in cases {
        e.line.set_faults(token_answer(&id_token));
        let mut copy = jar.clone();
        let r = callback(&e, &back, &mut copy).await;
        assert_eq!(r.status(), 401, "{case}");
        assert!(copy.get(COOKIE).is_none(), "{case}: a session");
    }
    // The same answer with the flow's nonce logs in: the cases above failed
    // on their one difference.
    e.line.set_faults(token_answer(&MockLine::sign_hs256(SECRET.as_bytes(), &claims(&nonce))));
    assert_eq!(callback(&e, &back, &mut jar).await.status(), 302);
    assert!(jar.get(COOKIE).is_some());
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn line_errors_at_the_callback_are_answered_never_redirected() {
    let e = web_env("", "").await;
    // The user cancels at LINE: 401, JSON for an API client, a page for a browser.
    let mut user = MockLoginUser::new(USER, "Brown");
    user.deny = true;
    e.line.set_login_user(user);
    let mut jar = Jar::default();
    let back = authorize(&start(&e, "", &mut jar).await).await;
    assert!(back.contains("error=access_denied"), "{back}");
    let r = no_redirects().get(e.proxy.url(&format!("{CALLBACK}?{back}"))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json_error(r, 401).await, "access_denied");
    let r = callback(&e, &back, &mut jar).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.headers().get("location").is_none());
    assert!(jar.0.is_empty(), "the flow cookie is cleared on an error too: {:?}", jar.names());
    // Other errors LINE may send.
    for (error, status) in [("invalid_request", 400), ("server_error", 503), ("temporarily_unavailable", 503)] {
        let r = callback(&e, &format!("error={error}&state=1"), &mut Jar::default()).await;
        assert_eq!(r.status(), status, "{error}");
        assert!(r.headers().get("location").is_none());
    }
    // LINE's token endpoint down or refusing the channel secret: 503, no session.
    e.line.set_login_user(MockLoginUser::new(USER, "Brown"));
    for fault in [Fault::Status(500), Fault::Status(401), Fault::Garbage] {
        e.line.set_faults(Faults { token: Some(fault), ..Faults::default() });
        let mut jar = Jar::default();
        let r = log_in(&e, "", &mut jar).await;
        assert_eq!(r.status(), 503, "{fault:?}");
        assert!(r.headers().contains_key("retry-after"));
        assert!(jar.get(COOKIE).is_none());
    }
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn line_down_at_revalidation_is_a_503_and_a_revoked_token_ends_the_session() {
    let e = web_env("", "revalidate_seconds = 60").await;
    let mut jar = Jar::default();
    assert_eq!(log_in(&e, "", &mut jar).await.status(), 302);
    assert_eq!(navigate(&e.proxy.url("/app/x"), &mut jar).await.status(), 200);
    e.line.set_faults(verify_fails(Fault::Status(500)));
    e.clock.advance(Duration::from_secs(61));
    let hits = e.upstream.hits();
    let r = navigate(&e.proxy.url("/app/x"), &mut jar).await;
    assert_eq!(r.status(), 503, "LINE down after revalidate_seconds");
    assert!(jar.get(COOKIE).is_some(), "LINE being down is no reason to end a session");
    e.line.set_faults(Faults::default());
    assert_eq!(navigate(&e.proxy.url("/app/x"), &mut jar).await.status(), 200);
    // Revoked at LINE (by another device, say): over within revalidate_seconds.
    for token in e.line.issued_access_tokens() {
        e.line.remove_token(&token);
    }
    assert_eq!(navigate(&e.proxy.url("/app/x"), &mut jar).await.status(), 200, "still within the bound");
    e.clock.advance(Duration::from_secs(61));
    let r = navigate(&e.proxy.url("/app/x"), &mut jar).await;
    assert_eq!(r.status(), 302, "a navigation with a dead session logs in again");
    assert!(location(&r).starts_with("/auth/login?return_to="));
    assert!(jar.get(COOKIE).is_none());
    assert_eq!(e.upstream.hits(), hits + 2);
}

#[tokio::test]
async fn return_to_never_leaves_the_origin() {
    let e = web_env("", "").await;
    let app = reqwest::Url::parse(&format!("{APP}/")).unwrap();
    // The payloads of the oauth2-proxy and Vouch open-redirect advisories,
    // raw, encoded and double-encoded, as they would sit in the query.
    let payloads = [
        "//evil.example",
        "/\\evil.example",
        "/%09/evil.example",
        "/%0a/evil.example",
        "/%0d%0a/evil.example",
        "https://evil.example",
        "javascript:alert(1)",
        "/\\t/evil.example",
        "%2F%2Fevil.example",
        "%2F%5Cevil.example",
        "/%2F/evil.example",
        "/%5Cevil.example",
        "%252F%252Fevil.example",
        "/%252F/evil.example",
        "/%255Cevil.example",
        "%2F%09%2Fevil.example",
        "https:%2F%2Fevil.example",
        "/%E2%80%A8/evil.example",
        "%68ttps://evil.example",
        "///evil.example",
        "/.//evil.example",
        "/ /evil.example",
        "/@evil.example",
        "/app?next=//evil.example",
    ];
    for payload in payloads {
        let mut jar = Jar::default();
        let r = log_in(&e, &format!("return_to={payload}"), &mut jar).await;
        assert_eq!(r.status(), 302, "{payload}");
        let to = location(&r);
        let landed = app.join(&to).unwrap();
        assert_eq!(landed.host_str(), Some("app.example"), "{payload} → {to}");
        assert!(to.starts_with('/') && !to.starts_with("//") && !to.starts_with("/\\"), "{payload} → {to}");
        assert!(to.bytes().all(|b| b.is_ascii_graphic()), "{payload} → {to:?}");
        // Logout's return_to keeps to the same rule.
        let r = logout(&e, &mut jar, APP, &format!("?return_to={payload}")).await;
        assert_eq!(r.status(), 303, "{payload}");
        assert_eq!(app.join(&location(&r)).unwrap().host_str(), Some("app.example"), "{payload}");
    }
    // The ones that are paths of the app are kept.
    for (payload, expected) in [("/app/orders?x=1%262", "/app/orders?x=1&2"), ("%2Fapp%2F", "/app/")] {
        let r = log_in(&e, &format!("return_to={payload}"), &mut Jar::default()).await;
        assert_eq!(location(&r), expected);
    }
}

#[tokio::test]
async fn every_login_is_a_new_session_and_a_session_sent_to_login_is_cleared() {
    let e = web_env("", "").await;
    let mut jar = Jar::default();
    log_in(&e, "", &mut jar).await;
    let first = jar.get(COOKIE).unwrap().to_owned();
    // Starting a login with a session (planted or real) clears it first.
    let r = navigate(&e.proxy.url("/auth/login"), &mut jar).await;
    assert_eq!(r.status(), 302);
    assert!(set_cookies(&r).iter().any(|c| c.starts_with(&format!("{COOKIE}=;")) && c.contains("Max-Age=0")));
    assert!(jar.get(COOKIE).is_none());
    log_in(&e, "", &mut jar).await;
    let second = jar.get(COOKIE).unwrap().to_owned();
    assert_ne!(first, second, "a login continued an old session value");
}

#[tokio::test]
async fn logins_in_several_tabs_do_not_clobber_each_other_and_few_flows_are_kept() {
    let e = web_env("", "").await;
    let mut jar = Jar::default();
    let to_a = start(&e, "return_to=/app/a", &mut jar).await;
    let to_b = start(&e, "return_to=/app/b", &mut jar).await;
    let back_a = authorize(&to_a).await;
    let back_b = authorize(&to_b).await;
    // Tab B finishes first, then tab A: both land where they started.
    assert_eq!(location(&callback(&e, &back_b, &mut jar).await), "/app/b");
    assert_eq!(location(&callback(&e, &back_a, &mut jar).await), "/app/a");
    // Many logins started and never finished: at most four flows are kept.
    let mut jar = Jar::default();
    for i in 0..7 {
        e.clock.advance(Duration::from_secs(1));
        start(&e, &format!("return_to=/app/{i}"), &mut jar).await;
        let flows = jar.names().iter().filter(|n| n.starts_with(&format!("{COOKIE}.login."))).count();
        assert_eq!(flows, (i + 1).min(4), "after {} logins", i + 1);
    }
}

#[tokio::test]
async fn logout_takes_post_from_the_app_itself_and_a_failed_revoke_still_clears() {
    let e = web_env("", "").await;
    let mut jar = Jar::default();
    log_in(&e, "", &mut jar).await;
    let r = no_redirects().get(e.proxy.url("/auth/logout")).header("cookie", jar.header()).send().await.unwrap();
    assert_eq!(r.status(), 405, "a link (or an <img>) must not log anyone out");
    assert_eq!(r.headers()["allow"], "POST");
    for origin in ["https://evil.example", "null", "https://app.example.evil.example"] {
        let r = logout(&e, &mut jar.clone(), origin, "").await;
        assert_eq!(r.status(), 403, "{origin}");
        assert!(r.headers().get("set-cookie").is_none());
    }
    let r = no_redirects().post(e.proxy.url("/auth/logout")).header("cookie", jar.header()).send().await.unwrap();
    assert_eq!(r.status(), 403, "no Origin, no Sec-Fetch-Site");
    assert_eq!(e.line.revoke_calls(), 0);
    // Sec-Fetch-Site: same-origin is the app's own page too.
    e.line.set_faults(Faults { revoke: Some(Fault::Status(500)), ..Faults::default() });
    let r = no_redirects()
        .post(e.proxy.url("/auth/logout"))
        .header("cookie", jar.header())
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "a failed revoke still logs out here");
    assert_eq!(e.line.revoke_calls(), 1);
    jar.update(r.headers());
    assert!(jar.0.is_empty());
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn the_login_endpoints_take_their_methods_and_strip_nothing_into_the_upstream() {
    let e = web_env("", "").await;
    let r = client().post(e.proxy.url("/auth/login")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    let r = client().post(e.proxy.url(CALLBACK)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    // Identity headers a client sends alongside a session are replaced, as everywhere.
    let mut jar = Jar::default();
    log_in(&e, "", &mut jar).await;
    let r = client()
        .get(e.proxy.url("/app/x"))
        .header("cookie", jar.header())
        .header("x-line-user-id", "Uattacker")
        .header("x_line_email", "evil@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = e.upstream.last();
    assert_eq!(seen.headers["x-line-user-id"], USER);
    assert!(seen.headers.get("x-line-email").is_none() && seen.headers.get("x_line_email").is_none());
}

#[tokio::test]
async fn logout_drops_the_shared_redis_verdict_and_other_replicas_follow_within_the_bound() {
    let redis = RedisServer::start().await;
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.set_login_user(MockLoginUser::new(USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let shared =
        format!("[cache]\nttl_seconds = 600\nshared = \"redis\"\nredis_url = \"{}\"\n{}", redis.url(4), mac_key_line());
    let extra =
        format!("{}\n{shared}", web_login_config(&line, &format!("{APP}{CALLBACK}"), "", "revalidate_seconds = 600"));
    let text = config_text(&line.base_url(), &upstream.url(), &extra);
    let a = spawn_proxy_with(config(&text), &clock).await;
    let b = spawn_proxy_with(config(&text), &clock).await;
    let e = Env { clock: clock.clone(), line, upstream, proxy: a };
    let mut jar = Jar::default();
    log_in(&e, "", &mut jar).await;
    assert_eq!(navigate(&e.proxy.url("/app/x"), &mut jar).await.status(), 200);
    assert!(eventually(Duration::from_secs(5), || async { !redis.keys(4, "*").await.is_empty() }).await);
    let verifies = e.line.verify_calls();
    assert_eq!(navigate(&b.url("/app/x"), &mut jar.clone()).await.status(), 200);
    assert_eq!(e.line.verify_calls(), verifies, "replica b did not use the shared verdict");
    let cookie = jar.clone();
    assert_eq!(logout(&e, &mut jar, APP, "").await.status(), 204);
    assert!(redis.keys(4, "*").await.is_empty(), "the shared verdict outlived the logout");
    // A replica with nothing in memory finds no shared verdict: it asks LINE,
    // which says revoked.
    let c = spawn_proxy_with(config(&text), &clock).await;
    let r = navigate(&c.url("/app/x"), &mut cookie.clone()).await;
    assert_eq!(r.status(), 302, "the shared verdict served a logged-out session");
    assert!(e.line.verify_calls() > verifies);
    // Replica b had the verdict in memory: its copy ends within
    // revalidate_seconds (the documented bound), then LINE says revoked.
    let verifies = e.line.verify_calls();
    assert_eq!(navigate(&b.url("/app/x"), &mut cookie.clone()).await.status(), 200);
    clock.advance(Duration::from_secs(601));
    let r = navigate(&b.url("/app/x"), &mut cookie.clone()).await;
    assert_eq!(r.status(), 302);
    assert_eq!(e.line.verify_calls(), verifies + 1);
    assert_eq!(e.upstream.hits(), 3, "a, b, and b before its bound");
}

#[tokio::test]
async fn forward_auth_answers_a_navigation_without_a_session_401_never_a_redirect() {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.set_login_user(MockLoginUser::new(USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let extra =
        format!("{}\n[forward_auth]\nenabled = true\n", web_login_config(&line, &format!("{APP}{CALLBACK}"), "", ""));
    let text = config_text(&line.base_url(), &upstream.url(), &extra)
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\ntrusted_proxies = [\"127.0.0.1/32\"]");
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    let e = Env { clock, line, upstream, proxy };
    let check = |cookie: Option<String>| {
        let mut r = no_redirects()
            .get(e.proxy.url("/_auth/verify"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/app/orders")
            .header("accept", "text/html")
            .header("sec-fetch-mode", "navigate");
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send()
    };
    // nginx's auth_request takes 2xx, 401 and 403 only: a 302 would be its 500.
    let r = check(None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("location").is_none());
    let mut jar = Jar::default();
    assert_eq!(log_in(&e, "", &mut jar).await.status(), 302);
    let r = check(Some(jar.header())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-line-user-id"], USER);
    assert_eq!(r.headers()["x-line-auth-method"], "session");
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn with_max_age_the_id_token_must_say_the_user_logged_in_within_it() {
    let e = web_env("max_age = 600", "").await;
    // The mock's authorize page logs the user in now and says so in auth_time.
    let mut jar = Jar::default();
    assert_eq!(log_in(&e, "", &mut jar).await.status(), 302);
    assert!(jar.get(COOKIE).is_some());
    assert!(e.line.last_authorize_query().unwrap().contains("max_age=600"));
    // An ID token with no auth_time, or one of a login an hour ago: no session.
    e.line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let mut jar = Jar::default();
    let to = start(&e, "", &mut jar).await;
    let nonce = param(&to, "nonce").unwrap();
    let back = authorize(&to).await;
    let now = e.clock.unix_seconds();
    for (case, auth_time) in [("no auth_time", None), ("an hour ago", Some(now - 3600)), ("now", Some(now))] {
        let mut claims = e.line.id_claims(CHANNEL, USER, Some(&nonce));
        if let Some(t) = auth_time {
            claims["auth_time"] = t.into();
        }
        e.line.set_faults(token_answer(&MockLine::sign_hs256(SECRET.as_bytes(), &claims)));
        let mut copy = jar.clone();
        let r = callback(&e, &back, &mut copy).await;
        let expected = if case == "now" { 302 } else { 401 };
        assert_eq!(r.status(), expected, "{case}");
        assert_eq!(copy.get(COOKIE).is_some(), case == "now", "{case}");
    }
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"id_token_too_old\"}"), 2.0, "{m}");
    assert_eq!(e.upstream.hits(), 0);
}
