//! Bodies stream both ways without being buffered whole, and an `Upgrade`
//! (WebSocket) is authenticated before the 101 and then tunnelled.
#![cfg(feature = "dev")]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn eight_mib_body_streams_through_intact() {
    let e = env("").await;
    let body: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let sent = Sha256::digest(&body);
    // A streamed (chunked) request body over hyper's own client, echoed back by
    // the upstream as a stream.
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
    let io = TokioIo::new(TcpStream::connect(e.proxy.addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::post("/echo-body")
        .header("host", "x")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(StreamBody::new(futures_stream(frames)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let received = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(received.len(), body.len());
    assert_eq!(Sha256::digest(&received), sent);
    // And with a Content-Length body.
    let r = client().post(e.proxy.url("/echo-body")).bearer_auth(TOKEN).body(body.clone()).send().await.unwrap();
    assert_eq!(Sha256::digest(r.bytes().await.unwrap()), sent);
}

/// A tiny `Stream` over a vector, so the test needs no extra crate.
type Chunk = Result<Frame<Bytes>, std::io::Error>;

fn futures_stream(items: Vec<Chunk>) -> impl futures_core::Stream<Item = Chunk> {
    struct Iter(std::vec::IntoIter<Chunk>);
    impl futures_core::Stream for Iter {
        type Item = Chunk;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

#[tokio::test]
async fn rejected_upload_is_not_forwarded() {
    let e = env("").await;
    let r = client().post(e.proxy.url("/echo-body")).bearer_auth("bad").body(vec![0u8; 1 << 20]).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(e.upstream.hits(), 0);
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn websocket_upgrade_without_credential_is_refused_before_101() {
    let e = env("").await;
    let answer = raw(e.proxy.addr, format!("{UPGRADE}X-Line-User-Id: Uevil\r\n\r\n").as_bytes()).await;
    assert_eq!(raw_status(&answer), 401, "{answer}");
    assert_eq!(e.upstream.hits(), 0);
    let answer = raw(e.proxy.addr, format!("{UPGRADE}Authorization: Bearer nope\r\n\r\n").as_bytes()).await;
    assert_eq!(raw_status(&answer), 401, "{answer}");
    assert_eq!(e.upstream.hits(), 0);
}

#[tokio::test]
async fn authenticated_websocket_upgrade_is_tunnelled() {
    let e = env("").await;
    let mut s = TcpStream::connect(e.proxy.addr).await.unwrap();
    s.write_all(format!("{UPGRADE}Authorization: Bearer {TOKEN}\r\nX-Line-User-Id: Uevil\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert_eq!(raw_status(&head), 101, "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    let seen = e.upstream.last();
    assert_eq!(seen.headers["x-line-user-id"], USER);
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert!(seen.headers.get("authorization").is_none());
    // Bytes now flow through the tunnel both ways (the upstream echoes them).
    s.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = [0u8; 23];
    s.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");
}

/// A request body the test feeds chunk by chunk.
fn channel_body() -> (tokio::sync::mpsc::Sender<Chunk>, StreamBody<impl futures_core::Stream<Item = Chunk>>) {
    struct Rx(tokio::sync::mpsc::Receiver<Chunk>);
    impl futures_core::Stream for Rx {
        type Item = Chunk;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, StreamBody::new(Rx(rx)))
}

#[tokio::test]
async fn a_request_body_reaches_the_upstream_before_it_ends() {
    let e = env("").await;
    let io = TokioIo::new(TcpStream::connect(e.proxy.addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let (chunks, body) = channel_body();
    let request = http::Request::post("/stream-in")
        .header("host", "x")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(body)
        .unwrap();
    let response = tokio::spawn(sender.send_request(request));
    chunks.send(Ok(Frame::data(Bytes::from_static(b"first")))).await.unwrap();
    // A proxy that buffered the body would deliver nothing until the end.
    let arrived = tokio::time::timeout(std::time::Duration::from_secs(5), e.upstream.first_chunk_arrived()).await;
    assert!(arrived.is_ok(), "the first chunk did not reach the upstream while the body was still open");
    chunks.send(Ok(Frame::data(Bytes::from_static(b" and the rest")))).await.unwrap();
    drop(chunks);
    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "18");
}

#[tokio::test]
async fn a_response_body_reaches_the_client_before_it_ends() {
    let e = env("").await;
    let mut r = client().get(e.proxy.url("/stream-out")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The upstream holds the rest until told: the first chunk must come alone.
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), r.chunk()).await;
    assert_eq!(first.expect("no first chunk while the body was still open").unwrap().unwrap(), "first chunk;");
    e.upstream.release_response();
    assert_eq!(r.chunk().await.unwrap().unwrap(), "the rest");
    assert!(r.chunk().await.unwrap().is_none());
}

/// What an upstream that answers every request head `101` has seen: the heads
/// it parsed (with their first lines) and the connections that were closed on it.
#[derive(Default)]
struct Reflected {
    heads: std::sync::Mutex<Vec<String>>,
    closed: std::sync::atomic::AtomicUsize,
}

/// An upstream that answers every request head `101 Switching Protocols`
/// (with `answer`'s extra headers) and then keeps parsing HTTP (a status
/// reflector, a buggy framework): whatever the proxy lets through after the
/// 101 it reads as new requests.
async fn switching_upstream(answer: &'static str) -> (std::net::SocketAddr, std::sync::Arc<Reflected>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(Reflected::default());
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut bytes = Vec::new();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    bytes.extend_from_slice(&buf[..n]);
                    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = bytes.drain(..end + 4).collect();
                        recorded.heads.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                        let reply = format!("HTTP/1.1 101 Switching Protocols\r\n{answer}\r\n");
                        let _ = s.write_all(reply.as_bytes()).await;
                    }
                }
                recorded.closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

async fn switching_proxy(answer: &'static str) -> (MockLine, TestProxy, std::sync::Arc<Reflected>) {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let (upstream, seen) = switching_upstream(answer).await;
    let proxy = spawn_proxy(config(&config_text(&line.base_url(), &format!("http://{upstream}"), ""))).await;
    (line, proxy, seen)
}

#[tokio::test]
async fn a_101_that_is_not_the_handshakes_answer_opens_no_tunnel() {
    // Each a 101 to a valid, authenticated handshake, each lacking part of the
    // answer (RFC 6455 §4.2.2): the accept value, the Upgrade, the Connection.
    for answer in [
        "Connection: upgrade\r\nUpgrade: websocket\r\n",
        "Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n",
        "Connection: upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
        "Upgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
        "",
    ] {
        let (_line, proxy, seen) = switching_proxy(answer).await;
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(format!("{UPGRADE}Authorization: Bearer {TOKEN}\r\n\r\n").as_bytes()).await.unwrap();
        let answer_head = read_answer(&mut s).await;
        assert_eq!(raw_status(&answer_head), 502, "{answer:?}: {answer_head}");
        assert!(answer_head.contains("did not complete the WebSocket handshake"), "{answer_head}");
        // The smuggling attempt: a plain request with no token and a chosen
        // identity, on the connection the tunnel would have been.
        s.write_all(b"GET /admin HTTP/1.1\r\nHost: x\r\nX-Line-User-Id: Uevil\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let smuggled = read_answer(&mut s).await;
        assert_eq!(raw_status(&smuggled), 401, "the proxy did not read the next request as HTTP: {smuggled}");
        let heads = seen.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 1, "{answer:?}: the upstream read more than the handshake: {heads:?}");
        assert!(heads[0].starts_with("GET /ws "), "{heads:?}");
        // The connection that said 101 is closed, never pooled for another request.
        assert!(
            eventually(std::time::Duration::from_secs(5), || async {
                seen.closed.load(std::sync::atomic::Ordering::SeqCst) == 1
            })
            .await,
            "{answer:?}: the upstream connection stayed open"
        );
    }
}

#[tokio::test]
async fn a_handshake_without_a_key_is_no_upgrade() {
    // No Sec-WebSocket-Key: not a WebSocket handshake, so Upgrade is dropped as
    // hop-by-hop and a 101 is one nobody asked for.
    let (_line, proxy, seen) = switching_proxy("Connection: upgrade\r\nUpgrade: websocket\r\n").await;
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(proxy.addr, request.as_bytes()).await;
    assert_eq!(raw_status(&answer), 502, "{answer}");
    let heads = seen.heads.lock().unwrap().clone();
    assert!(!heads[0].to_ascii_lowercase().contains("upgrade: websocket"), "{heads:?}");
}

#[tokio::test]
async fn an_upstream_101_nobody_asked_for_is_a_502() {
    let (_line, proxy, seen) = switching_proxy("Connection: upgrade\r\nUpgrade: websocket\r\n").await;
    let r = client().get(proxy.url("/plain")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(json_error(r, 502).await, "bad_gateway");
    assert_eq!(seen.heads.lock().unwrap().len(), 1);
    let unrequested = "line_auth_proxy_requests_total{outcome=\"upstream_error\",auth=\"access_token\"}";
    assert_eq!(proxy.metric(unrequested).await, 1.0);
}
