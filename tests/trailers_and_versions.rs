//! Trailers pass both ways (identity names stripped from request trailers as
//! from headers), and the client is answered in its own HTTP version whatever
//! the upstream spoke.
#![cfg(feature = "dev")]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn request_trailers_pass_without_identity_names() {
    let e = env("").await;
    let io = TokioIo::new(TcpStream::connect(e.proxy.addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    trailers.insert("x-line-user-id", "Uattacker".parse().unwrap());
    trailers.insert("X_LINE_EMAIL", "evil@example.com".parse().unwrap());
    trailers.insert("x-line-identity-jwt", "eyJ.forged.jwt".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
        vec![Ok(Frame::data(Bytes::from_static(b"payload"))), Ok(Frame::trailers(trailers))];
    let request = http::Request::post("/trailers-in")
        .header("host", "x")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("te", "trailers")
        .header("trailer", "x-checksum, x-line-user-id, x_line_email, x-line-identity-jwt")
        .body(StreamBody::new(frames_stream(frames)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = e.upstream.last();
    let trailers = seen.trailers.expect("the upstream saw the body end");
    assert_eq!(trailers.get("x-checksum").unwrap(), "abc123", "a benign trailer was dropped: {trailers:?}");
    for spoof in ["x-line-user-id", "x_line_email", "x-line-identity-jwt"] {
        assert!(trailers.get(spoof).is_none(), "{spoof} reached the upstream as a trailer");
    }
    // The headers carry LINE's identity, as ever.
    assert_eq!(seen.headers["x-line-user-id"], USER);
}

#[tokio::test]
async fn response_trailers_reach_an_http1_client_that_asked_for_them() {
    let e = env("").await;
    let answer = raw(
        e.proxy.addr,
        format!(
            "GET /trailers-out HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("transfer-encoding: chunked"), "{answer}");
    assert!(lower.contains("\r\nx-checksum: abc123\r\n"), "the trailer was lost: {answer}");
    assert!(lower.contains("\r\ngrpc-status: 0\r\n"), "{answer}");
}

#[tokio::test]
async fn response_trailers_reach_an_http2_client() {
    let e = env("").await;
    let io = TokioIo::new(TcpStream::connect(e.proxy.addr).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(e.proxy.url("/trailers-out"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("te", "trailers")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("no trailers");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), "body then trailers");
}

/// An upstream that speaks HTTP/1.0: one answer per connection, then close.
async fn http10_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\nContent-Type: text/plain\r\n\r\nfrom 1.0\n")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_http10_upstream_does_not_close_the_clients_keep_alive_connection() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = http10_upstream().await;
    let proxy = spawn_proxy(config(&config_text(&line.base_url(), &format!("http://{upstream}"), ""))).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for round in 0..3 {
        s.write_all(format!("GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let answer = read_answer(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "round {round}: {answer}");
        assert!(!answer.to_ascii_lowercase().contains("connection: close"), "round {round}: {answer}");
        assert!(answer.ends_with("from 1.0\n"), "{answer}");
    }
}

type Seen = std::sync::Arc<std::sync::Mutex<Vec<(http::HeaderMap, Option<http::HeaderMap>)>>>;

/// An h2c (prior knowledge) upstream that records each request's headers and
/// trailers and answers as a gRPC server does: `content-type: application/grpc`,
/// a body, trailers, and no `Trailer` header (HTTP/2 needs none).
async fn grpc_like_h2c_upstream(seen: Seen) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    let headers = req.headers().clone();
                    let trailers = req.into_body().collect().await.ok().and_then(|c| c.trailers().cloned());
                    seen.lock().unwrap().push((headers, trailers));
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", "fine".parse().unwrap());
                    let frames: Vec<FrameResult> =
                        vec![Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))), Ok(Frame::trailers(trailers))];
                    let mut r = http::Response::new(StreamBody::new(frames_stream(frames)));
                    r.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

async fn h2c_env(seen: Seen) -> (MockLine, TestProxy) {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let upstream = grpc_like_h2c_upstream(seen).await;
    let text = config_text(&line.base_url(), &format!("http://{upstream}"), "")
        .replace("timeout_ms = 2000", "timeout_ms = 2000\nprotocol = \"h2c\"");
    let proxy = spawn_proxy(config(&text)).await;
    (line, proxy)
}

#[tokio::test]
async fn a_grpc_answer_from_an_http2_upstream_keeps_its_trailers_for_an_http1_client() {
    let (_line, proxy) = h2c_env(Seen::default()).await;
    let answer = raw(
        proxy.addr,
        format!(
            "POST /pkg.Svc/Call HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nContent-Type: application/grpc\r\n\
             Content-Length: 0\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let lower = answer.to_ascii_lowercase();
    // HTTP/1.1 sends only declared trailers; the proxy declares gRPC's.
    assert!(lower.contains("\r\ntrailer: grpc-status, grpc-message, grpc-status-details-bin\r\n"), "{answer}");
    assert!(lower.contains("\r\ngrpc-status: 0\r\n"), "the trailers were lost: {answer}");
    assert!(lower.contains("\r\ngrpc-message: fine\r\n"), "{answer}");
}

#[tokio::test]
async fn request_trailers_carry_no_credential_hop_by_hop_field_or_override() {
    let seen = Seen::default();
    let (_line, proxy) = h2c_env(seen.clone()).await;
    // An Authorization trailer is a credential the proxy never checked; a
    // hop-by-hop one made HTTP/2 refuse the trailers and the upstream wait
    // until the timeout (a 504 blaming the upstream).
    let trailers = "x-checksum: abc\r\nauthorization: Bearer smuggled\r\nkeep-alive: timeout=5\r\n\
                    x-original-url: /admin\r\nx-forwarded-for: 10.0.0.1\r\nhost: evil\r\nX_Line_User_Id: Uevil\r\n";
    let answer = raw(
        proxy.addr,
        format!(
            "POST /x HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\
             Trailer: x-checksum, authorization, keep-alive, x-original-url, x-forwarded-for, host, x_line_user_id\r\n\
             Transfer-Encoding: chunked\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n\
             5\r\nhello\r\n0\r\n{trailers}\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    let seen = seen.lock().unwrap();
    let (headers, trailers) = seen.last().expect("the upstream was reached");
    let trailers = trailers.as_ref().expect("the upstream saw trailers");
    assert_eq!(trailers.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-checksum"], "{trailers:?}");
    assert!(headers.get("authorization").is_none());
}

#[tokio::test]
async fn hop_by_hop_answer_trailers_do_not_reset_an_http2_clients_stream() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status, keep-alive\r\n\r\n\
                          4\r\nbody\r\n0\r\ngrpc-status: 0\r\nkeep-alive: timeout=5\r\n\r\n",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    let proxy = spawn_proxy(config(&config_text(&line.base_url(), &format!("http://{upstream}"), ""))).await;
    let io = TokioIo::new(TcpStream::connect(proxy.addr).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(proxy.url("/x"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("te", "trailers")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let collected = response.into_body().collect().await.expect("the HTTP/2 stream was reset");
    let trailers = collected.trailers().cloned().expect("no trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert!(trailers.get("keep-alive").is_none());
    assert_eq!(collected.to_bytes(), "body");
}
