//! The forward-auth endpoint (`[forward_auth]`): an ingress (nginx
//! `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`, Envoy
//! `ext_authz`) asks here before it forwards a request itself. The same strip,
//! route policy, verification, cache and coalescing as the proxy path run on
//! the *original* request, and the answer is 200 with the identity headers in
//! the response (and the assertion when enabled), or the proxy's own 401/503
//! answers. Nothing is ever forwarded from here.
//!
//! The original method and URI are believed only from a peer in
//! `server.trusted_proxies`: `X-Forwarded-Method` / `X-Forwarded-Uri`
//! (Traefik, Caddy), else `X-Original-Method` / `X-Original-URI` (nginx), else,
//! for Envoy's `path_prefix`, the path after `forward_auth.path` with the
//! request's own method. From any other peer, or without any of these, the
//! strictest policy applies: a credential is required.

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::{ProxyBody, RequestCtx, authenticate, forward, request};
use crate::cache::Stored;
use crate::error::{ClientError, ProxyError};
use crate::routes::{DEFAULT_POLICY, PathError, Policy};
use crate::telemetry::Outcome;

/// The forward-auth endpoint's path, when `path` is it (or, for Envoy's
/// `path_prefix`, lies under it).
pub fn endpoint<'c>(ctx: &RequestCtx<'c>, path: &PathAndQuery) -> Option<&'c str> {
    let own = ctx.state.config.forward_auth.as_ref()?.path.as_str();
    let p = path.path();
    (p == own || p.strip_prefix(own).is_some_and(|rest| rest.starts_with('/'))).then_some(own)
}

/// Answers one forward-auth check.
pub async fn check(
    ctx: &mut RequestCtx<'_>,
    mut req: Request<Incoming>,
    own: &str,
    path: &PathAndQuery,
) -> Result<Response<ProxyBody>, ProxyError> {
    ctx.forward_auth = true;
    request::strip_identity(ctx, &mut req);
    let policy = match original(ctx, &req, own, path)? {
        Some((method, target)) => {
            ctx.method = method.clone();
            ctx.path = Some(target.clone());
            let announces_body = request::announces_body(req.headers());
            request::route_for(ctx, &method, req.headers(), &target, announces_body)
        }
        None => strictest(ctx),
    };
    let verdict = authenticate::authenticate(ctx, &req, policy).await?;
    ctx.note_user(verdict.as_ref());
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    if let Some(cached) = &verdict {
        let Stored::Valid(encoded) = &*cached.stored else {
            return Err(ProxyError::Internal("a rejected verdict reached injection"));
        };
        forward::inject_identity(ctx, encoded, response.headers_mut());
    }
    if ctx.outcome == Outcome::Forwarded {
        ctx.outcome = Outcome::Allowed;
    }
    Ok(response)
}

/// The default route's policy: a credential required.
fn strictest(ctx: &mut RequestCtx<'_>) -> Policy {
    ctx.auth = DEFAULT_POLICY.auth;
    ctx.route = None;
    DEFAULT_POLICY
}

/// The original method and normalised URI a trusted ingress names, if any.
///
/// Every source present must agree: an ingress that sets one family of
/// headers passes the client's other family on (nginx passes a client's
/// `X-Forwarded-Uri` to the check while it sets `X-Original-URI`; Caddy and
/// Traefik pass a client's `X-Original-URI`), and one that appends passes the
/// client's copy first. Two paths or two methods that differ are a 400
/// `ambiguous_forwarded_request`, never a choice of one.
fn original(
    ctx: &RequestCtx<'_>,
    req: &Request<Incoming>,
    own: &str,
    path: &PathAndQuery,
) -> Result<Option<(Method, PathAndQuery)>, ProxyError> {
    if !ctx.conn.trusted {
        return Ok(None);
    }
    let headers = req.headers();
    let named = |name: &'static str| headers.get_all(name).into_iter();
    let suffix = envoy_suffix(own, path)?;
    let mut uris =
        named("x-forwarded-uri").chain(named("x-original-uri")).map(|v| target(v.as_bytes())).chain(suffix.map(Ok));
    let Some(uri) = uris.next().transpose()? else {
        return Ok(None);
    };
    for other in uris {
        if other?.path() != uri.path() {
            return Err(ProxyError::Client(ClientError::AmbiguousForwarded));
        }
    }
    let mut methods = named("x-forwarded-method").chain(named("x-original-method")).map(|m| parse_method(m.as_bytes()));
    let method = methods.next().transpose()?;
    for other in methods {
        if Some(other?) != method {
            return Err(ProxyError::Client(ClientError::AmbiguousForwarded));
        }
    }
    Ok(Some((method.unwrap_or_else(|| req.method().clone()), uri)))
}

/// Envoy `ext_authz` with `path_prefix`: the original path after
/// `forward_auth.path`, its query following. The path was normalised whole,
/// so its tail is too.
fn envoy_suffix(own: &str, path: &PathAndQuery) -> Result<Option<PathAndQuery>, ProxyError> {
    let Some(rest) = path.path().strip_prefix(own).filter(|rest| !rest.is_empty()) else {
        return Ok(None);
    };
    let with_query = match path.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    PathAndQuery::try_from(with_query).map(Some).map_err(|_| bad(PathError::BadEscape))
}

/// A forwarded URI, normalised exactly like a request line.
fn target(raw: &[u8]) -> Result<PathAndQuery, ProxyError> {
    let uri = Uri::try_from(raw).map_err(|_| bad(PathError::BadEscape))?;
    if uri.path().is_empty() || !uri.path().starts_with('/') {
        return Err(bad(PathError::NotOriginForm));
    }
    request::normalised_path_and_query(&uri).map_err(bad)
}

fn parse_method(raw: &[u8]) -> Result<Method, ProxyError> {
    Method::from_bytes(raw).map_err(|_| ProxyError::Client(ClientError::BadForwardedMethod))
}

fn bad(e: PathError) -> ProxyError {
    ProxyError::Client(ClientError::BadPath(e))
}
