//! What one request carries through the pipeline: the connection it came on
//! ([`ConnInfo`], made once per connection by the listener) and the per-request
//! [`RequestCtx`] that each phase reads and fills in, and that the access log and
//! the request metrics are written from at the end.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{Method, Request, Version};
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::State;
use crate::activity::Activity;
use crate::cache::Lookup;
use crate::clock::Stopwatch;
use crate::routes::{Route, RouteAuth};
use crate::telemetry::{Metrics, Outcome};

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
/// A client-sent `X-Request-Id` is kept when it is 1..=128 visible ASCII bytes.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// What the proxy saw of the client connection, handed to every request on it.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's IP as a header value, made once per connection for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
    pub tls: bool,
    /// The peer is in `server.trusted_proxies`: its `X-Forwarded-*` stand.
    pub trusted: bool,
    /// Held by the connection and by any WebSocket tunnel it turns into.
    pub slot: Arc<ConnectionSlot>,
    /// What is in flight on the connection, for its idle and head timers.
    pub activity: Arc<Activity>,
    /// Turns true when the shutdown grace period is over: close now.
    pub closing: watch::Receiver<bool>,
    /// The connection's own upstream connection (an HTTP/1.1 client of an
    /// HTTP/1.1 upstream), driven by the connection's task.
    pub upstream: Option<Arc<crate::upstream::Dedicated>>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        tls: bool,
        trusted: bool,
        slot: ConnectionSlot,
        activity: Arc<Activity>,
        closing: watch::Receiver<bool>,
        upstream: Option<Arc<crate::upstream::Dedicated>>,
    ) -> Self {
        // The canonical form: an IPv4 client of a dual-stack listener is a.b.c.d, not ::ffff:a.b.c.d.
        let ip = peer.ip().to_canonical();
        let peer_ip = HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value");
        Self { peer, peer_ip, tls, trusted, slot: Arc::new(slot), activity, closing, upstream }
    }
}

/// One unit of `server.max_connections`: the semaphore permit, the peer's
/// count in `limits.connections` and the open-connections gauge, all released
/// when the last holder drops it.
pub struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
    /// The peer's share of `limits.connections`, when it is counted.
    _counted: Option<crate::limits::OpenConnection>,
    metrics: Arc<Metrics>,
}

impl ConnectionSlot {
    pub fn new(
        permit: OwnedSemaphorePermit,
        counted: Option<crate::limits::OpenConnection>,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.open_connections.inc();
        Self { _permit: permit, _counted: counted, metrics }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.metrics.open_connections.dec();
    }
}

/// The per-request state the phases share.
pub struct RequestCtx<'a> {
    pub state: &'a State,
    pub conn: &'a ConnInfo,
    pub request_id: HeaderValue,
    pub method: Method,
    /// The client's HTTP version: the answer goes back in it, whatever the upstream spoke.
    pub version: Version,
    /// Who the request is from, for `[limits]` and `X-Real-IP`: the peer, or
    /// behind a trusted proxy the nearest untrusted `X-Forwarded-For` hop.
    pub client: IpAddr,
    pub stopwatch: Stopwatch,
    /// The normalised path and original query, once `normalise` succeeded.
    pub path: Option<PathAndQuery>,
    /// The route's requirement; the default route's until `route` ran.
    pub auth: RouteAuth,
    /// The matched route, once `route` ran (`None`: the default route).
    pub route: Option<&'a Route>,
    /// The request's `Origin`, for the CORS headers of the proxy's own answers.
    pub origin: Option<HeaderValue>,
    /// How the verdict was found, when a credential was checked.
    pub cache: Option<Lookup>,
    pub outcome: Outcome,
    /// The error's reason code, when the proxy answered itself.
    pub reason: Option<&'static str>,
    /// A gRPC call (`content-type: application/grpc…`), answered in gRPC's
    /// terms: the content type of such an answer.
    pub grpc: Option<HeaderValue>,
    /// The `grpc-status` of the proxy's own answer to a gRPC call.
    pub grpc_status: Option<u16>,
    /// A check of the forward-auth endpoint, not a proxied request.
    pub forward_auth: bool,
    /// Answered at one of the proxy's own endpoints (nonce, session
    /// exchange, web login) before routing.
    pub endpoint: bool,
    /// The verified user (a slice of the cached identity) and its hash, for
    /// the access line.
    pub user: Option<(bytes::Bytes, [u8; 16])>,
    /// The upstream's time to its answer's head.
    pub upstream_latency: Option<std::time::Duration>,
    /// The client connection's upstream connection, in use by this request
    /// until its answer's body is done.
    pub upstream_lease: Option<crate::upstream::Lease>,
    /// The request body's passage to the upstream (its bytes).
    pub request_body: Option<Arc<crate::upstream::BodyProgress>>,
    /// The request's `User-Agent`, for the access line.
    pub user_agent: Option<HeaderValue>,
    /// The proxy's own error answers are pages, not JSON (a browser on the
    /// web-login endpoints).
    pub html: bool,
    /// `Set-Cookie` values for the answer, whatever it is (web login clears
    /// its cookies on errors too).
    pub set_cookies: Vec<HeaderValue>,
    /// A decision for the audit stream that the outcome alone does not
    /// name (a session made or ended, a logout), and whom it was about.
    pub audit: Option<crate::audit::Note>,
    /// The client's W3C `traceparent`, for the upstream and the log lines
    /// (when exporting: the trace of the request's span).
    pub trace: crate::headers::trace::TraceParent,
    /// When exporting, a request span that is not recorded: the upstream's
    /// `traceparent` (the sampling decision passed on) without a span tree.
    pub unsampled: crate::traces::Span,
}

impl<'a> RequestCtx<'a> {
    pub fn new<B>(state: &'a State, conn: &'a ConnInfo, req: &Request<B>) -> Self {
        Self {
            state,
            conn,
            request_id: request_id(req, &state.metrics),
            method: req.method().clone(),
            version: req.version(),
            client: if conn.trusted {
                crate::headers::forwarding::client_address(
                    req.headers(),
                    conn.peer.ip(),
                    &state.config.server.trusted_proxies,
                )
            } else {
                conn.peer.ip().to_canonical()
            },
            stopwatch: Stopwatch::start(),
            path: None,
            auth: RouteAuth::AccessToken,
            route: None,
            origin: req.headers().get(http::header::ORIGIN).cloned(),
            cache: None,
            outcome: Outcome::Forwarded,
            reason: None,
            grpc: req.headers().get(http::header::CONTENT_TYPE).and_then(|v| match grpc_kind(v)? {
                Grpc::Http2 => Some(HeaderValue::from_static("application/grpc")),
                // gRPC-Web clients read an answer of their own type only.
                Grpc::Web => Some(v.clone()),
            }),
            grpc_status: None,
            forward_auth: false,
            endpoint: false,
            user: None,
            upstream_latency: None,
            upstream_lease: None,
            request_body: None,
            user_agent: req.headers().get(http::header::USER_AGENT).cloned(),
            html: false,
            set_cookies: Vec::new(),
            audit: None,
            trace: crate::headers::trace::TraceParent::of(req.headers()),
            unsampled: crate::traces::Span::none(),
        }
    }

    /// Keeps the verified user of `verdict` for the access line.
    pub fn note_user(&mut self, verdict: Option<&crate::cache::Cached>) {
        if let Some(crate::cache::Stored::Valid(identity)) = verdict.map(|v| &*v.stored) {
            self.user = Some((identity.user_id(), identity.user_hash));
        }
    }

    pub fn request_id_header() -> &'static http::HeaderName {
        &X_REQUEST_ID
    }
}

/// The two ways a gRPC call comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grpc {
    /// `application/grpc`, `application/grpc+proto`, …: trailers as HTTP trailers.
    Http2,
    /// `application/grpc-web`, `application/grpc-web-text+proto`, …: trailers in the body.
    Web,
}

/// The kind of gRPC a `content-type` names, if any (media types are
/// case-insensitive; `application/grpcx` is not gRPC).
pub fn grpc_kind(content_type: &HeaderValue) -> Option<Grpc> {
    let value = content_type.to_str().ok()?.trim_start().to_ascii_lowercase();
    let rest = value.strip_prefix("application/grpc")?;
    let ends = |rest: &str| rest.is_empty() || rest.starts_with(['+', ';', ' ']);
    if ends(rest) {
        return Some(Grpc::Http2);
    }
    let web = rest.strip_prefix("-web")?;
    (ends(web) || web.strip_prefix("-text").is_some_and(ends)).then_some(Grpc::Web)
}

/// The client's `X-Request-Id` when it is sane, else a fresh one.
fn request_id<B>(req: &Request<B>, metrics: &Metrics) -> HeaderValue {
    if let Some(v) = req.headers().get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= MAX_REQUEST_ID_BYTES
        && v.as_bytes().iter().all(u8::is_ascii_graphic)
    {
        return v.clone();
    }
    fresh_request_id(metrics.next_request_id())
}

/// Ids cut from blocks of this many bytes (64 ids of 16 hex digits). Small,
/// because a block lives as long as its last id: an HTTP/2 connection's HPACK
/// table keeps recent `X-Request-Id` values (about 60 in its 4 KiB), which
/// with 16 KiB blocks could pin a megabyte per connection.
const REQUEST_ID_BLOCK: usize = 1024;

thread_local! {
    /// The block fresh request ids are written into: one allocation per
    /// 64 ids instead of one per request (each id shares the block, which
    /// is freed when its last id is).
    static REQUEST_IDS: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

/// `n` as 16 lower-case hex digits.
fn fresh_request_id(n: u64) -> HeaderValue {
    let hex = crate::headers::lower_hex::<16>(&n.to_be_bytes());
    let id = REQUEST_IDS.with_borrow_mut(|block| {
        if block.capacity() < hex.len() {
            *block = bytes::BytesMut::with_capacity(REQUEST_ID_BLOCK);
        }
        block.extend_from_slice(&hex);
        block.split().freeze()
    });
    HeaderValue::from_maybe_shared(id).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_request_ids_are_16_hex_digits_each_its_own() {
        let ids: Vec<HeaderValue> = (0..3000u64).map(|n| fresh_request_id(n * 0x0101_0101_0101)).collect();
        assert_eq!(ids[0], "0000000000000000");
        assert_eq!(ids[1], "0000010101010101");
        assert_eq!(ids[2999], format!("{:016x}", 2999u64 * 0x0101_0101_0101));
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(id.to_str().unwrap(), format!("{:016x}", n as u64 * 0x0101_0101_0101));
        }
    }

    #[test]
    fn grpc_content_types_are_told_apart() {
        for (value, kind) in [
            ("application/grpc", Some(Grpc::Http2)),
            ("application/grpc+proto", Some(Grpc::Http2)),
            ("Application/GRPC; charset=utf-8", Some(Grpc::Http2)),
            ("application/grpc-web", Some(Grpc::Web)),
            ("application/grpc-web+proto", Some(Grpc::Web)),
            ("application/grpc-web-text", Some(Grpc::Web)),
            ("application/grpc-web-text+proto", Some(Grpc::Web)),
            ("application/grpcx", None),
            ("application/grpc-webx", None),
            ("application/json", None),
        ] {
            assert_eq!(grpc_kind(&HeaderValue::from_static(value)), kind, "{value}");
        }
    }
}
