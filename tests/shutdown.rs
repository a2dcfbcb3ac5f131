//! Graceful shutdown: readiness turns 503, the listener stops accepting, and an
//! in-flight request completes within the grace period.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn in_flight_request_finishes_and_new_connections_are_refused() {
    let mut e = env("").await;
    let c = client();
    // A response the upstream holds open until the test lets it finish.
    let mut in_flight = c.get(e.proxy.url("/stream-out")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(in_flight.status(), 200);
    assert_eq!(in_flight.chunk().await.unwrap().unwrap(), "first chunk;");
    let admin_ready = e.proxy.admin_url("/readyz");
    let proxy_addr = e.proxy.addr;
    let drain = e.proxy.begin_shutdown();

    // Readiness goes 503 while draining, and the listener closes.
    assert!(eventually_status(&admin_ready, 503, 5).await, "/readyz never answered 503 during the drain");
    let refused =
        eventually(Duration::from_secs(5), || async { tokio::net::TcpStream::connect(proxy_addr).await.is_err() })
            .await;
    assert!(refused, "the proxy kept accepting after shutdown began");
    assert!(!drain.is_finished(), "the drain did not wait for the request in flight");

    e.upstream.release_response();
    assert_eq!(in_flight.chunk().await.unwrap().unwrap(), "the rest");
    assert!(in_flight.chunk().await.unwrap().is_none());
    drain.await.unwrap().unwrap();
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let e = env("").await;
    let text = config_text(&e.line.base_url(), &e.upstream.url(), "")
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 1");
    let mut proxy = spawn_proxy_with(config(&text), &e.clock).await;
    // A response the upstream never finishes.
    let mut stuck = client().get(proxy.url("/stream-out")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(stuck.chunk().await.unwrap().unwrap(), "first chunk;");
    let started = tokio::time::Instant::now();
    // The grace period is real time: the drain must really give up after 1 s.
    proxy.begin_shutdown().await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "drain took {took:?}");
    // The stuck response was cut when the grace period ended, not left open.
    let cut = tokio::time::timeout(Duration::from_secs(5), stuck.chunk()).await;
    assert!(matches!(cut, Ok(Err(_))), "the connection stayed open after the drain: {cut:?}");
}

#[tokio::test]
async fn the_shutdown_delay_keeps_serving_while_readiness_is_503() {
    let e = env("").await;
    let text = config_text(&e.line.base_url(), &e.upstream.url(), "")
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\nshutdown_delay_seconds = 5");
    let mut proxy = spawn_proxy_with(config(&text), &e.clock).await;
    let drain = proxy.begin_shutdown();
    assert!(eventually_status(&proxy.admin_url("/readyz"), 503, 5).await, "/readyz stayed 200 after the signal");
    // Not ready, yet serving new connections for the delay (the proxy's clock stands still).
    let r = client().get(proxy.url("/a")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(!drain.is_finished());
    e.clock.advance(Duration::from_secs(5));
    let closed =
        eventually(Duration::from_secs(5), || async { tokio::net::TcpStream::connect(proxy.addr).await.is_err() })
            .await;
    assert!(closed, "the listener stayed open after the delay");
    drain.await.unwrap().unwrap();
}
