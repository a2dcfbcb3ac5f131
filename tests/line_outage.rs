//! When the LINE Platform fails, times out or rate-limits us, the proxy fails
//! closed: 503 with `Retry-After`, the upstream untouched, nothing cached.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use support::*;

async fn assert_unavailable(e: &Env, token: &str) -> reqwest::Response {
    let r = client().get(e.proxy.url("/api/x")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert_eq!(e.upstream.hits(), 0, "a request went upstream while LINE was failing");
    r
}

#[tokio::test]
async fn line_5xx_is_503_and_not_cached() {
    let e = env("").await;
    for status in [500, 502, 503] {
        e.line.set_faults(Faults { verify: Some(Fault::Status(status)), ..Faults::default() });
        let r = assert_unavailable(&e, TOKEN).await;
        assert_eq!(json_error(r, 503).await, "temporarily_unavailable");
    }
    // Profile failing alone is as bad as verify failing.
    e.line.set_faults(Faults { profile: Some(Fault::Status(500)), ..Faults::default() });
    assert_unavailable(&e, TOKEN).await;
    let calls = e.line.verify_calls();
    // LINE recovers: the very next request verifies again (failures were not cached).
    e.line.set_faults(Faults::default());
    let r = client().get(e.proxy.url("/api/x")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.line.verify_calls(), calls + 1);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_unavailable_total{reason=\"line_server_error\"}"), 4.0, "{m}");
    assert_eq!(
        metric(&m, "line_auth_proxy_line_requests_total{endpoint=\"verify\",outcome=\"server_error\"}"),
        3.0,
        "{m}"
    );
}

#[tokio::test]
async fn rate_limit_is_503_and_backs_off_for_five_seconds_by_default() {
    let e = env("").await;
    e.line.set_faults(verify_fails(Fault::Status(429)));
    let r = assert_unavailable(&e, TOKEN).await;
    assert_eq!(r.headers()["retry-after"], "5");
    // LINE is healthy again, but we said we would wait: no new call goes out.
    e.line.set_faults(Faults::default());
    let calls = e.line.verify_calls();
    let r = assert_unavailable(&e, "another-token").await;
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    assert_eq!(e.line.verify_calls(), calls);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_unavailable_total{reason=\"line_rate_limited\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_auth_unavailable_total{reason=\"line_backoff\"}"), 1.0, "{m}");
}

#[tokio::test]
async fn rate_limit_honours_lines_retry_after() {
    let e = env("").await;
    e.line.set_faults(verify_fails(Fault::RateLimitedRetryAfter(7)));
    let r = assert_unavailable(&e, TOKEN).await;
    assert_eq!(r.headers()["retry-after"], "7");
    e.line.set_faults(Faults::default());
    let r = assert_unavailable(&e, TOKEN).await;
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((6..=7).contains(&retry), "{retry}");
    assert_eq!(e.line.verify_calls(), 1);
}

#[tokio::test]
async fn timeout_is_503() {
    let e = env("").await;
    // line.timeout_ms is 500 in the harness.
    e.line.set_faults(Faults { delay: Duration::from_millis(1500), ..Faults::default() });
    let r = assert_unavailable(&e, TOKEN).await;
    assert_eq!(r.headers()["retry-after"], "1");
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_unavailable_total{reason=\"line_timeout\"}"), 1.0, "{m}");
}

#[tokio::test]
async fn unreadable_success_body_is_503_not_a_pass() {
    let e = env("").await;
    e.line.set_faults(verify_fails(Fault::Garbage));
    assert_unavailable(&e, TOKEN).await;
    e.line.set_faults(Faults { profile: Some(Fault::Garbage), ..Faults::default() });
    assert_unavailable(&e, TOKEN).await;
}

#[tokio::test]
async fn unexpected_status_is_503() {
    let e = env("").await;
    e.line.set_faults(verify_fails(Fault::Status(403)));
    assert_unavailable(&e, TOKEN).await;
    e.line.set_faults(verify_fails(Fault::Status(404)));
    assert_unavailable(&e, TOKEN).await;
}

#[tokio::test]
async fn unreachable_line_is_503() {
    // A port that was just free: nothing listens there.
    let closed = closed_port();
    let closed = closed.addr;
    let upstream = RecordingUpstream::start().await;
    let proxy = spawn_proxy(config(&config_text(&format!("http://{closed}"), &upstream.url(), ""))).await;
    let r = client().get(proxy.url("/api/x")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(upstream.hits(), 0);
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_unavailable_total{reason=\"line_unreachable\"}"), 1.0, "{m}");
}

#[tokio::test]
async fn optional_route_with_credential_fails_closed_too() {
    let e = env("[[routes]]\npath_prefix = \"/\"\nauth = \"optional\"\n").await;
    e.line.set_faults(verify_fails(Fault::Status(500)));
    assert_unavailable(&e, TOKEN).await;
}

#[tokio::test]
async fn cached_verdicts_keep_serving_during_an_outage() {
    let e = env("").await;
    assert_eq!(e.status("/a", TOKEN).await, 200);
    e.line.set_faults(line_down());
    assert_eq!(e.status("/a", TOKEN).await, 200);
    assert_eq!(e.line.verify_calls(), 1);
    // An unseen token still fails closed.
    let r = client().get(e.proxy.url("/a")).bearer_auth("fresh-token").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(e.upstream.hits(), 2);
}

#[tokio::test]
async fn verifications_beyond_the_concurrency_cap_fail_closed() {
    // One verification at a time; LINE calls may take 10 s (real time), while a
    // verification waits for its slot at most line.timeout_ms of the proxy's clock.
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    line.add_token("second-token", MockToken::new(CHANNEL, USER, "Cony"));
    let upstream = RecordingUpstream::start().await;
    let text = config_text(&line.base_url(), &upstream.url(), "")
        .replace("timeout_ms = 500\n", "timeout_ms = 10000\nmax_concurrent_calls = 1\n");
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    let held = line.hold();
    let c = client();
    let first = tokio::spawn(c.get(proxy.url("/api/a")).bearer_auth(TOKEN).send());
    assert!(eventually(Duration::from_secs(5), || async { line.verify_calls() == 1 }).await, "LINE never asked");
    let second = tokio::spawn(c.get(proxy.url("/api/b")).bearer_auth("second-token").send());
    // The second waits for the one slot; move the proxy's clock past its wait.
    let gave_up = eventually(Duration::from_secs(5), || {
        clock.advance(Duration::from_secs(11));
        let done = second.is_finished();
        async move { done }
    })
    .await;
    assert!(gave_up, "the second verification never stopped waiting");
    let r = second.await.unwrap().unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(json_error(r, 503).await, "temporarily_unavailable");
    assert_eq!(line.verify_calls(), 1, "the overflow reached LINE");
    assert_eq!(upstream.hits(), 0);
    assert_eq!(proxy.metric("line_auth_proxy_auth_unavailable_total{reason=\"line_overloaded\"}").await, 1.0);
    // The verification in flight was never cut short.
    held.release();
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test]
async fn a_burst_of_verifications_leaves_at_most_64_connections_to_line_idle() {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.accept_prefix("burst-", MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    // LINE calls may take 10 s (real time) while they are held: reqwest's
    // timeout is real time, not the test's clock.
    let text = config_text(&line.base_url(), &upstream.url(), "").replace("timeout_ms = 500\n", "timeout_ms = 10000\n");
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    let held = line.hold();
    let c = client();
    let requests: Vec<_> =
        (0..100).map(|i| tokio::spawn(c.get(proxy.url("/api/a")).bearer_auth(format!("burst-{i}")).send())).collect();
    // Every call is in flight at once: verify and profile for each token.
    let all_in =
        eventually(Duration::from_secs(10), || async { line.verify_calls() == 100 && line.profile_calls() == 100 });
    assert!(all_in.await, "{} verify, {} profile calls arrived", line.verify_calls(), line.profile_calls());
    assert!(line.open_connections() >= 200, "{} connections to LINE", line.open_connections());
    held.release();
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap().status(), 200);
    }
    // Back in the pool: 64 stay for the next calls, the rest are closed now,
    // not after the 90 s idle timeout.
    let trimmed = eventually(Duration::from_secs(10), || async { line.open_connections() <= 64 }).await;
    assert!(trimmed, "{} connections to LINE left open", line.open_connections());
    assert!(line.open_connections() >= 1, "the pool kept nothing");
    assert_eq!(upstream.hits(), 100);
}

/// Both calls of an access-token verification failing: each request is two
/// failed calls.
fn line_down() -> Faults {
    Faults { verify: Some(Fault::Status(500)), profile: Some(Fault::Status(500)), ..Faults::default() }
}

#[tokio::test]
async fn five_failed_calls_in_a_row_back_off_for_a_second() {
    let e = env("").await;
    e.line.set_faults(line_down());
    // Two requests: four failed calls, under the five that start a back-off.
    assert_unavailable(&e, "token-1").await;
    assert_unavailable(&e, "token-2").await;
    let calls = e.line.verify_calls();
    assert_eq!(calls, 2);
    // The third request's calls are the fifth and sixth failures.
    assert_unavailable(&e, "token-3").await;
    assert_eq!(e.line.verify_calls(), 3);
    // LINE is still down: no call goes out for a second, every request 503 at once.
    for i in 0..10 {
        let r = assert_unavailable(&e, &format!("token-{i}")).await;
        assert_eq!(r.headers()["retry-after"], "1");
    }
    assert_eq!(e.line.verify_calls(), 3, "a call went to LINE while backing off");
    // After the second, LINE is asked again; still failing, one call backs off again.
    e.clock.advance(Duration::from_millis(1000));
    assert_unavailable(&e, "token-4").await;
    assert_eq!(e.line.verify_calls(), 4);
    assert_unavailable(&e, "token-5").await;
    assert_eq!(e.line.verify_calls(), 4, "the first failure after a back-off starts the next one");
    // LINE recovers: after the second, the next request verifies and passes.
    e.line.set_faults(Faults::default());
    e.clock.advance(Duration::from_millis(1000));
    assert_eq!(e.status("/api/x", TOKEN).await, 200);
    assert_eq!(e.line.verify_calls(), 5);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_unavailable_total{reason=\"line_backoff\"}"), 11.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_auth_unavailable_total{reason=\"line_server_error\"}"), 4.0, "{m}");
}

#[tokio::test]
async fn an_answer_between_failures_restarts_the_count() {
    let e = env("").await;
    for round in 0..3 {
        // Two requests, four failed calls: one short of a back-off.
        e.line.set_faults(line_down());
        assert_unavailable(&e, &format!("down-{round}-a")).await;
        assert_unavailable(&e, &format!("down-{round}-b")).await;
        // An answer (a refusal: an unknown token) resets the count.
        e.line.set_faults(Faults::default());
        let r = client().get(e.proxy.url("/api/x")).bearer_auth(format!("unknown-{round}")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    // Nine rounds' requests all reached LINE: no back-off started.
    assert_eq!(e.line.verify_calls(), 9);
    assert_eq!(e.upstream.hits(), 0);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_unavailable_total{reason=\"line_backoff\"}"), 0.0, "{m}");
}
