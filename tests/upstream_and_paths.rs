//! The upstream side and the request line: 502/504, the normalised path the
//! upstream receives, `X-Forwarded-*`, hop-by-hop headers, 400 for dangerous
//! paths and 431 for oversized heads (each refusal leaving the upstream untouched).
#![cfg(feature = "dev")]

mod support;

use support::*;

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let closed = closed_port();
    let closed = closed.addr;
    let proxy = spawn_proxy(config(&config_text(&line.base_url(), &format!("http://{closed}"), ""))).await;
    let r = client().get(proxy.url("/a")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(json_error(r, 502).await, "bad_gateway");
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let e = env("").await;
    // The upstream timeout is real time against a real socket: keep it short.
    let text = config_text(&e.line.base_url(), &e.upstream.url(), "").replace("timeout_ms = 2000", "timeout_ms = 200");
    let proxy = spawn_proxy_with(config(&text), &e.clock).await;
    let e = Env { proxy, ..e };
    let r =
        client().get(e.proxy.url("/slow")).bearer_auth(TOKEN).header("x-test-delay-ms", "4000").send().await.unwrap();
    assert_eq!(json_error(r, 504).await, "gateway_timeout");
    let r = client().get(e.proxy.url("/slow")).bearer_auth(TOKEN).header("x-test-delay-ms", "10").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

const ROUTES: &str = "[[routes]]\npath_prefix = \"/public/\"\nauth = \"none\"\n";

#[tokio::test]
async fn upstream_receives_the_normalised_path_that_was_authorised() {
    let e = env(ROUTES).await;
    // Each of these reaches /private through the public prefix on a naive proxy.
    for sneaky in ["/public/../private", "/public/%2e%2e/private", "/public/./../private", "//public/..//private"] {
        let answer =
            raw(e.proxy.addr, format!("GET {sneaky} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await;
        assert_eq!(raw_status(&answer), 401, "{sneaky} was not treated as /private: {answer}");
    }
    assert_eq!(e.upstream.hits(), 0);
    let answer = raw(
        e.proxy.addr,
        b"GET /public/a//b/./c/../%64?q=/../x&y=%2F HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(e.upstream.last().path_and_query, "/public/a/b/d?q=/../x&y=%2F");
    // The query never takes part in routing.
    let r = client().get(e.proxy.url("/private?path=/public/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn encoded_separators_and_backslashes_are_400() {
    let e = env(ROUTES).await;
    for bad in
        ["/public/a%2fb", "/public/a%2F..%2Fprivate", "/public/a%5cb", "/public/a%00b", "/public/a\\b", "/public/%zz"]
    {
        let answer =
            raw(e.proxy.addr, format!("GET {bad} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert_eq!(raw_status(&answer), 400, "{bad}: {answer}");
        // The proxy's own answer (JSON), not the request parser's.
        assert!(answer.contains("application/json"), "{bad}: {answer}");
        assert!(answer.contains("\"invalid_request\""), "{bad}: {answer}");
    }
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn forwarded_headers_are_set_from_what_the_proxy_saw() {
    let e = env(ROUTES).await;
    let answer = raw(
        e.proxy.addr,
        b"GET /public/x HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 203.0.113.9\r\n\
          X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200);
    let seen = e.upstream.last();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "app.example");
    assert_eq!(seen.headers["host"], "app.example");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let e = env(ROUTES).await;
    let answer = raw(
        e.proxy.addr,
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nKeep-Alive: timeout=9\r\nTE: gzip\r\nProxy-Authorization: Basic eDp5\r\n\
          X-Custom-Hop: 1\r\nConnection: close, X-Custom-Hop\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200);
    let seen = e.upstream.last();
    for h in ["keep-alive", "te", "proxy-authorization", "x-custom-hop", "upgrade"] {
        assert!(seen.headers.get(h).is_none(), "{h} reached the upstream");
    }
    // The upstream's own hop-by-hop header does not reach the client.
    let lower = answer.to_ascii_lowercase();
    assert!(!lower.contains("keep-alive: timeout=5"), "{answer}");
    assert!(lower.contains("x-upstream: 1"), "{answer}");
}

#[tokio::test]
async fn oversized_head_is_431_with_a_json_body() {
    let e = env(ROUTES).await;
    let big = "a".repeat(20_000);
    let answer = raw(
        e.proxy.addr,
        format!("GET /public/x HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 431, "{}", &answer[..answer.len().min(300)]);
    assert!(answer.contains("\"request_header_fields_too_large\""), "{answer}");
    // Many small headers add up the same way.
    let many: String = (0..400).map(|i| format!("X-H{i}: {}\r\n", "b".repeat(40))).collect();
    let answer =
        raw(e.proxy.addr, format!("GET /public/x HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n").as_bytes())
            .await;
    assert_eq!(raw_status(&answer), 431);
    // Just under the limit passes.
    let ok = "c".repeat(15_000);
    let answer = raw(
        e.proxy.addr,
        format!("GET /public/x HTTP/1.1\r\nHost: x\r\nX-Ok: {ok}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200);
    assert_eq!(e.upstream.hits(), 1);
}

#[tokio::test]
async fn far_oversized_head_is_refused_by_the_parser_and_never_forwarded() {
    let e = env(ROUTES).await;
    let huge = "a".repeat(200_000);
    let answer = raw(
        e.proxy.addr,
        format!("GET /public/x HTTP/1.1\r\nHost: x\r\nX-Big: {huge}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    // Beyond hyper's read buffer the parser itself refuses: a bare 431, then close.
    assert_eq!(raw_status(&answer), 431, "{}", &answer[..answer.len().min(300)]);
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn path_parameters_are_refused() {
    let e = env(ROUTES).await;
    // Tomcat reads /public/..;/admin as /admin; the proxy must not route it as /public/.
    for bad in ["/public/..;/admin", "/public/x;jsessionid=1", "/public/%2e%2e%3b/admin"] {
        let answer =
            raw(e.proxy.addr, format!("GET {bad} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert_eq!(raw_status(&answer), 400, "{bad}: {answer}");
        assert!(answer.contains("path parameters"), "{answer}");
    }
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn h2c_upgrade_is_never_tunnelled() {
    let e = env(ROUTES).await;
    let answer = raw(
        e.proxy.addr,
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
          HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = e.upstream.last();
    for h in ["upgrade", "http2-settings", "connection"] {
        assert!(seen.headers.get(h).is_none(), "{h} reached the upstream");
    }
    // A POST asking for a WebSocket is not a WebSocket handshake either.
    let answer = raw(
        e.proxy.addr,
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert!(e.upstream.last().headers.get("upgrade").is_none());
}

#[tokio::test]
async fn routing_and_method_overrides_never_reach_the_upstream() {
    let e = env(ROUTES).await;
    let r = client()
        .get(e.proxy.url("/public/x"))
        .header("X-Original-URL", "/admin")
        .header("X-Rewrite-URL", "/admin")
        .header("X-HTTP-Method-Override", "DELETE")
        .header("X-Method-Override", "DELETE")
        .header("Forwarded", "for=127.0.0.1;proto=https")
        .header("X-Forwarded-Prefix", "/evil")
        .header("X-Forwarded-Port", "443")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = e.upstream.last();
    for h in [
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-method-override",
        "forwarded",
        "x-forwarded-prefix",
        "x-forwarded-port",
    ] {
        assert!(seen.headers.get(h).is_none(), "{h} reached the upstream");
    }
}

#[tokio::test]
async fn non_ascii_paths_survive_normalisation() {
    let e = env(ROUTES).await;
    let answer =
        raw(e.proxy.addr, "GET /public/caf\u{e9}/./x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".as_bytes())
            .await;
    // hyper takes raw UTF-8 in the request target; normalisation keeps it as it came.
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(e.upstream.last().path_and_query, "/public/caf\u{e9}/x");
}

/// True once the proxy has closed `s` (a read sees EOF or an error within 50 ms).
async fn closed_by_proxy(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(std::time::Duration::from_millis(50), s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_header_read_timeout() {
    let clock = Clock::manual();
    let line = MockLine::start().await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let text = config_text(&line.base_url(), &upstream.url(), "").replace(
        "shutdown_grace_seconds = 5",
        "shutdown_grace_seconds = 5\nheader_read_timeout_ms = 300\nmax_connections = 3",
    );
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    // A silent socket, one that sent only part of the h2c preface, and one that
    // sent part of an HTTP/1.1 head hold every slot…
    use tokio::io::AsyncWriteExt;
    let mut silent = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut partial_preface = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    partial_preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut partial_head = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    partial_head.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    // …and none is closed before its deadline…
    clock.advance(std::time::Duration::from_millis(200));
    assert!(!closed_by_proxy(&mut partial_head).await, "closed before the header read timeout");
    // …but each is once the clock passes it.
    for (name, s) in
        [("silent", &mut silent), ("partial preface", &mut partial_preface), ("partial head", &mut partial_head)]
    {
        let mut closed = false;
        for _ in 0..50 {
            clock.advance(std::time::Duration::from_millis(200));
            if closed_by_proxy(s).await {
                closed = true;
                break;
            }
        }
        assert!(closed, "the {name} socket was not closed");
    }
    // The slots are free again.
    let r = client().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

/// A proxy whose `server.trusted_proxies` is `list`, listening on `listen`.
async fn proxy_trusting(e: &Env, listen: &str, list: &str) -> TestProxy {
    let text = config_text(&e.line.base_url(), &e.upstream.url(), ROUTES)
        .replace("listen = \"127.0.0.1:0\"\nadmin", &format!("listen = \"{listen}\"\nadmin"))
        .replace("shutdown_grace_seconds = 5", &format!("shutdown_grace_seconds = 5\ntrusted_proxies = {list}"));
    spawn_proxy_with(config(&text), &e.clock).await
}

const FROM_INGRESS: &[u8] = b"GET /public/x HTTP/1.1\r\nHost: 10.0.0.7:8080\r\nX-Forwarded-For: 203.0.113.9\r\n\
    X-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example\r\nX-Forwarded-Port: 443\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn a_trusted_ingress_keeps_its_forwarded_proto_host_and_port() {
    let e = env(ROUTES).await;
    let proxy = proxy_trusting(&e, "127.0.0.1:0", r#"["10.0.0.0/8", "127.0.0.0/8"]"#).await;
    assert_eq!(raw_status(&raw(proxy.addr, FROM_INGRESS).await), 200);
    let seen = e.upstream.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "app.example");
    assert_eq!(seen.headers["x-forwarded-port"], "443");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    // Still no identity from it: trust covers forwarding headers only.
    let answer =
        raw(proxy.addr, b"GET /api/x HTTP/1.1\r\nHost: x\r\nX-Line-User-Id: Uingress\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(raw_status(&answer), 401);
}

#[tokio::test]
async fn anyone_else_gets_the_forwarded_headers_replaced() {
    let e = env(ROUTES).await;
    let proxy = proxy_trusting(&e, "127.0.0.1:0", r#"["10.0.0.0/8", "fd00::/8"]"#).await;
    assert_eq!(raw_status(&raw(proxy.addr, FROM_INGRESS).await), 200);
    let seen = e.upstream.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "10.0.0.7:8080");
    assert!(seen.headers.get("x-forwarded-port").is_none());
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
}

#[tokio::test]
async fn ipv6_peers_are_matched_too() {
    let e = env(ROUTES).await;
    let trusted = proxy_trusting(&e, "[::1]:0", r#"["::1/128"]"#).await;
    assert_eq!(raw_status(&raw(trusted.addr, FROM_INGRESS).await), 200);
    let seen = e.upstream.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.9, ::1");
    let untrusted = proxy_trusting(&e, "[::1]:0", r#"["fd00::/8"]"#).await;
    assert_eq!(raw_status(&raw(untrusted.addr, FROM_INGRESS).await), 200);
    assert_eq!(e.upstream.last().headers["x-forwarded-proto"], "http");
}
