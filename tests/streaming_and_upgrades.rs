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

/// An upstream that answers every request `101 Switching Protocols` and then
/// keeps reading whatever comes (a status reflector, a buggy framework).
async fn switching_upstream() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = s
                            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
                            .await;
                    }
                }
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn an_upstream_101_nobody_asked_for_is_a_502() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let (upstream, heads) = switching_upstream().await;
    let proxy = spawn_proxy(config(&config_text(&line.base_url(), &format!("http://{upstream}"), ""))).await;
    let r = client().get(proxy.url("/plain")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(json_error(r, 502).await, "bad_gateway");
    assert_eq!(heads.load(std::sync::atomic::Ordering::SeqCst), 1);
    let unrequested = "line_auth_proxy_requests_total{outcome=\"upstream_error\",auth=\"access_token\"}";
    assert_eq!(proxy.metric(unrequested).await, 1.0);
}
