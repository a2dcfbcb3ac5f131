//! Web login in a real browser: headless Chromium (over WebDriver) opens a
//! session route, is sent through the mock LINE Platform's authorize page and
//! the callback, and lands on the page as the LINE user; the cookie is kept
//! with the flags the proxy set; reloads need no LINE call; logout ends it;
//! a form posted from another origin is refused before the upstream. Then the
//! `dev` binary: the URL it prints ends on the echo upstream showing the
//! identity, and the logout line it prints works in that page.
//!
//! The browser talks to `http://127.0.0.1:<port>`: Chromium counts loopback as
//! a secure context, so it keeps the `Secure` (and `__Host-`) cookie there as
//! it would on `https://` (checked below, not assumed).
#![cfg(feature = "dev")]

mod support;

use std::process::{Command, Stdio};

use line_auth_proxy::dev::{DEMO_USER_ID, LoopbackServer, MockLoginUser};
use support::browser::Browser;
use support::process::dev_banner;
use support::sessions::COOKIE;
use support::web_login::web_login_config;
use support::*;

/// A page on another origin of the same site (another port of 127.0.0.1, so
/// `SameSite=Lax` does send the cookie: only the Origin check stands between)
/// that posts a form to `target` as soon as it loads.
async fn cross_origin_form(target: String) -> LoopbackServer {
    LoopbackServer::start(move |_req| {
        let page = format!(
            "<!doctype html><title>elsewhere</title>\
             <form method=post action=\"{target}\"><input name=amount value=1000000></form>\
             <script>document.forms[0].submit()</script>"
        );
        async move {
            let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(page)));
            r.headers_mut().insert("content-type", http::HeaderValue::from_static("text/html"));
            Ok::<_, std::convert::Infallible>(r)
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn chromium_logs_in_with_line_reloads_without_line_and_logs_out() {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let clock = Clock::system();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.set_login_user(MockLoginUser::new(USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let extra = web_login_config(&line, &format!("{origin}/auth/callback"), "", "");
    let proxy = spawn_proxy_on(config(&config_text(&line.base_url(), &upstream.url(), &extra)), listener, &clock).await;
    let browser = Browser::start().await;

    // A protected page: through LINE's authorize page and the callback, back to it.
    browser.client.goto(&format!("{origin}/app/orders?page=2")).await.unwrap();
    browser.wait_for_path("/app/orders?page=2").await;
    assert_eq!(browser.text().await.trim(), "upstream ok");
    assert_eq!((line.authorize_calls(), line.token_calls()), (1, 1));
    let query = line.last_authorize_query().unwrap();
    assert!(query.contains("code_challenge_method=S256") && query.contains("nonce="), "{query}");
    let seen = upstream.last();
    assert_eq!(seen.path_and_query, "/app/orders?page=2");
    assert_eq!(seen.headers["x-line-user-id"], USER);
    assert_eq!(seen.headers["x-line-auth-method"], "session");
    assert!(seen.headers.get("cookie").is_none(), "the session cookie reached the upstream");
    assert_eq!(upstream.hits(), 1, "the login itself forwarded something");

    // The cookie as Chromium keeps it: the session only (the flow's cookie is
    // gone), with every flag the proxy set, unreadable by the page's script.
    let cookies = browser.client.get_all_cookies().await.unwrap();
    let names: Vec<&str> = cookies.iter().map(|c| c.name()).collect();
    assert_eq!(names, [COOKIE], "{cookies:?}");
    let session = &cookies[0];
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(session.secure(), Some(true));
    assert_eq!(session.same_site().map(|s| s.to_string()).as_deref(), Some("Lax"));
    assert_eq!(session.path(), Some("/"));
    assert_eq!(browser.run("return document.cookie").await, "");

    // Reloads ride the cached verdict: no LINE call, no new login.
    let verifies = line.verify_calls();
    for _ in 0..3 {
        browser.client.refresh().await.unwrap();
        assert_eq!(browser.text().await.trim(), "upstream ok");
    }
    assert_eq!(line.verify_calls(), verifies, "a reload called LINE");
    assert_eq!((line.authorize_calls(), line.token_calls()), (1, 1));
    assert_eq!(upstream.hits(), 4);

    // The app's own script may post (same origin); a page of another origin
    // may not, though the browser sends the cookie with its form.
    let status =
        browser.run("return fetch('/app/transfer', {method: 'POST', body: 'amount=1'}).then(r => r.status)").await;
    assert_eq!(status, 200);
    assert_eq!(upstream.last().method, "POST");
    let elsewhere = cross_origin_form(format!("{origin}/app/transfer")).await;
    browser.client.goto(&elsewhere.url()).await.unwrap();
    browser.wait_for_path("/app/transfer").await;
    assert!(browser.text().await.contains("access_denied"), "{}", browser.text().await);
    assert_eq!(upstream.hits(), 5, "the cross-origin form reached the upstream");
    assert_eq!(proxy.metric("line_auth_proxy_auth_rejections_total{reason=\"cross_site_request\"}").await, 1.0);

    // Logout from the app's page: revoked at LINE, the cookie gone.
    browser.client.goto(&format!("{origin}/app/orders")).await.unwrap();
    let status = browser.run("return fetch('/auth/logout', {method: 'POST'}).then(r => r.status)").await;
    assert_eq!(status, 204);
    assert_eq!(line.revoke_calls(), 1);
    assert_eq!(line.revoked_tokens(), line.issued_access_tokens());
    assert!(browser.client.get_all_cookies().await.unwrap().is_empty());
    // The next reload is a new login (LINE's authorize page and token endpoint
    // again), ending on the page with a new session.
    browser.client.refresh().await.unwrap();
    browser.wait_for_path("/app/orders").await;
    assert_eq!(browser.text().await.trim(), "upstream ok");
    assert_eq!((line.authorize_calls(), line.token_calls()), (2, 2));
    assert_eq!(line.issued_access_tokens().len(), 2);
    browser.quit().await;
}

#[tokio::test]
async fn the_url_dev_prints_ends_on_the_echo_upstream_as_the_demo_user_and_its_logout_line_works() {
    let mut child = Reap(Some(
        Command::new(process::BIN)
            .args(["dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let lines = dev_banner(child.0.as_mut().expect("running")).await;
    let open = lines.iter().find_map(|l| l.strip_prefix("open ")).unwrap_or_else(|| panic!("{lines:#?}"));
    let logout = lines.iter().find(|l| l.starts_with("fetch('/auth/logout'")).unwrap_or_else(|| panic!("{lines:#?}"));
    let browser = Browser::start().await;
    browser.client.goto(open).await.unwrap();
    let page = reqwest::Url::parse(open).unwrap();
    browser.wait_for_path(page.path()).await;
    let echo: serde_json::Value = serde_json::from_str(&browser.text().await).unwrap();
    assert_eq!(echo["upstream"], "line-auth-proxy dev echo");
    assert_eq!(echo["headers"]["x-line-user-id"][0], DEMO_USER_ID);
    assert_eq!(echo["headers"]["x-line-auth-method"][0], "session");
    assert!(echo["headers"].get("cookie").is_none(), "{echo}");
    assert_eq!(browser.client.get_all_cookies().await.unwrap().len(), 1);
    let status = browser.run(&format!("return {}.then(r => r.status)", logout.trim_end_matches(';'))).await;
    assert_eq!(status, 204, "{logout}");
    assert!(browser.client.get_all_cookies().await.unwrap().is_empty());
    browser.quit().await;
    let mut child = child.0.take().expect("running");
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Kills the dev process when the test fails before stopping it (a failed
/// run left one serving after the test binary had exited).
struct Reap(Option<std::process::Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
