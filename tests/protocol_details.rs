//! Protocol details, each over real sockets: a preflight with an HTTP/2 body
//! and no length, `Host` as RFC 9112 §3.2 wants it, a client's broken body
//! named as the client's fault, a GET's chunked body forwarded, client-address
//! claims replaced by the proxy's `X-Real-IP`, and LINE's `expires_in` held to
//! what LINE documents.
#![cfg(feature = "dev")]

mod support;

use bytes::Bytes;
use support::*;

const PREFLIGHT_ROUTES: &str = r#"
[[routes]]
path_prefix = "/api/"
auth = "access_token"
allow_cors_preflight = true
"#;

#[tokio::test]
async fn an_http2_preflight_with_a_body_but_no_length_needs_a_credential() {
    let e = env(PREFLIGHT_ROUTES).await;
    let tcp = tokio::net::TcpStream::connect(e.proxy.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let preflight = |end_of_stream| {
        let request = http::Request::options(e.proxy.url("/api/x"))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "DELETE")
            .body(())
            .unwrap();
        (request, end_of_stream)
    };
    // With a body (DATA frames; no content-length, as HTTP/2 allows): not a preflight.
    let (request, end) = preflight(false);
    let (response, mut body) = send.send_request(request, end).unwrap();
    body.send_data(Bytes::from_static(b"smuggled"), true).unwrap();
    assert_eq!(response.await.unwrap().status(), 401);
    assert_eq!(e.upstream.hits(), 0);
    // The same preflight without a body passes, as the route allows.
    let (request, end) = preflight(true);
    let (response, _) = send.send_request(request, end).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    assert_eq!(e.upstream.hits(), 1);
}

#[tokio::test]
async fn host_is_exactly_one_on_http11_and_never_two() {
    let e = env("").await;
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    for (what, head) in [
        ("no Host", format!("GET /x HTTP/1.1\r\n{auth}Connection: close\r\n\r\n")),
        (
            "two Hosts",
            format!("GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n{auth}Connection: close\r\n\r\n"),
        ),
        ("userinfo", format!("GET /x HTTP/1.1\r\nHost: user@a.example\r\n{auth}Connection: close\r\n\r\n")),
        ("not a host", format!("GET /x HTTP/1.1\r\nHost: a example\r\n{auth}Connection: close\r\n\r\n")),
    ] {
        let answer = raw(e.proxy.addr, head.as_bytes()).await;
        assert_eq!(raw_status(&answer), 400, "{what}: {answer}");
        assert!(answer.contains("Host header"), "{what}: {answer}");
    }
    assert_eq!(e.upstream.hits(), 0);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_requests_total{outcome=\"bad_request\",auth=\"access_token\"}"), 4.0, "{m}");
    // HTTP/1.0 may leave Host out; one Host with a port is fine.
    let answer = raw(e.proxy.addr, format!("GET /x HTTP/1.0\r\n{auth}\r\n").as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let answer = raw(
        e.proxy.addr,
        format!("GET /x HTTP/1.1\r\nHost: a.example:8080\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
}

#[tokio::test]
async fn a_broken_client_body_is_the_clients_error_not_the_upstreams() {
    let e = env("").await;
    // A chunk size that is not hex: the client's framing is broken mid-body.
    let head = format!(
        "POST /echo-body HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\nZZ\r\nnot a chunk\r\n\r\n"
    );
    let answer = raw(e.proxy.addr, head.as_bytes()).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert!(answer.contains("request body"), "{answer}");
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_requests_total{outcome=\"bad_request\",auth=\"access_token\"}"), 1.0, "{m}");
    assert_eq!(
        metric(&m, "line_auth_proxy_requests_total{outcome=\"upstream_error\",auth=\"access_token\"}"),
        0.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_get_with_a_chunked_body_is_forwarded_with_its_body() {
    let e = env("").await;
    let head = format!(
        "GET /stream-in HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
    let answer = raw(e.proxy.addr, head.as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(answer.ends_with("\r\n\r\n11") || answer.contains("\r\n2\r\n11\r\n"), "the GET body was dropped: {answer}");
    assert_eq!(e.upstream.last().method, "GET");
}

const CLAIMS: [(&str, &str); 10] = [
    ("X-Real-IP", "10.9.9.9"),
    ("True-Client-IP", "10.9.9.9"),
    ("X-Client-IP", "10.9.9.9"),
    ("CF-Connecting-IP", "10.9.9.9"),
    ("Fastly-Client-IP", "10.9.9.9"),
    ("X-Cluster-Client-IP", "10.9.9.9"),
    ("Front-End-Https", "on"),
    ("X-Url-Scheme", "https"),
    ("X-Forwarded-Protocol", "https"),
    ("X-Forwarded-Ssl", "on"),
];

#[tokio::test]
async fn client_address_claims_are_replaced_by_the_proxys_x_real_ip() {
    let e = env("").await;
    let mut request = client().get(e.proxy.url("/x")).bearer_auth(TOKEN);
    for (name, value) in CLAIMS {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    let seen = e.upstream.last();
    for (name, _) in CLAIMS.iter().skip(1) {
        assert!(seen.headers.get(*name).is_none(), "{name} reached the upstream");
    }
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    // Behind a trusted ingress: the hop it appended, not anyone's claim.
    let text = config_text(&e.line.base_url(), &e.upstream.url(), "")
        .replace("shutdown_grace_seconds = 5", "shutdown_grace_seconds = 5\ntrusted_proxies = [\"127.0.0.1/32\"]");
    let trusting = spawn_proxy_with(config(&text), &e.clock).await;
    let mut request =
        client().get(trusting.url("/x")).bearer_auth(TOKEN).header("x-forwarded-for", "6.6.6.6, 198.51.100.4");
    for (name, value) in CLAIMS {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    let seen = e.upstream.last();
    assert_eq!(seen.headers["x-real-ip"], "198.51.100.4");
    assert!(seen.headers.get("true-client-ip").is_none());
}

#[tokio::test]
async fn an_expires_in_beyond_lines_thirty_days_is_clamped() {
    let e = env("").await;
    let mut forever = MockToken::new(CHANNEL, USER, "Brown");
    forever.expires_in = 1_000_000_000;
    e.line.add_token("forever-token", forever);
    assert_eq!(e.status("/x", "forever-token").await, 200);
    let expires_at: u64 = e.upstream.last().headers["x-line-expires-at"].to_str().unwrap().parse().unwrap();
    assert_eq!(expires_at, e.clock.unix_seconds() + 30 * 24 * 3600);
}
