//! line-auth-proxy: a reverse proxy that verifies LINE Login credentials with the
//! LINE Platform and forwards requests with trusted `X-Line-*` identity headers.
//!
//! [`bind`] opens the listeners (so callers learn the real ports), and
//! [`Bound::serve`] runs until the shutdown future resolves or a task of the
//! proxy fails; [`run`] does both. `main` and the tests use the same entry
//! points; tests pass their own [`Clock`] to [`bind_with`].
//!
//! The public API is what the binary and the tests need: [`config`] loading,
//! the entry points, tracing set-up, the [`clock`], and (feature `dev`) the
//! [`dev`] mock LINE Platform. Everything else is internal to the crate.

mod activity;
mod admin;
mod assertion;
pub mod audit;
mod auth;
mod cache;
pub mod clock;
pub mod config;
#[cfg(feature = "dev")]
pub mod dev;
mod error;
mod file_stamp;
mod generation;
mod hangup;
mod headers;
mod identity;
mod limits;
mod log_fields;
pub mod log_writer;
mod login;
mod panics;
mod process_metrics;
mod proxy;
mod redis_conn;
mod redis_entry;
mod reload;
mod routes;
mod server;
mod session;
mod sync;
mod telemetry;
mod tls;
mod traces;
mod upstream;
pub mod workers;

#[doc(hidden)]
pub mod bench;
#[doc(hidden)]
pub mod fuzzing;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub use clock::Clock;
pub use config::Config;
pub use panics::install_panic_hook;
pub use telemetry::{LogFormat, init_tracing, init_tracing_audited, init_tracing_with};

/// Why the proxy could not start or run (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up TLS on server.listen")]
    Tls(#[from] tls::TlsError),
    /// reqwest's builder errors hold no URL, and `without_url` makes sure.
    #[error("cannot build the LINE Platform client")]
    LineClient(#[source] reqwest::Error),
    #[error(transparent)]
    Redis(#[from] redis_conn::RedisSetupError),
    /// The assertion keys (checked at load) could not be read again.
    #[error("cannot set up the assertion signer: {0}")]
    Assertion(String),
    /// `otel.endpoint` is set and the exporter could not be built.
    #[error("cannot set up OpenTelemetry export: {0}")]
    Otel(String),
    /// A task of the proxy panicked or ended on its own: the process must not
    /// go on half-working.
    #[error("the {task} failed: {why}")]
    TaskFailed { task: &'static str, why: String },
}

/// `error: cause: cause…`, every source in the chain.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Installs ring as the process-wide rustls provider (the only one compiled in).
/// Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

use generation::Task;

/// The proxy with its listeners bound, not yet serving.
pub struct Bound {
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    tls: Option<TlsAcceptor>,
    /// The generation requests are served with (a reload stores the next).
    current: Arc<proxy::Current>,
    process: generation::Process,
    admin: Arc<admin::Admin>,
    /// The process's background work (TLS reloads, the SIGHUP listener),
    /// supervised like the listeners.
    background: Vec<(&'static str, Task)>,
    /// The first generation's pieces and their tasks (JWKS refresh, sweeps,
    /// Redis probes), supervised the same way.
    pieces: Vec<generation::Piece>,
    /// SIGHUPs, for the configuration reload (taken by [`Bound::reload_from`]).
    hangups: Option<watch::Receiver<u64>>,
    reloader: Option<reload::Reloader>,
    clock: Clock,
}

/// Builds the shared state on the real clock and binds both listeners.
pub async fn bind(config: Config) -> Result<Bound, RunError> {
    bind_with(config, Clock::system()).await
}

/// [`bind`] with the clock that expiring state (cache, nonces, JWKS, LINE
/// back-off) reads: tests pass a manual one and advance it.
pub async fn bind_with(config: Config, clock: Clock) -> Result<Bound, RunError> {
    bind_inner(config, None, clock).await
}

/// [`bind_with`] serving the proxy on `listener`, bound already (a caller that
/// must know the proxy's address before writing its configuration: the web
/// login's `redirect_uri` of `dev` and of the browser tests);
/// `server.listen` is not bound.
pub async fn bind_on(config: Config, listener: TcpListener, clock: Clock) -> Result<Bound, RunError> {
    bind_inner(config, Some(listener), clock).await
}

/// Connections the kernel completes and queues while the proxy has not
/// accepted them yet (a burst, or `server.max_connections` reached): 1024,
/// capped by `net.core.somaxconn`. The standard library's 128 would drop
/// the SYNs of a burst of a few hundred clients, each retried only after a
/// second.
const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `addr` (with `SO_REUSEADDR`, as the standard library's) that
/// queues [`LISTEN_BACKLOG`] pending connections (the standard library's and
/// tokio's `bind` queue 128).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn bind_inner(config: Config, listener: Option<TcpListener>, clock: Clock) -> Result<Bound, RunError> {
    install_crypto_provider();
    let metrics = Arc::new(telemetry::Metrics::new());
    metrics.set_config(&config.fingerprint, false);
    metrics.config_loaded(true, clock.since_epoch().as_secs_f64());
    let tls = match &config.server.tls {
        None => None,
        Some(files) => Some(Arc::new(tls::Tls::new(files, metrics.clone(), clock.clone())?)),
    };
    let bind = |addr: SocketAddr| async move { listen(addr).map_err(|source| RunError::Bind { addr, source }) };
    let proxy_listener = match listener {
        Some(listener) => listener,
        None => bind(config.server.keys.listen).await?,
    };
    let admin_listener = bind(config.server.keys.admin_listen).await?;
    let traces = config.otel.as_ref().map(traces::Traces::start).transpose().map_err(RunError::Otel)?;
    let mut background: Vec<(&'static str, Task)> = Vec::new();
    // Installed here, before the ready line: a SIGHUP right after start-up
    // must not meet the default action, which ends the process.
    let hangups = hangup::Hangups::install();
    if let Some(tls) = &tls {
        background.push(("TLS reloader", Box::pin(tls.clone().run_reloader(hangups.subscribe()))));
    }
    if let Some(audit) = audit::AuditFile::installed() {
        background.push(("audit file upkeep", Box::pin(audit.clone().run_upkeep(hangups.subscribe()))));
    }
    let config_hangups = hangups.subscribe();
    background.push(("SIGHUP listener", Box::pin(hangups.run())));
    let tls = tls.map(|tls| tls.acceptor());
    let process = generation::Process {
        metrics: metrics.clone(),
        clock: clock.clone(),
        upstream: Arc::new(upstream::Upstream::new(&config.upstream)),
        traces: traces.map(Arc::new),
    };
    let first = generation::build(config, &process, None)?;
    let current = Arc::new(proxy::Current::from_pointee(first.state));
    let admin = Arc::new(admin::Admin { ready: AtomicBool::new(false), metrics, current: current.clone() });
    Ok(Bound {
        proxy_listener,
        admin_listener,
        tls,
        current,
        process,
        admin,
        background,
        pieces: first.pieces,
        hangups: Some(config_hangups),
        reloader: None,
        clock,
    })
}

impl Bound {
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener.local_addr().expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener has an address")
    }

    /// Reloads the configuration from `source` on SIGHUP and when the file
    /// changes (`reload`); without this, the configuration is the one given
    /// to [`bind`] for good.
    pub fn reload_from(mut self, source: config::Source) -> Self {
        if let Some(hangups) = self.hangups.take() {
            self.reloader = Some(reload::Reloader::new(source, hangups, self.clock.clone()));
        }
        self
    }

    /// Serves until `shutdown` resolves: then `/readyz` turns 503, the proxy serves
    /// on for `server.shutdown_delay_seconds`, stops accepting, and in-flight
    /// requests get `server.shutdown_grace_seconds`.
    /// If a listener or background task panics or ends first (or, with
    /// [`install_panic_hook`], any task panics), `/readyz` turns 503 and this
    /// returns [`RunError::TaskFailed`] at once.
    pub async fn serve<F: Future<Output = ()>>(mut self, shutdown: F) -> Result<(), RunError> {
        let (proxy_addr, admin_addr) = (self.proxy_addr(), self.admin_addr());
        // Without a reloader nobody listens for SIGHUP on the configuration's behalf.
        drop(self.hangups.take());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let mut admin_task = tokio::spawn(admin::serve(self.admin_listener, self.admin.clone(), admin_stop_rx));
        let mut tasks = Supervised::default();
        for (name, task) in self.background {
            tasks.spawn(name, task);
        }
        let first = tasks.start(std::mem::take(&mut self.pieces));
        tasks.commit(first);
        let mut proxy_task =
            tokio::spawn(server::serve_proxy(self.proxy_listener, self.tls, self.current.clone(), stop_rx));
        // Polled once before readiness is announced, so that whatever it sets
        // up on first poll (the signal handlers of `shutdown_signals`) is in
        // place: a SIGTERM right after the ready line must start the drain, not
        // meet the default action and kill the process.
        let mut shutdown = std::pin::pin!(shutdown);
        let requested = std::future::poll_fn(|cx| std::task::Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await;
        self.admin.ready.store(true, Ordering::Release);
        let upstream = &self.current.load().config.upstream;
        let upstream = format!("{}://{}", upstream.scheme, upstream.authority);
        tracing::info!(listen = %proxy_addr, admin = %admin_addr, upstream = %upstream, "line-auth-proxy listening");
        let readiness = tokio::spawn(admin::watch_readiness(self.admin.clone(), proxy_addr, admin_addr, upstream));
        let mut panicked = std::pin::pin!(panics::panicked());
        let mut reloader = self.reloader.take();
        let failure = loop {
            let next_reload = async {
                match reloader.as_mut() {
                    Some(r) => r.next().await,
                    None => std::future::pending().await,
                }
            };
            // Biased: a shutdown wins over a reload that became due with it
            // (a warm-up would hold the drain for up to 10 s).
            tokio::select! {
                biased;
                () = &mut shutdown, if !requested => break None,
                () = std::future::ready(()), if requested => break None,
                ended = &mut proxy_task => break Some(("proxy listener", why(ended))),
                ended = &mut admin_task => break Some(("admin listener", why(ended))),
                Some(ended) = tasks.set.join_next_with_id() => {
                    if let Some(failed) = tasks.ended(ended) {
                        break Some(failed);
                    }
                }
                message = &mut panicked => break Some(("process (a task panicked)", message)),
                trigger = next_reload => {
                    let reloader = reloader.as_ref().expect("a trigger comes from the reloader");
                    let Some(mut next) = reloader.prepare(trigger, &self.current, &self.process) else {
                        continue;
                    };
                    // The new pieces' tasks run from now on (a JWKS fetches, a
                    // Redis is pinged); the generation serves once they are ready.
                    let warmup = next.generation.warmup();
                    let started = tasks.start(std::mem::take(&mut next.generation.pieces));
                    let warm = tokio::select! {
                        warm = reload::Prepared::warm(&warmup, &self.clock) => warm,
                        () = &mut shutdown, if !requested => {
                            tasks.cancel(started);
                            break None;
                        }
                    };
                    match warm {
                        Ok(()) => {
                            next.commit(&self.current, &self.process);
                            tasks.commit(started);
                        }
                        Err(why) => {
                            next.refuse(why, &self.process);
                            tasks.cancel(started);
                        }
                    }
                }
            }
        };
        self.admin.ready.store(false, Ordering::Release);
        readiness.abort();
        if let Some((task, why)) = failure {
            tracing::error!(task, why = %why, "a task of the proxy failed; exiting");
            if let Some(audit) = audit::AuditFile::installed() {
                audit.flush();
            }
            if let Some(traces) = &self.process.traces {
                traces.shutdown().await;
            }
            proxy_task.abort();
            admin_task.abort();
            return Err(RunError::TaskFailed { task, why });
        }
        tracing::info!("shutdown requested");
        let delay = self.current.load().config.server.keys.shutdown_delay_seconds.duration();
        if !delay.is_zero() {
            tracing::info!(delay_seconds = delay.as_secs(), "not ready; serving on before the drain");
            self.clock.sleep(delay).await;
        }
        let _ = stop_tx.send(true);
        let _ = proxy_task.await;
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
        tasks.set.abort_all();
        if let Some(traces) = &self.process.traces {
            traces.shutdown().await;
        }
        tracing::info!("stopped");
        if let Some(audit) = audit::AuditFile::installed() {
            audit.flush();
        }
        Ok(())
    }

    /// Adds a supervised background task (tests make one fail).
    #[cfg(test)]
    fn add_background(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.background.push((name, Box::pin(task)));
    }
}

/// The tasks that run until shutdown: the process's, and those of the
/// generation's pieces. A reload that builds a piece anew (or drops it)
/// stops the task of the one it replaces; only the end of a task nobody
/// stopped is a failure.
#[derive(Default)]
struct Supervised {
    set: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
    /// The task running for each piece of the generation in force.
    pieces: HashMap<generation::PieceKind, tokio::task::AbortHandle>,
    /// Tasks stopped by a reload, whose end is expected.
    retired: std::collections::HashSet<tokio::task::Id>,
}

impl Supervised {
    fn spawn(&mut self, name: &'static str, task: Task) -> tokio::task::AbortHandle {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
        handle
    }

    /// Starts the tasks of a generation's new pieces; the running ones go
    /// on until [`Supervised::commit`] (or the new ones stop at
    /// [`Supervised::cancel`]).
    fn start(&mut self, pieces: Vec<generation::Piece>) -> Started {
        let mut started = Started { kept: Vec::new(), new: Vec::new() };
        for piece in pieces {
            match piece.task {
                None => started.kept.push(piece.kind),
                Some(task) => started.new.push((piece.kind, self.spawn(piece.kind.task_name(), task))),
            }
        }
        started
    }

    /// The generation serves: the tasks of pieces built anew or gone stop,
    /// those of pieces taken over go on.
    fn commit(&mut self, started: Started) {
        let stale: Vec<_> = self.pieces.keys().filter(|kind| !started.kept.contains(kind)).copied().collect();
        for kind in stale {
            if let Some(handle) = self.pieces.remove(&kind) {
                self.retire(&handle);
            }
        }
        self.pieces.extend(started.new);
    }

    /// The generation was given up: its new tasks stop.
    fn cancel(&mut self, started: Started) {
        for (_, handle) in started.new {
            self.retire(&handle);
        }
    }

    fn retire(&mut self, handle: &tokio::task::AbortHandle) {
        handle.abort();
        self.retired.insert(handle.id());
    }

    /// A task ended: `None` when a reload had stopped it, else what failed.
    fn ended(
        &mut self,
        ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    ) -> Option<(&'static str, String)> {
        let id = match &ended {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        let name = self.names.remove(&id).unwrap_or("background task");
        if self.retired.remove(&id) {
            return None;
        }
        Some((name, why(ended.map(|_| ()))))
    }
}

/// The tasks [`Supervised::start`] started for a generation's pieces, and
/// the pieces it took over.
struct Started {
    kept: Vec<generation::PieceKind>,
    new: Vec<(generation::PieceKind, tokio::task::AbortHandle)>,
}

/// Why a task that should run until shutdown is over.
fn why(ended: Result<(), tokio::task::JoinError>) -> String {
    match ended {
        Ok(()) => "it ended on its own".into(),
        Err(e) if e.is_panic() => format!("it panicked: {}", panics::message(e.into_panic().as_ref())),
        Err(_) => "it was cancelled".into(),
    }
}

/// Binds and serves until `shutdown` resolves.
pub async fn run<F: Future<Output = ()>>(config: Config, shutdown: F) -> Result<(), RunError> {
    bind(config).await?.serve(shutdown).await
}

/// [`run`], reloading the configuration from `source` on SIGHUP and when
/// the file changes.
pub async fn run_reloading<F: Future<Output = ()>>(
    config: Config,
    source: config::Source,
    shutdown: F,
) -> Result<(), RunError> {
    bind(config).await?.reload_from(source).serve(shutdown).await
}

/// Resolves on the first SIGTERM or SIGINT, which starts the drain; a second
/// one during the drain (or the delay before it) ends the process at once,
/// exit 0, after a log line: the operator's "no, now". The listeners are
/// installed once, before the first signal, so that a second one sent right
/// after the first is never missed.
pub async fn shutdown_signals() {
    let mut signals = Signals::install();
    signals.next().await;
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("second shutdown signal: exiting now, without finishing the drain");
        log_writer::flush();
        std::process::exit(0);
    });
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    Signals::install().next().await;
}

/// SIGTERM and SIGINT, listened to from installation on: a signal that arrives
/// while nobody awaits [`Signals::next`] is kept for the next call.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = recv(&mut self.term) => {},
                _ = recv(&mut self.int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                    [upstream]\nurl = \"http://127.0.0.1:9\"\n[line]\nchannel_ids = [\"1234567890\"]\n";
        config::load_str(text, std::iter::empty()).unwrap().config
    }

    #[tokio::test]
    async fn a_panicking_background_task_stops_the_proxy_and_readiness() {
        let mut bound = bind(config()).await.unwrap();
        let (panic_now, wait) = tokio::sync::oneshot::channel::<()>();
        bound.add_background("test task", async move {
            let _ = wait.await;
            panic!("boom");
        });
        let admin = bound.admin.clone();
        let served = tokio::spawn(bound.serve(std::future::pending()));
        while !admin.is_ready() {
            tokio::task::yield_now().await;
        }
        panic_now.send(()).unwrap();
        match served.await.unwrap() {
            Err(RunError::TaskFailed { task, why }) => {
                assert_eq!(task, "test task");
                assert!(why.contains("boom"), "{why}");
            }
            other => panic!("expected a task failure, got {other:?}"),
        }
        assert!(!admin.is_ready(), "/readyz would still answer 200");
    }

    #[tokio::test]
    async fn a_background_task_that_ends_is_a_failure_too() {
        let mut bound = bind(config()).await.unwrap();
        bound.add_background("short-lived", async {});
        let result = bound.serve(std::future::pending()).await;
        assert!(matches!(result, Err(RunError::TaskFailed { task: "short-lived", .. })), "{result:?}");
    }
}
