//! The proxy's one error type. It records which side failed — the client, the
//! LINE Platform, the upstream, or the proxy itself — because that decides the
//! status: 400/401/405/431, 503, 502/504, 500. [`ProxyError::class`] is the one
//! mapping from an error to its status, its `outcome` metric label and the
//! refusal counter it goes to; [`ProxyError::into_response`] renders the JSON
//! body every proxy-made answer carries. No variant holds token bytes.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::auth::Rejection;
use crate::auth::credential::CredentialError;
use crate::auth::line::LineError;
use crate::limits::Limit;
use crate::routes::PathError;
use crate::telemetry::{Outcome, Refusal};

/// A failure whose cause is the client's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The route needs a credential and none came.
    MissingCredential,
    /// The `Authorization` header is not exactly one bearer token.
    Credential(CredentialError),
    /// The LINE Platform (or our channel check) refused the token.
    Rejected(Rejection),
    BadPath(PathError),
    /// Request line plus headers over `server.max_header_bytes`.
    HeadersTooLarge,
    /// The nonce endpoint takes GET (and HEAD) only.
    NonceMethod,
    /// `Authorization` and a WebSocket bearer entry at once: which one counts?
    TwoCredentials,
    /// No `Host` on an HTTP/1.1 request, more than one, or one that is not a
    /// host (RFC 9112 §3.2: 400).
    BadHost,
    /// The client's request body broke off or was malformed (bad chunk framing)
    /// while it was being forwarded.
    BadBody,
    /// A trusted ingress's `X-Forwarded-Method` / `X-Original-Method` is no method.
    BadForwardedMethod,
    /// The session exchange takes POST only.
    SessionMethod,
    /// An unsafe method authenticated by the session cookie, from another
    /// site (no matching `Origin`, no `Sec-Fetch-Site: same-origin`).
    CrossSite,
    /// A forward-auth check names two different original paths or methods
    /// (both header families, a header twice, or a header and Envoy's path).
    AmbiguousForwarded,
    /// A web-login endpoint asked with another method (`allow` names the one).
    LoginMethod {
        allow: &'static str,
    },
    /// LINE came back with `error=access_denied`: the user did not log in.
    LoginDenied,
    /// LINE came back with another `error` (`invalid_request`, say).
    LoginFailed,
    /// The callback's `state` matches no login of this browser, after the
    /// one restart LINE's auto-login failure is allowed.
    LoginState,
    /// The callback has no `code`, or names a parameter twice.
    LoginCallback,
    /// LINE's token endpoint refused the code (used, expired, or the PKCE
    /// verifier does not match it).
    LoginCodeRefused,
}

/// A failure on the way to, or waiting for, the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    Unreachable,
    /// It answered, but not in the protocol the proxy speaks to it.
    Protocol,
    Timeout,
    /// The upstream switched protocols for a request that did not ask to.
    UnrequestedUpgrade,
    /// The upstream's 101 to a WebSocket handshake is not the handshake's
    /// answer (no `Upgrade: websocket`, no `Connection: upgrade`, or the wrong
    /// `Sec-WebSocket-Accept`): it has not switched, so nothing is tunnelled.
    InvalidUpgrade,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("client: {}", client_reason(.0))]
    Client(ClientError),
    #[error("LINE Platform: {0}")]
    Line(LineError),
    #[error("upstream: {}", match .0 { UpstreamError::Unreachable => "unreachable", UpstreamError::Protocol => "protocol error", UpstreamError::Timeout => "timed out", UpstreamError::UnrequestedUpgrade => "unrequested protocol switch", UpstreamError::InvalidUpgrade => "invalid WebSocket handshake answer" })]
    Upstream(UpstreamError),
    /// The nonce store (Redis) is unreachable: fail closed.
    #[error("nonce store unavailable")]
    NonceStore,
    /// The nonce store holds as many nonces as it may: 503 until some expire.
    #[error("nonce store full")]
    NonceStoreFull,
    /// A per-client budget of `[limits]` is spent: 429 with `Retry-After`.
    #[error("limit {} reached", .limit.as_str())]
    Limited { limit: Limit, retry_after: std::time::Duration },
    /// A browser navigation to a session route without a session: 302 to
    /// `login.path` (the location, built by the proxy from the normalised path).
    #[error("login required")]
    LoginRedirect(String),
    #[error("internal: {0}")]
    Internal(&'static str),
}

fn client_reason(e: &ClientError) -> &'static str {
    match e {
        ClientError::MissingCredential => "missing_credential",
        ClientError::Credential(c) => c.as_str(),
        ClientError::Rejected(r) => r.as_str(),
        ClientError::BadPath(_) => "bad_path",
        ClientError::HeadersTooLarge => "headers_too_large",
        ClientError::NonceMethod => "nonce_method",
        ClientError::SessionMethod => "session_method",
        ClientError::CrossSite => "cross_site_request",
        ClientError::TwoCredentials => "two_credentials",
        ClientError::BadHost => "bad_host",
        ClientError::BadBody => "bad_request_body",
        ClientError::BadForwardedMethod => "bad_forwarded_method",
        ClientError::AmbiguousForwarded => "ambiguous_forwarded_request",
        ClientError::LoginMethod { .. } => "login_method",
        ClientError::LoginDenied => "login_denied",
        ClientError::LoginFailed => "login_failed",
        ClientError::LoginState => "login_state_mismatch",
        ClientError::LoginCallback => "login_callback_invalid",
        ClientError::LoginCodeRefused => "login_code_refused",
    }
}

/// How an error is answered and counted: decided in one place, per variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    pub status: StatusCode,
    /// The `outcome` label of `line_auth_proxy_requests_total`.
    pub outcome: Outcome,
    /// The refusal counter the reason goes to (401s and 503s), if any.
    pub refusal: Option<Refusal>,
}

impl ProxyError {
    /// The status, outcome and counter of each side's failure.
    pub fn class(&self) -> Class {
        let class = |status, outcome, refusal| Class { status, outcome, refusal };
        match self {
            ProxyError::Client(
                ClientError::BadPath(_)
                | ClientError::TwoCredentials
                | ClientError::BadHost
                | ClientError::BadBody
                | ClientError::BadForwardedMethod
                | ClientError::AmbiguousForwarded
                | ClientError::LoginFailed
                | ClientError::LoginState
                | ClientError::LoginCallback,
            ) => class(StatusCode::BAD_REQUEST, Outcome::BadRequest, None),
            ProxyError::Client(ClientError::HeadersTooLarge) => {
                class(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, Outcome::BadRequest, None)
            }
            ProxyError::Client(
                ClientError::NonceMethod | ClientError::SessionMethod | ClientError::LoginMethod { .. },
            ) => class(StatusCode::METHOD_NOT_ALLOWED, Outcome::BadRequest, None),
            ProxyError::Client(ClientError::CrossSite) => {
                class(StatusCode::FORBIDDEN, Outcome::Rejected, Some(Refusal::Rejected))
            }
            ProxyError::Client(
                ClientError::MissingCredential
                | ClientError::Credential(_)
                | ClientError::Rejected(_)
                | ClientError::LoginDenied
                | ClientError::LoginCodeRefused,
            ) => class(StatusCode::UNAUTHORIZED, Outcome::Rejected, Some(Refusal::Rejected)),
            ProxyError::LoginRedirect(_) => class(StatusCode::FOUND, Outcome::LoginRedirect, None),
            ProxyError::Line(_) | ProxyError::NonceStore | ProxyError::NonceStoreFull => {
                class(StatusCode::SERVICE_UNAVAILABLE, Outcome::Unavailable, Some(Refusal::Unavailable))
            }
            ProxyError::Upstream(
                UpstreamError::Unreachable
                | UpstreamError::Protocol
                | UpstreamError::UnrequestedUpgrade
                | UpstreamError::InvalidUpgrade,
            ) => class(StatusCode::BAD_GATEWAY, Outcome::UpstreamError, None),
            ProxyError::Upstream(UpstreamError::Timeout) => {
                class(StatusCode::GATEWAY_TIMEOUT, Outcome::UpstreamError, None)
            }
            ProxyError::Limited { .. } => {
                class(StatusCode::TOO_MANY_REQUESTS, Outcome::Limited, Some(Refusal::Limited))
            }
            ProxyError::Internal(_) => class(StatusCode::INTERNAL_SERVER_ERROR, Outcome::InternalError, None),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.class().status
    }

    /// Stable reason code for the access log and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Client(c) => client_reason(c),
            ProxyError::Line(e) => e.reason(),
            ProxyError::Upstream(UpstreamError::Unreachable) => "upstream_unreachable",
            ProxyError::Upstream(UpstreamError::Protocol) => "upstream_protocol_error",
            ProxyError::Upstream(UpstreamError::Timeout) => "upstream_timeout",
            ProxyError::Upstream(UpstreamError::UnrequestedUpgrade) => "upstream_unrequested_upgrade",
            ProxyError::Upstream(UpstreamError::InvalidUpgrade) => "upstream_invalid_upgrade",
            ProxyError::NonceStore => "nonce_store_unavailable",
            ProxyError::NonceStoreFull => "nonce_store_full",
            ProxyError::Limited { limit, .. } => limit.as_str(),
            ProxyError::LoginRedirect(_) => "login_required",
            ProxyError::Internal(_) => "internal_error",
        }
    }

    /// `(error, error_description)` for the JSON body. Descriptions are fixed
    /// strings: nothing from the request is echoed.
    fn body_fields(&self) -> (&'static str, &'static str) {
        match self {
            ProxyError::Client(ClientError::MissingCredential) => {
                ("unauthorized", "this route needs a LINE token: Authorization: Bearer <token>")
            }
            ProxyError::Client(ClientError::NonceMethod) => ("invalid_request", "nonces are issued with GET"),
            ProxyError::Client(ClientError::SessionMethod) => {
                ("invalid_request", "a session is exchanged with POST and a Bearer access token")
            }
            ProxyError::Client(ClientError::CrossSite) => (
                "access_denied",
                "a request that changes state with the session cookie must come from the app's own origin",
            ),
            ProxyError::Client(ClientError::BadHost) => {
                ("invalid_request", "an HTTP/1.1 request needs exactly one Host header naming a host")
            }
            ProxyError::Client(ClientError::BadBody) => {
                ("invalid_request", "the request body broke off or was not validly framed")
            }
            ProxyError::Client(ClientError::BadForwardedMethod) => (
                "invalid_request",
                "the forwarded method (X-Forwarded-Method / X-Original-Method) is not an HTTP method",
            ),
            ProxyError::Client(ClientError::AmbiguousForwarded) => (
                "invalid_request",
                "the original request is named twice, differently (X-Forwarded-Uri / X-Original-URI / the path, or the method)",
            ),
            ProxyError::Client(ClientError::TwoCredentials) => (
                "invalid_request",
                "send one credential: the Authorization header or the WebSocket bearer entry, not both",
            ),
            ProxyError::NonceStore => {
                ("temporarily_unavailable", "no nonce can be issued or checked right now; retry later")
            }
            ProxyError::NonceStoreFull => ("temporarily_unavailable", "the nonce store is full; retry in a moment"),
            ProxyError::Client(ClientError::Credential(c)) => ("invalid_token", c.describe()),
            ProxyError::Client(ClientError::Rejected(r)) => ("invalid_token", r.describe()),
            ProxyError::Client(ClientError::BadPath(p)) => ("invalid_request", p.describe()),
            ProxyError::Client(ClientError::HeadersTooLarge) => {
                ("request_header_fields_too_large", "the request headers exceed the proxy's limit")
            }
            ProxyError::Line(_) => {
                ("temporarily_unavailable", "the LINE Platform could not verify the credential right now; retry later")
            }
            ProxyError::Upstream(UpstreamError::Unreachable) => ("bad_gateway", "the upstream service is unreachable"),
            ProxyError::Upstream(UpstreamError::Protocol) => {
                ("bad_gateway", "the upstream service did not answer in the protocol the proxy speaks to it")
            }
            ProxyError::Upstream(UpstreamError::UnrequestedUpgrade) => {
                ("bad_gateway", "the upstream service switched protocols without being asked to")
            }
            ProxyError::Upstream(UpstreamError::InvalidUpgrade) => {
                ("bad_gateway", "the upstream service did not complete the WebSocket handshake")
            }
            ProxyError::Upstream(UpstreamError::Timeout) => {
                ("gateway_timeout", "the upstream service did not answer in time")
            }
            ProxyError::Limited { limit: Limit::Nonces, .. } => {
                ("too_many_requests", "this client asked for too many nonces; retry later")
            }
            ProxyError::Limited { limit: Limit::FreshTokens, .. } => {
                ("too_many_requests", "this client presented too many new credentials; retry later")
            }
            ProxyError::Limited { limit: Limit::Connections, .. } => {
                ("too_many_requests", "this client has too many connections open")
            }
            ProxyError::Limited { limit: Limit::LiveNonces, .. } => {
                ("too_many_requests", "this client holds too many unused nonces; retry later")
            }
            ProxyError::Client(ClientError::LoginMethod { allow: "POST" }) => {
                ("invalid_request", "logging out takes POST (a link cannot log anyone out)")
            }
            ProxyError::Client(ClientError::LoginMethod { .. }) => ("invalid_request", "logging in takes GET"),
            ProxyError::Client(ClientError::LoginDenied) => {
                ("access_denied", "the login with LINE was cancelled or not allowed")
            }
            ProxyError::Client(ClientError::LoginFailed) => {
                ("login_failed", "LINE could not complete the login; start it again")
            }
            ProxyError::Client(ClientError::LoginState) => (
                "invalid_request",
                "this login does not belong to this browser, or took longer than 10 minutes; start it again",
            ),
            ProxyError::Client(ClientError::LoginCallback) => {
                ("invalid_request", "the login callback needs exactly one code and one state")
            }
            ProxyError::Client(ClientError::LoginCodeRefused) => {
                ("access_denied", "LINE did not accept this login (used, expired or not ours); start it again")
            }
            ProxyError::LoginRedirect(_) => ("login_required", "this page needs a login with LINE"),
            ProxyError::Internal(_) => ("internal_error", "the proxy failed to handle the request"),
        }
    }

    /// The gRPC status a gRPC client gets for this error (the codes of
    /// `grpc/doc/statuscodes.md`, chosen by meaning).
    pub fn grpc_status(&self) -> u16 {
        match self.class().status.as_u16() {
            401 | 302 => 16, // UNAUTHENTICATED
            403 => 7,        // PERMISSION_DENIED
            405 => 12,       // UNIMPLEMENTED
            400 => 3,        // INVALID_ARGUMENT
            429 | 431 => 8,  // RESOURCE_EXHAUSTED
            502 | 503 => 14, // UNAVAILABLE: a client may retry
            504 => 4,        // DEADLINE_EXCEEDED
            _ => 13,         // INTERNAL
        }
    }

    /// The answer the proxy sends itself: JSON body, plus `WWW-Authenticate` on
    /// 401 (RFC 6750 §3) and `Retry-After` on 503.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let (error, description) = self.body_fields();
        let body = serde_json::json!({ "error": error, "error_description": description });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.extra_headers(response.headers_mut());
        response
    }

    /// The answer for a browser on the web-login endpoints (`Accept` names
    /// `text/html`): the same status and headers as [`Self::into_response`],
    /// with a page that says what happened and links to `retry` (a path of
    /// the proxy's configuration). Nothing from the request is shown.
    pub fn into_html_response(self, retry: &str) -> Response<Full<Bytes>> {
        let (error, description) = self.body_fields();
        let status = self.status();
        let title = match status.as_u16() {
            401 => "Not logged in",
            503 => "LINE is not reachable right now",
            _ => "The login did not work",
        };
        let page = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\n<body><h1>{title}</h1>\n<p>{}</p>\n<p><a href=\"{}\">Log in with LINE again</a></p>\n<p><small>{error}</small></p></body></html>\n",
            html_escape(description),
            html_escape(retry),
        );
        let mut response = Response::new(Full::new(Bytes::from(page)));
        *response.status_mut() = status;
        response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        self.extra_headers(response.headers_mut());
        response
    }

    /// The answer for a gRPC call (`content-type: application/grpc*`): what a
    /// gRPC client understands is HTTP 200 with `grpc-status` and
    /// `grpc-message` in a headers-only ("Trailers-Only") response; an HTTP 401
    /// or 503 it reports as an opaque transport error.
    /// `content_type` is `application/grpc`, or a gRPC-Web call's own type.
    pub fn into_grpc_response(self, content_type: HeaderValue) -> Response<Full<Bytes>> {
        let (_, description) = self.body_fields();
        let mut response = Response::new(Full::new(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert("grpc-status", HeaderValue::from(self.grpc_status()));
        // grpc-message is percent-encoded (PROTOCOL-HTTP2.md); the descriptions
        // are fixed ASCII, so only `%` needs it.
        let message = description.replace('%', "%25");
        headers.insert("grpc-message", HeaderValue::try_from(message).expect("fixed ASCII descriptions"));
        self.extra_headers(headers);
        response
    }

    fn extra_headers(&self, headers: &mut http::HeaderMap) {
        match self {
            ProxyError::Client(ClientError::MissingCredential) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ProxyError::Client(ClientError::Credential(_) | ClientError::Rejected(_)) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
            }
            ProxyError::Line(e) => {
                headers.insert(RETRY_AFTER, HeaderValue::from(e.retry_after()));
            }
            ProxyError::NonceStore | ProxyError::NonceStoreFull => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::Limited { retry_after, .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(whole_seconds_at_least_one(*retry_after)));
            }
            ProxyError::Client(ClientError::NonceMethod) => {
                headers.insert(http::header::ALLOW, HeaderValue::from_static("GET"));
            }
            ProxyError::Client(ClientError::SessionMethod) => {
                headers.insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            }
            ProxyError::Client(ClientError::LoginMethod { allow }) => {
                headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
            }
            ProxyError::Client(ClientError::LoginDenied | ClientError::LoginCodeRefused) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ProxyError::LoginRedirect(location) => {
                // Built by the proxy from an escaped path: always valid.
                if let Ok(location) = HeaderValue::try_from(location.as_str()) {
                    headers.insert(http::header::LOCATION, location);
                }
                headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            _ => {}
        }
    }
}

/// Text for an HTML page: `& < > " '` escaped.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `Retry-After` is whole seconds: rounded up, and never 0 (that would invite
/// an immediate retry that fails again).
fn whole_seconds_at_least_one(d: std::time::Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::line::Endpoint;

    fn status(e: ProxyError) -> u16 {
        e.status().as_u16()
    }

    #[test]
    fn client_side_maps_to_4xx() {
        assert_eq!(status(ProxyError::Client(ClientError::MissingCredential)), 401);
        assert_eq!(status(ProxyError::Client(ClientError::Credential(CredentialError::Multiple))), 401);
        assert_eq!(status(ProxyError::Client(ClientError::Rejected(Rejection::WrongChannel))), 401);
        assert_eq!(status(ProxyError::Client(ClientError::BadPath(PathError::EncodedSeparator))), 400);
        assert_eq!(status(ProxyError::Client(ClientError::HeadersTooLarge)), 431);
    }

    #[test]
    fn line_side_maps_to_503_with_retry_after() {
        let e = ProxyError::Line(LineError::Timeout(Endpoint::Verify));
        assert_eq!(status(e.clone()), 503);
        let r = e.into_response();
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn upstream_side_maps_to_502_and_504() {
        assert_eq!(status(ProxyError::Upstream(UpstreamError::Unreachable)), 502);
        assert_eq!(status(ProxyError::Upstream(UpstreamError::Timeout)), 504);
        assert_eq!(status(ProxyError::Upstream(UpstreamError::UnrequestedUpgrade)), 502);
    }

    #[test]
    fn nonce_store_maps_to_503_and_nonce_method_to_405() {
        assert_eq!(status(ProxyError::NonceStore), 503);
        assert_eq!(ProxyError::NonceStore.into_response().headers()[RETRY_AFTER], "1");
        assert_eq!(status(ProxyError::Client(ClientError::NonceMethod)), 405);
    }

    #[test]
    fn status_outcome_and_counter_agree_for_every_variant() {
        let every = [
            ProxyError::Client(ClientError::MissingCredential),
            ProxyError::Client(ClientError::Credential(CredentialError::NotBearer)),
            ProxyError::Client(ClientError::Rejected(Rejection::Invalid)),
            ProxyError::Client(ClientError::BadPath(PathError::Backslash)),
            ProxyError::Client(ClientError::HeadersTooLarge),
            ProxyError::Client(ClientError::NonceMethod),
            ProxyError::Client(ClientError::SessionMethod),
            ProxyError::Client(ClientError::CrossSite),
            ProxyError::Client(ClientError::TwoCredentials),
            ProxyError::Client(ClientError::BadHost),
            ProxyError::Client(ClientError::BadBody),
            ProxyError::Client(ClientError::BadForwardedMethod),
            ProxyError::Client(ClientError::AmbiguousForwarded),
            ProxyError::Client(ClientError::LoginMethod { allow: "GET" }),
            ProxyError::Client(ClientError::LoginMethod { allow: "POST" }),
            ProxyError::Client(ClientError::LoginDenied),
            ProxyError::Client(ClientError::LoginFailed),
            ProxyError::Client(ClientError::LoginState),
            ProxyError::Client(ClientError::LoginCallback),
            ProxyError::Client(ClientError::LoginCodeRefused),
            ProxyError::LoginRedirect("/auth/login?return_to=%2F".into()),
            ProxyError::Line(LineError::Overloaded),
            ProxyError::NonceStore,
            ProxyError::NonceStoreFull,
            ProxyError::Upstream(UpstreamError::Unreachable),
            ProxyError::Upstream(UpstreamError::Protocol),
            ProxyError::Upstream(UpstreamError::Timeout),
            ProxyError::Upstream(UpstreamError::UnrequestedUpgrade),
            ProxyError::Upstream(UpstreamError::InvalidUpgrade),
            ProxyError::Internal("x"),
        ];
        for e in every {
            let c = e.class();
            let expected = match c.status.as_u16() {
                400 | 405 | 431 => (Outcome::BadRequest, None),
                401 | 403 => (Outcome::Rejected, Some(Refusal::Rejected)),
                302 => (Outcome::LoginRedirect, None),
                503 => (Outcome::Unavailable, Some(Refusal::Unavailable)),
                502 | 504 => (Outcome::UpstreamError, None),
                500 => (Outcome::InternalError, None),
                other => panic!("{e:?} maps to an unexpected {other}"),
            };
            assert_eq!((c.outcome, c.refusal), expected, "{e:?}");
            assert_eq!(e.clone().into_response().status(), c.status, "{e:?}");
        }
        // The nonce endpoint's 405 is a bad request, never an internal error.
        assert_eq!(ProxyError::Client(ClientError::NonceMethod).class().outcome, Outcome::BadRequest);
    }

    #[test]
    fn every_reason_code_is_in_the_reference() {
        let reference = include_str!("../docs/reference.md");
        let mut errors: Vec<ProxyError> = vec![
            ProxyError::Client(ClientError::MissingCredential),
            ProxyError::Client(ClientError::BadPath(PathError::Backslash)),
            ProxyError::Client(ClientError::HeadersTooLarge),
            ProxyError::Client(ClientError::NonceMethod),
            ProxyError::Client(ClientError::SessionMethod),
            ProxyError::Client(ClientError::CrossSite),
            ProxyError::Client(ClientError::TwoCredentials),
            ProxyError::Client(ClientError::BadHost),
            ProxyError::Client(ClientError::BadBody),
            ProxyError::Client(ClientError::BadForwardedMethod),
            ProxyError::Client(ClientError::AmbiguousForwarded),
            ProxyError::Client(ClientError::LoginMethod { allow: "GET" }),
            ProxyError::Client(ClientError::LoginMethod { allow: "POST" }),
            ProxyError::Client(ClientError::LoginDenied),
            ProxyError::Client(ClientError::LoginFailed),
            ProxyError::Client(ClientError::LoginState),
            ProxyError::Client(ClientError::LoginCallback),
            ProxyError::Client(ClientError::LoginCodeRefused),
            ProxyError::LoginRedirect("/auth/login?return_to=%2F".into()),
            ProxyError::NonceStore,
            ProxyError::NonceStoreFull,
            ProxyError::Upstream(UpstreamError::Unreachable),
            ProxyError::Upstream(UpstreamError::Protocol),
            ProxyError::Upstream(UpstreamError::Timeout),
            ProxyError::Upstream(UpstreamError::UnrequestedUpgrade),
            ProxyError::Upstream(UpstreamError::InvalidUpgrade),
            ProxyError::Internal("x"),
        ];
        errors.extend(
            [
                CredentialError::Multiple,
                CredentialError::NotBearer,
                CredentialError::Malformed,
                CredentialError::TooLong,
            ]
            .map(|c| ProxyError::Client(ClientError::Credential(c))),
        );
        errors.extend(Rejection::ALL.map(|r| ProxyError::Client(ClientError::Rejected(r))));
        errors.extend(
            [
                LineError::Timeout(Endpoint::Verify),
                LineError::Connect(Endpoint::Verify),
                LineError::RateLimited { endpoint: Endpoint::Verify, retry_after: None },
                LineError::Status { endpoint: Endpoint::Verify, status: 500 },
                LineError::Status { endpoint: Endpoint::Verify, status: 404 },
                LineError::BadResponse(Endpoint::Verify),
                LineError::Overloaded,
                LineError::BackingOff { retry_after: 1 },
                LineError::JwksUnavailable,
                LineError::LoginUnavailable,
            ]
            .map(ProxyError::Line),
        );
        for e in errors {
            let row = format!("| `{}` | {} |", e.reason(), e.status().as_u16());
            assert!(reference.contains(&row), "docs/reference.md has no row {row}");
        }
    }

    #[test]
    fn grpc_calls_get_a_grpc_status_in_a_200() {
        let r = ProxyError::Client(ClientError::MissingCredential)
            .into_grpc_response(HeaderValue::from_static("application/grpc"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "16");
        assert!(r.headers()["grpc-message"].to_str().unwrap().contains("LINE token"));
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
        let r = ProxyError::Line(LineError::Timeout(Endpoint::Verify))
            .into_grpc_response(HeaderValue::from_static("application/grpc"));
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert_eq!(ProxyError::Upstream(UpstreamError::Timeout).grpc_status(), 4);
        assert_eq!(ProxyError::Upstream(UpstreamError::Protocol).grpc_status(), 14);
        assert_eq!(ProxyError::Client(ClientError::BadPath(PathError::Backslash)).grpc_status(), 3);
    }

    #[test]
    fn internal_maps_to_500() {
        assert_eq!(status(ProxyError::Internal("x")), 500);
    }

    #[test]
    fn www_authenticate_follows_rfc_6750() {
        let r = ProxyError::Client(ClientError::MissingCredential).into_response();
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
        let r = ProxyError::Client(ClientError::Rejected(Rejection::Expired)).into_response();
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer error=\"invalid_token\"");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }
}
