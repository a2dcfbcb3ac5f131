//! The LINE Platform client: access-token verification.
//!
//! `GET /oauth2/v2.1/verify?access_token=…` and `GET /v2/profile` are issued
//! concurrently (one round trip). LINE's answers are classified into a verdict
//! (valid or definitively rejected) or a [`LineError`] (LINE could not answer:
//! fail closed with 503, never cached).
//!
//! The verify URL holds the token, so no `reqwest::Error` (whose `Display`
//! prints the URL) ever leaves this module: errors are mapped to [`LineError`]
//! here and carry only the endpoint name.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::{AuthMethod, Identity, Rejection, Verdict, is_line_user_id};
use crate::clock::{Clock, Stopwatch};
use crate::config::LineSection;
use crate::telemetry::{EndpointLabels, LineCallLabels, Metrics};
use crate::traces::{Kind, Span};

/// LINE's JSON answers are tiny; a longer body is treated as unreadable (64 KiB).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// LINE does not document `Retry-After`; when it sends one we pass it on, capped (60 seconds).
const MAX_RETRY_AFTER_SECONDS: u64 = 60;
/// Idle keep-alive connections kept to the LINE Platform (as nginx's
/// `keepalive 64`): more are closed when their call ends; those kept close
/// after 90 s unused.
const LINE_MAX_IDLE_CONNECTIONS: usize = 64;
/// The longest life LINE gives an access token: "valid for 30 days"
/// (2592000 seconds). A larger `expires_in` is clamped to it, so that
/// `X-Line-Expires-At` and the cache never outlive what LINE documents.
pub const MAX_ACCESS_TOKEN_LIFETIME_SECONDS: u64 = 30 * 24 * 60 * 60;

/// After a 429 without `Retry-After`, new verifications wait this long (5 seconds).
pub const DEFAULT_RATE_LIMIT_BACKOFF_SECONDS: u64 = 5;

/// After this many LINE calls in a row failed (5xx, timeout, connection
/// error, unreadable body, 429), new verifications back off for
/// [`FAILURE_BACKOFF_MS`]: in an outage the proxy answers 503 at once rather
/// than re-asking LINE on every request for a credential it has not cached.
pub const FAILURES_BEFORE_BACKOFF: u64 = 5;
/// How long the back-off after [`FAILURES_BEFORE_BACKOFF`] failures lasts (1 s).
/// After it, the next failed call backs off again at once; an answer ends it.
pub const FAILURE_BACKOFF_MS: u64 = 1000;

/// Which LINE endpoint a call went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /oauth2/v2.1/verify` (access token).
    Verify,
    /// `GET /v2/profile`.
    Profile,
    /// `POST /oauth2/v2.1/verify` (ID token).
    VerifyIdToken,
    /// `GET /oauth2/v2.1/certs`.
    Jwks,
    /// `POST /oauth2/v2.1/token` (web login: the authorization code).
    Token,
    /// `POST /oauth2/v2.1/revoke` (logout).
    Revoke,
}

impl Endpoint {
    /// How many there are (an array indexed by `endpoint as usize`).
    pub const COUNT: usize = 6;
    const _LAST_IS_COUNT_MINUS_ONE: () = assert!(Endpoint::Revoke as usize + 1 == Endpoint::COUNT);

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Verify => "verify",
            Endpoint::Profile => "profile",
            Endpoint::VerifyIdToken => "verify_id_token",
            Endpoint::Jwks => "jwks",
            Endpoint::Token => "token",
            Endpoint::Revoke => "revoke",
        }
    }

    /// The name of a call's span.
    pub fn span_name(self) -> &'static str {
        match self {
            Endpoint::Verify => "line.verify",
            Endpoint::Profile => "line.profile",
            Endpoint::VerifyIdToken => "line.verify_id_token",
            Endpoint::Jwks => "line.jwks",
            Endpoint::Token => "line.token",
            Endpoint::Revoke => "line.revoke",
        }
    }
}

/// The LINE Platform could not give an answer: 503 to the client, never cached.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("LINE {} call timed out", .0.as_str())]
    Timeout(Endpoint),
    #[error("could not reach the LINE Platform for {}", .0.as_str())]
    Connect(Endpoint),
    #[error("LINE {} call rate-limited (429)", .endpoint.as_str())]
    RateLimited { endpoint: Endpoint, retry_after: Option<u64> },
    #[error("LINE {} call answered HTTP {status}", .endpoint.as_str())]
    Status { endpoint: Endpoint, status: u16 },
    #[error("LINE {} call answered a body that is not the documented JSON", .0.as_str())]
    BadResponse(Endpoint),
    #[error("too many verifications waiting for the LINE Platform")]
    Overloaded,
    /// LINE rate-limited us moments ago, or failed [`FAILURES_BEFORE_BACKOFF`]
    /// calls in a row; no new call is sent until its `Retry-After` (or
    /// [`DEFAULT_RATE_LIMIT_BACKOFF_SECONDS`]), or [`FAILURE_BACKOFF_MS`], has passed.
    #[error("backing off after LINE rate-limited us or failed ({retry_after} s left)")]
    BackingOff { retry_after: u64 },
    /// No JWKS has loaded yet: ES256 ID tokens cannot be checked.
    #[error("LINE's JWKS has not been loaded")]
    JwksUnavailable,
    /// LINE's login came back with `error=server_error` or
    /// `temporarily_unavailable`: LINE could not log the user in right now.
    #[error("LINE's login answered that it is unavailable")]
    LoginUnavailable,
}

impl LineError {
    /// Stable reason code for logs and the `reason` label of 503s.
    pub fn reason(&self) -> &'static str {
        match self {
            LineError::Timeout(_) => "line_timeout",
            LineError::Connect(_) => "line_unreachable",
            LineError::RateLimited { .. } => "line_rate_limited",
            LineError::Status { status, .. } if *status >= 500 => "line_server_error",
            LineError::Status { .. } => "line_unexpected_status",
            LineError::BadResponse(_) => "line_bad_response",
            LineError::Overloaded => "line_overloaded",
            LineError::BackingOff { .. } => "line_backoff",
            LineError::JwksUnavailable => "jwks_unavailable",
            LineError::LoginUnavailable => "line_login_unavailable",
        }
    }

    /// Seconds for the client's `Retry-After` (≥ 1).
    pub fn retry_after(&self) -> u64 {
        match self {
            LineError::RateLimited { retry_after: Some(s), .. } => (*s).clamp(1, MAX_RETRY_AFTER_SECONDS),
            LineError::RateLimited { .. } => DEFAULT_RATE_LIMIT_BACKOFF_SECONDS,
            LineError::BackingOff { retry_after } => (*retry_after).clamp(1, MAX_RETRY_AFTER_SECONDS),
            _ => 1,
        }
    }
}

/// One call's result: an answer LINE stands behind, or a rejection.
pub(crate) enum Answer<T> {
    Ok(T),
    Rejected(Rejection),
}

struct VerifyOk {
    client_id: String,
    expires_in: i64,
}

struct Profile {
    user_id: String,
    display_name: Option<String>,
    picture_url: Option<String>,
}

/// Client for the LINE Platform, shared by all requests.
pub struct LineClient {
    http: reqwest::Client,
    verify_url: String,
    profile_url: String,
    /// `{api_base_url}/oauth2/v2.1/token` and `…/revoke` (web login).
    pub(crate) token_url: String,
    pub(crate) revoke_url: String,
    channel_ids: Vec<String>,
    timeout: Duration,
    /// `line.max_concurrent_calls` verifications in flight at once.
    permits: Semaphore,
    /// Unix milliseconds before which no new verification is sent (after a 429):
    /// hammering a rate-limited API only extends the limit for every user.
    backoff_until_ms: AtomicU64,
    /// LINE calls that failed in a row, across endpoints; any answer resets it.
    failures_in_a_row: AtomicU64,
    /// Outage start and end, for the audit stream.
    health: crate::audit::LineHealth,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl LineClient {
    pub fn new(config: &LineSection, clock: Clock, metrics: Arc<Metrics>) -> Result<Self, reqwest::Error> {
        let timeout = config.timeout_ms.duration();
        let api = config.api_base_url.as_string();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect would send the token to a host we did not choose.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            // A burst (256 verifications are two calls each) leaves at most
            // this many connections idle, not all of them for 90 s.
            .pool_max_idle_per_host(LINE_MAX_IDLE_CONNECTIONS)
            .user_agent(concat!("line-auth-proxy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            verify_url: format!("{api}/oauth2/v2.1/verify"),
            profile_url: format!("{api}/v2/profile"),
            token_url: format!("{api}/oauth2/v2.1/token"),
            revoke_url: format!("{api}/oauth2/v2.1/revoke"),
            channel_ids: config.channel_ids.clone(),
            timeout,
            permits: Semaphore::new(config.max_concurrent_calls.get()),
            backoff_until_ms: AtomicU64::new(0),
            failures_in_a_row: AtomicU64::new(0),
            health: crate::audit::LineHealth::default(),
            clock,
            metrics,
        })
    }

    /// Verifies an access token: verify and profile concurrently, then LINE's
    /// documented checks (`client_id` is ours, `expires_in` > 0).
    pub async fn verify_access_token(&self, token: &str) -> Result<Verdict, LineError> {
        let _slot = self.admit().await?;
        let verify = self.call(Endpoint::Verify, self.http.get(&self.verify_url).query(&[("access_token", token)]));
        let profile = self.call(Endpoint::Profile, self.http.get(&self.profile_url).bearer_auth(token));
        let (verify, profile) = tokio::join!(verify, profile);
        let verify = verify.and_then(|(status, body)| parse_verify(status, &body));
        let profile = profile.and_then(|(status, body)| parse_profile(status, &body));
        // A definitive rejection settles it even when the other call failed: the
        // token is not going through either way, and a rejection can be cached.
        let verified = match verify {
            Ok(Answer::Ok(v)) => v,
            Ok(Answer::Rejected(r)) => return Ok(Verdict::Rejected(r)),
            Err(e) => {
                return match profile {
                    Ok(Answer::Rejected(r)) => Ok(Verdict::Rejected(r)),
                    _ => Err(e),
                };
            }
        };
        if !self.channel_ids.contains(&verified.client_id) {
            tracing::info!(client_id = %verified.client_id, "credential issued to a channel not in line.channel_ids");
            return Ok(Verdict::Rejected(Rejection::WrongChannel));
        }
        if verified.expires_in <= 0 {
            return Ok(Verdict::Rejected(Rejection::NotPositiveExpiry));
        }
        let profile = match profile {
            Ok(Answer::Ok(p)) => p,
            Ok(Answer::Rejected(r)) => return Ok(Verdict::Rejected(r)),
            Err(e) => return Err(e),
        };
        Ok(Verdict::Valid(Identity {
            user_id: profile.user_id,
            display_name: profile.display_name,
            picture_url: profile.picture_url,
            email: None,
            channel_id: verified.client_id,
            method: AuthMethod::AccessToken,
            expires_at: self
                .clock
                .unix_seconds()
                .saturating_add((verified.expires_in as u64).min(MAX_ACCESS_TOKEN_LIFETIME_SECONDS)),
            amr: Vec::new(),
        }))
    }

    /// Admission for one verification: refused while backing off (after a 429,
    /// or after [`FAILURES_BEFORE_BACKOFF`] failed calls in a row),
    /// and bounded to `line.max_concurrent_calls` in flight; a verification
    /// waits up to `line.timeout_ms` for a slot, then fails closed. Every path
    /// that calls LINE for a client's credential goes through here.
    pub(crate) async fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, LineError> {
        let now = self.clock.unix_millis();
        let until = self.backoff_until_ms.load(Ordering::Relaxed);
        if now < until {
            return Err(LineError::BackingOff { retry_after: (until - now).div_ceil(1000) });
        }
        Ok(self
            .clock
            .timeout(self.timeout, self.permits.acquire())
            .await
            .map_err(|_| LineError::Overloaded)?
            .expect("the semaphore is never closed"))
    }

    /// Counts a call's outcome toward the back-off after
    /// [`FAILURES_BEFORE_BACKOFF`] failures in a row. The count is not reset when
    /// the back-off starts, so once it ends the first call that fails again
    /// backs off again; one answer (a refusal too) resets it.
    fn count_failure(&self, failed: bool) {
        if !failed {
            // A load first: in steady state no call writes the shared line.
            if self.failures_in_a_row.load(Ordering::Relaxed) != 0 {
                self.failures_in_a_row.store(0, Ordering::Relaxed);
            }
            return;
        }
        if self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= FAILURES_BEFORE_BACKOFF {
            self.backoff_until_ms.fetch_max(self.clock.unix_millis() + FAILURE_BACKOFF_MS, Ordering::Relaxed);
        }
    }

    /// A GET request on the shared client (timeouts, no redirects).
    pub(crate) fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.http.get(url)
    }

    /// A form POST to LINE's ID-token verify endpoint.
    pub(crate) fn post_verify_id_token(&self, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
        self.post_form(&self.verify_url, form)
    }

    /// A form POST (`application/x-www-form-urlencoded`) on the shared client.
    pub(crate) fn post_form(&self, url: &str, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
        self.http
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(crate::login::form(form))
    }

    /// Sends one request and reads its body (bounded). Maps transport failures to
    /// [`LineError`] without ever formatting the `reqwest::Error` (it holds the URL).
    pub(crate) async fn call(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Bytes), LineError> {
        let stopwatch = Stopwatch::start();
        let span = Span::child(endpoint.span_name(), Kind::Client);
        let (host, result) = send(endpoint, request).await;
        span.attr("server.address", &host);
        let result = result.map_err(|(error, cause)| {
            // The host and the class of failure, never reqwest's error: its
            // text holds the URL, and the verify URL holds the token.
            tracing::warn!(endpoint = endpoint.as_str(), host = %host, cause, "LINE Platform call failed");
            span.error(cause);
            error
        });
        if let Ok((status, request_id, _)) = &result {
            span.attr_int("http.response.status_code", i64::from(*status));
            span.attr("line.request_id", request_id);
            if *status >= 500 || *status == 429 {
                span.error("line_error_status");
            }
        }
        span.end();
        let elapsed = stopwatch.seconds();
        self.metrics.line_duration.get_or_create(&EndpointLabels { endpoint: endpoint.as_str() }).observe(elapsed);
        let outcome = match &result {
            Ok((status, _, _)) => match status {
                200 => "ok",
                400 | 401 => "rejected",
                429 => "rate_limited",
                500..=599 => "server_error",
                _ => "unexpected_status",
            },
            Err(LineError::Timeout(_)) => "timeout",
            Err(LineError::Connect(_)) => "connect_error",
            Err(_) => "bad_response",
        };
        self.metrics.line_requests.get_or_create(&LineCallLabels { endpoint: endpoint.as_str(), outcome }).inc();
        // An answer LINE stands behind (a refusal of the credential too), or
        // a failure: the outage state of the audit stream.
        let failure = match &result {
            Ok((429, _, _)) => Some("line_rate_limited"),
            Ok((500..=599, _, _)) => Some("line_server_error"),
            Ok(_) => None,
            Err(e) => Some(e.reason()),
        };
        self.health.note(endpoint, failure);
        self.count_failure(failure.is_some());
        match result {
            Ok((status, request_id, body)) => {
                if status != 200 {
                    let level_warn = status >= 429 || status == 403 || status == 404;
                    let cause = format!("status {status}");
                    if level_warn {
                        tracing::warn!(endpoint = endpoint.as_str(), host = %host, status, cause, line_request_id = %request_id, "LINE Platform answered an error");
                    } else {
                        tracing::debug!(endpoint = endpoint.as_str(), host = %host, status, line_request_id = %request_id, "LINE Platform refused the credential");
                    }
                }
                if status == 429 {
                    let retry_after = parse_retry_after(&body.1);
                    let seconds =
                        retry_after.unwrap_or(DEFAULT_RATE_LIMIT_BACKOFF_SECONDS).clamp(1, MAX_RETRY_AFTER_SECONDS);
                    self.backoff_until_ms.fetch_max(self.clock.unix_millis() + seconds * 1000, Ordering::Relaxed);
                    return Err(LineError::RateLimited { endpoint, retry_after });
                }
                Ok((status, body.0))
            }
            Err(e) => Err(e),
        }
    }
}

/// The body plus LINE's `Retry-After` header value (if any).
type BodyAndRetry = (Bytes, Option<String>);

/// A failed call: the error, and the class of its cause for the log.
type Failure = (LineError, &'static str);

/// The call; its host (`host[:port]`, for the log) comes first, whatever happens.
async fn send(
    endpoint: Endpoint,
    request: reqwest::RequestBuilder,
) -> (String, Result<(u16, String, BodyAndRetry), Failure>) {
    let (client, request) = request.build_split();
    let request = match request {
        Ok(request) => request,
        Err(_) => return ("-".to_owned(), Err((LineError::Connect(endpoint), "request"))),
    };
    let url = request.url();
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or("-")),
        None => url.host_str().unwrap_or("-").to_owned(),
    };
    (host, receive(endpoint, client.execute(request).await).await)
}

/// The class of a failed call's cause: `timeout`, `dns`, `connect_refused`,
/// `connection_reset`, `tls`, `connect` (another connection failure), or
/// `bad_body` (the answer broke off). Read from the error's sources by type
/// and kind; nothing of its text is kept (it holds the URL).
pub(crate) fn cause_of(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        return "timeout";
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if inner.downcast_ref::<rustls::Error>().is_some() {
            return "tls";
        }
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connect_refused",
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    return "connection_reset";
                }
                std::io::ErrorKind::TimedOut => return "timeout",
                _ => {}
            }
            if io.get_ref().is_some_and(|e| e.downcast_ref::<rustls::Error>().is_some()) {
                return "tls";
            }
        }
        // hyper-util's connector names a failed lookup "dns error".
        if inner.to_string() == "dns error" {
            return "dns";
        }
        source = inner.source();
    }
    if e.is_connect() || e.is_request() { "connect" } else { "bad_body" }
}

async fn receive(
    endpoint: Endpoint,
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<(u16, String, BodyAndRetry), Failure> {
    let classify = |e: reqwest::Error| {
        let cause = cause_of(&e);
        let error = if e.is_timeout() {
            LineError::Timeout(endpoint)
        } else if e.is_connect() || e.is_request() {
            LineError::Connect(endpoint)
        } else {
            LineError::BadResponse(endpoint)
        };
        (error, cause)
    };
    let mut response = response.map_err(classify)?;
    let status = response.status().as_u16();
    let request_id = response
        .headers()
        .get("x-line-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .chars()
        .take(64)
        .collect::<String>();
    let retry_after =
        response.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if response.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
        return Err((LineError::BadResponse(endpoint), "body_too_large"));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err((LineError::BadResponse(endpoint), "body_too_large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, request_id, (body.freeze(), retry_after)))
}

fn parse_retry_after(value: &Option<String>) -> Option<u64> {
    value.as_deref().and_then(|v| v.trim().parse::<u64>().ok())
}

/// Classifies a status that is not 200: 400/401 are LINE refusing the token.
pub(crate) fn refusal<T>(endpoint: Endpoint, status: u16, body: &[u8]) -> Result<Answer<T>, LineError> {
    match status {
        // The profile endpoint answers 403 to a token without the `profile`
        // scope: the token cannot identify anyone, so it is refused.
        403 if endpoint == Endpoint::Profile => Ok(Answer::Rejected(Rejection::NoProfileScope)),
        400 | 401 => {
            // Bodies carry `error_description` (verify) or `message` (profile).
            // A 400/401 without LINE's JSON (an intermediary's HTML page, say) is
            // not LINE's verdict: unavailable, not a cached rejection.
            let v = serde_json::from_slice::<Value>(body).map_err(|_| LineError::BadResponse(endpoint))?;
            if v.get("error").is_none() && v.get("error_description").is_none() && v.get("message").is_none() {
                return Err(LineError::BadResponse(endpoint));
            }
            let text =
                v.get("error_description").or_else(|| v.get("message")).and_then(Value::as_str).map(str::to_owned);
            let rejection = match (endpoint, text.as_deref()) {
                // LINE's documented ID-token verify errors (LINE-API.md §5).
                (Endpoint::VerifyIdToken, Some("Invalid IdToken Issuer.")) => Rejection::WrongIssuer,
                (Endpoint::VerifyIdToken, Some("IdToken expired.")) => Rejection::Expired,
                (Endpoint::VerifyIdToken, Some("Invalid IdToken Audience.")) => Rejection::WrongChannel,
                (Endpoint::VerifyIdToken, Some("Invalid IdToken Nonce.")) => Rejection::NonceMismatch,
                (Endpoint::VerifyIdToken, Some("Invalid IdToken Subject Identifier.")) => Rejection::BadSubject,
                (Endpoint::VerifyIdToken, _) => Rejection::Invalid,
                (_, Some(t)) if t.to_ascii_lowercase().contains("expired") => Rejection::Expired,
                _ => Rejection::Invalid,
            };
            Ok(Answer::Rejected(rejection))
        }
        _ => Err(LineError::Status { endpoint, status }),
    }
}

fn parse_verify(status: u16, body: &[u8]) -> Result<Answer<VerifyOk>, LineError> {
    if status != 200 {
        return refusal(Endpoint::Verify, status, body);
    }
    let bad = || LineError::BadResponse(Endpoint::Verify);
    let v: Value = serde_json::from_slice(body).map_err(|_| bad())?;
    // Documented as a string; compared as a string whatever JSON type arrives.
    let client_id = match v.get("client_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(bad()),
    };
    let expires_in = match v.get("expires_in") {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(Answer::Ok(VerifyOk { client_id, expires_in }))
}

fn parse_profile(status: u16, body: &[u8]) -> Result<Answer<Profile>, LineError> {
    if status != 200 {
        return refusal(Endpoint::Profile, status, body);
    }
    let bad = || LineError::BadResponse(Endpoint::Profile);
    let v: Value = serde_json::from_slice(body).map_err(|_| bad())?;
    let user_id = v.get("userId").and_then(Value::as_str).ok_or_else(bad)?;
    if !is_line_user_id(user_id) {
        return Err(bad());
    }
    let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    Ok(Answer::Ok(Profile {
        user_id: user_id.to_owned(),
        display_name: text("displayName"),
        picture_url: text("pictureUrl"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_parsing_is_tolerant_and_strict_where_it_matters() {
        let ok = br#"{"scope":"profile openid","client_id":"1440057261","expires_in":2591659,"new_field":[1]}"#;
        match parse_verify(200, ok).unwrap() {
            Answer::Ok(v) => {
                assert_eq!(v.client_id, "1440057261");
                assert_eq!(v.expires_in, 2591659);
            }
            Answer::Rejected(_) => panic!("rejected"),
        }
        let numeric = br#"{"client_id":1440057261,"expires_in":10}"#;
        assert!(
            matches!(parse_verify(200, numeric), Ok(Answer::Ok(VerifyOk { ref client_id, .. })) if client_id == "1440057261")
        );
        assert_eq!(parse_verify(200, b"<html>").err(), Some(LineError::BadResponse(Endpoint::Verify)));
        assert_eq!(parse_verify(200, br#"{"client_id":"1"}"#).err(), Some(LineError::BadResponse(Endpoint::Verify)));
    }

    #[test]
    fn refusals_are_verdicts_and_other_statuses_are_errors() {
        let expired = br#"{"error":"invalid_request","error_description":"access token expired"}"#;
        assert!(matches!(parse_verify(400, expired), Ok(Answer::Rejected(Rejection::Expired))));
        assert!(matches!(
            parse_verify(400, br#"{"message":"failed to parse"}"#),
            Ok(Answer::Rejected(Rejection::Invalid))
        ));
        assert!(matches!(
            parse_profile(401, br#"{"message":"The access token revoked"}"#),
            Ok(Answer::Rejected(Rejection::Invalid))
        ));
        assert!(matches!(
            parse_profile(401, br#"{"message":"The access token expired"}"#),
            Ok(Answer::Rejected(Rejection::Expired))
        ));
        assert_eq!(parse_verify(500, b"").err(), Some(LineError::Status { endpoint: Endpoint::Verify, status: 500 }));
        assert!(matches!(parse_profile(403, b""), Ok(Answer::Rejected(Rejection::NoProfileScope))));
        assert_eq!(parse_verify(403, b"").err(), Some(LineError::Status { endpoint: Endpoint::Verify, status: 403 }));
    }

    #[test]
    fn profile_needs_a_real_user_id_and_nothing_else() {
        let minimal = br#"{"userId":"U4af4980629aaaaaaaaaaaaaaaaaaaaaa","displayName":"Brown"}"#;
        match parse_profile(200, minimal).unwrap() {
            Answer::Ok(p) => {
                assert_eq!(p.display_name.as_deref(), Some("Brown"));
                assert_eq!(p.picture_url, None);
            }
            Answer::Rejected(_) => panic!("rejected"),
        }
        let bad_id = br#"{"userId":"U4af\r\nX: y","displayName":"Brown"}"#;
        assert_eq!(parse_profile(200, bad_id).err(), Some(LineError::BadResponse(Endpoint::Profile)));
    }

    #[test]
    fn a_refusal_without_lines_json_is_unavailability() {
        assert_eq!(
            parse_verify(400, b"<html>Bad Request</html>").err(),
            Some(LineError::BadResponse(Endpoint::Verify))
        );
        assert_eq!(parse_profile(401, b"{}").err(), Some(LineError::BadResponse(Endpoint::Profile)));
        assert!(matches!(
            parse_verify(400, br#"{"error":"invalid_request"}"#),
            Ok(Answer::Rejected(Rejection::Invalid))
        ));
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        assert_eq!(LineError::Timeout(Endpoint::Verify).retry_after(), 1);
        assert_eq!(LineError::RateLimited { endpoint: Endpoint::Verify, retry_after: Some(0) }.retry_after(), 1);
        assert_eq!(LineError::RateLimited { endpoint: Endpoint::Verify, retry_after: Some(3600) }.retry_after(), 60);
        assert_eq!(LineError::RateLimited { endpoint: Endpoint::Verify, retry_after: None }.retry_after(), 5);
    }
}
