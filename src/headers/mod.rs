//! The header contract, one file per job: [`identity`] (the trusted `X-Line-*`
//! names, encoding, strip-then-set), [`hop`] (hop-by-hop and override headers,
//! both directions), [`forwarding`] (`X-Forwarded-*`).
//!
//! Pipeline position: identity stripping runs first on every request, whatever
//! the route; hop-by-hop removal runs before injection, so that a client's
//! `Connection` header can never name (and thereby remove) an injected header;
//! forwarding headers are set last, from what the proxy saw.

pub mod forwarding;
pub mod hop;
pub mod identity;
pub mod trace;

pub use hop::{
    connection_lists, strip_for_upstream, strip_request_trailers, strip_response_hop_by_hop, strip_response_trailers,
};
pub use identity::{EncodedIdentity, IdentityHeaderNames, percent_encoded, strip_identity};

use http::HeaderName;

/// `bytes` in lower-case hex, as header values and log fields spell ids;
/// `N` is twice `bytes.len()` (a shorter `N` keeps the first digits).
pub(crate) fn lower_hex<const N: usize>(bytes: &[u8]) -> [u8; N] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; N];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
    out
}

/// Request headers clients and proxies send for their standard meaning: the
/// identity prefix must not cover any of them, and the assertion header must
/// not be one (both are stripped from every request before authentication).
pub(crate) const STANDARD_REQUEST_HEADERS: &[&str] = &[
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "access-control-request-headers",
    "access-control-request-method",
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "expect",
    "forwarded",
    "from",
    "grpc-timeout",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "max-forwards",
    "origin",
    "pragma",
    "proxy-authorization",
    "range",
    "referer",
    "sec-fetch-dest",
    "sec-fetch-mode",
    "sec-fetch-site",
    "sec-websocket-extensions",
    "sec-websocket-key",
    "sec-websocket-protocol",
    "sec-websocket-version",
    "te",
    "traceparent",
    "tracestate",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

/// A configured header name (`assertion.header`), or why it is not one.
pub fn parse_header_name(name: &str) -> Result<HeaderName, String> {
    let header = HeaderName::try_from(name).map_err(|_| format!("{name:?} is not a valid header name"))?;
    let folded = header.as_str().replace(['_', '.'], "-");
    if STANDARD_REQUEST_HEADERS.contains(&folded.as_str()) {
        return Err(format!(
            "{name:?} is a standard request header; it is stripped from every request, so choose a name of your own, e.g. \"X-Line-Identity-Jwt\""
        ));
    }
    Ok(header)
}
