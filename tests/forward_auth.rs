//! The forward-auth endpoint, asked as an ingress asks it: 200 with exactly the
//! identity headers in the response, the contract's 401/503 otherwise; the
//! original method and URI only from a trusted peer, normalised like a request
//! line; one cache and one LINE call shared with the proxy path; and nothing
//! ever forwarded.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use support::*;

const PATH: &str = "/_auth/verify";
const ROUTES: &str = "[forward_auth]\nenabled = true\n\
    [[routes]]\npath_prefix = \"/public/\"\nauth = \"none\"\n\
    [[routes]]\npath_prefix = \"/cors/\"\nauth = \"access_token\"\nallow_cors_preflight = true\n\
    [[routes]]\npath_prefix = \"/maybe/\"\nauth = \"optional\"\n";

/// A proxy with forward-auth on; loopback is a trusted peer when `trusted`.
async fn fa_env(trusted: bool) -> Env {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let mut text = config_text(&line.base_url(), &upstream.url(), ROUTES);
    if trusted {
        text = text
            .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\ntrusted_proxies = [\"127.0.0.1/32\"]");
    }
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    Env { clock, line, upstream, proxy }
}

/// One check: GET the endpoint (plus `suffix`) with `headers` and an optional token.
async fn check(e: &Env, suffix: &str, headers: &[(&str, &str)], token: Option<&str>) -> reqwest::Response {
    let mut r = client().get(e.proxy.url(&format!("{PATH}{suffix}")));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

fn identity_headers(r: &reqwest::Response) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = r
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-line-"))
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_valid_token_gets_200_with_exactly_the_identity_headers_and_nothing_is_forwarded() {
    let e = fa_env(true).await;
    let spoofed = [
        ("x-forwarded-uri", "/api/orders"),
        ("x-forwarded-method", "POST"),
        ("x-line-user-id", "Uattacker0000000000000000000000000"),
        ("x_line_display_name", "mallory"),
        ("x-line-identity-jwt", "forged"),
    ];
    let r = check(&e, "", &spoofed, Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    let expires = e.clock.unix_seconds() + 2_592_000;
    let expected: Vec<(String, String)> = [
        ("x-line-auth-method", "access_token".to_string()),
        ("x-line-channel-id", CHANNEL.to_string()),
        ("x-line-display-name", "Brown".to_string()),
        ("x-line-expires-at", expires.to_string()),
        ("x-line-user-id", USER.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(identity_headers(&r), expected);
    assert!(r.headers().contains_key("x-request-id"));
    assert!(r.text().await.unwrap().is_empty());
    assert_eq!(e.upstream.hits(), 0, "forward-auth forwarded a request");
    let m = e.proxy.metrics().await;
    let allowed = "line_auth_proxy_forward_auth_requests_total{outcome=\"allowed\",auth=\"access_token\"}";
    assert_eq!(metric(&m, allowed), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_requests_total{outcome=\"forwarded\",auth=\"access_token\"}"), 0.0);
}

#[tokio::test]
async fn refusals_carry_the_bearer_challenge_and_outages_retry_after() {
    let e = fa_env(true).await;
    let r = check(&e, "", &[("x-forwarded-uri", "/api/x")], None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = check(&e, "", &[("x-forwarded-uri", "/api/x")], Some("bogus")).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert!(identity_headers(&r).is_empty());
    // LINE down: a token it has not vouched for yet cannot be checked.
    e.line.set_faults(Faults {
        verify: Some(Fault::Status(500)),
        profile: Some(Fault::Status(500)),
        ..Faults::default()
    });
    let r = check(&e, "", &[("x-forwarded-uri", "/api/x")], Some("another-token")).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(identity_headers(&r).is_empty());
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn a_trusted_ingress_names_the_route_and_an_untrusted_peer_cannot() {
    let trusted = fa_env(true).await;
    let untrusted = fa_env(false).await;
    for (uri, method) in [
        ("x-forwarded-uri", "x-forwarded-method"), // Traefik, Caddy
        ("x-original-uri", "x-original-method"),   // nginx
    ] {
        let public = [(uri, "/public/page?x=1"), (method, "GET")];
        let r = check(&trusted, "", &public, None).await;
        assert_eq!(r.status(), 200, "{uri}");
        assert!(identity_headers(&r).is_empty(), "a public route has no identity");
        let r = check(&trusted, "", &[(uri, "/api/orders")], None).await;
        assert_eq!(r.status(), 401, "{uri}: protected");
        // The same claim from a peer that is not an ingress changes nothing.
        let r = check(&untrusted, "", &public, None).await;
        assert_eq!(r.status(), 401, "{uri}: an untrusted X-Forwarded-Uri skipped authentication");
    }
    // Envoy's path_prefix form: the original path follows the endpoint's.
    assert_eq!(check(&trusted, "/public/page", &[], None).await.status(), 200);
    assert_eq!(check(&trusted, "/api/orders", &[], None).await.status(), 401);
    assert_eq!(check(&untrusted, "/public/page", &[], None).await.status(), 401);
    // Optional routes: anonymous without a token, the identity with one.
    let r = check(&trusted, "", &[("x-forwarded-uri", "/maybe/x")], None).await;
    assert_eq!(r.status(), 200);
    assert!(identity_headers(&r).is_empty());
    let r = check(&trusted, "", &[("x-forwarded-uri", "/maybe/x")], Some(TOKEN)).await;
    assert_eq!(r.headers()["x-line-user-id"], USER);
    let m = untrusted.proxy.metrics().await;
    let refused = "line_auth_proxy_forward_auth_requests_total{outcome=\"rejected\",auth=\"access_token\"}";
    assert_eq!(metric(&m, refused), 3.0, "{m}");
    assert_eq!(trusted.upstream.hits() + untrusted.upstream.hits(), 0);
}

#[tokio::test]
async fn forwarded_uris_are_normalised_like_a_request_line() {
    let e = fa_env(true).await;
    let status = |uri: &'static str| {
        let e = &e;
        async move { check(e, "", &[("x-forwarded-uri", uri)], None).await.status().as_u16() }
    };
    assert_eq!(status("/public/../admin").await, 401, "dot segments resolved before routing");
    assert_eq!(status("/public/%2e%2e/admin").await, 401, "escaped dot segments too");
    assert_eq!(status("/public//x").await, 200);
    assert_eq!(status("/public%2F..%2Fadmin").await, 400, "an encoded / is refused");
    assert_eq!(status("/public/..%5Cadmin").await, 400, "an encoded \\ is refused");
    assert_eq!(status("/admin?next=/public/").await, 401, "the query never routes");
    assert_eq!(status("public/x").await, 400, "not a path");
    assert_eq!(
        check(&e, "", &[("x-forwarded-uri", "/public/"), ("x-forwarded-method", "G E T")], None).await.status(),
        400
    );
    // Envoy's form is normalised as part of the request line itself.
    assert_eq!(check(&e, "/public/../admin", &[], None).await.status(), 401);
    assert_eq!(e.upstream.hits(), 0);
}

/// The ingress sets one family of headers and passes the client's other one
/// (nginx passes a client's `X-Forwarded-Uri` while it sets `X-Original-URI`):
/// two different names for the original request are refused, never one picked.
#[tokio::test]
async fn two_different_names_for_the_original_request_are_refused() {
    let e = fa_env(true).await;
    let client_spoof = [("x-forwarded-uri", "/public/"), ("x-original-uri", "/api/orders")];
    let r = check(&e, "", &client_spoof, None).await;
    assert_eq!(r.status(), 400);
    assert_eq!(json_error(r, 400).await, "invalid_request");
    let reversed = [("x-original-uri", "/public/"), ("x-forwarded-uri", "/api/orders")];
    assert_eq!(check(&e, "", &reversed, None).await.status(), 400);
    // One header twice: an appending ingress puts the client's copy first.
    let twice = [("x-forwarded-uri", "/public/"), ("x-forwarded-uri", "/api/orders")];
    assert_eq!(check(&e, "", &twice, None).await.status(), 400);
    // A header against Envoy's path form.
    assert_eq!(check(&e, "/api/orders", &[("x-forwarded-uri", "/public/")], None).await.status(), 400);
    // Two methods.
    let methods =
        [("x-forwarded-uri", "/cors/items"), ("x-forwarded-method", "OPTIONS"), ("x-original-method", "POST")];
    assert_eq!(check(&e, "", &methods, None).await.status(), 400);
    // Agreeing names (same path; the query never routes) are one request.
    let agreeing =
        [("x-forwarded-uri", "/public/a?x=1"), ("x-original-uri", "/public/a"), ("x-original-method", "GET")];
    assert_eq!(check(&e, "", &agreeing, None).await.status(), 200);
    let m = e.proxy.metrics().await;
    let series = "line_auth_proxy_forward_auth_requests_total{outcome=\"bad_request\",auth=\"access_token\"}";
    assert_eq!(metric(&m, series), 5.0, "{m}");
    assert_eq!(e.upstream.hits(), 0);
    assert_eq!(e.line.verify_calls(), 0);
}

#[tokio::test]
async fn cors_preflight_policy_applies_to_the_forwarded_method() {
    let e = fa_env(true).await;
    let preflight = [
        ("x-forwarded-uri", "/cors/items"),
        ("x-forwarded-method", "OPTIONS"),
        ("origin", "https://app.example"),
        ("access-control-request-method", "POST"),
    ];
    let r = check(&e, "", &preflight, None).await;
    assert_eq!(r.status(), 200, "a preflight on a preflight route passes uncredentialed");
    assert!(identity_headers(&r).is_empty());
    let elsewhere = [preflight[0], preflight[1], preflight[2], preflight[3]]
        .map(|(k, v)| if k == "x-forwarded-uri" { (k, "/api/items") } else { (k, v) });
    assert_eq!(check(&e, "", &elsewhere, None).await.status(), 401, "not on a route that allows it");
    let with_body = [preflight[0], preflight[1], preflight[2], preflight[3], ("x-forwarded-content-length", "0")];
    assert_eq!(check(&e, "", &with_body, None).await.status(), 200);
    let mut announcing = preflight.to_vec();
    announcing.push(("transfer-encoding", "chunked"));
    let r = client()
        .post(e.proxy.url(PATH))
        .headers(announcing.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a preflight with a body is no preflight");
    let m = e.proxy.metrics().await;
    let passed = "line_auth_proxy_forward_auth_requests_total{outcome=\"preflight\",auth=\"access_token\"}";
    assert_eq!(metric(&m, passed), 2.0, "{m}");
}

#[tokio::test]
async fn the_proxy_path_and_forward_auth_share_one_cache_and_one_line_call() {
    let e = fa_env(true).await;
    assert_eq!(e.status("/api/x", TOKEN).await, 200);
    assert_eq!(check(&e, "", &[("x-forwarded-uri", "/api/x")], Some(TOKEN)).await.status(), 200);
    assert_eq!(e.line.verify_calls(), 1, "forward-auth verified a cached token again");
    // Concurrent checks of a new token coalesce into one verification.
    e.line.add_token("second-token", MockToken::new(CHANNEL, USER, "Brown"));
    e.line.set_faults(Faults { delay: Duration::from_millis(200), ..Faults::default() });
    let url = e.proxy.url(PATH);
    let statuses = concurrent_statuses(url, "second-token", 20).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(e.line.verify_calls(), 2, "20 checks of one token, more than one LINE call");
    assert_eq!(e.status("/api/x", "second-token").await, 200);
    assert_eq!(e.line.verify_calls(), 2);
    assert_eq!(e.upstream.hits(), 2, "only the two proxied requests reached the upstream");
}

#[tokio::test]
async fn id_token_routes_consume_their_nonce_through_forward_auth() {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let extra = "[forward_auth]\nenabled = true\n[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n";
    let text =
        config_text_line(&line.base_url(), &upstream.url(), &format!("jwks_url = \"{}\"\n", line.jwks_url()), extra)
            .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\ntrusted_proxies = [\"127.0.0.1/32\"]");
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    let e = Env { clock, line, upstream, proxy };
    let nonce = e.nonce().await;
    let token = e.line.sign_es256(&e.claims(Some(&nonce)));
    let login = [("x-forwarded-uri", "/login"), ("x-forwarded-method", "POST")];
    let r = check(&e, "", &login, Some(&token)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-line-auth-method"], "id_token");
    assert_eq!(check(&e, "", &login, Some(&token)).await.status(), 401, "the nonce replayed");
}
