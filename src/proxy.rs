//! The per-request pipeline, one named phase after another:
//!
//! 1. `bound_head`       — request line + headers within `server.max_header_bytes` (431)
//! 2. `normalise`        — the path routing and the upstream will both see (400)
//! 3. `strip_identity`   — every client-sent identity header, on every route
//! 4. `route`            — the policy for (method, normalised path)
//! 5. `authenticate`     — bearer token → verdict via cache / LINE (401, 503)
//! 6. `upstream_request` — hop-by-hop removal, `Authorization` removal, identity injection
//! 7. `forward`          — to the upstream (502, 504), tunnelling an authenticated upgrade
//! 8. `respond`          — hop-by-hop removal on the way back, `X-Request-Id`, access log
//!
//! A request that fails any phase is answered by the proxy and never forwarded.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::auth::credential::{MAX_TOKEN_BYTES, bearer_token};
use crate::auth::id_token::{self, IdClaims, IdTokenVerifier, MAX_ID_TOKEN_BYTES};
use crate::auth::line::{AccessTokenVerdict, LineClient, LineError};
use crate::auth::nonce::{Consumed, NonceStore};
use crate::auth::{Rejection, Verdict};
use crate::cache::{CacheKey, Cached, CredentialKind, Lookup, Stored, VerdictCache, cache_key};
use crate::config::Config;
use crate::error::{ClientError, ProxyError, UpstreamError};
use crate::headers;
use crate::routes::{self, RouteAuth};
use crate::server::{ConnInfo, ConnectionSlot};
use crate::telemetry::{Metrics, ReasonLabels};
use crate::upstream::Upstream;

/// Bodies the proxy sends back: the upstream's, streamed, or its own small JSON.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// A client-sent `X-Request-Id` is kept when it is 1..=128 visible ASCII bytes.
const MAX_REQUEST_ID_BYTES: usize = 128;
/// Approximate bytes of `": "` and CRLF around each header line.
const HEADER_LINE_OVERHEAD: usize = 4;

/// Everything a request needs, shared by all connections.
pub struct State {
    pub config: Config,
    pub line: Arc<LineClient>,
    /// Present when some route has `auth = "id_token"`.
    pub id_tokens: Option<IdTokenVerifier>,
    pub nonces: Option<Nonces>,
    pub cache: Arc<VerdictCache>,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
}

/// The nonce endpoint and its store.
pub struct Nonces {
    pub path: String,
    pub store: Arc<NonceStore>,
}

/// What the access log line and the request metrics say about one request.
struct Outcome {
    path: Option<PathAndQuery>,
    auth: RouteAuth,
    cache: Option<Lookup>,
    /// `forwarded`, `anonymous`, `preflight`, or the error reason.
    outcome: &'static str,
}

/// hyper's entry point: never fails; every error becomes the proxy's own answer.
pub async fn handle(
    state: Arc<State>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let request_id = request_id(&req, &state.metrics);
    let method = req.method().clone();
    let mut outcome = Outcome { path: None, auth: RouteAuth::AccessToken, cache: None, outcome: "forwarded" };
    // The metric's outcome: what the proxy decided, not what the upstream answered.
    let (mut response, kind) = match pipeline(&state, &conn, req, &request_id, &mut outcome).await {
        Ok(response) => (response, outcome.outcome),
        Err(err) => {
            outcome.outcome = err.reason();
            let kind = match err.status() {
                StatusCode::UNAUTHORIZED => "rejected",
                StatusCode::SERVICE_UNAVAILABLE => "unavailable",
                StatusCode::BAD_REQUEST | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "bad_request",
                StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => "upstream_error",
                _ => "internal_error",
            };
            let labels = ReasonLabels { reason: err.reason() };
            match err.status() {
                StatusCode::UNAUTHORIZED => state.metrics.rejections.get_or_create(&labels).inc(),
                StatusCode::SERVICE_UNAVAILABLE => state.metrics.unavailable.get_or_create(&labels).inc(),
                _ => 0,
            };
            (err.into_response().map(Either::Right), kind)
        }
    };
    response.headers_mut().insert(X_REQUEST_ID.clone(), request_id.clone());
    let status = response.status().as_u16();
    state.metrics.count_request(kind, outcome.auth.as_str());
    tracing::info!(
        target: "access",
        request_id = request_id.to_str().unwrap_or("-"),
        method = method.as_str(),
        path = outcome.path.as_ref().map_or("-", |p| p.path()),
        status,
        auth = outcome.auth.as_str(),
        outcome = outcome.outcome,
        cache = outcome.cache.map_or("-", Lookup::as_str),
        latency_us = start.elapsed().as_micros() as u64,
    );
    Ok(response)
}

async fn pipeline(
    state: &State,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    request_id: &HeaderValue,
    outcome: &mut Outcome,
) -> Result<Response<ProxyBody>, ProxyError> {
    let config = &state.config;

    // 1. bound_head
    if head_bytes(&req) > config.server.max_header_bytes {
        return Err(ProxyError::Client(ClientError::HeadersTooLarge));
    }

    // 2. normalise
    let path = normalised_path_and_query(req.uri()).map_err(|e| ProxyError::Client(ClientError::BadPath(e)))?;
    outcome.path = Some(path.clone());

    // The nonce endpoint answers before routing: it needs no credential.
    if let Some(nonces) = &state.nonces
        && path.path() == nonces.path
    {
        outcome.auth = RouteAuth::None;
        outcome.outcome = "nonce_issued";
        return issue_nonce(req.method(), &nonces.store).await;
    }

    // 3. strip_identity
    headers::strip_identity(req.headers_mut(), &config.identity.names, &config.identity.assertion_header);

    // 4. route
    // A preflight carries no body; one that does is not let through uncredentialed.
    let preflight_method =
        (req.method() == Method::OPTIONS && req.headers().contains_key(header::ORIGIN) && !has_body(&req))
            .then(|| req.headers().get(header::ACCESS_CONTROL_REQUEST_METHOD))
            .flatten()
            .map(HeaderValue::as_bytes);
    let policy = config.routes.policy(req.method(), path.path(), preflight_method);
    outcome.auth = policy.auth;

    // 5. authenticate
    let identity = if policy.preflight_pass {
        outcome.outcome = "preflight";
        None
    } else {
        match policy.auth {
            RouteAuth::None => None,
            RouteAuth::AccessToken | RouteAuth::Optional => {
                match bearer_token(req.headers(), MAX_TOKEN_BYTES)
                    .map_err(|e| ProxyError::Client(ClientError::Credential(e)))?
                {
                    Some(token) => Some(authenticate(state, token, outcome).await?),
                    None if policy.auth == RouteAuth::Optional => {
                        outcome.outcome = "anonymous";
                        None
                    }
                    None => return Err(ProxyError::Client(ClientError::MissingCredential)),
                }
            }
            RouteAuth::IdToken => {
                match bearer_token(req.headers(), MAX_ID_TOKEN_BYTES)
                    .map_err(|e| ProxyError::Client(ClientError::Credential(e)))?
                {
                    Some(token) => Some(authenticate_id_token(state, token, policy.require_nonce, outcome).await?),
                    None => return Err(ProxyError::Client(ClientError::MissingCredential)),
                }
            }
        }
    };

    // 6. upstream_request
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let out = req.headers_mut();
    headers::strip_for_upstream(out, upgrade, config.identity.forward_authorization);
    if let Some(cached) = &identity {
        let Stored::Valid(encoded) = &cached.stored else {
            return Err(ProxyError::Internal("a rejected verdict reached injection"));
        };
        config.identity.names.inject(encoded, out);
    }
    out.insert(X_REQUEST_ID.clone(), request_id.clone());
    state.upstream.prepare(&mut req, path, conn);

    // 7. forward
    let mut response = state.upstream.send(req, &state.metrics).await.map_err(ProxyError::Upstream)?;

    // 8. respond
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::Upstream(UpstreamError::UnrequestedUpgrade));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        // The tunnel holds the connection's slot: it counts against
        // server.max_connections and is waited for at shutdown.
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, conn.slot.clone()));
    }
    headers::strip_response_hop_by_hop(response.headers_mut(), switching);
    Ok(response.map(Either::Left))
}

/// `GET {nonce.path}`: a fresh nonce as `{"nonce": …, "expires_in": …}`.
async fn issue_nonce(method: &Method, store: &NonceStore) -> Result<Response<ProxyBody>, ProxyError> {
    // GET only: a HEAD would store a nonce nobody ever sees.
    if method != Method::GET {
        return Err(ProxyError::Client(ClientError::NonceMethod));
    }
    let nonce = store.issue().await.map_err(|_| ProxyError::NonceStore)?;
    let body = serde_json::json!({ "nonce": nonce, "expires_in": store.ttl().as_secs() });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // A nonce is single-use: no shared cache may hand it to someone else.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Verdict for an ID token. With a nonce required: verified (never from the
/// cache — every presentation must consume), then the nonce is consumed, and
/// only a fresh one lets the request through. Without: cached like an access
/// token, never past `exp`.
async fn authenticate_id_token(
    state: &State,
    token: &str,
    require_nonce: bool,
    outcome: &mut Outcome,
) -> Result<Cached, ProxyError> {
    let verifier =
        state.id_tokens.as_ref().ok_or(ProxyError::Internal("an id_token route without an ID-token verifier"))?;
    let valid = |claims: IdClaims| Verdict::Valid(claims.into_identity());
    let rejected = |r| ProxyError::Client(ClientError::Rejected(r));
    // Parsed once: the nonce is read here, the signature checked below.
    let jws = id_token::parse(token).map_err(rejected)?;
    let claimed_nonce = jws.unverified_nonce();
    // A token that carries a nonce is single-use on every id_token route: else a
    // native-login token, its nonce spent at /login, would replay on a
    // require_nonce = false (LIFF) route until it expires.
    if !require_nonce && claimed_nonce.is_none() {
        let key = cache_key(CredentialKind::IdToken, token);
        let verify = async { Ok(verifier.verify(&jws).await?.map_or_else(Verdict::Rejected, valid)) };
        return authenticate_cached(state, key, verify, verifier.source(), outcome).await;
    }
    let nonces = state.nonces.as_ref().ok_or(ProxyError::Internal("a nonce route without a nonce store"))?;
    // Refuse a missing, foreign, used or expired nonce before any signature work
    // or LINE call: floods of made-up tokens cost nothing upstream.
    let peeked = match claimed_nonce {
        None => return Err(rejected(Rejection::NonceMissing)),
        Some(n) => nonces.store.peek(n).await.map_err(|_| ProxyError::NonceStore)?,
    };
    match peeked {
        Consumed::Fresh => {}
        Consumed::Unknown => return Err(rejected(Rejection::NonceUnknown)),
        Consumed::Expired => return Err(rejected(Rejection::NonceExpired)),
    }
    let start = Instant::now();
    let checked = verifier.verify(&jws).await;
    state.metrics.observe_auth(verifier.source(), start.elapsed().as_secs_f64());
    let claims = checked.map_err(ProxyError::Line)?.map_err(rejected)?;
    let nonce = claims.nonce.as_deref().ok_or(rejected(Rejection::NonceMissing))?;
    // Consumed only now: a token that failed verification never burns a nonce.
    match nonces.store.consume(nonce).await.map_err(|_| ProxyError::NonceStore)? {
        Consumed::Fresh => Ok(Cached::uncached(state.cache.store(&valid(claims)))),
        Consumed::Unknown => Err(rejected(Rejection::NonceUnknown)),
        Consumed::Expired => Err(rejected(Rejection::NonceExpired)),
    }
}

/// Verdict for an access token: cache first, then the LINE Platform.
async fn authenticate(state: &State, token: &str, outcome: &mut Outcome) -> Result<Cached, ProxyError> {
    let key = cache_key(CredentialKind::AccessToken, token);
    let verify = async {
        Ok(match state.line.verify_access_token(token).await? {
            AccessTokenVerdict::Valid(identity) => Verdict::Valid(identity),
            AccessTokenVerdict::Rejected(r) => Verdict::Rejected(r),
        })
    };
    authenticate_cached(state, key, verify, "line", outcome).await
}

/// Runs `verify` through the verdict cache (once per key however many requests
/// wait), records the cache outcome and latency (`miss_source` labels misses).
async fn authenticate_cached<F>(
    state: &State,
    key: CacheKey,
    verify: F,
    miss_source: &'static str,
    outcome: &mut Outcome,
) -> Result<Cached, ProxyError>
where
    F: Future<Output = Result<Verdict, LineError>>,
{
    let start = Instant::now();
    let (result, lookup) = state.cache.get_or_verify(key, verify).await;
    outcome.cache = Some(lookup);
    let metrics = &state.metrics;
    let source = match lookup {
        Lookup::Hit => {
            metrics.cache_hits.inc();
            "cache"
        }
        Lookup::Miss => {
            metrics.cache_misses.inc();
            miss_source
        }
        Lookup::Coalesced => {
            metrics.cache_coalesced.inc();
            miss_source
        }
        Lookup::Shared => {
            metrics.cache_misses.inc();
            "shared"
        }
    };
    metrics.observe_auth(source, start.elapsed().as_secs_f64());
    let cached = result.map_err(|e| ProxyError::Line((*e).clone()))?;
    match &cached.stored {
        Stored::Valid(_) => Ok(cached),
        Stored::Rejected(r) => Err(ProxyError::Client(ClientError::Rejected(*r))),
    }
}

/// The client's `X-Request-Id` when it is sane, else a fresh one.
fn request_id(req: &Request<Incoming>, metrics: &Metrics) -> HeaderValue {
    if let Some(v) = req.headers().get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= MAX_REQUEST_ID_BYTES
        && v.as_bytes().iter().all(u8::is_ascii_graphic)
    {
        return v.clone();
    }
    HeaderValue::try_from(format!("{:016x}", metrics.next_request_id())).expect("hex is a valid header value")
}

/// Request line plus header bytes, as they stood on the wire (approximately).
fn head_bytes<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    req.headers().iter().fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + HEADER_LINE_OVERHEAD)
}

/// The normalised path with the original query, as the upstream will receive it.
fn normalised_path_and_query(uri: &http::Uri) -> Result<PathAndQuery, routes::PathError> {
    if uri.authority().is_some() && uri.scheme().is_none() {
        // authority-form (CONNECT host:port) is not a request for a path.
        return Err(routes::PathError::NotOriginForm);
    }
    let raw = uri.path();
    let normal = routes::normalize_path(raw)?;
    let unchanged = matches!(normal, std::borrow::Cow::Borrowed(_));
    match (unchanged, uri.path_and_query()) {
        (true, Some(pq)) => Ok(pq.clone()),
        _ => {
            let s = match uri.query() {
                Some(q) => format!("{normal}?{q}"),
                None => normal.into_owned(),
            };
            PathAndQuery::try_from(s).map_err(|_| routes::PathError::BadEscape)
        }
    }
}

/// An HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`).
/// Only WebSocket (RFC 6455: `GET` + `Upgrade: websocket`) is tunnelled; any
/// other `Upgrade` (h2c above all, which would hand the client a raw HTTP/2
/// connection to the upstream) is dropped as the hop-by-hop header it is.
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.method() == Method::GET
        && req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// True when the request announces a body (`Content-Length` > 0 or `Transfer-Encoding`).
fn has_body<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
        || req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0")
}

/// Copies bytes both ways between the upgraded client and upstream connections.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, _slot: Arc<ConnectionSlot>) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %e, "upgraded connection closed with an error");
            }
        }
        Err(e) => tracing::warn!(error = %e, "protocol upgrade failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_keeps_the_query_and_normalises_the_path() {
        let uri: http::Uri = "/a//b/../c?x=%2F..&y".parse().unwrap();
        assert_eq!(normalised_path_and_query(&uri).unwrap().as_str(), "/a/c?x=%2F..&y");
        let uri: http::Uri = "/plain?q=1".parse().unwrap();
        assert_eq!(normalised_path_and_query(&uri).unwrap().as_str(), "/plain?q=1");
        let uri: http::Uri = "http://example.com/a/./b".parse().unwrap();
        assert_eq!(normalised_path_and_query(&uri).unwrap().as_str(), "/a/b");
    }
}
