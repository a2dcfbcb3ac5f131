//! Phase 6, `authenticate`: the route's policy decides whether a credential is
//! needed; the credential becomes a verdict through the cache (access tokens,
//! nonce-less ID tokens) or a fresh check that consumes a nonce (login tokens).
//! A rejection is a 401, LINE being unable to answer a 503.

use std::future::Future;

use tracing::Instrument;

use http::Request;

use super::RequestCtx;
use crate::auth::credential::{MAX_TOKEN_BYTES, bearer_token, websocket_bearer};
use crate::auth::id_token::{self, IdClaims, MAX_ID_TOKEN_BYTES};
use crate::auth::line::LineError;
use crate::auth::nonce::Consumed;
use crate::auth::{Rejection, Verdict};
use crate::cache::{CacheKey, Cached, CredentialKind, Lookup, Stored, cache_key};
use crate::clock::Stopwatch;
use crate::error::{ClientError, ProxyError};
use crate::limits::{ClientKey, Limit};
use crate::routes::{Policy, RouteAuth};
use crate::telemetry::Outcome;
use crate::traces::{Kind, Span};

/// The verdict the route needs (`None`: forward without identity); traced
/// as the request's `verdict` span when the route needs a credential.
pub async fn authenticate<B>(
    ctx: &mut RequestCtx<'_>,
    req: &Request<B>,
    policy: Policy,
) -> Result<Option<Cached>, ProxyError> {
    if policy.auth == RouteAuth::None || policy.preflight_pass {
        return verdict(ctx, req, policy).await;
    }
    let span = Span::child("verdict", Kind::Internal);
    let verdict = span.scope(verdict(ctx, req, policy)).await;
    if let Err(err) = &verdict {
        span.attr("line_auth_proxy.reason", err.reason());
        if matches!(err, ProxyError::Line(_) | ProxyError::NonceStore | ProxyError::Internal(_)) {
            span.error(err.reason());
        }
    }
    verdict
}

async fn verdict<B>(ctx: &mut RequestCtx<'_>, req: &Request<B>, policy: Policy) -> Result<Option<Cached>, ProxyError> {
    if policy.preflight_pass {
        ctx.outcome = Outcome::Preflight;
        return Ok(None);
    }
    let refused = |e| ProxyError::Client(ClientError::Credential(e));
    let credential = |max| bearer_token(req.headers(), max).map_err(refused);
    match policy.auth {
        RouteAuth::None => Ok(None),
        RouteAuth::AccessToken | RouteAuth::Optional => match access_token_credential(req, policy.auth)? {
            Some(token) => access_token(ctx, token).await.map(Some),
            None if policy.auth == RouteAuth::Optional => {
                ctx.outcome = Outcome::Anonymous;
                Ok(None)
            }
            None => Err(ProxyError::Client(ClientError::MissingCredential)),
        },
        RouteAuth::IdToken => match credential(MAX_ID_TOKEN_BYTES)? {
            Some(token) => id_token(ctx, token, policy.require_nonce).await.map(Some),
            None => Err(ProxyError::Client(ClientError::MissingCredential)),
        },
        RouteAuth::Session => session_route(ctx, req).await.map(Some),
    }
}

/// `auth = "session"`: the session cookie, or a Bearer access token as on an
/// `access_token` route; both at once is a 400. A cookie that does not open
/// (tampered, another key ring, expired) is no session.
async fn session_route<B>(ctx: &mut RequestCtx<'_>, req: &Request<B>) -> Result<Cached, ProxyError> {
    let sessions =
        ctx.state.sessions.as_ref().ok_or(ProxyError::Internal("a session route without a session configuration"))?;
    match access_token_credential(req, RouteAuth::Session)? {
        Some(_) if sessions.presented(req.headers()) => Err(ProxyError::Client(ClientError::TwoCredentials)),
        Some(token) => access_token(ctx, token).await,
        None => {
            let now = ctx.state.clock.unix_seconds();
            let login = ctx.state.login.as_ref().map(|l| &l.config);
            // A browser with no session (or one LINE no longer stands behind)
            // is sent to log in; an API client gets the 401, and so does an
            // ingress's forward-auth check (nginx `auth_request` turns any
            // answer but 2xx/401/403 into a 500: the ingress redirects on 401).
            let to_login = |ctx: &RequestCtx<'_>, err| match login {
                Some(login) if !ctx.forward_auth && super::login::is_navigation(&ctx.method, req.headers()) => {
                    let target = ctx.path.as_ref().map_or("/", |p| p.as_str());
                    ProxyError::LoginRedirect(crate::login::login_location(login, target))
                }
                _ => err,
            };
            let Some(session) = sessions.session(req.headers(), now) else {
                return Err(to_login(ctx, ProxyError::Client(ClientError::MissingCredential)));
            };
            super::session::same_origin(&ctx.method, req, login.map(|l| l.origin.as_str()))?;
            match session_verdict(ctx, session).await {
                Err(err @ ProxyError::Client(ClientError::Rejected(_))) => {
                    ctx.set_cookies.push(super::session::clear_cookie(&sessions.config.cookie_name));
                    // Opened again (the verdict took the first): whose session ended.
                    let ended = sessions.session(req.headers(), now).and_then(|opened| opened.session());
                    ctx.audit = super::audit::note(crate::audit::Decision::SessionEnded, ended.as_ref())
                        .map(|note| crate::audit::Note { reason: Some(err.reason()), ..note });
                    Err(to_login(ctx, err))
                }
                verdict => verdict,
            }
        }
    }
}

/// The verdict of a session: its access token, verified with LINE through the
/// cache (entries of their own kind, living at most
/// `session.revalidate_seconds`, under the key sealed in the cookie), with the
/// ID token's `email` and `amr` the session sealed. The session is read
/// whole only on a miss. A token LINE now says belongs to someone else is no
/// session.
async fn session_verdict(ctx: &mut RequestCtx<'_>, opened: crate::session::Opened) -> Result<Cached, ProxyError> {
    let state = ctx.state;
    let key = opened.verdict_key();
    let request_id = ctx.request_id.clone();
    let verify = move || async move {
        let Some(session) = opened.session() else {
            return Ok(Verdict::Rejected(Rejection::Invalid));
        };
        let verified = state.line.verify_access_token(&session.access_token).instrument(line_span(&request_id)).await;
        Ok(match verified? {
            Verdict::Valid(mut identity) => {
                if identity.user_id != session.user_id || identity.channel_id != session.channel_id {
                    return Ok(Verdict::Rejected(Rejection::Invalid));
                }
                identity.method = crate::auth::AuthMethod::Session;
                identity.email = session.email;
                identity.amr = session.amr;
                Verdict::Valid(identity)
            }
            rejected => rejected,
        })
    };
    cached(ctx, CredentialKind::Session, key, verify, "line").await
}

/// The span the LINE calls of a verification run in: their log lines name
/// the request that started it (requests that joined it are not named).
/// Made when the verification runs, never for a cache hit; at `warn`, so
/// that it is there whenever a failure is logged.
pub(super) fn line_span(request_id: &http::HeaderValue) -> tracing::Span {
    tracing::warn_span!("line", request_id = request_id.to_str().unwrap_or("-"))
}

/// The span of a request's Redis calls (shared-cache lookup, nonce issue or
/// consumption): a failure's WARN line names the request. Made only when the
/// store in question is Redis (`calls_redis`); otherwise no span at all.
pub(super) fn redis_span(request_id: &http::HeaderValue, calls_redis: bool) -> tracing::Span {
    if !calls_redis {
        return tracing::Span::none();
    }
    tracing::warn_span!("redis", request_id = request_id.to_str().unwrap_or("-"))
}

/// The access token of the request: `Authorization: Bearer`, or — on a
/// WebSocket handshake to an `access_token` route, where browsers cannot set
/// `Authorization` — a `Sec-WebSocket-Protocol` entry
/// `bearer.line-auth-proxy.<token>`. Both at once is a 400: the proxy does not
/// guess which one counts. On an `optional` route the entry is no credential
/// (it is removed before the upstream all the same).
fn access_token_credential<B>(req: &Request<B>, auth: RouteAuth) -> Result<Option<&str>, ProxyError> {
    let refused = |e| ProxyError::Client(ClientError::Credential(e));
    let header = bearer_token(req.headers(), MAX_TOKEN_BYTES).map_err(refused)?;
    if !matches!(auth, RouteAuth::AccessToken | RouteAuth::Session) || !super::request::is_websocket_upgrade(req) {
        return Ok(header);
    }
    match (header, websocket_bearer(req.headers(), MAX_TOKEN_BYTES).map_err(refused)?) {
        (Some(_), Some(_)) => Err(ProxyError::Client(ClientError::TwoCredentials)),
        (one, None) | (None, one) => Ok(one),
    }
}

/// Verdict for an access token: cache first, then the LINE Platform.
async fn access_token(ctx: &mut RequestCtx<'_>, token: &str) -> Result<Cached, ProxyError> {
    let state = ctx.state;
    let request_id = ctx.request_id.clone();
    let verify = move || async move { state.line.verify_access_token(token).instrument(line_span(&request_id)).await };
    cached(ctx, CredentialKind::AccessToken, cache_key(CredentialKind::AccessToken, token), verify, "line").await
}

/// Verdict for an ID token. With a nonce required: verified (never from the
/// cache — every presentation must consume), then the nonce is consumed, and
/// only a fresh one lets the request through. Without: cached like an access
/// token, never past `exp`.
async fn id_token(ctx: &mut RequestCtx<'_>, token: &str, require_nonce: bool) -> Result<Cached, ProxyError> {
    let state = ctx.state;
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
        let request_id = ctx.request_id.clone();
        let jws = &jws;
        let verify = move || async move {
            let checked = verifier.verify(jws).instrument(line_span(&request_id)).await;
            Ok(checked?.map_or_else(Verdict::Rejected, valid))
        };
        let key = cache_key(CredentialKind::IdToken, &jws.cache_form());
        return cached(ctx, CredentialKind::IdToken, key, verify, verifier.source()).await;
    }
    let nonces = state.nonces.as_ref().ok_or(ProxyError::Internal("a nonce route without a nonce store"))?;
    // Refuse a missing, foreign, used or expired nonce before any signature work
    // or LINE call: floods of made-up tokens cost nothing upstream.
    let Some(nonce) = claimed_nonce else {
        return Err(rejected(Rejection::NonceMissing));
    };
    let peeked = nonces.store.peek(nonce).await.map_err(|_| ProxyError::NonceStore)?;
    match peeked {
        Consumed::Fresh => {}
        Consumed::Unknown => return Err(rejected(Rejection::NonceUnknown)),
        Consumed::Expired => return Err(rejected(Rejection::NonceExpired)),
    }
    // Never cached: every presentation is a fresh credential.
    fresh_credential(state, ctx.client)?;
    let stopwatch = Stopwatch::start();
    let checked = verifier.verify(&jws).instrument(line_span(&ctx.request_id)).await;
    state.metrics.observe_auth(verifier.source(), stopwatch.seconds());
    Span::current_attr("line_auth_proxy.verdict_source", verifier.source());
    let claims = checked.map_err(ProxyError::Line)?.map_err(rejected)?;
    // The nonce consumed is the one peeked in the token, now vouched for by its
    // signature (local) or by LINE's matching answer (remote).
    if claims.nonce.as_deref() != Some(nonce) {
        return Err(rejected(Rejection::NonceMismatch));
    }
    // Consumed only now: a token that failed verification never burns a nonce.
    let span = redis_span(&ctx.request_id, nonces.store.redis().is_some());
    match nonces.store.consume(nonce).instrument(span).await.map_err(|_| ProxyError::NonceStore)? {
        Consumed::Fresh => Ok(Cached::uncached(state.cache.store(&valid(claims)))),
        Consumed::Unknown => Err(rejected(Rejection::NonceUnknown)),
        Consumed::Expired => Err(rejected(Rejection::NonceExpired)),
    }
}

/// Draws on the client's `limits.fresh_tokens_per_minute`: a credential the
/// proxy has not verified yet (a LINE call, or a local ID-token check).
pub(super) fn fresh_credential(state: &super::State, client: std::net::IpAddr) -> Result<(), ProxyError> {
    match &state.limits.fresh_tokens {
        None => Ok(()),
        Some(budget) => budget
            .take(ClientKey::of(client))
            .map_err(|spent| ProxyError::Limited { limit: Limit::FreshTokens, retry_after: spent.retry_after }),
    }
}

/// Runs `verify` through the verdict cache (once per key however many requests
/// wait), records the cache outcome and latency (`miss_source` labels misses).
async fn cached<V, F>(
    ctx: &mut RequestCtx<'_>,
    kind: CredentialKind,
    key: CacheKey,
    verify: V,
    miss_source: &'static str,
) -> Result<Cached, ProxyError>
where
    V: FnOnce() -> F,
    F: Future<Output = Result<Verdict, LineError>>,
{
    let metrics = &ctx.state.metrics;
    let stopwatch = Stopwatch::start();
    let (state, client) = (ctx.state, ctx.client);
    let request_id = &ctx.request_id;
    let admit = || {
        fresh_credential(state, client)?;
        // With a shared tier the flight starts with Redis calls: their
        // failures name this request (as `line_span` does for LINE's).
        Ok(redis_span(request_id, state.cache.shared_redis().is_some()))
    };
    let (result, lookup) = ctx.state.cache.get_or_verify_admitted(key, kind, admit, verify).await?;
    ctx.cache = Some(lookup);
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
    metrics.observe_auth(source, stopwatch.seconds());
    Span::current_attr("line_auth_proxy.verdict_source", source);
    let cached = result.map_err(|e| ProxyError::Line((*e).clone()))?;
    match &*cached.stored {
        Stored::Valid(_) => Ok(cached),
        Stored::Rejected(r) => Err(ProxyError::Client(ClientError::Rejected(*r))),
    }
}
