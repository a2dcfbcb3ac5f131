//! Browsers calling the API: the proxy's own answers readable by the origins a
//! route names (so an app can tell "log in again" from "LINE is down, retry"),
//! and a WebSocket's access token as a `Sec-WebSocket-Protocol` entry, removed
//! before the upgrade is forwarded. The requests carry exactly the headers
//! headless Chromium 156 sends for a cross-origin `fetch` and a `new WebSocket`.
#![cfg(feature = "dev")]

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/api/"
auth = "access_token"
allow_cors_preflight = true
cors_allow_origins = ["https://app.example", "http://localhost:5173"]

[[routes]]
path_prefix = "/ws"
auth = "access_token"
"#;

/// A cross-origin `fetch(url, {headers: {Authorization}})` from `origin`, as Chromium sends it.
fn chromium_fetch(path: &str, origin: &str, token: Option<&str>) -> String {
    let authorization = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: api.example\r\nConnection: keep-alive\r\nsec-ch-ua-platform: \"Linux\"\r\n{authorization}\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36\r\n\
         Accept: */*\r\nOrigin: {origin}\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Dest: empty\r\n\
         Referer: {origin}/\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n\r\n"
    )
}

fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn the_proxys_own_answers_are_readable_by_the_routes_origins() {
    let e = env(ROUTES).await;
    let answer = raw(e.proxy.addr, chromium_fetch("/api/me", "https://app.example", None).as_bytes()).await;
    assert_eq!(raw_status(&answer), 401);
    assert_eq!(header(&answer, "access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(header(&answer, "vary"), Some("Origin"));
    assert_eq!(header(&answer, "access-control-expose-headers"), Some("WWW-Authenticate, Retry-After, X-Request-Id"));
    assert_eq!(header(&answer, "www-authenticate"), Some("Bearer"));
    // An invalid token: the same, with the invalid_token challenge.
    let answer =
        raw(e.proxy.addr, chromium_fetch("/api/me", "http://localhost:5173", Some("expired")).as_bytes()).await;
    assert_eq!(raw_status(&answer), 401);
    assert_eq!(header(&answer, "access-control-allow-origin"), Some("http://localhost:5173"));
    // LINE down: a 503 the app can read, Retry-After included.
    e.line.set_faults(Faults {
        verify: Some(Fault::Status(503)),
        profile: Some(Fault::Status(503)),
        ..Faults::default()
    });
    let answer = raw(e.proxy.addr, chromium_fetch("/api/me", "https://app.example", Some("fresh")).as_bytes()).await;
    assert_eq!(raw_status(&answer), 503);
    assert_eq!(header(&answer, "access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(header(&answer, "retry-after"), Some("1"));
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn other_origins_and_other_routes_get_no_cors_headers() {
    let e = env(ROUTES).await;
    for (path, origin) in [
        ("/api/me", "https://evil.example"),
        ("/api/me", "https://app.example.evil.example"),
        ("/other", "https://app.example"),
        ("/ws", "https://app.example"),
    ] {
        let answer = raw(e.proxy.addr, chromium_fetch(path, origin, None).as_bytes()).await;
        assert_eq!(raw_status(&answer), 401, "{path} {origin}");
        assert_eq!(header(&answer, "access-control-allow-origin"), None, "{path} {origin}: {answer}");
    }
    // A forwarded answer's CORS headers are the upstream's business, not added.
    let answer = raw(e.proxy.addr, chromium_fetch("/api/me", "https://app.example", Some(TOKEN)).as_bytes()).await;
    assert_eq!(raw_status(&answer), 200);
    assert_eq!(header(&answer, "access-control-allow-origin"), None);
}

#[test]
fn cors_origins_are_checked_at_load_time() {
    for bad in ["*", "app.example", "https://app.example/", "https://app.example/path", "ftp://app.example"] {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[line]\nchannel_ids = [\"1234567890\"]\n\
             [[routes]]\npath_prefix = \"/api/\"\nauth = \"access_token\"\ncors_allow_origins = [\"{bad}\"]\n"
        );
        let p = line_auth_proxy::config::load_str(&text, std::iter::empty()).unwrap_err();
        assert_eq!(p.error_keys(), vec!["routes[0].cors_allow_origins[0]"], "{bad}");
    }
}

/// `new WebSocket(url, ["bearer.line-auth-proxy." + token, "chat"])`, as Chromium sends it.
fn chromium_websocket(token_entry: &str, extra: &str) -> String {
    format!(
        "GET /ws/chat HTTP/1.1\r\nHost: api.example\r\nConnection: Upgrade\r\nPragma: no-cache\r\nCache-Control: no-cache\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36\r\n\
         Upgrade: websocket\r\nOrigin: https://app.example\r\nSec-WebSocket-Version: 13\r\n\
         Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
         Sec-WebSocket-Protocol: {token_entry}chat\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn a_browser_websocket_authenticates_with_its_subprotocol_entry() {
    let e = env(ROUTES).await;
    let mut s = TcpStream::connect(e.proxy.addr).await.unwrap();
    s.write_all(chromium_websocket(&format!("bearer.line-auth-proxy.{TOKEN}, "), "").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert_eq!(raw_status(&String::from_utf8(head).unwrap()), 101);
    let seen = e.upstream.last();
    assert_eq!(seen.headers["x-line-user-id"], USER);
    // The credential is gone; the page's real subprotocol is what the upstream sees.
    assert_eq!(seen.headers["sec-websocket-protocol"], "chat");
    assert!(seen.headers.iter().all(|(_, v)| !v.as_bytes().windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes())));
    s.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    s.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"hello");
}

#[tokio::test]
async fn a_bad_or_doubled_websocket_credential_is_refused_before_the_upgrade() {
    let e = env(ROUTES).await;
    let answer =
        raw(e.proxy.addr, chromium_websocket("bearer.line-auth-proxy.not-a-real-token, ", "").as_bytes()).await;
    assert_eq!(raw_status(&answer), 401, "{answer}");
    assert!(answer.contains("invalid_token"));
    // Both an Authorization header and the entry: a 400, whichever is valid.
    let both =
        chromium_websocket(&format!("bearer.line-auth-proxy.{TOKEN}, "), &format!("Authorization: Bearer {TOKEN}\r\n"));
    let answer = raw(e.proxy.addr, both.as_bytes()).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert!(answer.contains("not both"), "{answer}");
    // No credential at all: the usual 401.
    assert_eq!(raw_status(&raw(e.proxy.addr, chromium_websocket("", "").as_bytes()).await), 401);
    assert_eq!(e.upstream.hits(), 0);
    let m = e.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_requests_total{outcome=\"bad_request\",auth=\"access_token\"}"), 1.0, "{m}");
}

#[tokio::test]
async fn the_entry_is_removed_even_where_no_credential_is_needed() {
    let e = env("[[routes]]\npath_prefix = \"/ws\"\nauth = \"none\"\n").await;
    let mut s = TcpStream::connect(e.proxy.addr).await.unwrap();
    s.write_all(chromium_websocket("bearer.line-auth-proxy.some-token, ", "").as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 101");
    assert_eq!(e.upstream.last().headers["sec-websocket-protocol"], "chat");
}

#[tokio::test]
async fn on_an_optional_route_the_entry_is_no_credential_but_still_removed() {
    let e = env("[[routes]]\npath_prefix = \"/ws\"\nauth = \"optional\"\n").await;
    let mut s = TcpStream::connect(e.proxy.addr).await.unwrap();
    s.write_all(chromium_websocket(&format!("bearer.line-auth-proxy.{TOKEN}, "), "").as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 101");
    let seen = e.upstream.last();
    assert_eq!(seen.headers["sec-websocket-protocol"], "chat");
    assert!(seen.headers.get("x-line-user-id").is_none(), "the entry counted as a credential on an optional route");
    assert_eq!(e.line.verify_calls(), 0);
}

#[tokio::test]
async fn a_431_on_a_route_naming_the_origin_is_readable_too() {
    let e = env(ROUTES).await;
    let big = "a".repeat(20_000);
    let request = chromium_fetch("/api/me", "https://app.example", None)
        .replace("\r\n\r\n", &format!("\r\nX-Big: {big}\r\n\r\n"));
    let answer = raw(e.proxy.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&answer), 431, "{}", &answer[..answer.len().min(400)]);
    assert_eq!(header(&answer, "access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(header(&answer, "vary"), Some("Origin"));
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn a_refused_grpc_web_call_is_answered_in_grpc_web_and_its_status_exposed() {
    let e = env(ROUTES).await;
    let request = chromium_fetch("/api/pkg.Svc/Call", "https://app.example", None).replace(
        "Accept: */*\r\n",
        "Accept: application/grpc-web-text\r\nContent-Type: application/grpc-web-text+proto\r\nX-Grpc-Web: 1\r\n",
    );
    let answer = raw(e.proxy.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(header(&answer, "content-type"), Some("application/grpc-web-text+proto"));
    assert_eq!(header(&answer, "grpc-status"), Some("16"));
    assert_eq!(header(&answer, "access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(
        header(&answer, "access-control-expose-headers"),
        Some("WWW-Authenticate, Retry-After, X-Request-Id, grpc-status, grpc-message")
    );
    assert_eq!(e.upstream.hits(), 0);
}
