//! The bounds on connections: `server.max_connections` (WebSocket tunnels hold
//! their slot), silent sockets closed after the header read timeout, and an
//! accept loop that backs off when the process is out of file descriptors.
#![cfg(feature = "dev")]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = "[[routes]]\npath_prefix = \"/public/\"\nauth = \"none\"\n";

/// How long a test watches for an answer that must not come: proving that
/// something does not happen takes (real) time.
const NO_ANSWER_WINDOW: Duration = Duration::from_millis(300);

async fn env_with_max_connections(n: usize) -> Env {
    let e = env(ROUTES).await;
    let text = config_text(&e.line.base_url(), &e.upstream.url(), ROUTES)
        .replace("shutdown_grace_seconds = 5", &format!("shutdown_grace_seconds = 5\nmax_connections = {n}"));
    let proxy = spawn_proxy_with(config(&text), &e.clock).await;
    Env { proxy, ..e }
}

/// A keep-alive connection that has had one request answered.
async fn answered_connection(e: &Env) -> TcpStream {
    let mut s = TcpStream::connect(e.proxy.addr).await.unwrap();
    s.write_all(b"GET /public/a HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(raw_status(&read_answer(&mut s).await), 200);
    s
}

/// Sends a request on a fresh connection; the answer, once it comes.
async fn pending_request(e: &Env) -> tokio::task::JoinHandle<String> {
    let mut s = TcpStream::connect(e.proxy.addr).await.unwrap();
    s.write_all(b"GET /public/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    tokio::spawn(async move { read_answer(&mut s).await })
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    let e = env_with_max_connections(2).await;
    let first = answered_connection(&e).await;
    let _second = answered_connection(&e).await;
    assert_eq!(e.proxy.metric("line_auth_proxy_open_connections").await, 2.0);
    let mut third = pending_request(&e).await;
    assert!(tokio::time::timeout(NO_ANSWER_WINDOW, &mut third).await.is_err(), "a third connection was served");
    assert_eq!(e.upstream.hits(), 2);
    // A slot frees: the waiting connection is accepted and answered.
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(5), third).await.expect("never served").unwrap();
    assert_eq!(raw_status(&answer), 200);
    assert_eq!(e.upstream.hits(), 3);
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn a_websocket_tunnel_holds_its_connection_slot() {
    let e = env_with_max_connections(1).await;
    let mut tunnel = TcpStream::connect(e.proxy.addr).await.unwrap();
    tunnel.write_all(format!("{UPGRADE}Authorization: Bearer {TOKEN}\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tunnel.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert_eq!(raw_status(&String::from_utf8(head).unwrap()), 101);
    tunnel.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    // The HTTP connection became the tunnel: its slot is still taken.
    let mut waiting = pending_request(&e).await;
    assert!(tokio::time::timeout(NO_ANSWER_WINDOW, &mut waiting).await.is_err(), "served beside an open tunnel");
    drop(tunnel);
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("never served").unwrap();
    assert_eq!(raw_status(&answer), 200);
}

#[tokio::test]
async fn the_admin_accept_loop_backs_off_when_out_of_file_descriptors() {
    let e = env("").await;
    let f = std::env::temp_dir().join(format!("lap-emfile-{}.toml", rand::random::<u64>()));
    std::fs::write(&f, config_text(&e.line.base_url(), &e.upstream.url(), "")).unwrap();
    // Few descriptors: the admin listener runs out after a handful of connections.
    let mut child = Command::new("prlimit")
        .args(["--nofile=48:48", env!("CARGO_BIN_EXE_line-auth-proxy"), "--config", f.to_str().unwrap()])
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs the proxy with a low descriptor limit");
    let stderr = child.stderr.take().unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let admin: std::net::SocketAddr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.recv()).await.unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        log.push(line);
        if v["message"] == "line-auth-proxy ready" {
            break v["admin"].as_str().unwrap().parse().unwrap();
        }
    };
    // Silent connections: each accepted one holds a descriptor until its header
    // read timeout (10 s), so the process runs out.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(TcpStream::connect(admin).await.unwrap());
    }
    let exhausted = eventually(Duration::from_secs(10), || {
        while let Ok(line) = lines.try_recv() {
            log.push(line);
        }
        let seen = log.iter().any(|l| l.contains("accept failed"));
        async move { seen }
    })
    .await;
    assert!(exhausted, "the admin listener never ran out of descriptors:\n{}", log.join("\n"));
    // Watch it fail to accept for a while (a rate, so real time must pass):
    // with a 50 ms back-off that is a few log lines, not the thousands a
    // spinning loop writes.
    tokio::time::sleep(NO_ANSWER_WINDOW).await;
    while let Ok(line) = lines.try_recv() {
        log.push(line);
    }
    let failures = log.iter().filter(|l| l.contains("accept failed") && l.contains("\"admin\"")).count();
    assert!((1..=20).contains(&failures), "{failures} accept failures logged in {NO_ANSWER_WINDOW:?}");
    // Descriptors come back: the admin listener serves again.
    drop(held);
    assert!(eventually_status(&format!("http://{admin}/healthz"), 200, 10).await, "admin never recovered");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&f);
}

#[tokio::test]
async fn a_burst_beyond_max_connections_is_queued_by_the_kernel_not_dropped() {
    // The proxy accepts no more (max 1, held): the next 600 connections wait
    // in the listen queue. With a queue of 128 (the standard library's) the
    // SYNs past it are dropped and each connect waits a second to retry.
    let e = env_with_max_connections(1).await;
    let _held = answered_connection(&e).await;
    let addr = e.proxy.addr;
    let connects: Vec<_> = (0..600)
        .map(|_| {
            tokio::spawn(
                async move { tokio::time::timeout(Duration::from_millis(700), TcpStream::connect(addr)).await },
            )
        })
        .collect();
    let mut connected = Vec::new();
    for c in connects {
        connected.push(c.await.unwrap().expect("connect waited for a SYN retry").unwrap());
    }
    assert_eq!(connected.len(), 600);
    assert_eq!(e.upstream.hits(), 1, "none of them was served yet");
}
