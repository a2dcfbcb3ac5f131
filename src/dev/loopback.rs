//! The one loopback server loop behind the mock LINE Platform, the `dev` echo
//! upstream and the tests' recording upstream: HTTP/1.1 and h2c (upgrades
//! allowed) on `127.0.0.1` with a port the kernel picks.
//!
//! A handler that panics is not lost with its connection: the panic is kept and
//! raised again when the server is dropped, so the test that used it fails with
//! the handler's message (as linkerd's integration servers do).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::task::JoinHandle;

/// The first panic message of any handler task, if one panicked.
type Panics = Arc<Mutex<Option<String>>>;

/// A running loopback server; stops when dropped.
pub struct LoopbackServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
    panics: Panics,
    /// Connections accepted and not yet closed.
    open: Arc<AtomicUsize>,
}

/// Counts one open connection while it lives.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LoopbackServer {
    /// Binds `127.0.0.1:0` and serves `handler` on every connection.
    pub async fn start<H, F, B>(handler: H) -> std::io::Result<Self>
    where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = crate::listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let panics = Panics::default();
        let executor = RecordingExecutor(panics.clone());
        let open = Arc::new(AtomicUsize::new(0));
        let counted = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let builder = auto::Builder::new(executor.clone());
                counted.fetch_add(1, Ordering::Relaxed);
                let connection = OpenConnection(counted.clone());
                hyper::rt::Executor::execute(&executor, async move {
                    let _connection = connection;
                    let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service_fn(handler)).await;
                });
            }
        });
        Ok(Self { addr, task, panics, open })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted and not yet closed by either side.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.task.abort();
        let panicked = self.panics.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(message) = panicked
            && !std::thread::panicking()
        {
            panic!("a handler of the loopback server on {} panicked: {message}", self.addr);
        }
    }
}

/// Spawns connection and HTTP/2 stream tasks on tokio and keeps the message of
/// the first one that panics.
#[derive(Clone)]
struct RecordingExecutor(Panics);

impl<F> hyper::rt::Executor<F> for RecordingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let task = tokio::spawn(future);
        let panics = self.0.clone();
        tokio::spawn(async move {
            if let Err(e) = task.await
                && e.is_panic()
            {
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "(no message)".into());
                panics.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(message);
            }
        });
    }
}
