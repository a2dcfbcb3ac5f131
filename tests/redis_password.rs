//! The Redis password never reaches a log line, a metric or an error body —
//! through a working connection, an outage, and a wrong password — at
//! `RUST_LOG=trace`. One test: it installs the process-wide subscriber.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use line_auth_proxy::{LogFormat, init_tracing_with};
use support::*;

const PASSWORD: &str = "s3cret-Redis-Passw0rd";
const WRONG: &str = "wr0ng-Redis-Passw0rd";

async fn proxy_with(redis_url: &str) -> (MockLine, RecordingUpstream, TestProxy) {
    let line = MockLine::start().await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let extra = format!(
        "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n[nonce]\nstore = \"redis\"\nredis_url = \"{redis_url}\"\n{}[cache]\nshared = \"redis\"\n",
        mac_key_line()
    );
    let text =
        config_text_line(&line.base_url(), &upstream.url(), &format!("jwks_url = \"{}\"\n", line.jwks_url()), &extra);
    let proxy = spawn_proxy_unready_with(config(&text), &Clock::manual()).await;
    (line, upstream, proxy)
}

#[tokio::test]
async fn the_redis_password_never_appears_in_logs_metrics_or_bodies() {
    let capture = Capture::default();
    init_tracing_with(LogFormat::Text, Some("trace,redis=trace"), capture.clone());
    let mut redis = RedisServer::start_with_password(Some(PASSWORD)).await;
    let c = client();
    let mut seen = String::new();

    let (line, _upstream, proxy) = proxy_with(&redis.url(0)).await;
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let bodies = std::sync::Mutex::new(String::new());
    let issued = eventually(Duration::from_secs(10), || async {
        let r = c.get(proxy.url("/auth/nonce")).send().await.unwrap();
        let ok = r.status() == 200;
        let body = r.text().await.unwrap();
        bodies.lock().unwrap().push_str(&body);
        ok
    })
    .await;
    seen.push_str(&bodies.into_inner().unwrap());
    assert!(issued, "no nonce with the right password");
    seen.push_str(&c.get(proxy.url("/a")).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap());

    // An outage: every Redis call fails and is logged.
    redis.kill();
    for _ in 0..3 {
        seen.push_str(&c.get(proxy.url("/auth/nonce")).send().await.unwrap().text().await.unwrap());
    }
    redis.restart().await;

    // A wrong password: refused by Redis, logged, never echoed.
    let wrong_url = redis.url(0).replace(PASSWORD, WRONG);
    let (_line2, _up2, wrong) = proxy_with(&wrong_url).await;
    for _ in 0..3 {
        let r = c.get(wrong.url("/auth/nonce")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        seen.push_str(&r.text().await.unwrap());
    }
    // The wrong password's health probes have failed (and been logged).
    let ping_failed = "line_auth_proxy_redis_requests_total{purpose=\"nonce\",op=\"ping\",outcome=\"error\"}";
    assert!(eventually(Duration::from_secs(10), || async { wrong.metric(ping_failed).await >= 1.0 }).await);
    seen.push_str(&proxy.metrics().await);
    seen.push_str(&wrong.metrics().await);
    seen.push_str(&c.get(wrong.admin_url("/readyz")).send().await.unwrap().text().await.unwrap());

    let logs = capture.text();
    assert!(
        logs.contains("Redis call failed") || logs.contains("Redis call timed out"),
        "no Redis failure captured:\n{logs}"
    );
    assert!(logs.contains(&format!("127.0.0.1:{}", redis.port)), "the redacted address is not logged");
    for secret in [PASSWORD, WRONG] {
        assert!(!logs.contains(secret), "the Redis password reached the logs");
        assert!(!seen.contains(secret), "the Redis password reached a response or metric");
    }
}
