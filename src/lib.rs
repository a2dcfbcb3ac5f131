//! line-auth-proxy: a reverse proxy that verifies LINE Login credentials with the
//! LINE Platform and forwards requests with trusted `X-Line-*` identity headers.
//!
//! [`bind`] opens the listeners (so callers learn the real ports), and
//! [`Bound::serve`] runs until the shutdown future resolves; [`run`] does both.
//! `main` and the tests use the same entry points.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod config;
pub mod dev;
pub mod error;
pub mod headers;
pub mod mock_line;
pub mod proxy;
pub mod redis_conn;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub use config::Config;

/// Why the proxy could not start or run (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] server::TlsError),
    #[error("cannot build the LINE Platform client: {0}")]
    LineClient(String),
    #[error("cannot set up Redis: {0}")]
    Redis(String),
}

/// Installs ring as the process-wide rustls provider (the only one compiled in).
/// Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The proxy with its listeners bound, not yet serving.
pub struct Bound {
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<proxy::State>,
    admin: Arc<admin::Admin>,
}

/// Builds the shared state and binds both listeners.
pub async fn bind(config: Config) -> Result<Bound, RunError> {
    install_crypto_provider();
    let tls = config.server.tls.as_ref().map(server::tls_acceptor).transpose()?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| RunError::Bind { addr, source })
    };
    let proxy_listener = bind(config.server.listen).await?;
    let admin_listener = bind(config.server.admin_listen).await?;
    let metrics = Arc::new(telemetry::Metrics::new());
    // reqwest's builder error holds no URL; it is safe to print.
    let line = Arc::new(
        auth::line::LineClient::new(&config.line, metrics.clone())
            .map_err(|e| RunError::LineClient(e.without_url().to_string()))?,
    );
    let jwks = config
        .id_token
        .as_ref()
        .filter(|c| c.verification == config::IdTokenVerification::Local)
        .map(|c| Arc::new(auth::jwks::Jwks::new(line.clone(), c.jwks_url.clone(), metrics.clone())));
    let id_tokens = config
        .id_token
        .as_ref()
        .map(|c| auth::id_token::IdTokenVerifier::new(c, config.line.channel_ids.clone(), line.clone(), jwks.clone()));
    let redis = |c: &config::RedisConfig, purpose| {
        redis_conn::RedisConn::new(c, purpose, metrics.clone()).map(Arc::new).map_err(RunError::Redis)
    };
    let nonces = match &config.id_token {
        None => None,
        Some(c) => {
            let store = match &c.nonce.redis {
                None => auth::nonce::NonceStore::Memory(auth::nonce::MemoryNonces::new(
                    c.nonce.ttl,
                    auth::nonce::MAX_NONCES,
                    metrics.clone(),
                )),
                Some(r) => auth::nonce::NonceStore::Redis(auth::nonce::RedisNonces::new(
                    redis(r, "nonce")?,
                    c.nonce.ttl,
                    metrics.clone(),
                )),
            };
            Some(proxy::Nonces { path: c.nonce.path.clone(), store: Arc::new(store) })
        }
    };
    let shared = match &config.cache.shared {
        None => None,
        Some(r) => Some(cache::SharedTier::new(redis(r, "cache")?, metrics.clone())),
    };
    let cache = Arc::new(cache::VerdictCache::new(&config.cache, config.identity.names.clone(), shared));
    let upstream = upstream::Upstream::new(&config.upstream);
    let admin = Arc::new(admin::Admin {
        ready: AtomicBool::new(false),
        metrics: metrics.clone(),
        cache: cache.clone(),
        jwks: jwks.clone(),
        nonce_redis: nonces.as_ref().and_then(|n| n.store.redis().cloned()),
    });
    let state = Arc::new(proxy::State { config, line, id_tokens, nonces, cache, upstream, metrics });
    Ok(Bound { proxy_listener, admin_listener, tls, state, admin })
}

impl Bound {
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener.local_addr().expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves: then `/readyz` turns 503, the proxy stops
    /// accepting, and in-flight requests get `server.shutdown_grace_seconds`.
    pub async fn serve<F: Future<Output = ()>>(self, shutdown: F) -> Result<(), RunError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(admin::serve(self.admin_listener, self.admin.clone(), admin_stop_rx));
        // Background work: JWKS loading and refresh, nonce sweeping.
        let mut background = Vec::new();
        if let Some(jwks) = &self.admin.jwks {
            background.push(tokio::spawn(jwks.clone().run_refresher()));
        }
        if let Some(nonces) = &self.state.nonces {
            background.push(tokio::spawn(nonces.store.clone().run_maintenance()));
        }
        if let Some(shared) = self.state.cache.shared_redis() {
            background.push(tokio::spawn(shared.clone().run_health_probe()));
        }
        let proxy_task = tokio::spawn(server::serve_proxy(self.proxy_listener, self.tls, self.state.clone(), stop_rx));
        self.admin.ready.store(true, Ordering::Release);
        tracing::info!(
            listen = %self.state.config.server.listen,
            admin = %self.state.config.server.admin_listen,
            upstream = %format!("{}://{}", self.state.config.upstream.scheme, self.state.config.upstream.authority),
            "line-auth-proxy ready"
        );
        shutdown.await;
        tracing::info!("shutdown requested");
        self.admin.ready.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
        let _ = proxy_task.await;
        let _ = admin_stop_tx.send(true);
        let _ = admin_task.await;
        for task in background {
            task.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Binds and serves until `shutdown` resolves.
pub async fn run<F: Future<Output = ()>>(config: Config, shutdown: F) -> Result<(), RunError> {
    bind(config).await?.serve(shutdown).await
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
