//! The OpenTelemetry SDK behind [`super`]: the tracer provider, its batch
//! processor and the OTLP/HTTP exporter, whose HTTP calls run on the proxy's
//! runtime through the proxy's own rustls client.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::Either;
use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};

use super::Kind;
use crate::config::OtelConfig;
use crate::headers::trace::{TRACEPARENT, TRACESTATE, TraceId};

/// Spans waiting for export; past it, new spans are dropped (never waited for).
const MAX_QUEUE: usize = 2048;
/// Spans per OTLP request.
const MAX_BATCH: usize = 512;
/// How often a batch goes out when the queue holds less than a full one.
const EXPORT_DELAY: Duration = Duration::from_secs(1);
/// One export request, connection included; also the SDK's bound on one export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The drain's last export, all batches together.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's answer is read up to this size (it is a status, a few bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The exporting tracer (present when `otel.endpoint` is set).
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// The tracer, carried in a traced request's context for its children.
#[derive(Clone)]
struct Active(SdkTracer);

impl Traces {
    /// Starts the batch processor (its own thread) exporting to `config`.
    /// Must be called on the proxy's runtime: exports run on it.
    pub fn start(config: &OtelConfig) -> Result<Self, String> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| "no runtime to export on".to_owned())?;
        let http = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| "the OTLP HTTP client could not be built".to_owned())?;
        let client = ExportClient { http, runtime, failing: AtomicBool::new(false) };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(config.traces_url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .with_retry_policy(
                // A collector restarting is waited for a moment; one that is
                // down does not hold the export thread (or the drain) for long.
                RetryPolicy::default()
                    .with_max_retries(2)
                    .with_initial_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_millis(400))
                    .with_max_jitter(Duration::from_millis(50)),
            )
            .build()
            .map_err(|e| format!("the OTLP exporter could not be built: {e}"))?;
        let batches = BatchConfigBuilder::default()
            .with_max_queue_size(MAX_QUEUE)
            .with_max_export_batch_size(MAX_BATCH)
            .with_scheduled_delay(EXPORT_DELAY)
            .build();
        let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
        let mut resource =
            Resource::builder().with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        // OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names it when set.
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("line-auth-proxy");
        }
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sampling_ratio))))
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("line-auth-proxy");
        Ok(Self { provider, tracer })
    }

    /// The request's span, a child of the client's `traceparent` when
    /// `accept_parent`, and the trace id it is in (lower-case hex).
    pub fn request(&self, method: &'static str, headers: &http::HeaderMap, accept_parent: bool) -> (Span, TraceId) {
        let parent = if accept_parent {
            TraceContextPropagator::new().extract(&HeaderExtractor(headers))
        } else {
            Context::new()
        };
        // Named by its method now (a request cancelled mid-way is never
        // named again), by its route when it ends.
        let span =
            self.tracer.span_builder(method).with_kind(SpanKind::Server).start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span).with_value(Active(self.tracer.clone()));
        let trace_id = crate::headers::lower_hex(&cx.span().span_context().trace_id().to_bytes());
        (Span(Some(cx)), trace_id)
    }

    /// `fut` with the tracer current and no span: the LINE calls of a
    /// background task (the JWKS refresh) are traces of their own.
    pub fn background<F: Future + Send + 'static>(&self, fut: F) -> impl Future<Output = F::Output> + Send + 'static {
        fut.with_context(Context::new().with_value(Active(self.tracer.clone())))
    }

    /// Exports what is queued (bounded by the export timeout) and stops the
    /// processor's thread.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT));
        match tokio::time::timeout(SHUTDOWN_TIMEOUT + Duration::from_secs(1), flushed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "OpenTelemetry shutdown: spans may be lost"),
            _ => tracing::warn!("OpenTelemetry shutdown timed out: spans may be lost"),
        }
    }
}

/// A span of a traced request, or none; ended when dropped.
pub struct Span(Option<Context>);

impl Span {
    pub fn none() -> Self {
        Span(None)
    }

    /// A child of the current span, when the current context is a traced
    /// request's; else none.
    pub fn child(name: &'static str, kind: Kind) -> Self {
        let cx = Context::current();
        let Some(Active(tracer)) = cx.get::<Active>() else {
            return Span(None);
        };
        let kind = match kind {
            Kind::Internal => SpanKind::Internal,
            Kind::Client => SpanKind::Client,
        };
        let span = tracer.span_builder(name).with_kind(kind).start_with_context(tracer, &cx);
        Span(Some(cx.with_span(span)))
    }

    /// Sets an attribute on the current span, when it is a recorded one.
    pub fn current_attr(key: &'static str, value: &str) {
        let cx = Context::current();
        if cx.span().is_recording() {
            cx.span().set_attribute(KeyValue::new(key, value.to_owned()));
        }
    }

    /// Whether the span is recorded (its trace sampled): attributes of one
    /// that is not are not even built.
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|cx| cx.span().is_recording())
    }

    /// Whether there is a span, recorded or not.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    fn recording(&self) -> Option<&Context> {
        self.0.as_ref().filter(|cx| cx.span().is_recording())
    }

    /// `fut` with this span current (its children are this span's): one
    /// future of either kind, not an `async` wrapper holding both (debug
    /// builds would keep several copies of a request's future on the stack).
    /// A span that is not recorded makes no context: its children would not
    /// be recorded either, so none is made (see [`Span::inject`]).
    pub fn scope<F: Future>(&self, fut: F) -> Either<WithContext<F>, F> {
        match self.recording() {
            Some(cx) => Either::Left(fut.with_context(cx.clone())),
            None => Either::Right(fut),
        }
    }

    pub fn set_name(&self, name: String) {
        if let Some(cx) = self.recording() {
            cx.span().update_name(name);
        }
    }

    pub fn attr(&self, key: &'static str, value: &str) {
        if let Some(cx) = self.recording() {
            cx.span().set_attribute(KeyValue::new(key, value.to_owned()));
        }
    }

    pub fn attr_int(&self, key: &'static str, value: i64) {
        if let Some(cx) = self.recording() {
            cx.span().set_attribute(KeyValue::new(key, value));
        }
    }

    /// Marks the span failed (OpenTelemetry's error status), with the reason.
    pub fn error(&self, description: &'static str) {
        if let Some(cx) = self.recording() {
            cx.span().set_status(Status::error(description));
        }
    }

    /// Replaces `traceparent` and `tracestate` in `headers` with this span's.
    pub fn inject(&self, headers: &mut http::HeaderMap) {
        if let Some(cx) = &self.0 {
            headers.remove(&TRACEPARENT);
            headers.remove(&TRACESTATE);
            TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
            // No state to pass on (a trace the proxy started): no header.
            if headers.get(&TRACESTATE).is_some_and(|v| v.is_empty()) {
                headers.remove(&TRACESTATE);
            }
        }
    }

    /// Ends the span now (as dropping it does).
    pub fn end(self) {}
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

/// The exporter's HTTP client: the request is sent on the proxy's runtime
/// (the batch processor's thread has none) with rustls, and its failure is
/// logged once when exports start failing and once when they recover, with
/// the collector's host and the cause class, never reqwest's text.
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
    failing: AtomicBool,
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, HttpError> {
        let host = request.uri().authority().map_or_else(|| "-".to_owned(), |a| a.to_string());
        let request = reqwest::Request::try_from(request).map_err(|_| "the OTLP request could not be built")?;
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let mut response = http.execute(request).await.map_err(|e| crate::auth::line::cause_of(&e))?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|_| "bad_body")? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err("answer_too_large");
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, body))
        });
        let result = match sent.await {
            Ok(result) => result,
            Err(_) => Err("export_task_failed"),
        };
        let cause = match &result {
            Ok((status, _)) if status.is_success() => None,
            Ok((status, _)) => Some(format!("status {}", status.as_u16())),
            Err(cause) => Some((*cause).to_owned()),
        };
        match cause {
            None => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(collector = %host, "OpenTelemetry export recovered");
                }
            }
            Some(cause) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(collector = %host, cause = %cause, "OpenTelemetry export failing; spans are dropped until the collector answers");
                }
            }
        }
        let (status, body) = result.map_err(|cause| format!("OTLP export failed: {cause}"))?;
        let mut answer = http::Response::new(Bytes::from(body));
        *answer.status_mut() = status;
        Ok(answer)
    }
}
