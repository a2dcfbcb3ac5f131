//! The phases that read the request as it arrived: its size, its path, the
//! identity headers it must not carry, and the route policy it falls under.

use std::borrow::Cow;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Uri};

use super::RequestCtx;
use crate::error::{ClientError, ProxyError};
use crate::headers;
use crate::routes::{self, PathError, Policy};

/// Approximate bytes of `": "` and CRLF around each header line.
const HEADER_LINE_OVERHEAD: usize = 4;

/// Phase 1: request line plus headers within `server.max_header_bytes` (431).
pub fn bound_head<B>(ctx: &mut RequestCtx<'_>, req: &Request<B>) -> Result<(), ProxyError> {
    if head_bytes(req) > ctx.state.config.server.keys.max_header_bytes.get() {
        // The 431 is the proxy's own answer on the route the path falls under:
        // its CORS headers too (the request is never routed further).
        if let Ok(path) = normalised_path_and_query(req.uri()) {
            let routes = &ctx.state.config.routes;
            ctx.route = routes.route(&routes.policy(req.method(), path.path(), None));
        }
        return Err(ProxyError::Client(ClientError::HeadersTooLarge));
    }
    if !host_is_sound(req) {
        return Err(ProxyError::Client(ClientError::BadHost));
    }
    Ok(())
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`; no request has
/// two, or one that is not `host[:port]`. (HTTP/2 carries `:authority`, and
/// HTTP/1.0 may omit it.) Two hosts would let the proxy and the upstream
/// disagree about which site was asked for.
fn host_is_sound<B>(req: &Request<B>) -> bool {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => req.version() != http::Version::HTTP_11,
        (Some(host), None) => http::uri::Authority::try_from(host.as_bytes()).is_ok_and(|a| !a.as_str().contains('@')),
        (Some(_), Some(_)) => false,
    }
}

/// Phase 2: the normalised path with the original query — what routing decides
/// on and what the upstream will receive (400 for what cannot be normalised).
pub fn normalise<B>(ctx: &mut RequestCtx<'_>, req: &Request<B>) -> Result<PathAndQuery, ProxyError> {
    let path = normalised_path_and_query(req.uri()).map_err(|e| ProxyError::Client(ClientError::BadPath(e)))?;
    ctx.path = Some(path.clone());
    Ok(path)
}

/// Phase 4: removes every client-sent identity header and the assertion header.
pub fn strip_identity<B>(ctx: &RequestCtx<'_>, req: &mut Request<B>) {
    let identity = &ctx.state.config.identity;
    headers::strip_identity(req.headers_mut(), &identity.names, &identity.assertion_header);
}

/// Phase 5: the policy for this method and normalised path.
pub fn route<B: http_body::Body>(ctx: &mut RequestCtx<'_>, req: &Request<B>, path: &PathAndQuery) -> Policy {
    route_for(ctx, req.method(), req.headers(), path, has_body(req))
}

/// The policy for `method` on `path`, with the request's `headers` deciding
/// whether it is a CORS preflight (one with a body never passes uncredentialed).
pub fn route_for(
    ctx: &mut RequestCtx<'_>,
    method: &Method,
    headers: &http::HeaderMap,
    path: &PathAndQuery,
    with_body: bool,
) -> Policy {
    let preflight_method = (*method == Method::OPTIONS && headers.contains_key(header::ORIGIN) && !with_body)
        .then(|| headers.get(header::ACCESS_CONTROL_REQUEST_METHOD))
        .flatten()
        .map(HeaderValue::as_bytes);
    let routes = &ctx.state.config.routes;
    let policy = routes.policy(method, path.path(), preflight_method);
    ctx.auth = policy.auth;
    ctx.route = routes.route(&policy);
    policy
}

/// A WebSocket handshake (RFC 6455 §4.1): HTTP/1.1 `GET` with `Upgrade:
/// websocket`, `Connection: upgrade` and one `Sec-WebSocket-Key`. Only these
/// are tunnelled; any other `Upgrade` (h2c above all, which would hand the
/// client a raw HTTP/2 connection to the upstream) is dropped as the
/// hop-by-hop header it is.
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    req.version() == http::Version::HTTP_11
        && req.method() == Method::GET
        && headers.get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && headers.get_all(header::SEC_WEBSOCKET_KEY).iter().count() == 1
        && headers::connection_lists(headers, "upgrade")
}

/// Request line plus header bytes, as they stood on the wire (approximately).
fn head_bytes<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    req.headers().iter().fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + HEADER_LINE_OVERHEAD)
}

/// The normalised path with the original query, as the upstream will receive it.
pub fn normalised_path_and_query(uri: &Uri) -> Result<PathAndQuery, PathError> {
    if uri.authority().is_some() && uri.scheme().is_none() {
        // authority-form (CONNECT host:port) is not a request for a path.
        return Err(PathError::NotOriginForm);
    }
    let normal = routes::normalize_path(uri.path())?;
    match (&normal, uri.path_and_query()) {
        (Cow::Borrowed(_), Some(pq)) => Ok(pq.clone()),
        _ => {
            let s = match uri.query() {
                Some(q) => format!("{normal}?{q}"),
                None => normal.into_owned(),
            };
            PathAndQuery::try_from(s).map_err(|_| PathError::BadEscape)
        }
    }
}

/// True when the request has a body: announced (`Content-Length` > 0 or
/// `Transfer-Encoding`), or, as HTTP/2 may send one with neither, a stream
/// that did not end with its headers.
fn has_body<B: http_body::Body>(req: &Request<B>) -> bool {
    announces_body(req.headers()) || !req.body().is_end_stream()
}

/// True when the headers announce a body (`Content-Length` > 0 or `Transfer-Encoding`).
pub fn announces_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_keeps_the_query_and_normalises_the_path() {
        let uri: Uri = "/a//b/../c?x=%2F..&y".parse().unwrap();
        assert_eq!(normalised_path_and_query(&uri).unwrap().as_str(), "/a/c?x=%2F..&y");
        let uri: Uri = "/plain?q=1".parse().unwrap();
        assert_eq!(normalised_path_and_query(&uri).unwrap().as_str(), "/plain?q=1");
        let uri: Uri = "http://example.com/a/./b".parse().unwrap();
        assert_eq!(normalised_path_and_query(&uri).unwrap().as_str(), "/a/b");
        let uri: Uri = "example.com:443".parse().unwrap();
        assert_eq!(normalised_path_and_query(&uri), Err(PathError::NotOriginForm));
    }

    #[test]
    fn head_size_counts_every_header_line() {
        let mut req = Request::get("/x").body(()).unwrap();
        let bare = head_bytes(&req);
        req.headers_mut().insert("x-a", HeaderValue::from_static("12345"));
        assert_eq!(head_bytes(&req), bare + 3 + 5 + HEADER_LINE_OVERHEAD);
    }
}
