//! A client connection's own upstream connection (HTTP/1.1 to an `http://`
//! upstream): made at its first request, driven by the client connection's
//! task — the response does not travel from a pool's connection task to the
//! request's and back — and reused by its next requests. Between requests it
//! is idle, and at most `upstream.max_idle_connections` are kept idle across
//! all client connections (nginx's `keepalive N`); one more is closed when
//! its request ends.
//!
//! The pooled client stays for HTTP/2 clients (concurrent streams share its
//! connections) and for WebSocket upgrades (the connection becomes a tunnel).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;

use super::UpstreamBody;

type Conn = Connection<TokioIo<tokio::net::TcpStream>, UpstreamBody>;
pub type Sender = SendRequest<UpstreamBody>;

/// How many upstream connections are idle, of the most that may be, and in
/// which order they became idle.
pub struct IdleBudget {
    idle: AtomicUsize,
    max: usize,
    /// Client connections in the order their upstream connection became idle,
    /// each with the number of that idle stint; an entry whose connection has
    /// been used, closed or dropped since is stale and skipped.
    order: Mutex<VecDeque<(Weak<Dedicated>, u64)>>,
}

impl IdleBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { idle: AtomicUsize::new(0), max, order: Mutex::new(VecDeque::new()) })
    }

    /// One idle place, if any is left.
    fn take(self: &Arc<Self>) -> Option<IdlePlace> {
        self.idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| IdlePlace(self.clone()))
    }

    fn order(&self) -> MutexGuard<'_, VecDeque<(Weak<Dedicated>, u64)>> {
        // Nothing panics while holding it; a poisoned lock is still consistent.
        self.order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The place of the connection idle the longest, taken from it; its
    /// sender comes along to be dropped (which closes that connection) once
    /// no lock is held. Lock order: this queue, then a [`Dedicated`]'s.
    fn evict_oldest(&self) -> Option<(Sender, IdlePlace)> {
        let mut order = self.order();
        while let Some((home, stint)) = order.pop_front() {
            if let Some(evicted) = home.upgrade().and_then(|home| home.lock().take_idle(stint)) {
                return Some(evicted);
            }
        }
        None
    }

    /// `home`'s connection became idle, in its stint `stint`. Stale entries
    /// are dropped when they outnumber the live ones (at most `max`), so the
    /// queue stays under `2 × max + 1` entries at O(1) amortised cost.
    fn remember(&self, home: &Arc<Dedicated>, stint: u64) {
        let mut order = self.order();
        if order.len() > 2 * self.max {
            order.retain(|(home, stint)| home.upgrade().is_some_and(|home| home.lock().is_idle_in(*stint)));
        }
        order.push_back((Arc::downgrade(home), stint));
    }
}

/// One of the budget's idle places, given back when dropped.
struct IdlePlace(Arc<IdleBudget>);

impl Drop for IdlePlace {
    fn drop(&mut self) {
        self.0.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One client connection's upstream connection.
pub struct Dedicated {
    inner: Mutex<Inner>,
    budget: Arc<IdleBudget>,
}

#[derive(Default)]
struct Inner {
    /// The connection's sender while no request uses it (a request's
    /// [`Lease`] holds it meanwhile), with its idle place.
    idle: Option<(Sender, IdlePlace)>,
    /// Counts the connection's idle stints: names the current one in the
    /// budget's queue.
    stint: u64,
    /// The connection itself, polled by [`Dedicated::drive`].
    conn: Option<Pin<Box<Conn>>>,
    /// The client connection's task, woken when a new connection is installed.
    waker: Option<Waker>,
}

impl Inner {
    fn is_idle_in(&self, stint: u64) -> bool {
        self.idle.is_some() && self.stint == stint
    }

    /// The idle sender and its place, if still idle in the stint `stint`.
    fn take_idle(&mut self, stint: u64) -> Option<(Sender, IdlePlace)> {
        if self.is_idle_in(stint) { self.idle.take() } else { None }
    }
}

impl Dedicated {
    pub fn new(budget: Arc<IdleBudget>) -> Arc<Self> {
        Arc::new(Self { inner: Mutex::new(Inner::default()), budget })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drives the upstream connection (when there is one): reads its answers,
    /// writes its requests, and notices when the upstream closes it while
    /// idle. Never resolves: the client connection's task polls it beside the
    /// client connection, for as long as that one lives.
    pub fn drive(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| self.poll_drive(cx))
    }

    fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.lock();
        if let Some(conn) = inner.conn.as_mut()
            && let Poll::Ready(ended) = conn.as_mut().poll(cx)
        {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            inner.conn = None;
            inner.idle = None;
        }
        match &inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => inner.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The idle sender, if the connection is still open.
    pub fn take(&self) -> Option<Sender> {
        let (sender, _place) = self.lock().idle.take()?;
        (!sender.is_closed()).then_some(sender)
    }

    /// A new connection, replacing (and closing) the previous one.
    pub fn install(&self, conn: Conn) {
        let mut inner = self.lock();
        inner.conn = Some(Box::pin(conn));
        inner.idle = None;
        if let Some(waker) = &inner.waker {
            waker.wake_by_ref();
        }
    }

    /// A request is done with the sender: kept idle when the budget has a
    /// place, or the place of the connection idle the longest (closed), and
    /// dropped, which closes it, only when no connection is idle to make way.
    fn give_back(self: &Arc<Self>, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let (place, evicted) = match self.budget.take() {
            Some(place) => (place, None),
            None => match self.budget.evict_oldest() {
                Some((evicted, place)) => (place, Some(evicted)),
                None => return,
            },
        };
        let stint = {
            let mut inner = self.lock();
            inner.stint += 1;
            inner.idle = Some((sender, place));
            inner.stint
        };
        self.budget.remember(self, stint);
        // Closes the evicted connection, outside every lock.
        drop(evicted);
    }
}

/// A request's use of its client connection's upstream connection: the
/// sender goes back when the answer's body is done or dropped (hyper closes
/// a connection whose answer was not read to its end).
pub struct Lease {
    sender: Option<Sender>,
    home: Arc<Dedicated>,
}

impl Lease {
    pub fn new(sender: Sender, home: &Arc<Dedicated>) -> Self {
        Self { sender: Some(sender), home: home.clone() }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.home.give_back(sender);
        }
    }
}
