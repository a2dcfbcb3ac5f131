//! The per-request pipeline, one named phase after another, each a function of
//! the request context ([`RequestCtx`]):
//!
//! 1. `bound_head`       — request line + headers within `server.max_header_bytes` (431)
//! 2. `normalise`        — the path routing and the upstream will both see (400)
//! 3. `own_endpoints`    — what the proxy answers itself, before routing (the nonce
//!    endpoint; the forward-auth endpoint, which runs phases 4–6 on the original
//!    request an ingress names and answers instead of forwarding: `forward_auth.rs`)
//! 4. `strip_identity`   — every client-sent identity header, on every route
//! 5. `route`            — the policy for (method, normalised path)
//! 6. `authenticate`     — credential → verdict via cache / LINE (401, 503)
//! 7. `upstream_request` — hop-by-hop removal, `Authorization` removal, identity injection, forwarding headers
//! 8. `forward`          — to the upstream (502, 504)
//! 9. `respond`          — hop-by-hop removal on the way back, the WebSocket tunnel
//!
//! A phase that fails returns a [`ProxyError`]; [`fail_to_proxy`] is the one place
//! where an error becomes its answer, its outcome, its refusal counter and its
//! log fields, and [`logging`] writes the access line and the request counter for
//! every request. A request that fails any phase is never forwarded.

mod access;
mod audit;
mod authenticate;
mod context;
mod forward;
mod forward_auth;
pub mod login;
mod nonce_endpoint;
mod request;
pub mod session;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

pub use context::{ConnInfo, ConnectionSlot, Grpc, RequestCtx, grpc_kind};

use crate::auth::id_token::IdTokenVerifier;
use crate::auth::line::LineClient;
use crate::auth::nonce::NonceStore;
use crate::cache::VerdictCache;
use crate::config::Config;
use crate::error::ProxyError;
use crate::headers::trace::TraceParent;
use crate::telemetry::Metrics;
use crate::traces::{Kind, Span};
use crate::upstream::Upstream;

/// Bodies the proxy sends back: the upstream's, streamed, or its own small JSON.
pub type ProxyBody = Either<crate::upstream::FilteredBody, Full<Bytes>>;

/// The state requests are served with, swapped whole by a configuration
/// reload: a request loads it once and finishes on it.
pub type Current = arc_swap::ArcSwap<State>;

/// Everything a request needs, shared by all connections: one generation of
/// the configuration and what it built (`crate::generation`).
pub struct State {
    pub config: Config,
    /// Identity stripping for request trailers (built once from the config).
    pub strip_rule: Arc<crate::upstream::StripRule>,
    pub line: Arc<LineClient>,
    /// Present when some route has `auth = "id_token"`.
    pub id_tokens: Option<IdTokenVerifier>,
    pub nonces: Option<Nonces>,
    pub cache: Arc<VerdictCache>,
    /// In local ID-token mode: LINE's key set, kept fresh in the background.
    pub jwks: Option<Arc<crate::auth::jwks::Jwks>>,
    /// The process's (`[upstream]` changes need a restart).
    pub upstream: Arc<Upstream>,
    /// With `[assertion]`: signs what valid verdicts carry upstream.
    pub signer: Option<Arc<crate::assertion::Signer>>,
    pub metrics: Arc<Metrics>,
    /// This configuration's routes' request-duration series.
    pub route_metrics: crate::telemetry::RouteMetrics,
    /// Per-client budgets and connection counts (`[limits]`).
    pub limits: Arc<crate::limits::Limits>,
    /// The clock of expiring state, connection timers included.
    pub clock: crate::Clock,
    /// Present when a route has `auth = "session"` or `login.enabled`.
    pub sessions: Option<session::Sessions>,
    /// Present when `login.enabled`.
    pub login: Option<login::Login>,
    /// Present when `otel.endpoint` is set (the process's: `[otel]` changes
    /// need a restart).
    pub traces: Option<Arc<crate::traces::Traces>>,
}

/// The nonce endpoint and its store.
pub struct Nonces {
    pub path: String,
    pub store: Arc<NonceStore>,
}

/// hyper's entry point: never fails; every error becomes the proxy's own answer.
pub async fn handle(state: Arc<State>, conn: ConnInfo, req: Request<Incoming>) -> Result<Response<Answer>, Infallible> {
    // In flight from here until the answer's body is sent or dropped.
    let busy = conn.activity.begin();
    let mut ctx = RequestCtx::new(&state, &conn, &req);
    let span = request_span(&mut ctx, req.headers());
    let mut response = match span.scope(pipeline(&mut ctx, req)).await {
        Ok(response) => response,
        Err(err) => fail_to_proxy(&mut ctx, err),
    };
    end_request_span(span, &ctx, response.status());
    let headers = response.headers_mut();
    headers.insert(RequestCtx::request_id_header(), ctx.request_id.clone());
    for cookie in ctx.set_cookies.drain(..) {
        headers.append(header::SET_COOKIE, cookie);
    }
    let log = logging(&ctx, response.status());
    let lease = ctx.upstream_lease.take();
    Ok(response.map(|body| Answer { body, _lease: lease, _busy: busy, log, sent: 0 }))
}

/// The request's span when traces are exported; the trace it is in becomes
/// the request's trace id (the client's, when its parent is accepted).
fn request_span(ctx: &mut RequestCtx<'_>, headers: &http::HeaderMap) -> Span {
    let Some(traces) = &ctx.state.traces else {
        return Span::none();
    };
    // Only a trusted peer (the ingress or mesh) chooses the parent, and with
    // it whether the request is recorded.
    let accept_parent = ctx.conn.trusted && matches!(ctx.trace, TraceParent::Valid(_));
    let (span, trace_id) = traces.request(method_name(&ctx.method), headers, accept_parent);
    ctx.trace = TraceParent::Valid(trace_id);
    // Unsampled (most requests): no span tree, only the decision passed on.
    if !span.is_recording() {
        ctx.unsampled = span;
        return Span::none();
    }
    span
}

/// A method as OpenTelemetry's HTTP conventions name it: one of the known
/// ones, else `_OTHER` (a client's made-up method is no span name).
fn method_name(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The request span's name (`GET /api/`, by route, never the raw path) and
/// what the access line says of the answer.
fn end_request_span(span: Span, ctx: &RequestCtx<'_>, status: StatusCode) {
    if !span.is_recording() {
        return;
    }
    // An own endpoint answers only at its own paths; an unrouted path is
    // anything a client sent (OpenTelemetry: the method alone then).
    let route = match (ctx.endpoint, ctx.route) {
        (true, _) => ctx.path.as_ref().map(|p| p.path()),
        (false, Some(route)) => Some(route.path_prefix.as_str()),
        (false, None) => None,
    };
    let method = method_name(&ctx.method);
    if let Some(route) = route {
        span.set_name(format!("{method} {route}"));
        span.attr("http.route", route);
    }
    span.attr("http.request.method", method);
    span.attr("line_auth_proxy.route", &ctx.state.route_metrics.route_label(route_slot(ctx)));
    span.attr_int("http.response.status_code", i64::from(status.as_u16()));
    span.attr("client.address", &ctx.client.to_string());
    span.attr("line_auth_proxy.outcome", ctx.outcome.as_str());
    span.attr("line_auth_proxy.auth", ctx.auth.as_str());
    if let Ok(id) = ctx.request_id.to_str() {
        span.attr("line_auth_proxy.request_id", id);
    }
    if let Some(reason) = ctx.reason {
        span.attr("line_auth_proxy.reason", reason);
    }
    if status.is_server_error() {
        span.error(ctx.reason.unwrap_or("server_error"));
    }
}

/// What hyper sends: the answer's body, holding its request in flight (for
/// `server.idle_timeout_ms`) until the body is done or dropped, and its
/// access line until then.
pub struct Answer {
    body: ProxyBody,
    /// Dropped after the body (fields drop in order): the upstream
    /// connection is given back once its answer is read or abandoned.
    _lease: Option<crate::upstream::Lease>,
    _busy: crate::activity::Busy,
    log: Option<access::AccessRecord>,
    /// Data bytes of the body sent so far.
    sent: u64,
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.write(self.sent);
        }
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = <ProxyBody as http_body::Body>::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.sent += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The phases, in order.
async fn pipeline(ctx: &mut RequestCtx<'_>, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
    request::bound_head(ctx, &req)?;
    let path = request::normalise(ctx, &req)?;
    // Until routing, an answer (or an error) is one of the proxy's own endpoints'.
    ctx.endpoint = true;
    if let Some(answer) = nonce_endpoint::own_endpoints(ctx, &req, &path).await? {
        return Ok(answer);
    }
    if let Some(sessions) = &ctx.state.sessions
        && path.path() == sessions.config.exchange_path
    {
        return session::exchange(ctx, &req, sessions).await;
    }
    if let Some(answer) = login::endpoints(ctx, &req, &path).await? {
        return Ok(answer);
    }
    ctx.endpoint = false;
    if let Some(own) = forward_auth::endpoint(ctx, &path) {
        return forward_auth::check(ctx, req, own, &path).await;
    }
    request::strip_identity(ctx, &mut req);
    let policy = request::route(ctx, &req, &path);
    let verdict = authenticate::authenticate(ctx, &req, policy).await?;
    ctx.note_user(verdict.as_ref());
    let (mut req, upgrade) = forward::upstream_request(ctx, req, path, verdict)?;
    ctx.request_body = req.body().progress();
    // Exporting, the proxy is the upstream's parent.
    let span = Span::child("upstream", Kind::Client);
    if span.is_some() {
        span.inject(req.headers_mut());
    } else {
        ctx.unsampled.inject(req.headers_mut());
    }
    let started = crate::clock::Stopwatch::start();
    let response = forward::forward(ctx, req, upgrade.is_some()).await;
    ctx.upstream_latency = Some(started.elapsed());
    match &response {
        Ok(answer) => span.attr_int("http.response.status_code", i64::from(answer.status().as_u16())),
        Err(err) => span.error(err.reason()),
    }
    span.end();
    forward::respond(ctx, response?, upgrade)
}

/// What a page may read of the proxy's own answers (`cors_allow_origins`).
const EXPOSED: &str = "WWW-Authenticate, Retry-After, X-Request-Id";
const EXPOSED_TO_GRPC_WEB: &str = "WWW-Authenticate, Retry-After, X-Request-Id, grpc-status, grpc-message";

/// The one place an error becomes the proxy's answer: the status and body, the
/// outcome label, the refusal counter by reason, and the log's reason field.
fn fail_to_proxy(ctx: &mut RequestCtx<'_>, err: ProxyError) -> Response<ProxyBody> {
    let class = err.class();
    let reason = err.reason();
    ctx.outcome = class.outcome;
    ctx.reason = Some(reason);
    if let Some(refusal) = class.refusal {
        ctx.state.metrics.count_refusal(refusal, reason);
    }
    let mut response = if let Some(content_type) = &ctx.grpc {
        ctx.grpc_status = Some(err.grpc_status());
        err.into_grpc_response(content_type.clone())
    } else if let (true, Some(login)) = (ctx.html, &ctx.state.login) {
        err.into_html_response(&login.config.path)
    } else {
        err.into_response()
    };
    // A browser app may read the answer (tell "log in again" from "retry
    // later") when its origin is one the route names.
    if let (Some(route), Some(origin)) = (ctx.route, &ctx.origin)
        && route.allows_origin(origin.as_bytes())
    {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        // A gRPC-Web page reads the status from the headers.
        let exposed = if ctx.grpc.is_some() { EXPOSED_TO_GRPC_WEB } else { EXPOSED };
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(exposed));
    }
    response.map(Either::Right)
}

/// The request's route for the metrics and the log lines (see
/// [`crate::telemetry::RouteMetrics::observe_request`]).
fn route_slot(ctx: &RequestCtx<'_>) -> usize {
    match ctx.route {
        _ if ctx.endpoint => 0,
        None => 1,
        Some(route) => {
            let routes = ctx.state.config.routes.routes();
            2 + routes.iter().position(|r| std::ptr::eq(r, route)).unwrap_or(usize::MAX - 2)
        }
    }
}

/// Every request: one count by outcome, its time by route, and the record
/// of its access line (target `access`), written when its body is done.
fn logging(ctx: &RequestCtx<'_>, status: StatusCode) -> Option<access::AccessRecord> {
    let mode = if ctx.forward_auth {
        ctx.state.metrics.count_forward_auth(ctx.outcome, ctx.auth.as_str());
        "forward_auth"
    } else {
        ctx.state.metrics.count_request(ctx.outcome, ctx.auth.as_str());
        "proxy"
    };
    let route_slot = route_slot(ctx);
    let metrics = &ctx.state.route_metrics;
    metrics.observe_request(route_slot, status.as_u16(), ctx.stopwatch.elapsed().as_secs_f64());
    let route = metrics.route_label(route_slot);
    audit::record(ctx, status.as_u16(), &route);
    access::AccessRecord::of(ctx, status.as_u16(), mode, route)
}
