//! `[limits]` over real sockets: one client's nonce flood or fresh-token spray
//! is refused with 429 for that client only, while another address still gets
//! a nonce, logs in and is verified; a credential already cached never counts;
//! and one address cannot hold more than its share of connections.
//!
//! Two clients are two source addresses: Linux routes all of 127.0.0.0/8 to
//! loopback, so a socket bound to 127.0.0.2 reaches the proxy on 127.0.0.1 as
//! a different peer.
#![cfg(feature = "dev")]

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::*;

const OTHER: [u8; 4] = [127, 0, 0, 2];

/// A client whose connections come from `from`.
fn client_from(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder().no_proxy().local_address(IpAddr::from(from)).build().unwrap()
}

async fn nonce_status(c: &reqwest::Client, e: &Env, xff: Option<&str>) -> reqwest::Response {
    let mut request = c.get(e.proxy.url("/auth/nonce"));
    if let Some(xff) = xff {
        request = request.header("x-forwarded-for", xff);
    }
    request.send().await.unwrap()
}

/// From [`OTHER`]: a nonce, and a login with it that reaches the upstream.
async fn another_address_gets_a_nonce_and_logs_in(e: &Env) {
    let other = client_from(OTHER);
    let r = nonce_status(&other, e, None).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let token = e.line.sign_es256(&e.claims(v["nonce"].as_str()));
    let login = other.post(e.proxy.url("/login")).bearer_auth(token).send().await.unwrap();
    assert_eq!(login.status(), 200);
    assert_eq!(e.upstream.last().headers["x-line-user-id"], USER);
}

#[tokio::test]
async fn a_nonce_flood_from_one_address_leaves_others_able_to_log_in() {
    let e = login_env("", "[limits]\nnonces_per_minute = 5\n").await;
    let flooder = client();
    for i in 0..5 {
        assert_eq!(nonce_status(&flooder, &e, None).await.status(), 200, "nonce {i}");
    }
    let refused = nonce_status(&flooder, &e, None).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "12", "a minute's budget of 5 refills one every 12 s");
    assert_eq!(json_error(refused, 429).await, "too_many_requests");
    // The flood does not reach the store: no nonce was issued for the refusals.
    for _ in 0..100 {
        assert_eq!(nonce_status(&flooder, &e, None).await.status(), 429);
    }
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_nonces_total{event=\"issued\"}"), 5.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_limited_total{reason=\"nonces_per_minute\"}"), 101.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_requests_total{outcome=\"limited\",auth=\"none\"}"), 101.0, "{m}");

    another_address_gets_a_nonce_and_logs_in(&e).await;

    // The flooder's budget refills one nonce every 12 s.
    e.clock.advance(Duration::from_secs(12));
    assert_eq!(nonce_status(&flooder, &e, None).await.status(), 200);
    assert_eq!(nonce_status(&flooder, &e, None).await.status(), 429);
}

/// With no per-minute budget, one address still cannot fill the nonce store:
/// it holds at most a hundredth of it (1000 unused nonces), is refused with
/// 429 `live_nonces` beyond that, and everyone else keeps getting nonces.
#[tokio::test]
async fn without_a_budget_one_address_holds_only_its_share_of_the_nonce_store() {
    let e = login_env("", "[limits]\nnonces_per_minute = 0\n").await;
    // A flood over one HTTP/2 connection, 50 streams at a time.
    let flooder = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let url = e.proxy.url("/auth/nonce");
    let mut issued = 0;
    let mut refused = 0;
    for _ in 0..21 {
        let round: Vec<_> = (0..50).map(|_| tokio::spawn(flooder.get(&url).send())).collect();
        for r in round {
            match r.await.unwrap().unwrap().status().as_u16() {
                200 => issued += 1,
                429 => refused += 1,
                other => panic!("nonce answered {other}"),
            }
        }
    }
    assert_eq!((issued, refused), (1000, 50));
    let r = flooder.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "300", "its nonces free up as they are used or expire");
    assert_eq!(json_error(r, 429).await, "too_many_requests");
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_limited_total{reason=\"live_nonces\"}"), 51.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_nonces_total{event=\"client_share\"}"), 51.0, "{m}");

    another_address_gets_a_nonce_and_logs_in(&e).await;

    // Once its nonces expired and were swept, the flooder gets nonces again.
    e.clock.advance(Duration::from_secs(300 + 60 + 30));
    let c = flooder.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let request = c.get(&url).send();
            async move { request.await.is_ok_and(|r| r.status() == 200) }
        })
        .await
    );
}

#[tokio::test]
async fn behind_a_trusted_ingress_the_client_is_the_hop_it_appended() {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let line_extra = format!("jwks_url = \"{}\"", line.jwks_url());
    let extra = "[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n[limits]\nnonces_per_minute = 2\n";
    let text = config_text_line(&line.base_url(), &upstream.url(), &line_extra, extra)
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\ntrusted_proxies = [\"127.0.0.1/32\"]");
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    let e = Env { clock, line, upstream, proxy };
    let ingress = client();
    // The flooder's own X-Forwarded-For claims (left of what the ingress
    // appended) change nothing: the client is the hop the ingress appended.
    for claim in ["198.51.100.7", "1.1.1.1, 198.51.100.7", "2.2.2.2, 198.51.100.7"] {
        let _ = nonce_status(&ingress, &e, Some(claim)).await;
    }
    assert_eq!(nonce_status(&ingress, &e, Some("3.3.3.3, 198.51.100.7")).await.status(), 429);
    // Another client behind the same ingress has its own budget.
    assert_eq!(nonce_status(&ingress, &e, Some("198.51.100.8")).await.status(), 200);
    // An untrusted peer's X-Forwarded-For is never read: it is its own client.
    let other = client_from(OTHER);
    assert_eq!(nonce_status(&other, &e, Some("198.51.100.8")).await.status(), 200);
    assert_eq!(nonce_status(&other, &e, Some("198.51.100.9")).await.status(), 200);
    assert_eq!(nonce_status(&other, &e, Some("198.51.100.10")).await.status(), 429);
}

#[tokio::test]
async fn a_fresh_token_spray_is_refused_for_the_sprayer_only() {
    let e = env("[limits]\nfresh_tokens_per_minute = 10\n").await;
    e.line.add_token("sprayer-own-token", MockToken::new(CHANNEL, USER, "Brown"));
    let sprayer = client();
    // A valid token of its own, cached first.
    assert_eq!(sprayer.get(e.proxy.url("/x")).bearer_auth("sprayer-own-token").send().await.unwrap().status(), 200);
    let mut statuses = Vec::new();
    for i in 0..50 {
        let r = sprayer.get(e.proxy.url("/x")).bearer_auth(format!("random-{i}")).send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    // 9 more fresh tokens fit in its minute (the first was its own); the rest
    // never reach LINE.
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 9, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 41, "{statuses:?}");
    assert_eq!(e.line.verify_calls(), 10);
    // Its cached token still works: a credential in the cache never counts.
    let r = sprayer.get(e.proxy.url("/x")).bearer_auth("sprayer-own-token").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Everyone else logs in as ever, with a token LINE has not seen yet.
    let other = client_from(OTHER);
    let r = other.get(e.proxy.url("/x")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.line.verify_calls(), 11);
    assert_eq!(e.upstream.hits(), 3, "no refused request reached the upstream");
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_limited_total{reason=\"fresh_tokens_per_minute\"}"), 41.0, "{m}");
}

#[tokio::test]
async fn waiting_for_a_verification_already_in_flight_is_not_a_fresh_token() {
    let e = env("[limits]\nfresh_tokens_per_minute = 1\n").await;
    let held = e.line.hold();
    // Ten requests with one token at once: one verification, nine waiters.
    let tasks = tokio::spawn(concurrent_statuses(e.proxy.url("/x"), TOKEN, 10));
    assert!(
        eventually(Duration::from_secs(5), || async { e.line.verify_calls() == 1 }).await,
        "the verification never started"
    );
    drop(held);
    assert_eq!(tasks.await.unwrap(), vec![200; 10]);
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_connections() {
    let e = env("[limits]\nconnections = 3\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(e.proxy.addr).await.unwrap());
    }
    // The fourth from the same address: a 429 and the close, no request read.
    let fourth = raw(e.proxy.addr, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(raw_status(&fourth), 429, "{fourth}");
    assert!(fourth.contains("too many connections"), "{fourth}");
    // Another address connects and is served.
    let other = client_from(OTHER);
    assert_eq!(other.get(e.proxy.url("/x")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    // A connection given back is a connection the address may open again.
    held.pop();
    assert!(
        eventually(Duration::from_secs(5), || async {
            let answer = raw(
                e.proxy.addr,
                format!("GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
            raw_status(&answer) == 200
        })
        .await
    );
    let m = e.proxy.metrics().await;
    assert!(metric(&m, "line_auth_proxy_limited_total{reason=\"connections\"}") >= 1.0, "{m}");
    assert_eq!(e.upstream.hits(), 2, "the refused connection reached nothing");
}

#[tokio::test]
async fn trusted_proxies_are_exempt_from_the_connection_limit() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = RecordingUpstream::start().await;
    let text = config_text(&line.base_url(), &upstream.url(), "[limits]\nconnections = 1\n")
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\ntrusted_proxies = [\"127.0.0.1/32\"]");
    let proxy = spawn_proxy(config(&text)).await;
    let _held = connections(proxy.addr, 4).await;
    let answer = raw(
        proxy.addr,
        format!("GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
}

/// `n` open connections to `addr`, held by the caller.
async fn connections(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    out
}
