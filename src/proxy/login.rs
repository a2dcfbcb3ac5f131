//! Web login's endpoints (`[login]`), answered by the proxy before routing:
//!
//! - `GET login.path?return_to=…` — a new pre-login flow in its own sealed
//!   cookie, and 302 to LINE's authorize endpoint (state, nonce, PKCE S256);
//! - the callback (the path of `login.redirect_uri`) — the flow found by its
//!   `state`, the code exchanged at LINE's token endpoint with the verifier,
//!   the ID token verified (signature, `iss`, `aud`, `exp`, the flow's
//!   `nonce`), a new session cookie, and 302 to `return_to`;
//! - `POST login.logout_path` — the same-origin rule, the access token
//!   revoked at LINE, its cached verdicts dropped, the cookie cleared.
//!
//! Errors are answered as everywhere (`fail_to_proxy`), as a small page for a
//! browser (`Accept: text/html`); cookies to clear ride on every answer.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use tracing::Instrument;

use super::session::{Sessions, clear_cookie, cookie_value, cookies_with_prefix, same_origin, set_cookie};
use super::{ProxyBody, RequestCtx};
use crate::audit::Decision;
use crate::auth::id_token::{self, IdTokenVerifier};
use crate::auth::token_endpoint::{CodeGrant, CodeRefused};
use crate::auth::{Rejection, line::LineError};
use crate::cache::{CredentialKind, cache_key};
use crate::config::LoginConfig;
use crate::error::{ClientError, ProxyError};
use crate::login::{
    Attempt, FLOW_LIFETIME_SECONDS, FLOW_PURPOSE, Flow, MAX_FLOWS, authorize_location, flow_cookie_name,
    flow_cookie_prefix, query_value, return_to,
};
use crate::routes::RouteAuth;
use crate::session::Session;
use crate::telemetry::Outcome;

/// Flow cookies of one request looked at, at most (the rest are left to expire).
const MAX_FLOW_COOKIES_READ: usize = 16;

/// `[login]` and the verifier of its ID tokens.
pub struct Login {
    pub config: LoginConfig,
    pub verifier: IdTokenVerifier,
}

/// The answer of a web-login endpoint, or `None` when `path` is none of them.
pub async fn endpoints<B>(
    ctx: &mut RequestCtx<'_>,
    req: &Request<B>,
    path: &PathAndQuery,
) -> Result<Option<Response<ProxyBody>>, ProxyError> {
    let state = ctx.state;
    let (Some(login), Some(sessions)) = (&state.login, &state.sessions) else {
        return Ok(None);
    };
    let p = path.path();
    let config = &login.config;
    let endpoint = if p == config.path {
        Endpoint::Start
    } else if p == config.callback_path {
        Endpoint::Callback
    } else if p == config.logout_path {
        Endpoint::Logout
    } else {
        return Ok(None);
    };
    ctx.auth = RouteAuth::Session;
    ctx.html = wants_html(req.headers());
    let query = path.query().unwrap_or("");
    match endpoint {
        Endpoint::Start => start(ctx, req, config, sessions, query).map(Some),
        Endpoint::Callback => callback(ctx, req, login, sessions, query).await.map(Some),
        Endpoint::Logout => logout(ctx, req, config, sessions, query).await.map(Some),
    }
}

enum Endpoint {
    Start,
    Callback,
    Logout,
}

/// `GET login.path`: a new flow, and the browser sent to LINE. A session
/// cookie the browser brings is cleared first (a login never continues an
/// old session: fixation).
fn start<B>(
    ctx: &mut RequestCtx<'_>,
    req: &Request<B>,
    login: &LoginConfig,
    sessions: &Sessions,
    query: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(ProxyError::Client(ClientError::LoginMethod { allow: "GET" }));
    }
    let target = query_value(query, "return_to").ok().flatten();
    let now = ctx.state.clock.unix_seconds();
    if sessions.presented(req.headers()) {
        ctx.set_cookies.push(clear_cookie(&sessions.config.cookie_name));
    }
    let flow = Flow::new(return_to(target.as_deref()), Attempt::First, now);
    to_line(ctx, req.headers(), login, sessions, &flow)
}

/// 302 to LINE's authorize endpoint for `flow`, with the flow's cookie, and
/// the oldest flows of this browser cleared beyond [`MAX_FLOWS`].
fn to_line(
    ctx: &mut RequestCtx<'_>,
    headers: &HeaderMap,
    login: &LoginConfig,
    sessions: &Sessions,
    flow: &Flow,
) -> Result<Response<ProxyBody>, ProxyError> {
    let cookie_name = &sessions.config.cookie_name;
    let prefix = flow_cookie_prefix(cookie_name);
    let mut held: Vec<(&str, u64)> = cookies_with_prefix(headers, &prefix)
        .take(MAX_FLOW_COOKIES_READ)
        .map(|(name, value)| {
            let issued = sessions.sealer.open_json::<Flow>(FLOW_PURPOSE, name, value).map_or(0, |f| f.issued_at);
            (name, issued)
        })
        .collect();
    held.sort_by_key(|(_, issued)| std::cmp::Reverse(*issued));
    held.dedup_by_key(|(name, _)| *name);
    for (name, _) in held.iter().skip(MAX_FLOWS - 1) {
        ctx.set_cookies.push(clear_cookie(name));
    }
    let name = flow_cookie_name(cookie_name, &flow.state).ok_or(ProxyError::Internal("a state of our own"))?;
    let sealed = sessions.sealer.seal_json(FLOW_PURPOSE, &name, flow);
    ctx.set_cookies.push(set_cookie(&name, &sealed, FLOW_LIFETIME_SECONDS));
    ctx.outcome = Outcome::LoginStarted;
    Ok(redirect(StatusCode::FOUND, &authorize_location(login, flow)))
}

/// The callback: LINE's answer to one of this browser's flows.
async fn callback<B>(
    ctx: &mut RequestCtx<'_>,
    req: &Request<B>,
    login: &Login,
    sessions: &Sessions,
    query: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    if *req.method() != Method::GET {
        return Err(ProxyError::Client(ClientError::LoginMethod { allow: "GET" }));
    }
    let param = |key| query_value(query, key).map_err(|_| ProxyError::Client(ClientError::LoginCallback));
    let (state_param, code, error) = (param("state")?, param("code")?, param("error")?);
    let now = ctx.state.clock.unix_seconds();
    let cookie_name = &sessions.config.cookie_name;
    // The flow this state names, if this browser holds it: opened, live,
    // and holding exactly this state.
    let flow_name = state_param.as_deref().and_then(|s| flow_cookie_name(cookie_name, s));
    let flow = flow_name.as_deref().and_then(|name| {
        let value = cookie_value(req.headers(), name)?;
        ctx.set_cookies.push(clear_cookie(name));
        let flow: Flow = sessions.sealer.open_json(FLOW_PURPOSE, name, value)?;
        // A plain comparison: both sides are the browser's own (the sealed
        // flow it carries, the state in its URL), so its timing tells nothing.
        (state_param.as_deref() == Some(flow.state.as_str()) && flow.live(now)).then_some(flow)
    });
    if let Some(error) = error {
        return Err(match error.as_ref() {
            "access_denied" => ProxyError::Client(ClientError::LoginDenied),
            "server_error" | "temporarily_unavailable" => ProxyError::Line(LineError::LoginUnavailable),
            _ => ProxyError::Client(ClientError::LoginFailed),
        });
    }
    let Some(flow) = flow else {
        // LINE's auto-login can come back with a state that is not the one
        // sent (its documented failure): start again once, with auto-login
        // off; the retry's state says it is one, so this never loops.
        return match state_param.as_deref().and_then(Attempt::of) {
            Some(Attempt::First) => {
                tracing::info!(
                    "web login: the callback's state matches no login of this browser; restarting once with disable_auto_login"
                );
                let retry = Flow::new("/".to_owned(), Attempt::Retry, now);
                to_line(ctx, req.headers(), &login.config, sessions, &retry)
            }
            _ => Err(ProxyError::Client(ClientError::LoginState)),
        };
    };
    let code =
        code.filter(|c| !c.is_empty() && c.len() <= 1024).ok_or(ProxyError::Client(ClientError::LoginCallback))?;
    super::authenticate::fresh_credential(ctx.state, ctx.client)?;
    let session = log_in(ctx, login, sessions, &flow, &code, now).await?;
    ctx.set_cookies.push(sessions.set_cookie(&session, now));
    ctx.outcome = Outcome::SessionIssued;
    ctx.audit = super::audit::note(Decision::Login, Some(&session));
    Ok(redirect(StatusCode::FOUND, &return_to(Some(&flow.return_to))))
}

/// The code for tokens, the ID token verified against the flow: the session.
async fn log_in(
    ctx: &RequestCtx<'_>,
    login: &Login,
    sessions: &Sessions,
    flow: &Flow,
    code: &str,
    now: u64,
) -> Result<Session, ProxyError> {
    let config = &login.config;
    let rejected = |r| ProxyError::Client(ClientError::Rejected(r));
    let grant = CodeGrant {
        code,
        redirect_uri: &config.redirect_uri,
        client_id: &config.channel_id,
        client_secret: &config.channel_secret.0,
        verifier: &flow.verifier,
    };
    let span = super::authenticate::line_span(&ctx.request_id);
    let tokens = match ctx.state.line.exchange_code(&grant).instrument(span).await.map_err(ProxyError::Line)? {
        Ok(tokens) => tokens,
        Err(CodeRefused) => return Err(ProxyError::Client(ClientError::LoginCodeRefused)),
    };
    let jws = id_token::parse(&tokens.id_token).map_err(rejected)?;
    let claims = login.verifier.verify(&jws).await.map_err(ProxyError::Line)?.map_err(rejected)?;
    if claims.nonce.as_deref() != Some(flow.nonce.as_str()) {
        return Err(rejected(Rejection::NonceMismatch));
    }
    let lifetime = sessions.config.max_age.as_secs().min(tokens.expires_in);
    Ok(Session {
        access_token: tokens.access_token,
        user_id: claims.sub,
        channel_id: claims.aud,
        amr: claims.amr,
        email: claims.email,
        issued_at: now,
        expires_at: now + lifetime,
    })
}

/// `POST login.logout_path`: revoked at LINE (a failure is logged and the
/// session is cleared all the same), the verdicts cached for the token
/// dropped in both tiers, the cookie cleared; 204, or 303 to `?return_to=`.
async fn logout<B>(
    ctx: &mut RequestCtx<'_>,
    req: &Request<B>,
    login: &LoginConfig,
    sessions: &Sessions,
    query: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    if *req.method() != Method::POST {
        return Err(ProxyError::Client(ClientError::LoginMethod { allow: "POST" }));
    }
    same_origin(&Method::POST, req, Some(&login.origin))?;
    let state = ctx.state;
    let now = state.clock.unix_seconds();
    ctx.audit = super::audit::note(Decision::Logout, None);
    if let Some(opened) = sessions.session(req.headers(), now)
        && let Some(session) = opened.session()
    {
        ctx.audit = super::audit::note(Decision::Logout, Some(&session));
        let secret = (session.channel_id == login.channel_id).then_some(login.channel_secret.0.as_slice());
        let revoked = match super::authenticate::fresh_credential(state, ctx.client) {
            Ok(()) => {
                let span = super::authenticate::line_span(&ctx.request_id);
                let revoked = state.line.revoke(&session.access_token, &session.channel_id, secret).instrument(span);
                revoked.await.map_err(|e| e.reason())
            }
            Err(e) => Err(e.reason()),
        };
        if let Err(reason) = revoked {
            tracing::warn!(
                request_id = ctx.request_id.to_str().unwrap_or("-"),
                reason,
                "logout: LINE did not revoke the access token; the session is cleared here all the same"
            );
        }
        for key in [opened.verdict_key(), cache_key(CredentialKind::AccessToken, &session.access_token)] {
            state.cache.remove(&key).await;
        }
    }
    ctx.set_cookies.push(clear_cookie(&sessions.config.cookie_name));
    ctx.outcome = Outcome::LoggedOut;
    match query_value(query, "return_to").ok().flatten() {
        Some(target) => Ok(redirect(StatusCode::SEE_OTHER, &return_to(Some(&target)))),
        None => {
            let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
    }
}

/// A redirect the proxy makes (`location` is escaped already), never cached.
fn redirect(status: StatusCode, location: &str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::try_from(location) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A browser navigation (`GET`/`HEAD` with `Sec-Fetch-Mode: navigate`, or an
/// `Accept` naming `text/html`), which is sent to log in rather than given a 401.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && (headers.get("sec-fetch-mode").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"navigate"))
            || wants_html(headers))
}

/// `Accept` names `text/html`.
fn wants_html(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|media| {
            media.split(|b| *b == b';').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"text/html"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn navigations_are_told_from_api_calls() {
        let chromium = headers(&[
            ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            ("sec-fetch-mode", "navigate"),
        ]);
        assert!(is_navigation(&Method::GET, &chromium));
        assert!(is_navigation(&Method::HEAD, &headers(&[("sec-fetch-mode", "navigate")])));
        assert!(is_navigation(&Method::GET, &headers(&[("accept", "Text/HTML; q=1")])));
        assert!(!is_navigation(&Method::POST, &chromium), "a form POST is not sent to log in");
        let fetch = headers(&[("accept", "application/json"), ("sec-fetch-mode", "cors")]);
        assert!(!is_navigation(&Method::GET, &fetch));
        assert!(!is_navigation(&Method::GET, &headers(&[("accept", "*/*")])));
        assert!(!is_navigation(&Method::GET, &headers(&[("accept", "text/htmlx")])));
        assert!(!is_navigation(&Method::GET, &HeaderMap::new()));
    }
}
