//! `[otel]`: OpenTelemetry traces exported over OTLP/HTTP (protobuf).

use super::Problems;
use super::keys::{Ratio, section};
use super::url::HttpUrl;

/// `otel.sampling_ratio` when unset: one trace in twenty.
pub const DEFAULT_SAMPLING_RATIO: f64 = 0.05;

section! {
    /// `[otel]`
    pub struct OtelSection("otel") {
        /// The OTLP/HTTP collector; unset: nothing exported.
        endpoint: Option<HttpUrl>,
        /// The share of traces without a sampled parent that are kept.
        sampling_ratio: Ratio = DEFAULT_SAMPLING_RATIO,
    }
}

/// Where and how much to export; present when `otel.endpoint` is set.
#[derive(Clone, Debug, PartialEq)]
pub struct OtelConfig {
    /// `{otel.endpoint}/v1/traces`, as `OTEL_EXPORTER_OTLP_ENDPOINT` is read.
    pub traces_url: String,
    pub sampling_ratio: f64,
}

impl OtelSection {
    pub(super) fn validate(&self, p: &mut Problems) -> Option<OtelConfig> {
        let Some(endpoint) = &self.endpoint else {
            if self.sampling_ratio.0 != DEFAULT_SAMPLING_RATIO {
                p.warn("otel.sampling_ratio", "has no effect: otel.endpoint is not set, so nothing is exported");
            }
            return None;
        };
        let url = endpoint.as_str();
        if url.contains('?') || url.contains('#') {
            p.error("otel.endpoint", "must have no query or fragment: the proxy adds /v1/traces to it");
            return None;
        }
        if !cfg!(feature = "otel") {
            p.error(
                "otel.endpoint",
                "this build has no OpenTelemetry export (it was built without the cargo feature otel)",
            );
            return None;
        }
        let traces_url = format!("{}/v1/traces", url.trim_end_matches('/'));
        Some(OtelConfig { traces_url, sampling_ratio: self.sampling_ratio.0 })
    }
}
