//! The audit stream: one event (target `audit`, level `info`) per
//! authentication decision that ends in a session or a refusal, and per
//! change of the LINE Platform's health. Never a token, a cookie, a code or
//! a secret: the user as `log.user_id` says, the channel, the route, the
//! client address, the reason code and the request id.
//!
//! Where it goes: with `log.audit_file`, to that file alone as JSON lines
//! ([`AuditFile`]: buffered, flushed every second and at the end of the
//! drain, reopened on SIGHUP for log rotation); with `--log-format json`, to
//! stderr as the same JSON lines; with text logs, to stderr with the rest.
//! The JSON form is written by [`AuditLayer`], which fills in the
//! `request_id` of an event raised inside a request's `line` or `redis` span
//! (a LINE outage noticed by a verification) from that span.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The tracing target of audit events.
pub const TARGET: &str = "audit";

/// What was decided: the `event` field of an audit line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Web login's callback: LINE's ID token verified, a session cookie set.
    Login,
    /// The session exchange turned a Bearer access token into a session cookie.
    SessionCreated,
    /// A session LINE no longer stands behind (its token refused): the cookie cleared.
    SessionEnded,
    /// `login.logout_path` ended a session (or cleared a cookie that held none).
    Logout,
    /// A credential refused (401), with its reason.
    Rejected,
    /// An ID token whose nonce was never issued here or was used already.
    NonceReplay,
    /// A cross-site request with the session cookie (403), or a login
    /// callback whose `state` is not this browser's (400).
    CsrfRefused,
    /// A LINE call failed (timeout, unreachable, 5xx, 429, bad body) after
    /// the last one had an answer.
    LineOutageStarted,
    /// A LINE call had an answer after the last one failed.
    LineOutageEnded,
}

impl Decision {
    pub const ALL: [Decision; 9] = [
        Decision::Login,
        Decision::SessionCreated,
        Decision::SessionEnded,
        Decision::Logout,
        Decision::Rejected,
        Decision::NonceReplay,
        Decision::CsrfRefused,
        Decision::LineOutageStarted,
        Decision::LineOutageEnded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Login => "login",
            Decision::SessionCreated => "session_created",
            Decision::SessionEnded => "session_ended",
            Decision::Logout => "logout",
            Decision::Rejected => "rejected",
            Decision::NonceReplay => "nonce_replay",
            Decision::CsrfRefused => "csrf_refused",
            Decision::LineOutageStarted => "line_outage_started",
            Decision::LineOutageEnded => "line_outage_ended",
        }
    }
}

/// Who a decision was about, when the proxy knows: the session's user and channel.
#[derive(Clone, Debug)]
pub struct Subject {
    pub user_id: String,
    pub channel_id: String,
}

/// A request's decision that its outcome alone does not name.
#[derive(Clone, Debug)]
pub struct Note {
    pub decision: Decision,
    pub subject: Option<Subject>,
    /// Why, when the answer's own reason code says something else (a
    /// session LINE refused ends in the redirect `login_required`).
    pub reason: Option<&'static str>,
}

/// The LINE Platform's health as the calls to each endpoint saw it: the
/// first failed call after an answered one starts an outage of that
/// endpoint, the first answered call after a failed one ends it. Each
/// change is one audit event. (Per endpoint: verify and profile run at
/// once, and one answering while the other fails is no recovery.)
#[derive(Default)]
pub(crate) struct LineHealth {
    down: [AtomicBool; crate::auth::line::Endpoint::COUNT],
}

impl LineHealth {
    /// Notes one call: `failure` is the reason code of a call that had no
    /// answer, `None` for one LINE answered.
    pub(crate) fn note(&self, endpoint: crate::auth::line::Endpoint, failure: Option<&'static str>) {
        let down = failure.is_some();
        let state = &self.down[endpoint as usize];
        // A load first: in steady state no call writes the shared line.
        if state.load(Ordering::Relaxed) == down || state.swap(down, Ordering::Relaxed) == down {
            return;
        }
        let event = if down { Decision::LineOutageStarted } else { Decision::LineOutageEnded };
        tracing::info!(
            target: TARGET,
            event = event.as_str(),
            reason = failure,
            endpoint = endpoint.as_str(),
            "LINE Platform health changed"
        );
    }
}

/// `log.audit_file`: the audit stream's own file, appended to.
pub struct AuditFile {
    path: PathBuf,
    writer: Mutex<BufWriter<File>>,
    /// A write failed and was reported (once until a write succeeds again).
    failing: AtomicBool,
}

/// The audit file of this process, once tracing is set up with one.
static INSTALLED: OnceLock<Arc<AuditFile>> = OnceLock::new();

impl AuditFile {
    /// Opens (creating, mode 0640) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<Arc<Self>> {
        let file = open_append(path)?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            writer: Mutex::new(BufWriter::with_capacity(64 * 1024, file)),
            failing: AtomicBool::new(false),
        }))
    }

    /// The file tracing writes the audit stream to, if any.
    pub fn installed() -> Option<&'static Arc<AuditFile>> {
        INSTALLED.get()
    }

    pub(crate) fn install(self: &Arc<Self>) {
        let _ = INSTALLED.set(self.clone());
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, BufWriter<File>> {
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_line(&self, line: &[u8]) {
        let written = self.lock().write_all(line);
        self.report(written);
    }

    /// Writes out what is buffered.
    pub fn flush(&self) {
        let flushed = self.lock().flush();
        self.report(flushed);
    }

    /// Log rotation: what is buffered goes to the old file, new lines to a
    /// file opened afresh at the path. If it cannot be opened, the old one
    /// is kept (and the error returned).
    pub fn reopen(&self) -> std::io::Result<()> {
        let file = open_append(&self.path)?;
        let mut writer = self.lock();
        let flushed = writer.flush();
        *writer = BufWriter::with_capacity(64 * 1024, file);
        drop(writer);
        self.report(flushed);
        Ok(())
    }

    /// A failed write is told on stderr once (not through tracing: this
    /// runs inside the subscriber), and again only after one succeeded.
    fn report(&self, result: std::io::Result<()>) {
        match result {
            Ok(()) => self.failing.store(false, Ordering::Relaxed),
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    eprintln!("line-auth-proxy: cannot write the audit file {}: {e}", self.path.display());
                }
            }
        }
    }

    /// Flushes every second and reopens on each SIGHUP; runs until aborted.
    pub(crate) async fn run_upkeep(self: Arc<Self>, mut hangups: tokio::sync::watch::Receiver<u64>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(),
                changed = hangups.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                    match self.reopen() {
                        Ok(()) => tracing::info!(path = %self.path.display(), "audit file reopened"),
                        Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "cannot reopen the audit file; writing on to the old one"),
                    }
                }
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
    options.open(path)
}

/// Writes audit events as JSON lines to `out`. Sees the audit target's
/// events and the spans that carry a `request_id`, nothing else.
pub struct AuditLayer {
    out: LineWriter,
}

/// Where the layer's lines go.
type LineWriter = Box<dyn Fn(&[u8]) + Send + Sync>;

impl AuditLayer {
    pub fn to_file(file: Arc<AuditFile>) -> Self {
        Self { out: Box::new(move |line| file.write_line(line)) }
    }

    pub fn to_writer<W>(writer: W) -> Self
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        Self {
            out: Box::new(move |line| {
                let _ = writer.make_writer().write_all(line);
            }),
        }
    }

    /// What the layer needs to see (its per-layer filter).
    pub fn wants(metadata: &Metadata<'_>) -> bool {
        if metadata.is_span() { metadata.fields().field("request_id").is_some() } else { metadata.target() == TARGET }
    }
}

/// A span's `request_id`, kept for the audit events raised inside it.
struct SpanRequestId(String);

impl<S> Layer<S> for AuditLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = JsonFields::default();
        attrs.record(&mut fields);
        let request_id = fields.0.into_iter().find(|(name, _)| *name == "request_id");
        if let (Some((_, serde_json::Value::String(request_id))), Some(span)) = (request_id, ctx.span(id)) {
            span.extensions_mut().insert(SpanRequestId(request_id));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut timestamp = String::new();
        let _ = tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut timestamp));
        let mut fields = JsonFields::default();
        fields.push("timestamp", timestamp.into());
        fields.push("level", event.metadata().level().as_str().into());
        fields.push("target", TARGET.into());
        event.record(&mut fields);
        // The message last: `event` is what a reader looks for first.
        if let Some(at) = fields.0.iter().position(|(name, _)| *name == "message") {
            let message = fields.0.remove(at);
            fields.0.push(message);
        }
        if !fields.0.iter().any(|(name, _)| *name == "request_id")
            && let Some(request_id) = ctx
                .event_scope(event)
                .into_iter()
                .flatten()
                .find_map(|span| span.extensions().get::<SpanRequestId>().map(|r| r.0.clone()))
        {
            fields.push("request_id", request_id.into());
        }
        // In the order written (`event` first after the header), not sorted.
        let mut bytes = Vec::with_capacity(256);
        bytes.push(b'{');
        for (i, (name, value)) in fields.0.iter().enumerate() {
            if i > 0 {
                bytes.push(b',');
            }
            let _ = serde_json::to_writer(&mut bytes, name);
            bytes.push(b':');
            let _ = serde_json::to_writer(&mut bytes, value);
        }
        bytes.extend_from_slice(b"}\n");
        (self.out)(&bytes);
    }
}

/// An event's or span's fields as JSON values, in the order recorded.
#[derive(Default)]
struct JsonFields(Vec<(&'static str, serde_json::Value)>);

impl JsonFields {
    fn push(&mut self, name: &'static str, value: serde_json::Value) {
        self.0.push((name, value));
    }
}

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field.name(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field.name(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field.name(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field.name(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field.name(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_audit_event_is_in_the_reference() {
        let reference = include_str!("../docs/reference.md");
        for decision in Decision::ALL {
            assert!(reference.contains(&format!("| `{}` |", decision.as_str())), "{decision:?} is not documented");
        }
    }

    #[test]
    fn a_reopened_file_gets_the_new_lines_and_the_old_one_the_buffered_ones() {
        let dir = std::env::temp_dir().join(format!("lap-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let file = AuditFile::open(&path).unwrap();
        file.write_line(b"one\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "buffered until a flush");
        std::fs::rename(&path, dir.join("audit.jsonl.1")).unwrap();
        file.reopen().unwrap();
        file.write_line(b"two\n");
        file.flush();
        assert_eq!(std::fs::read_to_string(dir.join("audit.jsonl.1")).unwrap(), "one\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
