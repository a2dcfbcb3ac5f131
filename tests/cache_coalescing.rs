//! The verdict cache: hits make no network call, concurrent identical fresh
//! tokens make one LINE round trip, TTLs never outlive the token, rejections are
//! remembered briefly, and the cache stays within `max_entries`.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn fifty_concurrent_fresh_requests_make_one_verify_and_one_profile_call() {
    let e = env("").await;
    // Slow LINE so that all fifty overlap.
    e.line.set_faults(Faults { delay: Duration::from_millis(200), ..Faults::default() });
    let statuses = concurrent_statuses(e.proxy.url("/api/x"), TOKEN, 50).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(e.line.verify_calls(), 1);
    assert_eq!(e.line.profile_calls(), 1);
    assert_eq!(e.upstream.hits(), 50);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_cache_misses_total"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "line_auth_proxy_cache_coalesced_total") + metric(&m, "line_auth_proxy_cache_hits_total"),
        49.0,
        "{m}"
    );
}

#[tokio::test]
async fn concurrent_failures_are_shared_but_not_cached() {
    let e = env("").await;
    e.line.set_faults(Faults {
        delay: Duration::from_millis(200),
        verify: Some(Fault::Status(500)),
        ..Faults::default()
    });
    let statuses = concurrent_statuses(e.proxy.url("/api/x"), TOKEN, 20).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(e.line.verify_calls(), 1);
    e.line.set_faults(Faults::default());
    assert_eq!(e.status("/api/x", TOKEN).await, 200);
    assert_eq!(e.line.verify_calls(), 2);
    assert_eq!(e.upstream.hits(), 1);
}

#[tokio::test]
async fn cache_hit_makes_no_network_call() {
    let e = env("").await;
    for _ in 0..10 {
        assert_eq!(e.status("/api/x", TOKEN).await, 200);
    }
    assert_eq!((e.line.verify_calls(), e.line.profile_calls()), (1, 1));
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_cache_hits_total"), 9.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_cache_entries"), 1.0, "{m}");
}

#[tokio::test]
async fn ttl_is_capped_by_expires_in() {
    let e = env("").await;
    let mut t = MockToken::new(CHANNEL, USER, "Brown");
    t.expires_in = 1;
    e.line.add_token("short-lived", t);
    let c = client();
    assert_eq!(e.status("/a", "short-lived").await, 200);
    let expires_at: u64 = e.upstream.last().headers["x-line-expires-at"].to_str().unwrap().parse().unwrap();
    assert_eq!(expires_at, e.clock.unix_seconds() + 1);
    // Past the token's expiry (cache.ttl_seconds is 60): the proxy must ask LINE again.
    e.clock.advance(Duration::from_secs(1));
    e.line.remove_token("short-lived");
    let r = c.get(e.proxy.url("/a")).bearer_auth("short-lived").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(e.line.verify_calls(), 2);
    assert_eq!(e.upstream.hits(), 1);
}

#[tokio::test]
async fn positive_ttl_expires_and_reverifies() {
    // The default jitter cuts a TTL by less than 10 %; with none, it is whole.
    for (jitter, sure_until_ms) in [("", 899), ("ttl_jitter_percent = 0\n", 999)] {
        let e = env(&format!("[cache]\nttl_seconds = 1\n{jitter}")).await;
        assert_eq!(e.status("/a", TOKEN).await, 200);
        assert_eq!(e.status("/a", TOKEN).await, 200);
        assert_eq!(e.line.verify_calls(), 1);
        e.clock.advance(Duration::from_millis(sure_until_ms));
        assert_eq!(e.status("/a", TOKEN).await, 200);
        assert_eq!(e.line.verify_calls(), 1, "reverified before the TTL was over ({jitter:?})");
        e.clock.advance(Duration::from_millis(1000 - sure_until_ms));
        // Revoked at LINE meanwhile: the expired cache entry must not keep it alive.
        e.line.remove_token(TOKEN);
        assert_eq!(e.status("/a", TOKEN).await, 401);
        assert_eq!(e.line.verify_calls(), 2);
    }
}

#[tokio::test]
async fn rejections_are_cached_for_the_negative_ttl_only() {
    let e = env("[cache]\nnegative_ttl_seconds = 1\n").await;
    for _ in 0..3 {
        assert_eq!(e.status("/a", "late-token").await, 401);
    }
    assert_eq!(e.line.verify_calls(), 1);
    // The token becomes valid at LINE; within the negative TTL it is still refused.
    e.line.add_token("late-token", MockToken::new(CHANNEL, USER, "Brown"));
    assert_eq!(e.status("/a", "late-token").await, 401);
    e.clock.advance(Duration::from_secs(1));
    assert_eq!(e.status("/a", "late-token").await, 200);
    assert_eq!(e.line.verify_calls(), 2);
}

#[tokio::test]
async fn cache_is_bounded_by_max_entries() {
    let e = env("[cache]\nmax_entries = 10\n").await;
    for i in 0..60 {
        let token = format!("token-{i}");
        e.line.add_token(&token, MockToken::new(CHANNEL, USER, "Brown"));
        assert_eq!(e.status("/a", &token).await, 200);
    }
    let m = e.proxy.metrics().await;
    let entries = metric(&m, "line_auth_proxy_cache_entries");
    assert!(entries <= 10.0 && entries > 0.0, "{entries} entries cached with max_entries = 10");
}

/// Verifications in flight, as `/metrics` reports them.
async fn in_flight(e: &Env) -> f64 {
    e.proxy.metric("line_auth_proxy_verifications_in_flight").await
}

#[tokio::test]
async fn requests_cancelled_mid_verification_leave_nothing_in_flight() {
    let e = env("").await;
    for i in 0..50 {
        e.line.add_token(&format!("fresh-{i}"), MockToken::new(CHANNEL, USER, "Brown"));
    }
    let held = e.line.hold();
    // 50 HTTP/2 streams, each a token the proxy has never seen: 50 verifications
    // waiting on LINE.
    let tcp = tokio::net::TcpStream::connect(e.proxy.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut streams = Vec::new();
    for i in 0..50 {
        let mut send = send.clone().ready().await.unwrap();
        let request = http::Request::get(e.proxy.url("/x"))
            .header("authorization", format!("Bearer fresh-{i}"))
            .body(())
            .unwrap();
        streams.push(send.send_request(request, false).unwrap());
    }
    assert!(
        eventually(std::time::Duration::from_secs(5), || async { in_flight(&e).await == 50.0 }).await,
        "the verifications did not start: {}",
        in_flight(&e).await
    );
    // Half the clients reset their stream, the rest go away with the connection,
    // while LINE still has not answered.
    for (_, mut body) in streams.drain(..25) {
        body.send_reset(h2::Reason::CANCEL);
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    drop((streams, send));
    driver.abort();
    assert!(
        eventually(std::time::Duration::from_secs(5), || async { in_flight(&e).await == 0.0 }).await,
        "cancelled requests left verifications in flight: {}",
        in_flight(&e).await
    );
    assert_eq!(e.upstream.hits(), 0);
    // LINE answers late; nothing waits, nothing is left, and a new request works.
    drop(held);
    assert_eq!(e.status("/x", TOKEN).await, 200);
    assert!(eventually(std::time::Duration::from_secs(5), || async { in_flight(&e).await == 0.0 }).await);
}
