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

pub use hop::{strip_for_upstream, strip_response_hop_by_hop};
pub use identity::{EncodedIdentity, IdentityHeaderNames, percent_encoded, strip_identity};

use http::HeaderName;

/// A configured header name (`assertion.header`), or why it is not one.
pub fn parse_header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::try_from(name).map_err(|_| format!("{name:?} is not a valid header name"))
}
