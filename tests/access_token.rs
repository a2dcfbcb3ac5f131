//! Access-token verification end to end: what LINE must say for a request to
//! pass, and every way it is refused (each proving the upstream was not reached).
#![cfg(feature = "dev")]

mod support;

use support::*;

#[tokio::test]
async fn valid_token_passes_with_one_verify_and_one_profile_call() {
    let e = env("").await;
    let r = client().get(e.proxy.url("/api/items?page=2")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "upstream ok");
    assert_eq!(e.upstream.hits(), 1);
    assert_eq!(e.upstream.last().path_and_query, "/api/items?page=2");
    assert_eq!((e.line.verify_calls(), e.line.profile_calls()), (1, 1));
}

#[tokio::test]
async fn missing_credential_is_401_with_bare_bearer_challenge() {
    let e = env("").await;
    let r = client().get(e.proxy.url("/anything")).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(json_error(r, 401).await, "unauthorized");
    assert_eq!(e.upstream.hits(), 0);
    assert_eq!(e.line.verify_calls(), 0);
}

async fn assert_rejected(e: &Env, rb: reqwest::RequestBuilder) {
    let r = rb.send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer error=\"invalid_token\"");
    assert_eq!(json_error(r, 401).await, "invalid_token");
    assert_eq!(e.upstream.hits(), 0, "a rejected request reached the upstream");
}

#[tokio::test]
async fn token_for_another_channel_is_refused() {
    let e = env("").await;
    e.line.add_token("other", MockToken::new(OTHER_CHANNEL, USER, "Mallory"));
    assert_rejected(&e, client().get(e.proxy.url("/api/x")).bearer_auth("other")).await;
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"wrong_channel\"}"), 1.0, "{m}");
}

#[tokio::test]
async fn zero_expires_in_is_refused() {
    let e = env("").await;
    let mut t = MockToken::new(CHANNEL, USER, "Brown");
    t.expires_in = 0;
    e.line.add_token("zero", t);
    assert_rejected(&e, client().get(e.proxy.url("/api/x")).bearer_auth("zero")).await;
    let mut t = MockToken::new(CHANNEL, USER, "Brown");
    t.expires_in = -5;
    e.line.add_token("negative", t);
    assert_rejected(&e, client().get(e.proxy.url("/api/x")).bearer_auth("negative")).await;
}

#[tokio::test]
async fn expired_and_unknown_tokens_are_refused() {
    let e = env("").await;
    let mut t = MockToken::new(CHANNEL, USER, "Brown");
    t.expired = true;
    e.line.add_token("expired", t);
    assert_rejected(&e, client().get(e.proxy.url("/api/x")).bearer_auth("expired")).await;
    assert_rejected(&e, client().get(e.proxy.url("/api/x")).bearer_auth("unknown")).await;
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"token_expired\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"token_invalid\"}"), 1.0, "{m}");
}

#[tokio::test]
async fn profile_refusal_alone_is_enough_to_refuse() {
    let e = env("").await;
    e.line.set_faults(Faults { profile: Some(Fault::Status(401)), ..Faults::default() });
    assert_rejected(&e, client().get(e.proxy.url("/api/x")).bearer_auth(TOKEN)).await;
}

#[tokio::test]
async fn malformed_authorization_headers_are_refused_before_line() {
    let e = env("").await;
    let c = client();
    assert_rejected(&e, c.get(e.proxy.url("/api/x")).header("authorization", format!("Basic {TOKEN}"))).await;
    assert_rejected(&e, c.get(e.proxy.url("/api/x")).header("authorization", "Bearer")).await;
    assert_rejected(&e, c.get(e.proxy.url("/api/x")).header("authorization", "Bearer a b")).await;
    assert_rejected(&e, c.get(e.proxy.url("/api/x")).header("authorization", "Bearer ===")).await;
    let huge = format!("Bearer {}", "a".repeat(5000));
    assert_rejected(&e, c.get(e.proxy.url("/api/x")).header("authorization", huge)).await;
    assert_eq!(e.line.verify_calls(), 0);
    // Scheme matched case-insensitively.
    let r = c.get(e.proxy.url("/api/x")).header("authorization", format!("bEaReR {TOKEN}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let e = env("").await;
    let answer = raw(
        e.proxy.addr,
        format!("GET /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 401, "{answer}");
    assert!(answer.contains("invalid_token"));
    assert_eq!(e.upstream.hits(), 0);
    assert_eq!(e.line.verify_calls(), 0);
}

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/public/"
auth = "none"
methods = ["GET"]

[[routes]]
path_prefix = "/feed/"
auth = "optional"

[[routes]]
path_prefix = "/api/"
auth = "access_token"
methods = ["POST"]
allow_cors_preflight = true
"#;

#[tokio::test]
async fn optional_route_forwards_anonymous_and_refuses_invalid() {
    let e = env(ROUTES).await;
    let c = client();
    let r = c.get(e.proxy.url("/feed/1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(e.upstream.last().headers.get("x-line-user-id").is_none());
    let r = c.get(e.proxy.url("/feed/1")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.upstream.last().headers["x-line-user-id"], USER);
    let hits = e.upstream.hits();
    let r = c.get(e.proxy.url("/feed/1")).bearer_auth("bogus").send().await.unwrap();
    assert_eq!(json_error(r, 401).await, "invalid_token");
    let r = c.get(e.proxy.url("/feed/1")).header("authorization", "Basic eDp5").send().await.unwrap();
    assert_eq!(json_error(r, 401).await, "invalid_token");
    assert_eq!(e.upstream.hits(), hits);
}

#[tokio::test]
async fn public_route_needs_nothing_and_method_filter_falls_through() {
    let e = env(ROUTES).await;
    let c = client();
    assert_eq!(c.get(e.proxy.url("/public/a")).send().await.unwrap().status(), 200);
    assert_eq!(e.line.verify_calls(), 0);
    // POST is not in the public route's methods: matching ends at the default.
    let r = c.post(e.proxy.url("/public/a")).send().await.unwrap();
    assert_eq!(json_error(r, 401).await, "unauthorized");
    assert_eq!(e.upstream.hits(), 1);
    // GET /api/ is not in that route's methods either: default, token required.
    let r = c.get(e.proxy.url("/api/a")).send().await.unwrap();
    assert_eq!(json_error(r, 401).await, "unauthorized");
    assert_eq!(e.upstream.hits(), 1);
}

#[tokio::test]
async fn cors_preflight_passes_only_where_allowed() {
    let e = env(ROUTES).await;
    let c = client();
    let preflight = |url: String| {
        c.request(reqwest::Method::OPTIONS, url)
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header("x-line-user-id", "Uevil")
    };
    let r = preflight(e.proxy.url("/api/a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.upstream.hits(), 1);
    assert!(e.upstream.last().headers.get("x-line-user-id").is_none());
    assert_eq!(e.line.verify_calls(), 0);
    // Not a preflight without Origin.
    let r = c
        .request(reqwest::Method::OPTIONS, e.proxy.url("/api/a"))
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A route without allow_cors_preflight (the default route) wants a token.
    let r = preflight(e.proxy.url("/other")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(e.upstream.hits(), 1);
}

#[tokio::test]
async fn access_log_and_metrics_count_outcomes() {
    let e = env(ROUTES).await;
    let c = client();
    c.post(e.proxy.url("/api/a")).bearer_auth(TOKEN).send().await.unwrap();
    c.post(e.proxy.url("/api/a")).send().await.unwrap();
    c.get(e.proxy.url("/public/a")).send().await.unwrap();
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_requests_total{outcome=\"forwarded\",auth=\"access_token\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_requests_total{outcome=\"rejected\",auth=\"access_token\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_requests_total{outcome=\"forwarded\",auth=\"none\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"missing_credential\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_line_requests_total{endpoint=\"verify\",outcome=\"ok\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_line_requests_total{endpoint=\"profile\",outcome=\"ok\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_cache_misses_total"), 1.0, "{m}");
}

#[tokio::test]
async fn request_id_is_propagated_or_generated() {
    let e = env("").await;
    let c = client();
    let r = c.get(e.proxy.url("/x")).bearer_auth(TOKEN).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert_eq!(e.upstream.last().headers["x-request-id"], "abc-123");
    let r = c.get(e.proxy.url("/x")).bearer_auth(TOKEN).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 16);
    assert_eq!(e.upstream.last().headers["x-request-id"], generated.as_str());
    // A 401 carries one too, for support.
    let r = c.get(e.proxy.url("/x")).send().await.unwrap();
    assert!(r.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn token_without_profile_scope_is_refused_and_cached() {
    let e = env("").await;
    e.line.set_faults(Faults { profile: Some(Fault::Status(403)), ..Faults::default() });
    assert_rejected(&e, client().get(e.proxy.url("/api/x")).bearer_auth(TOKEN)).await;
    assert_rejected(&e, client().get(e.proxy.url("/api/x")).bearer_auth(TOKEN)).await;
    assert_eq!(e.line.verify_calls(), 1);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"no_profile_scope\"}"), 2.0, "{m}");
}

#[tokio::test]
async fn preflight_with_a_body_needs_a_credential() {
    let e = env(ROUTES).await;
    let r = client()
        .request(reqwest::Method::OPTIONS, e.proxy.url("/api/a"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .body("smuggled")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(e.upstream.hits(), 0);
}
