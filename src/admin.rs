//! The admin listener: `/healthz`, `/readyz`, `/metrics`, on its own address and
//! never on the proxy port. It keeps serving while the proxy drains, so that
//! `/readyz` can answer 503 during shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::jwks::Jwks;
use crate::cache::VerdictCache;
use crate::redis_conn::RedisConn;
use crate::telemetry::Metrics;

/// What the admin endpoints report on.
pub struct Admin {
    /// True once listeners are bound; false again from the first shutdown signal.
    pub ready: AtomicBool,
    pub metrics: Arc<Metrics>,
    pub cache: Arc<VerdictCache>,
    /// In local ID-token mode, readiness also waits for LINE's JWKS.
    pub jwks: Option<Arc<Jwks>>,
    /// With Redis nonces, readiness follows Redis (the shared cache never does:
    /// it degrades to memory + LINE).
    pub nonce_redis: Option<Arc<RedisConn>>,
    /// With `[assertion]`: its public keys at `/.well-known/jwks.json`.
    pub signer: Option<Arc<crate::assertion::Signer>>,
}

impl Admin {
    /// Listeners up, not shutting down, and (local ID-token mode) JWKS loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self.jwks.as_ref().is_none_or(|j| j.is_loaded())
            && self.nonce_redis.as_ref().is_none_or(|r| r.is_healthy())
    }
}

/// Serves until `stop` flips to true.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = crate::server::accept(&listener, "admin") => accepted,
            _ = crate::sync::until_set(&mut stop) => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(admin.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

async fn handle(admin: Arc<Admin>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"));
    }
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if admin.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" => {
            // A number kept as entries come and go: a scrape never walks the cache.
            admin.metrics.cache_entries.set(admin.cache.entry_count() as i64);
            admin.metrics.verifications_in_flight.set(admin.cache.inflight_count() as i64);
            let mut r = Response::new(Full::new(Bytes::from(admin.metrics.encode())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            r
        }
        "/.well-known/jwks.json" if admin.signer.is_some() => {
            let signer = admin.signer.as_ref().expect("checked");
            let mut r = Response::new(Full::new(signer.jwks()));
            let headers = r.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json"));
            let max_age = format!("public, max-age={}", crate::assertion::JWKS_MAX_AGE_SECONDS);
            headers.insert(CACHE_CONTROL, HeaderValue::try_from(max_age).expect("ASCII"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
