//! W3C Trace Context (`traceparent`, `tracestate`): read from the client,
//! checked, and its trace id written in the access and audit lines, so that a
//! request can be followed from the client through the proxy to the backend.
//!
//! Without OpenTelemetry export (`otel.endpoint` unset) the proxy records no
//! spans, so it never makes itself the parent: a valid `traceparent` goes on
//! as it came. An invalid one (any field malformed, an all-zero id, version
//! `ff`, or the header twice) is removed with its `tracestate` (W3C Trace
//! Context §3.3: a `tracestate` is meaningless without the `traceparent` it
//! belongs to), and none is made up: a backend's tracer then starts its own
//! trace with its own sampling, where a proxy-made unsampled parent would
//! turn its sampling off. With export, `crate::traces` replaces both headers
//! with the proxy's own (its upstream span, or its unrecorded request span).

use http::HeaderMap;
use http::header::HeaderName;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A trace id: 32 lower-case hex digits, as `traceparent` spells it.
pub type TraceId = [u8; 32];

/// What a request's `traceparent` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceParent {
    /// None sent.
    Absent,
    /// A valid one, of this trace.
    Valid(TraceId),
    /// One the upstream must not get (nor the `tracestate` with it).
    Invalid,
}

impl TraceParent {
    /// The `traceparent` of `headers`.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        let Some(value) = values.next() else {
            return TraceParent::Absent;
        };
        if values.next().is_some() {
            return TraceParent::Invalid;
        }
        parse(value.as_bytes()).map_or(TraceParent::Invalid, TraceParent::Valid)
    }

    pub fn trace_id(&self) -> Option<&TraceId> {
        match self {
            TraceParent::Valid(id) => Some(id),
            _ => None,
        }
    }
}

/// Removes an invalid `traceparent` and its `tracestate` from the upstream request.
pub fn strip_invalid(trace: TraceParent, headers: &mut HeaderMap) {
    if trace == TraceParent::Invalid {
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
    }
}

/// `version "-" trace-id "-" parent-id "-" trace-flags` (§3.2.2): version 00
/// is exactly 55 characters; a later version is at least that, and what
/// follows the flags starts with `-`. Ids are lower-case hex, not all zero.
fn parse(value: &[u8]) -> Option<TraceId> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let zero = |s: &[u8]| s.iter().all(|b| *b == b'0');
    let (version, trace_id, parent_id, flags) = (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    if !hex(version) || version == b"ff" || !hex(flags) {
        return None;
    }
    match (version, value.get(55)) {
        (b"00", None) => {}
        (b"00", Some(_)) => return None,
        (_, None | Some(b'-')) => {}
        _ => return None,
    }
    if !hex(trace_id) || zero(trace_id) || !hex(parent_id) || zero(parent_id) {
        return None;
    }
    trace_id.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn of(values: &[&str]) -> TraceParent {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&TRACEPARENT, v.parse().unwrap());
        }
        TraceParent::of(&h)
    }

    #[test]
    fn the_specs_example_is_valid_and_gives_its_trace_id() {
        assert_eq!(of(&[VALID]).trace_id(), Some(b"4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(of(&[]), TraceParent::Absent);
        // A later version may carry more, after a dash.
        assert!(of(&["01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"]).trace_id().is_some());
    }

    #[test]
    fn anything_else_is_invalid() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "",
        ] {
            assert_eq!(of(&[bad]), TraceParent::Invalid, "{bad}");
        }
        assert_eq!(of(&[VALID, VALID]), TraceParent::Invalid, "twice");
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, "nonsense".parse().unwrap());
        h.insert(&TRACESTATE, "vendor=x".parse().unwrap());
        strip_invalid(TraceParent::of(&h), &mut h);
        assert!(h.is_empty());
    }
}
