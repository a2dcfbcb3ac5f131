//! Test harness: the real proxy on ephemeral ports, the mock LINE Platform, a
//! recording upstream and real `redis-server`s. Every server binds port 0 and
//! reports the port it got; nothing races for a "free" port. Time that expires
//! state is a manual [`Clock`] shared by the proxy and the mock, advanced by the
//! tests; waiting for something to happen is [`eventually`], never a sleep.
#![allow(dead_code)]

pub mod browser;
pub mod process;
mod redis;
pub mod sessions;
pub mod signing_keys;
pub mod tls;
pub mod web_login;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
pub use line_auth_proxy::Clock;
use line_auth_proxy::config::{self, Config};
#[allow(unused_imports)]
pub use line_auth_proxy::dev::{Fault, Faults, LoopbackServer, MockLine, MockToken};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

#[allow(unused_imports)]
pub use self::redis::{RedisServer, mac_key_line, mac_key_line_for};

pub const CHANNEL: &str = "1234567890";
pub const OTHER_CHANNEL: &str = "9999999999";
pub const USER: &str = "U1234567890abcdef1234567890abcdef";

/// Polls `condition` until it holds or `within` has passed (real time): the
/// one way these tests wait for something that happens in the background.
pub async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // The poll interval of a condition: what is awaited (a server starting,
        // a background reconnect) happens in real time, in another task or process.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A byte-for-byte relay from a TCP port (bound on `127.0.0.1:0` and held for
/// as long as the task runs) to a unix socket, for servers that cannot take
/// port 0 (`redis-server`, nginx): every connection to the port becomes one to
/// the socket; one that finds no server there is closed at once, as a refused
/// connection would be.
pub async fn unix_relay(socket: std::path::PathBuf) -> (u16, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { continue };
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    (port, task)
}

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    /// The HTTP version the upstream was spoken to in.
    pub version: http::Version,
    /// `/trailers-in…` only: the request's trailers, once its body ended.
    pub trailers: Option<HeaderMap>,
}

#[derive(Default)]
struct UpstreamState {
    requests: Mutex<Vec<Recorded>>,
    hits: AtomicUsize,
    /// `/stream-in`: notified when the first body chunk has arrived.
    first_chunk_in: Notify,
    /// `/stream-out`: the rest of the response body waits for this.
    release_out: Notify,
}

/// An upstream that records every request. Paths with special meaning:
/// `/echo-body…` streams the request body back; `/slow…` answers after the
/// `x-test-delay-ms` request header's delay; `/stream-in…` reads the body chunk
/// by chunk and signals [`RecordingUpstream::first_chunk_arrived`];
/// `/stream-out…` sends one chunk and holds the rest until
/// [`RecordingUpstream::release_response`]; an `Upgrade` request gets a 101 and
/// an echo of every byte. Anything else: 200 `upstream ok`.
pub struct RecordingUpstream {
    server: LoopbackServer,
    state: Arc<UpstreamState>,
}

impl RecordingUpstream {
    pub async fn start() -> Self {
        let state = Arc::new(UpstreamState::default());
        let s = state.clone();
        let server = LoopbackServer::start(move |req| upstream_handle(s.clone(), req)).await.unwrap();
        Self { server, state }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the upstream received no request")
    }

    /// Resolves when a `/stream-in` request's first body chunk has arrived.
    pub async fn first_chunk_arrived(&self) {
        self.state.first_chunk_in.notified().await
    }

    /// Lets a held `/stream-out` response finish.
    pub fn release_response(&self) {
        self.state.release_out.notify_one();
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// A WebSocket server's `Sec-WebSocket-Accept` for `key` (RFC 6455 §1.3).
pub fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut sha1 = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finish())
}

fn full(bytes: &'static [u8]) -> UpBody {
    Full::new(Bytes::from_static(bytes)).map_err(|never| match never {}).boxed()
}

async fn upstream_handle(
    state: Arc<UpstreamState>,
    mut req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path_and_query().map_or("/".to_string(), |p| p.to_string());
    state.requests.lock().unwrap().push(Recorded {
        method: req.method().to_string(),
        path_and_query: path.clone(),
        headers: req.headers().clone(),
        version: req.version(),
        trailers: None,
    });
    if req.headers().contains_key(http::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = Response::new(full(b""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert("connection", "upgrade".parse().unwrap());
        r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
        if let Some(key) = req.headers().get("sec-websocket-key") {
            r.headers_mut().insert("sec-websocket-accept", websocket_accept(key.as_bytes()).parse().unwrap());
        }
        return Ok(r);
    }
    if path.starts_with("/slow") {
        let ms = req
            .headers()
            .get("x-test-delay-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        // A slow upstream, as the proxy's real-time upstream timeout meets it.
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path.starts_with("/echo-body") {
        return Ok(Response::new(req.into_body().boxed()));
    }
    if path.starts_with("/stream-in") {
        let mut body = req.into_body();
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                if total == 0 && !data.is_empty() {
                    state.first_chunk_in.notify_one();
                }
                total += data.len();
            }
        }
        return Ok(Response::new(Full::new(Bytes::from(total.to_string())).map_err(|never| match never {}).boxed()));
    }
    if path.starts_with("/trailers-in") {
        let collected = req.into_body().collect().await;
        let trailers = collected.ok().and_then(|c| c.trailers().cloned()).unwrap_or_default();
        state.requests.lock().unwrap().last_mut().expect("recorded above").trailers = Some(trailers);
        return Ok(Response::new(full(b"trailers recorded")));
    }
    if path.starts_with("/trailers-out") {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok(hyper::body::Frame::data(Bytes::from_static(b"body then trailers"))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        let mut r = Response::new(http_body_util::StreamBody::new(frames_stream(frames)).boxed());
        r.headers_mut().insert("trailer", "x-checksum, grpc-status".parse().unwrap());
        return Ok(r);
    }
    if path.starts_with("/stream-out") {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, hyper::Error>>(2);
        let release = state.clone();
        tokio::spawn(async move {
            let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"first chunk;")))).await;
            release.release_out.notified().await;
            let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"the rest")))).await;
        });
        let stream = tokio_stream_from(rx);
        return Ok(Response::new(http_body_util::StreamBody::new(stream).boxed()));
    }
    let mut r = Response::new(full(b"upstream ok"));
    // Hop-by-hop headers the proxy must drop on the way back.
    r.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
    r.headers_mut().insert("x-upstream", "1".parse().unwrap());
    Ok(r)
}

/// A body's frames, given in advance (data, then trailers, say).
pub type FrameResult = Result<hyper::body::Frame<Bytes>, hyper::Error>;

/// A `Stream` over a list of frames, so the harness needs no extra crate.
pub fn frames_stream<E>(
    frames: Vec<Result<hyper::body::Frame<Bytes>, E>>,
) -> impl futures_core::Stream<Item = Result<hyper::body::Frame<Bytes>, E>> {
    struct Iter<E>(std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, E>>);
    impl<E> Unpin for Iter<E> {}
    impl<E> futures_core::Stream for Iter<E> {
        type Item = Result<hyper::body::Frame<Bytes>, E>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(frames.into_iter())
}

/// A `Stream` over an mpsc receiver, so the harness needs no extra crate.
fn tokio_stream_from<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
    struct Rx<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for Rx<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    Rx(rx)
}

/// A running proxy; `stop` shuts it down like SIGTERM would.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), line_auth_proxy::RunError>>>,
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Signals shutdown; returns the task so tests can await the drain.
    pub fn begin_shutdown(&mut self) -> JoinHandle<Result<(), line_auth_proxy::RunError>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("already shut down")
    }

    /// The serving task, without signalling shutdown (to watch it end on its own).
    pub fn serving_task(&mut self) -> JoinHandle<Result<(), line_auth_proxy::RunError>> {
        self.task.take().expect("already shut down")
    }

    pub async fn stop(mut self) {
        self.begin_shutdown().await.unwrap().unwrap();
    }

    /// The Prometheus exposition from the admin listener.
    pub async fn metrics(&self) -> String {
        client().get(self.admin_url("/metrics")).send().await.unwrap().text().await.unwrap()
    }

    /// One series' value, as [`metric`] reads it.
    pub async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics().await, series)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Configuration text for a proxy in front of `upstream`, verifying with `line`,
/// on ephemeral ports; `extra` is appended (more sections, `[[routes]]`).
pub fn config_text(line_base_url: &str, upstream_url: &str, extra: &str) -> String {
    config_text_line(line_base_url, upstream_url, "", extra)
}

/// [`config_text`] with more keys in `[line]` (ID-token settings).
pub fn config_text_line(line_base_url: &str, upstream_url: &str, line_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace_seconds = 5

[upstream]
url = "{upstream_url}"
timeout_ms = 2000

[line]
channel_ids = ["{CHANNEL}"]
api_base_url = "{line_base_url}"
timeout_ms = 500
{line_extra}

{extra}
"#
    )
}

/// Parses configuration text (panics on problems: a test's config must be valid).
pub fn config(text: &str) -> Config {
    config::load_str(text, std::iter::empty()).unwrap_or_else(|p| panic!("test config invalid:\n{p}\n{text}")).config
}

/// Binds and serves the proxy on `clock`, then polls `/readyz` until it answers 200.
pub async fn spawn_proxy_with(config: Config, clock: &Clock) -> TestProxy {
    let proxy = spawn_proxy_unready_with(config, clock).await;
    let url = proxy.admin_url("/readyz");
    assert!(eventually_status(&url, 200, 10).await, "proxy never became ready");
    proxy
}

/// [`spawn_proxy_with`] on a clock of its own.
pub async fn spawn_proxy(config: Config) -> TestProxy {
    spawn_proxy_with(config, &Clock::manual()).await
}

/// [`spawn_proxy_with`] serving `listener` (bound by the test, which needed
/// its port in the configuration: a browser's `login.redirect_uri`).
pub async fn spawn_proxy_on(config: Config, listener: tokio::net::TcpListener, clock: &Clock) -> TestProxy {
    let bound = line_auth_proxy::bind_on(config, listener, clock.clone()).await.expect("proxy binds");
    let proxy = serve_bound(bound);
    assert!(eventually_status(&proxy.admin_url("/readyz"), 200, 10).await, "proxy never became ready");
    proxy
}

/// [`spawn_proxy_with`] for the configuration at `path` (with `env` as its
/// environment overlay), read again on SIGHUP and when the file changes: the
/// file's poll runs on `clock`, so each advance of five seconds is a look.
pub async fn spawn_reloading(path: &std::path::Path, env: Vec<(String, String)>, clock: &Clock) -> TestProxy {
    let source = config::Source::new(Some(path.to_owned()), env);
    let loaded = config::load(source.path(), source.env().iter().cloned())
        .unwrap_or_else(|p| panic!("test config invalid:\n{p}"));
    let bound = line_auth_proxy::bind_with(loaded.config, clock.clone()).await.expect("proxy binds");
    let proxy = serve_bound(bound.reload_from(source));
    assert!(eventually_status(&proxy.admin_url("/readyz"), 200, 10).await, "proxy never became ready");
    proxy
}

/// Binds and serves the proxy without waiting for readiness.
pub async fn spawn_proxy_unready_with(config: Config, clock: &Clock) -> TestProxy {
    serve_bound(line_auth_proxy::bind_with(config, clock.clone()).await.expect("proxy binds"))
}

fn serve_bound(bound: line_auth_proxy::Bound) -> TestProxy {
    let addr = bound.proxy_addr();
    let admin = bound.admin_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(async {
        let _ = rx.await;
    }));
    TestProxy { addr, admin, shutdown: Some(tx), task: Some(task) }
}

/// The usual trio on one manual clock: mock LINE with one valid token, a
/// recording upstream, the proxy.
pub struct Env {
    pub clock: Clock,
    pub line: MockLine,
    pub upstream: RecordingUpstream,
    pub proxy: TestProxy,
}

pub const TOKEN: &str = "valid-access-token-0123456789";

pub async fn env(extra: &str) -> Env {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    let mut token = MockToken::new(CHANNEL, USER, "Brown");
    token.picture_url = Some("https://profile.line-scdn.net/abcdefghijklmn".into());
    line.add_token(TOKEN, token);
    let upstream = RecordingUpstream::start().await;
    let proxy = spawn_proxy_with(config(&config_text(&line.base_url(), &upstream.url(), extra)), &clock).await;
    Env { clock, line, upstream, proxy }
}

/// An HTTP client that never uses a system proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(20)).build().unwrap()
}

/// Sends raw bytes and reads one answer: up to the end of its `Content-Length`
/// body, or to the connection's close (10 s at most).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_answer(&mut stream).await
}

/// Reads one answer from `stream` (see [`raw`]).
pub async fn read_answer(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(head_end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| out.len() >= head_end + 4 + n) {
                break;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status line's code of a raw HTTP/1.1 answer.
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// Asserts a proxy-made JSON error answer and returns its `error` field.
pub async fn json_error(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error_description"].is_string(), "{body}");
    body["error"].as_str().unwrap().to_string()
}

/// Collects a body fully (small test bodies only).
pub async fn collect(body: Incoming) -> Bytes {
    body.collect().await.unwrap().to_bytes()
}

/// A counter's value from the exposition text (`name{labels}` exactly as printed).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Env {
    /// GET `path` with a bearer token; the status as a number.
    pub async fn status(&self, path: &str, token: &str) -> u16 {
        client().get(self.proxy.url(path)).bearer_auth(token).send().await.unwrap().status().as_u16()
    }

    /// ID-token claims for our channel and user, issued now by the shared clock.
    pub fn claims(&self, nonce: Option<&str>) -> serde_json::Value {
        self.line.id_claims(CHANNEL, USER, nonce)
    }
}

/// Faults where only the verify endpoint fails this way.
pub fn verify_fails(fault: Fault) -> Faults {
    Faults { verify: Some(fault), ..Faults::default() }
}

/// An address where nothing listens, held so for as long as the guard lives: a
/// bound socket that never listens refuses every connection, and no one else
/// can take its port meanwhile.
pub struct ClosedPort {
    socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

impl ClosedPort {
    /// Starts listening at the address (a server that comes up).
    pub fn listen(self) -> tokio::net::TcpListener {
        self.socket.listen(64).unwrap()
    }
}

pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    ClosedPort { socket, addr }
}

/// `n` concurrent GETs of `url` with `token`; their statuses.
pub async fn concurrent_statuses(url: String, token: &'static str, n: usize) -> Vec<u16> {
    let c = client();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { c.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// A login setup: mock LINE (JWKS on), a recording upstream, and a proxy with
/// an `id_token` route at `/login` (plus whatever `extra` adds), verifying
/// locally against the mock's JWKS unless `line_extra` says otherwise.
pub async fn login_env(line_extra: &str, extra: &str) -> Env {
    let clock = Clock::manual();
    let line = MockLine::start_with_clock(clock.clone()).await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let line_extra = format!("jwks_url = \"{}\"\n{line_extra}", line.jwks_url());
    let extra = format!("[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n{extra}");
    let text = config_text_line(&line.base_url(), &upstream.url(), &line_extra, &extra);
    let proxy = spawn_proxy_with(config(&text), &clock).await;
    Env { clock, line, upstream, proxy }
}

impl Env {
    /// A fresh nonce from the proxy's nonce endpoint.
    pub async fn nonce(&self) -> String {
        let r = client().get(self.proxy.url("/auth/nonce")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        v["nonce"].as_str().unwrap().to_string()
    }

    /// POST /login with `token`; the status.
    pub async fn login(&self, token: &str) -> u16 {
        client().post(self.proxy.url("/login")).bearer_auth(token).send().await.unwrap().status().as_u16()
    }
}

/// Polls GET `url` (up to `seconds`) until it answers `status`; true when it did.
/// For state that changes in the background (readiness, reconnection).
pub async fn eventually_status(url: &str, status: u16, seconds: u64) -> bool {
    let c = client();
    eventually(Duration::from_secs(seconds), || {
        let request = c.get(url).send();
        async move { request.await.is_ok_and(|r| r.status().as_u16() == status) }
    })
    .await
}

/// A `tracing` writer that keeps everything written, for log assertions.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
