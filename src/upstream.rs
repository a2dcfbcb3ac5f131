//! The upstream side: a pooled hyper-util client, the rewrite to the authorised
//! path and to HTTP/1.1, and the connect and response-head timeouts.
//!
//! Pipeline position: last. The request arriving here is already stripped of
//! client identity and hop-by-hop headers and carries the injected identity.

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
use crate::config::UpstreamConfig;
use crate::error::UpstreamError;
use crate::telemetry::Metrics;

/// Idle pooled connections are closed after this long (90 seconds).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Incoming>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    timeout: Duration,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.keys.connect_timeout_ms.duration()));
        http.set_nodelay(true);
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(https);
        Self {
            client,
            scheme: config.scheme.clone(),
            authority: config.authority.clone(),
            timeout: config.keys.timeout_ms.duration(),
        }
    }

    /// Points the request at the upstream with the authorised path, as HTTP/1.1,
    /// keeping the client's `Host` (or `:authority`).
    pub fn prepare(&self, req: &mut Request<Incoming>, path: PathAndQuery) {
        let original_authority = req.uri().authority().cloned();
        let was_http2 = req.version() == Version::HTTP_2;
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .expect("scheme, authority and path are each valid");
        *req.uri_mut() = uri;
        // The pooled client speaks HTTP/1.1 to the upstream whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        // RFC 9112 §3.2.2 / RFC 9113 §8.3.1: an absolute-form target's authority
        // or h2's `:authority` is the host; it replaces any Host field.
        if let Some(authority) = &original_authority
            && let Ok(v) = HeaderValue::from_str(authority.as_str())
        {
            headers.insert(header::HOST, v);
        }
        if was_http2 {
            join_cookies(headers);
        }
    }

    /// Sends the request; 502 when the upstream cannot be reached, 504 when its
    /// response head does not arrive within `upstream.timeout_ms`.
    pub async fn send(&self, req: Request<Incoming>, metrics: &Metrics) -> Result<Response<Incoming>, UpstreamError> {
        let stopwatch = Stopwatch::start();
        let result = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        metrics.upstream_duration.observe(stopwatch.seconds());
        match result {
            Err(_) => {
                tracing::warn!(timeout_ms = self.timeout.as_millis() as u64, "upstream did not answer in time");
                Err(UpstreamError::Timeout)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "upstream request failed");
                Err(UpstreamError::Unreachable)
            }
            Ok(Ok(response)) => {
                metrics.count_upstream_response(response.status().as_u16());
                Ok(response)
            }
        }
    }
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
