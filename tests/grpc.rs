//! gRPC through the proxy, with a real gRPC server and client (tonic) over
//! `upstream.protocol = "h2c"`: unary and server-streaming calls, status and
//! metadata both ways, LINE's identity as metadata and client-sent identity
//! metadata stripped; refusals answered in gRPC's own terms; an upstream that
//! does not speak the configured protocol named as a protocol error.
#![cfg(feature = "dev")]

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use support::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

/// Messages are raw bytes: the proxy never looks inside them.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Messages = Pin<Box<dyn futures_core::Stream<Item = Result<Bytes, Status>> + Send>>;

/// What the gRPC server saw of each call's metadata.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<MetadataMap>>>);

impl Seen {
    fn last(&self) -> MetadataMap {
        self.0.lock().unwrap().last().cloned().expect("the gRPC server saw no call")
    }
    fn calls(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// `test.Echo/Unary`: echoes the message, with a response header naming the user.
#[derive(Clone)]
struct Unary(Seen);

impl tonic::codegen::Service<Request<Bytes>> for Unary {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        self.0.0.lock().unwrap().push(request.metadata().clone());
        Box::pin(async move {
            let user = request.metadata().get("x-line-user-id").cloned();
            let mut response = Response::new(request.into_inner());
            if let Some(user) = user {
                response.metadata_mut().insert("x-echo-user", user);
            }
            Ok(response)
        })
    }
}

/// `test.Echo/Fail`: a gRPC error with a message and trailing metadata.
#[derive(Clone)]
struct Fail(Seen);

impl tonic::codegen::Service<Request<Bytes>> for Fail {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<Bytes>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        self.0.0.lock().unwrap().push(request.metadata().clone());
        Box::pin(async {
            let mut status = Status::not_found("no such thing: 100% sure");
            status.metadata_mut().insert("x-detail", MetadataValue::from_static("looked everywhere"));
            Err(status)
        })
    }
}

/// `test.Echo/Count`: server streaming, the message's bytes one by one.
#[derive(Clone)]
struct Count(Seen);

impl tonic::codegen::Service<Request<Bytes>> for Count {
    type Response = Response<Messages>;
    type Error = Status;
    type Future = BoxFuture<Result<Response<Messages>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        self.0.0.lock().unwrap().push(request.metadata().clone());
        Box::pin(async move {
            let items: Vec<Result<Bytes, Status>> =
                request.into_inner().iter().map(|b| Ok(Bytes::copy_from_slice(&[*b]))).collect();
            let stream: Messages = Box::pin(frames(items));
            Ok(Response::new(stream))
        })
    }
}

fn frames<T: Send + 'static>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Send {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T> Unpin for Iter<T> {}
    impl<T> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
            Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

async fn route(seen: Seen, req: http::Request<Incoming>) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(Raw);
    Ok(match req.uri().path() {
        "/test.Echo/Unary" => grpc.unary(Unary(seen), req).await,
        "/test.Echo/Fail" => grpc.unary(Fail(seen), req).await,
        "/test.Echo/Count" => grpc.server_streaming(Count(seen), req).await,
        _ => Status::unimplemented("no such method").into_http(),
    })
}

/// A gRPC server on a loopback port (it takes HTTP/2 prior knowledge).
async fn grpc_server() -> (LoopbackServer, Seen) {
    let seen = Seen::default();
    let handler_seen = seen.clone();
    let server = LoopbackServer::start(move |req| route(handler_seen.clone(), req)).await.unwrap();
    (server, seen)
}

struct Grpc {
    line: MockLine,
    seen: Seen,
    proxy: TestProxy,
    _server: LoopbackServer,
}

async fn grpc_env() -> Grpc {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let (server, seen) = grpc_server().await;
    let text = config_text(&line.base_url(), &server.url(), "")
        .replace("timeout_ms = 2000", "timeout_ms = 2000\nprotocol = \"h2c\"");
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    Grpc { line, seen, proxy, _server: server }
}

async fn channel(proxy: &TestProxy) -> tonic::client::Grpc<Channel> {
    let channel = Endpoint::from_shared(proxy.url("")).unwrap().connect().await.unwrap();
    tonic::client::Grpc::new(channel)
}

fn call(message: &'static [u8], token: Option<&str>) -> Request<Bytes> {
    let mut request = Request::new(Bytes::from_static(message));
    let metadata = request.metadata_mut();
    if let Some(token) = token {
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    // Client-chosen identity metadata, in the spellings the strip rule folds.
    metadata.insert("x-line-user-id", MetadataValue::from_static("Uattacker"));
    metadata.insert("x_line_channel_id", MetadataValue::from_static("1"));
    metadata.insert("x-line-identity-jwt", MetadataValue::from_static("forged"));
    request
}

async fn unary(
    client: &mut tonic::client::Grpc<Channel>,
    method: &'static str,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    client.ready().await.unwrap();
    client.unary(request, PathAndQuery::from_static(method), Raw).await
}

#[tokio::test]
async fn a_unary_call_passes_with_lines_identity_as_metadata() {
    let g = grpc_env().await;
    let mut client = channel(&g.proxy).await;
    let response = unary(&mut client, "/test.Echo/Unary", call(b"hello", Some(TOKEN))).await.unwrap();
    assert_eq!(response.get_ref(), &Bytes::from_static(b"hello"));
    // The server's response metadata arrived, naming the user LINE vouched for.
    assert_eq!(response.metadata().get("x-echo-user").unwrap(), USER);
    let seen = g.seen.last();
    assert_eq!(seen.get("x-line-user-id").unwrap(), USER);
    assert_eq!(seen.get("x-line-channel-id").unwrap(), CHANNEL);
    assert_eq!(seen.get("x-line-auth-method").unwrap(), "access_token");
    for spoof in ["x_line_channel_id", "x-line-identity-jwt", "authorization"] {
        assert!(seen.get(spoof).is_none(), "{spoof} reached the gRPC server");
    }
    assert_eq!(seen.get_all("x-line-user-id").iter().count(), 1);
    // HTTP/2 to the upstream: its own authority as :authority, no Host that
    // could differ from it; the client's host is in X-Forwarded-Host.
    assert!(seen.get("host").is_none(), "{seen:?}");
    assert_eq!(seen.get("x-forwarded-host").unwrap(), g.proxy.addr.to_string().as_str());
}

#[tokio::test]
async fn status_message_and_trailing_metadata_reach_the_client() {
    let g = grpc_env().await;
    let mut client = channel(&g.proxy).await;
    let status = unary(&mut client, "/test.Echo/Fail", call(b"?", Some(TOKEN))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such thing: 100% sure");
    assert_eq!(status.metadata().get("x-detail").unwrap(), "looked everywhere");
}

#[tokio::test]
async fn a_server_streaming_call_delivers_every_message_and_the_trailers() {
    let g = grpc_env().await;
    let mut client = channel(&g.proxy).await;
    client.ready().await.unwrap();
    let response = client
        .server_streaming(call(b"abcde", Some(TOKEN)), PathAndQuery::from_static("/test.Echo/Count"), Raw)
        .await
        .unwrap();
    let mut stream = response.into_inner();
    let mut got = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        got.extend_from_slice(&message);
    }
    assert_eq!(got, b"abcde");
    let trailers = stream.trailers().await.unwrap().expect("the stream's trailers");
    assert_eq!(trailers.get("grpc-status").map(|v| v.to_str().unwrap()), Some("0"));
    assert_eq!(g.seen.last().get("x-line-user-id").unwrap(), USER);
}

#[tokio::test]
async fn refused_calls_get_unauthenticated_and_never_reach_the_server() {
    let g = grpc_env().await;
    let mut client = channel(&g.proxy).await;
    let status = unary(&mut client, "/test.Echo/Unary", call(b"x", None)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("LINE token"), "{status:?}");
    let status = unary(&mut client, "/test.Echo/Unary", call(b"x", Some("not-a-real-token"))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(g.seen.calls(), 0, "a refused call reached the gRPC server");
    let m = g.proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"missing_credential\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "line_auth_proxy_auth_rejections_total{reason=\"token_invalid\"}"), 1.0, "{m}");
}

#[tokio::test]
async fn line_being_down_is_unavailable_to_a_grpc_client() {
    let g = grpc_env().await;
    g.line.set_faults(verify_fails(Fault::Status(503)));
    let mut client = channel(&g.proxy).await;
    let status = unary(&mut client, "/test.Echo/Unary", call(b"x", Some(TOKEN))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(g.seen.calls(), 0);
}

/// A server that speaks HTTP/2 only, as grpcio does.
async fn h2_only_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req| route(Seen::default(), req));
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn http1_to_an_http2_only_server_is_named_a_protocol_error() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    let (server, task) = h2_only_server().await;
    // upstream.protocol left at its default, http1: the usual gRPC mistake.
    let proxy = spawn_proxy(config(&config_text(&line.base_url(), &format!("http://{server}"), ""))).await;
    let mut client = channel(&proxy).await;
    let status = unary(&mut client, "/test.Echo/Unary", call(b"x", Some(TOKEN))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("protocol"), "{status:?}");
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, "line_auth_proxy_requests_total{outcome=\"upstream_error\",auth=\"access_token\"}"), 1.0);
    task.abort();
}

#[tokio::test]
async fn h2c_to_an_http1_only_server_is_named_a_protocol_error_too() {
    let line = MockLine::start().await.unwrap();
    line.add_token(TOKEN, MockToken::new(CHANNEL, USER, "Brown"));
    // An HTTP/1.1 server: it answers the h2 preface with a 400, as nginx does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        }
    });
    let text = config_text(&line.base_url(), &format!("http://{addr}"), "")
        .replace("timeout_ms = 2000", "timeout_ms = 2000\nprotocol = \"h2c\"");
    let proxy = spawn_proxy(config(&text)).await;
    let r = client().get(proxy.url("/plain")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error_description"].as_str().unwrap().contains("protocol"), "{body}");
    task.abort();
}
