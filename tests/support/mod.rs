//! Test harness: the real proxy on ephemeral ports, the mock LINE Platform, and a
//! recording upstream. Every server listens on 127.0.0.1:0 and readiness is
//! polled, never slept for.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use line_auth_proxy::config::{self, Config};
#[allow(unused_imports)]
pub use line_auth_proxy::mock_line::{Fault, Faults, MockLine, MockToken};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const CHANNEL: &str = "1234567890";
pub const OTHER_CHANNEL: &str = "9999999999";
pub const USER: &str = "U1234567890abcdef1234567890abcdef";

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct UpstreamState {
    requests: Mutex<Vec<Recorded>>,
    hits: AtomicUsize,
}

/// An upstream that records every request. Paths with special meaning:
/// `/echo-body…` streams the request body back; `/slow…` answers after the
/// `x-test-delay-ms` request header's delay; an `Upgrade` request gets a 101 and
/// an echo of every byte. Anything else: 200 `upstream ok`.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    task: JoinHandle<()>,
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState::default());
        let s = state.clone();
        let task = line_auth_proxy::mock_line::spawn_server(listener, move |req| upstream_handle(s.clone(), req));
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
}

type UpBody = Either<Incoming, Full<Bytes>>;

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
        let mut r = Response::new(Either::Right(Full::new(Bytes::new())));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert("connection", "upgrade".parse().unwrap());
        r.headers_mut().insert("upgrade", "websocket".parse().unwrap());
        return Ok(r);
    }
    if path.starts_with("/slow") {
        let ms = req
            .headers()
            .get("x-test-delay-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path.starts_with("/echo-body") {
        return Ok(Response::new(Either::Left(req.into_body())));
    }
    let mut r = Response::new(Either::Right(Full::new(Bytes::from_static(b"upstream ok"))));
    // Hop-by-hop headers the proxy must drop on the way back.
    r.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
    r.headers_mut().insert("x-upstream", "1".parse().unwrap());
    Ok(r)
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

    pub async fn stop(mut self) {
        self.begin_shutdown().await.unwrap().unwrap();
    }

    /// The Prometheus exposition from the admin listener.
    pub async fn metrics(&self) -> String {
        client().get(self.admin_url("/metrics")).send().await.unwrap().text().await.unwrap()
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
    config::load_str(text, std::iter::empty()).unwrap_or_else(|p| panic!("test config invalid:\n{p}\n{text}"))
}

/// Binds and serves the proxy, then polls `/readyz` until it answers 200.
pub async fn spawn_proxy(config: Config) -> TestProxy {
    let proxy = spawn_proxy_unready(config).await;
    let c = client();
    for _ in 0..500 {
        if let Ok(r) = c.get(proxy.admin_url("/readyz")).send().await
            && r.status() == 200
        {
            return proxy;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("proxy never became ready");
}

/// Binds and serves the proxy without waiting for readiness.
pub async fn spawn_proxy_unready(config: Config) -> TestProxy {
    let bound = line_auth_proxy::bind(config).await.expect("proxy binds");
    let addr = bound.proxy_addr();
    let admin = bound.admin_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(async {
        let _ = rx.await;
    }));
    TestProxy { addr, admin, shutdown: Some(tx), task: Some(task) }
}

/// The usual trio: mock LINE with one valid token, a recording upstream, the proxy.
pub struct Env {
    pub line: MockLine,
    pub upstream: RecordingUpstream,
    pub proxy: TestProxy,
}

pub const TOKEN: &str = "valid-access-token-0123456789";

pub async fn env(extra: &str) -> Env {
    let line = MockLine::start().await.unwrap();
    let mut token = MockToken::new(CHANNEL, USER, "Brown");
    token.picture_url = Some("https://profile.line-scdn.net/abcdefghijklmn".into());
    line.add_token(TOKEN, token);
    let upstream = RecordingUpstream::start().await;
    let proxy = spawn_proxy(config(&config_text(&line.base_url(), &upstream.url(), extra))).await;
    Env { line, upstream, proxy }
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
}

/// Faults where only the verify endpoint fails this way.
pub fn verify_fails(fault: Fault) -> Faults {
    Faults { verify: Some(fault), ..Faults::default() }
}

/// An address where nothing listens (a port that was free a moment ago).
pub fn closed_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
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
    let line = MockLine::start().await.unwrap();
    let upstream = RecordingUpstream::start().await;
    let line_extra = format!("jwks_url = \"{}\"\n{line_extra}", line.jwks_url());
    let extra = format!("[[routes]]\npath_prefix = \"/login\"\nauth = \"id_token\"\n{extra}");
    let proxy = spawn_proxy(config(&config_text_line(&line.base_url(), &upstream.url(), &line_extra, &extra))).await;
    Env { line, upstream, proxy }
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

/// A real `redis-server` (Debian's package) on an ephemeral loopback port,
/// killed on drop. A missing binary is a failure, never a skipped test.
pub struct RedisServer {
    pub port: u16,
    password: Option<String>,
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_with_password(None).await
    }

    pub async fn start_with_password(password: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(format!("lap-redis-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self { port: closed_addr().port(), password: password.map(str::to_owned), child: None, dir };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}): install it (apt-get install -y redis-server); .ci/run does")
        });
        self.child = Some(child);
        for _ in 0..500 {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await {
                let _ = s.write_all(b"PING\r\n").await;
                let mut buf = [0u8; 64];
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
                    && n > 0
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// `redis://[:password@]127.0.0.1:port/db`.
    pub fn url(&self, db: u8) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/{db}", self.port),
            None => format!("redis://127.0.0.1:{}/{db}", self.port),
        }
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Keys matching `pattern` in database `db`.
    pub async fn keys(&self, db: u8, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url(db)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls GET `url` every 50 ms (up to `seconds`) until it answers `status`;
/// true when it did. For state that changes in the background (readiness,
/// reconnection), never as a way to wait for start-up.
pub async fn eventually_status(url: &str, status: u16, seconds: u64) -> bool {
    let c = client();
    for _ in 0..seconds * 20 {
        if c.get(url).send().await.is_ok_and(|r| r.status().as_u16() == status) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
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
