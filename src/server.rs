//! Listeners: the accept loop (plain TCP or rustls), the hyper-util auto builder
//! (HTTP/1.1 and h2c / h2 over ALPN) with a header-read timeout and head-size
//! limit, a bound on concurrent connections, and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::{ServerConfig, TlsFiles};
use crate::proxy::{self, State};
use crate::upstream::ConnInfo;

/// hyper's own read buffer: big enough that heads over `max_header_bytes` still
/// parse and get the proxy's JSON 431; beyond it hyper answers a bare 431.
fn hyper_buffer_bytes(max_header_bytes: usize) -> usize {
    (max_header_bytes * 4).max(64 * 1024)
}

/// Pause after a failed `accept` (e.g. out of file descriptors) before retrying (50 ms).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Config(String),
}

/// Builds the rustls acceptor from PEM files (ALPN: h2, http/1.1).
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read_err = |path: &std::path::Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(|e| read_err(&files.cert_file, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(&files.cert_file, &e))?;
    if certs.is_empty() {
        return Err(read_err(&files.cert_file, &"no certificate in the file"));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| read_err(&files.key_file, &e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(hyper_buffer_bytes(config.max_header_bytes));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(hyper_buffer_bytes(config.max_header_bytes) as u32);
    builder
}

/// Decrements the open-connection gauge when a connection task ends.
struct ConnectionGuard(Arc<crate::telemetry::Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.dec();
    }
}

/// Accepts proxy connections until `stop` flips, then lets in-flight requests
/// finish for up to `server.shutdown_grace_seconds`.
pub async fn serve_proxy(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    let config = &state.config.server;
    let builder = Arc::new(builder(config));
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => permit.expect("never closed"),
            _ = crate::server::stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = crate::server::stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        state.metrics.open_connections.inc();
        let guard = ConnectionGuard(state.metrics.clone());
        let conn = ConnInfo {
            peer,
            tls: tls.is_some(),
        };
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _guard = guard;
            match tls {
                None => serve_connection(&builder, stream, conn, state, watcher).await,
                Some(acceptor) => {
                    let timeout = state.config.server.header_read_timeout;
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(&builder, tls_stream, conn, state, watcher).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let grace = config.shutdown_grace;
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "stopped accepting; draining in-flight requests"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing the remaining connections");
    }
}

async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    conn: ConnInfo,
    state: Arc<State>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        service_fn(move |req: hyper::Request<Incoming>| proxy::handle(state.clone(), conn, req));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
    }
}

/// Resolves once `stop` holds true (the borrow guard never lives across an await).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}
