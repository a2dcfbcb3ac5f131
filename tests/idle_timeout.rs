//! `server.idle_timeout_ms`: connections with nothing in flight give their slot
//! back — HTTP/2 ones whatever PINGs they answer or send, HTTP/1.1 keep-alive
//! ones between requests, WebSocket tunnels with no byte either way — while a
//! connection with a request in flight, or a tunnel with traffic, stays. The
//! proxy's clock is advanced; nothing sleeps through the timeout.
#![cfg(feature = "dev")]

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: Duration = Duration::from_secs(75);

async fn idle_env(max_connections: u32) -> Env {
    let e = env("").await;
    let text = config_text(&e.line.base_url(), &e.upstream.url(), "").replace(
        "shutdown_grace_seconds = 5",
        &format!("shutdown_grace_seconds = 5\nmax_connections = {max_connections}\nidle_timeout_ms = 75000"),
    );
    let proxy = spawn_proxy_with(config(&text), &e.clock).await;
    Env { proxy, ..e }
}

/// An h2c connection (the `h2` crate: it answers PINGs, and can send them) that
/// has made one request; its driver task reports how the connection ended.
struct H2 {
    ping: h2::PingPong,
    _send: h2::client::SendRequest<Bytes>,
    ended: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

async fn h2_connection(e: &Env) -> H2 {
    let tcp = TcpStream::connect(e.proxy.addr).await.unwrap();
    let (send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let ping = connection.ping_pong().expect("first call");
    let ended = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let request =
        http::Request::get(e.proxy.url("/x")).header("authorization", format!("Bearer {TOKEN}")).body(()).unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    H2 { ping, _send: send, ended }
}

/// Advances the clock in steps until `done` holds (the proxy's timers may arm
/// after the test's last step), or fails after a bounded number of steps.
async fn advance_until<F, Fut>(clock: &Clock, step: Duration, mut done: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..40 {
        clock.advance(step);
        if eventually(Duration::from_millis(100), &mut done).await {
            return true;
        }
    }
    false
}

/// Advances the clock 10 s at a time until the proxy closes `s`; false if it never does.
async fn closed_as_clock_advances(clock: &Clock, s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    for _ in 0..40 {
        clock.advance(Duration::from_secs(10));
        if matches!(tokio::time::timeout(Duration::from_millis(50), s.peek(&mut buf)).await, Ok(Ok(0) | Err(_))) {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn idle_http2_connections_answering_pings_give_their_slots_back() {
    let e = idle_env(3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(h2_connection(&e).await);
    }
    // Every slot is held by an idle HTTP/2 connection: a newcomer waits.
    let waiting = tokio::spawn({
        let url = e.proxy.url("/x");
        async move { client().get(url).bearer_auth(TOKEN).send().await.map(|r| r.status().as_u16()) }
    });
    // Not yet idle long enough; the clients keep the connections lively with PINGs.
    e.clock.advance(Duration::from_secs(60));
    for h in &mut held {
        h.ping.ping(h2::Ping::opaque()).await.expect("the proxy answers PINGs");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "a slot was freed before the idle timeout");
    assert!(held.iter().all(|h| !h.ended.is_finished()));
    // Past it, PINGs or not: GOAWAY and close, and the newcomer is served.
    let freed = advance_until(&e.clock, Duration::from_secs(5), || {
        let finished = held.iter().all(|h| h.ended.is_finished());
        async move { finished }
    })
    .await;
    assert!(freed, "idle HTTP/2 connections kept their slots");
    for h in held {
        // A graceful end (GOAWAY, then close): the driver finishes without error.
        assert!(h.ended.await.unwrap().is_ok());
    }
    assert_eq!(waiting.await.unwrap().unwrap(), 200);
}

#[tokio::test]
async fn an_http2_connection_with_a_stream_in_flight_is_not_idle() {
    let e = idle_env(10).await;
    let tcp = TcpStream::connect(e.proxy.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    // A response that streams its first chunk, then waits for the test.
    let request = http::Request::get(e.proxy.url("/stream-out"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let mut body = response.await.unwrap().into_body();
    assert_eq!(body.data().await.unwrap().unwrap(), "first chunk;");
    e.clock.advance(IDLE * 4);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!ended.is_finished(), "closed with a response in flight");
    e.upstream.release_response();
    assert_eq!(body.data().await.unwrap().unwrap(), "the rest");
}

#[tokio::test]
async fn an_http1_keep_alive_connection_lives_past_the_header_timeout_and_dies_at_idle() {
    let e = idle_env(10).await;
    let mut s = TcpStream::connect(e.proxy.addr).await.unwrap();
    let request = format!("GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(raw_status(&read_answer(&mut s).await), 200);
    // 60 s between requests: beyond the 10 s head timeout, within the idle timeout.
    e.clock.advance(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(raw_status(&read_answer(&mut s).await), 200, "the keep-alive connection was closed early");
    // Then idle for longer than the idle timeout: closed.
    let closed = closed_as_clock_advances(&e.clock, &mut s).await;
    assert!(closed, "an idle keep-alive connection was never closed");
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

async fn open_tunnel(e: &Env) -> TcpStream {
    let mut s = TcpStream::connect(e.proxy.addr).await.unwrap();
    s.write_all(format!("{UPGRADE}Authorization: Bearer {TOKEN}\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert_eq!(raw_status(&String::from_utf8(head).unwrap()), 101);
    s
}

async fn echo(s: &mut TcpStream, message: &[u8]) {
    s.write_all(message).await.unwrap();
    let mut back = vec![0u8; message.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, message);
}

#[tokio::test]
async fn a_websocket_tunnel_with_traffic_stays_and_an_idle_one_is_closed() {
    let e = idle_env(10).await;
    let mut s = open_tunnel(&e).await;
    // Traffic every 60 s keeps it open however long it lasts.
    for _ in 0..4 {
        e.clock.advance(Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
        echo(&mut s, b"still here").await;
    }
    // No byte for longer than the idle timeout: closed, slot and all.
    let closed = closed_as_clock_advances(&e.clock, &mut s).await;
    assert!(closed, "an idle tunnel was never closed");
    assert!(
        eventually(Duration::from_secs(5), || async {
            e.proxy.metric("line_auth_proxy_open_connections").await == 0.0
        })
        .await,
        "the tunnel's slot was not given back"
    );
}

/// A TLS client that completes the handshake with ALPN `h2` and then sends
/// half an HTTP/2 preface, or nothing, holds its slot only until
/// `server.header_read_timeout_ms` (10 s), not the idle timeout: the preface
/// is timed like a request head.
#[tokio::test]
async fn tls_connections_that_never_finish_their_preface_give_their_slots_back() {
    let dir = std::env::temp_dir().join(format!("lap-tls-idle-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let e = env("").await;
    let text = config_text(&e.line.base_url(), &e.upstream.url(), "").replace(
        "shutdown_grace_seconds = 5",
        &format!(
            "shutdown_grace_seconds = 5\nmax_connections = 4\nidle_timeout_ms = 75000\n\
             tls_cert_file = {cert_path:?}\ntls_key_file = {key_path:?}"
        ),
    );
    let proxy = spawn_proxy_with(config(&text), &e.clock).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut silent = Vec::new();
    for i in 0..4 {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let mut s = connector.connect(name.clone(), tcp).await.unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        if i % 2 == 0 {
            s.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..12]).await.unwrap();
            s.flush().await.unwrap();
        }
        silent.push(s);
    }
    // Every slot is held: a newcomer waits.
    let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap();
    let c = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(root)
        .resolve("localhost", proxy.addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/x", proxy.addr.port());
    let waiting = tokio::spawn(async move { c.get(url).bearer_auth(TOKEN).send().await.map(|r| r.status().as_u16()) });
    // Past the header deadline, long before the idle timeout, each is closed.
    let mut buf = [0u8; 16];
    for (i, s) in silent.iter_mut().enumerate() {
        let mut closed = false;
        for _ in 0..15 {
            e.clock.advance(Duration::from_secs(1));
            if matches!(tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await, Ok(Ok(0) | Err(_))) {
                closed = true;
                break;
            }
        }
        assert!(closed, "silent TLS connection {i} still open 15 s on");
    }
    assert_eq!(waiting.await.unwrap().unwrap(), 200, "the newcomer got a slot");
    std::fs::remove_dir_all(&dir).ok();
}
