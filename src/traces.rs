//! OpenTelemetry traces (the cargo feature `otel`, configured by `[otel]`):
//! a span for each request, its verdict, each LINE Platform call, each Redis
//! call and the upstream call, exported over OTLP/HTTP (protobuf) in batches
//! from a bounded queue.
//!
//! The request's [`Span`] carries the tracer in its context, and the request's
//! future runs in that context ([`Span::scope`]): the code that makes a LINE or
//! Redis call asks for a [`Span::child`] of whatever is current and gets none
//! when the request is not traced (nothing configured, or a background task).
//! Without the feature every type here is empty and every call does nothing.
//!
//! Sampling is parent-based: a `traceparent` whose sampled flag is set is
//! always recorded, an unsampled one never, and a trace the proxy starts is
//! kept with `otel.sampling_ratio`. The parent is taken only from a peer in
//! `server.trusted_proxies` (the ingress or mesh in front): any other client
//! could make every request of its own recorded (each costs an export) or
//! graft the proxy's spans onto a trace of its choosing.
//! When exporting, the proxy is the upstream's parent: the upstream gets the
//! `traceparent` of the proxy's upstream span, or of its request span when
//! the request is not recorded (and the `tracestate` that came with an
//! accepted parent).

#[cfg(feature = "otel")]
mod export;

#[cfg(feature = "otel")]
pub use export::{Span, Traces};

#[cfg(not(feature = "otel"))]
pub use off::{Span, Traces};

/// A background task's future, its LINE calls traced as traces of their
/// own when `traces` exports.
pub fn background<F>(traces: Option<&Traces>, fut: F) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    match traces {
        #[cfg(feature = "otel")]
        Some(traces) => Box::pin(traces.background(fut)),
        _ => Box::pin(fut),
    }
}

/// What a span is of, for its kind (OpenTelemetry's `SpanKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The proxy's own work within the request (the verdict).
    Internal,
    /// A call the proxy makes (LINE, Redis, the upstream).
    Client,
}

#[cfg(not(feature = "otel"))]
mod off {
    use std::future::Future;

    use super::Kind;

    /// Built without the feature: `[otel]` with an endpoint is a
    /// configuration error, so there is never a tracer.
    pub enum Traces {}

    impl Traces {
        pub fn start(config: &crate::config::OtelConfig) -> Result<Self, String> {
            let _ = config;
            Err("this build has no OpenTelemetry export".into())
        }

        pub fn request(
            &self,
            _method: &'static str,
            _headers: &http::HeaderMap,
            _accept_parent: bool,
        ) -> (Span, crate::headers::trace::TraceId) {
            match *self {}
        }

        pub async fn shutdown(&self) {
            match *self {}
        }
    }

    /// No span.
    pub struct Span;

    impl Span {
        pub fn none() -> Self {
            Span
        }

        pub fn child(_name: &'static str, _kind: Kind) -> Self {
            Span
        }

        pub fn current_attr(_key: &'static str, _value: &str) {}

        pub fn is_recording(&self) -> bool {
            false
        }

        pub fn is_some(&self) -> bool {
            false
        }

        pub fn scope<F: Future>(&self, fut: F) -> F {
            fut
        }

        pub fn set_name(&self, _name: String) {}

        pub fn attr(&self, _key: &'static str, _value: &str) {}

        pub fn attr_int(&self, _key: &'static str, _value: i64) {}

        pub fn error(&self, _description: &'static str) {}

        pub fn inject(&self, _headers: &mut http::HeaderMap) {}

        pub fn end(self) {}
    }
}
