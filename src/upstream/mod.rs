//! The upstream side: a pooled hyper-util client speaking HTTP/1.1, h2c (prior
//! knowledge, for gRPC backends) or, to an `https://` upstream, whatever ALPN
//! settles; the rewrite to the authorised path; the connect and response-head
//! timeouts; and failures named for what they are (unreachable, timed out, or
//! not speaking the protocol we speak).
//!
//! Pipeline position: last. The request arriving here is already stripped of
//! client identity and hop-by-hop headers and carries the injected identity.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::clock::Stopwatch;
use crate::config::{UpstreamConfig, UpstreamProtocol};
use crate::error::UpstreamError;
use crate::telemetry::Metrics;
pub use body::{BodyProgress, FilteredBody, StripRule, UpstreamBody};

mod body;

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
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(POOL_IDLE_TIMEOUT).pool_timer(TokioTimer::new()).timer(TokioTimer::new());
        if wire == Wire::H2c {
            builder.http2_only(true);
        }
        Self {
            client: builder.build(https),
            scheme: config.scheme.clone(),
            authority: config.authority.clone(),
            wire,
            timeout: config.keys.timeout_ms.duration(),
        }
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
    pub async fn send(&self, req: Request<UpstreamBody>, metrics: &Metrics) -> Result<Response<Incoming>, SendFailure> {
        let client_failed = req.body().progress();
        let stopwatch = Stopwatch::start();
        let result = tokio::time::timeout(self.timeout, self.client.request(req)).await;
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
                let failure = classify(&e);
                let source = std::error::Error::source(&e);
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
            Ok(Ok(response)) => {
                metrics.count_upstream_response(response.status().as_u16());
                Ok(response)
            }
        }
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

/// A connection that could not be made (or was reset) is `Unreachable`; an
/// answer that is not the protocol we speak — HTTP/1.1 bytes to our h2c
/// preface, an h2 server's frames to our HTTP/1.1 request, a malformed head —
/// is `Protocol`: the fix is `upstream.protocol`, not the network.
fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() {
        return UpstreamError::Unreachable;
    }
    let mut source = std::error::Error::source(e);
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
