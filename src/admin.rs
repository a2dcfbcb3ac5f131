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

use crate::proxy::Current;
use crate::telemetry::Metrics;

/// What the admin endpoints report on.
pub struct Admin {
    /// True once listeners are bound; false again from the first shutdown signal.
    pub ready: AtomicBool,
    pub metrics: Arc<Metrics>,
    /// The configuration in force (a reload swaps it): in local ID-token mode
    /// readiness also waits for LINE's JWKS; with Redis nonces it follows
    /// Redis (the shared cache never holds it back: it degrades to memory +
    /// LINE); with `[assertion]`, its public keys at `/.well-known/jwks.json`.
    pub current: Arc<Current>,
}

/// Every dependency's name, as [`Admin::dependencies`] gives them.
const DEPENDENCIES: [&str; 4] = ["draining", "jwks", "nonce_store", "shared_cache"];

/// One dependency's state, as `/readyz` and `line_auth_proxy_dependency_ready` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dependency {
    pub name: &'static str,
    pub ready: bool,
    /// What is wrong when it is not ready.
    pub why: &'static str,
    /// Whether `/readyz` waits for it (the shared cache never holds it back:
    /// without Redis the proxy degrades to memory + LINE).
    pub gates: bool,
}

impl Admin {
    /// Every dependency this configuration has, in a fixed order.
    pub fn dependencies(&self) -> Vec<Dependency> {
        let mut out = vec![Dependency {
            name: "draining",
            ready: self.ready.load(Ordering::Acquire),
            why: "not serving yet, or shutting down",
            gates: true,
        }];
        let state = self.current.load();
        if let Some(jwks) = &state.jwks {
            out.push(Dependency {
                name: "jwks",
                ready: jwks.is_loaded(),
                why: "no key set from LINE's JWKS yet (line.jwks_url)",
                gates: true,
            });
        }
        if let Some(redis) = state.nonces.as_ref().and_then(|n| n.store.redis()) {
            out.push(Dependency {
                name: "nonce_store",
                ready: redis.is_healthy(),
                why: "Redis (nonce.redis_url) is unreachable",
                gates: true,
            });
        }
        if let Some(redis) = state.cache.shared_redis() {
            out.push(Dependency {
                name: "shared_cache",
                ready: redis.is_healthy(),
                why: "Redis (cache.redis_url) is unreachable; verdicts come from memory and LINE meanwhile",
                gates: false,
            });
        }
        out
    }

    /// Listeners up, not shutting down, (local ID-token mode) JWKS loaded and
    /// (Redis nonces) Redis reachable.
    #[cfg(test)]
    pub fn is_ready(&self) -> bool {
        gates_open(&self.dependencies())
    }

    /// `/readyz`'s body: `ready`, or `not ready:` and what waits, one per line.
    fn readiness(&self) -> (StatusCode, String) {
        let dependencies = self.dependencies();
        let waiting: Vec<String> =
            dependencies.iter().filter(|d| !d.ready && d.gates).map(|d| format!("{}: {}", d.name, d.why)).collect();
        let degraded = dependencies.iter().filter(|d| !d.ready && !d.gates).map(|d| format!("{}: {}", d.name, d.why));
        let mut body = if waiting.is_empty() { "ready\n".to_owned() } else { "not ready\n".to_owned() };
        for line in waiting.iter().cloned().chain(degraded) {
            body.push_str(&line);
            body.push('\n');
        }
        let status = if waiting.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        (status, body)
    }
}

/// Every dependency `/readyz` waits for is ready.
fn gates_open(dependencies: &[Dependency]) -> bool {
    dependencies.iter().all(|d| d.ready || !d.gates)
}

/// How often [`watch_readiness`] looks.
const READINESS_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Logs readiness as it changes: `line-auth-proxy ready` (with the
/// addresses) the first time `/readyz` would answer 200; what it waits for
/// at start (INFO); a dependency that stops being ready (WARN, with why) and
/// one that is ready again (INFO). Runs until aborted at shutdown.
pub async fn watch_readiness(
    admin: Arc<Admin>,
    listen: std::net::SocketAddr,
    admin_addr: std::net::SocketAddr,
    upstream: String,
) {
    let mut last: Option<Vec<Dependency>> = None;
    let mut announced = false;
    loop {
        let now = admin.dependencies();
        for d in &now {
            let before = last.as_ref().and_then(|l| l.iter().find(|b| b.name == d.name));
            match (before, d.ready) {
                (None, false) => tracing::info!(dependency = d.name, why = d.why, "waiting for a dependency"),
                (Some(b), false) if b.ready => {
                    tracing::warn!(dependency = d.name, why = d.why, gates_readyz = d.gates, "dependency not ready")
                }
                (Some(b), true) if !b.ready => tracing::info!(dependency = d.name, "dependency ready again"),
                _ => {}
            }
        }
        if !announced && gates_open(&now) {
            tracing::info!(listen = %listen, admin = %admin_addr, upstream = %upstream, "line-auth-proxy ready");
            announced = true;
        }
        last = Some(now);
        tokio::time::sleep(READINESS_POLL).await;
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
            let (status, body) = admin.readiness();
            let mut r = text(status, "");
            *r.body_mut() = Full::new(Bytes::from(body));
            r
        }
        "/metrics" => {
            let dependencies = admin.dependencies();
            for name in DEPENDENCIES {
                let labels = crate::telemetry::DependencyLabels { dependency: name };
                match dependencies.iter().find(|d| d.name == name) {
                    Some(d) => {
                        admin.metrics.dependency_ready.get_or_create(&labels).set(i64::from(d.ready));
                    }
                    // Gone with a reload (no ID-token route any more): no stale series.
                    None => {
                        admin.metrics.dependency_ready.remove(&labels);
                    }
                }
            }
            // A number kept as entries come and go: a scrape never walks the cache.
            let state = admin.current.load();
            admin.metrics.cache_entries.set(state.cache.entry_count() as i64);
            admin.metrics.verifications_in_flight.set(state.cache.inflight_count() as i64);
            let mut r = Response::new(Full::new(Bytes::from(admin.metrics.encode())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            r
        }
        "/.well-known/jwks.json" => match admin.current.load().signer.as_ref().map(|s| s.jwks()) {
            None => text(StatusCode::NOT_FOUND, "not found\n"),
            Some(jwks) => {
                let mut r = Response::new(Full::new(jwks));
                let headers = r.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/jwk-set+json"));
                let max_age = format!("public, max-age={}", crate::assertion::JWKS_MAX_AGE_SECONDS);
                headers.insert(CACHE_CONTROL, HeaderValue::try_from(max_age).expect("ASCII"));
                r
            }
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
