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
mod hangup;
mod headers;
mod identity;
mod limits;
pub mod log_writer;
mod login;
mod panics;
mod process_metrics;
mod proxy;
mod redis_conn;
mod redis_entry;
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
use std::pin::Pin;
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

/// Installs ring as the process-wide rustls provider (the only one compiled in).
/// Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The proxy with its listeners bound, not yet serving.
pub struct Bound {
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<proxy::State>,
    admin: Arc<admin::Admin>,
    /// Background work (JWKS refresh, sweeps, Redis probes), supervised like the listeners.
    background: Vec<(&'static str, Task)>,
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
    use auth::{id_token, jwks, line, nonce};
    install_crypto_provider();
    let prefixes: Vec<&str> = config.routes.routes().iter().map(|r| r.path_prefix.as_str()).collect();
    let metrics = Arc::new(telemetry::Metrics::new().with_config(&config.fingerprint, &prefixes));
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
    let line = Arc::new(
        line::LineClient::new(&config.line, clock.clone(), metrics.clone())
            .map_err(|e| RunError::LineClient(e.without_url()))?,
    );
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
    background.push(("SIGHUP listener", Box::pin(hangups.run())));
    let tls = tls.map(|tls| tls.acceptor());
    let jwks = config
        .id_token
        .as_ref()
        .filter(|c| c.verification == config::IdTokenVerification::Local)
        .map(|c| Arc::new(jwks::Jwks::new(line.clone(), c.jwks_url.clone(), clock.clone(), metrics.clone())));
    if let Some(jwks) = &jwks {
        background.push(("JWKS refresher", traces::background(traces.as_ref(), jwks.clone().run_refresher())));
    }
    let id_tokens = config.id_token.as_ref().map(|c| {
        id_token::IdTokenVerifier::new(c, config.line.channel_ids.clone(), line.clone(), jwks.clone(), clock.clone())
    });
    let redis = |c: &redis_conn::RedisConfig, purpose| {
        redis_conn::RedisConn::new(c, purpose, metrics.clone()).map(Arc::new).map_err(RunError::Redis)
    };
    let nonces = match &config.id_token {
        None => None,
        Some(c) => {
            let store = match &c.nonce.redis {
                None => nonce::NonceStore::Memory(nonce::MemoryNonces::new(
                    c.nonce.ttl,
                    nonce::MAX_NONCES,
                    clock.clone(),
                    metrics.clone(),
                )),
                Some(r) => nonce::NonceStore::Redis(nonce::RedisNonces::new(
                    redis(r, "nonce")?,
                    redis_entry::RedisMac::new("nonce", &r.mac_keys, metrics.clone()),
                    c.nonce.ttl,
                    clock.clone(),
                    metrics.clone(),
                )),
            };
            let store = Arc::new(store);
            background.push(("nonce store upkeep", Box::pin(store.clone().run_maintenance())));
            Some(proxy::Nonces { path: c.nonce.path.clone(), store })
        }
    };
    let shared = match &config.cache.shared {
        None => None,
        Some(r) => {
            let conn = redis(r, "cache")?;
            background.push(("shared cache probe", Box::pin(conn.clone().run_health_probe())));
            Some(cache::SharedTier::new(
                conn,
                redis_entry::RedisMac::new("cache", &r.mac_keys, metrics.clone()),
                config.line.channel_ids.clone(),
                (config.cache.keys.ttl_seconds.duration(), config.cache.keys.negative_ttl_seconds.duration()),
                clock.clone(),
                metrics.clone(),
            ))
        }
    };
    let signer = match &config.assertion {
        None => None,
        Some(a) => Some(Arc::new(assertion::Signer::new(a, clock.clone()).map_err(RunError::Assertion)?)),
    };
    let sessions = config.session.clone().map(proxy::session::Sessions::new);
    // Web login's ID tokens are HS256 (the channel secret); should LINE issue
    // an ES256 one, its key comes from the JWKS, fetched when first needed.
    let login = config.login.clone().map(|c| proxy::login::Login {
        verifier: id_token::IdTokenVerifier::for_login(
            &c,
            &config.line,
            line.clone(),
            Some(jwks.clone().unwrap_or_else(|| {
                Arc::new(jwks::Jwks::new(
                    line.clone(),
                    config.line.jwks_url.as_str().to_owned(),
                    clock.clone(),
                    metrics.clone(),
                ))
            })),
            clock.clone(),
        ),
        config: c,
    });
    let cache = Arc::new(
        cache::VerdictCache::new(&config.cache, config.identity.names.clone(), shared, clock.clone())
            .with_assertions(signer.clone())
            .with_session_revalidation(sessions.as_ref().map(|s| s.config.revalidate)),
    );
    background.push(("cache sweeper", Box::pin(cache.clone().run_sweeper())));
    let upstream = upstream::Upstream::new(&config.upstream);
    let admin = Arc::new(admin::Admin {
        ready: AtomicBool::new(false),
        metrics: metrics.clone(),
        cache: cache.clone(),
        jwks,
        nonce_redis: nonces.as_ref().and_then(|n| n.store.redis().cloned()),
        signer: signer.clone(),
    });
    let strip_rule = Arc::new(upstream::StripRule {
        names: config.identity.names.clone(),
        assertion: config.identity.assertion_header.clone(),
    });
    let limits = Arc::new(limits::Limits::new(&config.limits, clock.clone()));
    background.push(("limits sweeper", Box::pin(limits.clone().run_sweeper(metrics.clone()))));
    let state = Arc::new(proxy::State {
        config,
        strip_rule,
        line,
        id_tokens,
        nonces,
        cache,
        upstream,
        signer,
        metrics,
        limits,
        clock: clock.clone(),
        sessions,
        login,
        traces,
    });
    Ok(Bound { proxy_listener, admin_listener, tls, state, admin, background, clock })
}

impl Bound {
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener.local_addr().expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves: then `/readyz` turns 503, the proxy serves
    /// on for `server.shutdown_delay_seconds`, stops accepting, and in-flight
    /// requests get `server.shutdown_grace_seconds`.
    /// If a listener or background task panics or ends first (or, with
    /// [`install_panic_hook`], any task panics), `/readyz` turns 503 and this
    /// returns [`RunError::TaskFailed`] at once.
    pub async fn serve<F: Future<Output = ()>>(self, shutdown: F) -> Result<(), RunError> {
        let (proxy_addr, admin_addr) = (self.proxy_addr(), self.admin_addr());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let mut admin_task = tokio::spawn(admin::serve(self.admin_listener, self.admin.clone(), admin_stop_rx));
        let mut background = JoinSet::new();
        let mut names = HashMap::new();
        for (name, task) in self.background {
            names.insert(background.spawn(task).id(), name);
        }
        let mut proxy_task =
            tokio::spawn(server::serve_proxy(self.proxy_listener, self.tls, self.state.clone(), stop_rx));
        // Polled once before readiness is announced, so that whatever it sets
        // up on first poll (the signal handlers of `shutdown_signals`) is in
        // place: a SIGTERM right after the ready line must start the drain, not
        // meet the default action and kill the process.
        let mut shutdown = std::pin::pin!(shutdown);
        let requested = std::future::poll_fn(|cx| std::task::Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await;
        self.admin.ready.store(true, Ordering::Release);
        let upstream = &self.state.config.upstream;
        let upstream = format!("{}://{}", upstream.scheme, upstream.authority);
        tracing::info!(listen = %proxy_addr, admin = %admin_addr, upstream = %upstream, "line-auth-proxy listening");
        let readiness = tokio::spawn(admin::watch_readiness(self.admin.clone(), proxy_addr, admin_addr, upstream));
        let failure = tokio::select! {
            () = &mut shutdown, if !requested => None,
            () = std::future::ready(()), if requested => None,
            ended = &mut proxy_task => Some(("proxy listener", why(ended))),
            ended = &mut admin_task => Some(("admin listener", why(ended))),
            Some(ended) = background.join_next_with_id() => {
                let id = match &ended {
                    Ok((id, ())) => *id,
                    Err(e) => e.id(),
                };
                Some((names.get(&id).copied().unwrap_or("background task"), why(ended.map(|_| ()))))
            }
            message = panics::panicked() => Some(("process (a task panicked)", message)),
        };
        self.admin.ready.store(false, Ordering::Release);
        readiness.abort();
        if let Some((task, why)) = failure {
            tracing::error!(task, why = %why, "a task of the proxy failed; exiting");
            if let Some(audit) = audit::AuditFile::installed() {
                audit.flush();
            }
            if let Some(traces) = &self.state.traces {
                traces.shutdown().await;
            }
            proxy_task.abort();
            admin_task.abort();
            return Err(RunError::TaskFailed { task, why });
        }
        tracing::info!("shutdown requested");
        let delay = self.state.config.server.keys.shutdown_delay_seconds.duration();
        if !delay.is_zero() {
            tracing::info!(delay_seconds = delay.as_secs(), "not ready; serving on before the drain");
            self.clock.sleep(delay).await;
        }
        let _ = stop_tx.send(true);
        let _ = proxy_task.await;
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
        background.abort_all();
        if let Some(traces) = &self.state.traces {
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
