//! Heap allocations per cached-token request (`cargo bench --bench allocs`):
//! the real proxy in this process, with the mock LINE Platform and the access
//! log formatted (to a sink), in front of a minimal upstream in a process of
//! its own (this binary again), and one keep-alive HTTP/1.1 client. dhat's
//! allocator counts every allocation of this process; the client's own are
//! measured apart (the same client straight to the upstream) and subtracted,
//! so what is printed is the proxy's. Also the heap held per identity in a
//! verdict cache of 100000 and 1000000, and per idle keep-alive connection.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use line_auth_proxy::dev::{MockLine, MockToken};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const REQUESTS: u64 = 2000;
const TOKEN: &str = "bench-alloc-token";

/// Set in the upstream's process (this binary, started again).
const UPSTREAM_ENV: &str = "LAP_ALLOCS_UPSTREAM";

/// The upstream process: prints its address, answers `ok` until killed.
async fn serve_upstream() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            let service = service_fn(|_req| async {
                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Starts the upstream process; its address.
fn upstream() -> (std::process::Child, SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(UPSTREAM_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line.trim().parse().unwrap())
}

/// Allocations of `REQUESTS` requests on one keep-alive connection to
/// `addr`, after a warm-up.
async fn allocations(addr: SocketAddr, token: Option<&str>) -> u64 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut send = async || {
        let mut req = hyper::Request::get("/api/x").header("host", "app.example").header("user-agent", "bench/1");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let response = sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    };
    for _ in 0..200 {
        send().await;
    }
    let before = dhat::HeapStats::get().total_blocks;
    for _ in 0..REQUESTS {
        send().await;
    }
    dhat::HeapStats::get().total_blocks - before
}

/// Idle connections held for the memory measurement.
const IDLE: usize = 1000;

/// A keep-alive connection that has had one answer, its client kept.
async fn served_once(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req =
        hyper::Request::get("/api/x").header("host", "app.example").header("authorization", format!("Bearer {TOKEN}"));
    let response = sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    sender
}

fn main() {
    if std::env::var_os(UPSTREAM_ENV).is_some() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        return rt.block_on(serve_upstream());
    }
    // DHAT_HEAP=1: also write dhat-heap.json, every allocation site with its
    // stack (view it with dhat's dh_view.html).
    let _profiler = if std::env::var_os("DHAT_HEAP").is_some() {
        dhat::Profiler::builder().trim_backtraces(Some(24)).build()
    } else {
        dhat::Profiler::builder().testing().build()
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        line_auth_proxy::init_tracing_with(line_auth_proxy::LogFormat::Text, Some("info"), std::io::sink);
        // First, while nothing else runs: heap held per cached identity, with the
        // identity `benches/load.sh` fills the cache with (no picture) and with one.
        // `cargo bench` passes --bench; under `cargo test` (the test suite runs
        // this binary once too) a small cache, as a smoke test.
        let sizes: &[usize] =
            if std::env::args().any(|a| a == "--bench") { &[100_000, 1_000_000] } else { &[10_000] };
        for &n in sizes {
            let plain = heap_per_identity(n, false).await;
            let pictured = heap_per_identity(n, true).await;
            println!(
                "heap per cached identity ({n} cached, each hit once): {plain:.0} bytes; with a picture URL {pictured:.0} bytes"
            );
        }
        let line = MockLine::start().await.unwrap();
        line.accept_prefix("bench-", MockToken::new("1234567890", "U1234567890abcdef1234567890abcdef", "Bench"));
        let (mut upstream_process, up) = upstream();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{up}\"\n\
             [line]\nchannel_ids = [\"1234567890\"]\napi_base_url = \"{}\"\n[limits]\nconnections = 0\n",
            line.base_url()
        );
        let config = line_auth_proxy::config::load_str(&text, std::iter::empty()).unwrap().config;
        let bound = line_auth_proxy::bind_with(config, line_auth_proxy::Clock::system()).await.unwrap();
        let proxy = bound.proxy_addr();
        tokio::spawn(bound.serve(std::future::pending()));
        let direct = allocations(up, Some(TOKEN)).await;
        let through = allocations(proxy, Some(TOKEN)).await;
        let per = |n: u64| n as f64 / REQUESTS as f64;
        println!(
            "allocations per request: the client alone {:.1}; through the proxy {:.1}; the proxy's own {:.1}",
            per(direct),
            per(through),
            per(through.saturating_sub(direct))
        );
        // Heap held per idle keep-alive client connection, each served once.
        let before = dhat::HeapStats::get().curr_bytes;
        let mut idle = Vec::new();
        for _ in 0..IDLE {
            idle.push(served_once(proxy).await);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let held = dhat::HeapStats::get().curr_bytes.saturating_sub(before);
        println!(
            "heap per idle keep-alive connection (client side included, {IDLE} held): {:.1} KiB",
            held as f64 / IDLE as f64 / 1024.0
        );
        drop(idle);
        let _ = upstream_process.kill();
    });
}

/// Live heap per entry of a verdict cache holding `n` distinct identities,
/// each verified and then hit once (a hit shares the entry's header buffer).
async fn heap_per_identity(n: usize, picture: bool) -> f64 {
    use line_auth_proxy::bench::{AuthMethod, CredentialKind, Identity, Verdict, cache_key, verdict_cache};
    let key = |i: usize| cache_key(CredentialKind::AccessToken, &format!("bench-fill-{i}"));
    let before = dhat::HeapStats::get().curr_bytes;
    let cache = verdict_cache(n as u64);
    for i in 0..n {
        let identity = Identity {
            user_id: "U1234567890abcdef1234567890abcdef".into(),
            display_name: Some("Bench User".into()),
            picture_url: picture.then(|| "https://profile.line-scdn.net/0habcdefghijklmnopqrstuvwxyz0123456789".into()),
            email: None,
            channel_id: "1234567890".into(),
            method: AuthMethod::AccessToken,
            expires_at: 4_000_000_000,
            amr: Vec::new(),
        };
        let _ = cache.get_or_verify(key(i), async { Ok(Verdict::Valid(identity)) }).await;
    }
    for i in 0..n {
        let (hit, _) = cache.get_or_verify(key(i), async { unreachable!("cached") }).await;
        assert!(hit.is_ok());
    }
    assert_eq!(cache.entry_count(), n as u64);
    let held = dhat::HeapStats::get().curr_bytes.saturating_sub(before);
    drop(cache);
    held as f64 / n as f64
}
