//! Logs and metrics: tracing initialisation and the Prometheus metric families.
//!
//! Every 401 and 503 is explained twice: by a `reason` label on a counter and by
//! the `outcome` field of the access log line. No label ever holds a token.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Dependencies log request URLs at debug and trace level, and the URL of LINE's
/// access-token verify endpoint holds the token: they are capped at `warn` by a
/// filter of their own that no `RUST_LOG` directive can outrank.
const DEPENDENCY_CAPS: &[&str] = &["hyper", "hyper_util", "reqwest", "h2", "rustls", "tokio_rustls", "hyper_rustls"];

/// Installs the global subscriber on stderr, through the buffer of
/// [`crate::log_writer`] (no request waits for stderr). `RUST_LOG` sets the level
/// (default `info`); the audit stream goes to `audit_file` when one is named
/// (opened here: an error is returned before anything is installed).
pub fn init_tracing(format: LogFormat, audit_file: Option<&std::path::Path>) -> std::io::Result<()> {
    let directives = std::env::var("RUST_LOG").ok();
    let audit = audit_file.map(crate::audit::AuditFile::open).transpose()?;
    init_tracing_audited(format, directives.as_deref(), crate::log_writer::StderrBuffer::install(), audit);
    Ok(())
}

/// Installs the global subscriber with explicit directives and writer (tests
/// capture the output this way), the audit stream with the rest. Does
/// nothing if one is already installed.
pub fn init_tracing_with<W>(format: LogFormat, directives: Option<&str>, writer: W)
where
    W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    init_tracing_audited(format, directives, writer, None);
}

/// [`init_tracing_with`] and the audit stream's own file, when there is one.
/// The audit target is at `info` unless `directives` name it; in its own
/// file or in JSON logs it is written by [`crate::audit::AuditLayer`].
pub fn init_tracing_audited<W>(
    format: LogFormat,
    directives: Option<&str>,
    writer: W,
    audit_file: Option<Arc<crate::audit::AuditFile>>,
) where
    W: for<'w> MakeWriter<'w> + Clone + Send + Sync + 'static,
{
    use crate::audit::{AuditLayer, TARGET};
    let mut env_filter = match directives {
        None => EnvFilter::new("info"),
        Some(d) => EnvFilter::try_new(d).unwrap_or_else(|e| {
            eprintln!("warning: RUST_LOG={d:?} is not a valid filter ({e}); logging at info");
            EnvFilter::new("info")
        }),
    };
    if !directives.is_some_and(|d| d.contains(TARGET)) {
        env_filter = env_filter.add_directive(format!("{TARGET}=info").parse().expect("a valid directive"));
    }
    let audit = match (&audit_file, format) {
        (Some(file), _) => {
            file.install();
            Some(AuditLayer::to_file(file.clone()))
        }
        (None, LogFormat::Json) => Some(AuditLayer::to_writer(writer.clone())),
        (None, LogFormat::Text) => None,
    };
    let mut caps = DEPENDENCY_CAPS
        .iter()
        .fold(Targets::new().with_default(LevelFilter::TRACE), |t, target| t.with_target(*target, LevelFilter::WARN));
    if audit.is_some() {
        caps = caps.with_target(TARGET, LevelFilter::OFF);
    }
    let layer = match format {
        // Colour codes only for a terminal: in a file or a log pipeline they are noise (and cost).
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(crate::log_fields::PlainFields)
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(writer)
            .boxed(),
    };
    // The audit layer's filter: its events at info and above (unless the
    // directives turn the target off), and the spans it reads request ids from.
    let audit_level = if directives.is_some_and(|d| d.contains(&format!("{TARGET}=off"))) {
        LevelFilter::OFF
    } else {
        LevelFilter::INFO
    };
    let audit = audit.map(|layer| {
        layer.with_filter(tracing_subscriber::filter::filter_fn(move |m| {
            AuditLayer::wants(m) && (m.is_span() || *m.level() <= audit_level)
        }))
    });
    let _ = tracing_subscriber::registry().with(layer.with_filter(env_filter).with_filter(caps)).with(audit).try_init();
}

/// What the proxy decided about one request: the `outcome` label of
/// `line_auth_proxy_requests_total`. What the upstream answered is not an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    /// A forward-auth check answered 200: the ingress may forward.
    Allowed,
    /// An `optional` route without a credential.
    Anonymous,
    /// A CORS preflight let through without a credential.
    Preflight,
    NonceIssued,
    /// The session exchange answered 204 with a session cookie, or the web
    /// login's callback 302 with one.
    SessionIssued,
    /// `login.path` sent the browser to LINE's authorize endpoint.
    LoginStarted,
    /// A browser navigation without a session was sent to `login.path`.
    LoginRedirect,
    /// `login.logout_path` ended the session.
    LoggedOut,
    /// 401, and 403 for a cross-site request with the session cookie.
    Rejected,
    /// 503: verification could not run.
    Unavailable,
    /// 400, 405, 431.
    BadRequest,
    /// 502, 504.
    UpstreamError,
    /// 500.
    InternalError,
    /// 429: a per-client budget of `[limits]` is spent.
    Limited,
}

impl Outcome {
    const ALL: [Outcome; 15] = [
        Outcome::Forwarded,
        Outcome::Allowed,
        Outcome::Anonymous,
        Outcome::Preflight,
        Outcome::NonceIssued,
        Outcome::SessionIssued,
        Outcome::LoginStarted,
        Outcome::LoginRedirect,
        Outcome::LoggedOut,
        Outcome::Rejected,
        Outcome::Unavailable,
        Outcome::BadRequest,
        Outcome::UpstreamError,
        Outcome::InternalError,
        Outcome::Limited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Allowed => "allowed",
            Outcome::Anonymous => "anonymous",
            Outcome::Preflight => "preflight",
            Outcome::NonceIssued => "nonce_issued",
            Outcome::SessionIssued => "session_issued",
            Outcome::LoginStarted => "login_started",
            Outcome::LoginRedirect => "login_redirect",
            Outcome::LoggedOut => "logged_out",
            Outcome::Rejected => "rejected",
            Outcome::Unavailable => "unavailable",
            Outcome::BadRequest => "bad_request",
            Outcome::UpstreamError => "upstream_error",
            Outcome::InternalError => "internal_error",
            Outcome::Limited => "limited",
        }
    }
}

/// The counters that explain a refusal by its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `line_auth_proxy_auth_rejections_total`: the proxy's 401s.
    Rejected,
    /// `line_auth_proxy_auth_unavailable_total`: the proxy's 503s.
    Unavailable,
    /// `line_auth_proxy_limited_total`: the proxy's 429s (and connections
    /// refused at accept), by the `[limits]` key that refused.
    Limited,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub outcome: &'static str,
    pub auth: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LineCallLabels {
    pub endpoint: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisLabels {
    /// `nonce` or `cache`.
    pub purpose: &'static str,
    pub op: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisRefusedLabels {
    /// `verdict` or `nonce`.
    pub purpose: &'static str,
    /// One of `redis_entry::REFUSAL_REASONS`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisOpLabels {
    pub purpose: &'static str,
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NonceLabels {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClassLabels {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteClassLabels {
    /// A configured `path_prefix`, [`ROUTE_DEFAULT`] or [`ROUTE_ENDPOINT`]:
    /// never the request's own path, so the series are as many as the routes.
    pub route: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub revision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConfigLabels {
    pub hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    pub dependency: &'static str,
}

/// The `route` label of a request no route matched (the default route).
pub const ROUTE_DEFAULT: &str = "default";
/// The `route` label of a request one of the proxy's own endpoints answered
/// (nonce, session exchange, web login) before routing.
pub const ROUTE_ENDPOINT: &str = "proxy_endpoint";
/// The git revision this binary was built from (`build.rs`).
pub const REVISION: &str = env!("LINE_AUTH_PROXY_REVISION");

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsReloadLabels {
    /// `ok` (the new pair serves new handshakes) or `error` (the old one stays).
    pub outcome: &'static str,
}

/// A gauge with no sample until it is first set: without TLS the certificate
/// expiry would otherwise read 0, long expired, to every alert on it.
#[derive(Clone, Debug)]
pub struct UnsetGauge(Arc<AtomicI64>);

impl UnsetGauge {
    const UNSET: i64 = i64::MIN;

    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|v| *v != Self::UNSET)
    }
}

impl Default for UnsetGauge {
    fn default() -> Self {
        Self(Arc::new(AtomicI64::new(Self::UNSET)))
    }
}

impl EncodeMetric for UnsetGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.get() {
            Some(value) => encoder.encode_gauge(&value),
            None => Ok(()),
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs … ~6.5 s: calls that leave the process (LINE, Redis, the upstream).
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// The proxy's own times: a verdict from the cache takes about a microsecond,
/// a whole hop tens of microseconds, so the 100 µs first bucket of
/// [`latency_histogram`] would hold nearly everything. 5 µs … ~10.5 s.
fn hop_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000005, 2.0, 22))
}

/// All metric families, registered once.
pub struct Metrics {
    registry: Registry,
    /// Requests by [`Outcome`] and route `auth` kind.
    pub requests: Family<RequestLabels, Counter>,
    /// `line_auth_proxy_forward_auth_requests_total{outcome,auth}`: checks of
    /// the forward-auth endpoint (never in `requests`: nothing was proxied).
    pub forward_auth_requests: Family<RequestLabels, Counter>,
    /// 401s by `reason` (missing_credential, token_expired, wrong_channel, …).
    pub rejections: Family<ReasonLabels, Counter>,
    /// 503s by `reason` (line_timeout, line_rate_limited, line_server_error, …).
    pub unavailable: Family<ReasonLabels, Counter>,
    /// Time to a verdict, by `source` (cache or line).
    pub auth_duration: HistogramFamily<SourceLabels>,
    /// Calls to the LINE Platform by `endpoint` and `outcome`.
    pub line_requests: Family<LineCallLabels, Counter>,
    pub line_duration: HistogramFamily<EndpointLabels>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_coalesced: Counter,
    pub cache_entries: Gauge,
    /// Verifications in flight (each shared by every request waiting for it).
    pub verifications_in_flight: Gauge,
    /// Upstream response-head latency.
    pub upstream_duration: Histogram,
    /// Upstream responses by status `class` (2xx, 4xx, …).
    pub upstream_responses: Family<StatusClassLabels, Counter>,
    pub open_connections: Gauge,
    /// `line_auth_proxy_request_duration_seconds{route,class}`: first byte
    /// of the request to the answer's head, the proxy's own answers included.
    pub request_duration: HistogramFamily<RouteClassLabels>,
    /// `line_auth_proxy_dependency_ready{dependency}`: 1 ready, 0 not; set
    /// at each scrape (a dependency the configuration does not use has no series).
    pub dependency_ready: Family<DependencyLabels, Gauge>,
    config_info: Family<ConfigLabels, Gauge>,
    /// The hash series `config_info` holds (one; a reload replaces it).
    config_hashes: std::sync::Mutex<Vec<ConfigLabels>>,
    /// 1 while settings of the file on disk wait for a restart.
    config_restart_required: Gauge,
    /// 1 when the last (re)load of the configuration was taken, 0 when refused.
    config_last_reload_success: Gauge,
    /// When the configuration was last (re)loaded or refused, unix seconds.
    config_last_reload_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The `process_*` metrics (no prefix), encoded after the proxy's own.
    process: Registry,
    /// Nonce events: issued, consumed, expired, rejected, store_full.
    pub nonces: Family<NonceLabels, Counter>,
    /// ES256 keys currently loaded from LINE's JWKS.
    pub jwks_keys: Gauge,
    /// `line_auth_proxy_jwks_refused_total{reason}`: key sets from LINE not taken.
    pub jwks_refused: Family<ReasonLabels, Counter>,
    /// Redis calls by `purpose` (nonce, cache), `op` and `outcome` (ok, error, timeout).
    pub redis_requests: Family<RedisLabels, Counter>,
    /// Redis calls retried once after the connection dropped (`purpose`, `op`).
    pub redis_retries: Family<RedisOpLabels, Counter>,
    pub redis_duration: HistogramFamily<RedisOpLabels>,
    /// `line_auth_proxy_redis_entries_refused_total{purpose,reason}`: values
    /// read from Redis and not used (an attack, or replicas with different keys).
    pub redis_entries_refused: Family<RedisRefusedLabels, Counter>,
    /// Verdicts found in the shared (Redis) tier.
    pub cache_shared_hits: Counter,
    pub cache_shared_misses: Counter,
    /// Shared-tier lookups or writes that failed (the request went on to LINE).
    pub cache_shared_errors: Counter,
    /// 429s and connections refused, by `reason` (the `[limits]` key).
    pub limited: Family<ReasonLabels, Counter>,
    /// Clients each limit tracks (owing budget, or with connections open).
    pub limit_clients: Family<LimitLabels, Gauge>,
    /// The served TLS certificate's notAfter, unix seconds (no sample without TLS).
    pub tls_cert_expiry: UnsetGauge,
    /// Reloads of the TLS files by `outcome` (ok, error).
    pub tls_reloads: Family<TlsReloadLabels, Counter>,
    request_ids: AtomicU64,
    /// Pre-resolved handles for the per-request series: the hot path increments
    /// an atomic instead of hashing a label set under a lock.
    hot: Hot,
}

/// Route auth kinds.
const AUTHS: [&str; 4] = ["none", "access_token", "optional", "id_token"];
/// Sources of a verdict.
const SOURCES: [&str; 4] = ["cache", "line", "local", "shared"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

struct Hot {
    requests: Vec<Counter>,
    auth_duration: Vec<Histogram>,
    upstream_responses: Vec<Counter>,
}

/// The request-duration series of one configuration's routes (each reload
/// builds its own; a prefix kept across reloads keeps its series).
pub struct RouteMetrics {
    /// `[route slot][class]`: slot 0 [`ROUTE_ENDPOINT`], 1 [`ROUTE_DEFAULT`],
    /// then the configured routes in order.
    request_duration: Vec<[Histogram; 5]>,
    /// The `route` label of each slot, for the access line too.
    route_labels: Vec<Arc<str>>,
}

impl RouteMetrics {
    /// The `route` label of a route slot (see [`RouteMetrics::observe_request`]).
    pub fn route_label(&self, route_slot: usize) -> Arc<str> {
        self.route_labels.get(route_slot).cloned().unwrap_or_else(|| Arc::from(ROUTE_DEFAULT))
    }

    /// Records one request's time: `route_slot` 0 for the proxy's own
    /// endpoints, 1 for the default route, `2 + i` for the configured route `i`.
    pub fn observe_request(&self, route_slot: usize, status: u16, seconds: f64) {
        if let Some(histograms) = self.request_duration.get(route_slot) {
            histograms[class_index(status)].observe(seconds);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("line_auth_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests by outcome and route auth kind", requests.clone());
        let forward_auth_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "forward_auth_requests",
            "Forward-auth checks by outcome and the route auth kind of the original request",
            forward_auth_requests.clone(),
        );
        let rejections = Family::<ReasonLabels, Counter>::default();
        registry.register("auth_rejections", "401 answers by reason", rejections.clone());
        let unavailable = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_unavailable",
            "503 answers (verification could not run) by reason",
            unavailable.clone(),
        );
        let auth_duration = HistogramFamily::<SourceLabels>::new_with_constructor(hop_histogram as fn() -> Histogram);
        registry.register("auth_duration_seconds", "Time to a verdict by source (cache, line)", auth_duration.clone());
        let line_requests = Family::<LineCallLabels, Counter>::default();
        registry.register("line_requests", "Calls to the LINE Platform by endpoint and outcome", line_requests.clone());
        let line_duration =
            HistogramFamily::<EndpointLabels>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "line_request_duration_seconds",
            "LINE Platform call latency by endpoint",
            line_duration.clone(),
        );
        let cache_hits = Counter::default();
        registry.register("cache_hits", "Verdicts served from the cache", cache_hits.clone());
        let cache_misses = Counter::default();
        registry.register("cache_misses", "Verdicts that needed the LINE Platform", cache_misses.clone());
        let cache_coalesced = Counter::default();
        registry.register(
            "cache_coalesced",
            "Requests that waited on another request's LINE call for the same token",
            cache_coalesced.clone(),
        );
        let verifications_in_flight = Gauge::default();
        registry.register(
            "verifications_in_flight",
            "Verifications in flight, each shared by the requests waiting for it",
            verifications_in_flight.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register("cache_entries", "Verdicts currently cached", cache_entries.clone());
        let upstream_duration = latency_histogram();
        registry.register("upstream_duration_seconds", "Upstream response-head latency", upstream_duration.clone());
        let upstream_responses = Family::<StatusClassLabels, Counter>::default();
        registry.register("upstream_responses", "Upstream responses by status class", upstream_responses.clone());
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stderr could not take them fast enough (the buffer was full)",
            crate::log_writer::DROPPED.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Open client connections on the proxy listener",
            open_connections.clone(),
        );
        let nonces = Family::<NonceLabels, Counter>::default();
        registry.register("nonces", "Nonce events: issued, consumed, expired, rejected, store_full", nonces.clone());
        let jwks_keys = Gauge::default();
        registry.register("jwks_keys", "ES256 keys loaded from LINE's JWKS", jwks_keys.clone());
        let jwks_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "jwks_refused",
            "Key sets fetched from LINE and not taken (the last good set kept), by reason",
            jwks_refused.clone(),
        );
        for reason in crate::auth::jwks::REFUSAL_REASONS {
            let _ = jwks_refused.get_or_create(&ReasonLabels { reason });
        }
        let redis_requests = Family::<RedisLabels, Counter>::default();
        registry.register("redis_requests", "Redis calls by purpose, operation and outcome", redis_requests.clone());
        let redis_retries = Family::<RedisOpLabels, Counter>::default();
        registry.register(
            "redis_retries",
            "Redis calls retried once on a new connection after theirs dropped, by purpose and operation",
            redis_retries.clone(),
        );
        let redis_duration =
            HistogramFamily::<RedisOpLabels>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "redis_request_duration_seconds",
            "Redis call latency by purpose and operation",
            redis_duration.clone(),
        );
        let redis_entries_refused = Family::<RedisRefusedLabels, Counter>::default();
        registry.register(
            "redis_entries_refused",
            "Values read from Redis and not used (no valid MAC, too large, malformed), by purpose and reason",
            redis_entries_refused.clone(),
        );
        let cache_shared_hits = Counter::default();
        registry.register("cache_shared_hits", "Verdicts served from the shared Redis tier", cache_shared_hits.clone());
        let cache_shared_misses = Counter::default();
        registry.register("cache_shared_misses", "Shared-tier lookups that found nothing", cache_shared_misses.clone());
        let cache_shared_errors = Counter::default();
        registry.register(
            "cache_shared_errors",
            "Shared-tier calls that failed (degraded to memory + LINE)",
            cache_shared_errors.clone(),
        );
        let limited = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "limited",
            "429 answers and refused connections by the [limits] key that refused",
            limited.clone(),
        );
        let limit_clients = Family::<LimitLabels, Gauge>::default();
        registry.register("limit_clients", "Client addresses each [limits] key tracks", limit_clients.clone());
        for limit in crate::limits::Limit::ALL {
            let _ = limited.get_or_create(&ReasonLabels { reason: limit.as_str() });
            if limit != crate::limits::Limit::LiveNonces {
                let _ = limit_clients.get_or_create(&LimitLabels { limit: limit.as_str() });
            }
        }
        let tls_cert_expiry = UnsetGauge::default();
        registry.register(
            "tls_cert_expiry_timestamp_seconds",
            "notAfter of the TLS certificate new handshakes get, unix seconds (only with TLS)",
            tls_cert_expiry.clone(),
        );
        let tls_reloads = Family::<TlsReloadLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Re-reads of the TLS certificate and key (SIGHUP or a file change) by outcome",
            tls_reloads.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register("build_info", "Always 1: the version and git revision of this binary", build_info.clone());
        build_info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION"), revision: REVISION }).set(1);
        let config_info = Family::<ConfigLabels, Gauge>::default();
        registry.register(
            "config_info",
            "Always 1: the hash of the configuration in force (its settings, not its comments; URL passwords left out)",
            config_info.clone(),
        );
        let config_restart_required = Gauge::default();
        registry.register(
            "config_restart_required",
            "1 while settings of the configuration file (listeners, TLS files, [upstream], [otel], log.audit_file) wait for a restart",
            config_restart_required.clone(),
        );
        let config_last_reload_success = Gauge::default();
        registry.register(
            "config_last_reload_success",
            "1 when the last load or reload of the configuration was taken, 0 when it was refused (the previous one stays)",
            config_last_reload_success.clone(),
        );
        let config_last_reload_timestamp = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "config_last_reload_timestamp_seconds",
            "When the configuration was last loaded, reloaded or refused, unix seconds",
            config_last_reload_timestamp.clone(),
        );
        let dependency_ready = Family::<DependencyLabels, Gauge>::default();
        registry.register(
            "dependency_ready",
            "1 when the dependency is ready, 0 when not (draining: 1 until shutdown begins); shared_cache never holds /readyz back",
            dependency_ready.clone(),
        );
        let request_duration =
            HistogramFamily::<RouteClassLabels>::new_with_constructor(hop_histogram as fn() -> Histogram);
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer's head, by route (the configured path_prefix) and status class",
            request_duration.clone(),
        );
        let mut process = Registry::default();
        process.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        let hot = Hot {
            requests: Outcome::ALL
                .iter()
                .flat_map(|o| AUTHS.iter().map(move |a| (o.as_str(), *a)))
                .map(|(outcome, auth)| requests.get_or_create(&RequestLabels { outcome, auth }).clone())
                .collect(),
            auth_duration: SOURCES
                .iter()
                .map(|source| auth_duration.get_or_create(&SourceLabels { source }).clone())
                .collect(),
            upstream_responses: CLASSES
                .iter()
                .map(|class| upstream_responses.get_or_create(&StatusClassLabels { class }).clone())
                .collect(),
        };
        Self {
            hot,
            registry,
            nonces,
            jwks_keys,
            jwks_refused,
            redis_requests,
            redis_retries,
            redis_duration,
            redis_entries_refused,
            cache_shared_hits,
            cache_shared_misses,
            cache_shared_errors,
            limited,
            limit_clients,
            tls_cert_expiry,
            tls_reloads,
            requests,
            forward_auth_requests,
            rejections,
            unavailable,
            auth_duration,
            line_requests,
            line_duration,
            cache_hits,
            cache_misses,
            cache_coalesced,
            cache_entries,
            verifications_in_flight,
            upstream_duration,
            upstream_responses,
            open_connections,
            request_duration,
            dependency_ready,
            config_info,
            config_hashes: std::sync::Mutex::new(Vec::new()),
            config_restart_required,
            config_last_reload_success,
            config_last_reload_timestamp,
            process,
            request_ids: AtomicU64::new(rand::random()),
        }
    }

    /// The request-duration series of a configuration's routes (their
    /// `path_prefix`es, in order).
    pub fn routes(&self, route_prefixes: &[&str]) -> RouteMetrics {
        let labels: Vec<Arc<str>> =
            [ROUTE_ENDPOINT, ROUTE_DEFAULT].into_iter().chain(route_prefixes.iter().copied()).map(Arc::from).collect();
        RouteMetrics {
            request_duration: labels.iter().map(|route| route_histograms(&self.request_duration, route)).collect(),
            route_labels: labels,
        }
    }

    /// The configuration in force: its hash (`line_auth_proxy_config_info`,
    /// the one series of the hash before it gone) and whether settings of the
    /// file wait for a restart.
    pub fn set_config(&self, fingerprint: &str, restart_required: bool) {
        let hash = ConfigLabels { hash: fingerprint.to_owned() };
        let mut hashes = crate::sync::lock(&self.config_hashes);
        for old in hashes.drain(..).filter(|h| *h != hash) {
            self.config_info.remove(&old);
        }
        self.config_info.get_or_create(&hash).set(1);
        hashes.push(hash);
        self.config_restart_required.set(i64::from(restart_required));
    }

    /// A configuration (re)load: its outcome and when, unix seconds.
    pub fn config_loaded(&self, success: bool, unix_seconds: f64) {
        self.config_last_reload_success.set(i64::from(success));
        self.config_last_reload_timestamp.set(unix_seconds);
    }

    /// The OpenMetrics text exposition of every family, the `process_*` ones last.
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text;
        let mut out = String::with_capacity(16384);
        text::encode_registry(&mut out, &self.registry).expect("writing to a String cannot fail");
        text::encode_registry(&mut out, &self.process).expect("writing to a String cannot fail");
        text::encode_eof(&mut out).expect("writing to a String cannot fail");
        out
    }

    /// Counts one request by outcome and route auth kind.
    pub fn count_request(&self, outcome: Outcome, auth: &'static str) {
        match AUTHS.iter().position(|a| *a == auth) {
            Some(a) => self.hot.requests[outcome as usize * AUTHS.len() + a].inc(),
            None => self.requests.get_or_create(&RequestLabels { outcome: outcome.as_str(), auth }).inc(),
        };
    }

    /// Counts one forward-auth check.
    pub fn count_forward_auth(&self, outcome: Outcome, auth: &'static str) {
        self.forward_auth_requests.get_or_create(&RequestLabels { outcome: outcome.as_str(), auth }).inc();
    }

    /// Counts a 401 or 503 by its reason.
    pub fn count_refusal(&self, refusal: Refusal, reason: &'static str) {
        let family = match refusal {
            Refusal::Rejected => &self.rejections,
            Refusal::Unavailable => &self.unavailable,
            Refusal::Limited => &self.limited,
        };
        family.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub fn set_limit_clients(&self, limit: crate::limits::Limit, clients: usize) {
        self.limit_clients.get_or_create(&LimitLabels { limit: limit.as_str() }).set(clients as i64);
    }

    /// A reload's limits in force: a limit they switch off tracks no client
    /// (its sweeper, which set the gauge, is gone).
    pub fn clear_limit_clients(&self, limits: &crate::limits::Limits) {
        use crate::limits::Limit;
        let on = [
            (Limit::Nonces, limits.nonces.is_some()),
            (Limit::FreshTokens, limits.fresh_tokens.is_some()),
            (Limit::Connections, limits.connections.is_some()),
        ];
        for (limit, _) in on.into_iter().filter(|(_, on)| !on) {
            self.set_limit_clients(limit, 0);
        }
    }

    /// Records the time to a verdict from `source`.
    pub fn observe_auth(&self, source: &'static str, seconds: f64) {
        match SOURCES.iter().position(|s| *s == source) {
            Some(i) => self.hot.auth_duration[i].observe(seconds),
            None => self.auth_duration.get_or_create(&SourceLabels { source }).observe(seconds),
        }
    }

    /// Counts one upstream response by status class.
    pub fn count_upstream_response(&self, status: u16) {
        self.hot.upstream_responses[class_index(status)].inc();
    }

    /// A fresh request id: a random per-process start, then sequential (cheap, unique).
    pub fn next_request_id(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// The five status-class series of one route, created up front.
fn route_histograms(family: &HistogramFamily<RouteClassLabels>, route: &str) -> [Histogram; 5] {
    CLASSES.map(|class| family.get_or_create(&RouteClassLabels { route: route.to_owned(), class }).clone())
}

/// The index in [`CLASSES`] of a status code's class (600 and above count as 5xx).
fn class_index(status: u16) -> usize {
    usize::from(status.clamp(100, 599) / 100 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_family_is_in_the_reference() {
        let reference = include_str!("../docs/reference.md");
        let exposition = Metrics::new().encode();
        let families: Vec<&str> =
            exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(families.len() >= 20, "{families:?}");
        for family in families {
            assert!(
                reference.contains(&format!("| `{family}` |")),
                "docs/reference.md does not list the metric {family}"
            );
        }
    }

    #[test]
    fn every_metric_the_grafana_dashboard_names_is_exported_with_its_type() {
        let dashboard: serde_json::Value = serde_json::from_str(include_str!("../deploy/grafana/line-auth-proxy.json"))
            .expect("the dashboard is JSON");
        let exposition = Metrics::new().encode();
        let types: std::collections::HashMap<&str, &str> =
            exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' ')).collect();
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(panels.len() >= 10, "{} panels", panels.len());
        let mut expressions: Vec<&str> = Vec::new();
        for panel in panels {
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{panel}");
            expressions.extend(targets.iter().map(|t| t["expr"].as_str().expect("expr")));
        }
        expressions
            .extend(dashboard["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["query"].as_str()));
        let mut named = 0;
        for expr in expressions {
            let identifiers = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
            for name in identifiers.filter(|n| n.starts_with("line_auth_proxy_") || n.starts_with("process_")) {
                named += 1;
                let (family, wanted) =
                    [("_bucket", "histogram"), ("_sum", "histogram"), ("_count", "histogram"), ("_total", "counter")]
                        .iter()
                        .find_map(|(suffix, kind)| Some((name.strip_suffix(suffix)?, Some(*kind))))
                        .filter(|(family, _)| types.contains_key(family))
                        .unwrap_or((name, None));
                let kind = types
                    .get(family)
                    .unwrap_or_else(|| panic!("the dashboard names {name}, which is not exported: {expr}"));
                match wanted {
                    Some(wanted) => assert_eq!(*kind, wanted, "{name} in {expr}"),
                    None => {
                        assert!(*kind == "gauge", "{name} is a {kind}: read it as {name}_total or _bucket ({expr})")
                    }
                }
            }
        }
        assert!(named >= 20, "{named} metric names");
    }

    #[test]
    fn every_outcome_is_in_the_reference() {
        let reference = include_str!("../docs/reference.md");
        for outcome in Outcome::ALL {
            assert!(reference.contains(&format!("`{}`", outcome.as_str())), "{outcome:?} is not documented");
        }
    }
}
