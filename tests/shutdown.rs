//! Graceful shutdown: readiness turns 503, the listener stops accepting, and an
//! in-flight request completes within the grace period.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn in_flight_request_finishes_and_new_connections_are_refused() {
    let mut e = env("").await;
    let c = client();
    // Warm the cache so the slow request only waits on the upstream.
    assert_eq!(e.status("/a", TOKEN).await, 200);

    let url = e.proxy.url("/slow");
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move {
            c.get(url).bearer_auth(TOKEN).header("x-test-delay-ms", "800").send().await.map(|r| r.status().as_u16())
        }
    });
    // Wait until the upstream holds the request.
    while e.upstream.hits() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let admin_ready = e.proxy.admin_url("/readyz");
    let proxy_addr = e.proxy.addr;
    let drain = e.proxy.begin_shutdown();

    // Readiness goes 503 while draining.
    let mut saw_not_ready = false;
    for _ in 0..100 {
        match c.get(&admin_ready).send().await {
            Ok(r) if r.status() == 503 => {
                saw_not_ready = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => break,
        }
    }
    assert!(saw_not_ready, "/readyz never answered 503 during the drain");

    // The listener is closed: a new connection is refused.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(proxy_addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "the proxy kept accepting after shutdown began");

    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
    drain.await.unwrap().unwrap();
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let text = config_text(&line.base_url(), &upstream.url(), "")
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 1")
        .replace("timeout_ms = 2000", "timeout_ms = 60000");
    let mut proxy = spawn_proxy(config(&text)).await;
    let url = proxy.url("/slow");
    let stuck = tokio::spawn(async move {
        client()
            .get(url)
            .bearer_auth(TOKEN)
            .header("x-test-delay-ms", "30000")
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    while upstream.hits() < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    proxy.begin_shutdown().await.unwrap().unwrap();
    // The drain gave up at the grace period instead of waiting 30 s for the upstream.
    assert!(started.elapsed() < Duration::from_secs(10), "drain took {:?}", started.elapsed());
    stuck.abort();
}
