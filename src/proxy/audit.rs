//! The audit event of a request, if its decision is one the audit stream
//! records (see [`crate::audit`]): written when the answer's head is made,
//! from what the request's context says.

use crate::audit::{Decision, Note, Subject, TARGET};
use crate::config::UserIdLogging;
use crate::telemetry::Outcome;

use super::RequestCtx;

/// The decision of `ctx`'s request, answered with `status`, on the audit
/// stream: a session made or ended, a logout, or a refusal. A request let
/// through writes nothing here (its access line says it).
pub fn record(ctx: &RequestCtx<'_>, status: u16, route: &str) {
    let (decision, subject, reason) = match (&ctx.audit, ctx.outcome, ctx.reason) {
        (Some(note), ..) => (note.decision, note.subject.as_ref(), note.reason.or(ctx.reason)),
        (None, _, Some(reason @ "nonce_unknown_or_used")) => (Decision::NonceReplay, None, Some(reason)),
        (None, _, Some(reason @ ("cross_site_request" | "login_state_mismatch"))) => {
            (Decision::CsrfRefused, None, Some(reason))
        }
        (None, Outcome::Rejected, reason) => (Decision::Rejected, None, reason),
        _ => return,
    };
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return;
    }
    let user_id = subject.and_then(|s| user_field(ctx.state.config.log_user_id, &s.user_id));
    tracing::info!(
        target: TARGET,
        event = decision.as_str(),
        reason,
        user_id = user_id.as_deref(),
        channel = subject.map(|s| s.channel_id.as_str()),
        route,
        mode = if ctx.forward_auth { "forward_auth" } else { "proxy" },
        auth = ctx.auth.as_str(),
        status,
        client = %ctx.client,
        request_id = ctx.request_id.to_str().unwrap_or("-"),
        trace_id = ctx.trace.trace_id().and_then(|t| std::str::from_utf8(t).ok()),
        "audit"
    );
}

/// The user as `log.user_id` shows it: the hash's 16 hex digits, the id, or nothing.
fn user_field(policy: UserIdLogging, user_id: &str) -> Option<String> {
    match policy {
        UserIdLogging::Hashed => {
            Some(String::from_utf8_lossy(&crate::headers::identity::user_hash(user_id)).into_owned())
        }
        UserIdLogging::Plain => Some(user_id.to_owned()),
        UserIdLogging::Off => None,
    }
}

/// The note of `decision` about a session's user, for [`RequestCtx::audit`].
pub fn note(decision: Decision, session: Option<&crate::session::Session>) -> Option<Note> {
    let subject = session.map(|s| Subject { user_id: s.user_id.clone(), channel_id: s.channel_id.clone() });
    Some(Note { decision, subject, reason: None })
}
