//! The upstream side: an HTTP/1.1 client connection's own upstream connection
//! ([`dedicated`]) or a pooled hyper-util client speaking HTTP/1.1, h2c (prior
//! knowledge, for gRPC backends) or, to an `https://` upstream, whatever ALPN
//! settles; at most `upstream.max_idle_connections` idle connections; the rewrite to the authorised path; the connect and response-head
//! timeouts; and failures named for what they are (unreachable, timed out, or
//! not speaking the protocol we speak).
//!
//! Pipeline position: last. The request arriving here is already stripped of
//! client identity and hop-by-hop headers and carries the injected identity.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::clock::Stopwatch;
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::error::UpstreamError;
use crate::telemetry::Metrics;
pub use body::{BodyProgress, FilteredBody, StripRule, UpstreamBody};
pub use dedicated::{Dedicated, IdleBudget, Lease};

mod body;
mod dedicated;

/// Idle pooled connections are closed after this long (90 seconds).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How requests reach the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
    /// TLS, h2 or HTTP/1.1 by ALPN.
    Alpn,
}

pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    wire: Wire,
    timeout: Duration,
    connect_timeout: Duration,
    /// The idle connections client connections keep (the pool keeps as
    /// many again at most, for HTTP/2 clients and upgrades).
    budget: Arc<IdleBudget>,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        let wire = match (config.scheme == http::uri::Scheme::HTTPS, config.keys.protocol) {
            (true, _) => Wire::Alpn,
            (false, UpstreamProtocol::Http1) => Wire::Http1,
            (false, UpstreamProtocol::H2c) => Wire::H2c,
        };
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.keys.connect_timeout_ms.duration()));
        http.set_nodelay(true);
        http.enforce_http(false);
        let tls = hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots().https_or_http();
        let https = match wire {
            Wire::Http1 => tls.enable_http1().wrap_connector(http),
            Wire::H2c | Wire::Alpn => tls.enable_all_versions().wrap_connector(http),
        };
        let max_idle = config.keys.max_idle_connections.get();
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        if wire == Wire::H2c {
            builder.http2_only(true);
        }
        Self {
            client: builder.build(https),
            scheme: config.scheme.clone(),
            authority: config.authority.clone(),
            wire,
            timeout: config.keys.timeout_ms.duration(),
            connect_timeout: config.keys.connect_timeout_ms.duration(),
            budget: IdleBudget::new(max_idle),
        }
    }

    /// A client connection's own upstream connection, for an HTTP/1.1 client
    /// of a plain HTTP/1.1 upstream (`None`: every request goes through the pool).
    pub fn dedicated_for(&self, client_http2: bool) -> Option<Arc<Dedicated>> {
        (self.wire == Wire::Http1 && !client_http2).then(|| Dedicated::new(self.budget.clone()))
    }

    /// Points the request at the upstream with the authorised path. HTTP/1.1
    /// upstreams keep the client's `Host` (or `:authority`); an h2c upstream gets
    /// the upstream's authority as `:authority` and no `Host` (RFC 9113 §8.3.1:
    /// the two must not differ); the client's host is in `X-Forwarded-Host`.
    pub fn prepare(&self, req: &mut Request<UpstreamBody>, path: PathAndQuery) {
        let original_authority = req.uri().authority().cloned();
        let was_http2 = req.version() == Version::HTTP_2;
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .expect("scheme, authority and path are each valid");
        *req.uri_mut() = uri;
        *req.version_mut() = if self.wire == Wire::H2c { Version::HTTP_2 } else { Version::HTTP_11 };
        let headers = req.headers_mut();
        // RFC 9112 §3.2.2 / RFC 9113 §8.3.1: an absolute-form target's authority
        // or h2's `:authority` is the host; it replaces any Host field.
        if let Some(authority) = &original_authority
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, v);
        }
        if was_http2 && self.wire != Wire::H2c {
            join_cookies(headers);
        }
        // hyper sends a GET, HEAD or CONNECT body of unknown length as no body
        // at all ("they almost never have one"); the client's chunked GET body
        // would vanish. Declared chunked, it goes on whatever the method.
        // (Other methods hyper chunks itself; an ALPN upstream that settles on
        // h2 has the field dropped by hyper, with a warning, for these rare ones.)
        let body = req.body();
        use http_body::Body as _;
        if self.wire != Wire::H2c
            && matches!(*req.method(), http::Method::GET | http::Method::HEAD)
            && !body.is_end_stream()
            && body.size_hint().exact().is_none()
            && !req.headers().contains_key(header::CONTENT_LENGTH)
        {
            req.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
    }

    /// After `prepare` and the forwarding headers: what an h2c upstream must not get.
    pub fn finish(&self, req: &mut Request<UpstreamBody>) {
        if self.wire == Wire::H2c {
            req.headers_mut().remove(header::HOST);
        }
    }

    /// Sends the request; 502 when the upstream cannot be reached or does not
    /// speak our protocol, 504 when its response head does not arrive within
    /// `upstream.timeout_ms`.
    ///
    /// With `via`, the request goes on the client connection's own upstream
    /// connection, and the [`Lease`] returned gives it back when the answer's
    /// body is done; without, through the pool.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        via: Option<&Arc<Dedicated>>,
        metrics: &Metrics,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendFailure> {
        let client_failed = req.body().progress();
        let stopwatch = Stopwatch::start();
        let result = match via {
            Some(dedicated) => tokio::time::timeout(self.timeout, self.send_dedicated(req, dedicated)).await,
            None => {
                tokio::time::timeout(self.timeout, async {
                    self.client.request(req).await.map(|r| (r, None)).map_err(Failed::Pool)
                })
                .await
            }
        };
        metrics.upstream_duration.observe(stopwatch.seconds());
        match result {
            Err(_) => {
                tracing::warn!(timeout_ms = self.timeout.as_millis() as u64, "upstream did not answer in time");
                Err(SendFailure::Upstream(UpstreamError::Timeout))
            }
            Ok(Err(_)) if client_failed.is_some_and(|p| p.failed.load(Ordering::Acquire)) => {
                tracing::debug!("the client's request body failed while it was forwarded");
                Err(SendFailure::ClientBody)
            }
            Ok(Err(e)) => {
                let failure = e.classify();
                let source = e.source();
                match failure {
                    UpstreamError::Protocol => tracing::warn!(
                        error = %e,
                        source = ?source,
                        protocol = self.protocol_name(),
                        "upstream does not speak the protocol the proxy speaks to it (upstream.protocol)"
                    ),
                    _ => tracing::warn!(error = %e, source = ?source, "upstream request failed"),
                }
                Err(SendFailure::Upstream(failure))
            }
            Ok(Ok((response, lease))) => {
                metrics.count_upstream_response(response.status().as_u16());
                Ok((response, lease))
            }
        }
    }

    /// On the client connection's upstream connection: the idle one, or a
    /// new one when there is none, it was closed, or the upstream closed it
    /// just as the request was about to go (the request was not sent; hyper
    /// gives it back and it goes on a new connection).
    async fn send_dedicated(
        &self,
        mut req: Request<UpstreamBody>,
        dedicated: &Arc<Dedicated>,
    ) -> Result<(Response<Incoming>, Option<Lease>), Failed> {
        // What the pool does for HTTP/1.1: the origin-form target (an
        // absolute-form one is for proxies, and many servers route it as a
        // path), and a `Host` when the client (HTTP/1.0) sent none.
        let origin_form = req.uri().path_and_query().cloned().map(Uri::from);
        if let Some(uri) = origin_form {
            *req.uri_mut() = uri;
        }
        if !req.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(self.authority.as_str())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        if let Some(mut sender) = dedicated.take()
            && sender.ready().await.is_ok()
        {
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, Some(Lease::new(sender, dedicated)))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(Failed::Send(e.into_error())),
                },
            }
        }
        let stream = self.connect().await.map_err(Failed::Connect)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(Failed::Send)?;
        dedicated.install(conn);
        let response = sender.send_request(req).await.map_err(Failed::Send)?;
        Ok((response, Some(Lease::new(sender, dedicated))))
    }

    /// A TCP connection to the upstream within `upstream.connect_timeout_ms`,
    /// trying each address its host resolves to in turn.
    async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        let host = self.authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = self.authority.port_u16().unwrap_or(80);
        let attempt = async {
            let mut last = None;
            for addr in tokio::net::lookup_host((host, port)).await? {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(stream) => {
                        stream.set_nodelay(true)?;
                        return Ok(stream);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
        };
        tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")))
    }

    fn protocol_name(&self) -> &'static str {
        match self.wire {
            Wire::Http1 => "http1",
            Wire::H2c => "h2c",
            Wire::Alpn => "https (ALPN)",
        }
    }
}

/// Why a request was not answered by the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFailure {
    Upstream(UpstreamError),
    /// The client's own body failed while it was being sent: the client's
    /// error (400), never counted against the upstream.
    ClientBody,
}

/// What went wrong on the way to the upstream, by path.
#[derive(Debug)]
enum Failed {
    Pool(hyper_util::client::legacy::Error),
    Connect(std::io::Error),
    Send(hyper::Error),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Pool(e) => e.fmt(f),
            Failed::Connect(e) => write!(f, "connect: {e}"),
            Failed::Send(e) => e.fmt(f),
        }
    }
}

impl Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Failed::Pool(e) => std::error::Error::source(e),
            Failed::Connect(_) => None,
            Failed::Send(e) => std::error::Error::source(e),
        }
    }

    /// A connection that could not be made (or was reset) is `Unreachable`;
    /// an answer that is not the protocol we speak — HTTP/1.1 bytes to our
    /// h2c preface, an h2 server's frames to our HTTP/1.1 request, a
    /// malformed head — is `Protocol`: the fix is `upstream.protocol`, not
    /// the network.
    fn classify(&self) -> UpstreamError {
        match self {
            Failed::Pool(e) if e.is_connect() => UpstreamError::Unreachable,
            Failed::Pool(e) => classify_chain(std::error::Error::source(e)),
            Failed::Connect(_) => UpstreamError::Unreachable,
            Failed::Send(e) => classify_chain(Some(e)),
        }
    }
}

/// The first hyper or h2 error in a chain of sources says which failure it is.
fn classify_chain(mut source: Option<&(dyn std::error::Error + 'static)>) -> UpstreamError {
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && (h.is_parse() || h.is_parse_status() || h.is_parse_version_h2())
        {
            return UpstreamError::Protocol;
        }
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            // The peer broke the HTTP/2 framing (what an HTTP/1.1 server's answer
            // to the preface looks like), rather than reset one stream.
            return if h2.is_io() || h2.is_remote() && h2.reason() != Some(h2::Reason::PROTOCOL_ERROR) {
                UpstreamError::Unreachable
            } else {
                UpstreamError::Protocol
            };
        }
        source = s.source();
    }
    UpstreamError::Unreachable
}

/// HTTP/2 may split `cookie` into several fields; HTTP/1.1 wants one, joined
/// with `"; "` (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_cookie_fields_are_joined() {
        let mut h = http::HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
    }
}
