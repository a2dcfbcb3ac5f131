//! Listeners: the accept loop (plain TCP, or rustls with the pair `tls` keeps),
//! the hyper-util auto builder (HTTP/1.1 and h2c / h2 over ALPN) with a
//! header-read timeout and head-size limit, a bound on concurrent connections,
//! and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::activity::{Activity, Expiry, Watched};
use crate::config::ServerConfig;
use crate::limits::{ClientKey, Limit};
use crate::proxy::{self, ConnInfo, ConnectionSlot, Current, State};
use crate::sync::until_set;
use crate::telemetry::Refusal;

/// hyper's own read buffer: big enough that heads over `max_header_bytes` still
/// parse and get the proxy's JSON 431; beyond it hyper answers a bare 431.
fn hyper_buffer_bytes(max_header_bytes: usize) -> usize {
    (max_header_bytes * 4).max(64 * 1024)
}

/// Pause after a failed `accept` (e.g. out of file descriptors) before retrying (50 ms).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// After the grace period, how long closing the remaining connections may take (1 second).
const FORCE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The two builders a connection is served with: HTTP/1.1 (plain TCP without
/// the h2c preface, or TLS without ALPN `h2`) and HTTP/2 (the h2c preface, or
/// ALPN `h2`). Which one is decided before serving, so that each connection's
/// timers know what its idle bytes mean.
struct Builders {
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(config: &ServerConfig) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let max_header_bytes = config.keys.max_header_bytes.get();
        let buffer = hyper_buffer_bytes(max_header_bytes);
        // No header read timeout of hyper's own: it would also close every idle
        // keep-alive connection after it. The connection watchdog (activity.rs)
        // times heads from their first byte, and idleness on its own.
        builder
            .http1()
            .timer(TokioTimer::new())
            // hyper's own would otherwise be 30 s, a timer set for every
            // request head: the watchdog's is the one that counts.
            .header_read_timeout(None)
            .max_buf_size(buffer)
            // Enough header lines that any head within max_header_bytes parses and
            // gets the proxy's own (JSON) 431 rather than hyper's bare one.
            .max_headers(max_header_bytes / 8);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(buffer as u32)
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
        Self { http1: builder.clone().http1_only(), http2: builder.http2_only() }
    }

    fn for_h2(&self, h2: bool) -> &auto::Builder<TokioExecutor> {
        if h2 { &self.http2 } else { &self.http1 }
    }
}

/// Concurrent streams one HTTP/2 client may open (100).
const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 PING interval that detects dead peers (30 seconds).
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A PING unanswered this long closes the connection (10 seconds).
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of the HTTP/2 connection preface that tell h2c from HTTP/1.1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// TCP keepalive probes after 60 s of silence, every 10 s, 3 unanswered ones
/// closing the socket: a mobile client that vanished (no FIN, no RST) frees
/// its slot within about 90 s even while a request of it is in flight.
const TCP_KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(60))
    .with_interval(Duration::from_secs(10))
    .with_retries(3);

fn set_keepalive(stream: &tokio::net::TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&TCP_KEEPALIVE) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
}

/// Accepts the next connection. A failed `accept` (out of file descriptors,
/// above all) is logged and retried after [`ACCEPT_ERROR_BACKOFF`]: retrying at
/// once would spin a core while nothing can be accepted anyway.
pub async fn accept(listener: &TcpListener, name: &'static str) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed; retrying shortly");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Accepts proxy connections until `stop` flips, then lets in-flight requests
/// (and open WebSocket tunnels) finish for up to `server.shutdown_grace_seconds`.
pub async fn serve_proxy(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    current: Arc<Current>,
    mut stop: watch::Receiver<bool>,
) {
    // `[server]` and `[upstream]` changes need a restart: the first
    // generation's hold for good (copied: a generation is freed once its
    // requests are done, connections or not).
    let (config, timers, upstream) = {
        let first = current.load_full();
        let keys = &first.config.server.keys;
        let timers = Timers {
            clock: first.clock.clone(),
            idle: keys.idle_timeout_ms.duration(),
            head: keys.header_read_timeout_ms.duration(),
        };
        (first.config.server.clone(), Arc::new(timers), first.upstream.clone())
    };
    let config = &config;
    let builders = Arc::new(Builders::new(config));
    // Set when the drain begins: every connection finishes what is in flight
    // (HTTP/2: GOAWAY) and closes.
    let (drain, draining) = watch::channel(false);
    // Past the grace period, whatever is still open (connections, tunnels) is closed.
    let (force_close, closing) = watch::channel(false);
    let max_connections = config.keys.max_connections.get();
    let limit = Arc::new(Semaphore::new(max_connections));
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("never closed"),
            _ = until_set(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener, "proxy") => accepted,
            _ = until_set(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        set_keepalive(&stream);
        // The generation in force when the connection is accepted counts it
        // (`limits.connections`); each of its requests loads the one in force then.
        let state = current.load_full();
        let trusted = state.config.server.trusted_proxies.contains(peer.ip());
        let counted = match (&state.limits.connections, trusted) {
            (Some(counts), false) => match counts.open(ClientKey::of(peer.ip())) {
                Some(counted) => Some(counted),
                None => {
                    refuse_connection(&stream, tls.is_some(), &state);
                    continue;
                }
            },
            _ => None,
        };
        let slot = ConnectionSlot::new(permit, counted, state.metrics.clone());
        drop(state);
        let (current, timers, upstream) = (current.clone(), timers.clone(), upstream.clone());
        let builders = builders.clone();
        let (draining, closing) = (draining.clone(), closing.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let clock = timers.clock.clone();
            let deadline = timers.head;
            let is_tls = tls.is_some();
            let new_conn = |h2: bool| {
                let activity = Activity::new(clock.clone(), !h2);
                let upstream = upstream.dedicated_for(h2);
                ConnInfo::new(peer, is_tls, trusted, slot, activity, closing, upstream)
            };
            match tls {
                None => {
                    // hyper-util sniffs the first bytes for the h2c preface with no
                    // timeout of its own: a silent socket would hold its slot forever.
                    let mut stream = stream;
                    match clock.timeout(deadline, preface_known(&mut stream)).await {
                        Ok(Ok((h2, read))) => {
                            let conn = new_conn(h2);
                            let stream = Prefixed::new(read, stream);
                            serve_connection(builders.for_h2(h2), stream, conn, &timers, current, draining).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "connection failed before a request")
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "no request within the header read timeout")
                        }
                    }
                }
                Some(acceptor) => match clock.timeout(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        let conn = new_conn(h2);
                        serve_connection(builders.for_h2(h2), tls_stream, conn, &timers, current, draining).await
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    let grace = config.keys.shutdown_grace_seconds.duration();
    tracing::info!(grace_seconds = grace.as_secs(), "stopped accepting; draining in-flight requests");
    let _ = drain.send(true);
    // Every connection and tunnel holds a slot until it is closed.
    let drained = tokio::time::timeout(grace, limit.acquire_many(max_connections as u32)).await;
    if drained.is_err() {
        tracing::warn!("shutdown grace period over; closing the remaining connections");
        let _ = force_close.send(true);
        // Each closes when next polled; wait for their slots, briefly.
        let _ = tokio::time::timeout(FORCE_CLOSE_WAIT, limit.acquire_many(max_connections as u32)).await;
    }
}

/// A connection's timers (`server.*`, fixed for the process).
struct Timers {
    clock: crate::Clock,
    idle: std::time::Duration,
    head: std::time::Duration,
}

/// What a peer over `limits.connections` gets on plain TCP before the close:
/// written without waiting (a fresh socket's send buffer takes it whole), and
/// the same for HTTP/1.x and h2c clients (those see a protocol error).
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n\
    Content-Type: application/json\r\nContent-Length: 93\r\nConnection: close\r\n\r\n\
    {\"error\":\"too_many_requests\",\"error_description\":\"this client has too many connections open\"}";

/// A connection over the peer's `limits.connections`: counted, answered 429
/// on plain TCP (no request is read), and closed by the caller's drop.
fn refuse_connection(stream: &tokio::net::TcpStream, tls: bool, state: &State) {
    state.metrics.count_refusal(Refusal::Limited, Limit::Connections.as_str());
    if !tls {
        let _ = stream.try_write(TOO_MANY_CONNECTIONS);
    }
    tracing::debug!(peer = %stream.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default(), "connection refused: limits.connections");
}

/// Reads until the first bytes tell HTTP/1.1 from the h2c preface (or the
/// peer closed): true for the preface, with the bytes read, which the
/// connection is then served with ahead of the rest. Reading (not peeking)
/// means each wake-up brings new bytes: a peer that stops halfway through the
/// preface costs nothing until its header deadline.
async fn preface_known(stream: &mut tokio::net::TcpStream) -> std::io::Result<(bool, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        filled += n;
        if n == 0 || filled == buf.len() || buf[..filled] != H2_PREFACE[..filled] {
            return Ok((buf[..filled] == *H2_PREFACE, buf[..filled].to_vec()));
        }
    }
}

/// A stream served with `prefix` (bytes already read from it) ahead of the rest.
struct Prefixed<I> {
    prefix: Vec<u8>,
    at: usize,
    io: I,
}

impl<I> Prefixed<I> {
    fn new(prefix: Vec<u8>, io: I) -> Self {
        Self { prefix, at: 0, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Serves one connection until it ends, the drain asks it to finish (after
/// what is in flight), its watchdog finds it idle or its request head late, or
/// the grace period is over.
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    conn: ConnInfo,
    timers: &Timers,
    current: Arc<Current>,
    mut draining: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let activity = conn.activity.clone();
    let upstream = conn.upstream.clone();
    let mut closing = conn.closing.clone();
    let (idle, head) = (timers.idle, timers.head);
    let io = TokioIo::new(Watched::new(io, activity.clone()));
    // Each request is served by the generation in force when it arrives, to its end.
    let service =
        service_fn(move |req: hyper::Request<Incoming>| proxy::handle(current.load_full(), conn.clone(), req));
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let mut asked_to_finish = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = until_set(&mut draining), if !asked_to_finish => {
                asked_to_finish = true;
                connection.as_mut().graceful_shutdown();
            }
            why = activity.expired(idle, head), if !asked_to_finish => match why {
                // Nothing in flight: HTTP/2 gets its GOAWAY, HTTP/1.1 the close.
                Expiry::Idle => {
                    tracing::debug!(peer = %peer, "idle connection closed");
                    asked_to_finish = true;
                    connection.as_mut().graceful_shutdown();
                }
                Expiry::HeadTimeout => {
                    tracing::debug!(peer = %peer, "request head not complete within the header read timeout");
                    return;
                }
            },
            () = until_set(&mut closing) => {
                tracing::debug!(peer = %peer, "connection closed at the end of the grace period");
                return;
            }
            // The connection's own upstream connection is driven here, in
            // the same task as the client's (never resolves).
            () = drive(upstream.as_deref()) => {}
        }
    }
}

async fn drive(upstream: Option<&crate::upstream::Dedicated>) {
    match upstream {
        Some(upstream) => upstream.drive().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn detection_reads_the_first_bytes_and_serves_them_again() {
        // HTTP/1.1: decided at the first byte that is not the preface's.
        let (mut client, mut server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        drop(client);
        let (h2, read) = preface_known(&mut server).await.unwrap();
        assert!(!h2);
        let mut all = Vec::new();
        Prefixed::new(read, server).read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");

        // The preface, sent in two pieces; half of it is not enough to decide.
        let (mut client, mut server) = pair().await;
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let detect = tokio::spawn(async move { (preface_known(&mut server).await.unwrap(), server) });
        tokio::task::yield_now().await;
        assert!(!detect.is_finished());
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        drop(client);
        let ((h2, read), server) = detect.await.unwrap();
        assert!(h2);
        let mut all = Vec::new();
        Prefixed::new(read, server).read_to_end(&mut all).await.unwrap();
        assert_eq!(&all[..24], H2_PREFACE);
        assert_eq!(&all[24..], b"frames");
    }

    #[tokio::test]
    async fn accepted_sockets_probe_a_vanished_peer() {
        let (_client, server) = pair().await;
        set_keepalive(&server);
        let sock = socket2::SockRef::from(&server);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
    }

    #[test]
    fn the_canned_429_declares_its_body_length() {
        let text = std::str::from_utf8(TOO_MANY_CONNECTIONS).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "too_many_requests");
    }
}
