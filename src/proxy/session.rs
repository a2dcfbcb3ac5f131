//! Sessions on the proxy path (`[session]`): the sealed cookie read from the
//! request, its verdict (the access token inside, through the verdict cache
//! with entries bounded by `session.revalidate_seconds`), the same-origin rule
//! for unsafe methods, the cookie kept from the upstream, and the exchange
//! endpoint that turns a verified Bearer access token into a session.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};

use super::{ProxyBody, RequestCtx};
use crate::auth::Verdict;
use crate::auth::credential::{MAX_TOKEN_BYTES, bearer_token};
use crate::config::SessionConfig;
use crate::error::{ClientError, ProxyError};
use crate::routes::RouteAuth;
use crate::session::{Opened, Sealer, Session};
use crate::telemetry::Outcome;

/// The session configuration and its sealer.
#[derive(Debug)]
pub struct Sessions {
    pub config: SessionConfig,
    pub sealer: Sealer,
}

impl Sessions {
    pub fn new(config: SessionConfig) -> Self {
        let sealer = Sealer::new(&config.keys);
        Self { config, sealer }
    }

    /// Whether the request carries a cookie of the session's name (valid or not).
    pub fn presented(&self, headers: &HeaderMap) -> bool {
        cookie_values(headers, &self.config.cookie_name).next().is_some()
    }

    /// The first session cookie of the request that opens at `now`.
    pub fn session(&self, headers: &HeaderMap, now: u64) -> Option<Opened> {
        let name = &self.config.cookie_name;
        cookie_values(headers, name).find_map(|value| self.sealer.open(name, value, now))
    }

    /// `Set-Cookie` for a new session, living as long as the session.
    pub fn set_cookie(&self, session: &Session, now: u64) -> HeaderValue {
        let value = self.sealer.seal(&self.config.cookie_name, session);
        set_cookie(&self.config.cookie_name, &value, session.expires_at.saturating_sub(now))
    }
}

/// The `name=value` pairs of one `Cookie` header, trimmed, as bytes: a
/// header may hold obs-text (a browser sends a UTF-8 cookie value as raw
/// bytes), and one cookie with such a value must neither hide the session nor
/// keep the session cookie from being removed.
fn cookie_pairs(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    // memchr finds the separators (the session's value is most of the
    // header, a few hundred bytes): a byte-by-byte split was a quarter of
    // the session path's cost.
    let bytes = value.as_bytes();
    let mut start = 0;
    memchr::memchr_iter(b';', bytes)
        .chain(std::iter::once(bytes.len()))
        .map(move |end| {
            let pair = &bytes[start..end];
            start = end + 1;
            pair.trim_ascii()
        })
        .filter(|pair| !pair.is_empty())
}

/// A pair's name and value, split at the first `=`.
fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = pair.iter().position(|b| *b == b'=')?;
    Some((&pair[..eq], &pair[eq + 1..]))
}

/// The values of every `name=value` pair of the request's `Cookie` headers
/// (HTTP/2 may split one into several).
fn cookie_values<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h [u8]> {
    headers.get_all(header::COOKIE).iter().flat_map(cookie_pairs).filter_map(move |pair| {
        let (k, v) = split_pair(pair)?;
        (k == name.as_bytes()).then(|| v.trim_ascii())
    })
}

/// Removes the session cookie, and the pre-login flow cookies of web login
/// (`<name>.login.*`), from the `Cookie` headers sent upstream; every other
/// cookie passes as it came, and a header left empty is removed. A pair whose
/// name is one of those once trimmed (`name =…`, which an upstream's parser
/// may read as the session cookie) is removed too, though never read.
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let flows = crate::login::flow_cookie_prefix(name);
    let is_ours = |pair: &[u8]| {
        split_pair(pair).is_some_and(|(k, _)| {
            let k = k.trim_ascii();
            k == name.as_bytes() || k.starts_with(flows.as_bytes())
        })
    };
    if !headers.get_all(header::COOKIE).iter().any(|v| cookie_pairs(v).any(is_ours)) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| {
            let rest: Vec<&[u8]> = cookie_pairs(v).filter(|pair| !is_ours(pair)).collect();
            (!rest.is_empty())
                .then(|| HeaderValue::from_bytes(&rest.join(&b"; "[..])).expect("pieces of a valid header"))
        })
        .collect();
    headers.remove(header::COOKIE);
    for value in kept {
        headers.append(header::COOKIE, value);
    }
}

/// The `(name, value)` of every cookie whose name starts with `prefix`, in
/// the order they came (names and values that are not UTF-8 are skipped).
pub fn cookies_with_prefix<'h>(headers: &'h HeaderMap, prefix: &'h str) -> impl Iterator<Item = (&'h str, &'h str)> {
    headers.get_all(header::COOKIE).iter().flat_map(cookie_pairs).filter_map(move |pair| {
        let (k, v) = split_pair(pair)?;
        if !k.starts_with(prefix.as_bytes()) {
            return None;
        }
        Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v.trim_ascii()).ok()?))
    })
}

/// The value of the first cookie named exactly `name`.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &'h str) -> Option<&'h str> {
    cookie_values(headers, name).find_map(|v| std::str::from_utf8(v).ok())
}

/// `Set-Cookie` with the attributes every cookie of the proxy carries.
pub fn set_cookie(name: &str, value: &str, max_age: u64) -> HeaderValue {
    let cookie = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax");
    HeaderValue::try_from(cookie).expect("a sealed value and a cookie name are valid header text")
}

/// `Set-Cookie` that makes the browser drop the cookie `name`.
pub fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", 0)
}

/// An unsafe method authenticated by the cookie must come from the app's own
/// origin: `Sec-Fetch-Site: same-origin`, or an `Origin` of the login origin
/// (`[login]`, when web login is on). Anything else is a cross-site request
/// riding the browser's cookie. `method` is the request's as the route saw it
/// (on a forward-auth check, the original one the ingress names, not the
/// check's own `GET`). A WebSocket handshake is held to the rule whatever its
/// method: a `GET` that opens a two-way channel acting with the cookie
/// (Cross-Site WebSocket Hijacking). Its `Sec-WebSocket-Key` is end-to-end, so
/// a forward-auth check sees it too.
pub fn same_origin<B>(method: &Method, req: &Request<B>, login_origin: Option<&str>) -> Result<(), ProxyError> {
    let headers = req.headers();
    let websocket = headers.contains_key(header::SEC_WEBSOCKET_KEY)
        || headers.get("sec-fetch-mode").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !websocket && matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE) {
        return Ok(());
    }
    let fetch_site = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
    let origin = headers.get(header::ORIGIN).map(HeaderValue::as_bytes);
    let ours = login_origin.is_some_and(|o| origin.is_some_and(|v| v.eq_ignore_ascii_case(o.as_bytes())));
    if fetch_site == Some(b"same-origin") || ours { Ok(()) } else { Err(ProxyError::Client(ClientError::CrossSite)) }
}

/// `POST session.exchange_path` with a Bearer access token: verified with
/// LINE (within the client's fresh-credential budget), then 204 with the
/// session cookie. Nothing is forwarded.
pub async fn exchange<B>(
    ctx: &mut RequestCtx<'_>,
    req: &Request<B>,
    sessions: &Sessions,
) -> Result<Response<ProxyBody>, ProxyError> {
    ctx.auth = RouteAuth::AccessToken;
    if req.method() != Method::POST {
        return Err(ProxyError::Client(ClientError::SessionMethod));
    }
    let refused = |e| ProxyError::Client(ClientError::Credential(e));
    let token = bearer_token(req.headers(), MAX_TOKEN_BYTES)
        .map_err(refused)?
        .ok_or(ProxyError::Client(ClientError::MissingCredential))?;
    super::authenticate::fresh_credential(ctx.state, ctx.client)?;
    let identity = match ctx.state.line.verify_access_token(token).await.map_err(ProxyError::Line)? {
        Verdict::Valid(identity) => identity,
        Verdict::Rejected(r) => return Err(ProxyError::Client(ClientError::Rejected(r))),
    };
    let now = ctx.state.clock.unix_seconds();
    let session = Session {
        access_token: token.to_owned(),
        user_id: identity.user_id,
        channel_id: identity.channel_id,
        amr: Vec::new(),
        email: None,
        issued_at: now,
        expires_at: now + sessions.config.max_age.as_secs(),
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::SET_COOKIE, sessions.set_cookie(&session, now));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    ctx.outcome = Outcome::SessionIssued;
    ctx.audit = super::audit::note(crate::audit::Decision::SessionCreated, Some(&session));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_session_cookie_is_removed_and_every_other_cookie_kept() {
        let name = "__Host-line-auth-session";
        let mut h = cookies(&["theme=dark; __Host-line-auth-session=v1.AAAA; lang=ja", "__Host-line-auth-session=x"]);
        strip_cookie(&mut h, name);
        let left: Vec<_> = h.get_all(header::COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert_eq!(left, ["theme=dark; lang=ja"]);
        // A cookie whose name only contains the session's is another cookie.
        let mut h = cookies(&["x__Host-line-auth-session=1; __Host-line-auth-session2=2"]);
        strip_cookie(&mut h, name);
        assert_eq!(h[header::COOKIE], "x__Host-line-auth-session=1; __Host-line-auth-session2=2");
        let mut h = cookies(&["other=1"]);
        strip_cookie(&mut h, name);
        assert_eq!(h[header::COOKIE], "other=1");
        // A header with obs-text (a UTF-8 cookie value) loses the session cookie too.
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_bytes(b"n=Jos\xc3\xa9; __Host-line-auth-session=v1.A").unwrap());
        strip_cookie(&mut h, name);
        assert_eq!(h[header::COOKIE].as_bytes(), b"n=Jos\xc3\xa9");
        // Web login's pre-login flow cookies never reach the upstream either.
        let mut h =
            cookies(&["__Host-line-auth-session.login.0123456789abcdef=v1.A; a=1; __Host-line-auth-session.loginx=2"]);
        strip_cookie(&mut h, name);
        assert_eq!(h[header::COOKIE], "a=1; __Host-line-auth-session.loginx=2");
        // A name that is the session's once trimmed is removed, though never read.
        let mut h = cookies(&["__Host-line-auth-session =v1.A; a=1"]);
        assert_eq!(cookie_values(&h, name).count(), 0);
        strip_cookie(&mut h, name);
        assert_eq!(h[header::COOKIE], "a=1");
    }

    #[test]
    fn cookie_values_are_found_by_exact_name_in_every_header() {
        let h = cookies(&["a=1; s=first", "s=second;t=3"]);
        assert_eq!(cookie_values(&h, "s").collect::<Vec<_>>(), [b"first".as_slice(), b"second"]);
        assert_eq!(cookie_values(&h, "S").count(), 0);
    }
}
