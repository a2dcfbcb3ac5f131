//! Upstream connections: an HTTP/1.1 client connection's requests share one
//! upstream connection; at most `upstream.max_idle_connections` are kept idle
//! (the rest are closed when their request ends); an upstream that closes its
//! idle connections costs no request; HTTP/2 clients go through the pool.
#![cfg(feature = "dev")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;

/// An upstream that counts the TCP connections it accepted and those still
/// open; with `close_after_one`, it closes each connection after its first
/// answer without saying so (what a keep-alive timeout looks like).
struct CountingUpstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl CountingUpstream {
    async fn start(close_after_one: bool) -> Self {
        Self::start_with(close_after_one, Duration::ZERO).await
    }

    /// Each answer after `delay`.
    async fn start_with(close_after_one: bool, delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, o) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    // A proxy's request target is origin-form (`/a`), never
                    // absolute (`http://host/a`, for proxies), and has a Host.
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        let proper = req.uri().scheme().is_none() && req.headers().contains_key("host");
                        let mut answer = hyper::Response::new(Full::new(bytes::Bytes::from_static(b"ok")));
                        if !proper {
                            *answer.status_mut() = hyper::StatusCode::BAD_REQUEST;
                        }
                        Ok::<_, std::convert::Infallible>(answer)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service);
                    if close_after_one {
                        tokio::pin!(conn);
                        // Serve one exchange, then drop the socket mid keep-alive.
                        let _ = tokio::time::timeout(Duration::from_millis(50), conn.as_mut()).await;
                    } else {
                        let _ = conn.await;
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { url, accepted, open }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

async fn proxy_for(upstream: &CountingUpstream, max_idle: usize) -> (MockLine, TestProxy) {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let text = config_text(&line.base_url(), &upstream.url, "")
        .replace("timeout_ms = 2000", &format!("timeout_ms = 2000\nmax_idle_connections = {max_idle}"));
    let proxy = spawn_proxy(config(&text)).await;
    (line, proxy)
}

/// The statuses of requests sent at once.
async fn all<F>(requests: impl Iterator<Item = F>) -> Vec<u16>
where
    F: std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static,
{
    let handles: Vec<_> = requests.map(tokio::spawn).collect();
    let mut statuses = Vec::new();
    for h in handles {
        statuses.push(h.await.unwrap().unwrap().status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn a_client_connections_requests_share_one_upstream_connection() {
    let upstream = CountingUpstream::start(false).await;
    let (_line, proxy) = proxy_for(&upstream, 64).await;
    let client = client();
    for _ in 0..20 {
        let r = client.get(proxy.url("/a")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    assert_eq!(upstream.accepted(), 1, "one client connection, one upstream connection");
}

#[tokio::test]
async fn no_more_than_max_idle_connections_are_kept_idle() {
    let upstream = CountingUpstream::start(false).await;
    let (_line, proxy) = proxy_for(&upstream, 2).await;
    // Five client connections at once, each kept alive after its answer.
    let clients: Vec<reqwest::Client> = (0..5).map(|_| client()).collect();
    let first = all(clients.iter().map(|c| c.get(proxy.url("/a")).bearer_auth(TOKEN).send())).await;
    assert_eq!(first, [200; 5]);
    assert!(upstream.accepted() >= 2);
    // Three of the upstream connections are closed; two stay for reuse.
    assert!(eventually(Duration::from_secs(5), || async { upstream.open() == 2 }).await, "open: {}", upstream.open());
    // Every client connection is still served: the ones without an idle
    // upstream connection get a new one.
    for c in &clients {
        assert_eq!(c.get(proxy.url("/b")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    }
    assert!(eventually(Duration::from_secs(5), || async { upstream.open() <= 2 }).await, "open: {}", upstream.open());
}

#[tokio::test]
async fn a_busy_client_connection_keeps_its_upstream_connection_when_idle_ones_fill_the_budget() {
    let upstream = CountingUpstream::start(false).await;
    let (_line, proxy) = proxy_for(&upstream, 2).await;
    // Three client connections served once each, then left idle: they fill
    // the two idle places (the third took the place of the first).
    let idle: Vec<reqwest::Client> = (0..3).map(|_| client()).collect();
    for c in &idle {
        assert_eq!(c.get(proxy.url("/a")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    }
    assert_eq!(upstream.accepted(), 3);
    assert!(eventually(Duration::from_secs(5), || async { upstream.open() == 2 }).await, "open: {}", upstream.open());
    // A busy client connection: its first request opens a connection that then
    // takes the place of the one idle the longest, and its next requests reuse
    // it instead of opening and closing one each.
    let busy = client();
    for i in 0..10 {
        assert_eq!(busy.get(proxy.url("/b")).bearer_auth(TOKEN).send().await.unwrap().status(), 200, "request {i}");
    }
    assert_eq!(upstream.accepted(), 4, "ten requests on one client connection, one upstream connection");
    assert!(eventually(Duration::from_secs(5), || async { upstream.open() == 2 }).await, "open: {}", upstream.open());
    // The idle client connections that lost their upstream connection are
    // still served, and the budget still holds.
    for c in &idle {
        assert_eq!(c.get(proxy.url("/c")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    }
    assert!(eventually(Duration::from_secs(5), || async { upstream.open() == 2 }).await, "open: {}", upstream.open());
}

#[tokio::test]
async fn zero_idle_connections_closes_each_after_its_request() {
    let upstream = CountingUpstream::start(false).await;
    let (_line, proxy) = proxy_for(&upstream, 0).await;
    let client = client();
    for _ in 0..3 {
        assert_eq!(client.get(proxy.url("/a")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    }
    assert_eq!(upstream.accepted(), 3);
    assert!(eventually(Duration::from_secs(5), || async { upstream.open() == 0 }).await);
}

#[tokio::test]
async fn an_upstream_closing_its_idle_connections_costs_no_request() {
    let upstream = CountingUpstream::start(true).await;
    let (_line, proxy) = proxy_for(&upstream, 64).await;
    let client = client();
    for i in 0..10 {
        let r = client.get(proxy.url("/a")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        // Let the upstream's close arrive before the next request, half the time.
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
    }
    assert!(upstream.accepted() >= 2);
}

#[tokio::test]
async fn http2_clients_go_through_the_pool_bounded_the_same_way() {
    let upstream = CountingUpstream::start_with(false, Duration::from_millis(200)).await;
    let (_line, proxy) = proxy_for(&upstream, 1).await;
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let answers = all((0..4).map(|_| h2.get(proxy.url("/a")).bearer_auth(TOKEN).send())).await;
    assert_eq!(answers, [200; 4]);
    assert_eq!(upstream.accepted(), 4, "four streams at once, four upstream connections");
    assert!(eventually(Duration::from_secs(5), || async { upstream.open() == 1 }).await, "open: {}", upstream.open());
}

#[tokio::test]
async fn an_http_1_0_request_without_host_reaches_the_upstream_with_one() {
    let upstream = CountingUpstream::start(false).await;
    let (_line, proxy) = proxy_for(&upstream, 64).await;
    let answer = raw(proxy.addr, format!("GET /a HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
}
