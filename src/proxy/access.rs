//! The access line (target `access`): one per request, written when the
//! answer's body is done or dropped, so that it can say how many bytes went
//! each way and how long the whole exchange took. Built only when the
//! `access` target is enabled.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http::header::HeaderValue;
use http::uri::PathAndQuery;

use super::RequestCtx;
use crate::clock::Stopwatch;
use crate::config::UserIdLogging;
use crate::upstream::BodyProgress;

/// At most this many characters of `User-Agent` are logged.
pub const MAX_USER_AGENT_CHARS: usize = 256;

/// What one access line says, owned (it outlives the request's context).
pub struct AccessRecord {
    request_id: HeaderValue,
    mode: &'static str,
    method: Method,
    path: Option<PathAndQuery>,
    route: Arc<str>,
    status: u16,
    auth: &'static str,
    outcome: &'static str,
    cache: &'static str,
    grpc_status: Option<u16>,
    client: IpAddr,
    peer: SocketAddr,
    user_agent: Option<HeaderValue>,
    user: Option<LoggedUser>,
    trace_id: Option<crate::headers::trace::TraceId>,
    request_body: Option<Arc<BodyProgress>>,
    upstream: Option<Duration>,
    to_head: Duration,
    stopwatch: Stopwatch,
}

impl AccessRecord {
    /// The record of `ctx`'s request, answered with `status`; `None` when
    /// the `access` target is off (nothing is built for a line not written).
    pub fn of(ctx: &RequestCtx<'_>, status: u16, mode: &'static str, route: Arc<str>) -> Option<Self> {
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return None;
        }
        let user = match (ctx.state.config.log_user_id, &ctx.user) {
            (UserIdLogging::Plain, Some((id, _))) => Some(LoggedUser::Plain(id.clone())),
            (UserIdLogging::Hashed, Some((_, hash))) => Some(LoggedUser::Hashed(*hash)),
            _ => None,
        };
        Some(Self {
            request_id: ctx.request_id.clone(),
            mode,
            method: ctx.method.clone(),
            path: ctx.path.clone(),
            route,
            status,
            auth: ctx.auth.as_str(),
            outcome: ctx.reason.unwrap_or(ctx.outcome.as_str()),
            cache: ctx.cache.map_or("-", crate::cache::Lookup::as_str),
            grpc_status: ctx.grpc_status,
            client: ctx.client,
            peer: ctx.conn.peer,
            user_agent: ctx.user_agent.clone(),
            user,
            trace_id: ctx.trace.trace_id().copied(),
            request_body: ctx.request_body.clone(),
            upstream: ctx.upstream_latency,
            to_head: ctx.stopwatch.elapsed(),
            stopwatch: ctx.stopwatch,
        })
    }

    /// Writes the line: `response_bytes` data bytes of the answer went out.
    pub fn write(self, response_bytes: u64) {
        let user_agent = self.user_agent.as_ref().map(|v| truncated(v.as_bytes()));
        let user_id = self.user.as_ref().map(|u| String::from_utf8_lossy(u.as_bytes()));
        let request_bytes = self.request_body.as_ref().map_or(0, |p| p.bytes.load(Ordering::Relaxed));
        let duration = self.stopwatch.elapsed();
        tracing::info!(
            target: "access",
            request_id = self.request_id.to_str().unwrap_or("-"),
            mode = self.mode,
            method = self.method.as_str(),
            path = self.path.as_ref().map_or("-", |p| p.path()),
            route = &*self.route,
            status = self.status,
            auth = self.auth,
            outcome = self.outcome,
            cache = self.cache,
            grpc_status = self.grpc_status,
            client = %self.client,
            peer = %self.peer,
            user_agent = user_agent.as_deref().unwrap_or("-"),
            user_id = user_id.as_deref(),
            trace_id = self.trace_id.as_ref().and_then(|t| std::str::from_utf8(t).ok()),
            request_bytes,
            response_bytes,
            upstream_s = self.upstream.map(micros_as_seconds),
            duration_s = micros_as_seconds(duration),
            latency_us = self.to_head.as_micros() as u64,
        );
    }
}

/// Seconds with microsecond precision: `4254 µs` is `0.004254` as written.
fn micros_as_seconds(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e6
}

/// The first [`MAX_USER_AGENT_CHARS`] characters of a header value, bytes
/// that are not UTF-8 replaced, control characters as `?`.
fn truncated(value: &[u8]) -> Cow<'_, str> {
    // The usual agent: short printable ASCII, written as it is.
    if value.len() <= MAX_USER_AGENT_CHARS && value.iter().all(|b| (b' '..=b'~').contains(b)) {
        return Cow::Borrowed(std::str::from_utf8(value).expect("ASCII is UTF-8"));
    }
    Cow::Owned(
        String::from_utf8_lossy(value)
            .chars()
            .take(MAX_USER_AGENT_CHARS)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect(),
    )
}

/// The user id as the access line writes it: the id, or its hash (hex).
enum LoggedUser {
    Plain(Bytes),
    Hashed([u8; 16]),
}

impl LoggedUser {
    fn as_bytes(&self) -> &[u8] {
        match self {
            LoggedUser::Plain(id) => id,
            LoggedUser::Hashed(hash) => hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_keep_microseconds_and_agents_are_cut() {
        assert_eq!(micros_as_seconds(Duration::from_micros(4254)).to_string(), "0.004254");
        assert_eq!(micros_as_seconds(Duration::from_micros(1)).to_string(), "0.000001");
        assert_eq!(micros_as_seconds(Duration::from_secs(2)).to_string(), "2");
        let long = "a".repeat(1000);
        assert_eq!(truncated(long.as_bytes()).len(), MAX_USER_AGENT_CHARS);
        assert_eq!(truncated(b"curl/8\x7f\xffx"), "curl/8?\u{fffd}x");
    }
}
