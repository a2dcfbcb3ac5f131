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
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::{AuthMethod, Identity, Rejection, is_line_user_id, unix_now};
use crate::config::LineConfig;
use crate::telemetry::{EndpointLabels, LineCallLabels, Metrics};

/// Verifications in flight to the LINE Platform at once (each is two calls). More
/// wait up to `line.timeout_ms` for a slot, then fail closed (256).
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 256;
/// LINE's JSON answers are tiny; a longer body is treated as unreadable (64 KiB).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// LINE does not document `Retry-After`; when it sends one we pass it on, capped (60 seconds).
const MAX_RETRY_AFTER_SECONDS: u64 = 60;

/// Which LINE endpoint a call went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Verify,
    Profile,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Verify => "verify",
            Endpoint::Profile => "profile",
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
    RateLimited {
        endpoint: Endpoint,
        retry_after: Option<u64>,
    },
    #[error("LINE {} call answered HTTP {status}", .endpoint.as_str())]
    Status { endpoint: Endpoint, status: u16 },
    #[error("LINE {} call answered a body that is not the documented JSON", .0.as_str())]
    BadResponse(Endpoint),
    #[error("too many verifications waiting for the LINE Platform")]
    Overloaded,
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
        }
    }

    /// Seconds for the client's `Retry-After` (≥ 1).
    pub fn retry_after(&self) -> u64 {
        match self {
            LineError::RateLimited {
                retry_after: Some(s),
                ..
            } => (*s).clamp(1, MAX_RETRY_AFTER_SECONDS),
            LineError::RateLimited { .. } => 5,
            _ => 1,
        }
    }
}

/// One call's result: an answer LINE stands behind, or a rejection.
enum Answer<T> {
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

/// The outcome of verifying one access token with LINE.
pub enum AccessTokenVerdict {
    Valid(Identity),
    Rejected(Rejection),
}

/// Client for the LINE Platform, shared by all requests.
pub struct LineClient {
    http: reqwest::Client,
    verify_url: String,
    profile_url: String,
    channel_ids: Vec<String>,
    timeout: Duration,
    permits: Semaphore,
    metrics: Arc<Metrics>,
}

impl LineClient {
    pub fn new(config: &LineConfig, metrics: Arc<Metrics>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A redirect would send the token to a host we did not choose.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("line-auth-proxy/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            verify_url: format!("{}/oauth2/v2.1/verify", config.api_base_url),
            profile_url: format!("{}/v2/profile", config.api_base_url),
            channel_ids: config.channel_ids.clone(),
            timeout: config.timeout,
            permits: Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
            metrics,
        })
    }

    /// Verifies an access token: verify and profile concurrently, then LINE's
    /// documented checks (`client_id` is ours, `expires_in` > 0).
    pub async fn verify_access_token(&self, token: &str) -> Result<AccessTokenVerdict, LineError> {
        let _permit = tokio::time::timeout(self.timeout, self.permits.acquire())
            .await
            .map_err(|_| LineError::Overloaded)?
            .expect("the semaphore is never closed");
        let verify = self.call(
            Endpoint::Verify,
            self.http
                .get(&self.verify_url)
                .query(&[("access_token", token)]),
        );
        let profile = self.call(
            Endpoint::Profile,
            self.http.get(&self.profile_url).bearer_auth(token),
        );
        let (verify, profile) = tokio::join!(verify, profile);
        let verify = verify.and_then(|(status, body)| parse_verify(status, &body));
        let profile = profile.and_then(|(status, body)| parse_profile(status, &body));
        let (verified, profile) = match (verify, profile) {
            // A definitive rejection from either endpoint settles it, even if the
            // other call failed: the token is not going through either way.
            (Ok(Answer::Rejected(r)), _) | (_, Ok(Answer::Rejected(r))) => {
                return Ok(AccessTokenVerdict::Rejected(r));
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
            (Ok(Answer::Ok(v)), Ok(Answer::Ok(p))) => (v, p),
        };
        if !self.channel_ids.iter().any(|c| *c == verified.client_id) {
            tracing::info!(client_id = %verified.client_id, "access token issued to a channel not in line.channel_ids");
            return Ok(AccessTokenVerdict::Rejected(Rejection::WrongChannel));
        }
        if verified.expires_in <= 0 {
            return Ok(AccessTokenVerdict::Rejected(Rejection::NotPositiveExpiry));
        }
        Ok(AccessTokenVerdict::Valid(Identity {
            user_id: profile.user_id,
            display_name: profile.display_name,
            picture_url: profile.picture_url,
            email: None,
            channel_id: verified.client_id,
            method: AuthMethod::AccessToken,
            expires_at: unix_now().saturating_add(verified.expires_in as u64),
        }))
    }

    /// Sends one request and reads its body (bounded). Maps transport failures to
    /// [`LineError`] without ever formatting the `reqwest::Error` (it holds the URL).
    async fn call(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, Bytes), LineError> {
        let start = Instant::now();
        let result = send(endpoint, request).await;
        let elapsed = start.elapsed().as_secs_f64();
        self.metrics
            .line_duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.as_str(),
            })
            .observe(elapsed);
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
        self.metrics
            .line_requests
            .get_or_create(&LineCallLabels {
                endpoint: endpoint.as_str(),
                outcome,
            })
            .inc();
        match result {
            Ok((status, request_id, body)) => {
                if status != 200 {
                    let level_warn = status >= 429 || status == 403 || status == 404;
                    if level_warn {
                        tracing::warn!(endpoint = endpoint.as_str(), status, line_request_id = %request_id, "LINE Platform answered an error");
                    } else {
                        tracing::debug!(endpoint = endpoint.as_str(), status, line_request_id = %request_id, "LINE Platform refused the token");
                    }
                }
                if status == 429 {
                    return Err(LineError::RateLimited {
                        endpoint,
                        retry_after: parse_retry_after(&body.1),
                    });
                }
                Ok((status, body.0))
            }
            Err(e) => {
                tracing::warn!(endpoint = endpoint.as_str(), error = %e, "LINE Platform call failed");
                Err(e)
            }
        }
    }
}

/// The body plus LINE's `Retry-After` header value (if any).
type BodyAndRetry = (Bytes, Option<String>);

async fn send(
    endpoint: Endpoint,
    request: reqwest::RequestBuilder,
) -> Result<(u16, String, BodyAndRetry), LineError> {
    let classify = |e: reqwest::Error| {
        if e.is_timeout() {
            LineError::Timeout(endpoint)
        } else if e.is_connect() || e.is_request() {
            LineError::Connect(endpoint)
        } else {
            LineError::BadResponse(endpoint)
        }
    };
    let mut response = request.send().await.map_err(classify)?;
    let status = response.status().as_u16();
    let request_id = response
        .headers()
        .get("x-line-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .chars()
        .take(64)
        .collect::<String>();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(LineError::BadResponse(endpoint));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(LineError::BadResponse(endpoint));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, request_id, (body.freeze(), retry_after)))
}

fn parse_retry_after(value: &Option<String>) -> Option<u64> {
    value.as_deref().and_then(|v| v.trim().parse::<u64>().ok())
}

/// Classifies a status that is not 200: 400/401 are LINE refusing the token.
fn refusal<T>(endpoint: Endpoint, status: u16, body: &[u8]) -> Result<Answer<T>, LineError> {
    match status {
        400 | 401 => {
            // Bodies carry `error_description` (verify) or `message` (profile).
            let text = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                v.get("error_description")
                    .or_else(|| v.get("message"))
                    .and_then(Value::as_str)
                    .map(str::to_ascii_lowercase)
            });
            let rejection = match text {
                Some(t) if t.contains("expired") => Rejection::Expired,
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
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(Answer::Ok(VerifyOk {
        client_id,
        expires_in,
    }))
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
        assert_eq!(
            parse_verify(200, b"<html>").err(),
            Some(LineError::BadResponse(Endpoint::Verify))
        );
        assert_eq!(
            parse_verify(200, br#"{"client_id":"1"}"#).err(),
            Some(LineError::BadResponse(Endpoint::Verify))
        );
    }

    #[test]
    fn refusals_are_verdicts_and_other_statuses_are_errors() {
        let expired = br#"{"error":"invalid_request","error_description":"access token expired"}"#;
        assert!(matches!(
            parse_verify(400, expired),
            Ok(Answer::Rejected(Rejection::Expired))
        ));
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
        assert_eq!(
            parse_verify(500, b"").err(),
            Some(LineError::Status {
                endpoint: Endpoint::Verify,
                status: 500
            })
        );
        assert_eq!(
            parse_profile(403, b"").err(),
            Some(LineError::Status {
                endpoint: Endpoint::Profile,
                status: 403
            })
        );
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
        assert_eq!(
            parse_profile(200, bad_id).err(),
            Some(LineError::BadResponse(Endpoint::Profile))
        );
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        assert_eq!(LineError::Timeout(Endpoint::Verify).retry_after(), 1);
        assert_eq!(
            LineError::RateLimited {
                endpoint: Endpoint::Verify,
                retry_after: Some(0)
            }
            .retry_after(),
            1
        );
        assert_eq!(
            LineError::RateLimited {
                endpoint: Endpoint::Verify,
                retry_after: Some(3600)
            }
            .retry_after(),
            60
        );
        assert_eq!(
            LineError::RateLimited {
                endpoint: Endpoint::Verify,
                retry_after: None
            }
            .retry_after(),
            5
        );
    }
}
