//! How busy a client connection is, for the two timers that free its slot:
//! `server.idle_timeout_ms` (nothing in flight: an HTTP/1.1 keep-alive
//! connection between requests, an HTTP/2 connection with no stream open
//! whatever PINGs it answers, a WebSocket tunnel with no byte either way) and
//! `server.header_read_timeout_ms` (an HTTP/1.1 request head that started
//! arriving must be complete by then — slowloris).
//!
//! A request is in flight from the moment the proxy takes it until its answer's
//! body has been sent or dropped ([`Busy`], carried by the body). The timers run
//! on the proxy's [`Clock`], so tests advance time instead of waiting for it.
//! The hot path pays two atomic updates per request, and one wake-up of its
//! own connection task per HTTP/1.1 request head; the watchdog otherwise sleeps
//! until the next deadline and re-checks lazily.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::clock::Clock;

/// `reading_since` when no request head is arriving.
const NOT_READING: u64 = u64::MAX;
/// Bytes of the HTTP/2 connection preface (`PRI * HTTP/2.0…`).
const H2_PREFACE_LEN: u32 = 24;

/// One client connection's activity.
pub struct Activity {
    clock: Clock,
    epoch: Instant,
    in_flight: AtomicU32,
    /// Milliseconds since `epoch` when the connection last had nothing in flight.
    idle_since: AtomicU64,
    /// Milliseconds since `epoch` when the request head now arriving began
    /// (HTTP/1.1 only), or [`NOT_READING`].
    reading_since: AtomicU64,
    /// Woken when a head starts arriving: its deadline is sooner than idle's.
    head_started: Notify,
    /// HTTP/1.1: bytes while idle are the next request head. (HTTP/2's idle
    /// bytes are PINGs and window updates, which do not count.)
    heads: bool,
    /// HTTP/2: bytes of the connection preface not read yet. Until it is
    /// complete the connection is timed like a request head, so that half a
    /// preface (or none, after a TLS handshake with ALPN `h2`) cannot hold a
    /// slot until the idle timeout.
    preface_left: AtomicU32,
}

/// Why the watchdog closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing in flight for `server.idle_timeout_ms`.
    Idle,
    /// A request head still incomplete after `server.header_read_timeout_ms`.
    HeadTimeout,
}

impl Activity {
    /// A connection just accepted. For HTTP/1.1 its first request head is
    /// already due (since accept); for HTTP/2 its preface is (the 24 bytes
    /// every client sends first), and then it is idle until a stream opens.
    pub fn new(clock: Clock, heads: bool) -> Arc<Self> {
        let epoch = clock.now();
        Arc::new(Self {
            clock,
            epoch,
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            reading_since: AtomicU64::new(0),
            head_started: Notify::new(),
            heads,
            preface_left: AtomicU32::new(if heads { 0 } else { H2_PREFACE_LEN }),
        })
    }

    fn now_ms(&self) -> u64 {
        self.clock.now().saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A request taken: in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.reading_since.store(NOT_READING, Ordering::Release);
        Busy(self.clone())
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::Release);
        }
    }

    /// `n` bytes arrived from the client.
    fn read_some(&self, n: usize) {
        if self.preface_left.load(Ordering::Acquire) > 0 {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            let before = self
                .preface_left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| Some(left.saturating_sub(n)));
            if before.is_ok_and(|left| left > 0 && left <= n) {
                // The preface is complete: idle from now until a stream opens.
                self.idle_since.store(self.now_ms(), Ordering::Release);
                let _ = self.reading_since.compare_exchange(0, NOT_READING, Ordering::AcqRel, Ordering::Acquire);
            }
            return;
        }
        if self.heads
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.reading_since.load(Ordering::Acquire) == NOT_READING
        {
            self.reading_since.store(self.now_ms(), Ordering::Release);
            self.head_started.notify_one();
        }
    }

    /// Resolves when the connection should be closed, and why.
    pub async fn expired(&self, idle: Duration, head: Duration) -> Expiry {
        let (idle, head) = (idle.as_millis() as u64, head.as_millis() as u64);
        loop {
            let now = self.now_ms();
            let reading = self.reading_since.load(Ordering::Acquire);
            let (deadline, why) = if self.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: nothing to close; look again an idle period from now.
                (now + idle, None)
            } else if reading != NOT_READING {
                (reading + head, Some(Expiry::HeadTimeout))
            } else {
                (self.idle_since.load(Ordering::Acquire) + idle, Some(Expiry::Idle))
            };
            if let Some(why) = why
                && now >= deadline
            {
                return why;
            }
            tokio::select! {
                () = self.clock.sleep(Duration::from_millis(deadline - now)) => {}
                () = self.head_started.notified() => {}
            }
        }
    }
}

/// A request in flight; dropping it (its answer sent or abandoned) ends it.
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A client connection's I/O, telling its [`Activity`] when bytes arrive.
pub struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Watched<I> {
    pub fn new(io: I, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if matches!(polled, Poll::Ready(Ok(()))) && read > 0 {
            self.activity.read_some(read);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The last time bytes crossed a WebSocket tunnel either way, for its idle timer.
pub struct TunnelActivity {
    clock: Clock,
    epoch: Instant,
    last_ms: AtomicU64,
}

impl TunnelActivity {
    pub fn new(clock: Clock) -> Arc<Self> {
        let epoch = clock.now();
        Arc::new(Self { clock, epoch, last_ms: AtomicU64::new(0) })
    }

    fn now_ms(&self) -> u64 {
        self.clock.now().saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn stamp(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Resolves once no byte has crossed for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        let idle = idle.as_millis() as u64;
        loop {
            let now = self.now_ms();
            let deadline = self.last_ms.load(Ordering::Relaxed) + idle;
            if now >= deadline {
                return;
            }
            self.clock.sleep(Duration::from_millis(deadline - now)).await;
        }
    }
}

/// One side of a tunnel, stamping its [`TunnelActivity`] on every byte.
pub struct Stamped<I> {
    io: I,
    activity: Arc<TunnelActivity>,
}

impl<I> Stamped<I> {
    pub fn new(io: I, activity: Arc<TunnelActivity>) -> Self {
        Self { io, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Stamped<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.stamp();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Stamped<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_idle_connection_expires_and_a_busy_one_does_not() {
        let clock = Clock::manual();
        let activity = Activity::new(clock.clone(), false);
        let busy = activity.begin();
        let watch = tokio::spawn({
            let a = activity.clone();
            async move { a.expired(Duration::from_secs(75), Duration::from_secs(10)).await }
        });
        clock.advance(Duration::from_secs(300));
        tokio::task::yield_now().await;
        assert!(!watch.is_finished(), "closed while a request was in flight");
        drop(busy);
        clock.advance(Duration::from_secs(74));
        tokio::task::yield_now().await;
        assert!(!watch.is_finished());
        clock.advance(Duration::from_secs(76));
        assert_eq!(watch.await.unwrap(), Expiry::Idle);
    }

    #[tokio::test]
    async fn an_http1_head_must_arrive_within_its_deadline() {
        let clock = Clock::manual();
        let activity = Activity::new(clock.clone(), true);
        // The first head is due from the start.
        let first = activity.clone();
        let watch = tokio::spawn(async move { first.expired(Duration::from_secs(75), Duration::from_secs(10)).await });
        clock.advance(Duration::from_secs(11));
        assert_eq!(watch.await.unwrap(), Expiry::HeadTimeout);
        // Served, then idle: the idle timer runs; a byte starts the head timer.
        drop(activity.begin());
        let next = activity.clone();
        let watch = tokio::spawn(async move { next.expired(Duration::from_secs(75), Duration::from_secs(10)).await });
        clock.advance(Duration::from_secs(60));
        tokio::task::yield_now().await;
        assert!(!watch.is_finished());
        activity.read_some(1);
        clock.advance(Duration::from_secs(10));
        assert_eq!(watch.await.unwrap(), Expiry::HeadTimeout);
    }

    #[tokio::test]
    async fn an_http2_preface_must_arrive_within_the_head_deadline_then_idle_rules() {
        let (idle, head) = (Duration::from_secs(75), Duration::from_secs(10));
        // Half a preface: closed at the head deadline.
        let clock = Clock::manual();
        let activity = Activity::new(clock.clone(), false);
        activity.read_some(12);
        let a = activity.clone();
        let watch = tokio::spawn(async move { a.expired(idle, head).await });
        clock.advance(Duration::from_secs(10));
        assert_eq!(watch.await.unwrap(), Expiry::HeadTimeout);
        // The whole preface: idle from then on, PINGs and all.
        let clock = Clock::manual();
        let activity = Activity::new(clock.clone(), false);
        clock.advance(Duration::from_secs(5));
        activity.read_some(12);
        activity.read_some(30);
        let a = activity.clone();
        let watch = tokio::spawn(async move { a.expired(idle, head).await });
        clock.advance(Duration::from_secs(60));
        tokio::task::yield_now().await;
        assert!(!watch.is_finished(), "a complete preface is not a late head");
        activity.read_some(17);
        clock.advance(Duration::from_secs(20));
        assert_eq!(watch.await.unwrap(), Expiry::Idle);
    }
}
