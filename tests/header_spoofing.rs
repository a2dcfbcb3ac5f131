//! No client can put an identity header in front of the upstream: every variant
//! of the prefix is stripped on every route, LINE's identity replaces it, and a
//! header LINE did not give is absent.
#![cfg(feature = "dev")]

mod support;

use support::*;

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/public/"
auth = "none"

[[routes]]
path_prefix = "/feed/"
auth = "optional"
"#;

/// Spoofing attempts in case, underscore and dot variants, plus the assertion header.
const SPOOFS: &[(&str, &str)] = &[
    ("X-Line-User-Id", "Uattacker0000000000000000000000000"),
    ("x-line-user-id", "Uattacker1"),
    ("X_LINE_USER_ID", "Uattacker2"),
    ("x.line.user.id", "Uattacker3"),
    ("X-LINE_Email", "evil@example.com"),
    ("X-Line-Picture-Url", "https://evil.example/p.png"),
    ("X-Line-Channel-Id", "1234567890"),
    ("X-Line-Auth-Method", "access_token"),
    ("X-Line-Expires-At", "99999999999"),
    ("X-Line-Anything-New", "1"),
    ("X-Line-Identity-Jwt", "eyJhbGciOiJub25lIn0.e30."),
];

fn spoofed(mut rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    for (name, value) in SPOOFS {
        rb = rb.header(*name, *value);
    }
    rb
}

/// Header names the upstream received that fold to the `x-line-` prefix.
fn identity_headers(r: &Recorded) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| k.as_str().replace(['_', '.'], "-").starts_with("x-line-"))
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap().to_string()))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn public_route_strips_every_variant() {
    let e = env(ROUTES).await;
    let r = spoofed(client().get(e.proxy.url("/public/x"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(identity_headers(&e.upstream.last()), vec![]);
    assert_eq!(e.line.verify_calls(), 0);
}

#[tokio::test]
async fn optional_route_without_credential_strips_every_variant() {
    let e = env(ROUTES).await;
    let r = spoofed(client().get(e.proxy.url("/feed/x"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(identity_headers(&e.upstream.last()), vec![]);
}

#[tokio::test]
async fn protected_route_replaces_spoofed_identity_with_lines() {
    let e = env(ROUTES).await;
    let r = spoofed(client().get(e.proxy.url("/api/me")).bearer_auth(TOKEN)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let got = identity_headers(&e.upstream.last());
    let expires_at = got.iter().find(|(k, _)| k == "x-line-expires-at").unwrap().1.clone();
    let expected: Vec<(String, String)> = vec![
        ("x-line-auth-method", "access_token"),
        ("x-line-channel-id", CHANNEL),
        ("x-line-display-name", "Brown"),
        ("x-line-expires-at", expires_at.as_str()),
        ("x-line-picture-url", "https://profile.line-scdn.net/abcdefghijklmn"),
        ("x-line-user-id", USER),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    // Exactly LINE's headers: one value each, no email (access tokens carry none).
    assert_eq!(got, expected);
    // LINE said expires_in = 2592000 (30 days), at the shared clock's now.
    assert_eq!(expires_at.parse::<u64>().unwrap(), e.clock.unix_seconds() + 2_592_000);
}

#[tokio::test]
async fn rejected_request_never_reaches_the_upstream() {
    let e = env(ROUTES).await;
    let r = spoofed(client().get(e.proxy.url("/api/me")).bearer_auth("forged-token")).send().await.unwrap();
    assert_eq!(json_error(r, 401).await, "invalid_token");
    let r = spoofed(client().get(e.proxy.url("/api/me"))).send().await.unwrap();
    assert_eq!(json_error(r, 401).await, "unauthorized");
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn header_line_did_not_give_is_absent_not_passed_through() {
    let e = env("").await;
    e.line.add_token("no-picture", MockToken::new(CHANNEL, USER, "Cony"));
    let r = client()
        .get(e.proxy.url("/api/me"))
        .bearer_auth("no-picture")
        .header("X-Line-Picture-Url", "https://evil.example/x.png")
        .header("X-Line-Email", "evil@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let last = e.upstream.last();
    assert!(last.headers.get("x-line-picture-url").is_none());
    assert!(last.headers.get("x-line-email").is_none());
    assert_eq!(last.headers["x-line-display-name"], "Cony");
}

#[tokio::test]
async fn connection_header_cannot_remove_injected_identity() {
    let e = env("").await;
    let answer = raw(
        e.proxy.addr,
        format!(
            "GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Connection: close, X-Line-User-Id, X-Line-Channel-Id, x-forwarded-for\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200);
    let last = e.upstream.last();
    assert_eq!(last.headers["x-line-user-id"], USER);
    assert_eq!(last.headers["x-line-channel-id"], CHANNEL);
    assert_eq!(last.headers["x-forwarded-for"], "127.0.0.1");
    // The client's Connection header itself is hop-by-hop: it never reaches the upstream.
    assert!(last.headers.get("connection").is_none(), "{:?}", last.headers.get("connection"));
}

#[tokio::test]
async fn display_name_is_percent_encoded_and_cannot_inject_headers() {
    let e = env("").await;
    e.line.add_token("unicode", MockToken::new(CHANNEL, USER, "ブラウン\r\nX-Line-User-Id: Uevil"));
    let r = client().get(e.proxy.url("/api/me")).bearer_auth("unicode").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let last = e.upstream.last();
    assert_eq!(
        last.headers["x-line-display-name"],
        "%E3%83%96%E3%83%A9%E3%82%A6%E3%83%B3%0D%0AX-Line-User-Id%3A%20Uevil"
    );
    assert_eq!(last.headers.get_all("x-line-user-id").iter().count(), 1);
    assert_eq!(last.headers["x-line-user-id"], USER);
}

#[tokio::test]
async fn authorization_is_removed_unless_configured() {
    let e = env(ROUTES).await;
    client().get(e.proxy.url("/api/me")).bearer_auth(TOKEN).send().await.unwrap();
    assert!(e.upstream.last().headers.get("authorization").is_none());
    client().get(e.proxy.url("/public/x")).bearer_auth(TOKEN).send().await.unwrap();
    assert!(e.upstream.last().headers.get("authorization").is_none());

    let e = env("[identity]\nforward_authorization = true\n").await;
    client().get(e.proxy.url("/api/me")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(e.upstream.last().headers["authorization"], format!("Bearer {TOKEN}"));
}

#[tokio::test]
async fn custom_prefix_strips_and_injects_under_that_prefix() {
    let e = env("[identity]\nheader_prefix = \"X-Auth-\"\n").await;
    let r =
        client().get(e.proxy.url("/api/me")).bearer_auth(TOKEN).header("x_auth_user_id", "Uevil").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let last = e.upstream.last();
    assert_eq!(last.headers["x-auth-user-id"], USER);
    assert!(last.headers.get("x_auth_user_id").is_none());
}

#[tokio::test]
async fn http2_clients_are_stripped_too() {
    let e = env(ROUTES).await;
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let r = spoofed(h2.get(e.proxy.url("/public/x"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(identity_headers(&e.upstream.last()), vec![]);
    let r = spoofed(h2.get(e.proxy.url("/api/me")).bearer_auth(TOKEN)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let last = e.upstream.last();
    assert_eq!(last.headers["x-line-user-id"], USER);
    assert!(last.headers.get("x-line-email").is_none());
    assert_eq!(last.headers["host"], e.proxy.addr.to_string().as_str());
}
